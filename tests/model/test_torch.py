"""The torch family: the LR schedule as a pure function, and the MLP's behaviour on small
synthetic frames through the same entry points train and serve use."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import (
    CategoricalColumn,
    NumericColumn,
    Schema,
    TorchConfig,
    TrainConfig,
)
from pipeline.errors import ConfigError
from pipeline.models import TabularModel, fit_model, load_model, training_data
from pipeline.models.base import validation_loss
from pipeline.models.torch_model import (
    CHECKPOINT_FILE,
    MLPConfig,
    ScoringModule,
    TorchLearner,
    learning_rate_at,
)
from pipeline.schema import DatasetSpec

SCHEDULES = ("warmup_cosine", "one_cycle", "constant")
SMALL = {"hidden_sizes": [32, 16], "batch_size": 64, "max_epochs": 15}


# --- the learning-rate schedule ---------------------------------------------------------


def rates(schedule: str, total: int = 200, base: float = 0.01, warmup: float = 0.1) -> list[float]:
    return [learning_rate_at(step, total, base, schedule, warmup) for step in range(total)]


def test_warmup_cosine_rises_to_base_then_decays_near_zero() -> None:
    curve = rates("warmup_cosine", total=200, warmup=0.1)
    peak = int(np.argmax(curve))
    assert peak == 20
    assert curve[0] < 0.1 * 0.01
    assert curve[peak] == pytest.approx(0.01)
    assert curve[-1] < 1e-5


def test_warmup_cosine_without_warmup_starts_at_base() -> None:
    assert learning_rate_at(0, 100, 0.01, "warmup_cosine", 0.0) == pytest.approx(0.01)


def test_one_cycle_starts_low_peaks_at_base_near_30_percent_and_anneals() -> None:
    curve = rates("one_cycle", total=100, warmup=0.05)
    assert curve[0] == pytest.approx(0.01 / 25)
    assert int(np.argmax(curve)) == 30
    assert max(curve) == pytest.approx(0.01)
    assert curve[-1] == pytest.approx(0.01 / 1e4)


def test_constant_is_base_everywhere() -> None:
    assert set(rates("constant")) == {0.01}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("total", [1, 2, 7, 500])
def test_schedule_rises_to_its_peak_then_never_rises(schedule: str, total: int) -> None:
    curve = np.array(rates(schedule, total=total, warmup=0.2))
    peak = int(np.argmax(curve))
    assert np.all(np.diff(curve[: peak + 1]) >= 0)
    assert np.all(np.diff(curve[peak:]) <= 1e-15)
    assert curve.max() == pytest.approx(0.01)


@given(
    schedule=st.sampled_from(SCHEDULES),
    total=st.integers(1, 10_000),
    fraction=st.floats(0, 0.99),
    data=st.data(),
)
def test_schedule_stays_within_zero_and_base(
    schedule: str, total: int, fraction: float, data: st.DataObject
) -> None:
    step = data.draw(st.integers(-5, total + 5))
    lr = learning_rate_at(step, total, 0.003, schedule, fraction)
    assert 0 < lr <= 0.003 * (1 + 1e-12)


@pytest.mark.parametrize(
    ("total", "schedule", "message"),
    [(0, "constant", "total_steps"), (10, "step_decay", "unknown schedule")],
)
def test_schedule_refuses_bad_arguments(total: int, schedule: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        learning_rate_at(0, total, 0.01, schedule, 0.1)


# --- synthetic data -----------------------------------------------------------------------


def regression_frame(rows: int, seed: int) -> pd.DataFrame:
    """y depends on two numerics and a category, on the scale of bike counts."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(0, 1, rows), rng.normal(0, 1, rows)
    colour = rng.choice(["red", "green", "blue"], rows)
    shift = pd.Series(colour).map({"red": 0.0, "green": 150.0, "blue": -100.0}).to_numpy()
    y = 400 + 300 * x1 + 60 * x2 + shift + rng.normal(0, 10, rows)
    return pd.DataFrame({"x1": x1, "x2": x2, "colour": colour, "y": y})


