"""`driftline simulate`: held-out data replayed as production traffic, to watch the loop.

The source rows after `data.until` were never ingested, so no model has seen them. Day
by day they are cleaned as `clean` cleans training rows and POSTed to the prediction
API that `driftline up` started, with their key and time as context; their labels
arrive `label_delay_days` later (`driftline label`'s store). Every `check_days` the
`monitoring` deployment runs on the traffic since the last check that decided
something; on drift, the monitor's event starts the `training` deployment, whose
guards, retraining, gate and promotion follow. The simulation waits for that run,
saying every 30 s which flow run it waits on, its state and its current stage, then for
the server to serve a new champion, and ends with what happened, where the reports
are, and a link to each page to open in the Prefect, MLflow and Evidently UIs.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Params
from pipeline.errors import DataError
from pipeline.retraining import RetrainingLedger, open_ledger
from pipeline.stack import Stack, StackError

MONITORING = "monitoring/monitoring"
TRAINING_FLOW = "retraining"
# Where the summary's links point: `mlflow ui` and `evidently ui` on their own ports (the
# prediction API has Evidently's default, 8000).
MLFLOW_UI = "http://127.0.0.1:5000"
EVIDENTLY_PORT = 8001


@dataclass
class UiPages:
    """The ids the summary's links need: the last check's flow run, the MLflow
    experiments by name, the Evidently project."""

    monitoring_run: str | None = None
    experiments: dict[str, str] = field(default_factory=dict)
    evidently_project: str | None = None


@dataclass
class Outcome:
    """What a simulation did, for the closing summary."""

    days: int = 0
    requests: int = 0
    rows: int = 0
    labels: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    retrainings: list[dict[str, Any]] = field(default_factory=list)
    champion_before: str | None = None
    champion_after: str | None = None
    pages: UiPages = field(default_factory=UiPages)


def held_out_days(params: Params, weeks: int) -> list[tuple[str, pd.DataFrame]]:
    """The first `weeks` weeks after `data.until`, one frame per day: the features as
    `clean` makes them, the key and time as the source holds them (a client sends
    what it has; the landing batch must look like the source)."""
    from pipeline.schema import DatasetSpec
    from pipeline.sources import read_source
    from pipeline.stages.clean import clean
    from pipeline.stages.ingest import hold_out

    data = params.data
    if data.until is None or data.time_column is None:
        raise DataError(
            "data.until is not set, so no rows were held out of training to replay: set it "
            "(e.g. until: '2012-10-31' for the bike data) and run `make run` again"
        )
    _, held = hold_out(read_source(data).frame, data.time_column, data.until)
    if held.empty:
        raise DataError(f"the source has no rows after data.until ({data.until}) to replay")
    spec = DatasetSpec.read(Path("data/raw/schema.yaml"))
    cleaned = clean(held, spec, params.clean).frame
    context = [c for c in data.key_columns if c in held.columns]
    if context:
        raw_time = held.set_index(context)[data.time_column]
        keys = cleaned.set_index(context).index
        cleaned = cleaned.assign(**{data.time_column: raw_time.reindex(keys).to_numpy()})
    days = pd.to_datetime(cleaned[data.time_column], format="mixed").dt.normalize()
    first = days.min()
    cleaned = cleaned[days < first + pd.Timedelta(days=7 * weeks)]
    days = days[cleaned.index]
    return [(day.date().isoformat(), part) for day, part in cleaned.groupby(days, sort=True)]


def records(day: pd.DataFrame, features: list[str], context: list[str], key: str) -> list[dict]:
    """One day's rows as /predict records with an id to join the labels on."""
    rows = []
    for row in day[[*features, *context]].to_dict(orient="records"):
        record = {name: _plain(value) for name, value in row.items()}
        record["id"] = f"sim-{record[key]}" if key in record else None
        rows.append(record)
    return rows


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


