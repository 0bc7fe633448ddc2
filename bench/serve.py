"""Serving latency and throughput: one row in process (ONNX vs native), then over HTTP.

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
  next to it. Also the whole serving call for one JSON-like record dict
  (`parse_request` + `score_records`, as `/predict` runs them minus the log and the HTTP
  layer), and a breakdown of its steps.
- HTTP: `create_app` over the compressed model with a parquet prediction log, served by
  `run_server` (uvicorn, one worker, no access log) in a subprocess. The load
  generator is this process: an asyncio loop, N clients each on its own keep-alive
  connection POSTing one record to /predict in a closed loop for `--seconds` after a
  2 s warm-up, with requests encoded once and answers read by Content-Length (an HTTP
  client library would spend more of the shared CPU than the server does).
  Requests/s, p50/p99/max latency, errors (non-200 or failed), and the CPU the server
  and the client used. The client shares the machine's cores with the server, so the
  figures are a lower bound on the server.

In a closed loop, mean latency = clients / throughput (Little's law): p99 under 20 ms
at 64 clients needs well over 3,200 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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
TARGET_CLIENTS = 64
WARMUP_SECONDS = 2.0
# The server: the app over the compressed model, as `driftline serve` builds it, minus
# the registry (no champion poll, no admin reload).
LAUNCHER = """
import sys
from pathlib import Path
from pipeline.prediction_log import PredictionLog
from pipeline.serving import create_app, load_served_model, run_server
folder, log_root, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
app = create_app(
    lambda: load_served_model(folder, "bench"),
    log=PredictionLog.parquet(log_root),
    admin_token=None,
    poll_seconds=None,
    current_version=None,
)
run_server(app, "127.0.0.1", port)
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


