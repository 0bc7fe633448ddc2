"""A user's own data in one command: `driftline init FILE --target COLUMN`, then
`dvc repro` runs every stage with no other edit, starting from the repository's (bike)
params.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import FIXTURES, REPO, sliced_params
from tests.e2e.test_dvc_repro import STAGES, DvcProject

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("fixture", "target", "metric"),
    [("elec2_3000.csv", "class", "roc_auc"), ("bank_marketing_3000.csv", "y", "roc_auc")],
    ids=["elec2", "bank_marketing"],
)
def test_init_then_repro_runs_every_stage(
    tmp_path: Path, fixture: str, target: str, metric: str
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(
        REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "data" / "landing").mkdir(parents=True)
    (root / "data" / "external").mkdir()
    shutil.copy(FIXTURES / fixture, root / "data" / "external" / fixture)
    # The repository's params.yaml (the bike data's), with the suite's budgets.
    (root / "params.yaml").write_text(yaml.safe_dump(sliced_params(), sort_keys=False))
    project = DvcProject(root)
    project.dvc("init", "--no-scm", "-q")

    driftline = str(Path(sys.executable).parent / "driftline")
    init = subprocess.run(
        [driftline, "init", f"data/external/{fixture}", "--target", target],
        cwd=root,
        env=project.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    assert (root / "params.yaml.bak").exists()

    repro = project.dvc("repro")
    assert project.ran(repro.stdout) == set(STAGES)
    gate = json.loads((root / "reports" / "gate.json").read_text())
    assert gate["primary_metric"] == metric
    deployed = json.loads((root / "reports" / "deploy.json").read_text())
    assert deployed["action"] == "promote", deployed["reason"]
