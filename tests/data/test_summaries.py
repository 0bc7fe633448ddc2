"""Mergeable summaries of the prediction log (pipeline/summaries.py): they merge in any
grouping to the summary of the whole, the check from them reaches `check_drift`'s
verdicts (and so Evidently's: tests/data/test_drift_agreement.py) on the bike, ELEC2
and bank fixtures, shifted or not, and the monitor's window takes its whole hours from
them, its edges and anything unsummarised from rows, in a parquet log and a SQL one."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.config import load_params
from pipeline.drift import (
    FEW_VALUES,
    DriftProfile,
    build_profile,
    check_drift,
    evidently_report,
    per_column_verdicts,
    profile_columns,
    wasserstein_normed,
)
from pipeline.errors import DataError
from pipeline.monitoring import read_window
from pipeline.prediction_log import PredictionLog, expire_predictions
from pipeline.schema import resolve_spec
from pipeline.sources import read_source
from pipeline.summaries import (
    ALPHA,
    EXACT_VALUES,
    HOUR,
    Summary,
    as_sketch,
    check_summary,
    check_window,
    compact_hours,
    merge_summaries,
    read_hour_summaries,
    summarise_columns,
    summarise_rows,
    summary_bytes,
    summary_from_bytes,
    wasserstein_weighted,
)
from tests.conftest import FIXTURES, REPO

START = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
DATASETS = {
    "bike": ("params.yaml", "bike_sharing_2000.csv"),
    "elec2": ("examples/elec2.params.yaml", "elec2_3000.csv"),
    "bank": ("examples/bank_marketing.params.yaml", "bank_marketing_3000.csv"),
}


def summary_of(frame: pd.DataFrame, flush_rows: int = 100) -> Summary:
    """`frame` as the log summarises it: a summary per flush of `flush_rows`, merged."""
    parts = [
        summarise_columns(
            {name: chunk[name].to_numpy() for name in chunk.columns},
            START,
            START + HOUR,
            len(chunk),
        )
        for chunk in (frame.iloc[i : i + flush_rows] for i in range(0, len(frame), flush_rows))
    ]
    return merge_summaries(parts)


def same_columns(left: Summary, right: Summary) -> None:
    assert left.rows == right.rows and set(left.columns) == set(right.columns)
    for name, column in left.columns.items():
        other = right.columns[name]
        assert (column.kind, column.exact, column.missing) == (
            other.kind,
            other.exact,
            other.missing,
        )
        assert list(column.values) == list(other.values)
        assert list(column.counts) == list(other.counts)


@pytest.fixture(scope="module")
def mixed() -> pd.DataFrame:
    """Continuous (bucketed once merged), few-valued, text and gappy columns."""
    rng = np.random.default_rng(0)
    rows = 3000
    frame = pd.DataFrame(
        {
            "wide": rng.normal(1000, 5, rows),
            "signed": rng.standard_t(3, rows),
            "few": rng.choice([0.0, 1.0, 2.5], rows),
            "colour": rng.choice(np.array(["red", "green", None], dtype=object), rows),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "signed"] = np.nan
    frame.loc[rng.random(rows) < 0.01, "wide"] = np.inf
    return frame


# --- merging ----------------------------------------------------------------------------


def test_merging_is_associative(mixed: pd.DataFrame) -> None:
    whole = summary_of(mixed, flush_rows=len(mixed))
    assert not whole.columns["wide"].exact and whole.columns["few"].exact
    by_flush = summary_of(mixed, flush_rows=100)
    parts = [summary_of(mixed.iloc[i : i + 700], 100) for i in range(0, len(mixed), 700)]
    grouped = merge_summaries([merge_summaries(parts[:2]), merge_summaries(parts[2:])])
    for merged in (by_flush, grouped, merge_summaries(parts[::-1])):
        same_columns(merged, whole)
    assert whole.columns["signed"].missing == int(mixed["signed"].isna().sum())
    assert whole.columns["wide"].missing == int(np.isinf(mixed["wide"]).sum())
    assert whole.columns["colour"].missing == int(mixed["colour"].isna().sum())


def test_few_values_stay_exact_until_the_limit() -> None:
    values = np.arange(EXACT_VALUES, dtype=float)
    exact = summary_of(pd.DataFrame({"x": values}))
    assert exact.columns["x"].exact and list(exact.columns["x"].values) == list(values)
    wider = summary_of(pd.DataFrame({"x": np.arange(EXACT_VALUES + 1, dtype=float) + 0.5}))
    assert not wider.columns["x"].exact
    middles = wider.columns["x"].values
    assert np.all(np.abs(middles - np.round(middles - 0.5) - 0.5) <= ALPHA * np.abs(middles) + 1)


def test_stored_summary_reads_back_the_same(mixed: pd.DataFrame) -> None:
    summary = summary_of(mixed)
    same_columns(summary_from_bytes(summary_bytes(summary), "x"), summary)
    with pytest.raises(DataError, match=r"summary\.parquet is not a readable log summary"):
        summary_from_bytes(b"not parquet", "summary.parquet")


# --- the statistics ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_wasserstein_from_counts_is_scipys(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = np.sort(np.round(rng.normal(size=rng.integers(1, 80)) * 2) / 2)
    current = np.round(rng.normal(0.4, 1.3, size=rng.integers(1, 60)) * 3) / 3
    values, counts = np.unique(current, return_counts=True)
    expected = stats.wasserstein_distance(reference, current)
    assert wasserstein_weighted(reference, values, counts) == pytest.approx(expected, abs=1e-12)


def test_sketch_error_stays_within_its_bound() -> None:
    rng = np.random.default_rng(1)
    reference = np.sort(rng.normal(50, 2, 5000))
    for current in (rng.normal(50.3, 2, 8000), rng.normal(50, 2.4, 8000), rng.exponential(1, 8000)):
        summary = summary_of(pd.DataFrame({"x": current}), 1000)
        column = summary.columns["x"]
        assert not column.exact
        sketched = wasserstein_weighted(reference, column.values, column.counts)
        exact = wasserstein_normed(reference, 1.0, current)
        assert abs(sketched - exact) <= ALPHA / (1 - ALPHA) * np.mean(np.abs(current))


def test_a_column_too_close_to_call_is_named() -> None:
    rng = np.random.default_rng(2)
    reference = pd.DataFrame({"x": rng.normal(1000, 1, 3000)})
    profile = build_profile(reference, ["x"], [])
    # A shift of a tenth of a deviation sits on the threshold, and |x| / std is 1000:
    # the sketch's bound (about 5 deviations) cannot tell.
    current = pd.DataFrame({"x": rng.normal(1000.1, 1, 3000)})
    checked = check_summary(profile, summary_of(current), 0.5)
    assert checked.uncertain == ("x",) and checked.bounds["x"] > 1
    decided = check_window(profile, current, pd.Series([START] * 3000), {}, 0.5)
    assert decided.result.verdicts == check_drift(profile, current).verdicts


# --- verdicts on real data --------------------------------------------------------------


def load_dataset(name: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    params_file, fixture = DATASETS[name]
    data = load_params(REPO / params_file).data
    data = data.model_copy(update={"source": str(FIXTURES / fixture)})
    frame = read_source(data).frame
    numeric, categorical = profile_columns(frame, resolve_spec(frame, data))
    return frame, numeric, categorical


def shifted(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """A third of the numerics moved by half a deviation, one category made common."""
    moved = frame.copy()
    for name in numeric[::3]:
        values = pd.to_numeric(moved[name], errors="coerce")
        moved[name] = values + 0.5 * values.std()
    if categorical:
        name = categorical[0]
        moved.loc[moved.index[::2], name] = moved[name].iloc[0]
    return moved


@pytest.fixture(scope="module", params=sorted(DATASETS))
def dataset(request: pytest.FixtureRequest) -> tuple[str, DriftProfile, dict[str, pd.DataFrame]]:
    frame, numeric, categorical = load_dataset(request.param)
    cut = int(len(frame) * 0.6)
    reference, current = frame.iloc[:cut], frame.iloc[cut:]
    windows = {
        "later rows": current,
        "shifted": shifted(current, numeric, categorical),
        "small reference": current,
    }
    profile = build_profile(reference, numeric, categorical)
    small = build_profile(reference.iloc[:500], numeric, categorical)  # K-S, chi-square, Z
    return request.param, profile, {**windows, "small": small}  # type: ignore[dict-item]


def sketched(summary: Summary, profile: DriftProfile) -> Summary:
    """The profile's numeric columns of more than a few values counted by bucket, as a
    window of more than `EXACT_VALUES` values would be (these fixtures' have fewer)."""
    columns = {
        name: as_sketch(column)
        if name in profile.numeric and column.values.size > FEW_VALUES
        else column
        for name, column in summary.columns.items()
    }
    return Summary(summary.start, summary.end, summary.rows, columns)


@pytest.mark.parametrize("sketch", [False, True], ids=["exact", "sketch"])
@pytest.mark.parametrize("window", ["later rows", "shifted", "small reference"])
def test_summaries_give_check_drifts_verdicts(dataset: tuple, window: str, sketch: bool) -> None:
    name, profile, windows = dataset
    if window == "small reference":
        profile = windows["small"]
    current = windows[window][list(profile.names)]
    ours = check_window(profile, current, pd.Series([START] * len(current)), {}, 0.5)
    expected = check_drift(profile, current, 0.5)
    assert ours.method.startswith("rows")  # no stored summaries: the rows
    summary = summary_of(current)
    if sketch:
        summary = sketched(summary, profile)
    checked = check_summary(profile, summary, 0.5)
    verdicts = checked.result.verdicts
    for column in checked.uncertain:  # decided from rows by the monitor
        verdicts[column] = expected.verdicts[column]
    assert verdicts == expected.verdicts, name
    for got, want in zip(checked.result.columns, expected.columns, strict=True):
        assert got.method == want.method
        if checked.bounds[got.column] == 0:
            assert got.statistic == pytest.approx(want.statistic, rel=1e-9, abs=1e-12)
        else:
            assert abs(got.statistic - want.statistic) <= checked.bounds[got.column]
    if window == "shifted":
        assert checked.result.drifted_columns


def test_summaries_give_evidentlys_verdicts() -> None:
    frame, numeric, categorical = load_dataset("bank")
    reference, current = frame.iloc[:1800], shifted(frame.iloc[1800:], numeric, categorical)
    profile = build_profile(reference, numeric, categorical)
    from pipeline.drift import drift_frame

    window = drift_frame(current, numeric, categorical)
    checked = check_summary(profile, summary_of(window), 0.5)
    snapshot = evidently_report(reference, current, numeric, categorical)
    assert not checked.uncertain
    assert checked.result.verdicts == per_column_verdicts(snapshot)
    assert any(checked.result.verdicts.values()) and not all(checked.result.verdicts.values())


# --- the log and the monitor's window ----------------------------------------------------


def log_rows(frame: pd.DataFrame, start: datetime, spacing: timedelta) -> list[dict]:
    return [
        {
            "request_id": f"r{position}",
            "timestamp": start + position * spacing,
            "model_version": "1",
            "inputs": {k: (None if v is None or v != v else v) for k, v in values.items()},
            "prediction": 1.0,
        }
        for position, values in enumerate(frame.to_dict(orient="records"))
    ]


@pytest.fixture(scope="module")
def served(mixed: pd.DataFrame) -> tuple[DriftProfile, pd.DataFrame]:
    """A profile and a window over 2.5 hours (from 09:20), with a shift."""
    rng = np.random.default_rng(5)
    reference = mixed.assign(colour=rng.choice(["red", "green"], len(mixed)))
    profile = build_profile(reference, ["wide", "signed", "few"], ["colour"])
    window = mixed.assign(wide=mixed["wide"] + 1.0)
    return profile, window


def write_log(location: str, window: pd.DataFrame, flushes: int = 6) -> None:
    """The window logged over 2.5 hours from 09:20, in `flushes` flushes."""
    spacing = timedelta(hours=2.5) / len(window)
    rows = log_rows(window, START + timedelta(minutes=20), spacing)
    if "://" in location:
        log = PredictionLog.sql(location, start=False)
    else:
        log = PredictionLog.parquet(Path(location), start=False)
    with log:
        for chunk in np.array_split(np.arange(len(rows)), flushes):
            log.append([rows[i] for i in chunk])
            log.flush()


@pytest.mark.parametrize("store", ["parquet", "sqlite"])
def test_window_takes_whole_hours_from_summaries(
    served: tuple[DriftProfile, pd.DataFrame], tmp_path: Path, store: str
) -> None:
    profile, frame = served
    location = str(tmp_path / "log") if store == "parquet" else f"sqlite:///{tmp_path / 'p.db'}"
    write_log(location, frame)
    end = START + timedelta(hours=2, minutes=50)  # 09:20 to 11:50: hour 10 whole
    first = read_window(location, hours=2.5, now=end)
    # The hour read was merged into one summary in the store; hour 11 was not read.
    stored = read_hour_summaries(location, [START + HOUR, START + 2 * HOUR])
    assert [len(parts) for parts in stored.values()] == [1, 2]
    checked = check_window(
        profile, first.features(profile.names), first.frame["timestamp"], first.summaries
    )
    in_hour_10 = int((first.frame["timestamp"].dt.hour == 10).sum())
    assert checked.from_summaries == in_hour_10 and checked.from_rows == first.rows - in_hour_10
    assert checked.method.startswith("summaries: ")
    expected = check_drift(profile, first.features(profile.names))
    assert checked.result.verdicts == expected.verdicts and "wide" in expected.drifted_columns
    # A window to 12:00 covers hours 10 and 11 whole.
    later = read_window(location, hours=2, now=START + timedelta(hours=3))
    again = check_window(
        profile, later.features(profile.names), later.frame["timestamp"], later.summaries
    )
    assert again.from_summaries == later.rows and again.from_rows == 0


def test_hours_without_matching_summaries_are_read_from_rows(
    served: tuple[DriftProfile, pd.DataFrame], tmp_path: Path
) -> None:
    profile, frame = served
    root = tmp_path / "log"
    write_log(str(root), frame)
    end = START + timedelta(hours=3)
    # An older log: no summaries at all.
    bare = tmp_path / "bare"
    bare.mkdir()
    for part in root.rglob("part-*.parquet"):
        (bare / part.parent.name).mkdir(exist_ok=True)
        (bare / part.parent.name / part.name).write_bytes(part.read_bytes())
    old = read_window(bare, hours=2, now=end)
    checked = check_window(
        profile, old.features(profile.names), old.frame["timestamp"], old.summaries
    )
    assert checked.method.startswith("rows: ") and checked.from_summaries == 0
    assert checked.result.verdicts == check_drift(profile, old.features(profile.names)).verdicts
    # One of hour 11's flush summaries lost: hour 11 from rows, hour 10 from summaries.
    eleven = sorted(root.rglob("summary-H11-*.parquet"))
    assert len(eleven) >= 2
    eleven[0].unlink()
    window = read_window(root, hours=2, now=end)
    checked = check_window(
        profile, window.features(profile.names), window.frame["timestamp"], window.summaries
    )
    in_hour_10 = int((window.frame["timestamp"].dt.hour == 10).sum())
    assert checked.from_summaries == in_hour_10 and checked.from_rows == window.rows - in_hour_10


@pytest.mark.parametrize("store", ["parquet", "sqlite"])
def test_two_monitors_compacting_at_once_count_each_row_once(
    served: tuple[DriftProfile, pd.DataFrame], tmp_path: Path, store: str
) -> None:
    """Two checks read the same flush summaries of an hour and both compact them; or
    one read them before a later flush and merged fewer. Either way the hour's
    summaries count its rows once, so it is still taken from summaries."""
    _, frame = served
    location = str(tmp_path / "log") if store == "parquet" else f"sqlite:///{tmp_path / 'p.db'}"
    write_log(location, frame, flushes=12)
    hour = START + 2 * HOUR  # 11:00, summarised by several flushes
    parts = read_hour_summaries(location, [hour])[hour]
    rows = sum(part.rows for part in parts)
    assert len(parts) >= 3
    # The first monitor merged all but the last flush's summary, the other two all of them
    # (the same merge, written twice), each before the other deleted anything.
    assert compact_hours(location, {hour: parts[:-1]}) == 1
    assert compact_hours(location, {hour: parts}) == 1
    assert compact_hours(location, {hour: parts}) == 1
    [merged] = read_hour_summaries(location, [hour])[hour]
    assert merged.rows == rows and set(merged.replaces) == {part.id for part in parts}


def test_a_damaged_summary_means_rows(
    served: tuple[DriftProfile, pd.DataFrame], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, frame = served
    root = tmp_path / "log"
    write_log(str(root), frame)
    next(root.rglob("summary-H10-*.parquet")).write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        window = read_window(root, hours=3, now=START + timedelta(hours=3))
    assert window.summaries == {} and "not a readable log summary" in caplog.text


def test_retention_deletes_summaries(
    served: tuple[DriftProfile, pd.DataFrame], tmp_path: Path
) -> None:
    _, frame = served
    url = f"sqlite:///{tmp_path / 'p.db'}"
    write_log(url, frame)
    hours = [START + HOUR * h for h in range(3)]
    assert set(read_hour_summaries(url, hours)) == set(hours)
    expire_predictions(url, START + timedelta(hours=1, minutes=30))
    assert set(read_hour_summaries(url, hours)) == {hours[1], hours[2]}


def test_summaries_are_per_hour_of_the_rows() -> None:
    stamps = [START + timedelta(minutes=50 * i) for i in range(4)]  # 09:00 .. 11:30
    summaries = summarise_rows(stamps, {"feature.x": np.arange(4.0)}, prefix="feature.")
    assert [(s.start.hour, s.rows) for s in summaries] == [(9, 2), (10, 1), (11, 1)]
    assert list(summaries[0].columns) == ["x"]


def test_parquet_and_sql_logs_summarise_alike(served: tuple[DriftProfile, pd.DataFrame]) -> None:
    """The parquet store summarises Arrow tables, the SQL store pandas frames."""
    from pipeline.prediction_log import FEATURE_PREFIX, log_frame, log_table
    from pipeline.summaries import summarise_frame, summarise_table

    _, frame = served
    rows = log_rows(frame.iloc[:500], START + timedelta(minutes=50), timedelta(seconds=20))
    by_arrow = summarise_table(log_table(rows), FEATURE_PREFIX)
    by_pandas = summarise_frame(log_frame(rows), FEATURE_PREFIX)
    assert [(s.start - START, s.rows) for s in by_arrow] == [
        (HOUR * hour, rows) for hour, rows in enumerate([30, 180, 180, 110])
    ]
    for arrow, pandas in zip(by_arrow, by_pandas, strict=True):
        same_columns(arrow, pandas)


@pytest.mark.parametrize("categorical", [True, False], ids=["as categories", "as numbers"])
def test_a_boolean_column_gets_check_drifts_verdict(categorical: bool) -> None:
    """A yes/no feature is summarised as the check names it ("True", "False"), through
    the arrays of a flush and through the Arrow table the log writes, whether the
    profile compares it as categories or as 0 and 1."""
    import pyarrow as pa

    from pipeline.summaries import summarise_table

    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"b": rng.random(2000) < 0.3})
    profile = build_profile(reference, [] if categorical else ["b"], ["b"] if categorical else [])
    for share in (0.3, 0.7):  # the same mix, then a flipped one
        current = pd.DataFrame({"b": rng.random(600) < share})
        expected = check_drift(profile, current, 0.5).verdicts
        from_arrays = check_summary(profile, summary_of(current), 0.5).result.verdicts
        table = pa.table(
            {
                "timestamp": pa.array([START] * len(current), pa.timestamp("us", tz="UTC")),
                "f_b": pa.array(current["b"].tolist(), pa.bool_()),
            }
        )
        [from_table] = summarise_table(table, "f_")
        assert from_arrays == expected == check_summary(profile, from_table, 0.5).result.verdicts
        assert expected == {"b": share == 0.7}
