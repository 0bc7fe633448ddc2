"""One model interface over four families: xgboost, scikit-learn, torch, and ensembles
of those (`pipeline.models.ensemble_model`).

`fit_model` learns the feature spec and the class encoding from train rows, fits the
family chosen by `train.model` with early stopping on val, then, for classes,
calibrates the probabilities on val (`pipeline.calibration`) and picks the binary
decision threshold on the calibrated ones. For regression the objective decides the
loss (squared error, Poisson, Tweedie) or transforms the target (`log1p`: the learner
fits log(1 + y) and predictions come back through expm1). `refit_model`
(`train.refit`) fits it again on train + val for the steps early stopping kept.
The result, a `TabularModel`, predicts from raw columns and saves to a folder:
`model.json` (everything but the weights) plus the family's native file.
Family modules are imported only when used, so nothing here imports torch.
"""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.artifacts import staged_directory
from pipeline.calibration import Calibrator, choose_calibration
from pipeline.config import Family, TrainConfig
from pipeline.errors import ConfigError, DataError
from pipeline.features import FeatureArrays, FeatureSpec, category_text
from pipeline.models.base import Decisions, FitReport, Learner, StepCallback, TrainingData
from pipeline.schema import DatasetSpec

FORMAT_VERSION = 1
MODEL_FILE = "model.json"
_FAMILIES = {
    "xgboost": ("pipeline.models.xgboost_model", "XGBoostLearner"),
    "sklearn": ("pipeline.models.sklearn_model", "SklearnLearner"),
    "torch": ("pipeline.models.torch_model", "TorchLearner"),
    "ensemble": ("pipeline.models.ensemble_model", "EnsembleLearner"),
}


def learner_class(family: Family) -> type[Learner]:
    module, name = _FAMILIES[family]
    return getattr(importlib.import_module(module), name)


@dataclass
class TabularModel(Decisions):
    """A fitted model that takes raw columns and returns real labels."""

    family: Family
    spec_target: str
    task: str
    features: FeatureSpec
    learner: Learner
    params: dict[str, Any]
    report: FitReport
    classes: list[Any] = field(default_factory=list)
    threshold: float | None = None
    threshold_metric: str | None = None
    # Regression: the objective fitted (squared_error, poisson, tweedie or log1p).
    objective: str | None = None
    calibrator: Calibrator | None = None
    # How the choices were made: the objective's and calibration's figures.
    selection: dict[str, Any] = field(default_factory=dict)

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        """Regression values, or class probabilities (n, k) in `classes` order."""
        return self.finish(self.learner.predict_raw(self.features.prepare(frame)))

    def predict_arrays(self, arrays: FeatureArrays) -> np.ndarray:
        """`predict_raw` for prepared features (`FeatureSpec.arrays`/`record_arrays`)."""
        return self.finish(self.learner.predict_arrays(arrays))

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """The learner's output in target units: back from log1p, or calibrated."""
        if self.objective == "log1p":
            return np.expm1(raw)
        if self.calibrator is not None:
            return self.calibrator.apply(raw)
        return raw

    def save(self, directory: Path) -> None:
        """Write the model folder atomically: a failed save leaves the old one intact."""
        with staged_directory(directory) as staged:
            self.write(staged)

    def write(self, directory: Path) -> None:
        """Write the model's files into an existing, empty folder."""
        self.learner.save(directory)
        (directory / MODEL_FILE).write_text(json.dumps(self.describe(), indent=2) + "\n")

    def describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "family": self.family,
            "task": self.task,
            "target": self.spec_target,
            "features": self.features.to_dict(),
            "classes": self.classes,
            "threshold": self.threshold,
            "threshold_metric": self.threshold_metric,
            "objective": self.objective,
            "calibration": self.calibrator.to_dict() if self.calibrator else None,
            "selection": self.selection,
            "params": self.params,
            "report": self.report.to_dict(),
        }


