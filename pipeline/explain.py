"""SHAP explanations: how much each feature moved one prediction, for every family.

Two methods, both giving Shapley values, whose sum with the base value is the
explained output exactly (efficiency):

- `tree_shap`, for xgboost: the booster's own TreeSHAP (`pred_contribs=True`) on the
  matrix the model scores (numerics, then category codes declared categorical). It
  explains the margin, the booster's output before its link function and before
  Driftline's calibration: the log-odds of the positive class (binary), the margin of
  the predicted class (multiclass), the prediction itself (squared error) or its log
  (Poisson, Tweedie, log1p). The base value is the booster's expected margin on its
  training rows.
- `permutation`, for any model (torch, scikit-learn, an ONNX export): Shapley values
  sampled over `permutations` seeded orderings of the features, half of them the
  reverse of the other half (antithetic, which halves the variance for the same cost).
  Along one ordering the features switch from a background row's values to the
  record's one by one, and each is credited with the change in output it caused, so
  the contributions of one ordering already sum to the output less the base: sampling
  only spreads the total differently between features. It explains the output as
  served: the value (regression), or the probability of the positive (binary) or the
  predicted (multiclass) class, after calibration. The base value is the mean output
  over the background rows.

Evaluate summarises many rows (`shap_summary`: mean |SHAP| per feature, beside
permutation importance); serving explains the records of one request (`explain_arrays`,
called by `pipeline.serving_explain`, which answers `POST /explain`).
Each record costs `permutations * (features + 1) * background` model rows with the
permutation method, scored in one call.

The `shap` library installs with our pins, but brings numba and llvmlite (a JIT
compiler) for what these few lines do, and its explainers take one numeric matrix where
Driftline's models take numerics, category codes and texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from pipeline.features import FeatureArrays, FeatureSpec

if TYPE_CHECKING:
    from pipeline.models import TabularModel
    from pipeline.onnx_model import OnnxModel

Method = Literal["tree_shap", "permutation"]
# Orderings sampled per record (an even number: each comes with its reverse).
PERMUTATIONS = 8
# Background rows evaluate averages over: enough for a stable base, few enough to score
# `permutations * (features + 1) * rows` model rows per explained record.
BACKGROUND_ROWS = 16
# Rows evaluate explains for the summary (a seeded sample of its importance rows).
SUMMARY_ROWS = 200


@dataclass(frozen=True)
class Explanation:
    """Per record, each feature's contribution (in `features` order), the base value
    they start from and the output they add up to, on `scale`; `class_codes` is the
    class explained per record (None for regression)."""

    features: tuple[str, ...]
    contributions: np.ndarray  # (records, features)
    base: np.ndarray  # (records,)
    output: np.ndarray  # (records,)
    method: Method
    scale: str
    class_codes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.output)

    def top(self, record: int, count: int) -> list[tuple[str, float]]:
        """The `count` largest contributions of one record by size, as (feature, value)."""
        values = self.contributions[record]
        order = np.argsort(-np.abs(values), kind="stable")[:count]
        return [(self.features[i], float(values[i])) for i in order]


def explain_arrays(
    model: TabularModel | OnnxModel,
    arrays: FeatureArrays,
    background: FeatureArrays | None = None,
    *,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> Explanation:
    """SHAP values of `model` for prepared records: TreeSHAP when `model` is a native
    xgboost model, else the permutation method against `background` (default: one
    row with every feature missing, which every model can score)."""
    if getattr(model, "family", None) == "xgboost" and hasattr(model, "learner"):
        return tree_shap(model, arrays)  # type: ignore[arg-type]
    return permutation_shap(
        model,
        arrays,
        background if background is not None else missing_row(model.features),
        permutations=permutations,
        seed=seed,
    )


def tree_shap(model: TabularModel, arrays: FeatureArrays) -> Explanation:
    """xgboost's exact TreeSHAP on the margin: see the module docstring."""
    import xgboost as xgb

    from pipeline.models.xgboost_model import MAX_CATEGORICAL_LEVELS

    features = model.features
    types = ["q"] * len(features.numeric) + [
        "c" if len(features.categories[column]) <= MAX_CATEGORICAL_LEVELS else "q"
        for column in features.categorical
    ]
    matrix = xgb.DMatrix(
        arrays.encoded(), feature_types=types, enable_categorical=bool(features.categorical)
    )
    booster = model.learner.booster  # type: ignore[attr-defined]
    contributions = np.asarray(booster.predict(matrix, pred_contribs=True), dtype=np.float64)
    class_codes = None
    if model.task == "multiclass":  # (records, classes, features + 1): the predicted class
        class_codes = model.decide_codes(model.predict_arrays(arrays))
        contributions = contributions[np.arange(len(class_codes)), class_codes]
    elif model.task == "binary":
        class_codes = np.ones(len(arrays), dtype=np.int64)
    base, values = contributions[:, -1], contributions[:, :-1]
    return Explanation(
        features=features.columns,
        contributions=values,
        base=base,
        output=values.sum(axis=1) + base,
        method="tree_shap",
        scale=_margin_scale(model),
        class_codes=class_codes,
    )


def _margin_scale(model: TabularModel) -> str:
    if model.task == "binary":
        return "margin: log-odds of the positive class, before calibration"
    if model.task == "multiclass":
        return "margin of the predicted class, before softmax and calibration"
    if model.objective in ("poisson", "tweedie"):
        return "margin: log of the prediction"
    if model.objective == "log1p":
        return "margin: log(1 + prediction)"
    return "margin: the prediction"


