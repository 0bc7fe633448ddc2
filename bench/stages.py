"""Each DVC stage's wall time and its start-up overhead, on a cold run of the pipeline.

`python -m bench.stages` prints a figure per stage and the totals of a cold `dvc repro`.
It is a benchmark, not a test: it asserts nothing and writes nothing in the repository.

- wall: the stage's `cmd` from dvc.yaml, run as a fresh process in a temporary copy of
  the project (params.yaml, dvc.yaml, pipeline/), with nothing computed yet. This is the
  work `dvc repro` does, minus DVC's own bookkeeping.
- overhead: what a fresh process pays before the stage's core work: starting Python,
  importing the stage module, and the imports its `main()` makes lazily on the way
  (`LAZY_IMPORTS`). Timed as `python -c "import ..."`, the median of `--samples` runs.
- heavy at import: the heavy libraries (`HEAVY`) that `import pipeline.stages.<name>`
  alone pulls in. A stage module should import them only in the functions that use them.
- `dvc repro`: the same pipeline in a second fresh copy, cold and then with nothing
  changed. Its `python` is a shim that stamps each stage command's start and end, so
  DVC's own share (dvc repro minus the stage commands inside it) comes from one run and
  is not skewed by how the separate stage runs above happened to go.

MLflow, Optuna and Prefect state live in the temporary copies, which are removed at the
end unless `--keep`. `--trials` shrinks the tuning budget so the whole
benchmark takes a few minutes on two cores. The training stages are sensitive to
other work on the machine (train and tune ran several times slower while test suites
ran beside them): the header shows the load average at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import QUIET, REPO, pipeline_stages

BIN = Path(sys.executable).parent
STAGES = pipeline_stages()
HEAVY = (
    "torch",
    "xgboost",
    "mlflow",
    "great_expectations",
    "evidently",
    "sklearn",
    "matplotlib",
    "optuna",
    "prefect",
)
# dvc.yaml's `python` inside `dvc repro`: runs the real one and appends
# "<start> <end> <args>" to a log. Bash's own EPOCHREALTIME: no extra process.
SHIM = """#!/usr/bin/env bash
started=$EPOCHREALTIME
{python} "$@"
status=$?
echo "$started $EPOCHREALTIME $*" >> {log}
exit $status
"""

# What each stage imports inside functions before (or while) it does its work, for the
# default params (builtin bike data: regression, a time split). `{family}` is
# params' `train.model`. Libraries' own lazy imports (MLflow's SQL store, Optuna's RDB
# storage, alembic) are not listed: they count as work, so overhead is a lower bound.
# What train and tune both import to fit a model and log it to MLflow.
FIT_AND_LOG = (
    "pipeline.models",
    "pipeline.models.{family}_model",
    "pipeline.tracking",
    "pipeline.scoring",
    "mlflow",
    "mlflow.exceptions",
    "sqlalchemy.exc",
    "mlflow.models",
    "mlflow.pyfunc",
    "pipeline.pyfunc",
)

LAZY_IMPORTS: dict[str, tuple[str, ...]] = {
    # preflight reads the source as ingest does (pandas; Parquet headers with pyarrow).
    "check": ("pyarrow.parquet",),
    # sources.read_source reads the builtin CSV with pandas (sqlalchemy only for SQL
    # URLs); artifacts.write_parquet_atomic -> DataFrame.to_parquet -> pyarrow.parquet.
    "ingest": ("pyarrow.parquet",),
    # quality.run_checks: great_expectations, .expectations, .data_context.types.base.
    "validate": (
        "pyarrow.parquet",
        "great_expectations",
        "great_expectations.expectations",
        "great_expectations.data_context.types.base",
    ),
    # Module-level imports only; parquet in and out.
    "clean": ("pyarrow.parquet",),
    # split._split_stratified imports sklearn.model_selection, but only for a
    # stratified/random split: the default data set is split by time.
    "split": ("pyarrow.parquet",),
    # train.train -> pipeline.models.fit_model -> learner_class -> {family}_model
    # (xgboost); train.main: pipeline.tracking, pipeline.scoring, mlflow;
    # tracking.tracking_errors: mlflow.exceptions, sqlalchemy.exc; tracking.log_model:
    # mlflow.models, mlflow.pyfunc, which loads pipeline/mlflow_model.py -> pipeline.pyfunc.
    "train": (
        "pyarrow.parquet",
        *FIT_AND_LOG,
    ),
    # tune.main: mlflow, rich.progress, pipeline.tracking, pipeline.scoring;
    # tune.tune / make_study: optuna, pipeline.models.fit_model -> {family}_model;
    # tracking.tracking_errors and tracking.log_fitted_model as in train.
    "tune": (
        "pyarrow.parquet",
        "optuna",
        "rich.progress",
        *FIT_AND_LOG,
    ),
    # evaluate.main: pipeline.registry, pipeline.models.load_model -> {family}_model,
    # pipeline.scoring, pipeline.tracking (model_run: mlflow; tracking_errors:
    # mlflow.exceptions, sqlalchemy.exc); _write_plots: pipeline.plots -> _pyplot:
    # matplotlib.pyplot (Agg); sklearn.metrics (metrics/plots, for classes; xgboost
    # brings it anyway); _log_to_mlflow: mlflow.
    "evaluate": (
        "pyarrow.parquet",
        "pipeline.registry",
        "pipeline.models",
        "pipeline.models.{family}_model",
        "pipeline.scoring",
        "pipeline.tracking",
        "pipeline.plots",
        "matplotlib.pyplot",
        "sklearn.metrics",
        "mlflow",
        "mlflow.exceptions",
        "sqlalchemy.exc",
    ),
    # compress.main: pipeline.models.load_model -> {family}_model; compress.compress:
    # pipeline.onnx_model (export_onnx: onnxmltools for xgboost, skl2onnx for sklearn,
    # torch.onnx for torch; onnx; OnnxModel: onnxruntime), pipeline.scoring.
    "compress": (
        "pyarrow.parquet",
        "pipeline.models",
        "pipeline.models.{family}_model",
        "pipeline.onnx_model",
        "pipeline.scoring",
        "onnx",
        "onnxruntime",
        "onnxmltools",
    ),
    # deploy.main: pipeline.promotions, pipeline.tracking, pipeline.models.load_model ->
    # {family}_model, pipeline.registry; mlflow for the registry.
    "deploy": (
        "pipeline.promotions",
        "pipeline.tracking",
        "pipeline.models",
        "pipeline.models.{family}_model",
        "pipeline.registry",
        "mlflow",
        "mlflow.exceptions",
        "sqlalchemy.exc",
    ),
}


@dataclass
class StageFigures:
    """One stage's figures, in seconds; `heavy` is what its module import pulls in and
    `in_dvc` its command's wall time inside `dvc repro` (None without dvc)."""

    name: str
    wall: float
    module_import: float
    overhead: float
    heavy: list[str]
    in_dvc: float | None = None


