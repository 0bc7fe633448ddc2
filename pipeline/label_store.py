"""Late labels: checked against the prediction log, then stored beside it.

Labels arrive after the predictions they belong to (id = the request id, label, time).
They are stored where the log is, as parquet under `<log>/labels/` or as the `labels`
table of a SQL log's database, so the monitor can join them to the predictions of any
window; a label for an id the log does not hold is reported.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError, SourceError
from pipeline.features import category_value
from pipeline.prediction_log import is_sql_url, join_labels, read_predictions, read_table

LABELS_TABLE = "labels"


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


def store_labels(file: Path, log: str) -> StoredLabels:
    """Join the labels in `file` to the log at `log` and store the ones that match:
    beside a parquet log under its `labels/` folder, in a SQL log's database as the
    `labels` table (so that any host that reaches the database sees them)."""
    labels = read_labels(Path(file))
    joined = join_labels(read_predictions(log), labels)
    matched = labels[labels["id"].astype(str).isin(set(joined.joined["request_id"]))]
    where = None
    if not matched.empty:
        rows = matched.assign(id=matched["id"].astype(str))
        where = _append_sql(rows, log) if is_sql_url(log) else _append_parquet(rows, Path(log))
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
    parts = sorted((Path(log) / "labels").glob("*.parquet"))
    if not parts:
        return None
    return pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)


def _append_parquet(rows: pd.DataFrame, log: Path) -> str:
    folder = log / "labels"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    temporary = path.with_suffix(".tmp")
    rows.to_parquet(temporary, index=False)
    os.replace(temporary, path)
    return str(path)


def _append_sql(rows: pd.DataFrame, url: str) -> str:
    """One transaction: a label batch is stored whole or not at all. Labels are text, so
    that batches of numbers and of class names share one column type in any database."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.sources import mask_url

    table = pd.DataFrame(
        {
            "id": rows["id"],
            "label": rows["label"].map(category_value),
            "time": pd.to_datetime(rows["time"], utc=True, format="mixed"),
        }
    )
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            table.to_sql(LABELS_TABLE, connection, if_exists="append", index=False)
    except SQLAlchemyError as exc:
        raise SourceError(
            f"cannot store labels in {mask_url(url)}: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        engine.dispose()
    return f"{mask_url(url)} (table {LABELS_TABLE})"
