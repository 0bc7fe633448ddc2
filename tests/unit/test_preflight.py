"""check-params: params checked against the data before any work, every problem at once."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import preflight
from pipeline.cli import app
from pipeline.config import parse_params
from pipeline.errors import ConfigError
from tests.conftest import FIXTURES, REPO

SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


def pointed_at(source: Path | str, target: str, **data: object) -> dict:
    """The shipped (bike) params with only the source and target changed: the new user's
    first attempt on their own data."""
    params = copy.deepcopy(SHIPPED)
    params["data"].update(source=str(source), target=target, **data)
    return params


def check_problems(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        preflight.check(parse_params(raw))
    return str(caught.value)


def test_the_shipped_params_fit_the_builtin_data() -> None:
    checked = preflight.check(parse_params(copy.deepcopy(SHIPPED)))
    assert checked["task"] == "regression"
    assert "dteday" in checked["columns"]
    assert checked["time_range"][0].startswith("2011-01-01")


@pytest.mark.parametrize(
    ("example", "fixture"),
    [
        ("elec2.params.yaml", "elec2_3000.csv"),
        ("bank_marketing.params.yaml", "bank_marketing_3000.csv"),
    ],
)
def test_the_example_params_fit_their_data(example: str, fixture: str) -> None:
    raw = yaml.safe_load((REPO / "examples" / example).read_text())
    raw["data"]["source"] = str(FIXTURES / fixture)
    checked = preflight.check(parse_params(raw))
    assert checked["task"] == "binary"


def test_every_bike_leftover_is_named_in_one_line() -> None:
    message = check_problems(pointed_at(FIXTURES / "elec2_3000.csv", "class"))
    assert "\n" not in message
    for key in (
        "data.time_column: dteday",
        "data.key_columns: instant",
        "data.slice_columns: season, weathersit, workingday",
        "data.schema.numeric: cnt",
        "data.schema.categorical: season",
        "data.schema.datetime: dteday",
        "clean.calendar_features: dteday",
        "evaluate.baseline_groups: weekday, hr",
        "monitor.calendar_columns: yr, mnth, season",
        "data.task: regression, but target 'class' holds text",
        "evaluate.primary_metric: rmse is not a binary metric",
        "evaluate.floors: r2 not a binary metric",
    ):
        assert key in message, key
    assert "the data's columns are date, day, period" in message


def test_a_metric_of_another_task_is_refused_when_the_task_is_inferred() -> None:
    raw = pointed_at(FIXTURES / "bank_marketing_3000.csv", "y", task=None)
    raw["data"].update(time_column=None, until=None, key_columns=[], slice_columns=[], schema=None)
    raw["data"]["csv"]["delimiter"] = ";"
    raw["clean"]["calendar_features"] = {}
    raw["evaluate"].update(baseline_groups=None)
    raw["monitor"].update(calendar_columns=[])
    message = check_problems(raw)
    assert message.startswith("evaluate.primary_metric: rmse is not a binary metric")
    assert "evaluate.floors: r2" in message


@pytest.mark.parametrize(
    ("until", "says"),  # the fixture runs from 2011-01-01 to 2011-03-29
    [
        ("2000-06-30", "holds every row out (the data runs from 2011-01-01 to 2011-03-29)"),
        ("2011-03-29", "holds no row out"),
        ("2011-03-28", None),
        ("2012-03-31", "holds no row out"),
    ],
)
def test_until_must_fall_inside_the_data(until: str, says: str | None) -> None:
    raw = pointed_at(FIXTURES / "bike_sharing_2000.csv", "cnt", until=until)
    if says is None:  # the last day is held out
        preflight.check(parse_params(raw))
        return
    message = check_problems(raw)
    assert message.startswith(f"data.until: {until} {says}")


def test_until_inside_the_data_passes() -> None:
    raw = pointed_at(FIXTURES / "bike_sharing_2000.csv", "cnt", until="2011-03-01")
    assert preflight.check(parse_params(raw))["time_range"][1].startswith("2011-03-29")


def test_a_declared_task_is_not_second_guessed_by_inference(tmp_path: Path) -> None:
    """A text target with many classes cannot be inferred, but `task: multiclass` says
    what it is (ingest accepts it): check must not stop on it."""
    frame = pd.DataFrame({"x": range(300), "label": [f"c{i % 30}" for i in range(300)]})
    frame.to_csv(tmp_path / "many.csv", index=False)
    raw = {"data": {"source": str(tmp_path / "many.csv"), "target": "label"}}
    raw["data"]["task"] = "multiclass"
    assert preflight.check(parse_params(raw))["task"] == "multiclass"


def test_a_binary_task_with_three_classes_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": range(30), "label": ["a", "b", "c"] * 10})
    frame.to_csv(tmp_path / "three.csv", index=False)
    raw = {"data": {"source": str(tmp_path / "three.csv"), "target": "label", "task": "binary"}}
    message = check_problems(raw)
    assert message.startswith("data.task: binary, but target 'label' has 3 values: set multiclass")


def test_parquet_is_checked_from_its_header(tmp_path: Path) -> None:
    pd.read_csv(FIXTURES / "bike_sharing_2000.csv").to_parquet(tmp_path / "bike.parquet")
    raw = pointed_at(
        tmp_path / "bike.parquet", "cnt", slice_columns=["season", "station"], until=None
    )
    assert check_problems(raw) == (
        "data.slice_columns: station not in the data; the data's columns are instant, dteday, "
        "season, yr, mnth, hr, holiday, weekday, workingday, weathersit, temp, atemp, hum, "
        "windspeed, casual, registered, cnt"
    )


def test_a_sql_source_is_checked_against_the_pinned_schema(tmp_path: Path) -> None:
    database = tmp_path / "rides.db"
    with sqlite3.connect(database) as connection:
        pd.read_csv(FIXTURES / "bike_sharing_2000.csv").to_sql("rides", connection)
    raw = pointed_at(f"sqlite:///{database}", "cnt", query="SELECT * FROM rides")
    preflight.check(parse_params(raw))  # not queried; every name is in the pinned schema
    raw["data"]["key_columns"] = ["ride_id"]
    assert check_problems(raw) == "data.key_columns: ride_id not in the pinned schema"


def test_check_params_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(pointed_at(FIXTURES / "elec2_3000.csv", "class")))
    result = CliRunner().invoke(app, ["check-params", "--params", str(params)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: data.time_column: dteday not in the data")
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_check_params_says_what_it_checked(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "examples" / "elec2.params.yaml").read_text())
    raw["data"]["source"] = str(FIXTURES / "elec2_3000.csv")
    params.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["check-params", "--params", str(params)])
    assert result.exit_code == 0, result.stderr
    assert "task binary, metric roc_auc" in result.stdout


def test_a_params_file_without_the_sections_dvc_needs_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config fills in defaults, but DVC stops a stage whose declared param is
    missing: check says so first, naming every key."""
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text("data:\n  source: builtin:bike_sharing\n  target: cnt\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["check-params"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: params.yaml: dvc.yaml's stages read clean, compress")
    assert "validate, which it lacks: `driftline init SOURCE --target COLUMN`" in result.stderr
    assert len(result.stderr.splitlines()) == 1
