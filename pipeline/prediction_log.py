"""The prediction log: what the served model was asked and what it answered.

Serving hands rows to `PredictionLog.append`, which only buffers them in memory; a
background thread writes them out every `flush_seconds`, or sooner when `max_buffer`
rows are waiting, so a request never waits on a disk or a database. The flusher shares
the GIL with serving's event loop, so the parquet store builds an Arrow table straight
from the rows (`log_table`) instead of a pandas frame: 12 ms of CPU for 1,000 rows
instead of 40-55 ms, and the loop is held up that much less. Two stores:

- parquet files partitioned by day, `<root>/date=YYYY-MM-DD/part-<time>-<uuid>.parquet`,
  each written to a temporary name and renamed, so a reader never sees half a file;
- a SQL table through SQLAlchemy (`PredictionLog.sql(url, table)`).

A row holds `request_id`, `timestamp` (UTC), `model_version`, `prediction` (as text),
`prediction_value` (the prediction as a float when it is a number), `probabilities`
(JSON text, classification only), one `feature.<name>` column per model input (as
the model saw it, after clean's row rules), one `context.<name>` per key or time
column sent, and the values not scored as sent: `flags` (JSON text, {field: kind})
with the counts `out_of_range`, `unknown_categories` and `unparseable`. A SQL table
gains the columns a newer row brings. `read_predictions` reads either store back;
`join_labels` joins labels that arrive later, by request id. Files and folders the
log creates are owner-only unless `stores.private` is false (pipeline/stores.py).
`expire_predictions` deletes what is older than a cutoff
(`monitor.prediction_log_retention_days`): whole day folders, or rows; a log given an
`expire` call runs it after a flush, at most every `expire_seconds`.

Each write also stores per-hour summaries of the rows' features (pipeline/summaries.py:
exact counts or relative-error sketches that merge), beside the parts as
`summary-H<hour>-*.parquet` or in the `<table>_summaries` table, so that a drift check
merges a window's summaries instead of reading its rows. Retention deletes them too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.errors import DataError, SourceError
from pipeline.secrets import mask_url, redact
from pipeline.stores import create_file, create_folder, prepare_store, sqlite_file

if TYPE_CHECKING:
    import pyarrow as pa

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
# Per row, how many values were not scored as sent, by kind (pipeline.rows), and which.
FLAG_COUNTS = {
    "out_of_range": "out_of_range",
    "unknown_category": "unknown_categories",
    "unparseable": "unparseable",
}
DEFAULT_TABLE = "predictions"
# A store that keeps failing holds at most this many buffers' worth of rows for retries.
RETRY_BUFFERS = 10
# Retention runs after a flush at most this often: a DELETE on a large table, or a walk
# over the day folders, every two seconds would cost more than the rows it frees.
EXPIRE_SECONDS = 3600.0
DAY_PREFIX = "date="

Writer = Callable[[Any], None]  # takes what the log's `table` function builds


def log_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as serving hands them over (`request_id`, `timestamp`, `model_version`,
    `inputs`, `context`, `prediction`, `probabilities`, `flags`) to the stored columns."""
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
        # Values not scored as sent ({field: kind}, pipeline.rows), counted by kind.
        flags = row.get("flags") or {}
        record["flags"] = json.dumps(flags) if flags else None
        for kind, column in FLAG_COUNTS.items():
            record[column] = sum(1 for flagged in flags.values() if flagged == kind)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["prediction_value"] = frame["prediction_value"].astype("float64")
    return frame


def log_table(rows: list[dict[str, Any]]) -> pa.Table:
    """`log_frame`'s columns as an Arrow table, built without pandas: one list per
    column, then one Arrow array per list."""
    import pyarrow as pa

    predictions = [row["prediction"] for row in rows]
    probabilities = [row.get("probabilities") for row in rows]
    inputs = [row.get("inputs") or {} for row in rows]
    contexts = [row.get("context") or {} for row in rows]
    flags = [row.get("flags") or {} for row in rows]
    columns = {
        "request_id": pa.array([str(row["request_id"]) for row in rows], pa.string()),
        "timestamp": pa.array([row["timestamp"] for row in rows], pa.timestamp("ns", tz="UTC")),
        "model_version": pa.array([str(row["model_version"]) for row in rows], pa.string()),
        "prediction": pa.array([None if p is None else str(p) for p in predictions], pa.string()),
        "prediction_value": pa.array([_as_float(p) for p in predictions], pa.float64()),
        "probabilities": pa.array(
            [None if p is None else json.dumps(p) for p in probabilities], pa.string()
        ),
    }
    for name in _names(inputs):
        columns[FEATURE_PREFIX + name] = pa.array([values.get(name) for values in inputs])
    for name in _names(contexts):
        texts = [None if (v := values.get(name)) is None else str(v) for values in contexts]
        columns[CONTEXT_PREFIX + name] = pa.array(texts, pa.string())
    columns["flags"] = pa.array([json.dumps(f) if f else None for f in flags], pa.string())
    for kind, column in FLAG_COUNTS.items():
        counts = [sum(1 for flagged in f.values() if flagged == kind) for f in flags]
        columns[column] = pa.array(counts, pa.int64())
    return pa.table(columns)


