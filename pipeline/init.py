"""`driftline init`: a complete params.yaml for a new data set, inferred from its rows.

The data section is written from scratch (task, schema, time, key and slice columns,
missing markers), and so are the few keys elsewhere that only make sense for one data
set: the primary metric, its floor and the baseline, the calendar features, the
positive class and the row-count floor. Every other setting (validate severities,
clean policies, split, train, tune, compress, mlflow, monitor, orchestrate, stores) is kept
from the params file already there, comments included, or else taken from the config's
defaults. The old file is kept as a numbered backup; nothing is written unless the new
file loads.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelYAMLError
from ruamel.yaml.tokens import CommentToken

from pipeline.artifacts import write_text_atomic
from pipeline.config import (
    LANDING,
    DataConfig,
    Params,
    Schema,
    Task,
    describe_errors,
    is_sql_url,
    parse_params,
    with_environment,
)
from pipeline.errors import ConfigError, DataError, SourceError
from pipeline.metrics import DEFAULT_PRIMARY
from pipeline.schema import (
    ID_NAME,
    infer_datetime_format,
    infer_schema,
    infer_task,
)
from pipeline.sources import BUILTIN_PREFIX, read_source

# Text that stands for "no value" in many exports. pandas already reads "", "NA",
# "N/A", "null" and "NaN" as missing; the rest survive as text unless listed.
MISSING_MARKERS = frozenset(
    {"unknown", "?", "na", "n/a", "", "none", "null", "nan", "missing", "-", "--", "undefined"}
)
MAX_SLICES = 3
MAX_SLICE_VALUES = 10
# A slice whose largest value holds more than this share of the rows says nothing
# about the rest.
MAX_SLICE_SHARE = 0.95
MIN_KEY_ROWS = 20
# A number named like a time that never decreases down the rows hints at rows in time
# order (ELEC2's normalised `date`): init splits them in row order and says so.
TIME_LIKE_NAME = re.compile(r"date|time|timestamp|epoch", re.IGNORECASE)
LEAK_CORRELATION = 0.95
# What "better than knowing nothing" means per task: r2 0 is the test mean, a ROC AUC
# of 0.5 a coin. Macro F1 has no such level (it depends on the classes): no floor.
FLOORS: dict[str, dict[str, float]] = {
    "regression": {"r2": 0.0},
    "binary": {"roc_auc": 0.5},
    "multiclass": {},
}
DATE_PARTS = ["dayofweek", "month"]
TIME_PARTS = ["hour", "dayofweek", "month"]
# Objectives that need a target >= 0.
NONNEGATIVE_OBJECTIVES = {"poisson", "tweedie", "log1p"}
COMMENT_COLUMN = 32


@dataclass(frozen=True)
class DataChoices:
    """What init inferred from the rows, and the data-specific settings that follow."""

    target: str
    task: Task
    schema: Schema
    rows: int
    time_column: str | None = None
    other_time_columns: tuple[str, ...] = ()
    order_column: str | None = None
    calendar_parts: tuple[str, ...] = ()
    key_columns: tuple[str, ...] = ()
    slice_columns: tuple[str, ...] = ()
    na_values: tuple[str, ...] = ()
    na_columns: tuple[str, ...] = ()
    constant_columns: tuple[str, ...] = ()
    leak_suspects: tuple[str, ...] = ()
    positive_class: Any = None
    target_negative: bool = False

    @property
    def primary_metric(self) -> str:
        return DEFAULT_PRIMARY[self.task]

    @property
    def floors(self) -> dict[str, float]:
        return dict(FLOORS[self.task])

    @property
    def baseline_groups(self) -> list[str] | None:
        """null derives hour-of-week from the time column (or is the train mean, or the
        class priors); without a time column a regression baseline is the mean per value
        of the first slice column, a stronger yardstick than one mean."""
        if self.task == "regression" and self.time_column is None and self.slice_columns:
            return [self.slice_columns[0]]
        return None

    def min_rows(self, current: int) -> int:
        """validate.min_rows: the current floor, at most a tenth of the rows found."""
        return max(1, min(current, self.rows // 10))


@dataclass(frozen=True)
class Rendered:
    """The new params text, and one line per setting of the old file that was changed
    because it cannot hold for the new data."""

    text: str
    params: Params
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class InitResult:
    params_path: Path
    backup: Path | None
    source: str
    choices: DataChoices
    min_rows: int
    notes: tuple[str, ...] = field(default=())

    def summary_lines(self) -> list[str]:
        """One line per key decision, for the CLI."""
        choices = self.choices
        target_values = choices.schema.categorical.get(choices.target)
        if target_values is not None and target_values.values:
            classes = f"{len(target_values.values)} classes, {_listed(target_values.values, 6)}"
        else:
            classes = "numbers"
        others = (
            f"; other date columns: {', '.join(choices.other_time_columns)}"
            if choices.other_time_columns
            else ""
        )
        time = (
            f"time column: {choices.time_column} (calendar features "
            f"{', '.join(choices.calendar_parts)}){others}"
            if choices.time_column
            else "time column: none found"
            + (
                f" ({choices.order_column} never decreases down the rows: split in row order)"
                if choices.order_column
                else ""
            )
        )
        floors = ", ".join(f"{name} >= {value:g}" for name, value in choices.floors.items())
        lines = [
            f"task: {choices.task} (target {choices.target}: {classes})",
            time,
            f"key columns: {', '.join(choices.key_columns) or 'none'}",
            f"slice columns: {', '.join(choices.slice_columns) or 'none'}",
            f"metric: {choices.primary_metric}; floors: {floors or 'none'}",
        ]
        if choices.na_values:
            lines.append(
                f"missing markers: {_listed(choices.na_values)} (in "
                f"{_listed(choices.na_columns)}) -> data.na_values"
            )
        lines.append(f"validate.min_rows: {self.min_rows} ({choices.rows} rows read)")
        lines.extend(self.notes)
        kept = f"the old one is kept as {self.backup}" if self.backup else "there was none before"
        lines.append(f"wrote {self.params_path}; {kept}")
        lines.append(
            "review the lines marked `inferred`, then run `driftline check-params` and `dvc repro`"
        )
        return lines


# --- inference: a frame in, choices out --------------------------------------------------


def infer_choices(frame: pd.DataFrame, target: str) -> DataChoices:
    """Everything data-specific that params need, inferred from the rows of one table."""
    if target not in frame.columns:
        raise DataError(
            f"--target {target!r} is not a column of the data (columns: "
            f"{_listed(map(str, frame.columns), 20)}); check --target"
        )
    na_values, na_columns = find_missing_markers(frame, target)
    labels = frame[target].dropna()
    labels = labels[~labels.isin(na_values)] if na_values else labels
    if labels.nunique() < 2:
        only = f" ({_plain(labels.iloc[0])!r} in every row)" if len(labels) else ""
        raise DataError(
            f"target column {target!r} holds fewer than two values{only}: nothing to "
            "learn; check --target"
        )
    task = infer_task(frame[target], na_values)
    key_columns = find_key_columns(frame, target, na_values)
    schema = infer_schema(frame, target, task, key_columns, na_values)
    time_column, other_times = choose_time_column(frame, schema)
    positive = None
    if task == "binary":
        values = schema.categorical[target].values or []
        positive = values[-1] if values else None  # train's own rule: the last sorted
    return DataChoices(
        target=target,
        task=task,
        schema=schema,
        rows=len(frame),
        time_column=time_column,
        other_time_columns=other_times,
        order_column=None if time_column else find_order_column(frame, schema, target),
        calendar_parts=tuple(calendar_parts(frame, schema, time_column)),
        key_columns=tuple(key_columns),
        slice_columns=tuple(choose_slice_columns(frame, schema, target, na_values)),
        na_values=tuple(na_values),
        na_columns=tuple(na_columns),
        constant_columns=tuple(
            column
            for column in frame.columns
            if column != target and frame[column].nunique(dropna=True) <= 1
        ),
        leak_suspects=tuple(find_leak_suspects(frame, schema, target, task)),
        positive_class=positive,
        target_negative=bool(
            task == "regression" and pd.to_numeric(frame[target], errors="coerce").lt(0).any()
        ),
    )


def find_missing_markers(frame: pd.DataFrame, target: str) -> tuple[list[str], list[str]]:
    """The spellings of "no value" found in text columns, and the columns holding them.
    A marker that is also a class of the target is left alone: it is a label."""
    labels = set(frame[target].dropna().astype(str))
    found: set[str] = set()
    columns = []
    for column in frame.columns:
        values = frame[column]
        if column == target or values.dtype != object:
            continue
        distinct = {value for value in values.dropna().unique() if isinstance(value, str)}
        markers = {
            value
            for value in distinct
            if value.strip().lower() in MISSING_MARKERS and value not in labels
        }
        if markers:
            found |= markers
            columns.append(str(column))
    return sorted(found), columns


def find_key_columns(frame: pd.DataFrame, target: str, na_values: list[str]) -> list[str]:
    """Columns that identify a row: complete and unique, named like an id, or a row
    counter (whole numbers rising by one), or text unique in every row (not dates)."""
    keys = []
    for column in frame.columns:
        values = frame[column]
        if column == target or values.isna().any() or not values.is_unique:
            continue
        if len(values) < MIN_KEY_ROWS and not ID_NAME.match(str(column)):
            continue
        if ID_NAME.match(str(column)):
            keys.append(column)
        elif pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
            steps = values.diff().dropna()
            if (steps == 1).all():
                keys.append(column)
        elif values.dtype == object and all(isinstance(value, str) for value in values):
            if na_values and values.isin(na_values).any():
                continue
            if infer_datetime_format(values) is None:
                keys.append(column)
    return keys


def choose_time_column(frame: pd.DataFrame, schema: Schema) -> tuple[str | None, tuple[str, ...]]:
    """The date column the rows are best ordered by: complete first, then already in
    order, then the finest (most distinct values). The others are named for review."""
    if not schema.datetime:
        return None, ()
    ranked = []
    for position, (column, rules) in enumerate(schema.datetime.items()):
        times = _parsed_times(frame[column], rules.format)
        ranked.append(
            (
                not times.notna().all(),
                not times.dropna().is_monotonic_increasing,
                -times.nunique(),
                position,
                column,
            )
        )
    ranked.sort()
    chosen = ranked[0][-1]
    return chosen, tuple(entry[-1] for entry in ranked[1:])


def find_order_column(frame: pd.DataFrame, schema: Schema, target: str) -> str | None:
    """A numeric column named like a time that never decreases down the rows."""
    for column in schema.numeric:
        values = frame[column]
        if column == target or not TIME_LIKE_NAME.search(str(column)):
            continue
        if values.notna().all() and values.nunique() > 1 and values.is_monotonic_increasing:
            return column
    return None


def calendar_parts(frame: pd.DataFrame, schema: Schema, time_column: str | None) -> list[str]:
    """Day of week and month from a date; the hour too when the times hold one."""
    if time_column is None:
        return []
    times = _parsed_times(frame[time_column], schema.datetime[time_column].format).dropna()
    has_time = bool((times != times.dt.normalize()).any())
    return list(TIME_PARTS if has_time else DATE_PARTS)


def choose_slice_columns(
    frame: pd.DataFrame, schema: Schema, target: str, na_values: list[str]
) -> list[str]:
    """Up to three categorical columns worth reading test metrics by: few values, none
    holding nearly every row; the most evenly spread (highest entropy) first."""
    scored = []
    for position, (column, rules) in enumerate(schema.categorical.items()):
        if column == target or rules.values is None:
            continue
        if not 2 <= len(rules.values) <= MAX_SLICE_VALUES:
            continue
        # Gaps count as one more group: a column known in few rows slices few rows.
        values = frame[column]
        values = values.mask(values.isin(na_values)) if na_values else values
        shares = values.value_counts(normalize=True, dropna=False)
        if shares.iloc[0] > MAX_SLICE_SHARE:
            continue
        entropy = -sum(share * math.log2(share) for share in shares if share > 0)
        scored.append((-entropy, position, column))
    chosen = {column for _, _, column in sorted(scored)[:MAX_SLICES]}
    return [column for column in schema.categorical if column in chosen]


def find_leak_suspects(frame: pd.DataFrame, schema: Schema, target: str, task: Task) -> list[str]:
    """Numeric columns that move with a regression target almost exactly: often a part
    of it known only afterwards. Named for review, never dropped by init."""
    if task != "regression":
        return []
    labels = pd.to_numeric(frame[target], errors="coerce")
    suspects = []
    for column in schema.numeric:
        if column == target:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.nunique() < 2:
            continue
        correlation = labels.corr(values)
        if pd.notna(correlation) and abs(correlation) >= LEAK_CORRELATION:
            suspects.append(column)
    return suspects


def _parsed_times(values: pd.Series, date_format: str | None) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    return pd.to_datetime(values, format=date_format or "mixed", errors="coerce")


# --- rendering: text in, text out ----------------------------------------------------------


def data_section(source: str, query: str | None, landing: str, choices: DataChoices) -> str:
    """The `data:` section as YAML text, each inferred key with a comment to review."""
    schema = choices.schema
    lines = [
        "data:",
        "  # Written by `driftline init` from the data: review every line marked `inferred`.",
        _line(2, "source", source),
        _line(2, "query", query),
        _line(2, "target", choices.target),
        _line(2, "task", choices.task, f"inferred from {choices.target}'s values: review"),
    ]
    if choices.time_column:
        if choices.other_time_columns:
            lines.append(
                f"  # Other date columns, not chosen: {', '.join(choices.other_time_columns)}."
            )
        lines.append(_line(2, "time_column", choices.time_column, "inferred: the split follows it"))
    else:
        if choices.order_column:
            lines.append(
                f"  # No date column found. {choices.order_column} never decreases down the "
                "rows, so split.method"
            )
            lines.append("  # is set to ordered (a random split of rows in time order would leak).")
        else:
            lines.append("  # No date column found. Rows in time order: set split.method: ordered.")
        lines.append(_line(2, "time_column", None, "inferred: none found"))
    lines += [
        _line(
            2,
            "key_columns",
            list(choices.key_columns),
            "inferred: unique in every row" if choices.key_columns else "inferred: none found",
        ),
        _line(
            2,
            "slice_columns",
            list(choices.slice_columns),
            "inferred: few values; test metrics per value",
        ),
    ]
    if choices.na_values:
        lines.append(
            f"  # Found in {', '.join(choices.na_columns)}. Remove a marker that is a real "
            "answer there."
        )
        lines.append(
            _line(2, "na_values", list(choices.na_values), "inferred: these become missing")
        )
    else:
        lines.append(_line(2, "na_values", [], 'inferred: none found; text meaning "missing"'))
    lines += [
        _line(2, "landing", landing, "labelled production batches (*.parquet)"),
        "  # A date, quoted: later rows are held out of training for `driftline simulate`;",
        "  # it needs time_column. null trains on every row.",
        _line(2, "until", None),
        "  csv:",
        _line(4, "delimiter", None, "null: detected from the file"),
        _line(4, "quotechar", '"'),
        _line(4, "encoding", "utf-8"),
        _line(
            2,
            "schema",
            None,
            f"inferred from {choices.rows} rows: review (ranges are open)",
            value=False,
        ),
    ]
    for group in ("numeric", "categorical", "datetime"):
        columns: dict[str, Any] = getattr(schema, group)
        if not columns:
            lines.append(_line(4, group, {}))
            continue
        lines.append(f"    {group}:")
        for column, rules in columns.items():
            lines.append(_line(6, column, rules.model_dump(mode="json", exclude_defaults=True)))
    lines.append(_line(4, "id", list(schema.id)))
    if choices.constant_columns:
        lines.append(
            f"    # One value in every row read: {', '.join(map(str, choices.constant_columns))}."
        )
    if choices.leak_suspects:
        lines.append(
            f"    # Review: {', '.join(choices.leak_suspects)} "
            f"{'moves' if len(choices.leak_suspects) == 1 else 'move'} with {choices.target} "
            "almost exactly; drop a column known only after the target."
        )
    lines.append(_line(4, "drop", list(schema.drop), "columns that leak the target go here"))
    return "\n".join(lines) + "\n"


def render_params(
    choices: DataChoices,
    source: str,
    query: str | None = None,
    existing: str | None = None,
    origin: str = "params.yaml",
) -> Rendered:
    """The new params text: the data section and data-specific keys from `choices`, the
    rest from `existing` (comments kept) or the config's defaults. Raises ConfigError
    when the result would not load."""
    round_trip = _round_trip_yaml()
    if existing is None:
        document = round_trip.load(_defaults_text(choices.target))
    else:
        try:
            document = round_trip.load(existing)
        except RuamelYAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(
                f"{origin}: not valid YAML{where}; fix it or move it away, then run init again"
            ) from None
        if not isinstance(document, CommentedMap):
            raise ConfigError(
                f"{origin}: expected a mapping of sections (data, validate, ...); "
                "fix it or move it away, then run init again"
            )
    landing = LANDING  # the folder dvc.yaml tracks; no other value loads

    fresh = round_trip.load(data_section(source, query, landing, choices))
    if "data" in document:
        document["data"] = fresh["data"]
    else:
        document.insert(0, "data", fresh["data"])
    document.ca.items.pop("data", None)

    notes = _set_data_specific_keys(document, choices)
    text = _space_sections(_dump(round_trip, document))
    params = check_rendered(text, origin)
    intended = _intended_data(source, query, landing, choices)
    if params.data != intended:  # a quoting slip (`no` read as false) would show here
        raise AssertionError(f"init wrote a data section that reads back differently: {text}")
    return Rendered(text=text, params=params, notes=tuple(notes))


def check_rendered(text: str, origin: str) -> Params:
    """The text as `load_params` would read it; ConfigError naming the key if it fails."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise AssertionError(f"init wrote YAML that does not parse: {text}") from None
    try:
        return parse_params(with_environment(raw), origin=f"{origin} (as init would write it)")
    except ConfigError as exc:
        raise ConfigError(f"{exc}; nothing written: fix that key and run init again") from None


