"""The prediction service: a FastAPI app over the compressed ONNX model.

`load_served_model` reads a folder written by the compress stage (`model.onnx` and
`model.json`, never a pickle) and builds the pydantic model one request record must
match. A record is a row as the source has it: `model.json` carries what clean does to
a row (`pipeline.rows.RowRules`: missing-value markers, coercions, ranges, unknown
categories, fills, calendar features), and serving applies it, so a client sends
`dteday` and never `dteday_dayofyear`. Every input column is required but nullable
(null means missing); a derived feature may be sent instead of its date column.
Unknown fields are refused, and `id` optionally names the request. A value that is not
scored as sent (clipped, unknown, unparseable) gets a warning in the response and in
the prediction log.

What a client sends can never cause a 5xx: the body is read up to
`serve.max_body_bytes` (413), parsed as strict JSON (no NaN/Infinity constants, no
lone surrogates), walked once for `serve.max_depth` and `serve.max_string_length`,
and only then validated; error bodies never echo a value that JSON cannot carry.
`/openapi.json` describes the current model's record (types, ranges, categories), and
`/docs` renders it from assets served by this app, offline.

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
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticCustomError

from pipeline.config import ServeConfig
from pipeline.errors import DataError
from pipeline.features import FeatureArrays, FeatureSpec, category_value
from pipeline.rows import UNKNOWN_CATEGORY, Flag, Flags, RowRules
from pipeline.secrets import redact

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from pipeline.models import TabularModel
    from pipeline.onnx_model import OnnxModel
    from pipeline.prediction_log import PredictionLog

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
META_FILE = "model.json"
INLINE_BYTES = 4096  # bodies up to this size are parsed and scored on the event loop
REQUEST_ID = "id"


def _refuse_bool(value: Any) -> Any:
    """pydantic's lax float takes `false` as 0.0, which the schema (`number`) refuses:
    schemathesis found it once /explain joined the schema. Text stays parsed ("3.5")."""
    if value is True or value is False:
        raise PydanticCustomError("float_type", "Input should be a valid number, not a boolean")
    return value


# About 0.25 us a numeric field of a record (3 us for 12, beside 220 us a request).
Number = Annotated[float, BeforeValidator(_refuse_bool), Field(allow_inf_nan=False)]
CategoryInput = str | int | Number | bool | None
# An error body shows the value that was refused only when it is a short scalar.
ECHO_LIMIT = 100
ECHO_LIMITS = ServeConfig(max_string_length=ECHO_LIMIT)
MAX_ERRORS = 20
# Batch sizes at which the two runtimes are timed when a model is loaded, and the timed
# calls per runtime and size (after one warm-up): the median of 5 is steady enough to
# tell runtimes apart that differ twofold, as they do where the switch matters.
TIMED_BATCHES = (1, 16, 128, 1024)
TIMED_CALLS = 5
# Native scores a batch size only when it takes less than this share of ONNX's time.
NATIVE_MARGIN = 0.8


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version and the request record its inputs call for.

    `rules` is what clean does to a source row (None for a model compressed before
    models carried it: its records are then keyed by feature). `native` is the model
    in its training library, kept only when it measured faster than ONNX, on this host
    at load time, for batches of `native_from_rows` rows or more; `batch_ms` holds
    those timings ({} when there was no native model to time).
    """

    version: str
    folder: Path
    model: "OnnxModel"
    meta: dict[str, Any]
    record_model: type[BaseModel]
    records: TypeAdapter[list[Any]] = field(repr=False)
    rules: RowRules | None = None
    native: "TabularModel | None" = None
    native_from_rows: int | None = None
    batch_ms: dict[int, dict[str, float]] = field(default_factory=dict, repr=False)
    # The native model's folder, which /explain loads on its first call.
    native_folder: Path | None = None

    @cached_property
    def explained(self) -> "TabularModel | OnnxModel":
        """The model /explain explains: the native one, loaded on first use (/predict
        never waits for it), else the ONNX export."""
        from pipeline.serving_explain import explained_model

        return explained_model(self)

    @property
    def features(self) -> FeatureSpec:
        return self.model.features

    @cached_property
    def context(self) -> tuple[str, ...]:
        """The non-feature columns a request may carry for the log (key, time)."""
        columns = self.features.columns
        return tuple(c for c in self.meta.get("context") or () if c not in columns)

    @cached_property
    def dated(self) -> dict[str, tuple[str, ...]]:
        """Each date column a request carries and the features derived from it."""
        if self.rules is None:
            return {}
        derived: dict[str, list[str]] = {}
        for name, (column, _) in self.rules.derived.items():
            if name in self.features.columns:
                derived.setdefault(column, []).append(name)
        return {column: tuple(names) for column, names in derived.items()}

    @cached_property
    def field_names(self) -> dict[str, str]:
        """The record model's field name of each column a request may send."""
        fields = self.record_model.model_fields
        return {info.alias: name for name, info in fields.items() if info.alias}

    def runtime(self, rows: int) -> "OnnxModel | TabularModel":
        """The faster runtime for a batch of `rows`, as measured when it was loaded."""
        if self.native is not None and self.native_from_rows and rows >= self.native_from_rows:
            return self.native
        return self.model


