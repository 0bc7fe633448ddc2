"""The training flow against a real Prefect server, real DVC and a real MLflow registry.

The tests in this module share one project and run in order: a first run trains and
promotes, a second run has nothing to do, a failure halfway leaves everything as it
was and the next run resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import typer
import yaml

from pipeline.console import report_user_errors
from pipeline.errors import TransientError
from tests.flows.conftest import FlowProject, git, small_project

# DVC 3.67 warns about its own use of pygtrie on every graph it builds.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc.*")

STAGES = [
    "check",
    "ingest",
    "validate",
    "clean",
    "split",
    "train",
    "tune",
    "evaluate",
    "compress",
    "deploy",
]
BUG = "open('evaluate-attempts.txt', 'a').write('x')\nraise RuntimeError('a bug in evaluate')\n\n"


def task_runs(flow_run_id: UUID, expected: int, timeout: float = 120) -> dict[str, Any]:
    """The flow run's task runs by name, once the server has recorded them all
    (task runs reach the server as events, a moment after they finish)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            final = [run for run in runs if run.state is not None and run.state.is_final()]
            if len(final) >= expected or time.monotonic() > deadline:
                return {run.name: run for run in final}
            time.sleep(0.5)


def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    """The flow run's artifacts by key: a table's rows, a markdown's text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run = ArtifactFilterFlowRunId(any_=[flow_run_id])
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=run))
    return {
        artifact.key: json.loads(artifact.data) if artifact.type == "table" else artifact.data
        for artifact in found
    }


def flow_run_state(flow_run_id: UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def run_flow(project: Path, **parameters: Any) -> Any:
    from flows.training import training_flow

    return training_flow(project=str(project), return_state=True, **parameters)


@pytest.mark.e2e
def test_first_run_trains_and_promotes_then_nothing_to_do(
    prefect_server: str, flow_project: FlowProject
) -> None:
    first = run_flow(flow_project.root, trigger="schedule")
    assert first.is_completed(), first.message
    # The run's state says what it did; its summary is still the flow's result.
    assert first.name == "Promoted v1"
    assert flow_run_state(first.state_details.flow_run_id).name == "Promoted v1"
    summary = first.result()
    assert summary["ran"] == STAGES and summary["skipped"] == [] and summary["failed"] == []
    assert summary["trigger"] == "schedule"
    assert summary["gate"]["passed"] is True
    assert summary["deploy"]["action"] == "promote" and summary["champion"] == "1"
    assert {"evaluate", "train", "compress"} <= set(summary["metrics"])
    assert summary["metrics"]["evaluate"]["rmse"] > 0
    assert flow_project.registry() == (["1"], "1")
    record = json.loads(
        (flow_project.root / "reports/promotions.jsonl").read_text().splitlines()[-1]
    )
    assert record["trigger"] == "schedule" and record["action"] == "promote"
    # The data went to the DVC remote, and dvc.lock to the `runs` branch; the checkout
    # is still on main with its working tree as the run left it.
    assert summary["pushed"] > 0 and any(flow_project.remote.rglob("*"))
    root = flow_project.root
    assert git(root, "rev-parse", "runs") == summary["commit"]
    assert git(root, "show", "runs:dvc.lock") == (root / "dvc.lock").read_text().strip()
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert "dvc.lock" not in git(root, "ls-tree", "--name-only", "main")
    runs = task_runs(first.state_details.flow_run_id, len(STAGES))
    assert all(runs[stage].state.name == "Completed" for stage in STAGES)
    published = artifacts(first.state_details.flow_run_id)
    assert published["training-summary"].startswith("# Promoted v1\n")
    assert [row["stage"] for row in published["training-stages"]] == STAGES
    [rmse, *_] = published["training-metrics"]  # the primary metric first
    assert rmse["metric"] == "rmse" and rmse["champion"] is None  # no champion yet

    second = run_flow(flow_project.root)
    assert second.is_completed() and second.name == "Nothing to do", second.message
    again = second.result()
    assert again["skipped"] == STAGES and again["ran"] == []
    assert again["deploy"] is None and again["champion"] == "1"
    assert flow_project.registry() == (["1"], "1")
    # Nothing ran: same data version, no commit.
    assert again["commit"] is None and git(root, "rev-parse", "runs") == summary["commit"]
    runs = task_runs(second.state_details.flow_run_id, len(STAGES))
    assert [stage for stage in STAGES if runs[stage].state.name == "Skipped"] == STAGES

    # Another host promotes v2 (here: v1's model registered again): the gate, computed
    # before any champion, is stale, so evaluate and deploy run again, against v2, and
    # nothing else. The candidate is v2's model: deploy keeps it.
    promote_elsewhere(flow_project)
    third_state = run_flow(flow_project.root)
    assert third_state.name == "Kept v2"
    third = third_state.result()
    assert third["champion_moved"] == "the champion is v2; the gate compared with no champion"
    assert third["ran"] == ["evaluate", "deploy"]
    assert third["deploy"]["action"] == "keep" and flow_project.registry() == (["1", "2"], "2")
    gate = json.loads((root / "reports/gate.json").read_text())
    assert gate["champion_version"] == "2" and not gate["passed"]
    fourth = run_flow(flow_project.root).result()
    assert fourth["champion_moved"] is None and fourth["ran"] == []


def promote_elsewhere(project: FlowProject) -> None:
    """What another host's promotion leaves in the shared registry: a v2, the champion."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=project.tracking_uri, registry_uri=project.tracking_uri)
    name = project.params()["mlflow"]["registered_model"]
    first = client.get_model_version(name, "1")
    second = client.create_model_version(name, first.source, first.run_id, tags=first.tags)
    client.set_registered_model_alias(name, "champion", second.version)


