"""What a pipeline run decided, in a dozen lines a person reads at the end of `make run`.

Built from the reports the stages wrote (nothing is recomputed): the model, its test
metric against the naive baseline, the untuned model and the champion it was gated
against, the gate's and deploy's decisions, where the reports and plots are, and the
commands to go on with. A report that is missing (a stage that has not run) is said so.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from pipeline.metrics import HIGHER_IS_BETTER

NEXT_STEPS = (
    ("driftline serve --port 8000", "the champion behind the prediction API"),
    ("driftline up", "Prefect on :4200, deployments, workers, the API"),
    ("driftline status", "champion, previous version, audit trail"),
    ("mlflow ui --backend-store-uri sqlite:///mlflow.db", "runs and registry on :5000"),
)
WIDTH = 88  # a normal terminal


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _figure(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def summarize(root: Path = Path(".")) -> list[str]:
    """The lines to print; `root` is the project folder."""
    reports = root / "reports"
    evaluation = _read(reports / "evaluation.json")
    gate = _read(reports / "gate.json")
    if evaluation is None or gate is None:
        return ["no evaluation yet: `dvc repro` runs the pipeline up to the gate"]
    metric = evaluation["primary_metric"]
    direction = "higher" if HIGHER_IS_BETTER.get(metric, False) else "lower"
    train = _read(reports / "train.json") or {}
    tuning = _read(reports / "tuning" / "summary.json") or {}
    model = evaluation["model"]["family"]
    if train.get("objective"):
        model += f" (objective {train['objective']})"
    baseline = evaluation.get("baseline") or {}
    champion = evaluation.get("champion") or {}
    champion_version = gate.get("champion_version")
    tuned = {"train": "tune kept train's params", "tuned": "tune replaced train's params"}
    lines = [
        f"model: {model}; {tuned.get(tuning.get('kept'), 'not tuned yet')}"
        + (f" ({tuning['reason']})" if tuning.get("reason") else ""),
        f"test {metric} ({direction} is better): {_figure(evaluation['test'].get(metric))}; "
        f"naive baseline ({baseline.get('name', '?')}) {_figure(baseline.get(metric))}; "
        f"untuned {_figure((evaluation.get('untuned') or {}).get(metric))}; "
        + (
            f"champion v{champion_version} {_figure(champion.get(metric))}"
            if champion_version
            else "no champion before this run"
        ),
        f"gate: {'passed' if gate['passed'] else 'refused'}: {gate['reason']}",
    ]
    deployed = _read(reports / "deploy.json")
    if deployed is None:
        lines.append("deploy: not run yet")
    else:
        version = f" (v{deployed['version']})" if deployed.get("version") else ""
        lines.append(f"deploy: {deployed['action']}{version}: {deployed['reason']}")
    pictures = sorted(path.name for path in (root / "plots" / "png").glob("*.png"))
    lines += [
        "reports: reports/evaluation.json, reports/gate.json; data checks: "
        "reports/validation/docs/index.html",
        f"plots: plots/png/ ({', '.join(pictures) or 'none'}); `dvc plots show` for HTML",
    ]
    wrapped = [
        part for line in lines for part in textwrap.wrap(line, WIDTH, subsequent_indent="    ")
    ]
    steps = [f"  {command:<30} {what}" for command, what in NEXT_STEPS[:-1]]
    command, what = NEXT_STEPS[-1]
    return ["Driftline: what this run decided", *wrapped, "next:", *steps, f"  {command}  ({what})"]
