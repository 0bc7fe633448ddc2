"""The one typed configuration: `params.yaml`, loaded once per process.

Every section is a frozen pydantic model that forbids unknown keys, so a typo or a
bad value fails at load time with the key's dotted name. Each stage receives only
its own section.
"""

from __future__ import annotations

import itertools
import math
import os
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from pipeline.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")

Task = Literal["regression", "binary", "multiclass"]
Severity = Literal["critical", "warning", "off"]
CategoryValue = StrictStr | StrictInt | StrictFloat | StrictBool
CalendarPart = Literal[
    "year", "quarter", "month", "week", "day", "dayofweek", "dayofyear", "hour", "is_weekend"
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- data -------------------------------------------------------------------------------


class NumericColumn(Section):
    """A numeric column; `min`/`max` bound the values the data may hold."""

    min: float | None = None
    max: float | None = None
    required: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> NumericColumn:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class CategoricalColumn(Section):
    """A categorical column; `values` is the allowed set (leave it out to allow any)."""

    values: list[CategoryValue] | None = None
    required: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> CategoricalColumn:
        if self.values is not None and not self.values:
            raise ValueError("values is empty: list the allowed categories or leave it out")
        return self


class DatetimeColumn(Section):
    """A date or time column; `format` is a strftime pattern (leave it out for ISO 8601)."""

    format: str | None = None
    required: bool = False


class Schema(Section):
    """Column kinds, allowed ranges and category sets. `drop` columns are removed by clean."""

    numeric: dict[str, NumericColumn] = Field(default_factory=dict)
    categorical: dict[str, CategoricalColumn] = Field(default_factory=dict)
    datetime: dict[str, DatetimeColumn] = Field(default_factory=dict)
    id: list[str] = Field(default_factory=list)
    drop: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _each_column_once(self) -> Schema:
        seen: dict[str, str] = {}
        groups = {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "datetime": list(self.datetime),
            "id": self.id,
            "drop": self.drop,
        }
        for group, names in groups.items():
            for name in names:
                if name in seen:
                    raise ValueError(
                        f"column {name!r} is listed under both {seen[name]} and {group}"
                    )
                seen[name] = group
        return self

    def kind_of(self, column: str) -> str | None:
        """The group a column is declared in, or None."""
        for group in ("numeric", "categorical", "datetime"):
            if column in getattr(self, group):
                return group
        if column in self.id:
            return "id"
        if column in self.drop:
            return "drop"
        return None

    def declared_columns(self) -> list[str]:
        """Every column the schema expects to find, dropped ones included."""
        return [
            *self.numeric,
            *self.categorical,
            *self.datetime,
            *self.id,
            *self.drop,
        ]


class CsvDialect(Section):
    """How CSV files are read. `delimiter: null` detects it from the file."""

    delimiter: str | None = None
    quotechar: str = '"'
    encoding: str = "utf-8"

    @model_validator(mode="after")
    def _single_characters(self) -> CsvDialect:
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {self.delimiter!r}")
        if len(self.quotechar) != 1:
            raise ValueError(f"quotechar must be one character, got {self.quotechar!r}")
        return self


# Labelled production batches: ingest's dep in dvc.yaml, which interpolates nothing from
# params.yaml (a params file without the key must still parse).
LANDING = "data/landing"


class DataConfig(Section):
    """Everything specific to one data set. Only `source` and `target` are needed."""

    source: str = "builtin:bike_sharing"
    query: str | None = None
    target: str
    task: Task | None = None
    time_column: str | None = None
    key_columns: list[str] = Field(default_factory=list)
    slice_columns: list[str] = Field(default_factory=list)
    na_values: list[str] = Field(default_factory=list)
    landing: str = "data/landing"  # fixed: the folder dvc.yaml tracks (LANDING)
    # Source rows after this date are held out of training: the production traffic
    # `driftline simulate` replays. Needs time_column.
    until: date | None = None
    csv: CsvDialect = Field(default_factory=CsvDialect)
    schema_: Schema | None = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if not self.source.strip():
            raise ValueError("source is empty: name a file, a folder, a SQL URL or builtin:<name>")
        if is_sql_url(self.source) and not self.query:
            raise ValueError("source is a SQL URL, so query must hold the SELECT to run")
        if self.landing.strip("/") != LANDING:
            raise ValueError(
                f"landing: dvc.yaml tracks {LANDING}/ (ingest's dep), so labelled batches go "
                f"there; remove the key or set it to {LANDING}"
            )
        if self.target in self.key_columns:
            raise ValueError(f"target {self.target!r} cannot also be a key column")
        if self.until is not None and self.time_column is None:
            raise ValueError(
                "data.until holds rows out by time, so data.time_column must name the column"
            )
        if self.schema_ is not None:
            kind = self.schema_.kind_of(self.target)
            if kind in ("id", "drop", "datetime"):
                raise ValueError(f"target {self.target!r} is declared as {kind} in schema")
        return self


def is_sql_url(source: str) -> bool:
    """A source with a scheme (`postgresql://`, `sqlite:///`) is read with SQLAlchemy."""
    return "://" in source


# --- validate -----------------------------------------------------------------------------


class SeverityConfig(Section):
    """What each kind of failed expectation does: stop the run, warn, or nothing."""

    columns: Severity = "critical"
    types: Severity = "critical"
    required: Severity = "critical"
    target: Severity = "critical"
    key: Severity = "critical"
    row_count: Severity = "critical"
    datetime: Severity = "critical"
    range: Severity = "warning"
    category: Severity = "warning"
    missing: Severity = "warning"


class ValidateConfig(Section):
    min_rows: int = Field(default=100, ge=1)
    max_missing_fraction: float = Field(default=0.2, ge=0, le=1)
    severity: SeverityConfig = Field(default_factory=SeverityConfig)


# --- clean --------------------------------------------------------------------------------

NumericMissing = Literal["keep", "median", "mean", "zero", "drop"]
CategoricalMissing = Literal["keep", "most_frequent", "constant", "drop"]
OutOfRange = Literal["clip", "null", "drop", "keep"]
UnknownCategory = Literal["keep", "null", "drop"]


class ColumnPolicy(Section):
    """Per-column overrides of the clean defaults."""

    missing: NumericMissing | CategoricalMissing | None = None
    out_of_range: OutOfRange | None = None
    unknown_category: UnknownCategory | None = None


class CleanConfig(Section):
    drop_duplicates: bool = True
    # `keep` leaves gaps to the model, whose imputer learns from train rows only;
    # median/mean here would leak validation and test statistics into training.
    missing_numeric: NumericMissing = "keep"
    missing_categorical: CategoricalMissing = "keep"
    missing_datetime: Literal["keep", "drop"] = "drop"
    fill_value: str = "missing"
    out_of_range: OutOfRange = "clip"
    unknown_category: UnknownCategory = "keep"
    columns: dict[str, ColumnPolicy] = Field(default_factory=dict)
    calendar_features: dict[str, list[CalendarPart]] = Field(default_factory=dict)

    def override(self, column: str, field: str) -> str | None:
        """`column`'s own `field` policy from `clean.columns`, if one is set."""
        policy = self.columns.get(column)
        return getattr(policy, field) if policy is not None else None

    def policy(self, column: str, field: str) -> str:
        """The `field` policy (`out_of_range`, `unknown_category`, ...) that applies
        to `column`: its own from `clean.columns`, else the section's."""
        return self.override(column, field) or getattr(self, field)


# --- split --------------------------------------------------------------------------------


class Fractions(Section):
    train: float = Field(default=0.7, gt=0, lt=1)
    val: float = Field(default=0.2, gt=0, lt=1)
    test: float = Field(default=0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Fractions:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must add up to 1, got {total:g}")
        return self


class SplitConfig(Section):
    method: Literal["auto", "time", "ordered", "stratified", "random"] = "auto"
    fractions: Fractions = Field(default_factory=Fractions)
    seed: int = 42
    reference_rows: int = Field(default=5000, ge=10)


# --- train --------------------------------------------------------------------------------

Family = Literal["xgboost", "sklearn", "torch", "ensemble"]
# The families an ensemble combines (every family but the ensemble itself).
MEMBER_FAMILIES = ("xgboost", "sklearn", "torch")
Device = Literal["auto", "cpu", "cuda"]


class XGBoostConfig(Section):
    """Gradient-boosted trees (hist). Rounds stop early when val loss stops improving."""

    n_estimators: int = Field(default=2000, ge=1)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    max_depth: int = Field(default=6, ge=1, le=20)
    min_child_weight: float = Field(default=1.0, ge=0)
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    reg_lambda: float = Field(default=1.0, ge=0)
    reg_alpha: float = Field(default=0.0, ge=0)
    early_stopping_rounds: int = Field(default=50, ge=1)
    # One thread per fit: on a shared or small machine, more threads wait on each other
    # (OpenMP spinning) more than they compute; 0 takes every core.
    n_jobs: int = Field(default=1, ge=0, description="threads per fit; 0: all cores")


class SklearnConfig(Section):
    """A scikit-learn Pipeline: imputation, scaling and one-hot encoding, then the estimator."""

    estimator: Literal["linear", "forest"] = "forest"
    alpha: float = Field(default=1.0, gt=0, description="linear: L2 strength (1/C)")
    n_estimators: int = Field(default=300, ge=1)
    max_depth: int | None = Field(default=None, ge=1)
    min_samples_leaf: int = Field(default=1, ge=1)
    max_features: float = Field(default=0.5, gt=0, le=1)
    n_jobs: int = Field(default=1, description="forest: parallel trees; -1: every core")


class TorchConfig(Section):
    """A tabular MLP: embeddings (or one-hot) for categoricals, standardised numerics."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [256, 128], min_length=1)
    categorical_encoding: Literal["embedding", "onehot"] = "embedding"
    max_embedding_dim: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    batch_norm: bool = True
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=256, ge=1)
    max_epochs: int = Field(default=60, ge=1)
    patience: int = Field(default=8, ge=1)
    schedule: Literal["warmup_cosine", "one_cycle", "constant"] = "warmup_cosine"
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    grad_clip: float | None = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _positive_widths(self) -> TorchConfig:
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")
        return self


class EnsembleConfig(Section):
    """Several families combined on their out-of-fold predictions
    (`pipeline/models/ensemble_model.py`). Each member takes its params from its own
    section (`train.xgboost`, `train.sklearn`, `train.torch`)."""

    members: list[str] = Field(default_factory=lambda: ["xgboost", "torch"])
    # blend: non-negative weights summing to 1 that minimise the out-of-fold loss;
    # stack: ridge on member predictions (regression), logistic regression on member
    # log-probabilities (classes).
    method: Literal["blend", "stack"] = "blend"
    folds: int = Field(default=3, ge=2, le=10, description="out-of-fold folds")
    # auto: expanding-window folds in time order when the split is time-ordered (the
    # train and tune stages decide), else seeded shuffled (stratified) k-fold.
    order: Literal["auto", "time", "shuffled"] = "auto"
    stack_alpha: float = Field(default=1.0, gt=0, description="stack: L2 strength")

    @model_validator(mode="after")
    def _known_members(self) -> EnsembleConfig:
        for member in self.members:
            if member == "ensemble":
                raise ValueError("members: an ensemble cannot be a member of itself")
            if member not in MEMBER_FAMILIES:
                raise ValueError(
                    f"members: unknown family {member!r} (use {', '.join(MEMBER_FAMILIES)})"
                )
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"members: a family is listed twice ({self.members})")
        if len(self.members) < 2:
            raise ValueError(f"members: needs at least two families, got {self.members}")
        return self


FAMILY_CONFIGS: dict[str, type[Section]] = {
    "xgboost": XGBoostConfig,
    "sklearn": SklearnConfig,
    "torch": TorchConfig,
}
ThresholdMetric = Literal["f1", "balanced_accuracy", "accuracy", "none"]
Objective = Literal["auto", "squared_error", "poisson", "tweedie", "log1p"]
Calibration = Literal["auto", "isotonic", "sigmoid", "none"]
# What each family can fit besides squared error (log1p works for every family: it
# transforms the target and squares the error on that scale).
FAMILY_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "xgboost": ("squared_error", "poisson", "tweedie", "log1p"),
    "sklearn.forest": ("squared_error", "poisson", "log1p"),
    "sklearn.linear": ("squared_error", "poisson", "tweedie", "log1p"),
    "torch": ("squared_error", "poisson", "log1p"),
}


class TrainConfig(Section):
    model: Family = "xgboost"
    device: Device = "auto"
    seed: int = 42
    # "balanced" weighs classes by inverse frequency (binary: xgboost's scale_pos_weight).
    # Off by default: calibrated probabilities and a threshold picked on val already serve
    # a rare class, and on bank marketing (12% positives) balanced weights cost test PR
    # AUC 0.444 -> 0.393 and log loss 0.285 -> 0.384, with 10x the boosting rounds.
    class_weight: Literal["balanced", "none"] = "none"
    # The class whose probability is scored; null takes the second in sorted order.
    positive_class: CategoryValue | None = None
    # Binary only: the decision threshold is picked on val to maximise this metric.
    threshold_metric: ThresholdMetric = "f1"
    # After early stopping picks the rounds/epochs on val, fit again on train + val with
    # that many, so the model learns from the newest rows before test.
    refit: bool = True
    # Regression: the loss. auto: for a count target (whole numbers >= 0) the one of
    # squared_error, poisson and log1p (squared error on log(1 + y)) that scores best on
    # the selection folds; otherwise squared_error.
    objective: Objective = "auto"
    tweedie_power: float = Field(default=1.5, gt=1, lt=2, description="tweedie: variance power")
    # Classification: probabilities are calibrated on val after class weighting; auto
    # picks isotonic, sigmoid or none by log loss, cross-fitted on the val rows.
    calibration: Calibration = "auto"
    # Time-ordered data: choices (the objective, the tuned params) are scored on this many
    # rolling-origin folds over the val period, each early-stopped on the rows before it
    # and refitted as the final model is. 0: scored on val alone.
    selection_folds: int = Field(default=3, ge=0, le=10)
    # Choices are scored fitting at most this many rows (the newest on time-ordered
    # data, a seeded sample otherwise), so a 3M-row table does not pay 20 full fits to
    # choose; the final model always fits every row. null: no cap.
    selection_rows: int | None = Field(default=100_000, ge=1000)
    xgboost: XGBoostConfig = Field(default_factory=XGBoostConfig)
    sklearn: SklearnConfig = Field(default_factory=SklearnConfig)
    torch: TorchConfig = Field(default_factory=TorchConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)

    def family_config(self) -> XGBoostConfig | SklearnConfig | TorchConfig | EnsembleConfig:
        return getattr(self, self.model)

    def family_params(self) -> dict[str, Any]:
        """The family's section as a dict; an ensemble's holds each member's section
        under the member's name, so a model's params say everything it was fitted with."""
        params = self.family_config().model_dump(mode="json")
        if self.model == "ensemble":
            for member in self.ensemble.members:
                params[member] = getattr(self, member).model_dump(mode="json")
            # The out-of-fold fits are choices too: they fit at most this many rows.
            params["selection_rows"] = self.selection_rows
        return params

    def with_time_order(self, time_ordered: bool) -> TrainConfig:
        """`ensemble.order: auto` resolved by the split (`Params.time_ordered`)."""
        if self.model != "ensemble" or self.ensemble.order != "auto":
            return self
        order = "time" if time_ordered else "shuffled"
        return self.model_copy(
            update={"ensemble": self.ensemble.model_copy(update={"order": order})}
        )

    def objectives(self) -> tuple[str, ...]:
        """The objectives the configured family (and sklearn estimator) can fit; for an
        ensemble, those every member can fit."""
        if self.model == "ensemble":
            each = [
                self.model_copy(update={"model": m}).objectives() for m in self.ensemble.members
            ]
            return tuple(name for name in each[0] if all(name in other for other in each))
        if self.model == "sklearn":
            return FAMILY_OBJECTIVES[f"sklearn.{self.sklearn.estimator}"]
        return FAMILY_OBJECTIVES[self.model]

    @model_validator(mode="after")
    def _objective_fits_family(self) -> TrainConfig:
        if self.selection_folds == 1:
            raise ValueError("selection_folds must be 0 (score on val) or at least 2")
        if self.objective != "auto" and self.objective not in self.objectives():
            family = self.model + (
                f" ({self.sklearn.estimator})" if self.model == "sklearn" else ""
            )
            if self.model == "ensemble":
                family = f"every ensemble member ({', '.join(self.ensemble.members)})"
            raise ValueError(
                f"objective: {self.objective} is not available for {family}: "
                f"use one of auto, {', '.join(self.objectives())}"
            )
        return self

    def recorded(self) -> dict[str, Any]:
        """The params a run records: the general ones and the chosen family's."""
        general = self.model_dump(mode="json", exclude={"xgboost", "sklearn", "torch", "ensemble"})
        return {**general, self.model: self.family_params()}


# --- tune ---------------------------------------------------------------------------------


class SearchRange(Section):
    """One hyperparameter: a range (`low`, `high`, `log`, `step`) or a list of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    choices: list[StrictStr | StrictInt | StrictFloat | StrictBool | list[int] | None] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is greater than high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class TuneConfig(Section):
    n_trials: int = Field(default=25, ge=0, description="the study's total; 0: train's params")
    # A safety net only: a budget in seconds makes the study depend on the machine's load.
    timeout: float | None = Field(default=None, gt=0, description="seconds for the search")
    n_jobs: int = Field(default=1, ge=1, description="parallel trials in this process")
    # SQLite (or any RDB URL) lets several workers share one study; null keeps it in memory.
    storage: str | None = "sqlite:///optuna.db"
    sampler_seed: int = 42
    pruner: Literal["hyperband", "median", "none"] = "hyperband"
    cv_folds: int = Field(default=0, ge=0, description="0: score on val; k >= 2: k-fold on train")
    # Tuned params replace train's only when they score better by at least this share of
    # train's loss, on val or on every selection fold. The best of 25 trials is flattered
    # by being the best: on the bike data one that cleared 1% on every fold (2.0, 1.0,
    # 4.5%) was 8% worse on test.
    min_improvement: float = Field(default=0.02, ge=0, lt=1)
    search_space: dict[Family, dict[str, SearchRange]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_keys(self) -> TuneConfig:
        if self.cv_folds == 1:
            raise ValueError("cv_folds must be 0 (off) or at least 2")
        for family, space in self.search_space.items():
            if family == "ensemble":
                raise ValueError(
                    "search_space.ensemble: an ensemble searches its members' spaces: "
                    "put them under search_space.<member> (xgboost, sklearn, torch)"
                )
            model = FAMILY_CONFIGS[family]
            for key, search in space.items():
                where = f"search_space.{family}.{key}"
                if key not in model.model_fields:
                    raise ValueError(
                        f"{where}: not a train.{family} parameter "
                        f"(one of {', '.join(model.model_fields)})"
                    )
                values = search.choices if search.choices is not None else [search.low, search.high]
                for value in values:
                    if search.choices is None and is_integer_param(family, key):
                        value = int(value)
                    try:
                        model.model_validate({key: value})
                    except ValidationError as exc:
                        raise ValueError(
                            f"{where}: {value!r} is not allowed: {describe_errors(exc)}"
                        ) from None
        return self


def is_integer_param(family: Family, key: str) -> bool:
    """Whether a family parameter is a whole number (searched with suggest_int); an
    ensemble's keys name the member first (`xgboost.max_depth`)."""
    if family == "ensemble":
        family, key = key.split(".", 1)  # type: ignore[assignment]
    annotation = FAMILY_CONFIGS[family].model_fields[key].annotation
    return annotation is int or annotation == (int | None)


# --- evaluate -----------------------------------------------------------------------------

Metric = Literal[
    "rmse",
    "mae",
    "r2",
    "mape",
    "roc_auc",
    "pr_auc",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "specificity",
    "log_loss",
    "brier",
    "f1_macro",
    "f1_weighted",
]


# What a group can be compared on: the task's metrics, the share predicted positive
# (binary) and the mean prediction (regression).
FairnessMetric = Literal[Metric, "selection_rate", "mean_prediction"]
GROUP_METRICS = {
    "binary": ("selection_rate",),
    "regression": ("mean_prediction",),
    "multiclass": (),
}


class FairnessConfig(Section):
    """The fairness audit (pipeline/fairness.py): per group of each sensitive column, the
    test metrics with bootstrap intervals, and the gate on the gaps between groups. Off
    while `sensitive_columns` is empty."""

    # Columns whose groups are compared, e.g. [age, marital]; a numeric one needs bands.
    sensitive_columns: list[str] = Field(default_factory=list)
    # Band edges of a numeric column: age: [25, 35, 50, 65] makes <25, 25-35, 35-50,
    # 50-65 and >=65.
    bands: dict[str, list[float]] = Field(default_factory=dict)
    # The largest gap allowed between two groups, per metric: the gate refuses a
    # candidate whose gap's interval lies wholly above it (beyond the bootstrap noise).
    max_gap: dict[FairnessMetric, float] = Field(default_factory=dict)
    resamples: int = Field(default=200, ge=10, description="bootstrap resamples of test")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="of each interval")
    # A smaller group is reported but left out of the gaps: its metrics are noise.
    min_group_rows: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> FairnessConfig:
        stray = [name for name in self.bands if name not in self.sensitive_columns]
        if stray:
            raise ValueError(f"bands: {', '.join(stray)} not in sensitive_columns")
        for name, edges in self.bands.items():
            if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError(f"bands.{name}: edges must be increasing, e.g. [25, 35, 50]")
        negative = [name for name, bound in self.max_gap.items() if not bound >= 0]
        if negative:
            raise ValueError(f"max_gap: {', '.join(negative)} must be >= 0")
        if self.max_gap and not self.sensitive_columns:
            raise ValueError("max_gap needs sensitive_columns: no groups, no gaps")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.sensitive_columns)


