"""Targets and features in the shapes real data gives them: float or bool labels, a
positive class that sorts first, a feature column that train never filled in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Schema, TrainConfig
from pipeline.models import class_order, encode_labels, fit_model
from pipeline.schema import DatasetSpec
from pipeline.scoring import score
from pipeline.stages.evaluate import baseline


def frame(labels: list, rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """`x` decides the label; `colour` is noise; `empty` is never filled in."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    first, second = labels
    return pd.DataFrame(
        {
            "x": x,
            "colour": rng.choice(["red", "blue"], size=rows),
            "empty": pd.Series([None] * rows, dtype=object),
            "y": pd.Series(np.where(x > 0.3, second, first), dtype=object),
        }
    )


def spec(task: str = "binary") -> DatasetSpec:
    schema = Schema(categorical={"colour": {}, "empty": {}, "y": {}})
    return DatasetSpec(target="y", task=task, schema=schema)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([0.0, 1.0], [0, 1]),
        ([False, True], [False, True]),
        (["no", "yes"], ["no", "yes"]),
        ([0, 1], [0, 1]),
    ],
)
def test_binary_labels_of_every_type_train(labels: list, expected: list) -> None:
    train, val = frame(labels), frame(labels, seed=1)
    model = fit_model(train, val, spec(), TrainConfig(xgboost={"n_estimators": 30}))
    assert model.classes == expected
    metrics = score(model, val, "y").metrics
    assert metrics["roc_auc"] > 0.95
    assert set(model.predict(val.head(20))) <= set(expected)


def test_whole_floats_ints_and_text_are_one_class() -> None:
    mixed = pd.Series([1.0, 0.0, 1, "1", np.nan], dtype=object)
    classes = class_order(mixed, "binary")
    assert classes == [0, 1]
    assert list(encode_labels(mixed.dropna(), classes)) == [1, 0, 1, 1]


def test_numbers_sort_as_numbers() -> None:
    assert class_order(pd.Series([10, 2, 1]), "multiclass") == [1, 2, 10]


def test_a_positive_class_that_sorts_first_is_scored_as_positive() -> None:
    labels = ["churn", "stay"]  # "churn" sorts first but is the class of interest
    train, val = frame(labels), frame(labels, seed=1)
    config = TrainConfig(positive_class="churn", xgboost={"n_estimators": 30})
    model = fit_model(train, val, spec(), config)
    assert model.classes == ["stay", "churn"]
    churn_share = (val["y"] == "churn").mean()
    # The baseline scores the same positive class: its PR AUC is the churn share.
    _, naive = baseline(train, val, spec(), None, model.classes)
    assert naive["pr_auc"] == pytest.approx(churn_share)
    assert score(model, val, "y").metrics["recall"] > 0.8


@pytest.mark.parametrize("family", ["xgboost", "sklearn", "torch"])
def test_a_feature_column_that_train_never_filled_is_left_out(family: str) -> None:
    labels = ["no", "yes"]
    train, val = frame(labels), frame(labels, seed=1)
    config = TrainConfig(
        model=family,
        xgboost={"n_estimators": 20},
        torch={"max_epochs": 3},
        sklearn={"n_estimators": 20},
    )
    model = fit_model(train, val, spec(), config)
    assert "empty" not in model.features.columns
    filled = val.assign(empty="surprise")  # a value at predict time changes nothing
    np.testing.assert_allclose(model.predict_proba(filled), model.predict_proba(val))
