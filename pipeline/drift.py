"""Data drift: the monitor's decision, from a profile of the reference computed once.

The monitor decides with `check_drift` and reports with Evidently (`evidently_report`).
Both give the same verdict per column, because `check_drift` applies the rules of
Evidently 0.7's `DataDriftPreset` with its default options, to the same values:

- Missing values (NaN, None, and for numerics also +-inf) are dropped from each column
  first; `rows` below counts what is left of the reference column.
- A reference column of more than 1000 rows: Wasserstein distance normed by the
  reference's standard deviation (at least 0.001) for a numeric column, and
  Jensen-Shannon distance between the value shares for a categorical column, or for a
  numeric one whose reference and current values together take at most 5 values. Drift
  when the distance is at least 0.1.
- 1000 rows or fewer: a two-sample Kolmogorov-Smirnov test (drift when p <= 0.05) for a
  numeric column with more than 5 values; otherwise chi-square (more than 2 values) or a
  Z-test of two proportions (2 values or one), drift when p < 0.05.
- The data set drifted when the share of drifted columns is at least `drift_share`.

Evidently recomputes everything about the reference on every call (and computes each
column three times). What the rules need from the reference, its sorted values, standard
deviation and value counts, is fixed when the reference is drawn, so the split stage
writes it to a `DriftProfile` folder and each check only has to sort the current window.

Values are compared the way the model sees them (`FeatureSpec.prepare`): numerics as
float64, categories as text, so `1`, `1.0` and `"1"` are one category. `evidently_report`
hands Evidently the same conversion, with an explicit `DataDefinition`.

Evidently is imported inside the functions that run it (it takes seconds to import),
and scipy inside the statistics, so that the split stage, which only builds the
profile, does not pay for it.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from pipeline.artifacts import staged_directory
from pipeline.errors import DataError
from pipeline.features import FeatureSpec, category_text
from pipeline.schema import DatasetSpec

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

Kind = Literal["numeric", "categorical"]
# "empty": the window holds no value of a column the reference has. No statistic can be
# computed; the feature stopped arriving, which counts as drifted.
Method = Literal["wasserstein", "jensenshannon", "ks", "chisquare", "z", "empty"]

# Evidently's defaults (evidently.legacy.calculations.stattests.registry._get_default_stattest
# and each test's default_threshold).
LARGE_REFERENCE_ROWS = 1000  # more rows than this: distances; up to this: tests
FEW_VALUES = 5  # a numeric column with at most this many values is compared as categories
TWO_VALUES = 2  # at most this many: a Z-test rather than chi-square
THRESHOLDS: dict[str, float] = {
    "wasserstein": 0.1,
    "jensenshannon": 0.1,
    "ks": 0.05,
    "chisquare": 0.05,
    "z": 0.05,
    "empty": math.nan,
}
MIN_NORM = 0.001  # Wasserstein is divided by max(std of reference, this)
# Evidently's display names in a snapshot, to ours (its registry's names).
EVIDENTLY_METHODS = {
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
}

PROFILE_FORMAT = "driftline-drift-profile"
PROFILE_VERSION = 1
PROFILE_INDEX = "profile.json"
# Object columns whose values `value_counts` cannot merge wrongly (1 and True would be).
_SAFE_OBJECT_TYPES = {"string", "empty", "integer", "floating", "mixed-integer-float", "boolean"}

Level = str | float


@dataclass(frozen=True, eq=False)
class ColumnProfile:
    """What the drift rules need from one reference column, its missing values dropped.

    `sorted_values` and `std` are for numerics only. `levels` and `counts` hold every
    category of a categorical column, and the values of a numeric column only when it
    has at most `FEW_VALUES` of them (`distinct` says how many it has)."""

    name: str
    kind: Kind
    rows: int
    distinct: int
    levels: tuple[Level, ...] = ()
    counts: tuple[int, ...] = ()
    sorted_values: np.ndarray | None = None
    std: float | None = None

    @property
    def value_counts(self) -> dict[Level, int]:
        return dict(zip(self.levels, self.counts, strict=True))


@dataclass(frozen=True, eq=False)
class DriftProfile:
    """The reference, reduced to what `check_drift` needs, column by column."""

    columns: tuple[ColumnProfile, ...]
    reference_rows: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns if column.kind == "numeric")

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns if column.kind == "categorical")


@dataclass(frozen=True)
class ColumnDrift:
    """One column's verdict: `statistic` is a distance or a p-value, per `method`."""

    column: str
    kind: Kind
    method: Method
    statistic: float
    threshold: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "method": self.method,
            "statistic": _json_float(self.statistic),
            "threshold": _json_float(self.threshold),
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class DriftResult:
    """Every column's verdict and the decision for the window as a whole."""

    columns: tuple[ColumnDrift, ...]
    drift_share: float
    current_rows: int

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(column.column for column in self.columns if column.drifted)

    @property
    def share(self) -> float:
        return len(self.drifted_columns) / len(self.columns)

    @property
    def dataset_drift(self) -> bool:
        return self.share >= self.drift_share

    @property
    def verdicts(self) -> dict[str, bool]:
        return {column.column: column.drifted for column in self.columns}

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_drift": self.dataset_drift,
            "share_of_drifted_columns": self.share,
            "drift_share": self.drift_share,
            "number_of_columns": len(self.columns),
            "number_of_drifted_columns": len(self.drifted_columns),
            "drifted_columns": list(self.drifted_columns),
            "current_rows": self.current_rows,
            "columns": [column.to_dict() for column in self.columns],
        }


