"""The expectation suite built from the bike schema, run for real by Great Expectations."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.config import load_params
from pipeline.quality import build_checks
from pipeline.schema import resolve_spec
from pipeline.stages.validate import validate
from tests.conftest import FIXTURES, REPO

PARAMS = load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def bike() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "bike_sharing_2000.csv")


def test_suite_covers_every_rule_the_schema_implies(bike: pd.DataFrame) -> None:
    spec = resolve_spec(bike, PARAMS.data)
    checks = build_checks(spec, bike, PARAMS.validation)
    rules = {(check.rule, check.expectation, check.column) for check in checks}
    assert ("columns", "ExpectColumnToExist", "temp") in rules
    assert ("target", "ExpectColumnValuesToNotBeNull", "cnt") in rules
    assert ("key", "ExpectColumnValuesToBeUnique", "instant") in rules
    assert ("range", "ExpectColumnValuesToBeBetween", "hum") in rules
    assert ("category", "ExpectColumnValuesToBeInSet", "weathersit") in rules
    assert ("datetime", "ExpectColumnValuesToMatchStrftimeFormat", "dteday") in rules
    assert ("required", "ExpectColumnValuesToNotBeNull", "season") in rules
    assert ("missing", "ExpectColumnValuesToNotBeNull", "temp") in rules
    assert not any(check.column in ("casual", "registered") for check in checks)


def test_real_bike_slice_meets_every_expectation(bike: pd.DataFrame, tmp_path) -> None:
    spec = resolve_spec(bike, PARAMS.data)
    report = validate(bike, spec, PARAMS.validation, docs_dir=tmp_path / "docs")
    assert report.passed and not report.warnings
    assert report.figures()["passed"] == report.figures()["expectations"]
    assert (tmp_path / "docs" / "index.html").exists()
    json.dumps(report.summary())  # the summary is plain JSON


def test_out_of_range_and_unknown_category_warn_without_stopping(bike: pd.DataFrame) -> None:
    drifted = bike.copy()
    drifted.loc[:9, "hum"] = 1.4
    drifted.loc[:4, "weathersit"] = 7
    spec = resolve_spec(drifted, PARAMS.data)
    report = validate(drifted, spec, PARAMS.validation)
    assert report.passed
    warned = {outcome.check.column: outcome.observed for outcome in report.warnings}
    assert warned["hum"].startswith("10 of 2000 rows unexpected, e.g. [1.4]")
    assert warned["weathersit"].startswith("5 of 2000 rows unexpected, e.g. [7]")


def test_severity_is_set_by_params(bike: pd.DataFrame) -> None:
    strict = PARAMS.validation.model_copy(
        update={"severity": PARAMS.validation.severity.model_copy(update={"range": "critical"})}
    )
    drifted = bike.assign(temp=bike["temp"] + 1)
    report = validate(drifted, resolve_spec(drifted, PARAMS.data), strict)
    assert not report.passed
    (failure,) = report.critical_failures
    assert failure.describe().startswith(
        "column 'temp': ExpectColumnValuesToBeBetween(min_value=0.0, max_value=1.0)"
    )


def test_a_target_outside_its_declared_range_stops_the_run(bike: pd.DataFrame) -> None:
    wrong = bike.copy()
    wrong.loc[:2, "cnt"] = -5  # params: cnt {min: 0}
    report = validate(wrong, resolve_spec(wrong, PARAMS.data), PARAMS.validation)
    assert not report.passed
    (failure,) = report.critical_failures
    assert failure.check.rule == "target"
    assert failure.describe().startswith("column 'cnt': ExpectColumnValuesToBeBetween(min_value=0")
