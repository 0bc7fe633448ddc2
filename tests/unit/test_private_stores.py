"""Stores Driftline creates are owner-only (files 0600, folders 0700) unless
`stores.private: false`: the prediction log and its labels, the retraining ledger, the
Optuna storage and the MLflow store. A store that exists keeps its permissions."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import MlflowConfig, TuneConfig, parse_params
from pipeline.errors import ConfigError
from pipeline.label_store import store_labels
from pipeline.prediction_log import PredictionLog
from pipeline.retraining import open_ledger
from pipeline.stores import prepare_store

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common umask, which alone would make every store world-readable."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(root: Path) -> dict[str, int]:
    """The mode of `root` and of everything under it, by relative path."""
    found = {".": mode(root)}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = mode(path)
    return found


def row(request_id: str, when: datetime) -> dict:
    return {
        "request_id": request_id,
        "timestamp": when,
        "model_version": "1",
        "inputs": {"x": 1.0},
        "prediction": 2.5,
    }


def write_log_and_labels(location: str, tmp_path: Path, private: bool) -> None:
    log_type = PredictionLog.sql if "://" in location else PredictionLog.parquet
    with log_type(location, private=private, flush_seconds=60) as log:
        log.append([row("a", NOW), row("b", NOW + timedelta(days=1))])
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"id": ["a"], "label": [3], "time": NOW.isoformat()}).to_csv(labels, index=False)
    assert store_labels(labels, location, private).matched == 1


def test_a_new_parquet_log_and_its_labels_are_private(tmp_path: Path) -> None:
    root = tmp_path / "log"
    write_log_and_labels(str(root), tmp_path, private=True)
    found = modes(root)
    folders = {name: value for name, value in found.items() if (root / name).is_dir()}
    files = {name: value for name, value in found.items() if (root / name).is_file()}
    assert set(folders) == {".", "date=2026-03-10", "date=2026-03-11", "labels"}
    assert set(folders.values()) == {0o700}
    # Per day a part of rows and its hour's drift summary (pipeline/summaries.py); a
    # part of labels.
    kinds = sorted(Path(name).name.split("-")[0] for name in files)
    assert kinds == ["part", "part", "part", "summary", "summary"], kinds
    assert set(files.values()) == {0o600}


def test_a_new_sqlite_log_with_its_labels_and_ledger_is_private(tmp_path: Path) -> None:
    database = tmp_path / "data" / "production.db"
    database.parent.mkdir()
    url = f"sqlite:///{database}"
    write_log_and_labels(url, tmp_path, private=True)
    ledger = open_ledger(url, tmp_path / "unused.jsonl", private=True)
    ledger.claim("window", 10, min_rows=1, cooldown=timedelta(0))
    assert [entry["status"] for entry in ledger.entries()] == ["started"]
    assert modes(database.parent) == {".": 0o755, "production.db": 0o600}


def test_a_new_ledger_file_is_private(tmp_path: Path) -> None:
    reports = tmp_path / "reports" / "monitoring"
    ledger = open_ledger(str(tmp_path / "log"), reports / "retrainings.jsonl", private=True)
    ledger.claim("window", 10, min_rows=1, cooldown=timedelta(0))
    assert modes(tmp_path / "reports") == {
        ".": 0o700,
        "monitoring": 0o700,
        "monitoring/.retrainings.jsonl.lock": 0o600,
        "monitoring/retrainings.jsonl": 0o600,
    }


def test_a_new_optuna_storage_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the tune stage opens it: prepared, then created by Optuna."""
    from pipeline.stages.tune import make_study

    monkeypatch.chdir(tmp_path)
    config = TuneConfig()  # storage: sqlite:///optuna.db
    prepare_store(config.storage, private=True)
    make_study(config, "study").optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert mode(tmp_path / "optuna.db") == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["optuna.db"]


def test_a_new_mlflow_store_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from pipeline.tracking import start_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    config = MlflowConfig()  # sqlite:///mlflow.db, artifacts in mlartifacts/
    experiment = start_tracking(config, private=True)
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_dict({"a": 1}, "a.json")
    assert mode(tmp_path / "mlflow.db") == 0o600
    assert mode(tmp_path / "mlartifacts") == 0o700


def test_with_private_false_the_umask_decides(tmp_path: Path) -> None:
    root = tmp_path / "log"
    write_log_and_labels(str(root), tmp_path, private=False)
    assert set(modes(root).values()) == {0o755, 0o644}
    prepare_store(f"sqlite:///{tmp_path / 'x.db'}", private=False)
    assert not (tmp_path / "x.db").exists()  # left to the library, as before


def test_an_existing_store_keeps_its_permissions(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    database.touch(mode=0o640)
    root = tmp_path / "log"
    root.mkdir(mode=0o750)
    prepare_store(f"sqlite:///{database}", private=True)
    prepare_store(root, private=True)
    assert (mode(database), mode(root)) == (0o640, 0o750)


def test_stores_are_private_unless_params_say_otherwise() -> None:
    assert parse_params({"data": {"target": "y"}}).stores.private is True
    changed = parse_params({"data": {"target": "y"}, "stores": {"private": False}})
    assert changed.stores.private is False
    with pytest.raises(ConfigError, match=r"stores\.private: Input should be a valid boolean"):
        parse_params({"data": {"target": "y"}, "stores": {"private": "sometimes"}})
