"""The training flow under Prefect against a plain `dvc repro`, on the default data.

`python -m bench.orchestration` prints each run's wall time, the medians, the ratio
Prefect/dvc for cold and for no-op runs against the goal (at most `GOAL` times as
long), and where the Prefect run's time goes. It is a benchmark, not a test: it
asserts nothing and writes nothing in the repository or in ~.

- set-up: one `prefect server start` on a free port of 127.0.0.1, with SQLite in a
  temporary PREFECT_HOME, started once and awaited on /api/health. Its start-up is
  printed apart and counted in no run: a scheduled deployment runs against a server
  that is already up. The server keeps running (its services included) during every
  run, the `dvc repro`s too, so both share the machine with it alike.
- every cold run gets a fresh copy of the project, as `bench.stages` makes it
  (params.yaml with the tuning budget cut by `--trials`/`--timeout`, dvc.yaml,
  pipeline/, an empty landing folder) plus flows/, with `dvc init --no-scm` and its own
  MLflow store and optuna.db in the copy. Its no-op run follows in the same copy: nothing
  changed, so only deploy runs (it runs on every repro).
- dvc: `dvc repro` as a subprocess; its wall time.
- prefect: `training_flow('<copy>')` in a fresh `python -c` process with
  PREFECT_API_URL set to the server; the wall time of the whole process, importing
  Prefect included. The process notes when its code started, when `flows.training`
  was imported and when the flow call returned; Prefect's API gives the flow run's and
  each task run's start and end, and the flow's summary each stage's time inside its
  task (`reproduce_stage`) and which stages ran.
- both: DVC runs each stage's command with `$SHELL -c`; `SHELL` is a bash wrapper that
  stamps each command's start and end, so the stage commands' own time is known in both
  kinds of run and "orchestration" (wall minus stage commands) compares what each adds
  around the same work, which is less noisy than the walls (tuning varies run to run).

Rounds alternate the order (dvc then prefect, then prefect then dvc, ...) so that drift
in the machine's load counts against both alike. The header shows the load average at
the start: the training stages slow down several times over while other work shares
the two cores. Everything lives in one temporary folder, removed at the end unless
`--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import yaml

from bench.serve import free_port
from bench.stages import BIN, QUIET, REPO, STAGES, import_code, make_project, quiet_env, timed

GOAL = 1.10  # the Prefect-run pipeline takes at most this many times a plain dvc repro
STARTUP_TIMEOUT = 90.0
TASK_RUNS_TIMEOUT = 15.0  # task runs reach the API as events, recorded asynchronously
# DVC runs a stage's command as `$SHELL --noprofile --norc -c <cmd>` (it picks the flags
# by the shell's name, hence a wrapper named `bash`); this one stamps start and end.
SHELL_WRAPPER = """#!/bin/bash
started=$EPOCHREALTIME
/bin/bash "$@"
status=$?
echo "$started $EPOCHREALTIME $*" >> {log}
exit $status
"""
# The flow's process: the one-liner with time stamps around its two steps.
FLOW_RUNNER = """
import json, sys, time
started = time.time()
from flows.training import training_flow
imported = time.time()
summary = training_flow(sys.argv[1])
returned = time.time()
with open(sys.argv[2], "w") as out:
    times = {"started": started, "imported": imported, "returned": returned}
    json.dump({**times, "summary": summary}, out, default=str)
