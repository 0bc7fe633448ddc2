"""Quality before labels arrive: CBPE for classifiers, DLE for regressions.

Labels reach the monitor late, so until `monitor.min_labelled_rows` of them are in, the
decision needs another view of the champion's quality. Two published methods give one,
as NannyML implements them (NannyML itself cannot join this environment: it pins
lightgbm < 4.6 and, through FLAML[automl], xgboost < 3):

- **CBPE** (confidence-based performance estimation), for classifiers. A calibrated
  probability is the chance the row's label is that class, so each row adds its
  probabilities to an expected confusion matrix: a row predicted positive with p = 0.8
  is 0.8 of a true positive and 0.2 of a false positive. Accuracy, precision, recall,
  F1 and specificity follow from the expected counts; ROC AUC and average precision
  from the expected counts at every threshold, the rows ranked by their score.
  Driftline's models are calibrated on val at train time (pipeline/calibration.py); as
  NannyML does on its reference, evaluate calibrates them again on the test rows when
  that helps (by cross-fitted log loss: with a time split, val's calibration may not
  hold for later rows), and the monitor applies that map before estimating. Beyond
  NannyML, the Brier score (the mean of p(1 - p)) and log loss (the entropy) have expected
  values of the same kind.
- **DLE** (direct loss estimation), for regressions. A gradient-boosted model learns
  each row's loss (absolute error for MAE, squared error for RMSE) from the features
  and the prediction, on labelled rows the model never trained on (evaluate's test
  rows); a window's estimate is the mean of its predicted losses (the root of it for
  RMSE). NannyML uses LightGBM with its defaults; this uses xgboost (a dependency
  already) grown the same way: leaf-wise, 31 leaves, 20 rows a leaf, learning rate 0.1.

R² and MAPE are not estimated: the method needs a per-row loss whose mean is the metric.
`ESTIMABLE` says which metric each task can estimate.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.calibration import Calibrator, choose_calibration
from pipeline.errors import DataError
from pipeline.features import category_value
from pipeline.metrics import TASK_METRICS
from pipeline.registry import QUALITY_FILE

if TYPE_CHECKING:
    import xgboost

LOSS_MODEL_FILE = "loss_estimator.json"  # xgboost's own JSON format, never a pickle
QUALITY_FORMAT = "driftline-quality-estimate"
QUALITY_VERSION = 1

# Every classification metric; of the regression ones, those that are a mean of a loss.
ESTIMABLE = {
    "binary": TASK_METRICS["binary"],
    "multiclass": TASK_METRICS["multiclass"],
    "regression": ("rmse", "mae"),
}
METHOD = {"binary": "CBPE", "multiclass": "CBPE", "regression": "DLE"}
# NannyML's LightGBM defaults, grown by xgboost: leaf-wise with 31 leaves, 20 rows a leaf.
LOSS_MODEL_PARAMS = {
    "objective": "reg:squarederror",
    "tree_method": "hist",
    "grow_policy": "lossguide",
    "max_depth": 0,
    "max_leaves": 31,
    "min_child_weight": 20.0,
    "eta": 0.1,
    "lambda": 0.0,
    "max_bin": 255,
    "nthread": 1,
}
ENTROPY_FLOOR = 1e-15  # as classification_metrics clips log loss
MIN_LOSS_ROWS = 40  # fewer test rows: no loss model (each cross-fitted half needs 20)


# --- CBPE ----------------------------------------------------------------------------------


def estimate_classification(
    probabilities: np.ndarray, predicted_codes: np.ndarray, task: str
) -> dict[str, float]:
    """The task's metrics expected from calibrated `probabilities` (n, classes) and the
    served decisions `predicted_codes` (column indexes); NaN where one is undefined."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted_codes = np.asarray(predicted_codes, dtype=np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(predicted_codes):
        raise DataError("CBPE needs one row of class probabilities per prediction")
    if not len(probabilities):
        return dict.fromkeys(ESTIMABLE[task], float("nan"))
    clipped = np.clip(probabilities, ENTROPY_FLOOR, 1 - ENTROPY_FLOOR)
    log_loss = float(-np.mean(np.sum(probabilities * np.log(clipped), axis=1)))
    if task == "multiclass":
        return {**_multiclass(probabilities, predicted_codes), "log_loss": log_loss}
    positive = probabilities[:, 1]
    predicted = predicted_codes == 1
    tp = float(np.sum(np.where(predicted, positive, 0.0)))
    fp = float(np.sum(np.where(predicted, 1.0 - positive, 0.0)))
    fn = float(np.sum(np.where(predicted, 0.0, positive)))
    tn = float(np.sum(np.where(predicted, 0.0, 1.0 - positive)))
    return {
        "roc_auc": expected_roc_auc(positive),
        "pr_auc": expected_average_precision(positive),
        "accuracy": (tp + tn) / len(positive),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(tp, tp + 0.5 * (fp + fn)),
        "specificity": _ratio(tn, tn + fp),
        "log_loss": log_loss,
        "brier": float(np.mean(positive * (1.0 - positive))),
    }