@dataclass(frozen=True)
class ReportedDrift:
    """One column's verdict as an Evidently snapshot holds it."""

    column: str
    method: str
    statistic: float
    threshold: float
    drifted: bool


# --- values as the rules see them -------------------------------------------------------


def numeric_values(values: pd.Series) -> np.ndarray:
    """A column's finite values as float64, in row order: what Evidently keeps of a
    numerical column (it drops NaN and +-inf), after `FeatureSpec.prepare`'s conversion."""
    if pd.api.types.is_bool_dtype(values):
        values = values.astype("float64")
    numbers = pd.to_numeric(values, errors="coerce")
    array = np.asarray(numbers.to_numpy(dtype="float64", na_value=np.nan), dtype="float64")
    return array[np.isfinite(array)]


def category_column(values: pd.Series) -> pd.Series:
    """A column's categories as text, NaN for gaps: `category_text`, without its
    per-value loop when the values are text already."""
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in (
        "string",
        "empty",
    ):
        return values
    return category_text(values)


def category_counts(values: pd.Series) -> dict[str, int]:
    """How often each category (as text, `category_text`) occurs; gaps are not counted.
    Counts the distinct raw values first, so a million rows of few values cost one pass."""
    if values.dtype == object and (
        pd.api.types.infer_dtype(values, skipna=True) not in _SAFE_OBJECT_TYPES
    ):
        values = category_text(values)  # 1 and True are one key to value_counts
    tallies = values.value_counts(dropna=True)
    tallies = tallies[tallies > 0]  # a pandas Categorical lists unused categories
    texts = category_text(pd.Series(tallies.index.to_numpy(dtype=object), dtype=object))
    counts: dict[str, int] = {}
    for text, count in zip(texts, tallies.to_numpy(), strict=True):
        if isinstance(text, str):
            counts[text] = counts.get(text, 0) + int(count)
    return counts


def drift_frame(
    frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]
) -> pd.DataFrame:
    """The named columns as the drift rules compare them: numerics as float64 (NaN for
    gaps and unparseable values), categories as text. A new frame; `frame` is unchanged."""
    _require_columns(frame, [*numeric, *categorical], "the frame")
    prepared: dict[str, pd.Series] = {}
    for column in numeric:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            values = values.astype("float64")
        prepared[column] = pd.to_numeric(values, errors="coerce").astype("float64")
    for column in categorical:
        prepared[column] = category_column(frame[column])
    return pd.DataFrame(prepared, index=frame.index)


# --- the profile ------------------------------------------------------------------------


def profile_columns(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[list[str], list[str]]:
    """The feature columns (numeric, categorical) as `FeatureSpec.fit` picks them from
    `frame`: no target, ids, keys or dates, and no column that `frame` never fills."""
    features = FeatureSpec.fit(frame, spec)
    return list(features.numeric), list(features.categorical)


def build_profile(
    reference: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]
) -> DriftProfile:
    """Everything the drift rules need from `reference`, for the named columns."""
    overlap = set(numeric) & set(categorical)
    if overlap:
        raise DataError(f"column(s) both numeric and categorical: {', '.join(sorted(overlap))}")
    if not numeric and not categorical:
        raise DataError("a drift profile needs at least one column")
    _require_columns(reference, [*numeric, *categorical], "the reference")
    columns = [_numeric_profile(name, reference[name]) for name in numeric]
    columns += [_categorical_profile(name, reference[name]) for name in categorical]
    return DriftProfile(columns=tuple(columns), reference_rows=len(reference))


