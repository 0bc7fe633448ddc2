"""The monitoring and retraining flows' branches, in this process, under
`prefect_test_harness()`: a temporary Prefect API, no server to start, no worker.

Each test copies the session's shipped project (nine stages run, champion version 1 in
its own MLflow registry), logs traffic into its prediction log as serving would, and
runs a flow on it. Events go to Prefect's own asserting client, so a test reads what
was emitted. The one test of the whole loop with a real server and worker is
tests/flows/test_drift_loop.py.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, Project
from tests.flows.conftest import dvc, small_project

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
PROFILE = "data/reference/drift_profile"


@pytest.fixture(scope="module", autouse=True)
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    # A safety net far above the few seconds it takes, for a busy machine.
    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Every event the flows emit, kept by Prefect's AssertingEventsClient."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker

    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)

    def events(name: str) -> list[Any]:
        worker.wait_until_empty()
        client = worker._client  # what Prefect's own fixtures read
        return [event for event in (client.events if client else []) if event.event == name]

    yield events
    worker.drain()


@pytest.fixture
def monitored(shipped: Project) -> Project:
    """A shipped project whose monitor decides on 100 rows and 50 labels."""
    shipped.update("monitor", min_window_rows=100, min_labelled_rows=50)
    return shipped


def traffic(project: Project, rows: int, drifted: bool) -> pd.DataFrame:
    """Test-split rows as the champion's inputs; drifted: every numeric input moved far
    outside what the reference saw."""
    from pipeline.drift import read_profile

    profile = read_profile(project.root / PROFILE)
    frame = pd.read_parquet(project.root / "data/split/test.parquet").head(rows)
    if drifted:
        frame = frame.assign(**{name: frame[name] * 3 + 7 for name in profile.numeric})
    return frame


def log_traffic(project: Project, frame: pd.DataFrame, when: datetime) -> list[str]:
    """Write `frame` to the project's prediction log as serving does; the request ids."""
    from pipeline.drift import read_profile
    from pipeline.prediction_log import PredictionLog

    names = read_profile(project.root / PROFILE).names
    ids = [uuid.uuid4().hex for _ in range(len(frame))]
    rows = [
        {
            "request_id": request_id,
            "timestamp": when,
            "model_version": "1",
            "inputs": {name: record[name] for name in names},
            "prediction": float(record["cnt"]) + 1.0,
            "context": {"instant": record["instant"], "dteday": str(record["dteday"].date())},
        }
        for request_id, record in zip(ids, frame.to_dict(orient="records"), strict=True)
    ]
    log = PredictionLog.sql(project.store_url, start=False)
    log.append(rows)
    log.close()
    return ids


def send_labels(project: Project, ids: list[str], labels: list[Any]) -> None:
    from pipeline.label_store import store_labels

    file = project.root / f"labels-{uuid.uuid4().hex[:6]}.csv"
    pd.DataFrame({"id": ids, "label": labels, "time": NOW.isoformat()}).to_csv(file, index=False)
    stored = store_labels(file, project.store_url)
    assert stored.matched == len(ids)


def monitor(project: Project) -> dict[str, Any]:
    from flows.monitoring import monitoring_flow

    return monitoring_flow(str(project.root), now=NOW.isoformat(), window_hours=1)


def monitor_state(project: Project) -> Any:
    from flows.monitoring import monitoring_flow

    return monitoring_flow(
        str(project.root), now=NOW.isoformat(), window_hours=1, return_state=True
    )


