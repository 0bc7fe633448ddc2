"""The monitor's checks in the Evidently UI: one snapshot per check, and a dashboard.

Each check adds one snapshot to the project `driftline` of the Evidently workspace
(`evidently ui --workspace evidently`): the drift report (`DataDriftPreset` and the
predictions' `ValueDrift`, pipeline/drift.py) together with the decision's own figures,
which Evidently cannot compute (the weighted share of drifted counted columns, the
estimated and the measured quality, the fairness gap). Those figures enter as metric
values the UI can plot: `MeanValue` of a one-row table that holds them, merged into the
report's snapshot.

The snapshot is stamped with the time of the window's newest row (its time column, sent
with the request, else the time it was served), so that the dashboard's time axis is the
traffic's time: a backfill or `driftline simulate` replays weeks in minutes. It carries
the model version, the window and the decision as metadata (text, since the UI indexes
them) and tags (`drift` or `no-drift`, `v<version>`).

The dashboard's panels are added once per project: a panel whose title is already on
the dashboard is left as it is, so a person may rearrange them.

Evidently is imported inside the functions (it takes seconds to import).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pandas.api.types import is_numeric_dtype

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
    from evidently.sdk.models import DashboardPanelPlot
    from evidently.ui.workspace import Project

PROJECT = "driftline"
PROJECT_DESCRIPTION = (
    "Driftline's monitoring checks: one snapshot per check, at the time of its window's "
    "newest row, with the drift report and the decision's figures."
)

# The decision's figures, as columns of the one-row table whose MeanValue the panels plot.
DRIFT = "drift"  # 1 when the check decided drift
PREDICTIONS_DRIFTED = "predictions_drifted"  # 1 when the predictions' test said drift
WEIGHTED_SHARE = "weighted_drift_share"
SHARE_THRESHOLD = "drift_share_threshold"
DRIFTED = "drifted_columns"
COUNTED_DRIFTED = "counted_drifted_columns"
ESTIMATED = "estimated_quality"
MEASURED = "measured_quality"
TEST = "test_quality"
ESTIMATED_TEST = "estimated_test_quality"  # the method's estimate on test: what it is compared with
# The fairness check's lead metric (a breached one, else a bounded one, else the primary):
# its largest gap between two groups, the interval's low end, the bound, the champion's
# gap on test (pipeline/monitoring.py `fairness_check`).
FAIRNESS_GAP = "fairness_gap"
FAIRNESS_GAP_LOW = "fairness_gap_low"
FAIRNESS_BOUND = "fairness_max_gap"
FAIRNESS_TEST_GAP = "fairness_test_gap"

_MEAN = "evidently:metric_v2:MeanValue"
_DRIFTED_COUNT = "evidently:metric_v2:DriftedColumnsCount"


def check_time(record: dict[str, Any], data_times: pd.Series | None = None) -> datetime:
    """When the checked traffic happened: the newest of `data_times` (the window's time
    column) when they parse as times, else the window's end; in UTC, without a zone (the
    Evidently UI compares snapshot times with times without one). Numbers are not read
    as times: their unit is unknown."""
    newest = None
    if data_times is not None and len(data_times) and not is_numeric_dtype(data_times):
        parsed = pd.to_datetime(data_times, errors="coerce", utc=True, format="mixed")
        newest = parsed.max()
    when = newest.to_pydatetime() if newest is not None and pd.notna(newest) else None
    if when is None:
        when = datetime.fromisoformat(record["window"]["end"])
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.astimezone(UTC).replace(tzinfo=None)


def check_metadata(record: dict[str, Any], time: datetime) -> dict[str, str]:
    """What the snapshot says about its check: the model, the window, the decision."""
    window = record["window"]
    quality = record.get("quality") or {}
    drifted = record.get("drifted_columns") or []
    return {
        "model_version": str(record.get("model_version")),
        "data_time": time.isoformat(),
        "window_start": str(window["start"]),
        "window_end": str(window["end"]),
        "rows": str(window["rows"]),
        "labelled_rows": str(window["labelled"]),
        "fingerprint": str(window["fingerprint"]),
        "decision": "drift" if record.get("drift") else "no drift",
        "drifted_columns": ", ".join(drifted) if drifted else "none",
        "quality_metric": str(quality.get("metric")),
        "reference": str(record.get("reference")),
        "decided_at": str(record.get("time")),
    }


def check_tags(record: dict[str, Any]) -> list[str]:
    tags = ["drift" if record.get("drift") else "no-drift"]
    if record.get("model_version") is not None:
        tags.append(f"v{record['model_version']}")
    return tags


def decision_figures(record: dict[str, Any], drift_share: float) -> dict[str, float]:
    """The decision's numbers the dashboard plots; a figure the check does not have (no
    estimate, too few labels) is left out rather than plotted as zero."""
    quality = record.get("quality") or {}
    columns = record.get("columns") or []
    figures: dict[str, Any] = {
        DRIFT: float(bool(record.get("drift"))),
        PREDICTIONS_DRIFTED: _verdict((record.get("prediction") or {}).get("drifted")),
        WEIGHTED_SHARE: record.get("drift_share"),
        SHARE_THRESHOLD: drift_share,
        DRIFTED: len(record.get("drifted_columns") or []),
        COUNTED_DRIFTED: sum(1 for c in columns if c.get("counted") and c.get("drifted")),
        ESTIMATED: quality.get("estimated"),
        MEASURED: quality.get("current"),
        TEST: quality.get("reference"),
        ESTIMATED_TEST: quality.get("estimated_reference"),
        **_fairness_figures(record.get("fairness") or {}),
    }
    return {
        name: float(value)
        for name, value in figures.items()
        if isinstance(value, int | float) and math.isfinite(value)
    }


def _fairness_figures(fairness: dict[str, Any]) -> dict[str, Any]:
    gap = (fairness.get("gaps") or {}).get(fairness.get("metric")) or {}
    return {
        FAIRNESS_GAP: gap.get("gap"),
        FAIRNESS_GAP_LOW: gap.get("low"),
        FAIRNESS_BOUND: gap.get("max_gap"),
        FAIRNESS_TEST_GAP: (gap.get("test") or {}).get("gap"),
    }


def _verdict(drifted: Any) -> float | None:
    return float(drifted) if isinstance(drifted, bool) else None


def stamped_snapshot(
    report: Snapshot, record: dict[str, Any], drift_share: float, time: datetime
) -> Snapshot:
    """The drift report's snapshot with the decision's figures added as metrics (values
    the dashboard plots and the JSON holds; the report's pages stay Evidently's), stamped
    with `time`, the check's metadata and tags."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from evidently import DataDefinition, Dataset, Report
        from evidently.core.report import Snapshot
        from evidently.metrics import MeanValue

    figures = decision_figures(record, drift_share)
    table = pd.DataFrame({name: [value] for name, value in figures.items()})
    definition = DataDefinition(
        numerical_columns=list(figures),
        categorical_columns=[],
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )
    decided = Report([MeanValue(column=name) for name in figures]).run(
        current_data=Dataset.from_pandas(table, data_definition=definition)
    )
    merged, extra = report.to_snapshot_model(), decided.to_snapshot_model()
    model = merged.copy(
        update={
            "name": f"check of the window to {time:%Y-%m-%d %H:%M}",
            "timestamp": time,
            "metadata": check_metadata(record, time),
            "tags": check_tags(record),
            "metric_results": {**merged.metric_results, **extra.metric_results},
            "top_level_metrics": [*merged.top_level_metrics, *extra.top_level_metrics],
            # Not its widgets: a histogram of one value per figure says nothing.
        }
    )
    return Snapshot.load_model(model)