def _set_data_specific_keys(document: CommentedMap, choices: DataChoices) -> list[str]:
    notes = []
    validate = _section(document, "validate")
    if validate is not None:
        current = validate.get("min_rows", 100)
        current = current if isinstance(current, int) and current >= 1 else 100
        _put(
            validate,
            "min_rows",
            choices.min_rows(current),
            f"inferred: at most a tenth of the {choices.rows} rows read",
        )

    clean = _section(document, "clean")
    if clean is not None:
        overrides = clean.get("columns")
        if isinstance(overrides, dict):
            known = set(choices.schema.declared_columns())
            gone = [column for column in overrides if column not in known]
            for column in gone:
                del overrides[column]
            if gone:
                notes.append(
                    f"clean.columns: removed the overrides of {', '.join(map(str, gone))} "
                    "(not in this data)"
                )
        parts = {choices.time_column: list(choices.calendar_parts)} if choices.time_column else {}
        _put(
            clean,
            "calendar_features",
            parts,
            "inferred: derived from the time column" if parts else "inferred: no time column",
        )

    split = _section(document, "split")
    if split is not None:
        method = split.get("method")
        if method == "time" and choices.time_column is None:
            _put(split, "method", "auto", "init: no time column, so not `time`")
            notes.append("split.method: time -> auto (no time column in this data)")
        elif method == "stratified" and choices.task == "regression":
            _put(split, "method", "auto", "init: a regression target cannot be stratified")
            notes.append("split.method: stratified -> auto (the target is a number)")
        if (
            split.get("method", "auto") == "auto"
            and choices.time_column is None
            and choices.order_column
        ):
            # A shuffled split of rows in time order lets the model see the future.
            _put(
                split,
                "method",
                "ordered",
                f"inferred: {choices.order_column} never decreases down the rows; "
                "auto if they are not in time order",
            )
            notes.append(
                f"split.method: -> ordered ({choices.order_column} never decreases down the rows)"
            )

    time_ordered = (split or {}).get("method", "auto") in ("time", "ordered") or (
        (split or {}).get("method", "auto") == "auto" and choices.time_column is not None
    )
    tune = _section(document, "tune")
    if tune is not None and time_ordered and tune.get("cv_folds"):
        _put(tune, "cv_folds", 0, "init: time-ordered data is scored on rolling folds")
        notes.append("tune.cv_folds: -> 0 (time-ordered data uses train.selection_folds)")

    train = _section(document, "train")
    if train is not None:
        _put(
            train,
            "positive_class",
            choices.positive_class,
            "inferred: the class scored as positive"
            if choices.task == "binary"
            else "binary only; null: the last sorted",
        )
        objective = train.get("objective", "auto")
        if choices.target_negative and objective in NONNEGATIVE_OBJECTIVES:
            _put(train, "objective", "auto", "init: the target holds negative values")
            notes.append(f"train.objective: {objective} -> auto (the target has negative values)")

    evaluate = _section(document, "evaluate")
    if evaluate is not None:
        _put(evaluate, "primary_metric", choices.primary_metric, f"inferred for {choices.task}")
        _put(
            evaluate,
            "floors",
            choices.floors,
            "inferred: better than knowing nothing; raise it to what you need"
            if choices.floors
            else "inferred: none for this task; e.g. {f1_macro: 0.5}",
        )
        baseline = choices.baseline_groups
        if baseline:
            why = f"inferred: regression baseline, the mean per {baseline[0]}"
        elif choices.task == "regression" and choices.time_column:
            why = "inferred: null: the hour-of-week mean from the time column"
        elif choices.task == "regression":
            why = "inferred: null: the train mean"
        else:
            why = "inferred: classes: the baseline is the class priors"
        _put(evaluate, "baseline_groups", baseline, why)

    monitor = document.get("monitor")
    if isinstance(monitor, CommentedMap):
        # The drift rule's lists name another data set's columns: keep this one's.
        known = set(choices.schema.declared_columns())
        known |= {f"{choices.time_column}_{part}" for part in choices.calendar_parts}
        for key in ("calendar_columns", "ignore_columns"):
            listed = monitor.get(key)
            if not isinstance(listed, list):
                continue
            gone = [column for column in listed if column not in known]
            if gone:
                kept = [column for column in listed if column in known]
                _put(monitor, key, kept, "init: the columns of this data only")
                notes.append(
                    f"monitor.{key}: removed {', '.join(map(str, gone))} (not in this data)"
                )
    return notes


