"""Quality before labels: CBPE and DLE against NannyML's own figures, on held-out
windows of ELEC2 and bike sharing, and in the monitor's decision.

The NannyML figures (tests/fixtures/nannyml_estimates.json) were made by
tests/fixtures/nannyml_reference.py on tests/fixtures/nannyml_data.csv, in a scratch
virtualenv: NannyML cannot join Driftline's pinned environment.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.quality_estimate import (
    BIKE_CATEGORICAL,
    BIKE_NUMERIC,
    ELEC2_FEATURES,
    classification_windows,
    mean_gap,
    read_bike,
    read_elec2,
    regression_windows,
)
from pipeline.config import MonitorConfig
from pipeline.drift import ColumnDrift, DriftResult
from pipeline.drift_rule import ModelDrift, column_roles, weigh_drift
from pipeline.errors import DataError
from pipeline.monitoring import Window, decide, quality_check
from pipeline.quality_estimate import (
    LOSS_MODEL_FILE,
    QualityEstimator,
    build_quality_estimator,
    estimate_classification,
    fit_loss_estimator,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# Our CBPE is NannyML's arithmetic: the same figures up to rounding.
CBPE_TOLERANCE = 1e-5
# Our DLE grows xgboost trees as NannyML's LightGBM defaults grow theirs, not the same
# trees: measured within 1.7% of NannyML's figure on every chunk.
DLE_RELATIVE_TOLERANCE = 0.03
# ELEC2 in time order (its concept drift: P(label | features) moves, which CBPE cannot
# see by design), 4 windows of 300 rows after 1,200 train and 600 calibration rows:
# measured mean absolute gaps 0.038 (ROC AUC, ELEC2's primary metric) and 0.105
# (accuracy). The same rows shuffled (no concept drift): 0.004 and 0.010.
ELEC2_TOLERANCE = {"roc_auc": 0.06, "accuracy": 0.12}
ELEC2_SHUFFLED_TOLERANCE = {"roc_auc": 0.02, "accuracy": 0.03}
# Bike sharing shuffled: DLE's RMSE 23.4 and 23.4 against the measured 22.6 and 24.0.
BIKE_SHUFFLED_RELATIVE_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def nannyml() -> tuple[pd.DataFrame, dict]:
    frame = pd.read_csv(FIXTURES / "nannyml_data.csv")
    figures = json.loads((FIXTURES / "nannyml_estimates.json").read_text())
    return frame, figures


def chunks(frame: pd.DataFrame) -> list[pd.DataFrame]:
    analysis = frame[frame["part"] >= 0]
    return [part for _, part in analysis.groupby("part", sort=True)]


def test_cbpe_gives_nannyml_figures_for_a_binary_model(nannyml: tuple) -> None:
    frame, figures = nannyml
    ours_by_theirs = {"average_precision": "pr_auc"}
    for position, chunk in enumerate(chunks(frame)):
        positive = chunk["binary_proba"].to_numpy()
        probabilities = np.column_stack([1.0 - positive, positive])
        estimated = estimate_classification(probabilities, chunk["binary_pred"], "binary")
        for metric, values in figures["binary"].items():
            ours = estimated[ours_by_theirs.get(metric, metric)]
            assert ours == pytest.approx(values[position], abs=CBPE_TOLERANCE), metric


def test_cbpe_gives_nannyml_figures_for_a_multiclass_model(nannyml: tuple) -> None:
    frame, figures = nannyml
    for position, chunk in enumerate(chunks(frame)):
        probabilities = chunk[["proba_a", "proba_b", "proba_c"]].to_numpy()
        predicted = chunk["multiclass_pred"].map({"a": 0, "b": 1, "c": 2}).to_numpy()
        estimated = estimate_classification(probabilities, predicted, "multiclass")
        expected = figures["multiclass"]
        assert estimated["f1_macro"] == pytest.approx(expected["f1"][position], abs=1e-5)
        assert estimated["accuracy"] == pytest.approx(expected["accuracy"][position], abs=1e-5)


@pytest.mark.parametrize("metric", ["mae", "rmse"])
def test_dle_follows_nannyml_figures(nannyml: tuple, metric: str) -> None:
    frame, figures = nannyml
    reference = frame[frame["part"] < 0]
    estimator = fit_loss_estimator(
        reference,
        reference["regression_pred"],
        reference["regression_true"],
        metric,
        ["x1", "x2"],
        ["colour"],
        rounds=100,
        seed=0,
    )
    ours = [estimator.estimate(chunk, chunk["regression_pred"]) for chunk in chunks(frame)]
    assert ours == pytest.approx(figures["regression"][metric], rel=DLE_RELATIVE_TOLERANCE)
    # The chunks drift further each time and the loss grows: the estimate rises with it.
    assert ours == sorted(ours)


def test_the_estimate_travels_as_json_and_a_damaged_file_is_named(
    nannyml: tuple, tmp_path: Path
) -> None:
    frame, _ = nannyml
    reference = frame[frame["part"] < 0]
    built = build_quality_estimator(
        "regression",
        "rmse",
        reference,
        reference["regression_pred"].to_numpy(),
        reference["regression_true"].to_numpy(),
        None,
        None,
        ["x1", "x2"],
        ["colour"],
        rounds=30,
        seed=3,
    )
    assert built.method == "DLE" and len(built.test["cross_fitted"]) == 2
    for check in built.test["cross_fitted"]:  # each half estimated by the other's model
        assert check["estimated"] == pytest.approx(check["measured"], rel=0.15)
    window = chunks(frame)[-1].assign(prediction_value=lambda f: f["regression_pred"])
    path = built.write(tmp_path / "quality")
    assert (tmp_path / "quality" / LOSS_MODEL_FILE).exists()  # xgboost's JSON, no pickle
    json.loads((tmp_path / "quality" / LOSS_MODEL_FILE).read_text())
    read = QualityEstimator.read(path)
    assert read.estimate(window, []) == pytest.approx(built.estimate(window, []), rel=1e-6)
    (tmp_path / "quality" / LOSS_MODEL_FILE).write_text("{not json")
    with pytest.raises(DataError, match="damaged loss estimator"):
        QualityEstimator.read(path)
    path.write_text("{}")
    with pytest.raises(DataError, match="damaged quality estimate"):
        QualityEstimator.read(path)


def test_a_metric_the_methods_cannot_estimate_says_so() -> None:
    none = build_quality_estimator(
        "regression", "r2", pd.DataFrame(), np.zeros(3), np.zeros(3), None, None, [], [], 5, 0
    )
    assert not none.available and none.reason.startswith("DLE cannot estimate r2")


def cbpe_on_test(positive: np.ndarray, codes: np.ndarray) -> QualityEstimator:
    return build_quality_estimator(
        "binary",
        "roc_auc",
        pd.DataFrame(index=range(len(codes))),
        np.column_stack([1 - positive, positive]),
        codes,
        codes,
        (positive >= 0.5).astype(int),
        [],
        [],
        5,
        0,
    )


def test_cbpe_on_test_rows_records_the_check_the_monitor_trusts() -> None:
    rng = np.random.default_rng(5)
    positive = rng.random(2000)
    codes = (rng.random(2000) < positive).astype(int)  # calibrated by construction
    built = cbpe_on_test(positive, codes)
    assert built.method == "CBPE" and built.test["rows"] == 2000
    assert built.test["expected_calibration_error"] < 0.05
    for check in built.test["cross_fitted"]:  # each half with the other half's map
        assert check["estimated"] == pytest.approx(check["measured"], abs=0.02)


def test_cbpe_recalibrates_on_test_rows_when_val_calibration_does_not_hold() -> None:
    """As NannyML calibrates on its reference: rows whose served probabilities are too
    confident (val's map no longer holds) get a map fitted on test."""
    rng = np.random.default_rng(6)
    truth = rng.random(3000)
    codes = (rng.random(3000) < truth).astype(int)
    served = 1 / (1 + np.exp(-4 * np.log(truth / (1 - truth))))  # far too confident
    built = cbpe_on_test(served, codes)
    assert built.test["recalibration"] != "none" and built.calibration is not None
    as_served = abs(built.test["estimated_as_served"] - built.test["measured"])
    for check in built.test["cross_fitted"]:
        assert abs(check["estimated"] - check["measured"]) < min(0.04, as_served / 3)
    window = pd.DataFrame(
        {
            "prediction": np.where(served >= 0.5, "yes", "no"),
            "probabilities": [json.dumps({"no": 1 - p, "yes": p}) for p in served],
        }
    )
    recalibrated = built.estimate(window, ["no", "yes"])
    assert recalibrated == pytest.approx(built.test["measured"], abs=0.02)


@pytest.fixture(scope="module")
def elec2() -> pd.DataFrame:
    return read_elec2(None)


def test_on_elec2_the_estimate_follows_the_measured_quality(elec2: pd.DataFrame) -> None:
    """Issue 16's 'done when': CBPE on held-out windows of ELEC2, in time order."""
    windows = classification_windows(elec2, "class", ELEC2_FEATURES, 0.4, 0.2, 300, 100, 42)
    assert len(windows) == 4
    for metric, tolerance in ELEC2_TOLERANCE.items():
        assert mean_gap(windows, metric) <= tolerance, metric
    # The worst window measured is the worst window estimated.
    measured = [window.measured["roc_auc"] for window in windows]
    estimated = [window.estimated["roc_auc"] for window in windows]
    assert int(np.argmin(estimated)) == int(np.argmin(measured))
    # Without concept drift (the same rows shuffled) the estimate is much closer.
    shuffled = elec2.sample(frac=1.0, random_state=0).reset_index(drop=True)
    calm = classification_windows(shuffled, "class", ELEC2_FEATURES, 0.4, 0.2, 300, 100, 42)
    for metric, tolerance in ELEC2_SHUFFLED_TOLERANCE.items():
        assert mean_gap(calm, metric) <= tolerance, metric


def test_on_bike_sharing_dle_follows_the_measured_error() -> None:
    bike = read_bike(None)
    windows = regression_windows(
        bike, "cnt", BIKE_NUMERIC, BIKE_CATEGORICAL, 0.4, 0.2, 200, 100, 42
    )
    measured = [window.measured["rmse"] for window in windows]
    estimated = [window.estimated["rmse"] for window in windows]
    # In time order the counts grow past what the loss model saw: it ranks the windows
    # as the measured error does, but below it (trees do not extrapolate).
    assert np.argsort(estimated).tolist() == np.argsort(measured).tolist()
    shuffled = bike.sample(frac=1.0, random_state=0).reset_index(drop=True)
    calm = regression_windows(
        shuffled, "cnt", BIKE_NUMERIC, BIKE_CATEGORICAL, 0.4, 0.2, 300, 100, 42
    )
    for window in calm:
        assert window.estimated["rmse"] == pytest.approx(
            window.measured["rmse"], rel=BIKE_SHUFFLED_RELATIVE_TOLERANCE
        )


# --- the monitor ---------------------------------------------------------------------------

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
CBPE = QualityEstimator("binary", "roc_auc", "CBPE")


def binary_window(rows: int, labelled: int, seed: int = 0) -> Window:
    """Logged binary predictions with calibrated probabilities; `labelled` have labels."""
    rng = np.random.default_rng(seed)
    positive = rng.random(rows)
    label = np.where(rng.random(rows) < positive, "yes", "no").astype(object)
    label[labelled:] = np.nan
    frame = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(rows)],
            "timestamp": [NOW - timedelta(minutes=i) for i in range(rows)],
            "prediction": np.where(positive >= 0.5, "yes", "no"),
            "prediction_value": np.nan,
            "probabilities": [json.dumps({"no": 1 - p, "yes": p}) for p in positive],
            "label": label,
        }
    )
    return Window(frame=frame, start=NOW - timedelta(days=1), end=NOW)


