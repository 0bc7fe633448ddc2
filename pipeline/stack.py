"""`driftline up` and `driftline down`: the whole loop on one laptop.

`up` starts, each as a background process with its log under `.driftline/logs/`:
a Prefect server (SQLite, in the project's PREFECT_HOME) on 127.0.0.1, the work pools
and deployments (flows/deployments.py), one process worker per pool, and the serving
app over the registry's champion. What it started is written to `.driftline/up.json`;
`down` stops exactly those processes. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DriftlineError

STATE = Path(".driftline/up.json")
LOGS = Path(".driftline/logs")
HOST = "127.0.0.1"


class StackError(DriftlineError):
    """The local stack cannot start or stop as asked."""


@dataclass
class Started:
    name: str
    pid: int
    log: str
    url: str | None = None


@dataclass
class Stack:
    project: str
    prefect_api: str
    serving: str
    processes: list[Started] = field(default_factory=list)

    def save(self, root: Path) -> None:
        path = root / STATE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, root: Path) -> Stack | None:
        path = root / STATE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        processes = [Started(**entry) for entry in raw.pop("processes")]
        return cls(**raw, processes=processes)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # A port a stopped server left in TIME_WAIT is free to listen on again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def environment(root: Path, prefect_api: str) -> dict[str, str]:
    """The stack's processes: this interpreter's tools first, state in the project."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(root / ".prefect")),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        "ORT_DISABLE_TELEMETRY": "1",
    }
    return env


def launch(
    name: str, argv: list[str], root: Path, env: dict[str, str]
) -> tuple[Started, subprocess.Popen[bytes]]:
    log = root / LOGS / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Started(name=name, pid=process.pid, log=str(log)), process


def wait_until(
    ready: Callable[[], bool], started: Started, process: subprocess.Popen[bytes], seconds: float
) -> None:
    """Wait for `ready`; a process that exits or a timeout is a one-line error."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        if process.poll() is not None:  # reaped here, so an exit is seen at once
            raise StackError(f"{started.name} stopped while starting: see {started.log}")
        time.sleep(0.5)
    raise StackError(f"{started.name} did not become ready in {seconds:.0f} s: see {started.log}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(started: Started, grace: float = 15.0) -> bool:
    """Ctrl-C the process group (servers flush and exit), then kill it; True if it was
    running."""
    if not alive(started.pid):
        return False
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(started.pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(started.pid):
                return True
            time.sleep(0.2)
    return True


def up(
    root: Path,
    *,
    prefect_port: int,
    serve_port: int,
    poll: float,
    pools: list[str],
    deploy: Callable[[Path], dict[str, Any]],
    has_champion: Callable[[], bool],
    say: Callable[[str], None],
    serve_options: list[str] | None = None,
) -> Stack:
    """Start the stack for the project at `root`; stop what started if a step fails."""
    existing = Stack.load(root)
    if existing is not None and any(alive(p.pid) for p in existing.processes):
        raise StackError("the stack is up already: `driftline down` stops it")
    for port, what in ((prefect_port, "--prefect-port"), (serve_port, "--port")):
        if not port_free(port):
            raise StackError(f"port {port} on {HOST} is in use: choose another with {what}")
    if not has_champion():
        raise StackError("the registry has no champion yet: run `make run` first")
    prefect_api = f"http://{HOST}:{prefect_port}/api"
    env = environment(root, prefect_api)
    bin_dir = Path(sys.executable).parent
    stack = Stack(str(root), prefect_api, f"http://{HOST}:{serve_port}")
    try:
        prefect = str(bin_dir / "prefect")
        server, server_process = launch(
            "prefect-server",
            [prefect, "server", "start", "--host", HOST, "--port", str(prefect_port)],
            root,
            env,
        )
        server.url = f"http://{HOST}:{prefect_port}"
        stack.processes.append(server)
        stack.save(root)
        say(f"prefect server starting on {server.url} ...")
        wait_until(lambda: answers(f"{prefect_api}/health"), server, server_process, 120)
        os.environ["PREFECT_API_URL"] = prefect_api
        deployed = deploy(root)
        say("deployed: " + ", ".join(f"{name} on pool {d['pool']}" for name, d in deployed.items()))
        for pool in dict.fromkeys(pools):
            worker, _ = launch(
                f"worker-{pool}",
                [prefect, "worker", "start", "--pool", pool, "--type", "process"],
                root,
                env,
            )
            stack.processes.append(worker)
        serving, serving_process = launch(
            "serve",
            [
                str(bin_dir / "driftline"),
                "serve",
                "--host",
                HOST,
                "--port",
                str(serve_port),
                "--poll",
                str(poll),
                *(serve_options or []),
            ],
            root,
            env,
        )
        serving.url = stack.serving
        stack.processes.append(serving)
        stack.save(root)
        wait_until(lambda: answers(f"{stack.serving}/health"), serving, serving_process, 120)
    except BaseException:
        for started in reversed(stack.processes):
            stop_process(started)
        (root / STATE).unlink(missing_ok=True)
        raise
    return stack


def down(root: Path) -> list[str]:
    """Stop what `up` started; the names of the processes that were still running."""
    stack = Stack.load(root)
    if stack is None:
        raise StackError(f"nothing to stop: no {STATE} (was `driftline up` run here?)")
    stopped = [p.name for p in reversed(stack.processes) if stop_process(p)]
    (root / STATE).unlink(missing_ok=True)
    return stopped
