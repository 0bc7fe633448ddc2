"""The torch family: a tabular MLP over standardised numerics and embedded categoricals.

Everything after `FeatureSpec` lives inside the network (standardising, imputing gaps,
encoding categories), so the saved module alone turns raw numbers into predictions and
exports to ONNX as one graph. `ScoringModule` adds what `predict_raw` returns on top:
regression values in target units, or class probabilities.

The checkpoint `mlp.pt` holds tensors and plain python values only, so it loads with
`torch.load(..., weights_only=True)`: `config` (an `MLPConfig` as a dict), `state_dict`
(the network's, numeric mean/std buffers included) and `target` (regression mean/std,
and `log_link` for the Poisson loss, where the network predicts the log of the rate).
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError
from torch import nn

from pipeline.config import Task, TorchConfig, describe_errors
from pipeline.errors import ConfigError, DataError
from pipeline.features import FeatureArrays, FeatureSpec
from pipeline.models.base import (
    FitReport,
    Learner,
    StepCallback,
    TrainingData,
    validation_loss,
)

CHECKPOINT_FILE = "mlp.pt"
PREDICT_BATCH_ROWS = 65536
# one_cycle rises over this share of the steps, as in Smith's schedule and torch's
# OneCycleLR; warmup_fraction belongs to warmup_cosine.
ONE_CYCLE_RISE = 0.3
ONE_CYCLE_START_DIVISOR = 25.0
ONE_CYCLE_END_DIVISOR = 1e4


def learning_rate_at(
    step: int, total_steps: int, base_lr: float, schedule: str, warmup_fraction: float = 0.0
) -> float:
    """The learning rate for optimiser step `step` of `total_steps` (counted from 0).

    warmup_cosine: linear warmup over `warmup_fraction` of the steps, then cosine decay
    towards 0. one_cycle: linear rise from base_lr/25 over the first 30%, then cosine
    annealing towards base_lr/1e4. constant: base_lr throughout. Steps past the end keep
    the last value.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    step = min(max(step, 0), total_steps - 1)
    if schedule == "constant":
        return base_lr
    if schedule == "warmup_cosine":
        warmup = int(warmup_fraction * total_steps)
        if step < warmup:
            return base_lr * (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "one_cycle":
        rise = int(ONE_CYCLE_RISE * total_steps)
        start = base_lr / ONE_CYCLE_START_DIVISOR
        if step < rise:
            return start + (base_lr - start) * step / rise
        end = base_lr / ONE_CYCLE_END_DIVISOR
        progress = (step - rise) / max(1, total_steps - 1 - rise)
        return end + (base_lr - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}: use warmup_cosine, one_cycle or constant")


@dataclass(frozen=True)
class MLPConfig:
    """The network's shape: everything needed to rebuild it from a checkpoint."""

    task: str
    n_outputs: int
    n_numeric: int
    # k + 1 per categorical column: code 0 is a gap or a category train never held.
    cardinalities: tuple[int, ...]
    categorical_encoding: str
    # The input width each categorical column takes: its embedding size, or k + 1 one-hot.
    category_widths: tuple[int, ...]
    hidden_sizes: tuple[int, ...]
    dropout: float
    batch_norm: bool

    @classmethod
    def for_features(
        cls, features: FeatureSpec, task: str, n_classes: int, settings: TorchConfig
    ) -> MLPConfig:
        cardinalities = tuple(len(features.categories[c]) + 1 for c in features.categorical)
        if settings.categorical_encoding == "onehot":
            widths = cardinalities
        else:
            # Half the cardinality, capped: a handful of levels needs few dimensions.
            widths = tuple(
                min(settings.max_embedding_dim, max(1, (size + 1) // 2)) for size in cardinalities
            )
        return cls(
            task=task,
            n_outputs=1 if task == "regression" else n_classes,
            n_numeric=len(features.numeric),
            cardinalities=cardinalities,
            categorical_encoding=settings.categorical_encoding,
            category_widths=widths,
            hidden_sizes=tuple(settings.hidden_sizes),
            dropout=settings.dropout,
            batch_norm=settings.batch_norm,
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MLPConfig:
        sequences = ("cardinalities", "category_widths", "hidden_sizes")
        return cls(**{key: tuple(raw[key]) if key in sequences else raw[key] for key in raw})


class TabularMLP(nn.Module):
    """numeric float32 [n, k_num] (NaN for gaps) and codes int64 [n, k_cat] -> logits, or
    the standardised regression target [n, 1]."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        # Buffers, not constants: the train statistics travel in the state_dict.
        self.register_buffer("numeric_mean", torch.zeros(config.n_numeric))
        self.register_buffer("numeric_std", torch.ones(config.n_numeric))
        self.embeddings = nn.ModuleList()
        if config.categorical_encoding == "embedding":
            self.embeddings.extend(
                nn.Embedding(size, width)
                for size, width in zip(config.cardinalities, config.category_widths, strict=True)
            )
        layers: list[nn.Module] = []
        width = config.n_numeric + sum(config.category_widths)
        for size in config.hidden_sizes:
            layers.append(nn.Linear(width, size))
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers += [nn.ReLU(), nn.Dropout(config.dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.n_outputs)

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.config.n_numeric:
            scaled = (numeric - self.numeric_mean) / self.numeric_std
            # 0 after standardising is the train mean: mean imputation inside the graph.
            parts.append(torch.where(torch.isnan(scaled), 0.0, scaled))
        for position, size in enumerate(self.config.cardinalities):
            column = codes[:, position]
            if self.config.categorical_encoding == "embedding":
                parts.append(self.embeddings[position](column))
            else:
                parts.append(nn.functional.one_hot(column, size).to(numeric.dtype))
        return self.head(self.body(torch.cat(parts, dim=1)))


class ScoringModule(nn.Module):
    """What `predict_raw` returns, as one module to export: `forward(numeric float32
    [n, k_num], codes int64 [n, k_cat])` gives regression values [n] in target units, or
    class probabilities [n, k]. With `log_link` (the Poisson loss) the network's scaled
    output is the log of the predicted rate."""

    def __init__(
        self,
        network: TabularMLP,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        log_link: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.regression = network.config.task == "regression"
        self.log_link = log_link
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float32))

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        output = self.network(numeric, codes)
        if self.regression:
            value = self.linear_predictor(output)
            return torch.exp(value) if self.log_link else value
        return torch.softmax(output, dim=-1)

    def linear_predictor(self, output: torch.Tensor) -> torch.Tensor:
        """The network's output [n, 1] in target units, or in log units with `log_link`."""
        return output.squeeze(-1) * self.target_std + self.target_mean


class TorchLearner(Learner):
    """The MLP trained with AdamW, a per-step LR schedule and early stopping on val."""

    family = "torch"
    scorer: ScoringModule | None = None

    def fit(
        self, data: TrainingData, on_step: StepCallback | None = None, steps: int | None = None
    ) -> FitReport:
        # Checked here rather than in __init__: a loaded model is rebuilt from its
        # checkpoint and must not fail on params that a newer version rejects.
        settings = training_settings(self.config)
        if settings.batch_norm and settings.batch_size < 2:
            raise ConfigError("train.torch.batch_size must be at least 2 when batch_norm is on")
        with _one_thread_on_cpu(self.device):
            return self._train(data, settings, on_step, steps)

    def _train(
        self,
        data: TrainingData,
        settings: TorchConfig,
        on_step: StepCallback | None,
        epochs: int | None = None,
    ) -> FitReport:
        """Early stopping on val; or, given `epochs`, exactly that many, keeping the last
        weights and leaving val unused (the refit)."""
        torch.manual_seed(self.seed)
        batches = torch.Generator().manual_seed(self.seed)
        device = torch.device(self.device)

        network = TabularMLP(
            MLPConfig.for_features(self.features, self.task, self.n_classes, settings)
        )
        numeric = self.features.numeric_matrix(data.x_train)
        mean, std = _column_stats(numeric)
        network.numeric_mean.copy_(torch.from_numpy(mean))
        network.numeric_std.copy_(torch.from_numpy(std))
        target_mean, target_std = 0.0, 1.0
        poisson = self.task == "regression" and self.config.get("loss") == "poisson"
        if poisson:
            # The log of the mean rate, so training starts from the constant model.
            target_mean = math.log(max(float(np.mean(data.y_train)), 1e-6))
        elif self.task == "regression":
            target_mean, target_std = _target_stats(data.y_train)
        scorer = ScoringModule(network, target_mean, target_std, log_link=poisson).to(device)

        x_numeric = torch.from_numpy(numeric).to(device)
        x_codes = torch.from_numpy(self.features.category_codes(data.x_train)).to(device)
        if poisson:
            y = torch.from_numpy(np.asarray(data.y_train, dtype=np.float32)).to(device)
            poisson_loss = nn.PoissonNLLLoss(log_input=True)

            def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return poisson_loss(scorer.linear_predictor(output.unsqueeze(-1)), target)

        elif self.task == "regression":
            y = torch.from_numpy((data.y_train - target_mean) / target_std).float().to(device)
            loss_fn = nn.MSELoss()
        else:
            y = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64)).to(device)
            weight = None
            if data.class_weights is not None:
                weight = torch.tensor(data.class_weights, dtype=torch.float32, device=device)
            loss_fn = nn.CrossEntropyLoss(weight=weight)
        val_numeric = torch.from_numpy(self.features.numeric_matrix(data.x_val)).to(device)
        val_codes = torch.from_numpy(self.features.category_codes(data.x_val)).to(device)

        optimizer = torch.optim.AdamW(
            network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        n_rows = len(y)
        max_epochs = settings.max_epochs if epochs is None else epochs
        steps_per_epoch = len(_batch_bounds(n_rows, settings.batch_size))
        total_steps = max(1, steps_per_epoch * max_epochs)
        step = 0
        history: list[float] = []
        best_epoch, best_loss, best_state = 0, math.inf, None
        for epoch in range(max_epochs):
            network.train()
            order = torch.randperm(n_rows, generator=batches).to(device)
            for start, stop in _batch_bounds(n_rows, settings.batch_size):
                rows = order[start:stop]
                output = network(x_numeric[rows], x_codes[rows])
                loss = loss_fn(output.squeeze(-1) if self.task == "regression" else output, y[rows])
                optimizer_step(network, optimizer, loss, step, total_steps, settings)
                step += 1

            if epochs is not None:
                continue
            val_loss = validation_loss(
                self.task, data.y_val, _score(scorer, val_numeric, val_codes)
            )
            history.append(val_loss)
            # The first epoch always counts, so a run that diverges to NaN still keeps weights.
            if best_state is None or val_loss < best_loss:
                best_epoch, best_loss = epoch, val_loss
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            if on_step is not None:
                on_step(epoch, val_loss)
            if epoch - best_epoch >= settings.patience:
                break

        self.scorer = scorer.eval()
        if epochs is not None:
            return FitReport(max_epochs - 1, math.nan, device=self.device)
        network.load_state_dict(best_state)
        return FitReport(best_epoch, best_loss, history, device=self.device)

    def predict_raw(self, prepared: pd.DataFrame) -> np.ndarray:
        numeric = torch.from_numpy(self.features.numeric_matrix(prepared))
        codes = torch.from_numpy(self.features.category_codes(prepared))
        return _score(self._fitted(), numeric, codes)

    def predict_arrays(self, arrays: FeatureArrays) -> np.ndarray:
        numeric, codes = torch.from_numpy(arrays.numeric), torch.from_numpy(arrays.codes)
        return _score(self._fitted(), numeric, codes)

    def export_module(self) -> ScoringModule:
        """A CPU copy of the scoring module in eval mode, ready for `torch.onnx.export`
        with inputs (numeric float32 [n, k_num], codes int64 [n, k_cat])."""
        return copy.deepcopy(self._fitted()).cpu().eval()

    def save(self, directory: Path) -> None:
        scorer = self._fitted()
        target_mean, target_std = self._target_scaling()
        checkpoint = {
            "config": asdict(scorer.network.config),
            "state_dict": {k: v.cpu() for k, v in scorer.network.state_dict().items()},
            "target": {"mean": target_mean, "std": target_std, "log_link": scorer.log_link},
        }
        torch.save(checkpoint, Path(directory) / CHECKPOINT_FILE)

    @classmethod
    def load(
        cls,
        directory: Path,
        config: dict[str, Any],
        features: FeatureSpec,
        task: Task,
        n_classes: int,
    ) -> TorchLearner:
        path = Path(directory) / CHECKPOINT_FILE
        if not path.exists():
            raise DataError(f"{directory} holds no {CHECKPOINT_FILE}: retrain the model")
        try:
            # weights_only: tensors and plain values; any other object is refused unbuilt.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(
                f"{path}: refused to load: not a checkpoint of tensors and plain values "
                f"({reason[:300]}); restore the model folder from the registry or retrain"
            ) from None
        network_config = MLPConfig.from_dict(checkpoint["config"])
        shape = (network_config.n_numeric, len(network_config.cardinalities))
        if shape != (len(features.numeric), len(features.categorical)):
            raise DataError(f"{path} does not match the model's features: retrain the model")
        network = TabularMLP(network_config)
        network.load_state_dict(checkpoint["state_dict"])
        target = checkpoint["target"]
        learner = cls(config, features, task, n_classes, device="cpu")
        learner.scorer = ScoringModule(
            network, target["mean"], target["std"], log_link=bool(target.get("log_link", False))
        ).eval()
        return learner

    def _fitted(self) -> ScoringModule:
        if self.scorer is None:
            raise RuntimeError("the torch model is not fitted: call fit or load first")
        return self.scorer

    def _target_scaling(self) -> tuple[float, float]:
        scorer = self._fitted()
        return float(scorer.target_mean), float(scorer.target_std)


def optimizer_step(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    step: int,
    total_steps: int,
    settings: TorchConfig,
) -> None:
    """One optimiser step on `loss` at the schedule's learning rate for `step`, with the
    gradients clipped as `settings` says (the torch family's and a distilled MLP's)."""
    rate = learning_rate_at(
        step, total_steps, settings.lr, settings.schedule, settings.warmup_fraction
    )
    for group in optimizer.param_groups:
        group["lr"] = rate
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip is not None:
        nn.utils.clip_grad_norm_(network.parameters(), settings.grad_clip)
    optimizer.step()


def training_settings(config: dict[str, Any]) -> TorchConfig:
    """The family's params as a typed config; a bad value names its key."""
    try:
        # The loss keys come from `train.objective`, not from the family's section.
        return TorchConfig.model_validate(
            {key: value for key, value in config.items() if key not in ("loss", "tweedie_power")}
        )
    except ValidationError as exc:
        raise ConfigError(f"train.torch: {describe_errors(exc)}") from None


@torch.no_grad()
def _score(scorer: ScoringModule, numeric: torch.Tensor, codes: torch.Tensor) -> np.ndarray:
    """Scoring-module outputs for every row as float64 numpy on CPU. Rows go to the
    module's device a batch at a time, so a large frame never sits on the GPU whole."""
    device = scorer.target_mean.device
    was_training = scorer.training
    scorer.eval()
    chunks = []
    try:
        for start in range(0, len(numeric), PREDICT_BATCH_ROWS):
            rows = slice(start, start + PREDICT_BATCH_ROWS)
            output = scorer(numeric[rows].to(device), codes[rows].to(device))
            chunks.append(output.cpu().numpy())
    finally:
        scorer.train(was_training)
    if not chunks:
        width = () if scorer.regression else (scorer.network.config.n_outputs,)
        return np.zeros((0, *width), dtype=np.float64)
    return np.concatenate(chunks).astype(np.float64)


@contextmanager
def _one_thread_on_cpu(device: str) -> Iterator[None]:
    """Train on one CPU thread, then give the caller back its thread count. Mini-batches
    are too small for intra-op threads to pay, and on a busy machine their OpenMP
    barriers spin: measured 3-4x slower on 2 cores with one other busy process."""
    if device != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _batch_bounds(n_rows: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each mini-batch. A last batch of one row joins the one before:
    batch norm cannot train on a single row."""
    bounds = [(start, min(start + batch_size, n_rows)) for start in range(0, n_rows, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n_rows)]
    return bounds


def _column_stats(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std over the values present, as float32. An empty or constant
    column gets mean 0 / std 1, so standardising never divides by zero."""
    present = np.isfinite(matrix)
    counts = present.sum(axis=0)
    filled = np.where(present, matrix, 0.0).astype(np.float64)
    mean = filled.sum(axis=0) / np.maximum(counts, 1)
    spread = np.where(present, matrix - mean, 0.0)
    std = np.sqrt((spread**2).sum(axis=0) / np.maximum(counts, 1))
    std = np.where(std > 1e-12, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def _target_stats(y: np.ndarray) -> tuple[float, float]:
    values = np.asarray(y, dtype=np.float64)
    std = float(values.std())
    return float(values.mean()), std if std > 1e-12 else 1.0
