"""Shared test set-up: no network, nothing written to ~, real stage commands."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from filelock import FileLock
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
QUIET = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "GX_ANALYTICS_ENABLED": "false",
}


# One thread per process for the numeric libraries: tests run side by side (pytest-xdist),
# and OpenMP threads that spin on a busy core make a fit many times slower, not faster.
ONE_THREAD = {
    name: "1"
    for name in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    )
}


CACHES = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module imports a library: one thread each (OpenMP reads these
    once), and the caches libraries keep under ~ (matplotlib's fonts, onnxruntime's
    device id) in a folder of this process's own, so that tests leave nothing in ~."""
    for name, value in ONE_THREAD.items():
        os.environ.setdefault(name, value)
    caches = Path(tempfile.mkdtemp(prefix="driftline-test-caches-"))
    config.stash[CACHES] = caches
    os.environ["XDG_CACHE_HOME"] = str(caches / "cache")
    os.environ["XDG_CONFIG_HOME"] = str(caches / "config")
    os.environ["MPLCONFIGDIR"] = str(caches / "matplotlib")
    # Importing a flow module at collection creates Prefect's home: not ~/.prefect. The
    # session fixture below then gives the tests their own.
    os.environ["PREFECT_HOME"] = str(caches / "prefect")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(config.stash.get(CACHES, ""), ignore_errors=True)