def _names(mappings: list[dict[str, Any]]) -> list[str]:
    """Every key, in the order the mappings first name them (a row without one gets a
    gap); quick when all rows have the same keys, as one model version's rows do."""
    names = dict.fromkeys(mappings[0]) if mappings else {}
    for mapping in mappings:
        if mapping.keys() != names.keys():
            names.update(dict.fromkeys(mapping))
    return list(names)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def parquet_writer(root: Path, private: bool = True) -> Writer:
    """Write an Arrow table (`log_table`) as one parquet file per UTC day under `root`;
    folders and files it creates are owner-only when `private`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = Path(root)

    def write(table: pa.Table) -> None:
        days = pc.strftime(table["timestamp"], format="%Y-%m-%d")
        for day in sorted(pc.unique(days).to_pylist()):
            folder = create_folder(root / f"{DAY_PREFIX}{day}", private)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            name = f"part-{stamp}-{uuid.uuid4().hex}.parquet"
            temporary = create_file(folder / f".{name}.tmp", private)  # its mode, then bytes
            pq.write_table(table.filter(pc.equal(days, day)), temporary)
            os.replace(temporary, folder / name)
        _write_summaries(lambda summaries: _summary_files(root, summaries, private), table)

    return write


def _summary_files(root: Path, summaries: list[Any], private: bool) -> None:
    from pipeline.summaries import write_summary_file

    for summary in summaries:
        write_summary_file(root, summary, private)


def _write_summaries(store: Callable[[list[Any]], None], rows: Any) -> None:
    """Summarise the rows just written, per hour (pipeline/summaries.py), and store
    the summaries. A failure is logged, not raised: the rows are written (a retry would
    write them twice), and a check finds their hour's summaries short and reads rows."""
    from pipeline.summaries import summarise_frame, summarise_table

    try:
        if isinstance(rows, pd.DataFrame):
            summaries = summarise_frame(rows, FEATURE_PREFIX)
        else:
            summaries = summarise_table(rows, FEATURE_PREFIX)
        store(summaries)
    except Exception as exc:  # housekeeping for the monitor: serving goes on
        logger.warning("prediction log: could not write the rows' summaries: %s", exc)


def sql_writer(url: str, table: str = DEFAULT_TABLE, private: bool = True) -> Writer:
    """Append a frame to a SQL table (created on first write); a SQLite database that
    does not exist yet is created owner-only when `private`."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.summaries import write_summary_rows

    prepare_store(url, private)
    engine = create_engine(url)

    known: set[str] = set()  # the table's columns, as last read

    def write(frame: pd.DataFrame) -> None:
        try:
            if not set(frame.columns) <= known:
                known.update(_add_columns(engine, table, frame))
            frame.to_sql(table, engine, if_exists="append", index=False)
        except SQLAlchemyError as exc:  # one line: no statement, no rows, no password
            raise SourceError(f"cannot write to {mask_url(url)}: {_reason(exc, url)}") from None
        _write_summaries(lambda summaries: write_summary_rows(engine, table, summaries), frame)

    return write


def _add_columns(engine: Any, table: str, frame: pd.DataFrame) -> set[str]:
    """Add to an existing table the columns `frame` has and it lacks (a model version
    with a new feature, a log written before a column existed); the table's columns."""
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    if not inspector.has_table(table):
        return set()  # to_sql creates it with the frame's columns
    existing = {column["name"] for column in inspector.get_columns(table)}
    missing = [column for column in frame.columns if column not in existing]
    if missing:
        preparer = engine.dialect.identifier_preparer
        with engine.begin() as connection:
            for column in missing:
                kind = _sql_type(frame[column])
                connection.execute(
                    text(
                        f"ALTER TABLE {preparer.quote(table)} "
                        f"ADD COLUMN {preparer.quote(column)} {kind}"
                    )
                )
    return existing | set(missing)