def published(state: Any) -> dict[str, Any]:
    """The artifacts a flow run published, by key: a table's rows, a markdown's text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=run))
    return {
        artifact.key: json.loads(artifact.data) if artifact.type == "table" else artifact.data
        for artifact in found
    }


def decisions(project: Project) -> list[dict[str, Any]]:
    path = project.root / "reports/monitoring/decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def ledger(project: Project) -> list[dict[str, Any]]:
    from pipeline.retraining import open_ledger

    return open_ledger(project.store_url, project.root / "unused.jsonl").entries()


def retrain(project: Project, window: dict[str, Any]) -> Any:
    from flows.retraining import retraining_flow

    return retraining_flow(
        str(project.root),
        trigger="drift",
        fingerprint=window["fingerprint"],
        rows=window["rows"],
        window_start=window["start"],
        window_end=window["end"],
        return_state=True,
    )


def read_window(project: Project) -> Any:
    from pipeline.monitoring import read_window

    return read_window(project.store_url, 1, NOW)


# --- monitoring -----------------------------------------------------------------------


def test_a_window_too_small_decides_nothing_and_says_so(shipped: Project, emitted: Any) -> None:
    log_traffic(shipped, traffic(shipped, 40, drifted=True), NOW - timedelta(minutes=5))

    state = monitor_state(shipped)

    record = state.result()
    assert state.is_completed() and state.name == "Too few rows"
    artifacts = published(state)
    assert list(artifacts) == ["monitoring-summary"]  # nothing checked: no drift table
    assert artifacts["monitoring-summary"].startswith("# Too few rows\n")
    assert "fewer than monitor.min_window_rows (500)" in artifacts["monitoring-summary"]
    assert record["drift"] is False and record["window"]["rows"] == 40
    assert record["reasons"] == [
        "the window holds 40 rows, fewer than monitor.min_window_rows (500): nothing decided"
    ]
    assert "model_version" not in record  # no champion loaded, no check run
    assert decisions(shipped) == [record]
    assert emitted("driftline.drift.detected") == []


def test_drift_without_labels_is_decided_on_the_data_and_the_estimate(
    monitored: Project, emitted: Any
) -> None:
    log_traffic(monitored, traffic(monitored, 120, drifted=True), NOW - timedelta(minutes=5))

    state = monitor_state(monitored)

    record = state.result()
    assert state.is_completed() and state.name == "Drift detected"
    assert state.message == "; ".join(record["reasons"])
    artifacts = published(state)
    # The drift table: every column of the decision record, as the record has it.
    table = artifacts["monitoring-drift"]
    assert [row["column"] for row in table[: len(record["columns"])]] == [
        column["column"] for column in record["columns"]
    ]
    for row, column in zip(table, record["columns"], strict=False):
        assert row["method"] == column["method"] and row["drifted"] is column["drifted"]
        assert row["statistic"] == pytest.approx(column["statistic"], rel=1e-4)
        assert row["threshold"] == pytest.approx(column["threshold"], rel=1e-4)
    summary = artifacts["monitoring-summary"]
    assert summary.startswith("# Drift detected\n")
    assert "- **retraining**: requested: the driftline.drift.detected event" in summary
    # No label yet: quality is the champion's DLE estimate (registered by deploy).
    assert "- **quality**: estimated rmse " in summary
    assert f"- **MLflow run**: {record['mlflow_run']}" in summary
    assert record["drift"] is True and record["window"]["labelled"] == 0
    quality = record["quality"]
    assert quality["source"] == "estimated" and quality["current"] is None
    assert quality["method"] == "DLE" and quality["estimated"] > 0
    assert any(
        "estimated rmse" in reason and "0 labelled rows, fewer than" in reason
        for reason in record["reasons"]
    )
    assert record["files"] is not None and record["mlflow_run"] is not None
    [event] = emitted("driftline.drift.detected")
    assert event.payload["fingerprint"] == record["window"]["fingerprint"]
    # A worker on another machine acts on it: the payload names no local path.
    assert event.payload["report"] == f"runs:/{record['mlflow_run']}/monitoring"
    assert str(monitored.root) not in json.dumps(event.payload)


def test_a_failing_report_still_records_and_signals_the_decision(
    monitored: Project, emitted: Any
) -> None:
    # The Evidently workspace cannot be created where a file stands.
    (monitored.root / "evidently").write_text("a file, not a workspace")
    log_traffic(monitored, traffic(monitored, 120, drifted=True), NOW - timedelta(minutes=5))

    record = monitor(monitored)

    assert record["drift"] is True and record["files"] is None
    assert record["mlflow_run"] is not None
    [recorded] = decisions(monitored)
    assert recorded["drift"] is True and recorded["files"] is None
    assert recorded["window"]["fingerprint"] == record["window"]["fingerprint"]
    assert len(emitted("driftline.drift.detected")) == 1


def test_a_failing_mlflow_run_still_records_and_signals_the_decision(
    monitored: Project, emitted: Any
) -> None:
    import mlflow

    # The monitor's experiment exists but is deleted: MLflow refuses a run in it.
    mlflow.set_tracking_uri(monitored.tracking_uri)
    client = mlflow.MlflowClient()
    client.delete_experiment(client.create_experiment("driftline-monitoring"))
    log_traffic(monitored, traffic(monitored, 120, drifted=True), NOW - timedelta(minutes=5))

    record = monitor(monitored)

    assert record["drift"] is True and record["mlflow_run"] is None
    assert record["files"] is not None and Path(record["files"]["html"]).exists()
    [recorded] = decisions(monitored)
    assert recorded["drift"] is True and recorded["files"] == record["files"]
    assert len(emitted("driftline.drift.detected")) == 1


def test_the_monitor_compares_with_the_champions_reference_not_the_checkouts(
    monitored: Project, emitted: Any
) -> None:
    """After a retraining whose split drew a new reference and whose candidate the gate
    refused, `data/reference` is the refused candidate's: the monitor must not read it."""
    from pipeline.drift import build_profile, read_profile, write_profile

    folder = monitored.root / "data/reference"
    champions = pd.read_parquet(folder / "reference.parquet")
    profile = read_profile(folder / "drift_profile")
    calm = champions.sample(n=150, random_state=1)  # traffic like the champion's reference
    log_traffic(monitored, calm, NOW - timedelta(minutes=5))
    # The refused candidate's split: a reference far from what the champion saw.
    shifted = champions.assign(**{name: champions[name] * 3 + 7 for name in profile.numeric})
    shutil.rmtree(folder)
    folder.mkdir()
    shifted.to_parquet(folder / "reference.parquet")
    write_profile(
        build_profile(shifted, profile.numeric, profile.categorical), folder / "drift_profile"
    )

    state = monitor_state(monitored)

    record = state.result()
    assert state.is_completed() and state.name == "No drift"
    assert published(state)["monitoring-summary"].startswith("# No drift\n")
    assert record["drift"] is False, record["reasons"]
    assert record["model_version"] == "1" and record["drift_share"] < 0.5
    assert record["files"] is not None  # the report, too, used the champion's reference
    assert emitted("driftline.drift.detected") == []


