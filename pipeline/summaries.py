"""Mergeable summaries of the prediction log, so that a drift check costs the same
whatever the size of its window.

The prediction log's flush thread summarises the feature columns of the rows it writes
(`summarise_table`, `summarise_frame`), one summary per hour of the rows' timestamps,
and stores each beside the rows: a `summary-H<hour>-*.parquet` file in the day folder,
or a row of the `<table>_summaries` table of a SQL log. The monitor's `read_window`
reads the summaries of the window's whole hours and merges each hour's into one in the
store (`compact_hours`), so that the next check of a day's window reads about 24 small
records. `check_window` takes every hour whose summaries count exactly the window's
rows in it from them, the rest from rows, and `check_summary` compares the merged
counts with the champion's `DriftProfile` under the same rules as `check_drift`.

A summary does not depend on the model: the champion changes, and yesterday's summaries
must merge with today's reference. Per column:

- text (a categorical as the log holds it): the exact count of each value;
- a number: the exact count of each value while the column holds at most
  `EXACT_VALUES` of them (so few-values columns keep their exact Jensen-Shannon,
  chi-square and Z tests, and integer-coded categories their exact counts); beyond
  that, a relative-error log-bucket sketch (DDSketch's mapping): each value is counted
  at the middle of its bucket, within `ALPHA` (0.5%) of itself; |values| below
  `ZERO_BELOW` count as 0;
- how many values are missing (None, NaN, +-inf: what the drift rules drop).

Wasserstein between the exact sorted reference and the merged counts is computed in
time proportional to the counted values (`wasserstein_weighted`), not the rows. With
exact counts it is the exact distance; from buckets, moving each value at most
`ALPHA / (1 - ALPHA) * |x|` moves the distance at most that much on average:
|W_sketch - W_exact| <= ALPHA / (1 - ALPHA) * E|x| + ZERO_BELOW. A column whose statistic
lies within that bound of the threshold is `uncertain`: the monitor decides it from the
window's rows. K-S (references of at most 1000 rows) is exact from exact counts and
uncertain from buckets.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.drift import (
    FEW_VALUES,
    LARGE_REFERENCE_ROWS,
    MIN_NORM,
    TWO_VALUES,
    ColumnDrift,
    ColumnProfile,
    DriftProfile,
    DriftResult,
    Level,
    _empty,
    _shares_drift,
    _verdict,
    ks_p_value,
)
from pipeline.errors import DataError
from pipeline.features import category_value

if TYPE_CHECKING:
    import pyarrow as pa

ALPHA = 0.005  # relative accuracy of a bucketed value
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
ZERO_BELOW = 1e-8  # |x| below this counts as 0 in a sketch
EXACT_VALUES = 1024  # a numeric column keeps exact counts while it has at most this many
KS_EXACT_ROWS = 10_000  # scipy's ks_2samp (method "auto") is exact up to this many rows
HOUR = timedelta(hours=1)
SUMMARY_FORMAT = "driftline-log-summary"
SUMMARY_VERSION = 1


@dataclass(frozen=True, eq=False)
class ColumnSummary:
    """One column of a set of logged rows. `values` are sorted floats (numbers) or texts;
    `counts` how often each occurs. `exact` is False once numbers are bucketed (each
    value then stands for its bucket)."""

    name: str
    kind: str  # "number" or "text"
    values: np.ndarray
    counts: np.ndarray
    missing: int = 0
    exact: bool = True

    @property
    def present(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True, eq=False)
class Summary:
    """The feature columns of `rows` logged rows whose timestamps lie in
    [`start`, `end`). `replaces` names the summaries a compaction merged into this one."""

    start: datetime
    end: datetime
    rows: int
    columns: Mapping[str, ColumnSummary]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    replaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class SummaryDrift:
    """`check_summary`'s verdicts; `uncertain` names the columns whose verdict the
    summary cannot settle (decide them from rows), `bounds` each column's largest
    possible error of its statistic (0 when exact)."""

    result: DriftResult
    uncertain: tuple[str, ...]
    bounds: dict[str, float]


# --- building ---------------------------------------------------------------------------


def bucket_values(values: np.ndarray) -> np.ndarray:
    """Each value's bucket, as the value at the bucket's middle (DDSketch's mapping:
    bucket k holds (gamma^(k-1), gamma^k], its middle 2 gamma^k / (gamma + 1) is within
    ALPHA of any of them). A middle maps to itself."""
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(values)
    kept = magnitude >= ZERO_BELOW
    middles = np.zeros_like(values)
    keys = np.ceil(np.log(magnitude[kept]) / LOG_GAMMA)
    middles[kept] = np.sign(values[kept]) * (2 * np.power(GAMMA, keys) / (GAMMA + 1))
    return middles


def _tally(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(values, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=unique.size).astype(np.int64)


def _float_summary(name: str, array: np.ndarray) -> ColumnSummary:
    """Counts of a float column's finite values (exact while few, else bucketed)."""
    finite = array[np.isfinite(array)]
    unique, counts = np.unique(finite, return_counts=True)
    column = ColumnSummary(
        name, "number", unique, counts.astype(np.int64), array.size - finite.size
    )
    return as_sketch(column) if unique.size > EXACT_VALUES else column


