"""compress through the real command: ONNX for the tuned model, measured side by side in
a record, with no timing in what DVC versions."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.config import CompressConfig
from pipeline.stages.compress import CompressionRefused, check_drop, keeps_int8, metric_drop
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
    if family in ("torch", "sklearn"):
        assert "int8" in report["candidates"]  # tried, kept only where it pays
    else:
        assert report["candidates"] == {}
    # Timings are a record beside the versioned outputs, never in them.
    record = read(project, "reports/compression_latency.json")
    assert record["served"] == ("onnx_int8" if report["quantized"] else "onnx")
    for runtime in ("native", "onnx"):
        latency = record["latency_ms"][runtime]
        assert 0 < latency["one_row_p50_ms"] <= latency["one_row_p99_ms"]
        assert latency["batch_ms"] > 0
    if "score" in report["candidates"].get("int8", {}):
        assert record["latency_ms"]["onnx_int8"]["batch_ms"] > 0
    metrics = read(project, "metrics/compress.json")
    assert set(metrics) == {"native_kb", "onnx_kb", "quantized", "metric_drop"}
    assert not {"latency_ms", "serving"} & set(report)

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
    # Which runtime serves large batches is measured by the server, not stored here.
    assert "serving" not in meta


@pytest.mark.parametrize(
    ("quantize", "drop", "int8_bytes", "kept", "why"),
    [
        ("auto", 0.0005, 300, True, "within tolerance and 30% of the float file"),
        ("auto", 0.0005, 600, False, "60% of the float file: too little to gain"),
        ("auto", 0.002, 300, False, "too inaccurate"),
        ("always", 0.0005, 900, True, "quantize: always"),
        ("always", 0.002, 300, False, "too inaccurate"),
    ],
)
def test_int8_is_kept_by_accuracy_and_size_never_by_a_timing(
    quantize: str, drop: float, int8_bytes: int, kept: bool, why: str
) -> None:
    config = CompressConfig(quantize=quantize, max_metric_drop=0.001)
    keep, reason = keeps_int8(config, drop, int8_bytes, 1000)
    assert keep is kept
    assert reason.startswith(why)


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
