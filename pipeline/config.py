"""The one typed configuration: `params.yaml`, loaded once per process.

Every section is a frozen pydantic model that forbids unknown keys, so a typo or a
bad value fails at load time with the key's dotted name. Each stage receives only
its own section.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from pipeline.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")

Task = Literal["regression", "binary", "multiclass"]
Severity = Literal["critical", "warning", "off"]
CategoryValue = StrictStr | StrictInt | StrictFloat | StrictBool
CalendarPart = Literal[
    "year", "quarter", "month", "week", "day", "dayofweek", "dayofyear", "hour", "is_weekend"
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- data -------------------------------------------------------------------------------


class NumericColumn(Section):
    """A numeric column; `min`/`max` bound the values the data may hold."""

    min: float | None = None
    max: float | None = None
    required: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> NumericColumn:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class CategoricalColumn(Section):
    """A categorical column; `values` is the allowed set (leave it out to allow any)."""

    values: list[CategoryValue] | None = None
    required: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> CategoricalColumn:
        if self.values is not None and not self.values:
            raise ValueError("values is empty: list the allowed categories or leave it out")
        return self


class DatetimeColumn(Section):
    """A date or time column; `format` is a strftime pattern (leave it out for ISO 8601)."""

    format: str | None = None
    required: bool = False


class Schema(Section):
    """Column kinds, allowed ranges and category sets. `drop` columns are removed by clean."""

    numeric: dict[str, NumericColumn] = Field(default_factory=dict)
    categorical: dict[str, CategoricalColumn] = Field(default_factory=dict)
    datetime: dict[str, DatetimeColumn] = Field(default_factory=dict)
    id: list[str] = Field(default_factory=list)
    drop: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _each_column_once(self) -> Schema:
        seen: dict[str, str] = {}
        groups = {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "datetime": list(self.datetime),
            "id": self.id,
            "drop": self.drop,
        }
        for group, names in groups.items():
            for name in names:
                if name in seen:
                    raise ValueError(
                        f"column {name!r} is listed under both {seen[name]} and {group}"
                    )
                seen[name] = group
        return self

    def kind_of(self, column: str) -> str | None:
        """The group a column is declared in, or None."""
        for group in ("numeric", "categorical", "datetime"):
            if column in getattr(self, group):
                return group
        if column in self.id:
            return "id"
        if column in self.drop:
            return "drop"
        return None

    def declared_columns(self) -> list[str]:
        """Every column the schema expects to find, dropped ones included."""
        return [
            *self.numeric,
            *self.categorical,
            *self.datetime,
            *self.id,
            *self.drop,
        ]


class CsvDialect(Section):
    """How CSV files are read. `delimiter: null` detects it from the file."""

    delimiter: str | None = None
    quotechar: str = '"'
    encoding: str = "utf-8"

    @model_validator(mode="after")
    def _single_characters(self) -> CsvDialect:
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {self.delimiter!r}")
        if len(self.quotechar) != 1:
            raise ValueError(f"quotechar must be one character, got {self.quotechar!r}")
        return self


class DataConfig(Section):
    """Everything specific to one data set. Only `source` and `target` are needed."""

    source: str = "builtin:bike_sharing"
    query: str | None = None
    target: str
    task: Task | None = None
    time_column: str | None = None
    key_columns: list[str] = Field(default_factory=list)
    slice_columns: list[str] = Field(default_factory=list)
    na_values: list[str] = Field(default_factory=list)
    landing: str = "data/landing"
    csv: CsvDialect = Field(default_factory=CsvDialect)
    schema_: Schema | None = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if not self.source.strip():
            raise ValueError("source is empty: name a file, a folder, a SQL URL or builtin:<name>")
        if is_sql_url(self.source) and not self.query:
            raise ValueError("source is a SQL URL, so query must hold the SELECT to run")
        if self.target in self.key_columns:
            raise ValueError(f"target {self.target!r} cannot also be a key column")
        if self.schema_ is not None:
            kind = self.schema_.kind_of(self.target)
            if kind in ("id", "drop", "datetime"):
                raise ValueError(f"target {self.target!r} is declared as {kind} in schema")
        return self


def is_sql_url(source: str) -> bool:
    """A source with a scheme (`postgresql://`, `sqlite:///`) is read with SQLAlchemy."""
    return "://" in source


# --- validate -----------------------------------------------------------------------------


class SeverityConfig(Section):
    """What each kind of failed expectation does: stop the run, warn, or nothing."""

    columns: Severity = "critical"
    types: Severity = "critical"
    required: Severity = "critical"
    target: Severity = "critical"
    key: Severity = "critical"
    row_count: Severity = "critical"
    datetime: Severity = "critical"
    range: Severity = "warning"
    category: Severity = "warning"
    missing: Severity = "warning"


class ValidateConfig(Section):
    min_rows: int = Field(default=100, ge=1)
    max_missing_fraction: float = Field(default=0.2, ge=0, le=1)
    severity: SeverityConfig = Field(default_factory=SeverityConfig)


# --- clean --------------------------------------------------------------------------------

NumericMissing = Literal["keep", "median", "mean", "zero", "drop"]
CategoricalMissing = Literal["keep", "most_frequent", "constant", "drop"]
OutOfRange = Literal["clip", "null", "drop", "keep"]
UnknownCategory = Literal["keep", "null", "drop"]


class ColumnPolicy(Section):
    """Per-column overrides of the clean defaults."""

    missing: NumericMissing | CategoricalMissing | None = None
    out_of_range: OutOfRange | None = None
    unknown_category: UnknownCategory | None = None


class CleanConfig(Section):
    drop_duplicates: bool = True
    # `keep` leaves gaps to the model, whose imputer learns from train rows only;
    # median/mean here would leak validation and test statistics into training.
    missing_numeric: NumericMissing = "keep"
    missing_categorical: CategoricalMissing = "keep"
    missing_datetime: Literal["keep", "drop"] = "drop"
    fill_value: str = "missing"
    out_of_range: OutOfRange = "clip"
    unknown_category: UnknownCategory = "keep"
    columns: dict[str, ColumnPolicy] = Field(default_factory=dict)
    calendar_features: dict[str, list[CalendarPart]] = Field(default_factory=dict)


# --- split --------------------------------------------------------------------------------


class Fractions(Section):
    train: float = Field(default=0.7, gt=0, lt=1)
    val: float = Field(default=0.2, gt=0, lt=1)
    test: float = Field(default=0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Fractions:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must add up to 1, got {total:g}")
        return self


class SplitConfig(Section):
    method: Literal["auto", "time", "ordered", "stratified", "random"] = "auto"
    fractions: Fractions = Field(default_factory=Fractions)
    seed: int = 42
    reference_rows: int = Field(default=5000, ge=10)


# --- the whole file -----------------------------------------------------------------------


class Params(Section):
    data: DataConfig
    validation: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _split_needs_time(self) -> Params:
        if self.split.method == "time" and self.data.time_column is None:
            raise ValueError("split.method is time, so data.time_column must name the time column")
        return self


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and check params.yaml; any problem raises ConfigError naming the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, validate, ...)")
    return parse_params(raw, origin=str(path))


def parse_params(raw: dict, origin: str = "params") -> Params:
    """Build Params from a mapping; errors name each bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {describe_errors(exc)}") from None


def describe_errors(exc: ValidationError) -> str:
    """pydantic's errors as `key.path: message` joined on one line."""
    parts = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        elif error["type"] == "missing":
            message = "required key is missing"
        parts.append(f"{key}: {message}" if key else message)
    return "; ".join(parts)
