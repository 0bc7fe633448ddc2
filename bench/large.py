"""Each stage's wall time and peak memory on a large synthetic table, with default params.

`python -m bench.large --rows 3000000` generates a seeded hourly table of bike rides,
runs the pipeline on it stage by stage, and prints each stage's wall seconds and peak
resident memory as it ends, then the totals and what the stages decided. It is a
benchmark, not a test: it asserts nothing and writes nothing in the repository.

- data: `--stations` stations (default 300) x `--rows / --stations` hourly timestamps
  from 2015-01-01, built with numpy's `default_rng(--seed)` and written with pyarrow to
  the temporary project's `data/external/large.parquet`. Features: `station` (text,
  "s017"), `hour`, `weekday`, `month`, `holiday` (whole numbers), `temp`, `humidity`,
  `wind` (seasonal and daily cycles, regional weather that drifts over a few days,
  local noise). The target `rides` is a Poisson count whose log-rate depends on the
  station, an hour-of-day shape (commuter peaks on working days, one broad afternoon
  peak on weekends and holidays), the weekday, the weather, and a slow upward trend, so
  later rows are busier and the time split matters.
- params: the repository's params.yaml with only the data set changed (source, target,
  task, time column, no keys, slices, schema inferred by ingest, no hold-out), the
  naive baseline grouped by weekday and hour, an r2 floor of 0.3, and MLflow and Optuna
  state as SQLite files in the temporary project. Training and tuning keep their
  defaults: they are what is measured. `--trials` changes tune.n_trials only.
- stages: each stage's `cmd` from dvc.yaml (ingest to deploy, or up to
  `--until-stage`), run as a fresh process with the temporary project as its working
  directory, importing the copy of `pipeline/` made at the start (a snapshot, so edits
  to the repository during a long run do not reach it). Wall time is
  `time.perf_counter` around the process; peak RSS is the `ru_maxrss` that `os.wait4`
  returns for it: the largest resident set of the stage process or any process it
  started and waited for (the largest one, not their sum).

The first failing stage stops the run; its stderr tail is printed with the figures so
far. The temporary project is removed at the end unless `--keep`. The training stages
slow down several times over when other work shares the cores: the header shows the
load average at the start, and the footer the one at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench import QUIET, REPO, pipeline_stages

STAGES = pipeline_stages()
# params.yaml settings that these variables would replace (pipeline.config's
# ENVIRONMENT_OVERRIDES): unset for the stages, so the state stays in the project.
OVERRIDES = ("DRIFTLINE_PREDICTION_LOG", "DRIFTLINE_OPTUNA_STORAGE", "DRIFTLINE_DATA_BRANCH")
SOURCE = "data/external/large.parquet"
START = np.datetime64("2015-01-01T00", "h")
# Fixed-date holidays (month, day); the weekend shape of demand applies on them.
HOLIDAYS = ((1, 1), (5, 1), (7, 4), (11, 11), (12, 25), (12, 26))
MIB = 1024 * 1024


@dataclass
class StageRun:
    """One stage process: wall seconds, peak RSS in MiB, exit status, last stdout line."""

    name: str
    wall: float
    peak_rss_mib: float
    returncode: int
    said: str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults are the 3M-row run the README quotes."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.large",
        description="Time each stage and its peak memory on a large synthetic table.",
    )
    parser.add_argument(
        "--rows", type=int, default=3_000_000, help="rows, rounded down to whole hours"
    )
    parser.add_argument("--stations", type=int, default=300, help="stations (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic table")
    parser.add_argument(
        "--trials", type=int, default=None, help="tune.n_trials (default: params.yaml's)"
    )
    parser.add_argument(
        "--until-stage", choices=STAGES, default=STAGES[-1], help="the last stage to run"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = parser.parse_args(argv)
    if args.stations < 1 or args.rows < args.stations * 24 * 7:
        parser.error("--rows must cover at least a week of hours per station")
    if args.trials is not None and args.trials < 0:
        parser.error("--trials must be 0 or more")
    return args


def smooth_noise(rng: np.random.Generator, length: int, hours: int) -> np.ndarray:
    """Unit-variance noise that wanders over about `hours` hours: white noise through a
    Hann window, the way regional weather drifts over days rather than hours."""
    window = np.hanning(hours)
    window /= np.sqrt(np.sum(window**2))
    return np.convolve(rng.standard_normal(length + hours - 1), window, mode="valid")


def make_table(rows: int, stations: int, seed: int) -> pa.Table:
    """The seeded synthetic table, time-major (every station for an hour, then the next
    hour). Per-hour and per-station parts are built once and broadcast to (hours,
    stations); only the row-level columns take rows x 8 bytes each."""
    rng = np.random.default_rng(seed)
    hours = rows // stations
    stamps = START + np.arange(hours)
    hour = np.arange(hours) % 24
    days = stamps.astype("M8[D]")
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    month = days.astype("M8[M]").astype(np.int64) % 12 + 1
    day_of_month = (days - days.astype("M8[M]")).astype(np.int64) + 1
    day_of_year = (days - days.astype("M8[Y]")).astype(np.int64) + 1
    holiday = np.isin(month * 100 + day_of_month, [m * 100 + d for m, d in HOLIDAYS])
    weekend = (weekday >= 5) | holiday

    # Weather: a seasonal and a daily cycle, a regional anomaly over days (per hour),
    # a per-station offset (altitude, shade) and local noise (per row).
    season = 11 + 9 * np.sin(2 * np.pi * (day_of_year - 105) / 365.25)
    daily = np.sin(2 * np.pi * (hour - 9) / 24)
    anomaly = 3 * smooth_noise(rng, hours, 72)
    regional_temp = season + 4 * daily + anomaly
    temp = (
        regional_temp[:, None]
        + rng.normal(0, 1, stations)[None, :]
        + rng.normal(0, 0.8, (hours, stations))
    )
    humid_spell = 8 * smooth_noise(rng, hours, 48)
    humidity = np.clip(
        (70 - 12 * daily - 0.8 * anomaly + humid_spell)[:, None]
        + rng.normal(0, 4, (hours, stations)),
        10,
        100,
    )
    exposure = rng.uniform(0.7, 1.4, stations)
    wind = np.clip(
        (9 + 4 * smooth_noise(rng, hours, 36))[:, None] * exposure[None, :]
        + rng.normal(0, 1.5, (hours, stations)),
        0,
        None,
    )

    # Demand: log-rate = station + hour shape (by working day or not) + weekday +
    # weather + trend. The trend adds 40% from the first hour to the last.
    commute = (
        1.3 * np.exp(-((hour - 8) ** 2) / 2)
        + 1.5 * np.exp(-((hour - 17.5) ** 2) / 3)
        + 0.6 * ((hour >= 7) & (hour <= 21))
    )
    leisure = 1.1 * np.exp(-((hour - 14) ** 2) / 12)
    night = -1.6 * ((hour <= 5) | (hour >= 23))
    weekday_effect = np.array([0.0, 0.05, 0.05, 0.03, 0.08, -0.05, -0.15])[weekday]
    per_hour = (
        np.log(5)
        + np.where(weekend, leisure, commute)
        + night
        + weekday_effect
        + np.log1p(0.4 * np.arange(hours) / hours)
    )
    log_rate = per_hour[:, None] + rng.normal(0, 0.6, stations)[None, :]
    log_rate += 0.08 * temp - 0.0019 * temp**2  # best near 21 degrees
    log_rate -= 0.012 * (humidity - 60) + 0.025 * wind
    rides = rng.poisson(np.exp(log_rate))
    del log_rate

    station_names = pa.array([f"s{number:03d}" for number in range(stations)])
    station_index = np.tile(np.arange(stations, dtype=np.int16), hours)
    station = pa.DictionaryArray.from_arrays(station_index, station_names).cast(pa.string())
    per_row = {
        "timestamp": pa.array(np.repeat(stamps.astype("M8[us]"), stations)),
        "station": station,
        "hour": np.repeat(hour, stations),
        "weekday": np.repeat(weekday, stations),
        "month": np.repeat(month, stations),
        "temp": np.round(temp, 1).ravel(),
        "humidity": np.round(humidity, 1).ravel(),
        "wind": np.round(wind, 1).ravel(),
        "holiday": np.repeat(holiday.astype(np.int64), stations),
        "rides": rides.ravel(),
    }
    return pa.table(per_row)


def write_data(project: Path, args: argparse.Namespace) -> tuple[int, float, int]:
    """Generate and write the table; its rows, the seconds taken and the file's bytes."""
    started = time.perf_counter()
    table = make_table(args.rows, args.stations, args.seed)
    path = project / SOURCE
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table.num_rows, time.perf_counter() - started, path.stat().st_size


