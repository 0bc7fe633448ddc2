"""What clean does to one source row, kept with the model and applied when it serves.

A client sends a row as the source has it (`dteday` as a date, not the
`dteday_dayofyear` that clean derives from it). `RowRules` is the row-by-row part of
clean, written down: the missing-value markers, the type coercions, each numeric's
range and its out-of-range policy, each categorical's allowed values and its
unknown-category policy, the datetime formats, the fill values clean used, and the
calendar features. Compress stores it in the served model's `model.json`, so the
contract travels with the model version, and serving applies it to each request.

`clean` applies the same rules to whole columns with pandas, because a row at a time
would make it a hundred times slower on large tables; `RowRules.apply` does it to one
record in plain Python, because pandas costs more than the model for one row. The two
are tested to give the same features on every row of the three data sets
(tests/unit/test_rows.py), and the served model scores raw requests as the frame path
scores the test split (tests/model/test_raw_requests.py).

What cannot be done to a single request is said, not done: a value that training
would drop the row for is scored as missing, with a warning in the response.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import cached_property
from typing import Any, NamedTuple, get_args

from pipeline.config import CalendarPart, CleanConfig, OutOfRange, UnknownCategory
from pipeline.schema import DatasetSpec

OUT_OF_RANGE_POLICIES = set(get_args(OutOfRange))
UNKNOWN_POLICIES = set(get_args(UnknownCategory))
OUT_OF_RANGE = "out_of_range"
UNKNOWN_CATEGORY = "unknown_category"
UNPARSEABLE = "unparseable"


class Flag(NamedTuple):
    """Why a value was not scored as sent: a kind the monitor counts, and a message for
    the client."""

    kind: str  # OUT_OF_RANGE | UNKNOWN_CATEGORY | UNPARSEABLE
    message: str


Flags = dict[str, Flag]


@dataclass(frozen=True)
class NumericRule:
    """A numeric column's allowed range and what clean does outside it."""

    min: float | None
    max: float | None
    out_of_range: str  # clip | null | drop | keep


@dataclass(frozen=True)
class CategoryRule:
    """A categorical column's allowed values, whether its categories are numbers, and
    what clean does with a value outside them."""

    values: tuple[Any, ...] | None
    numeric: bool
    unknown: str  # keep | null | drop


