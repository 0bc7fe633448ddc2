"""Shared test set-up: no network, nothing written to ~, real stage commands."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
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


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The repo's params.yaml pointed at a 2,000-row slice of the bike data, with its
    own MLflow store (so each test starts with an empty registry)."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    project = Project(root)
    params = project.params()
    params["data"]["source"] = str(FIXTURES / "bike_sharing_2000.csv")
    params["validate"]["min_rows"] = 100
    # A small search, so that tests of the model stages take seconds.
    params["tune"].update(n_trials=3, timeout=60)
    project.write_params(params)
    return project
