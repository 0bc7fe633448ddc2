"""The model card of a candidate: what it is, what it saw, how well it does and where not.

Deploy builds it from what evaluate and split already wrote (the test metrics beside
the untuned model, the baseline and the champion; per-slice metrics; permutation
importance; the gate; the quality estimate; the fairness audit when there is one) and
the provenance tags of the run that trained it. It is markdown: the MLflow UI renders
it as the registered version's description, and it travels as `model_card.md` in the
run and in `reports/model_card.md`. Building it is a pure function of those records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.secrets import mask_url

CARD_FILE = "model_card.md"
TOP_FEATURES = 10
MAX_TABLE_ROWS = 20  # a slice column or fairness table longer than this is cut, and says so


@dataclass(frozen=True)
class Provenance:
    """What the training run saw: the tags tracking.provenance_tags put on it."""

    data_version: str = ""
    dvc_lock_sha256: str = ""
    git_commit: str = ""
    git_dirty: str = ""

    @classmethod
    def from_run_tags(cls, tags: Mapping[str, str]) -> Provenance:
        return cls(
            data_version=tags.get("driftline.data_version", ""),
            dvc_lock_sha256=tags.get("driftline.dvc_lock_sha256", ""),
            git_commit=tags.get("mlflow.source.git.commit", ""),
            git_dirty=tags.get("driftline.git_dirty", ""),
        )

    def of_data(self) -> Provenance:
        """The data version alone: what a card that is itself versioned may say."""
        return Provenance(data_version=self.data_version)


@dataclass(frozen=True)
class CardInputs:
    """Everything a card says, as the stages recorded it (dicts as read from JSON)."""

    registered_model: str
    evaluation: Mapping[str, Any]  # reports/evaluation.json
    gate: Mapping[str, Any]  # reports/gate.json
    model: Mapping[str, Any]  # the model folder's model.json
    source: str  # data.source (a URL's password is masked)
    version: str | None = None  # the registry version; None when nothing was registered
    outcome: str = ""  # deploy's decision, in words
    split: Mapping[str, Any] | None = None  # reports/split.json
    fairness: Mapping[str, Any] | None = None  # reports/fairness.json, when audited
    provenance: Provenance = field(default_factory=Provenance)
    intended_use: str | None = None  # None: derived from the task and the data
    limitations: Sequence[str] = ()  # added to the derived ones


def build_model_card(inputs: CardInputs) -> str:
    """The card as markdown; sections whose record is absent say so instead of failing."""
    evaluation = inputs.evaluation
    metric = str(evaluation.get("primary_metric") or inputs.gate.get("primary_metric") or "")
    sections = [
        _title(inputs),
        _model_section(inputs, metric),
        _data_section(inputs),
        _use_section(inputs),
        _metrics_section(evaluation, inputs.gate, metric),
        _slices_section(evaluation, metric),
        _fairness_section(inputs.fairness),
        _features_section(evaluation),
        _quality_section(evaluation.get("quality_estimate")),
    ]
    return "\n\n".join(section.rstrip() for section in sections) + "\n"


def _title(inputs: CardInputs) -> str:
    name = inputs.registered_model
    heading = (
        f"# Model card: {name} v{inputs.version}" if inputs.version else f"# Model card: {name}"
    )
    status = (
        f"Registered as version {inputs.version} of `{name}`."
        if inputs.version
        else f"Not registered in `{name}`."
    )
    if inputs.outcome:
        status += f" Deploy: {inputs.outcome}"
    return f"{heading}\n\n{status}"


def _model_section(inputs: CardInputs, metric: str) -> str:
    model = inputs.model
    family = model.get("family") or inputs.evaluation.get("model", {}).get("family", "unknown")
    lines = [
        "## Model",
        "",
        f"- Task: {model.get('task', 'unknown')}, predicting `{model.get('target', '?')}`",
        f"- Family: {family}"
        + (f" (objective {model['objective']})" if model.get("objective") else ""),
    ]
    features = model.get("features") or {}
    numeric, categorical = features.get("numeric") or [], features.get("categorical") or []
    if numeric or categorical:
        lines.append(f"- Inputs: {len(numeric)} numeric and {len(categorical)} categorical columns")
    if model.get("classes"):
        lines.append(f"- Classes: {', '.join(f'`{c}`' for c in model['classes'])}")
    if model.get("threshold") is not None:
        chosen_by = (
            f" (chosen for {model['threshold_metric']})" if model.get("threshold_metric") else ""
        )
        lines.append(f"- Decision threshold: {_number(model['threshold'])}{chosen_by}")
    if model.get("calibration"):
        lines.append(f"- Calibration: {_describe(model['calibration'])}")
    if metric:
        lines.append(f"- Primary metric: {metric}")
    return "\n".join(lines)


def _data_section(inputs: CardInputs) -> str:
    provenance = inputs.provenance
    data_version = provenance.data_version or str(inputs.model.get("data_version") or "")
    lines = ["## Data", "", f"- Source: `{mask_url(inputs.source)}`"]
    lines.append(f"- Data version: `{data_version}`" if data_version else "- Data version: unknown")
    if provenance.dvc_lock_sha256:
        lines.append(f"- dvc.lock sha256: `{provenance.dvc_lock_sha256[:16]}`")
    if provenance.git_commit:
        dirty = " (pipeline/ had uncommitted changes)" if provenance.git_dirty == "True" else ""
        lines.append(f"- Git commit: `{provenance.git_commit[:12]}`{dirty}")
    split = inputs.split or {}
    parts = [name for name in ("train", "val", "test") if isinstance(split.get(name), Mapping)]
    if parts:
        lines += ["", f"Split ({split.get('method', 'unknown')}):", ""]
        if any(split[name].get("start") for name in parts):
            lines += _table(
                ["part", "rows", "from", "to"],
                [
                    [
                        name,
                        split[name].get("rows"),
                        _date(split[name].get("start")),
                        _date(split[name].get("end")),
                    ]
                    for name in parts
                ],
            )
        else:
            lines += _table(["part", "rows"], [[name, split[name].get("rows")] for name in parts])
    else:
        lines.append("- Split: no report (reports/split.json)")
    return "\n".join(lines)


def _use_section(inputs: CardInputs) -> str:
    model = inputs.model
    task = model.get("task", "")
    source = mask_url(inputs.source)
    if inputs.intended_use:
        use = inputs.intended_use.strip()
    else:
        what = "the class of" if task in ("binary", "multiclass") else "the value of"
        use = (
            f"Predicting {what} `{model.get('target', 'the target')}` for records shaped like "
            f"its training data ({source}), served through Driftline's API."
        )
    limits = [_seen(inputs.split or {}, source)]
    slices = inputs.evaluation.get("slices") or {}
    if slices:
        limits.append(
            f"Per-slice results cover {', '.join(f'`{c}`' for c in slices)} only; other groups "
            "were not measured, and a group of a few test rows gives a noisy figure."
        )
    if not audited(inputs.fairness):
        limits.append("No fairness audit was run (evaluate.fairness.sensitive_columns is empty).")
    limits += [str(limit) for limit in inputs.limitations]
    return "\n".join(
        ["## Intended use", "", use, "", "## Limitations", "", *(f"- {x}" for x in limits)]
    )


def _seen(split: Mapping[str, Any], source: str) -> str:
    """What the model learned from (train and val: refit may use both) and was tested on."""
    parts = {
        name: split[name]
        for name in ("train", "val", "test")
        if isinstance(split.get(name), Mapping)
    }
    if "train" not in parts:
        return f"Trained on {source}; the split's report is missing, so its rows are unknown."
    learned = sum(int(parts[name].get("rows") or 0) for name in ("train", "val") if name in parts)
    last = parts.get("val", parts["train"])
    test = parts.get("test", {})
    start, end = _date(parts["train"].get("start")), _date(last.get("end"))
    if start and end:
        tested = (
            f" and tested on {test.get('rows')} rows from {_date(test.get('start'))} to "
            f"{_date(test.get('end'))}"
            if test
            else ""
        )
        return (
            f"Learned from at most {learned} rows of {source}, from {start} to {end}{tested}; "
            f"not validated outside {start} to {_date(test.get('end')) or end} or on other "
            "populations, and its accuracy is expected to decay as the data drifts away from "
            "that period (the monitor watches for it)."
        )
    tested = f" and tested on {test.get('rows')} held-out rows" if test else ""
    ordered = split.get("method") in ("time", "ordered")
    return (
        f"Learned from at most {learned} rows of {source} (its train and val parts){tested}; "
        "not validated on other populations"
        + (
            ", and as its rows are in time order, its accuracy is expected to decay on later "
            "ones (the monitor watches for it)."
            if ordered
            else "."
        )
    )


def _date(value: Any) -> str:
    """A split boundary as written by split, without a midnight time of day."""
    return str(value).removesuffix(" 00:00:00") if value else ""


def _metrics_section(evaluation: Mapping[str, Any], gate: Mapping[str, Any], metric: str) -> str:
    test = evaluation.get("test") or gate.get("candidate") or {}
    untuned = evaluation.get("untuned") or {}
    baseline = dict(evaluation.get("baseline") or {})
    baseline_name = baseline.pop("name", "baseline")
    champion = evaluation.get("champion") or gate.get("champion") or {}
    rows = evaluation.get("test_rows")
    heading = f"## Test metrics ({rows} rows)" if rows is not None else "## Test metrics"
    columns = ["metric", "this model"]
    sources: list[Mapping[str, Any]] = [test]
    for label, values in (("untuned", untuned), (f"baseline: {baseline_name}", baseline)):
        if values:
            columns.append(label)
            sources.append(values)
    if champion:
        judged = gate.get("champion_version")
        columns.append(f"champion v{judged}" if judged else "champion")
        sources.append(champion)
    names = sorted(test, key=lambda name: (name != metric, list(test).index(name)))
    lines = [heading, ""]
    lines += _table(columns, [[_bold(n, n == metric), *(s.get(n) for s in sources)] for n in names])
    passed = gate.get("passed")
    verdict = "passed" if passed else "refused" if passed is not None else "unknown"
    lines += ["", f"Gate: {verdict}: {gate.get('reason', 'no reason recorded')}"]
    floors = gate.get("floors") or {}
    if floors:
        lines += [""]
        lines += _table(
            ["floor", "bound", "value", "met"],
            [
                [
                    name,
                    f"{'≥' if floor.get('kind') == 'min' else '≤'} {_number(floor.get('bound'))}",
                    floor.get("value"),
                    "yes" if floor.get("met") else "no",
                ]
                for name, floor in floors.items()
                if isinstance(floor, Mapping)
            ],
        )
    return "\n".join(lines)


def _slices_section(evaluation: Mapping[str, Any], metric: str) -> str:
    slices = evaluation.get("slices") or {}
    if not slices:
        return "## Slices\n\nNo slice columns (data.slice_columns is empty)."
    overall = (evaluation.get("test") or {}).get(metric)
    lines = [
        "## Slices",
        "",
        f"{metric} on the test rows of each group (overall {_number(overall)}).",
    ]
    for column, groups in slices.items():
        rows = [
            [group.get("value"), group.get("rows"), group.get(metric)]
            for group in groups
            if isinstance(group, Mapping)
        ]
        lines += ["", f"`{column}`:", ""]
        lines += _cut(_table(["value", "rows", metric], rows[:MAX_TABLE_ROWS]), len(rows))
    return "\n".join(lines)


def audited(fairness: Any) -> bool:
    """Whether evaluate audited any group (it writes an empty report when it did not)."""
    if not fairness:
        return False
    return not (isinstance(fairness, Mapping) and fairness.get("sensitive_columns") == [])


def _fairness_section(fairness: Any) -> str:
    """Rendered from its shape, not its field names: the audit's report may grow."""
    if not audited(fairness):
        return "## Fairness\n\nNot audited: no sensitive columns (evaluate.fairness)."
    if not isinstance(fairness, Mapping):
        return "\n".join(["## Fairness", "", *_nested(fairness)])
    lines = ["## Fairness"]
    scalars = {k: v for k, v in fairness.items() if not _is_structure(v)}
    if scalars:
        lines += ["", *(f"- {key}: {_describe(value)}" for key, value in scalars.items())]
    for key, value in fairness.items():
        if key in scalars:
            continue
        lines += ["", f"{_label(key)}:", ""]
        lines += _nested(value)
    return "\n".join(lines)


