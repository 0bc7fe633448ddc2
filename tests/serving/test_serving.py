"""The prediction service: answers match the ONNX model, bad input is a 422 that names
the field, reloads swap versions without failing a request, polling picks up a new
version, and every answer reaches the prediction log."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipeline.config import Schema, ServeConfig, TrainConfig
from pipeline.models import fit_model
from pipeline.onnx_model import export_onnx
from pipeline.prediction_log import PredictionLog, read_predictions
from pipeline.schema import DatasetSpec
from pipeline.serving import (
    NATIVE_MARGIN,
    TIMED_BATCHES,
    ServedModel,
    create_app,
    load_served_model,
)

TOKEN = "s3cret"


def frame(task: str, rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=rows), rng.normal(size=rows) * 10
    colour = rng.choice(["red", "blue", "green"], size=rows)
    signal = x + 0.1 * z + (colour == "red")
    if task == "regression":
        target = pd.Series(signal * 100 + 50, dtype=float)
    else:
        target = pd.Series(np.where(signal > 0.3, "yes", "no"), dtype=object)
    data = pd.DataFrame({"x": x, "z": z, "colour": colour, "y": target})
    data.loc[::7, "x"] = np.nan
    return data


def write_model(folder: Path, task: str, seed: int = 0) -> Path:
    """A compress-stage folder: model.onnx and model.json."""
    schema = Schema(categorical={"colour": {}, "y": {}} if task != "regression" else {"colour": {}})
    spec = DatasetSpec(target="y", task=task, schema=schema)
    model = fit_model(
        frame(task, seed=seed),
        frame(task, seed=seed + 1),
        spec,
        TrainConfig(seed=seed, xgboost={"n_estimators": 20}),
    )
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(export_onnx(model))
    meta = {**model.describe(), "metrics": {"roc_auc": 0.9}, "data_version": "abc123"}
    (folder / "model.json").write_text(json.dumps(meta))
    model.save(folder.with_name(folder.name + "-native"))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "binary": write_model(root / "binary", "binary"),
        "binary2": write_model(root / "binary2", "binary", seed=5),
        "regression": write_model(root / "regression", "regression"),
    }


@pytest.fixture(scope="module")
def binary(folders: dict[str, Path]) -> ServedModel:
    return load_served_model(folders["binary"], "1")


def fixed(served: ServedModel) -> Callable[[], ServedModel]:
    return lambda: served


def rows(count: int = 5, seed: int = 3) -> list[dict]:
    data = frame("binary", rows=count, seed=seed).drop(columns="y")
    records = [
        {"x": None if pd.isna(x) else float(x), "z": float(z), "colour": str(colour)}
        for x, z, colour in data.itertuples(index=False)
    ]
    records[0]["colour"] = "purple"  # a category train never saw
    return records


def test_one_record_matches_the_onnx_model(binary: ServedModel) -> None:
    client = TestClient(create_app(fixed(binary)))
    record = {**rows(1)[0], "id": "req-1"}
    response = client.post("/predict", json=record)
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "1"
    [item] = body["predictions"]
    expected = binary.model.predict_raw(pd.DataFrame([rows(1)[0]]))[0]
    assert item["id"] == "req-1"
    assert item["prediction"] in {"no", "yes"}
    assert set(item["probabilities"]) == {"no", "yes"}
    assert item["probabilities"]["yes"] == pytest.approx(expected[1], rel=1e-6)
    assert sum(item["probabilities"].values()) == pytest.approx(1.0)


def test_a_batch_matches_the_onnx_model_and_gets_ids(binary: ServedModel) -> None:
    client = TestClient(create_app(fixed(binary)))
    records = rows(40)
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    expected = binary.model.predict(pd.DataFrame(records))
    assert [p["prediction"] for p in predictions] == list(expected)
    ids = [p["id"] for p in predictions]
    assert len(set(ids)) == 40 and all(ids)


def test_regression_returns_values_without_probabilities(folders: dict[str, Path]) -> None:
    served = load_served_model(folders["regression"], "r1")
    client = TestClient(create_app(fixed(served)))
    records = rows(10)
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    expected = served.model.predict(pd.DataFrame(records))
    assert [p["prediction"] for p in predictions] == pytest.approx(list(expected), rel=1e-6)
    assert "probabilities" not in predictions[0]


def test_loading_times_both_runtimes_and_keeps_native_only_where_faster(
    folders: dict[str, Path],
) -> None:
    folder = folders["regression"]
    served = load_served_model(folder, "r1", native=folder.with_name("regression-native"))
    timings = served.batch_ms
    assert list(timings) == list(TIMED_BATCHES)
    assert all(t["native"] > 0 and t["onnx"] > 0 for t in timings.values())
    # Native from the smallest size at which it is faster at every larger size timed.
    expected = None
    for size in reversed(TIMED_BATCHES):
        if timings[size]["native"] >= NATIVE_MARGIN * timings[size]["onnx"]:
            break
        expected = size
    assert served.native_from_rows == expected
    assert (served.native is not None) == (expected is not None)
    runtimes = TestClient(create_app(fixed(served))).get("/model").json()["runtimes"]
    assert runtimes["native_from_rows"] == expected
    assert list(runtimes["batch_ms"]) == [str(size) for size in TIMED_BATCHES]
    # The model folder says nothing about runtimes: that is this host's measurement.
    assert "serving" not in json.loads((folder / "model.json").read_text())


def test_large_batches_go_to_the_native_model_where_it_timed_faster(
    folders: dict[str, Path],
) -> None:
    from pipeline.models import load_model

    folder = folders["regression"]
    served = dataclasses.replace(
        load_served_model(folder, "r1"),
        native=load_model(folder.with_name("regression-native")),
        native_from_rows=8,
    )
    assert served.runtime(7) is served.model and served.runtime(8) is served.native
    client = TestClient(create_app(fixed(served)))
    records = rows(10)
    native = client.post("/predict", json={"records": records}).json()["predictions"]
    onnx = client.post("/predict", json={"records": records[:7]}).json()["predictions"]
    expected = served.native.predict(pd.DataFrame(records))
    assert [p["prediction"] for p in native] == pytest.approx(list(expected), rel=1e-9)
    assert [p["prediction"] for p in onnx] == pytest.approx(list(expected[:7]), rel=1e-5)
    # Without a native folder nothing is timed and ONNX serves every size.
    alone = load_served_model(folder, "r1")
    assert alone.native is None and alone.batch_ms == {} and alone.runtime(10_000) is alone.model


def test_a_native_model_that_cannot_load_leaves_onnx_serving(folders: dict[str, Path]) -> None:
    folder = folders["regression"]
    served = load_served_model(folder, "r1", native=folder.with_name("no-such-folder"))
    assert served.native is None and served.runtime(10_000) is served.model


def test_categories_as_numbers_or_booleans_are_accepted(binary: ServedModel) -> None:
    client = TestClient(create_app(fixed(binary)))
    records = [{"x": 1, "z": None, "colour": value} for value in (3, 2.5, True, None)]
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 4


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({"x": "abc", "z": 1.0, "colour": "red"}, ["body", "x"], "float_parsing"),
        ({"x": 1.0, "colour": "red"}, ["body", "z"], "missing"),
        ({"x": 1.0, "z": 1.0, "colour": "red", "size": 3}, ["body", "size"], "extra_forbidden"),
        ({"x": 1.0, "z": 1.0, "colour": ["red"]}, ["body", "colour"], None),
        (
            {
                "records": [
                    {"x": 1.0, "z": 1.0, "colour": "red"},
                    {"x": 1.0, "z": {}, "colour": "a"},
                ]
            },
            ["body", "records", 1, "z"],
            "float_type",
        ),
        ({"records": []}, ["body", "records"], "empty_batch"),
        ({"records": "nope"}, ["body", "records"], None),
        ([{"x": 1.0, "z": 1.0, "colour": "red"}], ["body"], None),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    binary: ServedModel, body: object, loc: list, kind: str | None
) -> None:
    client = TestClient(create_app(fixed(binary)))
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(error["loc"] == loc for error in errors), errors
    if kind is not None:
        assert any(error["type"] == kind for error in errors), errors


def test_invalid_json_is_a_422(binary: ServedModel) -> None:
    client = TestClient(create_app(fixed(binary)))
    response = client.post(
        "/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


def test_an_oversize_batch_is_refused_with_a_message(binary: ServedModel) -> None:
    client = TestClient(create_app(fixed(binary), limits=ServeConfig(max_batch=3)))
    response = client.post("/predict", json={"records": rows(4)})
    assert response.status_code == 413
    assert "at most 3" in response.json()["detail"]


def test_health_and_model_describe_the_served_version(binary: ServedModel) -> None:
    client = TestClient(create_app(fixed(binary)))
    assert client.get("/health").json() == {"status": "ok", "model_version": "1"}
    info = client.get("/model").json()
    assert info["model_version"] == "1"
    assert info["task"] == "binary" and info["family"] == "xgboost"
    assert info["target"] == "y"
    assert info["classes"] == ["no", "yes"]
    assert info["features"]["numeric"] == ["x", "z"]
    assert info["metrics"] == {"roc_auc": 0.9} and info["data_version"] == "abc123"


class Versions:
    """A model source whose version moves on at every load."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders
        self.loads = 0
        self.wanted = "v0"

    def __call__(self) -> ServedModel:
        version = self.wanted
        self.loads += 1
        folder = self.folders["binary" if self.loads % 2 else "binary2"]
        return load_served_model(folder, version)


