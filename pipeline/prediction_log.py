"""The prediction log: what the served model was asked and what it answered.

Serving hands rows to `PredictionLog.append`, which only buffers them in memory; a
background thread writes them out every `flush_seconds`, or sooner when `max_buffer`
rows are waiting, so a request never waits on a disk or a database. Two stores:

- parquet files partitioned by day, `<root>/date=YYYY-MM-DD/part-<time>-<uuid>.parquet`,
  each written to a temporary name and renamed, so a reader never sees half a file;
- a SQL table through SQLAlchemy (`PredictionLog.sql(url, table)`).

A row holds `request_id`, `timestamp` (UTC), `model_version`, `prediction` (as text),
`prediction_value` (the prediction as a float when it is a number), `probabilities`
(JSON text, classification only) and one `feature.<name>` column per model input.
`read_predictions` reads either store back; `join_labels` joins labels that arrive
later, by request id.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import DataError, SourceError

logger = logging.getLogger(__name__)

FEATURE_PREFIX = "feature."
CONTEXT_PREFIX = "context."  # key and time columns sent along, as text
BASE_COLUMNS = (
    "request_id",
    "timestamp",
    "model_version",
    "prediction",
    "prediction_value",
    "probabilities",
)
DEFAULT_TABLE = "predictions"
# A store that keeps failing holds at most this many buffers' worth of rows for retries.
RETRY_BUFFERS = 10

Writer = Callable[[pd.DataFrame], None]


def log_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as serving hands them over (`request_id`, `timestamp`, `model_version`,
    `inputs`, `prediction`, `probabilities`) to the stored columns."""
    records = []
    for row in rows:
        prediction = row["prediction"]
        probabilities = row.get("probabilities")
        record: dict[str, Any] = {
            "request_id": str(row["request_id"]),
            "timestamp": row["timestamp"],
            "model_version": str(row["model_version"]),
            "prediction": None if prediction is None else str(prediction),
            "prediction_value": _as_float(prediction),
            "probabilities": None if probabilities is None else json.dumps(probabilities),
        }
        for name, value in row.get("inputs", {}).items():
            record[FEATURE_PREFIX + name] = value
        for name, value in (row.get("context") or {}).items():
            record[CONTEXT_PREFIX + name] = None if value is None else str(value)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["prediction_value"] = frame["prediction_value"].astype("float64")
    return frame


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def parquet_writer(root: Path) -> Writer:
    """Write a frame as one parquet file per UTC day under `root`."""
    root = Path(root)

    def write(frame: pd.DataFrame) -> None:
        days = frame["timestamp"].dt.strftime("%Y-%m-%d")
        for day, part in frame.groupby(days, sort=True):
            folder = root / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            name = f"part-{stamp}-{uuid.uuid4().hex}.parquet"
            temporary = folder / f".{name}.tmp"
            part.reset_index(drop=True).to_parquet(temporary, index=False)
            os.replace(temporary, folder / name)

    return write


def sql_writer(url: str, table: str = DEFAULT_TABLE) -> Writer:
    """Append a frame to a SQL table (created on first write)."""
    from sqlalchemy import create_engine

    engine = create_engine(url)

    def write(frame: pd.DataFrame) -> None:
        frame.to_sql(table, engine, if_exists="append", index=False)

    return write


