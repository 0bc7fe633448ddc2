"""The monitor's inputs and decision, as pure functions over the prediction log.

`read_window` takes the newest `monitor.window_hours` of logged predictions, with the
labels that have arrived for them (`driftline label` stores them under the log's
`labels/` folder, or in the `labels` table of a SQL log's database). `compared_champion`
picks the reference rows from the window's weeks of the year, and `drift_check`
compares the window's features and predictions with them under the drift rule
(pipeline/drift_rule.py: calendar and ignored columns reported, not counted; columns
weighed by the champion's importance; prediction drift). `quality_check` scores
the labelled rows against the champion's registered test metric, and until enough
labels are in judges by the metric estimated without them (CBPE or DLE, registered with
the champion: pipeline/quality_estimate.py). `decide` turns both
into one decision with its numbers, its rule and its per-column table; the monitoring
flow (flows/monitoring.py) records it whichever way it goes and, on drift, emits the
event that starts a retraining.

`fairness_check` runs evaluate's fairness audit (pipeline/fairness.py) on the labelled
rows, scoring the predictions the champion served, and sets each gap beside the
champion's on test (`champion_fairness`). A gap beyond `evaluate.fairness.max_gap` is
reported and warned, never a retraining trigger: retraining on the same data does not
remove a bias.

`Window.fingerprint` names a window by the request ids in it, so that many alerts for
the same window start one retraining.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.features import category_value
from pipeline.label_store import read_stored_labels
from pipeline.metrics import HIGHER_IS_BETTER, classification_metrics, regression_metrics
from pipeline.prediction_log import (
    CONTEXT_PREFIX,
    FEATURE_PREFIX,
    is_sql_url,
    join_labels,
    read_predictions,
)
from pipeline.scoring import Scored

if TYPE_CHECKING:
    from pipeline.config import FairnessConfig, MlflowConfig, MonitorConfig
    from pipeline.drift_rule import ModelDrift
    from pipeline.fairness import FairnessAudit
    from pipeline.quality_estimate import QualityEstimator
    from pipeline.served_champion import MonitoredChampion
    from pipeline.summaries import Summary

logger = logging.getLogger(__name__)

LABEL = "label"


@dataclass(frozen=True)
class Window:
    """Logged predictions between `start` and `end`; `label` is NaN where none arrived."""

    frame: pd.DataFrame
    start: datetime
    end: datetime
    # The stored summaries of the window's whole hours (pipeline/summaries.py), by hour.
    summaries: dict[datetime, list[Summary]] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        return len(self.frame)

    @property
    def labelled(self) -> int:
        return int(self.frame[LABEL].notna().sum()) if self.rows else 0

    def features(self, columns: list[str] | tuple[str, ...]) -> pd.DataFrame:
        """The logged inputs, by feature name; a column the log lacks is an error."""
        missing = [column for column in columns if column not in self.frame.columns]
        if missing:
            raise DataError(
                f"the prediction log lacks feature column(s) {', '.join(missing)}: it was "
                "written by a model with other features"
            )
        return self.frame[list(columns)]

    @property
    def fingerprint(self) -> str:
        """The same rows give the same fingerprint, whenever they are read."""
        ids = "\n".join(sorted(self.frame["request_id"].astype(str)))
        return hashlib.sha256(ids.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "rows": self.rows,
            "labelled": self.labelled,
            "fingerprint": self.fingerprint,
        }


def read_window(
    log: str | Path, hours: float, now: datetime | None = None, summaries: bool = True
) -> Window:
    """The newest `hours` of the prediction log at `log`, with their late labels and
    (with `summaries`) the stored summaries of its whole hours, each hour's merged into
    one in the store as it is read (`compact_hours`), so the next check reads one."""
    end = now or datetime.now(UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    start = end - timedelta(hours=hours)
    if not is_sql_url(log) and not Path(log).exists():  # nothing served yet
        logged = pd.DataFrame(columns=["request_id", "timestamp", "prediction"])
        logged["timestamp"] = pd.to_datetime(logged["timestamp"], utc=True)
    else:
        logged = read_predictions(log, since=start)
    logged = logged[logged["timestamp"] <= pd.Timestamp(end)]
    frame = logged.rename(
        columns={c: c.removeprefix(FEATURE_PREFIX) for c in logged.columns}
    ).reset_index(drop=True)
    labels = read_stored_labels(log)
    if labels is None or frame.empty:
        frame[LABEL] = pd.Series(np.nan, index=frame.index, dtype=object)
    else:
        joined = join_labels(frame[["request_id"]], labels).joined
        by_id = dict(zip(joined["request_id"], joined["label"], strict=True))
        frame[LABEL] = [by_id.get(str(i), np.nan) for i in frame["request_id"]]
    found = _window_summaries(log, start, end) if summaries and not frame.empty else {}
    return Window(frame=frame, start=start, end=end, summaries=found)


def _window_summaries(log: str | Path, start: datetime, end: datetime) -> dict:
    """The summaries of the whole hours in [start, end]; none when they cannot be read
    (the check then reads rows, and says so)."""
    from pipeline.summaries import compact_hours, hours_within, read_hour_summaries

    try:
        found = read_hour_summaries(log, hours_within(start, end))
    except Exception as exc:  # a damaged summary: the rows are still there
        logger.warning("cannot read the log's summaries, checking rows: %s", exc)
        return {}
    try:
        compact_hours(log, found)
    except Exception as exc:  # housekeeping: the next check tries again
        logger.warning("cannot merge the log's hourly summaries: %s", exc)
    return found


@dataclass(frozen=True)
class QualityCheck:
    """The primary metric against the champion's test score: `current` measured on the
    window's labelled rows (None below `monitor.min_labelled_rows`), `estimated` without
    labels on all its rows (CBPE or DLE, `method`). `source` says which one the decision
    used (measured once there are enough labels, estimated before; None: neither), and
    `drop` is how much worse that one is, as a share (positive: worse): a measured value
    against `reference` (measured on test), an estimate against `estimated_reference`
    (the same method's estimate on test, so that its bias on this model cancels) when
    the estimator recorded one, else against `reference`."""

    metric: str
    labelled: int
    judged: bool
    reason: str
    reference: float | None = None
    current: float | None = None
    drop: float | None = None
    estimated: float | None = None
    source: str | None = None  # "measured" | "estimated" | None
    method: str | None = None  # how `estimated` was made: CBPE | DLE
    estimated_reference: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_check(
    window: Window,
    task: str,
    metric: str,
    classes: list[Any],
    reference: float | None,
    min_labelled: int,
    estimator: QualityEstimator | None = None,
) -> QualityCheck:
    """Score the labelled rows of `window` on `metric` once there are enough; before
    that, judge by the estimate of `estimator` (the champion's, registered with it)."""
    labelled = window.frame[window.frame[LABEL].notna()]
    count = len(labelled)
    estimated, method, unestimated = _estimated(window, metric, classes, estimator)
    baseline = estimator.test_estimate if estimated is not None and estimator else None
    common = {"estimated": estimated, "method": method, "estimated_reference": baseline}
    if reference is None or not np.isfinite(reference):
        return QualityCheck(metric, count, False, f"the champion has no test {metric}", **common)
    measured = None
    if count >= min_labelled:
        measured = window_metrics(labelled, task, classes).get(metric)
        measured = float(measured) if measured is not None and np.isfinite(measured) else None
    if measured is not None:
        why = f"{metric} {measured:.4g} on {count} labelled rows against {reference:.4g} on test"
        if estimated is not None:
            why += f" (estimated {estimated:.4g} by {method})"
        drop = _drop(metric, measured, reference)
        return QualityCheck(
            metric, count, True, why, reference, measured, drop, source="measured", **common
        )
    if count < min_labelled:
        few = f"{count} labelled rows, fewer than monitor.min_labelled_rows ({min_labelled})"
    else:
        few = f"{metric} is undefined on the {count} labelled rows"
    if estimated is None:
        return QualityCheck(metric, count, False, f"{few}; {unestimated}", reference, **common)
    against = f"{reference:.4g} on test"
    if baseline is not None:
        against = f"{baseline:.4g} estimated on test ({reference:.4g} measured)"
    why = f"estimated {metric} {estimated:.4g} ({method}) on {window.rows:,} rows against {against}"
    why += f"; {few}"
    drop = _drop(metric, estimated, baseline if baseline is not None else reference)
    return QualityCheck(
        metric, count, True, why, reference, None, drop, source="estimated", **common
    )


def _drop(metric: str, value: float, reference: float) -> float:
    loss = reference - value if HIGHER_IS_BETTER[metric] else value - reference
    return float(loss / abs(reference)) if reference else float(loss)


def _estimated(
    window: Window, metric: str, classes: list[Any], estimator: QualityEstimator | None
) -> tuple[float | None, str | None, str]:
    """The estimate of `metric` on the whole window, the method, and why there is none."""
    if estimator is None:
        return None, None, "the champion has no quality estimator (registered before one)"
    if not estimator.available:
        return None, None, f"no estimate: {estimator.reason}"
    if estimator.metric != metric:
        why = f"no estimate: the champion's estimator estimates {estimator.metric}, not {metric}"
        return None, None, why
    if not window.rows:
        return None, estimator.method, "no estimate: the window is empty"
    value = estimator.estimate(window.frame, classes)
    if value is None:
        return None, estimator.method, f"no estimate: {metric} is undefined on this window"
    return value, estimator.method, ""


def window_metrics(labelled: pd.DataFrame, task: str, classes: list[Any]) -> dict[str, float]:
    """The task's metrics for logged predictions against their late labels."""
    served = served_scores(labelled, task, classes)
    return served.scored.metrics if len(served.rows) else {}


@dataclass(frozen=True)
class ServedScores:
    """What the champion served on labelled rows, as `pipeline.scoring.Scored` holds a
    model's outputs: the logged predictions (and, for a classifier, the logged
    probabilities and the logged class, so the threshold is the one it served with)
    against the late labels. `rows` are the labelled rows they belong to, in order: a row
    whose label or prediction is not one of `classes`, or that has no probabilities or no
    finite value, is left out."""

    scored: Scored
    rows: pd.DataFrame


def served_scores(labelled: pd.DataFrame, task: str, classes: list[Any]) -> ServedScores:
    """The logged predictions of `labelled` (rows of a window with a label) scored against
    their labels: what quality_check measures and the production fairness audit groups."""
    if task == "regression":
        actual = pd.to_numeric(labelled[LABEL], errors="coerce").to_numpy(dtype=np.float64)
        predicted = labelled["prediction_value"].to_numpy(dtype=np.float64)
        keep = np.isfinite(actual) & np.isfinite(predicted)
        actual, predicted = actual[keep], predicted[keep]
        metrics = regression_metrics(actual, predicted) if keep.any() else {}
        return ServedScores(Scored(metrics, predicted, predicted, actual), labelled[keep])
    texts = [category_value(label) for label in classes]
    code = {text: position for position, text in enumerate(texts)}
    kept, rows = [], []
    for position, (label, predicted, probs) in enumerate(
        zip(labelled[LABEL], labelled["prediction"], labelled["probabilities"], strict=True)
    ):
        if category_value(label) in code and category_value(predicted) in code and probs:
            kept.append(position)
            rows.append((code[category_value(label)], code[category_value(predicted)], probs))
    actual_codes = np.array([row[0] for row in rows], dtype=np.int64)
    predicted_codes = np.array([row[1] for row in rows], dtype=np.int64)
    probabilities = np.array(
        [[json.loads(row[2])[str(c)] for c in texts] for row in rows], dtype=float
    ).reshape(len(rows), len(texts))
    metrics = (
        classification_metrics(actual_codes, probabilities, predicted_codes, task) if rows else {}
    )
    names = np.asarray(classes, dtype=object)
    scored = Scored(
        metrics,
        probabilities,
        names[predicted_codes],
        names[actual_codes],
        actual_codes,
        predicted_codes,
    )
    return ServedScores(scored, labelled.iloc[kept])


def window_predictions(window: Window, task: str) -> pd.Series:
    """The predictions the champion served for the window: the logged value for a
    regression, the logged class for a classifier."""
    return window.frame["prediction_value" if task == "regression" else "prediction"]


def window_times(window: Window, time_column: str | None) -> pd.Series | None:
    """When each row of the window happened: its time column, sent with the request (a
    context column of the log), else the time it was served."""
    if not window.rows:
        return None
    if time_column and CONTEXT_PREFIX + time_column in window.frame.columns:
        return window.frame[CONTEXT_PREFIX + time_column]
    if time_column and time_column in window.frame.columns:  # a time feature
        return window.frame[time_column]
    return window.frame["timestamp"]


def compared_champion(
    champion: MonitoredChampion, window: Window, config: MonitorConfig, time_column: str | None
) -> MonitoredChampion:
    """The champion with the reference rows the window is compared with: those from the
    window's weeks of the year when `monitor.seasonal_reference` is on, the data has a
    time column and the reference covers those weeks (`seasonal_reference`); else the
    whole sample. Its `reference_note` says which, and why."""
    import dataclasses

    from pipeline.drift import build_profile
    from pipeline.drift_rule import seasonal_reference

    if not config.seasonal_reference or not time_column:
        why = "monitor.seasonal_reference is off" if time_column else "no data.time_column"
        note = f"the whole reference sample ({len(champion.reference)} rows): {why}"
        return dataclasses.replace(champion, reference_note=note)
    reference = champion.reference
    times = reference[time_column] if time_column in reference.columns else None
    chosen = seasonal_reference(reference, times, window_times(window, time_column))
    if not chosen.seasonal:
        return dataclasses.replace(champion, reference_note=chosen.note)
    profile = champion.profile
    try:
        seasonal = build_profile(chosen.rows, profile.numeric, profile.categorical)
    except DataError as exc:  # a column with no values in those weeks
        note = f"the whole reference sample ({len(reference)} rows): {exc}"
        return dataclasses.replace(champion, reference_note=note)
    return dataclasses.replace(
        champion, reference=chosen.rows, profile=seasonal, reference_note=chosen.note
    )


@dataclass(frozen=True)
class FastCheck:
    """The drift check's result and how its column verdicts were reached (`method`:
    from the log's stored summaries, from rows, or both; see `check_window`)."""

    drift: ModelDrift
    method: str


def drift_check(champion: MonitoredChampion, window: Window, config: MonitorConfig) -> ModelDrift:
    """The window against the champion's reference, under the drift rule (see
    `fast_drift_check`)."""
    return fast_drift_check(champion, window, config).drift


def fast_drift_check(
    champion: MonitoredChampion, window: Window, config: MonitorConfig
) -> FastCheck:
    """The window against the champion's reference, under the drift rule: every feature
    column's verdict (`check_window`: the window's stored summaries where they cover
    its hours, else `check_drift` on the rows; the same verdicts), each one's role and
    weight, and prediction drift (the champion's predictions on the window against its
    predictions on the reference)."""
    from pipeline.drift_rule import (
        calendar_aligned,
        column_roles,
        prediction_drift,
        prediction_profile,
        weigh_drift,
    )
    from pipeline.summaries import check_window

    profile, served = champion.profile, champion.served
    task = served.meta["task"]
    features = window.features(profile.names)
    checked = check_window(
        profile, features, window.frame["timestamp"], window.summaries, config.drift_share
    )
    verdicts = checked.result
    derived = served.rules.derived if served.rules is not None else {}
    roles = column_roles(profile.names, derived, config.calendar_columns, config.ignore_columns)
    # The reference's predictions with the window's calendar: the year alone moving the
    # predictions of a growing series is the passage of time, not drift.
    aligned = calendar_aligned(champion.reference, features, roles)
    reference = prediction_profile(served.model.predict(aligned), task)
    prediction = prediction_drift(reference, window_predictions(window, task), task)
    importance = champion.importance.values if champion.importance is not None else None
    drift = weigh_drift(verdicts, roles, importance, prediction, champion.reference_note)
    return FastCheck(drift=drift, method=checked.method)


@dataclass(frozen=True)
class Decision:
    """Whether the window drifted, why, the rule it was decided by, and the numbers
    behind it: the weighted share, each column's verdict, role and weight, and the
    prediction verdict."""

    drift: bool
    reasons: list[str]
    rule: str
    drift_share: float
    drifted_columns: list[str]
    columns: list[dict[str, Any]] = field(default_factory=list)
    prediction: dict[str, Any] = field(default_factory=dict)
    weights: str = "equal"
    reference: str = "the whole reference sample"
    quality: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(drift: ModelDrift, quality: QualityCheck, config: MonitorConfig) -> Decision:
    """Drift: the drift rule found it (the weighted share of drifted counted columns
    reached `drift_share`, or the predictions drifted), or the metric fell by more than
    `max_metric_drop`: measured once enough labels are in, estimated before (the quality
    check's `source`). The reasons say which, or why none."""
    reasons = drift.reasons()
    by_quality = bool(quality.judged and quality.drop is not None)
    by_quality = by_quality and quality.drop > config.max_metric_drop  # type: ignore[operator]
    if quality.judged:
        verdict = "quality drop: " if by_quality else "quality held: "
        reasons.append(
            f"{verdict}{quality.reason} ({quality.drop:+.1%} worse; "
            f"monitor.max_metric_drop is {config.max_metric_drop:.0%})"
        )
    else:
        reasons.append(f"quality not judged: {quality.reason}")
    seasons = (
        "; a window is compared with the reference rows from its own weeks of the year, "
        "when the reference holds them (monitor.seasonal_reference)"
        if config.seasonal_reference
        else ""
    )
    rule = (
        f"{drift.rule}{seasons}; or the primary metric fell more than "
        f"{config.max_metric_drop:.0%} (monitor.max_metric_drop) against test: measured on "
        "the labelled rows once monitor.min_labelled_rows labels are in, estimated on every "
        "row before (CBPE for a classifier, DLE for a regression)"
    )
    body = drift.to_dict()
    return Decision(
        drift=drift.drift or by_quality,
        reasons=reasons,
        rule=rule,
        drift_share=drift.share,
        drifted_columns=list(drift.drifted_columns),
        columns=body["columns"],
        prediction=body["prediction"],
        weights=drift.weights,
        reference=drift.reference,
        quality=quality.to_dict(),
    )


# evaluate logs its fairness audit (reports/fairness.json) here, in the run that made the
# model, which is the run a registered version points at.
FAIRNESS_ARTIFACT = "evaluation/fairness.json"
FAIRNESS_RULE = (
    "a gap exceeds evaluate.fairness.max_gap when its whole bootstrap interval lies above "
    "the bound (the gate's rule); a breach is reported and warned, never a retraining "
    "trigger: retraining on the same data does not remove a bias"
)


@dataclass(frozen=True)
class ChampionFairness:
    """The champion's largest gap per metric on test (`gaps` of evaluate's
    reports/fairness.json), and where it was read (`source`)."""

    gaps: dict[str, dict[str, Any]]
    source: str


def champion_fairness(
    config: MlflowConfig, version: str, fallback: Path
) -> ChampionFairness | None:
    """The fairness audit evaluate made of champion `version` on test: read from the run
    the version was registered from (evaluate logs it there as FAIRNESS_ARTIFACT), which
    any host reaches through the MLflow server, as it reaches the quality estimator
    registered with the version; else from `fallback`, this checkout's
    reports/fairness.json (the last candidate evaluated here: the champion's only if it
    was that candidate). None when neither can be read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow.MlflowClient().get_model_version(config.registered_model, version)
        report = mlflow.artifacts.load_dict(f"runs:/{found.run_id}/{FAIRNESS_ARTIFACT}")
        source = f"registered version {version}'s run ({FAIRNESS_ARTIFACT})"
    except (MlflowException, OSError, ValueError) as exc:
        logger.info("champion v%s's fairness audit is not in its run: %s", version, exc)
        try:
            report = json.loads(fallback.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        source = (
            f"{fallback} (this checkout's last evaluate: the champion's only if it was "
            "the last candidate evaluated here)"
        )
    gaps = report.get("gaps") if isinstance(report, dict) else None
    return ChampionFairness(dict(gaps or {}), source)


@dataclass(frozen=True)
class FairnessCheck:
    """The fairness audit of the window's labelled rows (`window_audit`: the served
    predictions, per group of each sensitive column) beside the champion's on test. Not
    `audited`: `reason` says in one line why there is no figure. Else `report` has the
    shape of reports/fairness.json (groups, and the largest gap per metric with its
    interval, each with `test`: the champion's gap of that metric on test, or None),
    `exceeded` names the metrics whose gap lies beyond evaluate.fairness.max_gap beyond
    the noise, `metric` is the one `reason` and the dashboard lead with (a breached one,
    else a bounded one, else the primary)."""

    audited: bool
    reason: str
    labelled: int
    metric: str | None = None
    exceeded: list[str] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)
    champion_source: str | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        fields = {key: value for key, value in asdict(self).items() if key != "report"}
        return {**fields, "rule": FAIRNESS_RULE, **self.report}


@dataclass(frozen=True)
class WindowAudit:
    """The audit of a production window's labelled rows (`window_audit`): `audit` over the
    sensitive columns the prediction log holds (None when it holds none of them),
    `missing` the columns it lacks, `rows` the labelled rows scored."""

    audit: FairnessAudit | None
    missing: list[str]
    rows: int


def window_audit(
    labelled: pd.DataFrame, task: str, classes: list[Any], config: FairnessConfig, seed: int
) -> WindowAudit:
    """The per-group metrics and gaps of what the champion served on `labelled` (a
    window's rows with a label: features as logged, `prediction`, `prediction_value`,
    `probabilities`, `label`), in the shape of `audit`'s: the served predictions and
    probabilities are scored as the monitor's quality check scores them
    (`pipeline.monitoring.served_scores`), never re-predicted, so the threshold is the
    one the champion served with. A sensitive column is read from the model inputs the
    log holds, else from the key or time columns sent as context; one it holds in neither
    is named in `missing` and left out."""
    from pipeline.fairness import audit

    served = served_scores(labelled, task, classes)
    rows = served.rows
    found: dict[str, pd.Series] = {}
    for column in config.sensitive_columns:
        for name in (column, CONTEXT_PREFIX + column):
            if name in rows.columns:
                found[column] = rows[name].reset_index(drop=True)
                break
    missing = [column for column in config.sensitive_columns if column not in found]
    if not found:
        return WindowAudit(None, missing, len(rows))
    present = config.model_copy(
        update={
            "sensitive_columns": list(found),
            "bands": {name: edges for name, edges in config.bands.items() if name in found},
        }
    )
    grouped = pd.DataFrame(found, index=pd.RangeIndex(len(rows)))
    return WindowAudit(audit(served.scored, grouped, task, present, seed), missing, len(rows))


def fairness_check(
    window: Window,
    task: str,
    classes: list[Any],
    config: FairnessConfig,
    min_labelled: int,
    seed: int,
    primary: str,
    champion: ChampionFairness | None = None,
) -> FairnessCheck:
    """The evaluate stage's fairness audit on the window's labelled rows, once there are
    `min_labelled` (`monitor.min_labelled_rows`) of them and `config`
    (`evaluate.fairness`) names sensitive columns; each gap beside the champion's on test
    (`champion`, see `champion_fairness`)."""
    labelled = window.frame[window.frame[LABEL].notna()]
    count = len(labelled)
    if not config.enabled:
        why = "evaluate.fairness.sensitive_columns is empty: no fairness audit"
        return FairnessCheck(False, why, count)
    if count < min_labelled:
        why = (
            f"no fairness figure: {count} labelled rows, fewer than "
            f"monitor.min_labelled_rows ({min_labelled})"
        )
        return FairnessCheck(False, why, count)
    try:
        found = window_audit(labelled, task, classes, config, seed)
    except DataError as exc:
        return FairnessCheck(False, f"no fairness figure: {exc}", count)
    not_logged = ""
    if found.missing:
        not_logged = (
            f"evaluate.fairness.sensitive_columns: {', '.join(found.missing)} not in the "
            "prediction log (neither a model input nor a key or time column sent with "
            "the requests)"
        )
    if found.audit is None:
        return FairnessCheck(
            False, f"no fairness figure: {not_logged}", count, missing_columns=found.missing
        )
    result = found.audit
    report = result.to_dict()
    on_test = champion.gaps if champion is not None else {}
    for name, gap in report["gaps"].items():
        gap["test"] = _test_gap(on_test.get(name))
    unknown = "not audited" if champion is not None else "no audit found"
    exceeded = [name for name, gap in result.gaps.items() if gap.exceeds]
    bounded = [name for name, gap in result.gaps.items() if gap.max_gap is not None]
    leading = [*exceeded, *bounded, primary, *result.gaps]
    metric = next((name for name in leading if name in result.gaps), None)
    if metric is None:
        reason = (
            f"no fairness gap: no two groups of {', '.join(result.groups)} hold "
            f"evaluate.fairness.min_group_rows ({config.min_group_rows}) of the "
            f"{found.rows} labelled rows"
        )
    elif exceeded:
        lines = [
            f"{line} (the champion on test: {_test_text(report['gaps'][name]['test'], unknown)})"
            for name, line in zip(exceeded, result.failures(), strict=True)
        ]
        reason = (
            f"fairness gap beyond its bound on {found.rows} labelled rows: {'; '.join(lines)}; "
            "reported, not a retraining trigger"
        )
    else:
        within = "within evaluate.fairness.max_gap" if bounded else "reported (no bound)"
        reason = (
            f"fairness gaps {within} on {found.rows} labelled rows: "
            f"{result.gaps[metric].describe()} (the champion on test: "
            f"{_test_text(report['gaps'][metric]['test'], unknown)})"
        )
    if not_logged:
        reason += f"; not audited: {not_logged}"
    return FairnessCheck(
        True,
        reason,
        count,
        metric=metric,
        exceeded=exceeded,
        missing_columns=found.missing,
        champion_source=champion.source if champion is not None else None,
        report=report,
    )


def _test_gap(gap: Any) -> dict[str, Any] | None:
    """The champion's gap of one metric on test, as evaluate recorded it."""
    if not isinstance(gap, dict) or gap.get("gap") is None:
        return None
    keys = ("gap", "low", "high", "column", "highest_group", "lowest_group", "exceeds")
    return {key: gap.get(key) for key in keys}


def _test_text(gap: dict[str, Any] | None, unknown: str) -> str:
    if gap is None:
        return unknown
    interval = ""
    if gap.get("low") is not None and gap.get("high") is not None:
        interval = f", interval {gap['low']:.3g}..{gap['high']:.3g}"
    return f"{gap['gap']:.3g}{interval}, {gap.get('column')}"


def production_batch(
    window: Window, source: pd.DataFrame, target: str, required: list[str]
) -> pd.DataFrame:
    """The window's labelled rows as a landing batch for `ingest`: the columns (and
    dtypes) of the `source` data set, the label as the target, features and context
    columns (key, time) from the log. Columns the log cannot supply (leaky columns the
    schema drops, say) are left empty; a `required` column it lacks is an error."""
    labelled = window.frame[window.frame[LABEL].notna()]
    columns: dict[str, pd.Series] = {}
    for column in source.columns:
        if column == target:
            values = labelled[LABEL]
        elif column in labelled.columns:
            values = labelled[column]
        elif CONTEXT_PREFIX + column in labelled.columns:
            values = labelled[CONTEXT_PREFIX + column]
        else:
            values = pd.Series(None, index=labelled.index, dtype=object)
        columns[column] = _like(values, source[column])
    batch = pd.DataFrame(columns, index=labelled.index).reset_index(drop=True)
    for column in required:
        if column in batch and batch[column].isna().any():
            raise DataError(
                f"{int(batch[column].isna().sum())} labelled production row(s) have no "
                f"{column!r}: send it with each request (an optional field of /predict) so "
                "that labelled traffic can become training data"
            )
    return batch


def _like(values: pd.Series, example: pd.Series) -> pd.Series:
    """`values` (as the log holds them: floats and text) in the dtype of `example`."""
    dtype = example.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        parsed = pd.to_datetime(values, errors="coerce", utc=getattr(dtype, "tz", None) is not None)
        return parsed.astype(dtype)
    if pd.api.types.is_bool_dtype(dtype):
        return values.map(lambda v: None if v is None or v != v else str(v) == "True")
    if pd.api.types.is_numeric_dtype(dtype):
        numbers = pd.to_numeric(values, errors="coerce")
        if pd.api.types.is_integer_dtype(dtype) and numbers.notna().all():
            whole = numbers.round()
            if (whole == numbers).all():
                return whole.astype(dtype)
        return numbers.astype("float64")
    return values.map(lambda v: None if v is None or v != v else category_value(v)).astype(object)
