"""POST /explain: TreeSHAP contributions that add up to an xgboost model's margin, the
permutation method's for torch and scikit-learn adding up to what /predict served, and
bad requests answered like /predict's (one clear 4xx, never a 5xx)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipeline.config import Schema, ServeConfig, TrainConfig
from pipeline.explain import explain_arrays, missing_row
from pipeline.models import TabularModel, fit_model, load_model
from pipeline.onnx_model import export_onnx
from pipeline.schema import DatasetSpec
from pipeline.serving import ServedModel, create_app, load_served_model
from pipeline.serving_explain import EXPLAIN_MAX_RECORDS

FAMILIES = {
    "xgboost": {"xgboost": {"n_estimators": 20, "n_jobs": 1}},
    "sklearn": {"sklearn": {"estimator": "linear"}},
    "torch": {"torch": {"max_epochs": 3}},
}


def frame(task: str, rows: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=rows), rng.normal(size=rows) * 10
    colour = rng.choice(["red", "blue", "green"], size=rows)
    signal = x + 0.1 * z + (colour == "red")
    if task == "regression":
        target: pd.Series = pd.Series(signal * 100 + 50, dtype=float)
    elif task == "multiclass":
        target = pd.Series(np.digitize(signal, [-0.5, 0.8]).astype(str), dtype=object)
    else:
        target = pd.Series(np.where(signal > 0.3, "yes", "no"), dtype=object)
    data = pd.DataFrame({"x": x, "z": z, "colour": colour, "y": target})
    data.loc[::7, "x"] = np.nan
    return data


def served_model(root: Path, family: str, task: str) -> ServedModel:
    """A compress-stage folder and the model's native folder beside it, loaded."""
    categorical = {"colour": {}, "y": {}} if task != "regression" else {"colour": {}}
    spec = DatasetSpec(target="y", task=task, schema=Schema(categorical=categorical))
    model = fit_model(
        frame(task),
        frame(task, seed=1),
        spec,
        TrainConfig(model=family, seed=0, **FAMILIES[family]),
    )
    folder, native = root / f"{family}-{task}", root / f"{family}-{task}-native"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(export_onnx(model))
    (folder / "model.json").write_text(json.dumps(model.describe()))
    model.save(native)
    return load_served_model(folder, f"{family}-{task}", native=native)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ServedModel]:
    root = tmp_path_factory.mktemp("explain")
    cases = [
        ("xgboost", "binary"),
        ("xgboost", "regression"),
        ("xgboost", "multiclass"),
        ("sklearn", "regression"),
        ("torch", "binary"),
    ]
    return {f"{family}-{task}": served_model(root, family, task) for family, task in cases}


def client(served: ServedModel, limits: ServeConfig | None = None) -> TestClient:
    return TestClient(create_app(lambda: served, limits=limits), raise_server_exceptions=False)


def records(count: int = 6, seed: int = 3) -> list[dict]:
    data = frame("binary", rows=count, seed=seed).drop(columns="y")
    found = [
        {"x": None if pd.isna(x) else float(x), "z": float(z), "colour": str(colour)}
        for x, z, colour in data.itertuples(index=False)
    ]
    if count > 1:
        found[1]["colour"] = "purple"  # a category train never saw: scored as missing
    return found


def margins(served: ServedModel, sent: list[dict]) -> np.ndarray:
    """The booster's own margin for the records, straight from xgboost."""
    native = load_model(served.native_folder)  # type: ignore[arg-type]
    prepared = native.features.prepare(pd.DataFrame(sent))
    matrix = native.features.encoded_matrix(prepared)
    return np.asarray(native.learner.booster.inplace_predict(matrix, predict_type="margin"))  # type: ignore[attr-defined]


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_xgboost_contributions_sum_to_the_margin(models: dict[str, ServedModel], task: str) -> None:
    served = models[f"xgboost-{task}"]
    sent = records()
    answer = client(served).post("/explain?top=1000", json={"records": sent})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["method"] == "tree_shap" and body["scale"].startswith("margin")
    expected = margins(served, sent).reshape(len(sent))
    for item, margin in zip(body["explanations"], expected, strict=True):
        total = item["base_value"] + sum(c["contribution"] for c in item["contributions"])
        assert item["rest"] == pytest.approx(0.0, abs=1e-9)  # every feature shown
        assert total == pytest.approx(margin, abs=1e-4, rel=1e-6)
        assert item["output"] == pytest.approx(margin, abs=1e-4, rel=1e-6)
        assert {c["feature"] for c in item["contributions"]} == {"x", "z", "colour"}
        if task == "binary":
            assert item["class"] == "yes"  # the positive class's log-odds
    assert "colour" in body["explanations"][1]["warnings"]
    # The native model was not kept for /predict's small batches: /explain loaded it.
    assert isinstance(served.explained, TabularModel)


