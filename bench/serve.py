"""Serving latency and throughput: one row in process (ONNX vs native), then over HTTP
beside a hello-world FastAPI app.

`python -m bench.serve` prints the figures the serving targets are stated in. It is a
benchmark, not a test: it asserts nothing and writes nothing in the repository.

- set-up: a temporary copy of the project (params.yaml, dvc.yaml, pipeline/, as
  bench.stages makes it, with `tune.n_trials: 0` and `compress.latency_calls: 20` to be
  quick) where the stage commands ingest..compress run, so that `models/tuned` (native)
  and `models/compressed` (model.onnx + model.json) exist. `--project DIR` reads those
  from an existing project instead and runs nothing in it.
- one row, in process: `--rows` single rows of data/split/test.parquet, each scored by
  the native model (`load_model`) and by the ONNX runner (`load_served_model(...).model`)
  after a warm-up; p50/p99 in ms and the ratio native/ONNX. The headline pair is
  serving's path, a validated record to raw output (`FeatureSpec.record_arrays` then
  `predict_arrays`); the frame path (`predict_raw(frame)`, through pandas) is shown
  next to it. Also the whole serving call for one JSON body (`read_json`,
  `parse_request`, `score_records`, as `/predict` runs them minus the log and the HTTP
  layer), and a breakdown of its steps. `--http-only` skips this part.
- HTTP: two servers, each in its own subprocess and each started by `run_server`
  (uvicorn, one worker, no access log, 127.0.0.1), so both get the same server settings:
  "predict", `create_app` over the compressed model with a parquet prediction log with
  its default settings and the project's `serve` limits, as `driftline serve` builds it
  (minus the registry: no champion poll, no admin reload); and "hello", a hello-world
  FastAPI app whose POST /predict
  parses the JSON body and returns a small JSON object. The load generator is `wrk`
  (Debian's package), a separate process: `--clients` keep-alive connections, each
  POSTing one record (the same test-split records to both apps, so the payloads are
  the same) in a closed loop for `--seconds` after a `--warmup` at the same level. The
  apps take turns at each level (hello first), `--repeats` times. Requests/s,
  p50/p90/p99/max latency (wrk's), errors (non-2xx, socket errors, timeouts), the CPU
  the server and wrk used, and predict/hello ratios from the same round. The load
  average is printed at the start and the end: the machine's other work moves every
  figure, the ratios much less.

In a closed loop, mean latency = clients / throughput (Little's law): p99 under 20 ms
at 64 clients needs well over 3,200 requests/s.

Two things make wrk's p99 sensitive to how a server admits connections: each run opens
its connections anew (the warm-up warms the server, not the connections), and wrk
corrects for coordinated omission, adding a synthetic sample for every mean interval a
connection was held up. A server that lets 64 new connections in one per turn of its
event loop (libuv does) puts the last of them a whole ramp behind, and those samples can
be more than 1% of a 10 s run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench.stages import REPO, quiet_env, stage_commands, timed

SETUP_STAGES = ("ingest", "validate", "clean", "split", "train", "tune", "evaluate", "compress")
ONNX_TARGET_RATIO = 2.0  # ONNX at least this many times faster than native, one row
HTTP_P99_TARGET_MS = 20.0  # at TARGET_CLIENTS concurrent clients
# /predict against hello-world at TARGET_CLIENTS, the same round: at least this share
# of its requests/s, at most this multiple of its p99 (issue 15).
THROUGHPUT_SHARE_TARGET = 0.5
P99_MULTIPLE_TARGET = 2.0
TARGET_CLIENTS = 64
WARMUP_SECONDS = 3.0
RECORDS_FILE = "records.jsonl"
# The server: the app over the compressed model as `driftline serve` builds it (a parquet
# prediction log with its default flush settings, the project's `stores.private` and
# `serve` limits), minus the registry (no champion poll, no admin reload) and retention.
LAUNCHER = """
import sys
from pathlib import Path
from pipeline.config import load_params
from pipeline.prediction_log import PredictionLog
from pipeline.serving import create_app, load_served_model, run_server
folder, log_root, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
settings = load_params(Path("params.yaml"))
app = create_app(
    lambda: load_served_model(folder, "bench"),
    log=PredictionLog.parquet(log_root, private=settings.stores.private),
    admin_token=None,
    poll_seconds=None,
    current_version=None,
    limits=settings.serve,
)
run_server(app, "127.0.0.1", port)
"""
# The yardstick: the least a FastAPI POST endpoint does (parse a JSON body, answer a
# small JSON object), served by the same `run_server`, so with the same uvicorn options.
HELLO_LAUNCHER = """
import sys
from typing import Annotated, Any
from fastapi import Body, FastAPI
from pipeline.serving import run_server
app = FastAPI(title="hello")

