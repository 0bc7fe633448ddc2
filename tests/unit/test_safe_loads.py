"""No artifact on the serving path can run code when it is loaded.

The sklearn family's `pipeline.skops` loads only when every type it names is one
Driftline writes (`TRUSTED_TYPES`); a tampered file is refused in one line, before
anything in it is built. The other families' files load without unpickling.
"""

from __future__ import annotations

import functools
import json
import operator
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io

from pipeline.config import Schema, TrainConfig
from pipeline.errors import DataError
from pipeline.models import TabularModel, fit_model, load_model
from pipeline.models.sklearn_model import PIPELINE_FILE, TRUSTED_TYPES
from pipeline.schema import DatasetSpec

# Set by Tripwire when skops builds one: it must never be, from a refused file.
BUILT: list[Any] = []


class Tripwire:
    """A type no Driftline file names; building it from a file records the fact."""

    def __init__(self) -> None:
        self.armed = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        BUILT.append(state)


def rows(task: str, columns: str, seed: int, count: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=count), rng.normal(size=count) * 10
    colour = rng.choice(["red", "blue", "green"], size=count)
    signal = x + 0.1 * z + (colour == "red")
    if task == "regression":
        target: Any = np.abs(signal * 100 + 50).round()
    elif task == "binary":
        target = np.where(signal > 0.3, "yes", "no")
    else:
        target = np.select([signal < -0.5, signal < 0.5], ["a", "b"], "c")
    frame = pd.DataFrame({"x": x, "z": z, "colour": colour, "y": target})
    frame.loc[::7, "x"] = np.nan
    frame.loc[::11, "colour"] = None
    if columns == "numeric":
        return frame.drop(columns="colour")
    if columns == "categorical":
        return frame.drop(columns=["x", "z"])
    return frame


@functools.cache
def fitted(
    task: str,
    estimator: str,
    objective: str = "auto",
    columns: str = "mixed",
    weights: str = "none",
) -> TabularModel:
    categorical: dict[str, Any] = {} if columns == "numeric" else {"colour": {}}
    if task != "regression":
        categorical["y"] = {}
    spec = DatasetSpec(target="y", task=task, schema=Schema(categorical=categorical))
    config = TrainConfig(
        model="sklearn",
        objective=objective,
        class_weight=weights,
        calibration="none",
        sklearn={"estimator": estimator, "n_estimators": 3},
    )
    return fit_model(rows(task, columns, 0), rows(task, columns, 1), spec, config)


# Every Pipeline build_pipeline makes: each estimator, task, loss and kind of features.
VARIANTS = [
    *[
        ("regression", estimator, objective, columns, "none")
        for estimator, objectives in (
            ("forest", ("squared_error", "poisson", "log1p")),
            ("linear", ("squared_error", "poisson", "tweedie", "log1p")),
        )
        for objective in objectives
        for columns in ("mixed", "numeric", "categorical")
    ],
    *[
        (task, estimator, "auto", columns, weights)
        for task in ("binary", "multiclass")
        for estimator in ("forest", "linear")
        for columns in ("mixed", "numeric", "categorical")
        for weights in ("none", "balanced")
    ],
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v))
def test_every_sklearn_variant_names_only_trusted_types(
    variant: tuple[str, str, str, str, str], tmp_path: Path
) -> None:
    """TRUSTED_TYPES covers what Driftline writes: a library upgrade that adds a type
    fails here, not in production."""
    model = fitted(*variant)
    model.save(tmp_path / "model")
    named = skops.io.get_untrusted_types(file=tmp_path / "model" / PIPELINE_FILE)
    assert set(named) <= set(TRUSTED_TYPES)


@pytest.mark.parametrize(
    "variant",
    [("regression", "forest"), ("regression", "linear", "tweedie"), ("binary", "linear")],
    ids=lambda v: "-".join(v),
)
def test_a_model_folder_driftline_wrote_loads_and_predicts_the_same(
    variant: tuple[str, ...], tmp_path: Path
) -> None:
    model = fitted(*variant)
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    frame = rows(variant[0], "mixed", 2).drop(columns="y")
    np.testing.assert_array_equal(loaded.predict_raw(frame), model.predict_raw(frame))


def written_model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    fitted("regression", "linear").save(folder)
    return folder


