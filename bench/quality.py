"""Driftline's default model against FLAML AutoML at the same wall-clock budget.

`python -m bench.quality` prints, for each data set, the test score of the naive
baseline, of train's untuned model, of tune's model and of FLAML, and the ratio of
Driftline's tuned score to FLAML's. It is a benchmark, not a test: it asserts nothing
and writes nothing in the repository (`--json` writes where it is told).

The cases (`--cases`, comma-separated):

- bike: the repository's params.yaml as it is (built-in bike sharing data, the rows up
  to data.until, a time-ordered split);
- bike-all: the same with data.until null (every row, time-ordered split);
- elec2: examples/elec2.params.yaml on `<data-dir>/elec2/elecNormNew.csv`;
- bank: examples/bank_marketing.params.yaml on `<data-dir>/bank_marketing/bank-full.csv`.

Each case runs in a temporary project folder holding its params.yaml, with MLflow, the
Optuna study and every stage output inside it. The stages run as their CLIs do
(`python -m pipeline.stages.<name> --params params.yaml`, cwd the project folder),
importing a copy of `pipeline/` made at the start, as this process does: edits to the
repository during a long run do not reach it (the header names the commit copied):
ingest, validate, clean and split, then train and tune, timed together on the wall
clock, then evaluate, whose `reports/evaluation.json` holds the test metrics of the
tuned model, the untuned model and the baseline. `--trials` overrides tune.n_trials.
`--families` (comma-separated: xgboost, sklearn, torch, ensemble) runs each case once
per family, set by train.model with the family's params as the params file has them,
so the table lists the families beside each other and beside FLAML (default: the
params' own family).

FLAML then gets that wall time as its `time_budget`, on the same split files: the
same train rows, and holdout evaluation on the same val rows (`X_val`, `y_val`). Its
features are the columns the tuned model takes, as the model's own `FeatureSpec`
prepares them (numerics as float, categoricals as pandas categories of the categories
seen in training); its metric is what Driftline's trials minimise (rmse, or log loss
for classes), with the seed of train.seed and the threads of a Driftline fit
(train.<model>.n_jobs, 0 for every core; FLAML's trials run one at a time, as tune's do).
FLAML retrains on train + val only for a split it makes itself, while Driftline refits
the chosen params on train + val (train.refit); when train.refit is on, FLAML's best
config is refitted on train + val too, as FLAML's own warm start does it
(`starting_points`, `max_iter=1`). Both are scored on the same test rows with
`pipeline.metrics`, on the case's primary metric (evaluate.primary_metric) and, for
classes, log loss.

What the budget holds: Driftline's is the wall time of two fresh processes (Python
start-up, imports, MLflow logging and the refits included), FLAML's search runs in
this process with its imports done; FLAML's refit comes after its budget, as its own
retraining does (the `FLAML s` column is search plus refit). For classes, FLAML's
probabilities are its learners' own; Driftline's follow train.class_weight (balanced
weights shift them, which costs log loss more than ranking) and, where the params have
it, train.calibration.

A wall-clock budget is only as fair as the machine is quiet: with another process on
the cores, xgboost's threads wait for them and a stage can take many times its usual
time, while FLAML may run after that process has ended. The header shows the load
average at the start; the notes under the table give each case's load and the CPU
seconds each side got (user + system, all threads), so a budget inflated by waiting
shows as CPU well below cores x wall.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench import QUIET

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.features import FeatureSpec
    from pipeline.schema import DatasetSpec

REPO = Path(__file__).resolve().parents[1]
DATA_STAGES = ("ingest", "validate", "clean", "split")
# What --families takes: train.model's values.
FAMILIES = ("xgboost", "sklearn", "torch", "ensemble")
SPLITS = ("train", "val", "test")
# What Driftline's trials minimise on val, by task, in FLAML's names.
FLAML_METRIC = {"regression": "rmse", "binary": "log_loss", "multiclass": "log_loss"}
INSTALL = ".venv/bin/python -m pip install -c constraints.txt -e '.[bench]'"


@dataclass(frozen=True)
class Case:
    """A data set: the params file it starts from, the source file under --data-dir it
    reads (None: the params' own source) and the keys changed under `data:`."""

    name: str
    params: str
    source: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


CASES = {
    case.name: case
    for case in (
        Case("bike", "params.yaml"),
        Case("bike-all", "params.yaml", data={"until": None}),
        Case("elec2", "examples/elec2.params.yaml", "elec2/elecNormNew.csv"),
        Case("bank", "examples/bank_marketing.params.yaml", "bank_marketing/bank-full.csv"),
    )
}


@dataclass(frozen=True)
class Spent:
    """Wall-clock and CPU seconds (user + system, all threads) of one piece of work:
    CPU well under cores x wall means something else had the cores."""

    wall: float
    cpu: float


def cpu_seconds(who: int) -> float:
    """User + system CPU seconds so far of this process (RUSAGE_SELF) or of its
    finished children (RUSAGE_CHILDREN)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class FlamlRun:
    """FLAML's test metrics and what it chose."""

    metrics: dict[str, float]
    estimator: str
    config: dict[str, Any]
    trials: int | None
    search: Spent
    refit: Spent


@dataclass
class CaseResult:
    """One case's figures: Driftline's test metrics from evaluate, FLAML's, the budget."""

    name: str
    family: str
    task: str
    primary_metric: str
    rows: dict[str, int]
    budget_seconds: float
    train: Spent
    tune: Spent
    trials: int | None
    pruned: int | None
    baseline_name: str
    baseline: dict[str, float | None]
    untuned: dict[str, float | None]
    tuned: dict[str, float | None]
    flaml: FlamlRun
    load_at_start: float
    load_before_flaml: float


class CaseFailed(Exception):
    """A stage of one case failed (the message holds its output's tail)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults run all four cases at the params' tuning budget."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description="Driftline's default model against FLAML at the same wall-clock budget.",
    )
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated cases to run, of {', '.join(CASES)} (default: all)",
    )
    parser.add_argument(
        "--trials", type=int, default=None, help="tune.n_trials for every case (default: params')"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="the folder holding elec2/ and bank_marketing/ (default: ../shared/data)",
    )
    parser.add_argument(
        "--families",
        default=None,
        help="comma-separated train.model values, each case run once per family, of "
        f"{', '.join(FAMILIES)} (default: each params file's own)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown or not names:
        wrong = ", ".join(unknown) or "(none)"
        parser.error(f"--cases: unknown {wrong}; one of {', '.join(CASES)}")
    args.cases = names
    if args.families is not None:
        families = [name.strip() for name in args.families.split(",") if name.strip()]
        wrong = [name for name in families if name not in FAMILIES]
        if wrong or not families:
            shown = ", ".join(wrong) or "(none)"
            parser.error(f"--families: unknown {shown}; one of {', '.join(FAMILIES)}")
        args.families = list(dict.fromkeys(families))
    if args.trials is not None and args.trials < 1:
        parser.error("--trials must be at least 1")
    args.data_dir = args.data_dir.resolve()
    missing = [
        str(args.data_dir / CASES[name].source)
        for name in names
        if CASES[name].source and not (args.data_dir / CASES[name].source).is_file()
    ]
    if missing:
        parser.error(f"--data-dir: missing {', '.join(missing)}")
    for package in ("flaml", "lightgbm"):
        if find_spec(package) is None:
            parser.error(f"{package} is not installed: {INSTALL}")
    return args


def make_project(
    root: Path, case: Case, args: argparse.Namespace, family: str | None = None
) -> Path:
    """A folder holding the case's params.yaml: its source an absolute path, MLflow and
    the Optuna study in SQLite files inside the folder, tune.n_trials from --trials,
    train.model `family` (None: the params')."""
    project = Path(tempfile.mkdtemp(prefix=f"{case.name}-{family or 'params'}-", dir=root))
    params = yaml.safe_load((REPO / case.params).read_text())
    params["data"].update(case.data)
    if family is not None:
        params["train"]["model"] = family
    if case.source:
        params["data"]["source"] = str(args.data_dir / case.source)
    params["mlflow"]["tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    params["mlflow"]["artifact_location"] = str(project / "mlartifacts")
    params["tune"]["storage"] = f"sqlite:///{project / 'optuna.db'}"
    if args.trials is not None:
        params["tune"]["n_trials"] = args.trials
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def snapshot_code(root: Path) -> Path:
    """A copy of pipeline/ that every stage and this process import: edits to the
    repository during a long run do not reach it."""
    code = root / "code"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "pipeline", code / "pipeline", ignore=ignore)
    return code


def child_env(project: Path, code: Path) -> dict[str, str]:
    """The stages' environment: telemetry off, the copy of `pipeline` first, and none
    of the variables that would point MLflow or Optuna outside the project."""
    from pipeline.config import ENVIRONMENT_OVERRIDES

    env = {key: value for key, value in os.environ.items() if key not in ENVIRONMENT_OVERRIDES}
    return {
        **env,
        **QUIET,
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")])),
    }


def run_stage(stage: str, project: Path, env: dict[str, str]) -> Spent:
    """Run one stage's CLI in the project folder; the time it took."""
    argv = [sys.executable, "-m", f"pipeline.stages.{stage}", "--params", "params.yaml"]
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True)
    spent = Spent(time.perf_counter() - started, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-3000:]
        raise CaseFailed(f"{stage} exited {done.returncode}:\n{tail}")
    return spent


def progress(message: str) -> None:
    """A line on stderr while a long run goes on; the table goes to stdout."""
    print(message, file=sys.stderr, flush=True)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def read_split(project: Path) -> dict[str, pd.DataFrame]:
    """The split stage's train, val and test rows."""
    from pipeline.artifacts import read_stage_input

    folder = project / "data" / "split"
    return {part: read_stage_input(folder / f"{part}.parquet", "split") for part in SPLITS}


def flaml_features(features: FeatureSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The model's feature columns as FLAML takes them: numerics as float, categoricals
    as pandas categories of the categories seen in training (others become gaps)."""
    import pandas as pd

    prepared = features.prepare(frame)
    return prepared.assign(
        **{
            column: pd.Categorical(prepared[column], categories=list(features.categories[column]))
            for column in features.categorical
        }
    )


def fit_threads(train: dict[str, Any]) -> int:
    """FLAML's n_jobs: the threads one Driftline fit uses (train.<model>.n_jobs, 1 where
    the family has none; 0 and -1 mean every core, FLAML's -1)."""
    threads = (train.get(train["model"]) or {}).get("n_jobs", 1)
    return -1 if threads in (0, -1) else int(threads)


def flaml_trials(log: Path) -> int | None:
    """The configs FLAML tried, from its search log (`log_type="all"`: one JSON record
    a trial)."""
    if not log.exists():
        return None
    return sum('"record_id"' in line for line in log.read_text().splitlines())


def run_flaml(
    project: Path,
    frames: dict[str, pd.DataFrame],
    spec: DatasetSpec,
    budget: float,
    params: dict[str, Any],
) -> FlamlRun:
    """FLAML on the split `frames`, holdout on the val rows, for `budget` seconds; its
    best config refitted on train + val when train.refit is on; its test metrics."""
    import numpy as np
    import pandas as pd
    from flaml import AutoML

    from pipeline.metrics import classification_metrics, regression_metrics
    from pipeline.models import encode_labels, load_model

    tuned = load_model(project / "models" / "tuned")
    x = {part: flaml_features(tuned.features, frame) for part, frame in frames.items()}
    if spec.task == "regression":
        y = {
            part: pd.to_numeric(frame[spec.target]).to_numpy(dtype=np.float64)
            for part, frame in frames.items()
        }
    else:
        y = {
            part: encode_labels(frame[spec.target], tuned.classes, part)
            for part, frame in frames.items()
        }
    settings = {
        "task": "regression" if spec.task == "regression" else "classification",
        "metric": FLAML_METRIC[spec.task],
        "seed": params["train"]["seed"],
        "n_jobs": fit_threads(params["train"]),
        "verbose": 0,
        "mlflow_logging": False,
    }
    log = project / "flaml.log"
    search = AutoML()
    # FLAML and its learners warn about each other's deprecated arguments on every
    # trial; the figures are what counts here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu, started = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
        search.fit(
            x["train"],
            y["train"],
            X_val=x["val"],
            y_val=y["val"],
            eval_method="holdout",
            time_budget=budget,
            log_file_name=str(log),
            log_type="all",
            **settings,
        )
        search_spent = measured(started, cpu)
        final, refit_spent = search, Spent(0.0, 0.0)
        if params["train"].get("refit", True):
            final = AutoML()
            cpu, started = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
            final.fit(
                pd.concat([x["train"], x["val"]], ignore_index=True),
                np.concatenate([y["train"], y["val"]]),
                estimator_list=[search.best_estimator],
                starting_points={search.best_estimator: search.best_config},
                max_iter=1,
                time_budget=-1,
                eval_method="holdout",
                **settings,
            )
            refit_spent = measured(started, cpu)
        if spec.task == "regression":
            metrics = regression_metrics(y["test"], final.predict(x["test"]))
        else:
            probabilities = final.predict_proba(x["test"])
            order = [list(final.classes_).index(code) for code in range(len(tuned.classes))]
            probabilities = probabilities[:, order]
            metrics = classification_metrics(
                y["test"], probabilities, probabilities.argmax(axis=1), spec.task
            )
    return FlamlRun(
        metrics=metrics,
        estimator=search.best_estimator,
        config={key: plain(value) for key, value in search.best_config.items()},
        trials=flaml_trials(log),
        search=search_spent,
        refit=refit_spent,
    )


def measured(started: float, cpu: float) -> Spent:
    """This process's wall and CPU time since `started` (perf_counter) and `cpu`."""
    return Spent(time.perf_counter() - started, cpu_seconds(resource.RUSAGE_SELF) - cpu)


def plain(value: Any) -> Any:
    """A numpy scalar as a Python one, for JSON."""
    return value.item() if hasattr(value, "item") else value


def run_case(
    case: Case, root: Path, code: Path, args: argparse.Namespace, family: str | None = None
) -> CaseResult:
    """The data stages, then train + tune timed, evaluate, and FLAML at that budget."""
    from pipeline.schema import DatasetSpec

    load_at_start = os.getloadavg()[0]
    project = make_project(root, case, args, family)
    env = child_env(project, code)
    spent = {}
    for stage in (*DATA_STAGES, "train", "tune", "evaluate"):
        spent[stage] = run_stage(stage, project, env)
        progress(f"{case.name}: {stage} {spent[stage].wall:.1f} s")
    train, tune = spent["train"], spent["tune"]
    evaluation = read_json(project / "reports" / "evaluation.json")
    tuning = read_json(project / "reports" / "tuning" / "summary.json")
    params = yaml.safe_load((project / "params.yaml").read_text())
    spec = DatasetSpec.read(project / "data" / "raw" / "schema.yaml")
    split = read_split(project)
    budget = train.wall + tune.wall
    load_before_flaml = os.getloadavg()[0]
    progress(f"{case.name}: FLAML for {budget:.1f} s")
    flaml = run_flaml(project, split, spec, budget, params)
    baseline = dict(evaluation["baseline"])
    return CaseResult(
        name=case.name,
        family=params["train"]["model"],
        task=spec.task,
        primary_metric=evaluation["primary_metric"],
        rows={part: len(frame) for part, frame in split.items()},
        budget_seconds=budget,
        train=train,
        tune=tune,
        trials=tuning.get("trials"),
        pruned=tuning.get("pruned"),
        baseline_name=baseline.pop("name"),
        baseline=baseline,
        untuned=evaluation["untuned"],
        tuned=evaluation["test"],
        flaml=flaml,
        load_at_start=load_at_start,
        load_before_flaml=load_before_flaml,
    )


def shown_metrics(result: CaseResult) -> list[str]:
    """The primary metric, and log loss for classes."""
    metrics = [result.primary_metric]
    if result.task != "regression" and result.primary_metric != "log_loss":
        metrics.append("log_loss")
    return metrics


def ratio(metric: str, driftline: float | None, flaml: float | None) -> float | None:
    """Driftline's tuned score over FLAML's for scores, FLAML's error over Driftline's
    for errors: 1.0 or more means Driftline at least matches FLAML."""
    from pipeline.metrics import HIGHER_IS_BETTER

    if driftline is None or flaml is None or driftline == 0 or flaml == 0:
        return None
    return driftline / flaml if HIGHER_IS_BETTER[metric] else flaml / driftline


def ratios(result: CaseResult) -> dict[str, float | None]:
    """`ratio` for each metric the table shows."""
    return {
        metric: ratio(metric, result.tuned.get(metric), result.flaml.metrics.get(metric))
        for metric in shown_metrics(result)
    }


def cell(value: float | None, width: int, digits: str = ".4g") -> str:
    """A table cell, or "-" when there is no figure."""
    return f"{value:>{width}{digits}}" if value is not None else f"{'-':>{width}}"


def print_table(results: list[CaseResult]) -> None:
    """One line per case and metric."""
    header = (
        f"{'case':<9} {'family':<8} {'metric':<8} {'baseline':>9} {'untuned':>9} {'tuned':>9}"
        f" {'FLAML':>9} {'ratio':>6}  {'rows train/val/test':<21} {'budget s':>8} {'FLAML s':>8}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        rows = "/".join(f"{result.rows[part]:,}" for part in SPLITS)
        for metric in shown_metrics(result):
            print(
                f"{result.name:<9} {result.family:<8} {metric:<8}"
                f" {cell(result.baseline.get(metric), 9)}"
                f" {cell(result.untuned.get(metric), 9)} {cell(result.tuned.get(metric), 9)}"
                f" {cell(result.flaml.metrics.get(metric), 9)}"
                f" {cell(ratios(result)[metric], 6, '.3f')}"
                f"  {rows:<21} {result.budget_seconds:>8.1f}"
                f" {result.flaml.search.wall + result.flaml.refit.wall:>8.1f}"
            )


def print_notes(results: list[CaseResult]) -> None:
    """Where each budget went and what FLAML chose."""
    print()
    for result in results:
        flaml = result.flaml
        trials = f"{flaml.trials} configs" if flaml.trials is not None else "configs unknown"
        print(
            f"{result.name} ({result.family}): Driftline train {result.train.wall:.1f} s + tune "
            f"{result.tune.wall:.1f} s ({result.trials} trials, {result.pruned} pruned), "
            f"CPU {result.train.cpu + result.tune.cpu:.1f} s; FLAML search "
            f"{flaml.search.wall:.1f} s ({trials}, best {flaml.estimator}) + refit "
            f"{flaml.refit.wall:.1f} s, CPU {flaml.search.cpu + flaml.refit.cpu:.1f} s; "
            f"load {result.load_at_start:.2f} at the start, {result.load_before_flaml:.2f} "
            f"before FLAML; baseline: {result.baseline_name}"
        )


def versions() -> dict[str, str]:
    """The versions the figures depend on."""
    found = {"python": platform.python_version()}
    for package in ("flaml", "xgboost", "lightgbm", "scikit-learn", "optuna"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def checkout() -> str:
    """The commit this checkout is at, and whether pipeline/ has uncommitted changes:
    the stages run the working tree's pipeline/, copied at the start."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "pipeline")
    except OSError:
        return "not a git checkout"
    return f"commit {commit}" + (" + uncommitted changes in pipeline/" if changed else "")


def describe(args: argparse.Namespace, load: float, started: datetime, code: str) -> None:
    """What was compared, on what, and which way the ratio points."""
    shown = versions()
    trials = f"{args.trials} (--trials)" if args.trials is not None else "from each params file"
    print(f"Driftline vs FLAML AutoML at the same wall-clock budget, {started:%Y-%m-%d %H:%M}")
    print(f"Driftline: {code}")
    print(
        f"{os.cpu_count()} CPUs, load average {load:.2f} at the start; "
        + ", ".join(f"{name} {version}" for name, version in shown.items())
    )
    print(
        f"tune.n_trials: {trials}; budget = wall time of Driftline's train + tune stages, "
        "FLAML's time_budget"
    )
    if args.families:
        print(f"families (train.model): {', '.join(args.families)}, each case once per family")
    print(
        "ratio: Driftline tuned / FLAML for scores, FLAML / Driftline tuned for errors: "
        ">= 1.000 means Driftline at least matches FLAML"
    )
    if load >= 1:  # a whole core busy: train, tune and FLAML slow down when they share it
        print(f"warning: the machine was busy (load {load:.2f}): budgets and scores may differ")
    print()


def write_json(
    path: Path,
    args: argparse.Namespace,
    load: float,
    started: datetime,
    code: str,
    results: list[CaseResult],
    failed: dict[str, str],
) -> None:
    """The figures, with what they were measured on."""
    body = {
        "started": started.isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_at_start": load,
        "versions": versions(),
        "driftline": code,
        "trials": args.trials,
        "families": args.families,
        "cases": [
            {
                **asdict(result),
                "ratio": ratios(result),
            }
            for result in results
        ],
        "failed": failed,
    }
    path.write_text(json.dumps(body, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Run each case in its own temporary project, then print; the projects go at the
    end (unless --keep), whatever happened."""
    args = parse_args(argv)
    load = os.getloadavg()[0]
    started = datetime.now().astimezone()
    commit = checkout()
    root = Path(tempfile.mkdtemp(prefix="driftline-quality-"))
    results: list[CaseResult] = []
    failed: dict[str, str] = {}
    try:
        code = snapshot_code(root)
        sys.path.insert(0, str(code))  # this process scores with the same copy
        runs = [(name, family) for name in args.cases for family in args.families or [None]]
        for name, family in runs:
            label = name if family is None else f"{name} ({family})"
            try:
                results.append(run_case(CASES[name], root, code, args, family))
            except Exception as exc:  # one case failing must not lose the others' figures
                if not isinstance(exc, CaseFailed):
                    traceback.print_exc()
                failed[label] = str(exc) or type(exc).__name__
                progress(f"{label}: failed: {failed[label]}")
        describe(args, load, started, commit)
        print_table(results)
        print_notes(results)
        for name, reason in failed.items():  # the command, and its output's last line
            lines = reason.strip().splitlines()
            print(f"{name}: failed: {' '.join(dict.fromkeys([lines[0], lines[-1]]))}")
        if args.json:
            write_json(args.json, args, load, started, commit, results, failed)
            print(f"\nwritten: {args.json}")
    finally:
        if args.keep:
            print(f"\nkept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
