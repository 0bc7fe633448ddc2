"""The drift check's pure functions on small frames: statistics against scipy, the
rules that pick a method, missing values, the decision, the profile on disk, errors;
and the drift rule (pipeline/drift_rule.py): column roles, importance weights,
prediction drift, the recorded table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from pipeline.config import CategoricalColumn, NumericColumn, Schema
from pipeline.drift import (
    ColumnDrift,
    DriftProfile,
    build_profile,
    check_drift,
    chi_square_p_value,
    drift_frame,
    is_drift,
    jensen_shannon,
    ks_p_value,
    profile_columns,
    read_profile,
    wasserstein_normed,
    write_profile,
    z_test_p_value,
)
from pipeline.drift_rule import (
    calendar_aligned,
    column_roles,
    column_weights,
    prediction_drift,
    prediction_profile,
    rule_text,
    seasonal_reference,
    weigh_drift,
)
from pipeline.errors import DataError
from pipeline.importance import FeatureImportance
from pipeline.schema import DatasetSpec
from tests.conftest import REPO

RNG = np.random.default_rng(7)


def normal(rows: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=shift, size=rows)


def choice(values: list, rows: int, shares: list[float] | None = None, seed: int = 0):
    return np.random.default_rng(seed).choice(np.array(values, dtype=object), rows, p=shares)


# --- statistics -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        ([0.0, 1.0, 3.0], [5.0, 6.0, 8.0]),
        ([1.0, 1.0, 1.0, 2.0], [1.0, 2.0, 2.0]),  # ties inside and across the samples
        ([3.0], [1.0, 2.0, 3.0, 3.0, 3.0]),
        (normal(50).round(1).tolist(), normal(70, 0.3, seed=1).round(1).tolist()),
        (normal(300).tolist(), normal(20, 1.0, seed=2).tolist()),
    ],
)
def test_wasserstein_is_scipys_to_the_last_bit(reference: list, current: list) -> None:
    std = float(np.std(reference))
    expected = stats.wasserstein_distance(reference, current) / max(std, 0.001)
    assert wasserstein_normed(np.sort(reference), std, np.array(current)) == expected


def test_wasserstein_norm_has_a_floor_for_a_constant_reference() -> None:
    assert wasserstein_normed(np.array([2.0, 2.0]), 0.0, np.array([2.0, 2.001])) == pytest.approx(
        0.5
    )


def test_jensen_shannon_is_scipys() -> None:
    reference, current = np.array([10, 20, 30, 0]), np.array([5, 5, 5, 5])
    expected = distance.jensenshannon(reference / 60, current / 20)
    assert jensen_shannon(reference, current) == pytest.approx(expected, rel=1e-12)
    assert jensen_shannon(reference, reference * 3) == pytest.approx(0.0, abs=1e-12)


def test_chi_square_fits_current_counts_to_reference_shares() -> None:
    reference, current = np.array([30, 50, 20]), np.array([12, 15, 13])
    expected = stats.chisquare(current, reference * 40 / 100).pvalue
    assert chi_square_p_value(reference, current) == pytest.approx(expected, rel=1e-12)
    # A value the reference never held: Evidently's expected count is 0, so p = 0.
    assert chi_square_p_value(np.array([5, 5, 0]), np.array([4, 4, 2])) == 0.0


def test_z_test_is_the_two_proportion_test() -> None:
    reference, current = np.array([300, 700]), np.array([50, 50])
    p1, p2 = 0.7, 0.5
    pooled = (700 + 50) / 1100
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / 1000 + 1 / 100))
    expected = 2 * stats.norm.sf(abs(z))
    assert z_test_p_value(reference, current) == pytest.approx(expected, rel=1e-9)
    assert z_test_p_value(np.array([0, 9]), np.array([0, 4])) == 1.0  # one same value


def test_ks_is_scipys_two_sample_test() -> None:
    reference, current = normal(200), normal(150, 0.4, seed=3)
    expected = stats.ks_2samp(reference, current).pvalue
    assert ks_p_value(np.sort(reference), current) == expected


@pytest.mark.parametrize(
    ("method", "statistic", "threshold", "drifted"),
    [
        ("wasserstein", 0.1, 0.1, True),
        ("jensenshannon", 0.0999, 0.1, False),
        ("ks", 0.05, 0.05, True),
        ("chisquare", 0.05, 0.05, False),
        ("z", 0.049, 0.05, True),
    ],
)
def test_each_method_compares_as_evidently_does(
    method: str, statistic: float, threshold: float, drifted: bool
) -> None:
    assert is_drift(method, statistic, threshold) is drifted


# --- which method -----------------------------------------------------------------------


def method_of(reference: pd.Series, current: pd.Series, kind: str) -> str:
    numeric, categorical = (["x"], []) if kind == "numeric" else ([], ["x"])
    profile = build_profile(pd.DataFrame({"x": reference}), numeric, categorical)
    return check_drift(profile, pd.DataFrame({"x": current})).columns[0].method


@pytest.mark.parametrize(
    ("rows", "values", "kind", "expected"),
    [
        (1001, None, "numeric", "wasserstein"),
        (1000, None, "numeric", "ks"),
        (1001, [1.0, 2.0, 3.0], "numeric", "jensenshannon"),
        (1000, [1.0, 2.0, 3.0], "numeric", "chisquare"),
        (1000, [0.0, 1.0], "numeric", "z"),
        (1000, [4.0], "numeric", "z"),
        (1001, ["a", "b", "c"], "categorical", "jensenshannon"),
        (1001, ["a", "b"], "categorical", "jensenshannon"),
        (1000, ["a", "b", "c"], "categorical", "chisquare"),
        (1000, ["a", "b"], "categorical", "z"),
    ],
)
def test_method_follows_reference_rows_and_distinct_values(
    rows: int, values: list | None, kind: str, expected: str
) -> None:
    if values is None:
        reference, current = normal(rows), normal(300, seed=1)
    else:
        reference, current = choice(values, rows), choice(values, 300, seed=1)
    if kind == "numeric":
        reference, current = reference.astype(float), current.astype(float)
    assert method_of(pd.Series(reference), pd.Series(current), kind) == expected


def test_distinct_values_count_reference_and_current_together() -> None:
    """Five values in the reference and a sixth in the window: no longer 'few values'."""
    reference = pd.Series(choice([1.0, 2.0, 3.0, 4.0, 5.0], 2000)).astype(float)
    assert method_of(reference, pd.Series([1.0, 2.0, 5.0]), "numeric") == "jensenshannon"
    assert method_of(reference, pd.Series([1.0, 2.0, 6.0]), "numeric") == "wasserstein"
    small = reference.head(500)
    assert method_of(small, pd.Series([1.0, 2.0, 5.0]), "numeric") == "chisquare"
    assert method_of(small, pd.Series([1.0, 2.0, 6.0]), "numeric") == "ks"
    # Two values in each, three together: chi-square, not Z.
    assert method_of(pd.Series(["a", "b"] * 100), pd.Series(["b", "c"]), "categorical") == (
        "chisquare"
    )


def test_reference_rows_are_counted_after_gaps_are_dropped() -> None:
    """1005 rows of which 10 are gaps is a reference of 995: the statistical tests."""
    values = normal(1005)
    values[:5], values[5:10] = np.nan, np.inf
    assert method_of(pd.Series(values), pd.Series(normal(100, seed=1)), "numeric") == "ks"
    assert method_of(pd.Series(values[10:]), pd.Series(normal(100, seed=1)), "numeric") == "ks"
    assert method_of(pd.Series(normal(1011)), pd.Series(normal(9, seed=1)), "numeric") == (
        "wasserstein"
    )


# --- values -----------------------------------------------------------------------------


def test_gaps_and_infinities_in_the_window_are_left_out() -> None:
    reference = pd.DataFrame({"x": normal(2000), "c": choice(["a", "b", "c"], 2000)})
    profile = build_profile(reference, ["x"], ["c"])
    window = pd.DataFrame({"x": normal(500, 0.2, seed=1), "c": choice(["a", "b"], 500, seed=1)})
    holed = window.copy()
    holed.loc[::7, "x"] = np.nan
    holed.loc[::11, "x"] = -np.inf
    holed.loc[::5, "c"] = None
    kept = pd.DataFrame(
        {
            "x": window["x"].where(holed["x"].notna() & np.isfinite(holed["x"])),
            "c": window["c"].where(holed["c"].notna()),
        }
    )
    expected = check_drift(profile, kept.dropna(subset=["x"]))
    assert check_drift(profile, holed).columns[0] == expected.columns[0]
    assert check_drift(profile, holed).columns[1].statistic == pytest.approx(
        check_drift(profile, kept.dropna(subset=["c"])).columns[1].statistic, rel=1e-12
    )


def test_one_category_whatever_its_type() -> None:
    """1, 1.0 and "1" are one category, as the model sees them."""
    reference = pd.DataFrame({"c": [1, 2, 3, 1] * 300})
    profile = build_profile(reference, [], ["c"])
    for window in ([1.0, 2.0, 3.0, 1.0], ["1", "2", "3", "1"]):
        result = check_drift(profile, pd.DataFrame({"c": window * 100}))
        assert result.columns[0].statistic == pytest.approx(0.0, abs=1e-12)
        assert not result.dataset_drift


def test_drift_frame_converts_without_changing_its_input() -> None:
    frame = pd.DataFrame(
        {"x": ["1.5", "oops", None], "c": [1.0, 2, None], "ok": [True, False, True]}
    )
    copy = frame.copy()
    prepared = drift_frame(frame, ["x", "ok"], ["c"])
    pd.testing.assert_frame_equal(frame, copy)
    assert prepared["x"].tolist()[0] == 1.5 and prepared["x"].isna().tolist()[1:] == [True, True]
    assert prepared["c"].tolist()[:2] == ["1", "2"] and pd.isna(prepared["c"].iloc[2])
    assert prepared["ok"].tolist() == [1.0, 0.0, 1.0]


# --- the decision -----------------------------------------------------------------------


def four_columns(rows: int = 2000) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": normal(rows, seed=1),
            "b": normal(rows, seed=2),
            "c": choice(["x", "y", "z"], rows, seed=3),
            "d": choice(["x", "y", "z"], rows, seed=4),
        }
    )


def half_drifted() -> tuple[DriftProfile, pd.DataFrame]:
    profile = build_profile(four_columns(), ["a", "b"], ["c", "d"])
    window = four_columns(800)
    window["a"] += 1.0
    window["c"] = choice(["x", "y", "z"], 800, [0.8, 0.1, 0.1], seed=5)
    return profile, window


@pytest.mark.parametrize(("drift_share", "decided"), [(0.5, True), (0.49, True), (0.51, False)])
def test_dataset_drifts_when_the_share_reaches_drift_share(
    drift_share: float, decided: bool
) -> None:
    profile, window = half_drifted()
    result = check_drift(profile, window, drift_share=drift_share)
    assert result.drifted_columns == ("a", "c")
    assert result.share == 0.5
    assert result.dataset_drift is decided


def test_result_is_plain_json() -> None:
    profile, window = half_drifted()
    body = json.loads(json.dumps(check_drift(profile, window).to_dict()))
    assert body["dataset_drift"] is True and body["number_of_drifted_columns"] == 2
    columns = {column["column"]: column for column in body["columns"]}
    assert columns["a"]["method"] == "wasserstein" and columns["a"]["threshold"] == 0.1
    assert columns["b"]["drifted"] is False and columns["c"]["kind"] == "categorical"


def test_the_window_is_not_changed() -> None:
    profile, window = half_drifted()
    copy = window.copy()
    check_drift(profile, window)
    pd.testing.assert_frame_equal(window, copy)


# --- the profile ------------------------------------------------------------------------


def test_profile_round_trips_through_its_folder(tmp_path: Path) -> None:
    profile, window = half_drifted()
    small = build_profile(four_columns(300), ["a", "b"], ["c", "d"])
    for name, original in (("large", profile), ("small", small)):
        write_profile(original, tmp_path / name)
        loaded = read_profile(tmp_path / name)
        assert loaded.names == original.names and loaded.numeric == ("a", "b")
        for before, after in zip(original.columns, loaded.columns, strict=True):
            assert (before.kind, before.rows, before.distinct) == (
                after.kind,
                after.rows,
                after.distinct,
            )
            assert before.value_counts == after.value_counts and before.std == after.std
            if before.sorted_values is not None:
                assert np.array_equal(before.sorted_values, after.sorted_values)
        assert check_drift(loaded, window) == check_drift(original, window)
    assert sorted(path.name for path in (tmp_path / "large").iterdir()) == [
        "profile.json",
        "values_0000.npy",
        "values_0001.npy",
    ]


def test_writing_replaces_the_folder_whole(tmp_path: Path) -> None:
    profile, _ = half_drifted()
    folder = tmp_path / "drift_profile"
    folder.mkdir()
    (folder / "stale.npy").write_bytes(b"old")
    write_profile(profile, folder)
    assert not (folder / "stale.npy").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["drift_profile"]


def test_profile_columns_are_the_model_features() -> None:
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "day": ["2024-01-01", "2024-01-02", "2024-01-03"],
            "temp": [0.1, 0.2, 0.3],
            "colour": ["red", "blue", "red"],
            "empty": [np.nan, np.nan, np.nan],
            "y": [1.0, 2.0, 3.0],
        }
    )
    schema = Schema(
        numeric={"temp": NumericColumn(), "y": NumericColumn()},
        categorical={"colour": CategoricalColumn()},
        id=["id"],
    )
    spec = DatasetSpec(target="y", task="regression", schema=schema, time_column="day")
    assert profile_columns(frame, spec) == (["temp"], ["colour"])  # "empty" never filled


def test_importing_the_check_does_not_import_evidently() -> None:
    code = "import sys, pipeline.drift; print('evidently' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


# --- errors -----------------------------------------------------------------------------


def test_window_without_a_profile_column_names_it() -> None:
    profile, window = half_drifted()
    with pytest.raises(DataError, match=r"current window lacks column\(s\) .*: b, d$"):
        check_drift(profile, window.drop(columns=["b", "d"]))


def test_empty_window_is_refused() -> None:
    profile, window = half_drifted()
    with pytest.raises(DataError, match="the current window has no rows"):
        check_drift(profile, window.head(0))


@pytest.mark.parametrize("column", ["b", "d"])
def test_a_column_with_no_values_in_the_window_has_drifted(column: str) -> None:
    # A feature that stopped arriving (numeric b, categorical d) is drift, not an error.
    profile, window = half_drifted()
    window[column] = np.nan if column == "b" else None
    result = check_drift(profile, window)
    [verdict] = [v for v in result.columns if v.column == column]
    assert (verdict.method, verdict.drifted) == ("empty", True)
    assert result.drifted_columns == tuple(sorted(("a", "c", column)))
    assert result.share == 0.75
    json.dumps(result.to_dict(), allow_nan=False)  # plain JSON still


def test_reference_column_with_no_values_is_refused() -> None:
    with pytest.raises(DataError, match="column 'x' has no numeric values in the reference"):
        build_profile(pd.DataFrame({"x": [np.nan, np.inf]}), ["x"], [])
    with pytest.raises(DataError, match="both numeric and categorical: x"):
        build_profile(pd.DataFrame({"x": [1.0]}), ["x"], ["x"])


def damage(folder: Path, how: str) -> None:
    index = folder / "profile.json"
    if how == "no folder":
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    elif how == "no index":
        index.unlink()
    elif how == "not json":
        index.write_text("{not json")
    elif how == "other version":
        body = json.loads(index.read_text())
        index.write_text(json.dumps({**body, "version": 99}))
    elif how == "no values file":
        (folder / "values_0000.npy").unlink()
    elif how == "truncated values":
        path = folder / "values_0000.npy"
        path.write_bytes(path.read_bytes()[:200])
    elif how == "pickled values":
        np.save(folder / "values_0000.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif how == "shuffled values":
        path = folder / "values_0000.npy"
        np.save(path, np.load(path)[::-1].copy())
    elif how == "counts off":
        body = json.loads(index.read_text())
        body["columns"][2]["counts"][0] += 1
        index.write_text(json.dumps(body))
    elif how == "missing key":
        body = json.loads(index.read_text())
        del body["columns"][0]["rows"]
        index.write_text(json.dumps(body))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no folder", "is not a drift profile .*run the split stage first"),
        ("no index", r"is not a drift profile \(no profile.json\)"),
        ("not json", "is a damaged drift profile .*re-run the split stage"),
        ("other version", r"damaged drift profile \(version 99, expected 1\)"),
        ("no values file", "damaged drift profile .*values_0000.npy"),
        ("truncated values", "damaged drift profile"),
        ("pickled values", "damaged drift profile"),
        ("shuffled values", "values_0000.npy is not sorted finite values"),
        ("counts off", "column 'c': the value counts do not add up to 2000 rows"),
        ("missing key", r"damaged drift profile \(missing key 'rows'\)"),
    ],
)
def test_damaged_profile_folder_is_one_clear_error(tmp_path: Path, how: str, message: str) -> None:
    profile, _ = half_drifted()
    folder = tmp_path / "drift_profile"
    write_profile(profile, folder)
    damage(folder, how)
    with pytest.raises(DataError, match=message) as raised:
        read_profile(folder)
    assert "\n" not in str(raised.value)


# --- the drift rule: roles, weights, prediction drift -------------------------------------


@pytest.mark.parametrize(
    ("derived", "calendar", "ignored", "roles"),
    [
        ((), (), (), {"a": "counted", "b": "counted", "c": "counted", "d": "counted"}),
        (("a",), (), (), {"a": "calendar", "b": "counted", "c": "counted", "d": "counted"}),
        (("a",), ("c",), (), {"a": "calendar", "b": "counted", "c": "calendar", "d": "counted"}),
        ((), ("c",), ("c", "d"), {"a": "counted", "b": "counted", "c": "ignored", "d": "ignored"}),
        ((), ("elsewhere",), (), {"a": "counted", "b": "counted", "c": "counted", "d": "counted"}),
    ],
    ids=["none", "derived", "derived-and-listed", "ignored-wins", "not-a-feature"],
)
def test_columns_are_classified_by_an_explicit_list(
    derived: tuple, calendar: tuple, ignored: tuple, roles: dict
) -> None:
    assert column_roles(["a", "b", "c", "d"], derived, calendar, ignored) == roles


@pytest.mark.parametrize(
    ("importance", "weights", "source"),
    [
        ({"a": 3.0, "b": 1.0, "c": 100.0}, {"a": 0.75, "b": 0.25, "c": 0.0}, "importance"),
        ({"a": 3.0, "b": -1.0}, {"a": 1.0, "b": 0.0, "c": 0.0}, "importance"),  # noise: 0
        (None, {"a": 0.5, "b": 0.5, "c": 0.0}, "equal"),  # a version without importance
        ({"a": 0.0, "b": -2.0, "c": 5.0}, {"a": 0.5, "b": 0.5, "c": 0.0}, "equal"),
    ],
    ids=["by-importance", "negative-is-zero", "none-registered", "none-counted"],
)
def test_counted_columns_weigh_their_importance_or_equally(
    importance: dict | None, weights: dict, source: str
) -> None:
    found = column_weights({"a": "counted", "b": "counted", "c": "calendar"}, importance)
    assert found.values == pytest.approx(weights) and found.source == source


def calm_prediction() -> ColumnDrift:
    return ColumnDrift("prediction", "numeric", "wasserstein", 0.01, 0.1, drifted=False)


@pytest.mark.parametrize(
    ("importance", "share", "decided"),
    [
        ({"a": 1.0, "b": 3.0, "c": 1.0, "d": 3.0}, 0.25, False),  # the drifted ones matter little
        ({"a": 3.0, "b": 1.0, "c": 3.0, "d": 1.0}, 0.75, True),  # ...or much
        (None, 0.5, True),  # equal weights: check_drift's own share
    ],
)
def test_the_share_is_the_drifted_columns_weight(
    importance: dict | None, share: float, decided: bool
) -> None:
    profile, window = half_drifted()  # a and c drift, b and d do not
    roles = column_roles(profile.names)
    drift = weigh_drift(check_drift(profile, window), roles, importance, calm_prediction())
    assert drift.counted_drifted == ("a", "c")
    assert drift.share == pytest.approx(share)
    assert drift.features_drifted is decided and drift.drift is decided


def test_calendar_columns_are_reported_but_never_decide() -> None:
    profile, window = half_drifted()
    # Every drifted column is calendar: however much the model relies on them, no drift.
    roles = column_roles(profile.names, derived_calendar=["a"], calendar_columns=["c"])
    importance = {"a": 100.0, "b": 1.0, "c": 100.0, "d": 1.0}
    drift = weigh_drift(check_drift(profile, window), roles, importance, calm_prediction())
    assert drift.drifted_columns == ("a", "c") and drift.counted_drifted == ()
    assert drift.share == 0.0 and drift.drift is False
    table = {row["column"]: row for row in drift.to_dict()["columns"]}
    assert table["a"] == {**table["a"], "role": "calendar", "counted": False, "weight": 0.0}
    assert table["a"]["drifted"] is True  # reported as it is
    assert table["b"]["counted"] is True and table["b"]["weight"] == 0.5
    assert "drifted but not counted: a, c" in drift.reasons()[0]


def test_nothing_counted_decides_on_the_predictions_alone() -> None:
    profile, window = half_drifted()
    roles = column_roles(profile.names, ignore_columns=profile.names)
    drift = weigh_drift(check_drift(profile, window), roles, None, calm_prediction())
    assert drift.share == 0.0 and drift.features_drifted is False
    assert drift.reasons()[0] == (
        "no data drift: no column is counted (every one is calendar or ignored)"
    )


def test_prediction_drift_alone_is_drift() -> None:
    reference = normal(2000, seed=11)
    profile = prediction_profile(reference, "regression")
    calm = prediction_drift(profile, normal(600, seed=12), "regression")
    moved = prediction_drift(profile, normal(600, shift=0.5, seed=12), "regression")
    assert calm.method == "wasserstein" and not calm.drifted
    assert moved.drifted and moved.statistic == pytest.approx(0.5, abs=0.1)

    data, window = half_drifted()
    importance = {"a": 0.0, "b": 1.0, "c": 0.0, "d": 1.0}  # only undrifted columns matter
    drift = weigh_drift(check_drift(data, window), column_roles(data.names), importance, moved)
    assert drift.share == 0.0 and drift.prediction_drifted and drift.drift
    features, predictions = drift.reasons()
    assert features.startswith("no data drift: 2 of 4 counted columns drifted (a, c): 0%")
    assert predictions.startswith("prediction drift: the champion's predictions on the window")


def test_the_calendar_alone_moving_the_predictions_is_not_prediction_drift() -> None:
    """A model that uses the year predicts more for the later year of a growing series:
    a window from that year against a reference of both years moves the predictions by
    the calendar alone. The reference's predictions are made with the window's calendar;
    a shift in a counted feature still drifts them."""
    rng = np.random.default_rng(3)
    reference = pd.DataFrame({"temp": rng.normal(20, 5, 2000), "yr": rng.integers(0, 2, 2000)})
    window = pd.DataFrame({"temp": rng.normal(20, 5, 1000), "yr": np.ones(1000, dtype=int)})
    roles = column_roles(["temp", "yr"], calendar_columns=["yr"])

    def predict(frame: pd.DataFrame) -> pd.Series:
        return 100 + 5 * frame["temp"] + 80 * frame["yr"]

    def moved(window: pd.DataFrame, on: pd.DataFrame) -> bool:
        profile = prediction_profile(predict(on), "regression")
        return prediction_drift(profile, predict(window), "regression").drifted

    assert moved(window, reference)  # the year alone
    aligned = calendar_aligned(reference, window, roles)
    assert not moved(window, aligned)
    assert (aligned["yr"] == 1).all() and aligned["yr"].dtype == reference["yr"].dtype
    assert aligned["temp"].equals(reference["temp"]) and set(reference["yr"]) == {0, 1}
    warmer = window.assign(temp=window["temp"] + 5)
    assert moved(warmer, calendar_aligned(reference, warmer, roles))


def test_a_classifier_s_predictions_are_compared_as_classes() -> None:
    reference = choice(["no", "yes"], 2000, [0.7, 0.3], seed=1)
    profile = prediction_profile(reference, "binary")
    assert profile.categorical == ("prediction",)
    # The log holds the class as text; numbers and text are one class ("1" == 1).
    logged = pd.Series(choice(["no", "yes"], 500, [0.7, 0.3], seed=2))
    same = prediction_drift(profile, logged, "binary")
    flipped = prediction_drift(profile, choice(["no", "yes"], 500, [0.3, 0.7], seed=2), "binary")
    assert same.method == "jensenshannon" and not same.drifted and flipped.drifted
    numbers = prediction_profile(np.array([0, 1] * 700), "binary")
    assert not prediction_drift(numbers, pd.Series(["0", "1"] * 300), "binary").drifted


def test_the_decision_record_states_the_rule_and_is_plain_json() -> None:
    profile, window = half_drifted()
    drift = weigh_drift(
        check_drift(profile, window, drift_share=0.4),
        column_roles(profile.names, calendar_columns=["d"]),
        {"a": 2.0, "b": 1.0, "c": 1.0, "d": 5.0},
        calm_prediction(),
    )
    body = json.loads(json.dumps(drift.to_dict()))
    assert body["rule"] == rule_text(0.4) and "at least 40% (monitor.drift_share)" in body["rule"]
    assert body["drift_share"] == pytest.approx(0.75) and body["weights"] == "importance"
    assert [row["weight"] for row in body["columns"]] == [0.5, 0.25, 0.25, 0.0]
    assert body["counted_drifted_columns"] == ["a", "c"] and body["prediction_drifted"] is False


def test_importance_travels_as_a_file_of_its_own(tmp_path: Path) -> None:
    evaluation = {
        "primary_metric": "rmse",
        "importance": [
            {"feature": "hr", "importance": 80.5, "std": 2.5},
            {"feature": "yr", "importance": None, "std": None},  # evaluate's NaN
        ],
    }
    importance = FeatureImportance.from_evaluation(evaluation)
    path = importance.write(tmp_path / "importance")
    assert FeatureImportance.read(path) == importance
    assert importance.values == {"hr": 80.5, "yr": 0.0} and importance.metric == "rmse"
    path.write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="damaged feature importance file"):
        FeatureImportance.read(path)
    with pytest.raises(DataError, match="re-run evaluate"):
        FeatureImportance.from_evaluation({"primary_metric": "rmse"})


def hourly(first: str, last: str) -> pd.DataFrame:
    times = pd.date_range(first, last, freq="6h")
    return pd.DataFrame({"when": times, "x": np.arange(len(times), dtype=float)})


@pytest.mark.parametrize(
    ("window", "first", "last"),
    [
        # A year on: 1 April 2012 is day 92, 2 April in 2011; a week either side.
        (("2012-04-01", "2012-05-26"), "2011-03-26", "2011-06-03"),
        (("2012-12-20", "2013-01-10"), "2011-01-01", "2011-01-17"),  # across the year's end
    ],
)
def test_a_window_is_compared_with_the_reference_from_its_weeks_of_the_year(
    window: tuple[str, str], first: str, last: str
) -> None:
    reference = hourly("2011-01-01", "2011-12-31 18:00")
    times = hourly(*window)["when"].dt.strftime("%Y-%m-%d")  # as the log holds the context
    chosen = seasonal_reference(reference, reference["when"], times)
    assert chosen.seasonal
    days = chosen.rows["when"].dt.normalize()
    if window[0].startswith("2012-12"):  # December and January of the reference year
        assert days.min() == pd.Timestamp(first) and days.max() == pd.Timestamp("2011-12-31")
        assert not days.between("2011-01-18", "2011-12-12").any()
    else:
        assert days.min() == pd.Timestamp(first) and days.max() == pd.Timestamp(last)
    assert chosen.note.startswith(
        f"the reference rows from the window's weeks of the year: {len(days)} of 1460"
    )


@pytest.mark.parametrize(
    ("window", "reference_times", "why"),
    [
        (("2012-06-01", "2012-07-01"), True, "covering 0% of them"),  # summer, a winter reference
        (("2012-02-01", "2012-04-30"), True, "covering 40% of them"),  # 36 of its 90 days
        (("2012-01-05", "2012-01-10"), False, "no time column"),
    ],
)
def test_without_the_window_s_weeks_the_whole_reference_is_used(
    window: tuple[str, str], reference_times: bool, why: str
) -> None:
    reference = hourly("2011-01-01", "2011-03-01")
    times = reference["when"] if reference_times else None
    chosen = seasonal_reference(reference, times, hourly(*window)["when"])
    assert not chosen.seasonal and chosen.rows is reference
    assert chosen.note.startswith("the whole reference sample (237 rows): ") and why in chosen.note
