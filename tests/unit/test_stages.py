"""Each stage's pure core on frames of a few rows: no files, no params.yaml."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import (
    CategoricalColumn,
    CleanConfig,
    ColumnPolicy,
    DataConfig,
    DatetimeColumn,
    Fractions,
    NumericColumn,
    Schema,
    SplitConfig,
)
from pipeline.errors import ConfigError, DataError
from pipeline.schema import DatasetSpec, infer_schema, infer_task, resolve_spec
from pipeline.stages.clean import clean
from pipeline.stages.ingest import Batch, content_hash, ingest
from pipeline.stages.split import split

SCHEMA = Schema(
    numeric={"y": NumericColumn(min=0, required=True), "temp": NumericColumn(min=0, max=1)},
    categorical={"colour": CategoricalColumn(values=["red", "blue"])},
    datetime={"day": DatetimeColumn(format="%Y-%m-%d")},
    id=["id"],
    drop=["leak"],
)
SPEC = DatasetSpec(target="y", task="regression", schema=SCHEMA, key_columns=("id",))


def frame(**overrides: list) -> pd.DataFrame:
    columns = {
        "id": [1, 2, 3, 4],
        "day": ["2024-01-01", "2024-01-02", "2024-01-06", "2024-01-07"],
        "temp": [0.1, 0.5, 1.7, None],
        "colour": ["red", " blue ", "green", None],
        "leak": [9, 9, 9, 9],
        "y": [1.0, 2.0, 3.0, 4.0],
    }
    columns.update(overrides)
    return pd.DataFrame(columns)


# --- ingest ---------------------------------------------------------------------------------


def bike_config(**extra: object) -> DataConfig:
    return DataConfig(source="x.csv", target="y", key_columns=["id"], **extra)


def test_ingest_batch_replaces_rows_by_key_and_skips_unlabelled() -> None:
    batch = pd.DataFrame({"id": [2, 5, 6], "y": [20.0, 50.0, None]})
    source = pd.DataFrame({"id": [1, 2, 3], "y": [1.0, 2.0, 3.0]})
    result = ingest(source, [Batch("2024-06.parquet", batch, "abc")], bike_config(), "x.csv")
    assert result.frame.sort_values("id")["y"].tolist() == [1.0, 20.0, 3.0, 50.0]
    assert result.manifest["duplicate_keys_replaced"] == 1
    assert result.manifest["unlabelled_rows_skipped"] == 1
    assert result.manifest["batches"] == [{"file": "2024-06.parquet", "rows": 2, "sha256": "abc"}]
    assert result.figures["rows"] == 4


def test_ingest_leaves_duplicate_keys_within_the_source_for_validate() -> None:
    source = pd.DataFrame({"id": [1, 1], "y": [1.0, 2.0]})
    assert len(ingest(source, [], bike_config(), "x.csv").frame) == 2


def test_ingest_refuses_a_batch_with_other_columns() -> None:
    source = pd.DataFrame({"id": [1], "y": [1.0]})
    batch = Batch("b.parquet", pd.DataFrame({"id": [2], "target": [1.0]}), "abc")
    with pytest.raises(DataError, match=r"landing batch b\.parquet: .*missing y; extra target"):
        ingest(source, [batch], bike_config(), "x.csv")


def test_ingest_manifest_records_time_range_and_hash() -> None:
    source = frame()
    config = bike_config(time_column="day")
    result = ingest(source, [], config, "x.csv")
    assert result.manifest["time_range"] == {
        "column": "day",
        "start": "2024-01-01",
        "end": "2024-01-07",
    }
    assert result.manifest["content_hash"] == content_hash(source)
    assert content_hash(source.assign(y=source["y"] + 1)) != content_hash(source)


def test_ingest_does_not_mutate_its_input() -> None:
    source = pd.DataFrame({"id": [1, 2], "y": [1.0, 2.0]})
    copy = source.copy()
    ingest(source, [Batch("b", pd.DataFrame({"id": [2], "y": [5.0]}), "h")], bike_config(), "x")
    pd.testing.assert_frame_equal(source, copy)


# --- schema inference -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "task"),
    [
        ([0.5, 1.25, 3.0], "regression"),
        (list(range(100)), "regression"),
        (["UP", "DOWN", "UP"], "binary"),
        ([0, 1, 1, 0], "binary"),
        ([1, 2, 3, 2, 1], "multiclass"),
        (["a", "b", "c", None], "multiclass"),
    ],
)
def test_infer_task(values: list, task: str) -> None:
    assert infer_task(pd.Series(values, name="y")) == task


def test_infer_task_refuses_free_text() -> None:
    with pytest.raises(DataError, match=r"set data\.task"):
        infer_task(pd.Series([f"text {i}" for i in range(50)], name="y"))


def test_infer_schema_kinds() -> None:
    data = pd.DataFrame(
        {
            "row_id": range(30),
            "when": pd.date_range("2024-01-01", periods=30).strftime("%Y-%m-%d"),
            "size": np.linspace(0, 1, 30),
            "level": [1, 2, 3] * 10,
            "job": ["admin.", "unknown", "services"] * 10,
            "y": [0, 1] * 15,
        }
    )
    schema = infer_schema(data, "y", "binary")
    assert schema.id == ["row_id"]
    assert schema.datetime["when"].format == "%Y-%m-%d"
    assert "size" in schema.numeric and schema.numeric["size"].min is None
    assert schema.categorical["level"].values == [1, 2, 3]
    assert schema.categorical["job"].values == ["admin.", "services", "unknown"]
    assert schema.categorical["y"].required


def test_resolved_spec_round_trips_through_yaml() -> None:
    spec = resolve_spec(frame(), bike_config())
    assert spec.inferred == ("task", "schema")
    again = DatasetSpec.from_yaml(spec.to_yaml())
    assert again.schema == spec.schema and again.task == spec.task
    assert "Review them and copy" in spec.to_yaml()


# --- clean ------------------------------------------------------------------------------------


def test_clean_defaults() -> None:
    result = clean(frame(), SPEC, CleanConfig())
    cleaned = result.frame
    assert "leak" not in cleaned
    assert cleaned["temp"].tolist()[:3] == [0.1, 0.5, 1.0]  # clipped to max
    assert cleaned["colour"].tolist()[:3] == ["red", "blue", "green"]  # stripped, kept
    assert cleaned["temp"].isna().sum() == 1  # missing values kept for the model
    assert str(cleaned["day"].dtype).startswith("datetime64")
    assert result.report["columns"]["temp"] == {"clipped": 1}
    assert result.report["dropped_columns"] == ["leak"]


def test_clean_policies_per_column() -> None:
    config = CleanConfig(
        out_of_range="drop",
        unknown_category="null",
        missing_categorical="constant",
        columns={"temp": ColumnPolicy(missing="median")},
    )
    result = clean(frame(), SPEC, config)
    assert result.frame["id"].tolist() == [1, 2, 4]  # row 3 was out of range
    assert result.frame["temp"].tolist() == [0.1, 0.5, 0.3]  # median of what remained
    assert result.frame["colour"].tolist() == ["red", "blue", "missing"]
    assert result.report["rows_dropped"] == {"out_of_range": 1}
    assert result.report["columns"]["temp"] == {"imputed_median": 1}


def test_clean_drops_duplicates_and_unlabelled_rows_and_bad_dates() -> None:
    data = frame(
        id=[1, 1, 3, 4],
        day=["2024-01-01", "2024-01-01", "not a date", "2024-01-07"],
        temp=[0.1, 0.1, 0.2, 0.3],
        colour=["red", "red", "red", "blue"],
        y=[1.0, 1.0, 2.0, None],
    )
    result = clean(data, SPEC, CleanConfig())
    assert result.frame["id"].tolist() == [1]
    assert result.report["rows_dropped"] == {"duplicates": 1, "target_missing": 1, "missing": 1}
    assert result.report["columns"]["day"] == {"unparseable_to_null": 1}


def test_clean_never_clips_a_label() -> None:
    result = clean(frame(y=[1.0, -5.0, 3.0, 4.0]), SPEC, CleanConfig(out_of_range="clip"))
    assert -5.0 not in result.frame["y"].tolist()
    assert result.report["rows_dropped"] == {"out_of_range": 1}


def test_clean_na_markers_and_calendar_features() -> None:
    spec = DatasetSpec(
        target="y", task="regression", schema=SCHEMA, key_columns=("id",), na_values=("green",)
    )
    result = clean(
        frame(), spec, CleanConfig(calendar_features={"day": ["dayofweek", "is_weekend"]})
    )
    assert result.frame["colour"].isna().sum() == 2
    assert result.frame["day_is_weekend"].tolist() == [0, 0, 1, 1]
    assert result.report["derived_columns"] == ["day_dayofweek", "day_is_weekend"]


def test_clean_refuses_a_policy_that_does_not_fit_the_column() -> None:
    config = CleanConfig(columns={"colour": ColumnPolicy(missing="median")})
    with pytest.raises(ConfigError, match=r"clean\.columns\.colour\.missing: 'median'"):
        clean(frame(), SPEC, config)


def test_clean_does_not_mutate_its_input() -> None:
    data = frame()
    copy = data.copy()
    clean(data, SPEC, CleanConfig())
    pd.testing.assert_frame_equal(data, copy)


# --- split ------------------------------------------------------------------------------------


def hourly(rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "when": pd.date_range("2024-01-01", periods=rows, freq="h").floor("D"),
            "x": np.arange(rows, dtype=float),
            "y": np.arange(rows) % 2,
        }
    )


def test_time_split_is_ordered_and_never_cuts_a_day() -> None:
    spec = DatasetSpec(target="x", task="regression", schema=Schema(), time_column="when")
    shuffled = hourly(24 * 30).sample(frac=1, random_state=0)
    result = split(shuffled, spec, SplitConfig())
    assert result.method == "time"
    assert result.train["when"].max() < result.val["when"].min()
    assert result.val["when"].max() < result.test["when"].min()
    assert {len(result.train), len(result.val), len(result.test)} == {24 * 21, 24 * 6, 24 * 3}


def test_stratified_split_keeps_class_shares() -> None:
    data = pd.DataFrame({"x": range(1000), "y": ["yes"] * 120 + ["no"] * 880})
    spec = DatasetSpec(target="y", task="binary", schema=Schema())
    result = split(data, spec, SplitConfig())
    assert result.method == "stratified"
    for part in (result.train, result.val, result.test):
        assert (part["y"] == "yes").mean() == pytest.approx(0.12, abs=0.01)
    assert len(result.train) == 700 and len(result.test) == 100


def test_split_is_seeded_and_disjoint() -> None:
    data = pd.DataFrame({"key": range(500), "y": np.random.default_rng(1).normal(size=500)})
    spec = DatasetSpec(target="y", task="regression", schema=Schema())
    first, again = split(data, spec, SplitConfig(seed=7)), split(data, spec, SplitConfig(seed=7))
    other = split(data, spec, SplitConfig(seed=8))
    pd.testing.assert_frame_equal(first.train, again.train)
    assert not first.train.equals(other.train)
    keys = [set(part["key"]) for part in (first.train, first.val, first.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert set(first.reference["key"]) <= keys[0]


def test_stratified_split_refuses_a_class_too_small() -> None:
    data = pd.DataFrame({"x": range(50), "y": ["a"] * 48 + ["b"] * 2})
    spec = DatasetSpec(target="y", task="binary", schema=Schema())
    with pytest.raises(DataError, match="class 'b' of 'y' has only 2 row"):
        split(data, spec, SplitConfig())


def test_split_refuses_an_empty_part() -> None:
    spec = DatasetSpec(target="x", task="regression", schema=Schema(), time_column="when")
    one_day = hourly(24)
    with pytest.raises(DataError, match="set is empty"):
        split(one_day, spec, SplitConfig())


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(min_value=10, max_value=400),
    train=st.floats(min_value=0.3, max_value=0.8),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_random_split_partitions_every_row(rows: int, train: float, seed: int) -> None:
    val = (1 - train) * 2 / 3
    fractions = Fractions(train=train, val=val, test=1 - train - val)
    data = pd.DataFrame({"key": range(rows), "y": np.arange(rows, dtype=float)})
    spec = DatasetSpec(target="y", task="regression", schema=Schema())
    result = split(data, spec, SplitConfig(method="random", fractions=fractions, seed=seed))
    keys = pd.concat([result.train, result.val, result.test])["key"]
    assert sorted(keys) == list(range(rows))
    assert abs(len(result.train) - rows * train) <= 1


def test_ordered_split_keeps_the_row_order() -> None:
    data = pd.DataFrame({"x": [5.0, 1.0, 4.0, 2.0, 3.0] * 20, "y": range(100)})
    spec = DatasetSpec(target="y", task="regression", schema=Schema())
    result = split(data, spec, SplitConfig(method="ordered"))
    assert result.train["y"].tolist() == list(range(70))
    assert result.test["y"].tolist() == list(range(90, 100))
