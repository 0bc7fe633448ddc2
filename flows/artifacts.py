"""What a flow run shows in the Prefect UI: its artifacts, and the name of its end state.

Each flow publishes a markdown summary and tables under fixed keys, so that the UI's
Artifacts page groups them across runs (a key's history is every run's version):

- `training-summary`: the outcome, the gate's verdict and reason, the deploy decision,
  the champion and the data version; `training-stages`: each stage, ran, skipped
  (with DVC's reason), failed or not run; `training-metrics`: the candidate's test
  metrics against the champion's and the floors, as `reports/gate.json` has them;
- `monitoring-summary`: the outcome, the window, the drift and quality checks, the
  retraining decision and the reasons; `monitoring-drift`: each column's method,
  statistic, threshold and verdict, as the decision record has them;
- `retraining-decision`: the guards' decision on a drift alert and its reason, and what
  the retraining did.

A flow ends in a Completed state whose name says the outcome ("Promoted v3", "Drift
detected", "Retraining refused: duplicate"): schedules, automations and
`state.is_completed()` see a completed run, and a person sees what it did. The state's
data is the flow's summary, so `flow(return_state=True).result()` returns it as before.
Artifacts are for people: one that cannot be published is a warning, never a failure.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import get_run_logger
from prefect.states import Completed, State

TRAINING_SUMMARY = "training-summary"
TRAINING_STAGES = "training-stages"
TRAINING_METRICS = "training-metrics"
MONITORING_SUMMARY = "monitoring-summary"
MONITORING_DRIFT = "monitoring-drift"
RETRAINING_DECISION = "retraining-decision"

# A state name is a label in the UI's run list: a refusal's reason is cut to this.
SHORT_REASON = 60


# --- state names ------------------------------------------------------------------------


def short_reason(reason: str | None) -> str:
    """The head of a deploy or gate reason: "does not beat the champion by enough"."""
    text = (reason or "no reason given").removeprefix("gate refused: ")
    for stop in (": ", " ("):
        text = text.split(stop, 1)[0]
    return text if len(text) <= SHORT_REASON else text[: SHORT_REASON - 1].rstrip() + "…"


def training_outcome(summary: dict[str, Any]) -> str:
    """The run's state name: "Promoted v3", "Kept v2", "Challenger v3", "Refused: <why>",
    "Nothing to do", or, when stages ran but deploy did not, "Ran 2 stages"."""
    deploy = summary.get("deploy") or {}
    action, version = deploy.get("action"), deploy.get("version")
    if action == "promote":
        return f"Promoted v{version}"
    if action == "keep":
        return f"Kept v{version}"
    if action == "challenger":
        return f"Challenger v{version}"
    if action == "refuse":
        return f"Refused: {short_reason(deploy.get('reason'))}"
    ran = len(summary.get("ran") or [])
    if ran == 0:
        return "Nothing to do"
    return f"Ran {ran} stage{'s' if ran != 1 else ''}"


def monitoring_outcome(record: dict[str, Any]) -> str:
    """The run's state name: "Too few rows" (nothing checked), "Drift detected", "No drift"."""
    if not record.get("columns"):
        return "Too few rows"
    return "Drift detected" if record.get("drift") else "No drift"


def retraining_outcome(result: dict[str, Any]) -> str:
    """The run's state name: "Retraining refused: <the most specific guard>" or
    "Retrained: <the training's outcome>" on a drift alert; the training's outcome on a
    manual or scheduled run."""
    if not result.get("retrained"):
        guards = result.get("guards") or []
        return f"Retraining refused: {guards[0]}" if guards else "Retraining refused"
    training = training_outcome(result.get("training") or {})
    return f"Retrained: {training}" if result.get("fingerprint") else training


def training_state(summary: dict[str, Any]) -> State:
    return Completed(
        name=training_outcome(summary), message=_training_message(summary), data=summary
    )


def monitoring_state(record: dict[str, Any]) -> State:
    message = "; ".join(record.get("reasons") or [])
    return Completed(name=monitoring_outcome(record), message=message, data=record)


