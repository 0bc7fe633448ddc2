"""The monitor's drift rule: which columns count, how much each weighs, and whether the
champion's predictions moved.

`check_drift` gives every feature column Evidently's verdict. Counting those verdicts
equally makes the monitor alarm for the passage of time (a window from later months
than the reference always differs in its year, month and season) and for columns the
model hardly uses. The rule here:

- **Calendar columns are reported, never counted**: those clean derives from a datetime
  column (`clean.calendar_features`, e.g. `dteday_dayofyear`, as the champion's row
  rules record them) and those listed in `monitor.calendar_columns` (the bike data's
  `yr`, `mnth`, `season`). A calendar column is one whose values say *when* a row is,
  on a cycle longer than the window: a window always drifts in it. Parts of a cycle the
  window spans whole (hour of day, weekday, for a window of weeks) keep counting,
  because a change in their mix is a change in the traffic.
- **Ignored columns are reported, never counted**: `monitor.ignore_columns`. Ids, keys
  and the time column are not model features, so they are not compared at all.
- **Each counted column weighs its permutation importance** for the champion (negative
  importance counts as 0), registered with the version (pipeline/importance.py). The
  drift share is the summed weight of the drifted counted columns over the summed
  weight of all counted columns. A version registered without importance, or whose
  counted columns all have none, weighs them equally.
- **Features drifted** when that share is at least `monitor.drift_share`.
- **Predictions drifted** when the champion's predictions on the window differ from its
  predictions on its reference sample by the same per-column test as a feature
  (regression: the values; classification: the predicted classes). Prediction drift
  alone is drift: it is the model's output that moved, whatever the features did. The
  reference's predictions are made with its calendar columns set to the window's
  (`calendar_aligned`): a model that uses the year predicts more for a later year of a
  growing series, and that is the passage of time, not drift.
- **The same weeks of the year** (`seasonal_reference`): with a time column, the window
  is compared with the reference rows from its own weeks of the year (each reference
  row within `SEASON_DAYS` days of the year of a day the window holds), when the
  reference covers at least `SEASON_COVERAGE` of the window's days and holds
  `SEASON_MIN_ROWS` such rows; otherwise with the whole reference, and the record says
  why. A reference drawn from a whole year would otherwise make every 8-week window
  drift in its predictions and its weather: the seasonality the model was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipeline.drift import ColumnDrift, DriftProfile, DriftResult, build_profile, check_drift

Role = Literal["counted", "calendar", "ignored"]
WeightSource = Literal["importance", "equal"]
PREDICTION = "prediction"
# The seasonal reference: rows within this many days of the year of a window's day...
SEASON_DAYS = 7
# ...used when they cover this share of the window's days, and are at least this many.
SEASON_COVERAGE = 0.75
SEASON_MIN_ROWS = 100
DAYS_IN_YEAR = 366


def rule_text(drift_share: float) -> str:
    """The rule in one sentence, for README and every decision record."""
    return (
        "drift when the drifted counted columns hold at least "
        f"{drift_share:.0%} (monitor.drift_share) of the counted columns' weight, or the "
        "champion's predictions drifted against its predictions on the reference (made "
        "with the window's calendar columns); each "
        "counted column weighs its permutation importance for the champion (equal weights "
        "when the version carries none); calendar columns (clean's derived ones and "
        "monitor.calendar_columns) and monitor.ignore_columns are reported, never counted"
    )


def column_roles(
    columns: Sequence[str],
    derived_calendar: Iterable[str] = (),
    calendar_columns: Iterable[str] = (),
    ignore_columns: Iterable[str] = (),
) -> dict[str, Role]:
    """Each feature column's part in the decision. A column both ignored and calendar is
    ignored: the user said so by name."""
    calendar = set(derived_calendar) | set(calendar_columns)
    ignored = set(ignore_columns)
    roles: dict[str, Role] = {}
    for column in columns:
        if column in ignored:
            roles[column] = "ignored"
        elif column in calendar:
            roles[column] = "calendar"
        else:
            roles[column] = "counted"
    return roles


@dataclass(frozen=True)
class Weights:
    """Each column's share of the decision (0 for a column not counted; the counted ones
    sum to 1 when any is counted), and where the weights came from."""

    values: Mapping[str, float]
    source: WeightSource
    reason: str


def column_weights(roles: Mapping[str, Role], importance: Mapping[str, float] | None) -> Weights:
    """Counted columns weighted by their importance (negative as 0), normalised; equal
    weights when there is no importance, or none of it is on a counted column."""
    counted = [column for column, role in roles.items() if role == "counted"]
    raw = {column: 0.0 for column in roles}
    source: WeightSource = "equal"
    if importance is None:
        reason = "the champion was registered without feature importance"
    else:
        found = {column: max(float(importance.get(column, 0.0)), 0.0) for column in counted}
        if sum(found.values()) > 0:
            raw.update(found)
            source = "importance"
            reason = "each counted column weighs its permutation importance"
        else:
            reason = "no counted column has a positive importance"
    if source == "equal":
        raw.update({column: 1.0 for column in counted})
    total = sum(raw.values())
    values = {column: (weight / total if total else 0.0) for column, weight in raw.items()}
    return Weights(values=values, source=source, reason=reason)


# --- prediction drift -----------------------------------------------------------------


def prediction_values(predictions: Any, task: str) -> pd.DataFrame:
    """Predictions as the drift check compares them, in one column: numbers for a
    regression, the predicted classes (as text, by `check_drift`) for a classifier."""
    values = pd.Series(np.asarray(predictions, dtype=object if task != "regression" else None))
    if task == "regression":
        values = pd.to_numeric(values, errors="coerce").astype("float64")
    return pd.DataFrame({PREDICTION: values.reset_index(drop=True)})


def prediction_profile(reference_predictions: Any, task: str) -> DriftProfile:
    """The champion's predictions on its reference sample, as a one-column profile."""
    frame = prediction_values(reference_predictions, task)
    numeric, categorical = ([PREDICTION], []) if task == "regression" else ([], [PREDICTION])
    return build_profile(frame, numeric, categorical)


