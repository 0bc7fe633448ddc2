"""`dvc repro` of every stage in a fresh git project, on a slice of the real bike data,
then what re-runs which stage, and at the end `dvc exp run` in that project, which now
has a champion: an experiment never moves it.

One project for the whole file (its tests run in order): the cold pipeline is the
expensive part, and the experiment needs a project that has run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import FIXTURES, QUIET, REPO, sliced_params

pytestmark = pytest.mark.e2e

STAGES = ("ingest", "validate", "clean", "split", "train", "tune", "evaluate", "compress", "deploy")


class DvcProject:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            **QUIET,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            [str(Path(sys.executable).parent / "dvc"), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and completed.returncode != 0:
            raise AssertionError(
                f"dvc {' '.join(args)} failed:\n{completed.stdout}\n{completed.stderr}"
            )
        return completed

    def ran(self, output: str) -> set[str]:
        return {stage for stage in STAGES if f"Running stage '{stage}'" in output}

    def edit_params(self, section: str, key: str, value: object) -> None:
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        params[section][key] = value
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    def outputs(self) -> dict[str, bytes]:
        paths = [p for p in (self.root / "data").rglob("*.parquet") if "landing" not in p.parts]
        paths += [p for p in (self.root / "models").rglob("*") if p.is_file()]
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(paths)}


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> DvcProject:
    """A git + DVC project with a copy of the repo's pipeline, dvc.yaml and ignore files,
    its source a 2,000-row slice. Its first champion is a deliberately weak model (10
    trees, no search), so that the experiment's candidate at the end passes the gate."""
    root = tmp_path_factory.mktemp("dvc") / "project"
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
    return project


def test_repro_runs_every_stage(dvc_project: DvcProject) -> None:
    first = dvc_project.dvc("repro")
    assert dvc_project.ran(first.stdout) == set(STAGES)
    for part in ("train", "val", "test"):
        assert (dvc_project.root / f"data/split/{part}.parquet").exists()
    train = pd.read_parquet(dvc_project.root / "data/split/train.parquet")
    test = pd.read_parquet(dvc_project.root / "data/split/test.parquet")
    assert train["dteday"].max() < test["dteday"].min()
    assert {"casual", "registered"}.isdisjoint(train.columns)
    assert (dvc_project.root / "reports/validation/docs/index.html").exists()
    metrics = dvc_project.dvc("metrics", "show", "--json").stdout
    assert '"train_rows"' in metrics and '"critical_failures": 0' in metrics
    assert '"baseline_rmse"' in metrics and '"gate_passed": true' in metrics
    assert (dvc_project.root / "models/tuned/model.json").exists()
    assert (dvc_project.root / "models/compressed/model.onnx").exists()
    assert '"action": "promote"' in (dvc_project.root / "reports/deploy.json").read_text()
    assert (dvc_project.root / "plots/png/predicted_vs_actual.png").exists()
    shown = dvc_project.dvc("plots", "show", "-o", "dvc_plots")
    assert (dvc_project.root / "dvc_plots/index.html").exists(), shown.stderr


def test_second_repro_runs_nothing_and_status_is_clean(dvc_project: DvcProject) -> None:
    lock = (dvc_project.root / "dvc.lock").read_bytes()
    before = dvc_project.outputs()
    again = dvc_project.dvc("repro")
    # Deploy too: its candidate, gate and reference are the ones it registered.
    assert dvc_project.ran(again.stdout) == set()
    assert (dvc_project.root / "dvc.lock").read_bytes() == lock
    assert dvc_project.outputs() == before
    assert "up to date" in dvc_project.dvc("status").stdout
    records = (dvc_project.root / "reports/promotions.jsonl").read_text().splitlines()
    assert [json.loads(record)["action"] for record in records] == ["promote"]


def test_split_param_reruns_split_only(dvc_project: DvcProject) -> None:
    dvc_project.edit_params("split", "seed", 7)
    status = dvc_project.dvc("status").stdout
    assert "split:" in status and "ingest:" not in status and "clean:" not in status
    rerun = dvc_project.dvc("repro")
    # A time split does not use the seed, and on this slice the reference (at most 5,000
    # train rows) is every train row: split's outputs are byte-identical, so nothing after
    # it runs again, deploy included.
    assert dvc_project.ran(rerun.stdout) == {"split"}


def test_train_param_changes_the_model_stages_only(dvc_project: DvcProject) -> None:
    """A `train.*` param invalidates train and tune (both read it), nothing upstream; the
    stages after them re-run when their outputs change, which the evaluate case below
    shows by running. Set back, the lock matches again: nothing to run."""
    seed = yaml.safe_load((dvc_project.root / "params.yaml").read_text())["train"]["seed"]
    dvc_project.edit_params("train", "seed", seed + 1)
    status = dvc_project.dvc("status").stdout
    assert {"train:", "tune:"} <= set(status.split())
    assert "split:" not in status and "ingest:" not in status
    dvc_project.edit_params("train", "seed", seed)
    assert "up to date" in dvc_project.dvc("status").stdout


