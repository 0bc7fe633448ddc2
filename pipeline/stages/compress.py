"""compress: the tuned model as ONNX, int8-quantised where that pays, measured.

Every family exports to ONNX (xgboost through onnxmltools, scikit-learn pipelines
through skl2onnx with their preprocessing inside the graph, torch through
torch.onnx). What no converter can hold, turning category text into codes, is
`FeatureSpec`, the one preprocessing function training and serving share.

The export is scored on the test rows next to the native model: if it is worse by
more than `compress.max_metric_drop` on the primary metric (the one the gate judges
on: `evaluate.primary_metric`, or the task's default), compress refuses and writes
nothing. Dynamic int8 quantisation is tried for torch and linear models and
kept only when it is faster and within the same tolerance (`quantize: auto`).

Serving's two runtimes are then timed on batches of growing size: where the native
model is faster from some size on (xgboost on large batches), `model.json` says so in
`serving.native_from_rows`, and the server scores such batches natively.

Outputs: `models/compressed/{model.onnx,model.json}` (what serving loads: no pickle),
`reports/compression.json` (sizes, latency side by side, metric deltas) and
`metrics/compress.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import typer

from pipeline.artifacts import read_stage_input, staged_directory, write_json_atomic
from pipeline.config import DEFAULT_PARAMS, CompressConfig, load_params
from pipeline.console import report_user_errors, say
from pipeline.errors import DriftlineError
from pipeline.metrics import HIGHER_IS_BETTER, primary_metric
from pipeline.schema import DatasetSpec

if TYPE_CHECKING:
    from pipeline.models import TabularModel

ONNX_FILE = "model.onnx"
META_FILE = "model.json"
# Batch sizes at which serving's two runtimes are timed against each other.
BATCH_SIZES = (1, 16, 128, 1024)


class CompressionRefused(DriftlineError):
    """The exported model scores worse than the tolerance allows."""


@dataclass(frozen=True)
class Latency:
    """Single-row p50/p99 and a batch's median, in milliseconds, raw columns in."""

    one_row_p50_ms: float
    one_row_p99_ms: float
    batch_ms: float


@dataclass
class Compression:
    onnx_bytes: bytes
    quantized: bool
    metric: str
    native_score: float
    onnx_score: float
    sizes: dict[str, int]
    latency: dict[str, Latency]
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    native_from_rows: int | None = None
    batch_ms: dict[int, dict[str, float]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "native_score": self.native_score,
            "onnx_score": self.onnx_score,
            "metric_drop": metric_drop(self.metric, self.native_score, self.onnx_score),
            "quantized": self.quantized,
            "size_bytes": self.sizes,
            "latency_ms": {name: vars(value) for name, value in self.latency.items()},
            "candidates": self.candidates,
            "serving": self.serving(),
        }

    def serving(self) -> dict[str, Any]:
        """How serving scores: ONNX, and the native model for batches of
        `native_from_rows` or more where it measured faster (None: never)."""
        return {
            "native_from_rows": self.native_from_rows,
            "batch_ms": {str(size): times for size, times in self.batch_ms.items()},
        }


def metric_drop(metric: str, native: float, exported: float) -> float:
    """How much worse the export scores, as a share of the native score (0 or less:
    no worse)."""
    loss = native - exported if HIGHER_IS_BETTER[metric] else exported - native
    return float(loss / abs(native)) if native else float(loss)


def check_drop(metric: str, native: float, exported: float, tolerance: float) -> None:
    """Refuse an export that scores worse than the tolerance allows (or not at all)."""
    drop = metric_drop(metric, native, exported)
    if not drop <= tolerance:
        raise CompressionRefused(
            f"the ONNX export scores {metric} {exported:.6g} against {native:.6g} natively "
            f"({drop:+.3%} worse; compress.max_metric_drop is {tolerance:.3%}): "
            "nothing was written"
        )


def measure_latency(predict: Any, rows: pd.DataFrame, batch_rows: int, calls: int) -> Latency:
    """Time `predict` on single rows (p50, p99) and on one batch (median of 5)."""
    singles = [rows.iloc[[i % len(rows)]] for i in range(calls)]
    predict(singles[0])  # warm-up: first calls allocate
    timings = []
    for row in singles:
        started = time.perf_counter()
        predict(row)
        timings.append((time.perf_counter() - started) * 1000)
    batch = rows.sample(n=batch_rows, replace=len(rows) < batch_rows, random_state=0)
    batch_timings = []
    for _ in range(5):
        started = time.perf_counter()
        predict(batch)
        batch_timings.append((time.perf_counter() - started) * 1000)
    return Latency(
        one_row_p50_ms=round(float(np.percentile(timings, 50)), 4),
        one_row_p99_ms=round(float(np.percentile(timings, 99)), 4),
        batch_ms=round(float(np.median(batch_timings)), 3),
    )


