"""Everything about params that can be checked before any work, against the data source.

`pydantic` (pipeline.config) checks each key on its own. This module checks params
against the data they will run on: every column a key names is in the source's header
(or, for a SQL source, in the pinned schema); the task fits the target; the metrics and
floors are the task's; `data.until` falls inside the data's time range. All problems
are reported at once, each naming its key, so a user fixes them in one go, at second
1 and not after training. `driftline check-params` and dvc.yaml's first stage, `check`,
run it.

Reading the source costs what ingest's read costs (Parquet: only the header and the
target and time columns); a SQL source is not queried here (ingest checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import GROUP_METRICS, Params, is_sql_url
from pipeline.errors import ConfigError, DataError
from pipeline.metrics import DEFAULT_PRIMARY, TASK_METRICS, primary_metric
from pipeline.schema import infer_task


@dataclass(frozen=True)
class SourceFacts:
    """What the checks need from the source: its header, target and time columns."""

    columns: tuple[str, ...]
    target: pd.Series | None
    times: pd.Series | None


def missing_for_dvc(params_file: Path) -> list[str]:
    """The keys the dvc.yaml beside `params_file` declares that the file lacks: DVC
    stops a stage whose declared param is missing, even where the config has a default."""
    import yaml

    dvc_yaml = params_file.parent / "dvc.yaml"
    if not dvc_yaml.exists():
        return []
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    declared = {
        entry
        for body in stages.values()
        for entry in body.get("params", [])
        if isinstance(entry, str)
    }
    missing = []
    for key in sorted(declared):
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    return missing


@dataclass(frozen=True)
class Checked:
    params: Params
    facts: dict[str, Any]  # what was checked: the report of the check stage

    @property
    def primary_metric(self) -> str | None:
        task = self.facts["task"]
        return task and primary_metric(task, self.params.evaluate.primary_metric)


def check_file(params_file: Path) -> Checked:
    """`check` for a params file in a project: the keys DVC needs, then the data."""
    from pipeline.config import load_params

    params = load_params(params_file)
    missing = missing_for_dvc(params_file)
    if missing:
        raise ConfigError(
            f"{params_file}: dvc.yaml's stages read {', '.join(missing)}, which it lacks: "
            "`driftline init SOURCE --target COLUMN` writes a complete file"
        )
    return Checked(params, check(params))


def read_facts(params: Params) -> SourceFacts | None:
    """The source's header, target and time column; None for a SQL source."""
    from pipeline.sources import PARQUET_SUFFIXES, expand_environment, read_source

    data = params.data
    source = expand_environment(data.source)
    if is_sql_url(source):
        return None
    wanted = [name for name in (data.target, data.time_column) if name]
    path = Path(source)
    if path.is_file() and path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        try:
            columns = tuple(pq.read_schema(path).names)
            present = [name for name in wanted if name in columns]
            frame = pq.read_table(path, columns=present).to_pandas()
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise ConfigError(f"data.source: cannot read {path} as Parquet ({exc})") from None
    else:
        frame = read_source(data).frame
        columns = tuple(map(str, frame.columns))
    return SourceFacts(
        columns=columns,
        target=frame[data.target] if data.target in frame.columns else None,
        times=frame[data.time_column]
        if data.time_column and data.time_column in frame.columns
        else None,
    )


def problems(params: Params, facts: SourceFacts | None) -> list[str]:
    """Each mismatch between params and the data, as `key: what to fix`."""
    found = _column_problems(params, facts)
    task, task_problems = _task(params, facts)
    found += task_problems
    if task is not None:
        found += _metric_problems(params, task)
    found += _until_problems(params, facts)
    return found


def check(params: Params) -> dict[str, Any]:
    """Raise ConfigError with every problem on one line; else what was checked."""
    facts = read_facts(params)
    found = problems(params, facts)
    if found:
        raise ConfigError("; ".join(found))
    task, _ = _task(params, facts)
    # Facts of the data only: a passing edit of any other key leaves the report as it
    # was, so nothing downstream of check re-runs because of it.
    summary: dict[str, Any] = {
        "task": task,
        "columns": list(facts.columns) if facts is not None else None,
    }
    if facts is not None and facts.times is not None:
        times = _parse_times(facts.times)
        summary["time_range"] = [str(times.min()), str(times.max())]
    return summary


def _named_columns(params: Params) -> list[tuple[str, str]]:
    """(key, column) for every column params name, the target first."""
    data = params.data
    named = [("data.target", data.target)]
    if data.time_column:
        named.append(("data.time_column", data.time_column))
    named += [("data.key_columns", name) for name in data.key_columns]
    named += [("data.slice_columns", name) for name in data.slice_columns]
    if data.schema_ is not None and params.validation.severity.columns == "critical":
        schema = data.schema_
        for group in ("numeric", "categorical", "datetime"):
            named += [(f"data.schema.{group}", name) for name in getattr(schema, group)]
        named += [("data.schema.id", name) for name in schema.id]
    named += [("clean.columns", name) for name in params.clean.columns]
    named += [("clean.calendar_features", name) for name in params.clean.calendar_features]
    return named


