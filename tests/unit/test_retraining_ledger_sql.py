"""Where the retraining ledger lives (a file when the prediction log is a parquet folder,
a table when it is a SQL database), that hosts claiming at once start one retraining, and
how a database that refuses fails. The guards run on every store in
test_retraining_guards.py."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

# Light imports only: every process of the concurrency test imports this module.
from pipeline.errors import ConfigError, DriftlineError, TransientError
from pipeline.retraining import (
    RetrainingLedger,
    RetrainingLedgerError,
    RetrainingLedgerUnavailable,
    SqlRetrainingLedger,
    open_ledger,
)
from tests.conftest import postgres_schema

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
HOSTS = 4
# Long enough for every host to read before any writes, were claims not serialised.
SLOW_HOST_SECONDS = 0.2


@pytest.fixture(params=("sqlite", "postgresql"))
def sql_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQL prediction log's URL: a SQLite file, or PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
    else:
        with postgres_schema() as url:
            yield url


def claim_as_another_host(prediction_log: str, start: Any, answers: multiprocessing.Queue) -> None:
    """One worker's drift alert: a process, ledger and connection of its own, on a slow
    host: between reading the ledger and writing its decision, it dawdles."""
    ledger = SqlRetrainingLedger(prediction_log)
    read = ledger.entries

    def slow_read() -> list[dict[str, Any]]:
        entries = read()
        time.sleep(SLOW_HOST_SECONDS)
        return entries

    ledger.entries = slow_read  # type: ignore[method-assign]
    start.wait(timeout=60)
    try:
        claim = ledger.claim("w1", 1000, min_rows=500, cooldown=timedelta(hours=6), now=NOW)
        answers.put(claim.allowed)
    except Exception as exc:
        answers.put(f"{type(exc).__name__}: {exc}")


def test_alerts_on_different_hosts_start_one_retraining(sql_log: str, tmp_path: Path) -> None:
    """Processes stand for hosts: each claims the same window at the same moment, in a
    database where no ledger table exists yet."""
    context = multiprocessing.get_context("spawn")
    start, answers = context.Barrier(HOSTS), context.Queue()
    hosts = [
        context.Process(target=claim_as_another_host, args=(sql_log, start, answers))
        for _ in range(HOSTS)
    ]
    for host in hosts:
        host.start()
    try:
        allowed = [answers.get(timeout=120) for _ in hosts]
    finally:
        for host in hosts:
            host.join(timeout=10)
            if host.is_alive():
                host.kill()
    assert sorted(allowed, key=str) == [False] * (HOSTS - 1) + [True]
    entries = open_ledger(sql_log, tmp_path / "unused.jsonl").entries()
    assert sorted(entry["status"] for entry in entries) == ["refused"] * (HOSTS - 1) + ["started"]


@pytest.mark.parametrize("folder", ["data/production", "/srv/production", Path("production")])
def test_a_parquet_log_keeps_its_ledger_in_the_file(folder: str | Path, tmp_path: Path) -> None:
    file = tmp_path / "reports" / "retrainings.jsonl"
    ledger = open_ledger(folder, file)
    assert type(ledger) is RetrainingLedger and ledger.path == file
    ledger.claim("w1", 1000, min_rows=500, cooldown=timedelta(hours=6), now=NOW)
    assert [entry["status"] for entry in ledger.entries()] == ["started"]
    assert len(file.read_text().splitlines()) == 1


def test_a_sql_log_keeps_its_ledger_in_its_database(sql_log: str, tmp_path: Path) -> None:
    from pipeline.prediction_log import read_table

    file = tmp_path / "reports" / "retrainings.jsonl"
    ledger = open_ledger(sql_log, file)
    assert isinstance(ledger, SqlRetrainingLedger)
    assert ledger.entries() == []  # no table yet: reading creates none
    assert read_table(sql_log, "retrainings").empty
    ledger.claim("w1", 1000, min_rows=500, cooldown=timedelta(hours=6), run="r1", now=NOW)
    ledger.finish("w1", True, {"champion": "3"})
    assert not (tmp_path / "reports").exists()

    table = read_table(sql_log, "retrainings")
    assert list(table.columns) == ["id", "time", "fingerprint", "status", "entry"]
    assert table["status"].tolist() == ["started", "done"]
    assert table.loc[0, "time"] == NOW.isoformat() and set(table["fingerprint"]) == {"w1"}
    assert ledger.entries()[0] == {
        "time": NOW.isoformat(),
        "fingerprint": "w1",
        "status": "started",
        "reason": "window w1 drifted: retraining",
        "rows": 1000,
        "run": "r1",
    }
    assert ledger.entries()[1]["champion"] == "3"
    # The next flow run, on another worker in a fresh checkout, reads the same ledger.
    elsewhere = open_ledger(sql_log, tmp_path / "checkout2" / "retrainings.jsonl")
    assert elsewhere.entries() == ledger.entries()


@pytest.mark.parametrize(
    ("log", "error", "shown"),
    [
        (
            "postgresql://driftline:hunter2@127.0.0.1:1/none",
            RetrainingLedgerUnavailable,
            "database postgresql://driftline:***@127.0.0.1:1/none is unavailable",
        ),
        (
            "sqlite:///{tmp}/no/such/folder/log.db",
            RetrainingLedgerError,
            "database sqlite:///{tmp}/no/such/folder/log.db refused: ",
        ),
        (
            "mysql://driftline:hunter2@db/driftline",
            ConfigError,
            "monitor.prediction_log: the retraining ledger lives in the prediction log's "
            "database and needs PostgreSQL or SQLite, not mysql",
        ),
    ],
    ids=["postgresql-down", "sqlite-no-folder", "mysql"],
)
def test_a_database_that_refuses_fails_in_one_line_naming_it(
    log: str, error: type[DriftlineError], shown: str, tmp_path: Path
) -> None:
    log, shown = log.format(tmp=tmp_path), shown.format(tmp=tmp_path)
    with pytest.raises(error) as raised:
        ledger = open_ledger(log, tmp_path / "retrainings.jsonl")
        ledger.claim("w1", 1000, min_rows=500, cooldown=timedelta(hours=6), now=NOW)
    message = str(raised.value)
    assert shown in message and "hunter2" not in message and "\n" not in message
    assert isinstance(raised.value, TransientError) == (error is RetrainingLedgerUnavailable)


def test_a_claim_waits_for_another_then_says_the_database_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim waits for the lock another claim holds; past the wait it is worth a retry."""
    monkeypatch.setattr("pipeline.retraining.LOCK_WAIT", timedelta(seconds=0.3))
    database = tmp_path / "log.db"
    ledger = open_ledger(f"sqlite:///{database}", tmp_path / "retrainings.jsonl")
    assert ledger.claim("w1", 10, min_rows=500, cooldown=timedelta(hours=6), now=NOW).reason
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(RetrainingLedgerUnavailable, match="database is locked"):
            ledger.claim("w1", 1000, min_rows=500, cooldown=timedelta(hours=6), now=NOW)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ledger.claim("w1", 1000, min_rows=500, cooldown=timedelta(hours=6), now=NOW).allowed
