"""ONNX export: every family's graph, run by onnxruntime, scores as the native model does,
gaps and unseen categories included, and the serving module stays light to import."""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Schema, TrainConfig
from pipeline.models import TabularModel, fit_model
from pipeline.onnx_model import (
    OnnxModel,
    QuantizationUnsupported,
    export_onnx,
    quantize_dynamic_int8,
)
from pipeline.schema import DatasetSpec

CASES = [
    ("xgboost", None, "regression"),
    ("xgboost", None, "binary"),
    ("xgboost", None, "multiclass"),
    ("sklearn", "forest", "regression"),
    ("sklearn", "forest", "binary"),
    ("sklearn", "forest", "multiclass"),
    ("sklearn", "linear", "regression"),
    ("sklearn", "linear", "binary"),
    ("torch", None, "regression"),
    ("torch", None, "binary"),
    ("torch", None, "multiclass"),
]


def frame(task: str, rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """Two numerics and a colour decide the target; some gaps in both kinds of column."""
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=rows), rng.normal(size=rows) * 10
    colour = rng.choice(["red", "blue", "green"], size=rows)
    signal = x + 0.1 * z + (colour == "red")
    if task == "regression":
        target = pd.Series(signal * 100 + 50, dtype=float)
    elif task == "binary":
        target = pd.Series(np.where(signal > 0.3, "yes", "no"), dtype=object)
    else:
        target = pd.Series(np.select([signal < -0.5, signal < 0.5], ["a", "b"], "c"), dtype=object)
    data = pd.DataFrame({"x": x, "z": z, "colour": colour, "y": target})
    data.loc[::7, "x"] = np.nan
    data.loc[::11, "colour"] = None
    return data


def scoring_rows(task: str) -> pd.DataFrame:
    """Fresh rows with a missing numeric, a missing category and an unseen category."""
    rows = frame(task, rows=40, seed=2).drop(columns="y")
    rows.loc[0, "x"] = np.nan
    rows.loc[1, "colour"] = None
    rows.loc[2, "colour"] = "purple"
    rows.loc[3, ["x", "z", "colour"]] = [np.nan, np.nan, "purple"]
    return rows


@functools.cache
def fitted(family: str, estimator: str | None, task: str) -> tuple[TabularModel, bytes]:
    categorical = {"colour": {}} if task == "regression" else {"colour": {}, "y": {}}
    spec = DatasetSpec(target="y", task=task, schema=Schema(categorical=categorical))
    config = TrainConfig(
        model=family,
        xgboost={"n_estimators": 30},
        sklearn={"estimator": estimator or "forest", "n_estimators": 20},
        torch={"max_epochs": 3, "hidden_sizes": [32, 16]},
    )
    model = fit_model(frame(task), frame(task, seed=1), spec, config)
    return model, export_onnx(model)


def assert_same_raw(task: str, onnx_raw: np.ndarray, native_raw: np.ndarray) -> None:
    assert onnx_raw.shape == native_raw.shape
    assert onnx_raw.dtype == np.float64
    if task == "regression":
        scale = max(1.0, float(np.abs(native_raw).max()))
        np.testing.assert_allclose(onnx_raw, native_raw, rtol=0, atol=1e-4 * scale)
    else:
        # A calibrator's steep segments scale float32's rounding of its input.
        np.testing.assert_allclose(onnx_raw, native_raw, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("family", "estimator", "task"), CASES, ids=lambda v: str(v))
def test_onnx_scores_as_the_native_model(family: str, estimator: str | None, task: str) -> None:
    model, onnx_bytes = fitted(family, estimator, task)
    runner = OnnxModel.from_model(model, onnx_bytes)
    rows = scoring_rows(task)

    native, exported = model.predict_raw(rows), runner.predict_raw(rows)
    assert_same_raw(task, exported, native)
    assert_same_raw(task, runner.predict_raw(rows.head(1)), model.predict_raw(rows.head(1)))

    if task == "regression":
        np.testing.assert_allclose(runner.predict(rows), model.predict(rows), atol=1e-2)
        return
    # Labels agree wherever float32 rounding cannot tip a row across the decision.
    if task == "binary" and model.threshold is not None:
        clear = np.abs(native[:, 1] - model.threshold) > 1e-5
    else:
        top_two = np.sort(native, axis=1)[:, -2:]
        clear = top_two[:, 1] - top_two[:, 0] > 1e-5
    assert clear.sum() > len(rows) // 2
    assert list(runner.predict(rows)[clear]) == list(model.predict(rows)[clear])
    assert set(runner.predict(rows)) <= set(model.classes)


