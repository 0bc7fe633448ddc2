"""The scikit-learn family: a Pipeline of imputation, scaling and one-hot encoding
learned from train rows, then a linear model or a random forest.

The fitted Pipeline is saved with skops rather than pickle, and loaded only when every
type the file names is one Driftline writes (`TRUSTED_TYPES`): a tampered file is
refused before anything in it is built.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Task
from pipeline.errors import DataError, first_line
from pipeline.features import FeatureArrays, FeatureSpec
from pipeline.models.base import FitReport, Learner, StepCallback, TrainingData, validation_loss

PIPELINE_FILE = "pipeline.skops"
# Categorical gaps become this category, which no train category equals, so the
# one-hot encoder treats them as unknown (all zeros).
MISSING_CATEGORY = "__missing__"
# The types of a Driftline `pipeline.skops` that skops does not trust by default, so
# that loading must name them; any other type in a file means it was not written by
# `SklearnLearner.save`. Derived by fitting every Pipeline `build_pipeline` makes
# (forest and linear; regression with squared_error, poisson, tweedie and log1p;
# binary and multiclass, with and without class weights; numeric-only,
# categorical-only and mixed features, and the bike, bank and elec2 fixtures) and
# listing `skops.io.get_untrusted_types` of each file (skops 0.16, scikit-learn 1.9).
# tests/unit/test_safe_loads.py fits those variants again and fails on a new type.
TRUSTED_TYPES = (
    "numpy.dtype",  # the imputer's fitted dtype, when there are numeric features
    "sklearn._loss.loss.HalfTweedieLoss",  # TweedieRegressor (linear, tweedie)
    "sklearn.tree._tree.Tree",  # each tree of a random forest
)
# What a corrupt or foreign file makes skops raise while reading its schema.
_UNREADABLE = (OSError, zipfile.BadZipFile, ValueError, TypeError, KeyError)


def build_pipeline(
    config: dict[str, Any], features: FeatureSpec, task: Task, seed: int, class_weight: Any
) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import (
        LogisticRegression,
        PoissonRegressor,
        Ridge,
        TweedieRegressor,
    )
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    linear = config["estimator"] == "linear"
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if linear:
        numeric_steps.append(("scale", StandardScaler()))
    encoder = OneHotEncoder(
        categories=[list(features.categories[column]) for column in features.categorical],
        handle_unknown="ignore",
        sparse_output=False,
        dtype=np.float32,
    )
    prepare = ColumnTransformer(
        [
            ("numeric", Pipeline(numeric_steps), list(features.numeric)),
            ("categorical", encoder, list(features.categorical)),
        ],
        remainder="drop",
    )
    loss = config.get("loss", "squared_error")
    if linear and task == "regression" and loss == "poisson":
        estimator: Any = PoissonRegressor(alpha=config["alpha"], max_iter=1000)
    elif linear and task == "regression" and loss == "tweedie":
        estimator = TweedieRegressor(
            power=config["tweedie_power"], alpha=config["alpha"], link="log", max_iter=1000
        )
    elif linear and task == "regression":
        estimator = Ridge(alpha=config["alpha"])
    elif linear:
        estimator = LogisticRegression(
            C=1.0 / config["alpha"], max_iter=2000, class_weight=class_weight
        )
    else:
        forest = RandomForestRegressor if task == "regression" else RandomForestClassifier
        options: dict[str, Any] = {"class_weight": class_weight}
        if task == "regression":
            options = {"criterion": loss}  # squared_error | poisson
        estimator = forest(
            n_estimators=config["n_estimators"],
            max_depth=config["max_depth"],
            min_samples_leaf=config["min_samples_leaf"],
            max_features=config["max_features"],
            n_jobs=config["n_jobs"],
            random_state=seed,
            **options,
        )
    return Pipeline([("prepare", prepare), ("model", estimator)])


class SklearnLearner(Learner):
    family = "sklearn"

    pipeline: Any

    def _inputs(self, prepared: pd.DataFrame) -> pd.DataFrame:
        if not self.features.categorical:
            return prepared
        filled = prepared.copy()
        for column in self.features.categorical:
            filled[column] = filled[column].fillna(MISSING_CATEGORY)
        return filled

    def fit(
        self, data: TrainingData, on_step: StepCallback | None = None, steps: int | None = None
    ) -> FitReport:
        """Fits in one go: `steps` (a refit) changes nothing but skipping val."""
        class_weight = None
        if data.class_weights is not None:
            class_weight = {code: float(w) for code, w in enumerate(data.class_weights)}
        self.pipeline = build_pipeline(
            self.config, self.features, self.task, self.seed, class_weight
        )
        self.pipeline.fit(self._inputs(data.x_train), data.y_train)
        if steps is not None:
            return FitReport(best_step=0, val_loss=float("nan"), device="cpu")
        loss = validation_loss(self.task, data.y_val, self.predict_raw(data.x_val))
        if on_step is not None:
            on_step(0, loss)
        return FitReport(best_step=0, val_loss=loss, history=[loss], device="cpu")

    def predict_raw(self, prepared: pd.DataFrame) -> np.ndarray:
        inputs = self._inputs(prepared)
        if self.task == "regression":
            return np.asarray(self.pipeline.predict(inputs), dtype=np.float64)
        return np.asarray(self.pipeline.predict_proba(inputs), dtype=np.float64)

    def predict_arrays(self, arrays: FeatureArrays) -> np.ndarray:
        """The Pipeline takes named columns: the arrays as a prepared frame (numerics as
        the float32 values the ONNX export also sees)."""
        columns: dict[str, Any] = {
            name: arrays.numeric[:, position].astype(np.float64)
            for position, name in enumerate(self.features.numeric)
        }
        for name, texts in zip(self.features.categorical, arrays.texts, strict=True):
            columns[name] = pd.Series([np.nan if t is None else t for t in texts], dtype=object)
        return self.predict_raw(pd.DataFrame(columns))

    def save(self, directory: Path) -> None:
        import skops.io

        skops.io.dump(self.pipeline, directory / PIPELINE_FILE)

    @classmethod
    def load(
        cls,
        directory: Path,
        config: dict[str, Any],
        features: FeatureSpec,
        task: Task,
        n_classes: int,
    ) -> SklearnLearner:
        learner = cls(config, features, task, n_classes)
        learner.pipeline = load_pipeline(directory / PIPELINE_FILE)
        return learner


def load_pipeline(path: Path) -> Any:
    """The Pipeline in a skops file, refused (DataError) when the file names a type
    outside skops' defaults and `TRUSTED_TYPES`: the check reads only the file's
    schema, so a refused file builds nothing and runs no code."""
    import skops.io

    try:
        named = skops.io.get_untrusted_types(file=path)
    except _UNREADABLE as exc:
        raise DataError(f"{path}: not a readable skops file ({first_line(exc)})") from None
    unexpected = sorted(set(named) - set(TRUSTED_TYPES))
    if unexpected:
        # repr: a name read from the file stays one line, whatever it holds.
        shown = ", ".join(repr(name)[:200] for name in unexpected[:5])
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise DataError(
            f"{path}: refused to load: it names type(s) Driftline never writes "
            f"({shown}{more}); the file was altered or not written by Driftline: "
            "restore the model folder from the registry or retrain"
        )
    try:
        return skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except _UNREADABLE as exc:
        raise DataError(f"{path}: not a readable skops file ({first_line(exc)})") from None
