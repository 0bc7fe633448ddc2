"""train: fit the family named by `train.model` with its params as given (untuned).

Outputs: `models/candidate/` (the model folder), `reports/train.json` (the MLflow run,
val metrics, device and timing) and `metrics/train.json`. Test rows are not read.
The run in MLflow holds the params, val metrics, loss curve, model, git commit and
the hashes of dvc.lock and of the data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.artifacts import read_stage_input, staged_directory, write_json_atomic
from pipeline.config import DEFAULT_PARAMS, TrainConfig, load_params
from pipeline.console import report_user_errors, say
from pipeline.metrics import rounded
from pipeline.schema import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.models import TabularModel


def train(
    train_rows: pd.DataFrame, val_rows: pd.DataFrame, spec: DatasetSpec, config: TrainConfig
) -> TabularModel:
    """Fit the configured family on train, early-stopping on val."""
    from pipeline.models import fit_model

    return fit_model(train_rows, val_rows, spec, config)


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    raw: Annotated[Path, typer.Option(help="The ingest stage's folder.")] = Path("data/raw"),
    split: Annotated[Path, typer.Option(help="The split stage's folder.")] = Path("data/split"),
    out: Annotated[Path, typer.Option(help="The model folder to write.")] = Path(
        "models/candidate"
    ),
    report: Annotated[Path, typer.Option(help="Run id, val metrics, timing.")] = Path(
        "reports/train.json"
    ),
    metrics: Annotated[Path, typer.Option(help="Flat figures for `dvc metrics`.")] = Path(
        "metrics/train.json"
    ),
) -> None:
    """Train the model family in params (train.model) on data/split, refit it on train +
    val (train.refit); log it to MLflow. Val metrics are the early-stopped model's."""
    loaded = load_params(params)
    config = loaded.train
    spec = DatasetSpec.read(raw / "schema.yaml")
    train_path, val_path = split / "train.parquet", split / "val.parquet"
    train_rows = read_stage_input(train_path, "split")
    val_rows = read_stage_input(val_path, "split")

    from pipeline import tracking
    from pipeline.scoring import score

    experiment_id = tracking.start_tracking(loaded.mlflow)
    started = time.perf_counter()
    model = train(train_rows, val_rows, spec, config)
    val_metrics = rounded(score(model, val_rows, spec.target).metrics)
    if config.refit:
        from pipeline.models import refit_model

        model = refit_model(model, train_rows, val_rows, spec, config)
    seconds = time.perf_counter() - started

    import mlflow

    # Logged from the staged folder before it replaces `out`: a store that fails
    # leaves the previous model and reports as they were.
    with (
        staged_directory(out) as staged,
        tracking.tracking_errors(loaded.mlflow),
        mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{config.model}") as run,
    ):
        model.write(staged)
        mlflow.set_tags(
            {
                "driftline.stage": "train",
                "driftline.family": config.model,
                "driftline.device": model.report.device,
                **tracking.provenance_tags([train_path, val_path]),
            }
        )
        mlflow.log_params(tracking.flat_params("train", config.recorded()))
        val_logged = {f"val_{name}": value for name, value in val_metrics.items()}
        model_uri = tracking.log_fitted_model(model, staged, val_logged, val_rows)
        mlflow.log_metric("train_seconds", seconds)

    summary = {
        "run_id": run.info.run_id,
        "model_uri": model_uri,
        "family": config.model,
        "device": model.report.device,
        "best_step": model.report.best_step,
        "val_loss": round(model.report.val_loss, 6),
        "refit_rows": model.report.refit_rows,
        "threshold": model.threshold,
        "seconds": round(seconds, 3),
        "val": val_metrics,
    }
    write_json_atomic(report, summary)
    write_json_atomic(metrics, {f"val_{name}": value for name, value in val_metrics.items()})
    shown = ", ".join(f"{name} {value:.4g}" for name, value in list(val_metrics.items())[:3])
    say(
        f"train ({config.model} on {model.report.device}): {seconds:.1f} s, "
        f"best step {model.report.best_step}; val {shown} -> {out}"
    )


if __name__ == "__main__":
    typer.run(main)