def dashboard_panels() -> list[DashboardPanelPlot]:
    """The project's panels, each plotting the checks' snapshots over time."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel, text_panel

    def figure(column: str, legend: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric=_MEAN, metric_labels={"column": column})

    return [
        text_panel(
            "Driftline monitoring",
            "One point per check, at the time of its window's newest row. Each snapshot "
            "carries the model version, the window and the decision as metadata.",
        ),
        counter_panel(
            "Checks that decided drift",
            [figure(DRIFT, "checks with drift")],
            size="half",
            aggregation="sum",
        ),
        counter_panel(
            "Drifted columns in the last check",
            [figure(DRIFTED, "drifted columns")],
            size="half",
            aggregation="last",
        ),
        line_plot_panel(
            "Drift share over time",
            [
                figure(WEIGHTED_SHARE, "weighted share (decides)"),
                figure(SHARE_THRESHOLD, "monitor.drift_share"),
                PanelMetric(
                    legend="all columns (Evidently)",
                    metric=_DRIFTED_COUNT,
                    metric_labels={"value_type": "share"},
                ),
            ],
            "The decision weighs each counted column by the champion's importance; "
            "calendar and ignored columns are not counted.",
        ),
        bar_plot_panel(
            "Drifted columns",
            [
                figure(DRIFTED, "all drifted columns"),
                figure(COUNTED_DRIFTED, "drifted and counted"),
            ],
            "Each snapshot's metadata names them (drifted_columns).",
            size="half",
        ),
        # Not Evidently's ValueDrift score: a distance or a p-value, by the reference's
        # size, so one line would mix both.
        bar_plot_panel(
            "Prediction drift",
            [figure(PREDICTIONS_DRIFTED, "predictions drifted (1) or not (0)")],
            "The champion's predictions on the window against those on its reference: "
            "the drift test's verdict (the report names the test and its score).",
            size="half",
        ),
        line_plot_panel(
            "Quality: estimated and measured",
            [
                figure(ESTIMATED, "estimated (before labels)"),
                figure(MEASURED, "measured (on labelled rows)"),
                figure(TEST, "the champion on test"),
                figure(ESTIMATED_TEST, "estimated on test"),
            ],
            "The champion's primary metric (each snapshot's quality_metric): estimated "
            "from the predictions alone, measured once enough labels are in. An estimate "
            "is judged against the same method's estimate on test.",
        ),
        line_plot_panel(
            "Fairness gap over time",
            [
                figure(FAIRNESS_GAP, "largest gap between two groups"),
                figure(FAIRNESS_GAP_LOW, "its interval's low end"),
                figure(FAIRNESS_BOUND, "evaluate.fairness.max_gap"),
                figure(FAIRNESS_TEST_GAP, "the champion on test"),
            ],
            "On the labelled rows, per sensitive column (evaluate.fairness): a breached "
            "metric, else a bounded one, else the primary. Beyond the bound when the low "
            "end is above it; reported, never a retraining trigger.",
        ),
    ]


def ensure_dashboard(project: Project) -> int:
    """Add the panels the project's dashboard lacks (by title); how many were added."""
    present = {panel.title for panel in project.dashboard.model().panels}
    missing = [panel for panel in dashboard_panels() if panel.title not in present]
    for panel in missing:
        project.dashboard.add_panel(panel)
    return len(missing)


def add_check(workspace: Path, snapshot: Snapshot) -> str:
    """Add a check's snapshot to the project `driftline` in the workspace at
    `workspace`, creating the project and its dashboard the first time; its id."""
    from evidently.ui.workspace import Workspace

    opened = Workspace.create(str(workspace))
    found = opened.search_project(PROJECT)
    project = found[0] if found else opened.create_project(PROJECT, PROJECT_DESCRIPTION)
    ensure_dashboard(project)
    opened.add_run(project.id, snapshot)
    return str(project.id)


def project_id(workspace: Path) -> str | None:
    """The id of the project `driftline` in the workspace at `workspace` (its dashboard
    is `/projects/<id>` in the Evidently UI); None before the first check."""
    if not workspace.is_dir():
        return None
    from evidently.ui.workspace import Workspace

    found = Workspace.create(str(workspace)).search_project(PROJECT)
    return str(found[0].id) if found else None