@pytest.mark.e2e
def test_a_checkout_without_outputs_pulls_them_instead_of_running(
    prefect_server: str, flow_project: FlowProject
) -> None:
    """A fresh worker has the code and dvc.lock, not the data: the remote has it."""
    root = flow_project.root
    champion = flow_project.registry()[1]  # v2: the first test promoted it elsewhere
    for path in ("data/split", "models/tuned", "models/compressed"):
        shutil.rmtree(root / path)

    state = run_flow(root)

    assert state.is_completed() and state.name == "Nothing to do", state.message
    summary = state.result()
    assert summary["skipped"] == STAGES and summary["ran"] == []
    assert summary["deploy"] is None and summary["champion"] == champion
    assert (root / "models/tuned/model.json").exists()
    assert (root / "data/split/test.parquet").exists()


@pytest.mark.e2e
def test_failure_halfway_changes_nothing_after_it_and_the_next_run_resumes(
    prefect_server: str, flow_project: FlowProject
) -> None:
    root = flow_project.root
    lock_before, registry_before = flow_project.lock(), flow_project.registry()
    branch_before = git(root, "rev-parse", "runs")
    params = flow_project.params()
    params["train"]["seed"] = 7  # train and everything after it must run again
    flow_project.write_params(params)
    evaluate = root / "pipeline/stages/evaluate.py"
    source = evaluate.read_text()
    evaluate.write_text(
        source.replace('if __name__ == "__main__":', BUG + 'if __name__ == "__main__":')
    )

    failed = run_flow(root)

    assert failed.is_failed()
    error = failed.result(raise_on_failure=False)
    # The run says which stage failed, what it said, and that it was not retried.
    assert "stage 'evaluate' failed" in str(error) and "not retried" in str(error)
    assert "RuntimeError: a bug in evaluate" in str(error)
    summary = error.summary
    assert summary["skipped"] == ["ingest", "validate", "clean", "split"]
    # check runs first on any params edit; train and tune after it
    assert summary["ran"] == ["check", "train", "tune"] and summary["failed"] == ["evaluate"]
    assert summary["not_run"] == ["compress", "deploy"]
    # A bug is not retried, although orchestrate.retries is 2.
    assert (root / "evaluate-attempts.txt").read_text() == "x"
    lock_after = flow_project.lock()
    for stage in ("evaluate", "compress", "deploy"):
        assert lock_after[stage] == lock_before[stage], stage
    assert lock_after["train"] != lock_before["train"]  # train and tune did finish
    assert flow_project.registry() == registry_before
    assert git(root, "rev-parse", "runs") == branch_before  # nothing committed
    assert flow_run_state(failed.state_details.flow_run_id).is_failed()
    runs = task_runs(failed.state_details.flow_run_id, 8)
    assert runs["evaluate"].state.is_failed() and runs["evaluate"].run_count == 1
    assert "compress" not in runs

    evaluate.write_text(source)
    resumed = run_flow(root)

    assert resumed.is_completed(), resumed.message
    summary = resumed.result()
    assert summary["skipped"] == ["check", "ingest", "validate", "clean", "split", "train", "tune"]
    assert summary["ran"] == ["evaluate", "compress", "deploy"]
    versions, champion = flow_project.registry()
    if summary["deploy"]["action"] == "promote":
        added = str(len(registry_before[0]) + 1)
        assert versions == [*registry_before[0], added] and champion == added
        assert resumed.name == f"Promoted v{added}"
    else:
        assert (versions, champion) == registry_before
    assert summary["champion"] == champion
    assert git(root, "show", "runs:dvc.lock") == (root / "dvc.lock").read_text().strip()