def text_summary(name: str, values: Sequence[Any]) -> ColumnSummary:
    """Counts of a text column's values (None is missing)."""
    series = pd.Series(values, dtype=object)
    tallies = series.value_counts(dropna=True)
    missing = int(series.isna().sum())
    order = np.argsort(tallies.index.to_numpy(dtype=object).astype(str), kind="stable")
    texts = tallies.index.to_numpy(dtype=object).astype(str)[order].astype(object)
    return ColumnSummary(name, "text", texts, tallies.to_numpy(np.int64)[order], missing)


def as_sketch(column: ColumnSummary) -> ColumnSummary:
    """Exact numbers counted by bucket instead (text and sketches are returned as
    they are)."""
    if not column.exact or column.kind != "number":
        return column
    values, counts = _tally(bucket_values(column.values), column.counts)
    return ColumnSummary(column.name, "number", values, counts, column.missing, exact=False)


def summarise_columns(
    columns: Mapping[str, Any], start: datetime, end: datetime, rows: int
) -> Summary:
    """A summary of equally long columns (numpy arrays, lists, pandas Series): floats
    as numbers, anything else as text."""
    summaries = {}
    for name, values in columns.items():
        array = np.asarray(values)
        if array.dtype.kind in "fiu":
            summaries[name] = _float_summary(name, array.astype(np.float64))
        else:  # booleans too, as the check's category text ("True"): `_as_numbers`
            summaries[name] = text_summary(name, [_text(value) for value in array])
    return Summary(start=start, end=end, rows=rows, columns=summaries)


def summarise_rows(timestamps: Any, columns: Mapping[str, Any], prefix: str = "") -> list[Summary]:
    """One summary per UTC hour of `timestamps`, over `columns` (named without
    `prefix`, which the log's feature columns carry)."""
    stamps = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True))
    if not len(stamps):
        return []
    hours = stamps.floor("h")
    summaries = []
    for hour in hours.unique().sort_values():
        keep = np.asarray(hours == hour)
        picked = {
            name.removeprefix(prefix): np.asarray(values)[keep] for name, values in columns.items()
        }
        start = hour.to_pydatetime()
        summaries.append(summarise_columns(picked, start, start + HOUR, int(keep.sum())))
    return summaries


