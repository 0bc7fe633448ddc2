"""The prediction service: a FastAPI app over the compressed ONNX model.

`load_served_model` reads a folder written by the compress stage (`model.onnx` and
`model.json`, never a pickle) and builds, from the model's `FeatureSpec`, the pydantic
model one request record must match: every feature is required but nullable (null
means missing), categoricals take text, numbers or booleans, unknown fields are
refused, and `id` optionally names the request.

Given the model's native folder as well, it times both runtimes on a few seeded batches
(about 50 calls; well under a second) and keeps the native model for the batch sizes
where it measured faster on this host (xgboost on large batches, with all its threads).
That is a property of the serving machine and its load, so it is measured here, each
time a model is loaded, and never stored with the model.

`create_app` serves it. The current `ServedModel` lives in one attribute that a reload
replaces with a single assignment; a request takes the reference once when it starts,
so a reload never fails a request in flight.
"""

import asyncio
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from pipeline.errors import DataError
from pipeline.features import FeatureArrays, FeatureSpec, category_value

if TYPE_CHECKING:
    from fastapi import FastAPI

    from pipeline.models import TabularModel
    from pipeline.onnx_model import OnnxModel
    from pipeline.prediction_log import PredictionLog

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
META_FILE = "model.json"
MAX_BATCH = 10_000
INLINE_RECORDS = 32  # batches up to this size are scored on the event loop
REQUEST_ID = "id"
CategoryInput = str | int | float | bool | None
# Batch sizes at which the two runtimes are timed when a model is loaded, and the timed
# calls per runtime and size (after one warm-up): the median of 5 is steady enough to
# tell runtimes apart that differ twofold, as they do where the switch matters.
TIMED_BATCHES = (1, 16, 128, 1024)
TIMED_CALLS = 5
# Native scores a batch size only when it takes less than this share of ONNX's time.
NATIVE_MARGIN = 0.8


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version and the request record its features call for.

    `native` is the model in its training library, kept only when it measured faster
    than ONNX, on this host at load time, for batches of `native_from_rows` rows or more;
    `batch_ms` holds those timings ({} when there was no native model to time).
    """

    version: str
    folder: Path
    model: "OnnxModel"
    meta: dict[str, Any]
    record_model: type[BaseModel]
    records: TypeAdapter[list[Any]] = field(repr=False)
    native: "TabularModel | None" = None
    native_from_rows: int | None = None
    batch_ms: dict[int, dict[str, float]] = field(default_factory=dict, repr=False)

    @property
    def features(self) -> FeatureSpec:
        return self.model.features

    @property
    def context(self) -> tuple[str, ...]:
        """The non-feature columns a request may carry for the log (key, time)."""
        columns = self.features.columns
        return tuple(c for c in self.meta.get("context") or () if c not in columns)

    def runtime(self, rows: int) -> "OnnxModel | TabularModel":
        """The faster runtime for a batch of `rows`, as measured when it was loaded."""
        if self.native is not None and self.native_from_rows and rows >= self.native_from_rows:
            return self.native
        return self.model


def record_model(features: FeatureSpec, context: tuple[str, ...] = ()) -> type[BaseModel]:
    """The pydantic model of one request record. Field names are positional and the
    feature names are aliases, so a feature may be called anything (`json`, `1st`).

    `context` names the data set's columns that are not features but that a labelled
    production row needs to become training data again (its key and time): optional,
    logged, never scored."""
    fields: dict[str, Any] = {}
    for position, name in enumerate(features.numeric):
        fields[f"numeric_{position}"] = (float | None, Field(alias=name))
    for position, name in enumerate(features.categorical):
        fields[f"categorical_{position}"] = (CategoryInput, Field(alias=name))
    for position, name in enumerate(c for c in context if c not in features.columns):
        fields[f"context_{position}"] = (CategoryInput, Field(default=None, alias=name))
    if REQUEST_ID not in features.columns:
        fields["request_id"] = (str | int | None, Field(default=None, alias=REQUEST_ID))
    return create_model(  # type: ignore[call-overload, no-any-return]
        "PredictionRecord", __config__=ConfigDict(extra="forbid"), **fields
    )


def load_served_model(folder: Path, version: str, native: Path | None = None) -> ServedModel:
    """The model in a compress-stage folder, ready to score; `native` is the model's
    own folder, kept for the batch sizes where it times faster here (`choose_runtime`)."""
    from pipeline.onnx_model import OnnxModel

    folder = Path(folder)
    onnx_path, meta_path = folder / ONNX_FILE, folder / META_FILE
    for path in (onnx_path, meta_path):
        if not path.exists():
            raise DataError(f"{folder} holds no served model ({path.name} missing): run compress")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        features = FeatureSpec.from_dict(meta["features"])
        family, task, classes = meta["family"], meta["task"], meta["classes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_path}: not a model description ({exc})") from exc
    model = OnnxModel(
        onnx_path.read_bytes(),
        features,
        family,
        task,
        classes,
        meta.get("threshold"),
        # Requests are a row or a few: a thread pool per call costs more CPU than it saves
        # (bench.serve: 301 against 208 req/s at 16 clients on 2 cores).
        intra_op_num_threads=1,
    )
    context = tuple(meta.get("context") or ())
    record = record_model(features, context)
    native_model, choice = None, RuntimeChoice(None, {})
    if native is not None:
        choice, native_model = _timed_native(native, model, version)
    return ServedModel(
        version=str(version),
        folder=folder,
        model=model,
        meta=meta,
        record_model=record,
        records=TypeAdapter(list[record]),  # type: ignore[valid-type]
        native=native_model,
        native_from_rows=choice.native_from_rows if native_model is not None else None,
        batch_ms=choice.batch_ms,
    )


@dataclass(frozen=True)
class RuntimeChoice:
    """From which batch size the native model scores faster than ONNX (None: never),
    and the median milliseconds of each runtime per batch size."""

    native_from_rows: int | None
    batch_ms: dict[int, dict[str, float]]


def _timed_native(
    folder: Path, served: "OnnxModel", version: str
) -> tuple[RuntimeChoice, "TabularModel | None"]:
    """The native model, when it loads here and times faster for some batch sizes."""
    try:
        from pipeline.models import load_model  # xgboost, skops or torch weights: no pickle

        native = load_model(folder)
    except Exception as exc:  # a serving host may lack the training library: ONNX serves
        logger.warning("serving: v%s native model not loaded, ONNX serves all: %s", version, exc)
        return RuntimeChoice(None, {}), None
    try:
        choice = choose_runtime(native, served)
    except Exception as exc:  # a native model that cannot score stand-in rows: ONNX serves
        logger.warning("serving: v%s native model not timed, ONNX serves all: %s", version, exc)
        return RuntimeChoice(None, {}), None
    if choice.native_from_rows is None:
        logger.info("serving: v%s ONNX is as fast at every batch size timed", version)
        return choice, None
    logger.info(
        "serving: v%s native model faster from %d rows a batch", version, choice.native_from_rows
    )
    return choice, native


def choose_runtime(
    native: "TabularModel",
    served: "OnnxModel",
    sizes: tuple[int, ...] = TIMED_BATCHES,
    calls: int = TIMED_CALLS,
) -> RuntimeChoice:
    """Time both runtimes on seeded batches of growing size, inputs prepared as requests
    arrive: native from the smallest size at which it is faster at every larger size
    timed (and beyond the largest), by NATIVE_MARGIN."""
    timings: dict[int, dict[str, float]] = {}
    for size in sizes:
        arrays = timing_arrays(served.features, size, seed=size)
        timings[size] = {
            "native": _median_ms(native.predict_arrays, arrays, calls),
            "onnx": _median_ms(served.predict_arrays, arrays, calls),
        }
    native_from = None
    for size in reversed(sizes):
        # Clearly faster, not by a few calls' noise (a lucky reading at 1 row would send
        # single requests to a multi-threaded native model).
        if timings[size]["native"] >= NATIVE_MARGIN * timings[size]["onnx"]:
            break
        native_from = size
    return RuntimeChoice(native_from, timings)


def timing_arrays(features: FeatureSpec, rows: int, seed: int) -> FeatureArrays:
    """Seeded stand-in rows to time a model on: numerics standard normal with a tenth
    missing, categories drawn from train's, with gaps."""
    rng = np.random.default_rng(seed)
    numeric = rng.standard_normal((rows, len(features.numeric))).astype(np.float32)
    numeric[rng.random(numeric.shape) < 0.1] = np.nan
    codes = np.zeros((rows, len(features.categorical)), dtype=np.int64)
    texts = []
    for position, column in enumerate(features.categorical):
        known = features.categories.get(column, ())
        codes[:, position] = rng.integers(0, len(known) + 1, size=rows)
        texts.append(np.array([None, *known], dtype=object)[codes[:, position]])
    return FeatureArrays(numeric, codes, tuple(texts))