def large_params(project: Path, trials: int | None) -> dict[str, Any]:
    """The repository's params.yaml with the data set swapped for the synthetic one;
    MLflow and Optuna state in the project; everything that trains left as it is."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(
        source=SOURCE,
        target="rides",
        task="regression",
        time_column="timestamp",
        key_columns=[],
        slice_columns=["weekday", "holiday"],
        until=None,
        schema=None,  # ingest infers it into data/raw/schema.yaml
    )
    params["clean"]["calendar_features"] = {"timestamp": ["dayofyear"]}
    params["evaluate"].update(
        primary_metric="rmse", baseline_groups=["weekday", "hour"], floors={"r2": 0.3}
    )
    params["mlflow"]["tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    params["tune"]["storage"] = f"sqlite:///{project / 'optuna.db'}"
    if trials is not None:
        params["tune"]["n_trials"] = trials
    return params


def make_project(root: Path, args: argparse.Namespace) -> Path:
    """A project holding what the stages read: params.yaml, a snapshot of pipeline/
    (what `python -m` imports from the working directory) and an empty landing folder."""
    project = root / "project"
    shutil.copytree(REPO / "pipeline", project / "pipeline")
    params = large_params(project, args.trials)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / params["data"]["landing"]).mkdir(parents=True, exist_ok=True)
    return project


def stage_commands(until: str) -> dict[str, list[str]]:
    """Each stage's `cmd` from dvc.yaml as argv, with this interpreter for `python`,
    from ingest up to and including `until`."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    commands = {}
    for name in STAGES[: STAGES.index(until) + 1]:
        argv = shlex.split(stages[name]["cmd"])
        commands[name] = [sys.executable if arg == "python" else arg for arg in argv]
    return commands