class EvaluateConfig(Section):
    # null: rmse for regression, roc_auc for binary, f1_macro for multiclass.
    primary_metric: Metric | None = None
    # The candidate must beat the champion by this share of the champion's score
    # (0.01 = 1% better) on the primary metric, on the same test rows.
    min_improvement: float = Field(default=0.01, ge=0)
    # Absolute bounds every candidate must meet: a minimum for scores where higher is
    # better, a maximum for errors. The first model is judged on these alone.
    floors: dict[Metric, float] = Field(default_factory=dict)
    # Columns whose value groups the naive regression baseline (hour-of-week mean);
    # null derives day-of-week and hour from data.time_column.
    baseline_groups: list[str] | None = None
    importance_repeats: int = Field(default=3, ge=1)
    # Permutation importance shuffles at most this many val rows (a seeded sample): on
    # millions of rows the ranking is the same and the stage minutes shorter.
    importance_rows: int = Field(default=50_000, ge=100)
    seed: int = 42
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)


# --- compress -----------------------------------------------------------------------------


class DistillConfig(Section):
    """A small student fitted on the tuned model's outputs over train + val
    (`pipeline.distill`), served in its place only when it scores within
    `compress.max_metric_drop` of it and its ONNX file is smaller than the teacher's.
    Off by default: it costs a fit at every compress, and at the default tolerance a
    shallow student rarely keeps the teacher's score."""

    student: Literal["none", "xgboost", "mlp"] = "none"
    # The student fits on at most this many train + val rows (a sample seeded by
    # train.seed), so that compress stays quick on millions of rows.
    max_rows: int = Field(default=200_000, ge=100)
    # xgboost student: a fixed number of shallow rounds (no early stopping).
    max_depth: int = Field(default=4, ge=1, le=12)
    n_estimators: int = Field(default=100, ge=1, description="boosting rounds")
    learning_rate: float = Field(default=0.1, gt=0, le=1)
    # mlp student: a fixed number of epochs of a small network.
    hidden_sizes: list[int] = Field(default_factory=lambda: [32], min_length=1)
    epochs: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _positive_widths(self) -> DistillConfig:
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")
        return self


