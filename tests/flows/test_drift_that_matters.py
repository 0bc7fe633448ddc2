"""The drift rule on the built-in bike data, through the real monitoring flow.

The shipped project's champion was trained on January to early March 2011, and its
reference sample is drawn from those weeks. Traffic from the same weeks a year later
differs in its calendar (`yr` above all) and in its weather, but not in what the model
relies on: the monitor decides "no drift". The same traffic with a covariate shift in
the champion's most important features decides "drift". Each window is logged with the
champion's own predictions, as serving logs them, so prediction drift is judged too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from tests.conftest import REPO, Project

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
HOUR_CSV = REPO / "pipeline/datasets/bike_sharing/hour.csv"
DRIFT_EVENT = "driftline.drift.detected"


@pytest.fixture(scope="module", autouse=True)
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The drift events the flow emits, kept by Prefect's AssertingEventsClient."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker

    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)

    def events() -> list[Any]:
        worker.wait_until_empty()
        client = worker._client
        return [event for event in (client.events if client else []) if event.event == DRIFT_EVENT]

    yield events
    worker.drain()


def a_year_later(project: Project) -> pd.DataFrame:
    """Built-in bike rows from the reference's weeks, one year on (2012), with clean's
    calendar feature."""
    reference = pd.read_parquet(project.root / "data/reference/reference.parquet")
    first, last = reference["dteday"].min(), reference["dteday"].max()
    bike = pd.read_csv(HOUR_CSV, parse_dates=["dteday"])
    year = pd.DateOffset(years=1)
    rows = bike[bike["dteday"].between(first + year, last + year)].reset_index(drop=True)
    return rows.assign(dteday_dayofyear=rows["dteday"].dt.dayofyear)


def serve(project: Project, frame: pd.DataFrame) -> None:
    """Log `frame` with the champion's predictions, as `driftline serve` logs traffic."""
    from pipeline.drift import read_profile
    from pipeline.prediction_log import PredictionLog
    from pipeline.serving import load_served_model

    names = read_profile(project.root / "data/reference/drift_profile").names
    served = load_served_model(project.root / "models/compressed", "1")
    predictions = served.model.predict(frame)
    when = NOW - timedelta(minutes=5)
    rows = [
        {
            "request_id": uuid.uuid4().hex,
            "timestamp": when,
            "model_version": "1",
            "inputs": {name: record[name] for name in names},
            "prediction": float(prediction),
            "context": {"instant": record["instant"], "dteday": str(record["dteday"].date())},
        }
        for record, prediction in zip(frame.to_dict(orient="records"), predictions, strict=True)
    ]
    log = PredictionLog.sql(project.store_url, start=False)
    log.append(rows)
    log.close()


def monitor(project: Project) -> dict[str, Any]:
    from flows.monitoring import monitoring_flow

    return monitoring_flow(str(project.root), now=NOW.isoformat(), window_hours=1)


def table(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["column"]: row for row in record["columns"]}


def test_the_same_weeks_a_year_later_are_not_drift(shipped: Project, emitted: Any) -> None:
    serve(shipped, a_year_later(shipped))

    record = monitor(shipped)

    columns = table(record)
    # The calendar drifted, and is reported as such, but does not count.
    assert columns["yr"]["drifted"] is True
    for name in ("yr", "mnth", "season", "dteday_dayofyear"):
        assert columns[name]["role"] == "calendar" and columns[name]["weight"] == 0
    # The weather of winter 2012 differs too, on columns the model weighs little.
    assert record["weights"] == "importance"
    assert max(columns, key=lambda name: columns[name]["weight"]) == "hr"
    assert not columns["hr"]["drifted"] and not columns["workingday"]["drifted"]
    assert record["drift_share"] < 0.5 and record["prediction"]["drifted"] is False
    assert record["drift"] is False, record["reasons"]
    assert record["rule"].startswith("drift when the drifted counted columns hold at least 50%")
    assert emitted() == []


def test_a_shift_in_the_features_the_model_relies_on_is_drift(
    shipped: Project, emitted: Any
) -> None:
    from pipeline.artifacts import read_json
    from pipeline.drift import read_profile
    from pipeline.drift_rule import column_roles, column_weights
    from pipeline.importance import FeatureImportance

    root = shipped.root
    profile = read_profile(root / "data/reference/drift_profile")
    calendar = shipped.params()["monitor"]["calendar_columns"]
    roles = column_roles(profile.names, ["dteday_dayofyear"], calendar)
    evaluation = read_json(root / "reports/evaluation.json", "evaluate")
    weights = column_weights(roles, FeatureImportance.from_evaluation(evaluation).values).values
    # The most important counted features, until they hold half the weight: each moved by
    # one reference standard deviation, or to its rarest reference category.
    top, held = [], 0.0
    for name in sorted(weights, key=weights.__getitem__, reverse=True):
        top, held = [*top, name], held + weights[name]
        if held >= 0.5:
            break
    reference = pd.read_parquet(root / "data/reference/reference.parquet")
    rows = a_year_later(shipped)
    shifted = rows.assign(
        **{
            name: rows[name] + reference[name].std()
            if name in profile.numeric
            else reference[name].value_counts().idxmin()
            for name in top
        }
    )
    serve(shipped, shifted)

    record = monitor(shipped)

    columns = table(record)
    assert all(columns[name]["drifted"] and columns[name]["counted"] for name in top)
    assert record["drift_share"] >= 0.5 and record["drift"] is True, record["reasons"]
    assert record["reasons"][0].startswith("data drift: ")
    [event] = emitted()
    assert event.payload["drift_share"] == record["drift_share"]


def test_a_window_is_compared_with_the_reference_from_its_own_weeks(
    shipped: Project, emitted: Any
) -> None:
    """The first four weeks of 2012 against the whole reference (January to early March
    2011): January has fewer riders than March, by the calendar (month, day of the
    year), which the reference's predictions take from the window, so the predictions
    do not drift (Wasserstein 0.04; 0.15 with the reference's own calendar). Against the
    reference rows from the same weeks of 2011 they do not either, by another test."""
    rows = a_year_later(shipped)
    serve(shipped, rows[rows["dteday"] < rows["dteday"].min() + pd.Timedelta(weeks=4)])

    shipped.update("monitor", seasonal_reference=False)
    whole = monitor(shipped)
    shipped.update("monitor", seasonal_reference=True)
    seasonal = monitor(shipped)

    assert whole["reference"].startswith("the whole reference sample (1409 rows)")
    assert whole["prediction"]["method"] == "wasserstein"
    assert whole["prediction"]["statistic"] < 0.1 and whole["drift"] is False
    assert seasonal["reference"].startswith("the reference rows from the window's weeks of")
    assert seasonal["prediction"]["method"] == "ks"  # 1,000 rows or fewer
    assert seasonal["prediction"]["drifted"] is False
    assert seasonal["drift"] is False, seasonal["reasons"]
    assert seasonal["drift_share"] < 0.5 and not table(seasonal)["hr"]["drifted"]
    assert not emitted()
