"""The loop across machines: serving, monitoring and retraining on three hosts that share
nothing but TCP services.

Each host is its own network namespace (`ip netns` + a veth pair on a bridge the test
makes; it needs root) with its own directory, HOME, TMPDIR and environment. The
services listen on the bridge's address only: PostgreSQL (the server on 127.0.0.1,
reached through a forwarder; a database each for Prefect, MLflow and the prediction
store), an S3 server (`rclone serve s3`), the MLflow server (PostgreSQL, artifacts
proxied to S3), the Prefect server (PostgreSQL) and a git remote (`git daemon`). These
are the steps of README's "Production" section:

1. the deployments are created from the git remote; the `gpu` host's worker trains and
   promotes a first champion in a fresh clone of it;
2. the serving host runs `driftline serve` from its own clone and logs to PostgreSQL;
   traffic and late labels go there;
3. drift: the monitoring deployment on the `cpu` host emits the event, exactly one
   retraining runs on the `gpu` host (a duplicate alert is refused by the ledger in
   PostgreSQL), a new champion is registered, and the serving host reloads it with no
   failed request;
4. the `gpu` host's directory is deleted; a fresh `git clone` + `dvc pull` elsewhere is
   the new champion's data version (`dvc status` clean), and the registry, the
   prediction store and the git remote hold the rest.

Where namespaces cannot be made (not root, no `ip`), the hosts are separate
directories and environments on 127.0.0.1, sharing no path.

    make test-multihost        # this test alone
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline.stack import answers
from tests.conftest import QUIET, REPO, sliced_params
from tests.loop import (
    emit_drift,
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
from tests.multihost.hosts import (
    Forwarder,
    Network,
    free_port,
    host_environment,
    make_network,
    remove_network,
    sql,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.multihost]

BIN = Path(sys.executable).parent
HOUR_CSV = REPO / "pipeline/datasets/bike_sharing/hour.csv"
HOSTS = ("serve", "cpu", "gpu")
ACCESS_KEY, SECRET_KEY = "driftlinetests", "driftline-tests-secret"  # rclone's, test-only
BUCKET = "driftline"
DATA_BRANCH = "driftline-data"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


# --- the network ------------------------------------------------------------------------


@dataclass
class Stack:
    network: Network
    base: Path
    ports: dict[str, int]
    databases: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def prefect_api(self) -> str:
        return f"http://{self.network.gateway}:{self.ports['prefect']}/api"

    @property
    def mlflow(self) -> str:
        return f"http://{self.network.gateway}:{self.ports['mlflow']}"

    @property
    def s3(self) -> str:
        return f"http://{self.network.gateway}:{self.ports['s3']}"

    @property
    def git_url(self) -> str:
        return f"git://{self.network.gateway}:{self.ports['git']}/driftline.git"

    def store(self, via: str | None = None) -> str:
        """The prediction store's URL, as a host reaches it (or this test, on 127.0.0.1)."""
        address = via or "127.0.0.1"
        port = self.ports["postgres"] if via else 5432
        return f"postgresql://postgres@{address}:{port}/{self.databases['store']}"

    def log(self, name: str) -> Path:
        return self.base / "logs" / f"{name}.log"

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        with self.log(name).open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def host_dir(self, host: str) -> Path:
        return self.base / "hosts" / host

    def host_env(self, host: str) -> dict[str, str]:
        """What a machine of the stack is told: where each service is, and nothing else
        (no variable of this test's own process, no path outside the host's folder)."""
        gateway = self.network.gateway
        return {
            **host_environment(self.host_dir(host)),
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "MLFLOW_TRACKING_URI": self.mlflow,
            "DRIFTLINE_PREDICTION_LOG": self.store(via=gateway),
            "DRIFTLINE_OPTUNA_STORAGE": (
                f"postgresql://postgres@{gateway}:{self.ports['postgres']}/"
                f"{self.databases['store']}"
            ),
            "DRIFTLINE_DVC_REMOTE": f"s3://{BUCKET}/dvc",
            "DRIFTLINE_DATA_BRANCH": DATA_BRANCH,
            "DRIFTLINE_GIT_URL": self.git_url,
            "DRIFTLINE_GIT_REF": "main",
            "AWS_ENDPOINT_URL": self.s3,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "GIT_AUTHOR_NAME": f"Driftline {host}",
            "GIT_AUTHOR_EMAIL": f"{host}@driftline.invalid",
            "GIT_COMMITTER_NAME": f"Driftline {host}",
            "GIT_COMMITTER_EMAIL": f"{host}@driftline.invalid",
        }

    def run_on(
        self, host: str, argv: list[str], cwd: Path, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.network.on(host, argv),
            cwd=cwd,
            env=self.host_env(host),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_on(self, host: str, name: str, argv: list[str], cwd: Path) -> None:
        self.start(name, self.network.on(host, argv), self.host_env(host), cwd)


def _count(stack: Stack, table: str) -> int:
    try:
        [[(count,)]] = sql(stack.store(), f"SELECT count(*) FROM {table}")
    except Exception:  # not created yet
        return 0
    return int(count)


# --- the repository ---------------------------------------------------------------------


def loop_params() -> dict[str, Any]:
    """The repo's params on its 2,000-row slice, with the loop's thresholds: the same
    file serves every host; only the environment says where the services are."""
    params = sliced_params(Path("tests/fixtures/bike_sharing_2000.csv"))
    # The loop's runs need a model, not a good one: train's params as the one trial.
    params["tune"]["n_trials"] = 1
    params["evaluate"]["importance_repeats"] = 1
    params["orchestrate"]["retry_delay_seconds"] = 0
    params["monitor"].update(min_window_rows=300, min_labelled_rows=100, cooldown_minutes=60)
    # The retrained model must beat the champion on the new (summer) test rows; the
    # floors were set for a model trained on a whole year.
    params["evaluate"]["floors"] = {}
    return params


def make_remote(base: Path) -> Path:
    """A bare git repository holding this checkout's tracked files as `main`, with the
    test's params.yaml and no dvc.lock (the first run makes the first data version)."""
    source, served = base / "source", base / "git"
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, listed):
        if name == "dvc.lock" or not (REPO / name).is_file():
            continue
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    (source / "params.yaml").write_text(yaml.safe_dump(loop_params(), sort_keys=False))
    identity = {
        **os.environ,
        "GIT_AUTHOR_NAME": "tests",
        "GIT_AUTHOR_EMAIL": "tests@driftline.invalid",
        "GIT_COMMITTER_NAME": "tests",
        "GIT_COMMITTER_EMAIL": "tests@driftline.invalid",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "Driftline"]):
        subprocess.run(["git", *args], cwd=source, env=identity, check=True, capture_output=True)
    served.mkdir()
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(source), str(served / "driftline.git")],
        check=True,
        capture_output=True,
    )
    return served


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("multihost")
    network = make_network(HOSTS)
    tag = network.tag
    databases = {name: f"driftline_mh_{tag}_{name}" for name in ("prefect", "mlflow", "store")}
    gateway = network.gateway
    ports = {name: free_port(gateway) for name in ("prefect", "mlflow", "s3", "git")}
    ports["postgres"] = free_port(gateway) if network.prefix else 5432
    stack = Stack(network, base, ports, databases)
    forwarder: Forwarder | None = None
    try:
        sql(PG_ADMIN, *(f'CREATE DATABASE "{name}"' for name in databases.values()))
        if network.prefix:
            forwarder = Forwarder((gateway, ports["postgres"]), ("127.0.0.1", 5432))
            threading.Thread(target=forwarder.serve_forever, daemon=True).start()
        services = base / "services"
        (services / "s3" / BUCKET).mkdir(parents=True)
        served = make_remote(base)
        env = {
            "PATH": f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(services),
            "RCLONE_CONFIG": str(services / "rclone.conf"),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": stack.s3,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PREFECT_HOME": str(services / "prefect"),
            "PREFECT_API_DATABASE_CONNECTION_URL": (
                f"postgresql+asyncpg://postgres@127.0.0.1:5432/{databases['prefect']}"
            ),
            "PREFECT_UI_ENABLED": "false",
            **QUIET,
            **_server_services_off(),
        }
        stack.start(
            "s3",
            [str(BIN / "rclone"), "serve", "s3", str(services / "s3"), "--addr",
             f"{gateway}:{ports['s3']}", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}"],
            env,
            services,
        )  # fmt: skip
        stack.start(
            "git-daemon",
            ["git", "daemon", f"--base-path={served}", "--export-all", "--enable=receive-pack",
             f"--listen={gateway}", f"--port={ports['git']}", "--reuseaddr", str(served)],
            env,
            services,
        )  # fmt: skip
        mlflow_db = f"postgresql://postgres@127.0.0.1:5432/{databases['mlflow']}"
        stack.start(
            "mlflow",
            [str(BIN / "mlflow"), "server", "--host", gateway, "--port", str(ports["mlflow"]),
             "--workers", "1", "--backend-store-uri", mlflow_db,
             "--artifacts-destination", f"s3://{BUCKET}/mlflow",
             "--allowed-hosts", f"{gateway},{gateway}:{ports['mlflow']}"],
            env,
            services,
        )  # fmt: skip
        stack.start(
            "prefect-server",
            [str(BIN / "prefect"), "server", "start", "--host", gateway,
             "--port", str(ports["prefect"])],
            env,
            services,
        )  # fmt: skip
        for name, url in (
            ("prefect-server", f"{stack.prefect_api}/health"),
            ("mlflow", f"{stack.mlflow}/health"),
        ):
            wait_for(lambda url=url: answers(url), name, [stack.log(name)], timeout=300)
        yield stack
    finally:
        try:
            for name in list(stack.processes)[::-1]:
                stack.stop(name)
            if forwarder is not None:
                forwarder.shutdown()
                forwarder.server_close()
            drop = (f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)' for d in databases.values())
            sql(PG_ADMIN, *drop)
        finally:
            remove_network(network)


