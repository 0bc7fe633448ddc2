"""compress: the tuned model as ONNX, int8-quantised where that pays, measured.

Every family exports to ONNX (xgboost through onnxmltools, scikit-learn pipelines
through skl2onnx with their preprocessing inside the graph, torch through
torch.onnx). What no converter can hold, turning category text into codes, is
`FeatureSpec`, the one preprocessing function training and serving share.

The export is scored on the test rows next to the native model: if it is worse by
more than `compress.max_metric_drop` on the primary metric (the one the gate judges
on: `evaluate.primary_metric`, or the task's default), compress refuses and writes
nothing. Dynamic int8 quantisation is tried for torch and linear models; with
`quantize: auto` it is kept when it scores within the same tolerance and its file is
at most half the float one (`keeps_int8`), never on a timing.

With `compress.distill.student` set (`pipeline.distill`), a small student (a shallow
xgboost or a small MLP) is fitted on the tuned model's outputs over train + val and
exported too. It is scored on test beside the teacher's native, ONNX and int8 scores,
and served in their place only when it scores within `compress.max_metric_drop` of the
teacher's native score and its file is smaller than the teacher's export (never on a
timing): then `models/compressed` holds the student's ONNX, its native files (so that
serving times it, and /explain and the MLflow pyfunc score the model that is served)
and a model.json that describes it and records what it was distilled from. The gate
judged the teacher; the student is held to the same tolerance as the export itself.

The versioned outputs hold no timing and no decision made on one, so the same model
gives the same bytes on a quiet machine or a busy one: `models/compressed/{model.onnx,
model.json}` (what serving loads: no pickle), `reports/compression.json` (sizes, metric
deltas, the int8 decision, the student) and `metrics/compress.json`. Latency, native,
ONNX and the student side by side, is measured each run into
`reports/compression_latency.json`, a record of this machine that is not a DVC output
(deploy logs it with the model). Which runtime scores a large batch is measured where
it matters, by the server when it loads a model (`pipeline.serving`).
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

from pipeline.artifacts import (
    folder_digest,
    read_json,
    read_stage_input,
    staged_directory,
    write_json_atomic,
)
from pipeline.config import DEFAULT_PARAMS, CompressConfig, load_params
from pipeline.console import report_user_errors, run_command, say
from pipeline.errors import DriftlineError
from pipeline.metrics import HIGHER_IS_BETTER, primary_metric
from pipeline.rows import RowRules
from pipeline.schema import DatasetSpec

if TYPE_CHECKING:
    from pipeline.models import TabularModel

ONNX_FILE = "model.onnx"
META_FILE = "model.json"
# quantize: auto keeps int8 only when its file is at most this share of the float one.
INT8_MAX_SIZE_SHARE = 0.5


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
    # The distilled student when it is what `onnx_bytes` holds (kept), else None.
    student: TabularModel | None = None
    # Each variant's score on test, keyed as `sizes`: native, onnx, int8, student.
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def served(self) -> str:
        """Which graph `onnx_bytes` is: the student's, the int8 one or the float one."""
        if self.student is not None:
            return "student"
        return "onnx_int8" if self.quantized else "onnx"

    def report(self) -> dict[str, Any]:
        """What the export is and how it scores: the same for the same model.
        `served` names the graph models/compressed holds; `onnx_score` and
        `metric_drop` are that graph's."""
        return {
            "served": self.served,
            "metric": self.metric,
            "native_score": self.native_score,
            "onnx_score": self.onnx_score,
            "metric_drop": metric_drop(self.metric, self.native_score, self.onnx_score),
            "quantized": self.quantized,
            "scores": self.scores,
            "size_bytes": self.sizes,
            "candidates": self.candidates,
        }

    def latency_report(self) -> dict[str, Any]:
        """How fast each runtime was on this machine this time (`onnx_int8` where int8
        was tried): a record, not a versioned output."""
        return {
            "served": self.served,
            "latency_ms": {name: vars(value) for name, value in self.latency.items()},
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


def stable_onnx(onnx_bytes: bytes, name: str) -> bytes:
    """The graph under a fixed name: onnxmltools names it with a random UUID, which made
    the same model a different file (and dvc.lock a different hash) on every export."""
    import onnx

    graph_model = onnx.load_from_string(onnx_bytes)
    graph_model.graph.name = name
    return graph_model.SerializeToString()


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
    distill_rows: pd.DataFrame | None = None,
    seed: int = 0,
) -> Compression:
    """Export, check the metric, try int8, distil a student from `distill_rows` (train +
    val) when `config.distill` asks for one, and time every runtime side by side (the
    timings decide nothing)."""
    from pipeline.onnx_model import OnnxModel, QuantizationUnsupported, export_onnx
    from pipeline.onnx_model import quantize_dynamic_int8 as quantize
    from pipeline.scoring import score

    native_score = score(model, test, target).metrics[metric]
    exported = stable_onnx(export_onnx(model), f"driftline_{model.family}")
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
    scores = {"native": native_score, "onnx": onnx_score}
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
            int8_drop = metric_drop(metric, native_score, int8_score)
            keep, why = keeps_int8(config, int8_drop, len(int8), len(exported))
            candidates["int8"] = {
                "kept": keep,
                "score": int8_score,
                "metric_drop": int8_drop,
                "size_bytes": len(int8),
                "why": why,
            }
            sizes["int8"] = len(int8)
            scores["int8"] = int8_score
            latency["onnx_int8"] = measure_latency(
                int8_model.predict_raw, test, config.latency_rows, config.latency_calls
            )
            if keep:
                chosen, quantized, chosen_score = int8, True, int8_score
    student = None
    if config.distill.student != "none":
        if distill_rows is None:
            raise ValueError("compress.distill needs the train + val rows to distil from")
        student, student_onnx = distilled_student(
            model,
            distill_rows,
            test,
            target,
            metric,
            native_score,
            len(chosen),
            config,
            seed,
            candidates,
        )
        if student is not None:
            sizes["student"] = len(student_onnx)
            scores["student"] = candidates["student"]["score"]
            latency["student"] = measure_latency(
                OnnxModel.from_model(student, student_onnx).predict_raw,
                test,
                config.latency_rows,
                config.latency_calls,
            )
            if candidates["student"]["kept"]:
                chosen, quantized = student_onnx, False
                chosen_score = candidates["student"]["score"]
            else:
                student = None
    return Compression(
        onnx_bytes=chosen,
        quantized=quantized,
        metric=metric,
        native_score=native_score,
        onnx_score=chosen_score,
        sizes=sizes,
        latency=latency,
        candidates=candidates,
        student=student,
        scores=scores,
    )


