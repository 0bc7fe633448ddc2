"""The monitoring flow's fairness check, in this process under `prefect_test_harness()`:
the session's shipped bike project (champion version 1), re-evaluated with a fairness
audit on `workingday` so that the champion's run holds its gaps on test, serves its test
rows with the weekend's predictions far off, and the labels arrive. The record, its
reasons and the MLflow run carry the gap beside the champion's, and the breach is
reported without deciding drift.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import Project

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
BOUND = 20.0  # evaluate.fairness.max_gap.mae, in bikes per hour
OFF_ON_WEEKENDS = 60.0  # how far the served prediction is off where workingday is 0


@pytest.fixture(scope="module", autouse=True)
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture
def audited(shipped: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The shipped project with evaluate.fairness on workingday, evaluate run again so the
    champion's run (the one its version was registered from) holds the audit; a monitor
    that decides on 100 rows and 50 labels, and a quality rule too loose to call drift."""
    from mlflow.tracking._tracking_service import utils

    # MLflow keeps each run's artifact store by run id for the process: a copied project's
    # runs have the template's ids, so without a cache of this test's own, evaluate would
    # log its audit into the session template's folder, not this copy's.
    monkeypatch.setattr(utils, "_artifact_repos_cache", OrderedDict())
    params = shipped.params()
    params["evaluate"]["fairness"] = {
        "sensitive_columns": ["workingday"],
        "max_gap": {"mae": BOUND},
        "resamples": 50,
        "min_group_rows": 10,
    }
    params["monitor"].update(min_window_rows=100, min_labelled_rows=50, max_metric_drop=100.0)
    shipped.write_params(params)
    shipped.run_stages("evaluate")
    return shipped


def serve_with_weekends_off(project: Project, rows: int) -> None:
    """Test rows logged as serving logs them, each prediction its true count + 1, except on
    weekends and holidays (workingday 0), OFF_ON_WEEKENDS higher; then their labels."""
    from pipeline.drift import read_profile
    from pipeline.label_store import store_labels
    from pipeline.prediction_log import PredictionLog

    names = read_profile(project.root / "data/reference/drift_profile").names
    frame = pd.read_parquet(project.root / "data/split/test.parquet").head(rows)
    ids = [uuid.uuid4().hex for _ in range(len(frame))]
    logged = [
        {
            "request_id": request_id,
            "timestamp": NOW - timedelta(minutes=5),
            "model_version": "1",
            "inputs": {name: record[name] for name in names},
            "prediction": float(record["cnt"]) + (1.0 if record["workingday"] else OFF_ON_WEEKENDS),
            "context": {"instant": record["instant"], "dteday": str(record["dteday"].date())},
        }
        for request_id, record in zip(ids, frame.to_dict(orient="records"), strict=True)
    ]
    log = PredictionLog.sql(project.store_url, start=False)
    log.append(logged)
    log.close()
    labels = project.root / "labels.csv"
    pd.DataFrame({"id": ids, "label": frame["cnt"], "time": NOW.isoformat()}).to_csv(
        labels, index=False
    )
    assert store_labels(labels, project.store_url).matched == len(ids)


def test_the_record_and_the_mlflow_run_carry_the_fairness_gap(audited: Project) -> None:
    import mlflow

    from flows.monitoring import monitoring_flow
    from pipeline.monitoring import FAIRNESS_RULE

    serve_with_weekends_off(audited, 150)

    record = monitoring_flow(str(audited.root), now=NOW.isoformat(), window_hours=1)

    fairness = record["fairness"]
    assert fairness["audited"] and fairness["exceeded"] == ["mae"]
    assert fairness["labelled"] == 150 and fairness["metric"] == "mae"
    gap = fairness["gaps"]["mae"]
    assert gap["column"] == "workingday" and gap["highest_group"] == "0"
    assert gap["gap"] == pytest.approx(OFF_ON_WEEKENDS - 1, abs=1e-6)
    assert gap["low"] > BOUND and gap["max_gap"] == BOUND
    # Beside it, the champion's gap on test, read from the run its version came from.
    assert fairness["champion_source"] == "registered version 1's run (evaluation/fairness.json)"
    assert gap["test"]["column"] == "workingday" and gap["test"]["gap"] >= 0
    groups = {entry["group"]: entry["rows"] for entry in fairness["groups"]["workingday"]}
    assert sum(groups.values()) == 150 and set(groups) == {"0", "1"}
    # One reason line; the breach is reported, and decides nothing.
    [line] = [reason for reason in record["reasons"] if reason.startswith("fairness: ")]
    assert line.startswith("fairness: fairness gap beyond its bound on 150 labelled rows: mae gap")
    assert "workingday=0" in line and "evaluate.fairness.max_gap.mae 20" in line
    assert "(the champion on test: " in line
    # The MLflow run of the check: the gap, the champion's, the count beyond the bound.
    client = mlflow.MlflowClient(tracking_uri=audited.tracking_uri)
    run = client.get_run(record["mlflow_run"])
    assert run.data.metrics["fairness_gap_mae"] == pytest.approx(gap["gap"])
    assert run.data.metrics["fairness_test_gap_mae"] == pytest.approx(gap["test"]["gap"])
    assert run.data.metrics["fairness_gaps_exceeded"] == 1.0
    assert run.data.tags["driftline.fairness"] == "exceeded"
    # The Evidently snapshot carries the lead metric's gap for the dashboard's panel.
    assert '"fairness_gap"' in Path(record["files"]["json"]).read_text()

    # The same window without the audit: the same decision, less the fairness line.
    params = audited.params()
    params["evaluate"]["fairness"] = {"sensitive_columns": [], "max_gap": {}}
    audited.write_params(params)
    plain = monitoring_flow(str(audited.root), now=NOW.isoformat(), window_hours=1)
    assert plain["drift"] == record["drift"]
    assert plain["reasons"] == [r for r in record["reasons"] if r != line]
    assert plain["fairness"] == {
        "audited": False,
        "reason": "evaluate.fairness.sensitive_columns is empty: no fairness audit",
        "labelled": 150,
        "metric": None,
        "exceeded": [],
        "missing_columns": [],
        "champion_source": None,
        "rule": FAIRNESS_RULE,
    }
    assert "fairness_gap_mae" not in client.get_run(plain["mlflow_run"]).data.metrics
