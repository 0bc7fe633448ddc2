"""The monitor's fairness check on labelled production windows (pipeline/monitoring.py
`fairness_check`, pipeline/fairness.py `window_audit`): the bank example's model serves
its test rows through a real prediction log, the labels arrive, and the audit groups
what it served. One age band served wrongly is named beyond its bound; the same model
served fairly is within it and gives the test audit's numbers; too few labels, and a
sensitive column the log lacks, give one line."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FairnessConfig, MlflowConfig
from pipeline.fairness import FairnessAudit, audit, group_labels
from pipeline.label_store import store_labels
from pipeline.monitoring import (
    ChampionFairness,
    Window,
    champion_fairness,
    fairness_check,
    read_window,
    window_audit,
)
from pipeline.prediction_log import PredictionLog
from pipeline.scoring import score
from tests.model.test_fairness import bank_model

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
SEED = 42
AGE_BANDS = [25.0, 35.0, 50.0, 65.0]
# The bank example's audit (age in bands, marital), with a bound on ranking quality.
AUDIT = FairnessConfig(
    sensitive_columns=["age", "marital"],
    bands={"age": AGE_BANDS},
    max_gap={"roc_auc": 0.2},
)
CLASSES = ["no", "yes"]


@dataclass(frozen=True)
class Served:
    """The bank model, its test rows, and its audit of them as evaluate makes it."""

    model: object
    test: pd.DataFrame
    on_test: FairnessAudit


@pytest.fixture(scope="module")
def bank() -> Served:
    """The bank example's xgboost, small, fitted on half the slice; its test third is
    what production sends."""
    model, test = bank_model()
    return Served(model, test, audit(score(model, test, "y"), test, "binary", AUDIT, SEED))


def serve(
    bank: Served, root: Path, wrong_band: str | None = None, labelled: int | None = None
) -> Window:
    """The test rows served and logged as `driftline serve` logs them (the probabilities
    and the decided class), then `labelled` of their labels stored as `driftline label`
    stores them; the window of the last day. `wrong_band`: for that age band the served
    scores are reversed, so its clients are ranked backwards."""
    model, test = bank.model, bank.test
    raw = model.predict_raw(test)
    if wrong_band is not None:
        rows = (group_labels(test["age"], AGE_BANDS, "age") == wrong_band).to_numpy()
        raw[rows] = raw[rows][:, ::-1]
    decided = model.decide(raw)
    ids = [uuid.uuid4().hex for _ in range(len(test))]
    features = test.drop(columns=["y"]).to_dict(orient="records")
    start = NOW - timedelta(hours=20)
    rows = [
        {
            "request_id": request_id,
            "timestamp": start + timedelta(seconds=position),
            "model_version": "1",
            "inputs": inputs,
            "prediction": str(decided[position]),
            "probabilities": {c: float(p) for c, p in zip(CLASSES, raw[position], strict=True)},
        }
        for position, (request_id, inputs) in enumerate(zip(ids, features, strict=True))
    ]
    with PredictionLog.parquet(root) as log:
        log.append(rows)
    count = len(test) if labelled is None else labelled
    labels = root.parent / f"labels-{root.name}.csv"
    pd.DataFrame({"id": ids[:count], "label": test["y"][:count], "time": NOW.isoformat()}).to_csv(
        labels, index=False
    )
    store_labels(labels, str(root))
    return read_window(root, hours=24, now=NOW)


def champion(bank: Served) -> ChampionFairness:
    return ChampionFairness(bank.on_test.to_dict()["gaps"], "the test audit")


def check(window: Window, config: FairnessConfig = AUDIT, **options: object) -> object:
    arguments = {"min_labelled": 200, "seed": SEED, "primary": "pr_auc", "champion": None}
    arguments.update(options)
    return fairness_check(window, "binary", CLASSES, config, **arguments)  # type: ignore[arg-type]


def test_an_age_band_served_wrongly_is_named_beyond_its_bound(bank: Served, tmp_path: Path) -> None:
    window = serve(bank, tmp_path / "log", wrong_band="35-50")

    checked = check(window, champion=champion(bank))

    assert checked.audited and checked.exceeded == ["roc_auc"]
    record = checked.to_dict()
    gap = record["gaps"]["roc_auc"]
    assert gap["column"] == "age" and gap["lowest_group"] == "35-50"
    assert gap["low"] > AUDIT.max_gap["roc_auc"] and gap["exceeds"] is True
    # Beside it, the champion's gap of the same metric on test.
    assert gap["test"]["gap"] == pytest.approx(bank.on_test.gaps["roc_auc"].gap)
    assert record["champion_source"] == "the test audit"
    assert checked.metric == "roc_auc"
    assert "\n" not in checked.reason
    assert checked.reason.startswith("fairness gap beyond its bound on 900 labelled rows")
    assert "age=35-50" in checked.reason
    assert "evaluate.fairness.max_gap.roc_auc 0.2" in checked.reason
    assert checked.reason.endswith("reported, not a retraining trigger")
    # The groups as evaluate reports them, each with its rows and intervals.
    ages = {entry["group"]: entry for entry in record["groups"]["age"]}
    assert sum(entry["rows"] for entry in ages.values()) == 900
    assert ages["35-50"]["roc_auc"]["value"] < 0.5 < ages["25-35"]["roc_auc"]["value"]


def test_a_fairly_served_window_is_within_its_bound_with_the_test_audits_numbers(
    bank: Served, tmp_path: Path
) -> None:
    window = serve(bank, tmp_path / "log")

    checked = check(window, champion=champion(bank))

    assert checked.audited and checked.exceeded == [] and checked.metric == "roc_auc"
    assert checked.reason.startswith(
        "fairness gaps within evaluate.fairness.max_gap on 900 labelled rows: roc_auc gap"
    )
    # The served predictions are the model's on the test rows: the same groups, metrics
    # and gaps as evaluate's audit, from the log and the late labels alone.
    record, expected = checked.to_dict(), bank.on_test.to_dict()
    for name, gap in expected["gaps"].items():
        assert record["gaps"][name]["gap"] == pytest.approx(gap["gap"]), name
        assert record["gaps"][name]["highest_group"] == gap["highest_group"], name
    for column in ("age", "marital"):
        served = {e["group"]: e["roc_auc"]["value"] for e in record["groups"][column]}
        tested = {e["group"]: e["roc_auc"]["value"] for e in expected["groups"][column]}
        assert served == pytest.approx(tested)
    small = [e for e in record["groups"]["age"] if e["rows"] < AUDIT.min_group_rows]
    assert all(entry.get("too_few_rows") for entry in small)


def test_a_gap_above_the_bound_but_within_the_noise_is_not_a_breach(
    bank: Served, tmp_path: Path
) -> None:
    """The gate's rule: beyond the bound only when the whole interval lies above it."""
    window = serve(bank, tmp_path / "log")
    gap = bank.on_test.gaps["roc_auc"]
    assert gap.low < gap.gap
    for bound, breached in (((gap.low + gap.gap) / 2, False), (gap.low * 0.9, True)):
        config = AUDIT.model_copy(update={"max_gap": {"roc_auc": bound}})
        checked = check(window, config)
        assert (checked.exceeded == ["roc_auc"]) is breached, bound
        assert checked.reason.startswith(
            "fairness gap beyond" if breached else "fairness gaps within"
        )


