"""The names the flows' end states carry in the Prefect UI, and the tables they publish,
from the summaries the flows return: no server, no flow run."""

from __future__ import annotations

from typing import Any

import pytest

from flows.artifacts import (
    drift_rows,
    monitoring_outcome,
    retraining_outcome,
    short_reason,
    stage_rows,
    training_outcome,
    training_state,
)


@pytest.mark.parametrize(
    ("summary", "name"),
    [
        ({"ran": ["deploy"], "deploy": {"action": "promote", "version": "3"}}, "Promoted v3"),
        ({"ran": ["deploy"], "deploy": {"action": "keep", "version": "2"}}, "Kept v2"),
        ({"ran": ["deploy"], "deploy": {"action": "challenger", "version": "4"}}, "Challenger v4"),
        (
            {
                "ran": ["deploy"],
                "deploy": {"action": "refuse", "reason": "gate refused: fails the floor: r2 0.6"},
            },
            "Refused: fails the floor",
        ),
        ({"ran": [], "skipped": ["train"], "deploy": None}, "Nothing to do"),
        ({"ran": ["check"], "deploy": None}, "Ran 1 stage"),
        ({"ran": ["prepare", "flaky"], "deploy": None}, "Ran 2 stages"),
    ],
)
def test_a_training_run_is_named_for_its_outcome(summary: dict[str, Any], name: str) -> None:
    assert training_outcome(summary) == name


@pytest.mark.parametrize(
    ("reason", "short"),
    [
        (
            "gate refused: does not beat the champion by enough: rmse 92 vs champion v2 92.4",
            "does not beat the champion by enough",
        ),
        (
            "the gate compared with v1 but the champion is now v2: re-run evaluate",
            "the gate compared with v1 but the champion is now v2",
        ),
        (
            "gate refused: the champion v1 cannot score the current test rows (no 'hr')",
            "the champion v1 cannot score the current test rows",
        ),
        ("x" * 80, "x" * 59 + "…"),
        (None, "no reason given"),
    ],
)
def test_a_refusal_is_named_by_the_head_of_its_reason(reason: str | None, short: str) -> None:
    assert short_reason(reason) == short


@pytest.mark.parametrize(
    ("record", "name"),
    [
        (
            {"drift": False, "drift_share": None, "reasons": ["the window holds 40 rows"]},
            "Too few rows",
        ),
        ({"drift": True, "columns": [{"column": "hr", "drifted": True}]}, "Drift detected"),
        ({"drift": False, "columns": [{"column": "hr", "drifted": False}]}, "No drift"),
    ],
)
def test_a_monitoring_run_is_named_for_its_decision(record: dict[str, Any], name: str) -> None:
    assert monitoring_outcome(record) == name


@pytest.mark.parametrize(
    ("result", "name"),
    [
        (
            {"fingerprint": "w1", "retrained": False, "guards": ["duplicate", "cooldown"]},
            "Retraining refused: duplicate",
        ),
        (
            {"fingerprint": "w1", "retrained": False, "guards": ["cooldown"]},
            "Retraining refused: cooldown",
        ),
        (
            {"fingerprint": "w1", "retrained": False, "guards": ["running"]},
            "Retraining refused: running",
        ),
        (
            {
                "fingerprint": "w1",
                "retrained": True,
                "training": {"deploy": {"action": "promote", "version": "3"}},
            },
            "Retrained: Promoted v3",
        ),
        ({"retrained": True, "training": {"ran": [], "deploy": None}}, "Nothing to do"),
    ],
)
def test_a_retraining_run_is_named_for_the_guards_decision(
    result: dict[str, Any], name: str
) -> None:
    assert retraining_outcome(result) == name


def test_the_end_state_is_completed_and_carries_the_summary() -> None:
    summary = {"ran": [], "skipped": ["train"], "deploy": None, "gate": None}
    state = training_state(summary)
    assert state.is_completed() and state.name == "Nothing to do"
    assert state.message == "0 ran, 1 skipped" and state.data is summary


def test_the_stage_table_says_what_failed_and_what_did_not_run() -> None:
    summary = {
        "stages": [{"stage": "check", "status": "skipped", "reason": "unchanged", "seconds": 0.1}],
        "failed": ["train"],
        "not_run": ["deploy"],
    }
    assert stage_rows(summary, "stage 'train' failed: exited with 1") == [
        {"stage": "check", "status": "skipped", "reason": "unchanged", "seconds": 0.1},
        {
            "stage": "train",
            "status": "failed",
            "reason": "stage 'train' failed: exited with 1",
            "seconds": None,
        },
        {
            "stage": "deploy",
            "status": "not run",
            "reason": "a stage before it failed",
            "seconds": None,
        },
    ]


def test_the_drift_table_keeps_every_figure_of_a_column_and_adds_the_predictions() -> None:
    record = {
        "columns": [
            {
                "weight": 0.25,
                "column": "temp",
                "drifted": True,
                "method": "wasserstein",
                "statistic": 0.123456789,
                "threshold": 0.1,
                "kind": "numeric",
                "role": "feature",
                "bins": [1, 2, 3],  # not a figure: left out
            }
        ],
        "prediction": {
            "column": "prediction",
            "method": "psi",
            "statistic": 0.3,
            "threshold": 0.1,
            "drifted": True,
        },
    }
    assert drift_rows(record) == [
        {
            "column": "temp",
            "kind": "numeric",
            "method": "wasserstein",
            "statistic": 0.12346,
            "threshold": 0.1,
            "drifted": True,
            "weight": 0.25,
            "role": "feature",
        },
        {
            "column": "prediction",
            "kind": None,
            "method": "psi",
            "statistic": 0.3,
            "threshold": 0.1,
            "drifted": True,
            "role": "prediction",
        },
    ]