def _nested(value: Any) -> list[str]:
    """Records as a table (a mapping of them: one row per key; a mapping of lists of them:
    a table per key); anything else as a list."""
    if _is_records(value):
        columns = _cell_columns(value)
        rows = [[row.get(c) for c in columns] for row in value]
        return _cut(_table(columns, rows[:MAX_TABLE_ROWS]), len(rows))
    if isinstance(value, Mapping) and value and all(_is_records(v) for v in value.values()):
        lines: list[str] = []
        for key, records in value.items():
            lines += [f"`{key}`:", "", *_nested(records), ""]
        return lines[:-1]
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
        columns = _cell_columns(list(value.values()))
        rows = [[name, *(row.get(c) for c in columns)] for name, row in value.items()]
        return _cut(_table(["", *columns], rows[:MAX_TABLE_ROWS]), len(rows))
    if isinstance(value, Mapping):
        return [f"- {key}: {_describe(item)}" for key, item in value.items()] or ["- none"]
    if isinstance(value, list):
        items = [f"- {_describe(item)}" for item in value]
        return _cut(items[:MAX_TABLE_ROWS], len(items)) or ["- none"]
    return [_describe(value)]


def _cut(lines: list[str], total: int) -> list[str]:
    if total <= MAX_TABLE_ROWS:
        return lines
    return [*lines, "", f"({total - MAX_TABLE_ROWS} more in the report)"]


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _is_structure(value: Any) -> bool:
    return isinstance(value, Mapping | list) and not _is_interval(value)