def class_frame(rows: int, seed: int, task: str = "binary") -> pd.DataFrame:
    """The class follows x1 and the category; binary is imbalanced (about 3 in 10 yes)."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0, 1, rows)
    colour = rng.choice(["red", "green", "blue"], rows)
    score = x1 + (colour == "red") * 1.5 + rng.normal(0, 0.3, rows)
    if task == "binary":
        label = np.where(score > 1.2, "yes", "no")
    else:
        label = np.select([score < 0, score < 1.2], ["low", "mid"], "high")
    return pd.DataFrame({"x1": x1, "colour": colour, "label": label})


REGRESSION_SPEC = DatasetSpec(
    target="y",
    task="regression",
    schema=Schema(
        numeric={"x1": NumericColumn(), "x2": NumericColumn(), "y": NumericColumn()},
        categorical={"colour": CategoricalColumn()},
    ),
)


def class_spec(task: str = "binary") -> DatasetSpec:
    return DatasetSpec(
        target="label",
        task=task,
        schema=Schema(
            numeric={"x1": NumericColumn()},
            categorical={"colour": CategoricalColumn(), "label": CategoricalColumn()},
        ),
    )


def torch_config(seed: int = 0, **overrides: object) -> TrainConfig:
    return TrainConfig(
        model="torch", device="cpu", seed=seed, torch=TorchConfig(**{**SMALL, **overrides})
    )


@pytest.fixture(scope="module")
def regression_model() -> TabularModel:
    train, val = regression_frame(800, 1), regression_frame(200, 2)
    return fit_model(train, val, REGRESSION_SPEC, torch_config(max_epochs=40))


# --- behaviour ------------------------------------------------------------------------------


def test_regression_learns_the_signal_far_better_than_the_mean(
    regression_model: TabularModel,
) -> None:
    test = regression_frame(300, 3)
    predicted = regression_model.predict(test)
    rmse = np.sqrt(np.mean((test["y"] - predicted) ** 2))
    mean_rmse = np.sqrt(np.mean((test["y"] - test["y"].mean()) ** 2))
    assert predicted.shape == (300,)
    assert rmse < 0.25 * mean_rmse
    assert regression_model.report.device == "cpu"


def test_report_is_the_best_epoch_and_its_weights_are_the_ones_kept(
    regression_model: TabularModel,
) -> None:
    report = regression_model.report
    assert report.best_step == int(np.argmin(report.history))
    assert report.val_loss == min(report.history)
    val = regression_frame(200, 2)
    raw = regression_model.predict_raw(val)
    assert validation_loss("regression", val["y"].to_numpy(), raw) == pytest.approx(
        report.val_loss, rel=1e-5
    )


def test_binary_with_class_weights_gives_probabilities_that_rank_the_classes() -> None:
    train, val, test = class_frame(600, 1), class_frame(200, 2), class_frame(300, 3)
    config = torch_config().model_copy(update={"class_weight": "balanced"})
    data, classes = training_data(train, val, class_spec(), config)
    assert data.class_weights is not None
    model = fit_model(train, val, class_spec(), config)
    probabilities = model.predict_proba(test)
    assert classes == ["no", "yes"]
    assert probabilities.shape == (300, 2)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    positive = (test["label"] == "yes").to_numpy()
    assert probabilities[positive, 1].mean() > probabilities[~positive, 1].mean() + 0.3
    assert set(model.predict(test)) <= {"no", "yes"}
    assert model.threshold is not None


@pytest.mark.parametrize("encoding", ["embedding", "onehot"])
def test_both_category_encodings_learn_a_multiclass_target(encoding: str) -> None:
    train, val, test = (class_frame(600, seed, "multiclass") for seed in (1, 2, 3))
    config = torch_config(categorical_encoding=encoding, max_epochs=25)
    model = fit_model(train, val, class_spec("multiclass"), config)
    probabilities = model.predict_proba(test)
    assert probabilities.shape == (600, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert (model.predict(test) == test["label"]).mean() > 0.75


def test_gaps_and_unseen_categories_at_predict_time_give_finite_predictions(
    regression_model: TabularModel,
) -> None:
    rows = pd.DataFrame(
        {
            "x1": [np.nan, 0.5, None, 0.2],
            "x2": [0.0, np.nan, None, 1.0],
            "colour": ["purple", None, np.nan, "red"],
        }
    )
    predicted = regression_model.predict(rows)
    assert predicted.shape == (4,)
    assert np.all(np.isfinite(predicted))


def test_train_rows_with_gaps_are_imputed_with_the_train_mean() -> None:
    train = regression_frame(300, 1)
    train.loc[::4, "x1"] = np.nan
    train.loc[::7, "colour"] = None
    model = fit_model(train, regression_frame(100, 2), REGRESSION_SPEC, torch_config())
    network = model.learner.export_module().network
    assert network.numeric_mean[0].item() == pytest.approx(train["x1"].mean(), rel=1e-5)
    assert np.all(np.isfinite(model.predict(train)))


@pytest.mark.parametrize("kept", [["x1", "x2"], ["colour"]], ids=["numeric-only", "category-only"])
def test_frames_with_only_numerics_or_only_categoricals_train(kept: list[str]) -> None:
    train, val = regression_frame(200, 1), regression_frame(50, 2)
    columns = [*kept, "y"]
    model = fit_model(train[columns], val[columns], REGRESSION_SPEC, torch_config(max_epochs=3))
    assert np.all(np.isfinite(model.predict(val[columns])))


def test_the_same_seed_gives_identical_predictions_and_another_seed_does_not() -> None:
    train, val = regression_frame(300, 1), regression_frame(100, 2)
    first, second, other = (
        fit_model(train, val, REGRESSION_SPEC, torch_config(seed=seed, max_epochs=5))
        for seed in (7, 7, 8)
    )
    np.testing.assert_array_equal(first.predict(val), second.predict(val))
    assert first.report.history == second.report.history
    assert not np.array_equal(first.predict(val), other.predict(val))


def test_save_and_load_round_trip_predicts_identically(
    regression_model: TabularModel, tmp_path: Path
) -> None:
    regression_model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    test = regression_frame(100, 3)
    np.testing.assert_array_equal(loaded.predict(test), regression_model.predict(test))
    assert loaded.report == regression_model.report


def test_checkpoint_holds_its_own_config_and_loads_with_weights_only(
    regression_model: TabularModel, tmp_path: Path
) -> None:
    regression_model.learner.save(tmp_path)
    checkpoint = torch.load(tmp_path / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"config", "state_dict", "target"}
    config = MLPConfig.from_dict(checkpoint["config"])
    assert (config.task, config.n_outputs, config.n_numeric) == ("regression", 1, 2)
    assert config.cardinalities == (4,)
    assert config.hidden_sizes == (32, 16)
    assert "numeric_mean" in checkpoint["state_dict"]
    assert checkpoint["target"]["std"] > 1
    # The learner's config dict is not needed to rebuild the network.
    learner = TorchLearner.load(tmp_path, {}, regression_model.features, "regression", n_classes=0)
    prepared = regression_model.features.prepare(regression_frame(20, 3))
    np.testing.assert_array_equal(
        learner.predict_raw(prepared), regression_model.learner.predict_raw(prepared)
    )


def test_export_module_outputs_what_predict_raw_returns() -> None:
    train, val = class_frame(300, 1), class_frame(100, 2)
    model = fit_model(train, val, class_spec(), torch_config(max_epochs=3))
    module = model.learner.export_module()
    assert isinstance(module, ScoringModule)
    assert not module.training
    prepared = model.features.prepare(val)
    with torch.no_grad():
        output = module(
            torch.from_numpy(model.features.numeric_matrix(prepared)),
            torch.from_numpy(model.features.category_codes(prepared)),
        )
    assert output.shape == (100, 2)
    np.testing.assert_allclose(output.numpy(), model.learner.predict_raw(prepared), rtol=1e-6)


def test_predicting_no_rows_gives_an_empty_result(regression_model: TabularModel) -> None:
    assert regression_model.predict(regression_frame(5, 3).iloc[:0]).shape == (0,)


# --- training control -----------------------------------------------------------------------


def test_on_step_is_called_once_per_epoch_with_the_val_loss() -> None:
    train, val = regression_frame(200, 1), regression_frame(50, 2)
    calls: list[tuple[int, float]] = []
    model = fit_model(
        train,
        val,
        REGRESSION_SPEC,
        torch_config(max_epochs=6, patience=100),
        on_step=lambda step, loss: calls.append((step, loss)),
    )
    assert calls == list(enumerate(model.report.history))
    assert [step for step, _ in calls] == list(range(6))


def test_an_exception_raised_by_on_step_stops_training_and_propagates() -> None:
    class Pruned(Exception):
        pass

    def prune_at_third_epoch(step: int, loss: float) -> None:
        calls.append(step)
        if step == 2:
            raise Pruned

    calls: list[int] = []
    threads = torch.get_num_threads()
    train, val = regression_frame(200, 1), regression_frame(50, 2)
    with pytest.raises(Pruned):
        fit_model(train, val, REGRESSION_SPEC, torch_config(), on_step=prune_at_third_epoch)
    assert calls == [0, 1, 2]
    # Training runs on one thread; the caller gets its own thread count back.
    assert torch.get_num_threads() == threads


def test_early_stopping_stops_before_max_epochs_when_val_stops_improving() -> None:
    rng = np.random.default_rng(0)
    train, val = regression_frame(200, 1), regression_frame(50, 2)
    # Noise the features cannot explain: val loss stops improving within a few epochs.
    train["y"], val["y"] = rng.normal(0, 1, 200), rng.normal(0, 1, 50)
    model = fit_model(
        train, val, REGRESSION_SPEC, torch_config(max_epochs=200, patience=2, schedule="constant")
    )
    history = model.report.history
    assert len(history) < 200
    assert len(history) == model.report.best_step + 3


def test_a_single_row_last_batch_does_not_break_batch_norm() -> None:
    train, val = regression_frame(65, 1), regression_frame(20, 2)
    model = fit_model(train, val, REGRESSION_SPEC, torch_config(batch_size=32, max_epochs=2))
    assert len(model.report.history) == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hidden_sizes": [0]}, "hidden_sizes"),
        ({"schedule": "step"}, "schedule"),
        ({"layers": 3}, "layers: unknown key"),
    ],
)
def test_bad_torch_params_fail_with_the_key_name(params: dict, message: str) -> None:
    data, _ = training_data(
        regression_frame(20, 1), regression_frame(10, 2), REGRESSION_SPEC, torch_config()
    )
    with pytest.raises(ConfigError, match=f"train.torch: .*{message}"):
        TorchLearner(params, data.features, "regression", 0).fit(data)


def test_batch_norm_needs_batches_of_two_rows() -> None:
    config = torch_config(batch_size=1)
    data, _ = training_data(
        regression_frame(20, 1), regression_frame(10, 2), REGRESSION_SPEC, config
    )
    learner = TorchLearner(config.torch.model_dump(), data.features, "regression", 0)
    with pytest.raises(ConfigError, match="batch_size"):
        learner.fit(data)


def test_predicting_before_fit_is_an_error() -> None:
    data, _ = training_data(
        regression_frame(20, 1), regression_frame(10, 2), REGRESSION_SPEC, torch_config()
    )
    with pytest.raises(RuntimeError, match="not fitted"):
        TorchLearner({}, data.features, "regression", 0).predict_raw(data.x_val)


def test_default_config_learns_the_bike_fixture_in_seconds() -> None:
    frame = pd.read_csv(Path(__file__).parents[1] / "fixtures" / "bike_sharing_2000.csv")
    numeric = ["hr", "temp", "atemp", "hum", "windspeed", "cnt"]
    categorical = ["season", "yr", "mnth", "holiday", "weekday", "workingday", "weathersit"]
    spec = DatasetSpec(
        target="cnt",
        task="regression",
        schema=Schema(
            numeric={column: NumericColumn() for column in numeric},
            categorical={column: CategoricalColumn() for column in categorical},
            id=["instant"],
            drop=["casual", "registered"],
        ),
        time_column="dteday",
    )
    train, val = frame.iloc[:1400], frame.iloc[1400:]
    model = fit_model(train, val, spec, TrainConfig(model="torch", device="cpu"))
    mean_rmse = math.sqrt(((val["cnt"] - train["cnt"].mean()) ** 2).mean())
    assert model.report.val_loss < 0.8 * mean_rmse