def permutation_shap(
    model: TabularModel | OnnxModel,
    arrays: FeatureArrays,
    background: FeatureArrays,
    *,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> Explanation:
    """Sampled Shapley values of the served output: see the module docstring."""
    if permutations < 2 or permutations % 2:
        raise ValueError(f"permutations must be an even number >= 2, got {permutations}")
    if len(background) == 0:
        raise ValueError("the background holds no rows")
    features = model.features
    width, records, rows = len(features.columns), len(arrays), len(background)
    rng = np.random.default_rng(seed)
    half = np.array([rng.permutation(width) for _ in range(permutations // 2)]).reshape(-1, width)
    orders = np.concatenate([half, half[:, ::-1]])
    # masks[p, s, f]: at step s of ordering p, feature f has the record's value.
    steps = np.arange(width + 1)[:, None] > np.arange(width)[None, :]  # (width + 1, width)
    ranks = np.argsort(orders, axis=1)  # each feature's place in each ordering
    masks = steps[:, ranks].transpose(1, 0, 2)  # (permutations, width + 1, width)

    raw = model.predict_arrays(arrays)
    class_codes = None
    if model.task == "binary":
        class_codes = np.ones(records, dtype=np.int64)
    elif model.task == "multiclass":
        class_codes = model.decide_codes(raw)

    per_record = permutations * (width + 1) * rows
    record_index = np.repeat(np.arange(records), per_record)
    mask = np.tile(np.repeat(masks.reshape(-1, width), rows, axis=0), (records, 1))
    background_index = np.tile(np.arange(rows), records * permutations * (width + 1))
    mixed = _mix(arrays, background, record_index, background_index, mask, len(features.numeric))
    scored = np.asarray(model.predict_arrays(mixed), dtype=np.float64)
    if class_codes is not None:
        scored = scored[np.arange(len(scored)), class_codes[record_index]]
    # (records, permutations, steps): the output averaged over the background rows.
    path = scored.reshape(records, permutations, width + 1, rows).mean(axis=3)
    changes = np.diff(path, axis=2)  # step s credits the feature switched at it
    contributions = np.zeros((records, width))
    for position, order in enumerate(orders):
        contributions[:, order] += changes[:, position, :]
    contributions /= permutations
    base = path[:, 0, 0]
    return Explanation(
        features=features.columns,
        contributions=contributions,
        base=base,
        output=base + contributions.sum(axis=1),
        method="permutation",
        scale=_served_scale(model.task),
        class_codes=class_codes,
    )


def _served_scale(task: str) -> str:
    if task == "binary":
        return "probability of the positive class, as served (after calibration)"
    if task == "multiclass":
        return "probability of the predicted class, as served (after calibration)"
    return "the prediction, as served"


def _mix(
    records: FeatureArrays,
    background: FeatureArrays,
    record_index: np.ndarray,
    background_index: np.ndarray,
    mask: np.ndarray,
    numerics: int,
) -> FeatureArrays:
    """Rows taking each feature from a record where `mask` is set, else from a
    background row."""
    numeric = np.where(
        mask[:, :numerics],
        records.numeric[record_index],
        background.numeric[background_index],
    ).astype(records.numeric.dtype, copy=False)
    codes = np.where(
        mask[:, numerics:], records.codes[record_index], background.codes[background_index]
    )
    texts = tuple(
        np.where(mask[:, numerics + j], ours[record_index], theirs[background_index])
        for j, (ours, theirs) in enumerate(zip(records.texts, background.texts, strict=True))
    )
    return FeatureArrays(numeric, codes, texts)


def missing_row(features: FeatureSpec) -> FeatureArrays:
    """One row with every feature missing: the background when no data is at hand."""
    numeric = np.full((1, len(features.numeric)), np.nan, dtype=np.float32)
    codes = np.zeros((1, len(features.categorical)), dtype=np.int64)
    texts = tuple(np.array([None], dtype=object) for _ in features.categorical)
    return FeatureArrays(numeric, codes, texts)


@dataclass(frozen=True)
class ShapSummary:
    """SHAP values of a sample of rows, for evaluate's report and plot."""

    explanation: Explanation
    values: pd.DataFrame  # the explained rows' prepared features, in model order

    def mean_abs(self) -> pd.DataFrame:
        """`feature, mean_abs_shap`, largest first."""
        table = pd.DataFrame(
            {
                "feature": list(self.explanation.features),
                "mean_abs_shap": np.abs(self.explanation.contributions).mean(axis=0),
            }
        )
        return table.sort_values("mean_abs_shap", ascending=False, ignore_index=True)

    def to_dict(self) -> dict[str, Any]:
        explanation = self.explanation
        return {
            "method": explanation.method,
            "scale": explanation.scale,
            "rows": len(explanation),
            "base_mean": float(np.mean(explanation.base)),
            "mean_abs_shap": self.mean_abs().to_dict(orient="records"),
        }


def shap_summary(
    model: TabularModel,
    frame: pd.DataFrame,
    *,
    rows: int = SUMMARY_ROWS,
    background_rows: int = BACKGROUND_ROWS,
    seed: int = 0,
) -> ShapSummary:
    """SHAP values of up to `rows` rows of `frame` (seeded sample), against
    `background_rows` other rows of it for the permutation method."""
    if frame.empty:
        raise ValueError("no rows to explain")
    shuffled = frame.sample(frac=1.0, random_state=seed)
    explained = shuffled.head(rows)
    rest = shuffled.iloc[len(explained) :]
    background = (rest if len(rest) else explained).head(background_rows)
    prepared = model.features.prepare(explained)
    explanation = explain_arrays(
        model,
        model.features.arrays(prepared),
        model.features.arrays(model.features.prepare(background)),
        seed=seed,
    )
    return ShapSummary(explanation, prepared.reset_index(drop=True))