def _cell_columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The fields that fit in a cell: scalars, intervals and {value, low, high}."""
    columns: list[str] = []
    for record in records:
        for key, item in record.items():
            fits = not _is_structure(item) or (isinstance(item, Mapping) and "value" in item)
            if fits and key not in columns:
                columns.append(key)
    return columns


def _label(key: Any) -> str:
    return str(key).replace("_", " ").capitalize()


def _features_section(evaluation: Mapping[str, Any]) -> str:
    importance = [row for row in evaluation.get("importance") or [] if isinstance(row, Mapping)][
        :TOP_FEATURES
    ]
    if not importance:
        return "## Top features\n\nNo feature importance was recorded."
    metric = evaluation.get("primary_metric", "the primary metric")
    lines = [
        "## Top features",
        "",
        f"Permutation importance on validation rows (how much {metric} worsens when the "
        "column is shuffled):",
        "",
    ]
    lines += _table(
        ["feature", "importance", "std"],
        [[row.get("feature"), row.get("importance"), row.get("std")] for row in importance],
    )
    return "\n".join(lines)


def _quality_section(estimate: Any) -> str:
    if not isinstance(estimate, Mapping):
        return "## Quality before labels\n\nNo quality estimator was recorded."
    method, metric = estimate.get("method"), estimate.get("metric")
    lines = ["## Quality before labels", ""]
    if not method:
        reason = estimate.get("reason") or "none fits this model"
        return "\n".join([*lines, f"The monitor judges quality by labels alone: {reason}."])
    lines.append(f"The monitor estimates {metric} before labels arrive with {method}.")
    test = estimate.get("test")
    if isinstance(test, Mapping) and "measured" in test:
        estimated = test.get("estimated")
        if estimated is None:
            estimated = test.get("estimated_as_served")
        lines.append(
            f"On the {test.get('rows', '?')} test rows: measured {_number(test['measured'])}, "
            f"estimated {_number(estimated)}."
        )
    return "\n".join(lines)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return _describe(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |"]
    lines.append("|" + "|".join(" --- " for _ in columns) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def _is_interval(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )


def _describe(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return _number(value)
    if _is_interval(value):
        return f"[{_number(value[0])}, {_number(value[1])}]"
    if isinstance(value, Mapping) and "value" in value:  # a figure and its interval
        low, high = value.get("low"), value.get("high")
        interval = f" [{_number(low)}, {_number(high)}]" if low is not None else ""
        return f"{_number(value['value'])}{interval}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_describe(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_describe(v) for v in value)
    return str(value)


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def version_description(card: str, limit: int = 5000) -> str:
    """The card as a registry version's description, which SQL stores cap at 5000
    characters: whole when it fits, else with its longest sections left to the file."""
    if len(card) <= limit:
        return card
    head, *sections = card.split("\n\n## ")
    stub = f"In the whole card: `{CARD_FILE}` in this version's run."
    while sections and len("\n\n## ".join([head, *sections])) > limit:
        longest = max(range(len(sections)), key=lambda index: len(sections[index]))
        title = sections[longest].split("\n", 1)[0]
        shortened = f"{title}\n\n{stub}"
        if len(shortened) >= len(sections[longest]):
            break
        sections[longest] = shortened
    text = "\n\n## ".join([head, *sections])
    return text if len(text) <= limit else text[: limit - len(stub) - 2] + "\n\n" + stub