def assert_refused(folder: Path, *names: str) -> str:
    BUILT.clear()
    with pytest.raises(DataError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert "\n" not in message
    assert str(folder / PIPELINE_FILE) in message
    assert "refused to load" in message
    for name in names:
        assert name in message
    assert BUILT == []
    return message


@pytest.mark.parametrize(
    ("payload", "name"),
    [(eval, "builtins.eval"), (operator.attrgetter("__class__"), "operator.attrgetter")],
    ids=["builtins.eval", "operator.attrgetter"],
)
def test_a_skops_file_of_a_function_is_refused(payload: Any, name: str, tmp_path: Path) -> None:
    folder = written_model(tmp_path)
    skops.io.dump(payload, folder / PIPELINE_FILE)
    assert_refused(folder, name)


def test_an_object_of_another_type_inside_the_pipeline_is_refused_unbuilt(
    tmp_path: Path,
) -> None:
    folder = written_model(tmp_path)
    pipeline = skops.io.load(folder / PIPELINE_FILE, trusted=list(TRUSTED_TYPES))
    pipeline.steps[-1][1].extra_ = Tripwire()
    skops.io.dump(pipeline, folder / PIPELINE_FILE)
    assert_refused(folder, f"{Tripwire.__module__}.Tripwire")


def test_an_edited_schema_inside_the_zip_is_refused_unbuilt(tmp_path: Path) -> None:
    """The estimator's class in schema.json swapped for one whose building runs code."""
    folder = written_model(tmp_path)
    path = folder / PIPELINE_FILE
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    schema = members["schema.json"].decode()
    assert '"__class__": "Ridge"' in schema
    edited = schema.replace('"__class__": "Ridge"', '"__class__": "Tripwire"').replace(
        '"__module__": "sklearn.linear_model._ridge"', f'"__module__": "{Tripwire.__module__}"'
    )
    json.loads(edited)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, edited if name == "schema.json" else content)
    assert_refused(folder, f"{Tripwire.__module__}.Tripwire")


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"not a zip file", "not a readable skops file"), (None, "not a readable skops file")],
    ids=["not-a-zip", "missing"],
)
def test_a_broken_skops_file_is_one_line(
    content: bytes | None, reason: str, tmp_path: Path
) -> None:
    folder = written_model(tmp_path)
    if content is None:
        (folder / PIPELINE_FILE).unlink()
    else:
        (folder / PIPELINE_FILE).write_bytes(content)
    with pytest.raises(DataError, match="not a readable skops file") as caught:
        load_model(folder)
    assert "\n" not in str(caught.value)


@functools.cache
def fitted_family(family: str) -> TabularModel:
    spec = DatasetSpec(target="y", task="regression", schema=Schema(categorical={"colour": {}}))
    config = TrainConfig(
        model=family,
        device="cpu",
        xgboost={"n_estimators": 5},
        torch={"max_epochs": 1, "hidden_sizes": [8]},
    )
    return fit_model(rows("regression", "mixed", 0), rows("regression", "mixed", 1), spec, config)


def test_a_torch_checkpoint_holding_an_object_is_refused_unbuilt(tmp_path: Path) -> None:
    """torch.load(weights_only=True): tensors and plain values, never another object."""
    import torch

    from pipeline.models.torch_model import CHECKPOINT_FILE

    folder = tmp_path / "model"
    fitted_family("torch").save(folder)
    assert load_model(folder).family == "torch"
    torch.save({"config": Tripwire(), "state_dict": {}, "target": {}}, folder / CHECKPOINT_FILE)
    BUILT.clear()
    with pytest.raises(DataError, match="refused to load") as caught:
        load_model(folder)
    assert "\n" not in str(caught.value)
    assert BUILT == []


def test_an_xgboost_booster_that_is_a_pickle_is_refused_unbuilt(tmp_path: Path) -> None:
    """xgboost parses its own UBJSON: a pickle in its place is an error, never run."""
    import pickle

    from pipeline.models.xgboost_model import BOOSTER_FILE

    folder = tmp_path / "model"
    fitted_family("xgboost").save(folder)
    assert load_model(folder).family == "xgboost"
    (folder / BOOSTER_FILE).write_bytes(pickle.dumps(Tripwire()))
    BUILT.clear()
    with pytest.raises(DataError, match="not a booster xgboost can read") as caught:
        load_model(folder)
    assert "\n" not in str(caught.value)
    assert BUILT == []
