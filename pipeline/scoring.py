"""Score a model on a labelled frame: predictions and the task's metrics together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.metrics import classification_metrics, regression_metrics

if TYPE_CHECKING:
    from pipeline.models import TabularModel


@dataclass(frozen=True)
class Scored:
    """Raw outputs, decisions and metrics. For classification, `codes` and
    `predicted_codes` index `classes`; for regression they are None."""

    metrics: dict[str, float]
    raw: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    codes: np.ndarray | None = None
    predicted_codes: np.ndarray | None = None


def score(model: TabularModel, frame: pd.DataFrame, target: str) -> Scored:
    from pipeline.models import encode_labels

    raw = model.predict_raw(frame)
    predicted = model.decide(raw)
    actual = frame[target].to_numpy()
    if model.task == "regression":
        return Scored(regression_metrics(actual, raw), raw, predicted, actual)
    codes = encode_labels(frame[target], model.classes, "scored")
    predicted_codes = label_codes(predicted, model.classes)
    metrics = classification_metrics(codes, raw, predicted_codes, model.task)
    return Scored(metrics, raw, predicted, actual, codes, predicted_codes)


def label_codes(labels: np.ndarray, classes: list[Any]) -> np.ndarray:
    lookup = {str(value): code for code, value in enumerate(classes)}
    return np.array([lookup[str(label)] for label in labels], dtype=np.int64)
