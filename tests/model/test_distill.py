"""compress.distill: a small student beside the tuned model's exports, served only when
it scores within compress.max_metric_drop of it, and the same bytes for the same params."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from pipeline.config import DataConfig, DistillConfig, load_params
from pipeline.distill import distill, is_distilled
from pipeline.models import fit_model, load_model
from pipeline.onnx_model import OnnxModel, export_onnx
from pipeline.schema import resolve_spec
from pipeline.stages.compress import stable_onnx
from tests.conftest import FIXTURES, REPO, Project
from tests.model.test_model_stages import MODEL_STAGES, read
from tests.unit.test_bad_input import assert_one_clear_line

# The teacher and the student each family's test pairs: the cheap student of each kind.
CASES = [
    ("xgboost", {"n_estimators": 60}, {"student": "xgboost", "n_estimators": 30}),
    ("torch", {"max_epochs": 2}, {"student": "mlp", "epochs": 5}),
]
# A student that cannot keep the teacher's score: one stump, or one epoch of one unit.
WEAK = {"xgboost": {"n_estimators": 1, "max_depth": 1}, "mlp": {"epochs": 1, "hidden_sizes": [1]}}


def _compress(project: Project, max_metric_drop: float, distill_params: dict) -> dict:
    params = project.params()
    params["compress"].update(max_metric_drop=max_metric_drop, distill=distill_params)
    project.write_params(params)
    project.run_stages("compress")
    return read(project, "reports/compression.json")


@pytest.mark.parametrize(("family", "teacher", "student"), CASES, ids=[c[0] for c in CASES])
def test_student_beside_the_exports_kept_only_within_tolerance(
    produced: Project, family: str, teacher: dict, student: dict
) -> None:
    project = produced
    params = project.params()
    params["train"]["model"] = family
    params["train"][family].update(teacher)
    params["tune"].update(n_trials=0)
    params["evaluate"]["floors"] = {}
    project.write_params(params)
    project.run_stages(*MODEL_STAGES[:2])  # compress reads tune's model, not the gate
    folder = project.root / "models/compressed"

    # Within a generous tolerance: the student is served, and says what it came from.
    report = _compress(project, 10.0, student)
    entry = report["candidates"]["student"]
    assert entry["kept"] and report["served"] == "student"
    assert {"score", "metric_drop", "size_bytes", "family", "params"} <= set(entry)
    assert entry["family"] == family  # mlp students are the torch family
    assert report["size_bytes"]["student"] == entry["size_bytes"] > 0
    assert report["size_bytes"]["onnx"] > 0
    if family == "torch":
        assert "int8" in report["candidates"]
    assert report["onnx_score"] == report["scores"]["student"] == entry["score"]
    assert set(report["scores"]) == set(report["size_bytes"])  # side by side
    latency = read(project, "reports/compression_latency.json")
    assert latency["served"] == "student"
    assert set(latency["latency_ms"]) >= {"native", "onnx", "student"}
    assert latency["latency_ms"]["student"]["batch_ms"] > 0
    meta = json.loads((folder / "model.json").read_text())
    assert meta["distilled_from"]["family"] == family
    assert meta["threshold"] == load_model(project.root / "models/tuned").threshold
    assert is_distilled(folder)
    # The native student beside its ONNX (what serving times and the pyfunc loads).
    native = load_model(folder)
    served = OnnxModel.from_model(native, (folder / "model.onnx").read_bytes())
    test = pd.read_parquet(project.root / "data/split/test.parquet")
    np.testing.assert_allclose(served.predict_raw(test), native.predict_raw(test), atol=1e-4)
    if family == "xgboost":  # the MLP student's bytes: test_students_learn_...
        first = (folder / "model.onnx").read_bytes()
        _compress(project, 10.0, student)
        assert (folder / "model.onnx").read_bytes() == first  # same params, same bytes

    # Beyond the tolerance: reported beside the others, and the teacher's export served.
    weak = {**student, **WEAK[student["student"]]}
    report = _compress(project, 0.05, weak)
    entry = report["candidates"]["student"]
    assert not entry["kept"] and entry["metric_drop"] > 0.05
    assert report["served"] in ("onnx", "onnx_int8")
    assert not is_distilled(folder)
    assert {path.name for path in folder.iterdir()} == {"model.onnx", "model.json"}
    teacher_model = load_model(project.root / "models/tuned")
    exported = export_onnx(teacher_model)
    if not report["quantized"]:
        graph = OnnxModel.from_model(teacher_model, (folder / "model.onnx").read_bytes())
        reference = OnnxModel.from_model(teacher_model, exported)
        np.testing.assert_array_equal(graph.predict_raw(test), reference.predict_raw(test))


def test_a_bad_distill_setting_names_its_key(produced: Project) -> None:
    produced.update("compress", distill={"student": "forest"})
    result = produced.run("compress")
    assert result.exit_code == 2
    assert_one_clear_line(result.stderr, "compress.distill.student")


@pytest.fixture(scope="module")
def bank_parts() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, DataConfig]:
    params = load_params(REPO / "examples" / "bank_marketing.params.yaml")
    frame = pd.read_csv(FIXTURES / "bank_marketing_3000.csv", sep=";").drop(columns=["duration"])
    rest, test = train_test_split(frame, test_size=0.3, random_state=0)
    train, val = train_test_split(rest, test_size=0.25, random_state=0)
    return train, val, test.reset_index(drop=True), params


@pytest.mark.parametrize("target", ["y", "marital"], ids=["binary", "multiclass"])
@pytest.mark.parametrize("student", ["xgboost", "mlp"])
def test_students_learn_the_teachers_probabilities(bank_parts, target: str, student: str) -> None:
    """Soft targets for both tasks and both kinds: the student's probabilities follow the
    teacher's far better than a constant does, with its classes and threshold."""
    train, val, test, params = bank_parts
    data = params.data.model_copy(update={"target": target, "task": None, "schema_": None})
    frame = pd.concat([train, val], ignore_index=True)
    spec = resolve_spec(frame, data)
    small = params.train.xgboost.model_copy(update={"n_estimators": 40})
    teacher = fit_model(train, val, spec, params.train.model_copy(update={"xgboost": small}))
    config = DistillConfig(student=student, n_estimators=40, epochs=40)
    fitted = distill(teacher, frame, config, seed=7).model
    assert fitted.classes == teacher.classes and fitted.threshold == teacher.threshold
    assert fitted.calibrator is None
    wanted, got = teacher.predict_raw(test), fitted.predict_raw(test)
    assert got.shape == wanted.shape
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    constant = np.abs(wanted - wanted.mean(axis=0)).mean()
    assert np.abs(got - wanted).mean() < 0.6 * constant
    again = distill(teacher, frame, config, seed=7).model
    np.testing.assert_array_equal(again.predict_raw(test), got)  # seeded
    if student == "mlp" and target == "y":  # same params, same ONNX bytes
        assert stable_onnx(export_onnx(again), "s") == stable_onnx(export_onnx(fitted), "s")
