"""ingest: read the source, append labelled production batches, write `data/raw/`.

Outputs: `data.parquet` (the rows), `schema.yaml` (the resolved data set description,
see pipeline.schema) and `manifest.json` (rows, content hash, time range, source,
batches), plus flat figures in `metrics/ingest.json`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from pipeline.artifacts import write_json_atomic, write_parquet_atomic, write_text_atomic
from pipeline.config import DEFAULT_PARAMS, DataConfig, load_params
from pipeline.console import report_user_errors, run_command, say
from pipeline.errors import DataError
from pipeline.schema import DatasetSpec, check_named_columns, resolve_spec
from pipeline.sources import column_difference, read_parquet, read_source


@dataclass(frozen=True)
class Batch:
    """A labelled production batch dropped into the landing folder."""

    name: str
    frame: pd.DataFrame
    sha256: str


@dataclass(frozen=True)
class Ingested:
    frame: pd.DataFrame
    spec: DatasetSpec
    manifest: dict[str, Any]
    figures: dict[str, int]


def ingest(
    source: pd.DataFrame,
    batches: Sequence[Batch],
    data: DataConfig,
    source_description: str,
) -> Ingested:
    """Stack the source and the batches (a batch row replaces an older row with its key)
    and describe the result."""
    check_named_columns(source, data)
    source, held_out = hold_out(source, data.time_column, data.until)
    columns = list(source.columns)
    frame = source.reset_index(drop=True)
    batch_records = []
    unlabelled = replaced = 0
    for batch in batches:
        if set(batch.frame.columns) != set(columns):
            raise DataError(
                f"landing batch {batch.name}: columns differ from the source "
                f"({column_difference(columns, batch.frame)})"
            )
        labelled = batch.frame[batch.frame[data.target].notna()][columns]
        unlabelled += len(batch.frame) - len(labelled)
        if data.key_columns:
            # A batch row replaces an older row with the same key. Duplicate keys
            # inside one table are left alone: validate reports them.
            older = frame.set_index(data.key_columns).index
            newer = labelled.set_index(data.key_columns).index
            superseded = older.isin(newer)
            replaced += int(superseded.sum())
            frame = frame[~superseded]
        frame = pd.concat([frame, labelled], ignore_index=True)
        batch_records.append({"file": batch.name, "rows": len(labelled), "sha256": batch.sha256})

    spec = resolve_spec(frame, data)
    manifest = {
        "source": source_description,
        "rows": len(frame),
        "columns": len(frame.columns),
        "content_hash": content_hash(frame),
        "time_range": time_range(frame, data.time_column),
        "source_rows": len(source),
        "held_out_rows": len(held_out),
        "until": None if data.until is None else data.until.isoformat(),
        "batches": batch_records,
        "unlabelled_rows_skipped": unlabelled,
        "duplicate_keys_replaced": replaced,
        "inferred": list(spec.inferred),
    }
    figures = {
        "rows": len(frame),
        "columns": len(frame.columns),
        "source_rows": len(source),
        "batch_rows": sum(record["rows"] for record in batch_records),
        "duplicate_keys_replaced": replaced,
    }
    return Ingested(frame=frame, spec=spec, manifest=manifest, figures=figures)


def hold_out(
    frame: pd.DataFrame, time_column: str | None, until: date | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows up to the end of `until` (kept) and the later ones (held out)."""
    if until is None or time_column is None:
        return frame, frame.iloc[0:0]
    times = pd.to_datetime(frame[time_column], errors="coerce", format="mixed", utc=True)
    later = (times >= pd.Timestamp(until, tz="UTC") + pd.Timedelta(days=1)).to_numpy()
    return frame[~later].reset_index(drop=True), frame[later].reset_index(drop=True)


def content_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of the values, column names and dtypes: equal tables hash equal."""
    digest = hashlib.sha256()
    digest.update(repr([(str(name), str(dtype)) for name, dtype in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def time_range(frame: pd.DataFrame, time_column: str | None) -> dict[str, Any] | None:
    if time_column is None:
        return None
    values = frame[time_column].dropna()
    if values.empty:
        return {"column": time_column, "start": None, "end": None}
    return {"column": time_column, "start": str(values.min()), "end": str(values.max())}


def read_landing(folder: Path) -> list[Batch]:
    """Every parquet batch in the landing folder, in name order (oldest first by convention)."""
    if not folder.is_dir():
        return []
    batches = []
    for path in sorted(folder.glob("*.parquet")):
        payload = path.read_bytes()
        batches.append(
            Batch(
                name=path.name,
                frame=read_parquet(path, payload),
                sha256=hashlib.sha256(payload).hexdigest(),
            )
        )
    return batches


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    out: Annotated[
        Path, typer.Option(help="Folder for data.parquet, schema.yaml, manifest.json.")
    ] = Path("data/raw"),
    metrics: Annotated[Path, typer.Option(help="Flat figures for `dvc metrics`.")] = Path(
        "metrics/ingest.json"
    ),
) -> None:
    """Read the source and the landing folder into data/raw."""
    data = load_params(params).data
    source = read_source(data)
    batches = read_landing(Path(data.landing))
    result = ingest(source.frame, batches, data, source.description)

    write_parquet_atomic(out / "data.parquet", result.frame)
    write_text_atomic(out / "schema.yaml", result.spec.to_yaml())
    # No clock in the manifest: the same source gives the same bytes, so dvc.lock
    # changes only when the data does (git and dvc.lock date a data version).
    write_json_atomic(out / "manifest.json", result.manifest)
    write_json_atomic(metrics, result.figures)

    say(
        f"ingest: {result.figures['rows']} rows x {result.figures['columns']} columns from "
        f"{source.description}"
        + (f" + {len(batches)} landing batch(es)" if batches else "")
        + (
            f"; {result.manifest['held_out_rows']} rows after {data.until} held out"
            if data.until
            else ""
        )
        + f" -> {out}"
    )
    if result.spec.inferred:
        say(
            f"ingest: inferred {' and '.join(result.spec.inferred)}; review {out / 'schema.yaml'} "
            "and copy it under data: in params.yaml to pin it"
        )


if __name__ == "__main__":
    run_command(main)