def load_model(directory: Path) -> TabularModel:
    """Read a model folder written by `TabularModel.save`."""
    directory = Path(directory)
    path = directory / MODEL_FILE
    if not path.exists():
        raise DataError(
            f"{directory} holds no model ({MODEL_FILE} missing): run the pipeline up to the "
            "stage that writes it (dvc repro)"
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: model format {meta.get('format')} is not supported; retrain")
    features = FeatureSpec.from_dict(meta["features"])
    n_classes = len(meta["classes"])
    learner = learner_class(meta["family"]).load(
        directory, meta["params"], features, meta["task"], n_classes
    )
    return TabularModel(
        family=meta["family"],
        spec_target=meta["target"],
        task=meta["task"],
        features=features,
        learner=learner,
        params=meta["params"],
        report=FitReport.from_dict(meta["report"]),
        classes=meta["classes"],
        threshold=meta["threshold"],
        threshold_metric=meta["threshold_metric"],
        objective=meta.get("objective"),
        calibrator=Calibrator.from_dict(meta.get("calibration")),
        selection=meta.get("selection", {}),
    )


def fit_model(
    train: pd.DataFrame,
    val: pd.DataFrame,
    spec: DatasetSpec,
    config: TrainConfig,
    family_params: dict[str, Any] | None = None,
    on_step: StepCallback | None = None,
) -> TabularModel:
    """Fit `config.model` on train with early stopping on val.

    `family_params` overrides the family's params (tune passes a trial's choices; an
    ensemble's name the member first: `xgboost.max_depth`). `train.objective: auto` is
    resolved before this by `pipeline.selection`; here it means squared error. An
    ensemble's `order: auto` not resolved by the stage (`TrainConfig.with_time_order`)
    goes by the data's time column.
    """
    objective = resolved_objective(config, spec)
    data, classes = training_data(train, val, spec, config)
    if config.model == "ensemble":
        config = config.with_time_order(spec.time_column is not None)
    params = with_overrides(config.family_params(), family_params or {})
    if objective is not None:
        params["loss"] = "squared_error" if objective == "log1p" else objective
        if objective == "tweedie":
            params["tweedie_power"] = config.tweedie_power
    device = resolve_device(config.device, config.model)
    learner = learner_class(config.model)(
        params, data.features, data.task, data.n_classes, device=device, seed=config.seed
    )
    report = learner.fit(data, on_step=on_step)
    model = TabularModel(
        family=config.model,
        spec_target=spec.target,
        task=spec.task,
        features=data.features,
        learner=learner,
        params=params,
        report=report,
        classes=classes,
        objective=objective,
    )
    if spec.task != "regression":
        raw = learner.predict_raw(data.x_val)
        model.calibrator, figures = choose_calibration(data.y_val, raw, config.calibration)
        model.selection = {"calibration": figures}
    if spec.task == "binary" and config.threshold_metric != "none":
        probabilities = model.finish(learner.predict_raw(data.x_val))[:, 1]
        model.threshold = pick_threshold(data.y_val, probabilities, config.threshold_metric)
        model.threshold_metric = config.threshold_metric
    if config.model == "ensemble":
        model.selection["ensemble"] = learner.summary  # type: ignore[attr-defined]
    return model


def with_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`params` with `overrides` applied; a dotted key (`xgboost.max_depth`) sets a key
    of an ensemble member's section."""
    merged = {
        key: dict(value) if isinstance(value, dict) else value for key, value in params.items()
    }
    for key, value in overrides.items():
        member, dot, name = key.partition(".")
        if dot and isinstance(merged.get(member), dict):
            merged[member][name] = value
        else:
            merged[key] = value
    return merged


def resolved_objective(config: TrainConfig, spec: DatasetSpec) -> str | None:
    """The regression objective to fit (auto: squared error); None for classes."""
    if spec.task != "regression":
        return None
    return "squared_error" if config.objective == "auto" else config.objective


def refit_model(
    model: TabularModel,
    train: pd.DataFrame,
    val: pd.DataFrame,
    spec: DatasetSpec,
    config: TrainConfig,
) -> TabularModel:
    """`model` fitted again on train + val for the rounds or epochs its early stopping
    kept (`train.refit`), so it learns from the newest rows before test.

    The feature spec and class weights are learned again from those rows; the params,
    the objective, the classes, the calibrator and threshold fitted on val and the
    early-stopped report (with `refit_rows`) are kept. Score val with `model` first:
    the refit has seen it.

    An ensemble refits each member for its own kept steps and keeps its combiner: the
    learner's `refit_plan()` joins the params handed to the fresh learner (the model's
    `params` stay as the user gave them).
    """
    if model.objective is not None:
        config = config.model_copy(update={"objective": model.objective})
    data, _ = training_data(pd.concat([train, val], ignore_index=True), val, spec, config)
    device = resolve_device(config.device, config.model)
    params = model.params
    if model.family == "ensemble":
        params = {**params, "refit": model.learner.refit_plan()}  # type: ignore[attr-defined]
    learner = learner_class(model.family)(
        params, data.features, data.task, data.n_classes, device=device, seed=config.seed
    )
    learner.fit(data, steps=model.report.best_step + 1)
    return replace(
        model,
        features=data.features,
        learner=learner,
        report=replace(model.report, refit_rows=len(data.y_train)),
    )


def training_data(
    train: pd.DataFrame, val: pd.DataFrame, spec: DatasetSpec, config: TrainConfig
) -> tuple[TrainingData, list[Any]]:
    """Prepared features, encoded targets and class weights, learned from train rows."""
    for name, frame in (("train", train), ("val", val)):
        if spec.target not in frame.columns:
            raise DataError(f"the {name} set has no target column {spec.target!r}: re-run split")
        if frame[spec.target].isna().any():
            raise DataError(f"the {name} set has rows without a target: clean must drop them")
    features = FeatureSpec.fit(train, spec)
    x_train, x_val = features.prepare(train), features.prepare(val)
    if spec.task == "regression":
        y_train = pd.to_numeric(train[spec.target], errors="raise").to_numpy(dtype=np.float64)
        y_val = pd.to_numeric(val[spec.target], errors="raise").to_numpy(dtype=np.float64)
        objective = resolved_objective(config, spec)
        _check_target_fits(objective, np.concatenate([y_train, y_val]), spec.target)
        if objective == "log1p":
            y_train, y_val = np.log1p(y_train), np.log1p(y_val)
        data = TrainingData(features, spec.task, 0, x_train, y_train, x_val, y_val)
        return data, []
    classes = class_order(train[spec.target], spec.task, config.positive_class)
    y_train = encode_labels(train[spec.target], classes, "train")
    y_val = encode_labels(val[spec.target], classes, "val")
    weights = None
    if config.class_weight == "balanced":
        counts = np.bincount(y_train, minlength=len(classes)).astype(np.float64)
        weights = len(y_train) / (len(classes) * np.maximum(counts, 1.0))
    data = TrainingData(
        features, spec.task, len(classes), x_train, y_train, x_val, y_val, class_weights=weights
    )
    return data, classes


def _check_target_fits(objective: str | None, y: np.ndarray, target: str) -> None:
    lowest = float(np.min(y)) if len(y) else 0.0
    if objective in ("poisson", "tweedie", "log1p") and lowest < 0:
        raise ConfigError(
            f"train.objective: {objective} needs a target >= 0, but {target!r} goes down to "
            f"{lowest:g}: use squared_error"
        )


def class_order(target: pd.Series, task: str, positive: Any = None) -> list[Any]:
    """The distinct labels in order (numerically when they are numbers); for binary, the
    positive class goes last (index 1). Labels are compared as `category_text` gives
    them, so 1, 1.0 and "1" are one class; each is stored as a JSON-ready value."""
    present = target.dropna()
    texts = category_text(present)
    firsts = present.groupby(texts.to_numpy(), sort=False).first()
    classes = [_plain_label(value) for value in firsts.to_numpy()]
    numeric = all(isinstance(value, int | float) for value in classes)
    classes.sort(key=(lambda value: (float(value), str(value))) if numeric else str)
    if task == "binary":
        if len(classes) != 2:
            raise DataError(f"a binary target needs 2 classes in train, found {len(classes)}")
        if positive is not None:
            text = label_texts(classes)
            wanted = label_texts([positive])[0]
            if wanted not in text:
                raise ConfigError(
                    f"train.positive_class: {positive!r} is not a class (classes: {text})"
                )
            if text.index(wanted) == 0:
                classes.reverse()
    elif len(classes) < 2:
        raise DataError(f"the target has {len(classes)} class in train: nothing to learn")
    return classes


def label_texts(classes: list[Any]) -> list[str]:
    return list(category_text(pd.Series(classes, dtype=object)))


def _plain_label(value: Any) -> Any:
    """A label as a JSON value: numpy scalars unwrapped, whole floats as ints."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def encode_labels(labels: pd.Series, classes: list[Any], part: str = "input") -> np.ndarray:
    """Class labels as codes 0..k-1 in `classes` order; an unseen label is a data error."""
    texts = category_text(labels)
    codes = pd.Index(label_texts(classes)).get_indexer(texts)
    if (codes < 0).any():
        unseen = sorted(set(texts[codes < 0].astype(str)))
        raise DataError(
            f"the {part} set holds class(es) {', '.join(unseen[:5])} that train does not"
        )
    return codes.astype(np.int64)


def pick_threshold(y_val: np.ndarray, probabilities: np.ndarray, metric: str) -> float:
    """The threshold on P(positive) that maximises `metric` on val; ties go to the
    threshold nearest 0.5."""
    candidates = np.unique(np.round(np.quantile(probabilities, np.linspace(0, 1, 201)), 6))
    candidates = np.union1d(candidates, [0.5])
    actual = np.asarray(y_val, dtype=bool)
    predicted = probabilities[None, :] >= candidates[:, None]
    tp = (predicted & actual).sum(axis=1).astype(float)
    fp = (predicted & ~actual).sum(axis=1).astype(float)
    fn = (~predicted & actual).sum(axis=1).astype(float)
    tn = (~predicted & ~actual).sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "f1":
            scores = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        elif metric == "balanced_accuracy":
            recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
            scores = (recall + specificity) / 2
        else:
            scores = (tp + tn) / len(actual)
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def resolve_device(requested: str, family: Family) -> str:
    """`auto` is CUDA when the family can use it here, else CPU; `cuda` without a GPU
    is a configuration error, never a crash inside the library. An ensemble keeps the
    request: each member resolves it for itself."""
    if family == "ensemble":
        return requested
    if family == "sklearn" or requested == "cpu":
        return "cpu"
    available = _cuda_available(family)
    if requested == "cuda" and not available:
        raise ConfigError(
            f"train.device is cuda but {family} finds no CUDA device here: use auto or cpu"
        )
    return "cuda" if available else "cpu"


def _cuda_available(family: Family) -> bool:
    if family == "torch":
        import torch

        return bool(torch.cuda.is_available())
    # Ask the driver before xgboost: a CPU-only machine never touches a CUDA path.
    if not Path("/dev/nvidiactl").exists() and shutil.which("nvidia-smi") is None:
        return False
    import xgboost

    return bool(xgboost.build_info().get("USE_CUDA", False))