def _sql_type(values: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(values):
        return "BOOLEAN"
    if pd.api.types.is_integer_dtype(values):
        return "BIGINT"
    if pd.api.types.is_float_dtype(values):
        return "FLOAT"
    if pd.api.types.is_datetime64_any_dtype(values):
        return "TIMESTAMP"
    return "TEXT"


class PredictionLog:
    """A thread-safe in-memory buffer of prediction rows, flushed by a background thread.

    `table` turns the buffered rows into what `writer` takes: a pandas frame
    (`log_frame`) by default, an Arrow table (`log_table`) for the parquet store."""

    def __init__(
        self,
        writer: Writer,
        *,
        flush_seconds: float = 2.0,
        max_buffer: int = 1000,
        start: bool = True,
        expire: Callable[[], object] | None = None,
        expire_seconds: float = EXPIRE_SECONDS,
        table: Callable[[list[dict[str, Any]]], Any] = log_frame,
    ) -> None:
        if flush_seconds <= 0 or max_buffer < 1:
            raise ValueError("flush_seconds must be > 0 and max_buffer >= 1")
        self.writer = writer
        self.table = table
        self.flush_seconds = flush_seconds
        self.max_buffer = max_buffer
        # Retention (`label_store.expire_log` with the retention days): after a flush
        # that wrote rows, when `expire_seconds` have passed since the last run.
        self.expire = expire
        self.expire_seconds = expire_seconds
        self._expired_at: float | None = None
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
    def parquet(cls, root: Path, private: bool = True, **options: Any) -> PredictionLog:
        return cls(parquet_writer(root, private), table=log_table, **options)

    @classmethod
    def sql(
        cls, url: str, table: str = DEFAULT_TABLE, private: bool = True, **options: Any
    ) -> PredictionLog:
        return cls(sql_writer(url, table, private), **options)

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
                self.writer(self.table(rows))
            except Exception:
                with self._lock:
                    kept = (rows + self._buffer)[-self.max_buffer * RETRY_BUFFERS :]
                    self._buffer = kept
                raise
            self._expire_when_due()
            return len(rows)

    def _expire_when_due(self) -> None:
        """Run `expire` if it is time; a failure is logged, the rows are written."""
        if self.expire is None:
            return
        now = time.monotonic()
        if self._expired_at is not None and now - self._expired_at < self.expire_seconds:
            return
        self._expired_at = now
        try:
            self.expire()
        except Exception as exc:  # retention is housekeeping: serving goes on
            logger.warning("prediction log: could not delete expired rows: %s", exc)

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
    """A whole table of the database at `url`; empty when there is no such table, or
    no such SQLite file (a reader never creates the store: its writer does, private)."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import SQLAlchemyError

    database = sqlite_file(url)
    if database is not None and not database.exists():
        return pd.DataFrame()
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(table):
            return pd.DataFrame()
        return pd.read_sql_table(table, engine)
    except SQLAlchemyError as exc:
        raise SourceError(f"cannot read {mask_url(url)}: {_reason(exc, url)}") from None
    finally:
        engine.dispose()


def expire_predictions(location: str | Path, before: datetime, table: str = DEFAULT_TABLE) -> int:
    """Delete the predictions logged before `before`; how many rows went. A parquet
    log loses whole day folders, only those whose every row is older; a SQL log the
    rows. Labels stored beside the log: `label_store.expire_labels`."""
    before = before.astimezone(UTC) if before.tzinfo else before.replace(tzinfo=UTC)
    if is_sql_url(location):
        from pipeline.summaries import delete_summaries_before

        removed = delete_rows_before(str(location), table, "timestamp", before)
        delete_summaries_before(str(location), table, before)  # day folders hold their own
        return removed
    import pyarrow.parquet as pq

    root = Path(location)
    removed = 0
    for folder in sorted(root.glob(f"{DAY_PREFIX}*")):
        try:
            day = datetime.strptime(folder.name.removeprefix(DAY_PREFIX), "%Y-%m-%d")
        except ValueError:
            continue  # not a day folder of this log: left alone
        if day.replace(tzinfo=UTC) + timedelta(days=1) > before:
            continue
        removed += sum(pq.read_metadata(part).num_rows for part in folder.glob("part-*.parquet"))
        # Renamed first: a reader globbing `date=*` sees the whole day or none of it.
        doomed = folder.with_name(f".expired-{folder.name}-{uuid.uuid4().hex[:8]}")
        os.replace(folder, doomed)
        shutil.rmtree(doomed)
    return removed


def delete_rows_before(url: str, table: str, column: str, before: datetime) -> int:
    """Delete the rows of `table` whose `column` is before `before`; 0 without table."""
    from sqlalchemy import MetaData, Table, create_engine, delete, inspect
    from sqlalchemy.exc import SQLAlchemyError

    database = sqlite_file(url)
    if database is not None and not database.exists():
        return 0
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(table):
            return 0
        with engine.begin() as connection:
            reflected = Table(table, MetaData(), autoload_with=connection)
            done = connection.execute(delete(reflected).where(reflected.c[column] < before))
            return int(done.rowcount or 0)
    except SQLAlchemyError as exc:
        raise SourceError(
            f"cannot delete expired rows from {mask_url(url)}: {_reason(exc, url)}"
        ) from None
    finally:
        engine.dispose()


def _reason(exc: BaseException, url: str) -> str:
    """A database error's first line, with the URL's secrets masked."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return redact(lines[0] if lines else type(original).__name__, url)


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
