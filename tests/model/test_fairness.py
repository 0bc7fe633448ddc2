"""The fairness audit and gate on the bank marketing slice: per-group metrics with
bootstrap intervals, a deliberately biased candidate refused with its group named, a
fair one passed, and bad params refused before any work."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from typer.testing import CliRunner

from pipeline import preflight
from pipeline.cli import app
from pipeline.config import FairnessConfig, load_params, parse_params
from pipeline.errors import ConfigError, DataError
from pipeline.fairness import FairnessAudit, audit, binary_metrics, fairness_plot, group_labels
from pipeline.metrics import classification_metrics
from pipeline.models import TabularModel, fit_model
from pipeline.schema import resolve_spec
from pipeline.scoring import Scored, score
from pipeline.stages.evaluate import gate
from tests.conftest import FIXTURES, REPO

EXAMPLE = REPO / "examples" / "bank_marketing.params.yaml"
BANK = FIXTURES / "bank_marketing_3000.csv"
AGE_BANDS = [25.0, 35.0, 50.0, 65.0]
# evaluate's defaults: 200 resamples, 95% intervals, groups of 30 rows or more.
AUDIT = FairnessConfig(sensitive_columns=["age", "marital"], bands={"age": AGE_BANDS})
BOUNDS = {"roc_auc": 0.2, "selection_rate": 0.2}


def bank_model() -> tuple[TabularModel, pd.DataFrame]:
    """The bank example's xgboost, small, fitted on half the slice, and its test third
    (about 900 rows, so the middle age bands hold a few hundred each)."""
    params = load_params(EXAMPLE)
    frame = pd.read_csv(BANK, sep=";").drop(columns=["duration"])
    spec = resolve_spec(frame, params.data)
    rest, test = train_test_split(frame, test_size=0.3, stratify=frame["y"], random_state=0)
    train, val = train_test_split(rest, test_size=0.25, stratify=rest["y"], random_state=0)
    small = params.train.xgboost.model_copy(update={"n_estimators": 200})
    model = fit_model(train, val, spec, params.train.model_copy(update={"xgboost": small}))
    return model, test.reset_index(drop=True)


@pytest.fixture(scope="module")
def bank() -> tuple[object, pd.DataFrame, Scored]:
    """`bank_model`, scored on its test third."""
    model, test = bank_model()
    return model, test, score(model, test, model.spec_target)


@pytest.fixture(scope="module")
def fair(bank: tuple[object, pd.DataFrame, Scored]) -> FairnessAudit:
    _, test, scored = bank
    return audit(scored, test, "binary", AUDIT.model_copy(update={"max_gap": BOUNDS}), 42)


def biased(model: object, test: pd.DataFrame, scored: Scored, band: str) -> Scored:
    """The same model with its scores reversed for one age band: it ranks that group's
    clients backwards, while the other groups see the model as it was."""
    rows = (group_labels(test["age"], AGE_BANDS, "age") == band).to_numpy()
    raw = scored.raw.copy()
    raw[rows] = raw[rows][:, ::-1]
    return replace(scored, raw=raw, predicted_codes=model.decide_codes(raw))


def test_age_bands_cover_every_age_and_missing_is_its_own_group() -> None:
    ages = pd.Series([18, 24.9, 25, 34, 35, 64, 65, 95, None])
    labels = group_labels(ages, AGE_BANDS, "age").tolist()
    assert labels == ["<25", "<25", "25-35", "25-35", "35-50", "50-65", ">=65", ">=65", "missing"]


def test_per_group_metrics_come_with_intervals(bank, fair: FairnessAudit) -> None:
    _, test, scored = bank
    report = fair.to_dict()
    json.dumps(report, allow_nan=False)  # valid JSON for every reader
    assert report["sensitive_columns"] == ["age", "marital"]
    ages = {entry["group"]: entry for entry in report["groups"]["age"]}
    assert {"25-35", "35-50", "50-65"} <= set(ages)
    assert sum(entry["rows"] for entry in report["groups"]["age"]) == len(test)
    for entry in report["groups"]["age"] + report["groups"]["marital"]:
        if entry.get("too_few_rows"):
            assert entry["rows"] < AUDIT.min_group_rows and entry["roc_auc"]["low"] is None
            continue
        for name in ("roc_auc", "pr_auc", "recall", "brier", "selection_rate"):
            value = entry[name]
            assert value["low"] <= value["high"], (entry["group"], name)
            assert value["high"] - value["low"] > 0  # resampled, not a copy of the value
    # The group's metric is the model's on that group's rows, nothing else.
    married = (test["marital"] == "married").to_numpy()
    expected = roc_auc_score(scored.codes[married], scored.raw[married, 1])
    married_entry = next(e for e in report["groups"]["marital"] if e["group"] == "married")
    assert married_entry["roc_auc"]["value"] == pytest.approx(expected)
    gap = fair.gaps["roc_auc"]
    assert gap.gap == pytest.approx(gap.highest - gap.lowest)
    assert gap.low <= gap.high


def test_the_audit_is_seeded(bank) -> None:
    _, test, scored = bank
    config = FairnessConfig(sensitive_columns=["marital"], resamples=10)
    first, again = (audit(scored, test, "binary", config, seed) for seed in (42, 42))
    assert again.to_dict() == first.to_dict()
    other = audit(scored, test, "binary", config, 7).to_dict()
    assert other["groups"]["marital"] != first.to_dict()["groups"]["marital"]


def test_a_fair_candidate_passes_the_gate(bank, fair: FairnessAudit) -> None:
    _, _, scored = bank
    decision = gate(scored.metrics, None, "pr_auc", 0.01, {"roc_auc": 0.6}, fairness=fair)
    assert decision.passed, decision.reason
    assert decision.to_dict()["fairness"]["roc_auc"]["max_gap"] == 0.2


def test_a_biased_candidate_is_refused_with_its_group_named(bank) -> None:
    model, test, scored = bank
    unfair = biased(model, test, scored, "35-50")
    config = AUDIT.model_copy(update={"max_gap": BOUNDS})
    result = audit(unfair, test, "binary", config, 42)
    decision = gate(unfair.metrics, None, "pr_auc", 0.01, {}, fairness=result)
    assert not decision.passed
    assert decision.reason.startswith("fails the fairness gap: roc_auc gap")
    assert "age=35-50" in decision.reason
    assert "evaluate.fairness.max_gap.roc_auc 0.2" in decision.reason
    assert result.gaps["roc_auc"].lowest_group == "35-50"
    assert result.gaps["roc_auc"].low > 0.2
    # Without a bound the same gap is reported and decides nothing.
    gaps = {name: replace(gap, max_gap=None) for name, gap in result.gaps.items()}
    unbounded = replace(result, gaps=gaps)
    assert gate(unfair.metrics, None, "pr_auc", 0.01, {}, fairness=unbounded).passed


def test_a_gap_within_the_noise_does_not_refuse(bank, fair: FairnessAudit) -> None:
    """A bound under the measured gap, but inside its interval: noise could explain it."""
    _, _, scored = bank
    gap = fair.gaps["roc_auc"]
    assert gap.low < gap.gap
    bound = (gap.low + gap.gap) / 2
    noisy = replace(fair, gaps={"roc_auc": replace(gap, max_gap=bound)})
    assert gate(scored.metrics, None, "pr_auc", 0.01, {}, fairness=noisy).passed
    beyond = replace(fair, gaps={"roc_auc": replace(gap, max_gap=gap.low * 0.9)})
    assert not gate(scored.metrics, None, "pr_auc", 0.01, {}, fairness=beyond).passed


def test_a_regression_compares_mean_predictions() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"region": rng.choice(["north", "south"], 600), "y": rng.normal(size=600)})
    predicted = frame["y"].to_numpy() + np.where(frame["region"] == "south", 2.0, 0.0)
    scored = Scored({}, predicted, predicted, frame["y"].to_numpy())
    config = FairnessConfig(sensitive_columns=["region"], max_gap={"rmse": 0.5}, resamples=20)
    result = audit(scored, frame, "regression", config, 0)
    assert result.gaps["mean_prediction"].highest_group == "south"
    assert result.failures()[0].startswith("rmse gap")


def _bank_params(**fairness: object) -> dict:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["data"]["source"] = str(BANK)
    raw["evaluate"]["fairness"] = {**raw["evaluate"]["fairness"], **fairness}
    return raw


@pytest.mark.parametrize(
    ("fairness", "says"),
    [
        (
            {"sensitive_columns": ["age", "gender"]},
            "evaluate.fairness.sensitive_columns: gender not in the data",
        ),
        (
            {"sensitive_columns": ["age", "marital"], "bands": {}},
            "evaluate.fairness.bands: age numeric, so it needs band edges",
        ),
        ({"max_gap": {"rmse": 0.1}}, "evaluate.fairness.max_gap: rmse not compared for a binary"),
    ],
)
def test_bad_fairness_params_are_refused_by_check_params(fairness: dict, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        preflight.check(parse_params(_bank_params(**fairness)))
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("fairness", "says"),
    [
        ({"bands": {"balance": [0, 1000]}}, "bands: balance not in sensitive_columns"),
        ({"bands": {"age": [35, 25]}}, "bands.age: edges must be increasing"),
        ({"max_gap": {"roc_auc": -0.1}}, "max_gap: roc_auc must be >= 0"),
        ({"max_gap": {"fairness": 0.1}}, "max_gap"),
    ],
)
def test_bad_fairness_values_are_refused_with_their_key(fairness: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.fairness") as caught:
        parse_params(_bank_params(**fairness))
    assert says in str(caught.value)


def test_check_params_refuses_a_missing_sensitive_column_in_one_line(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_bank_params(sensitive_columns=["gender"], bands={})))
    result = CliRunner().invoke(app, ["check-params", "--params", str(params)])
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(
        "error: evaluate.fairness.sensitive_columns: gender not in the data"
    )


def test_a_numeric_column_without_bands_is_refused_at_audit(bank) -> None:
    _, test, scored = bank
    config = FairnessConfig(sensitive_columns=["balance"], resamples=10)
    with pytest.raises(DataError, match=r"evaluate\.fairness\.bands: balance is numeric"):
        audit(scored, test, "binary", config, 0)


def test_the_shipped_params_keep_fairness_off() -> None:
    for name in ("params.yaml", "examples/elec2.params.yaml"):
        raw = yaml.safe_load((REPO / name).read_text())
        assert not parse_params(copy.deepcopy(raw)).evaluate.fairness.enabled, name
    assert parse_params(_bank_params()).evaluate.fairness.enabled


@pytest.mark.parametrize(("rows", "decimals"), [(400, 12), (400, 1), (40, 1)])
def test_the_fast_binary_metrics_are_the_pipelines(rows: int, decimals: int) -> None:
    """The audit's numpy metrics give classification_metrics' numbers, ties included."""
    rng = np.random.default_rng(rows + decimals)
    positive = np.round(rng.uniform(size=rows), decimals)
    codes = (rng.uniform(size=rows) < positive * 0.6).astype(int)
    probabilities = np.c_[1 - positive, positive]
    decided = (positive > 0.4).astype(int)
    fast = binary_metrics(codes, probabilities, decided)
    expected = classification_metrics(codes, probabilities, decided, "binary")
    assert {name: fast[name] for name in expected} == pytest.approx(expected, rel=1e-9)
    assert fast["selection_rate"] == pytest.approx(decided.mean())


def test_the_plot_shows_every_group(fair: FairnessAudit, tmp_path) -> None:
    written = fairness_plot(fair, "roc_auc", tmp_path)
    assert [path.name for path in written] == ["fairness.csv", "fairness.png"]
    table = pd.read_csv(tmp_path / "fairness.csv")
    assert len(table) == sum(len(entries) for entries in fair.groups.values())
    assert set(table["column"]) == {"age", "marital"}
    assert (tmp_path / "png" / "fairness.png").read_bytes().startswith(b"\x89PNG")