def test_evaluate_param_reruns_evaluate_only(dvc_project: DvcProject) -> None:
    dvc_project.edit_params("evaluate", "min_improvement", 0.02)
    rerun = dvc_project.dvc("repro")
    # The gate records the margin, so deploy (which reads it) runs again too; compress
    # takes its metric from params and does not.
    assert dvc_project.ran(rerun.stdout) == {"evaluate", "deploy"}


def test_bad_source_fails_and_keeps_every_output(dvc_project: DvcProject) -> None:
    before = dvc_project.outputs()
    dvc_project.edit_params("data", "source", str(dvc_project.root / "missing.csv"))
    failed = dvc_project.dvc("repro", check=False)
    assert failed.returncode != 0
    assert "missing.csv: no such file or folder" in failed.stderr + failed.stdout
    assert "Traceback" not in failed.stderr + failed.stdout
    assert dvc_project.outputs() == before
    # Back to the locked source: the failed run changed nothing, so nothing is left to do.
    dvc_project.edit_params("data", "source", str(FIXTURES / "bike_sharing_2000.csv"))
    assert dvc_project.ran(dvc_project.dvc("repro").stdout) == set()


def test_params_that_do_not_fit_the_data_stop_at_check(dvc_project: DvcProject) -> None:
    """The bike params pointed at ELEC2: dvc repro stops in its first stage, `check`,
    with one line naming every key to fix; no stage after it runs."""
    path = dvc_project.root / "params.yaml"
    good = path.read_text()
    before = dvc_project.outputs()
    dvc_project.edit_params("data", "source", str(FIXTURES / "elec2_3000.csv"))
    dvc_project.edit_params("data", "target", "class")
    try:
        failed = dvc_project.dvc("repro", check=False)
    finally:
        path.write_text(good)
    assert failed.returncode != 0
    assert "Running stage 'check'" in failed.stdout
    assert dvc_project.ran(failed.stdout) == set()
    (line,) = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    for key in ("data.key_columns", "data.schema.numeric", "evaluate.primary_metric"):
        assert key in line, key
    assert "Traceback" not in failed.stderr + failed.stdout
    assert dvc_project.outputs() == before
    assert dvc_project.ran(dvc_project.dvc("repro").stdout) == set()


def aliases(project: DvcProject) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=project.env["MLFLOW_TRACKING_URI"])
    found = client.get_registered_model("driftline").aliases
    return {alias: str(version) for alias, version in found.items()}


def test_an_experiment_registers_a_challenger_and_leaves_the_champion(
    dvc_project: DvcProject,
) -> None:
    """Last in the file: the project as the tests above left it (champion v1, every
    param back as it was but `evaluate.min_improvement`), committed."""
    assert aliases(dvc_project) == {"champion": "1"}
    promotions = dvc_project.root / "reports/promotions.jsonl"
    earlier = len(promotions.read_text().splitlines())
    git(dvc_project.root, "add", "-A")
    git(dvc_project.root, "commit", "-q", "-m", "v1")

    ran = dvc_project.dvc(
        "exp", "run", "-S", "train.seed=7", "-S", "train.xgboost.n_estimators=300"
    )
    assert "Running stage 'deploy'" in ran.stdout
    gate = json.loads((dvc_project.root / "reports/gate.json").read_text())
    assert gate["passed"], gate["reason"]  # it would have been promoted outside an experiment
    deployed = json.loads((dvc_project.root / "reports/deploy.json").read_text())
    assert deployed["action"] == "challenger"
    assert deployed["version"] == "2" and deployed["previous"] == "1"
    assert "the champion stays v1" in deployed["reason"]
    assert aliases(dvc_project) == {"champion": "1", "challenger": "2"}

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=dvc_project.env["MLFLOW_TRACKING_URI"])
    tags = client.get_model_version("driftline", "2").tags
    assert tags["driftline.experiment"]  # the experiment's name
    records = promotions.read_text().splitlines()[earlier:]
    assert [json.loads(line)["action"] for line in records] == ["challenger"]

    # Promoted by hand, the challenger is the champion and no longer a challenger.
    promoted = subprocess.run(
        [str(Path(sys.executable).parent / "driftline"), "promote", "2", "--reason", "won"],
        cwd=dvc_project.root,
        env=dvc_project.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert promoted.returncode == 0, promoted.stderr
    assert aliases(dvc_project) == {"champion": "2", "previous": "1"}