def test_before_enough_labels_the_decision_uses_the_estimate() -> None:
    window = binary_window(1344, labelled=12)
    check = quality_check(window, "binary", "roc_auc", ["no", "yes"], 0.9, 200, CBPE)
    assert check.judged and check.source == "estimated" and check.method == "CBPE"
    assert check.current is None and check.estimated == pytest.approx(5 / 6, abs=0.02)
    assert check.drop == pytest.approx((0.9 - check.estimated) / 0.9)
    assert check.reason.startswith(f"estimated roc_auc {check.estimated:.4g} (CBPE) on 1,344 rows")
    assert check.reason.endswith("12 labelled rows, fewer than monitor.min_labelled_rows (200)")

    decision = decide(_no_drift(), check, MonitorConfig(max_metric_drop=0.05))
    record = decision.to_dict()["quality"]
    assert {"metric", "current", "estimated", "reference", "drop", "source"} <= set(record)
    assert decision.drift and decision.reasons[-1].startswith("quality drop: estimated roc_auc")
    assert "estimated on every row before (CBPE" in decision.rule

    # An estimator that recorded its estimate on test is compared like with like.
    tested = QualityEstimator("binary", "roc_auc", "CBPE", test={"estimated": 0.8})
    check = quality_check(window, "binary", "roc_auc", ["no", "yes"], 0.9, 200, tested)
    assert check.estimated_reference == 0.8 and check.reference == 0.9
    assert check.drop == pytest.approx((0.8 - check.estimated) / 0.8)
    assert "against 0.8 estimated on test (0.9 measured)" in check.reason


