"""What every model family implements, and what they share.

A family (`xgboost`, `sklearn`, `torch`) is a `Learner`: it fits on prepared feature
frames with integer-coded classes and returns raw outputs (a value per row for
regression, class probabilities for classification). `TabularModel` in
`pipeline.models` wraps a learner with the feature spec, the class labels and the
decision threshold, so callers deal in raw columns and real labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline.config import Task
from pipeline.features import FeatureArrays, FeatureSpec

# Called after each boosting round or epoch with (step, validation loss). It may raise
# (Optuna's TrialPruned) to stop training early.
StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainingData:
    """Prepared features and encoded targets. `y` holds floats for regression and class
    codes 0..k-1 for classification; weights are None when classes are not weighted."""

    features: FeatureSpec
    task: Task
    n_classes: int
    x_train: pd.DataFrame
    y_train: np.ndarray
    x_val: pd.DataFrame
    y_val: np.ndarray
    class_weights: np.ndarray | None = None

    @property
    def sample_weight(self) -> np.ndarray | None:
        if self.class_weights is None:
            return None
        return self.class_weights[self.y_train.astype(np.int64)]


@dataclass(frozen=True)
class FitReport:
    """How training went: the step kept (round or epoch), its val loss, and the curve."""

    best_step: int
    val_loss: float
    history: list[float] = field(default_factory=list)
    device: str = "cpu"
    # The rows of the refit on train + val (`train.refit`); 0 when the early-stopped
    # model was kept.
    refit_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_step": self.best_step,
            "val_loss": self.val_loss,
            "history": self.history,
            "device": self.device,
            "refit_rows": self.refit_rows,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FitReport:
        return cls(
            raw["best_step"],
            raw["val_loss"],
            list(raw["history"]),
            raw["device"],
            raw.get("refit_rows", 0),
        )


class Learner(ABC):
    """One model family. `config` is the family's section of `train` as a dict."""

    family: ClassVar[str]

    def __init__(
        self,
        config: dict[str, Any],
        features: FeatureSpec,
        task: Task,
        n_classes: int,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        self.config = config
        self.features = features
        self.task = task
        self.n_classes = n_classes
        self.device = device
        self.seed = seed

    @abstractmethod
    def fit(
        self, data: TrainingData, on_step: StepCallback | None = None, steps: int | None = None
    ) -> FitReport:
        """Fit on train, stopping early on val loss; or, given `steps`, for exactly that
        many rounds or epochs with val unused (the refit on train + val)."""

    @abstractmethod
    def predict_raw(self, prepared: pd.DataFrame) -> np.ndarray:
        """Regression: shape (n,). Classification: class probabilities, shape (n, k)."""

    @abstractmethod
    def predict_arrays(self, arrays: FeatureArrays) -> np.ndarray:
        """`predict_raw` for features already turned into arrays (serving's fast path)."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the fitted state into `directory` (which exists)."""

    @classmethod
    @abstractmethod
    def load(
        cls,
        directory: Path,
        config: dict[str, Any],
        features: FeatureSpec,
        task: Task,
        n_classes: int,
    ) -> Learner:
        """Read what `save` wrote. Loads on CPU."""


def validation_loss(task: Task, y_true: np.ndarray, raw: np.ndarray) -> float:
    """The loss every family early-stops and tunes on: RMSE, or log loss for classes."""
    if task == "regression":
        return float(np.sqrt(np.mean((np.asarray(y_true, dtype=float) - raw) ** 2)))
    probabilities = np.clip(raw, 1e-15, 1.0)
    picked = probabilities[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)]
    return float(-np.mean(np.log(picked)))


class Decisions:
    """Raw outputs to predictions, shared by the native model and its ONNX export so
    that serving decides exactly as evaluation did. Needs `task`, `classes`,
    `threshold` and `predict_raw`."""

    task: str
    classes: list[Any]
    threshold: float | None

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.task == "regression":
            raise TypeError("a regression model has no class probabilities")
        return self.predict_raw(frame)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted values, or class labels (binary: by the threshold picked on val)."""
        return self.decide(self.predict_raw(frame))

    def decide(self, raw: np.ndarray) -> np.ndarray:
        """Turn raw outputs into predictions: values, or class labels."""
        if self.task == "regression":
            return raw
        return np.asarray(self.classes, dtype=object)[self.decide_codes(raw)]

    def decide_codes(self, raw: np.ndarray) -> np.ndarray:
        """Class probabilities to class codes (binary: by the threshold picked on val)."""
        if self.task == "binary" and self.threshold is not None:
            return (raw[:, 1] >= self.threshold).astype(np.int64)
        return raw.argmax(axis=1).astype(np.int64)