def test_xgboost_multiclass_explains_the_predicted_class(
    models: dict[str, ServedModel],
) -> None:
    served = models["xgboost-multiclass"]
    sent = records()
    with client(served) as http:
        explained = http.post("/explain?top=3", json={"records": sent}).json()
        predicted = http.post("/predict", json={"records": sent}).json()["predictions"]
    native = load_model(served.native_folder)  # type: ignore[arg-type]
    prepared = native.features.prepare(pd.DataFrame(sent))
    margin = native.learner.booster.inplace_predict(  # type: ignore[attr-defined]
        native.features.encoded_matrix(prepared), predict_type="margin"
    )
    for position, (item, prediction) in enumerate(
        zip(explained["explanations"], predicted, strict=True)
    ):
        assert item["class"] == prediction["prediction"]
        code = native.classes.index(item["class"])
        total = (
            item["base_value"]
            + item["rest"]
            + sum(c["contribution"] for c in item["contributions"])
        )
        assert total == pytest.approx(margin[position, code], abs=1e-4)


@pytest.mark.parametrize("name", ["sklearn-regression", "torch-binary"])
def test_torch_and_sklearn_explanations_add_up_to_what_predict_served(
    models: dict[str, ServedModel], name: str
) -> None:
    served = models[name]
    sent = records()
    with client(served) as http:
        answer = http.post("/explain?top=2", json={"records": sent})
        predicted = http.post("/predict", json={"records": sent}).json()["predictions"]
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["method"] == "permutation"
    for item, prediction in zip(body["explanations"], predicted, strict=True):
        assert len(item["contributions"]) == 2  # the two largest of three
        sizes = [abs(c["contribution"]) for c in item["contributions"]]
        assert sizes == sorted(sizes, reverse=True) and max(sizes) > 0
        served_output = (
            prediction["probabilities"]["yes"]
            if "probabilities" in prediction
            else prediction["prediction"]
        )
        total = (
            item["base_value"]
            + item["rest"]
            + sum(c["contribution"] for c in item["contributions"])
        )
        assert total == pytest.approx(served_output, abs=1e-5)
        assert item["output"] == pytest.approx(served_output, abs=1e-5)


def test_a_feature_the_record_leaves_missing_contributes_nothing(
    models: dict[str, ServedModel],
) -> None:
    """Against the all-missing background, a gap is no change at all."""
    served = models["torch-binary"]
    arrays = served.features.record_arrays([{"x": None, "z": 3.0, "colour": "red"}])
    explanation = explain_arrays(served.model, arrays)
    by_feature = dict(zip(explanation.features, explanation.contributions[0], strict=True))
    assert by_feature["x"] == 0.0 and by_feature["z"] != 0.0
    base = explain_arrays(served.model, missing_row(served.features))
    assert np.allclose(base.contributions, 0.0) and base.output[0] == pytest.approx(base.base[0])


def test_without_its_native_folder_the_onnx_export_is_explained(
    models: dict[str, ServedModel],
) -> None:
    served = models["xgboost-binary"]
    alone = load_served_model(served.folder, "onnx-only")
    body = client(alone).post("/explain", json=records(1)[0]).json()
    assert body["method"] == "permutation" and body["scale"].startswith("probability")
    assert len(body["explanations"]) == 1 and body["explanations"][0]["contributions"]


def test_bad_requests_are_one_clear_4xx(models: dict[str, ServedModel]) -> None:
    http = client(models["xgboost-binary"])
    good = records(1)[0]
    unknown = http.post("/explain", json={**good, "colur": "red"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "colur"]
    assert http.post("/explain", content=b'{"x": NaN}').status_code == 422
    assert http.post("/explain?top=0", json=good).status_code == 422
    assert http.post("/explain?top=many", json=good).status_code == 422
    many = http.post("/explain", json={"records": [good] * (EXPLAIN_MAX_RECORDS + 1)})
    assert many.status_code == 413 and str(EXPLAIN_MAX_RECORDS) in many.json()["detail"]
    small = client(models["xgboost-binary"], ServeConfig(max_body_bytes=1024))
    assert small.post("/explain", json={"records": [good] * 30}).status_code == 413


def test_openapi_describes_explain(models: dict[str, ServedModel]) -> None:
    schema = client(models["xgboost-binary"]).get("/openapi.json").json()
    operation = schema["paths"]["/explain"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/PredictionRecord"} in body["oneOf"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["title"] == "ExplanationResponse"
    assert any(p["name"] == "top" for p in operation["parameters"])
