"""The gate and the metrics it reads: pure functions, no models."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataConfig, Schema
from pipeline.errors import ConfigError
from pipeline.metrics import (
    check_floors,
    classification_metrics,
    improvement,
    primary_metric,
    regression_metrics,
)
from pipeline.schema import DatasetSpec
from pipeline.stages.evaluate import baseline, gate

CHAMPION = {"rmse": 100.0, "r2": 0.80}


def test_first_model_is_judged_on_the_floors_alone() -> None:
    passed = gate({"rmse": 500.0, "r2": 0.71}, None, "rmse", 0.01, {"r2": 0.7})
    assert passed.passed and passed.reason.startswith("no champion yet")
    refused = gate({"rmse": 50.0, "r2": 0.69}, None, "rmse", 0.01, {"r2": 0.7})
    assert not refused.passed
    assert refused.reason == "fails the floor: r2 0.69 < 0.7"
    assert refused.floors["r2"] == {"bound": 0.7, "kind": "min", "value": 0.69, "met": False}


def test_a_worse_candidate_is_refused() -> None:
    decision = gate({"rmse": 103.0, "r2": 0.79}, CHAMPION, "rmse", 0.01, {}, "4")
    assert not decision.passed
    assert decision.reason.startswith("does not beat the champion by enough: rmse 103 vs")
    assert decision.improvement == pytest.approx(-0.03)
    assert decision.champion_version == "4"


def test_a_better_candidate_passes_only_by_the_margin() -> None:
    better = gate({"rmse": 95.0, "r2": 0.82}, CHAMPION, "rmse", 0.01, {"r2": 0.7}, "4")
    assert better.passed and better.improvement == pytest.approx(0.05)
    assert "beats the champion" in better.reason
    slightly = gate({"rmse": 99.5, "r2": 0.81}, CHAMPION, "rmse", 0.01, {}, "4")
    assert not slightly.passed  # 0.5% better, 1% needed


def test_higher_is_better_metrics_compare_the_other_way() -> None:
    champion = {"roc_auc": 0.80}
    assert gate({"roc_auc": 0.85}, champion, "roc_auc", 0.01, {}).passed
    assert not gate({"roc_auc": 0.79}, champion, "roc_auc", 0.0, {}).passed
    assert improvement("roc_auc", 0.88, 0.80) == pytest.approx(0.1)
    assert improvement("log_loss", 0.4, 0.5) == pytest.approx(0.2)


def test_a_better_candidate_below_a_floor_is_refused() -> None:
    decision = gate({"rmse": 50.0, "r2": 0.5}, CHAMPION, "rmse", 0.01, {"r2": 0.7})
    assert not decision.passed and decision.reason.startswith("fails the floor")


def test_an_undefined_metric_never_meets_a_floor() -> None:
    decision = gate({"roc_auc": math.nan}, None, "roc_auc", 0.01, {"roc_auc": 0.5})
    assert not decision.passed
    assert decision.to_dict()["candidate"]["roc_auc"] is None  # valid JSON, no NaN


@pytest.mark.parametrize(
    ("task", "configured", "expected"),
    [("regression", None, "rmse"), ("binary", None, "roc_auc"), ("multiclass", None, "f1_macro")],
)
def test_primary_metric_defaults_by_task(task: str, configured: None, expected: str) -> None:
    assert primary_metric(task, configured) == expected


def test_a_metric_of_another_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.primary_metric: roc_auc is not a regression"):
        primary_metric("regression", "roc_auc")
    with pytest.raises(ConfigError, match=r"evaluate\.floors\.rmse: not a binary metric"):
        check_floors("binary", {"rmse": 10.0})


def test_regression_metrics() -> None:
    metrics = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert metrics["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert metrics["mae"] == pytest.approx(2 / 3)
    assert metrics["r2"] == pytest.approx(1 - 4 / 2)
    assert metrics["mape"] == pytest.approx((2 / 3) / 3)
    assert math.isnan(regression_metrics(np.array([0.0, 1.0]), np.array([0.5, 1.0]))["mape"])


def test_binary_metrics_cover_the_issue_list() -> None:
    codes = np.array([0, 0, 1, 1, 1, 0])
    positive = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
    probabilities = np.column_stack([1 - positive, positive])
    predicted = (positive >= 0.5).astype(int)
    metrics = classification_metrics(codes, probabilities, predicted, "binary")
    assert set(metrics) == {
        "roc_auc",
        "pr_auc",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "specificity",
        "log_loss",
        "brier",
    }
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["specificity"] == 1.0 and metrics["roc_auc"] == pytest.approx(8 / 9)


def spec(task: str, time_column: str | None = None) -> DatasetSpec:
    data = DataConfig(target="y", task=task)
    return DatasetSpec(
        target="y", task=task, schema=data.schema_ or Schema(), time_column=time_column
    )


def test_regression_baseline_is_the_group_mean() -> None:
    train = pd.DataFrame({"hr": [0, 0, 1, 1], "y": [1.0, 3.0, 10.0, 20.0]})
    test = pd.DataFrame({"hr": [0, 1, 2], "y": [2.0, 15.0, 8.5]})
    name, metrics = baseline(train, test, spec("regression"), ["hr"])
    assert name == "mean per hr"
    # hr 2 was never seen: it gets the overall train mean, 8.5.
    assert metrics["rmse"] == pytest.approx(0.0)


def test_baseline_without_groups_uses_the_time_column() -> None:
    times = pd.date_range("2024-01-01", periods=48, freq="h")
    train = pd.DataFrame({"t": times, "y": np.tile(np.arange(24.0), 2)})
    name, metrics = baseline(train, train, spec("regression", "t"), None)
    assert name == "hour-of-week mean" and metrics["rmse"] == pytest.approx(0.0)


def test_classification_baseline_is_the_majority_class() -> None:
    train = pd.DataFrame({"y": ["no"] * 8 + ["yes"] * 2})
    name, metrics = baseline(train, train, spec("binary"), None)
    assert name.startswith("majority class")
    assert metrics["accuracy"] == pytest.approx(0.8) and metrics["roc_auc"] == 0.5


def test_a_champion_that_cannot_score_the_test_rows_refuses_the_candidate() -> None:
    decision = gate(
        {"rmse": 50.0, "r2": 0.9}, None, "rmse", 0.01, {}, "3",
        champion_error="feature column(s) missing from the input: hum",
    )  # fmt: skip
    assert not decision.passed
    assert decision.reason.startswith("the champion v3 cannot score the current test rows")


def test_every_metric_params_accept_has_a_direction_and_a_task() -> None:
    from typing import get_args

    from pipeline.config import Metric
    from pipeline.metrics import HIGHER_IS_BETTER, TASK_METRICS

    named = set(get_args(Metric))
    assert named == set(HIGHER_IS_BETTER)
    assert named == {metric for metrics in TASK_METRICS.values() for metric in metrics}
