"""Objectives that fit the target, calibrated probabilities, and choices scored as the
final model is fitted: each family fits Poisson or a log1p target where it can, the
ONNX export applies the link or the inverse transform, calibration brings weighted
probabilities back to observed rates, and rolling-origin folds never read test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.calibration import Calibrator, choose_calibration, fit_calibrator, log_loss
from pipeline.config import Schema, TrainConfig, parse_params
from pipeline.errors import ConfigError
from pipeline.models import fit_model, load_model, refit_model
from pipeline.onnx_model import OnnxModel, export_onnx
from pipeline.schema import DatasetSpec
from pipeline.selection import choose_objective, objective_candidates, rolling_folds

COUNT_SPEC = DatasetSpec(target="y", task="regression", schema=Schema(categorical={"kind": {}}))
BINARY_SPEC = DatasetSpec(
    target="y", task="binary", schema=Schema(categorical={"kind": {}, "y": {}})
)
FAST = {
    "xgboost": {"xgboost": {"n_estimators": 300, "early_stopping_rounds": 20}},
    "sklearn": {"model": "sklearn", "sklearn": {"n_estimators": 30}},
    "linear": {"model": "sklearn", "sklearn": {"estimator": "linear", "alpha": 0.01}},
    "torch": {"model": "torch", "device": "cpu", "torch": {"max_epochs": 8, "patience": 3}},
}


def counts(n: int, seed: int) -> pd.DataFrame:
    """A count target whose log-rate is linear in x: what Poisson models exactly."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 2, size=n)
    kind = rng.choice(["a", "b"], size=n)
    rate = np.exp(1.0 + 1.2 * x + np.where(kind == "a", 0.5, 0.0))
    return pd.DataFrame({"x": x, "kind": kind, "y": rng.poisson(rate).astype(float)})