def _section(document: CommentedMap, name: str) -> CommentedMap | None:
    """A section to edit, created when absent; None when it is not a mapping (loading
    the result then names the key)."""
    if name not in document or document[name] is None:
        document[name] = CommentedMap()
    section = document[name]
    return section if isinstance(section, CommentedMap) else None


def _put(section: CommentedMap, key: str, value: Any, comment: str) -> None:
    """Set `key` to `value` (in flow style) with an end-of-line comment, keeping the
    comment lines and blank lines that followed the old value."""
    old = section.get(key)
    following = _following_lines(section, key) + _trailing_inside(old)
    section[key] = _node(value)
    section.ca.items.pop(key, None)
    section.yaml_add_eol_comment(f"# {comment}", key, column=COMMENT_COLUMN)
    token = section.ca.items[key][2]
    token.value = f"{token.value}\n{following}"


def _following_lines(section: CommentedMap, key: str) -> str:
    """The comment lines after `key`'s own end-of-line comment (a note continued on the
    next lines, the blank line and header before the next section)."""
    entry = section.ca.items.get(key)
    token = entry[2] if entry and len(entry) > 2 else None
    if not isinstance(token, CommentToken):
        return ""
    text = token.value
    if text.startswith("#"):  # the key's own comment: drop its first line
        return text.split("\n", 1)[1] if "\n" in text else ""
    return text[1:] if text.startswith("\n") else text