def _median_ms(predict: Callable[[FeatureArrays], Any], arrays: FeatureArrays, calls: int) -> float:
    predict(arrays)  # warm-up: first calls allocate
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        predict(arrays)
        timings.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(timings)), 4)


class ModelHolder:
    """The model being served. Reads take the reference without a lock; reloads are
    serialised and end in one reference assignment."""

    def __init__(self, served: ServedModel) -> None:
        self._served = served
        self._reload_lock = threading.Lock()

    @property
    def current(self) -> ServedModel:
        return self._served

    def reload(self, source: Callable[[], ServedModel]) -> ServedModel:
        with self._reload_lock:
            served = source()
            self._served = served
            return served


class RequestError(Exception):
    """A request that cannot be scored: an HTTP status and FastAPI-style detail."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ParsedRequest:
    records: list[BaseModel]
    batch: bool


def parse_request(body: Any, served: ServedModel, max_batch: int) -> ParsedRequest:
    """One record (an object) or `{"records": [...]}`, validated against the model's
    features. Errors name the record index and the field."""
    is_batch = isinstance(body, dict) and set(body) == {"records"}
    if is_batch:
        raw = body["records"]
        if not isinstance(raw, list):
            raise RequestError(422, [_error(("body", "records"), "records must be a list")])
        if not raw:
            message = "the batch is empty: send at least one record"
            raise RequestError(422, [_error(("body", "records"), message, "empty_batch")])
        if len(raw) > max_batch:
            message = f"the batch holds {len(raw)} records; at most {max_batch} are accepted"
            raise RequestError(413, message)
    elif isinstance(body, dict):
        raw = [body]
    else:
        message = 'send one record as an object, or a batch as {"records": [...]}'
        raise RequestError(422, [_error(("body",), message, "model_type")])
    try:
        records = served.records.validate_python(raw)
    except ValidationError as exc:
        errors = record_errors(exc)
        for error in errors:
            loc = error["loc"]
            error["loc"] = ["body", "records", *loc] if is_batch else ["body", *loc[1:]]
        raise RequestError(422, errors) from None
    return ParsedRequest(records=records, batch=is_batch)


def record_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors with `loc` as [record index, field]: a categorical's union
    reports one error per member type, which become one error for the field."""
    errors: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for error in exc.errors(include_url=False, include_context=False):
        loc = tuple(error["loc"])
        if len(loc) > 2:  # (index, field, union member): one error for the field
            error = {
                "type": "category_type",
                "loc": loc[:2],
                "msg": "Input should be text, a number, a boolean or null",
                "input": error.get("input"),
            }
            loc = loc[:2]
        if loc in seen:
            continue
        seen.add(loc)
        errors.append({**error, "loc": list(loc)})
    return errors