def test_with_enough_labels_the_decision_uses_the_measured_metric() -> None:
    window = binary_window(600, labelled=400)
    check = quality_check(window, "binary", "roc_auc", ["no", "yes"], 0.8, 200, CBPE)
    assert check.source == "measured" and check.current is not None
    assert check.estimated is not None  # still recorded, for the dashboard
    assert check.drop == pytest.approx((0.8 - check.current) / 0.8)
    assert f"(estimated {check.estimated:.4g} by CBPE)" in check.reason


def test_without_an_estimator_quality_waits_for_the_labels() -> None:
    window = binary_window(600, labelled=10)
    check = quality_check(window, "binary", "roc_auc", ["no", "yes"], 0.8, 200, None)
    assert not check.judged and check.source is None and check.estimated is None
    assert "has no quality estimator" in check.reason
    other = QualityEstimator("binary", "accuracy", "CBPE")
    check = quality_check(window, "binary", "roc_auc", ["no", "yes"], 0.8, 200, other)
    assert not check.judged and "estimates accuracy, not roc_auc" in check.reason


def test_the_mlflow_figures_carry_the_estimate() -> None:
    from flows.monitoring import _figures

    check = quality_check(binary_window(500, 0), "binary", "roc_auc", ["no", "yes"], 0.9, 200, CBPE)
    record = {"window": {"rows": 500, "labelled": 0}, "drift": False, "quality": check.to_dict()}
    figures = _figures(record)
    assert figures["quality_estimated"] == pytest.approx(check.estimated)
    assert "quality_current" not in figures and figures["quality_drop"] == check.drop