def test_reload_needs_the_admin_token(folders: dict[str, Path]) -> None:
    source = Versions(folders)
    client = TestClient(create_app(source, admin_token=TOKEN))
    assert client.post("/admin/reload").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/admin/reload", headers=wrong).status_code == 403
    assert client.get("/health").json()["model_version"] == "v0"
    source.wanted = "v1"
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.json() == {"model_version": "v1", "previous_version": "v0"}
    assert client.get("/health").json()["model_version"] == "v1"


def test_reload_is_disabled_without_a_token(binary: ServedModel) -> None:
    client = TestClient(create_app(fixed(binary)))
    headers = {"Authorization": "Bearer anything"}
    assert client.post("/admin/reload", headers=headers).status_code == 404


def test_a_failed_reload_keeps_the_old_model(binary: ServedModel) -> None:
    calls = {"n": 0}

    def source() -> ServedModel:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("registry is down")
        return binary

    client = TestClient(create_app(source, admin_token=TOKEN))
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 500
    assert "registry is down" in response.json()["detail"]
    assert client.post("/predict", json=rows(1)[0]).status_code == 200


def test_requests_in_flight_all_succeed_across_reloads(folders: dict[str, Path]) -> None:
    source = Versions(folders)
    app = create_app(source, admin_token=TOKEN)
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()
    body = {"records": rows(20)}

    with TestClient(app) as client:

        def hammer() -> None:
            while not stop.is_set():
                response = client.post("/predict", json=body)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["model_version"])

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for thread in threads:
            thread.start()
        for number in range(1, 5):
            source.wanted = f"v{number}"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            assert client.post("/admin/reload", headers=headers).status_code == 200
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses and set(statuses) == {200}
    assert len(versions) >= 2


