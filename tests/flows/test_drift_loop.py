"""The whole loop on a laptop, started by `driftline up` and nothing else: its own Prefect
server (SQLite), both deployments from the project folder, a process worker per pool,
and `driftline serve`; the prediction store is the default SQLite file. Then:

- drifted traffic with late labels: the `monitoring` deployment emits
  `driftline.drift.detected`, the trigger starts exactly one retraining, which lands the
  labelled rows, retrains and promotes a new champion (`trigger: drift`), the landed
  rows reach the split (the newest are the test period), and the running server reloads
  it with no failed request;
- `driftline down` stops exactly what `up` started.

The loop starts from a copy of the session's shipped project (champion version 1): the
training flow's own first run is tested in tests/flows/test_training_flow.py; the same
loop across three hosts, with a duplicate alert refused, in tests/multihost/; the
ten-alerts rule on every ledger store in tests/unit/test_retraining_guards.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import QUIET, REPO, Project, copy_project
from tests.flows.conftest import (
    SERVER_SERVICES_OFF,
    FlowProject,
    driftline_params,
    dvc,
    free_port,
    git,
)
from tests.loop import (
    finished,
    flow_runs,
    get,
    hours_since,
    labels_for,
    now,
    prefect_at,
    requests_for,
    run_deployment,
    send,
    served_version,
    summer,
    traffic,
)
from tests.multihost.hosts import wait_for

pytestmark = pytest.mark.e2e

DRIFTLINE = str(Path(sys.executable).parent / "driftline")


@pytest.fixture(scope="module")
def loop_project(
    shipped_template: Project, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowProject]:
    """The shipped project (champion version 1) as a checkout with pipeline/ and flows/
    (the workers run the flows from it)."""
    base = tmp_path_factory.mktemp("loop")
    root = base / "project"
    copy_project(shipped_template, root)
    for package in ("pipeline", "flows"):
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "data" / "landing").mkdir(parents=True, exist_ok=True)
    (root / "data" / "landing" / ".gitkeep").touch()
    project = FlowProject(root, base / "remote")
    params = driftline_params(retry_delay_seconds=0)
    # The loop's runs need a model, not a good one: train's params as the one trial.
    params["tune"]["n_trials"] = 1
    params["evaluate"]["importance_repeats"] = 1
    params["monitor"].update(min_window_rows=300, min_labelled_rows=100, cooldown_minutes=60)
    # The retrained model must beat the champion on the new (summer) test rows; the
    # floors were set for a model trained on a whole year.
    params["evaluate"]["floors"] = {}
    project.write_params(params)
    git(root, "init", "-q", "-b", "main")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)
        yield project


def laptop_environment(project: FlowProject) -> dict[str, str]:
    """A laptop's: no service named anywhere; Prefect's state in the project."""
    env = {
        **os.environ,
        **QUIET,
        **SERVER_SERVICES_OFF,  # no schedules fire during the test: the test runs the monitor
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(project.root / ".prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "MLFLOW_TRACKING_URI": project.tracking_uri,
    }
    env.pop("PREFECT_API_URL", None)
    return env


def driftline(project: FlowProject, *args: str, timeout: float = 300) -> Any:
    return subprocess.run(
        [DRIFTLINE, *args],
        cwd=project.root,
        env=laptop_environment(project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def logged(project: FlowProject) -> int:
    """Rows in the prediction store (the server flushes it every 2 s)."""
    from pipeline.prediction_log import read_predictions

    if not (project.root / "data/production.db").exists():
        return 0
    return len(read_predictions(project.store_url))


def ledger(project: FlowProject) -> list[dict[str, Any]]:
    from pipeline.retraining import open_ledger

    return open_ledger(project.store_url, project.root / "unused.jsonl").entries()


def test_driftline_up_runs_the_loop_and_down_stops_it(loop_project: FlowProject) -> None:
    from pipeline.stack import STATE, Stack, alive

    project, root = loop_project, loop_project.root
    assert project.registry() == (["1"], "1")
    port, prefect_port = free_port(), free_port()
    server, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prefect_port}/api"
    logs = [root / ".driftline/logs" / f"{name}.log" for name in ("worker-gpu", "serve")]

    started = driftline(project, "up", "--port", str(port), "--prefect-port", str(prefect_port))
    stack = Stack.load(root)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"Prefect UI:      http://127.0.0.1:{prefect_port}" in started.stdout
        assert served_version(server) == "1"
        assert stack is not None
        names = {process.name for process in stack.processes}
        assert names == {"prefect-server", "worker-gpu", "worker-cpu", "serve"}
        again = driftline(project, "up", "--port", str(port))
        assert again.returncode == 1 and "the stack is up already" in again.stderr

        # Summer 2012 traffic, labelled: the data and the model's quality drift.
        features = get(f"{server}/model")["features"]
        drift_start = datetime.now(UTC)
        # Enough of it that a time split trains on some summer rows too.
        rows = summer()
        sent = requests_for(rows, features, "summer")
        send(server, sent)
        wait_for(lambda: logged(project) == len(rows), "the log to hold the rows", logs)
        labels_for(sent, rows).to_csv(root / "labels.csv", index=False)
        labelled = driftline(project, "label", "labels.csv")
        assert labelled.returncode == 0, labelled.stderr

        with (
            prefect_at(api),
            traffic(server, requests_for(rows.head(5), features, "live")) as (
                failures,
                seen,
            ),
        ):
            # The monitoring deployment, as its schedule would run it, on the cpu worker.
            run_deployment(
                "monitoring/monitoring", {"now": now(), "window_hours": hours_since(drift_start)}
            )
            [check] = wait_for(lambda: finished(flow_runs("monitoring"), 1), "the monitor", logs)
            assert check.state.is_completed(), check.state.message
            [retraining] = wait_for(lambda: finished(flow_runs("training"), 1), "retrain", logs)
            assert retraining.state.is_completed(), retraining.state.message
            decision = _last_decision(root)
            assert decision["drift"] is True, decision["reasons"]
            assert decision["quality"]["judged"] and decision["window"]["labelled"] == len(rows)
            fingerprint = decision["window"]["fingerprint"]
            assert project.registry() == (["1", "2"], "2")
            wait_for(lambda: served_version(server) == "2", "the server to reload v2", logs)
    finally:
        stopped = driftline(project, "down", timeout=120)
    assert stopped.returncode == 0 and "serve" in stopped.stdout
    assert stack is not None and not any(alive(process.pid) for process in stack.processes)
    assert served_version(server) is None and not (root / STATE).exists()
    assert failures == []
    assert {"1", "2"} <= set(seen)  # answers from both versions, none failed

    record = json.loads((root / "reports/promotions.jsonl").read_text().splitlines()[-1])
    assert record["trigger"] == "drift" and record["action"] == "promote"
    landed = root / f"data/landing/production-{fingerprint}.parquet"
    assert landed.exists() and landed.with_name(landed.name + ".dvc").exists()
    # The landed rows reached the split, and the newest of them are the test period.
    parts = [pd.read_parquet(root / f"data/split/{p}.parquet") for p in ("train", "val", "test")]
    assert sum(len(part) for part in parts) == 2000 + len(rows)
    assert parts[2]["instant"].max() == rows["instant"].max()
    assert [(e["status"], e["fingerprint"]) for e in ledger(project)] == [
        ("started", fingerprint),
        ("done", fingerprint),
    ]


def _last_decision(root: Path) -> dict[str, Any]:
    lines = (root / "reports/monitoring/decisions.jsonl").read_text().splitlines()
    return json.loads(lines[-1])