def prediction_drift(profile: DriftProfile, window_predictions: Any, task: str) -> ColumnDrift:
    """The window's predictions against the reference's, by `check_drift`'s rules."""
    frame = prediction_values(window_predictions, task)
    [verdict] = check_drift(profile, frame).columns
    return verdict


def calendar_aligned(
    reference: pd.DataFrame, window: pd.DataFrame, roles: Mapping[str, Role], seed: int = 0
) -> pd.DataFrame:
    """`reference` with each calendar column's values drawn from the window's (seeded,
    with replacement), so that predictions on it differ from the window's only by what
    is not the calendar. A column the window holds no value of is left as it is."""
    aligned = reference.copy()
    rng = np.random.default_rng(seed)
    for column, role in roles.items():
        if role != "calendar" or column not in aligned or column not in window:
            continue
        values = window[column].dropna().to_numpy()
        if values.size:
            drawn = rng.choice(values, size=len(aligned), replace=True)
            aligned[column] = pd.Series(drawn, index=aligned.index).astype(
                aligned[column].dtype, errors="ignore"
            )
    return aligned


# --- the seasonal reference -------------------------------------------------------------


@dataclass(frozen=True)
class SeasonalReference:
    """The reference rows a window is compared with, and why those."""

    rows: pd.DataFrame
    seasonal: bool
    note: str


def seasonal_reference(
    reference: pd.DataFrame, reference_times: pd.Series | None, window_times: pd.Series | None
) -> SeasonalReference:
    """The reference rows from the window's weeks of the year: those within `SEASON_DAYS`
    days of the year (around the year's end too) of a day the window holds, when they
    cover `SEASON_COVERAGE` of the window's days and are `SEASON_MIN_ROWS` or more;
    else the whole reference. `*_times` are the rows' times (None: no time column)."""
    whole = f"the whole reference sample ({len(reference)} rows)"
    if reference_times is None or window_times is None:
        return SeasonalReference(reference, False, f"{whole}: no time column to match seasons")
    reference_days = _days_of_year(reference_times)
    window_days = np.unique(_days_of_year(window_times))
    window_days = window_days[window_days > 0]
    if not window_days.size or not (reference_days > 0).any():
        return SeasonalReference(reference, False, f"{whole}: the rows carry no times")
    # Circular distance between every day of the year and the window's days.
    every_day = np.arange(1, DAYS_IN_YEAR + 1)
    gap = np.abs(every_day[:, None] - window_days[None, :])
    near = np.minimum(gap, DAYS_IN_YEAR - gap).min(axis=1) <= SEASON_DAYS
    chosen = (reference_days > 0) & near[np.clip(reference_days, 1, DAYS_IN_YEAR) - 1]
    held = np.unique(reference_days[reference_days > 0])
    gap = np.abs(window_days[:, None] - held[None, :])
    covered = float((np.minimum(gap, DAYS_IN_YEAR - gap).min(axis=1) <= SEASON_DAYS).mean())
    rows = int(chosen.sum())
    span = f"within {SEASON_DAYS} days of the year of the window's {window_days.size} days"
    if covered < SEASON_COVERAGE or rows < SEASON_MIN_ROWS:
        return SeasonalReference(
            reference,
            False,
            f"{whole}: the reference holds {rows} rows {span}, covering {covered:.0%} of "
            f"them (the same weeks of the year need {SEASON_COVERAGE:.0%} and "
            f"{SEASON_MIN_ROWS} rows)",
        )
    selected = reference[chosen].reset_index(drop=True)
    note = f"the reference rows from the window's weeks of the year: {rows} of {len(reference)}"
    return SeasonalReference(selected, True, f"{note}, {span}")


