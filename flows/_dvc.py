"""DVC and git plumbing for the training flow: run one stage, push, commit `dvc.lock`.

Stages run through DVC's Python API in the flow's own process, so a flow pays for
importing DVC once, not once per stage (a `dvc repro -s <stage>` subprocess costs
about 0.5 s before it does anything; `Repo.reproduce` about 0.07 s). DVC still runs
each stage's command as a subprocess, so the stage's exit code is what classifies a
failure:

- exit 75 (`pipeline.errors.TransientError`: a tracking server that is down, I/O
  that timed out) is transient and worth a retry;
- DVC's own I/O errors (an `OSError` other than a missing or forbidden path), files
  that failed to transfer to or from the remote, and DVC's repo lock being held by
  another process are transient too;
- anything else (exit 1 or 2 from a stage: bad data, bad params, a bug; a missing
  dependency) is permanent: a retry would fail the same way.

Nothing here imports DVC at module level; the functions do, when they run.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import TransientError
from pipeline.secrets import redact

# OSErrors that say something about the project, not about the moment: retrying a
# missing file or a forbidden path fails the same way.
PERMANENT_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
DVC_YAML = "dvc.yaml"
STDERR_TAIL = 30  # lines of a failed stage's stderr kept for the run's log
# Log records printed by this process (Prefect's and DVC's console handlers), as
# opposed to what a stage's command wrote.
_LOG_RECORD = re.compile(r"^(\d\d:\d\d:\d\d[.,]\d+ \| |(ERROR|WARNING|INFO|DEBUG): )")
_EXIT_STATUS = re.compile(r"exited with (-?\d+)")
# DVC's log templates for the two ways a changed stage can complete.
_RUNNING = "Running stage '%s'"
_RESTORED = "Stage '%s' is cached"
# Where DVC logs its advice to stage `dvc.lock` with git ("To track the changes with
# git, run: git add dvc.lock", "To enable auto staging, run: ..."), and its reminder to
# push: advice for a person at a terminal, wrong in a flow, which commits and pushes
# itself (or was told not to).
GIT_HINTS_LOGGER = "dvc.repo.scm_context"
PUSH_HINT = "Use `dvc push` to send your updates"


class StageFailed(Exception):
    """A stage that did not complete; `transient` says whether a retry may help, and
    `output` holds the end of what the stage wrote to stderr."""

    def __init__(
        self,
        stage: str,
        reason: str,
        exit_code: int | None = None,
        transient: bool = False,
        output: str = "",
    ) -> None:
        self.stage = stage
        self.reason = reason
        self.exit_code = exit_code
        self.transient = transient
        self.output = output
        kind = "transient, retried" if transient else "not retried: fix the cause and re-run"
        super().__init__(f"stage {stage!r} failed: {reason} ({kind})")

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect pickles a failed task's exception; keep every field through it.
        fields = (self.stage, self.reason, self.exit_code, self.transient, self.output)
        return (type(self), fields)


class PushFailed(Exception):
    """A transfer to or from the remote (`dvc push`, `dvc pull`) did not complete;
    `transient` says whether a retry may help."""

    def __init__(self, reason: str, transient: bool, action: str = "dvc push") -> None:
        self.reason = reason
        self.transient = transient
        self.action = action
        super().__init__(f"{action} failed: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.transient, self.action))


@dataclass(frozen=True)
class Failure:
    """What went wrong in a DVC call, and whether trying again can help."""

    reason: str
    exit_code: int | None
    transient: bool


@dataclass(frozen=True)
class StageRun:
    """One stage's outcome. `skipped` covers both ways DVC serves a stage without
    running its command: unchanged, or restored from the run cache."""

    stage: str
    status: Literal["ran", "skipped"]
    reason: str
    seconds: float


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException) -> Failure:
    """Transient or permanent, from the stage's exit code or DVC's own exception."""
    from dvc.exceptions import FileTransferError
    from dvc.lock import LockError
    from dvc.stage.exceptions import StageCmdFailedError

    for cause in _causes(exc):
        if isinstance(cause, StageCmdFailedError):
            # DVC keeps the exit status only in its message: "..., exited with 75".
            found = _EXIT_STATUS.search(str(cause))
            code = int(found.group(1)) if found else None
            return Failure(
                f"its command exited with {code}" if code is not None else str(cause),
                code,
                code == TransientError.exit_code,
            )
        if isinstance(cause, LockError):
            return Failure(f"the DVC repo is locked: {cause}", None, True)
        if isinstance(cause, FileTransferError):  # files failed to download or upload
            return Failure(str(cause), None, True)
        if isinstance(cause, OSError):
            transient = not isinstance(cause, PERMANENT_OS_ERRORS)
            return Failure(f"{type(cause).__name__}: {cause}", None, transient)
    return Failure(_first_line(exc), None, False)


def _first_line(exc: BaseException) -> str:
    lines = [str(cause).strip() for cause in _causes(exc) if str(cause).strip()]
    return "; ".join(dict.fromkeys(lines)) or type(exc).__name__


@contextmanager
def _open(root: Path) -> Iterator[Any]:
    """DVC's Repo at `root`, with `root` as the working directory meanwhile: parts of
    DVC resolve paths from the cwd (the run cache writes `dvc.yaml` relative to it), as
    they do when `dvc` runs from a shell in the project."""
    from dvc.repo import Repo

    with chdir(root), Repo(str(root), config=remote_override()) as repo:
        yield repo


# A machine that runs against the services names the DVC remote here (an S3 URL, its
# endpoint and keys in AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...): it replaces the default
# remote of `.dvc/config` for the flow's pulls and pushes, and nothing is written.
REMOTE_VARIABLE = "DRIFTLINE_DVC_REMOTE"
REMOTE_NAME = "driftline"


def remote_override() -> dict[str, Any] | None:
    url = os.environ.get(REMOTE_VARIABLE)
    if not url:
        return None
    return {"core": {"remote": REMOTE_NAME}, "remote": {REMOTE_NAME: {"url": url}}}


@dataclass(frozen=True)
class Plan:
    """What a run will do: the stages in order, and the default remote (or None)."""

    stages: list[str]
    remote: str | None


def plan(root: Path) -> Plan:
    """The stages with a command in the project's dvc.yaml files, upstream first, in
    file order where the graph leaves a choice, and the default DVC remote. A stage of
    `root/dvc.yaml` is named as in the file (`train`); one of another dvc.yaml by its
    path too (`sub/dvc.yaml:x`)."""
    import networkx as nx

    with _open(root) as repo:
        stages = [stage for stage in repo.index.stages if getattr(stage, "cmd", None)]
        position = {stage: index for index, stage in enumerate(stages)}
        # DVC's graph points from a stage to the stages it depends on.
        graph = repo.index.graph.subgraph(stages).reverse(copy=True)
        ordered = nx.lexicographical_topological_sort(graph, key=position.__getitem__)
        names = []
        for stage in ordered:
            dvcfile = Path(stage.dvcfile.path).relative_to(repo.root_dir)
            names.append(stage.name if dvcfile == Path(DVC_YAML) else f"{dvcfile}:{stage.name}")
        return Plan(names, repo.config["core"].get("remote"))


def stage_target(root: Path, stage: str) -> str:
    """An absolute DVC target for a stage name: DVC resolves targets from the cwd."""
    dvcfile, _, name = stage.rpartition(":")
    return f"{root / (dvcfile or DVC_YAML)}:{name}"


class WithoutHints(logging.Filter):
    """Drops DVC's git and push hints, and the blank lines DVC logs to space its console
    output: none of them belongs in a flow run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == GIT_HINTS_LOGGER and record.levelno <= logging.INFO:
            return False
        message = record.getMessage()
        return bool(message.strip()) and PUSH_HINT not in message


