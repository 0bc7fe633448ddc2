"""MLflow: where runs go, what each run is tagged with, and how a model is logged.

The default store is `sqlite:///mlflow.db` with artifacts under `mlartifacts/`, both
in the project; `MLFLOW_TRACKING_URI` points it at a server instead. Nothing here
touches MLflow until a function is called.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.artifacts import folder_digest, write_json_atomic
from pipeline.config import MlflowConfig
from pipeline.errors import DataError, DriftlineError, TransientError, first_line
from pipeline.secrets import mask_url, redact
from pipeline.stores import prepare_store

if TYPE_CHECKING:
    from pipeline.importance import FeatureImportance
    from pipeline.models import TabularModel

DVC_LOCK = Path("dvc.lock")
# Run tags: the stage that made the run, and the hash of the model folder it wrote.
STAGE_TAG = "driftline.stage"
MODEL_SHA256_TAG = "driftline.model_sha256"


class TrackingError(DriftlineError):
    """The MLflow tracking store cannot be reached or used."""


class TrackingUnavailable(TrackingError, TransientError):
    """The tracking server is down or the store is busy: worth a retry (exit 75)."""


def tracking_uri(config: MlflowConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri


def start_tracking(config: MlflowConfig, private: bool = True) -> str:
    """Point MLflow at the configured store and return the experiment id.

    A server that does not answer fails here, in one line, before any work is done.
    A local store (a SQLite file, the artifact folder) that does not exist yet is
    created owner-only when `private` (`stores.private`).
    """
    uri = tracking_uri(config)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif not uri.startswith("databricks"):
        if "://" in uri:
            prepare_store(uri, private)  # a SQLite file; a server database is its server's
        prepare_store(config.artifact_location, private)  # a local folder; a URL: nothing
    import logging

    import mlflow

    # Table creation and artifact progress bars are noise in a stage's output.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(config.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if not uri.startswith(("http://", "https://", "databricks")):
            location = Path(config.artifact_location).resolve().as_uri()
        return mlflow.create_experiment(config.experiment, artifact_location=location)
    except Exception as exc:
        if isinstance(exc, DriftlineError):
            raise
        raise TrackingError(
            f"MLflow store {mask_url(uri)} cannot be used: {redact(first_line(exc), uri)}"
        ) from None


@contextmanager
def tracking_errors(config: MlflowConfig) -> Iterator[None]:
    """MLflow and database errors while logging, as one line naming the store."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, SQLAlchemyError) as exc:
        error = TrackingUnavailable if _unavailable(exc) else TrackingError
        uri = tracking_uri(config)
        raise error(
            f"MLflow store {mask_url(uri)} failed while logging: {redact(first_line(exc), uri)}"
        ) from None


def _unavailable(exc: BaseException) -> bool:
    """A store that is busy or a server that does not answer, rather than a bad request."""
    text = str(exc).lower()
    return any(
        sign in text
        for sign in ("database is locked", "connection refused", "max retries", "timed out")
    )


def tag_model_folder(folder: Path) -> str:
    """Tag the active run with the hash of the model folder it wrote, and return it.

    Stage outputs hold no run id (a new one on every run would change their bytes and
    dvc.lock): a later stage, on this host or on one that pulled the folder from the DVC
    remote, finds the run by this tag (`model_run`).
    """
    import mlflow

    digest = folder_digest(folder)
    mlflow.set_tag(MODEL_SHA256_TAG, digest)
    return digest