class PredictionLog:
    """A thread-safe in-memory buffer of prediction rows, flushed by a background thread."""

    def __init__(
        self,
        writer: Writer,
        *,
        flush_seconds: float = 2.0,
        max_buffer: int = 1000,
        start: bool = True,
    ) -> None:
        if flush_seconds <= 0 or max_buffer < 1:
            raise ValueError("flush_seconds must be > 0 and max_buffer >= 1")
        self.writer = writer
        self.flush_seconds = flush_seconds
        self.max_buffer = max_buffer
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(
                target=self._run, name="prediction-log-flusher", daemon=True
            )
            self._thread.start()

    @classmethod
    def parquet(cls, root: Path, **options: Any) -> PredictionLog:
        return cls(parquet_writer(root), **options)

    @classmethod
    def sql(cls, url: str, table: str = DEFAULT_TABLE, **options: Any) -> PredictionLog:
        return cls(sql_writer(url, table), **options)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Buffer rows; never touches the store."""
        if self._closed.is_set():
            raise RuntimeError("the prediction log is closed")
        with self._lock:
            self._buffer.extend(rows)
            full = len(self._buffer) >= self.max_buffer
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Write every buffered row now; returns how many were written. On a store error
        the rows go back into the buffer (up to a bound) and the error is raised."""
        with self._write_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
            if not rows:
                return 0
            try:
                self.writer(log_frame(rows))
            except Exception:
                with self._lock:
                    kept = (rows + self._buffer)[-self.max_buffer * RETRY_BUFFERS :]
                    self._buffer = kept
                raise
            return len(rows)

    def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._closed.is_set():
                return  # close() writes the rest
            try:
                self.flush()
            except Exception as exc:  # the store is down: keep serving, retry later
                logger.warning("prediction log: could not write rows (will retry): %s", exc)


def is_sql_url(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location


def read_predictions(
    location: str | Path, since: datetime | None = None, table: str = DEFAULT_TABLE
) -> pd.DataFrame:
    """Every logged prediction at `location` (a parquet root or a SQLAlchemy URL),
    optionally only those at or after `since`, oldest first."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    if is_sql_url(location):
        frame = read_table(str(location), table)
    else:
        frame = _read_parquet(Path(location), since)
    if frame.empty:
        return pd.DataFrame(columns=list(BASE_COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    if since is not None:
        frame = frame[frame["timestamp"] >= pd.Timestamp(since)]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _read_parquet(root: Path, since: datetime | None) -> pd.DataFrame:
    if not root.exists():
        raise SourceError(f"{root}: no prediction log here")
    first_day = since.astimezone(UTC).strftime("%Y-%m-%d") if since else None
    parts = []
    for folder in sorted(root.glob("date=*")):
        if first_day and folder.name.removeprefix("date=") < first_day:
            continue
        # Files are read one by one: columns differ between model versions.
        parts += [pd.read_parquet(path) for path in sorted(folder.glob("part-*.parquet"))]
    parts = [part for part in parts if not part.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def read_table(url: str, table: str) -> pd.DataFrame:
    """A whole table of the database at `url`; empty when there is no such table."""
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(table):
            return pd.DataFrame()
        return pd.read_sql_table(table, engine)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class LabelJoin:
    """Predictions with the label that arrived for them, and what did not match."""

    joined: pd.DataFrame  # predictions that have a label: + `label`, `label_time`
    unmatched_label_ids: list[str]  # label ids no logged prediction carries
    unlabelled: int  # predictions with no label yet


def join_labels(predictions: pd.DataFrame, labels: pd.DataFrame) -> LabelJoin:
    """Join late labels (columns `id`, `label`, `time`) onto predictions by request id,
    keeping the latest label per id."""
    missing = [column for column in ("id", "label", "time") if column not in labels.columns]
    if missing:
        raise DataError(f"the labels lack column(s) {', '.join(missing)} (need id, label, time)")
    latest = labels.assign(
        id=labels["id"].astype(str),
        time=pd.to_datetime(labels["time"], utc=True, format="mixed"),
    )
    latest = latest.sort_values("time", kind="stable").drop_duplicates("id", keep="last")
    latest = latest[["id", "label", "time"]].rename(
        columns={"id": "request_id", "time": "label_time"}
    )
    keyed = predictions.assign(request_id=predictions["request_id"].astype(str))
    joined = keyed.merge(latest, on="request_id", how="inner", validate="many_to_one")
    known = set(keyed["request_id"])
    unmatched = sorted(set(latest["request_id"]) - known)
    return LabelJoin(
        joined=joined.reset_index(drop=True),
        unmatched_label_ids=unmatched,
        unlabelled=int((~keyed["request_id"].isin(set(latest["request_id"]))).sum()),
    )