def _multiclass(probabilities: np.ndarray, predicted_codes: np.ndarray) -> dict[str, float]:
    """One-vs-rest expected counts per class; macro F1 as NannyML's `f1`, weighted F1 by
    each class's expected support."""
    rows, classes = probabilities.shape
    chosen = np.zeros_like(probabilities, dtype=bool)
    chosen[np.arange(rows), predicted_codes] = True
    tp = np.sum(np.where(chosen, probabilities, 0.0), axis=0)
    fp = np.sum(np.where(chosen, 1.0 - probabilities, 0.0), axis=0)
    fn = np.sum(np.where(chosen, 0.0, probabilities), axis=0)
    denominators = tp + 0.5 * (fp + fn)
    f1 = np.divide(tp, denominators, out=np.zeros(classes), where=denominators > 0)
    support = probabilities.sum(axis=0)
    return {
        "accuracy": float(tp.sum() / rows),
        "f1_macro": float(f1.mean()),
        "f1_weighted": float(np.sum(f1 * support) / support.sum()),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def _expected_curve(positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected true and false positives at each distinct score, highest first: the
    rows scored at or above it are predicted positive (ties move together)."""
    order = np.argsort(-positive, kind="stable")
    ranked = positive[order]
    tps = np.cumsum(ranked)
    fps = np.arange(1, len(ranked) + 1) - tps
    last_of_each = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    return tps[last_of_each], fps[last_of_each]


def expected_roc_auc(positive: np.ndarray) -> float:
    """ROC AUC from the expected counts: the trapezoid under (FPR, TPR)."""
    tps, fps = _expected_curve(np.asarray(positive, dtype=np.float64))
    if tps[-1] <= 0 or fps[-1] <= 0:
        return float("nan")
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def expected_average_precision(positive: np.ndarray) -> float:
    """Average precision from the expected counts, as scikit-learn steps it."""
    tps, fps = _expected_curve(np.asarray(positive, dtype=np.float64))
    if tps[-1] <= 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = np.r_[0.0, tps / tps[-1]]
    return float(np.sum(np.diff(recall) * precision))


def expected_calibration_error(
    codes: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> float:
    """How far the top-class probability is from the observed hit rate, averaged over
    `bins` equal-width bins weighted by their rows: CBPE is as good as this is small."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top = probabilities.max(axis=1)
    hit = probabilities.argmax(axis=1) == np.asarray(codes)
    which = np.minimum((top * bins).astype(int), bins - 1)
    error = 0.0
    for index in np.unique(which):
        inside = which == index
        error += inside.sum() * abs(float(top[inside].mean()) - float(hit[inside].mean()))
    return float(error / len(top)) if len(top) else float("nan")


# --- DLE -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossEstimator:
    """A model of each row's loss (absolute error for MAE, squared for RMSE) from the
    features and the prediction; `categories` fixes each categorical's codes."""

    metric: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]
    booster: xgboost.Booster
    rounds: int
    seed: int

    def losses(self, features: pd.DataFrame, predictions: Sequence[float]) -> np.ndarray:
        """Each row's predicted loss, never below zero (as NannyML clips it)."""
        import xgboost

        matrix = xgboost.DMatrix(
            loss_inputs(features, predictions, self.numeric, self.categorical, self.categories),
            enable_categorical=True,
        )
        return np.maximum(0.0, self.booster.predict(matrix))

    def estimate(self, features: pd.DataFrame, predictions: Sequence[float]) -> float:
        """The metric expected on these rows: the mean loss (its root for RMSE)."""
        if not len(features):
            return float("nan")
        mean = float(np.mean(self.losses(features, predictions)))
        return math.sqrt(mean) if self.metric == "rmse" else mean

    def describe(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "categories": {name: list(values) for name, values in self.categories.items()},
            "rounds": self.rounds,
            "seed": self.seed,
            "params": LOSS_MODEL_PARAMS,
        }


def loss_inputs(
    features: pd.DataFrame,
    predictions: Sequence[float],
    numeric: Sequence[str],
    categorical: Sequence[str],
    categories: dict[str, tuple[str, ...]],
) -> pd.DataFrame:
    """The loss model's inputs: numerics as floats, categoricals as text on the fitted
    categories (an unseen one is a gap), and the prediction."""
    missing = [name for name in (*numeric, *categorical) if name not in features.columns]
    if missing:
        raise DataError(
            f"the loss estimator needs column(s) {', '.join(missing)}: the rows come from "
            "a model with other features"
        )
    columns: dict[str, Any] = {
        name: pd.to_numeric(features[name], errors="coerce").astype("float64").to_numpy()
        for name in numeric
    }
    for name in categorical:
        texts = [category_value(value) for value in features[name]]
        columns[name] = pd.Categorical(texts, categories=list(categories[name]))
    columns["__prediction__"] = np.asarray(predictions, dtype=np.float64)
    return pd.DataFrame(columns)


def row_losses(metric: str, actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    error = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return np.abs(error) if metric == "mae" else np.square(error)


def fit_loss_estimator(
    features: pd.DataFrame,
    predictions: Sequence[float],
    actual: Sequence[float],
    metric: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    rounds: int,
    seed: int,
) -> LossEstimator:
    """Fit the loss model on labelled rows the model never trained on."""
    import xgboost

    if metric not in ESTIMABLE["regression"]:
        raise DataError(f"DLE estimates {' or '.join(ESTIMABLE['regression'])}, not {metric}")
    predictions = np.asarray(predictions, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    keep = np.isfinite(predictions) & np.isfinite(actual)
    if keep.sum() < 2:
        raise DataError("the loss estimator needs labelled rows with finite values")
    categories = {
        name: tuple(sorted({t for t in map(category_value, features[name]) if t is not None}))
        for name in categorical
    }
    frame = features.loc[keep] if not keep.all() else features
    inputs = loss_inputs(frame, predictions[keep], numeric, categorical, categories)
    matrix = xgboost.DMatrix(
        inputs,
        label=row_losses(metric, actual[keep], predictions[keep]),
        enable_categorical=True,
    )
    booster = xgboost.train({**LOSS_MODEL_PARAMS, "seed": seed}, matrix, num_boost_round=rounds)
    return LossEstimator(
        metric, tuple(numeric), tuple(categorical), categories, booster, rounds, seed
    )


# --- what travels with the model -----------------------------------------------------------


@dataclass(frozen=True)
class QualityEstimator:
    """How the monitor estimates the champion's `metric` on unlabelled rows: `method`
    (CBPE, DLE, or none with the `reason`), and the check made on test rows, where
    the measured value is known (`test`: measured, estimated, rows; for DLE the
    estimate is cross-fitted on the two halves)."""

    task: str
    metric: str
    method: str | None
    reason: str = ""
    test: dict[str, Any] = field(default_factory=dict)
    loss: LossEstimator | None = None
    # CBPE: a calibration map fitted on the test rows (Calibrator.to_dict), applied to
    # the served probabilities before estimating; None: they are used as served.
    calibration: dict[str, Any] | None = None

    @property
    def available(self) -> bool:
        return self.method is not None

    @property
    def test_estimate(self) -> float | None:
        """The metric as this estimator saw it on test (CBPE: on the test rows, as the
        monitor would estimate them; DLE: the two cross-fitted halves together). A
        window's estimate is compared with this, like with like: any bias the method
        has on this model (a calibration that drifted between val and test) cancels."""
        value = self.test.get("estimated")
        return float(value) if isinstance(value, int | float) else None

    def estimate(self, frame: pd.DataFrame, classes: Sequence[Any]) -> float | None:
        """The metric expected on the rows of a prediction-log window (its
        `probabilities` and `prediction` for a classifier, its features and
        `prediction_value` for a regression); None when it cannot be estimated."""
        if not self.available or frame.empty:
            return None
        if self.task == "regression":
            assert self.loss is not None
            value = self.loss.estimate(frame, frame["prediction_value"].to_numpy(np.float64))
        else:
            probabilities, predicted = logged_probabilities(frame, classes)
            if not len(probabilities):
                return None
            value = self.estimate_rows(probabilities, predicted)
        return float(value) if np.isfinite(value) else None

    def estimate_rows(self, probabilities: np.ndarray, predicted_codes: np.ndarray) -> float:
        """CBPE's `metric` on served probabilities, recalibrated when evaluate chose to."""
        calibrator = Calibrator.from_dict(self.calibration)
        if calibrator is not None:
            probabilities = calibrator.apply(probabilities)
        return estimate_classification(probabilities, predicted_codes, self.task)[self.metric]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": QUALITY_FORMAT,
            "version": QUALITY_VERSION,
            "task": self.task,
            "metric": self.metric,
            "method": self.method,
            "reason": self.reason,
            "test": self.test,
            "calibration": self.calibration,
            "loss_estimator": self.loss.describe() if self.loss is not None else None,
        }

    def write(self, folder: Path) -> Path:
        """`folder/quality_estimate.json`, and the loss model beside it for DLE."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.loss is not None:
            self.loss.booster.save_model(str(folder / LOSS_MODEL_FILE))
        path = folder / QUALITY_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> QualityEstimator:
        """What `write` wrote; a damaged file is a `DataError` that says so."""
        path = Path(path)
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            if body.get("format") != QUALITY_FORMAT:
                raise ValueError("not a quality estimate file")
            if body.get("version") != QUALITY_VERSION:
                raise ValueError(f"version {body.get('version')!r}, expected {QUALITY_VERSION}")
            described = body.get("loss_estimator")
            estimator = cls(
                task=body["task"],
                metric=body["metric"],
                method=body["method"],
                reason=str(body.get("reason", "")),
                test=dict(body.get("test") or {}),
                calibration=body.get("calibration"),
            )
            if described is None:
                return estimator
            shape = (
                described["metric"],
                tuple(described["numeric"]),
                tuple(described["categorical"]),
                {name: tuple(values) for name, values in described["categories"].items()},
            )
            rounds, seed = int(described["rounds"]), int(described["seed"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{path} is a damaged quality estimate ({exc}): deploy the model again"
            ) from None
        import xgboost

        loss_file = path.with_name(LOSS_MODEL_FILE)
        booster = xgboost.Booster()
        try:
            booster.load_model(str(loss_file))
        except xgboost.core.XGBoostError as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise DataError(
                f"{loss_file} is a damaged loss estimator ({first.strip()}): deploy the model again"
            ) from None
        loss = LossEstimator(*shape, booster, rounds, seed)
        return dataclasses.replace(estimator, loss=loss)


def logged_probabilities(
    frame: pd.DataFrame, classes: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """The served class probabilities (n, classes) and decisions (codes) of logged rows;
    rows without probabilities, with an unknown class, or whose probabilities do not name
    every class (served by another version) or do not parse are left out."""
    texts = [category_value(label) for label in classes]
    code = {text: position for position, text in enumerate(texts)}
    probabilities, predicted = [], []
    for served, logged in zip(frame["prediction"], frame["probabilities"], strict=True):
        if not logged or category_value(served) not in code:
            continue
        try:
            by_class = json.loads(logged) if isinstance(logged, str) else logged
            row = [float(by_class[text]) for text in texts]
        except (ValueError, TypeError, KeyError):
            continue
        probabilities.append(row)
        predicted.append(code[category_value(served)])
    return (
        np.asarray(probabilities, dtype=np.float64).reshape(-1, len(texts)),
        np.asarray(predicted, dtype=np.int64),
    )


def build_quality_estimator(
    task: str,
    metric: str,
    test_features: pd.DataFrame,
    raw: np.ndarray,
    actual: np.ndarray,
    codes: np.ndarray | None,
    predicted_codes: np.ndarray | None,
    numeric: Sequence[str],
    categorical: Sequence[str],
    rounds: int,
    seed: int,
) -> QualityEstimator:
    """The estimator the monitor uses for the champion, made from its test rows (the
    model never trained on them): for a classifier the CBPE check on test; for a
    regression the loss model fitted on every test row, with a cross-fitted check (each
    half estimated by a model of the other half)."""
    if metric not in ESTIMABLE[task]:
        why = f"{METHOD[task]} cannot estimate {metric} (it estimates {', '.join(ESTIMABLE[task])})"
        return QualityEstimator(task, metric, None, why)
    if task != "regression":
        assert codes is not None and predicted_codes is not None
        return _cbpe_estimator(task, metric, np.asarray(raw), codes, predicted_codes)
    from pipeline.metrics import regression_metrics

    predictions = np.asarray(raw, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if len(predictions) < MIN_LOSS_ROWS:
        why = f"{len(predictions)} test rows, too few to fit DLE's loss model ({MIN_LOSS_ROWS})"
        return QualityEstimator(task, metric, None, why)
    order = np.random.default_rng(seed).permutation(len(predictions))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    crossed = []
    for fit_on, check_on in (halves, halves[::-1]):
        part = fit_loss_estimator(
            test_features.iloc[fit_on],
            predictions[fit_on],
            actual[fit_on],
            metric,
            numeric,
            categorical,
            rounds,
            seed,
        )
        crossed.append(
            {
                "rows": len(check_on),
                "measured": _finite(
                    regression_metrics(actual[check_on], predictions[check_on])[metric]
                ),
                "estimated": _finite(
                    part.estimate(test_features.iloc[check_on], predictions[check_on])
                ),
            }
        )
    loss = fit_loss_estimator(
        test_features, predictions, actual, metric, numeric, categorical, rounds, seed
    )
    test = {
        "rows": len(predictions),
        "measured": _finite(regression_metrics(actual, predictions)[metric]),
        "estimated": _pooled(metric, crossed),
        "cross_fitted": crossed,
    }
    return QualityEstimator(task, metric, "DLE", "", test, loss)


def _cbpe_estimator(
    task: str, metric: str, raw: np.ndarray, codes: np.ndarray, predicted_codes: np.ndarray
) -> QualityEstimator:
    """CBPE with a calibration map chosen on the test rows, and its check there: each
    half of test estimated with the map chosen on the other half, against its labels."""
    from pipeline.metrics import classification_metrics

    halves = (slice(0, len(raw) // 2), slice(len(raw) // 2, len(raw)))
    crossed = []
    for fit_on, check_on in (halves, halves[::-1]):
        chosen, _ = choose_calibration(codes[fit_on], raw[fit_on], "auto")
        part = QualityEstimator(
            task, metric, "CBPE", calibration=chosen.to_dict() if chosen else None
        )
        measured = classification_metrics(
            codes[check_on], raw[check_on], predicted_codes[check_on], task
        )[metric]
        estimated = part.estimate_rows(raw[check_on], predicted_codes[check_on])
        crossed.append(
            {
                "rows": len(codes[check_on]),
                "measured": _finite(measured),
                "estimated": _finite(estimated),
            }
        )
    calibrator, figures = choose_calibration(codes, raw, "auto")
    calibration = calibrator.to_dict() if calibrator is not None else None
    served = estimate_classification(raw, predicted_codes, task)[metric]
    final = QualityEstimator(task, metric, "CBPE", calibration=calibration)
    test = {
        "rows": len(raw),
        "measured": _finite(classification_metrics(codes, raw, predicted_codes, task)[metric]),
        "estimated": _finite(final.estimate_rows(raw, predicted_codes)),
        "estimated_as_served": _finite(served),
        "expected_calibration_error": _finite(expected_calibration_error(codes, raw)),
        "recalibration": figures["method"],
        "cross_fitted": crossed,
    }
    return QualityEstimator(task, metric, "CBPE", "", test, calibration=calibration)


def _pooled(metric: str, checks: list[dict[str, Any]]) -> float | None:
    """The halves' estimates as one figure for all the rows: the root of the pooled
    mean square for RMSE, the pooled mean for MAE."""
    checked = [check for check in checks if check["estimated"] is not None]
    if not checked:
        return None
    weights = np.array([check["rows"] for check in checked], dtype=np.float64)
    values = np.array([check["estimated"] for check in checked], dtype=np.float64)
    if metric == "rmse":
        return _finite(math.sqrt(float(np.sum(weights * values**2) / weights.sum())))
    return _finite(float(np.sum(weights * values) / weights.sum()))


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
