"""The two ways into a model, a frame through `FeatureSpec.prepare` and request records
through `FeatureSpec.record_arrays`, build the same arrays for any values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.features import FeatureSpec, category_text, category_value

SPEC = FeatureSpec(
    numeric=("temp", "hum"),
    categorical=("season", "flag"),
    categories={"season": ("1", "2", "3", "spring"), "flag": ("False", "True")},
)
numbers = st.one_of(st.none(), st.floats(min_value=-1e30, max_value=1e30), st.just(float("nan")))
categories = st.one_of(
    st.none(),
    st.sampled_from(["1", "spring", "autumn", "True"]),
    st.integers(min_value=0, max_value=4),
    st.sampled_from([1.0, 2.0, 2.5, float("nan")]),
    st.booleans(),
)
records = st.lists(
    st.fixed_dictionaries(
        {"temp": numbers, "hum": numbers, "season": categories, "flag": categories}
    ),
    min_size=1,
    max_size=20,
)


def frame_of(rows: list[dict]) -> pd.DataFrame:
    """The records as a frame, the way a batch file holds them."""
    columns = {
        "temp": [np.nan if r["temp"] is None else r["temp"] for r in rows],
        "hum": [np.nan if r["hum"] is None else r["hum"] for r in rows],
        "season": pd.Series([r["season"] for r in rows], dtype=object),
        "flag": pd.Series([r["flag"] for r in rows], dtype=object),
    }
    return pd.DataFrame(columns)


@settings(max_examples=150, deadline=None)
@given(records)
def test_records_and_frames_give_the_same_arrays(rows: list[dict]) -> None:
    fast = SPEC.record_arrays(rows)
    slow = SPEC.arrays(SPEC.prepare(frame_of(rows)))
    np.testing.assert_array_equal(fast.numeric, slow.numeric)  # NaN where NaN
    assert fast.numeric.dtype == slow.numeric.dtype == np.float32
    np.testing.assert_array_equal(fast.codes, slow.codes)
    assert [list(t) for t in fast.texts] == [list(t) for t in slow.texts]
    np.testing.assert_array_equal(fast.encoded(), SPEC.encoded_matrix(SPEC.prepare(frame_of(rows))))


def test_a_category_means_the_same_whatever_its_type() -> None:
    assert category_value(1) == category_value(1.0) == category_value("1") == "1"
    assert category_value(np.float32(2.0)) == "2" and category_value(2.5) == "2.5"
    assert category_value(True) == category_value(np.bool_(True)) == "True"
    assert category_value(None) is None and category_value(float("nan")) is None
    assert category_value(np.float32("nan")) is None and category_value(pd.NA) is None
    texts = category_text(pd.Series([1.0, None, "x", False], dtype=object))
    assert list(texts[[0, 2, 3]]) == ["1", "x", "False"] and math.isnan(texts[1])


def test_unseen_and_missing_categories_are_code_zero() -> None:
    arrays = SPEC.record_arrays(
        [
            {"temp": 1.0, "hum": None, "season": "winter", "flag": None},
            {"temp": None, "hum": 0.5, "season": 3, "flag": True},
        ]
    )
    assert arrays.codes.tolist() == [[0, 0], [3, 2]]
    assert np.isnan(arrays.numeric[0, 1]) and np.isnan(arrays.numeric[1, 0])
    encoded = arrays.encoded()
    assert np.isnan(encoded[0, 2:]).all() and encoded[1, 2:].tolist() == [2.0, 1.0]


def test_a_spec_without_numerics_or_categoricals_still_builds_arrays() -> None:
    only_text = FeatureSpec(numeric=(), categorical=("c",), categories={"c": ("a",)})
    arrays = only_text.record_arrays([{"c": "a"}, {"c": None}])
    assert arrays.numeric.shape == (2, 0) and arrays.codes.tolist() == [[1], [0]]
    only_numbers = FeatureSpec(numeric=("x",), categorical=(), categories={})
    arrays = only_numbers.record_arrays([{"x": 2}])
    assert arrays.codes.shape == (1, 0) and arrays.numeric.tolist() == [[2.0]]
