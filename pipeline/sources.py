"""Reading a data source: a built-in data set, a CSV or Parquet file, a folder of them,
or a SQL query on a SQLAlchemy URL.

Every failure a user can cause becomes a SourceError whose message names the source
and says what to fix.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.config import CsvDialect, DataConfig, is_sql_url
from pipeline.datasets import builtin_bytes
from pipeline.errors import SourceError, first_line
from pipeline.secrets import mask_url, redact

BUILTIN_PREFIX = "builtin:"
PARQUET_SUFFIXES = {".parquet", ".pq"}
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
PARQUET_MAGIC = b"PAR1"
SNIFF_BYTES = 64 * 1024
DELIMITERS = ",;\t|"


@dataclass(frozen=True)
class SourceTable:
    """A source read into memory, with a description safe to log (no passwords)."""

    frame: pd.DataFrame
    description: str
    kind: str


def read_source(data: DataConfig) -> SourceTable:
    source = expand_environment(data.source)
    if source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        frame = read_csv_bytes(builtin_bytes(name), source, data.csv)
        return SourceTable(frame, source, "builtin")
    if is_sql_url(source):
        return SourceTable(read_sql(source, data.query or ""), mask_url(source), "sql")
    path = Path(source)
    if path.is_dir():
        return SourceTable(read_folder(path, data.csv), str(path), "folder")
    return SourceTable(read_table_file(path, data.csv), str(path), "file")


def expand_environment(source: str) -> str:
    """Expand `${VAR}` so passwords stay in the environment, not in params.yaml."""
    expanded = os.path.expandvars(source)
    unresolved = re.findall(r"\$\{(\w+)\}", expanded)
    if unresolved:
        raise SourceError(f"data.source uses ${{{unresolved[0]}}} but that variable is not set")
    return expanded


# --- files ----------------------------------------------------------------------------------


def read_table_file(path: Path, dialect: CsvDialect) -> pd.DataFrame:
    """One CSV or Parquet file, chosen by suffix or, failing that, by content."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder (check data.source)")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
    if not head:
        raise SourceError(f"{path}: the file is empty")
    if path.suffix.lower() in PARQUET_SUFFIXES or head.startswith(PARQUET_MAGIC):
        return read_parquet(path)
    return read_csv_file(path, head, dialect)


