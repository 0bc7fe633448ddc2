"""The monitoring flow: the newest window of production traffic against the reference.

It reads `monitor.window_hours` of the prediction log with the labels that have
arrived, and compares the window with the champion's reference: the sample and drift
profile `split` drew for the champion, registered with it by `deploy` (never this
checkout's `data/reference`, which a refused candidate may have replaced):

- **the decision** comes from the fast drift check (the window's hourly summaries that
  the prediction log stored, `pipeline.summaries`, else `pipeline.drift.check_drift` on
  its rows, against the profile `split` precomputed) under the drift rule
  (pipeline/drift_rule.py: calendar columns reported but not counted, each column
  weighed by the champion's feature importance, prediction drift, the reference rows
  from the window's weeks of the year) and the champion's primary metric against its
  test score: measured on the labelled rows once enough labels are in, estimated
  without labels before (`pipeline.quality_estimate`);
- **the report** is Evidently's `DataDriftPreset` plus prediction drift, saved as HTML
  and JSON to `reports/monitoring/<time>/`, logged to an MLflow run, and added to the
  Evidently workspace with the decision's figures, whose dashboard plots the checks over
  time (pipeline/evidently_dashboard.py; `evidently ui --workspace evidently`);
- **fairness**, when `evaluate.fairness` names sensitive columns and enough labels are in:
  evaluate's audit on the labelled rows (the predictions the champion served, per group),
  each gap beside the champion's on test, in the record (`fairness`), a reason line and
  the MLflow run (`fairness_gap_<metric>`). A gap beyond `evaluate.fairness.max_gap` is
  warned, never a retraining trigger: retraining on the same data does not remove a bias.

The decision and its numbers are recorded whichever way it goes (`decision.json`, and a
line in `reports/monitoring/decisions.jsonl`, both logged with the MLflow run). On drift
the flow emits the Prefect event `driftline.drift.detected`, whose payload holds the
window, its fingerprint and the MLflow run of the report, never a path: the retraining
deployment has a trigger on it (flows/deployments.py) and may run on another machine.

    python -m flows.monitoring          # one check, against PREFECT_API_URL or an ephemeral API
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.prediction_log import is_sql_url
from pipeline.stores import create_file, create_folder

DRIFT_EVENT = "driftline.drift.detected"
FAIRNESS_REPORT = "reports/fairness.json"  # evaluate's, when the champion's run lacks it
PREDICTION = "prediction"

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="read window", **_TASK)
def read_window(log: str, hours: float, now: datetime) -> Any:
    from pipeline.monitoring import read_window as read

    return read(log, hours, now)


@task(name="load champion", **_TASK)
def load_champion(params: Any) -> Any:
    """The model the window was served by, the registry's champion as serving loads it,
    with the reference registered with it (into memory: the downloaded files go)."""
    from pipeline.served_champion import monitored_champion
    from pipeline.tracking import start_tracking

    start_tracking(params.mlflow, params.stores.private)
    return monitored_champion(params.mlflow)


@task(name="seasonal reference", **_TASK)
def seasonal_reference(champion: Any, window: Any, config: Any, time_column: str | None) -> Any:
    """The champion with the reference rows from the window's weeks of the year, when
    the reference holds them; the drift check and the report both compare with those."""
    from pipeline.monitoring import compared_champion

    return compared_champion(champion, window, config, time_column)


@task(name="fast drift check", **_TASK)
def fast_check(champion: Any, window: Any, config: Any) -> Any:
    """The drift check, from the log's stored summaries where they cover the window's
    hours (`FastCheck.method` says which rows came from where)."""
    from pipeline.monitoring import fast_drift_check

    return fast_drift_check(champion, window, config)


@task(name="quality check", **_TASK)
def quality(window: Any, champion: Any, min_labelled: int) -> Any:
    """The primary metric measured on the labelled rows, or, until there are enough,
    estimated on every row by the estimator registered with the champion."""
    from pipeline.metrics import DEFAULT_PRIMARY
    from pipeline.monitoring import quality_check

    meta = champion.served.meta
    # The metric compress scored the export on (the primary one); a version from before
    # it was recorded gets its task's default.
    metric = (meta.get("onnx") or {}).get("metric") or DEFAULT_PRIMARY[meta["task"]]
    reference = (meta.get("metrics") or {}).get(metric)
    return quality_check(
        window,
        meta["task"],
        metric,
        list(meta["classes"]),
        reference,
        min_labelled,
        champion.quality,  # CBPE or DLE, used until enough labels are in
    )


@task(name="champion's fairness on test", **_TASK)
def champion_test_fairness(params: Any, version: str, root: Path) -> Any:
    """The champion's fairness gaps on test: from the run its registry version was
    registered from, else this checkout's reports/fairness.json (the record says which)."""
    from pipeline.monitoring import champion_fairness
    from pipeline.tracking import start_tracking

    start_tracking(params.mlflow, params.stores.private)
    return champion_fairness(params.mlflow, version, root / FAIRNESS_REPORT)


