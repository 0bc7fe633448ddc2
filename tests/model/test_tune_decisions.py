"""tune's decisions, on the function itself with synthetic rows: trial 0 is train's
fit (never fitted again), tuned params replace train's only when they win by the margin
on every fold, and a time cap that cuts the study says so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Schema, TrainConfig, TuneConfig
from pipeline.models import fit_model
from pipeline.schema import DatasetSpec
from pipeline.selection import rolling_folds, score_choice
from pipeline.stages.tune import Untuned, tune

SPEC = DatasetSpec(target="y", task="regression", schema=Schema(categorical={"kind": {}}))
SPACE = {"xgboost": {"min_child_weight": {"low": 1, "high": 100, "log": True}}}


def rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 3, size=n)
    kind = rng.choice(["a", "b"], size=n)
    return pd.DataFrame(
        {"x": x, "kind": kind, "y": np.sin(2 * x) + (kind == "a") + rng.normal(0, 0.2, n)}
    )


def train_config(min_child_weight: float) -> TrainConfig:
    return TrainConfig(
        objective="squared_error",
        xgboost={
            "n_estimators": 200,
            "early_stopping_rounds": 10,
            "learning_rate": 0.1,
            "min_child_weight": min_child_weight,
        },
    )


def untuned(config: TrainConfig, train: pd.DataFrame, val: pd.DataFrame) -> Untuned:
    folds = rolling_folds(train, val, config.selection_folds)
    scored = score_choice(train, val, SPEC, config, folds)
    model = fit_model(train, val, SPEC, config)
    return Untuned(model, scored.loss, scored.per_fold)


def run(config: TrainConfig, margin: float, trials: int = 6, **options):
    train, val = rows(900, 0), rows(450, 1)
    tuning = TuneConfig(
        n_trials=trials, storage=None, search_space=SPACE, min_improvement=margin, **options
    )
    baseline = untuned(config, train, val)
    result = tune(train, val, SPEC, config, tuning, "digest", untuned=baseline, time_ordered=True)
    return result, baseline


def test_trial_zero_is_trains_fit_and_a_good_trial_replaces_poor_params() -> None:
    # Leaves of at least 100 rows cannot follow the sine; the search finds better.
    result, baseline = run(train_config(100), margin=0.01)
    first = result.trials.iloc[0]
    assert first["value"] == pytest.approx(baseline.loss)
    assert first["user_attrs_from"] == "train" and first["duration"] == pd.Timedelta(0)
    assert result.kept == "tuned" and not result.is_train_model
    assert result.best_value < baseline.loss * 0.99
    assert result.best_params["min_child_weight"] < 100


def test_trains_model_is_kept_unless_the_margin_is_cleared() -> None:
    result, baseline = run(train_config(3), margin=0.5)
    assert result.kept == "train" and result.is_train_model
    assert result.model is baseline.model  # nothing fitted again
    # Every trial fell short on some fold, so it was pruned there: train's params lead.
    assert result.reason.startswith("train's params scored best")


def test_a_trial_short_of_the_margin_on_a_fold_is_pruned_there_and_never_kept() -> None:
    result, baseline = run(train_config(3), margin=0.01, trials=8)
    lost = result.trials[result.trials.get("user_attrs_lost_fold", pd.Series()).notna()]
    assert len(lost) > 0 and set(lost["state"]) == {"PRUNED"}
    if result.kept == "tuned":
        kept = result.trials[result.trials["number"] == result.trials["value"].idxmin()]
        per_fold = kept["user_attrs_per_fold"].iloc[0]
        assert all(a < b * 0.99 for a, b in zip(per_fold, baseline.per_fold, strict=True))


def test_a_time_cap_that_cuts_the_study_is_reported() -> None:
    result, _ = run(train_config(3), margin=0.01, trials=50, timeout=0.5)
    assert result.budget["cut_by_timeout"] == 0.5
    assert result.budget["finished"] < 50
    uncut, _ = run(train_config(3), margin=0.01, trials=3)
    assert "cut_by_timeout" not in uncut.budget and uncut.budget["finished"] == 3