def retraining_state(result: dict[str, Any]) -> State:
    if result.get("fingerprint"):
        message = result.get("reason")
    else:
        message = _training_message(result.get("training") or {})
    return Completed(name=retraining_outcome(result), message=message, data=result)


def _training_message(summary: dict[str, Any]) -> str:
    deploy, gate = summary.get("deploy") or {}, summary.get("gate") or {}
    if deploy.get("reason"):
        return str(deploy["reason"])
    if "evaluate" in (summary.get("ran") or []) and gate.get("reason"):
        return str(gate["reason"])
    return _stages_line(summary)


# --- tables ---------------------------------------------------------------------------


def stage_rows(summary: dict[str, Any], error: str | None = None) -> list[dict[str, Any]]:
    """One row a stage, in run order: ran or skipped (DVC's reason), failed, not run."""
    rows = [
        {
            "stage": run["stage"],
            "status": run["status"],
            "reason": run["reason"],
            "seconds": run["seconds"],
        }
        for run in summary.get("stages") or []
    ]
    for stage in summary.get("failed") or []:
        rows.append({"stage": stage, "status": "failed", "reason": error, "seconds": None})
    for stage in summary.get("not_run") or []:
        reason = "a stage before it failed"
        rows.append({"stage": stage, "status": "not run", "reason": reason, "seconds": None})
    return rows


