"""Distillation: a small student fitted on the tuned model's outputs (`compress.distill`).

The student learns what the teacher predicts, not the labels: over the train + val rows
(at most `max_rows`, a sample seeded by `train.seed`), regression students fit the
teacher's values by squared error, and classification students fit its calibrated
probabilities as soft targets, by the cross-entropy between the teacher's distribution
and the student's:

- xgboost, binary: `binary:logistic` on P(positive), which xgboost accepts as a label
  in [0, 1]; multiclass: each row once per class, labelled with the class and weighted
  by the teacher's probability of it, which makes `multi:softprob`'s weighted log loss
  exactly the soft cross-entropy.
- mlp, classes: the torch family's network (`TabularMLP`) trained on the soft
  cross-entropy (the family's own loop takes class codes only); regression: the
  family's learner as it is, on the teacher's values.

Budgets are rounds and epochs, never seconds; no early stopping (val is part of what the
student fits). The student is a `TabularModel` with the teacher's `FeatureSpec`,
classes and decision threshold, and no calibrator (it learnt calibrated outputs), so
the ONNX export, scoring and serving take it as they take any model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.config import DistillConfig, TorchConfig, XGBoostConfig
from pipeline.errors import DataError
from pipeline.models.base import FitReport, TrainingData

if TYPE_CHECKING:
    from pipeline.models import TabularModel

# Soft targets below this are clipped when the student's loss is reported (log of 0).
PROBABILITY_FLOOR = 1e-15
# Written into the served model.json of a kept student.
DISTILLED_FROM = "distilled_from"


@dataclass(frozen=True)
class Student:
    """The fitted student and how many rows it learnt from."""

    model: TabularModel
    rows: int


def distill(teacher: TabularModel, rows: pd.DataFrame, config: DistillConfig, seed: int) -> Student:
    """Fit `config.student` on `teacher`'s outputs over `rows` (train + val, raw columns)."""
    if config.student == "none":
        raise ValueError("compress.distill.student is none: there is no student to fit")
    if rows.empty:
        raise DataError("compress.distill: train + val hold no rows to distil from")
    if len(rows) > config.max_rows:
        rows = rows.sample(n=config.max_rows, random_state=seed).sort_index()
    x = teacher.features.prepare(rows)
    targets = teacher.predict_raw(rows)
    if config.student == "xgboost":
        learner, params = _xgboost_student(teacher, x, targets, config, seed)
        steps = config.n_estimators
    else:
        learner, params = _mlp_student(teacher, x, targets, config, seed)
        steps = config.epochs
    loss = fidelity_loss(teacher.task, targets, learner.predict_raw(x))
    from pipeline.models import TabularModel

    model = TabularModel(
        family="xgboost" if config.student == "xgboost" else "torch",
        spec_target=teacher.spec_target,
        task=teacher.task,
        features=teacher.features,
        learner=learner,
        params=params,
        # No val to early-stop on: the loss reported is the student's against the teacher
        # on the rows it learnt (`fidelity_loss`).
        report=FitReport(best_step=steps - 1, val_loss=loss, refit_rows=len(x)),
        classes=list(teacher.classes),
        threshold=teacher.threshold,
        threshold_metric=teacher.threshold_metric,
        objective="squared_error" if teacher.task == "regression" else None,
        selection={"distillation": {"rows": len(x), "fidelity_loss": loss}},
    )
    return Student(model, len(x))


def fidelity_loss(task: str, teacher: np.ndarray, student: np.ndarray) -> float:
    """How far the student is from the teacher on the rows it learnt: RMSE for values,
    the soft cross-entropy for class probabilities."""
    if task == "regression":
        return float(np.sqrt(np.mean((teacher - student) ** 2)))
    clipped = np.clip(student, PROBABILITY_FLOOR, 1.0)
    return float(-np.mean(np.sum(teacher * np.log(clipped), axis=1)))


def _training_data(teacher: TabularModel, x: pd.DataFrame, y: np.ndarray) -> TrainingData:
    # No val: the student fits a fixed budget, so the family never reads it.
    n_classes = len(teacher.classes)
    return TrainingData(teacher.features, teacher.task, n_classes, x, y, x.head(1), y[:1])