@app.post("/predict")
async def hello(body: Annotated[Any, Body()]) -> dict[str, Any]:
    return {"hello": "world", "fields": len(body) if isinstance(body, dict) else 0}

@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}

run_server(app, "127.0.0.1", int(sys.argv[1]))
"""
# wrk's script: POST the records of the file named after `--` in turn (each thread from
# its own offset), and print the figures as one JSON line at the end.
WRK_SCRIPT = """
local prepared, count, index = {}, 0, 0
local headers = {["Content-Type"] = "application/json"}

function init(args)
  for line in io.lines(args[1]) do
    count = count + 1
    prepared[count] = wrk.format("POST", "/predict", headers, line)
  end
  index = math.random(count)
end

function request()
  index = index % count + 1
  return prepared[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %.0f, "p90_us": %.0f, '
    .. '"p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass
class Timing:
    """Per-call latencies of one in-process path, in ms."""

    name: str
    ms: list[float]

    @property
    def p50(self) -> float:
        return float(np.percentile(self.ms, 50))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.ms, 99))


@dataclass(frozen=True)
class LoadFigures:
    """One wrk run against one app: its summary, and the CPU server and wrk used."""

    app: str
    clients: int
    round: int
    seconds: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    server_cpu_s: float
    wrk_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def server_cpu_us_per_request(self) -> float:
        return 1e6 * self.server_cpu_s / self.requests if self.requests else float("nan")


@dataclass(frozen=True)
class Comparison:
    """/predict against hello-world at one level, in one round."""

    clients: int
    round: int
    throughput_share: float  # predict req/s / hello req/s
    p99_multiple: float  # predict p99 / hello p99
    cpu_multiple: float  # predict's server CPU per request / hello's

    @property
    def met(self) -> bool:
        return (
            self.throughput_share >= THROUGHPUT_SHARE_TARGET
            and self.p99_multiple <= P99_MULTIPLE_TARGET
        )


@dataclass
class Server:
    """A running server subprocess and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_file: Path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults keep a run to a few minutes on two cores."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve",
        description="Time one-row scoring (ONNX vs native), then HTTP /predict against a "
        "hello-world FastAPI app under wrk.",
    )
    parser.add_argument(
        "--seconds", type=float, default=10, help="wrk run per app and level, in s (default 10)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=WARMUP_SECONDS,
        help=f"wrk warm-up before each measured run, in s (default {WARMUP_SECONDS:g})",
    )
    parser.add_argument(
        "--clients",
        default="16,64",
        help="wrk connections per level (default 16,64)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="wrk threads (default 1: the cores are shared)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of hello then predict per level"
    )
    parser.add_argument(
        "--rows", type=int, default=1000, help="single-row calls timed per path (default 1000)"
    )
    parser.add_argument("--http-only", action="store_true", help="skip the in-process timings")
    parser.add_argument(
        "--project",
        type=Path,
        help="an existing project with models/tuned, models/compressed and data/split "
        "(read only; nothing runs in it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    try:
        args.client_levels = [int(part) for part in args.clients.split(",") if part.strip()]
    except ValueError:
        parser.error("--clients takes comma-separated whole numbers, e.g. 16,64")
    if not args.client_levels or min(args.client_levels) < 1:
        parser.error("--clients needs at least one level of 1 or more")
    if args.seconds < 1 or args.warmup < 0 or args.rows < 1 or args.repeats < 1:
        parser.error("--seconds must be at least 1, --warmup >= 0, --rows and --repeats >= 1")
    if args.threads < 1 or args.threads > min(args.client_levels):
        parser.error("--threads must be between 1 and the smallest --clients level")
    return args


# --- set-up ---------------------------------------------------------------------------


def make_project(root: Path) -> Path:
    """A fresh copy of what the stages read, with tuning off and few latency calls."""
    project = root / "project"
    project.mkdir()
    shutil.copy2(REPO / "dvc.yaml", project / "dvc.yaml")
    shutil.copytree(REPO / "pipeline", project / "pipeline")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tune"]["n_trials"] = 0
    params["compress"]["latency_calls"] = 20
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    landing = project / params["data"]["landing"]
    landing.mkdir(parents=True, exist_ok=True)
    (landing / ".gitkeep").touch()
    return project


def build_models(project: Path) -> float:
    """Run ingest..compress in `project`; the wall time in seconds."""
    env = quiet_env(project)
    commands = stage_commands_upto_compress(project)
    started = time.perf_counter()
    for argv in commands:
        timed(argv, project, env)
    return time.perf_counter() - started


def stage_commands_upto_compress(project: Path) -> list[list[str]]:
    """dvc.yaml's commands for `SETUP_STAGES`, with this interpreter for `python`."""
    commands = stage_commands(project)  # ingest..evaluate
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    argv = shlex.split(stages["compress"]["cmd"])
    compress = [sys.executable if arg == "python" else arg for arg in argv]
    return [commands[name] for name in SETUP_STAGES if name in commands] + [compress]