@contextmanager
def _dvc_log(extra: logging.Handler | None) -> Iterator[dict[str, bool]]:
    """Watch DVC's log for one stage: whether the command ran or the run cache served
    it (DVC says so only in its log). `extra` gets DVC's records meanwhile, without its
    hints (`WithoutHints`); the hints logger keeps them from every other handler too,
    Prefect's own when PREFECT_LOGGING_EXTRA_LOGGERS names dvc."""
    seen = {"ran": False, "restored": False}

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            template = str(record.msg)
            seen["ran"] |= template.startswith(_RUNNING)
            seen["restored"] |= template.startswith(_RESTORED)

    dvc_logger, hints = logging.getLogger("dvc"), logging.getLogger(GIT_HINTS_LOGGER)
    without_hints = WithoutHints()
    handlers = [Watch(level=logging.INFO), *([extra] if extra is not None else [])]
    if extra is not None:
        extra.addFilter(without_hints)
    hints.addFilter(without_hints)
    for handler in handlers:
        dvc_logger.addHandler(handler)
    try:
        yield seen
    finally:
        for handler in handlers:
            dvc_logger.removeHandler(handler)
        hints.removeFilter(without_hints)
        if extra is not None:
            extra.removeFilter(without_hints)


@contextmanager
def _stderr_kept() -> Iterator[list[str]]:
    """Keep a copy of what is written to stderr meanwhile, the stage command's included
    (it inherits file descriptor 2), so a failure can say what the stage said. The text
    reaches the real stderr when the block ends; the list holds its lines by then."""
    lines: list[str] = []
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep
        yield lines
        return
    with tempfile.TemporaryFile() as copy:
        os.dup2(copy.fileno(), 2)
        try:
            yield lines
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            copy.seek(0)
            text = copy.read()
            with open(2, "wb", closefd=False) as stderr:
                stderr.write(text)
            lines.extend(text.decode(errors="replace").splitlines())


