"""`train.refit`: after early stopping on val, every family fits again on train + val for
the rounds or epochs it kept, so a retraining learns from its newest rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Schema, TrainConfig
from pipeline.models import fit_model, load_model, refit_model
from pipeline.schema import DatasetSpec

SPEC = DatasetSpec(
    target="y", task="regression", schema=Schema(categorical={"regime": {}, "colour": {}})
)
CONFIGS = {
    "xgboost": TrainConfig(xgboost={"n_estimators": 200, "early_stopping_rounds": 10}),
    "sklearn": TrainConfig(model="sklearn", sklearn={"n_estimators": 30}),
    "torch": TrainConfig(model="torch", device="cpu", torch={"max_epochs": 6, "patience": 2}),
}


def rows(n: int, regime: str, shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame(
        {
            "x": x,
            "regime": regime,
            "colour": rng.choice(["red", "blue"], size=n),
            "y": 3 * x + shift + rng.normal(scale=0.1, size=n),
        }
    )


@pytest.mark.parametrize("family", list(CONFIGS))
def test_refit_learns_from_val_rows_train_never_had(family: str, tmp_path) -> None:
    # Train holds the old regime only; val brings a new one, 10 higher.
    train, val = rows(400, "old", 0.0, seed=0), rows(200, "new", 10.0, seed=1)
    config = CONFIGS[family]
    early = fit_model(train, val, SPEC, config)
    assert early.features.categories["regime"] == ("old",)
    model = refit_model(early, train, val, SPEC, config)

    assert model.features.categories["regime"] == ("new", "old")
    assert model.report.refit_rows == 600
    # What early stopping chose stays on record: the step, its honest val loss, the params.
    assert (model.report.best_step, model.report.val_loss) == (
        early.report.best_step,
        early.report.val_loss,
    )
    assert model.params == early.params
    fresh = rows(300, "new", 10.0, seed=2)
    error = np.abs(model.predict(fresh) - fresh["y"]).mean()
    assert error < 0.5 * np.abs(early.predict(fresh) - fresh["y"]).mean()

    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.report.refit_rows == 600
    np.testing.assert_allclose(loaded.predict(fresh), model.predict(fresh), rtol=1e-6)


def test_xgboost_refits_for_the_rounds_early_stopping_kept() -> None:
    train, val = rows(400, "old", 0.0, seed=0), rows(200, "old", 0.0, seed=1)
    config = CONFIGS["xgboost"]
    early = fit_model(train, val, SPEC, config)
    model = refit_model(early, train, val, SPEC, config)
    assert model.learner.booster.num_boosted_rounds() == early.report.best_step + 1


def test_a_binary_refit_keeps_the_threshold_picked_on_val() -> None:
    spec = DatasetSpec(target="y", task="binary", schema=Schema(categorical={"y": {}}))
    train, val = rows(400, "old", 0.0, seed=0), rows(200, "old", 0.0, seed=1)
    train["y"], val["y"] = (train["x"] > 0.5).astype(int), (val["x"] > 0.5).astype(int)
    config = TrainConfig(xgboost={"n_estimators": 50})
    early = fit_model(train.drop(columns="regime"), val.drop(columns="regime"), spec, config)
    model = refit_model(
        early, train.drop(columns="regime"), val.drop(columns="regime"), spec, config
    )
    assert early.threshold is not None
    assert (model.threshold, model.threshold_metric, model.classes) == (
        early.threshold,
        early.threshold_metric,
        early.classes,
    )