def test_a_champion_registered_without_its_reference_is_one_clear_error(
    monitored: Project,
) -> None:
    """A version registered by a Driftline that did not register the reference: the
    monitor says what to do rather than compare with whatever a checkout holds."""
    import mlflow

    from pipeline import registry, tracking
    from pipeline.config import load_params
    from pipeline.models import load_model

    root = monitored.root
    config = load_params(monitored.params_path).mlflow
    tracking.start_tracking(config)
    with mlflow.start_run():
        uri = tracking.log_model(
            load_model(root / "models/tuned"),
            root / "models/tuned",
            pd.read_parquet(root / "data/split/val.parquet"),
            onnx_dir=root / "models/compressed",
        )
    registry.set_alias(config, registry.CHAMPION, registry.register(config, uri))
    log_traffic(monitored, traffic(monitored, 120, drifted=True), NOW - timedelta(minutes=5))

    from flows.monitoring import monitoring_flow

    state = monitoring_flow(str(root), now=NOW.isoformat(), window_hours=1, return_state=True)

    assert state.is_failed()
    assert "champion v2 was registered without its reference sample" in state.message


# --- retraining -----------------------------------------------------------------------


def test_a_repeated_alert_in_the_cooldown_is_refused_as_a_duplicate(
    monitored: Project,
) -> None:
    """The guards' decision is the run's state and its artifact: duplicate first."""
    from pipeline.retraining import open_ledger
    from pipeline.simulate import retraining_progress

    ledger_now = open_ledger(monitored.store_url, monitored.root / "unused.jsonl")
    alert = datetime.now(UTC)
    assert ledger_now.claim("w0", 1000, min_rows=100, cooldown=timedelta(hours=6)).allowed
    ledger_now.finish("w0", True, {"champion": "1"})
    window = {"fingerprint": "w1", "rows": 1000, "start": NOW.isoformat(), "end": NOW.isoformat()}
    first = retrain(monitored, window)
    assert first.is_completed() and first.name == "Retraining refused: cooldown"

    again = retrain(monitored, window)

    assert again.is_completed() and again.name == "Retraining refused: duplicate"
    result = again.result()
    assert result["retrained"] is False and result["guards"] == ["duplicate", "cooldown"]
    assert again.message == result["reason"] and result["reason"].startswith("duplicate: ")
    decision = published(again)["retraining-decision"]
    assert decision.startswith("# Retraining refused: duplicate\n")
    assert "- **guards that applied**: duplicate, cooldown" in decision
    assert f"- **reason**: {result['reason']}" in decision
    refused = ledger(monitored)[-1]
    assert refused["status"] == "refused" and refused["guards"] == ["duplicate", "cooldown"]
    # What `driftline simulate` prints while it waits: the run, by the ledger or by time.
    named = retraining_progress(alert, str(again.state_details.flow_run_id))
    assert (named.run, named.state) == ("retraining-drift", "Retraining refused: duplicate")
    assert retraining_progress(alert, None).state == "Retraining refused: duplicate"