def model_run(config: MlflowConfig, experiment_id: str, stage: str, folder: Path) -> str:
    """The id of the newest `stage` run in the experiment that logged the model folder
    `folder` holds now (tagged with its hash); one clear line when there is none."""
    import mlflow

    digest = folder_digest(folder)
    query = f"tags.`{STAGE_TAG}` = '{stage}' and tags.`{MODEL_SHA256_TAG}` = '{digest}'"
    with tracking_errors(config):
        runs = mlflow.MlflowClient().search_runs(
            [experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
        )
    if not runs:
        raise DataError(
            f"no {stage} run in the MLflow store {mask_url(tracking_uri(config))} logged {folder} "
            f"(sha256 {digest[:12]}): point MLFLOW_TRACKING_URI at the store it used, or "
            f"re-run it (dvc repro -f -s {stage})"
        )
    return str(runs[0].info.run_id)


def write_run_record(
    path: Path, stage: str, run_id: str, model_uri: str, model_sha256: str, seconds: float
) -> None:
    """The run a stage logged, for people: its id, model URI and wall time. Not a DVC
    output (they differ on every run) and read by no stage: they find runs by tag."""
    record = {
        "stage": stage,
        "run_id": run_id,
        "model_uri": model_uri,
        "model_sha256": model_sha256,
        "seconds": round(seconds, 3),
    }
    write_json_atomic(path, record)


def _check_server(uri: str) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = redact(str(getattr(exc, "reason", exc)), uri)
        raise TrackingUnavailable(
            f"MLflow server {mask_url(uri)} is not reachable ({reason}): start it, or unset "
            "MLFLOW_TRACKING_URI to use the local store"
        ) from None


def provenance_tags(data_files: list[Path]) -> dict[str, str]:
    """The git commit, the hash of dvc.lock and of each input table: what the run saw."""
    tags = {"driftline.dvc_lock_sha256": file_digest(DVC_LOCK) if DVC_LOCK.exists() else "none"}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["driftline.git_dirty"] = str(bool(_git("status", "--porcelain", "--", "pipeline")))
    digests = [file_digest(path) for path in data_files]
    tags["driftline.data_version"] = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    for path, digest in zip(data_files, digests, strict=True):
        tags[f"driftline.data.{path.stem}_sha256"] = digest
    return tags


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(*args: str) -> str:
    try:
        result = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def flat_params(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    """Nested params as `prefix.key` strings, as MLflow stores them."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flat_params(name, value))
        else:
            flat[name] = str(value)
    return flat


def log_model(
    model: TabularModel,
    model_dir: Path,
    example: pd.DataFrame,
    onnx_dir: Path | None = None,
    name: str = "model",
    reference_dir: Path | None = None,
    importance: FeatureImportance | None = None,
    quality_dir: Path | None = None,
) -> str:
    """Log the model folder as an MLflow pyfunc model that takes raw columns.

    The signature, input example and requirements are passed in, so MLflow neither
    infers them by running the model nor resolves the environment (that takes seconds).
    `reference_dir`, `importance` and `quality_dir` (how to estimate the model's quality
    before labels arrive) are what the monitor needs: they travel with the model.
    Returns the model URI.
    """
    import tempfile

    import mlflow
    from mlflow.models import infer_signature

    columns = list(model.features.columns)
    example = example[columns].head(5)
    output = model.predict(example)
    with warnings.catch_warnings():
        # MLflow's hint that integer columns cannot hold gaps: the types are train's own.
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(example, pd.Series(output))
    artifacts = {"model": str(model_dir)}
    if onnx_dir is not None:
        artifacts["onnx"] = str(onnx_dir)  # what serving loads
    if reference_dir is not None:
        artifacts["reference"] = str(reference_dir)  # what the monitor compares with
    if quality_dir is not None:
        artifacts["quality"] = str(quality_dir)  # the quality estimate before labels
    with tempfile.TemporaryDirectory(prefix="driftline-importance-") as scratch:
        if importance is not None:  # how the monitor weighs each column's drift
            artifacts["importance"] = str(importance.write(Path(scratch) / "importance").parent)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(model),
        )
    return info.model_uri


def _requirements(model: TabularModel) -> list[str]:
    from importlib.metadata import version

    packages = ["pandas", "numpy", "scikit-learn", "pyarrow"]
    # An ensemble needs each member's package.
    families = model.params["members"] if model.family == "ensemble" else [model.family]
    for family in families:
        packages.append({"xgboost": "xgboost", "sklearn": "skops", "torch": "torch"}[family])
    return [f"{name}=={version(name)}" for name in packages]


def log_fitted_model(
    model: TabularModel,
    model_dir: Path,
    metrics: dict[str, float],
    example: pd.DataFrame,
) -> str:
    """Log a fitted model's curve, metrics and folder to the active run; return its URI."""
    import time

    import mlflow
    from mlflow.entities import Metric

    run = mlflow.active_run()
    assert run is not None, "log_fitted_model needs an active run"
    now = int(time.time() * 1000)
    curve = [
        Metric("val_loss_curve", value, now, step)
        for step, value in enumerate(model.report.history)
    ]
    client = mlflow.MlflowClient()
    for start in range(0, len(curve), 1000):
        client.log_batch(run.info.run_id, metrics=curve[start : start + 1000])
    mlflow.log_metrics({name: value for name, value in metrics.items() if value == value})
    mlflow.log_metrics({"best_step": model.report.best_step, "val_loss": model.report.val_loss})
    mlflow.log_dict(model.describe(), "model.json")
    return log_model(model, model_dir, example)
