"""compress through the real command: ONNX for the tuned model, measured side by side."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.stages.compress import CompressionRefused, check_drop, metric_drop
from tests.conftest import Project
from tests.model.test_model_stages import MODEL_STAGES, read
from tests.unit.test_bad_input import assert_one_clear_line


@pytest.mark.parametrize(
    ("family", "settings"),
    [("xgboost", {}), ("torch", {"max_epochs": 4}), ("sklearn", {"estimator": "linear"})],
)
def test_compress_exports_checks_and_measures(
    produced: Project, family: str, settings: dict
) -> None:
    project = produced
    params = project.params()
    params["train"]["model"] = family
    params["train"][family].update(settings)
    params["tune"].update(n_trials=0)
    params["evaluate"]["floors"] = {}
    params["compress"].update(latency_calls=20, latency_rows=500)
    project.write_params(params)
    project.run_stages(*MODEL_STAGES, "compress")

    report = read(project, "reports/compression.json")
    assert report["metric"] == "rmse"
    assert report["metric_drop"] <= 0.001
    assert set(report["size_bytes"]) >= {"native", "onnx"}
    for runtime in ("native", "onnx"):
        latency = report["latency_ms"][runtime]
        assert 0 < latency["one_row_p50_ms"] <= latency["one_row_p99_ms"]
        assert latency["batch_ms"] > 0
    if family in ("torch", "sklearn"):
        assert "int8" in report["candidates"]  # tried, kept only where it pays
    else:
        assert report["candidates"] == {}

    # What serving will load: the ONNX file and its JSON, no pickle, same predictions.
    from pipeline.models import load_model
    from pipeline.onnx_model import OnnxModel

    folder = project.root / "models/compressed"
    assert {path.name for path in folder.iterdir()} == {"model.onnx", "model.json"}
    native = load_model(project.root / "models/tuned")
    exported = OnnxModel.from_model(native, (folder / "model.onnx").read_bytes())
    test = pd.read_parquet(project.root / "data/split/test.parquet")
    reference = native.predict_raw(test)
    if report["quantized"]:
        # int8 errors scale with the output's range, not with each value.
        spread = float(np.ptp(reference))
        np.testing.assert_allclose(exported.predict_raw(test), reference, atol=0.05 * spread)
    else:
        np.testing.assert_allclose(exported.predict_raw(test), reference, rtol=1e-3, atol=1e-3)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["onnx"]["quantized"] == report["quantized"]
    assert meta["features"] == native.features.to_dict()
    assert meta["context"] == ["instant", "dteday"]  # the key and time a request may carry

    # Serving's runtimes timed side by side on growing batches, up to latency_rows.
    serving = report["serving"]
    assert meta["serving"] == serving
    assert list(serving["batch_ms"]) == ["1", "16", "128", "500"]
    assert all(t["native"] > 0 and t["onnx"] > 0 for t in serving["batch_ms"].values())
    # Native from the smallest size at which it is faster at every larger size measured.
    expected = None
    for size in sorted((int(n) for n in serving["batch_ms"]), reverse=True):
        times = serving["batch_ms"][str(size)]
        if times["native"] >= times["onnx"]:
            break
        expected = size
    assert serving["native_from_rows"] == expected


def test_an_export_that_scores_worse_than_the_tolerance_is_refused() -> None:
    assert metric_drop("rmse", 100.0, 101.0) == pytest.approx(0.01)
    assert metric_drop("roc_auc", 0.80, 0.79) == pytest.approx(0.0125)
    check_drop("rmse", 100.0, 100.05, 0.001)  # 0.05% worse: fine
    with pytest.raises(
        CompressionRefused, match=r"rmse 101 against 100 natively \(\+1\.000% worse"
    ):
        check_drop("rmse", 100.0, 101.0, 0.001)
    with pytest.raises(CompressionRefused):
        check_drop("roc_auc", 0.8, math.nan, 0.5)  # an export that cannot be scored


def test_compress_before_tune(produced: Project) -> None:
    project = produced
    result = project.run("compress")
    assert result.exit_code == 1
    assert_one_clear_line(
        result.stderr, "models/tuned holds no model (model.json missing): run the pipeline up"
    )
