"""Model behaviour on the real bike data: invariance, direction, minimum quality.

The model is the default family (xgboost) with train's params, fitted as the train
stage fits it (early stopping on val, then the refit on train + val) on the split the
data stages make of the whole built-in data set: `data.until` is lifted, so the quality
bars hold for a fixed test period whatever params.yaml holds out for simulations.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.config import TrainConfig
from pipeline.models import TabularModel, fit_model, load_model, refit_model
from pipeline.schema import DatasetSpec
from pipeline.scoring import score
from pipeline.stages.evaluate import baseline
from tests.conftest import REPO, Project


class Fitted:
    def __init__(self, project: Project) -> None:
        self.spec = DatasetSpec.read(project.root / "data/raw/schema.yaml")
        split = project.root / "data/split"
        self.train, self.val, self.test = (
            pd.read_parquet(split / f"{part}.parquet") for part in ("train", "val", "test")
        )
        self.model: TabularModel = self.fit(TrainConfig())

    def fit(self, config: TrainConfig) -> TabularModel:
        model = fit_model(self.train, self.val, self.spec, config)
        assert config.refit
        return refit_model(model, self.train, self.val, self.spec, config)


@pytest.fixture(scope="module")
def bike(tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    root = tmp_path_factory.mktemp("behaviour")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    project = Project(root)
    params = project.params()
    params["data"]["until"] = None
    project.write_params(params)
    project.run_data_stages()
    return Fitted(project)


def test_predictions_do_not_depend_on_row_order_or_batch(bike: Fitted) -> None:
    rows = bike.test.head(500)
    order = np.random.default_rng(0).permutation(len(rows))
    together = bike.model.predict(rows)
    shuffled = bike.model.predict(rows.iloc[order])
    np.testing.assert_allclose(shuffled, together[order], rtol=1e-6)
    one_by_one = np.concatenate([bike.model.predict(rows.iloc[[i]]) for i in range(20)])
    np.testing.assert_allclose(one_by_one, together[:20], rtol=1e-6)


def test_columns_beyond_the_features_are_ignored(bike: Fitted) -> None:
    rows = bike.test.head(200)
    noisy = rows.assign(instant=-1, extra_column="x")[[*reversed(rows.columns), "extra_column"]]
    np.testing.assert_allclose(bike.model.predict(noisy), bike.model.predict(rows), rtol=1e-6)


def test_rush_hour_on_a_working_day_rents_more_than_the_small_hours(bike: Fitted) -> None:
    days = bike.test[(bike.test["workingday"] == 1) & (bike.test["hr"] == 8)].head(30)
    assert len(days) >= 10
    at_night = days.assign(hr=3)
    assert (bike.model.predict(days) > bike.model.predict(at_night)).all()


def test_rain_does_not_raise_rentals_on_average(bike: Fitted) -> None:
    clear = bike.test[bike.test["weathersit"] == 1]
    rainy = clear.assign(weathersit=3, hum=np.maximum(clear["hum"], 0.85))
    assert bike.model.predict(rainy).mean() < bike.model.predict(clear).mean()


def test_minimum_quality_on_working_days(bike: Fitted) -> None:
    working = bike.test[bike.test["workingday"] == 1]
    metrics = score(bike.model, working, "cnt").metrics
    assert metrics["r2"] > 0.8
    _, naive = baseline(bike.train, working, bike.spec, ["weekday", "hr"])
    assert metrics["rmse"] < 0.75 * naive["rmse"]


def test_a_saved_model_predicts_the_same(bike: Fitted, tmp_path) -> None:
    bike.model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict(bike.test), bike.model.predict(bike.test))


@pytest.mark.parametrize("estimator", ["linear", "forest"])
def test_sklearn_family_learns_the_bike_data(bike: Fitted, estimator: str, tmp_path) -> None:
    config = TrainConfig(model="sklearn", sklearn={"estimator": estimator, "n_estimators": 50})
    model = bike.fit(config)
    metrics = score(model, bike.test, "cnt").metrics
    assert metrics["r2"] > (0.25 if estimator == "linear" else 0.75)
    model.save(tmp_path / estimator)
    np.testing.assert_allclose(
        load_model(tmp_path / estimator).predict(bike.test.head(50)),
        model.predict(bike.test.head(50)),
    )