def summarise_table(table: pa.Table, prefix: str) -> list[Summary]:
    """Summaries of an Arrow table of log rows (`prediction_log.log_table`): its
    `timestamp` and the columns named with `prefix`, per hour. Arrow all the way
    (no pandas): it runs in serving's flush thread, which shares the GIL."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not table.num_rows:
        return []
    stamps = table.column("timestamp").cast(pa.int64()).to_numpy()  # ns since the epoch
    hours = stamps // (3600 * 10**9)
    summaries = []
    for hour in np.unique(hours).tolist():
        rows = table if hours[0] == hours[-1] == hour else table.filter(pa.array(hours == hour))
        columns = {}
        for name in rows.column_names:
            if not name.startswith(prefix):
                continue
            chunked = rows.column(name)
            feature = name.removeprefix(prefix)
            kind = chunked.type
            if pa.types.is_floating(kind) or pa.types.is_integer(kind):
                columns[feature] = _float_summary(feature, chunked.to_numpy().astype(np.float64))
            elif pa.types.is_null(kind):
                columns[feature] = ColumnSummary(
                    feature, "number", np.empty(0), np.empty(0, np.int64), rows.num_rows
                )
            elif pa.types.is_boolean(kind):  # as the check's category text: `_as_numbers`
                trues = int(pc.sum(chunked).as_py() or 0)
                falses = rows.num_rows - chunked.null_count - trues
                kept = [(text, n) for text, n in (("False", falses), ("True", trues)) if n]
                columns[feature] = ColumnSummary(
                    feature,
                    "text",
                    np.array([text for text, _ in kept], dtype=object),
                    np.array([n for _, n in kept], dtype=np.int64),
                    chunked.null_count,
                )
            else:
                tallies = pc.value_counts(chunked.cast(pa.string()))
                texts = tallies.field(0).to_numpy(zero_copy_only=False)
                counts = tallies.field(1).to_numpy()
                kept = np.array([text is not None for text in texts], dtype=bool)
                order = np.argsort(texts[kept].astype(str), kind="stable")
                columns[feature] = ColumnSummary(
                    feature,
                    "text",
                    texts[kept][order].astype(object),
                    counts[kept][order].astype(np.int64),
                    int(chunked.null_count),
                )
        start = datetime.fromtimestamp(hour * 3600, UTC)
        summaries.append(
            Summary(start=start, end=start + HOUR, rows=rows.num_rows, columns=columns)
        )
    return summaries


def summarise_frame(frame: pd.DataFrame, prefix: str) -> list[Summary]:
    """Summaries of a pandas frame of log rows (`prediction_log.log_frame`)."""
    columns: dict[str, Any] = {}
    for name in frame.columns:
        if not str(name).startswith(prefix):
            continue
        values = frame[name]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            columns[name] = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        else:
            columns[name] = values.to_numpy(dtype=object)
    return summarise_rows(frame["timestamp"], columns, prefix)


# --- merging ----------------------------------------------------------------------------


def merge_columns(parts: Sequence[ColumnSummary]) -> ColumnSummary:
    """One column's summaries merged: the counts of all their rows. Numbers stay exact
    while the union holds at most `EXACT_VALUES` values; text and numbers merge as text."""
    name = parts[0].name
    missing = sum(part.missing for part in parts)
    kinds = {part.kind for part in parts}
    if kinds == {"number"}:
        if all(part.exact for part in parts):
            values, counts = _tally(
                np.concatenate([p.values for p in parts]), np.concatenate([p.counts for p in parts])
            )
            if values.size <= EXACT_VALUES:
                return ColumnSummary(name, "number", values, counts, missing)
            return as_sketch(ColumnSummary(name, "number", values, counts, missing))
        bucketed = [as_sketch(part) for part in parts]
        values, counts = _tally(
            np.concatenate([p.values for p in bucketed]),
            np.concatenate([p.counts for p in bucketed]),
        )
        return ColumnSummary(name, "number", values, counts, missing, exact=False)
    # A column logged as text by one model version and as numbers by another.
    tallies: dict[str, int] = {}
    exact = True
    for part in parts:
        exact = exact and part.exact
        for text, count in zip(_as_texts(part), part.counts, strict=True):
            if text is not None:
                tallies[text] = tallies.get(text, 0) + int(count)
    texts = np.array(sorted(tallies), dtype=object)
    counts = np.array([tallies[text] for text in texts], dtype=np.int64)
    return ColumnSummary(name, "text", texts, counts, missing, exact=exact)


def merge_summaries(summaries: Sequence[Summary]) -> Summary:
    """The summaries of disjoint sets of rows merged into one (associative and
    commutative: any grouping gives the same counts). A column some summaries lack
    (logged by another model version) counts as missing in their rows."""
    if not summaries:
        raise ValueError("nothing to merge")
    names = dict.fromkeys(name for summary in summaries for name in summary.columns)
    columns = {}
    for name in names:
        parts = []
        for summary in summaries:
            if name in summary.columns:
                parts.append(summary.columns[name])
            elif summary.rows:
                empty = np.array([], dtype=np.float64)
                parts.append(
                    ColumnSummary(name, "number", empty, np.array([], np.int64), summary.rows)
                )
        columns[name] = merge_columns(parts)
    return Summary(
        start=min(summary.start for summary in summaries),
        end=max(summary.end for summary in summaries),
        rows=sum(summary.rows for summary in summaries),
        columns=columns,
    )


# --- storing ----------------------------------------------------------------------------


def summary_bytes(summary: Summary) -> bytes:
    """A summary as parquet bytes: one row per column (its values and counts as lists),
    the summary's span, rows and id in the schema's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(summary.columns.values())

    def lists(parts: list[np.ndarray], values: pa.Array) -> pa.ListArray:
        offsets = np.concatenate(([0], np.cumsum([len(part) for part in parts])))
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)

    numbers = [c.values if c.kind == "number" else np.empty(0) for c in columns]
    texts = [c.values if c.kind == "text" else np.empty(0, dtype=object) for c in columns]
    counts = [c.counts for c in columns]
    flat_numbers = np.concatenate(numbers).astype(np.float64) if numbers else np.empty(0)
    flat_texts = np.concatenate(texts).astype(object) if texts else np.empty(0, dtype=object)
    flat_counts = np.concatenate(counts).astype(np.int64) if counts else np.empty(0, np.int64)
    table = pa.table(
        {
            "column": pa.array([c.name for c in columns], pa.string()),
            "kind": pa.array([c.kind for c in columns], pa.string()),
            "exact": pa.array([c.exact for c in columns], pa.bool_()),
            "missing": pa.array([c.missing for c in columns], pa.int64()),
            "numbers": lists(numbers, pa.array(flat_numbers, pa.float64())),
            "texts": lists(texts, pa.array(flat_texts, pa.string())),
            "counts": lists(counts, pa.array(flat_counts, pa.int64())),
        }
    )
    meta = {
        "format": SUMMARY_FORMAT,
        "version": SUMMARY_VERSION,
        "id": summary.id,
        "start": summary.start.isoformat(),
        "end": summary.end.isoformat(),
        "rows": summary.rows,
        "replaces": list(summary.replaces),
    }
    table = table.replace_schema_metadata({b"driftline": json.dumps(meta).encode()})
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def _flat(table: pa.Table, name: str, numeric: bool) -> tuple[np.ndarray, np.ndarray]:
    """A list column's values, end to end, and where each row's start."""
    lists = table.column(name).combine_chunks()
    offsets = lists.offsets.to_numpy()
    values = lists.values.to_numpy(zero_copy_only=False)
    return (values.astype(np.float64) if numeric else values), offsets