# The longest files first (pytest --durations), so that pytest-xdist, which hands out
# whole files in collection order, starts them at once and fills the other worker with
# the short ones: the longest first is what keeps the wall time near the CPU time / 2.
LONGEST_FIRST = (
    "tests/multihost/test_loop_across_hosts.py",
    "tests/flows/test_drift_loop.py",
    "tests/flows/test_training_flow.py",
    "tests/e2e/test_dvc_repro.py",
    "tests/e2e/test_init_then_repro.py",
    "tests/multihost/test_tuning_across_hosts.py",
    "tests/flows/test_flow_logic.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}

    def position(item: pytest.Item) -> int:
        return rank.get(Path(item.path).relative_to(REPO).as_posix(), len(rank))

    items.sort(key=position)  # stable: the order within a file and among the rest stays


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Telemetry off; Prefect and MLflow state in a temporary folder, never in ~."""
    home = tmp_path_factory.mktemp("state")
    os.environ.update(QUIET)
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None


@dataclass
class Project:
    """A temporary working directory with its own params.yaml, as a user has."""

    root: Path

    @property
    def tracking_uri(self) -> str:
        """The project's own MLflow store."""
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def store_url(self) -> str:
        """The prediction store (params' default, `sqlite:///data/production.db`, which
        the project's processes resolve in its folder), as this process reaches it."""
        return f"sqlite:///{self.root / 'data/production.db'}"

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    def params(self) -> dict:
        return yaml.safe_load(self.params_path.read_text())

    def write_params(self, params: dict) -> None:
        self.params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    def update(self, section: str, **values: object) -> None:
        params = self.params()
        params.setdefault(section, {}).update(values)
        self.write_params(params)

    def run(self, *args: str) -> CommandResult:
        """Run `driftline <args>` in this project, the way the console script does."""
        from pipeline.cli import app

        cwd = os.getcwd()
        os.chdir(self.root)
        try:
            result = CliRunner().invoke(app, list(args))
        finally:
            os.chdir(cwd)
        return CommandResult(result.exit_code, result.stdout, result.stderr, result.exception)

    def run_data_stages(self) -> None:
        self.run_stages("ingest", "validate", "clean", "split")

    def run_stages(self, *stages: str) -> None:
        for stage in stages:
            result = self.run(stage)
            assert result.exit_code == 0, f"{stage} failed: {result.stderr}"

    def snapshot(self) -> dict[str, str]:
        """SHA-256 of every output file, to prove a failed run changed nothing."""
        digests = {}
        for folder in ("data", "reports", "metrics", "models", "plots"):
            base = self.root / folder
            if base.exists():
                for path in sorted(base.rglob("*")):
                    if path.is_file():
                        relative = str(path.relative_to(self.root))
                        digests[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        return digests


def sliced_params(source: Path = FIXTURES / "bike_sharing_2000.csv") -> dict[str, Any]:
    """The repo's params.yaml on a small slice of real data, sized for tests: a search of
    3 trials (a budget in trials, never in seconds), one xgboost thread, a quick
    compress."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(source)
    params["data"]["until"] = None  # the slices end in 2011: nothing to hold out
    params["validate"]["min_rows"] = 100
    params["tune"].update(n_trials=3, timeout=None)
    params["train"]["xgboost"]["n_jobs"] = 1
    params["compress"].update(latency_calls=20, latency_rows=500)
    return params


def new_project(root: Path) -> Project:
    root.mkdir(parents=True)
    project = Project(root)
    project.write_params(sliced_params())
    return project


def copy_project(template: Project, root: Path) -> Project:
    """A copy of `template` at `root` that shares nothing with it: the MLflow store's
    absolute paths (artifact locations, model sources) are rewritten to the copy's.

    MLflow keeps each run's artifact store by run id for the whole process, and a copy's
    runs have the template's ids: that cache is emptied, or an artifact logged to a
    copy's run would land in a template another test copies next."""
    from mlflow.tracking._tracking_service import utils

    shutil.copytree(template.root, root, symlinks=True)
    utils._artifact_repos_cache.clear()
    store = root / "mlflow.db"
    if store.exists():
        _rewrite_paths(store, str(template.root), str(root))
    return Project(root)


def _rewrite_paths(database: Path, old: str, new: str) -> None:
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        tables = [
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            columns = connection.execute(f'PRAGMA table_info("{table}")').fetchall()
            for column in (
                c[1] for c in columns if "CHAR" in c[2].upper() or "TEXT" in c[2].upper()
            ):
                connection.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE "{column}" LIKE ?',
                    (old, new, f"%{old}%"),
                )


@contextlib.contextmanager
def tracking_in(project: Project) -> Iterator[None]:
    """MLFLOW_TRACKING_URI at the project's own store while the block runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)
        yield


def shared_template(
    factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Project]
) -> Project:
    """A template project built once per test session, by whichever pytest-xdist worker
    asks first (the others wait on the lock and then copy it, read-only)."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    root, done = base / f"template-{name}", base / f"template-{name}.done"
    with FileLock(str(base / f"template-{name}.lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed half-way
            build(root)
            done.touch()
    return Project(root)


def _build_data(root: Path) -> Project:
    project = new_project(root)
    with tracking_in(project):
        project.run_data_stages()
    return project


@pytest.fixture(scope="session")
def data_template(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The four data stages run once per session (Great Expectations included)."""
    return shared_template(tmp_path_factory, "data", _build_data)


@pytest.fixture(scope="session")
def trained_template(data_template: Project, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """train, tune (3 trials) and evaluate, once per session, with the MLflow runs."""

    def build(root: Path) -> Project:
        project = copy_project(data_template, root)
        with tracking_in(project):
            project.run_stages("train", "tune", "evaluate")
        return project

    return shared_template(tmp_path_factory, "trained", build)


@pytest.fixture(scope="session")
def shipped_template(
    trained_template: Project, tmp_path_factory: pytest.TempPathFactory
) -> Project:
    """compress and deploy too: version 1 registered as the champion."""

    def build(root: Path) -> Project:
        project = copy_project(trained_template, root)
        with tracking_in(project):
            project.run_stages("compress", "deploy")
        return project

    return shared_template(tmp_path_factory, "shipped", build)


def _use(project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)
    return project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The repo's params.yaml pointed at a 2,000-row slice of the bike data, with its
    own MLflow store (so each test starts with an empty registry); nothing run yet."""
    return _use(new_project(tmp_path / "project"), monkeypatch)


@pytest.fixture
def produced(data_template: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A project whose data stages all ran once on good data (a copy of the template)."""
    return _use(copy_project(data_template, tmp_path / "produced"), monkeypatch)


@pytest.fixture
def trained(trained_template: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A project after ingest -> evaluate, with its own MLflow store and empty registry."""
    return _use(copy_project(trained_template, tmp_path / "trained"), monkeypatch)


@pytest.fixture
def shipped(shipped_template: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A project after all nine stages: champion version 1 in its own registry."""
    return _use(copy_project(shipped_template, tmp_path / "shipped"), monkeypatch)


# --- PostgreSQL -------------------------------------------------------------------------


def postgres_url() -> str:
    """The test database; skipped only outside CI when nothing listens."""
    import sqlalchemy

    url = os.environ.get(
        "DRIFTLINE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
    )
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    return url


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL of the test database whose tables land in a schema of the caller's own,
    dropped afterwards, so that its tables meet nobody else's."""
    import sqlalchemy

    base = postgres_url()
    schema = f"driftline_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(base)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