def distilled_student(
    teacher: TabularModel,
    rows: pd.DataFrame,
    test: pd.DataFrame,
    target: str,
    metric: str,
    native_score: float,
    teacher_bytes: int,
    config: CompressConfig,
    seed: int,
    candidates: dict[str, dict[str, Any]],
) -> tuple[TabularModel | None, bytes]:
    """Fit the student, export it and score its ONNX on test; `candidates["student"]`
    says how it scored and whether it is kept: within `max_metric_drop` of the teacher's
    native score, and a smaller file than the teacher's export (`teacher_bytes`), never
    on a timing. Returns the student and its ONNX (None and b"" when it could not be
    exported)."""
    from pipeline.distill import distill
    from pipeline.onnx_model import OnnxExportError, OnnxModel, export_onnx
    from pipeline.scoring import score

    fitted = distill(teacher, rows, config.distill, seed)
    student = fitted.model
    entry: dict[str, Any] = {
        "family": student.family,
        "params": student.params,
        "rows": fitted.rows,
        "fidelity_loss": student.report.val_loss,
    }
    candidates["student"] = entry
    try:
        onnx = stable_onnx(export_onnx(student), f"driftline_{student.family}_student")
    except OnnxExportError as exc:
        entry.update(kept=False, why=f"no ONNX export: {exc}")
        return None, b""
    student_score = score(OnnxModel.from_model(student, onnx), test, target).metrics[metric]
    drop = metric_drop(metric, native_score, student_score)
    if not drop <= config.max_metric_drop:  # NaN (a broken graph) is refused too
        keep, why = False, f"too inaccurate ({drop:+.3%} against max_metric_drop)"
    elif len(onnx) >= teacher_bytes:
        keep, why = False, f"{len(onnx) / teacher_bytes:.0%} of the teacher's export: no smaller"
    else:
        keep, why = True, f"within tolerance and {len(onnx) / teacher_bytes:.0%} of the file"
    entry.update(
        score=student_score,
        native_score=score(student, test, target).metrics[metric],
        metric_drop=drop,
        size_bytes=len(onnx),
        kept=keep,
        why=why,
    )
    return student, onnx


