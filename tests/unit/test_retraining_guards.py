"""The guards on drift-triggered retraining: window size, duplicates, one at a time,
cooldown, on every store the ledger lives in (a JSON-lines file when the prediction log
is a parquet folder, the `retrainings` table of a SQLite or PostgreSQL log's database);
and a labelled production window becoming a landing batch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.monitoring import Window, production_batch
from pipeline.retraining import Claim, RetrainingLedger, open_ledger
from tests.conftest import postgres_schema

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
COOLDOWN = timedelta(hours=6)
STORES = ("file", "sqlite", "postgresql")


@pytest.fixture(params=STORES)
def prediction_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the prediction log is, one per ledger store: a parquet folder, a SQLite
    file, a PostgreSQL database."""
    if request.param == "file":
        yield str(tmp_path / "production")
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture
def ledger(prediction_log: str, tmp_path: Path) -> RetrainingLedger:
    return open_ledger(prediction_log, tmp_path / "reports" / "retrainings.jsonl")


def claim(ledger: RetrainingLedger, fingerprint: str, at: datetime, rows: int = 1000) -> Claim:
    return ledger.claim(fingerprint, rows, min_rows=500, cooldown=COOLDOWN, now=at)


def test_a_small_window_never_retrains(ledger: RetrainingLedger) -> None:
    assert ledger.entries() == []
    refused = claim(ledger, "w1", NOW, rows=499)
    assert not refused.allowed and "fewer than 500" in refused.reason
    assert ledger.entries()[-1]["status"] == "refused"


def test_ten_alerts_for_one_window_start_one_retraining(ledger: RetrainingLedger) -> None:
    results = []

    def alert() -> None:
        results.append(claim(ledger, "w1", NOW))

    threads = [threading.Thread(target=alert) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result.allowed for result in results) == 1
    # After it finished, a late duplicate is still refused.
    ledger.finish("w1", True, {"champion": "2"})
    late = claim(ledger, "w1", NOW + timedelta(days=2))
    assert not late.allowed and "duplicate alert" in late.reason


def test_one_at_a_time_then_a_cooldown(ledger: RetrainingLedger) -> None:
    assert claim(ledger, "w1", NOW).allowed
    running = claim(ledger, "w2", NOW + timedelta(minutes=5))
    assert not running.allowed and "still running" in running.reason
    ledger.finish("w1", True, {})
    cooling = claim(ledger, "w3", NOW + timedelta(hours=1))
    assert not cooling.allowed and cooling.reason.startswith("cooldown: the last retraining")
    assert cooling.guards == ("cooldown",)
    assert claim(ledger, "w2", NOW + timedelta(hours=7)).allowed


def test_a_repeated_alert_in_the_cooldown_is_refused_as_a_duplicate_first(
    ledger: RetrainingLedger,
) -> None:
    """Both guards apply: the refusal names both, the window's own (duplicate) first."""
    assert claim(ledger, "w1", NOW).allowed
    ledger.finish("w1", True, {})
    first = claim(ledger, "w2", NOW + timedelta(minutes=30))
    assert first.guards == ("cooldown",)
    again = claim(ledger, "w2", NOW + timedelta(minutes=40))
    assert not again.allowed and again.guards == ("duplicate", "cooldown")
    assert again.reason.startswith("duplicate: window w2 was alerted before (refused at ")
    assert "; cooldown: the last retraining started at" in again.reason
    # The ledger says it the same way, for the flow's state and `driftline simulate`.
    refused = ledger.entries()[-1]
    assert refused["status"] == "refused" and refused["guards"] == ["duplicate", "cooldown"]
    assert refused["reason"] == again.reason
    # The duplicate of a finished retraining, in the cooldown too.
    late = claim(ledger, "w1", NOW + timedelta(hours=1))
    assert late.guards == ("duplicate", "cooldown") and "a duplicate alert" in late.reason


def test_a_refusal_names_every_guard_that_applied_most_specific_first(
    ledger: RetrainingLedger,
) -> None:
    assert claim(ledger, "w1", NOW).allowed
    assert claim(ledger, "w2", NOW + timedelta(minutes=1), rows=10).guards == (
        "too few rows",
        "running",
        "cooldown",
    )
    everything = claim(ledger, "w2", NOW + timedelta(minutes=2), rows=10)
    assert everything.guards == ("duplicate", "too few rows", "running", "cooldown")
    assert [part.split(":")[0] for part in everything.reason.split("; ")] == [
        "duplicate",
        "too few rows",
        "running",
        "cooldown",
    ]
    # The running retraining is w1's own: a duplicate, not another one running.
    assert claim(ledger, "w1", NOW + timedelta(minutes=3)).guards == ("duplicate", "cooldown")


def test_a_failed_retraining_may_be_tried_again_after_the_cooldown(
    ledger: RetrainingLedger,
) -> None:
    assert claim(ledger, "w1", NOW).allowed
    ledger.finish("w1", False, {"error": "tune failed"})
    soon = claim(ledger, "w1", NOW + timedelta(minutes=1))
    assert not soon.allowed and soon.guards == ("duplicate", "cooldown")
    # A repeated alert for a failed window refuses nothing by itself: retried when cool.
    again = claim(ledger, "w1", NOW + timedelta(hours=7))
    assert again.allowed and again.guards == ()
    assert again.reason.startswith("window w1 drifted: retraining (its last alert: refused at")


def window_of(frame: pd.DataFrame) -> Window:
    return Window(frame=frame, start=NOW - timedelta(days=7), end=NOW)


def test_labelled_traffic_becomes_a_landing_batch_shaped_like_the_source() -> None:
    source = pd.DataFrame(
        {
            "instant": pd.Series([1], dtype="int64"),
            "dteday": ["2011-01-01"],
            "season": pd.Series([1], dtype="int64"),
            "temp": [0.2],
            "casual": pd.Series([3], dtype="int64"),
            "cnt": pd.Series([16], dtype="int64"),
        }
    )
    logged = pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "context.instant": ["17380", "17381", "17382"],
            "context.dteday": ["2012-06-01", "2012-06-01", "2012-06-02"],
            "season": ["2", "2", None],
            "temp": [0.5, None, 0.7],
            "label": [120, None, 80],
        }
    )
    batch = production_batch(window_of(logged), source, "cnt", ["instant", "dteday"])
    assert list(batch.columns) == list(source.columns)
    assert batch["instant"].tolist() == [17380, 17382] and batch["instant"].dtype == "int64"
    assert batch["dteday"].tolist() == ["2012-06-01", "2012-06-02"]
    assert batch["season"].iloc[0] == 2 and pd.isna(batch["season"].iloc[1])
    assert batch["cnt"].tolist() == [120, 80] and batch["casual"].isna().all()


def test_traffic_without_its_key_cannot_become_training_data() -> None:
    source = pd.DataFrame({"instant": [1], "dteday": ["2011-01-01"], "cnt": [16]})
    logged = pd.DataFrame({"request_id": ["a"], "label": [5], "context.dteday": ["2012-01-01"]})
    with pytest.raises(DataError, match="have no 'instant': send it with each request"):
        production_batch(window_of(logged), source, "cnt", ["instant", "dteday"])
