"""How train and tune score a choice (the objective, a trial's params) before test.

The final model is early-stopped on val, refitted on train + val (`train.refit`) and
judged on test, the rows after val. On time-ordered data a choice is scored the same
way, several times over: `rolling_folds` cuts the val period into `k` blocks; fold j
early-stops on the block before block j (the same size, reaching back into train for
the first), refits on every row before block j, and is scored on block j. So a fold
sees what the final model sees, one block earlier, and a choice that only pays off
when trees extrapolate in time (calendar columns after a refit) shows it here. The
loss is the mean over folds. Test rows are never read.

Without a time order (or with `train.selection_folds: 0`) a choice is scored on val
by the early-stopped model, which is then the model to keep: nothing is fitted twice.

On large tables the fits that score a choice use at most `train.selection_rows` rows:
each fold's newest, or a seeded sample of train (then the chosen model is fitted once
more on every row).

Losses are in target units: RMSE for regression (after log1p's expm1), log loss of
the calibrated probabilities for classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.config import TrainConfig
from pipeline.schema import DatasetSpec

if TYPE_CHECKING:
    from pipeline.models import TabularModel

# A fold's scoring block needs this many rows to say anything; fewer: score on val.
MIN_BLOCK_ROWS = 50
# Called after each fold with (fold index, its loss, the mean so far); may raise to stop
# the scoring (a pruner).
FoldCallback = Callable[[int, float, float], None]


@dataclass(frozen=True)
class Fold:
    fit: pd.DataFrame  # early stopping trains on these rows...
    stop: pd.DataFrame  # ...watching these; the refit then trains on both
    score: pd.DataFrame  # the later rows the fold is scored on


@dataclass
class Score:
    """A choice's loss; `model` is the early-stopped model when scored on val alone."""

    loss: float
    per_fold: list[float] = field(default_factory=list)
    model: TabularModel | None = None


def rolling_folds(
    train: pd.DataFrame, val: pd.DataFrame, k: int, max_rows: int | None = None
) -> list[Fold]:
    """`k` rolling-origin folds over the val period (rows in time order); none when
    `k` is 0 or val is too small for blocks of MIN_BLOCK_ROWS. Each fold fits at most
    `max_rows` rows, the newest before its blocks."""
    block = len(val) // k if k else 0
    if block < MIN_BLOCK_ROWS or len(train) < 2 * block:
        return []
    rows = pd.concat([train, val], ignore_index=True)
    folds = []
    for j in range(k):
        score_end = len(rows) - (k - 1 - j) * block
        score_start = score_end - block
        stop_start = score_start - block
        fit_start = 0 if max_rows is None else max(0, stop_start - max_rows)
        folds.append(
            Fold(
                rows.iloc[fit_start:stop_start],
                rows.iloc[stop_start:score_start],
                rows.iloc[score_start:score_end],
            )
        )
    return folds


def capped_train(
    train: pd.DataFrame, max_rows: int | None, time_ordered: bool, seed: int
) -> pd.DataFrame:
    """The train rows a choice is scored on: all, or `max_rows` of them (the newest on
    time-ordered data, a seeded sample otherwise, kept in their order)."""
    if max_rows is None or len(train) <= max_rows:
        return train
    if time_ordered:
        return train.iloc[-max_rows:]
    return train.sample(n=max_rows, random_state=seed).sort_index()


def scheme(folds: list[Fold]) -> dict[str, Any]:
    """What a loss was measured on, recorded beside it."""
    if folds:
        return {"scored_on": "rolling-origin folds", "folds": len(folds)}
    return {"scored_on": "val", "folds": 0}


def loss_on(model: TabularModel, rows: pd.DataFrame, target: str) -> float:
    """RMSE in target units, or log loss of the model's (calibrated) probabilities; a
    class the model never saw counts as predicted with probability 1e-15."""
    from pipeline.features import category_text
    from pipeline.models import label_texts
    from pipeline.models.base import validation_loss

    raw = model.predict_raw(rows)
    if model.task == "regression":
        return validation_loss("regression", pd.to_numeric(rows[target]).to_numpy(), raw)

    codes = pd.Index(label_texts(model.classes)).get_indexer(category_text(rows[target]))
    picked = np.where(codes >= 0, raw[np.arange(len(codes)), np.maximum(codes, 0)], 1e-15)
    return float(-np.mean(np.log(np.clip(picked, 1e-15, 1.0))))


def score_choice(
    train: pd.DataFrame,
    val: pd.DataFrame,
    spec: DatasetSpec,
    config: TrainConfig,
    folds: list[Fold],
    family_params: dict[str, Any] | None = None,
    on_fold: FoldCallback | None = None,
) -> Score:
    """The loss of fitting `config` (with `family_params`) as the final model is fitted."""
    from pipeline.models import fit_model, refit_model

    if not folds:
        model = fit_model(train, val, spec, config, family_params)
        return Score(loss_on(model, val, spec.target), model=model)
    losses = []
    for index, fold in enumerate(folds):
        model = fit_model(fold.fit, fold.stop, spec, config, family_params)
        if config.refit:
            model = refit_model(model, fold.fit, fold.stop, spec, config)
        losses.append(loss_on(model, fold.score, spec.target))
        if on_fold is not None:
            on_fold(index, losses[-1], float(np.mean(losses)))
    return Score(float(np.mean(losses)), per_fold=losses)


def objective_candidates(config: TrainConfig, spec: DatasetSpec, target: pd.Series) -> list[str]:
    """The objectives `train.objective` allows here: the one set, or with `auto`, for a
    count target (whole numbers >= 0) squared error, Poisson and log1p."""
    if spec.task != "regression":
        return []
    if config.objective != "auto":
        return [config.objective]
    values = pd.to_numeric(target, errors="coerce").to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    counts = len(values) > 0 and values.min() >= 0 and np.all(values == np.round(values))
    if not counts:
        return ["squared_error"]
    return [name for name in ("squared_error", "poisson", "log1p") if name in config.objectives()]


@dataclass
class Choice:
    objective: str | None
    score: Score
    figures: dict[str, Any]


def choose_objective(
    train: pd.DataFrame,
    val: pd.DataFrame,
    spec: DatasetSpec,
    config: TrainConfig,
    folds: list[Fold],
) -> Choice:
    """Score each candidate objective; keep the lowest loss (ties: the first listed)."""
    candidates = objective_candidates(
        config, spec, pd.concat([train[spec.target], val[spec.target]])
    )
    if not candidates:  # classification: one choice, scored for tune's comparison
        score = score_choice(train, val, spec, config, folds)
        figures = {**scheme(folds), "loss": round(score.loss, 6)}
        if folds:
            figures["per_fold"] = [round(v, 6) for v in score.per_fold]
        return Choice(None, score, figures)
    scores = {
        name: score_choice(train, val, spec, config.model_copy(update={"objective": name}), folds)
        for name in candidates
    }
    chosen = min(candidates, key=lambda name: scores[name].loss)
    figures: dict[str, Any] = {
        **scheme(folds),
        "requested": config.objective,
        "chosen": chosen,
        "loss": round(scores[chosen].loss, 6),
        "losses": {name: round(score.loss, 6) for name, score in scores.items()},
    }
    if folds:
        figures["per_fold"] = {
            name: [round(v, 6) for v in score.per_fold] for name, score in scores.items()
        }
    return Choice(chosen, scores[chosen], figures)
