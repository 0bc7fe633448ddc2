"""The training flow: the stages of `dvc.yaml` as Prefect tasks, in order.

Each task is `dvc repro --single-item <stage>` through DVC's Python API, so
`dvc.lock` stays the truth however a run started, and a stage DVC serves without
running it (unchanged, or restored from the run cache) finishes in a `Skipped` state.
A stage whose command exits 75 (`pipeline.errors.TransientError`: a tracking server
briefly down, I/O that timed out), or that DVC could not run for an I/O reason, is
retried `orchestrate.retries` times; any other failure (bad data, bad params, a bug)
stops the run at once, and the stages after it keep their outputs and their entries
in `dvc.lock`, so the next run resumes where this one stopped.

With a default DVC remote configured (`.dvc/config`, or `DRIFTLINE_DVC_REMOTE`), a
stage that is unchanged but whose outputs are missing (a fresh worker's checkout) pulls
them instead of running. With `orchestrate.git_branch` set (or `DRIFTLINE_DATA_BRANCH`),
that branch holds the data versions: a fresh clone of the code first takes the newest
version from the branch on `origin` (its `dvc.lock` and landed batches), and after
every stage succeeds the flow pushes the outputs to the DVC remote, commits `dvc.lock`
and the landing folder's `.dvc` files onto the branch, and pushes the branch to
`origin` (`orchestrate.git_push`): any machine can then `git clone -b <branch>` and
`dvc pull` this version. It returns a summary: the stages that ran and were skipped,
the metrics, the gate, the deploy decision and the champion; the run ends in a
Completed state named for the outcome ("Promoted v3", "Kept v2", "Refused: <why>",
"Nothing to do") and publishes the summary, the stages and the gate's metrics as
Prefect artifacts (`flows.artifacts`).

    python -m flows.training            # one run, against PREFECT_API_URL or an ephemeral API
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows import _dvc
from flows.artifacts import publish_training, training_state
from pipeline.errors import DriftlineError, TransientError

if TYPE_CHECKING:
    from pipeline.config import MlflowConfig, Params

# Why a run started; deploy writes it into the promotion record (DRIFTLINE_TRIGGER).
Trigger = Literal["manual", "schedule", "drift"]


class TrainingFailed(DriftlineError):
    """A stage failed; `summary` says what ran, what failed and what did not run."""

    def __init__(self, message: str, summary: dict[str, Any], transient: bool = False) -> None:
        self.summary = summary
        self.transient = transient
        self.exit_code = TransientError.exit_code if transient else 1
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.summary, self.transient))


def retry_transient(task: Any, task_run: Any, state: State) -> bool:
    """Prefect's `retry_condition_fn`: retry a failure only when it is transient.

    Prefect calls it only for plain functions (`inspect.isfunction`), with the failed
    state whose data is the exception the task raised.
    """
    error = state.data
    if not isinstance(error, BaseException):
        try:
            error = state.result(raise_on_failure=False)
        except Exception:
            return False
    return bool(getattr(error, "transient", False))


# Prefect's own caching stays off: DVC decides what is up to date.
_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="read settings", **_TASK)
def read_settings(root: str, params_file: str) -> Params:
    """The params; a bad params file fails here, before any stage."""
    from pipeline.config import load_params

    return load_params(Path(root) / params_file)


@task(name="restore data version", retry_condition_fn=retry_transient, **_TASK)
def restore_data_version(root: str, branch: str, landing: str) -> str | None:
    """A fresh clone starts from the newest data version on origin's `branch`."""
    logger = get_run_logger()
    if _dvc.git_skip_reason(Path(root), need_lock=False) is not None:
        return None
    commit = _dvc.restore_data_version(Path(root), branch, landing)
    if commit is None:
        return None
    batches = sorted((Path(root) / landing).glob("*.dvc"))
    _dvc.pull(Path(root), [str(batch) for batch in batches])
    logger.info("data version %s of %s: %d landed batch(es)", commit[:12], branch, len(batches))
    return commit


@task(name="plan", **_TASK)
def plan(root: str) -> _dvc.Plan:
    """The stages of dvc.yaml, upstream first, and the default DVC remote."""
    return _dvc.plan(Path(root))


@task(retry_condition_fn=retry_transient, **_TASK)
def run_stage(
    root: str, stage: str, run_env: dict[str, str], force: bool = False, pull: bool = False
) -> _dvc.StageRun | State:
    """One DVC stage. A stage DVC did not have to run ends `Skipped` (a Completed state);
    with `pull`, its missing outputs come from the remote."""
    try:
        outcome = _dvc.reproduce_stage(
            Path(root), stage, run_env, force=force, pull=pull, log_handler=_dvc_to_prefect()
        )
    except _dvc.StageFailed as failed:
        if failed.output:
            get_run_logger().error("%s's stderr, last lines:\n%s", stage, failed.output)
        raise
    if outcome.status == "skipped":
        return Completed(message=f"skipped: {outcome.reason}", name="Skipped", data=outcome)
    return outcome