@dataclass
class DvcFigures:
    """A cold `dvc repro`, the stage commands' walls inside it, and a no-op repro."""

    cold: float
    noop: float
    # The same no-op with ruamel's pure-Python YAML parser, side by side: what a
    # checkout without ruamel.yaml.clib pays.
    noop_pure: float
    stages: dict[str, float] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults keep a run to a few minutes on two idle cores."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.stages",
        description="Time each DVC stage and its start-up overhead on a cold pipeline run.",
    )
    parser.add_argument("--trials", type=int, default=10, help="tune.n_trials (default 10)")
    parser.add_argument(
        "--timeout",
        type=int,
        default=None,
        help="tune.timeout in s, a safety net (default none: the trials decide)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="cold runs of the pipeline and of dvc repro"
    )
    parser.add_argument(
        "--samples", type=int, default=3, help="runs per import timing (median; default 3)"
    )
    parser.add_argument("--no-dvc", action="store_true", help="skip the `dvc repro` runs")
    parser.add_argument(
        "--importtime",
        type=int,
        default=0,
        metavar="N",
        help="also print the N slowest imports of each stage's start-up (-X importtime)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.samples < 1:
        parser.error("--repeat and --samples must be at least 1")
    return args


def quiet_env(project: Path, bin_dir: Path = BIN) -> dict[str, str]:
    """The environment of every child: telemetry off, MLflow and Prefect state in the
    project copy, and `bin_dir` first on PATH so dvc.yaml's `python` is ours."""
    return {
        **os.environ,
        **QUIET,
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PREFECT_HOME": str(project / "prefect"),
        "MPLCONFIGDIR": str(project / "matplotlib"),  # its font cache, not in ~
        "PATH": os.pathsep.join([str(bin_dir), str(BIN), os.environ.get("PATH", "")]),
    }


def make_project(root: Path, trials: int, timeout: int | None) -> Path:
    """A fresh copy of what the stages read, as a checkout has it: params.yaml (with the
    tuning budget cut), dvc.yaml, .dvcignore (without it DVC would hash the
    `__pycache__` the stage processes write into pipeline/), pipeline/ (stage deps for
    DVC, and what `python -m` imports from the copy's cwd) and an empty landing folder."""
    project = Path(tempfile.mkdtemp(prefix="project-", dir=root))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, project / name)
    shutil.copytree(
        REPO / "pipeline", project / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tune"]["n_trials"] = trials
    params["tune"]["timeout"] = timeout
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    landing = project / params["data"]["landing"]
    landing.mkdir(parents=True, exist_ok=True)
    (landing / ".gitkeep").touch()
    return project


def stage_commands(project: Path) -> dict[str, list[str]]:
    """Each stage's `cmd` from dvc.yaml as argv, with this interpreter for `python`."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    commands = {}
    for name in STAGES:
        argv = shlex.split(stages[name]["cmd"])
        commands[name] = [sys.executable if arg == "python" else arg for arg in argv]
    return commands


def timed(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run argv to completion; its wall time in seconds and its stdout. A failure stops
    the benchmark with the command's output, since later figures would be meaningless."""
    started = time.perf_counter()
    done = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        sys.exit(f"failed ({done.returncode}): {shlex.join(argv)}\n{tail}")
    return seconds, done.stdout


def median_of(samples: int, run: Callable[[str], float], code: str) -> float:
    """The median of `samples` runs of `run(code)`: one slow start does not count."""
    return statistics.median(run(code) for _ in range(samples))


def run_stages(project: Path) -> dict[str, float]:
    """One cold run of the pipeline, stage by stage; wall seconds per stage."""
    env = quiet_env(project)
    walls = {}
    for name, argv in stage_commands(project).items():
        walls[name], _ = timed(argv, project, env)
    return walls


def stage_imports(stage: str, family: str) -> list[str]:
    """The modules a stage imports before its work: its module, then `LAZY_IMPORTS`."""
    lazy = [module.format(family=family) for module in LAZY_IMPORTS[stage]]
    return [f"pipeline.stages.{stage}", *lazy]


def import_code(stage: str, family: str) -> str:
    """The `python -c` line that imports what the stage needs before its work."""
    return "; ".join(f"import {module}" for module in stage_imports(stage, family))


def heavy_at_import(stage: str, project: Path, env: dict[str, str]) -> list[str]:
    """The `HEAVY` packages in sys.modules after importing the stage module alone."""
    code = (
        f"import sys, json, pipeline.stages.{stage}; "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    _, out = timed([sys.executable, "-c", code], project, env)
    loaded = set(json.loads(out))
    return [name for name in HEAVY if name in loaded]


def measure_imports(
    project: Path, family: str, samples: int
) -> tuple[float, dict[str, tuple[float, float, list[str]]]]:
    """Interpreter start alone, then per stage: module import, module plus lazy imports
    (the overhead) and the heavy packages the module import pulls in."""
    env = {**quiet_env(project), "MPLBACKEND": "Agg"}  # as pipeline.plots._pyplot sets it

    def python_c(code: str) -> float:
        return timed([sys.executable, "-c", code], project, env)[0]

    bare = median_of(samples, python_c, "pass")
    figures = {}
    for stage in STAGES:
        module = median_of(samples, python_c, f"import pipeline.stages.{stage}")
        overhead = median_of(samples, python_c, import_code(stage, family))
        figures[stage] = (module, overhead, heavy_at_import(stage, project, env))
    return bare, figures


def slowest_imports(stage: str, project: Path, family: str, count: int) -> list[tuple[float, str]]:
    """Where a stage's overhead goes: the `count` slowest of the modules its import line
    (`import_code`) reaches first, by cumulative `python -X importtime` time, as
    (seconds, module). Each is counted once: nested imports are inside their parent."""
    modules = stage_imports(stage, family)
    argv = [sys.executable, "-X", "importtime", "-c", import_code(stage, family)]
    env = {**quiet_env(project), "MPLBACKEND": "Agg"}
    done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit() or parts[2].startswith("   "):
            continue  # the header, or a nested import
        name = parts[2].strip()
        if any(module == name or module.startswith(f"{name}.") for module in modules):
            rows.append((int(parts[1]) / 1e6, name))
    return sorted(rows, reverse=True)[:count]


def write_shim(project: Path) -> tuple[Path, Path]:
    """A folder holding the timing `python` (see `SHIM`) for this project, and its log."""
    shim_dir = Path(tempfile.mkdtemp(prefix="shim-", dir=project.parent))
    log = shim_dir / "stages.log"
    shim = shim_dir / "python"
    shim.write_text(SHIM.format(python=shlex.quote(sys.executable), log=shlex.quote(str(log))))
    shim.chmod(0o755)
    return shim_dir, log


def read_shim_log(log: Path) -> dict[str, float]:
    """Wall seconds per stage command, from the shim's log (the last run of each)."""
    walls = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        started, ended, *args = line.replace(",", ".").split()
        stages = [arg.removeprefix("pipeline.stages.") for arg in args]
        for stage in set(stages) & set(STAGES):
            walls[stage] = float(ended) - float(started)
    return walls


def run_dvc(project: Path) -> DvcFigures:
    """`dvc init --no-scm`, then a cold `dvc repro` (stage commands timed by the shim)
    and a no-op one."""
    shim_dir, log = write_shim(project)
    env = quiet_env(project, shim_dir)
    dvc = str(BIN / "dvc")
    timed([dvc, "init", "--no-scm", "-q"], project, env)
    timed([dvc, "config", "core.analytics", "false"], project, env)
    cold, _ = timed([dvc, "repro"], project, env)
    stages = read_shim_log(log)
    noops, pures = [], []
    for _ in range(NOOP_SAMPLES):  # alternated, so that both see the same load
        noop, out = timed([dvc, "repro"], project, env)
        rerun = set(re.findall(r"Running stage '([^']+)'", out))
        if rerun:
            print(f"warning: the no-op dvc repro ran {', '.join(sorted(rerun))}", file=sys.stderr)
        noops.append(noop)
        pures.append(timed([str(BIN / "python"), "-c", PURE_YAML_REPRO], project, env)[0])
    return DvcFigures(
        cold=cold,
        noop=statistics.median(noops),
        noop_pure=statistics.median(pures),
        stages=stages,
    )


NOOP_SAMPLES = 5
# `dvc repro` with ruamel's C parser switched off (YAML() falls back to the pure one).
PURE_YAML_REPRO = (
    "import sys, ruamel.yaml.main as m; m.CParser = None; "
    "from dvc.cli import main; sys.exit(main(['repro']))"
)


def row_count(project: Path) -> int | None:
    """The rows ingest wrote, from its metrics file."""
    metrics = project / "metrics" / "ingest.json"
    return json.loads(metrics.read_text()).get("rows") if metrics.exists() else None


def percent(part: float, whole: float) -> str:
    """`part` as a whole percentage of `whole`; "-" when there is no whole."""
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


def seconds(value: float | None, width: int) -> str:
    """A table cell: seconds to two places, or "-" when not measured."""
    return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"


def print_table(figures: list[StageFigures]) -> None:
    """One line per stage, then the column totals. `import s` is the stage module
    alone; `overhead %` is the overhead's share of the stage's wall time."""
    header = (
        f"{'stage':<9} {'wall s':>7} {'in dvc s':>9} {'import s':>9} {'overhead s':>11}"
        f" {'overhead %':>11}  heavy modules at import"
    )
    print(header)
    print("-" * len(header))
    for row in figures:
        print(
            f"{row.name:<9} {row.wall:>7.2f} {seconds(row.in_dvc, 9)}"
            f" {row.module_import:>9.2f} {row.overhead:>11.2f}"
            f" {percent(row.overhead, row.wall):>11}  {', '.join(row.heavy) or 'none'}"
        )
    wall = sum(row.wall for row in figures)
    in_dvc = [row.in_dvc for row in figures if row.in_dvc is not None]
    overhead = sum(row.overhead for row in figures)
    module = sum(row.module_import for row in figures)
    print("-" * len(header))
    print(
        f"{'total':<9} {wall:>7.2f} {seconds(sum(in_dvc) if in_dvc else None, 9)}"
        f" {module:>9.2f} {overhead:>11.2f} {percent(overhead, wall):>11}"
    )


def print_totals(figures: list[StageFigures], dvc: DvcFigures | None) -> None:
    """The sums, and how they compare with a cold `dvc repro` (when it was run)."""
    wall = sum(row.wall for row in figures)
    overhead = sum(row.overhead for row in figures)
    print()
    print(f"sum of stage wall times:        {wall:7.2f} s (stages run one by one)")
    print(f"sum of start-up overheads:      {overhead:7.2f} s = {percent(overhead, wall)} of it")
    if dvc is None:
        return
    inside = sum(dvc.stages.values())
    own = dvc.cold - inside
    print(f"cold dvc repro:                 {dvc.cold:7.2f} s")
    print(f"  its stage commands:           {inside:7.2f} s = {percent(inside, dvc.cold)}")
    print(
        f"  DVC's own share:              {own:7.2f} s = {percent(own, dvc.cold)}"
        " (dvc repro - its stage commands)"
    )
    print(
        f"  start-up overhead share:      {overhead:7.2f} s = {percent(overhead, dvc.cold)}"
        " (sum of overheads / dvc repro)"
    )
    print(
        f"no-op dvc repro:                {dvc.noop:7.2f} s (nothing changed, no stage runs;"
        f" median of {NOOP_SAMPLES})"
    )
    print(f"  with the pure-Python YAML parser: {dvc.noop_pure:5.2f} s (same runs, alternated)")


def describe(args: argparse.Namespace, family: str, rows: int | None, load: float) -> None:
    """What was measured, on what; a warning when something else was using the CPUs,
    since the training stages slow down many times over when they share the cores."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    print(
        f"Driftline stage benchmark: {params['data']['source']}, "
        f"{f'{rows:,} rows' if rows else 'rows unknown'}, model {family}; "
        f"tune budget {args.trials} trials"
        + (f" (safety net {args.timeout} s)" if args.timeout else "")
    )
    print(
        f"{args.repeat} cold run(s) (median), imports median of {args.samples}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f} at the start"
    )
    if load >= 1:  # a whole core busy (the 1-minute average lags: it may be the last run)
        print(f"warning: the machine was busy (load {load:.2f}): the figures may be inflated")


def print_importtime(project: Path, family: str, count: int) -> None:
    """Per stage, the imports its start-up overhead goes to."""
    for stage in STAGES:
        print(f"\nslowest imports of stage {stage}'s start-up (cumulative s):")
        for spent, name in slowest_imports(stage, project, family, count):
            print(f"  {spent:6.3f} {name}")


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's median wall time over the cold runs."""
    walls = {name: [run[name] for run in runs if name in run] for name in STAGES}
    return {name: statistics.median(values) for name, values in walls.items() if values}


def run_all_dvc(root: Path, args: argparse.Namespace) -> DvcFigures:
    """`--repeat` cold `dvc repro`s, each in a fresh copy; the medians."""
    runs = [run_dvc(make_project(root, args.trials, args.timeout)) for _ in range(args.repeat)]
    return DvcFigures(
        cold=statistics.median(run.cold for run in runs),
        noop=statistics.median(run.noop for run in runs),
        noop_pure=statistics.median(run.noop_pure for run in runs),
        stages=medians([run.stages for run in runs]),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Measure imports, then the cold runs, then print; the temporary projects go
    at the end (unless --keep), whatever happened."""
    args = parse_args(argv)
    load = os.getloadavg()[0]
    family = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["model"]
    root = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    try:
        # Imports first: they also warm the page cache, so the cold runs below are cold
        # for the pipeline's outputs, not for the disk.
        first = make_project(root, args.trials, args.timeout)
        bare, imports = measure_imports(first, family, args.samples)
        runs = [run_stages(first)]
        runs += [
            run_stages(make_project(root, args.trials, args.timeout))
            for _ in range(args.repeat - 1)
        ]
        dvc = None if args.no_dvc else run_all_dvc(root, args)
        walls = medians(runs)
        figures = [
            StageFigures(name, walls[name], *imports[name], dvc.stages.get(name) if dvc else None)
            for name in STAGES
        ]
        describe(args, family, row_count(first), load)
        print(f"interpreter start alone (python -c pass): {bare:.3f} s")
        print()
        print_table(figures)
        print_totals(figures, dvc)
        if args.importtime:
            print_importtime(first, family, args.importtime)
    finally:
        if args.keep:
            print(f"\nkept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
