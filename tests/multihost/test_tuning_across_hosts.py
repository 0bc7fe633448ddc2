"""Scale-out of tuning: two workers on two hosts add trials to one Optuna study in
PostgreSQL.

Each host (`tune-a`, `tune-b`) is its own network namespace with its own copy of a
project after the four data stages, its own HOME, TMPDIR and MLflow store; the only
thing they share is a fresh PostgreSQL database, reached through a forwarder on the
bridge and named by DRIFTLINE_OPTUNA_STORAGE. The forwarder holds every connection
until both workers are waiting on it, so the two searches start at the same moment on
the study's database.

`tune.n_trials` is the study's total: the workers share one budget rather than each
running its own. Where namespaces cannot be made (not root, no `ip`), the hosts are
separate folders and environments on 127.0.0.1.

    make test-multihost        # with the loop across hosts
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Project, copy_project
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

if TYPE_CHECKING:
    import optuna

pytestmark = [pytest.mark.e2e, pytest.mark.multihost]

BIN = Path(sys.executable).parent
HOSTS = ("tune-a", "tune-b")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
# The study's total, shared by both workers: small, yet more than one worker could
# finish before the other has started its first trial.
BUDGET = 4


class GatedForwarder(Forwarder):
    """The forwarder, holding each connection until `gate` is set."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        super().__init__(listen, target)
        self.gate = threading.Event()
        self.waiting: list[str] = []  # the address of each connection held

    def finish_request(self, request: object, client_address: tuple[str, int]) -> None:
        self.waiting.append(client_address[0])
        self.gate.wait()
        super().finish_request(request, client_address)


@dataclass
class TuningHosts:
    network: Network
    base: Path
    database: str
    forwarder: GatedForwarder
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def storage(self, via: str | None = None) -> str:
        """The study's database, as a host reaches it (or this test, on 127.0.0.1)."""
        address, port = (via, self.forwarder.server_address[1]) if via else ("127.0.0.1", 5432)
        return f"postgresql://postgres@{address}:{port}/{self.database}"

    def folder(self, host: str) -> Path:
        return self.base / "hosts" / host

    def log(self, host: str) -> Path:
        return self.folder(host) / "tune.log"

    def host_env(self, host: str) -> dict[str, str]:
        """What a worker is told: where the study is, and nothing else."""
        return {
            **host_environment(self.folder(host)),
            "DRIFTLINE_OPTUNA_STORAGE": self.storage(via=self.network.gateway),
        }

    def start_on(self, host: str, argv: list[str], cwd: Path) -> None:
        env = self.host_env(host)
        with self.log(host).open("wb") as out:
            self.processes[host] = subprocess.Popen(
                self.network.on(host, argv),
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=20)


@pytest.fixture
def tuning_hosts(tmp_path: Path) -> Iterator[TuningHosts]:
    network = make_network(HOSTS)
    database = f"driftline_mh_{network.tag}_optuna"
    forwarder: GatedForwarder | None = None
    hosts: TuningHosts | None = None
    try:
        sql(PG_ADMIN, f'CREATE DATABASE "{database}"')
        forwarder = GatedForwarder(
            (network.gateway, free_port(network.gateway)), ("127.0.0.1", 5432)
        )
        threading.Thread(target=forwarder.serve_forever, daemon=True).start()
        hosts = TuningHosts(network, tmp_path, database, forwarder)
        yield hosts
    finally:
        try:
            if hosts is not None:
                hosts.stop_all()
            if forwarder is not None:
                forwarder.gate.set()
                forwarder.shutdown()
                forwarder.server_close()
            sql(PG_ADMIN, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            remove_network(network)


@contextlib.contextmanager
def study_storage(url: str) -> Iterator[optuna.storages.RDBStorage]:
    """Optuna's storage at `url` (its tables made if missing), closed afterwards."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        yield storage
    finally:
        storage.remove_session()
        storage.engine.dispose()


def reported_trials(project: Project) -> dict[int, str]:
    """The trials a worker recorded in its own MLflow store: number -> state."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=project.tracking_uri)
    experiment = client.get_experiment_by_name(project.params()["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], "tags.`driftline.stage` = 'tune-trial'")
    return {
        int(run.info.run_name.removeprefix("trial-")): run.data.tags["driftline.trial_state"]
        for run in runs
    }


def test_two_hosts_add_trials_to_one_study_in_postgresql(
    tuning_hosts: TuningHosts, data_template: Project
) -> None:
    projects = {}
    for host in HOSTS:
        project = copy_project(data_template, tuning_hosts.folder(host) / "driftline")
        project.update("tune", n_trials=BUDGET)
        # No train ran here: a worker fits the objective named, not train's `auto` choice.
        project.update("train", objective="squared_error")
        projects[host] = project
    before = {host: project.snapshot() for host, project in projects.items()}
    # The database is empty: both workers, released together, race to create Optuna's
    # tables (optuna/optuna#1092), and the loser must try again rather than fail.
    for host, project in projects.items():
        tuning_hosts.start_on(host, [str(BIN / "driftline"), "tune", "--search-only"], project.root)
    forwarder = tuning_hosts.forwarder
    logs = [tuning_hosts.log(host) for host in HOSTS]

    def both_waiting() -> bool:
        for host, process in tuning_hosts.processes.items():
            assert process.poll() is None, tuning_hosts.log(host).read_text()[-3000:]
        return len(forwarder.waiting) >= len(HOSTS)

    wait_for(both_waiting, "both workers to reach the database", logs, timeout=300)
    assert sorted(set(forwarder.waiting)) == sorted(
        {tuning_hosts.network.address(host) for host in HOSTS}
    )
    forwarder.gate.set()
    for host, process in tuning_hosts.processes.items():
        process.wait(timeout=600)
        assert process.returncode == 0, tuning_hosts.log(host).read_text()[-3000:]

    import optuna

    with study_storage(tuning_hosts.storage()) as storage:
        [study] = optuna.get_all_study_summaries(storage)  # one study, not one per host
        trials = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    in_study = {trial.number: trial.state.name for trial in trials}
    assert study.study_name.startswith("driftline-xgboost-")
    assert len(in_study) == len(trials)  # distinct trial numbers
    assert set(in_study.values()) <= {"COMPLETE", "PRUNED"}
    # The budget is the study's total; a trial still running on the other host when it
    # is reached is finished, not thrown away.
    assert BUDGET <= len(trials) <= BUDGET + len(HOSTS) - 1

    reported = {host: reported_trials(project) for host, project in projects.items()}
    assert all(reported.values()), reported  # each host added trials
    assert not set(reported["tune-a"]) & set(reported["tune-b"]), reported
    assert {**reported["tune-a"], **reported["tune-b"]} == in_study

    # A worker writes nothing in its project.
    assert {host: project.snapshot() for host, project in projects.items()} == before