def _dvc_to_prefect() -> logging.Handler | None:
    """A handler that sends DVC's log lines ("Running stage", the command, "Updating
    lock file") to this run's logs in the Prefect UI; DVC prints them on the console
    itself. DVC's git and push hints stay out (`_dvc.WithoutHints`). None when
    PREFECT_LOGGING_EXTRA_LOGGERS already includes dvc."""
    from prefect.logging.handlers import APILogHandler

    if any(isinstance(handler, APILogHandler) for handler in logging.getLogger("dvc").handlers):
        return None
    return APILogHandler(level=logging.INFO)


@task(name="dvc push", retry_condition_fn=retry_transient, **_TASK)
def push_data(root: str, remote: str | None) -> int | None:
    """Send the run's cached outputs to the default remote; None when there is none."""
    logger = get_run_logger()
    if remote is None:
        logger.info("no default DVC remote is configured: nothing pushed")
        return None
    pushed = _dvc.push(Path(root))
    logger.info("dvc push: %d file(s) sent to remote %r", pushed, remote)
    return pushed


@task(name="commit data version", **_TASK)
def commit_data_version(
    root: str, branch: str, message: str, landing: str, push: bool
) -> str | None:
    """Commit dvc.lock and the landed batches' `.dvc` files to `branch` without touching
    the working tree, and push the branch to origin; the commit, None if skipped."""
    logger = get_run_logger()
    reason = _dvc.git_skip_reason(Path(root))
    if reason is not None:
        logger.info("dvc.lock not committed: %s", reason)
        return None
    commit = _dvc.commit_data_version(Path(root), branch, message, landing)
    if commit is None:
        logger.info("dvc.lock not committed: %s holds this data version already", branch)
    else:
        logger.info("dvc.lock committed to %s as %s", branch, commit[:12])
    if push and _dvc.has_origin(Path(root)):
        _dvc.push_branch(Path(root), branch)
        logger.info("pushed %s to %s", branch, _dvc.ORIGIN)
    return commit


@task(name="champion moved", **_TASK)
def champion_moved(root: str, params: Params) -> str | None:
    """Why the gate must be computed again, or None: the registry's champion is not the
    version the gate compared against, nor the one this project's deploy promoted
    (another host's retraining, `driftline promote` or `rollback` moved it since)."""
    from pipeline.errors import DriftlineError
    from pipeline.registry import CHAMPION, alias_version

    base = Path(root)
    gate = _read_json(base / "reports/gate.json")
    if gate is None:
        return None  # evaluate has not run here yet: it will
    deployed = _read_json(base / "reports/deploy.json") or {}
    known = {gate.get("champion_version")}
    if deployed.get("action") == "promote":
        known.add(deployed.get("version"))
    try:
        found = alias_version(_rooted(params.mlflow, base), CHAMPION)
    except DriftlineError as exc:  # evaluate meets the same registry, and says so
        get_run_logger().warning("could not read the champion: %s", exc)
        return None
    current = str(found.version) if found is not None else None
    if current in known:
        return None
    compared = gate.get("champion_version")
    return (
        f"the champion is {f'v{current}' if current else 'gone'}; the gate compared with "
        f"{f'v{compared}' if compared else 'no champion'}"
    )


def _rooted(config: MlflowConfig, root: Path) -> MlflowConfig:
    """`config` with a relative SQLite store and artifact folder under `root` (the
    stages run there; this process may not)."""
    prefix = "sqlite:///"
    uri = config.tracking_uri
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(root / uri[len(prefix) :])
    artifacts = config.artifact_location
    if "://" not in artifacts and not Path(artifacts).is_absolute():
        artifacts = str(root / artifacts)
    return config.model_copy(update={"tracking_uri": uri, "artifact_location": artifacts})


# What the summary keeps of reports/gate.json: the verdict and the numbers behind it.
GATE_FIELDS = (
    "passed",
    "reason",
    "primary_metric",
    "candidate",
    "champion",
    "champion_version",
    "improvement",
    "min_improvement",
    "floors",
)