def _error_line(lines: list[str]) -> str | None:
    """The line that says what went wrong: a Driftline `error:`/`critical:` line, else
    the last line that is not a log record (a traceback's exception line)."""
    said = [line.strip() for line in lines if line.strip() and not _LOG_RECORD.match(line)]
    errors = [line for line in said if line.startswith(("error:", "critical:"))]
    found = errors[-1] if errors else (said[-1] if said else None)
    return found[:500] if found else None


def stage_environment(trigger: str) -> dict[str, str]:
    """What a stage's command sees on top of this process's environment: why the run
    started, and this interpreter's `python` first on PATH (dvc.yaml runs `python`)."""
    interpreter_bin = str(Path(sys.executable).parent)
    return {
        "DRIFTLINE_TRIGGER": trigger,
        "PATH": os.pathsep.join([interpreter_bin, os.environ.get("PATH", "")]),
    }


def reproduce_stage(
    root: Path,
    stage: str,
    run_env: dict[str, str],
    force: bool = False,
    pull: bool = False,
    log_handler: logging.Handler | None = None,
) -> StageRun:
    """`dvc repro --single-item <stage>`, in process; DVC's log records also go to
    `log_handler`. Raises `StageFailed`.

    With `pull`, a stage that is unchanged but whose outputs are missing (a fresh
    worker's checkout) gets them from the default remote instead of running again.
    """
    import time

    started = time.perf_counter()
    stderr: list[str] = []
    try:
        with _open(root) as repo, _dvc_log(log_handler) as seen, _stderr_kept() as stderr:
            done = repo.reproduce(
                targets=[stage_target(root, stage)],
                single_item=True,
                force=force,
                pull=pull,
                run_env=run_env,
            )
    except Exception as exc:
        failure = classify(exc)
        said = _error_line(stderr)
        reason = f"{failure.reason}: {said}" if said else failure.reason
        said_lines = [line for line in stderr if not _LOG_RECORD.match(line)]
        output = "\n".join(said_lines[-STDERR_TAIL:])
        raise StageFailed(stage, reason, failure.exit_code, failure.transient, output) from exc
    seconds = round(time.perf_counter() - started, 3)
    if not done:
        return StageRun(stage, "skipped", "unchanged", seconds)
    if seen["restored"] and not seen["ran"]:
        return StageRun(stage, "skipped", "restored from the run cache", seconds)
    return StageRun(stage, "ran", "changed" if not force else "forced", seconds)