def _trailing_inside(value: Any) -> str:
    """Blank lines and comments after the last item of a block collection: YAML hangs
    them on that item, so they go when the collection is replaced."""
    if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
        last = list(value)[-1]
        return _following_lines(value, last) + _trailing_inside(value[last])
    if isinstance(value, CommentedSeq) and value and not value.fa.flow_style():
        entry = value.ca.items.get(len(value) - 1)
        token = entry[0] if entry else None
        text = token.value if isinstance(token, CommentToken) else ""
        return (text.split("\n", 1)[1] if text.startswith("#") else text.lstrip("\n")) + (
            _trailing_inside(value[-1])
        )
    return ""


def _node(value: Any) -> Any:
    """`value` as ruamel reads its PyYAML flow text: PyYAML's quoting (`'no'`), which is
    what load_params reads, survives the round trip."""
    loaded = _round_trip_yaml().load(f"v: {_flow(value)}\n")
    return loaded["v"]


def _flow(value: Any) -> str:
    """One value as PyYAML writes it in flow style, quoted where YAML 1.1 needs it."""
    text = yaml.safe_dump(
        [value], default_flow_style=True, sort_keys=False, width=math.inf, allow_unicode=True
    ).strip()
    return text[1:-1]


def _line(indent: int, key: str, data: Any, comment: str | None = None, value: bool = True) -> str:
    text = f"{' ' * indent}{_flow(key)}:" + (f" {_flow(data)}" if value else "")
    if comment:
        text = f"{text.ljust(COMMENT_COLUMN - 2)}  # {comment}"
    return text