def _server_services_off() -> dict[str, str]:
    from tests.flows.conftest import SERVER_SERVICES_OFF

    return SERVER_SERVICES_OFF


# --- MLflow, seen from the test --------------------------------------------------------


def registry(stack: Stack) -> tuple[list[str], str | None]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=stack.mlflow, registry_uri=stack.mlflow)
    try:
        versions = client.search_model_versions("name='driftline'")
        champion = client.get_model_version_by_alias("driftline", "champion").version
    except MlflowException:
        return [], None
    return sorted(v.version for v in versions), str(champion)


# --- the test ---------------------------------------------------------------------------


def test_drift_on_one_host_retrains_on_another_and_a_third_serves_it(stack: Stack) -> None:
    hosts = {host: stack.host_dir(host) for host in HOSTS}
    logs = [stack.log(name) for name in ("worker-gpu", "worker-cpu", "serve", "prefect-server")]
    with prefect_at(stack.prefect_api):
        # The deployments, made from a clone on the cpu host: the code comes from git.
        clone = stack.run_on(
            "cpu", ["git", "clone", "-q", stack.git_url, "driftline"], hosts["cpu"]
        )
        assert clone.returncode == 0, clone.stderr
        deployed = stack.run_on(
            "cpu", [str(BIN / "python"), "-m", "flows.deployments"], hosts["cpu"] / "driftline"
        )
        assert deployed.returncode == 0, deployed.stderr
        for pool in ("gpu", "cpu"):
            stack.start_on(
                pool,
                f"worker-{pool}",
                [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                hosts[pool],
            )

        # 1. The first champion, trained on the gpu host in a fresh clone.
        run_deployment("retraining/training", {})
        [first] = wait_for(lambda: finished(flow_runs("training"), 1), "the first run", logs)
        assert first.state.is_completed(), first.state.message
        assert registry(stack) == (["1"], "1")
        branch = subprocess.run(
            ["git", "ls-remote", stack.git_url, DATA_BRANCH], capture_output=True, text=True
        )
        assert branch.stdout.strip(), "the data version is on the git remote"

        # 2. The serving host: its own clone, the champion from the registry, the log
        # in PostgreSQL.
        serve_addr = stack.network.address("serve")
        # The host's own network: nothing else listens there.
        port = 8000 if stack.network.prefix else free_port("127.0.0.1")
        server = f"http://{serve_addr}:{port}"
        cloned = stack.run_on(
            "serve", ["git", "clone", "-q", stack.git_url, "driftline"], hosts["serve"]
        )
        assert cloned.returncode == 0, cloned.stderr
        stack.start_on(
            "serve",
            "serve",
            [str(BIN / "driftline"), "serve", "--host", serve_addr, "--port", str(port),
             "--poll", "1"],
            hosts["serve"] / "driftline",
        )  # fmt: skip
        wait_for(lambda: served_version(server) == "1", "the server", logs, timeout=300)
        features = get(f"{server}/model")["features"]
        drift_start = datetime.now(UTC)
        rows = summer()
        sent = requests_for(rows, features, "summer")
        send(server, sent)
        wait_for(lambda: _count(stack, "predictions") == 1200, "the log in PostgreSQL", logs)
        labels = hosts["serve"] / "labels.csv"
        labels_for(sent, rows).to_csv(labels, index=False)
        labelled = stack.run_on(
            "serve", [str(BIN / "driftline"), "label", str(labels)], hosts["serve"] / "driftline"
        )
        assert labelled.returncode == 0, labelled.stderr
        assert _count(stack, "labels") == 1200

        # 3. Drift: the monitor on the cpu host, the retraining on the gpu host, while
        # traffic keeps flowing to the serving host.
        live = requests_for(rows.head(5), features, "live")
        with traffic(server, live) as (failures, seen):
            run_deployment(
                "monitoring/monitoring", {"now": now(), "window_hours": hours_since(drift_start)}
            )
            [monitor] = wait_for(lambda: finished(flow_runs("monitoring"), 1), "the monitor", logs)
            assert monitor.state.is_completed(), monitor.state.message
            runs = wait_for(lambda: finished(flow_runs("training"), 2), "the retraining", logs)
            assert runs[1].state.is_completed(), runs[1].state.message
            assert registry(stack) == (["1", "2"], "2")
            wait_for(lambda: served_version(server) == "2", "the server to reload v2", logs)

            # A duplicate alert for the same window, as a second monitor would send it.
            decision = _decision(stack)
            assert decision["drift"] is True, decision["reasons"]
            emit_drift(stack.prefect_api, decision)
            runs = wait_for(lambda: finished(flow_runs("training"), 3), "the duplicate", logs)
            assert runs[2].state.is_completed(), runs[2].state.message
        assert failures == []
        assert {"1", "2"} <= set(seen)  # answers from both versions, none failed
        ledger = [
            row._asdict()
            for row in sql(
                stack.store(), "SELECT status, fingerprint FROM retrainings ORDER BY id"
            )[0]
        ]
        fingerprint = decision["window"]["fingerprint"]
        assert [(e["status"], e["fingerprint"]) for e in ledger] == [
            ("started", fingerprint),
            ("done", fingerprint),
            ("refused", fingerprint),
        ]
        tags = _version_tags(stack, "2")
        assert any(json.loads(v).get("trigger") == "drift" for k, v in tags.items()
                   if k.startswith("driftline.promote."))  # fmt: skip

    # 4. The gpu host's checkouts are gone; the data version is in git and S3.
    for pool in ("gpu", "cpu"):
        stack.stop(f"worker-{pool}")
    shutil.rmtree(hosts["gpu"])
    elsewhere = stack.base / "elsewhere"
    elsewhere.mkdir()
    commands = [
        ["git", "clone", "-q", "-b", DATA_BRANCH, stack.git_url, "driftline"],
        [str(BIN / "dvc"), "remote", "add", "--local", "-d", "driftline", f"s3://{BUCKET}/dvc"],
        [str(BIN / "dvc"), "pull", "-q"],
        [str(BIN / "dvc"), "status"],
    ]
    for position, command in enumerate(commands):
        done = stack.run_on("serve", command, elsewhere / ("driftline" if position else ""))
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    assert "Data and pipelines are up to date" in done.stdout, done.stdout
    checkout = elsewhere / "driftline"
    assert (checkout / f"data/landing/production-{fingerprint}.parquet").exists()
    parts = ("train", "val", "test")
    split = [pd.read_parquet(checkout / f"data/split/{p}.parquet") for p in parts]
    assert sum(len(part) for part in split) == 2000 + len(rows)
    history = subprocess.run(
        ["git", "log", "--format=%s", DATA_BRANCH], cwd=checkout, capture_output=True, text=True
    ).stdout.splitlines()
    versions = [line.split(" run ")[0] for line in history if line.startswith("dvc.lock:")]
    assert versions == ["dvc.lock: drift training", "dvc.lock: manual training"]
    assert _count(stack, "predictions") >= 1200 and _count(stack, "labels") == 1200


def _decision(stack: Stack) -> dict[str, Any]:
    """The monitor's decision, as anyone reads it: from its MLflow run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow)
    experiment = client.get_experiment_by_name("driftline-monitoring")
    [run] = client.search_runs([experiment.experiment_id])
    target = stack.base / "decision"
    path = client.download_artifacts(run.info.run_id, "monitoring/decision.json", str(target))
    return json.loads(Path(path).read_text())


def _version_tags(stack: Stack, number: str) -> dict[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow, registry_uri=stack.mlflow)
    return dict(client.get_model_version("driftline", number).tags)
