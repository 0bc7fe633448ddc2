"""The drift check's pure functions on small frames: statistics against scipy, the
rules that pick a method, missing values, the decision, the profile on disk, errors."""

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
from pipeline.errors import DataError
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