"""
_RUNNING_STAGE = re.compile(r"Running stage '([^']+)'")
# The flow's tasks that are not stages (their task run names start with these).
OTHER_TASKS = ("read settings", "plan", "read results", "dvc push", "commit dvc.lock")
# Each part of a flow process's wall time, as printed; nested parts are indented.
FLOW_PARTS = {
    "start": "interpreter start (spawn to first line)",
    "import": "import flows.training (Prefect)",
    "setup": "flow call until the flow run is Running",
    "flow": "flow run, Running to its end (API)",
    "stage_tasks": "  stage tasks: reproduce_stage (summary)",
    "commands": "    stage commands (SHELL wrapper)",
    "dvc_in_process": "    DVC in process around them",
    "task_engine": "  stage tasks: Prefect around reproduce_stage",
    "other_tasks": "  other tasks: settings, plan, results, push",
    "between": "  between tasks (task set-up, flow code)",
    "after": "flow run end until the call returns",
    "exit": "exit (drain logs and events, shut down)",
}


@dataclass
class Run:
    """One timed run, in seconds. `commands` holds each stage command's wall (from the
    SHELL wrapper); `parts` splits a flow process's wall (keys of `FLOW_PARTS`)."""

    kind: str  # "dvc" | "prefect"
    phase: str  # "cold" | "no-op"
    wall: float
    commands: dict[str, float]
    ran: list[str]
    parts: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def command_seconds(self) -> float:
        """The stage commands' time, all of them."""
        return sum(self.commands.values())

    @property
    def orchestration(self) -> float:
        """What the run adds around the stage commands: the wall minus their time."""
        return self.wall - self.command_seconds

    def figure(self, name: str) -> float:
        """`wall`, `commands`, `orchestration`, or one of `parts`."""
        whole = {"wall": self.wall, "commands": self.command_seconds}
        whole["orchestration"] = self.orchestration
        return whole[name] if name in whole else self.parts[name]


@dataclass
class Copy:
    """A project copy, its children's environment and its SHELL wrapper's log."""

    root: Path
    env: dict[str, str]
    log: Path


