"""`driftline serve` as a real process: it serves the champion's ONNX export, reloads
when the alias moves with no failed request, logs predictions, and takes late labels."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pandas as pd

from tests.conftest import REPO, Project
from tests.model.test_deploy import ready_to_ship, train_with


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_serve_reloads_the_champion_and_logs_predictions(produced: Project) -> None:
    project = produced
    ready_to_ship(project)
    train_with(project, 3)  # v1
    train_with(project, 2000)  # v2 beats it: champion v2, previous v1

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), "--poll", "0.5"],
        cwd=project.root,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300  # a safety net for a busy machine
        while time.monotonic() < deadline:
            try:
                if call(f"{base}/health")["status"] == "ok":
                    break
            except OSError:
                time.sleep(0.25)
        assert call(f"{base}/health")["model_version"] == "2"
        assert call(f"{base}/model")["metrics"]["rmse"] > 0

        test = pd.read_parquet(project.root / "data/split/test.parquet")
        features = call(f"{base}/model")["features"]
        columns = features["numeric"] + features["categorical"]
        records = json.loads(test[columns].head(5).to_json(orient="records"))
        answer = call(f"{base}/predict", {"records": records})
        assert len(answer["predictions"]) == 5 and answer["model_version"] == "2"
        # /explain loads the registered version's native booster: TreeSHAP on the margin.
        explained = call(f"{base}/explain?top=3", records[0])
        assert explained["method"] == "tree_shap" and explained["model_version"] == "2"
        assert len(explained["explanations"][0]["contributions"]) == 3

        failures, served = [], set()
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    served.add(call(f"{base}/predict", records[0])["model_version"])
                except OSError as exc:  # any failed request fails the test
                    failures.append(exc)

        worker = threading.Thread(target=hammer)
        worker.start()
        assert project.run("rollback", "--reason", "test").exit_code == 0  # champion v1
        deadline = time.time() + 300
        while call(f"{base}/health")["model_version"] != "1" and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        worker.join()
        assert call(f"{base}/health")["model_version"] == "1"
        assert failures == [] and served == {"1", "2"}
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert "Traceback" not in output, output

    from pipeline.prediction_log import read_predictions

    logged = read_predictions(project.store_url)
    assert len(logged) >= 6 and set(logged["model_version"]) == {"1", "2"}
    labels = pd.DataFrame(
        {
            "id": [*list(logged["request_id"][:3]), "nobody"],
            "label": [1, 2, 3, 4],
            "time": "2026-01-01",
        }
    )
    labels.to_csv(project.root / "labels.csv", index=False)
    result = project.run("label", "labels.csv")
    assert result.exit_code == 0, result.stderr
    assert "3 of 4 label(s) match a logged prediction; 1 unmatched (e.g. nobody)" in result.stdout


def test_serve_without_a_champion_says_so(project: Project) -> None:
    result = project.run("serve", "--port", str(free_port()))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: 'driftline' has no champion yet: run the pipeline (make run) so that deploy "
        "registers one"
    )