def test_too_few_labels_give_one_line_and_no_figure(bank: Served, tmp_path: Path) -> None:
    window = serve(bank, tmp_path / "log", labelled=150)

    checked = check(window)

    assert not checked.audited and checked.to_dict().get("gaps") is None
    assert checked.reason == (
        "no fairness figure: 150 labelled rows, fewer than monitor.min_labelled_rows (200)"
    )


@pytest.mark.parametrize(
    ("columns", "audited", "says"),
    [
        (["gender"], False, "no fairness figure: evaluate.fairness.sensitive_columns: gender "),
        (
            ["marital", "gender"],
            True,
            "; not audited: evaluate.fairness.sensitive_columns: gender ",
        ),
    ],
)
def test_a_sensitive_column_the_log_lacks_is_one_clear_line(
    bank: Served, tmp_path: Path, columns: list[str], audited: bool, says: str
) -> None:
    window = serve(bank, tmp_path / "log")
    config = FairnessConfig(sensitive_columns=columns, resamples=20)

    checked = check(window, config)

    assert checked.audited is audited and checked.missing_columns == ["gender"]
    assert says in checked.reason and "\n" not in checked.reason
    assert "not in the prediction log" in checked.reason
    if audited:
        assert list(checked.to_dict()["groups"]) == ["marital"]


def test_no_sensitive_columns_means_no_audit(bank: Served, tmp_path: Path) -> None:
    window = serve(bank, tmp_path / "log", labelled=300)
    checked = check(window, FairnessConfig())
    assert not checked.audited
    assert checked.reason == "evaluate.fairness.sensitive_columns is empty: no fairness audit"


def test_a_regression_window_groups_the_served_values() -> None:
    """The logged value, not a model's: one region served 30 too high."""
    rng = np.random.default_rng(0)
    region = rng.choice(["north", "south"], 400)
    actual = rng.normal(100, 5, 400)
    served = actual + np.where(region == "south", 30.0, 0.0)
    labelled = pd.DataFrame(
        {
            "region": region,
            "prediction": served.astype(str),
            "prediction_value": served,
            "probabilities": None,
            "label": actual,
        }
    )
    config = FairnessConfig(sensitive_columns=["region"], max_gap={"rmse": 5}, resamples=20)
    found = window_audit(labelled, "regression", [], config, SEED)
    assert found.rows == 400 and found.missing == []
    gap = found.audit.gaps["rmse"]
    assert gap.highest_group == "south" and gap.gap == pytest.approx(30, abs=1)
    assert found.audit.failures()[0].startswith("rmse gap")


def test_the_champions_test_gaps_fall_back_to_the_checkouts_report(tmp_path: Path) -> None:
    """No such version in the registry: this checkout's reports/fairness.json, said so;
    neither: None."""
    config = MlflowConfig(registered_model=f"absent-{uuid.uuid4().hex[:6]}")
    report = tmp_path / "fairness.json"
    assert champion_fairness(config, "1", report) is None
    report.write_text('{"gaps": {"roc_auc": {"gap": 0.12, "low": 0.05, "high": 0.2}}}')
    found = champion_fairness(config, "1", report)
    assert found is not None and found.gaps["roc_auc"]["gap"] == 0.12
    assert found.source.startswith(f"{report} (this checkout's last evaluate")
