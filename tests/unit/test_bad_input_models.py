"""The model stages' bad input: one clear line, a non-zero exit, no traceback, and the
last good model, metrics and plots left exactly as they were."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import Project
from tests.unit.test_bad_input import assert_one_clear_line


def refuses(project: Project, stages: tuple[str, ...], code: int, expected: str) -> None:
    before = project.snapshot()
    for stage in stages:
        result = project.run(stage)
        assert result.exit_code == code, (stage, result.stderr)
        assert_one_clear_line(result.stderr, expected)
    assert project.snapshot() == before


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        (
            "train",
            {"model": "lightgbm"},
            "train.model: Input should be 'xgboost', 'sklearn', 'torch' or 'ensemble'",
        ),
        ("train", {"xgboost": {"learning_rate": 0}}, "train.xgboost.learning_rate: Input should be greater than 0"),
        ("train", {"torch": {"hidden_sizes": []}}, "train.torch.hidden_sizes: List should have at least 1 item"),
        ("tune", {"search_space": {"xgboost": {"depth": {"low": 1, "high": 3}}}}, "search_space.xgboost.depth: not a train.xgboost parameter"),
        ("tune", {"search_space": {"xgboost": {"max_depth": {"low": 5, "high": 2}}}}, "low (5) is greater than high (2)"),
        ("tune", {"cv_folds": 1}, "cv_folds must be 0 (off) or at least 2"),
        ("evaluate", {"floors": {"accuracy_pct": 3}}, "evaluate.floors.accuracy_pct.[key]"),
    ],
)  # fmt: skip
def test_bad_params_exit_2_naming_the_key(
    trained: Project, section: str, values: dict, expected: str
) -> None:
    trained.update(section, **values)
    refuses(trained, ("train", "tune", "evaluate", "compress"), 2, expected)


def test_a_metric_the_task_does_not_have(trained: Project) -> None:
    trained.update("evaluate", primary_metric="roc_auc")
    refuses(
        trained, ("evaluate",), 2, "evaluate.primary_metric: roc_auc is not a regression metric"
    )


@pytest.mark.parametrize("family", ["xgboost", "torch"])
def test_cuda_asked_for_on_a_machine_without_it(trained: Project, family: str) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the request is valid here")
    trained.update("train", device="cuda", model=family)
    refuses(trained, ("train",), 2, f"train.device is cuda but {family} finds no CUDA device")


def test_a_tracking_server_that_is_down(trained: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    # Exit 75: a server that is down may be up again soon, so the training flow retries.
    refuses(
        trained,
        ("train", "tune", "evaluate"),
        75,
        "MLflow server http://127.0.0.1:9 is not reachable",
    )


def test_an_optuna_storage_that_cannot_open(trained: Project) -> None:
    trained.update("tune", storage="nosuchdb://x/y")
    refuses(trained, ("tune",), 2, "tune.storage: cannot open 'nosuchdb://x/y'")


def test_model_stages_before_their_inputs(project: Project, produced: Project) -> None:
    for stage in ("train", "tune", "evaluate"):
        result = project.run(stage)
        assert result.exit_code == 1
        assert_one_clear_line(result.stderr, "run the ingest stage first")
    (produced.root / "data/split/val.parquet").unlink()
    for stage in ("train", "tune", "evaluate"):
        result = produced.run(stage)
        assert result.exit_code == 1
        assert_one_clear_line(result.stderr, "val.parquet does not exist: run the split stage")


def test_evaluate_without_a_tuned_model(trained: Project) -> None:
    shutil.move(trained.root / "reports/tuning", trained.root / "tuning-aside")
    refuses(
        trained,
        ("evaluate",),
        1,
        "reports/tuning/summary.json does not exist: run the tune stage first",
    )


def test_a_tune_run_missing_from_the_store(
    trained: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The DVC outputs, but a store that never saw the run that logged models/tuned (a
    # fresh clone's, or another host's): the run is found by the folder's hash, or not.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained.root / 'other.db'}")
    refuses(
        trained,
        ("evaluate",),
        1,
        "no tune run in the MLflow store sqlite:///",
    )
    result = trained.run("evaluate")
    assert "logged models/tuned (sha256 " in result.stderr
    assert "re-run it (dvc repro -f -s tune)" in result.stderr


@pytest.mark.parametrize("stage", ["train", "tune"])
def test_a_store_that_fails_while_logging_keeps_the_last_model(
    trained: Project, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.exceptions import MlflowException

    from pipeline import tracking

    def refuse(*args: object, **kwargs: object) -> str:
        raise MlflowException("artifact store is full")

    monkeypatch.setattr(tracking, "log_model", refuse)
    refuses(trained, (stage,), 1, "failed while logging: artifact store is full")