def _round_trip_yaml() -> YAML:
    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.width = 4096
    round_trip.indent(mapping=2, sequence=4, offset=2)
    round_trip.representer.add_representer(type(None), _represent_null)
    return round_trip


def _represent_null(representer: Any, _: None) -> Any:
    """`null`, as the file has it, rather than ruamel's empty value."""
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def _dump(round_trip: YAML, document: CommentedMap) -> str:
    buffer = io.StringIO()
    round_trip.dump(document, buffer)
    return buffer.getvalue()


def _space_sections(text: str) -> str:
    """A blank line before each top-level section (and the comments heading it): YAML
    hangs the blank on the section before, which init may have replaced."""
    lines = text.split("\n")
    spaced: list[str] = []
    for line in lines:
        starts_section = bool(line) and not line[0].isspace() and not line.startswith("#")
        if starts_section and spaced:
            block = len(spaced)
            while block > 0 and spaced[block - 1].startswith("#"):
                block -= 1
            if block > 0 and spaced[block - 1].strip():
                spaced.insert(block, "")
        spaced.append(line)
    return "\n".join(spaced)


def _defaults_text(target: str) -> str:
    """Every section but data at the config's defaults, for a project without params."""
    defaults = Params(data=DataConfig(target=target)).model_dump(
        mode="json", by_alias=True, exclude={"data"}
    )
    header = (
        "# Driftline's single configuration (pipeline/config.py is its typed model), written\n"
        "# by `driftline init`: the sections after data hold the config's defaults.\n"
        "# Check it without running anything: `driftline check-params`.\n\n"
    )
    body = yaml.safe_dump(
        defaults, sort_keys=False, allow_unicode=True, width=math.inf, default_flow_style=None
    )
    return header + body