def median_ms(predict: Any, arrays: Any, budget_s: float = 0.2, most: int = 200) -> float:
    """The median time of `predict(arrays)` over up to `most` calls or `budget_s`."""
    predict(arrays)  # warm-up
    timings: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(timings) < 3 or (len(timings) < most and time.perf_counter() < deadline):
        started = time.perf_counter()
        predict(arrays)
        timings.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(timings)), 4)


def batch_runtimes(
    model: TabularModel, served: Any, rows: pd.DataFrame, largest: int
) -> tuple[int | None, dict[int, dict[str, float]]]:
    """Time the native model and the served ONNX model on prepared batches of growing
    size; the smallest size from which native is faster at every larger size measured
    (None: ONNX is never slower), and the timings."""
    sizes = sorted({size for size in BATCH_SIZES if size < largest} | {largest})
    timings: dict[int, dict[str, float]] = {}
    for size in sizes:
        batch = rows.sample(n=size, replace=len(rows) < size, random_state=size)
        arrays = model.features.arrays(model.features.prepare(batch))
        timings[size] = {
            "native": median_ms(model.predict_arrays, arrays),
            "onnx": median_ms(served.predict_arrays, arrays),
        }
    native_from = None
    for size in reversed(sizes):
        if timings[size]["native"] >= timings[size]["onnx"]:
            break
        native_from = size
    return native_from, timings


def quantizable(model: TabularModel) -> bool:
    """Dynamic int8 quantises matrix multiplies: MLPs and linear models have them,
    tree ensembles do not."""
    return model.family == "torch" or (
        model.family == "sklearn" and model.params.get("estimator") == "linear"
    )


def compress(
    model: TabularModel,
    native_size: int,
    test: pd.DataFrame,
    target: str,
    metric: str,
    config: CompressConfig,
) -> Compression:
    """Export, check the metric, try int8, and time native and ONNX side by side."""
    from pipeline.onnx_model import OnnxModel, QuantizationUnsupported, export_onnx
    from pipeline.onnx_model import quantize_dynamic_int8 as quantize
    from pipeline.scoring import score

    native_score = score(model, test, target).metrics[metric]
    exported = export_onnx(model)
    onnx_score = score(OnnxModel.from_model(model, exported), test, target).metrics[metric]
    check_drop(metric, native_score, onnx_score, config.max_metric_drop)
    latency = {
        "native": measure_latency(
            model.predict_raw, test, config.latency_rows, config.latency_calls
        ),
        "onnx": measure_latency(
            OnnxModel.from_model(model, exported).predict_raw,
            test,
            config.latency_rows,
            config.latency_calls,
        ),
    }
    sizes = {"native": native_size, "onnx": len(exported)}
    candidates: dict[str, dict[str, Any]] = {}
    chosen, quantized, chosen_score = exported, False, onnx_score
    if config.quantize != "never" and quantizable(model):
        try:
            int8 = quantize(exported)
        except QuantizationUnsupported as exc:
            candidates["int8"] = {"kept": False, "why": str(exc)}
        else:
            int8_model = OnnxModel.from_model(model, int8)
            int8_score = score(int8_model, test, target).metrics[metric]
            int8_latency = measure_latency(
                int8_model.predict_raw, test, config.latency_rows, config.latency_calls
            )
            int8_drop = metric_drop(metric, native_score, int8_score)
            faster = int8_latency.one_row_p50_ms < latency["onnx"].one_row_p50_ms
            within = int8_drop <= config.max_metric_drop
            keep = within and (faster or config.quantize == "always")
            candidates["int8"] = {
                "kept": keep,
                "score": int8_score,
                "metric_drop": int8_drop,
                "size_bytes": len(int8),
                "latency_ms": vars(int8_latency),
                "why": "faster and within tolerance"
                if keep and faster
                else ("quantize: always" if keep else "slower" if within else "too inaccurate"),
            }
            sizes["int8"] = len(int8)
            if keep:
                chosen, quantized, chosen_score = int8, True, int8_score
                latency["onnx_int8"] = int8_latency
    # Timed as serving runs them: one ONNX Runtime thread, inputs already prepared.
    served = OnnxModel.from_model(model, chosen, intra_op_num_threads=1)
    native_from_rows, batch_ms = batch_runtimes(model, served, test, config.latency_rows)
    return Compression(
        native_from_rows=native_from_rows,
        batch_ms=batch_ms,
        onnx_bytes=chosen,
        quantized=quantized,
        metric=metric,
        native_score=native_score,
        onnx_score=chosen_score,
        sizes=sizes,
        latency=latency,
        candidates=candidates,
    )


