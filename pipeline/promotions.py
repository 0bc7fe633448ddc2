"""Who served when, and why: promotion records, and moving the registry's aliases.

Every change of `champion` (a promotion, a manual promote, a rollback) and every
refusal is one JSON line in `reports/promotions.jsonl`, and the record is also set as
a tag on the model version it concerns, so the registry carries its own audit trail.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pipeline.config import MlflowConfig
from pipeline.errors import DriftlineError
from pipeline.registry import CHALLENGER, CHAMPION, PREVIOUS, alias_version
from pipeline.tracking import start_tracking

PROMOTIONS = Path("reports/promotions.jsonl")
Trigger = Literal["manual", "schedule", "drift"]
TRIGGERS = ("manual", "schedule", "drift")


class RegistryError(DriftlineError):
    """A registry operation the user asked for cannot be done (no such version...)."""


@dataclass(frozen=True)
class PromotionRecord:
    time: str
    action: Literal["promote", "refuse", "keep", "rollback", "challenger"]
    version: str | None
    previous: str | None
    trigger: str
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    champion_metrics: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def trigger_from_environment() -> str:
    """Flows say why they run through DRIFTLINE_TRIGGER; a person at a shell is manual."""
    trigger = os.environ.get("DRIFTLINE_TRIGGER", "manual")
    if trigger not in TRIGGERS:
        raise DriftlineError(
            f"DRIFTLINE_TRIGGER is {trigger!r}: it must be one of {', '.join(TRIGGERS)}"
        )
    return trigger


def experiment_from_environment() -> str | None:
    """The experiment's name when the stage runs inside `dvc exp run` (DVC sets
    DVC_EXP_NAME for every stage of an experiment), else None."""
    return os.environ.get("DVC_EXP_NAME") or None


def append_record(record: PromotionRecord, path: Path = PROMOTIONS) -> None:
    """One line per event; appended with a single write so lines never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(record.to_json() + "\n")


def read_records(path: Path = PROMOTIONS) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _client(config: MlflowConfig) -> Any:
    import mlflow

    start_tracking(config)
    return mlflow.MlflowClient()


def version_metrics(config: MlflowConfig, version: str) -> dict[str, Any]:
    """The test metrics a version was registered with (its `driftline.metrics` tag)."""
    found = _client(config).get_model_version(config.registered_model, version)
    return json.loads((found.tags or {}).get("driftline.metrics", "{}"))


def move_champion(
    config: MlflowConfig,
    version: str,
    action: Literal["promote", "rollback"],
    trigger: str,
    reason: str,
    metrics: dict[str, Any] | None = None,
    path: Path = PROMOTIONS,
) -> PromotionRecord:
    """Point `champion` at `version` and `previous` at the old champion, clear the
    `challenger` alias when it named `version`; record it."""
    from mlflow.exceptions import MlflowException

    client = _client(config)
    try:
        client.get_model_version(config.registered_model, version)
    except MlflowException:
        raise RegistryError(
            f"version {version} of {config.registered_model!r} is not in the registry: "
            "`driftline status` lists the versions"
        ) from None
    old = alias_version(config, CHAMPION)
    old_version = str(old.version) if old is not None else None
    if old_version == version:
        raise RegistryError(f"version {version} is already the champion: nothing to do")
    champion_metrics = version_metrics(config, old_version) if old_version else None
    record = PromotionRecord(
        time=now(),
        action=action,
        version=version,
        previous=old_version,
        trigger=trigger,
        reason=reason,
        metrics=metrics if metrics is not None else version_metrics(config, version),
        champion_metrics=champion_metrics,
    )
    # The tag first: if the registry refuses it, no alias has moved yet.
    stamp = record.time.replace("-", "").replace(":", "").replace("+0000", "Z")
    client.set_model_version_tag(
        config.registered_model, version, f"driftline.{action}.{stamp}", record.to_json()
    )
    client.set_registered_model_alias(config.registered_model, CHAMPION, version)
    if old_version is not None:
        client.set_registered_model_alias(config.registered_model, PREVIOUS, old_version)
    challenger = alias_version(config, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        # The experiment's candidate is the champion now: no longer a challenger.
        client.delete_registered_model_alias(config.registered_model, CHALLENGER)
    append_record(record, path)
    return record


def rollback(config: MlflowConfig, reason: str, path: Path = PROMOTIONS) -> PromotionRecord:
    """Move `champion` back to `previous` (which then names the version rolled back)."""
    previous = alias_version(config, PREVIOUS)
    if previous is None:
        raise RegistryError(
            "there is no previous champion to roll back to (the registry has no "
            f"'{PREVIOUS}' alias for {config.registered_model!r})"
        )
    return move_champion(config, str(previous.version), "rollback", "manual", reason, path=path)


def describe_version(config: MlflowConfig, alias: str) -> dict[str, Any] | None:
    found = alias_version(config, alias)
    if found is None:
        return None
    tags = found.tags or {}
    return {
        "version": str(found.version),
        "run_id": found.run_id,
        "registered": datetime.fromtimestamp(found.creation_timestamp / 1000, UTC).isoformat(
            timespec="seconds"
        ),
        "data_version": tags.get("driftline.data_version"),
        "git_commit": tags.get("driftline.git_commit"),
        "metrics": json.loads(tags.get("driftline.metrics", "{}")),
    }
