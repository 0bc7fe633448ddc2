"""Test metrics by task, and which direction is better for each.

Regression: RMSE, MAE, R² and MAPE (NaN when an actual value is zero). Binary: ROC
AUC, PR AUC, accuracy, precision, recall, F1, specificity, log loss and Brier score.
Multiclass: accuracy, macro and weighted F1, and log loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import ConfigError

HIGHER_IS_BETTER = {
    "rmse": False,
    "mae": False,
    "r2": True,
    "mape": False,
    "roc_auc": True,
    "pr_auc": True,
    "accuracy": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "specificity": True,
    "log_loss": False,
    "brier": False,
    "f1_macro": True,
    "f1_weighted": True,
}
TASK_METRICS = {
    "regression": ("rmse", "mae", "r2", "mape"),
    "binary": (
        "roc_auc",
        "pr_auc",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "specificity",
        "log_loss",
        "brier",
    ),
    "multiclass": ("accuracy", "f1_macro", "f1_weighted", "log_loss"),
}
DEFAULT_PRIMARY = {"regression": "rmse", "binary": "roc_auc", "multiclass": "f1_macro"}


def primary_metric(task: str, configured: str | None) -> str:
    """The metric the gate compares on; it must be one the task computes."""
    if configured is None:
        return DEFAULT_PRIMARY[task]
    if configured not in TASK_METRICS[task]:
        raise ConfigError(
            f"evaluate.primary_metric: {configured} is not a {task} metric "
            f"(one of {', '.join(TASK_METRICS[task])})"
        )
    return configured


def check_floors(task: str, floors: dict[str, float]) -> None:
    for metric in floors:
        if metric not in TASK_METRICS[task]:
            raise ConfigError(
                f"evaluate.floors.{metric}: not a {task} metric "
                f"(one of {', '.join(TASK_METRICS[task])})"
            )


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    error = predicted - actual
    total = np.sum((actual - actual.mean()) ** 2)
    metrics = {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "r2": float(1.0 - np.sum(error**2) / total) if total > 0 else float("nan"),
    }
    # MAPE divides by the actual value: undefined (NaN, null in JSON) when one is 0.
    defined = bool(np.all(actual != 0))
    metrics["mape"] = float(np.mean(np.abs(error / actual))) if defined else float("nan")
    return metrics


def classification_metrics(
    codes: np.ndarray, probabilities: np.ndarray, predicted_codes: np.ndarray, task: str
) -> dict[str, float]:
    """`codes` and `predicted_codes` index the columns of `probabilities`."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    n_classes = probabilities.shape[1]
    labels = list(range(n_classes))
    clipped = np.clip(probabilities, 1e-15, 1 - 1e-15)
    metrics: dict[str, float] = {
        "accuracy": float(accuracy_score(codes, predicted_codes)),
        "log_loss": float(log_loss(codes, clipped, labels=labels)),
    }
    if task == "multiclass":
        for average in ("macro", "weighted"):
            metrics[f"f1_{average}"] = float(
                f1_score(codes, predicted_codes, average=average, labels=labels, zero_division=0)
            )
        return metrics
    positive = probabilities[:, 1]
    both_present = len(np.unique(codes)) == 2
    tn, fp, _, _ = confusion_matrix(codes, predicted_codes, labels=[0, 1]).ravel()
    metrics.update(
        {
            "roc_auc": float(roc_auc_score(codes, positive)) if both_present else float("nan"),
            "pr_auc": float(average_precision_score(codes, positive))
            if both_present
            else float("nan"),
            "precision": float(precision_score(codes, predicted_codes, zero_division=0)),
            "recall": float(recall_score(codes, predicted_codes, zero_division=0)),
            "f1": float(f1_score(codes, predicted_codes, zero_division=0)),
            "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
            "brier": float(np.mean((positive - codes) ** 2)),
        }
    )
    return {name: metrics[name] for name in TASK_METRICS["binary"]}


def improvement(metric: str, candidate: float, champion: float) -> float:
    """How much better the candidate is, as a share of the champion's score (positive
    is better, whichever direction the metric runs)."""
    gain = candidate - champion if HIGHER_IS_BETTER[metric] else champion - candidate
    return float(gain / abs(champion)) if champion != 0 else float(np.sign(gain) * np.inf)


def meets_floor(metric: str, value: float, floor: float) -> bool:
    """A floor is a minimum for scores and a maximum for errors; NaN never meets it."""
    if np.isnan(value):
        return False
    return value >= floor if HIGHER_IS_BETTER[metric] else value <= floor


def rounded(metrics: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    return {
        name: round(value, digits) if isinstance(value, float) else value
        for name, value in metrics.items()
    }