def context_columns(spec: DatasetSpec, features: tuple[str, ...]) -> list[str]:
    """The key, id and time columns of the data set that are not features."""
    named = [*spec.key_columns, *spec.schema.id, spec.time_column]
    return list(dict.fromkeys(c for c in named if c and c not in features and c != spec.target))


def folder_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    raw: Annotated[Path, typer.Option(help="The ingest stage's folder.")] = Path("data/raw"),
    split: Annotated[Path, typer.Option(help="The split stage's folder.")] = Path("data/split"),
    model: Annotated[Path, typer.Option(help="The model to compress.")] = Path("models/tuned"),
    out: Annotated[Path, typer.Option(help="Folder for model.onnx and model.json.")] = Path(
        "models/compressed"
    ),
    report: Annotated[Path, typer.Option(help="Sizes, latency, metric deltas.")] = Path(
        "reports/compression.json"
    ),
    metrics: Annotated[Path, typer.Option(help="Flat figures for `dvc metrics`.")] = Path(
        "metrics/compress.json"
    ),
) -> None:
    """Export the tuned model to ONNX, quantise where it pays, and measure both."""
    loaded = load_params(params)
    config = loaded.compress
    spec = DatasetSpec.read(raw / "schema.yaml")
    test_rows = read_stage_input(split / "test.parquet", "split")
    # The gate's metric, derived as evaluate derives it rather than read from its report:
    # compress then waits on no gate, and a gate setting (evaluate.min_improvement) does
    # not re-run the export.
    metric = primary_metric(spec.task, loaded.evaluate.primary_metric)

    from pipeline.models import load_model

    candidate = load_model(model)
    result = compress(candidate, folder_size(model), test_rows, spec.target, metric, config)
    with staged_directory(out) as staged:
        (staged / ONNX_FILE).write_bytes(result.onnx_bytes)
        meta = {
            **candidate.describe(),
            "onnx": {"file": ONNX_FILE, "quantized": result.quantized, "metric": metric},
            "serving": result.serving(),
            # Columns a request may carry for the log, so that a labelled production
            # row can become a training row again (`driftline` retraining on drift).
            "context": context_columns(spec, candidate.features.columns),
        }
        (staged / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    summary = result.report()
    write_json_atomic(report, summary)
    onnx, native = (
        result.latency["onnx_int8" if result.quantized else "onnx"],
        result.latency["native"],
    )
    write_json_atomic(
        metrics,
        {
            "native_kb": round(result.sizes["native"] / 1024, 1),
            "onnx_kb": round(len(result.onnx_bytes) / 1024, 1),
            "quantized": result.quantized,
            "metric_drop": summary["metric_drop"],
            "one_row_p50_ms_native": native.one_row_p50_ms,
            "one_row_p50_ms_onnx": onnx.one_row_p50_ms,
            "batch_ms_native": native.batch_ms,
            "batch_ms_onnx": onnx.batch_ms,
        },
    )
    say(
        f"compress ({candidate.family}{', int8' if result.quantized else ''}): "
        f"{result.sizes['native'] / 1024:.0f} KB -> {len(result.onnx_bytes) / 1024:.0f} KB; "
        f"{metric} {result.native_score:.5g} -> {result.onnx_score:.5g}; one row "
        f"{native.one_row_p50_ms:.3g} -> {onnx.one_row_p50_ms:.3g} ms, "
        f"{config.latency_rows} rows {native.batch_ms:.3g} -> {onnx.batch_ms:.3g} ms -> {out}"
    )
    if result.native_from_rows:
        say(f"serving: the native model is faster from {result.native_from_rows} rows a batch")


if __name__ == "__main__":
    typer.run(main)