def _xgboost_student(
    teacher: TabularModel,
    x: pd.DataFrame,
    targets: np.ndarray,
    config: DistillConfig,
    seed: int,
) -> tuple[Any, dict[str, Any]]:
    import xgboost as xgb

    from pipeline.models.xgboost_model import XGBoostLearner

    params = XGBoostConfig(
        n_estimators=config.n_estimators,
        learning_rate=config.learning_rate,
        max_depth=config.max_depth,
        subsample=1.0,
        colsample_bytree=1.0,
    ).model_dump(mode="json")
    if teacher.task == "regression":
        params["loss"] = "squared_error"
    learner = XGBoostLearner(
        params, teacher.features, teacher.task, len(teacher.classes), seed=seed
    )
    if teacher.task != "multiclass":
        # Regression values, or P(positive) as a soft label for binary:logistic.
        y = targets if teacher.task == "regression" else targets[:, 1]
        learner.fit(_training_data(teacher, x, y), steps=config.n_estimators)
        return learner, params
    # Each row once per class, weighted by the teacher's probability of that class.
    k = len(teacher.classes)
    repeated = x.iloc[np.repeat(np.arange(len(x)), k)].reset_index(drop=True)
    labels = np.tile(np.arange(k), len(x))
    weights = targets.reshape(-1)
    data = _training_data(teacher, repeated, labels)
    matrix = learner._matrix(repeated, labels, weights)
    learner.booster = xgb.train(
        learner._booster_params(data), matrix, num_boost_round=config.n_estimators
    )
    return learner, params


def _mlp_student(
    teacher: TabularModel,
    x: pd.DataFrame,
    targets: np.ndarray,
    config: DistillConfig,
    seed: int,
) -> tuple[Any, dict[str, Any]]:
    from pipeline.models.torch_model import TorchLearner

    settings = TorchConfig(hidden_sizes=config.hidden_sizes, max_epochs=config.epochs)
    params = settings.model_dump(mode="json")
    if teacher.task == "regression":
        params["loss"] = "squared_error"
    learner = TorchLearner(params, teacher.features, teacher.task, len(teacher.classes), seed=seed)
    if teacher.task == "regression":
        learner.fit(_training_data(teacher, x, targets), steps=config.epochs)
    else:
        _fit_soft_targets(learner, x, targets, settings)
    return learner, params


def _fit_soft_targets(
    learner: Any, x: pd.DataFrame, targets: np.ndarray, settings: TorchConfig
) -> None:
    """The torch family's network, schedule and batching, with the soft cross-entropy
    against the teacher's probabilities as the loss; CPU, one thread, seeded."""
    import torch
    from torch import nn

    from pipeline.models.torch_model import (
        MLPConfig,
        ScoringModule,
        TabularMLP,
        _batch_bounds,
        _column_stats,
        _one_thread_on_cpu,
        optimizer_step,
    )

    features = learner.features
    with _one_thread_on_cpu("cpu"):
        torch.manual_seed(learner.seed)
        batches = torch.Generator().manual_seed(learner.seed)
        network = TabularMLP(
            MLPConfig.for_features(features, learner.task, learner.n_classes, settings)
        )
        numeric = features.numeric_matrix(x)
        mean, std = _column_stats(numeric)
        network.numeric_mean.copy_(torch.from_numpy(mean))
        network.numeric_std.copy_(torch.from_numpy(std))
        x_numeric = torch.from_numpy(numeric)
        x_codes = torch.from_numpy(features.category_codes(x))
        y = torch.from_numpy(np.asarray(targets, dtype=np.float32))
        loss_fn = nn.CrossEntropyLoss()  # probabilities as targets: the soft cross-entropy
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        bounds = _batch_bounds(len(y), settings.batch_size)
        total_steps = max(1, len(bounds) * settings.max_epochs)
        step = 0
        for _ in range(settings.max_epochs):
            network.train()
            order = torch.randperm(len(y), generator=batches)
            for start, stop in bounds:
                batch = order[start:stop]
                loss = loss_fn(network(x_numeric[batch], x_codes[batch]), y[batch])
                optimizer_step(network, optimizer, loss, step, total_steps, settings)
                step += 1
        learner.scorer = ScoringModule(network).eval()


def teacher_summary(teacher: TabularModel, digest: str, metric: str, score: float) -> dict:
    """What a served student records of the model it was distilled from."""
    return {
        "family": teacher.family,
        "params": teacher.params,
        "objective": teacher.objective,
        "calibration": teacher.calibrator.method if teacher.calibrator else None,
        "model_sha256": digest,
        "metric": metric,
        "score": score,
    }


def student_folder(model_dir: Path, compressed_dir: Path | None) -> Path:
    """The native folder of the model that `compressed_dir` serves: the compressed folder
    itself when it holds a distilled student (its native files sit beside its ONNX),
    else `model_dir` (the tuned model, exported as it is)."""
    if compressed_dir is not None and is_distilled(compressed_dir):
        return Path(compressed_dir)
    return Path(model_dir)


def is_distilled(compressed_dir: Path) -> bool:
    """Whether a compress-stage folder serves a distilled student."""
    path = Path(compressed_dir) / "model.json"
    if not path.exists():
        return False
    return DISTILLED_FROM in json.loads(path.read_text(encoding="utf-8"))