def _no_drift() -> ModelDrift:
    """A drift check that found nothing: one calm column, calm predictions."""
    verdicts = (ColumnDrift("c0", "numeric", "wasserstein", 0.01, 0.1, False),)
    result = DriftResult(columns=verdicts, drift_share=0.5, current_rows=1000)
    prediction = ColumnDrift("prediction", "numeric", "wasserstein", 0.01, 0.1, False)
    return weigh_drift(result, column_roles(["c0"]), None, prediction)


def test_logged_rows_another_version_served_are_left_out() -> None:
    """A window can hold rows an older version served: probabilities over other classes,
    or text that is not JSON. They are skipped, never a traceback."""
    from pipeline.quality_estimate import logged_probabilities

    frame = pd.DataFrame(
        {
            "prediction": ["yes", "no", "yes", "maybe", "no"],
            "probabilities": [
                '{"no": 0.2, "yes": 0.8}',
                '{"no": 0.9, "other": 0.1}',  # another version's classes
                "not json",
                '{"no": 0.5, "yes": 0.5}',  # an unknown class served
                None,
            ],
        }
    )
    probabilities, predicted = logged_probabilities(frame, ["no", "yes"])
    assert probabilities.tolist() == [[0.2, 0.8]] and predicted.tolist() == [1]