def record_model(
    features: FeatureSpec, context: tuple[str, ...] = (), rules: RowRules | None = None
) -> type[BaseModel]:
    """The pydantic model of one request record. Field names are positional and the
    column names are aliases, so a column may be called anything (`json`, `1st`).

    With `rules`, a record is a source row: a feature that clean derives from a date
    column is replaced by that column (text, in the schema's format); the derived
    feature stays accepted, optional, for clients that send it. Each field's
    description gives its range or categories and what happens outside them.

    `context` names the data set's columns that are not features but that a labelled
    production row needs to become training data again (its key and time): optional,
    logged, never scored."""
    rules = rules or RowRules()
    derived = {name: column for name, (column, _) in rules.derived.items()}
    fields: dict[str, Any] = {}
    for position, name in enumerate(features.numeric):
        if name in derived:
            described = f"derived from `{derived[name]}`: send that column instead"
            fields[f"numeric_{position}"] = (
                Number | None,
                Field(default=None, alias=name, description=described),
            )
            continue
        described = _numeric_description(name, rules)
        fields[f"numeric_{position}"] = (Number | None, Field(alias=name, description=described))
    for position, name in enumerate(features.categorical):
        known = features.categories.get(name, ())
        described = f"one of: {', '.join(known[:50])}{', ...' if len(known) > 50 else ''}."
        described += " Any other value is scored as missing, with a warning. Null: missing."
        fields[f"categorical_{position}"] = (
            CategoryInput,
            Field(alias=name, description=described, examples=list(known[:3]) or None),
        )
    dated = {derived[name] for name in features.columns if name in derived}
    for position, name in enumerate(sorted(c for c in dated if c not in features.columns)):
        fmt = rules.datetime.get(name)
        described = (
            f"a date ({fmt or 'ISO 8601'}); the model's calendar features are derived from "
            "it. Required unless those features are sent instead. Null: missing."
        )
        fields[f"date_{position}"] = (
            str | None,
            Field(default=None, alias=name, description=described),
        )
    taken = {*features.columns, *dated}
    for position, name in enumerate(c for c in context if c not in taken):
        described = "a key or time column: logged with the prediction, never scored"
        fields[f"context_{position}"] = (
            CategoryInput,
            Field(default=None, alias=name, description=described),
        )
    taken |= set(context)
    for position, name in enumerate(c for c in rules.dropped if c not in taken):
        described = "a source column clean removes: accepted, never scored"
        fields[f"dropped_{position}"] = (
            CategoryInput,
            Field(default=None, alias=name, description=described),
        )
    taken |= set(rules.dropped)
    if REQUEST_ID not in taken:
        described = "names the request in the response and the prediction log (default: a UUID)"
        fields["request_id"] = (
            str | int | None,
            Field(default=None, alias=REQUEST_ID, description=described),
        )
    return create_model(  # type: ignore[call-overload, no-any-return]
        "PredictionRecord", __config__=ConfigDict(extra="forbid"), **fields
    )


