"""Data expectations: a Great Expectations suite built from the data set's schema.

`build_checks` turns a DatasetSpec into plain Check records (no GX import), so the
suite's shape can be tested cheaply. `run_checks` runs them as a real GX 1.x suite
through a checkpoint, which also renders GX's HTML Data Docs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Severity, ValidateConfig
from pipeline.schema import DatasetSpec

NUMERIC_DTYPES = [
    *(f"{kind}{bits}" for kind in ("int", "uint") for bits in (8, 16, 32, 64)),
    "float16",
    "float32",
    "float64",
    *(f"{kind}{bits}" for kind in ("Int", "UInt") for bits in (8, 16, 32, 64)),
    "Float32",
    "Float64",
]
EXAMPLES = 5


@dataclass(frozen=True)
class Check:
    """One expectation: the GX class, its arguments, and what a failure means."""

    rule: str
    severity: Severity
    expectation: str
    kwargs: dict[str, Any]

    @property
    def column(self) -> str | None:
        column = self.kwargs.get("column")
        if column is None and "column_list" in self.kwargs:
            return "+".join(self.kwargs["column_list"])
        return column


@dataclass(frozen=True)
class Outcome:
    check: Check
    success: bool
    observed: str

    def describe(self) -> str:
        """One line a user can act on: column, rule, observed value."""
        where = f"column {self.check.column!r}" if self.check.column else "table"
        arguments = {
            key: value
            for key, value in self.check.kwargs.items()
            if key not in ("column", "column_list", "value_set")
        }
        if "value_set" in self.check.kwargs:
            arguments["allowed"] = _short(self.check.kwargs["value_set"])
        if arguments.get("type_list") == NUMERIC_DTYPES:
            arguments["type_list"] = "numeric"
        shown = ", ".join(f"{key}={value}" for key, value in arguments.items())
        rule = f"{self.check.expectation}({shown})" if shown else self.check.expectation
        return f"{where}: {rule}: {self.observed}"


@dataclass(frozen=True)
class ValidationReport:
    outcomes: list[Outcome]
    rows: int
    columns: int
    docs_index: Path | None = field(default=None)

    @property
    def critical_failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.check.severity == "critical"]

    @property
    def warnings(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.check.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.critical_failures

    def figures(self) -> dict[str, int]:
        return {
            "expectations": len(self.outcomes),
            "passed": sum(outcome.success for outcome in self.outcomes),
            "warnings": len(self.warnings),
            "critical_failures": len(self.critical_failures),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.passed,
            "rows": self.rows,
            "columns": self.columns,
            **self.figures(),
            "results": [
                {
                    "rule": outcome.check.rule,
                    "severity": outcome.check.severity,
                    "column": outcome.check.column,
                    "expectation": outcome.check.expectation,
                    "kwargs": outcome.check.kwargs,
                    "success": outcome.success,
                    "observed": outcome.observed,
                }
                for outcome in self.outcomes
            ],
        }


def build_checks(spec: DatasetSpec, frame: pd.DataFrame, config: ValidateConfig) -> list[Check]:
    """The suite for this data set. Per-column checks cover only columns that exist;
    a missing column fails its `expect_column_to_exist` once instead."""
    severity = config.severity
    checks: list[Check] = []
    present = set(frame.columns)
    schema = spec.schema

    def add(rule: str, expectation: str, **kwargs: Any) -> None:
        level: Severity = getattr(severity, rule)
        if level != "off":
            checks.append(Check(rule, level, expectation, kwargs))

    expected = [spec.target, *spec.key_columns]
    if spec.time_column:
        expected.append(spec.time_column)
    expected += [c for c in schema.declared_columns() if c not in schema.drop]
    for column in dict.fromkeys(expected):
        if column == spec.target:
            add("target", "ExpectColumnToExist", column=column)
        else:
            add("columns", "ExpectColumnToExist", column=column)

    add("row_count", "ExpectTableRowCountToBeBetween", min_value=config.min_rows)

    if spec.target in present:
        add("target", "ExpectColumnValuesToNotBeNull", column=spec.target)
        if spec.task == "regression":
            add(
                "target",
                "ExpectColumnValuesToBeInTypeList",
                column=spec.target,
                type_list=NUMERIC_DTYPES,
            )
        else:
            declared = schema.categorical.get(spec.target)
            if declared is not None and declared.values is not None:
                add(
                    "target",
                    "ExpectColumnValuesToBeInSet",
                    column=spec.target,
                    value_set=declared.values,
                )
            classes = {"min_value": 2, "max_value": 2 if spec.task == "binary" else None}
            add("target", "ExpectColumnUniqueValueCountToBeBetween", column=spec.target, **classes)

    keys = [column for column in spec.key_columns if column in present]
    if keys:
        for column in keys:
            add("key", "ExpectColumnValuesToNotBeNull", column=column)
        if len(keys) == 1:
            add("key", "ExpectColumnValuesToBeUnique", column=keys[0])
        else:
            add("key", "ExpectCompoundColumnsToBeUnique", column_list=keys)

    if spec.time_column in present and spec.time_column != spec.target:
        add("required", "ExpectColumnValuesToNotBeNull", column=spec.time_column)

    for column, rules in schema.numeric.items():
        if column not in present:
            continue
        if column != spec.target:  # the target's type is checked under the target rule
            add(
                "types", "ExpectColumnValuesToBeInTypeList", column=column, type_list=NUMERIC_DTYPES
            )
        # A range means nothing on text; the type check already reports that.
        bounded = rules.min is not None or rules.max is not None
        if bounded and pd.api.types.is_numeric_dtype(frame[column]):
            # A feature out of range is clipped by clean; a target out of range is a
            # wrong label, which nothing downstream may repair: the target rule's severity.
            add(
                "target" if column == spec.target else "range",
                "ExpectColumnValuesToBeBetween",
                column=column,
                min_value=rules.min,
                max_value=rules.max,
            )

    for column, rules in schema.categorical.items():
        if column == spec.target or column not in present or rules.values is None:
            continue
        allowed = [*rules.values, *spec.na_values]
        add("category", "ExpectColumnValuesToBeInSet", column=column, value_set=allowed)

    for column, rules in schema.datetime.items():
        if column not in present or pd.api.types.is_datetime64_any_dtype(frame[column]):
            continue
        if rules.format:
            add(
                "datetime",
                "ExpectColumnValuesToMatchStrftimeFormat",
                column=column,
                strftime_format=rules.format,
            )
        else:
            add("datetime", "ExpectColumnValuesToBeDateutilParseable", column=column)

    declared = {**schema.numeric, **schema.categorical, **schema.datetime}
    for column, rules in declared.items():
        if column == spec.target or column == spec.time_column or column not in present:
            continue
        if rules.required:
            add("required", "ExpectColumnValuesToNotBeNull", column=column)
        else:
            mostly = round(1 - config.max_missing_fraction, 6)
            add("missing", "ExpectColumnValuesToNotBeNull", column=column, mostly=mostly)
    return checks


def run_checks(frame: pd.DataFrame, checks: list[Check], docs_dir: Path | None) -> list[Outcome]:
    """Run the checks as one GX suite. With `docs_dir`, GX renders Data Docs there."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas("driftline")
        .add_dataframe_asset("raw")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = gx.ExpectationSuite(name="driftline_raw")
    for index, check in enumerate(checks):
        expectation_class = getattr(gxe, check.expectation)
        meta = {"check": index, "rule": check.rule, "severity": check.severity}
        suite.add_expectation(expectation_class(**check.kwargs, meta=meta))
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="raw_data", data=batch_definition, suite=suite)
    )
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="driftline",
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["driftline"]))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="driftline_validate",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "SUMMARY"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = result.run_results.values()
    by_index = {int(r.expectation_config.meta["check"]): r for r in validation.results}
    outcomes = []
    for index, check in enumerate(checks):
        gx_result = by_index[index]
        observed = _observed(check, gx_result, frame)
        outcomes.append(Outcome(check=check, success=bool(gx_result.success), observed=observed))
    return outcomes