def test_a_transient_failure_is_retried(prefect_server: str, tmp_path: Path) -> None:
    project = small_project(tmp_path / "small", exit_code=TransientError.exit_code, failures=1)

    state = run_flow(project)

    assert state.is_completed() and state.name == "Ran 2 stages", state.message
    summary = state.result()
    assert summary["ran"] == ["prepare", "flaky"]
    assert summary["metrics"] == {} and summary["deploy"] is None and summary["pushed"] is None
    assert (project / "attempts.txt").read_text() == "xx"
    runs = task_runs(state.state_details.flow_run_id, 2)
    assert runs["flaky"].state.is_completed() and runs["flaky"].run_count == 2


def test_transient_failures_stop_after_the_retries(prefect_server: str, tmp_path: Path) -> None:
    project = small_project(tmp_path / "small", exit_code=TransientError.exit_code, failures=9)

    state = run_flow(project)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert error.transient and error.exit_code == TransientError.exit_code
    assert (project / "attempts.txt").read_text() == "xxx"  # 1 + orchestrate.retries
    assert error.summary["ran"] == ["prepare"] and error.summary["failed"] == ["flaky"]


@pytest.mark.parametrize("exit_code", [1, 2])
def test_a_data_or_code_failure_is_not_retried(
    prefect_server: str, tmp_path: Path, exit_code: int
) -> None:
    project = small_project(tmp_path / "small", exit_code=exit_code, failures=1)

    state = run_flow(project)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert f"exited with {exit_code}: error: attempt 1 failed" in str(error)
    assert not error.transient
    assert (project / "attempts.txt").read_text() == "x"
    assert not (project / "dvc.lock").read_text().count("flaky")

    # Fixed: the next run skips the stage that finished and runs the one that failed.
    resumed = run_flow(project)
    assert resumed.is_completed(), resumed.message
    assert resumed.result()["skipped"] == ["prepare"] and resumed.result()["ran"] == ["flaky"]


def test_a_bad_trigger_is_refused_before_anything_runs(prefect_server: str, tmp_path: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    project = small_project(tmp_path / "small", exit_code=0, failures=0)

    state = run_flow(project, trigger="cron")

    assert state.is_failed() and "'manual', 'schedule' or 'drift'" in state.message
    assert isinstance(state.result(raise_on_failure=False), ParameterTypeError)
    assert not (project / "dvc.lock").exists()


# --- how failures are classified --------------------------------------------------------


def test_the_flow_knows_every_trigger_deploy_records() -> None:
    from typing import get_args

    from flows.training import Trigger
    from pipeline.promotions import TRIGGERS

    assert get_args(Trigger) == TRIGGERS


def stage_failure(code: int) -> Exception:
    from dvc.exceptions import ReproductionError
    from dvc.stage.exceptions import StageCmdFailedError

    try:
        try:
            raise StageCmdFailedError("python -m pipeline.stages.tune", code)
        except StageCmdFailedError as exc:
            raise ReproductionError("failed to reproduce 'tune'") from exc
    except ReproductionError as exc:
        return exc


def failure(exc: BaseException) -> tuple[bool, int | None]:
    from flows._dvc import classify

    found = classify(exc)
    return found.transient, found.exit_code


@pytest.mark.parametrize(
    ("code", "transient"), [(75, True), (1, False), (2, False), (130, False), (-9, False)]
)
def test_a_stage_is_retried_only_on_exit_75(code: int, transient: bool) -> None:
    assert failure(stage_failure(code)) == (transient, code)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset by peer"), True),
        (OSError(5, "Input/output error"), True),
        (FileNotFoundError("data/raw/data.parquet"), False),
        (PermissionError("dvc.lock"), False),
        (ValueError("a bug"), False),
    ],
)
def test_dvcs_own_io_errors_are_transient_and_the_rest_is_not(
    error: Exception, transient: bool
) -> None:
    from dvc.exceptions import ReproductionError

    wrapped = ReproductionError("failed to reproduce 'train'")
    wrapped.__cause__ = error
    assert failure(wrapped)[0] is transient


def test_a_locked_repo_and_a_failed_transfer_are_transient() -> None:
    from dvc.exceptions import DownloadError, UploadError
    from dvc.lock import LockError

    assert failure(LockError("Unable to acquire lock"))[0] is True
    assert failure(DownloadError(3))[0] is True
    assert failure(UploadError(1))[0] is True


@pytest.mark.parametrize(
    ("stderr", "said"),
    [
        (["warning: 3 rows dropped", "error: params.yaml: split.sede: unknown key"], "error:"),
        (["Traceback (most recent call last):", '  File "x.py"', "ValueError: bad"], "ValueError"),
        (["12:00:01.123 | INFO    | dvc.stage.run - Running stage 'x':", "Killed"], "Killed"),
        (["12:00:01.123 | INFO    | dvc.stage.run - Running stage 'x':"], None),
        ([], None),
    ],
)
def test_a_failure_quotes_what_the_stage_said(stderr: list[str], said: str | None) -> None:
    from flows._dvc import _error_line

    found = _error_line(stderr)
    assert found == said if said is None else found is not None and found.startswith(said)