def _error(loc: tuple[str, ...], message: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": list(loc), "msg": message, "type": kind}


def feature_rows(records: list[BaseModel]) -> list[dict[str, Any]]:
    """Each record as {feature name: value}; null stays None."""
    return [record.model_dump(by_alias=True) for record in records]


@dataclass(frozen=True)
class Scored:
    predictions: list[dict[str, Any]]
    log_rows: list[dict[str, Any]]


def score_records(served: ServedModel, records: list[BaseModel]) -> Scored:
    """Call the model once on all records; the response items and the log rows."""
    rows = feature_rows(records)
    arrays = served.features.record_arrays(rows)
    raw = served.runtime(len(rows)).predict_arrays(arrays)
    decided = served.model.decide(raw)
    classification = served.model.task != "regression"
    classes = [_plain(label) for label in served.model.classes]
    timestamp = datetime.now(UTC)
    predictions, log_rows = [], []
    for position, record in enumerate(records):
        given = getattr(record, "request_id", None)
        request_id = str(given) if given is not None else uuid.uuid4().hex
        item: dict[str, Any] = {"id": request_id, "prediction": _plain(decided[position])}
        if classification:
            item["probabilities"] = {
                str(label): float(p) for label, p in zip(classes, raw[position], strict=True)
            }
        predictions.append(item)
        log_rows.append(
            {
                "request_id": request_id,
                "timestamp": timestamp,
                "model_version": served.version,
                "inputs": logged_inputs(rows[position], served.features),
                "context": {name: rows[position][name] for name in served.context},
                "prediction": item["prediction"],
                "probabilities": item.get("probabilities"),
            }
        )
    return Scored(predictions=predictions, log_rows=log_rows)


def logged_inputs(row: dict[str, Any], features: FeatureSpec) -> dict[str, Any]:
    """One record's inputs with stable types for the log: numerics as float,
    categoricals as text (None for a gap)."""
    logged: dict[str, Any] = {}
    for name in features.numeric:
        value = row[name]
        logged[name] = None if value is None or value != value else float(value)
    for name in features.categorical:
        logged[name] = category_value(row[name])
    return logged


def _plain(value: Any) -> Any:
    """numpy scalars to the Python values JSON can carry."""
    return value.item() if isinstance(value, np.generic) else value


def model_info(served: ServedModel) -> dict[str, Any]:
    meta = served.meta
    return {
        "model_version": served.version,
        "family": meta.get("family"),
        "task": meta.get("task"),
        "target": meta.get("target"),
        "features": meta.get("features"),
        "classes": meta.get("classes"),
        "threshold": meta.get("threshold"),
        "metrics": meta.get("metrics"),
        "data_version": meta.get("data_version"),
        # Measured by this server when it loaded the model: a property of the host.
        "runtimes": {
            "native_from_rows": served.native_from_rows,
            "batch_ms": {str(size): times for size, times in served.batch_ms.items()},
        },
    }


def create_app(
    source: Callable[[], ServedModel],
    *,
    log: "PredictionLog | None" = None,
    admin_token: str | None = None,
    poll_seconds: float | None = None,
    current_version: Callable[[], str | None] | None = None,
    max_batch: int = MAX_BATCH,
) -> "FastAPI":
    """The service. `source` loads the model to serve (now, and on every reload);
    `current_version` says which version should be served, checked every
    `poll_seconds` when both are given."""
    # This module has no `from __future__ import annotations`: FastAPI evaluates the
    # endpoints' annotations, which name these function-local imports.
    from fastapi import Body, FastAPI, Header
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    holder = ModelHolder(source())

    async def poll() -> None:
        while True:
            await asyncio.sleep(poll_seconds or 0)
            try:
                wanted = await run_in_threadpool(current_version)  # type: ignore[arg-type]
                if wanted is not None and str(wanted) != holder.current.version:
                    served = await run_in_threadpool(holder.reload, source)
                    logger.info("serving: now serving model version %s", served.version)
            except Exception as exc:  # keep serving the old model
                logger.warning("serving: model poll failed, old model still served: %s", exc)

    @asynccontextmanager
    async def lifespan(_: "FastAPI") -> AsyncIterator[None]:
        task = None
        if poll_seconds and current_version is not None:
            task = asyncio.create_task(poll())
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            if log is not None:
                try:
                    await run_in_threadpool(log.flush)
                except Exception as exc:
                    logger.warning("serving: could not flush the prediction log: %s", exc)

    app = FastAPI(title="Driftline model", lifespan=lifespan)
    app.state.models = holder

    def answer(body: Any) -> JSONResponse:
        served = holder.current  # one reference for the whole request
        try:
            parsed = parse_request(body, served, max_batch)
        except RequestError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        scored = score_records(served, parsed.records)
        if log is not None:
            try:
                log.append(scored.log_rows)
            except Exception as exc:  # the answer matters more than its record
                logger.warning("serving: prediction not logged: %s", exc)
        return JSONResponse({"model_version": served.version, "predictions": scored.predictions})

    @app.post("/predict")
    async def predict(body: Annotated[Any, Body()]) -> JSONResponse:
        # A few records score in about 0.1 ms: on the event loop, that is cheaper than
        # the hop to a worker thread. Larger batches go to a thread so that they never
        # hold up the small requests behind them.
        records = body.get("records") if isinstance(body, dict) else None
        if isinstance(records, list) and len(records) > INLINE_RECORDS:
            return await run_in_threadpool(answer, body)
        return answer(body)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model_version": holder.current.version}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return model_info(holder.current)

    @app.post("/admin/reload")
    def reload(authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        if admin_token is None:
            return JSONResponse({"detail": "reload is disabled: no admin token"}, 404)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return JSONResponse(
                {"detail": "send Authorization: Bearer <admin token>"},
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(token.encode(), admin_token.encode()):
            return JSONResponse({"detail": "wrong admin token"}, 403)
        previous = holder.current.version
        try:
            served = holder.reload(source)
        except Exception as exc:
            logger.warning("serving: reload failed, old model still served: %s", exc)
            detail = f"reload failed, version {previous} still served: {exc}"
            return JSONResponse({"detail": detail}, 500)
        return JSONResponse({"model_version": served.version, "previous_version": previous})

    return app


def run_server(app: "FastAPI", host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `app` with uvicorn until interrupted."""
    import uvicorn

    # No access log: every prediction is in the prediction log already.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
