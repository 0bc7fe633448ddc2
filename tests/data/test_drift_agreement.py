"""The monitor's drift check and Evidently's DataDriftPreset reach the same verdict for
every column, on the real bike data: the seasons drifting, injected shifts, and small
references (the statistical tests). No network: the data is the packaged copy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_params
from pipeline.drift import (
    DriftResult,
    build_profile,
    check_drift,
    evidently_report,
    per_column_verdicts,
    profile_columns,
    reported_drift,
    reported_share,
)
from pipeline.schema import resolve_spec
from pipeline.sources import read_source
from tests.conftest import FIXTURES, REPO

PARAMS = load_params(REPO / "params.yaml")
# Few-valued numerics, so that every method Evidently picks is met on real rows.
EXTRA_NUMERIC = ["weekend", "quarter"]


@dataclass
class Case:
    name: str
    reference: pd.DataFrame
    current: pd.DataFrame


@dataclass
class Outcome:
    ours: DriftResult
    snapshot: object


def with_extra_numerics(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(
        weekend=frame["weekday"].isin([0, 6]).astype(float),
        quarter=((frame["mnth"] - 1) // 3).astype(float),
    )


@pytest.fixture(scope="module")
def bike() -> pd.DataFrame:
    return with_extra_numerics(read_source(PARAMS.data).frame)


@pytest.fixture(scope="module")
def columns(bike: pd.DataFrame) -> tuple[list[str], list[str]]:
    numeric, categorical = profile_columns(bike, resolve_spec(bike, PARAMS.data))
    assert set(EXTRA_NUMERIC) <= set(numeric)
    return numeric, categorical


def injected(frame: pd.DataFrame) -> pd.DataFrame:
    """A window with shifts a monitor must catch, and holes it must ignore."""
    rng = np.random.default_rng(3)
    shifted = frame.copy()
    shifted["hum"] = (shifted["hum"] + 0.15).clip(upper=1.0)
    shifted["windspeed"] = shifted["windspeed"] * 1.6
    stormy = rng.random(len(shifted)) < 0.3
    shifted.loc[stormy, "weathersit"] = 3
    shifted.loc[rng.random(len(shifted)) < 0.05, "temp"] = np.nan
    shifted.loc[rng.random(len(shifted)) < 0.02, "season"] = None
    return shifted


@pytest.fixture(scope="module")
def cases(bike: pd.DataFrame) -> dict[str, Case]:
    fixture = with_extra_numerics(pd.read_csv(FIXTURES / "bike_sharing_2000.csv"))
    first_year = bike[bike["yr"] == 0]
    sample = first_year.sample(n=4000, random_state=1)
    rest = first_year.drop(sample.index)
    return {
        # Spring and summer 2011 against summer 2012: the seasons and the year drift.
        "seasons": Case("seasons", bike.iloc[:4000], bike.iloc[13000:15000]),
        # The 2,000-row fixture: January to February against March.
        "fixture": Case("fixture", fixture.iloc[:1200], fixture.iloc[1200:]),
        # The same year, drawn apart, with shifts injected into the window.
        "injected": Case("injected", sample, injected(rest.sample(n=2500, random_state=2))),
        "same period": Case("same period", sample, rest.sample(n=2500, random_state=4)),
        # References of at most 1000 rows: K-S, chi-square and Z-tests.
        "small seasons": Case("small seasons", fixture.iloc[:600], fixture.iloc[1400:]),
        "small injected": Case(
            "small injected", sample.iloc[:800], injected(rest.sample(n=700, random_state=5))
        ),
        "small same period": Case(
            "small same period", sample.iloc[:1000], rest.sample(n=500, random_state=6)
        ),
    }


@pytest.fixture(scope="module")
def outcomes(cases: dict[str, Case], columns: tuple[list[str], list[str]]) -> dict[str, Outcome]:
    numeric, categorical = columns
    results = {}
    for name, case in cases.items():
        profile = build_profile(case.reference, numeric, categorical)
        results[name] = Outcome(
            ours=check_drift(profile, case.current, drift_share=0.5),
            snapshot=evidently_report(case.reference, case.current, numeric, categorical),
        )
    return results


CASES = [
    "seasons",
    "fixture",
    "injected",
    "same period",
    "small seasons",
    "small injected",
    "small same period",
]


@pytest.mark.parametrize("case", CASES)
def test_every_column_gets_evidentlys_verdict(outcomes: dict[str, Outcome], case: str) -> None:
    outcome = outcomes[case]
    assert outcome.ours.verdicts == per_column_verdicts(outcome.snapshot)
    assert outcome.ours.share == reported_share(outcome.snapshot)


@pytest.mark.parametrize("case", CASES)
def test_same_method_and_statistic_per_column(outcomes: dict[str, Outcome], case: str) -> None:
    reported = reported_drift(outcomes[case].snapshot)
    for column in outcomes[case].ours.columns:
        theirs = reported[column.column]
        assert (column.method, column.threshold) == (theirs.method, theirs.threshold)
        assert column.statistic == pytest.approx(theirs.statistic, rel=1e-9, abs=1e-12)


def test_cases_cover_every_method_and_both_verdicts(outcomes: dict[str, Outcome]) -> None:
    methods = {column.method for outcome in outcomes.values() for column in outcome.ours.columns}
    assert methods == {"wasserstein", "jensenshannon", "ks", "chisquare", "z"}
    for case in ("seasons", "fixture", "injected", "small seasons", "small injected"):
        verdicts = set(outcomes[case].ours.verdicts.values())
        assert verdicts == {True, False}, f"{case}: every column got the same verdict"


def test_drift_is_found_where_it_was_put(outcomes: dict[str, Outcome]) -> None:
    seasons = outcomes["seasons"].ours
    assert {"yr", "season", "temp", "mnth", "quarter"} <= set(seasons.drifted_columns)
    assert seasons.verdicts["hr"] is False and seasons.dataset_drift
    for case in ("injected", "small injected"):
        drifted = set(outcomes[case].ours.drifted_columns)
        assert {"hum", "windspeed", "weathersit"} <= drifted, case
        assert "hr" not in drifted and not outcomes[case].ours.dataset_drift
    assert not outcomes["same period"].ours.drifted_columns


def test_report_keeps_the_prediction_out_of_the_share(
    cases: dict[str, Case], columns: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    numeric, categorical = columns
    case = cases["fixture"]
    reference = case.reference.assign(prediction=case.reference["cnt"] * 1.0)
    current = case.current.assign(prediction=case.current["cnt"] * 1.3)
    snapshot = evidently_report(reference, current, numeric, categorical, prediction="prediction")
    profile = build_profile(reference, numeric, categorical)
    ours = check_drift(profile, current)
    verdicts = per_column_verdicts(snapshot)
    assert verdicts.pop("prediction") is True
    assert verdicts == ours.verdicts
    assert reported_share(snapshot) == ours.share
    snapshot.save_html(str(tmp_path / "drift.html"))
    snapshot.save_json(str(tmp_path / "drift.json"))
    assert (tmp_path / "drift.html").stat().st_size > 0
    assert json.loads((tmp_path / "drift.json").read_text())["metrics"]