def metric_rows(gate: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The gate's numbers: each candidate metric against the champion's, the primary
    metric first with its improvement, and the floors."""
    if not gate or not gate.get("candidate"):
        return []
    candidate, champion = gate["candidate"], gate.get("champion") or {}
    floors, primary = gate.get("floors") or {}, gate.get("primary_metric")
    names = sorted(candidate, key=lambda name: name != primary)
    rows = []
    for name in names:
        floor = floors.get(name) or {}
        bound = floor.get("bound")
        rows.append(
            {
                "metric": name,
                "candidate": _figure(candidate.get(name)),
                "champion": _figure(champion.get(name)),
                "improvement": _percent(gate.get("improvement")) if name == primary else None,
                "needed": _percent(gate.get("min_improvement")) if name == primary else None,
                "floor": None if bound is None else f"{_bound(floor)} {bound:g}",
                "meets floor": floor.get("met"),
            }
        )
    return rows


def drift_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each column's verdict as the decision record has it: column, kind, method,
    statistic, threshold, drifted, then any other figure the record gives a column
    (its role and weight in the decision); the predictions' verdict last, when the
    record has one."""
    first = ("column", "kind", "method", "statistic", "threshold", "drifted")
    columns = list(record.get("columns") or [])
    prediction = record.get("prediction") or {}
    if columns and prediction.get("method"):
        columns.append({"role": "prediction", **prediction})
    rows = []
    for column in columns:
        scalars = {
            key: _figure(value)
            for key, value in column.items()
            if value is None or isinstance(value, str | int | float | bool)
        }
        rows.append(
            {
                **{key: scalars.get(key) for key in first},
                **{k: v for k, v in scalars.items() if k not in first},
            }
        )
    return rows


# --- markdown -------------------------------------------------------------------------


def training_markdown(summary: dict[str, Any], error: str | None = None) -> str:
    failed = ", ".join(summary.get("failed") or [])
    name = (f"Failed at {failed}" if failed else "Failed") if error else training_outcome(summary)
    gate, deploy = summary.get("gate"), summary.get("deploy")
    rows = [("trigger", summary.get("trigger")), ("stages", _stages_line(summary))]
    if error:
        rows.append(("error", error))
    if gate:
        judged = "" if "evaluate" in (summary.get("ran") or []) else " (an earlier run's)"
        verdict = "passed" if gate.get("passed") else "refused"
        rows.append((f"gate{judged}", f"{verdict}: {gate.get('reason')}"))
    else:
        rows.append(("gate", "not run"))
    if deploy:
        version = f" v{deploy['version']}" if deploy.get("version") else ""
        rows.append(("deploy", f"{deploy.get('action')}{version}: {deploy.get('reason')}"))
    else:
        rows.append(("deploy", "did not run: the champion is unchanged"))
    champion = summary.get("champion")
    rows.append(("champion", f"v{champion}" if champion else "none"))
    if summary.get("champion_moved"):
        rows.append(("champion moved", summary["champion_moved"]))
    rows.append(("data version", _data_version(summary)))
    parts = [f"# {name}", _facts(rows)]
    metrics = metric_rows(gate)
    if metrics:
        compared = gate.get("champion_version") if gate else None
        heading = f"champion v{compared}" if compared else "no champion yet"
        parts += [f"## Metrics against the champion ({heading})", _rows_table(metrics)]
    parts += ["## Stages", _rows_table(stage_rows(summary, error))]
    return "\n\n".join(parts) + "\n"


def monitoring_markdown(record: dict[str, Any]) -> str:
    window = record.get("window") or {}
    rows = [
        ("window", f"{window.get('start')} to {window.get('end')}"),
        ("rows", f"{window.get('rows')}, {window.get('labelled')} labelled"),
        ("fingerprint", window.get("fingerprint")),
    ]
    if record.get("model_version"):
        rows.append(("champion", f"v{record['model_version']}"))
    reasons = record.get("reasons") or []
    if record.get("columns"):
        if record.get("rule"):
            rows.append(("rule", record["rule"]))
        rows.append(("data drift", _data_drift_line(record)))
        prediction = record.get("prediction") or {}
        if prediction.get("method"):
            verdict = "drifted" if prediction.get("drifted") else "no drift"
            rows.append(
                (
                    "prediction drift",
                    f"{verdict}: {prediction['method']} {_figure(prediction.get('statistic'))} "
                    f"against {_figure(prediction.get('threshold'))}",
                )
            )
        rows.append(("quality", _quality_line(record.get("quality") or {})))
    if record.get("drift"):
        retraining = (
            "requested: the driftline.drift.detected event starts the training "
            "deployment, whose guards decide"
        )
    else:
        retraining = "not requested: " + (reasons[0] if reasons else "no drift")
    rows.append(("retraining", retraining))
    if record.get("mlflow_run"):
        rows.append(("MLflow run", record["mlflow_run"]))
    files = record.get("files") or {}
    if files.get("html"):
        rows.append(("Evidently report", files["html"]))
    parts = [f"# {monitoring_outcome(record)}", _facts(rows)]
    if reasons:
        parts += ["## Reasons", "\n".join(f"- {reason}" for reason in reasons)]
    return "\n\n".join(parts) + "\n"


def retraining_markdown(result: dict[str, Any], error: str | None = None) -> str:
    name = "Retraining failed" if error else retraining_outcome(result)
    guards = result.get("guards") or []
    rows = [
        ("window", result.get("fingerprint")),
        ("rows", result.get("rows")),
        ("drift share", _percent(result.get("drift_share"), signed=False)),
        ("decision", "retrain" if result.get("retrained") or error else "refused"),
        ("guards that applied", ", ".join(guards) if guards else "none"),
        ("reason", result.get("reason")),
    ]
    if error:
        rows.append(("error", error))
    landed = result.get("landed") or {}
    if landed:
        rows.append(("landed", f"{landed.get('rows')} labelled rows in {landed.get('path')}"))
    if result.get("training"):
        rows.append(("training", training_outcome(result["training"])))
    if result.get("report"):
        rows.append(("drift report", result["report"]))
    return f"# {name}\n\n{_facts(rows)}\n"


# --- publishing -----------------------------------------------------------------------


def publish_training(summary: dict[str, Any], error: str | None = None) -> None:
    """The training run's summary, stage table and, when the gate ran, metric table."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    def publish() -> None:
        create_markdown_artifact(
            training_markdown(summary, error),
            key=TRAINING_SUMMARY,
            description="The training run: its outcome, the gate, the deploy decision",
        )
        create_table_artifact(
            stage_rows(summary, error),
            key=TRAINING_STAGES,
            description="Each DVC stage: ran, skipped (DVC's reason), failed or not run",
        )
        metrics = metric_rows(summary.get("gate"))
        if metrics:
            create_table_artifact(
                metrics,
                key=TRAINING_METRICS,
                description="The candidate's test metrics against the champion's (the gate)",
            )

    _publish(publish)


def publish_monitoring(record: dict[str, Any]) -> None:
    """The monitoring run's summary and, when the window was checked, its drift table."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    def publish() -> None:
        create_markdown_artifact(
            monitoring_markdown(record),
            key=MONITORING_SUMMARY,
            description="The drift check: the window, drift, quality, the retraining decision",
        )
        columns = drift_rows(record)
        if columns:
            create_table_artifact(
                columns,
                key=MONITORING_DRIFT,
                description="Each column's drift test: method, statistic, threshold, verdict",
            )

    _publish(publish)


def publish_retraining(result: dict[str, Any], error: str | None = None) -> None:
    """The guards' decision on a drift alert, its reason, and what the retraining did."""
    from prefect.artifacts import create_markdown_artifact

    def publish() -> None:
        create_markdown_artifact(
            retraining_markdown(result, error),
            key=RETRAINING_DECISION,
            description="The retraining guards' decision on a drift alert, and its reason",
        )

    _publish(publish)


def _publish(publish: Any) -> None:
    try:
        publish()
    except Exception as exc:  # for people: the run's outcome stands without them
        get_run_logger().warning("this run's artifacts were not published: %s", exc)


# --- formatting -----------------------------------------------------------------------


def _stages_line(summary: dict[str, Any]) -> str:
    ran, skipped = len(summary.get("ran") or []), len(summary.get("skipped") or [])
    line = f"{ran} ran, {skipped} skipped"
    if summary.get("failed"):
        line += f", {len(summary['failed'])} failed, {len(summary.get('not_run') or [])} not run"
    return line


def _data_version(summary: dict[str, Any]) -> str:
    pushed, commit = summary.get("pushed"), summary.get("commit")
    parts = ["nothing pushed" if pushed is None else f"{pushed} file(s) pushed to the remote"]
    parts.append(f"dvc.lock committed as {commit[:12]}" if commit else "no new commit")
    return "; ".join(parts)


def _data_drift_line(record: dict[str, Any]) -> str:
    """The drift line: "3 of 9 counted columns drifted (hr, temp, hum); drifted but not
    counted: mnth; drift share 40%, columns weighed by importance"."""
    columns = record["columns"]
    roles = any("counted" in column for column in columns)
    counted = [column for column in columns if column.get("counted", True)]
    drifted = [column["column"] for column in counted if column.get("drifted")]
    ignored = [
        column["column"]
        for column in columns
        if not column.get("counted", True) and column.get("drifted")
    ]
    line = f"{len(drifted)} of {len(counted)} {'counted ' if roles else ''}columns drifted"
    line += f" ({', '.join(drifted)})" if drifted else ""
    line += f"; drifted but not counted: {', '.join(ignored)}" if ignored else ""
    share, weights = record.get("drift_share"), record.get("weights")
    if isinstance(share, int | float):
        line += f"; drift share {share:.0%}"
        line += f", columns weighed by {weights}" if weights else ""
    return line


def _quality_line(quality: dict[str, Any]) -> str:
    if not quality:
        return "not checked"
    if not quality.get("judged"):
        return f"not judged: {quality.get('reason')}"
    return f"{quality.get('reason')} ({_percent(quality.get('drop'))} worse)"


def _figure(value: Any) -> Any:
    """A float at 5 significant digits (a table, not a record); NaN as empty."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.5g}")
    return value


def _percent(value: Any, signed: bool = True) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return f"{value:+.2%}" if signed else f"{value:.2%}"


def _bound(floor: dict[str, Any]) -> str:
    return ">=" if floor.get("kind") == "min" else "<="


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _facts(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(f"- **{label}**: {_cell(value) or 'none'}" for label, value in rows)


def _table(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(_cell(value) for value in row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def _rows_table(rows: list[dict[str, Any]]) -> str:
    header = list(rows[0]) if rows else []
    return _table(header, [tuple(row.get(key) for key in header) for row in rows])
