"""What `driftline serve` serves: the registry's champion, as its ONNX export.

`champion_source` downloads the version the `champion` alias points at and loads its
ONNX folder (never a pickle), with the metrics and data version the version was
registered with. `champion_version` is the cheap check the server polls.
`monitored_champion` adds the reference sample and drift profile registered with the
version, which the monitor compares production windows with, and the feature importance
registered with it, which weighs each column's drift, and the quality estimator
registered with it, which estimates its metric before labels arrive.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pipeline.config import MlflowConfig
from pipeline.errors import DataError
from pipeline.importance import FeatureImportance
from pipeline.promotions import RegistryError
from pipeline.registry import (
    CHAMPION,
    REFERENCE_SAMPLE,
    RegisteredModel,
    alias_version,
    fetch_alias,
)

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.drift import DriftProfile
    from pipeline.quality_estimate import QualityEstimator
    from pipeline.serving import ServedModel


def champion_version(config: MlflowConfig) -> Callable[[], str | None]:
    def current() -> str | None:
        found = alias_version(config, CHAMPION)
        return str(found.version) if found is not None else None

    return current


def champion_source(config: MlflowConfig, cache: Path | None = None) -> Callable[[], ServedModel]:
    cache = Path(cache or tempfile.mkdtemp(prefix="driftline-serve-"))

    def load() -> ServedModel:
        return _fetch_champion(config, cache / uuid.uuid4().hex).served

    return load


@dataclasses.dataclass(frozen=True)
class MonitoredChampion:
    """The champion as the monitor needs it: the served model, and the reference sample
    and drift profile registered with it (never a checkout's `data/reference`, which a
    refused candidate's split may have replaced)."""

    served: ServedModel
    profile: DriftProfile
    reference: pd.DataFrame
    importance: FeatureImportance | None = None  # None: registered before it travelled
    # Which rows `reference` holds: the whole sample, or the window's weeks of the year
    # (pipeline.monitoring.compared_champion).
    reference_note: str = "the whole reference sample"
    # CBPE or DLE, made by evaluate on the test rows (pipeline.quality_estimate); None:
    # registered before it travelled with the model.
    quality: QualityEstimator | None = None


def monitored_champion(config: MlflowConfig) -> MonitoredChampion:
    """Download the champion, load it and its reference into memory, delete the files."""
    import pandas as pd

    from pipeline.drift import read_profile

    with tempfile.TemporaryDirectory(prefix="driftline-monitor-") as cache:
        fetched = _fetch_champion(config, Path(cache))
        folder = fetched.registered.reference_directory
        if folder is None:
            raise DataError(
                f"champion v{fetched.registered.version} was registered without its reference "
                "sample (by an older Driftline): promote a new version so that the monitor "
                "compares with the champion's own reference"
            )
        importance_file = fetched.registered.importance_file
        quality_file = fetched.registered.quality_file
        quality = None
        if quality_file is not None:
            from pipeline.quality_estimate import QualityEstimator

            quality = QualityEstimator.read(quality_file)
        return MonitoredChampion(
            fetched.served,
            read_profile(folder / "drift_profile"),
            pd.read_parquet(folder / REFERENCE_SAMPLE),
            FeatureImportance.read(importance_file) if importance_file is not None else None,
            quality=quality,
        )


class FetchedChampion(NamedTuple):
    registered: RegisteredModel
    served: ServedModel


def _fetch_champion(config: MlflowConfig, into: Path) -> FetchedChampion:
    from pipeline.serving import load_served_model

    champion = fetch_alias(config, CHAMPION, into)
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
    served = load_served_model(champion.onnx_directory, champion.version, native=champion.directory)
    registered = {
        "metrics": json.loads(champion.tags.get("driftline.metrics", "{}")),
        "data_version": champion.tags.get("driftline.data_version"),
    }
    return FetchedChampion(
        champion, dataclasses.replace(served, meta={**served.meta, **registered})
    )