@task(name="fairness check", **_TASK)
def check_fairness(window: Any, champion: Any, params: Any, primary: str, on_test: Any) -> Any:
    """evaluate's fairness audit on the window's labelled rows, from the predictions the
    champion served, beside its gaps on test."""
    from pipeline.monitoring import fairness_check

    meta = champion.served.meta
    return fairness_check(
        window,
        meta["task"],
        list(meta["classes"]),
        params.evaluate.fairness,
        params.monitor.min_labelled_rows,
        params.evaluate.seed,
        primary,
        on_test,
    )


@task(name="Evidently report", **_TASK)
def evidently_report(
    root: Path,
    folder: Path,
    window: Any,
    champion: Any,
    record: dict[str, Any],
    drift_share: float,
    workspace: str,
    private: bool,
    time_column: str | None = None,
) -> dict[str, str]:
    """The report for people: HTML and JSON in `folder`, and a snapshot in the workspace's
    project `driftline`, whose dashboard plots the checks over time. The snapshot holds
    the decision's figures (`record`), its model version and window as metadata, and is
    stamped with the time of the window's newest row (pipeline/evidently_dashboard.py)."""
    from pipeline.drift import evidently_report as build
    from pipeline.drift_rule import calendar_aligned
    from pipeline.evidently_dashboard import add_check, check_time, stamped_snapshot
    from pipeline.monitoring import window_times

    profile, reference = champion.profile, champion.reference
    features = window.features(profile.names)
    # The reference's predictions as the decision made them: with the window's calendar.
    roles = {column["column"]: column["role"] for column in record.get("columns") or []}
    predicted = champion.served.model.predict(calendar_aligned(reference, features, roles))
    reference = reference.assign(**{PREDICTION: predicted})
    current = features.assign(**{PREDICTION: _window_predictions(window)})
    report = build(
        reference,
        current,
        profile.numeric,
        profile.categorical,
        prediction=PREDICTION,
        drift_share=drift_share,
    )
    time = check_time(record, window_times(window, time_column))
    snapshot = stamped_snapshot(report, record, drift_share, time)
    html, data = folder / "report.html", folder / "report.json"
    snapshot.save_html(str(html))
    snapshot.save_json(str(data))
    add_check(create_folder(root / workspace, private), snapshot)
    return {"html": str(html), "json": str(data)}


def _window_predictions(window: Any) -> Any:
    frame = window.frame
    numeric = frame["prediction_value"]
    return numeric if numeric.notna().all() else frame["prediction"]


@task(name="log to MLflow", **_TASK)
def log_run(params: Any, record: dict[str, Any], folder: Path) -> str:
    import mlflow

    from pipeline.tracking import start_tracking, tracking_errors

    config = params.mlflow
    monitoring = config.model_copy(update={"experiment": f"{config.experiment}-monitoring"})
    # Its artifacts go where the training runs' go.
    experiment = start_tracking(monitoring, params.stores.private)
    with (
        tracking_errors(config),
        mlflow.start_run(
            experiment_id=experiment, run_name=f"monitor {record['window']['end']}"
        ) as run,
    ):
        mlflow.set_tags(
            {
                "driftline.drift": str(record["drift"]).lower(),
                "driftline.fairness": _fairness_tag(record),
            }
        )
        mlflow.log_metrics(_figures(record))
        mlflow.log_artifacts(str(folder), artifact_path="monitoring")
        return str(run.info.run_id)


def _figures(record: dict[str, Any]) -> dict[str, float]:
    figures = {
        "window_rows": float(record["window"]["rows"]),
        "labelled_rows": float(record["window"]["labelled"]),
        "drift": float(record["drift"]),
    }
    if record.get("drift_share") is not None:
        figures["share_of_drifted_columns"] = float(record["drift_share"])
    quality = record.get("quality") or {}
    # Measured on the labels, estimated without them (CBPE, DLE): each when there is one.
    for name in ("current", "estimated"):
        if quality.get(name) is not None:
            figures[f"quality_{name}"] = float(quality[name])
    if quality.get("judged") and quality.get("drop") is not None:
        figures["quality_drop"] = float(quality["drop"])
    fairness = record.get("fairness") or {}
    if fairness.get("audited"):
        # The largest gap per metric between two groups, and beside it the champion's on test.
        for name, gap in (fairness.get("gaps") or {}).items():
            if gap.get("gap") is not None:
                figures[f"fairness_gap_{name}"] = float(gap["gap"])
            if (gap.get("test") or {}).get("gap") is not None:
                figures[f"fairness_test_gap_{name}"] = float(gap["test"]["gap"])
        figures["fairness_gaps_exceeded"] = float(len(fairness.get("exceeded") or []))
    return figures


def _fairness_tag(record: dict[str, Any]) -> str:
    fairness = record.get("fairness") or {}
    if not fairness.get("audited"):
        return "not audited"
    return "exceeded" if fairness.get("exceeded") else "within"


