"""deploy, promote, rollback and status against a real MLflow registry."""

from __future__ import annotations

import json

import mlflow

from pipeline.config import load_params
from pipeline.promotions import read_records
from tests.conftest import Project
from tests.model.test_model_stages import read
from tests.unit.test_bad_input import assert_one_clear_line

SHIP = ("train", "tune", "evaluate", "compress", "deploy")


def train_with(project: Project, rounds: int) -> None:
    params = project.params()
    params["train"]["xgboost"]["n_estimators"] = rounds
    project.write_params(params)
    project.run_stages(*SHIP)


def versions(project: Project) -> int:
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    name = load_params(project.params_path).mlflow.registered_model
    return len(mlflow.MlflowClient().search_model_versions(f"name = '{name}'"))


def records(project: Project) -> list[dict]:
    return read_records(project.root / "reports/promotions.jsonl")


def ready_to_ship(project: Project) -> None:
    """Untuned, no floors and a quick compress, so each ship is fast."""
    params = project.params()
    params["tune"]["n_trials"] = 0
    params["evaluate"]["floors"] = {}
    params["compress"].update(latency_calls=20, latency_rows=500)
    project.write_params(params)


def test_the_champion_moves_only_through_the_gate_and_rolls_back(produced: Project) -> None:
    project = produced
    ready_to_ship(project)

    # The first model passes on the floors alone and becomes champion v1.
    train_with(project, 3)
    assert read(project, "reports/deploy.json")["action"] == "promote"
    assert records(project)[-1]["version"] == "1" and records(project)[-1]["previous"] is None

    # Nothing changed: deploy keeps the champion and says why.
    project.run_stages("deploy")
    kept = records(project)[-1]
    assert kept["action"] == "keep" and kept["version"] == "1"
    assert "already" in kept["reason"]
    refused = project.run("rollback")
    assert refused.exit_code == 1
    assert_one_clear_line(refused.stderr, "there is no previous champion to roll back to")

    # A better model passes the gate: champion v2, previous v1, with both metrics.
    train_with(project, 2000)
    promoted = records(project)[-1]
    assert (promoted["action"], promoted["version"], promoted["previous"]) == ("promote", "2", "1")
    assert promoted["trigger"] == "manual"
    assert promoted["metrics"]["rmse"] < promoted["champion_metrics"]["rmse"]

    # A worse one is refused: nothing registered, the champion stays, the numbers recorded.
    train_with(project, 3)
    refusal = records(project)[-1]
    assert refusal["action"] == "refuse" and refusal["version"] is None
    assert refusal["reason"].startswith("gate refused: does not beat the champion")
    assert refusal["metrics"]["rmse"] > refusal["champion_metrics"]["rmse"]
    assert versions(project) == 2

    status = project.run("status")
    assert "champion: v2" in status.stdout and "previous: v1" in status.stdout

    rolled = project.run("rollback", "--reason", "v2 misbehaves")
    assert rolled.exit_code == 0, rolled.stderr
    back = records(project)[-1]
    assert (back["action"], back["version"], back["previous"]) == ("rollback", "1", "2")
    assert back["reason"] == "v2 misbehaves"

    again = project.run("promote", "2", "--reason", "fixed upstream")
    assert again.exit_code == 0, again.stderr
    assert records(project)[-1]["version"] == "2"
    missing = project.run("promote", "99", "--reason", "typo")
    assert missing.exit_code == 1
    assert_one_clear_line(missing.stderr, "version 99 of 'driftline' is not in the registry")

    # The registry carries the audit trail too.
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    tags = mlflow.MlflowClient().get_model_version("driftline", "2").tags
    assert json.loads(tags["driftline.metrics"])["rmse"] == promoted["metrics"]["rmse"]
    assert any(key.startswith("driftline.promote.") for key in tags)
    assert len(tags["driftline.model_sha256"]) == 64


def test_a_gate_decided_against_another_champion_is_not_trusted(produced: Project) -> None:
    project = produced
    ready_to_ship(project)
    project.run_stages("train", "tune", "evaluate", "compress", "deploy")  # champion v1
    train_with(project, 50)  # a different model: evaluated against v1 ...
    # ... as if the champion had moved since evaluate ran:
    gate = read(project, "reports/gate.json")
    gate["champion_version"] = None
    (project.root / "reports/gate.json").write_text(json.dumps(gate))
    result = project.run("deploy")
    assert result.exit_code == 0
    record = records(project)[-1]
    assert record["action"] == "refuse"
    assert "re-run evaluate" in record["reason"]
