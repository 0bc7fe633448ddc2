"""The monitor's window, quality check and decision, over a real parquet log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import MonitorConfig
from pipeline.drift import ColumnDrift, DriftResult
from pipeline.drift_rule import ModelDrift, column_roles, weigh_drift
from pipeline.errors import DataError
from pipeline.label_store import store_labels
from pipeline.monitoring import decide, quality_check, read_window
from pipeline.prediction_log import PredictionLog

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)


def log_rows(count: int, start: datetime, task: str = "regression") -> list[dict]:
    rows = []
    for i in range(count):
        row = {
            "request_id": f"r{start:%d%H}-{i}",
            "timestamp": start + timedelta(minutes=i),
            "model_version": "1",
            "inputs": {"temp": 0.1 * i, "season": str(i % 4)},
        }
        if task == "regression":
            row.update(prediction=float(i), probabilities=None)
        else:
            positive = 0.9 if i % 2 else 0.2
            row.update(
                prediction="yes" if positive > 0.5 else "no",
                probabilities={"no": 1 - positive, "yes": positive},
            )
        rows.append(row)
    return rows


def write_log(root: Path, rows: list[dict]) -> None:
    with PredictionLog.parquet(root) as log:
        log.append(rows)


def test_the_window_holds_the_newest_hours_with_their_labels(tmp_path: Path) -> None:
    root = tmp_path / "production"
    write_log(root, log_rows(30, NOW - timedelta(days=9)) + log_rows(40, NOW - timedelta(hours=3)))
    labels = tmp_path / "labels.csv"
    recent = [f"r{NOW - timedelta(hours=3):%d%H}-{i}" for i in range(10)]
    pd.DataFrame({"id": recent, "label": range(10), "time": [NOW.isoformat()] * 10}).to_csv(
        labels, index=False
    )
    store_labels(labels, str(root))

    window = read_window(root, hours=24, now=NOW)
    assert window.rows == 40 and window.labelled == 10
    assert list(window.features(["temp", "season"]).columns) == ["temp", "season"]
    assert window.describe()["fingerprint"] == read_window(root, 24, NOW).fingerprint
    assert read_window(root, hours=24 * 30, now=NOW).fingerprint != window.fingerprint
    assert read_window(root, hours=1, now=NOW).rows == 0
    with pytest.raises(DataError, match="lacks feature column"):
        window.features(["temp", "humidity"])


def test_quality_is_judged_only_with_enough_labels(tmp_path: Path) -> None:
    root = tmp_path / "production"
    write_log(root, log_rows(20, NOW - timedelta(hours=1)))
    window = read_window(root, hours=24, now=NOW)
    labels = np.arange(20, dtype=float) + 2.0  # every prediction 2 too low
    window.frame["label"] = labels
    judged = quality_check(window, "regression", "rmse", [], reference=1.0, min_labelled=10)
    assert judged.judged and judged.current == pytest.approx(2.0)
    assert judged.drop == pytest.approx(1.0)  # RMSE doubled: 100% worse
    too_few = quality_check(window, "regression", "rmse", [], reference=1.0, min_labelled=50)
    assert not too_few.judged and "fewer than monitor.min_labelled_rows" in too_few.reason


def test_classification_quality_reads_the_logged_probabilities(tmp_path: Path) -> None:
    root = tmp_path / "production"
    write_log(root, log_rows(40, NOW - timedelta(hours=1), task="binary"))
    window = read_window(root, hours=24, now=NOW)
    window.frame["label"] = ["yes" if i % 2 else "no" for i in range(40)]
    check = quality_check(window, "binary", "roc_auc", ["no", "yes"], 0.9, min_labelled=10)
    assert check.judged and check.current == pytest.approx(1.0) and check.drop < 0


def drift_of(drifted: int, columns: int = 4, predictions: bool = False) -> ModelDrift:
    """`drifted` of `columns` equally weighted columns drifted; the predictions too?"""
    verdicts = tuple(
        ColumnDrift(f"c{i}", "numeric", "wasserstein", 0.2, 0.1, i < drifted)
        for i in range(columns)
    )
    result = DriftResult(columns=verdicts, drift_share=0.5, current_rows=1000)
    prediction = ColumnDrift(
        "prediction", "numeric", "wasserstein", 0.3 if predictions else 0.05, 0.1, predictions
    )
    roles = column_roles([verdict.column for verdict in verdicts])
    return weigh_drift(result, roles, None, prediction)


def test_the_decision_says_why_either_way(tmp_path: Path) -> None:
    config = MonitorConfig(drift_share=0.5, max_metric_drop=0.1)
    root = tmp_path / "production"
    write_log(root, log_rows(20, NOW - timedelta(hours=1)))
    window = read_window(root, hours=24, now=NOW)
    unjudged = quality_check(window, "regression", "rmse", [], 1.0, min_labelled=10)

    calm = decide(drift_of(1), unjudged, config)
    assert not calm.drift and calm.drifted_columns == ["c0"]
    assert calm.reasons[0].startswith("no data drift: 1 of 4 counted columns drifted (c0): 25%")
    assert calm.reasons[1].startswith("no prediction drift: ")
    assert calm.reasons[2].startswith("quality not judged")
    assert calm.rule.startswith("drift when the drifted counted columns hold at least 50%")
    assert "the primary metric fell more than 10% (monitor.max_metric_drop)" in calm.rule
    assert [row["counted"] for row in calm.columns] == [True] * 4

    drifted = decide(drift_of(2), unjudged, config)
    assert drifted.drift and drifted.reasons[0].startswith("data drift: 2 of 4")

    by_predictions = decide(drift_of(0, predictions=True), unjudged, config)
    assert by_predictions.drift and by_predictions.drift_share == 0.0
    assert by_predictions.reasons[1].startswith("prediction drift: ")
    assert by_predictions.prediction["drifted"] is True

    window.frame["label"] = np.arange(20, dtype=float) + 2.0
    worse = quality_check(window, "regression", "rmse", [], 1.0, min_labelled=10)
    by_quality = decide(drift_of(0), worse, config)
    assert by_quality.drift and by_quality.reasons[2].startswith("quality drop: rmse 2")
    assert by_quality.to_dict()["quality"]["drop"] == pytest.approx(1.0)
