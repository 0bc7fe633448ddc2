"""Nothing a client sends gets a 5xx: a corpus of over 300 malformed requests (invalid
JSON, NaN and Infinity, lone surrogates, huge numbers, long strings, deep nesting,
wrong types, 10,001 records, 50 MB bodies, seeded garbage), then schemathesis driven
by the app's own /openapi.json. The docs page loads its assets from the app."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from pipeline.config import CleanConfig, Schema, ServeConfig, TrainConfig
from pipeline.models import fit_model
from pipeline.onnx_model import export_onnx
from pipeline.rows import RowRules
from pipeline.schema import DatasetSpec
from pipeline.serving import ServedModel, create_app, load_served_model

FIELDS = ("x", "colour", "day", "id")
LIMITS = ServeConfig(max_body_bytes=1024 * 1024, max_batch=10_000)


def training_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, size=rows)
    colour = rng.choice(["red", "blue"], size=rows)
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, rows), unit="D")
    day_of_year = days.dayofyear.to_numpy()
    signal = x / 10 + (colour == "red") + np.sin(day_of_year / 58)
    target = np.where(signal > 1.0, "yes", "no")
    return pd.DataFrame(
        {"x": x, "colour": colour, "day_dayofyear": day_of_year.astype(float), "y": target}
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    """A binary model whose requests are source rows: `day` is a date, from which the
    model's `day_dayofyear` is derived; `x` has a range, `colour` a category list."""
    schema = Schema(
        numeric={"x": {"min": 0, "max": 10}},
        categorical={"colour": {"values": ["red", "blue"]}, "y": {}},
        datetime={"day": {"format": "%Y-%m-%d"}},
    )
    spec = DatasetSpec(target="y", task="binary", schema=schema)
    model = fit_model(
        training_frame(400, 0),
        training_frame(200, 1),
        spec,
        TrainConfig(seed=0, xgboost={"n_estimators": 20, "n_jobs": 1}),
    )
    folder = tmp_path_factory.mktemp("hostile") / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(export_onnx(model))
    rules = RowRules.fit(spec, CleanConfig(calendar_features={"day": ["dayofyear"]}))
    meta = {**model.describe(), "rows": rules.to_dict(), "context": ["day"]}
    (folder / "model.json").write_text(json.dumps(meta))
    return load_served_model(folder, "1")


@pytest.fixture(scope="module")
def client(served: ServedModel) -> TestClient:
    return TestClient(create_app(lambda: served, limits=LIMITS), raise_server_exceptions=False)


GOOD = {"x": 3.5, "colour": "red", "day": "2024-03-01"}


