"""The fairness audit: the test metrics per group of each sensitive column, and the gaps.

For each column in `evaluate.fairness.sensitive_columns` (a numeric one cut into
`bands`), fairlearn's `MetricFrame` computes the task's metrics within each group, plus
the share predicted positive (`selection_rate`, binary) or the mean prediction
(`mean_prediction`, regression). The gap of a metric is the difference between its best
and worst group (`MetricFrame.difference`). Each group's metrics and each gap get a
percentile interval over `resamples` seeded resamples of the test rows (drawn here, as
`MetricFrame(n_boot=...)` draws them, at a fraction of its cost); the largest gap
per metric over the columns goes to `reports/fairness.json`, the MLflow run and the
gate. The gate refuses a candidate only when a gap's whole interval lies above
`max_gap`: a gap that noise alone could bring under the bound does not refuse.

Groups with fewer than `min_group_rows` test rows are reported without intervals and
left out of the gaps: on a few rows a metric is noise, and one would decide the gate.

The monitor runs the same audit on a production window's labelled rows, scoring the
predictions the champion served (pipeline/monitoring.py `window_audit`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.config import GROUP_METRICS
from pipeline.errors import DataError
from pipeline.metrics import TASK_METRICS, classification_metrics, regression_metrics

if TYPE_CHECKING:
    from pipeline.config import FairnessConfig
    from pipeline.scoring import Scored

MISSING_GROUP = "missing"
# A numeric column with more values than this needs bands: each value would be a group.
MAX_UNBANDED_VALUES = 20


def audit_metrics(task: str) -> tuple[str, ...]:
    """What groups are compared on: the task's metrics, and the share predicted positive
    (binary) or the mean prediction (regression)."""
    return TASK_METRICS[task] + GROUP_METRICS[task]


@dataclass(frozen=True)
class Gap:
    """The largest difference of one metric between two groups of one column."""

    metric: str
    column: str
    gap: float
    low: float  # the bootstrap interval of the gap
    high: float
    highest_group: str
    highest: float
    lowest_group: str
    lowest: float
    max_gap: float | None = None

    @property
    def exceeds(self) -> bool:
        """Beyond the noise: the whole interval lies above the bound."""
        return self.max_gap is not None and self.low > self.max_gap

    def describe(self) -> str:
        return (
            f"{self.metric} gap {self.gap:.3g} (interval {self.low:.3g}..{self.high:.3g}) "
            f"between {self.column}={self.highest_group} ({self.highest:.4g}) and "
            f"{self.column}={self.lowest_group} ({self.lowest:.4g})"
        )


@dataclass(frozen=True)
class FairnessAudit:
    """Per column, per group: rows and each metric's value and interval; the largest
    gap per metric."""

    groups: dict[str, list[dict[str, Any]]]
    gaps: dict[str, Gap]
    confidence: float
    resamples: int
    min_group_rows: int
    bands: dict[str, list[float]]

    def failures(self) -> list[str]:
        """Why the gate refuses: one line per metric whose gap is beyond its bound."""
        return [
            f"{gap.describe()} > evaluate.fairness.max_gap.{name} {gap.max_gap:g}"
            for name, gap in self.gaps.items()
            if gap.exceeds
        ]

    def flat(self) -> dict[str, float]:
        """The gaps as metrics for MLflow: fairness_gap_<metric>."""
        return {f"fairness_gap_{name}": gap.gap for name, gap in self.gaps.items()}

    def to_dict(self) -> dict[str, Any]:
        return _finite(
            {
                "sensitive_columns": list(self.groups),
                "bands": self.bands,
                "confidence": self.confidence,
                "resamples": self.resamples,
                "min_group_rows": self.min_group_rows,
                "gaps": {
                    name: {**asdict(gap), "exceeds": gap.exceeds} for name, gap in self.gaps.items()
                },
                "groups": self.groups,
            }
        )


def group_labels(values: pd.Series, edges: list[float] | None, column: str) -> pd.Series:
    """Each row's group: its value, or its band when `edges` are given (<25, 25-35,
    ..., >=65); a missing value is its own group."""
    if edges is None:
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if numeric and values.nunique(dropna=True) > MAX_UNBANDED_VALUES:
            raise DataError(
                f"evaluate.fairness.bands: {column} is numeric with {values.nunique()} values: "
                f"give it band edges, e.g. {column}: [25, 35, 50, 65]"
            )
        labels = values.astype(object).where(values.notna(), MISSING_GROUP).map(str)
        return labels.rename(column)
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() < values.notna().sum():
        raise DataError(f"evaluate.fairness.bands.{column}: {column} is not numeric")
    names = [f"<{edges[0]:g}"]
    names += [f"{low:g}-{high:g}" for low, high in itertools.pairwise(edges)]
    names.append(f">={edges[-1]:g}")
    codes = np.searchsorted(np.asarray(edges, dtype=np.float64), numbers.to_numpy(), "right")
    labels = pd.Series(np.asarray(names, dtype=object)[np.minimum(codes, len(edges))])
    labels[numbers.isna().to_numpy()] = MISSING_GROUP
    return pd.Series(labels.to_numpy(), index=values.index, name=column)


def _metric_table(scored: Scored, task: str) -> Callable[[np.ndarray], dict[str, float]]:
    """Every metric of the rows at these positions."""

    def metrics_of(rows: np.ndarray) -> dict[str, float]:
        if task == "regression":
            values = regression_metrics(scored.actual[rows], scored.raw[rows])
            values["mean_prediction"] = float(np.mean(scored.raw[rows]))
            return values
        if task == "binary":
            return binary_metrics(
                scored.codes[rows], scored.raw[rows], scored.predicted_codes[rows]
            )
        return classification_metrics(
            scored.codes[rows], scored.raw[rows], scored.predicted_codes[rows], task
        )

    return metrics_of


def _cached(metrics_of: Callable[[np.ndarray], dict[str, float]]) -> Callable[..., dict]:
    """`metrics_of` computed once per set of rows: the MetricFrame asks for each metric
    of each group separately."""
    cache: dict[bytes, dict[str, float]] = {}

    def cached(rows: np.ndarray) -> dict[str, float]:
        key = hashlib.blake2b(rows.tobytes(), digest_size=16).digest()
        if key not in cache:
            cache[key] = metrics_of(rows)
        return cache[key]

    return cached


def binary_metrics(
    codes: np.ndarray, probabilities: np.ndarray, predicted_codes: np.ndarray
) -> dict[str, float]:
    """pipeline.metrics.classification_metrics for two classes, in plain numpy, and the
    selection rate: the same numbers (tests/model/test_fairness.py checks them) at a
    twentieth of the cost, which the bootstrap pays thousands of times."""
    from scipy.stats import rankdata

    y = np.asarray(codes) == 1
    decided = np.asarray(predicted_codes) == 1
    clipped = np.clip(probabilities, 1e-15, 1 - 1e-15)
    positive = probabilities[:, 1]
    n, n_positive = len(y), int(y.sum())
    tp, fp = int(np.sum(y & decided)), int(np.sum(~y & decided))
    fn, tn = n_positive - tp, n - n_positive - fp
    both_present = 0 < n_positive < n
    roc_auc = pr_auc = float("nan")
    if both_present:
        ranks = rankdata(positive)
        roc_auc = (ranks[y].sum() - n_positive * (n_positive + 1) / 2) / (
            n_positive * (n - n_positive)
        )
        # Average precision over the distinct thresholds, highest first (scikit-learn's).
        order = np.argsort(-positive, kind="mergesort")
        ends = np.r_[np.flatnonzero(np.diff(positive[order])), n - 1]
        hits = np.cumsum(y[order])[ends]
        precision_at = hits / (ends + 1)
        pr_auc = float(np.sum(np.diff(np.r_[0, hits / n_positive]) * precision_at))
    # log loss on the clipped probabilities, each row renormalised as scikit-learn does.
    chosen = clipped[np.arange(n), y.astype(int)] / clipped.sum(axis=1)
    return {
        "roc_auc": float(roc_auc),
        "pr_auc": pr_auc,
        "accuracy": (tp + tn) / n,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / n_positive if n_positive else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "log_loss": float(-np.mean(np.log(chosen))),
        "brier": float(np.mean((positive - y) ** 2)),
        "selection_rate": float(np.mean(decided)),
    }


def audit(
    scored: Scored, test: pd.DataFrame, task: str, config: FairnessConfig, seed: int
) -> FairnessAudit:
    """The per-group metrics and gaps of `scored` (the model's outputs on `test`)."""
    import sklearn

    # The metrics run (1 + groups) x resamples times on arrays checked once already:
    # scikit-learn's argument checks would be a third of the time.
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        return _audit(scored, test, task, config, seed)


def _audit(
    scored: Scored, test: pd.DataFrame, task: str, config: FairnessConfig, seed: int
) -> FairnessAudit:
    from fairlearn.metrics import MetricFrame

    names = audit_metrics(task)
    unknown = [name for name in config.max_gap if name not in names]
    if unknown:
        raise DataError(
            f"evaluate.fairness.max_gap: {', '.join(unknown)} not a {task} metric "
            f"(one of {', '.join(names)})"
        )
    metrics_of = _metric_table(scored, task)
    cached = _cached(metrics_of)

    def metric(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
        def value(_: np.ndarray, rows: np.ndarray) -> float:
            return cached(np.asarray(rows, dtype=np.int64))[name]

        return value

    functions = {name: metric(name) for name in names}
    positions = np.arange(len(test), dtype=np.int64)
    groups: dict[str, list[dict[str, Any]]] = {}
    gaps: dict[str, Gap] = {}
    for number, column in enumerate(config.sensitive_columns):
        if column not in test.columns:
            raise DataError(f"evaluate.fairness.sensitive_columns: {column} not in the test rows")
        labels = group_labels(test[column], config.bands.get(column), column)
        sizes = labels.value_counts()
        large = labels.isin(sizes.index[sizes >= config.min_group_rows]).to_numpy()
        entries: list[dict[str, Any]] = []
        if large.any():
            frame = MetricFrame(
                metrics=functions,
                y_true=positions[large],
                y_pred=positions[large],
                sensitive_features=labels[large].to_numpy(),
            )
            by_group = frame.by_group
            rng = np.random.default_rng([seed, number])
            low, high, gap_low, gap_high = _bootstrap(
                metrics_of, positions[large], labels[large].to_numpy(), by_group, config, rng
            )
            for group in by_group.index:
                entries.append(
                    {
                        "group": str(group),
                        "rows": int(sizes[group]),
                        **{
                            name: {
                                "value": float(by_group.loc[group, name]),
                                "low": float(low.loc[group, name]),
                                "high": float(high.loc[group, name]),
                            }
                            for name in names
                        },
                    }
                )
            difference = frame.difference()
            for name in names:
                column_gap = _gap(
                    name, column, by_group[name], difference, gap_low, gap_high, config
                )
                if column_gap is not None and (name not in gaps or column_gap.gap > gaps[name].gap):
                    gaps[name] = column_gap
        for group in sizes.index[sizes < config.min_group_rows]:
            rows = positions[(labels == group).to_numpy()]
            values = cached(rows)
            entries.append(
                {
                    "group": str(group),
                    "rows": len(rows),
                    "too_few_rows": True,
                    **{name: {"value": values[name], "low": None, "high": None} for name in names},
                }
            )
        groups[column] = sorted(entries, key=lambda entry: -entry["rows"])
    return FairnessAudit(
        groups, gaps, config.confidence, config.resamples, config.min_group_rows, config.bands
    )


def _bootstrap(
    metrics_of: Callable[[np.ndarray], dict[str, float]],
    rows: np.ndarray,
    labels: np.ndarray,
    by_group: pd.DataFrame,
    config: FairnessConfig,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Percentile intervals of each group's metrics and of each metric's gap (best
    group minus worst), over `config.resamples` resamples of the rows with replacement:
    what MetricFrame(n_boot=...) computes, without its per-call conversion of every
    row (minutes on 45,000 rows; seconds here)."""
    names, groups = list(by_group.columns), list(by_group.index)
    samples = np.full((config.resamples, len(groups), len(names)), np.nan)
    for sample in range(config.resamples):
        drawn = rng.integers(0, len(rows), len(rows))
        drawn_rows, drawn_labels = rows[drawn], labels[drawn]
        for position, group in enumerate(groups):
            picked = drawn_rows[drawn_labels == group]
            if len(picked):
                values = metrics_of(picked)
                samples[sample, position] = [values[name] for name in names]
    quantiles = [(1 - config.confidence) / 2, (1 + config.confidence) / 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a metric undefined in every group
        gaps = np.nanmax(samples, axis=1) - np.nanmin(samples, axis=1)
        low, high = np.nanquantile(samples, quantiles, axis=0)
        gap_low, gap_high = np.nanquantile(gaps, quantiles, axis=0)
    return (
        pd.DataFrame(low, index=groups, columns=names),
        pd.DataFrame(high, index=groups, columns=names),
        pd.Series(gap_low, index=names),
        pd.Series(gap_high, index=names),
    )


def _gap(
    name: str,
    column: str,
    values: pd.Series,
    difference: pd.Series,
    low: pd.Series,
    high: pd.Series,
    config: FairnessConfig,
) -> Gap | None:
    defined = values.dropna()
    if len(defined) < 2 or not math.isfinite(float(difference[name])):
        return None
    return Gap(
        metric=name,
        column=column,
        gap=float(difference[name]),
        low=float(low[name]),
        high=float(high[name]),
        highest_group=str(defined.idxmax()),
        highest=float(defined.max()),
        lowest_group=str(defined.idxmin()),
        lowest=float(defined.min()),
        max_gap=config.max_gap.get(name),
    )


def fairness_plot(result: FairnessAudit, metric: str, out: Path) -> list[Path]:
    """`fairness.csv` (`column,group,rows,value,low,high` of `metric`) and
    `png/fairness.png`: the metric per group with its interval, one panel per column;
    groups too small for the gaps in grey, without an interval."""
    from pipeline.plots import _pyplot, _save_png, _write_csv

    rows = [
        {
            "column": column,
            "group": entry["group"],
            "rows": entry["rows"],
            "value": entry[metric]["value"],
            "low": entry[metric]["low"],
            "high": entry[metric]["high"],
        }
        for column, entries in result.groups.items()
        for entry in entries
    ]
    table = pd.DataFrame(rows, columns=["column", "group", "rows", "value", "low", "high"])
    data = out / "fairness.csv"
    _write_csv(data, table)
    columns = list(result.groups)
    with _pyplot() as plt:
        fig, axes = plt.subplots(
            len(columns), 1, figsize=(7, 1.2 + 2.2 * len(columns)), squeeze=False
        )
        for ax, column in zip(axes[:, 0], columns, strict=True):
            shown = table[table["column"] == column].reset_index(drop=True)
            values = shown["value"].astype(float).to_numpy()
            low = (values - shown["low"].astype(float).to_numpy()).clip(min=0)
            high = (shown["high"].astype(float).to_numpy() - values).clip(min=0)
            positions = np.arange(len(shown))
            ax.barh(
                positions,
                values,
                xerr=np.nan_to_num(np.vstack([low, high])),
                color=np.where(shown["low"].isna(), "tab:gray", "tab:blue"),
                ecolor="black",
                capsize=3,
            )
            ax.set_yticks(
                positions,
                [f"{g} ({n} rows)" for g, n in zip(shown["group"], shown["rows"], strict=True)],
            )
            ax.invert_yaxis()
            ax.set(xlabel=metric, title=f"{metric} by {column} ({result.confidence:.0%} intervals)")
        png = _save_png(plt, fig, out / "png" / "fairness.png")
    return [data, png]


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so the JSON is valid for every reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
