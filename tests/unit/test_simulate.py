"""`driftline simulate`'s pieces that need no running stack: what it replays, and the
lines it prints when it cannot."""

from __future__ import annotations

from pathlib import Path

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