def http_json(url: str, body: Any | None = None, timeout: float = 30) -> Any:
    """GET or POST JSON; an error answer or a server that is gone is a StackError."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        raise StackError(f"{url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise StackError(f"{url} did not answer ({exc}): is `driftline up` running?") from None


def champion_served(stack: Stack) -> str | None:
    try:
        return str(http_json(f"{stack.serving}/health", timeout=5)["model_version"])
    except StackError:
        return None


def store_day_labels(
    log: str, day: pd.DataFrame, target: str, key: str, private: bool = True
) -> int:
    """Store one day's labels as `driftline label` would; how many matched."""
    from pipeline.label_store import store_labels

    labels = pd.DataFrame(
        {
            "id": [f"sim-{value}" for value in day[key]],
            "label": day[target].to_numpy(),
            "time": datetime.now(UTC).isoformat(),
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.parquet"
        labels.to_parquet(path, index=False)
        return store_labels(path, log, private).matched


def run_monitoring(root: Path, since: datetime, reports: Path) -> dict[str, Any]:
    """One run of the monitoring deployment over the traffic since `since`; the
    decision it recorded."""
    from prefect.deployments import run_deployment

    now = datetime.now(UTC)
    hours = (now - since).total_seconds() / 3600
    run = run_deployment(
        MONITORING,
        parameters={"project": str(root), "now": now.isoformat(), "window_hours": hours},
        timeout=600,
    )
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise StackError(f"the monitoring run {run.name} ended {state}: see the Prefect UI")
    decisions = (reports / "decisions.jsonl").read_text().splitlines()
    return {**json.loads(decisions[-1]), "flow_run": str(run.id)}


@dataclass(frozen=True)
class RetrainingProgress:
    """Where the retraining a drift alert started is, as Prefect has it: its flow run
    (None before the trigger has made one), the run's state, and its newest task (the
    training's current stage)."""

    run: str | None = None
    state: str | None = None
    stage: str | None = None


def retraining_progress(started_after: datetime, run_id: str | None) -> RetrainingProgress:
    """The retraining's flow run: the one the ledger names (`run_id`), or else the newest
    `retraining` run scheduled after the alert (the ledger names it once the guards have
    decided); the training flow runs inside it as a subflow, whose tasks are the stages."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    with get_client(sync_client=True) as client:
        if run_id is not None:
            found = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)]))
            runs = client.read_flow_runs(flow_run_filter=found)
        else:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[TRAINING_FLOW])),
                flow_run_filter=FlowRunFilter(
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=started_after)
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=1,
            )
        if not runs:
            return RetrainingProgress()
        run = runs[0]
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
            )
        )
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[run.id, *(child.id for child in children)])
            ),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC,
            limit=1,
        )
    state = run.state.name if run.state is not None else None
    return RetrainingProgress(run.name, state, tasks[0].name if tasks else None)


def progress_line(progress: RetrainingProgress, seconds: float) -> str:
    """What `driftline simulate` prints while it waits for a retraining."""
    waited = f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"
    if progress.run is None:
        return (
            f"waiting for the retraining ({waited}): no retraining flow run yet (the drift "
            "event's trigger makes one; a worker must be running: `driftline up`)"
        )
    where = f"{progress.state}, at {progress.stage}" if progress.stage else progress.state
    return f"waiting for the retraining ({waited}): flow run {progress.run} is {where}"


def wait_for_retraining(
    started_after: datetime,
    ledger: RetrainingLedger,
    report: Callable[[str], None] | None = None,
    timeout: float = 1800,
    every: float = 30,
    poll: float = 2,
    progress: Callable[[datetime, str | None], RetrainingProgress] = retraining_progress,
) -> dict[str, Any]:
    """The retraining the drift event started: wait for it to finish; its ledger line.
    Every `every` seconds, `report` gets which flow run it waits on and where that is."""
    began = time.monotonic()
    deadline, next_report = began + timeout, began + every
    while time.monotonic() < deadline:
        run_id = None
        for entry in reversed(ledger.entries()):
            if datetime.fromisoformat(entry["time"]) < started_after:
                break
            if entry["status"] in ("done", "failed", "refused"):
                return entry
            run_id = run_id or entry.get("run")
        if report is not None and time.monotonic() >= next_report:
            try:
                found = progress(started_after, run_id)
            except Exception as exc:  # the Prefect API busy or gone: keep waiting
                report(f"waiting for the retraining: its progress is unknown ({exc})")
            else:
                report(progress_line(found, time.monotonic() - began))
            next_report = time.monotonic() + every
        time.sleep(poll)
    raise StackError("no retraining finished in time: see the Prefect UI and .driftline/logs/")


def simulate(
    root: Path,
    params: Params,
    *,
    weeks: int,
    check_days: int,
    label_delay_days: int,
    day_seconds: float,
    report: Callable[[str], None],
    advance: Callable[[int], None] | None = None,
    days_known: Callable[[int], None] | None = None,
) -> Outcome:
    """Replay the held-out weeks through the running stack; what happened."""
    stack = Stack.load(root)
    if stack is None or champion_served(stack) is None:
        raise StackError("the local stack is not running: start it with `driftline up`")
    import os

    os.environ["PREFECT_API_URL"] = stack.prefect_api
    info = http_json(f"{stack.serving}/model")
    features = [*info["features"]["numeric"], *info["features"]["categorical"]]
    data = params.data
    key = data.key_columns[0] if data.key_columns else None
    if key is None:
        raise DataError("data.key_columns is empty: simulated labels need a key to join on")
    context = [c for c in (*data.key_columns, data.time_column) if c and c not in features]
    days = held_out_days(params, weeks)
    if days_known is not None:
        days_known(len(days))
    outcome = Outcome(champion_before=champion_served(stack))
    log, private = params.monitor.prediction_log, params.stores.private
    reports = root / params.monitor.reports
    pending: list[tuple[int, float, pd.DataFrame]] = []  # (due day, sent at, rows)
    window_start = datetime.now(UTC)
    for number, (day, rows) in enumerate(days, start=1):
        sent = records(rows, features, context, key)
        for start in range(0, len(sent), 100):
            http_json(f"{stack.serving}/predict", {"records": sent[start : start + 100]})
            outcome.requests += 1
        outcome.rows += len(sent)
        pending.append((number + label_delay_days, time.monotonic(), rows))
        outcome.labels += _store_due(log, pending, number, data.target, key, private, wait=False)
        outcome.days = number
        if advance is not None:
            advance(1)
        time.sleep(day_seconds)
        if number % check_days and number != len(days):
            continue
        outcome.labels += _store_due(log, pending, number, data.target, key, private, wait=True)
        decision = run_monitoring(root, window_start, reports)
        decision["through"] = day
        outcome.checks.append(decision)
        report(f"{day}: monitor: {'; '.join(decision['reasons'])}")
        if decision["window"]["rows"] >= params.monitor.min_window_rows:
            window_start = datetime.now(UTC)  # the next check looks at newer traffic
        if decision["drift"]:
            report("drift: the training deployment was triggered; waiting for the retraining")
            started = datetime.fromisoformat(decision["time"])
            ledger = open_ledger(log, reports / "retrainings.jsonl", private)
            entry = wait_for_retraining(started, ledger, report)
            outcome.retrainings.append(entry)
            report(retraining_line(entry))
            champion = _champion_in_registry(params)
            if champion and champion != champion_served(stack):
                _wait_served(stack, champion, report)
    outcome.champion_after = champion_served(stack)
    outcome.pages = ui_pages(root, params, outcome)
    return outcome


def ui_pages(root: Path, params: Params, outcome: Outcome) -> UiPages:
    """The ids behind the summary's links; one that cannot be read is left out (the
    links then open the UI's start page)."""
    from pipeline.evidently_dashboard import project_id
    from pipeline.tracking import start_tracking

    pages = UiPages(monitoring_run=outcome.checks[-1].get("flow_run") if outcome.checks else None)
    # A store that cannot be read now costs a link its id, never the summary.
    with contextlib.suppress(Exception):
        import mlflow

        start_tracking(params.mlflow, params.stores.private)
        for name in (params.mlflow.experiment, f"{params.mlflow.experiment}-monitoring"):
            found = mlflow.get_experiment_by_name(name)
            if found is not None:
                pages.experiments[name] = str(found.experiment_id)
    with contextlib.suppress(Exception):
        pages.evidently_project = project_id(root / params.monitor.evidently_workspace)
    return pages


def retraining_line(entry: dict[str, Any]) -> str:
    """One ledger entry as the line the simulation prints."""
    status = entry["status"]
    if status == "done":
        line = f"retraining: done: {entry.get('action')}: {entry.get('reason')}"
        return f"{line}; champion v{entry['champion']}" if entry.get("champion") else line
    if status == "failed":
        return f"retraining: failed: {entry.get('error')}"
    return f"retraining: {status}: {entry.get('reason')}"


def _store_due(
    log: str,
    pending: list[tuple[int, float, pd.DataFrame]],
    today: int,
    target: str,
    key: str,
    private: bool,
    wait: bool,
) -> int:
    """Store the labels that are due; a prediction must be in the log (flushed every
    2 s) before its label can join it."""
    stored = 0
    for item in list(pending):
        due, sent_at, rows = item
        if due > today:
            continue
        settle = sent_at + 3 - time.monotonic()
        if settle > 0:
            if not wait:
                continue
            time.sleep(settle)
        stored += store_day_labels(log, rows, target, key, private)
        pending.remove(item)
    return stored


def _champion_in_registry(params: Params) -> str | None:
    from pipeline.registry import CHAMPION, alias_version
    from pipeline.tracking import start_tracking

    start_tracking(params.mlflow, params.stores.private)
    found = alias_version(params.mlflow, CHAMPION)
    return str(found.version) if found is not None else None


def _wait_served(stack: Stack, version: str, report: Callable[[str], None]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if champion_served(stack) == version:
            report(f"serving: the API now serves champion v{version}")
            return
        time.sleep(1)
    report(f"serving: the API did not pick up v{version} within 2 minutes")


def summary_lines(outcome: Outcome, stack_ui: str, params: Params) -> list[str]:
    from pipeline.prediction_log import is_sql_url
    from pipeline.secrets import mask_url
    from pipeline.tracking import tracking_uri

    log = params.monitor.prediction_log
    ledger = (
        f"the retrainings table of {mask_url(log)}"
        if is_sql_url(log)
        else f"{params.monitor.reports}/retrainings.jsonl"
    )
    drifted = sum(1 for check in outcome.checks if check["drift"])
    promoted = [r for r in outcome.retrainings if r.get("action") == "promote"]
    return [
        f"replayed {outcome.days} days: {outcome.rows} rows in {outcome.requests} requests, "
        f"{outcome.labels} labels",
        f"monitor: {len(outcome.checks)} checks, {drifted} with drift",
        f"retrainings: {len(outcome.retrainings)}, promoted: {len(promoted)}",
        f"champion served: v{outcome.champion_before} -> v{outcome.champion_after}",
        f"reports: {params.monitor.reports}/ (decisions.jsonl, one folder per check with the "
        f"Evidently report), reports/promotions.jsonl; the retraining ledger: {ledger}",
        *ui_links(outcome, stack_ui, params, mask_url(tracking_uri(params.mlflow))),
    ]


def ui_links(outcome: Outcome, stack_ui: str, params: Params, tracking: str) -> list[str]:
    """The summary's last lines: each page to open, as a link on a line of its own (a
    terminal makes it clickable), with the command that starts a UI `up` does not."""
    pages, experiment = outcome.pages, params.mlflow.experiment
    lines = [f"Prefect UI, the flow runs: {stack_ui}/runs"]
    # Not `?tab=Artifacts`: the UI hides that tab until the run has loaded, and falls back
    # to Logs.
    if pages.monitoring_run:
        lines.append(
            f"  the last check (its Artifacts tab): {stack_ui}/runs/flow-run/{pages.monitoring_run}"
        )
    run = next((r.get("run") for r in reversed(outcome.retrainings) if r.get("run")), None)
    if run:
        lines.append(f"  the last retraining (its Artifacts tab): {stack_ui}/runs/flow-run/{run}")
    mlflow_ui = _mlflow_base(tracking)
    lines.append(f"MLflow UI (mlflow ui --backend-store-uri {tracking} --port 5000):")
    for name, what in (
        (f"{experiment}-monitoring", "the checks, one run each"),
        (experiment, "the training runs"),
    ):
        found = pages.experiments.get(name)
        page = f"#/experiments/{found}/runs" if found else "#/experiments"
        lines.append(f"  {what} (experiment {name}): {mlflow_ui}/{page}")
    lines.append(
        f"  the model's versions and aliases: {mlflow_ui}/#/models/{params.mlflow.registered_model}"
    )
    workspace = params.monitor.evidently_workspace
    evidently_ui = f"http://127.0.0.1:{EVIDENTLY_PORT}"
    lines.append(f"Evidently UI (evidently ui --workspace {workspace} --port {EVIDENTLY_PORT}):")
    project = pages.evidently_project
    dashboard = f"{evidently_ui}/projects/{project}" if project else evidently_ui
    lines.append(f"  the dashboard of the checks: {dashboard}")
    return lines


def _mlflow_base(tracking: str) -> str:
    """A tracking server is its own UI (its address without credentials); a local store
    is shown by `mlflow ui` on MLFLOW_UI."""
    from urllib.parse import urlsplit

    parts = urlsplit(tracking)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return MLFLOW_UI
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"