def rare_events(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    kind = rng.choice(["a", "b"], size=n)
    p = 1 / (1 + np.exp(-(-3.5 + 1.5 * x)))
    return pd.DataFrame({"x": x, "kind": kind, "y": np.where(rng.uniform(size=n) < p, "yes", "no")})


@pytest.mark.parametrize(
    ("family", "objective"),
    [
        ("xgboost", "poisson"),
        ("xgboost", "tweedie"),
        ("xgboost", "log1p"),
        ("sklearn", "poisson"),
        ("sklearn", "log1p"),
        ("linear", "poisson"),
        ("linear", "tweedie"),
        ("torch", "poisson"),
        ("torch", "log1p"),
    ],
)
def test_each_family_fits_its_objectives_and_onnx_scores_the_same(
    family: str, objective: str, tmp_path
) -> None:
    train, val, test = counts(1500, 0), counts(500, 1), counts(400, 2)
    config = TrainConfig.model_validate({**FAST[family], "objective": objective})
    model = refit_model(fit_model(train, val, COUNT_SPEC, config), train, val, COUNT_SPEC, config)
    assert model.objective == objective
    predicted = model.predict_raw(test)
    assert (predicted >= 0).all()  # a log link or expm1 never predicts a negative count
    error = np.sqrt(np.mean((predicted - test["y"]) ** 2))
    assert error < 0.8 * test["y"].std()

    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.objective == objective
    np.testing.assert_allclose(loaded.predict_raw(test), predicted, rtol=1e-6)
    onnx = OnnxModel.from_model(loaded, export_onnx(loaded))
    np.testing.assert_allclose(onnx.predict_raw(test), predicted, rtol=2e-3, atol=2e-3)


def test_poisson_beats_squared_error_on_a_count_target_out_of_range() -> None:
    # Test rows reach past train's x range: the log link extrapolates, trees do not.
    train, val = counts(2000, 0), counts(500, 1)
    config = TrainConfig.model_validate({**FAST["linear"], "objective": "squared_error"})
    squared = fit_model(train, val, COUNT_SPEC, config)
    poisson = fit_model(train, val, COUNT_SPEC, config.model_copy(update={"objective": "poisson"}))
    test = counts(400, 2)

    def rmse(model):
        return np.sqrt(np.mean((model.predict_raw(test) - test["y"]) ** 2))

    assert rmse(poisson) < 0.7 * rmse(squared)


def test_auto_offers_count_objectives_only_for_a_count_target() -> None:
    config = TrainConfig()
    assert objective_candidates(config, COUNT_SPEC, pd.Series([0, 3, 7])) == [
        "squared_error",
        "poisson",
        "log1p",
    ]
    assert objective_candidates(config, COUNT_SPEC, pd.Series([0.5, 3.0])) == ["squared_error"]
    assert objective_candidates(config, COUNT_SPEC, pd.Series([-1, 3])) == ["squared_error"]
    assert objective_candidates(config, BINARY_SPEC, pd.Series(["yes", "no"])) == []
    torch = TrainConfig(model="torch")
    assert "tweedie" not in objective_candidates(
        torch.model_copy(update={"objective": "auto"}), COUNT_SPEC, pd.Series([1, 2])
    )


def test_auto_keeps_the_objective_with_the_lowest_fold_loss() -> None:
    train, val = counts(1500, 0), counts(600, 1)
    config = TrainConfig.model_validate(FAST["linear"])
    choice = choose_objective(train, val, COUNT_SPEC, config, rolling_folds(train, val, 3))
    losses = choice.figures["losses"]
    assert choice.objective == min(losses, key=losses.get) == "poisson"
    assert choice.figures["scored_on"] == "rolling-origin folds"
    assert len(choice.figures["per_fold"]["poisson"]) == 3


def test_rolling_folds_cover_the_val_period_and_end_where_val_ends() -> None:
    train = pd.DataFrame({"t": np.arange(700)})
    val = pd.DataFrame({"t": np.arange(700, 1000)})
    folds = rolling_folds(train, val, 3)
    assert [(f.score["t"].min(), f.score["t"].max()) for f in folds] == [
        (700, 799),
        (800, 899),
        (900, 999),
    ]
    for fold in folds:
        # Early stopping watches the block just before, the fit ends where it starts.
        assert fold.stop["t"].max() + 1 == fold.score["t"].min()
        assert len(fold.stop) == 100 and fold.fit["t"].max() + 1 == fold.stop["t"].min()
    assert rolling_folds(train, val.head(120), 3) == []  # 40-row blocks say nothing
    assert rolling_folds(train, val, 0) == []


def test_an_objective_the_family_cannot_fit_is_refused_at_load() -> None:
    for section, message in (
        ({"model": "torch", "objective": "tweedie"}, "tweedie is not available for torch"),
        ({"model": "sklearn", "objective": "tweedie"}, r"not available for sklearn \(forest\)"),
        ({"selection_folds": 1}, "selection_folds must be 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_params({"data": {"source": "x.csv", "target": "y"}, "train": section})


def test_cv_folds_on_time_ordered_data_is_refused() -> None:
    raw = {"data": {"source": "x.csv", "target": "y", "time_column": "t"}, "tune": {"cv_folds": 3}}
    with pytest.raises(ConfigError, match="rolling-origin folds"):
        parse_params(raw)


def test_a_negative_target_with_a_log_objective_names_the_key() -> None:
    train, val = counts(300, 0), counts(100, 1)
    train.loc[0, "y"] = -2.0
    config = TrainConfig.model_validate({**FAST["xgboost"], "objective": "poisson"})
    with pytest.raises(ConfigError, match=r"train.objective: poisson needs a target >= 0"):
        fit_model(train, val, COUNT_SPEC, config)


def test_calibration_maps_weighted_probabilities_back_below_the_prior() -> None:
    train, val, test = rare_events(4000, 0), rare_events(2000, 1), rare_events(2000, 2)
    config = TrainConfig.model_validate({**FAST["xgboost"], "class_weight": "balanced"})
    raw_config = config.model_copy(update={"calibration": "none"})
    calibrated = fit_model(train, val, BINARY_SPEC, config)
    uncalibrated = fit_model(train, val, BINARY_SPEC, raw_config)
    codes = (test["y"] == "yes").to_numpy().astype(int)
    prior = codes.mean()
    prior_loss = -np.mean(codes * np.log(prior) + (1 - codes) * np.log(1 - prior))
    raw_loss = log_loss(codes, uncalibrated.predict_raw(test))
    calibrated_loss = log_loss(codes, calibrated.predict_raw(test))
    assert calibrated.calibrator is not None
    assert calibrated.selection["calibration"]["method"] in ("isotonic", "sigmoid")
    assert calibrated_loss < prior_loss < raw_loss  # weighting alone is worse than the prior
    assert 0 < calibrated.threshold < 1


def assert_close_but_for_steps(onnx: np.ndarray, native: np.ndarray) -> None:
    """ONNX scores in float32: a probability on the edge of an isotonic step (or on a
    steep sigmoid) can land on the other side, so a few rows may differ by that step;
    the rest agree to float32's rounding."""
    difference = np.abs(onnx - native).max(axis=1)
    assert np.mean(difference < 2e-4) >= 0.98
    assert difference.max() < 0.05


@pytest.mark.parametrize("family", ["xgboost", "sklearn", "torch"])
@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_the_onnx_export_applies_the_calibrator(family: str, method: str) -> None:
    train, val, test = rare_events(1500, 0), rare_events(800, 1), rare_events(300, 2)
    config = TrainConfig.model_validate({**FAST[family], "calibration": method})
    model = fit_model(train, val, BINARY_SPEC, config)
    assert model.calibrator is not None and model.calibrator.method == method
    onnx = OnnxModel.from_model(model, export_onnx(model))
    assert_close_but_for_steps(onnx.predict_raw(test), model.predict_raw(test))
    assert (onnx.predict(test) == model.predict(test)).mean() > 0.99


def test_multiclass_calibration_renormalises_and_exports() -> None:
    rng = np.random.default_rng(0)

    def frame(n: int) -> pd.DataFrame:
        x = rng.normal(size=n)
        y = np.where(x < -0.5, "low", np.where(x > 0.8, "high", "mid"))
        flip = rng.uniform(size=n) < 0.2
        y = np.where(flip, rng.choice(["low", "mid", "high"], size=n), y)
        return pd.DataFrame({"x": x, "kind": "a", "y": y})

    spec = DatasetSpec(
        target="y", task="multiclass", schema=Schema(categorical={"kind": {}, "y": {}})
    )
    config = TrainConfig.model_validate({**FAST["xgboost"], "calibration": "isotonic"})
    model = fit_model(frame(1500), frame(800), spec, config)
    test = frame(300)
    probabilities = model.predict_raw(test)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    onnx = OnnxModel.from_model(model, export_onnx(model))
    assert_close_but_for_steps(onnx.predict_raw(test), probabilities)


def test_auto_calibration_keeps_none_when_probabilities_are_already_right() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, size=4000)
    y = (rng.uniform(size=4000) < p).astype(int)
    calibrator, figures = choose_calibration(y, np.column_stack([1 - p, p]), "auto")
    losses = figures["cross_fitted_log_loss"]
    assert figures["method"] == min(losses, key=losses.get)
    if figures["method"] == "none":
        assert calibrator is None
    # Skewed probabilities (a weighted model's) are always corrected.
    skewed = np.clip(p * 3, 0, 0.999)
    calibrator, figures = choose_calibration(y, np.column_stack([1 - skewed, skewed]), "auto")
    assert figures["method"] in ("isotonic", "sigmoid") and calibrator is not None


def test_a_calibrator_round_trips_and_interpolates_between_knots() -> None:
    p = np.linspace(0.01, 0.99, 200)
    y = (p > 0.5).astype(int)
    calibrator = fit_calibrator(y, np.column_stack([1 - p, p]), "isotonic")
    restored = Calibrator.from_dict(calibrator.to_dict())
    assert restored == calibrator
    knots = calibrator.maps[0]
    middle = (knots["x"][0] + knots["x"][1]) / 2
    expected = np.interp(middle, knots["x"], knots["y"])
    assert restored.apply(np.array([[1 - middle, middle]]))[0, 1] == pytest.approx(expected)
