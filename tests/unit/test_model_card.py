"""The model card: built from the stages' own reports, and carried by the registered version."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import pytest

from pipeline.config import load_params
from pipeline.model_card import (
    CARD_FILE,
    CardInputs,
    Provenance,
    build_model_card,
    version_description,
)
from tests.conftest import Project

# Trimmed from real reports: the bike slice (regression) and ELEC2 (binary).
REGRESSION_EVALUATION: dict[str, Any] = {
    "primary_metric": "rmse",
    "model": {"family": "xgboost", "path": "models/tuned"},
    "test": {"rmse": 64.0497, "mae": 44.8582, "r2": 0.908205},
    "untuned": {"rmse": 70.12, "mae": 50.3, "r2": 0.89},
    "baseline": {"name": "mean per weekday x hr", "rmse": 159.877, "mae": 116.45, "r2": 0.428},
    "champion": {"rmse": 101.765, "mae": 71.63, "r2": 0.768},
    "slices": {
        "weathersit": [
            {"value": 1, "rows": 774, "rmse": 57.8022, "mae": 42.1, "r2": 0.93},
            {"value": 3, "rows": 118, "rmse": 106.739, "mae": 76.0, "r2": 0.37},
        ],
        "workingday": [{"value": 0, "rows": 360, "rmse": 77.0813, "mae": 56.3, "r2": 0.88}],
    },
    "importance": [
        {"feature": "hr", "importance": 154.076, "std": 1.17},
        {"feature": "workingday", "importance": 46.0835, "std": 1.15},
    ],
    "test_rows": 1199,
    "quality_estimate": {
        "metric": "rmse",
        "method": "DLE",
        "reason": "",
        "test": {"rows": 1199, "measured": 64.0497, "estimated": 65.5792},
    },
}
REGRESSION_GATE: dict[str, Any] = {
    "passed": True,
    "reason": "beats the champion: rmse 64.05 vs champion v1 101.77 (+37.06%, needs +1.00%)",
    "primary_metric": "rmse",
    "candidate": REGRESSION_EVALUATION["test"],
    "champion": REGRESSION_EVALUATION["champion"],
    "champion_version": "1",
    "floors": {"r2": {"bound": 0.7, "kind": "min", "value": 0.908205, "met": True}},
}
REGRESSION_MODEL: dict[str, Any] = {
    "family": "xgboost",
    "task": "regression",
    "target": "cnt",
    "features": {"numeric": ["hr", "temp"], "categorical": ["weathersit", "workingday"]},
    "classes": [],
    "threshold": None,
    "objective": "squared_error",
    "data_version": "1ffedd600f97c6d4",
}
TIME_SPLIT: dict[str, Any] = {
    "method": "time",
    "train": {"rows": 8503, "start": "2011-01-01 00:00:00", "end": "2011-12-25 00:00:00"},
    "val": {"rows": 2437, "start": "2011-12-26 00:00:00", "end": "2012-04-05 00:00:00"},
    "test": {"rows": 1199, "start": "2012-04-06 00:00:00", "end": "2012-05-25 00:00:00"},
}
CLASSIFICATION_EVALUATION: dict[str, Any] = {
    "primary_metric": "roc_auc",
    "model": {"family": "sklearn", "path": "models/tuned"},
    "test": {"roc_auc": 0.910083, "accuracy": 0.593333, "f1": 0.616352},
    "untuned": {"roc_auc": 0.9, "accuracy": 0.59, "f1": 0.6},
    "baseline": {"name": "majority class, train priors", "roc_auc": 0.5, "accuracy": 0.67},
    "champion": None,
    "slices": {},
    "importance": [{"feature": "nswprice", "importance": 0.373402, "std": 0.0235}],
    "test_rows": 300,
    "quality_estimate": {
        "metric": "roc_auc",
        "method": "CBPE",
        "reason": "",
        "test": {"rows": 300, "measured": 0.910083, "estimated_as_served": 0.6669},
    },
}
CLASSIFICATION_GATE: dict[str, Any] = {
    "passed": False,
    "reason": "roc_auc 0.91 is below its floor 0.95",
    "primary_metric": "roc_auc",
    "candidate": CLASSIFICATION_EVALUATION["test"],
    "champion": None,
    "champion_version": None,
    "floors": {"roc_auc": {"bound": 0.95, "kind": "min", "value": 0.910083, "met": False}},
}
CLASSIFICATION_MODEL: dict[str, Any] = {
    "family": "sklearn",
    "task": "binary",
    "target": "class",
    "features": {"numeric": ["nswprice", "period"], "categorical": ["day"]},
    "classes": ["DOWN", "UP"],
    "threshold": 0.4213,
    "threshold_metric": "f1",
}
PROVENANCE = Provenance("1ffedd600f97c6d4", "ab" * 32, "0123456789abcdef" * 2 + "01234567", "")


def regression(**changes: Any) -> CardInputs:
    inputs = CardInputs(
        registered_model="driftline",
        evaluation=REGRESSION_EVALUATION,
        gate=REGRESSION_GATE,
        model=REGRESSION_MODEL,
        source="builtin:bike_sharing",
        version="2",
        outcome="promote: beats the champion",
        split=TIME_SPLIT,
        provenance=PROVENANCE,
    )
    return replace(inputs, **changes)


def classification(**changes: Any) -> CardInputs:
    inputs = CardInputs(
        registered_model="elec2",
        evaluation=CLASSIFICATION_EVALUATION,
        gate=CLASSIFICATION_GATE,
        model=CLASSIFICATION_MODEL,
        source="postgresql://reader:s3cret@db.internal/market",
        outcome="refuse: gate refused: roc_auc 0.91 is below its floor 0.95",
        split={"method": "stratified", "train": {"rows": 2100}, "test": {"rows": 300}},
    )
    return replace(inputs, **changes)


def test_a_regression_card_shows_what_the_reports_hold() -> None:
    card = build_model_card(regression())
    assert card.startswith("# Model card: driftline v2\n")
    assert "Registered as version 2 of `driftline`" in card
    # The primary metric first and in bold, beside untuned, baseline and the judged champion.
    header = "| metric | this model | untuned | baseline: mean per weekday x hr | champion v1 |"
    assert header in card
    assert "| **rmse** | 64.05 | 70.12 | 159.9 | 101.8 |" in card
    assert "| r2 | ≥ 0.7 | 0.9082 | yes |" in card
    assert "Gate: passed: beats the champion" in card
    assert "| 3 | 118 | 106.7 |" in card  # the weak slice, visible
    assert "| hr | 154.1 | 1.17 |" in card
    assert "- Data version: `1ffedd600f97c6d4`" in card
    assert "- Git commit: `0123456789ab`" in card
    assert "| train | 8503 | 2011-01-01 | 2011-12-25 |" in card
    assert (
        "- Learned from at most 10940 rows of builtin:bike_sharing, from 2011-01-01 to "
        "2012-04-05 and tested on 1199 rows from 2012-04-06 to 2012-05-25; not validated "
        "outside 2011-01-01 to 2012-05-25"
    ) in card
    assert "estimates rmse before labels arrive with DLE" in card
    assert "measured 64.05, estimated 65.58" in card
    assert "## Fairness\n\nNot audited" in card


def test_a_classification_card_names_classes_threshold_and_why_it_was_refused() -> None:
    card = build_model_card(classification())
    assert card.startswith("# Model card: elec2\n")
    assert "Not registered in `elec2`. Deploy: refuse: gate refused" in card
    assert "- Task: binary, predicting `class`" in card
    assert "- Classes: `DOWN`, `UP`" in card
    assert "- Decision threshold: 0.4213 (chosen for f1)" in card
    assert "| **roc_auc** | 0.9101 | 0.9 | 0.5 |" in card
    assert "champion" not in card.split("## Test metrics")[1].split("\n\n")[1]
    assert "| roc_auc | ≥ 0.95 | 0.9101 | no |" in card
    assert "No slice columns" in card
    assert "estimated 0.6669" in card
    assert "Predicting the class of `class`" in card
    # Nothing from another data set, and no password from the source URL.
    assert "s3cret" not in card and "bike" not in card and "cnt" not in card
    assert "| train | 2100 |\n" in card  # no dates for a stratified split
    assert (
        "- Learned from at most 2100 rows of postgresql://reader:***@db.internal/market "
        "(its train and val parts) and tested on 300 held-out rows;"
    ) in card


# The audit's report is another stage's: the card renders its shape, whatever the keys.
AUDIT = {
    "sensitive_columns": ["age_band", "marital"],
    "passed": False,
    "largest_gaps": {
        "recall": {"column": "age_band", "group": "<25", "gap": 0.31, "interval": [0.22, 0.4]},
        "selection_rate": {"column": "marital", "group": "single", "gap": 0.08},
    },
    "groups": [
        {"column": "age_band", "group": "<25", "rows": 61, "recall": 0.42},
        {"column": "marital", "group": "single", "rows": 840, "recall": 0.63},
    ],
}


@pytest.mark.parametrize(
    ("fairness", "shown", "hidden"),
    [
        (None, ["Not audited"], ["Largest gaps"]),
        ({"sensitive_columns": []}, ["Not audited"], ["Largest gaps"]),
        (
            AUDIT,
            [
                "- passed: no",
                "Largest gaps:",
                "|  | column | group | gap | interval |",
                "| recall | age_band | <25 | 0.31 | [0.22, 0.4] |",
                "| selection_rate | marital | single | 0.08 | n/a |",
                "| age_band | <25 | 61 | 0.42 |",
            ],
            ["Not audited", "No fairness audit"],
        ),
        ({"audit": "v0", "notes": ["one", 2]}, ["- audit: v0", "- one", "- 2"], ["Not audited"]),
        (  # evaluate's report (pipeline.fairness): groups per column, figures with intervals
            {
                "sensitive_columns": ["age"],
                "bands": {"age": [25, 35]},
                "gaps": {},
                "groups": {
                    "age": [
                        {"group": "25-35", "rows": 103, "roc_auc": {"value": 0.79, "low": 0.68}},
                        {"group": ">=35", "rows": 6, "roc_auc": {"value": 0.12, "low": None}},
                    ]
                },
            },
            [
                "- age: [25, 35]",
                "`age`:",
                "| 25-35 | 103 | 0.79 [0.68, n/a] |",
                "| >=35 | 6 | 0.12 |",
            ],
            ["Not audited"],
        ),
    ],
)
def test_the_fairness_section_renders_any_audit_and_says_when_there_is_none(
    fairness: dict[str, Any] | None, shown: list[str], hidden: list[str]
) -> None:
    for inputs in (regression(fairness=fairness), classification(fairness=fairness)):
        card = build_model_card(inputs)
        section = card.split("## Fairness")[1].split("\n## ")[0]
        for text in shown:
            assert text in section
        for text in hidden:
            assert text not in card


def test_intended_use_and_limits_given_in_params_replace_and_extend_the_derived_ones() -> None:
    card = build_model_card(
        regression(intended_use="Staffing forecasts.", limitations=["Not for pricing."])
    )
    assert "## Intended use\n\nStaffing forecasts.\n" in card
    assert "- Not for pricing." in card and "- Learned from at most 10940 rows" in card


def test_a_description_over_the_registry_limit_leaves_its_longest_sections_to_the_file() -> None:
    card = build_model_card(regression(fairness=AUDIT))
    assert version_description(card) == card
    cut = version_description(card, limit=2500)
    assert len(cut) <= 2500 < len(card)
    assert cut.startswith("# Model card: driftline v2") and f"`{CARD_FILE}`" in cut
    # Every section is still there, by title; the short ones whole.
    titles = [line for line in card.splitlines() if line.startswith("## ")]
    assert [line for line in cut.splitlines() if line.startswith("## ")] == titles
    assert "## Quality before labels\n\nThe monitor estimates rmse" in cut
    assert len(version_description(card, limit=300)) <= 300


def without_repository_state(card: str) -> str:
    """The card as deploy writes it to reports/: no commit and no dvc.lock hash."""
    state = ("- dvc.lock sha256: ", "- Git commit: ")
    return "".join(line for line in card.splitlines(keepends=True) if not line.startswith(state))


def test_deploy_attaches_the_card_to_the_registered_version_and_its_run(shipped: Project) -> None:
    from mlflow.tracking._tracking_service import utils

    name = load_params(shipped.params_path).mlflow.registered_model
    first = (shipped.root / "reports" / CARD_FILE).read_text()
    assert first.startswith(f"# Model card: {name} v1\n")
    mlflow.set_tracking_uri(shipped.tracking_uri)
    client = mlflow.MlflowClient()
    registered = client.get_model_version(name, "1").description
    assert "- dvc.lock sha256: `" in registered and "dvc.lock" not in first
    assert without_repository_state(registered) == first
    assert "- Data version: `" in first  # the tune run's tag (a temporary project has no git)

    # Nothing new: deploy keeps v1, and the card says so without touching the version.
    shipped.run_stages("deploy")
    kept = (shipped.root / "reports" / CARD_FILE).read_text()
    assert f"Registered as version 1 of `{name}`. Deploy: keep:" in kept
    assert client.get_model_version(name, "1").description == registered

    # With no champion the same candidate is registered again, as v2, card and all. MLflow
    # caches each run's artifact folder by run id in this process: the copied project's
    # run has the template's id, so forget it and the card lands in this copy's store.
    # The run now names a commit, as in a git checkout: the registered card says it, the
    # file (a DVC output, recorded by a later commit) does not, or it never matched.
    commit = "0123456789abcdef"
    client.set_tag(client.get_model_version(name, "1").run_id, "mlflow.source.git.commit", commit)
    client.delete_registered_model_alias(name, "champion")
    utils._artifact_repos_cache.clear()
    shipped.run_stages("deploy")
    second = (shipped.root / "reports" / CARD_FILE).read_text()
    assert second.startswith(f"# Model card: {name} v2\n")
    version = client.get_model_version(name, "2")
    assert "- Git commit: `0123456789ab`\n" in version.description
    assert "Git commit" not in second
    assert without_repository_state(version.description) == second
    logged = client.download_artifacts(version.run_id, CARD_FILE, str(shipped.root / "scratch"))
    assert Path(logged).read_text() == version.description
