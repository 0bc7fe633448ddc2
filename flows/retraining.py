"""The flow the `training` deployment runs: by hand, on its schedule, or on a drift alert.

Without a `fingerprint` it is one run of the training flow. With one (the drift
trigger fills it from the `driftline.drift.detected` event), the guards in
`pipeline.retraining` decide first, atomically in the prediction store's database (so
workers on several machines share them), and write the decision down: the window must
be big enough, it must not have been retrained already (ten alerts for one window start
one retraining), no other retraining may be running, and the last one must be at least
`monitor.cooldown_minutes` old. An allowed retraining puts the window's labelled
production rows, read from the prediction store, into the landing folder as a
DVC-tracked batch, so that `ingest` adds them and the batch is part of the data version
the run pushes; then it runs the training flow with `trigger: drift`. Deploy writes
that trigger into the promotion record, and a server polling the registry picks up a
new champion.

The run ends in a Completed state named for the outcome: "Retraining refused:
<guard>" (the most specific guard that applied: duplicate, too few rows, running,
cooldown) or "Retrained: <the training's outcome>" on a drift alert, and the training's
own outcome ("Promoted v3", "Nothing to do") otherwise; on a drift alert it publishes
the guards' decision and its reason as the `retraining-decision` artifact.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from flows import _dvc
from flows.artifacts import publish_retraining, retraining_state, training_outcome
from flows.training import training_flow
from pipeline.errors import first_line

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


def prepare_checkout(root: Path, params: Any) -> None:
    """A fresh clone (a worker's) holds the code, not the data: take the newest data
    version from git and ingest's outputs from the DVC remote, which the landing needs
    (the source's columns and schema)."""
    from flows.training import restore_data_version

    orchestrate = params.orchestrate
    if orchestrate.git_branch:
        restore_data_version.with_options(
            retries=orchestrate.retries, retry_delay_seconds=orchestrate.retry_delay_seconds
        )(str(root), orchestrate.git_branch, params.data.landing)
    if not (root / "data/raw/schema.yaml").exists() and _dvc.plan(root).remote is not None:
        _dvc.pull(root, [_dvc.stage_target(root, "ingest")])


@task(name="land production data", **_TASK)
def land_production(
    root: Path, params: Any, fingerprint: str, window_start: str, window_end: str
) -> dict[str, Any]:
    """Write the window's labelled rows to the landing folder; their count and path."""
    import pandas as pd

    from pipeline.artifacts import write_parquet_atomic
    from pipeline.errors import DataError
    from pipeline.monitoring import production_batch, read_window
    from pipeline.prediction_log import is_sql_url
    from pipeline.schema import DatasetSpec

    config = params.monitor
    log = config.prediction_log
    start, end = datetime.fromisoformat(window_start), datetime.fromisoformat(window_end)
    hours = (end - start).total_seconds() / 3600
    # The rows to land, not a drift check: no stored summaries.
    window = read_window(log if is_sql_url(log) else root / log, hours, end, summaries=False)
    if window.fingerprint != fingerprint:
        get_run_logger().warning(
            "window %s now reads as %s (rows logged late); landing what is there now",
            fingerprint,
            window.fingerprint,
        )
    raw = root / "data" / "raw"
    spec = DatasetSpec.read(raw / "schema.yaml")
    source = pd.read_parquet(raw / "data.parquet").head(0)
    required = [*spec.key_columns, *([spec.time_column] if spec.time_column else [])]
    batch = production_batch(window, source, spec.target, required)
    if batch.empty:
        raise DataError(
            f"window {fingerprint} has no labelled rows yet: nothing new to learn from "
            "(send labels with `driftline label`)"
        )
    path = root / params.data.landing / f"production-{fingerprint}.parquet"
    write_parquet_atomic(path, batch)
    # Tracked by DVC: the batch is part of the data version this run pushes and commits.
    _dvc.track(root, path)
    return {"rows": len(batch), "path": str(path)}


@flow(name="retraining", flow_run_name="retraining-{trigger}")
def retraining_flow(
    project: str = ".",
    trigger: Literal["manual", "schedule", "drift"] = "manual",
    fingerprint: str | None = None,
    rows: int = 0,
    window_start: str | None = None,
    window_end: str | None = None,
    drift_share: float | None = None,
    report: str | None = None,
    params_file: str = "params.yaml",
) -> State:
    """Run the training flow; on a drift alert, only if the guards allow it."""
    root = Path(project).resolve()
    with contextlib.chdir(root):
        if fingerprint is None:
            result = {"retrained": True, "training": training_flow(str(root), trigger, params_file)}
        else:
            window = (window_start, window_end)
            result = _on_drift(root, fingerprint, rows, window, drift_share, report, params_file)
            publish_retraining(result)
    return retraining_state(result)


def _on_drift(
    root: Path,
    fingerprint: str,
    rows: int,
    window: tuple[str | None, str | None],
    drift_share: float | None,
    report: str | None,
    params_file: str,
) -> dict[str, Any]:
    from prefect.runtime import flow_run

    from pipeline.config import load_params
    from pipeline.retraining import open_ledger

    logger = get_run_logger()
    params = load_params(root / params_file)
    config = params.monitor
    # In the prediction store's database when it is one: every worker sees every claim.
    ledger = open_ledger(
        config.prediction_log, root / config.reports / "retrainings.jsonl", params.stores.private
    )
    claim = ledger.claim(
        fingerprint,
        rows,
        min_rows=config.min_window_rows,
        cooldown=timedelta(minutes=config.cooldown_minutes),
        run=flow_run.get_id(),
    )
    outcome: dict[str, Any] = {
        "fingerprint": fingerprint,
        "rows": rows,
        "drift_share": drift_share,
        "report": report,
        "reason": claim.reason,
        "guards": list(claim.guards),
    }
    if not claim.allowed:
        logger.info("no retraining: %s", claim.reason)
        return {**outcome, "retrained": False}
    logger.info("retraining: %s", claim.reason)
    landed: dict[str, Any] | None = None
    try:
        start, end = window
        if start is None or end is None:
            raise ValueError("a drift retraining needs the window's start and end")
        prepare_checkout(root, params)
        landed = land_production(root, params, fingerprint, start, end)
        summary = training_flow(str(root), "drift", params_file)
    except BaseException as exc:
        detail = {"error": first_line(exc)[:500]}
        rejected = None
        if landed is not None and _data_refused(exc):
            rejected = _move_to_rejected(Path(landed["path"]))
        if rejected:
            detail["rejected_batch"] = rejected
            logger.warning("the landed batch failed the data checks: moved to %s", rejected)
        ledger.finish(fingerprint, False, detail)
        publish_retraining({**outcome, "retrained": False, "landed": landed}, detail["error"])
        raise
    deploy = summary.get("deploy") or {}
    ledger.finish(
        fingerprint,
        True,
        {
            # No deploy decision (nothing changed since the last run): the run's outcome.
            "action": deploy.get("action") or "none",
            "reason": deploy.get("reason") or training_outcome(summary),
            "champion": summary.get("champion"),
        },
    )
    return {**outcome, "retrained": True, "landed": landed, "training": summary}


def _data_refused(exc: BaseException) -> bool:
    """The data checks refused the run: the batch this retraining landed is the new
    input, so it goes to `rejected/` beside the landing folder rather than block every
    later run. Any other failure leaves it for the next run."""
    summary = getattr(exc, "summary", None) or {}
    return bool(set(summary.get("failed") or ()) & {"ingest", "validate"})


def _move_to_rejected(path: Path) -> str | None:
    """Out of the landing folder and out of the data version (its `.dvc` file goes)."""
    if not path.exists():
        return None
    target = path.parent / "rejected" / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    path.replace(target)
    path.with_name(path.name + ".dvc").unlink(missing_ok=True)
    return str(target)


if __name__ == "__main__":
    retraining_flow()
