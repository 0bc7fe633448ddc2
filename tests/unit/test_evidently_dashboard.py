"""The monitor's checks in the Evidently UI (pipeline/evidently_dashboard.py), in a real
workspace: the dashboard's panels are added once, each snapshot carries its check's
metadata, tags and window time, and the UI's own series hold every check's figures."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.drift import evidently_report
from pipeline.evidently_dashboard import (
    ESTIMATED,
    MEASURED,
    WEIGHTED_SHARE,
    add_check,
    check_time,
    dashboard_panels,
    decision_figures,
    project_id,
    stamped_snapshot,
)
from pipeline.monitoring import Decision
from tests.conftest import FIXTURES


def check_record(
    *,
    drift: bool,
    share: float,
    drifted: list[str],
    counted: list[str],
    metric: str,
    measured: float | None,
    estimated: float | None,
    predictions_drifted: bool = False,
    version: str = "3",
) -> dict[str, Any]:
    """A decision record as the monitoring flow writes it: the window, the decision's
    fields (a real `Decision`), the champion's version."""
    columns = [
        {"column": name, "drifted": name in drifted, "counted": name in counted}
        for name in sorted({*drifted, *counted})
    ]
    decision = Decision(
        drift=drift,
        reasons=["(reasons)"],
        rule="(rule)",
        drift_share=share,
        drifted_columns=drifted,
        columns=columns,
        prediction={"column": "prediction", "method": "ks", "drifted": predictions_drifted},
        quality={
            "metric": metric,
            "current": measured,
            "reference": 0.5,
            "estimated": estimated,
            "estimated_reference": 0.4,
        },
    )
    return {
        "time": "2026-11-29T10:00:00+00:00",
        "window": {
            "start": "2026-11-29T08:00:00+00:00",
            "end": "2026-11-29T09:00:00+00:00",
            "rows": 200,
            "labelled": 120,
            "fingerprint": "0123456789abcdef",
        },
        **decision.to_dict(),
        "model_version": version,
    }


@dataclass(frozen=True)
class Workspaces:
    bike: Path  # two checks of a regression model, the later one added first
    elec2: Path  # one check of a classifier, its prediction a class
    bike_records: tuple[dict[str, Any], dict[str, Any]]


def fixture_report(name: str, numeric: list[str], categorical: list[str], target: str) -> Any:
    frame = pd.read_csv(FIXTURES / name, sep=None, engine="python")
    frame = frame.rename(columns={target: "prediction"})
    columns = [*numeric, *categorical, "prediction"]
    return evidently_report(
        frame[columns].head(300),
        frame[columns].tail(200),
        numeric,
        categorical,
        prediction="prediction",
    )


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory: pytest.TempPathFactory) -> Workspaces:
    root = tmp_path_factory.mktemp("evidently")
    bike = fixture_report("bike_sharing_2000.csv", ["temp", "hum", "hr"], ["season"], "cnt")
    early = check_record(
        drift=False,
        share=0.1,
        drifted=["yr"],
        counted=["temp", "hum"],
        metric="rmse",
        measured=None,  # too few labels: the estimate alone
        estimated=80.0,
    )
    late = check_record(
        drift=True,
        share=0.6,
        drifted=["temp", "hum", "yr"],
        counted=["temp", "hum"],
        metric="rmse",
        measured=95.0,
        estimated=90.0,
        predictions_drifted=True,
    )
    days = {id(early): ["2012-04-01", "2012-04-14"], id(late): ["2012-05-01", "2012-05-26"]}
    for record in (late, early):  # in the workspace out of time order
        time = check_time(record, pd.Series(days[id(record)]))
        add_check(root / "bike", stamped_snapshot(bike, record, 0.5, time))
    elec2 = fixture_report("elec2_3000.csv", ["nswprice", "nswdemand"], ["day"], "class")
    record = check_record(
        drift=True,
        share=1.0,
        drifted=["nswprice"],
        counted=["nswprice", "nswdemand"],
        metric="accuracy",
        measured=0.7,
        estimated=0.75,
        version="7",
    )
    time = check_time(record, None)
    add_check(root / "elec2", stamped_snapshot(elec2, record, 0.5, time))
    return Workspaces(root / "bike", root / "elec2", (early, late))


def snapshots(path: Path) -> list[Any]:
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(path))
    found = project_id(path)
    assert found is not None
    runs = [workspace.get_run(found, run) for run in workspace.list_runs(found)]
    return sorted(runs, key=lambda run: run.timestamp)


def test_the_dashboard_gets_its_panels_once(workspaces: Workspaces) -> None:
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(workspaces.bike))
    [project] = workspace.search_project("driftline")
    dashboard = project.dashboard.model()
    expected = [panel.title for panel in dashboard_panels()]
    assert [panel.title for panel in dashboard.panels] == expected  # two checks, one set
    [tab] = dashboard.tabs
    assert tab.panels == [panel.id for panel in dashboard.panels]
    assert len(workspace.list_runs(project.id)) == 2


