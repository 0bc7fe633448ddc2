"""`train.model: ensemble`: the combiner, the out-of-fold folds, the refit, save/load, the
ONNX graph, the config's one-line errors, and the whole pipeline through serving on
the bike slice and on ELEC2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from pipeline.config import Schema, TrainConfig, parse_params
from pipeline.errors import ConfigError
from pipeline.models import fit_model, load_model, refit_model
from pipeline.models.ensemble_model import (
    EnsembleLearner,
    combiner_loss,
    fit_blend,
    oof_folds,
    stack_inputs,
)
from pipeline.onnx_model import OnnxModel, export_onnx
from pipeline.schema import DatasetSpec
from tests.conftest import FIXTURES, REPO, Project
from tests.model.test_model_stages import read

SMALL = {
    "xgboost": {"n_estimators": 40, "early_stopping_rounds": 10, "n_jobs": 1},
    "torch": {"max_epochs": 4, "patience": 2, "hidden_sizes": [16], "batch_size": 128},
    "sklearn": {"estimator": "forest", "n_estimators": 15},
}


def frame(task: str, rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Rows in time order: a numeric signal, a noisy column and a category."""
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=rows), rng.normal(size=rows)
    colour = rng.choice(["red", "blue", "green"], size=rows)
    signal = x + 0.5 * z + (colour == "red") + 0.3 * rng.normal(size=rows)
    if task == "regression":
        target: Any = signal * 10 + 50
    elif task == "binary":
        target = np.where(signal > 0.3, "yes", "no")
    else:
        target = np.where(signal > 1, "high", np.where(signal > -0.5, "mid", "low"))
    data = pd.DataFrame({"x": x, "z": z, "colour": colour, "y": target})
    data.loc[::9, "x"] = np.nan
    return data


def spec_for(task: str) -> DatasetSpec:
    categorical: dict[str, dict] = {"colour": {}}
    if task != "regression":
        categorical["y"] = {}
    return DatasetSpec(target="y", task=task, schema=Schema(categorical=categorical))


def ensemble_config(members: list[str], method: str = "blend", order: str = "time") -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": "ensemble",
            "objective": "squared_error",
            "calibration": "none",
            "ensemble": {"members": members, "method": method, "folds": 3, "order": order},
            **SMALL,
        }
    )


def fitted(task: str, members: list[str], method: str = "blend", order: str = "time"):
    train, val = frame(task, seed=1), frame(task, rows=200, seed=2)
    config = ensemble_config(members, method, order)
    return fit_model(train, val, spec_for(task), config), train, val, config


# --- the combiner and the folds ------------------------------------------------------------


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_blend_weights_are_a_mixture_no_worse_than_the_best_member(task: str) -> None:
    rng = np.random.default_rng(0)
    rows = 300
    if task == "regression":
        y = rng.normal(size=rows) * 5
        outputs = [y + rng.normal(size=rows) * s for s in (1.0, 2.0, 4.0)]
    else:
        k = 2 if task == "binary" else 3
        y = rng.integers(0, k, size=rows)
        outputs = []
        for noise in (0.5, 1.0, 3.0):
            logits = np.eye(k)[y] * 2 + rng.normal(size=(rows, k)) * noise
            outputs.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
    combiner = fit_blend(task, outputs, y)
    weights = np.asarray(combiner.weights)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
    blended = combiner_loss(task, y, combiner.combine(outputs))
    assert blended <= min(combiner_loss(task, y, out) for out in outputs) + 1e-12


def test_the_stack_does_not_see_float32_noise_on_a_zero_probability() -> None:
    """A forest's ONNX graph gives ~1e-6 where the native forest gives 0: the stack's
    inputs must not tell them apart (they did at a clip of 1e-7, by 3e-3 on ELEC2)."""
    exact = stack_inputs("binary", [np.array([[0.0, 1.0], [1.0, 0.0]])])
    noisy = stack_inputs("binary", [np.array([[7.7e-7, 1 - 7.7e-7], [1 - 7.7e-7, 7.7e-7]])])
    np.testing.assert_allclose(noisy, exact, atol=1e-2)


def test_a_useless_member_gets_no_weight_over_a_perfect_one() -> None:
    y = np.linspace(0, 1, 100)
    combiner = fit_blend("regression", [y.copy(), np.zeros(100)], y)
    assert combiner.weights == pytest.approx([1.0, 0.0], abs=1e-6)


