"""Probability calibration, fitted on val after any class weighting.

Class weights (`train.class_weight: balanced`) buy recall on a rare class by inflating
its probabilities: on bank marketing's 12% positives the weighted model's log loss was
worse than the class prior's. A calibrator maps the learner's probabilities back to
observed frequencies: isotonic (a monotone step fit, as a piecewise-linear map) or
sigmoid (Platt scaling on the log-odds). For more than two classes each class is
calibrated one-vs-rest and the rows are renormalised.

`choose_calibration` picks the method by log loss, cross-fitted on the two halves of
the val rows (each half calibrated on the other), so the choice never scores a
calibrator on the rows it was fitted to; `none` stays when neither helps.

A `Calibrator` is plain numbers (knots or coefficients), saved in `model.json` and
appended to the ONNX graph by `pipeline.onnx_model`, so serving applies exactly what
evaluation scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("none", "sigmoid", "isotonic")
# Probabilities are kept this far from 0 and 1 before taking log-odds.
EPSILON = 1e-6


@dataclass(frozen=True)
class Calibrator:
    """`maps` holds one map per calibrated column: the positive class for binary
    (column 1), every class for multiclass. Isotonic maps are knots {"x": [...],
    "y": [...]} read by linear interpolation (flat beyond the ends); sigmoid maps are
    {"a": slope, "b": intercept} on the log-odds."""

    method: str
    maps: list[dict[str, Any]]

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, the same shape as `probabilities` (n, k)."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if len(self.maps) == 1:  # binary: the positive class
            positive = self._map(self.maps[0], probabilities[:, 1])
            return np.column_stack([1.0 - positive, positive])
        columns = [self._map(m, probabilities[:, i]) for i, m in enumerate(self.maps)]
        stacked = np.column_stack(columns)
        totals = stacked.sum(axis=1, keepdims=True)
        return np.where(totals > 0, stacked / np.where(totals > 0, totals, 1.0), 1.0 / len(columns))

    def _map(self, mapping: dict[str, Any], p: np.ndarray) -> np.ndarray:
        if self.method == "isotonic":
            return np.interp(p, mapping["x"], mapping["y"])
        return _sigmoid(mapping["a"] * log_odds(p) + mapping["b"])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "maps": self.maps}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Calibrator | None:
        if not raw:
            return None
        return cls(raw["method"], list(raw["maps"]))


def log_odds(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(p, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return np.log(clipped) - np.log1p(-clipped)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_calibrator(y_codes: np.ndarray, probabilities: np.ndarray, method: str) -> Calibrator:
    """Fit `method` (isotonic | sigmoid) to class codes and the learner's probabilities."""
    y_codes = np.asarray(y_codes, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_classes = probabilities.shape[1]
    targets = [1] if n_classes == 2 else list(range(n_classes))
    maps = [_fit_map(method, (y_codes == c).astype(float), probabilities[:, c]) for c in targets]
    return Calibrator(method, maps)


def _fit_map(method: str, hits: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        # Half a count away from 0 and 1: a bin with no positives is not impossible.
        floor = 0.5 / max(len(hits), 1)
        isotonic = IsotonicRegression(y_min=floor, y_max=1.0 - floor, out_of_bounds="clip")
        isotonic.fit(p, hits)
        return {
            "x": [float(v) for v in isotonic.X_thresholds_],
            "y": [float(v) for v in isotonic.y_thresholds_],
        }
    if method == "sigmoid":
        from sklearn.linear_model import LogisticRegression

        if hits.min() == hits.max():  # one class only: the constant it shows
            rate = float(np.clip(hits.mean(), EPSILON, 1 - EPSILON))
            return {"a": 0.0, "b": float(np.log(rate / (1 - rate)))}
        platt = LogisticRegression(C=1e6, max_iter=1000)
        platt.fit(log_odds(p).reshape(-1, 1), hits.astype(int))
        return {"a": float(platt.coef_[0, 0]), "b": float(platt.intercept_[0])}
    raise ValueError(f"unknown calibration method {method!r}")


def log_loss(y_codes: np.ndarray, probabilities: np.ndarray) -> float:
    picked = probabilities[np.arange(len(y_codes)), np.asarray(y_codes, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(picked, 1e-15, 1.0))))


def choose_calibration(
    y_codes: np.ndarray, probabilities: np.ndarray, requested: str
) -> tuple[Calibrator | None, dict[str, Any]]:
    """The calibrator to keep, fitted on all the rows given (val), and what decided it:
    with `auto`, each method's log loss cross-fitted on the two halves of the rows."""
    y_codes = np.asarray(y_codes, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    figures: dict[str, Any] = {"requested": requested}
    method = requested
    if requested == "auto":
        losses = {name: _cross_fitted_loss(y_codes, probabilities, name) for name in METHODS}
        figures["cross_fitted_log_loss"] = {name: round(v, 6) for name, v in losses.items()}
        # The simplest method within a hair of the best: METHODS runs simplest first.
        best = min(losses.values())
        method = next(name for name in METHODS if losses[name] <= best + 1e-9)
    figures["method"] = method
    if method == "none" or len(np.unique(y_codes)) < 2:
        figures["method"] = "none"
        return None, figures
    return fit_calibrator(y_codes, probabilities, method), figures


def _cross_fitted_loss(y_codes: np.ndarray, probabilities: np.ndarray, method: str) -> float:
    if method == "none":
        return log_loss(y_codes, probabilities)
    half = len(y_codes) // 2
    parts = [slice(0, half), slice(half, len(y_codes))]
    total = 0.0
    for fit_part, score_part in (parts, parts[::-1]):
        calibrator = fit_calibrator(y_codes[fit_part], probabilities[fit_part], method)
        scored = calibrator.apply(probabilities[score_part])
        total += log_loss(y_codes[score_part], scored) * len(y_codes[score_part])
    return total / len(y_codes)