def summary_from_bytes(data: bytes, where: str) -> Summary:
    """The summary `summary_bytes` wrote; a damaged one is a `DataError` naming `where`."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data), use_threads=False)  # small: threads cost more
        meta = json.loads((table.schema.metadata or {})[b"driftline"])
        if meta.get("format") != SUMMARY_FORMAT or meta.get("version") != SUMMARY_VERSION:
            raise ValueError("not a summary of this version")
        names = table.column("column").to_pylist()
        kinds = table.column("kind").to_pylist()
        exact = table.column("exact").to_pylist()
        missing = table.column("missing").to_pylist()
        numbers, number_at = _flat(table, "numbers", numeric=True)
        texts, text_at = _flat(table, "texts", numeric=False)
        counts, count_at = _flat(table, "counts", numeric=False)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{where} is not a readable log summary ({exc}): delete it") from None
    columns = {}
    for row, name in enumerate(names):
        if kinds[row] == "number":
            values = numbers[number_at[row] : number_at[row + 1]]
        else:
            values = texts[text_at[row] : text_at[row + 1]].astype(object)
        columns[name] = ColumnSummary(
            name,
            kinds[row],
            values,
            counts[count_at[row] : count_at[row + 1]].astype(np.int64),
            int(missing[row]),
            bool(exact[row]),
        )
    return Summary(
        start=datetime.fromisoformat(meta["start"]),
        end=datetime.fromisoformat(meta["end"]),
        rows=int(meta["rows"]),
        columns=columns,
        id=str(meta["id"]),
        replaces=tuple(meta.get("replaces") or ()),
    )


def current_summaries(summaries: Iterable[Summary]) -> list[Summary]:
    """The summaries that count each row once: without those a compacted one replaces
    (a reader between a compaction's write and its deletes sees both). Two monitors
    compacting an hour at once write the same merge under the same id
    (`compaction_id`), kept once; one that merged fewer parts than the other is dropped
    for the other."""
    summaries = list({summary.id: summary for summary in summaries}.values())
    replaced = {name for summary in summaries for name in summary.replaces}
    merges = [set(summary.replaces) for summary in summaries if summary.replaces]
    return [
        summary
        for summary in summaries
        if summary.id not in replaced
        and not any(set(summary.replaces) < merged for merged in merges)
    ]


def compaction_id(replaces: Iterable[str]) -> str:
    """The id of the merge of the summaries `replaces` names: the same parts give the
    same id, whoever merges them."""
    digest = hashlib.sha256("\n".join(sorted(replaces)).encode()).hexdigest()
    return digest[:32]


def hours_within(start: datetime, end: datetime) -> list[datetime]:
    """The whole UTC hours [h, h + 1h) inside [start, end]."""
    first = pd.Timestamp(start).tz_convert(UTC).ceil("h").to_pydatetime()
    hours = []
    while first + HOUR <= end:
        hours.append(first)
        first += HOUR
    return hours


# --- checking ---------------------------------------------------------------------------


def check_summary(
    profile: DriftProfile, summary: Summary, drift_share: float = 0.5
) -> SummaryDrift:
    """Each profile column of the summarised window against the reference, by
    `check_drift`'s rules, from counts instead of rows."""
    if not 0 < drift_share <= 1:
        raise ValueError(f"drift_share must be in (0, 1], got {drift_share}")
    missing = [name for name in profile.names if name not in summary.columns]
    if missing:
        raise DataError(
            f"the window's summaries lack column(s) the drift check compares: {', '.join(missing)}"
        )
    if summary.rows == 0:
        raise DataError("the current window has no rows: there is nothing to compare")
    verdicts, uncertain, bounds = [], [], {}
    for column in profile.columns:
        current = summary.columns[column.name]
        if column.kind == "numeric":
            verdict, bound = _numeric_summary_drift(column, current)
        else:
            verdict, bound = _categorical_summary_drift(column, current)
        verdicts.append(verdict)
        bounds[column.name] = bound
        if bound and _could_flip(verdict, bound):
            uncertain.append(column.name)
    result = DriftResult(
        columns=tuple(verdicts), drift_share=drift_share, current_rows=summary.rows
    )
    return SummaryDrift(result=result, uncertain=tuple(uncertain), bounds=bounds)


def _could_flip(verdict: ColumnDrift, bound: float) -> bool:
    if math.isinf(bound) or math.isnan(verdict.statistic):
        return True
    return abs(verdict.statistic - verdict.threshold) <= bound


def _as_numbers(current: ColumnSummary) -> ColumnSummary:
    """Text counts as numbers (`numeric_values`' conversion); unparseable is missing."""
    if current.kind == "number":
        return current
    texts = pd.Series(current.values, dtype=object).replace(BOOLEAN_NUMBERS)
    numbers = pd.to_numeric(texts, errors="coerce")
    array = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(array)
    lost = int(current.counts[~finite].sum())
    values, counts = _tally(array[finite], current.counts[finite])
    return ColumnSummary(current.name, "number", values, counts, current.missing + lost)


# A boolean is summarised as text, as the check names its categories; a column the
# check compares as numbers (`numeric_values`) reads it as 0 and 1.
BOOLEAN_NUMBERS = {"False": 0.0, "True": 1.0}


def _text(value: Any) -> Any:
    """A value of a text column as the check names its category (`category_text`)."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    return value


def _as_texts(current: ColumnSummary) -> list[str | None]:
    if current.kind == "text":
        return [str(value) for value in current.values]
    return [category_value(float(value)) for value in current.values]


def _numeric_summary_drift(
    column: ColumnProfile, current: ColumnSummary
) -> tuple[ColumnDrift, float]:
    current = _as_numbers(current)
    if not current.present:
        return _empty(column), 0.0
    values, counts = current.values, current.counts
    current_counts: dict[Level, int] | None = None
    distinct = column.distinct
    if column.distinct <= FEW_VALUES and current.exact:
        current_counts = {float(v): int(n) for v, n in zip(values, counts, strict=True)}
        distinct = len(set(column.levels) | set(current_counts))
    assert column.sorted_values is not None and column.std is not None
    if column.rows > LARGE_REFERENCE_ROWS:
        if distinct <= FEW_VALUES and current_counts is not None:
            return _shares_drift(column, "jensenshannon", current_counts), 0.0
        statistic = wasserstein_weighted(column.sorted_values, values, counts)
        norm = max(column.std, MIN_NORM)
        bound = 0.0
        if not current.exact:
            mean_size = float(np.dot(np.abs(values), counts)) / float(counts.sum())
            bound = (ALPHA / (1 - ALPHA) * mean_size + ZERO_BELOW) / norm
        return _verdict(column, "wasserstein", statistic / norm), bound
    if distinct <= FEW_VALUES and current_counts is not None:
        method = "chisquare" if distinct > TWO_VALUES else "z"
        return _shares_drift(column, method, current_counts), 0.0  # type: ignore[arg-type]
    p_value = ks_p_value_weighted(column.sorted_values, values, counts)
    return _verdict(column, "ks", p_value), 0.0 if current.exact else math.inf


def _categorical_summary_drift(
    column: ColumnProfile, current: ColumnSummary
) -> tuple[ColumnDrift, float]:
    if not current.exact:  # bucketed numbers are not categories
        return _verdict(column, "jensenshannon", math.nan), math.inf
    tallies: dict[Level, int] = {}
    for text, count in zip(_as_texts(current), current.counts, strict=True):
        if text is not None:
            tallies[text] = tallies.get(text, 0) + int(count)
    if not tallies:
        return _empty(column), 0.0
    if column.rows > LARGE_REFERENCE_ROWS:
        return _shares_drift(column, "jensenshannon", tallies), 0.0
    distinct = len(set(column.levels) | set(tallies))
    method = "chisquare" if distinct > TWO_VALUES else "z"
    return _shares_drift(column, method, tallies), 0.0  # type: ignore[arg-type]


# --- the statistics from counts ----------------------------------------------------------


def wasserstein_weighted(
    reference_sorted: np.ndarray, values: np.ndarray, counts: np.ndarray
) -> float:
    """`scipy.stats.wasserstein_distance(reference, values, v_weights=counts)`, from the
    sorted reference, in O(len(values) * log(len(reference))) and one pass over it.

    W is the integral of |F_ref - F_cur|. F_cur is constant (c) between consecutive
    current values a < b, and F_ref, a step function, crosses c once, at q, the smallest
    reference value with F_ref(q) >= c; so the integral over [a, b] is
    c (q - a) - (G(q) - G(a)) + (G(b) - G(q)) - c (b - q), where G(x), the integral of
    F_ref up to x, is (k x - S_k) / n with k the reference values <= x and S_k their sum."""
    reference = np.asarray(reference_sorted, dtype=np.float64)
    n = reference.size
    points = np.asarray(values, dtype=np.float64)
    weights = np.asarray(counts, dtype=np.int64)
    total = int(weights.sum())
    cumulative = np.cumsum(weights)
    seen = cumulative[:-1]
    # Smallest k with k / n >= seen / total, in integers; q = reference[k - 1].
    needed = -((-seen * n) // total)
    q = np.clip(reference[np.clip(needed - 1, 0, n - 1)], points[:-1], points[1:])
    # S_k, the sum of the k smallest reference values, at every k the integrals need:
    # one pass over the reference (`reduceat`), no array of n partial sums.
    places = np.searchsorted(reference, np.concatenate([points, q]), side="right")
    inner = np.unique(places)
    inner = inner[(inner > 0) & (inner < n)]
    # sums[i] adds reference[starts[i] : starts[i + 1]]: S at starts[i + 1] is sums[: i + 1].
    partial = np.cumsum(np.add.reduceat(reference, np.concatenate(([0], inner))))
    known_k = np.concatenate(([0], inner, [n]))
    known_s = np.concatenate(([0.0], partial[:-1], partial[-1:]))
    prefix_at = known_s[np.searchsorted(known_k, places)]
    total_sum = float(partial[-1])
    k_points, k_q = places[: points.size], places[points.size :]
    s_points, s_q = prefix_at[: points.size], prefix_at[points.size :]
    g_points = (k_points * points - s_points) / n  # G(x), the integral of F_ref up to x
    g_q = (k_q * q - s_q) / n
    # Below the first current value, F_cur = 0; above the last, 1.
    below = float(g_points[0])
    above = ((total_sum - s_points[-1]) - (n - k_points[-1]) * points[-1]) / n
    if points.size == 1:
        return float(below + above)
    a, b = points[:-1], points[1:]
    level = seen / total
    g_a, g_b = g_points[:-1], g_points[1:]
    middle = level * (q - a) - (g_q - g_a) + (g_b - g_q) - level * (b - q)
    return float(below + above + float(np.sum(middle)))


def ks_p_value_weighted(
    reference_sorted: np.ndarray, values: np.ndarray, counts: np.ndarray
) -> float:
    """`ks_2samp(reference, current).pvalue` from the current counts: exact from the
    rows up to `KS_EXACT_ROWS` (scipy's exact method), else Smirnov's asymptotic
    distribution at the same statistic, as scipy's `auto` method does."""
    from scipy.stats import distributions

    reference = np.asarray(reference_sorted, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if max(total, reference.size) <= KS_EXACT_ROWS:
        return ks_p_value(reference, np.repeat(np.asarray(values, dtype=np.float64), counts))
    points = np.concatenate([reference, values])
    cdf_reference = np.searchsorted(reference, points, side="right") / reference.size
    cumulative = np.concatenate(([0], np.cumsum(counts)))
    cdf_current = cumulative[np.searchsorted(values, points, side="right")] / total
    statistic = float(np.max(np.abs(cdf_reference - cdf_current)))
    m, n = sorted([float(reference.size), float(total)], reverse=True)
    return float(np.clip(distributions.kstwo.sf(statistic, np.round(m * n / (m + n))), 0, 1))


# --- the store beside the log ------------------------------------------------------------

SUMMARY_PREFIX = "summary-"
DAY_PREFIX = "date="


def summaries_table(table: str) -> str:
    """The SQL table that holds a SQL log's summaries."""
    return f"{table}_summaries"


def hour_tag(hour: datetime) -> str:
    return hour.astimezone(UTC).strftime("%Y-%m-%dT%H")


def summary_file_name(summary: Summary) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{SUMMARY_PREFIX}H{summary.start.astimezone(UTC):%H}-{stamp}-{summary.id}.parquet"


def write_summary_file(root: Any, summary: Summary, private: bool = True) -> None:
    """`summary` as a file in its hour's day folder of a parquet log, written under a
    temporary name and renamed, so a reader never sees half of one."""
    import os
    from pathlib import Path

    from pipeline.stores import create_file, create_folder

    folder = create_folder(
        Path(root) / f"{DAY_PREFIX}{summary.start.astimezone(UTC):%Y-%m-%d}", private
    )
    name = summary_file_name(summary)
    temporary = create_file(folder / f".{name}.tmp", private)
    temporary.write_bytes(summary_bytes(summary))
    os.replace(temporary, folder / name)


def _summary_files(root: Any, hour: datetime) -> list[Any]:
    from pathlib import Path

    folder = Path(root) / f"{DAY_PREFIX}{hour.astimezone(UTC):%Y-%m-%d}"
    return sorted(folder.glob(f"{SUMMARY_PREFIX}H{hour.astimezone(UTC):%H}-*.parquet"))


def _sql_table(table: str) -> Any:
    from sqlalchemy import BigInteger, Column, LargeBinary, MetaData, String, Table, Text

    return Table(
        summaries_table(table),
        MetaData(),
        Column("id", String(64), primary_key=True),
        Column("hour", String(16), index=True),
        Column("rows", BigInteger, nullable=False),
        Column("replaces", Text),
        Column("body", LargeBinary, nullable=False),
    )


def write_summary_rows(engine: Any, table: str, summaries: Sequence[Summary]) -> None:
    """Insert summaries into the log's `<table>_summaries` table (created on first use)."""
    if not summaries:
        return
    target = _sql_table(table)
    target.create(engine, checkfirst=True)
    with engine.begin() as connection:
        connection.execute(
            target.insert(),
            [
                {
                    "id": summary.id,
                    "hour": hour_tag(summary.start),
                    "rows": summary.rows,
                    "replaces": json.dumps(list(summary.replaces)),
                    "body": summary_bytes(summary),
                }
                for summary in summaries
            ],
        )


def read_hour_summaries(
    location: Any, hours: Sequence[datetime], table: str = "predictions"
) -> dict[datetime, list[Summary]]:
    """The stored summaries of each of `hours` (compacted ones in place of what they
    replace); an hour without any is absent."""
    from pipeline.prediction_log import is_sql_url

    found: dict[datetime, list[Summary]] = {}
    if is_sql_url(location):
        found = _read_sql(str(location), hours, table)
    else:
        for hour in hours:
            parts = [
                summary_from_bytes(p.read_bytes(), str(p)) for p in _summary_files(location, hour)
            ]
            if parts:
                found[hour] = parts
    return {hour: current_summaries(parts) for hour, parts in found.items()}


def _read_sql(url: str, hours: Sequence[datetime], table: str) -> dict[datetime, list[Summary]]:
    from sqlalchemy import create_engine, inspect, select

    from pipeline.stores import sqlite_file

    database = sqlite_file(url)
    if not hours or (database is not None and not database.exists()):
        return {}
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(summaries_table(table)):
            return {}
        target = _sql_table(table)
        by_tag = {hour_tag(hour): hour for hour in hours}
        found: dict[datetime, list[Summary]] = {}
        with engine.connect() as connection:
            rows = connection.execute(
                select(target.c.id, target.c.hour, target.c.body).where(
                    target.c.hour.in_(list(by_tag))
                )
            )
            for identifier, tag, body in rows:
                summary = summary_from_bytes(bytes(body), f"summary {identifier}")
                found.setdefault(by_tag[tag], []).append(summary)
        return found
    finally:
        engine.dispose()


def compact_hours(
    location: Any, found: Mapping[datetime, Sequence[Summary]], table: str = "predictions"
) -> int:
    """Merge each hour's several summaries into one, stored in their place (the new one
    first, naming those it replaces, then the old ones deleted); how many hours."""
    from pipeline.prediction_log import is_sql_url

    compacted = 0
    for hour, parts in found.items():
        if len(parts) < 2:
            continue
        merged = merge_summaries(parts)
        merged = Summary(
            start=hour,
            end=hour + HOUR,
            rows=merged.rows,
            columns=merged.columns,
            id=compaction_id(part.id for part in parts),
            replaces=tuple(sorted(part.id for part in parts)),
        )
        if is_sql_url(location):
            from sqlalchemy import create_engine, delete
            from sqlalchemy.exc import IntegrityError

            engine = create_engine(str(location))
            try:
                # IntegrityError: another monitor wrote this very merge first.
                with contextlib.suppress(IntegrityError):
                    write_summary_rows(engine, table, [merged])
                target = _sql_table(table)
                with engine.begin() as connection:
                    connection.execute(delete(target).where(target.c.id.in_(merged.replaces)))
            finally:
                engine.dispose()
        else:
            old = {part.id for part in parts}
            files = [p for p in _summary_files(location, hour) if p.stem.rsplit("-", 1)[-1] in old]
            write_summary_file(location, merged)
            for path in files:
                path.unlink(missing_ok=True)
        compacted += 1
    return compacted


def delete_summaries_before(url: str, table: str, before: datetime) -> int:
    """Delete the summaries of a SQL log whose hour ended at or before `before`."""
    from sqlalchemy import create_engine, delete, inspect

    from pipeline.stores import sqlite_file

    database = sqlite_file(url)
    if database is not None and not database.exists():
        return 0
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(summaries_table(table)):
            return 0
        last = hour_tag(before.astimezone(UTC) - HOUR)  # hours ending at or before `before`
        target = _sql_table(table)
        with engine.begin() as connection:
            done = connection.execute(delete(target).where(target.c.hour <= last))
            return int(done.rowcount or 0)
    finally:
        engine.dispose()


# --- a window: its whole hours from summaries, the rest from rows --------------------------


@dataclass(frozen=True)
class WindowDrift:
    """The window's verdicts and how they were reached (`method`, for the record):
    `from_summaries` rows came from the stored summaries, `from_rows` were read."""

    result: DriftResult
    method: str
    from_summaries: int
    from_rows: int
    rows_columns: tuple[str, ...] = ()


def check_window(
    profile: DriftProfile,
    features: pd.DataFrame,
    timestamps: pd.Series,
    found: Mapping[datetime, Sequence[Summary]],
    drift_share: float = 0.5,
) -> WindowDrift:
    """The window (its rows `features`, logged at `timestamps`) against the profile:
    every hour whose stored summaries count exactly the window's rows in that hour is
    taken from them; the other rows (the partial hours at the window's edges, hours
    logged before summaries existed or whose summaries are short) are summarised
    from the rows. A column the summaries cannot settle is decided from the rows
    (`check_drift`). With no summary usable, it is `check_drift` on the rows."""
    from pipeline.drift import check_drift

    if features.empty:
        raise DataError("the current window has no rows: there is nothing to compare")
    stamps = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True))
    hours = stamps.floor("h")
    covered = np.zeros(len(features), dtype=bool)
    used: list[Summary] = []
    for hour, parts in found.items():
        in_hour = np.asarray(hours == pd.Timestamp(hour))
        if parts and sum(part.rows for part in parts) == int(in_hour.sum()):
            covered |= in_hour
            used.extend(parts)
    if not used:
        why = "no stored summaries" if not found else "the summaries do not match the rows"
        result = check_drift(profile, features, drift_share)
        return WindowDrift(result, f"rows: {len(features)} rows read ({why})", 0, len(features))
    rest = features.loc[~covered, list(profile.names)]
    summaries = list(used)
    if len(rest):
        columns = {name: rest[name].to_numpy() for name in rest.columns}
        summaries.append(summarise_columns(columns, used[0].start, used[0].end, len(rest)))
    checked = check_summary(profile, merge_summaries(summaries), drift_share)
    verdicts = {column.column: column for column in checked.result.columns}
    if checked.uncertain:
        # Those few columns from the rows: the sketch cannot tell which side they fall.
        subset = DriftProfile(
            columns=tuple(c for c in profile.columns if c.name in checked.uncertain),
            reference_rows=profile.reference_rows,
        )
        exact = check_drift(subset, features, drift_share)
        verdicts.update({column.column: column for column in exact.columns})
    result = DriftResult(
        columns=tuple(verdicts[name] for name in profile.names),
        drift_share=drift_share,
        current_rows=len(features),
    )
    from_summaries = int(covered.sum())
    method = (
        f"summaries: {from_summaries} of {len(features)} rows from {len(used)} stored "
        f"hourly summaries, {len(rest)} rows summarised from the log"
    )
    if checked.uncertain:
        method += f"; from the rows, column(s) too close to call: {', '.join(checked.uncertain)}"
    return WindowDrift(result, method, from_summaries, len(rest), checked.uncertain)