@pytest.mark.parametrize("order", ["time", "shuffled"])
@pytest.mark.parametrize("task", ["regression", "binary"])
def test_oof_folds_score_each_row_once_and_never_a_fitted_one(order: str, task: str) -> None:
    y = np.arange(300) % 2 if task == "binary" else np.arange(300, dtype=float)
    folds = oof_folds(y, task, 3, order, seed=7)
    scored = np.concatenate([fold.score for fold in folds])
    assert len(scored) == len(set(scored))  # each row scored at most once
    for fold in folds:
        assert not set(fold.fit) & set(fold.score)
        if order == "time":  # expanding window: fitted only on earlier rows
            assert fold.fit.max() < fold.score.min() and fold.fit.min() == 0
    if order == "shuffled":
        assert sorted(scored) == list(range(300))
    else:
        assert scored.min() == 75 and scored.max() == 299  # block 0 of 4 is never scored
    assert [f.score.tolist() for f in oof_folds(y, task, 3, order, seed=7)] == [
        f.score.tolist() for f in folds
    ]


@pytest.mark.parametrize("order", ["time", "shuffled"])
def test_a_fold_fits_at_most_selection_rows(order: str) -> None:
    """On a large table each out-of-fold fit takes `train.selection_rows` rows: the newest
    before its block in time order, else a seeded sample of its own rows."""
    y = np.arange(3000, dtype=float)
    whole = oof_folds(y, "regression", 3, order, seed=7)
    capped = oof_folds(y, "regression", 3, order, seed=7, max_rows=500)
    for full, fold in zip(whole, capped, strict=True):
        assert len(fold.fit) == min(500, len(full.fit))
        assert set(fold.fit) <= set(full.fit) and fold.score.tolist() == full.score.tolist()
        if order == "time":
            assert fold.fit.max() == full.fit.max()  # the newest rows before the block
    again = oof_folds(y, "regression", 3, order, seed=7, max_rows=500)
    assert [f.fit.tolist() for f in again] == [f.fit.tolist() for f in capped]


def test_train_selection_rows_reaches_the_out_of_fold_fits() -> None:
    train, val = frame("regression", rows=2400, seed=1), frame("regression", rows=200, seed=2)
    config = ensemble_config(["xgboost", "sklearn"]).model_copy(update={"selection_rows": 1000})
    model = fit_model(train, val, spec_for("regression"), config)
    # Time-ordered blocks of 600: the folds fit 600, 1,200 and 1,800 rows, capped at 1,000.
    assert model.selection["ensemble"]["fold_fit_rows"] == 1000
    assert model.params["selection_rows"] == 1000


def test_too_many_folds_for_the_rows_is_one_clear_line() -> None:
    with pytest.raises(Exception, match=r"train\.ensemble\.folds"):
        oof_folds(np.arange(50, dtype=float), "regression", 5, "time", seed=0)


