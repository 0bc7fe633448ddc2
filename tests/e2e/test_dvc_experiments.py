"""`dvc exp run` in a git project with a champion: an experiment never moves it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, sliced_params
from tests.e2e.test_dvc_repro import DvcProject

pytestmark = pytest.mark.e2e


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def aliases(project: DvcProject) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=project.env["MLFLOW_TRACKING_URI"])
    found = client.get_registered_model("driftline").aliases
    return {alias: str(version) for alias, version in found.items()}


@pytest.fixture(scope="module")
def git_project(tmp_path_factory: pytest.TempPathFactory) -> DvcProject:
    """A git + DVC project whose champion v1 is a deliberately weak model (10 trees), so
    an experiment's candidate passes the gate against it."""
    root = tmp_path_factory.mktemp("exp") / "project"
    root.mkdir()
    shutil.copytree(
        REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / "data" / "landing").mkdir(parents=True)
    (root / "data" / "landing" / ".gitkeep").touch()
    params = sliced_params()
    params["tune"]["n_trials"] = 0
    params["train"]["objective"] = "squared_error"
    params["train"]["xgboost"]["n_estimators"] = 10
    params["evaluate"]["floors"] = {}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "test@driftline.invalid")
    git(root, "config", "user.name", "Driftline test")
    project = DvcProject(root)
    project.dvc("init", "-q")
    project.dvc("config", "core.analytics", "false")
    project.dvc("repro")
    assert aliases(project) == {"champion": "1"}
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "v1")
    return project


def test_an_experiment_registers_a_challenger_and_leaves_the_champion(
    git_project: DvcProject,
) -> None:
    ran = git_project.dvc(
        "exp", "run", "-S", "train.seed=7", "-S", "train.xgboost.n_estimators=300"
    )
    assert "Running stage 'deploy'" in ran.stdout
    gate = json.loads((git_project.root / "reports/gate.json").read_text())
    assert gate["passed"], gate["reason"]  # it would have been promoted outside an experiment
    deployed = json.loads((git_project.root / "reports/deploy.json").read_text())
    assert deployed["action"] == "challenger"
    assert deployed["version"] == "2" and deployed["previous"] == "1"
    assert "the champion stays v1" in deployed["reason"]
    assert aliases(git_project) == {"champion": "1", "challenger": "2"}

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=git_project.env["MLFLOW_TRACKING_URI"])
    tags = client.get_model_version("driftline", "2").tags
    assert tags["driftline.experiment"]  # the experiment's name
    records = (git_project.root / "reports/promotions.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in records] == ["promote", "challenger"]

    # Promoted by hand, the challenger is the champion and no longer a challenger.
    promoted = subprocess.run(
        [str(Path(sys.executable).parent / "driftline"), "promote", "2", "--reason", "won"],
        cwd=git_project.root,
        env=git_project.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert promoted.returncode == 0, promoted.stderr
    assert aliases(git_project) == {"champion": "2", "previous": "1"}