def check_project(project: Path) -> None:
    for path in ("models/tuned/model.json", "models/compressed/model.onnx", "data/split"):
        if not (project / path).exists():
            sys.exit(f"{project} has no {path}: run the pipeline up to compress first")


# --- one row, in process --------------------------------------------------------------


def plain(value: Any) -> Any:
    """A cell as JSON carries it: numpy scalars to Python, NA to None."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def sample_rows(project: Path, count: int, columns: Sequence[str]) -> list[pd.DataFrame]:
    """`count` one-row frames of the test split (cycling when it is shorter)."""
    test = pd.read_parquet(project / "data" / "split" / "test.parquet")
    missing = [column for column in columns if column not in test.columns]
    if missing:
        sys.exit(f"test.parquet lacks feature column(s) {missing}")
    return [test.iloc[[i % len(test)]] for i in range(count)]


def to_record(row: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """One request record: the feature columns of a one-row frame."""
    return {column: plain(row[column].iloc[0]) for column in columns}


def time_calls(name: str, call: Callable[[Any], Any], items: Sequence[Any]) -> Timing:
    """Warm up on a few items, then time `call(item)` for each item."""
    for item in items[: min(50, len(items))]:
        call(item)
    ms = []
    for item in items:
        started = time.perf_counter()
        call(item)
        ms.append((time.perf_counter() - started) * 1000)
    return Timing(name, ms)


def in_process(project: Path, rows: int) -> tuple[list[Timing], list[Timing], list[dict]]:
    """The one-row timings (native, ONNX, serving path), their breakdown, and the
    request records for the HTTP run."""
    from pipeline.config import load_params
    from pipeline.models import load_model
    from pipeline.serving import (
        load_served_model,
        model_rows,
        parse_request,
        read_json,
        score_records,
    )

    limits = load_params(project / "params.yaml").serve
    native = load_model(project / "models" / "tuned")
    served = load_served_model(project / "models" / "compressed", "bench")
    onnx, features = served.model, served.features
    columns = list(features.columns)
    frames = sample_rows(project, rows, columns)
    records = [to_record(frame, columns) for frame in frames]
    bodies = [json.dumps(record).encode() for record in records]
    parsed = [parse_request(record, served, limits).records for record in records]
    validated = [model_rows(served, one)[1] for one in parsed]
    arrays = [features.record_arrays(one) for one in validated]
    feeds = [onnx.feeds(one) for one in arrays]
    output = [onnx.output_name]

    def serve_one(body: bytes) -> Any:
        return score_records(served, parse_request(read_json(body, limits), served, limits).records)

    main = [
        time_calls(
            "native  record_arrays + predict_arrays",
            lambda r: native.predict_arrays(features.record_arrays(r)),
            validated,
        ),
        time_calls(
            "ONNX    record_arrays + predict_arrays",
            lambda r: onnx.predict_arrays(features.record_arrays(r)),
            validated,
        ),
        time_calls("native  TabularModel.predict_raw(frame)", native.predict_raw, frames),
        time_calls("ONNX    OnnxModel.predict_raw(frame)", onnx.predict_raw, frames),
        time_calls("serving read_json+parse_request+score (bytes)", serve_one, bodies),
    ]
    steps = [
        time_calls(
            "  read_json(body) (strict JSON, limits)", lambda b: read_json(b, limits), bodies
        ),
        time_calls(
            "  pydantic validation (parse_request)",
            lambda r: parse_request(r, served, limits),
            records,
        ),
        time_calls(
            "  model_rows(records) (dump, row rules)", lambda p: model_rows(served, p), parsed
        ),
        time_calls("  FeatureSpec.record_arrays(rows)", features.record_arrays, validated),
        time_calls("  OnnxModel.feeds(arrays)", onnx.feeds, arrays),
        time_calls("  ORT session.run(feeds) alone", lambda f: onnx.session.run(output, f), feeds),
        time_calls("  native learner.predict_arrays alone", native.learner.predict_arrays, arrays),
        time_calls(
            "  score_records(records) (rows..log rows)",
            lambda p: score_records(served, p),
            parsed,
        ),
        time_calls("  for comparison: FeatureSpec.prepare(frame)", features.prepare, frames),
    ]
    return main, steps, records


def request_records(project: Path, rows: int) -> list[dict[str, Any]]:
    """`rows` request records of the test split, without timing anything."""
    from pipeline.features import FeatureSpec

    meta = json.loads((project / "models" / "compressed" / "model.json").read_text())
    columns = list(FeatureSpec.from_dict(meta["features"]).columns)
    return [to_record(frame, columns) for frame in sample_rows(project, rows, columns)]


# --- HTTP -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(name: str, code: str, args: Sequence[str], project: Path, root: Path) -> Server:
    """`python -c code *args port` in a subprocess (cwd: the project, so that its
    pipeline/ is imported); returns once GET /health answers."""
    import httpx

    port = free_port()
    log_file = root / f"server-{name}.log"
    argv = [sys.executable, "-c", code, *args, str(port)]
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=project, env=quiet_env(project), stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(name, process, port, log_file)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the {name} server stopped ({process.returncode}):\n{server_log(server)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(server)
    sys.exit(f"the {name} server did not answer /health in 90 s:\n{server_log(server)}")


def server_log(server: Server) -> str:
    return server.log_file.read_text(errors="replace")[-4000:]


def stop_server(server: Server) -> None:
    """Ctrl-C (uvicorn's graceful stop flushes the prediction log), then kill."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_summary(
    port: int, script: Path, records: Path, clients: int, threads: int, seconds: float
) -> dict[str, Any]:
    """One wrk run; its summary as the script's JSON line prints it."""
    argv = [
        "wrk",
        f"--threads={threads}",
        f"--connections={clients}",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=10s",
        f"--script={script}",
        f"http://127.0.0.1:{port}/predict",
        "--",
        str(records),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"wrk failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return dict(json.loads(lines[-1].removeprefix("WRK_JSON ")))


def measure(
    server: Server,
    script: Path,
    records: Path,
    clients: int,
    round_: int,
    args: argparse.Namespace,
) -> LoadFigures:
    """A warm-up at `clients`, then one measured wrk run."""
    if args.warmup > 0:
        wrk_summary(server.port, script, records, clients, args.threads, args.warmup)
    server_before, wrk_before = process_cpu(server.process.pid), children_cpu()
    summary = wrk_summary(server.port, script, records, clients, args.threads, args.seconds)
    seconds = summary["duration_us"] / 1e6
    errors = {
        kind: int(summary[kind])
        for kind in ("status", "connect", "read", "write", "timeout")
        if summary[kind]
    }
    return LoadFigures(
        app=server.name,
        clients=clients,
        round=round_,
        seconds=seconds,
        requests=int(summary["requests"]) - errors.get("status", 0),
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        max_ms=summary["max_us"] / 1000,
        errors=errors,
        server_cpu_s=process_cpu(server.process.pid) - server_before,
        wrk_cpu_s=children_cpu() - wrk_before,
    )


def compare(runs: list[LoadFigures]) -> list[Comparison]:
    """predict against hello for each level and round."""
    by_key = {(run.app, run.clients, run.round): run for run in runs}
    comparisons = []
    for run in runs:
        if run.app != "predict" or ("hello", run.clients, run.round) not in by_key:
            continue
        hello = by_key["hello", run.clients, run.round]
        comparisons.append(
            Comparison(
                clients=run.clients,
                round=run.round,
                throughput_share=run.rps / hello.rps if hello.rps else float("nan"),
                p99_multiple=run.p99_ms / hello.p99_ms if hello.p99_ms else float("nan"),
                cpu_multiple=run.server_cpu_us_per_request / hello.server_cpu_us_per_request,
            )
        )
    return comparisons


def http_runs(
    servers: Sequence[Server], records: Path, root: Path, args: argparse.Namespace
) -> list[LoadFigures]:
    """Every level, every round, the servers in turn (hello first)."""
    script = root / "predict.lua"
    script.write_text(WRK_SCRIPT)
    return [
        measure(server, script, records, clients, round_, args)
        for clients in args.client_levels
        for round_ in range(1, args.repeats + 1)
        for server in servers
    ]


# --- report ---------------------------------------------------------------------------


def print_timings(title: str, timings: list[Timing]) -> None:
    print(title)
    header = f"  {'path':<46} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for timing in timings:
        mean = statistics.fmean(timing.ms)
        print(f"  {timing.name:<46} {timing.p50:>8.3f} {timing.p99:>8.3f} {mean:>8.3f}")


def print_http(runs: list[LoadFigures]) -> None:
    header = (
        f"  {'app':<8} {'clients':>7} {'round':>5} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8}"
        f" {'p99 ms':>8} {'max ms':>8} {'errors':>7} {'server CPU':>11} {'us/req':>7}"
        f" {'wrk CPU':>9}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for run in runs:
        print(
            f"  {run.app:<8} {run.clients:>7} {run.round:>5} {run.rps:>8.0f}"
            f" {run.p50_ms:>8.2f} {run.p90_ms:>8.2f} {run.p99_ms:>8.2f} {run.max_ms:>8.1f}"
            f" {run.error_count:>7} {run.server_cpu_s / run.seconds:>9.2f} c"
            f" {run.server_cpu_us_per_request:>7.0f} {run.wrk_cpu_s / run.seconds:>7.2f} c"
        )
    print(
        "  (CPU in cores: CPU seconds / wall seconds; the server's counts all its threads."
        " us/req: the server's CPU per answered request, which other load on the machine"
        " moves less than req/s)"
    )
    for run in runs:
        if run.errors:
            kinds = ", ".join(f"{kind}: {count}" for kind, count in run.errors.items())
            print(f"  errors, {run.app} at {run.clients} clients, round {run.round}: {kinds}")


def print_comparisons(comparisons: list[Comparison]) -> None:
    header = (
        f"  {'clients':>7} {'round':>5} {'predict/hello req/s':>20} {'predict/hello p99':>18}"
        f" {'predict/hello CPU per request':>30}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for item in comparisons:
        print(
            f"  {item.clients:>7} {item.round:>5} {item.throughput_share:>20.2f}"
            f" {item.p99_multiple:>18.2f} {item.cpu_multiple:>30.2f}"
        )


def verdicts(
    main: list[Timing], runs: list[LoadFigures], comparisons: list[Comparison]
) -> list[str]:
    lines = []
    if main:
        native, onnx = main[0], main[1]
        ratio = native.p50 / onnx.p50
        lines.append(
            f"ONNX >= {ONNX_TARGET_RATIO:g}x faster than native for one row (p50, serving's "
            "path: a validated record to raw output): "
            f"{'MET' if ratio >= ONNX_TARGET_RATIO else 'NOT MET'} "
            f"({ratio:.2f}x: native {native.p50:.3f} ms vs ONNX {onnx.p50:.3f} ms)"
        )
    at_target = [item for item in comparisons if item.clients == TARGET_CLIENTS]
    predict = [run for run in runs if run.app == "predict" and run.clients == TARGET_CLIENTS]
    if not at_target or not predict:
        lines.append(f"HTTP targets: not measured (no level of {TARGET_CLIENTS} clients)")
        return lines
    errors = sum(run.error_count for run in predict)
    met = all(item.met for item in at_target) and errors == 0
    shares = ", ".join(f"{item.throughput_share:.2f}" for item in at_target)
    multiples = ", ".join(f"{item.p99_multiple:.2f}" for item in at_target)
    lines.append(
        f"/predict against hello-world at {TARGET_CLIENTS} clients, same run: req/s share "
        f">= {THROUGHPUT_SHARE_TARGET:g} and p99 <= {P99_MULTIPLE_TARGET:g}x hello's, every "
        f"round: {'MET' if met else 'NOT MET'} (share {shares}; p99 multiple {multiples}; "
        f"{errors} errors)"
    )
    worst = max(predict, key=lambda run: run.p99_ms)
    lines.append(
        f"HTTP p99 < {HTTP_P99_TARGET_MS:g} ms at {TARGET_CLIENTS} clients: "
        f"{'MET' if worst.p99_ms < HTTP_P99_TARGET_MS and errors == 0 else 'NOT MET'} "
        f"(p99 {worst.p99_ms:.1f} ms at {worst.rps:.0f} req/s; Little's law: "
        f"{TARGET_CLIENTS} clients / {worst.rps:.0f} req/s = "
        f"{1000 * TARGET_CLIENTS / worst.rps:.1f} ms mean)"
    )
    return lines


def load_averages() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> None:
    """Set up (or reuse) a project, time in process, then both apps over HTTP; print.
    The servers stop and the temporary folder goes at the end (unless --keep),
    whatever happened."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `apt-get install wrk` (Debian) gives it")
    load_at_start = load_averages()
    root = Path(tempfile.mkdtemp(prefix="driftline-bench-serve-"))
    servers: list[Server] = []
    try:
        if args.project is not None:
            project = args.project.resolve()
            setup = f"reused {project} (nothing run in it)"
        else:
            project = make_project(root)
            setup_seconds = build_models(project)
            setup = f"ingest..compress in a temporary copy: {setup_seconds:.1f} s"
        check_project(project)
        meta = json.loads((project / "models" / "compressed" / "model.json").read_text())

        if args.http_only:
            main_timings, steps = [], []
            records = request_records(project, args.rows)
        else:
            main_timings, steps, records = in_process(project, args.rows)
        records_file = root / RECORDS_FILE
        records_file.write_text("".join(json.dumps(record) + "\n" for record in records))

        servers.append(start_server("hello", HELLO_LAUNCHER, [], project, root))
        model_args = [str(project / "models" / "compressed"), str(root / "production")]
        servers.append(start_server("predict", LAUNCHER, model_args, project, root))
        runs = http_runs(servers, records_file, root, args)
        comparisons = compare(runs)
        load_at_end = load_averages()

        print(
            f"Driftline serving benchmark: model {meta.get('family')} ({meta.get('task')}), "
            f"{len(meta['features']['numeric'])} numeric + "
            f"{len(meta['features']['categorical'])} categorical features"
        )
        print(
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs; load average "
            f"(1, 5, 15 min) {load_at_start} at the start, {load_at_end} at the end; "
            f"set-up: {setup}"
        )
        if main_timings:
            print()
            native, onnx = main_timings[0], main_timings[1]
            print_timings(
                f"One row in process ({args.rows} single-row calls each, after a warm-up):",
                main_timings,
            )
            print(
                f"  native/ONNX: p50 {native.p50 / onnx.p50:.2f}x, p99 {native.p99 / onnx.p99:.2f}x"
            )
            print()
            print_timings("Where one serving call goes (each step timed on its own):", steps)
        print()
        sizes = [len(json.dumps(record)) for record in records]
        print(
            f"HTTP POST, one record per request ({min(sizes)}-{max(sizes)} bytes, the same "
            f"records to both apps): predict = /predict with a parquet prediction log; "
            f"hello = a hello-world FastAPI POST endpoint. Each in its own process under "
            f"run_server (uvicorn, 1 worker, no access log, 127.0.0.1)."
        )
        print(
            f"  Load: wrk, {args.threads} thread(s), one keep-alive connection per client, "
            f"{args.seconds:g} s per run after a {args.warmup:g} s warm-up, the apps in "
            f"turn; wrk shares this machine's {os.cpu_count()} CPUs with the server."
        )
        print_http(runs)
        print()
        print("predict against hello, the same level and round:")
        print_comparisons(comparisons)
        print()
        for line in verdicts(main_timings, runs, comparisons):
            print(line)
    finally:
        for server in servers:
            stop_server(server)
        if args.keep:
            print(f"\nkept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