class CompressConfig(Section):
    # Dynamic int8 (tried for torch and linear models). auto: keep it where it scores
    # within max_metric_drop and its file is at most half the float one (mostly matrix
    # weights, where int8 pays); always: wherever it is within max_metric_drop; never.
    # Never decided on a timing: the export must be the same bytes on any machine.
    quantize: Literal["auto", "never", "always"] = "auto"
    # The ONNX model may score at most this share worse than the native one on the
    # primary metric, on the test rows (0.001 = 0.1%); beyond it, compress refuses.
    max_metric_drop: float = Field(default=0.001, ge=0)
    # Timed for reports/compression_latency.json, a record that decides nothing.
    latency_rows: int = Field(default=10_000, ge=1, description="the batch for batch latency")
    latency_calls: int = Field(default=200, ge=10, description="single-row calls timed")
    # A distilled student beside the export (`student: none` turns it off).
    distill: DistillConfig = Field(default_factory=DistillConfig)


# --- deploy -------------------------------------------------------------------------------


class ModelCardConfig(Section):
    """Free text for the model card (pipeline.model_card); the rest is read from reports."""

    # null: derived from the task, the target and the source.
    intended_use: str | None = Field(default=None, min_length=1)
    # Added to the derived ones (the rows and period the model saw, the slices measured).
    limitations: list[str] = Field(default_factory=list)


