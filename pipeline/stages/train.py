"""train: fit the family named by `train.model` with its params as given (untuned).

With `train.objective: auto` and a count target, it first scores squared error,
Poisson and log1p (`pipeline.selection`: rolling-origin folds over the val period on
time-ordered data, else val) and fits the best; the figures go to the report and to
`model.json`, where tune finds the objective and the loss its trials must beat.

Outputs: `models/candidate/` (the model folder), `reports/train.json` (val metrics,
device, the objective's figures) and `metrics/train.json`, the same bytes for the same
inputs. Test rows are not read. The run in MLflow holds the params, val metrics, loss
curve, model, wall time, git commit, the hashes of dvc.lock and of the data, and the
hash of the model folder (`driftline.model_sha256`), by which later stages find it.
Its id, model URI and wall time are also in `reports/runs/train.json`, a record for
people that is not a DVC output.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.artifacts import read_stage_input, staged_directory, write_json_atomic
from pipeline.config import DEFAULT_PARAMS, TrainConfig, load_params
from pipeline.console import report_user_errors, run_command, say
from pipeline.metrics import rounded
from pipeline.schema import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.models import TabularModel


def train(
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    spec: DatasetSpec,
    config: TrainConfig,
    time_ordered: bool = False,
) -> TabularModel:
    """Choose the objective, then fit the family on train, early-stopping on val. The
    model's `selection` records the choice and its loss (the one tune compares with)."""
    from pipeline.models import fit_model
    from pipeline.selection import capped_train, choose_objective, rolling_folds

    config = config.with_time_order(time_ordered)  # an ensemble's out-of-fold folds
    folds = []
    if time_ordered:
        folds = rolling_folds(train_rows, val_rows, config.selection_folds, config.selection_rows)
    scored_rows = capped_train(train_rows, config.selection_rows, time_ordered, config.seed)
    choice = choose_objective(scored_rows, val_rows, spec, config, folds)
    if choice.objective is not None:
        config = config.model_copy(update={"objective": choice.objective})
    model = choice.score.model if scored_rows is train_rows else None
    model = model or fit_model(train_rows, val_rows, spec, config)
    model.selection = {**model.selection, "objective": choice.figures}
    return model


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    raw: Annotated[Path, typer.Option(help="The ingest stage's folder.")] = Path("data/raw"),
    split: Annotated[Path, typer.Option(help="The split stage's folder.")] = Path("data/split"),
    out: Annotated[Path, typer.Option(help="The model folder to write.")] = Path(
        "models/candidate"
    ),
    report: Annotated[Path, typer.Option(help="Val metrics, device, objective.")] = Path(
        "reports/train.json"
    ),
    metrics: Annotated[Path, typer.Option(help="Flat figures for `dvc metrics`.")] = Path(
        "metrics/train.json"
    ),
    run_record: Annotated[
        Path, typer.Option(help="The MLflow run's id and wall time (not a DVC output).")
    ] = Path("reports/runs/train.json"),
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

    experiment_id = tracking.start_tracking(loaded.mlflow, loaded.stores.private)
    started = time.perf_counter()
    model = train(train_rows, val_rows, spec, config, loaded.time_ordered)
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
        provenance = tracking.provenance_tags([train_path, val_path])
        # Tune compares its trials with this loss only for the same split files.
        model.selection["data_version"] = provenance["driftline.data_version"]
        model.selection["val"] = val_metrics  # the early-stopped model's, before the refit
        model.write(staged)
        mlflow.set_tags(
            {
                "driftline.stage": "train",
                "driftline.family": config.model,
                "driftline.device": model.report.device,
                "driftline.objective": str(model.objective),
                **provenance,
            }
        )
        mlflow.log_params(tracking.flat_params("train", config.recorded()))
        mlflow.log_metric("selection_loss", model.selection["objective"]["loss"])
        val_logged = {f"val_{name}": value for name, value in val_metrics.items()}
        model_uri = tracking.log_fitted_model(model, staged, val_logged, val_rows)
        mlflow.log_metric("train_seconds", seconds)
        model_sha256 = tracking.tag_model_folder(staged)

    # What the stage computed, nothing of when or where it ran: the same inputs give the
    # same bytes, so dvc.lock does not change on a re-run.
    summary = {
        "family": config.model,
        "device": model.report.device,
        "best_step": model.report.best_step,
        "val_loss": round(model.report.val_loss, 6),
        "refit_rows": model.report.refit_rows,
        "threshold": model.threshold,
        "objective": model.objective,
        "selection": model.selection,
        "val": val_metrics,
    }
    write_json_atomic(report, summary)
    tracking.write_run_record(
        run_record, "train", run.info.run_id, model_uri, model_sha256, seconds
    )
    write_json_atomic(metrics, {f"val_{name}": value for name, value in val_metrics.items()})
    shown = ", ".join(f"{name} {value:.4g}" for name, value in list(val_metrics.items())[:3])
    chosen = f", objective {model.objective}" if model.objective else ""
    say(
        f"train ({config.model}{chosen} on {model.report.device}): {seconds:.1f} s, "
        f"best step {model.report.best_step}; val {shown} -> {out}"
    )


if __name__ == "__main__":
    run_command(main)
