"""RowRules (pipeline/rows.py) does to one record what clean does to a column: the same
features on every row of the three data sets, and a warning for each value not
scored as sent."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.artifacts import read_json
from pipeline.config import CleanConfig, Schema, load_params
from pipeline.features import category_value
from pipeline.rows import OUT_OF_RANGE, UNKNOWN_CATEGORY, UNPARSEABLE, RowRules, calendar_value
from pipeline.schema import DatasetSpec
from pipeline.stages.clean import calendar_part
from tests.conftest import FIXTURES, REPO, Project, sliced_params

EXAMPLES = REPO / "examples"


def example_params(name: str, fixture: str) -> dict[str, Any]:
    params = yaml.safe_load((EXAMPLES / name).read_text())
    params["data"]["source"] = str(FIXTURES / fixture)
    params["validate"]["min_rows"] = 100
    return params


def json_value(value: Any) -> Any:
    """A raw parquet value as a client would send it in JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def same(left: Any, right: Any) -> bool:
    if left is None or (isinstance(left, float) and math.isnan(left)) or left is pd.NA:
        return right is None or (isinstance(right, float) and math.isnan(right)) or right is pd.NA
    if isinstance(left, int | float | np.number) and not isinstance(left, bool):
        return right is not None and math.isclose(float(left), float(right), abs_tol=1e-9)
    return category_value(left) == category_value(right)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(lambda: sliced_params(), id="bike_sharing"),
        pytest.param(lambda: example_params("elec2.params.yaml", "elec2_3000.csv"), id="elec2"),
        pytest.param(
            lambda: example_params("bank_marketing.params.yaml", "bank_marketing_3000.csv"),
            id="bank_marketing",
        ),
    ],
)
def test_a_record_gets_the_features_clean_gives_its_row(project: Project, params: Any) -> None:
    settings = params()
    # Row for row: no duplicates dropped, so clean's output lines up with its input.
    settings["clean"]["drop_duplicates"] = False
    # Exercise the fills too: a median for numbers and the mode for categories.
    settings["clean"]["missing_numeric"] = "median"
    settings["clean"]["missing_categorical"] = "most_frequent"
    project.write_params(settings)
    project.run_stages("ingest", "validate", "clean")
    raw = pd.read_parquet(project.root / "data/raw/data.parquet")
    cleaned = pd.read_parquet(project.root / "data/clean/data.parquet")
    spec = DatasetSpec.read(project.root / "data/raw/schema.yaml")
    config = load_params(project.params_path).clean
    rules = RowRules.fit(
        spec, config, read_json(project.root / "reports/clean.json", "clean")["fills"]
    )
    assert len(raw) == len(cleaned)
    compared = [
        column
        for column in cleaned.columns
        if column != spec.target and column not in spec.schema.datetime
    ]
    mismatches = []
    for position, raw_row in enumerate(raw.to_dict(orient="records")):
        record = {column: json_value(value) for column, value in raw_row.items()}
        record.pop(spec.target)
        served, _ = rules.apply(record)
        for column in compared:
            if not same(cleaned[column].iloc[position], served.get(column)):
                mismatches.append(
                    (position, column, cleaned[column].iloc[position], served.get(column))
                )
    assert not mismatches, mismatches[:5]
    derived = set(rules.derived)
    assert derived <= set(compared)
    assert derived or not config.calendar_features


def test_every_calendar_part_matches_the_column_derivation() -> None:
    moments = pd.Series(pd.date_range("1999-12-25", "2031-01-07 23:00", freq="37h"))
    for part in ("year", "quarter", "month", "week", "day", "dayofweek", "dayofyear", "hour"):
        column = calendar_part(moments, part)  # type: ignore[arg-type]
        one_by_one = [calendar_value(moment.to_pydatetime(), part) for moment in moments]
        assert column.tolist() == one_by_one, part
    weekend = calendar_part(moments, "is_weekend").tolist()
    assert weekend == [calendar_value(m.to_pydatetime(), "is_weekend") for m in moments]


def rules_for(fills: dict[str, Any] | None = None, **clean: Any) -> RowRules:
    schema = Schema(
        numeric={"hr": {"min": 0, "max": 23}, "y": {"min": 0}},
        categorical={"season": {"values": [1, 2, 3, 4]}, "job": {"values": ["a", "b"]}},
        datetime={"day": {"format": "%Y-%m-%d"}},
    )
    spec = DatasetSpec(target="y", task="regression", schema=schema, na_values=("unknown",))
    config = CleanConfig(calendar_features={"day": ["dayofyear", "is_weekend"]}, **clean)
    return RowRules.fit(spec, config, fills)


def test_out_of_range_follows_clean_policy_and_says_so() -> None:
    clipped, warnings = rules_for().apply({"hr": -1})
    assert clipped["hr"] == 0 and warnings["hr"] == (
        OUT_OF_RANGE,
        "-1 is outside [0, 23]: clipped to 0",
    )
    nulled, warnings = rules_for(out_of_range="null").apply({"hr": 30})
    assert nulled["hr"] is None and "treated as missing" in warnings["hr"].message
    dropped, warnings = rules_for(out_of_range="drop").apply({"hr": 30})
    assert dropped["hr"] is None and "training drops such rows" in warnings["hr"].message
    kept, warnings = rules_for(out_of_range="keep").apply({"hr": 30})
    assert kept["hr"] == 30 and "scored as sent" in warnings["hr"].message
    inside, warnings = rules_for().apply({"hr": 5})
    assert inside["hr"] == 5 and warnings == {}


def test_categories_dates_markers_and_fills() -> None:
    rules = rules_for({"hr": 12.0}, unknown_category="null")
    row, warnings = rules.apply(
        {"season": "2", "job": " maybe ", "day": "2012-01-07", "hr": None, "x": "unknown"}
    )
    assert row["season"] == 2.0  # numeric categories are numbers, as clean makes them
    assert row["job"] is None and warnings["job"] == (
        UNKNOWN_CATEGORY,
        "'maybe' is not one of a, b: treated as missing",
    )
    assert row["day_dayofyear"] == 7 and row["day_is_weekend"] == 1  # a Saturday
    assert row["hr"] == 12.0  # clean's fill
    assert row["x"] is None  # a missing-value marker
    row, warnings = rules.apply({"day": "07/01/2012", "season": "spring"})
    assert row["day"] is None and row["day_dayofyear"] is None
    assert warnings["day"] == (
        UNPARSEABLE,
        "'07/01/2012' is not a date (%Y-%m-%d): treated as missing",
    )
    assert warnings["season"].message == "'spring' is not a number: treated as missing"
    kept, warnings = rules_for().apply({"job": "maybe"})
    assert kept["job"] == "maybe" and warnings == {}  # `keep`: serving then warns (unseen)


def test_the_rules_round_trip_through_json(tmp_path: Path) -> None:
    rules = rules_for(out_of_range="null")
    assert RowRules.from_dict(yaml.safe_load(yaml.safe_dump(rules.to_dict()))) == rules