class DeployConfig(Section):
    model_card: ModelCardConfig = Field(default_factory=ModelCardConfig)


# --- mlflow -------------------------------------------------------------------------------


class MlflowConfig(Section):
    """Where runs and the registry live. MLFLOW_TRACKING_URI, when set, wins."""

    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "driftline"
    registered_model: str = "driftline"


# --- serve --------------------------------------------------------------------------------


class ServeConfig(Section):
    """Limits on what one request to the prediction API may hold; past them the answer
    is 413 (too large) or 422 (malformed), never a 5xx."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="413 above")
    max_batch: int = Field(default=10_000, ge=1, description="records in one request")
    max_string_length: int = Field(default=1_000, ge=1, description="characters in one value")
    max_depth: int = Field(default=4, ge=3, description="JSON nesting: {records: [{...}]} is 3")


# --- monitor ------------------------------------------------------------------------------


class MonitorConfig(Section):
    """The monitoring flow: which window it reads, when it calls drift, and the guards
    that keep drift alerts from starting a retraining storm."""

    cron: str = Field(default="0 * * * *", min_length=1, description="when the monitor runs")
    timezone: str = "UTC"
    window_hours: float = Field(default=168, gt=0, description="the newest production window")
    min_window_rows: int = Field(default=500, ge=1, description="smaller windows decide nothing")
    # Drift: the drifted columns hold at least this share of the counted columns'
    # weight (each weighs the champion's feature importance), or the predictions drifted
    # (pipeline/drift_rule.py)...
    drift_share: float = Field(default=0.5, gt=0, le=1)
    # Reported, never counted: columns that say when a row is, on a cycle longer than the
    # window (clean's calendar features are such columns already)...
    calendar_columns: list[str] = Field(default_factory=list)
    # ...and columns the decision should not weigh for any other reason.
    ignore_columns: list[str] = Field(default_factory=list)
    # With a time column, compare a window with the reference rows from its own weeks of
    # the year, when the reference holds them (pipeline/drift_rule.py).
    seasonal_reference: bool = True
    # ...or the quality metric (evaluate.primary_metric) fell by more than this share
    # against the reference, once labels have arrived.
    max_metric_drop: float = Field(default=0.1, ge=0)
    min_labelled_rows: int = Field(default=200, ge=1, description="fewer: quality not judged")
    # Until then the decision uses the quality estimated without labels (CBPE for a
    # classifier, DLE for a regression: pipeline/quality_estimate.py). DLE's loss model is
    # fitted by evaluate on the test rows, this many boosting rounds (seed: evaluate.seed).
    loss_estimator_rounds: int = Field(default=100, ge=1, description="DLE's boosting rounds")
    cooldown_minutes: float = Field(default=360, ge=0, description="between two retrainings")
    retrain_pool: str = Field(default="gpu", min_length=1)
    monitor_pool: str = Field(default="cpu", min_length=1)
    reports: str = "reports/monitoring"
    # Predictions, late labels and the retraining ledger: a SQLAlchemy URL (a SQLite file
    # on a laptop, PostgreSQL in production) or a folder of parquet files by day.
    prediction_log: str = "sqlite:///data/production.db"
    # Predictions and the labels stored beside them older than this many days are
    # deleted (whole day folders of a parquet log, rows of a SQL one) by `driftline
    # serve` as it writes, at most hourly. null keeps them forever.
    prediction_log_retention_days: int | None = Field(
        default=None, ge=1, description="days the log keeps; null: forever"
    )
    evidently_workspace: str = "evidently"


# --- orchestrate --------------------------------------------------------------------------


class OrchestrateConfig(Section):
    """The training flow: retries for transient failures, and where a run's data
    version goes once it succeeds."""

    retries: int = Field(default=2, ge=0, description="for I/O and tracking-server errors")
    retry_delay_seconds: float = Field(default=5, ge=0)
    push: bool = True  # `dvc push` to the default remote, when one is configured
    git_branch: str | None = None  # commit dvc.lock to this branch after a run
    git_push: bool = True  # and push that branch to the `origin` remote, when there is one


# --- stores -------------------------------------------------------------------------------


class StoresConfig(Section):
    """Who may read the stores Driftline creates: the prediction log and its labels, the
    retraining ledger, the MLflow SQLite store and artifact folder, the Optuna SQLite
    storage, the monitor's reports and the Evidently workspace (pipeline/stores.py)."""

    # They hold production inputs, predictions and labels: owner-only by default. A
    # store that exists already keeps its permissions; false: the umask decides.
    private: bool = Field(
        default=True, description="create stores owner-only (files 0600, folders 0700)"
    )