def _numeric_profile(name: str, values: pd.Series) -> ColumnProfile:
    finite = numeric_values(values)
    if finite.size == 0:
        raise DataError(f"column {name!r} has no numeric values in the reference")
    ordered = np.sort(finite)
    ordered.setflags(write=False)
    # Evidently's norm: np.std of the cleaned pandas column (pandas' own algorithm).
    std = float(np.std(pd.Series(finite)))
    distinct = int(np.count_nonzero(np.diff(ordered))) + 1
    levels: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    if distinct <= FEW_VALUES:
        unique, count = np.unique(ordered, return_counts=True)
        levels = tuple(float(value) for value in unique)
        counts = tuple(int(value) for value in count)
    return ColumnProfile(
        name=name,
        kind="numeric",
        rows=int(finite.size),
        distinct=distinct,
        levels=levels,
        counts=counts,
        sorted_values=ordered,
        std=std,
    )


def _categorical_profile(name: str, values: pd.Series) -> ColumnProfile:
    counts = category_counts(values)
    if not counts:
        raise DataError(f"column {name!r} has no values in the reference")
    levels = tuple(sorted(counts))
    return ColumnProfile(
        name=name,
        kind="categorical",
        rows=sum(counts.values()),
        distinct=len(levels),
        levels=levels,
        counts=tuple(counts[level] for level in levels),
    )


def write_profile(profile: DriftProfile, folder: Path) -> None:
    """`folder/profile.json` (the index) and one .npy of sorted values per numeric
    column. The folder is replaced in one rename: a failure leaves the old one."""
    entries = []
    with staged_directory(Path(folder)) as staged:
        for position, column in enumerate(profile.columns):
            entry: dict[str, Any] = {
                "name": column.name,
                "kind": column.kind,
                "rows": column.rows,
                "distinct": column.distinct,
                "levels": list(column.levels),
                "counts": list(column.counts),
            }
            if column.kind == "numeric":
                entry["std"] = column.std
                entry["values"] = f"values_{position:04d}.npy"
                np.save(staged / entry["values"], column.sorted_values, allow_pickle=False)
            entries.append(entry)
        index = {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "reference_rows": profile.reference_rows,
            "columns": entries,
        }
        text = json.dumps(index, indent=1, allow_nan=False, ensure_ascii=False)
        (staged / PROFILE_INDEX).write_text(text + "\n", encoding="utf-8")


