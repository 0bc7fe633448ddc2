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

from tests.conftest import REPO, Project
from tests.flows.conftest import dvc

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

    record = monitor(shipped)

    assert record["drift"] is False and record["window"]["rows"] == 40
    assert record["reasons"] == [
        "the window holds 40 rows, fewer than monitor.min_window_rows (500): nothing decided"
    ]
    assert "model_version" not in record  # no champion loaded, no check run
    assert decisions(shipped) == [record]
    assert emitted("driftline.drift.detected") == []


def test_drift_without_labels_is_decided_on_the_data_alone(
    monitored: Project, emitted: Any
) -> None:
    log_traffic(monitored, traffic(monitored, 120, drifted=True), NOW - timedelta(minutes=5))

    record = monitor(monitored)

    assert record["drift"] is True and record["window"]["labelled"] == 0
    assert record["quality"]["judged"] is False
    assert "quality not judged: 0 labelled rows, fewer than" in record["reasons"][1]
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

    record = monitor(monitored)

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


def test_a_window_with_no_labelled_rows_lands_nothing(monitored: Project) -> None:
    log_traffic(monitored, traffic(monitored, 120, drifted=True), NOW - timedelta(minutes=5))
    window = read_window(monitored).describe()

    state = retrain(monitored, window)

    assert state.is_failed()
    assert "has no labelled rows yet" in state.message
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