def test_polling_picks_up_a_new_version(folders: dict[str, Path]) -> None:
    source = Versions(folders)
    broken = {"now": False}

    def current_version() -> str:
        if broken["now"]:
            raise ConnectionError("registry unreachable")
        return source.wanted

    app = create_app(source, poll_seconds=0.05, current_version=current_version)
    with TestClient(app) as client:
        assert client.get("/health").json()["model_version"] == "v0"
        broken["now"] = True
        time.sleep(0.2)  # a failing poll keeps the old model
        assert client.get("/health").json()["model_version"] == "v0"
        broken["now"] = False
        source.wanted = "v7"
        deadline = time.monotonic() + 60  # a safety net for a busy machine
        while client.get("/health").json()["model_version"] != "v7":
            assert time.monotonic() < deadline, "the poll never reloaded"
            time.sleep(0.05)
        assert client.post("/predict", json=rows(1)[0]).json()["model_version"] == "v7"


def test_every_prediction_reaches_the_log(binary: ServedModel, tmp_path: Path) -> None:
    log = PredictionLog.parquet(tmp_path / "log", flush_seconds=60)
    client = TestClient(create_app(fixed(binary), log=log))
    records = rows(3)
    records[1]["id"] = "known"
    response = client.post("/predict", json={"records": records})
    client.post("/predict", json={"x": None, "z": 2.0, "colour": 4, "id": "single"})
    log.close()
    logged = read_predictions(tmp_path / "log")
    answers = response.json()["predictions"]
    assert list(logged["request_id"]) == [a["id"] for a in answers] + ["single"]
    assert list(logged["prediction"][:3]) == [a["prediction"] for a in answers]
    assert set(logged["model_version"]) == {"1"}
    assert logged.loc[3, "feature.colour"] == "4"
    assert pd.isna(logged.loc[3, "feature.x"])
    assert json.loads(logged.loc[0, "probabilities"]) == answers[0]["probabilities"]
    assert logged["timestamp"].dt.tz is not None
    # rows() makes the first colour one train never saw: scored as missing, said, counted.
    assert "was not seen in training" in answers[0]["warnings"]["colour"]
    assert json.loads(logged.loc[0, "flags"]) == {"colour": "unknown_category"}
    assert logged["unknown_categories"].tolist() == [1, 0, 0, 1]  # "4" is unseen too
    assert pd.isna(logged.loc[1, "flags"]) and logged["out_of_range"].sum() == 0