def _numeric_description(name: str, rules: RowRules) -> str:
    rule = rules.numeric.get(name)
    if rule is None or (rule.min is None and rule.max is None):
        return "a number. Null: missing."
    low = "" if rule.min is None else f"{rule.min:g}"
    high = "" if rule.max is None else f"{rule.max:g}"
    outside = {
        "clip": "clipped to the range",
        "null": "scored as missing",
        "drop": "scored as missing",
        "keep": "scored as sent",
    }[rule.out_of_range]
    return f"a number in [{low}, {high}]; outside it, {outside}, with a warning. Null: missing."


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
    try:
        rules = RowRules.from_dict(meta["rows"]) if meta.get("rows") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{meta_path}: `rows` is not a row description ({exc})") from exc
    if rules is not None:  # only the columns this model scores, or derives from
        dated = {c for name, (c, _) in rules.derived.items() if name in features.columns}
        rules = rules.only({*features.columns, *dated})
    record = record_model(features, context, rules)
    if meta.get("distilled_from") and native is not None:
        # A distilled student (compress.distill) keeps its native files beside its ONNX;
        # the registered native folder is its teacher, which this version does not serve.
        native = folder
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
        rules=rules,
        native=native_model,
        native_from_rows=choice.native_from_rows if native_model is not None else None,
        batch_ms=choice.batch_ms,
        native_folder=Path(native) if native is not None else None,
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


def read_json(raw: bytes, limits: ServeConfig) -> Any:
    """The body as strict JSON, walked once for the limits: a RequestError (413/422)
    for anything else. Python's parser accepts `NaN` and `Infinity`, which JSON does
    not, and lone surrogates (`\\ud800`), which no response or log can carry."""
    if len(raw) > limits.max_body_bytes:
        raise RequestError(413, f"the body holds {len(raw)} bytes; at most {limits.max_body_bytes}")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        message = f"the body nests deeper than {limits.max_depth} levels"
        raise RequestError(422, [_error(("body",), message, "json_depth")]) from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, a constant, a 5,000-digit int
        raise RequestError(
            422, [_error(("body",), f"invalid JSON: {exc}", "json_invalid")]
        ) from None
    errors = json_limit_errors(body, limits)
    if errors:
        raise RequestError(422, errors)
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (send null for a missing number)")


def json_limit_errors(body: Any, limits: ServeConfig) -> list[dict[str, Any]]:
    """Nesting, string length, encodable text and finite numbers, in one walk."""
    errors: list[dict[str, Any]] = []
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(body, 1, ("body",))]
    while stack and len(errors) < MAX_ERRORS:
        value, depth, loc = stack.pop()
        if isinstance(value, dict | list):
            if depth > limits.max_depth:
                message = f"nested deeper than {limits.max_depth} levels"
                errors.append(_error(loc, message, "json_depth"))
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            # A field's location is built only when it is needed: for a nested value,
            # or an error. Most values are plain and fine.
            for key, item in items:
                if isinstance(key, str) and (problem := _text_problem(key, limits)):
                    message = f"field name {problem}"
                    errors.append(_error((*loc, _safe(key)), message, "string_invalid"))
                elif isinstance(item, dict | list):
                    stack.append((item, depth + 1, (*loc, _safe(key))))
                elif (problem := _scalar_problem(item, limits)) is not None:
                    errors.append(_error((*loc, _safe(key)), problem, "value_invalid"))
        elif (problem := _scalar_problem(value, limits)) is not None:
            errors.append(_error(loc, problem, "value_invalid"))
    return errors


def _scalar_problem(value: Any, limits: ServeConfig) -> str | None:
    if isinstance(value, str):
        return _text_problem(value, limits)
    # The model takes float32: a larger number would reach it as infinity.
    number = isinstance(value, float | int) and not isinstance(value, bool)
    if number and not -MAX_NUMBER <= value <= MAX_NUMBER:
        return f"a number too large for the model (at most {MAX_NUMBER:.4g} either way)"
    return None