@task(name="read results", **_TASK)
def read_results(root: str) -> dict[str, Any]:
    """What the stages wrote: metrics/*.json, the gate, the deploy decision, and the
    champion as the last promotion record has it."""
    from pipeline.promotions import PROMOTIONS

    base = Path(root)
    metrics = {path.stem: _read_json(path) for path in sorted(base.glob("metrics/*.json"))}
    gate = _read_json(base / "reports/gate.json")
    deploy = _read_json(base / "reports/deploy.json")
    records = base / PROMOTIONS
    lines = records.read_text(encoding="utf-8").splitlines() if records.exists() else []
    last = json.loads(lines[-1]) if lines else deploy
    return {
        "metrics": metrics,
        "gate": {key: gate.get(key) for key in GATE_FIELDS} if gate else None,
        "deploy": (
            {key: deploy.get(key) for key in ("action", "version", "previous", "reason", "time")}
            if deploy
            else None
        ),
        "champion": _champion(last),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _champion(record: dict[str, Any] | None) -> str | None:
    """The champion after a promotion record: a refusal leaves the one before."""
    if not record:
        return None
    return record.get("previous") if record.get("action") == "refuse" else record.get("version")


def _summary(
    trigger: str, runs: list[_dvc.StageRun], failed: list[str], not_run: list[str]
) -> dict[str, Any]:
    return {
        "trigger": trigger,
        "ran": [run.stage for run in runs if run.status == "ran"],
        "skipped": [run.stage for run in runs if run.status == "skipped"],
        "failed": failed,
        "not_run": not_run,
        "stages": [asdict(run) for run in runs],
    }


@flow(name="training", flow_run_name="training-{trigger}")
def training_flow(
    project: str = ".",
    trigger: Trigger = "manual",
    params_file: str = "params.yaml",
    force: bool = False,
) -> State:
    """Run the DVC stages of `project` in order; push and record the data version.

    `trigger` is why the run started (recorded by deploy); `params_file` is where the
    `orchestrate` section is read; `force` re-runs every stage.
    """
    root = str(Path(project).resolve())
    params = read_settings(root, params_file)
    settings, landing = params.orchestrate, params.data.landing
    if settings.git_branch:
        restore_data_version.with_options(
            retries=settings.retries, retry_delay_seconds=settings.retry_delay_seconds
        )(root, settings.git_branch, landing)
    planned = plan(root)
    stages = planned.stages
    # A gate against a champion that has moved since is stale: evaluate and deploy again.
    moved = champion_moved(root, params)
    rejudge = {"evaluate", "deploy"} if moved else set()
    if moved:
        get_run_logger().info("%s: evaluate and deploy run again", moved)
    run_env = _dvc.stage_environment(trigger)
    runs: list[_dvc.StageRun] = []
    for position, stage in enumerate(stages):
        state = run_stage.with_options(
            name=stage,
            task_run_name=stage,
            retries=settings.retries,
            retry_delay_seconds=settings.retry_delay_seconds,
        )(
            root,
            stage,
            run_env,
            force or stage in rejudge,
            planned.remote is not None,
            return_state=True,
        )
        if not state.is_completed():
            error = state.result(raise_on_failure=False)
            summary = _summary(trigger, runs, [stage], stages[position + 1 :])
            # Nothing after the failed stage ran: its gate and decision are not this run's.
            results = read_results(root)
            summary.update(metrics=results["metrics"], champion=results["champion"])
            summary.update(gate=None, deploy=None, pushed=None, commit=None)
            transient = bool(getattr(error, "transient", False))
            publish_training(summary, error=str(error))
            raise TrainingFailed(
                f"{error}; ran: {', '.join(summary['ran']) or 'none'}; "
                f"not run: {', '.join(summary['not_run']) or 'none'}. The stages from "
                f"{stage!r} on keep their last good outputs and dvc.lock entries, and the "
                "next run starts there",
                summary,
                transient,
            )
        runs.append(state.result())
    summary = _summary(trigger, runs, [], [])
    summary.update(read_results(root))
    summary["champion_moved"] = moved
    if "deploy" not in summary["ran"]:
        summary["deploy"] = None  # reports/deploy.json is an earlier run's decision
    summary["pushed"] = (
        push_data.with_options(
            retries=settings.retries, retry_delay_seconds=settings.retry_delay_seconds
        )(root, planned.remote)
        if settings.push
        else None
    )
    summary["commit"] = (
        commit_data_version(
            root, settings.git_branch, _commit_message(summary), landing, settings.git_push
        )
        if settings.git_branch
        else None
    )
    get_run_logger().info(
        "ran: %s; skipped: %s; gate: %s; deploy: %s; champion: %s",
        ", ".join(summary["ran"]) or "none",
        ", ".join(summary["skipped"]) or "none",
        (summary["gate"] or {}).get("passed"),
        (summary["deploy"] or {}).get("action"),
        summary["champion"],
    )
    publish_training(summary)
    return training_state(summary)


def _commit_message(summary: dict[str, Any]) -> str:
    from prefect.runtime import flow_run

    deploy = summary.get("deploy") or {}
    return (
        f"dvc.lock: {summary['trigger']} training run {flow_run.get_name()}\n\n"
        f"ran: {', '.join(summary['ran']) or 'none'}\n"
        f"skipped: {', '.join(summary['skipped']) or 'none'}\n"
        f"deploy: {deploy.get('action')}; champion: {summary.get('champion')}\n"
    )


if __name__ == "__main__":
    print(json.dumps(training_flow(), indent=2, default=str))