def stage_env(project: Path) -> dict[str, str]:
    """The environment of every stage: telemetry off, all state in the project (an
    MLFLOW_TRACKING_URI set outside would win over params, so it is set to the same)."""
    env = {name: value for name, value in os.environ.items() if name not in OVERRIDES}
    return {
        **env,
        **QUIET,
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PREFECT_HOME": str(project / "prefect"),
    }


def last_line(path: Path) -> str:
    """The last non-blank line of a log: each stage ends with a one-line summary."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_stage(name: str, argv: list[str], project: Path, env: dict[str, str]) -> StageRun:
    """Run one stage to its end with its output in logs/; its wall time and peak RSS."""
    logs = project / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, cwd=project, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    peak = usage.ru_maxrss * 1024 / MIB  # KiB on Linux
    return StageRun(name, wall, peak, process.returncode, last_line(logs / f"{name}.out"))


def read_report(project: Path, relative: str) -> dict[str, Any]:
    """A stage's JSON report, or {} when the stage did not run."""
    path = project / relative
    return json.loads(path.read_text()) if path.exists() else {}


def outcomes(project: Path) -> dict[str, Any]:
    """What the stages decided: rows, the objective, tuning's result, the test scores."""
    tuning = read_report(project, "reports/tuning/summary.json")
    evaluation = read_report(project, "reports/evaluation.json")
    return {
        "ingested_rows": read_report(project, "metrics/ingest.json").get("rows"),
        "objective": read_report(project, "reports/train.json").get("objective"),
        "tune": {key: tuning.get(key) for key in ("kept", "reason", "complete", "pruned")},
        "test_rmse": {
            "tuned": evaluation.get("test", {}).get("rmse"),
            "untuned": evaluation.get("untuned", {}).get("rmse"),
            "baseline": evaluation.get("baseline", {}).get("rmse"),
        },
        "gate_passed": read_report(project, "reports/gate.json").get("passed"),
        "deploy": read_report(project, "reports/deploy.json").get("action"),
    }


