"""`driftline simulate`'s pieces that need no running stack: what it replays, and the
lines it prints when it cannot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.config import load_params
from pipeline.errors import DataError
from pipeline.simulate import held_out_days, records
from pipeline.stack import StackError
from tests.conftest import REPO


def test_without_a_hold_out_there_is_nothing_to_replay() -> None:
    params = load_params(REPO / "params.yaml")
    params = params.model_copy(update={"data": params.data.model_copy(update={"until": None})})
    with pytest.raises(DataError, match=r"data\.until is not set, so no rows were held out"):
        held_out_days(params, weeks=1)


def test_the_bike_data_holds_most_of_2012_out_to_replay() -> None:
    until = load_params(REPO / "params.yaml").data.until
    assert until is not None and until.isoformat() == "2012-03-31"


def test_records_carry_features_key_time_and_an_id() -> None:
    day = pd.DataFrame(
        {"instant": [7], "dteday": ["2012-11-01"], "temp": [float("nan")], "season": [4]}
    )
    [record] = records(day, ["temp", "season"], ["instant", "dteday"], "instant")
    assert record == {
        "temp": None,
        "season": 4,
        "instant": 7,
        "dteday": "2012-11-01",
        "id": "sim-7",
    }


def test_simulate_needs_the_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.simulate import simulate

    monkeypatch.chdir(tmp_path)
    params = load_params(REPO / "params.yaml")
    with pytest.raises(StackError, match="start it with `driftline up`"):
        simulate(
            tmp_path,
            params,
            weeks=1,
            check_days=7,
            label_delay_days=1,
            day_seconds=0,
            report=print,
        )


def test_a_retraining_reads_as_one_line() -> None:
    from pipeline.simulate import retraining_line

    done = {
        "status": "done",
        "action": "promote",
        "reason": "beats the champion: rmse 86.4 vs champion v1 92.4 (+6.52%, needs +1.00%)",
        "champion": "2",
    }
    assert retraining_line(done) == (
        "retraining: done: promote: beats the champion: rmse 86.4 vs champion v1 92.4 "
        "(+6.52%, needs +1.00%); champion v2"
    )
    refused = {"status": "refused", "reason": "cooldown: the last retraining started at t"}
    assert (
        retraining_line(refused)
        == "retraining: refused: cooldown: the last retraining started at t"
    )
    failed = {"status": "failed", "error": "validate: 2 critical expectation(s) failed"}
    assert (
        retraining_line(failed) == "retraining: failed: validate: 2 critical expectation(s) failed"
    )


class GrowingLedger:
    """A ledger whose retraining starts on the second read and ends on the fourth."""

    def __init__(self, started_after: datetime) -> None:
        self.reads = 0
        self.time = (started_after + timedelta(seconds=5)).isoformat()

    def entries(self) -> list[dict[str, Any]]:
        self.reads += 1
        before = {"time": "2020-01-01T00:00:00+00:00", "status": "done", "run": "old"}
        started = {"time": self.time, "status": "started", "run": "run-1"}
        done = {"time": self.time, "status": "done", "action": "keep", "run": None}
        return [
            before,
            *([started] if self.reads >= 2 else []),
            *([done] if self.reads >= 4 else []),
        ]


def test_the_wait_for_a_retraining_says_which_run_and_where_it_is() -> None:
    from pipeline.simulate import RetrainingProgress, wait_for_retraining

    alert = datetime(2026, 6, 1, 12, tzinfo=UTC)
    asked: list[str | None] = []

    def progress(started_after: datetime, run_id: str | None) -> RetrainingProgress:
        assert started_after == alert
        asked.append(run_id)
        if run_id is None:
            return RetrainingProgress()
        return RetrainingProgress("retraining-drift", "Running", "tune")

    lines: list[str] = []
    ledger = GrowingLedger(alert)
    entry = wait_for_retraining(
        alert,
        ledger,
        lines.append,
        every=0,
        poll=0,
        progress=progress,
    )

    assert entry["status"] == "done" and entry["action"] == "keep"
    # Before the guards decide, the run is looked for by time; then the ledger names it.
    assert asked == [None, "run-1", "run-1"]
    assert lines[0].startswith("waiting for the retraining (0m00s): no retraining flow run yet")
    assert (
        lines[1]
        == "waiting for the retraining (0m00s): flow run retraining-drift is Running, at tune"
    )


def test_a_busy_prefect_api_does_not_end_the_wait() -> None:
    from pipeline.simulate import RetrainingProgress, wait_for_retraining

    def progress(started_after: datetime, run_id: str | None) -> RetrainingProgress:
        raise TimeoutError("the API did not answer")

    lines: list[str] = []
    alert = datetime(2026, 6, 1, 12, tzinfo=UTC)
    entry = wait_for_retraining(
        alert, GrowingLedger(alert), lines.append, every=0, poll=0, progress=progress
    )
    assert entry["status"] == "done"
    assert (
        lines[0] == "waiting for the retraining: its progress is unknown (the API did not answer)"
    )


@pytest.mark.parametrize(
    ("progress", "seconds", "line"),
    [
        (
            ("retraining-drift", "Pending", None),
            31.5,
            "waiting for the retraining (0m31s): flow run retraining-drift is Pending",
        ),
        (
            ("retraining-drift", "Running", "tune"),
            605,
            "waiting for the retraining (10m05s): flow run retraining-drift is Running, at tune",
        ),
    ],
)
def test_a_progress_line(progress: tuple[Any, ...], seconds: float, line: str) -> None:
    from pipeline.simulate import RetrainingProgress, progress_line

    assert progress_line(RetrainingProgress(*progress), seconds) == line


def test_the_summary_ends_with_a_link_to_each_page(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.simulate import Outcome, UiPages, summary_lines

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # params.yaml's store
    params = load_params(REPO / "params.yaml")
    pages = UiPages(
        monitoring_run="run-1",
        experiments={"driftline": "1", "driftline-monitoring": "2"},
        evidently_project="project-1",
    )
    outcome = Outcome(retrainings=[{"status": "done", "run": "run-2"}], pages=pages)
    lines = summary_lines(outcome, "http://127.0.0.1:4200", params)
    assert lines[-9:] == [
        "Prefect UI, the flow runs: http://127.0.0.1:4200/runs",
        "  the last check (its Artifacts tab): http://127.0.0.1:4200/runs/flow-run/run-1",
        "  the last retraining (its Artifacts tab): http://127.0.0.1:4200/runs/flow-run/run-2",
        "MLflow UI (mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000):",
        "  the checks, one run each (experiment driftline-monitoring): "
        "http://127.0.0.1:5000/#/experiments/2/runs",
        "  the training runs (experiment driftline): http://127.0.0.1:5000/#/experiments/1/runs",
        "  the model's versions and aliases: http://127.0.0.1:5000/#/models/driftline",
        "Evidently UI (evidently ui --workspace evidently --port 8001):",
        "  the dashboard of the checks: http://127.0.0.1:8001/projects/project-1",
    ]


def test_without_ids_the_links_open_each_ui_and_a_server_is_its_own_ui(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.simulate import Outcome, summary_lines

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:secret@mlflow.example:8443/")
    params = load_params(REPO / "params.yaml")
    text = "\n".join(summary_lines(Outcome(), "http://127.0.0.1:4200", params))
    assert "(experiment driftline): https://mlflow.example:8443/#/experiments\n" in text
    assert "the dashboard of the checks: http://127.0.0.1:8001\n" not in text
    assert text.endswith("the dashboard of the checks: http://127.0.0.1:8001")
    assert "flow-run" not in text and "secret" not in text
