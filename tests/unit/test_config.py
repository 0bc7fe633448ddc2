"""params.yaml: the shipped file loads, and every bad value names its key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params, parse_params
from pipeline.errors import ConfigError
from tests.conftest import REPO

SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(path: str, value: object) -> dict:
    params = copy.deepcopy(SHIPPED)
    *parents, leaf = path.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return params


def test_shipped_params_load() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "builtin:bike_sharing"
    assert params.data.target == "cnt"
    assert params.split.fractions.train == pytest.approx(0.7)
    assert "casual" in params.data.schema_.drop


def test_source_and_target_alone_are_enough() -> None:
    params = parse_params({"data": {"source": "x.csv", "target": "y"}})
    assert params.data.task is None and params.data.schema_ is None
    assert params.split.method == "auto"
    assert params.validation.min_rows == 100


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("split.fractions.train", 0.8, "split.fractions"),
        ("split.fractions.test", -0.1, "split.fractions.test"),
        ("split.method", "shuffle", "split.method"),
        ("split.seed", "abc", "split.seed"),
        ("data.task", "ranking", "data.task"),
        ("data.target", None, "data.target"),
        ("validate.min_rows", 0, "validate.min_rows"),
        ("validate.severity.range", "fatal", "validate.severity.range"),
        ("clean.out_of_range", "wrap", "clean.out_of_range"),
        ("clean.calendar_features", {"dteday": ["fortnight"]}, "clean.calendar_features.dteday.0"),
        ("data.schema.numeric.temp", {"min": 2, "max": 1}, "data.schema.numeric.temp"),
        ("data.csv.delimiter", ";;", "data.csv"),
        ("data.source", "postgresql://localhost/db", "data"),
        ("split.sede", 1, "split.sede"),
        ("trian", {}, "trian"),
    ],
)
def test_bad_value_names_its_key(key: str, value: object, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(with_change(key, value))
    assert f"{named}:" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_time_split_needs_a_time_column() -> None:
    params = with_change("data.time_column", None)
    params["split"]["method"] = "time"
    with pytest.raises(ConfigError, match=r"data\.time_column"):
        parse_params(params)


def test_column_in_two_groups_is_refused() -> None:
    params = with_change("data.schema.drop", ["casual", "registered", "temp"])
    with pytest.raises(ConfigError, match=r"'temp' is listed under both numeric and drop"):
        parse_params(params)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no such params file"),
        ("data: [unclosed", "not valid YAML at line 1"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_unreadable_params_file(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_a_hold_out_date_needs_a_time_column_and_a_date() -> None:
    params = with_change("data.time_column", None)
    params["split"]["method"] = "random"
    params["data"]["until"] = "2012-10-31"
    with pytest.raises(
        ConfigError, match=r"data\.until holds rows out by time, so data\.time_column"
    ):
        parse_params(params)
    with pytest.raises(ConfigError, match=r"data\.until:"):
        parse_params(with_change("data.until", "the summer"))