def read_parquet(path: Path, payload: bytes | None = None) -> pd.DataFrame:
    """A Parquet file, or its bytes already in memory (`path` then only names it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(pa.BufferReader(payload) if payload is not None else path).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    return _require_rows(frame, path)


def read_csv_file(path: Path, head: bytes, dialect: CsvDialect) -> pd.DataFrame:
    sample = _decode_sample(head, path, dialect.encoding)
    delimiter = dialect.delimiter or detect_delimiter(sample)
    return _parse_csv(path, path, delimiter, dialect)


def read_csv_bytes(payload: bytes, origin: str, dialect: CsvDialect) -> pd.DataFrame:
    sample = _decode_sample(payload[:SNIFF_BYTES], origin, dialect.encoding)
    delimiter = dialect.delimiter or detect_delimiter(sample)
    return _parse_csv(io.BytesIO(payload), origin, delimiter, dialect)


def detect_delimiter(sample: str) -> str:
    """The delimiter of a CSV sample: csv.Sniffer on whole lines, `,` if it cannot tell."""
    lines = sample.splitlines()
    if len(lines) > 1:
        lines = lines[:-1]  # the last line of a sample may be cut short
    try:
        return csv.Sniffer().sniff("\n".join(lines[:200]), delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def _decode_sample(head: bytes, origin: object, encoding: str) -> str:
    if b"\x00" in head:
        raise SourceError(f"{origin}: binary content, not a CSV or Parquet file")
    try:
        # A multi-byte character may be cut at the end of the sample.
        return head.decode(encoding, errors="strict" if len(head) < SNIFF_BYTES else "ignore")
    except UnicodeDecodeError:
        raise SourceError(
            f"{origin}: not valid {encoding} text; set data.csv.encoding (e.g. latin-1)"
        ) from None
    except LookupError:
        raise SourceError(f"data.csv.encoding: unknown encoding {encoding!r}") from None


def _parse_csv(
    handle: Path | io.BytesIO, origin: object, delimiter: str, dialect: CsvDialect
) -> pd.DataFrame:
    try:
        frame = pd.read_csv(
            handle,
            sep=delimiter,
            quotechar=dialect.quotechar,
            encoding=dialect.encoding,
            skipinitialspace=True,
            low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raise SourceError(f"{origin}: the file is empty") from None
    except pd.errors.ParserError as exc:
        raise SourceError(f"{origin}: cannot parse as CSV ({first_line(exc)})") from None
    except UnicodeDecodeError:
        raise SourceError(
            f"{origin}: not valid {dialect.encoding} text; set data.csv.encoding (e.g. latin-1)"
        ) from None
    frame.columns = [str(column).strip() for column in frame.columns]
    return _require_rows(frame, origin)


def _require_rows(frame: pd.DataFrame, origin: object) -> pd.DataFrame:
    if len(frame.columns) == 0:
        raise SourceError(f"{origin}: no columns found")
    if len(frame) == 0:
        raise SourceError(f"{origin}: has a header but no rows")
    return frame


def read_folder(folder: Path, dialect: CsvDialect) -> pd.DataFrame:
    """Every CSV and Parquet file directly inside `folder`, in name order, stacked."""
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in PARQUET_SUFFIXES | CSV_SUFFIXES
    )
    if not files:
        raise SourceError(f"{folder}: folder holds no .csv or .parquet files")
    frames = [read_table_file(path, dialect) for path in files]
    expected = list(frames[0].columns)
    for path, frame in zip(files[1:], frames[1:], strict=True):
        if set(frame.columns) != set(expected):
            difference = column_difference(expected, frame)
            raise SourceError(f"{path}: columns differ from {files[0].name} ({difference})")
    return pd.concat([frame[expected] for frame in frames], ignore_index=True)


def column_difference(expected: list[str], frame: pd.DataFrame) -> str:
    missing = [column for column in expected if column not in frame.columns]
    extra = [column for column in frame.columns if column not in expected]
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if extra:
        parts.append("extra " + ", ".join(map(str, extra)))
    return "; ".join(parts)


# --- SQL ------------------------------------------------------------------------------------


def read_sql(url: str, query: str) -> pd.DataFrame:
    """Run `query` on a SQLAlchemy URL. Connection and query errors are told apart."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

    shown = mask_url(url)
    connect_args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    try:
        engine = create_engine(url, connect_args=connect_args)
    except NoSuchModuleError:
        dialect = url.split("://", 1)[0]
        raise SourceError(f"data.source: SQLAlchemy has no dialect {dialect!r}") from None
    except ArgumentError:
        raise SourceError(f"data.source: {shown} is not a valid SQLAlchemy URL") from None
    except ModuleNotFoundError as exc:
        raise SourceError(
            f"data.source: the database driver {exc.name!r} is not installed "
            "(for PostgreSQL: pip install 'driftline[postgres]')"
        ) from None
    try:
        try:
            connection = engine.connect()
        except SQLAlchemyError as exc:
            reason = _database_reason(exc, url)
            raise SourceError(f"cannot connect to {shown}: {reason}") from None
        with connection:
            try:
                frame = pd.read_sql_query(text(query), connection)
            except (DBAPIError, SQLAlchemyError) as exc:
                reason = _database_reason(exc, url)
                raise SourceError(f"data.query failed on {shown}: {reason}") from None
    finally:
        engine.dispose()
    return _require_rows(frame, f"data.query on {shown}")


def _database_reason(exc: Exception, url: str) -> str:
    """The driver's first line, with any secret of `url` it quotes masked."""
    original = getattr(exc, "orig", None)
    return redact(first_line(original if original is not None else exc), url)
