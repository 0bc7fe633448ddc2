"""The monitor's inputs and decision, as pure functions over the prediction log.

`read_window` takes the newest `monitor.window_hours` of logged predictions, with the
labels that have arrived for them (`driftline label` stores them under the log's
`labels/` folder, or in the `labels` table of a SQL log's database). `quality_check`
scores the labelled rows against the champion's registered test metric. `decide` turns
the fast drift check and the quality check into one decision with its numbers; the
monitoring flow (flows/monitoring.py) records it whichever way it goes and, on drift,
emits the event that starts a retraining.

`Window.fingerprint` names a window by the request ids in it, so that many alerts for
the same window start one retraining.
"""

from __future__ import annotations

import hashlib
import json
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

if TYPE_CHECKING:
    from pipeline.config import MonitorConfig
    from pipeline.drift import DriftResult

LABEL = "label"


@dataclass(frozen=True)
class Window:
    """Logged predictions between `start` and `end`; `label` is NaN where none arrived."""

    frame: pd.DataFrame
    start: datetime
    end: datetime

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


def read_window(log: str | Path, hours: float, now: datetime | None = None) -> Window:
    """The newest `hours` of the prediction log at `log`, with their late labels."""
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
    return Window(frame=frame, start=start, end=end)


@dataclass(frozen=True)
class QualityCheck:
    """The primary metric on the window's labelled rows against the champion's test
    score; `drop` is how much worse, as a share (positive: worse)."""

    metric: str
    labelled: int
    judged: bool
    reason: str
    reference: float | None = None
    current: float | None = None
    drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_check(
    window: Window,
    task: str,
    metric: str,
    classes: list[Any],
    reference: float | None,
    min_labelled: int,
) -> QualityCheck:
    """Score the labelled rows of `window` on `metric`, once there are enough."""
    labelled = window.frame[window.frame[LABEL].notna()]
    count = len(labelled)
    if count < min_labelled:
        why = f"{count} labelled rows, fewer than monitor.min_labelled_rows ({min_labelled})"
        return QualityCheck(metric, count, False, why)
    if reference is None or not np.isfinite(reference):
        return QualityCheck(metric, count, False, f"the champion has no test {metric}")
    current = window_metrics(labelled, task, classes).get(metric)
    if current is None or not np.isfinite(current):
        return QualityCheck(metric, count, False, f"{metric} is undefined on this window")
    loss = reference - current if HIGHER_IS_BETTER[metric] else current - reference
    drop = float(loss / abs(reference)) if reference else float(loss)
    why = f"{metric} {current:.4g} on {count} labelled rows against {reference:.4g} on test"
    return QualityCheck(metric, count, True, why, reference, float(current), drop)


def window_metrics(labelled: pd.DataFrame, task: str, classes: list[Any]) -> dict[str, float]:
    """The task's metrics for logged predictions against their late labels."""
    if task == "regression":
        actual = pd.to_numeric(labelled[LABEL], errors="coerce").to_numpy(dtype=np.float64)
        predicted = labelled["prediction_value"].to_numpy(dtype=np.float64)
        keep = np.isfinite(actual) & np.isfinite(predicted)
        if not keep.any():
            return {}
        return regression_metrics(actual[keep], predicted[keep])
    texts = [category_value(label) for label in classes]
    code = {text: position for position, text in enumerate(texts)}
    rows = [
        (code[category_value(label)], code[category_value(predicted)], json.loads(probs))
        for label, predicted, probs in zip(
            labelled[LABEL], labelled["prediction"], labelled["probabilities"], strict=True
        )
        if category_value(label) in code and category_value(predicted) in code and probs
    ]
    if not rows:
        return {}
    actual_codes = np.array([row[0] for row in rows])
    predicted_codes = np.array([row[1] for row in rows])
    probabilities = np.array([[row[2][str(c)] for c in texts] for row in rows], dtype=float)
    return classification_metrics(actual_codes, probabilities, predicted_codes, task)


@dataclass(frozen=True)
class Decision:
    """Whether the window drifted, why, and the numbers behind it."""

    drift: bool
    reasons: list[str]
    drift_share: float
    drifted_columns: list[str]
    quality: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(drift: DriftResult, quality: QualityCheck, config: MonitorConfig) -> Decision:
    """Drift: at least `drift_share` of the columns drifted, or the metric fell by more
    than `max_metric_drop`. The reasons say which, or why neither."""
    reasons = []
    drifted = list(drift.drifted_columns)
    share_text = (
        f"{len(drifted)} of {len(drift.columns)} columns drifted ({drift.share:.0%}; "
        f"monitor.drift_share is {config.drift_share:.0%})"
    )
    by_share = drift.share >= config.drift_share
    reasons.append(("data drift: " if by_share else "no data drift: ") + share_text)
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
    return Decision(
        drift=by_share or by_quality,
        reasons=reasons,
        drift_share=drift.share,
        drifted_columns=drifted,
        quality=quality.to_dict(),
    )


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
