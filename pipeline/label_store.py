"""Late labels: checked against the prediction log, then stored beside it.

Labels arrive after the predictions they belong to (id = the request id, label, time).
They are stored as parquet under `<log>/labels/` so the monitor can join them to the
predictions of any window; a label for an id the log does not hold is reported.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError, SourceError
from pipeline.prediction_log import is_sql_url, join_labels, read_predictions


@dataclass(frozen=True)
class StoredLabels:
    received: int
    matched: int
    unlabelled: int
    path: Path | None
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
    """Join the labels in `file` to the log at `log` and store the ones that match."""
    if is_sql_url(log):
        raise DataError("label: storing labels beside a SQL prediction log is not supported yet")
    labels = read_labels(Path(file))
    joined = join_labels(read_predictions(log), labels)
    matched = labels[labels["id"].astype(str).isin(set(joined.joined["request_id"]))]
    path = None
    if not matched.empty:
        folder = Path(log) / "labels"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = folder / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        temporary = path.with_suffix(".tmp")
        matched.assign(id=matched["id"].astype(str)).to_parquet(temporary, index=False)
        os.replace(temporary, path)
    return StoredLabels(
        received=len(labels),
        matched=len(matched),
        unlabelled=joined.unlabelled,
        path=path,
        unmatched=joined.unmatched_label_ids,
    )