def _observed(check: Check, gx_result: Any, frame: pd.DataFrame) -> str:
    """What the data showed, in words, read from the GX result by name."""
    details = gx_result.result or {}
    if check.expectation == "ExpectColumnToExist":
        return "present" if gx_result.success else "column is missing"
    if check.rule == "types" and not gx_result.success:
        return _non_numeric_examples(frame[check.kwargs["column"]])
    if "unexpected_count" in details:
        count = details["unexpected_count"]
        total = details.get("element_count", len(frame))
        if not count:
            return f"0 of {total} rows unexpected"
        examples = _short(details.get("partial_unexpected_list") or [])
        return f"{count} of {total} rows unexpected, e.g. {examples}"
    if "observed_value" in details:
        return f"observed {details['observed_value']}"
    return "passed" if gx_result.success else "could not be evaluated (see the Data Docs)"


def _non_numeric_examples(values: pd.Series) -> str:
    parsed = pd.to_numeric(values, errors="coerce")
    bad = values[parsed.isna() & values.notna()]
    return (
        f"type {values.dtype}; {len(bad)} of {len(values)} values are not numbers, "
        f"e.g. {_short(bad.unique().tolist())}"
    )


def _short(values: list) -> str:
    distinct = list(dict.fromkeys(repr(value) for value in values))
    shown = distinct[:EXAMPLES]
    more = len(distinct) - EXAMPLES
    return "[" + ", ".join(shown) + (f", ... {more} more" if more > 0 else "") + "]"