def _column_problems(params: Params, facts: SourceFacts | None) -> list[str]:
    if facts is not None:
        known, where = set(facts.columns), "the data"
    elif params.data.schema_ is not None:
        known, where = set(params.data.schema_.declared_columns()), "the pinned schema"
    else:
        return []  # a SQL source without a pinned schema: ingest checks its columns
    missing: dict[str, list[str]] = {}
    for key, column in _named_columns(params):
        if column not in known:
            missing.setdefault(key, []).append(column)
    derived = {
        f"{column}_{part}"
        for column, parts in params.clean.calendar_features.items()
        for part in parts
    }
    groups = [c for c in params.evaluate.baseline_groups or [] if c not in known | derived]
    if groups:
        missing["evaluate.baseline_groups"] = groups
    fairness = params.evaluate.fairness
    sensitive = [c for c in fairness.sensitive_columns if c not in known | derived]
    if sensitive:
        missing["evaluate.fairness.sensitive_columns"] = sensitive
    # The drift rule's lists name features, clean's calendar features among them.
    for key in ("calendar_columns", "ignore_columns"):
        unknown = [c for c in getattr(params.monitor, key) if c not in known | derived]
        if unknown:
            missing[f"monitor.{key}"] = unknown
    found = [f"{key}: {', '.join(columns)} not in {where}" for key, columns in missing.items()]
    schema = params.data.schema_
    unbanded = [
        column
        for column in fairness.sensitive_columns
        if schema is not None and column in schema.numeric and column not in fairness.bands
    ]
    if unbanded:
        found.append(
            f"evaluate.fairness.bands: {', '.join(unbanded)} numeric, so it needs band edges, "
            f"e.g. {unbanded[0]}: [25, 35, 50, 65]"
        )
    if found and facts is not None:
        found.append(f"the data's columns are {_listing(facts.columns)}")
    return found


def _task(params: Params, facts: SourceFacts | None) -> tuple[str | None, list[str]]:
    """The task to check the metrics against, and whether the target fits the declared
    task. When it does not, the metrics are checked against the task the target implies,
    so a user fixing the task is not then stopped by the metric."""
    data = params.data
    target = facts.target if facts is not None else None
    if target is None:
        return data.task, []
    if data.task is None:
        return infer_task(target, data.na_values), []
    try:  # what the target implies, for the metrics when the declared task does not fit
        inferred = infer_task(target, data.na_values)
    except DataError:  # e.g. text with many classes: only a declared task says what it is
        inferred = data.task
    values = target.dropna()
    if data.na_values and values.dtype == object:
        values = values[~values.isin(data.na_values)]
    distinct = values.nunique()
    if distinct < 2:
        return data.task, [f"data.target: {data.target!r} has one value; nothing to learn"]
    if data.task == "regression":
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any():
            examples = _listing(values[numbers.isna()].astype(str).unique()[:3])
            return inferred, [
                f"data.task: regression, but target {data.target!r} holds text ({examples}): "
                f"set {inferred}, or leave task out to infer it"
            ]
    elif data.task == "binary" and distinct > 2:
        return inferred, [
            f"data.task: binary, but target {data.target!r} has {distinct} values: "
            f"set {inferred}, or leave task out to infer it"
        ]
    return data.task, []


def _metric_problems(params: Params, task: str) -> list[str]:
    allowed = TASK_METRICS[task]
    found = []
    metric = params.evaluate.primary_metric
    if metric is not None and metric not in allowed:
        found.append(
            f"evaluate.primary_metric: {metric} is not a {task} metric "
            f"(one of {', '.join(allowed)}; null picks {DEFAULT_PRIMARY[task]})"
        )
    wrong = [name for name in params.evaluate.floors if name not in allowed]
    if wrong:
        found.append(
            f"evaluate.floors: {', '.join(wrong)} not a {task} metric (one of {', '.join(allowed)})"
        )
    compared = allowed + GROUP_METRICS[task]
    gaps = [name for name in params.evaluate.fairness.max_gap if name not in compared]
    if gaps:
        found.append(
            f"evaluate.fairness.max_gap: {', '.join(gaps)} not compared for a {task} task "
            f"(one of {', '.join(compared)})"
        )
    return found


def _parse_times(values: pd.Series) -> pd.Series:
    """The time column as ingest's hold-out reads it (UTC, unparseable rows dropped)."""
    return pd.to_datetime(values, errors="coerce", format="mixed", utc=True).dropna()


def _until_problems(params: Params, facts: SourceFacts | None) -> list[str]:
    """`data.until` must hold some rows out and keep some (ingest keeps the rows before
    the end of that day)."""
    until = params.data.until
    if until is None or facts is None or facts.times is None:
        return []
    times = _parse_times(facts.times)
    if times.empty:
        return [f"data.time_column: {params.data.time_column!r} holds no parseable time"]
    first, last = times.min(), times.max()
    end_of_until = pd.Timestamp(until, tz="UTC") + pd.Timedelta(days=1)
    span = f"the data runs from {first.date()} to {last.date()}"
    if end_of_until <= first:
        return [f"data.until: {until} holds every row out ({span})"]
    if end_of_until > last:
        return [
            f"data.until: {until} holds no row out ({span}): set a date inside that range, "
            "or null to train on every row"
        ]
    return []


def _listing(values: Any, limit: int = 20) -> str:
    values = [str(value) for value in values]
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more