def keeps_int8(
    config: CompressConfig, drop: float, int8_bytes: int, float_bytes: int
) -> tuple[bool, str]:
    """Whether to serve the int8 graph, and why: never a timing, so that the same model
    gives the same export on any machine under any load.

    Both policies need the int8 graph within `max_metric_drop`; `auto` also needs its
    file at most half the float one. Dynamic int8 stores weights in a quarter of the
    bytes, so a graph that does not halve holds few weights to quantise and little to
    gain; one that does is mostly large matrix multiplies, where int8 pays.
    """
    if not drop <= config.max_metric_drop:  # NaN (a broken graph) is refused too
        return False, f"too inaccurate ({drop:+.3%} against max_metric_drop)"
    if config.quantize == "always":
        return True, "quantize: always, within tolerance"
    share = int8_bytes / float_bytes
    if share > INT8_MAX_SIZE_SHARE:
        return False, f"{share:.0%} of the float file: too little to gain"
    return True, f"within tolerance and {share:.0%} of the float file"


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
    cleaned: Annotated[Path, typer.Option(help="The clean stage's report (its fills).")] = Path(
        "reports/clean.json"
    ),
    model: Annotated[Path, typer.Option(help="The model to compress.")] = Path("models/tuned"),
    out: Annotated[Path, typer.Option(help="Folder for model.onnx and model.json.")] = Path(
        "models/compressed"
    ),
    report: Annotated[Path, typer.Option(help="Sizes, metric deltas, the int8 decision.")] = Path(
        "reports/compression.json"
    ),
    metrics: Annotated[Path, typer.Option(help="Flat figures for `dvc metrics`.")] = Path(
        "metrics/compress.json"
    ),
    latency: Annotated[Path, typer.Option(help="This run's timings (not a DVC output).")] = Path(
        "reports/compression_latency.json"
    ),
) -> None:
    """Export the tuned model to ONNX, quantise where it pays, and measure both."""
    loaded = load_params(params)
    config = loaded.compress
    spec = DatasetSpec.read(raw / "schema.yaml")
    clean_report = read_json(cleaned, "clean")
    test_rows = read_stage_input(split / "test.parquet", "split")
    # The gate's metric, derived as evaluate derives it rather than read from its report:
    # compress then waits on no gate, and a gate setting (evaluate.min_improvement) does
    # not re-run the export.
    metric = primary_metric(spec.task, loaded.evaluate.primary_metric)

    from pipeline.models import load_model

    candidate = load_model(model)
    distill_rows = None
    if config.distill.student != "none":  # the student learns the teacher on train + val
        distill_rows = pd.concat(
            [
                read_stage_input(split / "train.parquet", "split"),
                read_stage_input(split / "val.parquet", "split"),
            ],
            ignore_index=True,
        )
    result = compress(
        candidate,
        folder_size(model),
        test_rows,
        spec.target,
        metric,
        config,
        distill_rows=distill_rows,
        seed=loaded.train.seed,
    )
    served = result.student or candidate
    with staged_directory(out) as staged:
        (staged / ONNX_FILE).write_bytes(result.onnx_bytes)
        described = served.describe()
        if result.student is not None:
            from pipeline.distill import DISTILLED_FROM, teacher_summary

            # Its native files beside its ONNX: serving times them, /explain and the
            # MLflow pyfunc load them (`pipeline.distill.student_folder`).
            result.student.learner.save(staged)
            described[DISTILLED_FROM] = teacher_summary(
                candidate, folder_digest(model), metric, result.native_score
            )
        meta = {
            **described,
            "onnx": {"file": ONNX_FILE, "quantized": result.quantized, "metric": metric},
            # Columns a request may carry for the log, so that a labelled production
            # row can become a training row again (`driftline` retraining on drift).
            "context": context_columns(spec, served.features.columns),
            # What clean does to a source row: serving applies it to each request, so a
            # client sends the row as the source has it (pipeline/rows.py).
            "rows": RowRules.fit(spec, loaded.clean, clean_report.get("fills")).to_dict(),
        }
        (staged / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    summary = result.report()
    write_json_atomic(report, summary)
    write_json_atomic(
        metrics,
        {
            "native_kb": round(result.sizes["native"] / 1024, 1),
            "onnx_kb": round(len(result.onnx_bytes) / 1024, 1),
            "quantized": result.quantized,
            "metric_drop": summary["metric_drop"],
        },
    )
    timings = result.latency_report()
    write_json_atomic(
        latency,
        {"batch_rows": config.latency_rows, "single_row_calls": config.latency_calls, **timings},
    )
    onnx, native = result.latency[timings["served"]], result.latency["native"]
    student, student_note = result.candidates.get("student"), ""
    if student is not None:
        scored = f"{metric} {student['score']:.5g}, " if "score" in student else ""
        student_note = (
            f"; {student['family']} student {'served' if student['kept'] else 'not kept'} "
            f"({scored}{student.get('size_bytes', 0) / 1024:.0f} KB)"
        )
    say(
        f"compress ({served.family}{', int8' if result.quantized else ''}"
        f"{', distilled student' if result.student is not None else ''}): "
        f"{result.sizes['native'] / 1024:.0f} KB -> {len(result.onnx_bytes) / 1024:.0f} KB; "
        f"{metric} {result.native_score:.5g} -> {result.onnx_score:.5g}; one row "
        f"{native.one_row_p50_ms:.3g} -> {onnx.one_row_p50_ms:.3g} ms, "
        f"{config.latency_rows} rows {native.batch_ms:.3g} -> {onnx.batch_ms:.3g} ms "
        f"(timings in {latency}){student_note} -> {out}"
    )


if __name__ == "__main__":
    run_command(main)