@dataclass
class Server:
    """A running `prefect server start`: the process (its own group), URL and log."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    seconds: float


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults keep a run to about five minutes on two cores."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.orchestration",
        description="Time the Prefect training flow against a plain `dvc repro`.",
    )
    parser.add_argument("--trials", type=int, default=10, help="tune.n_trials (default 10)")
    parser.add_argument("--timeout", type=int, default=60, help="tune.timeout in s (default 60)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="cold + no-op runs of each, alternating (default 2)"
    )
    parser.add_argument(
        "--samples", type=int, default=3, help="runs per import timing (median; default 3)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.samples < 1:
        parser.error("--rounds and --samples must be at least 1")
    return args


# --- set-up ---------------------------------------------------------------------------


def start_server(root: Path) -> Server:
    """`prefect server start` on a free port of 127.0.0.1 in its own process group, with
    a temporary PREFECT_HOME; returns once /api/health answers."""
    import httpx

    home = root / "prefect-server"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    env = {**os.environ, **QUIET, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*argv, "--port", str(port), "--no-ui"],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, url, log, 0.0)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"prefect server exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                server.seconds = time.perf_counter() - started
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(server)
    sys.exit(f"prefect server not healthy in {STARTUP_TIMEOUT:g} s:\n{log.read_text()[-4000:]}")


def stop_server(server: Server) -> None:
    """The server runs uvicorn and its services in child processes: end its group."""
    if server.process.poll() is not None:
        return
    os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=5)


def make_copy(root: Path, args: argparse.Namespace, api_url: str) -> Copy:
    """A fresh project as `bench.stages` makes it, plus flows/, under `dvc init`; its
    children see the copy's MLflow store, the server's API and the timing SHELL."""
    project = make_project(root, args.trials, args.timeout)
    shutil.copytree(REPO / "flows", project / "flows")
    wrapper_dir = Path(tempfile.mkdtemp(prefix="shell-", dir=root))
    log = wrapper_dir / "commands.log"
    wrapper = wrapper_dir / "bash"
    wrapper.write_text(SHELL_WRAPPER.format(log=shlex.quote(str(log))))
    wrapper.chmod(0o755)
    env = {**quiet_env(project), "PREFECT_API_URL": api_url, "SHELL": str(wrapper)}
    dvc = str(BIN / "dvc")
    timed([dvc, "init", "--no-scm", "-q"], project, env)
    timed([dvc, "config", "core.analytics", "false"], project, env)
    return Copy(project, env, log)


def warm_up(project: Path, samples: int) -> tuple[float, float, float]:
    """Import once what the runs will import (the stages' libraries, DVC, Prefect), so
    that whichever run goes first does not read them from a cold disk; then the
    interpreter's start alone and with `flows.training` (median of `samples`).
    Returns (warm-up, interpreter start, start + import flows.training) in seconds."""
    family = yaml.safe_load((project / "params.yaml").read_text())["train"]["model"]
    env = {**quiet_env(project), "MPLBACKEND": "Agg"}
    modules = "; ".join(import_code(stage, family) for stage in STAGES)
    extra = "import pipeline.stages.compress, pipeline.stages.deploy, pipeline.onnx_model"
    code = f"{modules}; {extra}; import dvc.repo, dvc.cli, flows.training"
    warm, _ = timed([sys.executable, "-c", code], project, env)

    def python_c(line: str) -> float:
        return timed([sys.executable, "-c", line], project, env)[0]

    bare = statistics.median(python_c("pass") for _ in range(samples))
    flow = statistics.median(python_c("import flows.training") for _ in range(samples))
    return warm, bare, flow


# --- runs -----------------------------------------------------------------------------


def take_commands(log: Path) -> dict[str, float]:
    """Each stage command's wall time from the SHELL wrapper's log, which is then
    emptied for the next run."""
    walls: dict[str, float] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        started, ended, *words = line.replace(",", ".").split()
        stage = next(
            (word.removeprefix("pipeline.stages.") for word in words if "pipeline.stages." in word),
            " ".join(words),
        )
        walls[stage] = walls.get(stage, 0.0) + float(ended) - float(started)
    log.unlink(missing_ok=True)
    return walls


def run_dvc(copy: Copy, phase: str) -> Run:
    """`dvc repro` in the copy; which stages ran, from DVC's "Running stage" lines."""
    wall, out = timed([str(BIN / "dvc"), "repro"], copy.root, copy.env)
    ran = _RUNNING_STAGE.findall(out)
    return Run("dvc", phase, wall, take_commands(copy.log), ran)


def run_flow(copy: Copy, phase: str, api_url: str) -> Run:
    """The training flow in a fresh process; its wall split with the process's own time
    stamps, the flow and task runs' times from the API, and the summary's stages."""
    result = copy.root.parent / f"{copy.root.name}-{phase}.json"
    argv = [sys.executable, "-c", FLOW_RUNNER, str(copy.root), str(result)]
    spawned = time.time()
    wall, _ = timed(argv, copy.root, copy.env)
    commands = take_commands(copy.log)
    stamps = json.loads(result.read_text())
    summary = stamps["summary"]
    in_task = {stage["stage"]: float(stage["seconds"]) for stage in summary["stages"]}
    flow_run, task_runs = flow_run_times(api_url, copy.root, set(in_task))
    stage_runs = {name: task_runs[name] for name in in_task if name in task_runs}
    others = {
        name: span
        for name, span in task_runs.items()
        if name not in in_task and name.startswith(OTHER_TASKS)
    }
    other = list(others.values())
    stage_tasks = sum(in_task.values())
    flow_seconds = flow_run[1] - flow_run[0]
    task_seconds = sum(end - start for start, end in [*stage_runs.values(), *other])
    parts = {
        "start": stamps["started"] - spawned,
        "import": stamps["imported"] - stamps["started"],
        "setup": flow_run[0] - stamps["imported"],
        "flow": flow_seconds,
        "stage_tasks": stage_tasks,
        "commands": sum(commands.values()),
        "dvc_in_process": stage_tasks - sum(commands.values()),
        "task_engine": sum(
            end - start - in_task[name] for name, (start, end) in stage_runs.items()
        ),
        "other_tasks": sum(end - start for start, end in other),
        **{
            f"task {prefix}": sum(
                end - start for name, (start, end) in others.items() if name.startswith(prefix)
            )
            for prefix in OTHER_TASKS
        },
        "between": flow_seconds - task_seconds,
        "after": stamps["returned"] - flow_run[1],
        "exit": spawned + wall - stamps["returned"],
    }
    missing = len(in_task) - len(stage_runs)
    note = f"{missing} stage task run(s) not in the API yet" if missing else ""
    return Run("prefect", phase, wall, commands, summary["ran"], parts, note)


def flow_run_times(
    api_url: str, project: Path, stages: set[str]
) -> tuple[tuple[float, float], dict[str, tuple[float, float]]]:
    """The newest flow run's start and end (epoch seconds), checked to be this copy's,
    and its task runs' by name. Task runs reach the server as events, recorded a moment
    later: wait until those of `stages` are there and every one has ended."""
    import httpx

    with httpx.Client(base_url=api_url, timeout=10) as client:
        flow_runs = client.post("/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1})
        newest = flow_runs.raise_for_status().json()[0]
        if Path(newest["parameters"]["project"]).resolve() != project.resolve():
            sys.exit(f"the newest flow run is not this copy's: {newest['parameters']}")
        body = {"task_runs": {"flow_run_id": {"any_": [newest["id"]]}}}
        deadline = time.monotonic() + TASK_RUNS_TIMEOUT
        while True:
            task_runs = client.post("/task_runs/filter", json=body).raise_for_status().json()
            names = {run["name"] for run in task_runs}
            ended = all(run["end_time"] for run in task_runs)
            if (ended and stages <= names) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    spans = {
        run["name"]: (epoch(run["start_time"]), epoch(run["end_time"]))
        for run in task_runs
        if run["start_time"] and run["end_time"]
    }
    return (epoch(newest["start_time"]), epoch(newest["end_time"])), spans


def epoch(stamp: str) -> float:
    """An API time stamp (ISO 8601, with its zone) as epoch seconds."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_rounds(root: Path, args: argparse.Namespace, api_url: str) -> list[Run]:
    """`--rounds` rounds; in each, a cold run and then a no-op run of each kind, each
    kind in a fresh copy. The order alternates: dvc first in odd rounds, prefect in
    even ones. Each run is printed as it ends."""
    runs = []
    for number in range(args.rounds):
        kinds = ("dvc", "prefect") if number % 2 == 0 else ("prefect", "dvc")
        for kind in kinds:
            copy = make_copy(root, args, api_url)
            for phase in ("cold", "no-op"):
                run = run_dvc(copy, phase) if kind == "dvc" else run_flow(copy, phase, api_url)
                runs.append(run)
                print_run(number + 1, run)
    return runs


# --- report ---------------------------------------------------------------------------


def median(runs: list[Run], kind: str, phase: str, value: str = "wall") -> float | None:
    """The median of a figure (see `Run.figure`) over the runs of one kind and phase."""
    values = [run.figure(value) for run in runs if run.kind == kind and run.phase == phase]
    return statistics.median(values) if values else None


def stages_ran(run: Run) -> str:
    """The stages a run ran: all of them named when few, else a count."""
    if len(run.ran) <= 3:
        return ", ".join(run.ran) or "none"
    return f"{len(run.ran)} stages ({run.ran[0]}..{run.ran[-1]})"


def print_run(number: int, run: Run) -> None:
    label = "dvc repro" if run.kind == "dvc" else "prefect flow"
    print(
        f"  round {number}  {label:<12} {run.phase:<5} {run.wall:7.2f} s"
        f"  (stage commands {run.command_seconds:6.2f} s, orchestration {run.orchestration:5.2f} s)"
        f"  ran: {stages_ran(run)}" + (f"  [{run.note}]" if run.note else ""),
        flush=True,
    )


def verdict(ratio: float) -> str:
    return f"{ratio:.3f}x  goal <= {GOAL:.2f}x: {'MET' if ratio <= GOAL else 'NOT MET'}"


def print_summary(runs: list[Run]) -> None:
    """The medians, the ratios against the goal, and the paired ratios per round."""
    print()
    print(f"{'medians':<24} {'dvc repro s':>12} {'prefect s':>10}  prefect/dvc")
    for phase in ("cold", "no-op"):
        dvc, flow = median(runs, "dvc", phase), median(runs, "prefect", phase)
        if dvc and flow:
            print(f"{phase + ' run':<24} {dvc:>12.2f} {flow:>10.2f}  {verdict(flow / dvc)}")
    for phase in ("cold", "no-op"):
        dvc = [run.wall for run in runs if run.kind == "dvc" and run.phase == phase]
        flow = [run.wall for run in runs if run.kind == "prefect" and run.phase == phase]
        paired = ", ".join(f"{p / d:.3f}x" for d, p in zip(dvc, flow, strict=False))
        print(f"  {phase} ratio per round (prefect/dvc): {paired}")
    for phase in ("cold", "no-op"):
        dvc = median(runs, "dvc", phase, "orchestration")
        flow = median(runs, "prefect", phase, "orchestration")
        if dvc is not None and flow is not None:
            print(
                f"  {phase} orchestration (wall - stage commands): dvc {dvc:.2f} s, "
                f"prefect {flow:.2f} s: Prefect adds {flow - dvc:+.2f} s"
            )
    # The walls differ mostly by how fast the same stage commands ran (tune above all);
    # with dvc's stage commands on both sides, what is left is what each run adds.
    for phase in ("cold", "no-op"):
        work = median(runs, "dvc", phase, "commands")
        dvc = median(runs, "dvc", phase, "orchestration")
        flow = median(runs, "prefect", phase, "orchestration")
        if work is not None and dvc is not None and flow is not None:
            print(
                f"  {phase} at equal stage work (dvc's stage commands + each side's "
                f"orchestration): {verdict((work + flow) / (work + dvc))}"
            )


def print_breakdown(runs: list[Run]) -> None:
    """Where each kind's wall goes, medians per part (so the parts add up to the wall
    only approximately when there are more than two rounds)."""
    print()
    print("Where the time goes (medians, s):")
    print(f"  {'':<46} {'cold':>8} {'no-op':>8}")

    def row(label: str, kind: str, value: str) -> None:
        cells = [median(runs, kind, phase, value) for phase in ("cold", "no-op")]
        text = " ".join(f"{cell:>8.2f}" if cell is not None else f"{'-':>8}" for cell in cells)
        print(f"  {label:<46} {text}")

    row("dvc repro", "dvc", "wall")
    row("  stage commands (SHELL wrapper)", "dvc", "commands")
    row("  DVC's own (wall - stage commands)", "dvc", "orchestration")
    row("prefect flow process", "prefect", "wall")
    for key, label in FLOW_PARTS.items():
        row(f"  {label}", "prefect", key)
        if key == "other_tasks":
            for prefix in OTHER_TASKS:
                if median(runs, "prefect", "cold", f"task {prefix}"):
                    row(f"      {prefix}", "prefect", f"task {prefix}")
    row("  orchestration (wall - stage commands)", "prefect", "orchestration")


def print_stage_table(runs: list[Run]) -> None:
    """Per stage, cold: the command's median wall in each kind of run, and in the flow
    the time inside its task (`reproduce_stage`: DVC in process plus the command)."""
    cold = [run for run in runs if run.phase == "cold"]
    names = list(dict.fromkeys(name for run in cold for name in run.commands))
    print()
    print(f"  {'cold, per stage command (median s)':<36} {'in dvc':>8} {'in flow':>8}")
    for name in names:
        cells = []
        for kind in ("dvc", "prefect"):
            values = [
                run.commands[name] for run in cold if run.kind == kind and name in run.commands
            ]
            cells.append(f"{statistics.median(values):>8.2f}" if values else f"{'-':>8}")
        print(f"  {name:<36} {' '.join(cells)}")


def describe(args: argparse.Namespace, load: float, server: Server) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    print(
        f"Driftline orchestration benchmark: {params['data']['source']}, model "
        f"{params['train']['model']}; tune budget {args.trials} trials / {args.timeout} s; "
        f"{args.rounds} round(s) of a cold and a no-op run of each"
    )
    print(
        f"Python {platform.python_version()}, Prefect {version('prefect')}, DVC "
        f"{version('dvc')}, {os.cpu_count()} CPUs, load average {load:.2f} at the start"
    )
    if load >= 1:
        print(f"warning: the machine was busy (load {load:.2f}): the figures may be inflated")
    print(
        f"prefect server start (127.0.0.1, SQLite in a temporary PREFECT_HOME): healthy "
        f"after {server.seconds:.2f} s, not counted in any run"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Start the server, warm up, run the rounds, print; the server stops and the
    temporary folder goes at the end (unless --keep), whatever happened."""
    args = parse_args(argv)
    load = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="driftline-bench-orchestration-"))
    server = None
    try:
        server = start_server(root)
        describe(args, load, server)
        first = make_copy(root, args, server.url)
        warm, bare, flow_import = warm_up(first.root, args.samples)
        print(f"warm-up (one process importing the stages' libraries, DVC, Prefect): {warm:.2f} s")
        print(
            f"python -c pass: {bare:.3f} s; python -c 'import flows.training': "
            f"{flow_import:.3f} s (median of {args.samples})"
        )
        print()
        print("Runs, in the order they ran (each kind's cold run in a fresh copy, then a no-op):")
        runs = run_rounds(root, args, server.url)
        print_summary(runs)
        print_breakdown(runs)
        print_stage_table(runs)
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        if server is not None:
            stop_server(server)
        if args.keep:
            print(f"\nkept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