def push(root: Path) -> int:
    """`dvc push` to the default remote; the number of files sent. Raises `PushFailed`."""
    from dvc.config import ConfigError

    try:
        with _open(root) as repo:
            return int(repo.push() or 0)
    except Exception as exc:
        failure = classify(exc)
        # A bad remote configuration stays bad; a failed transfer may not.
        transient = failure.transient or not any(
            isinstance(cause, ConfigError) for cause in _causes(exc)
        )
        # The remote's URL (DRIFTLINE_DVC_REMOTE) may carry a secret: not in the reason.
        reason = redact(failure.reason, os.environ.get(REMOTE_VARIABLE))
        raise PushFailed(reason, transient) from exc


def track(root: Path, path: Path) -> Path:
    """`dvc add` one file (a landed batch), so that it is part of the data version:
    pushed with the run's outputs and restored by `dvc pull`; its `.dvc` file."""
    with _open(root) as repo:
        repo.add([str(path)])
    return path.with_name(path.name + ".dvc")


def pull(root: Path, targets: list[str]) -> None:
    """Fetch and check out from the default remote what `targets` name: a stage (its
    outputs as `dvc.lock` records them, see `stage_target`) or a `.dvc` file."""
    if not targets:
        return
    try:
        with _open(root) as repo:
            repo.pull(targets=targets)
    except Exception as exc:
        failure = classify(exc)
        raise PushFailed(failure.reason, failure.transient, "dvc pull") from exc


# --- git ------------------------------------------------------------------------------


class GitError(Exception):
    """A git command failed; the message holds its stderr."""