def _intended_data(
    source: str, query: str | None, landing: str, choices: DataChoices
) -> DataConfig:
    return DataConfig.model_validate(
        {
            "source": source,
            "query": query,
            "target": choices.target,
            "task": choices.task,
            "time_column": choices.time_column,
            "key_columns": list(choices.key_columns),
            "slice_columns": list(choices.slice_columns),
            "na_values": list(choices.na_values),
            "landing": landing,
            "until": None,
            "schema": choices.schema.model_dump(mode="json"),
        }
    )


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _listed(values: Iterable[Any], limit: int = 10) -> str:
    shown = [str(value) if value != "" else '""' for value in values]
    more = f", ... ({len(shown)} in all)" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


# --- the edge: files in, files out ---------------------------------------------------------


def init_params(
    source: str, target: str, params_path: Path, query: str | None = None
) -> InitResult:
    """Read `source`, infer its settings, and write `params_path` (the old file, if any,
    is copied to the first free `<name>.bak`, `<name>.bak.1`, ... first)."""
    params_path = Path(params_path)
    if params_path.is_dir():
        raise ConfigError(f"{params_path}: is a folder; --params names the file to write")
    if not params_path.parent.is_dir():
        raise ConfigError(f"{params_path.parent}: no such folder for the params file")
    existing = _read_existing(params_path)
    if (
        not source.startswith(BUILTIN_PREFIX)
        and not is_sql_url(source)
        and "$" not in source
        and not Path(source).exists()
    ):
        raise SourceError(f"{source}: no such file or folder (check SOURCE)")
    if is_sql_url(source) and not query:
        raise ConfigError("SOURCE is a SQL URL: give --query with the SELECT to run")
    try:
        reading = DataConfig(source=source, target=target, query=query)
    except ValidationError as exc:
        raise ConfigError(f"init: {describe_errors(exc)}") from None
    table = read_source(reading)
    choices = infer_choices(table.frame, target)
    written_source = source_for(source, params_path.parent)
    rendered = render_params(choices, written_source, query, existing, origin=str(params_path))

    notes = list(rendered.notes)
    notes.extend(_project_notes(existing, written_source, target, rendered.params, params_path))
    backup = backup_file(params_path) if existing is not None else None
    write_text_atomic(params_path, rendered.text)
    return InitResult(
        params_path=params_path,
        backup=backup,
        source=written_source,
        choices=choices,
        min_rows=rendered.params.validation.min_rows,
        notes=tuple(notes),
    )