def _days_of_year(times: pd.Series) -> np.ndarray:
    """Each time's day of the year (1-366), 0 where it is missing or unparseable."""
    parsed = pd.to_datetime(pd.Series(times).reset_index(drop=True), errors="coerce", utc=True)
    return parsed.dt.dayofyear.fillna(0).to_numpy(dtype=np.int64)


# --- the decision -----------------------------------------------------------------------


@dataclass(frozen=True)
class WeightedColumn:
    """One column's verdict, its part in the decision and its weight."""

    verdict: ColumnDrift
    role: Role
    weight: float

    @property
    def counted(self) -> bool:
        return self.role == "counted"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.verdict.to_dict(),
            "role": self.role,
            "counted": self.counted,
            "weight": round(self.weight, 6),
        }


@dataclass(frozen=True)
class ModelDrift:
    """The window's drift as it matters to the champion: the weighted share of drifted
    counted columns against `drift_share`, and prediction drift."""

    columns: tuple[WeightedColumn, ...]
    prediction: ColumnDrift
    drift_share: float
    weights: WeightSource
    weights_reason: str
    current_rows: int
    reference: str = "the whole reference sample"  # which reference rows, and why

    @property
    def counted(self) -> tuple[WeightedColumn, ...]:
        return tuple(column for column in self.columns if column.counted)

    @property
    def share(self) -> float:
        """The counted columns' weight that drifted (0 when nothing is counted)."""
        return float(sum(c.weight for c in self.counted if c.verdict.drifted))

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        """Every drifted column, counted or not."""
        return tuple(c.verdict.column for c in self.columns if c.verdict.drifted)

    @property
    def counted_drifted(self) -> tuple[str, ...]:
        return tuple(c.verdict.column for c in self.counted if c.verdict.drifted)

    @property
    def features_drifted(self) -> bool:
        # A hair of tolerance: weights summed in another order must not flip a tie.
        return bool(self.counted) and self.share >= self.drift_share - 1e-12

    @property
    def prediction_drifted(self) -> bool:
        return self.prediction.drifted

    @property
    def drift(self) -> bool:
        return self.features_drifted or self.prediction_drifted

    @property
    def rule(self) -> str:
        return rule_text(self.drift_share)

    def reasons(self) -> list[str]:
        """One line for the features, one for the predictions."""
        counted, drifted = self.counted, self.counted_drifted
        named = f" ({', '.join(drifted)})" if drifted else ""
        weighing = (
            "of their importance"
            if self.weights == "importance"
            else f"weighed equally ({self.weights_reason})"
        )
        share = (
            f"{len(drifted)} of {len(counted)} counted columns drifted{named}: "
            f"{self.share:.0%} {weighing}; monitor.drift_share is {self.drift_share:.0%}"
        )
        aside = [c.verdict.column for c in self.columns if not c.counted and c.verdict.drifted]
        if aside:
            share += f" (drifted but not counted: {', '.join(aside)})"
        if not counted:
            share = "no column is counted (every one is calendar or ignored)"
        features = ("data drift: " if self.features_drifted else "no data drift: ") + share
        verdict = self.prediction
        predictions = (
            f"{'prediction drift' if verdict.drifted else 'no prediction drift'}: the "
            f"champion's predictions on the window against its predictions on the reference, "
            f"{verdict.method} {verdict.statistic:.4g} (threshold {verdict.threshold:g})"
        )
        return [features, predictions]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "drift_share": self.share,
            "drift_share_threshold": self.drift_share,
            "weights": self.weights,
            "weights_reason": self.weights_reason,
            "reference": self.reference,
            "features_drifted": self.features_drifted,
            "prediction_drifted": self.prediction_drifted,
            "prediction": self.prediction.to_dict(),
            "drifted_columns": list(self.drifted_columns),
            "counted_drifted_columns": list(self.counted_drifted),
            "columns": [column.to_dict() for column in self.columns],
            "current_rows": self.current_rows,
        }


def weigh_drift(
    result: DriftResult,
    roles: Mapping[str, Role],
    importance: Mapping[str, float] | None,
    prediction: ColumnDrift,
    reference: str = "the whole reference sample",
) -> ModelDrift:
    """The decision from `check_drift`'s verdicts, each column's role, the champion's
    importance and the prediction verdict; `result.drift_share` is the threshold and
    `reference` says which reference rows the window was compared with."""
    names = [column.column for column in result.columns]
    missing = [name for name in names if name not in roles]
    if missing:
        raise ValueError(f"no role for column(s) {', '.join(missing)}")
    weights = column_weights({name: roles[name] for name in names}, importance)
    columns = tuple(
        WeightedColumn(verdict, roles[verdict.column], weights.values[verdict.column])
        for verdict in result.columns
    )
    return ModelDrift(
        columns=columns,
        prediction=prediction,
        drift_share=result.drift_share,
        weights=weights.source,
        weights_reason=weights.reason,
        current_rows=result.current_rows,
        reference=reference,
    )
