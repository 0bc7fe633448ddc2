"""The resolved description of a data set: params' `data:` section with the gaps
(task, schema) inferred from the data.

`ingest` writes it to `data/raw/schema.yaml`; the later stages read it from there,
so a change to any of it re-runs them, and the user can review the inferred parts
and paste them under `data:` in params.yaml to pin them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from pydantic import ValidationError

from pipeline.config import (
    CategoricalColumn,
    DataConfig,
    DatetimeColumn,
    NumericColumn,
    Schema,
    Task,
    describe_errors,
)
from pipeline.errors import DataError

MAX_INFERRED_CATEGORIES = 50
MAX_INTEGER_CATEGORIES = 10
MAX_MULTICLASS_CLASSES = 20
DATETIME_SAMPLE = 1000
DATETIME_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%Y/%m/%d",
)
ID_NAME = re.compile(r"^(id|.*_id|instant|index|row_?id|uuid)$", re.IGNORECASE)


@dataclass(frozen=True)
class DatasetSpec:
    """What every stage after ingest needs to know about the data set."""

    target: str
    task: Task
    schema: Schema
    time_column: str | None = None
    key_columns: tuple[str, ...] = ()
    slice_columns: tuple[str, ...] = ()
    na_values: tuple[str, ...] = ()
    inferred: tuple[str, ...] = field(default=())

    def to_yaml(self) -> str:
        body = {
            "target": self.target,
            "task": self.task,
            "time_column": self.time_column,
            "key_columns": list(self.key_columns),
            "slice_columns": list(self.slice_columns),
            "na_values": list(self.na_values),
            "schema": self.schema.model_dump(mode="json", exclude_defaults=True),
        }
        header = "# Resolved by the ingest stage from params.yaml `data:`.\n"
        if self.inferred:
            header += (
                f"# Inferred from the data: {', '.join(self.inferred)}. Review them and copy\n"
                "# them under `data:` in params.yaml to pin them.\n"
            )
        return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str, origin: str = "schema.yaml") -> DatasetSpec:
        raw = yaml.safe_load(text) or {}
        try:
            schema = Schema.model_validate(raw.get("schema") or {})
        except ValidationError as exc:
            raise DataError(f"{origin}: {describe_errors(exc)}; re-run ingest") from None
        return cls(
            target=raw["target"],
            task=raw["task"],
            schema=schema,
            time_column=raw.get("time_column"),
            key_columns=tuple(raw.get("key_columns") or ()),
            slice_columns=tuple(raw.get("slice_columns") or ()),
            na_values=tuple(raw.get("na_values") or ()),
        )

    @classmethod
    def read(cls, path: Path) -> DatasetSpec:
        if not path.exists():
            raise DataError(f"{path} does not exist: run the ingest stage first (dvc repro)")
        return cls.from_yaml(path.read_text(encoding="utf-8"), origin=str(path))


def resolve_spec(frame: pd.DataFrame, data: DataConfig) -> DatasetSpec:
    """Params' data section, with the task and schema inferred where params leave them out."""
    check_named_columns(frame, data)
    inferred = []
    task = data.task
    if task is None:
        task = infer_task(frame[data.target], data.na_values)
        inferred.append("task")
    schema = data.schema_
    if schema is None:
        schema = infer_schema(frame, data.target, task, data.key_columns, data.na_values)
        inferred.append("schema")
    return DatasetSpec(
        target=data.target,
        task=task,
        schema=schema,
        time_column=data.time_column,
        key_columns=tuple(data.key_columns),
        slice_columns=tuple(data.slice_columns),
        na_values=tuple(data.na_values),
        inferred=tuple(inferred),
    )


def check_named_columns(frame: pd.DataFrame, data: DataConfig) -> None:
    """The target, key, slice and time columns that params name must be in the data."""
    if data.target not in frame.columns:
        raise DataError(
            f"target column {data.target!r} is not in the data (columns: "
            f"{', '.join(map(str, frame.columns[:20]))}); check data.target"
        )
    for name, columns in (("key_columns", data.key_columns), ("slice_columns", data.slice_columns)):
        missing = [column for column in columns if column not in frame.columns]
        if missing:
            raise DataError(f"data.{name}: {', '.join(missing)} not in the data")
    if data.time_column is not None and data.time_column not in frame.columns:
        raise DataError(f"data.time_column: {data.time_column!r} is not in the data")