@dataclass(frozen=True)
class RowRules:
    """The row-by-row part of clean for one data set: see the module docstring."""

    na_values: tuple[str, ...] = ()
    numeric: dict[str, NumericRule] = field(default_factory=dict)
    categorical: dict[str, CategoryRule] = field(default_factory=dict)
    datetime: dict[str, str | None] = field(default_factory=dict)  # column -> format
    calendar: dict[str, tuple[str, ...]] = field(default_factory=dict)  # column -> parts
    fills: dict[str, Any] = field(default_factory=dict)  # column -> clean's fill value
    dropped: tuple[str, ...] = ()  # source columns clean removes: accepted, never scored

    @classmethod
    def fit(
        cls, spec: DatasetSpec, config: CleanConfig, fills: dict[str, Any] | None = None
    ) -> RowRules:
        """The rules clean applied to this data set (`fills`: from clean's report)."""
        schema = spec.schema

        numeric = {
            column: NumericRule(rules.min, rules.max, config.policy(column, "out_of_range"))
            for column, rules in schema.numeric.items()
            if column != spec.target
        }
        categorical = {
            column: CategoryRule(
                tuple(rules.values) if rules.values is not None else None,
                bool(rules.values) and all(_is_number(v) for v in rules.values or ()),
                config.policy(column, "unknown_category"),
            )
            for column, rules in schema.categorical.items()
            if column != spec.target
        }
        return cls(
            na_values=tuple(spec.na_values),
            numeric=numeric,
            categorical=categorical,
            datetime={column: rules.format for column, rules in schema.datetime.items()},
            calendar={column: tuple(parts) for column, parts in config.calendar_features.items()},
            fills=dict(fills or {}),
            dropped=tuple(schema.drop),
        )

    @cached_property
    def derived(self) -> dict[str, tuple[str, str]]:
        """Each calendar feature's name and the (datetime column, part) it comes from."""
        return {
            f"{column}_{part}": (column, part)
            for column, parts in self.calendar.items()
            for part in parts
        }

    def only(self, columns: set[str]) -> RowRules:
        """These rules for `columns` alone (a model's features and the date columns
        they derive from): no work, and no warning, for a field the model never uses."""
        return replace(
            self,
            numeric={c: rule for c, rule in self.numeric.items() if c in columns},
            categorical={c: rule for c, rule in self.categorical.items() if c in columns},
            datetime={c: fmt for c, fmt in self.datetime.items() if c in columns},
            fills={c: fill for c, fill in self.fills.items() if c in columns},
        )

    def apply(self, row: dict[str, Any]) -> tuple[dict[str, Any], Flags]:
        """One source row (column -> JSON value) as clean leaves it, and a warning per
        field that was not scored as sent. Calendar features are derived when their
        datetime column is present; a row without it keeps the ones it carries."""
        out = dict(row)
        warnings: Flags = {}
        if self.na_values:
            for name, value in row.items():
                if isinstance(value, str) and value in self.na_values:
                    out[name] = None
        for column, rule in self.categorical.items():
            if column in out:
                out[column] = self._category(column, out[column], rule, warnings)
        for column, rule in self.numeric.items():
            value = out.get(column)
            if value is None:
                continue
            number = _to_number(value)
            if number is None:
                message = f"{_shown(value)} is not a number: treated as missing"
                warnings[column] = Flag(UNPARSEABLE, message)
                out[column] = None
            else:
                out[column] = _in_range(column, number, rule, warnings)
        for column, fmt in self.datetime.items():
            value = out.get(column)
            if value is not None:
                out[column] = _parse_datetime(column, value, fmt, warnings)
        for column, fill in self.fills.items():
            if column in out and out[column] is None:
                out[column] = fill
        for name, (column, part) in self.derived.items():
            if column in out:
                moment = out[column]
                out[name] = None if moment is None else calendar_value(moment, part)  # type: ignore[arg-type]
        return out, warnings

    def _category(self, column: str, value: Any, rule: CategoryRule, warnings: Flags) -> Any:
        if value is None:
            return None
        if rule.numeric:
            number = _to_number(value)
            if number is None:
                message = f"{_shown(value)} is not a number: treated as missing"
                warnings[column] = Flag(UNPARSEABLE, message)
                return None
            value = number
        elif isinstance(value, str):
            value = value.strip()
        if rule.values is None or rule.unknown == "keep" or value in rule.values:
            return value
        allowed = ", ".join(str(v) for v in rule.values)
        message = f"{_shown(value)} is not one of {allowed}: treated as missing"
        warnings[column] = Flag(UNKNOWN_CATEGORY, message)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "na_values": list(self.na_values),
            "numeric": {
                column: {"min": rule.min, "max": rule.max, "out_of_range": rule.out_of_range}
                for column, rule in self.numeric.items()
            },
            "categorical": {
                column: {
                    "values": list(rule.values) if rule.values is not None else None,
                    "numeric": rule.numeric,
                    "unknown": rule.unknown,
                }
                for column, rule in self.categorical.items()
            },
            "datetime": dict(self.datetime),
            "calendar": {column: list(parts) for column, parts in self.calendar.items()},
            "fills": dict(self.fills),
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RowRules:
        """The rules as `to_dict` wrote them; ValueError names what does not fit."""
        rules = cls._from_dict(raw)
        for column, rule in rules.numeric.items():
            if rule.out_of_range not in OUT_OF_RANGE_POLICIES:
                raise ValueError(f"{column}: out_of_range {rule.out_of_range!r}")
        for column, rule in rules.categorical.items():
            if rule.unknown not in UNKNOWN_POLICIES:
                raise ValueError(f"{column}: unknown {rule.unknown!r}")
        for column, parts in rules.calendar.items():
            if not set(parts) <= set(get_args(CalendarPart)):
                raise ValueError(f"{column}: calendar parts {list(parts)}")
        return rules

    @classmethod
    def _from_dict(cls, raw: dict[str, Any]) -> RowRules:
        return cls(
            na_values=tuple(raw.get("na_values") or ()),
            numeric={
                column: NumericRule(rule["min"], rule["max"], rule["out_of_range"])
                for column, rule in (raw.get("numeric") or {}).items()
            },
            categorical={
                column: CategoryRule(
                    tuple(rule["values"]) if rule["values"] is not None else None,
                    bool(rule["numeric"]),
                    rule["unknown"],
                )
                for column, rule in (raw.get("categorical") or {}).items()
            },
            datetime=dict(raw.get("datetime") or {}),
            calendar={
                column: tuple(parts) for column, parts in (raw.get("calendar") or {}).items()
            },
            fills=dict(raw.get("fills") or {}),
            dropped=tuple(raw.get("dropped") or ()),
        )


def calendar_value(moment: datetime | date, part: CalendarPart | str) -> int:
    """One calendar feature of one moment, as `clean.calendar_part` derives it for a
    column (pandas' definitions: Monday is day 0, ISO weeks)."""
    if part == "year":
        return moment.year
    if part == "quarter":
        return (moment.month - 1) // 3 + 1
    if part == "month":
        return moment.month
    if part == "week":
        return moment.isocalendar()[1]
    if part == "day":
        return moment.day
    if part == "dayofweek":
        return moment.weekday()
    if part == "dayofyear":
        return moment.timetuple().tm_yday
    if part == "hour":
        return getattr(moment, "hour", 0)
    if part == "is_weekend":
        return int(moment.weekday() >= 5)
    raise ValueError(f"unknown calendar part {part!r}")


def _in_range(column: str, value: float, rule: NumericRule, warnings: Flags) -> Any:
    low = -math.inf if rule.min is None else rule.min
    high = math.inf if rule.max is None else rule.max
    if low <= value <= high:
        return value
    where = f"{value:g} is outside [{_bound(rule.min)}, {_bound(rule.max)}]"
    if rule.out_of_range == "clip":
        clipped = min(max(value, low), high)
        warnings[column] = Flag(OUT_OF_RANGE, f"{where}: clipped to {clipped:g}")
        return clipped
    if rule.out_of_range == "keep":
        warnings[column] = Flag(OUT_OF_RANGE, f"{where}: scored as sent")
        return value
    reason = " (training drops such rows)" if rule.out_of_range == "drop" else ""
    warnings[column] = Flag(OUT_OF_RANGE, f"{where}: treated as missing{reason}")
    return None


def _parse_datetime(column: str, value: Any, fmt: str | None, warnings: Flags) -> datetime | None:
    if isinstance(value, str):
        text = value.strip()
        try:
            if fmt:
                return datetime.strptime(text, fmt)
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    expected = f" ({fmt})" if fmt else " (ISO 8601)"
    message = f"{_shown(value)} is not a date{expected}: treated as missing"
    warnings[column] = Flag(UNPARSEABLE, message)
    return None


def _to_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bound(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _shown(value: Any, limit: int = 40) -> str:
    """A value for a message, quoted and cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