def _text_problem(text: str, limits: ServeConfig) -> str | None:
    if len(text) > limits.max_string_length:
        return f"is {len(text)} characters long; at most {limits.max_string_length}"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate (\\ud800-\\udfff), which is not text"
    return None


MAX_NUMBER = float(np.finfo(np.float32).max)


async def read_body(request: "Request", limits: ServeConfig) -> "bytearray | JSONResponse":
    """The request's body, read up to `serve.max_body_bytes` (declared or, when chunked,
    as it arrives), or the 413/400 to answer instead."""
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        message = f"the body holds {declared} bytes; at most {limits.max_body_bytes}"
        return JSONResponse({"detail": message}, status_code=413)
    raw = bytearray()
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.max_body_bytes:
                message = f"the body holds over {limits.max_body_bytes} bytes"
                return JSONResponse({"detail": message}, status_code=413)
    except ClientDisconnect:  # nobody is left to answer
        return JSONResponse({"detail": "the client went away"}, status_code=400)
    return raw


def records_body(served: ServedModel) -> dict[str, Any]:
    """The OpenAPI request body of /predict and /explain: one record or a batch."""
    return {
        "required": True,
        "content": {
            "application/json": {
                "example": example_record(served),
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/PredictionRecord"},
                        {"$ref": "#/components/schemas/PredictionBatch"},
                    ]
                },
            }
        },
    }


def parse_request(body: Any, served: ServedModel, limits: ServeConfig) -> ParsedRequest:
    """One record (an object) or `{"records": [...]}`, validated against the model's
    inputs. Errors name the record index and the field."""
    is_batch = isinstance(body, dict) and set(body) == {"records"}
    if is_batch:
        raw = body["records"]
        if not isinstance(raw, list):
            raise RequestError(422, [_error(("body", "records"), "records must be a list")])
        if not raw:
            message = "the batch is empty: send at least one record"
            raise RequestError(422, [_error(("body", "records"), message, "empty_batch")])
        if len(raw) > limits.max_batch:
            message = f"the batch holds {len(raw)} records; at most {limits.max_batch} are accepted"
            raise RequestError(413, message)
    elif isinstance(body, dict):
        raw = [body]
    else:
        message = 'send one record as an object, or a batch as {"records": [...]}'
        raise RequestError(422, [_error(("body",), message, "model_type")])
    try:
        records = served.records.validate_python(raw)
        errors = missing_dates(records, served)
    except ValidationError as exc:
        errors = record_errors(exc)
    if errors:
        for error in errors:
            loc = error["loc"]
            error["loc"] = ["body", "records", *loc] if is_batch else ["body", *loc[1:]]
        raise RequestError(422, errors) from None
    return ParsedRequest(records=records, batch=is_batch)


def missing_dates(records: list[BaseModel], served: ServedModel) -> list[dict[str, Any]]:
    """A record must send each date column, or every feature derived from it."""
    dated = served.dated
    if not dated:
        return []
    aliases = served.field_names
    errors: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        sent = record.model_fields_set
        for column, derived in dated.items():
            if aliases[column] in sent or all(aliases[name] in sent for name in derived):
                continue
            fmt = served.rules.datetime.get(column) if served.rules else None
            message = (
                f"Field required: send {column} (a date, {fmt or 'ISO 8601'}), "
                f"or the features derived from it ({', '.join(derived)})"
            )
            errors.append({"type": "missing", "loc": [index, column], "msg": message})
    return errors


