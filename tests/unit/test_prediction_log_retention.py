"""Retention of the prediction log (`monitor.prediction_log_retention_days`): what is
older than the cutoff goes, predictions and the labels stored beside them, in every
kind of store; what is newer stays as it was."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import parse_params
from pipeline.errors import ConfigError
from pipeline.label_store import expire_log, read_stored_labels, store_labels
from pipeline.prediction_log import PredictionLog, read_predictions
from tests.conftest import postgres_schema

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
# Logged at these times; with 3 days kept the cutoff is 2026-03-07 12:00.
TIMES = {
    "old": datetime(2026, 3, 5, 10, 0, tzinfo=UTC),
    "older-same-day": datetime(2026, 3, 6, 23, 59, tzinfo=UTC),
    "boundary-before": datetime(2026, 3, 7, 9, 0, tzinfo=UTC),  # its day straddles the cutoff
    "boundary-after": datetime(2026, 3, 7, 15, 0, tzinfo=UTC),
    "new": datetime(2026, 3, 9, 8, 0, tzinfo=UTC),
}


def row(request_id: str, when: datetime) -> dict:
    return {
        "request_id": request_id,
        "timestamp": when,
        "model_version": "1",
        "inputs": {"x": 1.0, "colour": "red"},
        "prediction": 2.5,
    }


@contextmanager
def parquet_log(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "log")


@contextmanager
def sqlite_log(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'production.db'}"


STORES = {"parquet": parquet_log, "sqlite": sqlite_log, "postgresql": lambda _: postgres_schema()}


def open_log(location: str, **options: object) -> PredictionLog:
    if "://" in location:
        return PredictionLog.sql(location, flush_seconds=60, **options)
    return PredictionLog.parquet(Path(location), flush_seconds=60, **options)


def fill(location: str, tmp_path: Path) -> None:
    """A prediction at each of TIMES, and a label for each sent at the same time."""
    with open_log(location) as log:
        log.append([row(name, when) for name, when in TIMES.items()])
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "id": list(TIMES),
            "label": range(len(TIMES)),
            "time": [when.isoformat() for when in TIMES.values()],
        }
    ).to_csv(labels, index=False)
    assert store_labels(labels, location).matched == len(TIMES)


@pytest.mark.parametrize("kind", STORES)
def test_retention_deletes_old_predictions_and_labels(kind: str, tmp_path: Path) -> None:
    with STORES[kind](tmp_path) as location:
        fill(location, tmp_path)
        expired = expire_log(location, days=3, now=NOW)
        kept = sorted(read_predictions(location)["request_id"])
        labels = read_stored_labels(location)
    assert sorted(labels["id"]) == ["boundary-after", "new"]
    assert expired.labels == 3
    if kind == "parquet":
        # Whole days only: 2026-03-07 holds a row newer than the cutoff, so it stays.
        assert kept == ["boundary-after", "boundary-before", "new"]
        assert expired.predictions == 2
        days = sorted(path.name for path in (tmp_path / "log").glob("date=*"))
        assert days == ["date=2026-03-07", "date=2026-03-09"]
        assert not list((tmp_path / "log").glob(".expired-*"))
    else:
        assert kept == ["boundary-after", "new"]
        assert expired.predictions == 3


@pytest.mark.parametrize("kind", ["parquet", "sqlite"])
def test_retention_with_nothing_old_changes_nothing(kind: str, tmp_path: Path) -> None:
    with STORES[kind](tmp_path) as location:
        fill(location, tmp_path)
        expired = expire_log(location, days=30, now=NOW)
        assert (expired.predictions, expired.labels) == (0, 0)
        assert len(read_predictions(location)) == len(TIMES)
        assert len(read_stored_labels(location)) == len(TIMES)


@pytest.mark.parametrize("kind", ["parquet", "sqlite"])
def test_retention_on_a_log_not_written_yet_is_a_no_op(kind: str, tmp_path: Path) -> None:
    with STORES[kind](tmp_path) as location:
        expired = expire_log(location, days=1, now=NOW)
    assert (expired.predictions, expired.labels) == (0, 0)
    assert list(tmp_path.iterdir()) == []  # nor is the store created by it


def test_a_log_with_retention_expires_after_a_flush_at_most_every_interval(
    tmp_path: Path,
) -> None:
    calls: list[str] = []
    log = PredictionLog.parquet(
        tmp_path / "log",
        start=False,
        expire=lambda: calls.append("expired"),
        expire_seconds=3600,
    )
    assert log.flush() == 0 and calls == []  # nothing written: nothing to expire
    log.append([row("a", NOW)])
    assert log.flush() == 1 and calls == ["expired"]
    log.append([row("b", NOW)])
    assert log.flush() == 1 and calls == ["expired"]  # within the hour: not again
    log.expire_seconds = 0
    log.append([row("c", NOW)])
    assert log.flush() == 1 and calls == ["expired", "expired"]


def test_the_flusher_deletes_what_the_retention_days_expire(tmp_path: Path) -> None:
    """As `driftline serve` wires it: expire_log with the days, run by the log."""
    root = tmp_path / "log"
    old, new = datetime.now(UTC) - timedelta(days=10), datetime.now(UTC)
    with PredictionLog.parquet(root, flush_seconds=60) as log:
        log.append([row("old", old)])
    with PredictionLog.parquet(root, flush_seconds=60, expire=lambda: expire_log(root, 3)) as log:
        log.append([row("new", new)])
    assert list(read_predictions(root)["request_id"]) == ["new"]


def test_a_failing_retention_is_logged_and_the_rows_are_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise OSError("read-only file system")

    log = PredictionLog.parquet(tmp_path / "log", start=False, expire=broken)
    log.append([row("a", NOW)])
    with caplog.at_level(logging.WARNING, logger="pipeline.prediction_log"):
        assert log.flush() == 1
    assert "could not delete expired rows: read-only file system" in caplog.text
    assert list(read_predictions(tmp_path / "log")["request_id"]) == ["a"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "monitor.prediction_log_retention_days: Input should be greater than or equal to 1"),
        ("soon", "monitor.prediction_log_retention_days: Input should be a valid integer"),
    ],
)
def test_a_bad_retention_fails_at_load_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params({"data": {"target": "y"}, "monitor": {"prediction_log_retention_days": value}})


def test_retention_is_off_by_default() -> None:
    assert parse_params({"data": {"target": "y"}}).monitor.prediction_log_retention_days is None