@dataclass
class LoadFigures:
    """One HTTP load level."""

    clients: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    error_kinds: dict[str, int]
    server_cpu_s: float
    client_cpu_s: float

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults keep a run to about three minutes on two cores."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve",
        description="Time one-row scoring (ONNX vs native) and HTTP serving under load.",
    )
    parser.add_argument(
        "--seconds", type=float, default=30, help="HTTP load per level, in s (default 30)"
    )
    parser.add_argument(
        "--clients", default="16,64", help="concurrent HTTP clients per level (default 16,64)"
    )
    parser.add_argument(
        "--rows", type=int, default=1000, help="single-row calls timed per path (default 1000)"
    )
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
    if args.seconds <= 0 or args.rows < 1:
        parser.error("--seconds must be positive and --rows at least 1")
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
    from pipeline.models import load_model
    from pipeline.serving import (
        MAX_BATCH,
        feature_rows,
        load_served_model,
        parse_request,
        score_records,
    )

    native = load_model(project / "models" / "tuned")
    served = load_served_model(project / "models" / "compressed", "bench")
    onnx, features = served.model, served.features
    columns = list(features.columns)
    frames = sample_rows(project, rows, columns)
    records = [to_record(frame, columns) for frame in frames]
    parsed = [parse_request(record, served, MAX_BATCH).records for record in records]
    validated = [feature_rows(one) for one in parsed]
    arrays = [features.record_arrays(one) for one in validated]
    feeds = [onnx.feeds(one) for one in arrays]
    output = [onnx.output_name]

    def serve_one(record: dict[str, Any]) -> Any:
        return score_records(served, parse_request(record, served, MAX_BATCH).records)

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
        time_calls("serving parse_request+score_records(dict)", serve_one, records),
    ]
    steps = [
        time_calls(
            "  pydantic validation (parse_request)",
            lambda r: parse_request(r, served, MAX_BATCH),
            records,
        ),
        time_calls("  feature_rows(records) (model_dump)", feature_rows, parsed),
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


# --- HTTP -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(project: Path, root: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The app in a subprocess; returns once /health answers."""
    import httpx

    port = free_port()
    log_file = root / "server.log"
    argv = [
        sys.executable,
        "-c",
        LAUNCHER,
        str(project / "models" / "compressed"),
        str(root / "production"),
        str(port),
    ]
    with log_file.open("wb") as out:
        server = subprocess.Popen(
            argv, cwd=project, env=quiet_env(project), stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server stopped ({server.returncode}):\n{log_file.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server, port, log_file
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(server)
    sys.exit(f"the server did not answer /health in 90 s:\n{log_file.read_text()[-4000:]}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Ctrl-C (uvicorn's graceful stop flushes the prediction log), then kill."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def load(
    port: int, bodies: list[bytes], clients: int, seconds: float
) -> tuple[list[float], dict[str, int]]:
    """`clients` closed-loop clients, each on its own keep-alive connection, for
    `seconds`; the latencies (ms) of the 200 answers and the errors by kind (HTTP
    status or exception). Requests are encoded once and answers read by
    Content-Length, so the generator costs little of the CPU the server shares."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    requests = [
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in bodies
    ]
    deadline = time.perf_counter() + seconds

    def count(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def one_client(offset: int) -> None:
        i = offset
        reader = writer = None
        while time.perf_counter() < deadline:
            request = requests[i % len(requests)]
            i += clients
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
                status = int(head.split(b" ", 2)[1])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)  # type: ignore[union-attr]
            except (OSError, asyncio.IncompleteReadError, StopIteration, ValueError) as exc:
                count(type(exc).__name__)
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                count(f"HTTP {status}")
        if writer is not None:
            writer.close()

    await asyncio.gather(*(one_client(k) for k in range(clients)))
    return latencies, errors


def http_level(
    port: int, bodies: list[bytes], clients: int, seconds: float, pid: int
) -> LoadFigures:
    """A warm-up, then one measured run at `clients` concurrent clients."""
    asyncio.run(load(port, bodies, clients, WARMUP_SECONDS))
    server_before, client_before = process_cpu(pid), time.process_time()
    started = time.perf_counter()
    latencies, errors = asyncio.run(load(port, bodies, clients, seconds))
    wall = time.perf_counter() - started
    return LoadFigures(
        clients=clients,
        seconds=wall,
        latencies_ms=latencies,
        errors=sum(errors.values()),
        error_kinds=errors,
        server_cpu_s=process_cpu(pid) - server_before,
        client_cpu_s=time.process_time() - client_before,
    )


# --- report ---------------------------------------------------------------------------


def print_timings(title: str, timings: list[Timing]) -> None:
    print(title)
    header = f"  {'path':<46} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for timing in timings:
        mean = statistics.fmean(timing.ms)
        print(f"  {timing.name:<46} {timing.p50:>8.3f} {timing.p99:>8.3f} {mean:>8.3f}")


def print_http(levels: list[LoadFigures]) -> None:
    header = (
        f"  {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'errors':>7} {'requests':>9} {'server CPU':>11} {'client CPU':>11}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for level in levels:
        print(
            f"  {level.clients:>7} {level.rps:>8.0f} {level.percentile(50):>8.2f}"
            f" {level.percentile(99):>8.2f} {level.percentile(100):>8.2f}"
            f" {level.errors:>7} {len(level.latencies_ms):>9}"
            f" {level.server_cpu_s / level.seconds:>9.2f} c"
            f" {level.client_cpu_s / level.seconds:>9.2f} c"
        )
    print("  (CPU in cores: CPU seconds / wall seconds; the server's counts all its threads)")
    for level in levels:
        if level.error_kinds:
            kinds = ", ".join(f"{kind}: {count}" for kind, count in level.error_kinds.items())
            print(f"  errors at {level.clients} clients: {kinds}")


def verdicts(main: list[Timing], levels: list[LoadFigures]) -> list[str]:
    native, onnx = main[0], main[1]
    ratio = native.p50 / onnx.p50
    lines = [
        f"ONNX >= {ONNX_TARGET_RATIO:g}x faster than native for one row (p50, serving's "
        "path: a validated record to raw output): "
        f"{'MET' if ratio >= ONNX_TARGET_RATIO else 'NOT MET'} "
        f"({ratio:.2f}x: native {native.p50:.3f} ms vs ONNX {onnx.p50:.3f} ms)"
    ]
    at_target = [level for level in levels if level.clients == TARGET_CLIENTS]
    if at_target:
        level = at_target[0]
        p99 = level.percentile(99)
        met = p99 < HTTP_P99_TARGET_MS and level.errors == 0
        lines.append(
            f"HTTP p99 < {HTTP_P99_TARGET_MS:g} ms at {TARGET_CLIENTS} clients: "
            f"{'MET' if met else 'NOT MET'} (p99 {p99:.1f} ms at {level.rps:.0f} req/s, "
            f"{level.errors} errors; Little's law: {TARGET_CLIENTS} clients / "
            f"{level.rps:.0f} req/s = {1000 * TARGET_CLIENTS / level.rps:.1f} ms mean)"
        )
    else:
        lines.append(f"HTTP p99 target: not measured (no level of {TARGET_CLIENTS} clients)")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Set up (or reuse) a project, time in process, then over HTTP; print. The
    temporary folder goes at the end (unless --keep), whatever happened."""
    args = parse_args(argv)
    load_average = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="driftline-bench-serve-"))
    server = None
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

        main_timings, steps, records = in_process(project, args.rows)

        server, port, _ = start_server(project, root)
        bodies = [json.dumps(record).encode() for record in records]
        levels = [
            http_level(port, bodies, clients, args.seconds, server.pid)
            for clients in args.client_levels
        ]

        print(
            f"Driftline serving benchmark: model {meta.get('family')} ({meta.get('task')}), "
            f"{len(meta['features']['numeric'])} numeric + "
            f"{len(meta['features']['categorical'])} categorical features"
        )
        print(
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"load average {load_average:.2f} at the start; set-up: {setup}"
        )
        print()
        native, onnx = main_timings[0], main_timings[1]
        print_timings(
            f"One row in process ({args.rows} single-row calls each, after a warm-up):",
            main_timings,
        )
        print(f"  native/ONNX: p50 {native.p50 / onnx.p50:.2f}x, p99 {native.p99 / onnx.p99:.2f}x")
        print()
        print_timings("Where one serving call goes (each step timed on its own):", steps)
        print()
        print(
            f"HTTP POST /predict, one record per request: uvicorn, 1 worker, no access log, "
            f"one ORT thread (run_server's defaults); {args.seconds:g} s per level after a "
            f"{WARMUP_SECONDS:g} s warm-up."
        )
        print(
            f"  The load generator (one Python process: asyncio, one keep-alive connection "
            f"per client, requests encoded once) shares "
            f"this machine's {os.cpu_count()} CPUs with the server."
        )
        print_http(levels)
        print()
        for line in verdicts(main_timings, levels):
            print(line)
    finally:
        if server is not None:
            stop_server(server)
        if args.keep:
            print(f"\nkept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