def infer_task(target: pd.Series, na_values: tuple[str, ...] | list[str] = ()) -> Task:
    """Regression for continuous numbers, binary for two values, multiclass for a few."""
    values = target.dropna()
    values = values[~values.isin(na_values)] if na_values else values
    if values.empty:
        raise DataError(f"target column {target.name!r} has no values")
    distinct = values.nunique()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and not _whole_numbers(values):
        return "regression"
    if distinct == 2:
        return "binary"
    if distinct <= MAX_MULTICLASS_CLASSES and distinct > 2:
        return "multiclass"
    if numeric:
        return "regression"
    raise DataError(
        f"cannot infer the task for target {target.name!r}: {distinct} distinct text values "
        "(set data.task, or check data.target)"
    )


def infer_schema(
    frame: pd.DataFrame,
    target: str,
    task: Task,
    key_columns: list[str] | tuple[str, ...] = (),
    na_values: list[str] | tuple[str, ...] = (),
) -> Schema:
    """A first schema from the data. Ranges are left open: a new batch beyond the values
    seen so far is not an error, and a clean stage must not clip to them."""
    numeric: dict[str, NumericColumn] = {}
    categorical: dict[str, CategoricalColumn] = {}
    datetime: dict[str, DatetimeColumn] = {}
    ids: list[str] = []
    for column in frame.columns:
        values = frame[column]
        if na_values and values.dtype == object:
            values = values[~values.isin(na_values)]
        non_null = values.dropna()
        # Only the target and keys are inferred as required: a gap in a feature
        # that happened to be complete so far is a warning, not a stop.
        required = column == target or column in key_columns
        if column == target:
            if task == "regression":
                numeric[column] = NumericColumn(required=True)
            else:
                categorical[column] = CategoricalColumn(
                    values=_sorted_values(non_null), required=True
                )
        elif column in key_columns or _looks_like_id(column, values):
            ids.append(column)
        elif pd.api.types.is_bool_dtype(values):
            categorical[column] = CategoricalColumn(values=[False, True], required=required)
        elif pd.api.types.is_numeric_dtype(values):
            if _whole_numbers(non_null) and non_null.nunique() <= MAX_INTEGER_CATEGORIES:
                categorical[column] = CategoricalColumn(
                    values=_sorted_values(non_null), required=required
                )
            else:
                numeric[column] = NumericColumn(required=required)
        elif pd.api.types.is_datetime64_any_dtype(values):
            datetime[column] = DatetimeColumn(required=required)
        elif (date_format := infer_datetime_format(non_null)) is not None:
            datetime[column] = DatetimeColumn(format=date_format or None, required=required)
        else:
            distinct = non_null.nunique()
            categorical[column] = CategoricalColumn(
                values=_sorted_values(non_null) if distinct <= MAX_INFERRED_CATEGORIES else None,
                required=required,
            )
    return Schema(numeric=numeric, categorical=categorical, datetime=datetime, id=ids)


def infer_datetime_format(values: pd.Series) -> str | None:
    """The strftime format every sampled value matches; "" for ISO 8601; None if not dates."""
    if values.empty or not all(isinstance(value, str) for value in values.head(DATETIME_SAMPLE)):
        return None
    sample = values.head(DATETIME_SAMPLE)
    if not sample.str.contains(r"\d").all():
        return None
    for candidate in DATETIME_FORMATS:
        parsed = pd.to_datetime(sample, format=candidate, errors="coerce")
        if parsed.notna().all():
            return candidate
    parsed = pd.to_datetime(sample, format="ISO8601", errors="coerce")
    return "" if parsed.notna().all() else None


def _looks_like_id(column: str, values: pd.Series) -> bool:
    if not ID_NAME.match(str(column)):
        return False
    return values.notna().all() and values.is_unique


def _whole_numbers(values: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(values):
        return True
    if not pd.api.types.is_float_dtype(values):
        return False
    return bool((values.dropna() % 1 == 0).all())


def _sorted_values(values: pd.Series) -> list:
    distinct = pd.unique(values)
    python_values = [value.item() if hasattr(value, "item") else value for value in distinct]
    if all(isinstance(value, float) and value.is_integer() for value in python_values):
        python_values = [int(value) for value in python_values]
    try:
        return sorted(python_values)
    except TypeError:
        return sorted(python_values, key=str)