def record_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors with `loc` as [record index, field]: a categorical's union
    reports one error per member type, which become one error for the field. The
    refused value is echoed only when it is a short scalar."""
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
        shown = {"type": error["type"], "loc": [_safe(part) for part in loc], "msg": error["msg"]}
        if "input" in error and _echoable(error["input"]):
            shown["input"] = error["input"]
        errors.append(shown)
        if len(errors) >= MAX_ERRORS:
            break
    return errors


def _echoable(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return -MAX_NUMBER <= value <= MAX_NUMBER
    if isinstance(value, str):
        return len(value) <= ECHO_LIMIT and _text_problem(value, ECHO_LIMITS) is None
    return False


def _safe(part: Any) -> Any:
    """A location part JSON can carry: text with surrogates escaped, cut short."""
    if isinstance(part, str):
        if len(part) > ECHO_LIMIT:
            part = part[:ECHO_LIMIT] + "..."
        if not part.isascii():
            part = part.encode("utf-8", "backslashreplace").decode("utf-8")
        return part
    return part if isinstance(part, int) else str(part)


def _error(loc: tuple[Any, ...], message: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": list(loc), "msg": message, "type": kind}


@dataclass(frozen=True)
class Scored:
    predictions: list[dict[str, Any]]
    log_rows: list[dict[str, Any]]


def model_rows(
    served: ServedModel, records: list[BaseModel]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Flags]]:
    """Each record as sent ({column: value}), as the model sees it ({feature: value},
    after clean's row rules), and a flag per value not scored as sent."""
    sent, prepared, flagged = [], [], []
    columns = served.features.columns
    for record in records:
        row = record.model_dump(by_alias=True, exclude_unset=True)
        if served.rules is not None:
            cleaned, flags = served.rules.apply(row)
        else:
            cleaned, flags = row, {}
        features = {name: cleaned.get(name) for name in columns}
        for name in served.features.categorical:
            text = category_value(features[name])
            if text is not None and not served.features.is_known(name, text):
                known = served.features.categories.get(name, ())
                shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
                message = f"{text[:40]!r} was not seen in training ({shown}): scored as missing"
                flags[name] = Flag(UNKNOWN_CATEGORY, message)
        sent.append(row)
        prepared.append(features)
        flagged.append(flags)
    return sent, prepared, flagged


def score_records(served: ServedModel, records: list[BaseModel]) -> Scored:
    """Call the model once on all records; the response items and the log rows."""
    sent, rows, flagged = model_rows(served, records)
    arrays = served.features.record_arrays(rows)
    raw = served.runtime(len(rows)).predict_arrays(arrays)
    decided = served.model.decide(raw)
    classification = served.model.task != "regression"
    classes = [_plain(label) for label in served.model.classes]
    timestamp = datetime.now(UTC)
    predictions, log_rows = [], []
    # A model may still overflow on extreme inputs: no number JSON cannot carry.
    finite = np.isfinite(np.asarray(raw, dtype=np.float64).reshape(len(sent), -1)).all(axis=1)
    id_field = REQUEST_ID not in served.features.columns
    for position, row in enumerate(sent):
        given = row.get(REQUEST_ID) if id_field else None
        request_id = str(given) if given is not None else uuid.uuid4().hex
        item: dict[str, Any] = {"id": request_id, "prediction": _plain(decided[position])}
        if classification:
            item["probabilities"] = {
                str(label): float(p) for label, p in zip(classes, raw[position], strict=True)
            }
        flags = flagged[position]
        if not finite[position]:
            item = {"id": request_id, "prediction": None}
            if classification:
                item["probabilities"] = None
            message = "the model's output for this record is not a finite number"
            flags = {**flags, "prediction": Flag("not_finite", message)}
        if flags:
            item["warnings"] = {name: flag.message for name, flag in flags.items()}
        predictions.append(item)
        log_rows.append(
            {
                "request_id": request_id,
                "timestamp": timestamp,
                "model_version": served.version,
                "inputs": logged_inputs(rows[position], served.features),
                "context": {name: row.get(name) for name in served.context},
                "prediction": item["prediction"],
                "probabilities": item.get("probabilities"),
                "flags": {name: flag.kind for name, flag in flags.items()},
            }
        )
    return Scored(predictions=predictions, log_rows=log_rows)


@dataclass(frozen=True)
class _Waiting:
    """A request's records, waiting for the turn's model call."""

    served: ServedModel
    records: list[BaseModel]
    future: "asyncio.Future[Scored]"


class TurnBatcher:
    """Scores in one model call the records of every request that reaches it in the same
    turn of the event loop.

    Under load a turn holds dozens of requests, and most of what a call costs is per
    call, not per record (building the arrays, ONNX Runtime's own overhead, the trees
    coming back into the CPU cache): one record alone cost 220 us, a record among 16 or
    more 65 us (2 cores, bike model). The first request of a turn schedules the call with
    `call_soon`, which runs after the requests already read in that turn: a request that
    comes alone is scored at once and waits for nothing."""

    def __init__(self) -> None:
        self._waiting: list[_Waiting] = []

    async def score(self, served: ServedModel, records: list[BaseModel]) -> Scored:
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._score_waiting)
        waiting = _Waiting(served, records, loop.create_future())
        self._waiting.append(waiting)
        return await waiting.future

    def _score_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        by_model: dict[int, list[_Waiting]] = {}
        for item in waiting:  # after a reload in the turn, each keeps the model it took
            by_model.setdefault(id(item.served), []).append(item)
        for group in by_model.values():
            try:
                scored = score_records(group[0].served, [r for item in group for r in item.records])
            except Exception:  # score each request alone, so that only its own fails
                for item in group:
                    _score_alone(item)
                continue
            start = 0
            for item in group:
                end = start + len(item.records)
                if not item.future.done():  # done: the client went away
                    part = Scored(scored.predictions[start:end], scored.log_rows[start:end])
                    item.future.set_result(part)
                start = end