def _git(
    root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        ["git", *args],
        cwd=root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if check and completed.returncode != 0:
        raise GitError(f"git {' '.join(args)}: {completed.stderr.strip()}")
    return completed


def _identity(root: Path) -> dict[str, str]:
    """A committer for machines that have none configured (a fresh worker container)."""
    if _git(root, "var", "GIT_COMMITTER_IDENT", check=False).returncode == 0:
        return {}
    return {
        "GIT_AUTHOR_NAME": "Driftline",
        "GIT_AUTHOR_EMAIL": "driftline@localhost",
        "GIT_COMMITTER_NAME": "Driftline",
        "GIT_COMMITTER_EMAIL": "driftline@localhost",
    }


def git_skip_reason(root: Path, need_lock: bool = True) -> str | None:
    """Why `dvc.lock` cannot be committed here (or, without `need_lock`, why git cannot
    be used here at all), or None when it can."""
    if shutil.which("git") is None:
        return "git is not installed"
    inside = _git(root, "rev-parse", "--is-inside-work-tree", check=False)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return f"{root} is not in a git repository"
    if _git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0:
        return "the repository has no commit yet to start from"
    if need_lock and not (root / "dvc.lock").exists():
        return "there is no dvc.lock"
    return None


def version_files(root: Path, landing: str) -> list[Path]:
    """What git holds of a data version: `dvc.lock`, and the landing folder's `.dvc`
    files with what keeps that folder in git (`.gitignore`, `.gitkeep`)."""
    folder = root / landing
    kept = sorted(
        path
        for path in (folder.glob("*") if folder.is_dir() else [])
        if path.is_file() and (path.suffix == ".dvc" or path.name in (".gitignore", ".gitkeep"))
    )
    return [root / "dvc.lock", *kept]


def commit_data_version(root: Path, branch: str, message: str, landing: str) -> str | None:
    """Commit this data version onto `branch`; the new commit, or None when the branch
    holds it already.

    The commit's tree is the code that ran (HEAD's tree) with `dvc.lock` and the landing
    folder's `.dvc` files as they are now, so `git clone -b <branch>` + `dvc pull`
    gives a checkout that `dvc status` finds up to date. Its parents are the branch's
    previous version and, when it is not already in that history, HEAD: the branch is
    the history of data versions, and each says which code made it. Plumbing only
    (hash-object, a temporary index, commit-tree, update-ref), so the working tree,
    index and checked-out branch are never touched; when `branch` is the one checked
    out, the index entries of those files are refreshed so `git status` stays clean.
    No hooks run: this is a record, not a code change.
    """
    prefix = _git(root, "rev-parse", "--show-prefix").stdout.strip()
    ref = f"refs/heads/{branch}"
    if _git(root, "check-ref-format", ref, check=False).returncode != 0:
        raise GitError(f"orchestrate.git_branch {branch!r} is not a valid branch name")
    tip = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    old = tip.stdout.strip() if tip.returncode == 0 else None
    head = _git(root, "rev-parse", "HEAD").stdout.strip()
    files = version_files(root, landing)
    paths = [f"{prefix}{file.relative_to(root).as_posix()}" for file in files]
    with tempfile.TemporaryDirectory() as scratch:
        index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        _git(root, "read-tree", head, env=index)
        # The landing folder is exactly what is there now: a rejected batch's entry goes.
        folder = f"{prefix}{landing.strip('/')}"
        _git(root, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", folder, env=index)
        for file, path in zip(files, paths, strict=True):
            blob = _git(root, "hash-object", "-w", "--", str(file)).stdout.strip()
            _git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=index)
        tree = _git(root, "write-tree", env=index).stdout.strip()
    base = old or head
    if tree == _git(root, "rev-parse", f"{base}^{{tree}}").stdout.strip():
        if old is None:  # a new branch, and HEAD holds this version already
            _git(root, "update-ref", "-m", "driftline: data version", ref, head, "")
        return None
    parents = ["-p", base]
    if old is not None and not _is_ancestor(root, head, old):
        parents += ["-p", head]
    commit = _git(
        root, "commit-tree", tree, *parents, "-m", message, env=_identity(root)
    ).stdout.strip()
    # Compare-and-swap: fails rather than overwrite a commit made meanwhile.
    _git(root, "update-ref", "-m", "driftline: data version", ref, commit, old or "")
    checked_out = _git(root, "symbolic-ref", "--quiet", "HEAD", check=False).stdout.strip()
    if checked_out == ref:
        _git(root, "reset", "--quiet", "--", *paths)
    return commit


def _is_ancestor(root: Path, commit: str, of: str) -> bool:
    return _git(root, "merge-base", "--is-ancestor", commit, of, check=False).returncode == 0


ORIGIN = "origin"


def has_origin(root: Path) -> bool:
    return _git(root, "remote", "get-url", ORIGIN, check=False).returncode == 0


def push_branch(root: Path, branch: str) -> None:
    """Push `branch` to origin; a push that is refused (someone else pushed a version
    meanwhile) or cannot connect is a GitError."""
    _git(root, "push", "--quiet", ORIGIN, f"refs/heads/{branch}:refs/heads/{branch}")


def restore_data_version(root: Path, branch: str, landing: str) -> str | None:
    """In a fresh checkout of the code (a worker's clone), start from the newest data
    version: fetch `branch` from origin and take its `dvc.lock` and landing `.dvc` files.
    The commit restored, or None when there is nothing to restore (no origin, no such
    branch there, the branch exists here already, or dvc.lock was changed here)."""
    ref = f"refs/heads/{branch}"
    if not has_origin(root):
        return None
    if _git(root, "rev-parse", "--verify", "--quiet", ref, check=False).returncode == 0:
        return None  # this checkout keeps its own versions
    if _git(root, "diff", "--quiet", "HEAD", "--", "dvc.lock", check=False).returncode != 0:
        return None  # never overwrite a lock someone changed here
    fetched = _git(root, "fetch", "--quiet", ORIGIN, f"+{ref}:{ref}", check=False)
    if fetched.returncode != 0:
        if "couldn't find remote ref" in fetched.stderr:
            return None  # the first version: the branch starts with this run
        raise GitError(f"git fetch {ORIGIN} {branch}: {fetched.stderr.strip()}")
    folder = landing.strip("/")
    listed = _git(root, "ls-tree", "-r", "--name-only", ref, "--", folder).stdout.split()
    _git(root, "checkout", ref, "--", "dvc.lock", *listed)
    _git(root, "reset", "--quiet", "--", "dvc.lock", *listed)  # the index stays HEAD's
    return _git(root, "rev-parse", ref).stdout.strip()