def test_a_snapshot_carries_its_check_as_metadata_tags_and_time(workspaces: Workspaces) -> None:
    early, late = snapshots(workspaces.bike)
    # The time of the window's newest row, not when the check ran (2026).
    assert early.timestamp == datetime(2012, 4, 14)
    assert late.timestamp == datetime(2012, 5, 26)
    assert late.tags == ["drift", "v3"] and early.tags == ["no-drift", "v3"]
    assert late.metadata == {
        "model_version": "3",
        "data_time": "2012-05-26T00:00:00",
        "window_start": "2026-11-29T08:00:00+00:00",
        "window_end": "2026-11-29T09:00:00+00:00",
        "rows": "200",
        "labelled_rows": "120",
        "fingerprint": "0123456789abcdef",
        "decision": "drift",
        "drifted_columns": "temp, hum, yr",
        "quality_metric": "rmse",
        "reference": "the whole reference sample",
        "decided_at": "2026-11-29T10:00:00+00:00",
    }


def panel_series(path: Path) -> dict[str, dict[str, list[float | None]]]:
    """What the Evidently UI plots: each panel's series by legend, values in time order,
    read by the UI's own storage from the workspace's files."""
    from evidently.ui.service.base import SeriesFilter
    from evidently.ui.service.storage.local.base import InMemoryDataStorage

    storage = InMemoryDataStorage(str(path))
    project = uuid.UUID(str(project_id(path)))
    plotted: dict[str, dict[str, list[float | None]]] = {}
    for panel in dashboard_panels():
        if not panel.values:  # the text panel
            continue
        filters = [
            SeriesFilter(
                tags=value.tags,
                metadata=value.metadata,
                metric=value.metric,
                metric_labels=value.metric_labels,
            )
            for value in panel.values
        ]
        found = asyncio.run(storage.get_data_series(project, filters, None, None))
        plotted[panel.title] = {
            str(panel.values[series.filter_index].legend): series.values for series in found.series
        }
    return plotted


def test_every_panel_plots_each_check(workspaces: Workspaces) -> None:
    plotted = panel_series(workspaces.bike)
    assert plotted["Drift share over time"]["weighted share (decides)"] == [0.1, 0.6]
    assert plotted["Drift share over time"]["monitor.drift_share"] == [0.5, 0.5]
    assert len(plotted["Drift share over time"]["all columns (Evidently)"]) == 2
    assert plotted["Drifted columns"] == {
        "all drifted columns": [1.0, 3.0],
        "drifted and counted": [0.0, 2.0],
    }
    assert plotted["Prediction drift"] == {"predictions drifted (1) or not (0)": [0.0, 1.0]}
    quality = plotted["Quality: estimated and measured"]
    assert quality["estimated (before labels)"] == [80.0, 90.0]
    assert quality["measured (on labelled rows)"] == [None, 95.0]  # no labels at first
    assert quality["the champion on test"] == [0.5, 0.5]
    assert quality["estimated on test"] == [0.4, 0.4]
    assert plotted["Checks that decided drift"] == {"checks with drift": [0.0, 1.0]}


def test_a_classifiers_checks_plot_too(workspaces: Workspaces) -> None:
    [only] = snapshots(workspaces.elec2)
    assert only.tags == ["drift", "v7"] and only.metadata["quality_metric"] == "accuracy"
    # No time column: the window's end, in UTC.
    assert only.timestamp == datetime(2026, 11, 29, 9)
    plotted = panel_series(workspaces.elec2)
    assert plotted["Quality: estimated and measured"]["measured (on labelled rows)"] == [0.7]
    assert plotted["Prediction drift"] == {"predictions drifted (1) or not (0)": [0.0]}
    assert len(plotted["Drift share over time"]["all columns (Evidently)"]) == 1


def test_the_check_time_is_the_newest_row_in_utc_else_the_window_end() -> None:
    record = {"window": {"end": "2026-11-29T09:00:00+01:00"}}
    assert check_time(record, None) == datetime(2026, 11, 29, 8)
    assert check_time(record, pd.Series(["not a time"])) == datetime(2026, 11, 29, 8)
    assert check_time(record, pd.Series([0.25, 0.5])) == datetime(2026, 11, 29, 8)
    times = pd.Series(["2012-05-01T10:00:00+02:00", "2012-05-02T01:00:00+02:00"])
    assert check_time(record, times) == datetime(2012, 5, 1, 23)


def test_a_figure_the_check_lacks_is_left_out_not_zero() -> None:
    record = check_record(
        drift=False,
        share=0.0,
        drifted=[],
        counted=["a"],
        metric="rmse",
        measured=None,
        estimated=float("nan"),
    )
    figures = decision_figures(record, 0.5)
    assert ESTIMATED not in figures and MEASURED not in figures
    assert figures[WEIGHTED_SHARE] == 0.0