def read_profile(folder: Path) -> DriftProfile:
    """The profile `write_profile` wrote; a missing or damaged one is a `DataError`."""
    folder = Path(folder)
    index_path = folder / PROFILE_INDEX
    if not folder.is_dir() or not index_path.is_file():
        raise DataError(
            f"{folder} is not a drift profile (no {PROFILE_INDEX}): run the split stage "
            "first (dvc repro split)"
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if not isinstance(index, dict) or index.get("format") != PROFILE_FORMAT:
            raise ValueError(f"{PROFILE_INDEX} is not a drift profile index")
        if index.get("version") != PROFILE_VERSION:
            raise ValueError(f"version {index.get('version')!r}, expected {PROFILE_VERSION}")
        columns = tuple(_column_from_entry(folder, entry) for entry in index["columns"])
        if not columns:
            raise ValueError("no columns")
        return DriftProfile(columns=columns, reference_rows=int(index["reference_rows"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, KeyError):
            reason = f"missing key {exc}"
        raise DataError(
            f"{folder} is a damaged drift profile ({reason}): re-run the split stage "
            "(dvc repro split)"
        ) from None


def _column_from_entry(folder: Path, entry: Mapping[str, Any]) -> ColumnProfile:
    name, kind = str(entry["name"]), entry["kind"]
    rows, distinct = int(entry["rows"]), int(entry["distinct"])
    counts = tuple(int(count) for count in entry["counts"])
    if kind not in ("numeric", "categorical"):
        raise ValueError(f"column {name!r}: unknown kind {kind!r}")
    convert = str if kind == "categorical" else float
    levels: tuple[Level, ...] = tuple(convert(level) for level in entry["levels"])
    listed = kind == "categorical" or distinct <= FEW_VALUES
    if listed and (len(levels) != distinct or len(counts) != distinct or sum(counts) != rows):
        raise ValueError(f"column {name!r}: the value counts do not add up to {rows} rows")
    if kind == "categorical":
        return ColumnProfile(name, "categorical", rows, distinct, levels, counts)
    ordered = np.load(folder / str(entry["values"]), allow_pickle=False)
    if ordered.dtype != np.float64 or ordered.ndim != 1 or ordered.size != rows:
        raise ValueError(f"column {name!r}: {entry['values']} does not hold {rows} float64 values")
    if not np.all(ordered[1:] >= ordered[:-1]):  # also false for NaN
        raise ValueError(f"column {name!r}: {entry['values']} is not sorted finite values")
    ordered.setflags(write=False)
    std = float(entry["std"])
    return ColumnProfile(name, "numeric", rows, distinct, levels, counts, ordered, std)


# --- the check --------------------------------------------------------------------------


def check_drift(
    profile: DriftProfile, current: pd.DataFrame, drift_share: float = 0.5
) -> DriftResult:
    """Each profile column of `current` against the reference, and the decision: the
    window drifted when at least `drift_share` of the columns did."""
    if not 0 < drift_share <= 1:
        raise ValueError(f"drift_share must be in (0, 1], got {drift_share}")
    _require_columns(current, profile.names, "the current window")
    if current.empty:
        raise DataError("the current window has no rows: there is nothing to compare")
    verdicts = []
    for column in profile.columns:
        if column.kind == "numeric":
            verdicts.append(_numeric_drift(column, current[column.name]))
        else:
            verdicts.append(_categorical_drift(column, current[column.name]))
    return DriftResult(columns=tuple(verdicts), drift_share=drift_share, current_rows=len(current))


def _numeric_drift(column: ColumnProfile, values: pd.Series) -> ColumnDrift:
    current = numeric_values(values)
    if not current.size:
        return _empty(column)
    current_counts: dict[Level, int] | None = None
    distinct = column.distinct
    if column.distinct <= FEW_VALUES:
        # Only then can reference and current together hold few values.
        codes, uniques = pd.factorize(current)
        tallies = np.bincount(codes, minlength=len(uniques))
        current_counts = {float(value): int(n) for value, n in zip(uniques, tallies, strict=True)}
        distinct = len(set(column.levels) | set(current_counts))
    if column.rows > LARGE_REFERENCE_ROWS:
        if distinct <= FEW_VALUES and current_counts is not None:
            return _shares_drift(column, "jensenshannon", current_counts)
        assert column.sorted_values is not None and column.std is not None
        current.sort()  # numeric_values returned a copy of its own
        statistic = _wasserstein_sorted(column.sorted_values, current)
        return _verdict(column, "wasserstein", statistic / max(column.std, MIN_NORM))
    if distinct <= FEW_VALUES and current_counts is not None:
        method: Method = "chisquare" if distinct > TWO_VALUES else "z"
        return _shares_drift(column, method, current_counts)
    assert column.sorted_values is not None
    return _verdict(column, "ks", ks_p_value(column.sorted_values, current))


def _categorical_drift(column: ColumnProfile, values: pd.Series) -> ColumnDrift:
    current_counts = category_counts(values)
    if not current_counts:
        return _empty(column)
    if column.rows > LARGE_REFERENCE_ROWS:
        return _shares_drift(column, "jensenshannon", current_counts)
    distinct = len(set(column.levels) | set(current_counts))
    return _shares_drift(column, "chisquare" if distinct > TWO_VALUES else "z", current_counts)


def _shares_drift(
    column: ColumnProfile, method: Method, current_counts: Mapping[Level, int]
) -> ColumnDrift:
    reference, current = aligned_counts(column.value_counts, current_counts)
    if method == "jensenshannon":
        statistic = jensen_shannon(reference, current)
    elif method == "chisquare":
        statistic = chi_square_p_value(reference, current)
    else:
        statistic = z_test_p_value(reference, current)
    return _verdict(column, method, statistic)


def _verdict(column: ColumnProfile, method: Method, statistic: float) -> ColumnDrift:
    threshold = THRESHOLDS[method]
    return ColumnDrift(
        column=column.name,
        kind=column.kind,
        method=method,
        statistic=float(statistic),
        threshold=threshold,
        drifted=is_drift(method, statistic, threshold),
    )


def _empty(column: ColumnProfile) -> ColumnDrift:
    return ColumnDrift(column.name, column.kind, "empty", math.nan, math.nan, drifted=True)


def is_drift(method: str, statistic: float, threshold: float) -> bool:
    """Evidently's comparison per method: distances drift at or above the threshold,
    K-S at or below it, chi-square and Z strictly below it. A column with no values
    in the window ("empty") has drifted."""
    if method == "empty":
        return True
    if method in ("wasserstein", "jensenshannon"):
        return bool(statistic >= threshold)
    if method == "ks":
        return bool(statistic <= threshold)
    return bool(statistic < threshold)


# --- the statistics ---------------------------------------------------------------------


def aligned_counts(
    reference: Mapping[Level, int], current: Mapping[Level, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Both count tables over every value either holds (sorted), zeros filled in."""
    keys = sorted(set(reference) | set(current))
    return (
        np.array([reference.get(key, 0) for key in keys], dtype=np.int64),
        np.array([current.get(key, 0) for key in keys], dtype=np.int64),
    )


def wasserstein_normed(
    reference_sorted: np.ndarray, reference_std: float, current: np.ndarray
) -> float:
    """`scipy.stats.wasserstein_distance(reference, current)` divided by
    max(reference_std, 0.001), from the reference already sorted."""
    ordered = np.sort(np.asarray(current, dtype=np.float64))
    return _wasserstein_sorted(np.asarray(reference_sorted, dtype=np.float64), ordered) / max(
        float(reference_std), MIN_NORM
    )


def _wasserstein_sorted(reference_sorted: np.ndarray, current_sorted: np.ndarray) -> float:
    """The Wasserstein distance of two sorted samples, equal to scipy's to the last bit.

    scipy sorts both samples and the two together, then looks every merged value up in
    both (two argsorts, a sort and two searches of the merged values). Here one search
    places the current values among the reference, which gives the merged order, and
    counting along it gives both CDFs. Where merged values tie, the counts differ from
    scipy's, but those terms are multiplied by a zero gap; every other term, and the
    dot product that sums them, is the same. Few temporaries: at a million rows each
    one costs page faults."""
    n, m = reference_sorted.size, current_sorted.size
    # Where each current value lands in the merged order (after equal reference values).
    positions = np.searchsorted(reference_sorted, current_sorted, side="right")
    positions += np.arange(m)
    from_current = np.zeros(n + m, dtype=bool)
    from_current[positions] = True
    merged = np.empty(n + m, dtype=np.float64)
    merged[positions] = current_sorted
    del positions
    merged[~from_current] = reference_sorted
    gaps = np.diff(merged)
    # How many of each sample lie at or before each merged position but the last (the
    # counts scipy divides); the CDFs reuse merged's memory and the reference count's.
    current_seen = np.cumsum(from_current[:-1])
    del from_current
    reference_seen = np.arange(1, n + m)
    reference_seen -= current_seen
    cdf_gap = np.divide(reference_seen, n, out=merged[:-1])
    current_cdf = np.divide(current_seen, m, out=reference_seen.view(np.float64))
    cdf_gap -= current_cdf
    np.abs(cdf_gap, out=cdf_gap)
    return float(np.vecdot(cdf_gap, gaps))


def jensen_shannon(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log) between the two tables' value shares."""
    from scipy.spatial import distance

    reference_counts = np.asarray(reference_counts)
    current_counts = np.asarray(current_counts)
    return float(
        distance.jensenshannon(
            reference_counts / reference_counts.sum(), current_counts / current_counts.sum()
        )
    )


def chi_square_p_value(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Chi-square goodness of fit of the current counts to the reference's shares, scaled
    to the current rows, as Evidently runs it (a value the reference never held gives
    p = 0)."""
    from scipy import stats

    reference_counts = np.asarray(reference_counts)
    current_counts = np.asarray(current_counts)
    scale = int(current_counts.sum()) / int(reference_counts.sum())
    expected = [float(count) * scale for count in reference_counts]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stats.chisquare(current_counts.tolist(), expected).pvalue)


def z_test_p_value(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Two-sided Z-test that the share of the first value (in sorted order) is the same
    in both, with Evidently's formula; p = 1 when both hold the same single value."""
    from scipy import stats

    reference_counts = np.asarray(reference_counts, dtype=np.int64)
    current_counts = np.asarray(current_counts, dtype=np.int64)
    if (
        np.count_nonzero(reference_counts) == 1
        and np.count_nonzero(current_counts) == 1
        and np.argmax(reference_counts) == np.argmax(current_counts)
    ):
        return 1.0
    n1, n2 = int(reference_counts.sum()), int(current_counts.sum())
    p1 = float(n1 - int(reference_counts[0])) / n1
    p2 = float(n2 - int(current_counts[0])) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def ks_p_value(reference: np.ndarray, current: np.ndarray) -> float:
    """Two-sided two-sample Kolmogorov-Smirnov p-value (scipy's `auto` method)."""
    from scipy import stats

    return float(stats.ks_2samp(reference, current).pvalue)


# --- Evidently --------------------------------------------------------------------------


def evidently_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    prediction: str | None = None,
    drift_share: float = 0.5,
) -> Snapshot:
    """Evidently's `DataDriftPreset` over the feature columns, run on the values
    `check_drift` compares (see `drift_frame`), with every column's type given.

    `prediction`, when named, gets a drift verdict of its own (`ValueDrift`), outside
    the preset, so the preset's share of drifted columns is over the features alone.
    Save the result with `snapshot.save_html(path)` / `snapshot.save_json(path)`."""
    with warnings.catch_warnings():
        # Its dependencies' deprecation notices are not the monitor's to act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift
        from evidently.presets import DataDriftPreset

    numeric, categorical = list(numeric), list(categorical)
    if current.empty:
        raise DataError("the current window has no rows: there is nothing to compare")
    if prediction is not None:
        _require_columns(current, [prediction], "the current window")
        _require_columns(reference, [prediction], "the reference")
        is_number = pd.api.types.is_numeric_dtype(reference[prediction])
        (numeric if is_number else categorical).append(prediction)
    _require_columns(current, [*numeric, *categorical], "the current window")
    frames = {
        "reference": drift_frame(reference, numeric, categorical),
        "current": drift_frame(current, numeric, categorical),
    }
    for role, frame in frames.items():
        # Evidently stops with a ValueError on a column with nothing left to compare.
        for column in frame.columns:
            values = frame[column]
            kept = numeric_values(values).size if column in numeric else values.notna().sum()
            if not kept:
                raise DataError(f"column {column!r} has no values in the {role} data")
    definition = DataDefinition(
        numerical_columns=numeric,
        categorical_columns=categorical,
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )
    features = [column for column in (*numeric, *categorical) if column != prediction]
    metrics: list[Any] = [DataDriftPreset(columns=features, drift_share=drift_share)]
    if prediction is not None:
        metrics.append(ValueDrift(column=prediction))
    report = Report(metrics, include_tests=True)
    with warnings.catch_warnings():
        # Evidently divides by zero on the way (a category new to the window, the
        # correlations of a constant column); its results account for it.
        warnings.simplefilter("ignore", RuntimeWarning)
        return report.run(
            current_data=Dataset.from_pandas(frames["current"], data_definition=definition),
            reference_data=Dataset.from_pandas(frames["reference"], data_definition=definition),
        )


def reported_drift(snapshot: Snapshot) -> dict[str, ReportedDrift]:
    """Each column's `ValueDrift` result in an Evidently snapshot, read by metric type
    and column: the drift test's status when the report ran its tests, else the score
    against the threshold with the method's comparison."""
    body = snapshot.dict()
    statuses = {
        test["metric_config"]["metric_id"]: test["status"]
        for test in body.get("tests", [])
        if test.get("metric_config", {}).get("params", {}).get("type", "").endswith("ValueDrift")
    }
    columns: dict[str, ReportedDrift] = {}
    for metric in body["metrics"]:
        config = metric["config"]
        if not config["type"].endswith(":ValueDrift"):
            continue
        method = EVIDENTLY_METHODS.get(config["method"], config["method"])
        statistic, threshold = float(metric["value"]), float(config["threshold"])
        status = statuses.get(metric["id"])
        drifted = is_drift(method, statistic, threshold) if status is None else status == "FAIL"
        columns[config["column"]] = ReportedDrift(
            config["column"], method, statistic, threshold, drifted
        )
    return columns


def per_column_verdicts(snapshot: Snapshot) -> dict[str, bool]:
    """Whether Evidently found drift, per column."""
    return {column: drift.drifted for column, drift in reported_drift(snapshot).items()}


def reported_share(snapshot: Snapshot) -> float:
    """The preset's share of drifted columns (`DriftedColumnsCount`)."""
    for metric in snapshot.dict()["metrics"]:
        if metric["config"]["type"].endswith(":DriftedColumnsCount"):
            return float(metric["value"]["share"])
    raise ValueError("the snapshot holds no DriftedColumnsCount metric")


# --- checks -----------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(
            f"{what} lacks column(s) the drift check compares: {', '.join(map(str, missing))}"
        )


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)
