"""Flow tests against a real Prefect server on 127.0.0.1, and DVC projects to run.

The server is started once per session (`prefect server start`, SQLite in a temporary
PREFECT_HOME): about 9 s with a new database. Flows called in the test process, and
any subprocess the tests start, report to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import QUIET, REPO, sliced_params

STARTUP_TIMEOUT = 300.0  # a safety net: about 10 s on a quiet machine
# The server's background services that no test needs (schedules, late runs, worker
# health, clean-ups): off, so that an idle server costs no CPU beside the tests. Events,
# task-run records and triggers, which the tests read and the drift loop needs, stay on.
SERVER_SERVICES_OFF = {
    f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
    for name in (
        "CANCELLATION_CLEANUP",
        "CLEANUP_RECONCILER",
        "FOREMAN",
        "LATE_RUNS",
        "PAUSE_EXPIRATIONS",
        "REPOSSESSOR",
        "SCHEDULER",
    )
} | {"PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "[]"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited ({server.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"prefect server not healthy after {STARTUP_TIMEOUT} s:\n{log.read_text()}")


def stop(server: subprocess.Popen[bytes]) -> None:
    """The server runs uvicorn and its services in child processes: end the group."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=5)


def drain_prefect_workers() -> None:
    """Send the logs and events still queued in this process before the server stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # never started
        APILogWorker.instance().drain()
    EventsWorker.drain_all()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `prefect server start` on a free port of 127.0.0.1; yields its API URL.

    PREFECT_API_URL points at it for this process (Prefect's settings context) and for
    subprocesses (the environment) until the session ends; then the server's process
    group is stopped.
    """
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    env = {**os.environ, **QUIET, **SERVER_SERVICES_OFF, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    with log.open("wb") as output:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-ui",
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(url, server, log)
        import prefect.context
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with ExitStack() as stack, pytest.MonkeyPatch.context() as patch:
            patch.setenv("PREFECT_API_URL", url)
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
            # Threads that do not copy the caller's context read the process-wide one.
            global_context = getattr(prefect.context, "_temporary_global_settings_context", None)
            if global_context is not None:
                stack.enter_context(global_context(prefect.context.get_settings_context()))
            yield url
            drain_prefect_workers()
    finally:
        stop(server)


# --- projects -------------------------------------------------------------------------


def git(root: Path, *args: str) -> str:
    completed = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return completed.stdout.strip()


def dvc(root: Path, *args: str) -> None:
    subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=root,
        env={**os.environ, **QUIET},
        capture_output=True,
        text=True,
        check=True,
    )


@dataclass
class FlowProject:
    """A temporary Driftline checkout: git, DVC with a local remote, its own MLflow."""

    root: Path
    remote: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def store_url(self) -> str:
        """The prediction store, params' default SQLite file, as this process reaches it."""
        return f"sqlite:///{self.root / 'data/production.db'}"

    def lock(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "dvc.lock").read_text())["stages"]

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def write_params(self, params: dict[str, Any]) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def registry(self) -> tuple[list[str], str | None]:
        """The registered versions and the champion, as MLflow's registry has them."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        name = self.params()["mlflow"]["registered_model"]
        versions = sorted(
            str(version.version) for version in client.search_model_versions(f"name = '{name}'")
        )
        try:
            champion = str(client.get_model_version_by_alias(name, "champion").version)
        except MlflowException:
            champion = None
        return versions, champion


def driftline_params(**orchestrate: object) -> dict[str, Any]:
    """The test params (tests/conftest.py) with a 2-trial search and `orchestrate` set."""
    params = sliced_params()
    params["tune"]["n_trials"] = 2
    params["orchestrate"].update(orchestrate)
    return params


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowProject]:
    """The repo's pipeline and dvc.yaml in a git checkout on `main`, a local DVC remote,
    and `orchestrate.git_branch: runs`, a branch other than the one checked out."""
    base = tmp_path_factory.mktemp("flow")
    root, remote = base / "project", base / "remote"
    root.mkdir()
    shutil.copytree(
        REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "data" / "landing").mkdir(parents=True)
    (root / "data" / "landing" / ".gitkeep").touch()
    project = FlowProject(root, remote)
    project.write_params(driftline_params(git_branch="runs", retry_delay_seconds=0))
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\noptuna.db\n*.egg-info/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "tests@driftline.invalid")
    git(root, "config", "user.name", "Driftline tests")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    dvc(root, "remote", "add", "-d", "local", str(remote))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "a Driftline project")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)
        yield project


FLAKY_STAGE = """\
import sys
from pathlib import Path

code, failures = int(sys.argv[1]), int(sys.argv[2])
attempts = Path("attempts.txt")
attempt = (len(attempts.read_text()) if attempts.exists() else 0) + 1
attempts.write_text("x" * attempt)
if attempt <= failures:
    print(f"error: attempt {attempt} failed", file=sys.stderr)
    sys.exit(code)
Path("out.txt").write_text("done")
"""


def small_project(root: Path, exit_code: int, failures: int) -> Path:
    """Two quick stages, no git; the second exits `exit_code` on its first `failures`
    attempts and counts every attempt in attempts.txt."""
    root.mkdir(parents=True)
    (root / "stage.py").write_text(FLAKY_STAGE)
    pipeline = {
        "stages": {
            "prepare": {"cmd": "python -c \"open('in.txt', 'w').write('in')\"", "outs": ["in.txt"]},
            "flaky": {
                "cmd": f"python stage.py {exit_code} {failures}",
                "deps": ["in.txt", "stage.py"],
                "outs": ["out.txt"],
            },
        }
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = driftline_params(retries=2, retry_delay_seconds=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(root, "init", "-q", "--no-scm")
    dvc(root, "config", "core.analytics", "false")
    return root
