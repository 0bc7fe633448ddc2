"""clean: dedupe, coerce types, handle missing and out-of-range values, parse dates.

Outputs: `data/clean/data.parquet`, `reports/clean.json` (every change, counted per
column) and flat figures in `metrics/clean.json`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from pipeline.artifacts import (
    read_json,
    read_stage_input,
    write_json_atomic,
    write_parquet_atomic,
)
from pipeline.config import DEFAULT_PARAMS, CalendarPart, CleanConfig, load_params
from pipeline.console import report_user_errors, run_command, say
from pipeline.errors import ConfigError, DataError
from pipeline.schema import DatasetSpec

NUMERIC_FILLS = {"keep", "median", "mean", "zero", "drop"}
CATEGORICAL_FILLS = {"keep", "most_frequent", "constant", "drop"}


@dataclass(frozen=True)
class Cleaned:
    frame: pd.DataFrame
    report: dict[str, Any]

    def figures(self) -> dict[str, int]:
        return {
            "rows_in": self.report["rows_in"],
            "rows_out": self.report["rows_out"],
            "duplicates_dropped": self.report["rows_dropped"].get("duplicates", 0),
            "rows_dropped": sum(self.report["rows_dropped"].values()),
            "values_changed": sum(sum(c.values()) for c in self.report["columns"].values()),
        }


class _ChangeLog:
    """Counts of what clean did, per column and per reason for dropping rows."""

    def __init__(self) -> None:
        self.columns: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.rows_dropped: Counter[str] = Counter()
        self.fills: dict[str, Any] = {}  # the value each imputed column was filled with

    def changed(self, column: str, change: str, count: int) -> None:
        if count:
            self.columns[column][change] += int(count)

    def drop_rows(self, frame: pd.DataFrame, mask: pd.Series, reason: str) -> pd.DataFrame:
        count = int(mask.sum())
        if count:
            self.rows_dropped[reason] += count
            return frame.loc[~mask].copy()
        return frame


def clean(frame: pd.DataFrame, spec: DatasetSpec, config: CleanConfig) -> Cleaned:
    """Return a cleaned copy of `frame` and a report of every change."""
    schema = spec.schema
    log = _ChangeLog()
    rows_in = len(frame)
    frame = frame.copy()

    if spec.na_values:
        for column in frame.select_dtypes(include="object").columns:
            marked = frame[column].isin(spec.na_values)
            log.changed(column, "na_marker_to_null", marked.sum())
            frame[column] = frame[column].mask(marked)

    if config.drop_duplicates:
        frame = log.drop_rows(frame, frame.duplicated(keep="first"), "duplicates")

    for column in schema.numeric:
        if column in frame:
            frame[column] = _coerce_numeric(frame[column], column, log)
    for column, rules in schema.categorical.items():
        if column in frame:
            frame[column] = _coerce_categorical(frame[column], rules.values, column, log)
    for column, rules in schema.datetime.items():
        if column in frame:
            parsed = pd.to_datetime(frame[column], format=rules.format or "mixed", errors="coerce")
            log.changed(
                column, "unparseable_to_null", (parsed.isna() & frame[column].notna()).sum()
            )
            frame[column] = parsed

    frame = log.drop_rows(frame, frame[spec.target].isna(), "target_missing")

    for column, rules in schema.numeric.items():
        if column not in frame or (rules.min is None and rules.max is None):
            continue
        values = frame[column]
        outside = values.lt(rules.min if rules.min is not None else -float("inf")) | values.gt(
            rules.max if rules.max is not None else float("inf")
        )
        policy = config.policy(column, "out_of_range")
        if column == spec.target and policy in ("clip", "null"):
            policy = "drop"  # a label is never altered: an impossible one is removed
        if policy == "clip":
            log.changed(column, "clipped", outside.sum())
            frame[column] = values.clip(lower=rules.min, upper=rules.max)
        elif policy == "null":
            log.changed(column, "out_of_range_to_null", outside.sum())
            frame[column] = values.mask(outside)
        elif policy == "drop":
            frame = log.drop_rows(frame, outside, "out_of_range")

    for column, rules in schema.categorical.items():
        if column not in frame or rules.values is None:
            continue
        unknown = frame[column].notna() & ~frame[column].isin(rules.values)
        policy = "drop" if column == spec.target else config.policy(column, "unknown_category")
        if policy == "null":
            log.changed(column, "unknown_category_to_null", unknown.sum())
            frame[column] = frame[column].mask(unknown)
        elif policy == "drop":
            frame = log.drop_rows(frame, unknown, "unknown_category")

    for column in frame.columns:
        if column != spec.target:
            frame = _fill_missing(frame, column, spec, config, log)

    dropped_columns = [column for column in schema.drop if column in frame]
    frame = frame.drop(columns=dropped_columns)
    derived = []
    for column, parts in config.calendar_features.items():
        if column not in schema.datetime:
            raise ConfigError(
                f"clean.calendar_features: {column!r} is not a datetime column in the schema"
            )
        for part in parts:
            name = f"{column}_{part}"
            frame[name] = calendar_part(frame[column], part)
            derived.append(name)

    frame = frame.reset_index(drop=True)
    report = {
        "rows_in": rows_in,
        "rows_out": len(frame),
        "rows_dropped": dict(log.rows_dropped),
        "columns": {column: dict(counts) for column, counts in sorted(log.columns.items())},
        "dropped_columns": dropped_columns,
        "derived_columns": derived,
        # What serving fills a request's gaps with, as clean filled them here (RowRules).
        "fills": dict(sorted(log.fills.items())),
    }
    return Cleaned(frame=frame, report=report)


def calendar_part(values: pd.Series, part: CalendarPart) -> pd.Series:
    """One calendar feature of a datetime column, as a nullable integer."""
    accessor = values.dt
    if part == "week":
        derived = accessor.isocalendar().week
    elif part == "is_weekend":
        derived = accessor.dayofweek >= 5
    else:
        derived = getattr(accessor, part)
    return derived.astype("Int64")


def _coerce_numeric(values: pd.Series, column: str, log: _ChangeLog) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values
    coerced = pd.to_numeric(values, errors="coerce")
    log.changed(column, "not_a_number_to_null", (coerced.isna() & values.notna()).sum())
    return coerced


def _coerce_categorical(
    values: pd.Series, allowed: list | None, column: str, log: _ChangeLog
) -> pd.Series:
    """Categories that are numbers stay numbers; text categories become stripped text."""
    if allowed and all(isinstance(v, int | float) and not isinstance(v, bool) for v in allowed):
        return _coerce_numeric(values, column, log)
    if not (values.dtype == object or pd.api.types.is_string_dtype(values)):
        return values  # booleans, and numbers with no declared categories, stay as they are
    text = values.astype("string").str.strip()
    return text.astype(object).where(values.notna(), None)


def _fill_missing(
    frame: pd.DataFrame,
    column: str,
    spec: DatasetSpec,
    config: CleanConfig,
    log: _ChangeLog,
) -> pd.DataFrame:
    missing = frame[column].isna()
    kind = spec.schema.kind_of(column)
    chosen = config.override(column, "missing")
    if kind == "datetime":
        policy = chosen or config.missing_datetime
        allowed = {"keep", "drop"}
    elif kind == "numeric" or (kind is None and pd.api.types.is_numeric_dtype(frame[column])):
        policy = chosen or config.missing_numeric
        allowed = NUMERIC_FILLS | {"most_frequent"}
    elif kind in ("categorical", None):
        policy = chosen or config.missing_categorical
        allowed = CATEGORICAL_FILLS
    else:  # ids and dropped columns are left alone
        return frame
    if policy not in allowed:
        raise ConfigError(
            f"clean.columns.{column}.missing: {policy!r} does not apply to a {kind or 'text'} "
            f"column (use one of {', '.join(sorted(allowed))})"
        )
    if policy == "keep":
        return frame
    if policy == "drop":
        return log.drop_rows(frame, missing, "missing")
    # The fill is kept even for a column without gaps here: serving fills a request's
    # gap with it (RowRules), as clean would have.
    values = frame[column]
    if policy == "median":
        fill = values.median()
    elif policy == "mean":
        fill = values.mean()
    elif policy == "zero":
        fill = 0
    elif policy == "constant":
        fill = config.fill_value
    else:  # most_frequent
        modes = values.mode()
        if modes.empty:
            return frame
        fill = modes.iloc[0]
    if pd.isna(fill):  # an empty column: nothing to fill with
        return frame
    log.fills[column] = fill.item() if hasattr(fill, "item") else fill
    if missing.any():
        log.changed(column, f"imputed_{policy}", missing.sum())
        frame[column] = values.fillna(fill)
    return frame


def require_validated(manifest: dict[str, Any], validation: dict[str, Any]) -> None:
    """Refuse raw data that the validate stage has not passed."""
    if validation.get("content_hash") != manifest.get("content_hash"):
        raise DataError("data/raw changed since it was last validated: run the validate stage")
    if not validation.get("success"):
        raise DataError("data/raw failed validation: see reports/validation-failed/")


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    raw: Annotated[Path, typer.Option(help="The ingest stage's folder.")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="Where the cleaned table goes.")] = Path(
        "data/clean/data.parquet"
    ),
    report: Annotated[Path, typer.Option(help="The change report.")] = Path("reports/clean.json"),
    validation: Annotated[Path, typer.Option(help="The validate stage's summary.")] = Path(
        "reports/validation/summary.json"
    ),
    metrics: Annotated[Path, typer.Option(help="Flat figures for `dvc metrics`.")] = Path(
        "metrics/clean.json"
    ),
) -> None:
    """Clean data/raw into data/clean per the column policies in params."""
    config = load_params(params).clean
    frame = read_stage_input(raw / "data.parquet", "ingest")
    spec = DatasetSpec.read(raw / "schema.yaml")
    require_validated(read_json(raw / "manifest.json", "ingest"), read_json(validation, "validate"))
    result = clean(frame, spec, config)
    write_parquet_atomic(out, result.frame)
    write_json_atomic(report, result.report)
    figures = result.figures()
    write_json_atomic(metrics, figures)
    say(
        f"clean: {figures['rows_in']} -> {figures['rows_out']} rows "
        f"({figures['rows_dropped']} dropped, {figures['values_changed']} values changed) -> {out}"
    )


if __name__ == "__main__":
    run_command(main)
