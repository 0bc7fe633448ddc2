"""The prediction log: buffered rows reach day-partitioned parquet or a SQL table, read
back as they went in, and late labels join on the request id."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.prediction_log import PredictionLog, join_labels, read_predictions
from tests.conftest import postgres_schema, postgres_url

DAY = datetime(2026, 3, 1, 23, 50, 0, tzinfo=UTC)


def row(request_id: str, when: datetime, prediction: object = "yes", **inputs: object) -> dict:
    return {
        "request_id": request_id,
        "timestamp": when,
        "model_version": "3",
        "inputs": {"x": 1.5, "colour": "red", **inputs},
        "prediction": prediction,
        "probabilities": {"no": 0.25, "yes": 0.75},
    }


def test_rows_land_in_one_parquet_file_per_day(tmp_path: Path) -> None:
    with PredictionLog.parquet(tmp_path, flush_seconds=60) as log:
        log.append([row("a", DAY), row("b", DAY + timedelta(minutes=2), x=None)])
        log.append([row("c", DAY + timedelta(hours=1), prediction="no")])
        assert log.pending == 3
        assert log.flush() == 3
        assert log.pending == 0
    files = sorted(
        path.relative_to(tmp_path) for path in tmp_path.rglob("part-*") if path.is_file()
    )
    assert [str(path.parent) for path in files] == ["date=2026-03-01", "date=2026-03-02"]
    assert all(path.suffix == ".parquet" for path in files)
    # Beside them, one summary per hour of rows (pipeline/summaries.py), nothing else.
    others = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert [name for name in others if "/summary-" in name] == [
        name for name in others if "/part-" not in name
    ]
    assert len(others) == len(files) + 2
    logged = read_predictions(tmp_path)
    assert list(logged["request_id"]) == ["a", "b", "c"]
    assert list(logged["prediction"]) == ["yes", "yes", "no"]
    assert list(logged["model_version"]) == ["3", "3", "3"]
    assert logged.loc[0, "feature.x"] == 1.5 and pd.isna(logged.loc[1, "feature.x"])
    assert list(logged["feature.colour"]) == ["red"] * 3
    assert json.loads(logged.loc[0, "probabilities"]) == {"no": 0.25, "yes": 0.75}
    assert logged.loc[0, "timestamp"] == pd.Timestamp(DAY)
    later = read_predictions(tmp_path, since=DAY + timedelta(minutes=1))
    assert list(later["request_id"]) == ["b", "c"]


def test_numeric_predictions_keep_a_float_column(tmp_path: Path) -> None:
    with PredictionLog.parquet(tmp_path, flush_seconds=60) as log:
        log.append([row("a", DAY, prediction=12.5), row("b", DAY, prediction="yes")])
    logged = read_predictions(tmp_path)
    assert list(logged["prediction"]) == ["12.5", "yes"]
    assert logged.loc[0, "prediction_value"] == 12.5
    assert pd.isna(logged.loc[1, "prediction_value"])


def test_the_flusher_writes_on_time_and_when_the_buffer_fills(tmp_path: Path) -> None:
    timed = PredictionLog.parquet(tmp_path / "timed", flush_seconds=0.05)
    full = PredictionLog.parquet(tmp_path / "full", flush_seconds=60, max_buffer=2)
    try:
        timed.append([row("a", DAY)])
        full.append([row("a", DAY), row("b", DAY)])
        # Far above the 0.05 s it takes: a safety net for a busy machine.
        deadline = time.monotonic() + 60
        while timed.pending or full.pending or not _written(tmp_path, ("timed", "full")):
            assert time.monotonic() < deadline, "the flusher never wrote"
            time.sleep(0.02)
        assert len(read_predictions(tmp_path / "timed")) == 1
        assert len(read_predictions(tmp_path / "full")) == 2
    finally:
        timed.close()
        full.close()
    assert not list(tmp_path.rglob("*.tmp"))


def _written(root: Path, logs: tuple[str, ...]) -> bool:
    """Each log has a finished part file (a write ends with the rename)."""
    return all(any((root / log).rglob("*.parquet")) for log in logs)


def test_a_failing_store_keeps_the_rows_for_a_retry(tmp_path: Path) -> None:
    written: list[pd.DataFrame] = []
    broken = {"now": True}

    def writer(frame: pd.DataFrame) -> None:
        if broken["now"]:
            raise OSError("disk full")
        written.append(frame)

    log = PredictionLog(writer, start=False)
    log.append([row("a", DAY)])
    with pytest.raises(OSError, match="disk full"):
        log.flush()
    assert log.pending == 1
    broken["now"] = False
    assert log.flush() == 1
    assert list(written[0]["request_id"]) == ["a"]
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.append([row("b", DAY)])


def test_sqlite_table_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    assert read_predictions(url).empty
    with PredictionLog.sql(url, flush_seconds=60) as log:
        log.append([row("a", DAY), row("b", DAY + timedelta(days=1))])
    with PredictionLog.sql(url, flush_seconds=60) as log:
        log.append([row("c", DAY + timedelta(days=2), prediction="no")])
    logged = read_predictions(url)
    assert list(logged["request_id"]) == ["a", "b", "c"]
    assert list(logged["prediction"]) == ["yes", "yes", "no"]
    assert logged.loc[2, "timestamp"] == pd.Timestamp(DAY + timedelta(days=2))
    assert list(read_predictions(url, since=DAY + timedelta(hours=1))["request_id"]) == ["b", "c"]


def test_postgres_table_round_trip() -> None:
    import sqlalchemy

    url = postgres_url()
    table = f"predictions_{uuid.uuid4().hex[:8]}"
    try:
        with PredictionLog.sql(url, table, flush_seconds=60) as log:
            log.append([row("a", DAY), row("b", DAY + timedelta(days=1), prediction=3.0)])
        logged = read_predictions(url, table=table)
        assert list(logged["request_id"]) == ["a", "b"]
        assert logged.loc[1, "prediction_value"] == 3.0
        assert logged.loc[0, "timestamp"] == pd.Timestamp(DAY)
    finally:
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()


def labelled_window(url: str, tmp_path: Path) -> tuple[Any, Any]:
    """Two logged predictions in the SQL log at `url`, a label for one of them (and one
    for an id the log never held) through `store_labels`; what was stored and the window
    the monitor reads back."""
    from pipeline.label_store import store_labels
    from pipeline.monitoring import read_window

    with PredictionLog.sql(url, flush_seconds=60) as log:
        log.append([row("a", DAY, prediction=3.0), row("b", DAY, prediction=4.0)])
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"id": ["b", "zz"], "label": [4, 9], "time": DAY.isoformat()}).to_csv(
        labels, index=False
    )
    stored = store_labels(labels, url)
    return stored, read_window(url, 24, DAY + timedelta(hours=1))


def test_labels_for_a_sql_log_go_to_its_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    stored, window = labelled_window(url, tmp_path)
    assert (stored.received, stored.matched, stored.unmatched) == (2, 1, ["zz"])
    assert stored.path is not None and "(table labels)" in stored.path
    assert not any(tmp_path.rglob("*.parquet"))  # nothing beside the database
    assert window.rows == 2 and window.labelled == 1
    labelled = window.frame.set_index("request_id")["label"]
    assert labelled["b"] == "4" and pd.isna(labelled["a"])


def test_labels_for_a_postgres_log_go_to_its_database(tmp_path: Path) -> None:
    """In a schema of the test's own, so that its `predictions` and `labels` tables meet
    nobody else's."""
    with postgres_schema() as url:
        stored, window = labelled_window(url, tmp_path)
    assert stored.matched == 1 and window.labelled == 1


def test_late_labels_join_on_the_request_id() -> None:
    predictions = pd.DataFrame(
        {"request_id": ["a", "b", "c", "7"], "prediction": ["yes", "no", "yes", "no"]}
    )
    labels = pd.DataFrame(
        {
            "id": ["a", "a", "b", "zzz", 7],
            "label": ["no", "yes", "no", "yes", "no"],
            "time": [
                "2026-03-01T10:00Z",
                "2026-03-02T10:00Z",
                "2026-03-01",
                "2026-03-01",
                "2026-03-03",
            ],
        }
    )
    result = join_labels(predictions, labels)
    joined = result.joined.set_index("request_id")
    assert sorted(joined.index) == ["7", "a", "b"]
    assert joined.loc["a", "label"] == "yes"  # the later label wins
    assert joined.loc["b", "label"] == "no"
    assert result.unmatched_label_ids == ["zzz"]
    assert result.unlabelled == 1


def test_labels_without_the_needed_columns_are_refused() -> None:
    with pytest.raises(DataError, match="time"):
        join_labels(pd.DataFrame({"request_id": ["a"]}), pd.DataFrame({"id": ["a"], "label": [1]}))