def test_an_older_sql_log_gains_the_columns_a_newer_row_brings(
    binary: ServedModel, tmp_path: Path
) -> None:
    """A table written before `flags` existed, or by a model with other features."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    old = pd.DataFrame({"request_id": ["a"], "timestamp": [pd.Timestamp.now(tz="UTC")]})
    old.to_sql("predictions", url, index=False)
    log = PredictionLog.sql(url, flush_seconds=60)
    client = TestClient(create_app(fixed(binary), log=log))
    assert client.post("/predict", json=rows(1)[0]).status_code == 200
    log.close()
    logged = read_predictions(url)
    assert len(logged) == 2 and logged.loc[1, "unknown_categories"] == 1
    assert logged.loc[1, "feature.colour"] == "purple"


def test_key_and_time_may_ride_along_for_the_log(folders: dict[str, Path], tmp_path: Path) -> None:
    """Context columns (compress lists the data set's key and time) are optional, never
    scored, and logged, so that labelled traffic can become training rows again."""
    base = load_served_model(folders["binary"], "1")
    served = load_served_model_with_context(folders["binary"], tmp_path, ["instant", "dteday"])
    log = PredictionLog.parquet(tmp_path / "log", flush_seconds=60)
    client = TestClient(create_app(fixed(served), log=log))
    with_context = {**rows(1)[0], "instant": 17380, "dteday": "2012-06-01"}
    plain = rows(2)[1]
    response = client.post("/predict", json={"records": [with_context, plain]})
    assert response.status_code == 200
    expected = base.model.predict(pd.DataFrame([rows(1)[0], plain]))
    assert [p["prediction"] for p in response.json()["predictions"]] == list(expected)
    extra = client.post("/predict", json={**plain, "weather": "sunny"})
    assert extra.status_code == 422 and extra.json()["detail"][0]["loc"] == ["body", "weather"]
    log.close()
    logged = read_predictions(tmp_path / "log")
    assert logged["context.instant"].tolist() == ["17380", None]
    assert logged["context.dteday"].tolist() == ["2012-06-01", None]


def load_served_model_with_context(folder: Path, tmp_path: Path, context: list[str]) -> ServedModel:
    copy = tmp_path / "with-context"
    copy.mkdir()
    (copy / "model.onnx").write_bytes((folder / "model.onnx").read_bytes())
    meta = json.loads((folder / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**meta, "context": context}))
    return load_served_model(copy, "1")