# --- the whole file -----------------------------------------------------------------------


class Params(Section):
    data: DataConfig
    validation: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    orchestrate: OrchestrateConfig = Field(default_factory=OrchestrateConfig)
    stores: StoresConfig = Field(default_factory=StoresConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.split.method == "time" and self.data.time_column is None:
            raise ValueError("split.method is time, so data.time_column must name the time column")
        if self.tune.cv_folds and self.time_ordered:
            raise ValueError(
                "tune.cv_folds: time-ordered data is scored on rolling-origin folds over the "
                "val period (train.selection_folds); set cv_folds to 0"
            )
        uses_torch = self.train.model == "torch" or (
            self.train.model == "ensemble" and "torch" in self.train.ensemble.members
        )
        if uses_torch and self.tune.n_jobs > 1:
            # Threads would share torch's global RNG and thread count between trials.
            raise ValueError(
                "tune.n_jobs > 1 runs trials in threads, which torch cannot share: keep it "
                "at 1 and add processes with `driftline tune --search-only` instead"
            )
        return self

    @property
    def time_ordered(self) -> bool:
        """Whether split cuts by time or row order, so later rows must be predicted from
        earlier ones (split's `auto` goes by time when there is a time column)."""
        method = self.split.method
        return method in ("time", "ordered") or (
            method == "auto" and self.data.time_column is not None
        )


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and check params.yaml; any problem raises ConfigError naming the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, validate, ...)")
    return parse_params(with_environment(raw), origin=str(path))


