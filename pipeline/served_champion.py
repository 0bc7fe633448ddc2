"""What `driftline serve` serves: the registry's champion, as its ONNX export.

`champion_source` downloads the version the `champion` alias points at and loads its
ONNX folder (never a pickle), with the metrics and data version the version was
registered with. `champion_version` is the cheap check the server polls.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import MlflowConfig
from pipeline.errors import DataError
from pipeline.promotions import RegistryError
from pipeline.registry import CHAMPION, alias_version, fetch_alias

if TYPE_CHECKING:
    from pipeline.serving import ServedModel


def champion_version(config: MlflowConfig) -> Callable[[], str | None]:
    def current() -> str | None:
        found = alias_version(config, CHAMPION)
        return str(found.version) if found is not None else None

    return current


def champion_source(config: MlflowConfig, cache: Path | None = None) -> Callable[[], ServedModel]:
    cache = Path(cache or tempfile.mkdtemp(prefix="driftline-serve-"))

    def load() -> ServedModel:
        from pipeline.serving import load_served_model

        champion = fetch_alias(config, CHAMPION, cache / uuid.uuid4().hex)
        if champion is None:
            raise RegistryError(
                f"{config.registered_model!r} has no champion yet: run the pipeline "
                "(make run) so that deploy registers one"
            )
        if champion.onnx_directory is None:
            raise DataError(
                f"champion v{champion.version} has no ONNX export: deploy it again "
                "(dvc repro -f -s deploy)"
            )
        served = load_served_model(
            champion.onnx_directory, champion.version, native=champion.directory
        )
        registered = {
            "metrics": json.loads(champion.tags.get("driftline.metrics", "{}")),
            "data_version": champion.tags.get("driftline.data_version"),
        }
        return dataclasses.replace(served, meta={**served.meta, **registered})

    return load
