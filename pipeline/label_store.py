"""Late labels: checked against the prediction log, then stored beside it.

Labels arrive after the predictions they belong to (id = the request id, label, time).
They are stored where the log is, as parquet under `<log>/labels/` or as the `labels`
table of a SQL log's database, so the monitor can join them to the predictions of any
window; a label for an id the log does not hold is reported. `expire_log` applies the
log's retention to both: predictions and labels older than the cutoff go together.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError, SourceError, first_line
from pipeline.features import category_value
from pipeline.prediction_log import (
    delete_rows_before,
    expire_predictions,
    is_sql_url,
    join_labels,
    read_predictions,
    read_table,
)
from pipeline.stores import create_file, create_folder, prepare_store

LABELS_TABLE = "labels"
LABELS_FOLDER = "labels"


@dataclass(frozen=True)
class StoredLabels:
    received: int
    matched: int
    unlabelled: int
    path: str | None  # where they went: a parquet file, or the SQL table
    unmatched: list[str] = field(default_factory=list)


def read_labels(file: Path) -> pd.DataFrame:
    if not file.exists():
        raise SourceError(f"{file}: no such file")
    try:
        if file.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(file)
        return pd.read_csv(file)
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: cannot read labels ({exc})") from None


def store_labels(file: Path, log: str, private: bool = True) -> StoredLabels:
    """Join the labels in `file` to the log at `log` and store the ones that match:
    beside a parquet log under its `labels/` folder, in a SQL log's database as the
    `labels` table (so that any host that reaches the database sees them). What it
    creates is owner-only when `private` (`stores.private`)."""
    labels = read_labels(Path(file))
    joined = join_labels(read_predictions(log), labels)
    matched = labels[labels["id"].astype(str).isin(set(joined.joined["request_id"]))]
    where = None
    if not matched.empty:
        rows = matched.assign(id=matched["id"].astype(str))
        if is_sql_url(log):
            where = _append_sql(rows, log, private)
        else:
            where = _append_parquet(rows, Path(log), private)
    return StoredLabels(
        received=len(labels),
        matched=len(matched),
        unlabelled=joined.unlabelled,
        path=where,
        unmatched=joined.unmatched_label_ids,
    )


def read_stored_labels(log: str | Path) -> pd.DataFrame | None:
    """Every label stored for the log at `log` (None when there are none)."""
    if is_sql_url(log):
        stored = read_table(str(log), LABELS_TABLE)
        return None if stored.empty else stored
    parts = sorted((Path(log) / LABELS_FOLDER).glob("*.parquet"))
    if not parts:
        return None
    return pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)


@dataclass(frozen=True)
class Expired:
    """What retention deleted: prediction rows and label rows."""

    predictions: int
    labels: int


def expire_log(log: str | Path, days: int, now: datetime | None = None) -> Expired:
    """Delete the predictions and the labels stored beside them that are older than
    `days` days (`monitor.prediction_log_retention_days`)."""
    before = (now or datetime.now(UTC)) - timedelta(days=days)
    return Expired(expire_predictions(log, before), expire_labels(log, before))


def expire_labels(log: str | Path, before: datetime) -> int:
    """Delete the labels whose `time` is before `before`; how many went. A parquet
    part whose rows all expire is deleted, one with some is rewritten without them."""
    before = before.astimezone(UTC) if before.tzinfo else before.replace(tzinfo=UTC)
    if is_sql_url(log):
        return delete_rows_before(str(log), LABELS_TABLE, "time", before)
    removed = 0
    for part in sorted((Path(log) / LABELS_FOLDER).glob("*.parquet")):
        rows = pd.read_parquet(part)
        times = pd.to_datetime(rows["time"], utc=True, format="mixed")
        old = (times < pd.Timestamp(before)).to_numpy()
        if not old.any():
            continue
        removed += int(old.sum())
        if old.all():
            part.unlink()
            continue
        # The same name and mode, replaced whole: a reader sees the old part or the new.
        temporary = part.with_name(f".{part.name}.tmp")
        mode = part.stat().st_mode & 0o777
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.close(handle)
        rows[~old].reset_index(drop=True).to_parquet(temporary, index=False)
        os.replace(temporary, part)
    return removed


def _append_parquet(rows: pd.DataFrame, log: Path, private: bool) -> str:
    folder = create_folder(log / LABELS_FOLDER, private)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    temporary = create_file(path.with_suffix(".tmp"), private)
    rows.to_parquet(temporary, index=False)
    os.replace(temporary, path)
    return str(path)


def _append_sql(rows: pd.DataFrame, url: str, private: bool) -> str:
    """One transaction: a label batch is stored whole or not at all. Labels are text, so
    that batches of numbers and of class names share one column type in any database."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.secrets import mask_url, redact

    table = pd.DataFrame(
        {
            "id": rows["id"],
            "label": rows["label"].map(category_value),
            "time": pd.to_datetime(rows["time"], utc=True, format="mixed"),
        }
    )
    prepare_store(url, private)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            table.to_sql(LABELS_TABLE, connection, if_exists="append", index=False)
    except SQLAlchemyError as exc:
        reason = redact(first_line(exc), url)
        raise SourceError(f"cannot store labels in {mask_url(url)}: {reason}") from None
    finally:
        engine.dispose()
    return f"{mask_url(url)} (table {LABELS_TABLE})"