@pytest.mark.parametrize("order", ["time", "shuffled"])
def test_members_in_folds_never_fit_or_stop_on_the_rows_they_score(
    order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every member fitted inside a fold gets no validation rows, and every row it
    predicts is one it was not fitted on."""
    fits: list[dict[str, Any]] = []
    original = EnsembleLearner._new_member

    def recording(self: EnsembleLearner, family: str):
        member = original(self, family)
        record: dict[str, Any] = {"family": family, "scored": set()}
        fit, predict = member.fit, member.predict_raw

        def fit_recorded(data, on_step=None, steps=None):
            record.update(fitted=set(data.x_train.index), stopped=set(data.x_val.index))
            record["steps"] = steps
            return fit(data, on_step=on_step, steps=steps)

        def predict_recorded(prepared):
            record["scored"] |= set(prepared.index)
            return predict(prepared)

        member.fit, member.predict_raw = fit_recorded, predict_recorded  # type: ignore[method-assign]
        fits.append(record)
        return member

    monkeypatch.setattr(EnsembleLearner, "_new_member", recording)
    model, *_ = fitted("regression", ["xgboost", "sklearn"], order=order)
    in_folds = [record for record in fits if record["steps"] is not None]
    assert len(in_folds) == 2 * 3
    for record in in_folds:
        assert record["stopped"] == set()
        assert record["scored"] and not record["scored"] & record["fitted"]
        if order == "time":  # and only on earlier rows
            assert max(record["fitted"]) < min(record["scored"])
    steps = model.selection["ensemble"]["steps"]
    assert {r["family"]: r["steps"] for r in in_folds} == steps  # the early-stopped counts


# --- the fitted ensemble --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "members", "method"),
    [
        ("regression", ["xgboost", "torch"], "blend"),
        ("regression", ["xgboost", "sklearn", "torch"], "stack"),
        ("binary", ["xgboost", "torch", "sklearn"], "blend"),
        ("binary", ["sklearn", "torch"], "stack"),
        ("multiclass", ["xgboost", "torch"], "stack"),
    ],
)
def test_refit_save_load_and_onnx_agree(
    task: str, members: list[str], method: str, tmp_path: Path
) -> None:
    model, train, val, config = fitted(task, members, method)
    summary = model.selection["ensemble"]
    assert summary["method"] == method and set(summary["steps"]) == set(members)
    if method == "blend":
        weights = np.asarray(model.learner.combiner.weights)
        assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
        oof = summary["oof_loss"]
        assert oof["ensemble"] <= min(oof[m] for m in members) + 1e-6
    if task != "regression":
        assert model.predict_raw(val).sum(axis=1) == pytest.approx(np.ones(len(val)))

    refitted = refit_model(model, train, val, spec_for(task), config)
    assert refitted.learner.combiner == model.learner.combiner
    assert refitted.report.refit_rows == len(train) + len(val)
    if "xgboost" in members:  # refitted for exactly the rounds early stopping kept
        booster = refitted.learner.members["xgboost"].booster
        assert booster.num_boosted_rounds() == summary["steps"]["xgboost"]

    refitted.save(tmp_path / "model")
    assert (tmp_path / "model/ensemble.json").exists()
    assert {p.name for p in (tmp_path / "model/members").iterdir()} == set(members)
    loaded = load_model(tmp_path / "model")
    native = refitted.predict_raw(val)
    np.testing.assert_array_equal(loaded.predict_raw(val), native)

    served = OnnxModel.from_model(loaded, export_onnx(loaded)).predict_raw(val)
    scale = np.abs(native).max()
    assert np.abs(served - native).max() <= 1e-4 * scale


def test_calibration_and_threshold_apply_to_the_ensemble_in_onnx_too() -> None:
    train, val = frame("binary", seed=1), frame("binary", rows=200, seed=2)
    config = ensemble_config(["xgboost", "sklearn"]).model_copy(update={"calibration": "sigmoid"})
    model = fit_model(train, val, spec_for("binary"), config)
    assert model.calibrator is not None and model.threshold is not None
    served = OnnxModel.from_model(model, export_onnx(model))
    np.testing.assert_allclose(served.predict_raw(val), model.predict_raw(val), atol=1e-5)
    assert list(served.predict(val)) == list(model.predict(val))


def test_tuned_member_params_reach_the_member() -> None:
    train, val = frame("regression", seed=1), frame("regression", rows=200, seed=2)
    config = ensemble_config(["xgboost", "torch"])
    model = fit_model(
        train, val, spec_for("regression"), config, {"xgboost.max_depth": 2, "torch.lr": 0.01}
    )
    assert model.params["xgboost"]["max_depth"] == 2 and model.params["torch"]["lr"] == 0.01
    assert model.learner.members["xgboost"].config["max_depth"] == 2
    assert config.xgboost.max_depth == 6  # the config itself is untouched


# --- params ---------------------------------------------------------------------------------


def repo_params(**train: Any) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(train)
    return params


@pytest.mark.parametrize(
    ("ensemble", "message"),
    [
        ({"members": ["xgboost"]}, "train.ensemble: members: needs at least two families"),
        ({"members": ["xgboost", "lgbm"]}, "train.ensemble: members: unknown family 'lgbm'"),
        ({"members": ["xgboost", "ensemble"]}, "train.ensemble: members: an ensemble cannot"),
        ({"members": ["torch", "torch"]}, "train.ensemble: members: a family is listed twice"),
        ({"method": "vote"}, "train.ensemble.method"),
        ({"folds": 1}, "train.ensemble.folds"),
        ({"stakc_alpha": 1}, "train.ensemble.stakc_alpha: unknown key"),
    ],
)
def test_bad_ensemble_params_name_the_key(ensemble: dict, message: str) -> None:
    params = repo_params(model="ensemble", ensemble=ensemble)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_params(params)


def test_an_objective_a_member_cannot_fit_is_refused() -> None:
    params = repo_params(
        model="ensemble", objective="tweedie", ensemble={"members": ["xgboost", "torch"]}
    )
    with pytest.raises(ConfigError, match="every ensemble member"):
        parse_params(params)


def test_search_space_ensemble_is_refused_and_torch_members_keep_one_job() -> None:
    params = repo_params(model="ensemble")
    params["tune"]["search_space"]["ensemble"] = {"xgboost.max_depth": {"low": 2, "high": 4}}
    with pytest.raises(ConfigError, match=r"search_space\.ensemble: an ensemble searches"):
        parse_params(params)
    params = repo_params(model="ensemble")
    params["tune"]["n_jobs"] = 2
    with pytest.raises(ConfigError, match="torch cannot share"):
        parse_params(params)


def test_the_repo_params_describe_a_valid_ensemble() -> None:
    params = parse_params(repo_params(model="ensemble"))
    assert params.train.ensemble.members == ["xgboost", "torch"]
    recorded = params.train.recorded()["ensemble"]
    assert recorded["xgboost"] == params.train.xgboost.model_dump(mode="json")


# --- the pipeline, through serving ---------------------------------------------------------


def small_ensemble(params: dict) -> dict:
    params["train"].update(model="ensemble", selection_folds=0)
    params["train"]["ensemble"] = {"members": ["xgboost", "torch"], "method": "blend", "folds": 2}
    for family, settings in SMALL.items():
        params["train"].setdefault(family, {}).update(settings)
    params["tune"].update(n_trials=2, timeout=None)
    params["tune"]["search_space"] = {
        "xgboost": {"max_depth": {"low": 2, "high": 6}},
        "torch": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}},
    }
    params["evaluate"]["floors"] = {}
    params["compress"].update(latency_calls=10, latency_rows=100)
    return params


def serve_and_check(project: Project) -> None:
    """/predict gives the deployed ensemble's native predictions; /explain adds up."""
    from pipeline.serving import create_app, load_served_model

    deployed = read(project, "reports/deploy.json")
    assert deployed["action"] == "promote" and deployed["version"] == "1"
    assert "Family: ensemble" in (project.root / "reports/model_card.md").read_text()
    compression = read(project, "reports/compression.json")
    assert compression["served"] == "onnx" and not compression["quantized"]

    root = project.root / "models"
    served = load_served_model(root / "compressed", "1")
    native = load_model(root / "tuned")
    test = pd.read_parquet(project.root / "data/split/test.parquet").head(20)
    records = []
    for row in test.drop(columns=[native.spec_target]).to_dict(orient="records"):
        records.append(
            {
                key: value.strftime("%Y-%m-%d") if isinstance(value, pd.Timestamp) else value
                for key, value in row.items()
                if not (isinstance(value, float) and np.isnan(value))
            }
        )
    client = TestClient(create_app(lambda: served))
    answer = client.post("/predict", json={"records": records})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    expected = native.predict_raw(test)
    if native.task == "regression":
        got = np.array([item["prediction"] for item in predictions])
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    else:
        positive = native.classes[1]
        got = np.array([item["probabilities"][str(positive)] for item in predictions])
        np.testing.assert_allclose(got, expected[:, 1], atol=1e-4)
        assert [item["prediction"] for item in predictions] == list(native.predict(test))
    explained = client.post("/explain?top=1000", json={"records": records[:2]})
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["method"] == "permutation"
    for item in body["explanations"]:
        total = item["base_value"] + sum(c["contribution"] for c in item["contributions"])
        assert total + item.get("rest", 0.0) == pytest.approx(item["output"], rel=1e-3, abs=1e-3)


STAGES = ("train", "tune", "evaluate", "compress", "deploy")


def check_reports(project: Project, members: list[str]) -> None:
    train = read(project, "reports/train.json")
    assert train["family"] == "ensemble"
    summary = train["selection"]["ensemble"]
    assert summary["order"] == "time"  # both data sets are split in time order
    assert set(summary["oof_loss"]) == {*members, "ensemble"}
    assert summary["oof_loss"]["ensemble"] <= min(summary["oof_loss"][m] for m in members) + 1e-6
    tuning = read(project, "reports/tuning/summary.json")
    assert tuning["family"] == "ensemble" and tuning["trials"] == 2
    assert tuning["study"].startswith("driftline-ensemble-")
    # train's params were trial 0 at train's own loss: tune recognised train's ensemble.
    assert tuning["default_val_loss"] == pytest.approx(train["selection"]["objective"]["loss"])
    evaluation = read(project, "reports/evaluation.json")
    assert evaluation["shap"]["rows"] > 0 and evaluation["importance"]


def test_bike_ensemble_runs_through_deploy_and_serving(produced: Project) -> None:
    project = produced
    project.write_params(small_ensemble(project.params()))
    project.run_stages(*STAGES)
    check_reports(project, ["xgboost", "torch"])
    assert read(project, "metrics/evaluate.json")["r2"] > 0.2
    serve_and_check(project)


def test_elec2_ensemble_runs_through_deploy_and_serving(project: Project) -> None:
    params = yaml.safe_load((REPO / "examples/elec2.params.yaml").read_text())
    params["data"]["source"] = str(FIXTURES / "elec2_3000.csv")
    params["validate"]["min_rows"] = 2500
    project.write_params(small_ensemble(params))
    project.run_data_stages()
    project.run_stages(*STAGES)
    check_reports(project, ["xgboost", "torch"])
    assert read(project, "reports/evaluation.json")["test"]["roc_auc"] > 0.7
    serve_and_check(project)
    model = json.loads((project.root / "models/compressed/model.json").read_text())
    assert model["family"] == "ensemble" and model["params"]["members"] == ["xgboost", "torch"]