def hostile_bodies() -> list[tuple[str, bytes]]:
    """(kind, raw body) pairs, over 300, none of them a valid request."""
    bodies: list[tuple[str, bytes]] = []

    def add(kind: str, body: Any) -> None:
        raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
        bodies.append((kind, raw))

    # Invalid JSON.
    for text in [
        "",
        " ",
        "{",
        "}",
        "[",
        '{"x": 1,}',
        "{'x': 1}",
        '{"x": 1 "colour": "red"}',
        '{"x": }',
        '{"x": 01}',
        '{"x": 1.}',
        '{"x": .5}',
        '{"x": +1}',
        '{"x": 0x10}',
        '{"x": tru}',
        '{"x": undefined}',
        "nul",
        '"unterminated',
        '{"x": "\\q"}',
        '{"x": "\\u12"}',
        "{}{}",
        '{"records": [}',
        '{"records": [{"x": 1},]}',
        "\ufeff{}",
        "// comment\n{}",
        '{"x": 1} trailing',
    ]:
        add("invalid json", text)
    for raw in [b"\xff\xfe{}", b'{"x": "\xc3"}', b"\x00\x01\x02", b'{"colour": "\xed\xa0\x80"}']:
        add("invalid utf-8", raw)
    # Non-standard constants, in every field and in a batch.
    for constant in ("NaN", "Infinity", "-Infinity"):
        for field in FIELDS:
            add(
                "constant",
                f'{{"x": 1, "colour": "red", "day": "2024-01-01", "{field}": {constant}}}',
            )
        add("constant", f'{{"records": [{{"x": {constant}, "colour": "red", "day": null}}]}}')
        add("constant", constant)
    # Lone surrogates in values, keys, ids, batches.
    for surrogate in ("\\ud800", "\\udfff", "\\udbff\\udbff", "a\\ud800b"):
        for field in FIELDS:
            add("surrogate", f'{{"x": 1, "colour": "red", "day": null, "{field}": "{surrogate}"}}')
        add("surrogate", f'{{"{surrogate}": 1, "x": 1, "colour": "red", "day": null}}')
        add("surrogate", f'{{"records": [{{"x": 1, "colour": "{surrogate}", "day": null}}]}}')
    # Huge numbers.
    for number in ("1e400", "-1e400", "1e309", "9" * 400, "-" + "9" * 400, "9" * 5000, "1e-400"):
        for field in ("x", "colour", "id"):
            add("huge number", f'{{"x": 1, "colour": "red", "day": null, "{field}": {number}}}')
    # Long strings.
    for length in (1001, 100_000, 900_000):
        for field in ("colour", "day", "id", "x"):
            add("long string", json.dumps({**GOOD, field: "a" * length}))
        add("long key", json.dumps({**GOOD, "k" * length: 1}))
    # Deep nesting.
    for depth in (5, 50, 1000, 100_000):
        add("deep list", "[" * depth + "]" * depth)
        add("deep object", '{"a":' * depth + "1" + "}" * depth)
        add(
            "deep field",
            json.dumps({**GOOD, "x": None})[:-1] + ', "colour": ' + "[" * depth + "]" * depth + "}",
        )
    # Wrong types, field by field.
    wrong_values = [[], {}, [1], {"a": 1}, True, "ten", "", " ", "2024-13-45", [None], {"": ""}]
    for field in ("x", "colour", "day", "id"):
        for value in wrong_values:
            add("wrong type", json.dumps({**GOOD, field: value}))
    # Wrong shapes.
    for body in [
        [],
        [GOOD],
        "record",
        42,
        None,
        True,
        {"records": GOOD},
        {"records": []},
        {"records": None},
        {"records": [1, 2]},
        {"records": [[GOOD]]},
        {"records": [GOOD], "x": 1},
        {"records": "[]"},
        {},
        {"x": 1},
        {**GOOD, "unknown": 1},
        {"X": 1, "colour": "red", "day": None},
    ]:
        add("wrong shape", json.dumps(body))
    # Too much.
    add("too many records", json.dumps({"records": [GOOD] * 10_001}))
    add(
        "50 MB body",
        b'{"records": [' + b'{"x": 1, "colour": "red", "day": null},' * 1_300_000 + b"{}]}",
    )
    # Seeded garbage: random bytes, and valid requests with one byte changed.
    rng = random.Random(15)
    valid = json.dumps({"records": [GOOD, {**GOOD, "x": None}]}).encode()
    for _ in range(60):
        add("garbage", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
    for _ in range(60):
        position = rng.randrange(len(valid))
        add("mutated", valid[:position] + bytes([rng.randrange(256)]) + valid[position + 1 :])
    return bodies


def test_no_malformed_request_gets_a_server_error(client: TestClient) -> None:
    bodies = hostile_bodies()
    assert len(bodies) >= 300
    statuses: Counter[int] = Counter()
    failures = []
    for kind, raw in bodies:
        response = client.post(
            "/predict", content=raw, headers={"Content-Type": "application/json"}
        )
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            failures.append((kind, raw[:80], response.text[:200]))
        else:
            json.loads(response.text)  # every answer is JSON that parses
    assert not failures, failures[:5]
    assert statuses[413] == 2  # 10,001 records; 50 MB
    assert set(statuses) <= {200, 413, 422}
    # The mutated bodies that still parse and validate are scored; everything else is refused.
    assert statuses[422] > 250


def test_refusals_name_the_problem_and_echo_nothing_unencodable(client: TestClient) -> None:
    nan = client.post("/predict", content=b'{"x": NaN, "colour": "red", "day": null}')
    assert nan.status_code == 422 and "NaN is not a JSON value" in nan.text
    huge = client.post("/predict", content=b'{"x": 1e400, "colour": "red", "day": null}')
    assert huge.status_code == 422 and "too large" in huge.text
    surrogate = client.post("/predict", content=b'{"x": 1, "colour": "\\ud800", "day": null}')
    assert surrogate.status_code == 422 and "surrogate" in surrogate.text
    long = client.post("/predict", json={**GOOD, "colour": "a" * 5000})
    assert long.status_code == 422 and "at most 1000" in long.text and "aaaa" * 50 not in long.text
    deep = client.post("/predict", content=b'{"records": [{"x": [[[1]]]}]}')
    assert deep.status_code == 422 and "nested deeper than 4" in deep.text
    large = client.post("/predict", content=b" " * (LIMITS.max_body_bytes + 1))
    assert large.status_code == 413
    # Without a Content-Length (chunked): counted as it streams in.
    chunks = iter([b" " * 600_000, b" " * 600_000])
    streamed = client.post("/predict", content=chunks)
    assert streamed.status_code == 413 and "over" in streamed.text
    # The model takes float32: a larger number would reach it as infinity.
    beyond = client.post("/predict", content=b'{"x": 1e39, "colour": "red", "day": null}')
    assert beyond.status_code == 422 and "too large for the model" in beyond.text


def test_requests_of_one_loop_turn_are_scored_in_one_call(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TurnBatcher: every request that reaches the loop in a turn is scored in one
    model call, each gets its own answers, and a reload within the turn keeps each
    request on the model it took."""
    import asyncio
    import dataclasses

    from pipeline import serving

    calls: list[int] = []
    score = serving.score_records

    def counted(model: ServedModel, records: list) -> serving.Scored:
        calls.append(len(records))
        return score(model, records)

    monkeypatch.setattr(serving, "score_records", counted)
    reloaded = dataclasses.replace(served, version="2")
    bodies = [{**GOOD, "x": float(x), "id": f"r{x}"} for x in range(6)]
    taken = [served, served, served, reloaded, served, reloaded]
    parsed = [
        serving.parse_request(body, model, LIMITS).records
        for body, model in zip(bodies, taken, strict=True)
    ]

    async def turn() -> list[serving.Scored]:
        batcher = serving.TurnBatcher()
        return await asyncio.gather(
            *(batcher.score(m, r) for m, r in zip(taken, parsed, strict=True))
        )

    answers = asyncio.run(turn())
    assert sorted(calls) == [2, 4]  # one call per model, not one per request
    alone = [score(m, r) for m, r in zip(taken, parsed, strict=True)]
    for got, expected, model in zip(answers, alone, taken, strict=True):
        assert [p["id"] for p in got.predictions] == [p["id"] for p in expected.predictions]
        # float32 scores of a row alone and among others differ in the last bits only
        got_p, expected_p = (
            got.predictions[0]["probabilities"],
            expected.predictions[0]["probabilities"],
        )
        assert got_p == pytest.approx(expected_p, abs=1e-6)
        assert got.log_rows[0]["model_version"] == model.version


def test_the_docs_render_from_local_assets(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "cdn" not in page.lower()
    assert "/docs-assets/swagger-ui-bundle.js" in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        assert client.get(f"/docs-assets/{asset}").status_code == 200
    assert "/docs-assets/redoc.standalone.js" in client.get("/redoc").text


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_schemathesis_finds_no_server_error(served: ServedModel, mode: GenerationMode) -> None:
    """Generated from /openapi.json, for every operation: bodies that match it
    (positive) and bodies that do not (negative). None gets a 5xx, and every 2xx answer
    matches its schema. (Schemathesis's pytest plugin does not load under pytest 9, so
    its strategies drive Hypothesis here directly.)"""
    app = create_app(lambda: served, limits=LIMITS)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("POST", "/predict")}
    if mode is GenerationMode.NEGATIVE:  # only a body can be wrong in ways that matter
        operations = [op for op in operations if "requestBody" in op.definition.raw]
    calls: Counter[int] = Counter()

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=60,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            calls[response.status_code // 100] += 1
            assert response.status_code < 500, (case.path, case.body, response.text[:200])
            if response.status_code < 300:
                case.validate_response(response)

        check()
    assert calls[5] == 0 and sum(calls.values()) >= 60
