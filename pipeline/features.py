"""The model's view of a table: which columns are features, and how raw values become
numbers.

`FeatureSpec.prepare` is the one preprocessing function that training, evaluation and
serving all call: it selects the feature columns in a fixed order, makes numerics
float and categoricals text (so `1`, `1.0` and `"1"` are the same category). What is
learned from train rows (the category lists) is stored with the model as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.schema import DatasetSpec

# Categories past this many (by frequency in train) are treated as unknown.
MAX_CATEGORIES = 256


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
        codes = self.category_codes(prepared).astype(np.float32) - 1
        codes[codes < 0] = np.nan
        return np.hstack([self.numeric_matrix(prepared), codes])

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


def category_text(values: pd.Series) -> pd.Series:
    """Category values as text, with whole floats written as integers (`1.0` -> `"1"`)
    so that a category means the same whether it came from CSV, parquet or JSON."""

    def as_text(value: Any) -> Any:
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return np.nan
        if isinstance(value, bool | np.bool_):
            return str(bool(value))
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        return str(value)

    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        return values.astype("int64").astype(str).astype(object)
    return values.astype(object).map(as_text).astype(object)
