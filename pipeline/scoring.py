"""Score a model on a labelled frame: predictions and the task's metrics together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    actual = frame[target].to_numpy()
    if model.task == "regression":
        return Scored(regression_metrics(actual, raw), raw, raw, actual)
    codes = encode_labels(frame[target], model.classes, "scored")
    predicted_codes = model.decide_codes(raw)
    predicted = np.asarray(model.classes, dtype=object)[predicted_codes]
    metrics = classification_metrics(codes, raw, predicted_codes, model.task)
    return Scored(metrics, raw, predicted, actual, codes, predicted_codes)