def _score_alone(item: _Waiting) -> None:
    if item.future.done():
        return
    try:
        item.future.set_result(score_records(item.served, item.records))
    except Exception as exc:
        item.future.set_exception(exc)


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
        # What a request record holds: the source's columns (see /docs for each).
        "inputs": [info.alias for info in served.record_model.model_fields.values()],
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
    limits: ServeConfig | None = None,
) -> "FastAPI":
    """The service. `source` loads the model to serve (now, and on every reload);
    `current_version` says which version should be served, checked every
    `poll_seconds` when both are given; `limits` bound what one request may hold."""
    # This module has no `from __future__ import annotations`: FastAPI evaluates the
    # endpoints' annotations, which name these function-local imports.
    from fastapi import FastAPI, Header, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    limits = limits or ServeConfig()
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
                reason = redact(str(exc), os.environ.get("MLFLOW_TRACKING_URI"))
                logger.warning("serving: model poll failed, old model still served: %s", reason)

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

    app = FastAPI(
        title="Driftline model",
        description="Scores rows of the data set the champion was trained on.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.models = holder
    app.mount("/docs-assets", StaticFiles(directory=docs_assets()), name="docs-assets")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {
                "type": e.get("type"),
                "loc": [_safe(p) for p in e.get("loc", ())],
                "msg": e.get("msg"),
            }
            for e in exc.errors()[:MAX_ERRORS]
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    def respond(served: ServedModel, scored: Scored) -> JSONResponse:
        if log is not None:
            try:
                log.append(scored.log_rows)
            except Exception as exc:  # the answer matters more than its record
                logger.warning("serving: prediction not logged: %s", exc)
        return JSONResponse({"model_version": served.version, "predictions": scored.predictions})

    def answer(raw: bytes) -> JSONResponse:
        served = holder.current  # one reference for the whole request
        try:
            parsed = parse_request(read_json(raw, limits), served, limits)
        except RequestError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        return respond(served, score_records(served, parsed.records))

    batcher = TurnBatcher()

    @app.post("/predict", response_model=None)
    async def predict(request: Request) -> JSONResponse:
        """Score one record (a JSON object) or a batch (`{"records": [...]}`)."""
        raw = await read_body(request, limits)
        if isinstance(raw, JSONResponse):
            return raw
        # A small body is parsed on the event loop and scored there too, together with
        # those of every other request that reached it in the same turn (`TurnBatcher`).
        # Larger ones go to a thread so that they never hold up the small requests.
        if len(raw) > INLINE_BYTES:
            return await run_in_threadpool(answer, bytes(raw))
        served = holder.current  # one reference for the whole request
        try:
            parsed = parse_request(read_json(bytes(raw), limits), served, limits)
        except RequestError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        return respond(served, await batcher.score(served, parsed.records))

    @app.post("/explain", response_model=None)
    async def explain(
        request: Request, top: Annotated[int, Query(ge=1, le=1000)] = 10
    ) -> JSONResponse:
        """Each record's `top` largest SHAP contributions (same body as /predict)."""
        from pipeline.serving_explain import EXPLAIN_MAX_RECORDS, explained_records

        raw = await read_body(request, limits)
        if isinstance(raw, JSONResponse):
            return raw
        explain_limits = limits.model_copy(
            update={"max_batch": min(limits.max_batch, EXPLAIN_MAX_RECORDS)}
        )

        def answer_explain(body: bytes) -> JSONResponse:  # in a thread: it scores many rows
            served = holder.current  # one reference for the whole request
            try:
                parsed = parse_request(read_json(body, limits), served, explain_limits)
            except RequestError as exc:
                return JSONResponse({"detail": exc.detail}, status_code=exc.status)
            return JSONResponse(explained_records(served, parsed.records, top))

        return await run_in_threadpool(answer_explain, bytes(raw))

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
            reason = redact(str(exc), os.environ.get("MLFLOW_TRACKING_URI"))
            logger.warning("serving: reload failed, old model still served: %s", reason)
            detail = f"reload failed, version {previous} still served: {reason}"
            return JSONResponse({"detail": detail}, 500)
        return JSONResponse({"model_version": served.version, "previous_version": previous})

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Driftline model: API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="Driftline model: API",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/docs-assets/favicon.png",
            with_google_fonts=False,
        )

    schemas: dict[str, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with /predict's body and answer described for the model
        being served now (a reload changes them)."""
        served = holder.current
        if served.version not in schemas:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=f"model v{served.version}",
                description=app.description,
                routes=app.routes,
            )
            schemas.clear()
            from pipeline.serving_explain import explain_schema

            schema = predict_schema(schema, served, limits)
            schemas[served.version] = explain_schema(schema, served, limits)
        return schemas[served.version]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def example_record(served: ServedModel) -> dict[str, Any]:
    """A record /docs can offer: each input mid-range or its first category, each date
    column a date in its format, no derived or optional field."""
    rules = served.rules or RowRules()
    derived = set(rules.derived)
    example: dict[str, Any] = {}
    for name in served.features.numeric:
        if name in derived:
            continue
        rule = rules.numeric.get(name)
        low, high = (rule.min, rule.max) if rule is not None else (None, None)
        if low is not None and high is not None:
            example[name] = (low + high) / 2
        else:
            example[name] = low if low is not None else high if high is not None else 0.0
    for name in served.features.categorical:
        known = served.features.categories.get(name, ())
        example[name] = known[0] if known else None
    for column in served.dated:
        example[column] = datetime(2024, 1, 15).strftime(rules.datetime.get(column) or "%Y-%m-%d")
    return example


def docs_assets() -> Path:
    """Swagger UI's and ReDoc's scripts, from the fastapi-offline package: /docs must
    render where no CDN can be reached."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def predict_schema(
    schema: dict[str, Any], served: ServedModel, limits: ServeConfig
) -> dict[str, Any]:
    """`schema` with /predict's request and response bodies for `served`."""
    record = served.record_model.model_json_schema(by_alias=True)
    record["title"] = "PredictionRecord"
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["PredictionRecord"] = record
    components["PredictionBatch"] = {
        "title": "PredictionBatch",
        "type": "object",
        "properties": {
            "records": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/PredictionRecord"},
                "minItems": 1,
                "maxItems": limits.max_batch,
            }
        },
        "required": ["records"],
        "additionalProperties": False,
    }
    prediction: dict[str, Any] = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "prediction": {"type": ["number", "string", "integer", "boolean"]},
            "warnings": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "per field, a value that was not scored as sent",
            },
        },
        "required": ["id", "prediction"],
    }
    if served.model.task != "regression":
        prediction["properties"]["probabilities"] = {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "per class: " + ", ".join(str(c) for c in served.model.classes),
        }
        prediction["required"].append("probabilities")
    components["PredictionResponse"] = {
        "title": "PredictionResponse",
        "type": "object",
        "properties": {
            "model_version": {"type": "string"},
            "predictions": {"type": "array", "items": prediction},
        },
        "required": ["model_version", "predictions"],
    }
    problem = {"description": "", "content": {"application/json": {"schema": {"type": "object"}}}}
    operation = schema["paths"]["/predict"]["post"]
    operation["requestBody"] = records_body(served)
    operation["responses"] = {
        "200": {
            "description": "the predictions, in the order of the records",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictionResponse"}}
            },
        },
        "413": {**problem, "description": f"over {limits.max_batch} records or the body limit"},
        "422": {**problem, "description": "a record that does not match the model's inputs"},
    }
    return schema