def source_for(source: str, project: Path) -> str:
    """The source as the stages will read it from the project folder: a path relative
    to it when inside it, absolute otherwise; URLs and `builtin:` names as given."""
    if source.startswith(BUILTIN_PREFIX) or is_sql_url(source) or "$" in source:
        return source
    path = Path(source).resolve()
    try:
        return str(path.relative_to(project.resolve()))
    except ValueError:
        return str(path)


def backup_file(path: Path) -> Path:
    """Copy `path` to the first of `<name>.bak`, `<name>.bak.1`, ... that does not exist;
    an existing backup is never overwritten."""
    payload = path.read_bytes()
    candidate, number = path.with_name(f"{path.name}.bak"), 0
    while True:
        try:
            with candidate.open("xb") as handle:
                handle.write(payload)
            return candidate
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.name}.bak.{number}")
        except OSError as exc:
            raise ConfigError(
                f"{candidate}: cannot write the backup ({exc.strerror}); nothing written"
            ) from None


def _registry_may_exist(params: Params, project: Path) -> bool:
    """Whether the tracking store may already hold models: a SQLite file that exists,
    or any server (init does not connect to it)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    if not uri.startswith("sqlite:///"):
        return True
    database = Path(uri.removeprefix("sqlite:///"))
    return (database if database.is_absolute() else project / database).exists()


def _read_existing(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the params file ({exc}); nothing written") from None


def _project_notes(
    existing: str | None, source: str, target: str, params: Params, params_path: Path
) -> list[str]:
    """What else in the project may still belong to the data set before."""
    notes = []
    try:
        old = yaml.safe_load(existing) if existing else None
    except yaml.YAMLError:
        old = None
    old_data = old.get("data") if isinstance(old, dict) else None
    data_changed = isinstance(old_data, dict) and (
        old_data.get("source") != source or old_data.get("target") != target
    )
    if data_changed and _registry_may_exist(params, params_path.parent):
        notes.append(
            f"note: the registry model {params.mlflow.registered_model!r} may hold a champion "
            "of the data set before, which the gate cannot compare with: give this data set "
            "its own mlflow.registered_model"
        )
    landing = params_path.parent / params.data.landing
    batches = sorted(landing.glob("*.parquet")) if landing.is_dir() else []
    if batches:
        notes.append(
            f"note: {landing} holds {len(batches)} batch(es) that ingest will append; move "
            "them away if they belong to another data set"
        )
    return notes
