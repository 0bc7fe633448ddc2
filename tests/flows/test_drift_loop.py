"""The whole loop under a real Prefect server on 127.0.0.1, a process worker on the `gpu`
pool, and `driftline serve` as a real process:

- a window with no drift emits no event and starts no retraining;
- drifted traffic with late labels: the monitor emits `driftline.drift.detected`, the
  trigger starts exactly one retraining, which lands the labelled rows, retrains and
  promotes a new champion (`trigger: drift`), the landed rows reach the split (the
  newest are the test period), and the running server reloads it with no failed
  request;
- one more alert for the same window (a duplicate) starts no other retraining (the
  ten-alerts rule itself is unit-tested in tests/unit/test_retraining_guards.py).

The loop starts from a copy of the session's shipped project (champion version 1): the
training flow's own first run is tested in tests/flows/test_training_flow.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
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
    stop,
)

pytestmark = pytest.mark.e2e

HOUR_CSV = REPO / "pipeline/datasets/bike_sharing/hour.csv"
TIMEOUT = 900.0  # a safety net: the retraining takes about a minute on a quiet machine


@pytest.fixture(scope="module")
def loop_project(
    prefect_server: str, shipped_template: Project, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowProject]:
    """The shipped project (champion version 1) as a checkout with pipeline/ and flows/
    (the worker runs the flows from it)."""
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


def environment(project: FlowProject, prefect_url: str) -> dict[str, str]:
    return {
        **os.environ,
        **QUIET,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_API_URL": prefect_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "MLFLOW_TRACKING_URI": project.tracking_uri,
    }


def start(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(check: Any, what: str, log: Path | None = None, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def requests_for(rows: pd.DataFrame, features: dict[str, list[str]], prefix: str) -> list[dict]:
    """Raw bike rows as /predict records: the features (with clean's calendar feature),
    the key and time as context, and an id to join labels on."""
    frame = rows.assign(dteday_dayofyear=pd.to_datetime(rows["dteday"]).dt.dayofyear)
    records = []
    for position, row in enumerate(frame.to_dict(orient="records")):
        record = {name: row[name] for name in (*features["numeric"], *features["categorical"])}
        record.update(id=f"{prefix}-{position}", instant=row["instant"], dteday=row["dteday"])
        records.append(record)
    return records


def send(server: str, records: list[dict]) -> None:
    for start_at in range(0, len(records), 100):
        status, body = post(f"{server}/predict", {"records": records[start_at : start_at + 100]})
        assert status == 200, body


def training_runs(deployment_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def ledger(project: FlowProject) -> list[dict[str, Any]]:
    path = project.root / "reports/monitoring/retrainings.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_drift_retrains_once_and_serving_reloads(
    loop_project: FlowProject, prefect_server: str, tmp_path: Path
) -> None:
    from flows.deployments import deploy
    from flows.monitoring import DRIFT_EVENT, monitoring_flow

    project, root = loop_project, loop_project.root
    assert project.registry() == (["1"], "1")

    env = environment(project, prefect_server)
    deployed = deploy(root)
    training_id = deployed["training"]["id"]
    worker_log, server_log = tmp_path / "worker.log", tmp_path / "server.log"
    prefect = str(Path(sys.executable).parent / "prefect")
    driftline = str(Path(sys.executable).parent / "driftline")
    worker = start(
        [prefect, "worker", "start", "--pool", "gpu", "--type", "process"],
        root,
        env,
        worker_log,
    )
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    serving = start(
        [driftline, "serve", "--host", "127.0.0.1", "--port", str(port), "--poll", "1"],
        root,
        env,
        server_log,
    )
    failures: list[str] = []
    answered: list[str] = []  # the model version of every answer during the reload
    stop_traffic = threading.Event()
    try:
        wait_for(lambda: _health(server), "the server", server_log, timeout=300)
        features = get(f"{server}/model")["features"]
        bike = pd.read_csv(HOUR_CSV)

        # A window like the training data: no drift, no event, no retraining.
        calm_start = datetime.now(UTC)
        calm_rows = bike.iloc[:1400].sample(n=600, random_state=0)  # the training period
        send(server, requests_for(calm_rows, features, "calm"))
        wait_for(lambda: logged(root) == 600, "the log to hold the calm rows", server_log)
        calm = monitoring_flow(str(root), now=_now(), window_hours=_hours_since(calm_start))
        assert calm["window"]["rows"] == 600 and calm["drift"] is False, calm["reasons"]

        # Summer 2012 traffic, labelled: the data and the model's quality drift.
        drift_start = datetime.now(UTC)
        # Enough of it that a time split trains on some summer rows too.
        summer = bike[(bike["yr"] == 1) & (bike["mnth"].isin([6, 7]))].iloc[:1200]
        send(server, requests_for(summer, features, "summer"))
        labels = tmp_path / "labels.csv"
        pd.DataFrame(
            {
                "id": [f"summer-{i}" for i in range(len(summer))],
                "label": summer["cnt"].to_numpy(),
                "time": _now(),
            }
        ).to_csv(labels, index=False)
        wait_for(lambda: logged(root) == 1800, "the log to hold the summer rows", server_log)
        labelled = subprocess.run(
            [driftline, "label", str(labels)], cwd=root, env=env, capture_output=True, text=True
        )
        assert labelled.returncode == 0, labelled.stderr
        assert training_runs(training_id) == []  # the calm window started nothing

        drifted = monitoring_flow(str(root), now=_now(), window_hours=_hours_since(drift_start))
        # Traffic keeps flowing through the retraining and the reload.
        live = requests_for(bike.iloc[:50], features, "live")
        traffic = threading.Thread(
            target=_keep_sending, args=(server, live, stop_traffic, failures, answered)
        )
        traffic.start()
        assert drifted["drift"] is True, drifted["reasons"]
        assert drifted["quality"]["judged"] and drifted["window"]["labelled"] == 1200
        fingerprint = drifted["window"]["fingerprint"]
        assert Path(drifted["files"]["html"]).exists() and Path(drifted["files"]["json"]).exists()

        wait_for(
            lambda: any(e["status"] == "done" for e in ledger(project)),
            "the retraining",
            worker_log,
        )
        versions, champion = project.registry()
        assert champion == "2" and versions == ["1", "2"]
        record = json.loads((root / "reports/promotions.jsonl").read_text().splitlines()[-1])
        assert record["trigger"] == "drift" and record["action"] == "promote"
        assert (root / f"data/landing/production-{fingerprint}.parquet").exists()
        # The landed rows reached the split, and the newest of them are the test period.
        parts = [
            pd.read_parquet(root / f"data/split/{p}.parquet") for p in ("train", "val", "test")
        ]
        assert sum(len(part) for part in parts) == 2000 + len(summer)
        assert parts[2]["instant"].max() == summer["instant"].max()
        wait_for(lambda: _health(server) == "2", "the server to reload v2", server_log)

        # One more alert for the same window: a duplicate, refused.
        from prefect.events import emit_event

        decisions = (root / "reports/monitoring/decisions.jsonl").read_text().splitlines()
        payload = json.loads(decisions[-1])
        emit_event(
            event=DRIFT_EVENT,
            resource={"prefect.resource.id": f"driftline.window.{fingerprint}"},
            payload={
                "fingerprint": fingerprint,
                "window": payload["window"],
                "drift_share": payload["drift_share"],
                "report": payload["report"],
            },
        )
        from tests.flows.conftest import drain_prefect_workers

        drain_prefect_workers()
        wait_for(
            lambda: sum(e["status"] == "refused" for e in ledger(project)) == 1,
            "the refusal",
            worker_log,
        )
        runs = wait_for(
            lambda: (
                (found := training_runs(training_id))
                and len(found) == 2
                and all(run.state and run.state.is_final() for run in found)
                and found
            ),
            "two finished training runs",
            worker_log,
        )
        assert all(run.state.is_completed() for run in runs)
        started = [e for e in ledger(project) if e["status"] == "started"]
        assert [e["fingerprint"] for e in started] == [fingerprint]
        refused = [e for e in ledger(project) if e["status"] == "refused"]
        assert all("duplicate alert" in e["reason"] for e in refused)
        assert project.registry()[1] == "2"
    finally:
        stop_traffic.set()
        for process in (worker, serving):
            stop(process)
    assert failures == []
    assert {"1", "2"} <= set(answered)  # answers from both versions, none failed


def logged(root: Path) -> int:
    """Rows in the prediction log (the server flushes it every 2 s)."""
    from pipeline.prediction_log import read_predictions

    log = root / "data/production"
    return len(read_predictions(log)) if log.exists() else 0


def _health(server: str) -> str | None:
    try:
        return str(get(f"{server}/health")["model_version"])
    except OSError:
        return None


def _keep_sending(
    server: str,
    records: list[dict],
    done: threading.Event,
    failures: list[str],
    answered: list[str],
) -> None:
    while not done.is_set():
        try:
            status, body = post(f"{server}/predict", {"records": records[:5]})
        except OSError as exc:  # refused, reset, timed out: a failed request all the same
            status, body = 0, {"error": str(exc)}
        if status != 200:
            failures.append(f"{status}: {body}")
        else:
            answered.append(body["model_version"])
        time.sleep(0.05)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _hours_since(start: datetime) -> float:
    return (datetime.now(UTC) - start).total_seconds() / 3600 + 1 / 3600


def test_up_starts_the_loop_and_down_stops_it(
    loop_project: FlowProject, prefect_server: str
) -> None:
    """`driftline up` in a project with a champion: Prefect, pools, deployments, workers
    and the API answer; `driftline down` stops exactly those processes."""
    from pipeline.stack import Stack, alive

    root = loop_project.root
    env = {
        **environment(loop_project, "unused"),
        **SERVER_SERVICES_OFF,
        "PREFECT_HOME": str(root / ".prefect"),
    }
    env.pop("PREFECT_API_URL")
    driftline = str(Path(sys.executable).parent / "driftline")
    port, prefect_port = free_port(), free_port()
    started = subprocess.run(
        [driftline, "up", "--port", str(port), "--prefect-port", str(prefect_port)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    stack = Stack.load(root)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"Prefect UI:      http://127.0.0.1:{prefect_port}" in started.stdout
        assert _health(f"http://127.0.0.1:{port}") == loop_project.registry()[1]
        assert stack is not None
        names = {process.name for process in stack.processes}
        assert names == {"prefect-server", "worker-gpu", "worker-cpu", "serve"}
        again = subprocess.run(
            [driftline, "up", "--port", str(port)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert again.returncode == 1 and "the stack is up already" in again.stderr
    finally:
        stopped = subprocess.run(
            [driftline, "down"], cwd=root, env=env, capture_output=True, text=True, timeout=120
        )
    assert stopped.returncode == 0 and "serve" in stopped.stdout
    assert not any(alive(process.pid) for process in stack.processes)
    assert _health(f"http://127.0.0.1:{port}") is None
