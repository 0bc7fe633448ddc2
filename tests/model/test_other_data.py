"""The model stages on other families and other data sets, switched by params alone."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import FIXTURES, REPO, Project
from tests.model.test_model_stages import MODEL_STAGES, read

EXAMPLES = REPO / "examples"


@pytest.mark.parametrize(
    ("family", "settings"),
    [
        ("torch", {"max_epochs": 15, "patience": 4}),
        ("sklearn", {"estimator": "forest", "n_estimators": 60}),
        ("sklearn", {"estimator": "linear"}),
    ],
)
def test_other_families_run_by_params(produced: Project, family: str, settings: dict) -> None:
    project = produced
    params = project.params()
    params["train"]["model"] = family
    params["train"][family].update(settings)
    params["tune"].update(n_trials=2)
    # The forest's trials grow as many trees as train's (the default space reaches 500).
    params["tune"]["search_space"]["sklearn"]["n_estimators"] = {"low": 20, "high": 60, "step": 20}
    params["evaluate"]["floors"] = {}
    project.write_params(params)
    project.run_stages(*MODEL_STAGES)
    assert read(project, "reports/train.json")["family"] == family
    assert read(project, "reports/tuning/summary.json")["trials"] == 2
    metrics = read(project, "metrics/evaluate.json")
    # 1,400 winter rows: enough to learn something, not to beat hour-of-week means.
    assert metrics["r2"] > 0.2, metrics


@pytest.mark.parametrize(
    ("example", "fixture", "positive"),
    [
        ("elec2.params.yaml", "elec2_3000.csv", "UP"),
        ("bank_marketing.params.yaml", "bank_marketing_3000.csv", "yes"),
    ],
)
def test_classification_data_sets_by_params(
    project: Project, example: str, fixture: str, positive: str
) -> None:
    params = yaml.safe_load((EXAMPLES / example).read_text())
    params["data"]["source"] = str(FIXTURES / fixture)
    params["validate"]["min_rows"] = 2500
    params["tune"].update(n_trials=3, timeout=None)
    project.write_params(params)
    project.run_data_stages()
    project.run_stages(*MODEL_STAGES)
    gate = read(project, "reports/gate.json")
    evaluation = read(project, "reports/evaluation.json")
    test = evaluation["test"]
    assert {"roc_auc", "pr_auc", "f1", "specificity", "brier", "log_loss"} <= set(test)
    assert test["roc_auc"] > 0.7
    assert gate["primary_metric"] == params["evaluate"]["primary_metric"]
    model = json.loads((project.root / "models/tuned/model.json").read_text())
    assert model["classes"][1] == positive and 0 < model["threshold"] < 1
    pngs = {path.name for path in (project.root / "plots/png").iterdir()}
    assert {"roc.png", "pr.png", "calibration.png", "confusion_matrix.png"} <= pngs