# Where the shared services are, for a machine that runs against them: the same
# params.yaml then serves a laptop and production. Only settings that choose a place,
# never one that changes a model, so `dvc.lock` (which sees params.yaml) stays true.
ENVIRONMENT_OVERRIDES = {
    "DRIFTLINE_PREDICTION_LOG": ("monitor", "prediction_log"),
    "DRIFTLINE_OPTUNA_STORAGE": ("tune", "storage"),
    "DRIFTLINE_DATA_BRANCH": ("orchestrate", "git_branch"),
}


def with_environment(raw: dict) -> dict:
    """`raw` with the settings of ENVIRONMENT_OVERRIDES whose variable is set (non-empty)."""
    merged = dict(raw)
    for variable, (section, key) in ENVIRONMENT_OVERRIDES.items():
        value = os.environ.get(variable)
        current = merged.get(section) or {}
        if value and isinstance(current, dict):  # a malformed section is reported as such
            merged[section] = {**current, key: value}
    return merged


def parse_params(raw: dict, origin: str = "params") -> Params:
    """Build Params from a mapping; errors name each bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {describe_errors(exc)}") from None


def describe_errors(exc: ValidationError) -> str:
    """pydantic's errors as `key.path: message` joined on one line."""
    parts = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        elif error["type"] == "missing":
            message = "required key is missing"
        parts.append(f"{key}: {message}" if key else message)
    return "; ".join(parts)