def _fairness_record(
    window: Any, champion: Any, params: Any, root: Path, primary: str
) -> dict[str, Any]:
    """The fairness check as the record holds it; one that fails is a line, never the
    monitor's failure (the decision does not depend on it)."""
    on_test = None
    if params.evaluate.fairness.enabled:
        found = champion_test_fairness(params, champion.served.version, root, return_state=True)
        on_test = found.result() if found.is_completed() else None
    checked = check_fairness(window, champion, params, primary, on_test, return_state=True)
    if not checked.is_completed():
        failure = (checked.message or "no message").splitlines()[0]
        return {"audited": False, "reason": f"the fairness check failed: {failure}"}
    return checked.result().to_dict()


def _run_uri(run_id: str | None) -> str | None:
    return f"runs:/{run_id}/monitoring" if run_id else None


def write_record(folder: Path, log: Path, record: dict[str, Any], private: bool) -> None:
    from pipeline.artifacts import write_json_atomic

    write_json_atomic(folder / "decision.json", record)
    with create_file(log, private).open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


@flow(name="monitoring", flow_run_name="monitoring-{now}")
def monitoring_flow(
    project: str = ".",
    params_file: str = "params.yaml",
    now: str | None = None,
    window_hours: float | None = None,
) -> Any:
    """Check the newest window for drift; record the decision; emit the event on drift.

    `now` (ISO 8601) ends the window, by default the current time; `window_hours`
    overrides `monitor.window_hours` for this run (a backfill, a test).
    """
    from flows.artifacts import monitoring_state, publish_monitoring

    root = Path(project).resolve()
    # Relative paths in params (the MLflow store, the log, the reports) are the project's.
    with contextlib.chdir(root):
        record = _monitor(root, params_file, now, window_hours)
    # For people: the decision as artifacts, and a state named for it ("Drift detected").
    publish_monitoring(record)
    return monitoring_state(record)


def _monitor(
    root: Path, params_file: str, now: str | None, window_hours: float | None
) -> dict[str, Any]:
    from pipeline.config import load_params

    params = load_params(root / params_file)
    config = params.monitor
    end = datetime.fromisoformat(now) if now else datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    log = config.prediction_log
    location = log if is_sql_url(log) else str(root / log)
    window = read_window(location, window_hours or config.window_hours, end)
    reports = root / config.reports
    folder = create_folder(reports / end.strftime("%Y%m%dT%H%M%SZ"), params.stores.private)
    record: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(),
        "window": window.describe(),
        "report": str(folder),
    }
    if window.rows < config.min_window_rows:
        record.update(
            drift=False,
            drift_share=None,
            reasons=[
                f"the window holds {window.rows} rows, fewer than monitor.min_window_rows "
                f"({config.min_window_rows}): nothing decided"
            ],
        )
        write_record(folder, reports / "decisions.jsonl", record, params.stores.private)
        get_run_logger().info(record["reasons"][0])
        return record

    from pipeline.monitoring import decide

    champion = load_champion(params)
    champion = seasonal_reference(champion, window, config, params.data.time_column)
    checked_drift = fast_check(champion, window, config)
    drift = checked_drift.drift
    checked = quality(window, champion, config.min_labelled_rows)
    decision = decide(drift, checked, config)
    record.update(decision.to_dict())  # the rule, the reasons and the per-column table
    record.update(model_version=champion.served.version)
    record.update(drift_method=checked_drift.method)  # summaries, rows, or both
    logger = get_run_logger()
    # Reported beside the decision, never deciding: retraining on the same data does not
    # remove a bias (pipeline.monitoring.FAIRNESS_RULE).
    record["fairness"] = _fairness_record(window, champion, params, root, checked.metric)
    if params.evaluate.fairness.enabled:
        record["reasons"].append(f"fairness: {record['fairness']['reason']}")
    if record["fairness"].get("exceeded"):
        logger.warning("fairness: %s", record["fairness"]["reason"])
    # The report and the MLflow run are for people: if either fails, the decision is
    # still recorded and acted on.
    reported = evidently_report.with_options(name="Evidently report")(
        root,
        folder,
        window,
        champion,
        record,
        config.drift_share,
        config.evidently_workspace,
        params.stores.private,
        params.data.time_column,
        return_state=True,
    )
    record["files"] = reported.result() if reported.is_completed() else None
    write_record(folder, reports / "decisions.jsonl", record, params.stores.private)
    logged = log_run(params, record, folder, return_state=True)
    record["mlflow_run"] = logged.result() if logged.is_completed() else None
    for failed, what in ((reported, "Evidently report"), (logged, "MLflow run")):
        if not failed.is_completed():
            logger.warning("no %s this time: %s", what, failed.message)
    for reason in decision.reasons:
        logger.info(reason)
    if decision.drift:
        from prefect.events import emit_event

        fingerprint = window.fingerprint
        emit_event(
            event=DRIFT_EVENT,
            resource={"prefect.resource.id": f"driftline.window.{fingerprint}"},
            payload={
                "fingerprint": fingerprint,
                "window": window.describe(),
                "drift_share": decision.drift_share,
                "reasons": decision.reasons,
                # Where a person finds the report from any machine: the MLflow run.
                "report": _run_uri(record["mlflow_run"]),
            },
        )
        logger.info("emitted %s for window %s", DRIFT_EVENT, fingerprint)
    return record


if __name__ == "__main__":
    monitoring_flow()
