"""The model's view of a table: which columns are features, and how raw values become
numbers.

`FeatureSpec.prepare` is the one preprocessing function that training, evaluation and
serving all call: it selects the feature columns in a fixed order, makes numerics
float and categoricals text (so `1`, `1.0` and `"1"` are the same category). What is
learned from train rows (the category lists) is stored with the model as JSON.

A model scores `FeatureArrays`: numerics as a float32 matrix, categoricals as codes
and as text. `FeatureSpec.arrays` builds them from a prepared frame (training,
evaluation, batch files); `FeatureSpec.record_arrays` builds the same arrays from
request records without pandas, because for one row pandas costs 100 times more than
the model (bench.serve). Tests check that the two paths agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.schema import DatasetSpec

# Categories past this many (by frequency in train) are treated as unknown.
MAX_CATEGORIES = 256


@dataclass(frozen=True)
class FeatureArrays:
    """Prepared features as arrays, in model order."""

    numeric: np.ndarray  # (n, numerics) float32, NaN for gaps
    codes: np.ndarray  # (n, categoricals) int64: 1..k the train categories, 0 gap or unseen
    texts: tuple[np.ndarray, ...]  # per categorical, object: the text, None for a gap

    def __len__(self) -> int:
        return len(self.numeric)

    def encoded(self) -> np.ndarray:
        """Numerics then category codes in one float32 matrix, NaN for gaps and unseen
        categories: the input of tree models."""
        return encode(self.numeric, self.codes)


def encode(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
    shifted = codes.astype(np.float32) - 1
    shifted[shifted < 0] = np.nan
    return np.hstack([numeric, shifted])


@dataclass(frozen=True)
class FeatureSpec:
    """Feature columns in model order, and the categories seen in train."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    @classmethod
    def fit(cls, train: pd.DataFrame, spec: DatasetSpec) -> FeatureSpec:
        """Pick the features from a train frame: every column except the target, ids,
        keys, raw datetimes and dropped columns."""
        schema = spec.schema
        excluded = {spec.target, *schema.id, *schema.drop, *schema.datetime, *spec.key_columns}
        if spec.time_column:
            excluded.add(spec.time_column)
        numeric, categorical = [], []
        for column in train.columns:
            if column in excluded:
                continue
            values = train[column]
            if column in schema.categorical:
                categorical.append(column)
            elif column in schema.numeric:
                numeric.append(column)
            elif pd.api.types.is_datetime64_any_dtype(values):
                continue
            elif pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                numeric.append(column)
            else:
                categorical.append(column)
        if not numeric and not categorical:
            raise DataError("no feature columns left after removing the target, ids and dates")
        categories = {}
        for column in categorical:
            counts = category_text(train[column]).value_counts(dropna=True)
            if not counts.empty:  # a column train never filled in tells the model nothing
                categories[column] = tuple(sorted(counts.index[:MAX_CATEGORIES]))
        numeric = [column for column in numeric if train[column].notna().any()]
        if not numeric and not categories:
            raise DataError("every feature column is empty in the train set")
        return cls(tuple(numeric), tuple(categories), categories)

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The feature columns of `frame` in model order: numerics as float64 (NaN for
        gaps and unparseable values), categoricals as text (NaN for gaps)."""
        missing = [column for column in self.columns if column not in frame.columns]
        if missing:
            raise DataError(f"feature column(s) missing from the input: {', '.join(missing)}")
        prepared = {}
        for column in self.numeric:
            values = frame[column]
            if pd.api.types.is_bool_dtype(values):
                values = values.astype("float64")
            prepared[column] = pd.to_numeric(values, errors="coerce").astype("float64")
        for column in self.categorical:
            prepared[column] = category_text(frame[column])
        return pd.DataFrame(prepared, index=frame.index)

    def numeric_matrix(self, prepared: pd.DataFrame) -> np.ndarray:
        """Numerics as a float32 matrix; gaps stay NaN."""
        if not self.numeric:
            return np.zeros((len(prepared), 0), dtype=np.float32)
        return prepared[list(self.numeric)].to_numpy(dtype=np.float32, na_value=np.nan)

    def category_codes(self, prepared: pd.DataFrame) -> np.ndarray:
        """Categoricals as int64 codes: 1..k for the train categories, 0 for a gap or a
        category train never held."""
        codes = np.zeros((len(prepared), len(self.categorical)), dtype=np.int64)
        for position, column in enumerate(self.categorical):
            known = pd.Index(self.categories[column])
            codes[:, position] = known.get_indexer(prepared[column]) + 1
        return codes

    def encoded_matrix(self, prepared: pd.DataFrame) -> np.ndarray:
        """Numerics then category codes in one float32 matrix, NaN for gaps and unknown
        categories: the input of tree models."""
        return encode(self.numeric_matrix(prepared), self.category_codes(prepared))

    def arrays(self, prepared: pd.DataFrame) -> FeatureArrays:
        """The model inputs of a frame that `prepare` returned."""
        texts = tuple(
            np.where(prepared[column].isna(), None, prepared[column].to_numpy(dtype=object))
            for column in self.categorical
        )
        return FeatureArrays(self.numeric_matrix(prepared), self.category_codes(prepared), texts)

    def record_arrays(self, records: Sequence[Mapping[str, Any]]) -> FeatureArrays:
        """The model inputs of records keyed by feature name, as request validation
        leaves them (numerics a number or None, categoricals text, a number, a boolean
        or None): the same arrays as `arrays(prepare(frame))`, without pandas."""
        nan = float("nan")
        numeric = np.array(
            [[nan if (v := row[c]) is None else v for c in self.numeric] for row in records],
            dtype=np.float64,
        ).reshape(len(records), len(self.numeric))
        texts = tuple(
            np.array([category_value(row[column]) for row in records], dtype=object)
            for column in self.categorical
        )
        codes = np.zeros((len(records), len(self.categorical)), dtype=np.int64)
        for position, (column, values) in enumerate(zip(self.categorical, texts, strict=True)):
            lookup = self._category_codes[column]
            codes[:, position] = [lookup.get(value, 0) for value in values]
        return FeatureArrays(numeric.astype(np.float32), codes, texts)

    def is_known(self, column: str, text: str) -> bool:
        """Whether train held this category of `column` (`category_value` text)."""
        return text in self._category_codes[column]

    @cached_property
    def _category_codes(self) -> dict[str, dict[str, int]]:
        return {
            column: {value: code for code, value in enumerate(self.categories[column], start=1)}
            for column in self.categorical
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "categories": {column: list(values) for column, values in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureSpec:
        return cls(
            numeric=tuple(raw["numeric"]),
            categorical=tuple(raw["categorical"]),
            categories={column: tuple(values) for column, values in raw["categories"].items()},
        )


def category_value(value: Any) -> str | None:
    """One category as text, None for a gap: whole floats are written as integers
    (`1.0` -> `"1"`) so that a category means the same from CSV, parquet or JSON."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    return str(value)


def category_text(values: pd.Series) -> pd.Series:
    """A column's categories as text (`category_value`), NaN for gaps."""
    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        return values.astype("int64").astype(str).astype(object)
    texts = [category_value(value) for value in values.astype(object)]
    return pd.Series(
        [np.nan if text is None else text for text in texts], index=values.index, dtype=object
    )