def test_the_retry_condition_reads_the_failed_state() -> None:
    from prefect.states import Failed

    from flows._dvc import StageFailed
    from flows.training import retry_transient

    assert retry_transient(None, None, Failed(data=StageFailed("tune", "exit 75", 75, True)))
    assert not retry_transient(None, None, Failed(data=StageFailed("tune", "exit 1", 1, False)))
    assert not retry_transient(None, None, Failed(data=ValueError("a bug in the flow")))


def test_a_transient_error_exits_75_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    @report_user_errors
    def command() -> None:
        raise TransientError("MLflow server http://127.0.0.1:1 is not reachable")

    with pytest.raises(typer.Exit) as exited:
        command()
    assert exited.value.exit_code == 75
    assert capsys.readouterr().err == ("error: MLflow server http://127.0.0.1:1 is not reachable\n")


def test_lock_commit_leaves_a_checked_out_branch_clean(tmp_path: Path) -> None:
    from flows._dvc import commit_data_version, git_skip_reason

    root = tmp_path / "repo"
    root.mkdir()
    for args in (
        ("init", "-q", "-b", "runs"),
        ("config", "user.email", "tests@driftline.invalid"),
        ("config", "user.name", "Driftline tests"),
    ):
        git(root, *args)
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "notes.txt").write_text("staged, not ours to commit\n")
    git(root, "add", "dvc.lock", "notes.txt")
    git(root, "commit", "-q", "-m", "start")
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / "notes.txt").write_text("changed and staged\n")
    git(root, "add", "notes.txt")
    assert git_skip_reason(root) is None

    commit = commit_data_version(root, "runs", "dvc.lock: a run", "data/landing")

    assert git(root, "rev-parse", "HEAD") == commit
    assert git(root, "show", "HEAD:dvc.lock") == "schema: '2.0'\nstages: {}"
    assert git(root, "status", "--porcelain") == "M  notes.txt"  # still staged, uncommitted
    # Nothing new to commit.
    assert commit_data_version(root, "runs", "dvc.lock: again", "data/landing") is None


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_dvcs_git_hints_stay_out_of_the_runs_log(tmp_path: Path) -> None:
    """DVC tells a person to `git add dvc.lock` after every stage in a git checkout;
    the flow commits dvc.lock itself, so the Prefect log gets DVC's lines without it."""
    from dvc.repo import Repo

    from flows._dvc import reproduce_stage, stage_environment
    from tests.flows.conftest import dvc

    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    write = "python -c \"open('{0}.txt', 'w').write('{0}')\""
    stages = {name: {"cmd": write.format(name), "outs": [f"{name}.txt"]} for name in "ab"}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    # DVC's own API, as a person's script would call it: the hints are there.
    plain = Kept()
    logging.getLogger("dvc").addHandler(plain)
    try:
        with Repo(str(root)) as repo:
            repo.reproduce(targets=[f"{root}/dvc.yaml:a"], single_item=True)
    finally:
        logging.getLogger("dvc").removeHandler(plain)
    assert any("git add" in line for line in plain.lines)

    to_prefect = Kept()
    run = reproduce_stage(root, "b", stage_environment("manual"), log_handler=to_prefect)

    assert run.status == "ran"
    assert to_prefect.lines[0] == "Running stage 'b':"
    assert any(line.startswith("Updating lock file") for line in to_prefect.lines)
    said = "\n".join(to_prefect.lines)
    assert "git add" not in said and "autostage" not in said
    assert all(line.strip() for line in to_prefect.lines)  # no blank spacer lines


@pytest.mark.parametrize(
    ("logger", "message", "kept"),
    [
        (
            "dvc.repo.scm_context",
            "\nTo track the changes with git, run:\n\n\tgit add dvc.lock",
            False,
        ),
        ("dvc.repo.scm_context", "\nTo enable auto staging, run:\n\n\tdvc config ...", False),
        ("dvc.commands.repro", "Use `dvc push` to send your updates to remote storage.", False),
        ("dvc.repo.reproduce", "", False),
        ("dvc.stage.run", "Running stage 'train':", True),
        ("dvc.dvcfile", "Updating lock file 'dvc.lock'", True),
    ],
)
def test_only_dvcs_hints_are_left_out(logger: str, message: str, kept: bool) -> None:
    from flows._dvc import WithoutHints

    record = logging.LogRecord(logger, logging.INFO, __file__, 1, message, None, None)
    assert WithoutHints().filter(record) is kept


def test_no_git_no_commit(tmp_path: Path) -> None:
    from flows._dvc import git_skip_reason

    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    assert "not in a git repository" in (git_skip_reason(tmp_path) or "")