@pytest.mark.parametrize(("family", "estimator", "task"), CASES, ids=lambda v: str(v))
def test_request_records_score_as_the_frame_does(
    family: str, estimator: str | None, task: str
) -> None:
    """Serving's path (records to arrays, no pandas) gives what a frame gives, for the
    ONNX runner and for the native model that serves large batches."""
    model, onnx_bytes = fitted(family, estimator, task)
    runner = OnnxModel.from_model(model, onnx_bytes)
    rows = scoring_rows(task)
    records = [
        {name: (None if pd.isna(value) else value) for name, value in row.items()}
        for row in rows.to_dict(orient="records")
    ]
    arrays = model.features.record_arrays(records)
    np.testing.assert_array_equal(runner.predict_arrays(arrays), runner.predict_raw(rows))
    assert_same_raw(task, model.predict_arrays(arrays), model.predict_raw(rows))


@pytest.mark.parametrize(("family", "estimator", "task"), CASES, ids=lambda v: str(v))
def test_the_graph_is_valid_onnx_with_a_dynamic_batch(
    family: str, estimator: str | None, task: str
) -> None:
    import onnx

    _, onnx_bytes = fitted(family, estimator, task)
    graph = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(graph)
    for value in graph.graph.input:
        batch = value.type.tensor_type.shape.dim[0]
        assert not batch.HasField("dim_value"), f"{value.name} has a fixed batch size"
    assert len(graph.graph.output) == 1


def test_a_quantised_mlp_stays_close() -> None:
    model, onnx_bytes = fitted("torch", None, "binary")
    quantised = quantize_dynamic_int8(onnx_bytes)
    assert quantised != onnx_bytes
    rows = scoring_rows("binary")
    raw = OnnxModel.from_model(model, quantised).predict_raw(rows)
    np.testing.assert_allclose(raw, model.predict_raw(rows), atol=0.05)
    np.testing.assert_allclose(raw.sum(axis=1), 1.0, atol=1e-5)


def test_a_tree_ensemble_cannot_be_quantised() -> None:
    _, onnx_bytes = fitted("xgboost", None, "binary")
    with pytest.raises(QuantizationUnsupported):
        quantize_dynamic_int8(onnx_bytes)


def test_importing_the_runner_imports_no_heavy_library() -> None:
    heavy = ["torch", "onnx", "onnxruntime", "onnxmltools", "skl2onnx", "xgboost"]
    code = (
        "import sys, pipeline.onnx_model\n"
        f"print([name for name in {heavy!r} if name in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_xgboost_with_a_many_valued_category_exports() -> None:
    # A category split is a chain of equality branches in ONNX; 300 stations made the
    # converter run for minutes and recurse past Python's limit, so they stay codes.
    rng = np.random.default_rng(0)

    def rows(n: int) -> pd.DataFrame:
        station = rng.integers(0, 300, size=n)
        x = rng.normal(size=n)
        return pd.DataFrame(
            {
                "x": x,
                "station": [f"s{v:03d}" for v in station],
                "y": np.sin(station) * 3 + x + rng.normal(0, 0.1, n),
            }
        )

    spec = DatasetSpec(target="y", task="regression", schema=Schema(categorical={"station": {}}))
    config = TrainConfig(objective="squared_error", xgboost={"n_estimators": 60, "max_depth": 8})
    model = fit_model(rows(6000), rows(1500), spec, config)
    test = rows(500)
    runner = OnnxModel.from_model(model, export_onnx(model))
    np.testing.assert_allclose(runner.predict_raw(test), model.predict_raw(test), atol=1e-3)