def test_a_window_with_no_labelled_rows_lands_nothing(monitored: Project) -> None:
    log_traffic(monitored, traffic(monitored, 120, drifted=True), NOW - timedelta(minutes=5))
    window = read_window(monitored).describe()

    state = retrain(monitored, window)

    assert state.is_failed()
    assert "has no labelled rows yet" in state.message
    decision = published(state)["retraining-decision"]
    assert decision.startswith("# Retraining failed\n")
    assert "- **decision**: retrain" in decision
    assert "- **error**: window " in decision and "has no labelled rows yet" in decision
    [started, failed] = ledger(monitored)
    assert started["status"] == "started" and failed["status"] == "failed"
    assert "has no labelled rows yet" in failed["error"]
    assert not list((monitored.root / "data/landing").glob("*.parquet"))


def test_a_landed_batch_the_data_checks_refuse_moves_to_rejected(monitored: Project) -> None:
    """A real training flow over DVC: ingest takes the landed batch, the data checks
    refuse it, and the batch leaves the landing folder so it cannot block later runs."""
    root = monitored.root
    shutil.copytree(
        REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    dvc(root, "init", "-q", "--no-scm")
    dvc(root, "config", "core.analytics", "false")
    # Requests without the hour, which the schema requires: validate refuses the rows.
    frame = traffic(monitored, 120, drifted=False).assign(hr=None)
    ids = log_traffic(monitored, frame, NOW - timedelta(minutes=5))
    send_labels(monitored, ids, frame["cnt"].tolist())
    window = read_window(monitored).describe()

    state = retrain(monitored, window)

    assert state.is_failed()
    assert "stage 'validate' failed" in state.message
    fingerprint = window["fingerprint"]
    assert not (root / f"data/landing/production-{fingerprint}.parquet").exists()
    assert (root / f"data/landing/rejected/production-{fingerprint}.parquet").exists()
    failed = ledger(monitored)[-1]
    assert failed["status"] == "failed"
    assert failed["rejected_batch"].endswith(f"rejected/production-{fingerprint}.parquet")
    promotions = (root / "reports/promotions.jsonl").read_text().splitlines()
    assert [json.loads(line)["version"] for line in promotions] == ["1"]


# --- training -------------------------------------------------------------------------

GATE = {
    "passed": True,
    "reason": "beats the champion: rmse 86.4 vs champion v2 92.4 (+6.52%, needs +1.00%)",
    "primary_metric": "rmse",
    "candidate": {"r2": 0.81, "rmse": 86.4},
    "champion": {"r2": 0.78, "rmse": 92.4},
    "champion_version": "2",
    "improvement": 0.0652,
    "min_improvement": 0.01,
    "floors": {"r2": {"bound": 0.7, "kind": "min", "value": 0.81, "met": True}},
}
PROMOTE = {"action": "promote", "version": "3", "previous": "2", "reason": GATE["reason"]}
REFUSE = {
    "action": "refuse",
    "version": None,
    "previous": "2",
    "reason": "gate refused: does not beat the champion by enough: rmse 92.0 vs champion v2 "
    "92.4 (+0.43%, needs +1.00%)",
}
COPY = "python -c \"import shutil; shutil.copy('{0}', 'reports/{0}')\""


def judged_project(root: Path, deploy: dict[str, Any]) -> Path:
    """Two quick stages, then `evaluate` and `deploy` stand-ins that write the gate and
    the decision a real run would: the flow reads them as it reads the real ones."""
    small_project(root, exit_code=0, failures=0)
    (root / "reports").mkdir()
    (root / "gate.json").write_text(json.dumps(GATE))
    (root / "deploy.json").write_text(json.dumps(deploy))
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    pipeline["stages"]["evaluate"] = {
        "cmd": COPY.format("gate.json"),
        "deps": ["out.txt", "gate.json"],
        "outs": ["reports/gate.json"],
    }
    pipeline["stages"]["deploy"] = {
        "cmd": COPY.format("deploy.json"),
        "deps": ["reports/gate.json", "deploy.json"],
        "outs": ["reports/deploy.json"],
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return root


def train(root: Path) -> Any:
    from flows.training import training_flow

    return training_flow(str(root), return_state=True)


@pytest.mark.parametrize(
    ("deploy", "outcome"),
    [(PROMOTE, "Promoted v3"), (REFUSE, "Refused: does not beat the champion by enough")],
)
def test_a_training_run_names_its_outcome_and_publishes_the_gates_numbers(
    tmp_path: Path, deploy: dict[str, Any], outcome: str
) -> None:
    state = train(judged_project(tmp_path / "judged", deploy))

    assert state.is_completed() and state.name == outcome
    assert state.message == deploy["reason"]
    summary = state.result()  # the summary, as before
    assert summary["deploy"]["action"] == deploy["action"]
    assert summary["gate"]["improvement"] == GATE["improvement"]
    artifacts = published(state)
    assert set(artifacts) == {"training-summary", "training-stages", "training-metrics"}
    stages = artifacts["training-stages"]
    assert [(row["stage"], row["status"], row["reason"]) for row in stages] == [
        ("prepare", "ran", "changed"),
        ("flaky", "ran", "changed"),
        ("evaluate", "ran", "changed"),
        ("deploy", "ran", "changed"),
    ]
    # The primary metric first, with the gain the gate measured and needed.
    assert artifacts["training-metrics"] == [
        {
            "metric": "rmse",
            "candidate": 86.4,
            "champion": 92.4,
            "improvement": "+6.52%",
            "needed": "+1.00%",
            "floor": None,
            "meets floor": None,
        },
        {
            "metric": "r2",
            "candidate": 0.81,
            "champion": 0.78,
            "improvement": None,
            "needed": None,
            "floor": ">= 0.7",
            "meets floor": True,
        },
    ]
    markdown = artifacts["training-summary"]
    assert markdown.startswith(f"# {outcome}\n")
    assert f"- **gate**: passed: {GATE['reason']}" in markdown
    assert f"- **deploy**: {deploy['action']}" in markdown
    assert "## Metrics against the champion (champion v2)" in markdown


def test_a_manual_retraining_is_named_for_its_training(tmp_path: Path) -> None:
    from flows.retraining import retraining_flow

    root = judged_project(tmp_path / "judged", PROMOTE)

    state = retraining_flow(str(root), return_state=True)

    assert state.is_completed() and state.name == "Promoted v3"
    result = state.result()  # the training subflow's summary inside, as before
    assert result["retrained"] is True and result["training"]["deploy"]["action"] == "promote"
    assert published(state) == {}  # no alert, no guards: the training run has the artifacts


def test_a_run_with_nothing_to_change_says_so(tmp_path: Path) -> None:
    root = small_project(tmp_path / "small", exit_code=0, failures=0)
    first = train(root)
    assert first.is_completed() and first.name == "Ran 2 stages"

    again = train(root)

    assert again.is_completed() and again.name == "Nothing to do"
    assert again.result()["skipped"] == ["prepare", "flaky"]
    artifacts = published(again)
    assert "training-metrics" not in artifacts  # no gate in this project
    assert [(row["status"], row["reason"]) for row in artifacts["training-stages"]] == [
        ("skipped", "unchanged"),
        ("skipped", "unchanged"),
    ]
    assert artifacts["training-summary"].startswith("# Nothing to do\n")
    assert "- **stages**: 0 ran, 2 skipped" in artifacts["training-summary"]


def test_a_failed_training_run_still_shows_which_stage_failed(tmp_path: Path) -> None:
    root = small_project(tmp_path / "small", exit_code=1, failures=1)

    state = train(root)

    assert state.is_failed()
    artifacts = published(state)
    assert artifacts["training-summary"].startswith("# Failed at flaky\n")
    stages = artifacts["training-stages"]
    assert [(row["stage"], row["status"]) for row in stages] == [
        ("prepare", "ran"),
        ("flaky", "failed"),
    ]
    assert "exited with 1: error: attempt 1 failed" in stages[1]["reason"]
