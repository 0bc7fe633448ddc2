"""Reading sources: built-in, CSV dialects, Parquet, folders, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import CsvDialect, DataConfig
from pipeline.datasets import BUILTIN
from pipeline.errors import SourceError
from pipeline.sources import detect_delimiter, mask_url, read_source
from tests.conftest import FIXTURES

SMALL = pd.DataFrame(
    {"id": [1, 2, 3], "city": ["Porto", "Lisbon, PT", 'say "hi"'], "y": [0.5, 1.5, None]}
)


def source(path: object, **extra: object) -> DataConfig:
    return DataConfig(source=str(path), target="y", **extra)


def test_builtin_bike_sharing_is_verified_and_complete() -> None:
    table = read_source(DataConfig(target="cnt"))
    assert table.kind == "builtin"
    assert table.frame.shape == (17379, 17)
    assert table.frame["cnt"].sum() == 3292679  # hourly counts of 2011-2012
    assert BUILTIN["bike_sharing"].licence == "CC BY 4.0"


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(SourceError, match="available: builtin:bike_sharing"):
        read_source(DataConfig(source="builtin:iris", target="y"))


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_dialect_is_detected(tmp_path: Path, delimiter: str) -> None:
    path = tmp_path / "table.csv"
    SMALL.to_csv(path, sep=delimiter, index=False)
    frame = read_source(source(path)).frame
    pd.testing.assert_frame_equal(frame, SMALL)


def test_quoted_semicolon_file_like_bank_marketing(tmp_path: Path) -> None:
    path = tmp_path / "bank.csv"
    path.write_text('"age";"job";"y"\n58;"management";"no"\n44;"technician; senior";"yes"\n')
    frame = read_source(source(path)).frame
    assert list(frame.columns) == ["age", "job", "y"]
    assert frame.loc[1, "job"] == "technician; senior"
    assert frame["age"].dtype.kind == "i"


def test_explicit_delimiter_wins(tmp_path: Path) -> None:
    path = tmp_path / "table.txt"
    path.write_text("a;b,c\n1;2,3\n")
    frame = read_source(source(path, csv=CsvDialect(delimiter=","))).frame
    assert list(frame.columns) == ["a;b", "c"]


def test_single_column_falls_back_to_comma() -> None:
    assert detect_delimiter("y\n1\n2\n") == ","


def test_parquet_file_and_real_nans(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    SMALL.to_parquet(path, index=False)
    frame = read_source(source(path)).frame
    pd.testing.assert_frame_equal(frame, SMALL)
    assert frame["y"].isna().sum() == 1


def test_parquet_found_by_content_whatever_its_name(tmp_path: Path) -> None:
    path = tmp_path / "export.bin"
    SMALL.to_parquet(path, index=False)
    assert read_source(source(path)).frame.shape == SMALL.shape


def test_folder_of_mixed_files_in_name_order(tmp_path: Path) -> None:
    SMALL.iloc[:2].to_csv(tmp_path / "a.csv", index=False)
    SMALL.iloc[2:].to_parquet(tmp_path / "b.parquet", index=False)
    (tmp_path / "notes.md").write_text("ignored")
    table = read_source(source(tmp_path))
    assert table.kind == "folder"
    assert table.frame["id"].tolist() == [1, 2, 3]


def test_folder_with_different_columns_names_the_file(tmp_path: Path) -> None:
    SMALL.to_csv(tmp_path / "a.csv", index=False)
    SMALL.drop(columns=["city"]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(SourceError, match=r"b\.csv: columns differ from a\.csv \(missing city\)"):
        read_source(source(tmp_path))


def test_sqlite_query(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = create_engine(url)
    SMALL.to_sql("sales", engine, index=False)
    engine.dispose()
    table = read_source(source(url, query="SELECT id, city, y FROM sales ORDER BY id"))
    assert table.kind == "sql"
    pd.testing.assert_frame_equal(table.frame, SMALL)


def test_sqlite_query_with_no_rows(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = create_engine(url)
    SMALL.to_sql("sales", engine, index=False)
    engine.dispose()
    with pytest.raises(SourceError, match="has a header but no rows"):
        read_source(source(url, query="SELECT * FROM sales WHERE id > 10"))


def postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(
    not postgres_reachable() and not os.environ.get("CI"),
    reason="no PostgreSQL on 127.0.0.1:5432 (CI has one and never skips this)",
)
def test_postgresql_query() -> None:
    from sqlalchemy import create_engine, text

    url = "postgresql://postgres@127.0.0.1:5432/test"
    table_name = f"driftline_{uuid.uuid4().hex[:8]}"
    bike = pd.read_csv(FIXTURES / "bike_sharing_2000.csv").head(500)
    engine = create_engine(url)
    try:
        bike.to_sql(table_name, engine, index=False)
        read = read_source(
            DataConfig(
                source=url, query=f"SELECT * FROM {table_name} ORDER BY instant", target="cnt"
            )
        )
        pd.testing.assert_frame_equal(read.frame, bike, check_dtype=False)
        assert read.description == "postgresql://postgres@127.0.0.1:5432/test"
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {table_name}"))
        engine.dispose()


def test_password_is_masked_in_descriptions() -> None:
    assert mask_url("postgresql://user:hunter2@db:5432/x") == "postgresql://user:***@db:5432/x"
