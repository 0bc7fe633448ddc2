"""train -> tune -> evaluate through the real commands, with a real MLflow store and
registry in the test's folder, on a 2,000-row slice of the bike data."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest

from pipeline import registry, tracking
from pipeline.artifacts import folder_digest
from pipeline.config import load_params
from tests.conftest import Project

MODEL_STAGES = ("train", "tune", "evaluate")


def read(project: Project, relative: str) -> dict:
    return json.loads((project.root / relative).read_text())


def make_champion(project: Project) -> str:
    """Register the tuned model of the last run and point `champion` at it."""
    config = load_params(project.params_path).mlflow
    version = registry.register(config, read(project, "reports/runs/tune.json")["model_uri"])
    registry.set_alias(config, registry.CHAMPION, version)
    return version


def test_first_model_is_judged_on_the_floors_alone(trained: Project) -> None:
    gate = read(trained, "reports/gate.json")
    assert gate["passed"] and gate["reason"].startswith("no champion yet")
    assert gate["champion"] is None and gate["floors"]["r2"]["met"]
    metrics = read(trained, "metrics/evaluate.json")
    assert metrics["rmse"] < metrics["baseline_rmse"]
    assert {"rmse", "mae", "r2", "untuned_rmse", "gate_passed"} <= set(metrics)
    evaluation = read(trained, "reports/evaluation.json")
    assert {entry["feature"] for entry in evaluation["importance"]} >= {"hr", "temp"}
    assert set(evaluation["slices"]) == {"season", "weathersit", "workingday"}
    # SHAP beside permutation importance: xgboost's TreeSHAP on the margin, every feature.
    shap = evaluation["shap"]
    assert shap["method"] == "tree_shap" and shap["rows"] > 0
    ranked = [entry["mean_abs_shap"] for entry in shap["mean_abs_shap"]]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] > 0
    assert {entry["feature"] for entry in shap["mean_abs_shap"]} == {
        entry["feature"] for entry in evaluation["importance"]
    }
    pngs = {path.name for path in (trained.root / "plots/png").iterdir()}
    assert pngs == {
        "predicted_vs_actual.png",
        "residuals_over_time.png",
        "importance.png",
        "shap_summary.png",
    }
    assert (trained.root / "plots/predictions.csv").exists()


def test_runs_hold_params_metrics_model_and_provenance(trained: Project) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{trained.root / 'mlflow.db'}")
    tuning = read(trained, "reports/tuning/summary.json")
    # The versioned reports name no run: later stages find it by the model folder's hash.
    assert not {"run_id", "model_uri", "seconds"} & set(tuning)
    assert not {"run_id", "model_uri", "seconds"} & set(read(trained, "reports/train.json"))
    config = load_params(trained.params_path).mlflow
    experiment_id = tracking.start_tracking(config)
    run_id = tracking.model_run(config, experiment_id, "tune", trained.root / "models/tuned")
    record = read(trained, "reports/runs/tune.json")  # the record for people agrees
    assert record["run_id"] == run_id and record["seconds"] > 0
    run = mlflow.get_run(run_id)
    assert run.data.tags["driftline.model_sha256"] == folder_digest(trained.root / "models/tuned")
    assert "tune_seconds" in run.data.metrics
    train_id = tracking.model_run(config, experiment_id, "train", trained.root / "models/candidate")
    assert train_id == read(trained, "reports/runs/train.json")["run_id"]
    assert run.data.params["train.model"] == "xgboost"
    assert "best.learning_rate" in run.data.params
    assert {"val_rmse", "test_rmse", "baseline_rmse", "untuned_rmse"} <= set(run.data.metrics)
    tags = run.data.tags
    assert tags["driftline.gate"] == "passed"
    assert len(tags["driftline.data_version"]) == 16
    assert "driftline.dvc_lock_sha256" in tags
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"evaluation", "tuning", "model.json"} <= artifacts
    trials = mlflow.search_runs(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
    )
    assert len(trials) == tuning["trials"] == 3
    # The logged model takes raw columns and predicts through MLflow's own loader.
    test = pd.read_parquet(trained.root / "data/split/test.parquet").head(4)
    predicted = mlflow.pyfunc.load_model(record["model_uri"]).predict(test)
    assert len(predicted) == 4


def test_gate_refuses_a_worse_candidate_then_passes_a_better_one(trained: Project) -> None:
    good = make_champion(trained)
    trained.update("tune", n_trials=0)
    trained.update("evaluate", floors={})  # the champion alone decides here
    params = trained.params()
    params["train"]["xgboost"].update(n_estimators=3, learning_rate=0.05)
    trained.write_params(params)
    trained.run_stages(*MODEL_STAGES)
    refused = read(trained, "reports/gate.json")
    assert not refused["passed"]
    assert refused["champion_version"] == good
    assert refused["reason"].startswith("does not beat the champion by enough")
    assert refused["improvement"] < 0
    assert read(trained, "metrics/evaluate.json")["gate_passed"] is False

    # The weak model becomes the champion; the usual params beat it.
    make_champion(trained)
    params["train"]["xgboost"].update(n_estimators=2000)
    trained.write_params(params)
    trained.run_stages(*MODEL_STAGES)
    passed = read(trained, "reports/gate.json")
    assert passed["passed"] and passed["reason"].startswith("beats the champion")
    assert passed["improvement"] > 0.01


def test_a_floor_refuses_the_first_model(trained: Project) -> None:
    trained.update("evaluate", floors={"r2": 0.999})
    result = trained.run("evaluate")
    assert result.exit_code == 0
    gate = read(trained, "reports/gate.json")
    assert not gate["passed"] and gate["reason"].startswith("fails the floor: r2")


def test_tuning_on_a_tiny_budget_shares_its_study(trained: Project) -> None:
    summary = read(trained, "reports/tuning/summary.json")
    assert summary["trials"] == 3 and summary["complete"] + summary["pruned"] == 3
    # The first trial is train's own params with the loss train measured (nothing is
    # fitted twice); the tuned model is train's unless another trial beat it by the margin.
    train_report = read(trained, "reports/train.json")
    assert summary["default_val_loss"] == pytest.approx(
        train_report["selection"]["objective"]["loss"]
    )
    assert summary["scored_on"] == "rolling-origin folds"
    candidate, tuned = trained.root / "models/candidate", trained.root / "models/tuned"
    if summary["kept"] == "train":
        assert (tuned / "booster.ubj").read_bytes() == (candidate / "booster.ubj").read_bytes()
        assert summary["val"] == train_report["val"]
    else:
        assert summary["best_val_loss"] < summary["default_val_loss"] * 0.99
        assert (
            json.loads((tuned / "model.json").read_text())["params"]["learning_rate"]
            == (summary["best_params"]["learning_rate"])
        )
    trials = pd.read_csv(trained.root / "reports/tuning/trials.csv")
    assert len(trials) == 3 and "params_learning_rate" in trials

    # n_trials is the study's total: a re-run adds nothing and refits the same model.
    assert trained.run("tune").exit_code == 0
    storage = f"sqlite:///{trained.root / 'optuna.db'}"
    assert len(optuna.load_study(study_name=summary["study"], storage=storage).trials) == 3
    assert read(trained, "reports/tuning/summary.json")["best_params"] == summary["best_params"]

    # A worker on the same storage works towards a larger budget and writes no outputs.
    trained.update("tune", n_trials=5)
    before = trained.snapshot()
    worker = trained.run("tune", "--search-only")
    assert worker.exit_code == 0, worker.stderr
    assert len(optuna.load_study(study_name=summary["study"], storage=storage).trials) == 5
    assert trained.snapshot() == before


def test_train_param_changes_reach_the_model(trained: Project) -> None:
    booster = trained.root / "models/candidate/booster.ubj"
    test = pd.read_parquet(trained.root / "data/split/test.parquet")
    from pipeline.models import load_model

    before_bytes = booster.read_bytes()
    before = load_model(trained.root / "models/candidate").predict(test)
    trained.update("train", seed=7)  # row and column sampling draw differently
    trained.run_stages("train")
    assert booster.read_bytes() != before_bytes
    after = load_model(trained.root / "models/candidate").predict(test)
    assert not np.allclose(after, before)