def run_server(app: "FastAPI", host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `app` with uvicorn until interrupted."""
    import gc

    import uvicorn

    # What start-up built (imports, the model, the app: about 100,000 objects) lives as
    # long as the server. Frozen, a full collection no longer walks it: each one took
    # 85-180 ms on the event loop under load, a stall for every request in flight.
    gc.collect()
    gc.freeze()
    # The requests of one turn are alive together (`TurnBatcher`): with the default 700
    # a young collection ran every few requests and moved them all to older generations
    # (2.4 s of collections in 26 s of load; 0.3 s with 20,000, and 7% less CPU a request).
    gc.set_threshold(20_000, 10, 10)
    # No access log: every prediction is in the prediction log already.
    uvicorn.run(
        app, host=host, port=port, log_level="info", access_log=False, loop=eager_accept_loop()
    )


def eager_accept_loop() -> Any:
    """uvicorn's event loop, uvloop when it is installed, accepting every waiting
    connection in one turn.

    libuv (under uvloop) accepts one connection per turn of its loop (libuv pull request
    3696), and under load a turn first serves every client already connected: the last
    of 64 clients that connected together waited 64 turns, 1.3 s at 1,200 req/s, where
    the median request took 50 ms (bench.serve). asyncio's own loop accepts them all at
    once already, but answered a fifth fewer hello-world requests a second than uvloop."""
    try:
        import uvloop
    except ImportError:
        return "auto"

    class EagerAcceptLoop(uvloop.Loop):  # type: ignore[misc]
        async def create_server(  # type: ignore[override]
            self,
            protocol_factory: Callable[[], asyncio.Protocol],
            host: Any = None,
            port: Any = None,
            **options: Any,
        ) -> Any:
            if options.get("sock") is not None or options.get("ssl") is not None:
                return await super().create_server(protocol_factory, host, port, **options)
            addresses = {
                (family, address[:2])
                for family, *_, address in socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
            }
            if len(addresses) != 1:  # several interfaces: uvloop's own server
                return await super().create_server(protocol_factory, host, port, **options)
            [(family, address)] = addresses
            listener = socket.create_server(
                address, family=family, backlog=options.get("backlog", 100)
            )
            return EagerAcceptServer(self, listener, protocol_factory, options.get("backlog", 100))

    return EagerAcceptLoop


class EagerAcceptServer:
    """The part of `asyncio.Server` uvicorn uses, over a listening socket that accepts
    every waiting connection when it becomes readable."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        backlog: int,
    ) -> None:
        listener.setblocking(False)
        self.sockets = [listener]
        self._loop, self._listener, self._protocol_factory = loop, listener, protocol_factory
        self._backlog = backlog
        loop.add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self._backlog):
            try:
                connection, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of file descriptors or memory: retry in a second
                logger.warning("serving: could not accept a connection: %s", exc)
                self._loop.remove_reader(self._listener.fileno())
                self._loop.call_later(1.0, self._resume)
                return
            try:
                connection.setblocking(False)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset by the client before it was set up
                connection.close()
                continue
            task = self._loop.create_task(
                self._loop.connect_accepted_socket(self._protocol_factory, connection)
            )
            task.add_done_callback(_log_failed_connection)

    def _resume(self) -> None:
        if self._listener.fileno() >= 0:
            self._loop.add_reader(self._listener.fileno(), self._accept)

    def close(self) -> None:
        if self._listener.fileno() >= 0:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()

    async def wait_closed(self) -> None:
        return None


def _log_failed_connection(task: "asyncio.Task[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("serving: a connection failed to start: %s", task.exception())