def describe(args: argparse.Namespace, params: dict[str, Any], load: float) -> None:
    """What is measured, on what."""
    hours = args.rows // args.stations
    train = params["train"]
    print(
        f"Driftline large-table benchmark: {args.stations * hours:,} rows = {args.stations} "
        f"stations x {hours:,} hours from {START.astype('M8[D]')}, seed {args.seed}; "
        f"model {train['model']} (n_jobs {train[train['model']].get('n_jobs', '-')}), "
        f"tune {params['tune']['n_trials']} trials"
    )
    print(
        f"{date.today()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f} at the start"
    )
    if load >= 1:
        print(f"warning: the machine was busy (load {load:.2f}): the figures may be inflated")


def print_row(run: StageRun) -> None:
    print(f"{run.name:<9} {run.wall:>9.1f} {run.peak_rss_mib:>14,.0f}", flush=True)


def print_summary(runs: list[StageRun], results: dict[str, Any]) -> None:
    """The total line, each stage's own summary line and what the stages decided."""
    total = sum(run.wall for run in runs)
    peak = max((run.peak_rss_mib for run in runs), default=0.0)
    print("-" * 34)
    print(f"{'total':<9} {total:>9.1f} {peak:>14,.0f}  (wall: sum; RSS: the largest)")
    print()
    for run in runs:
        print(f"{run.name}: {run.said}")
    print()
    rows = results["ingested_rows"]
    print(f"rows ingested:   {rows:,}" if rows is not None else "rows ingested:   -")
    print(f"objective:       {results['objective'] or '-'}")
    tune = results["tune"]
    if tune["kept"] is None:
        print("tune:            -")
    else:
        print(
            f"tune:            kept {tune['kept']}, {tune['complete']} complete, "
            f"{tune['pruned']} pruned; {tune['reason']}"
        )
    rmse = ", ".join(
        f"{name} {value:.4f}" if value is not None else f"{name} -"
        for name, value in results["test_rmse"].items()
    )
    print(f"test rmse:       {rmse}")
    gate = results["gate_passed"]
    print(f"gate passed:     {'-' if gate is None else gate}; deploy: {results['deploy'] or '-'}")


def main(argv: Sequence[str] | None = None) -> None:
    """Generate, run the stages one by one (each line printed as it ends), summarise;
    the temporary project goes at the end (unless --keep), whatever happened."""
    args = parse_args(argv)
    load = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="driftline-large-"))
    failed: StageRun | None = None
    runs: list[StageRun] = []
    try:
        project = make_project(root, args)
        params = yaml.safe_load((project / "params.yaml").read_text())
        describe(args, params, load)
        rows, generated, size = write_data(project, args)
        print(f"generated {rows:,} rows in {generated:.1f} s: {SOURCE}, {size / MIB:,.0f} MiB")
        print()
        print(f"{'stage':<9} {'wall s':>9} {'peak RSS MiB':>14}")
        print("-" * 34, flush=True)
        env = stage_env(project)
        for name, command in stage_commands(args.until_stage).items():
            run = run_stage(name, command, project, env)
            runs.append(run)
            print_row(run)
            if run.returncode != 0:
                failed = run
                break
        results = outcomes(project)
        print_summary(runs, results)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        if failed is not None:
            tail = (project / "logs" / f"{failed.name}.err").read_text(errors="replace")
            why = (
                f"stopped by signal {-failed.returncode}"
                if failed.returncode < 0
                else f"failed ({failed.returncode})"
            )
            print(f"\n{failed.name} {why}; its stderr ends:\n{tail[-4000:]}")
        if args.json:
            figures = {
                "rows": rows,
                "stations": args.stations,
                "seed": args.seed,
                "n_trials": params["tune"]["n_trials"],
                "load_start": load,
                "generate_seconds": generated,
                "stages": [asdict(run) for run in runs],
                "total_wall": sum(run.wall for run in runs),
                **results,
            }
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        if args.keep:
            print(f"\nkept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if failed is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
