"""The MLflow model registry: which version is the champion, and its model folder.

Serving loads `models:/<name>@champion`; `previous` is what a rollback restores.
Registry stages are deprecated, so only aliases are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import MlflowConfig
from pipeline.errors import DataError
from pipeline.tracking import TrackingError, start_tracking

if TYPE_CHECKING:
    from pipeline.models import TabularModel

CHAMPION = "champion"
PREVIOUS = "previous"
# A candidate that passed its gate inside `dvc exp run`: registered, never served until
# `driftline promote` says so.
CHALLENGER = "challenger"
REFERENCE_SAMPLE = "reference.parquet"  # split's file name in data/reference
IMPORTANCE_FILE = "feature_importance.json"  # pipeline.importance's, in the version
QUALITY_FILE = "quality_estimate.json"  # pipeline.quality_estimate's, in the version


@dataclass(frozen=True)
class RegisteredModel:
    """A registry version and its Driftline model folder, downloaded locally."""

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    directory: Path
    onnx_directory: Path | None = None
    # The reference sample and drift profile split drew for this model (deploy registers
    # them with it), so the monitor compares with the champion's, not a checkout's.
    reference_directory: Path | None = None
    # The champion's feature importance (evaluate's), which weighs each column's drift;
    # None for a version registered before it travelled with the model.
    importance_file: Path | None = None
    # How the monitor estimates its quality before labels arrive (evaluate's CBPE check
    # or DLE loss model); None for a version registered before it travelled.
    quality_file: Path | None = None

    def load(self) -> TabularModel:
        from pipeline.models import load_model

        return load_model(self.directory)


def alias_version(config: MlflowConfig, alias: str) -> Any | None:
    """The ModelVersion an alias points at, or None when there is none yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    start_tracking(config)
    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(config.registered_model, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise TrackingError(f"MLflow registry: {str(exc).splitlines()[0]}") from None


def fetch_alias(config: MlflowConfig, alias: str, into: Path) -> RegisteredModel | None:
    """Download the model an alias points at into `into`; None when the alias is unset."""
    version = alias_version(config, alias)
    if version is None:
        return None
    import mlflow

    uri = f"models:/{config.registered_model}/{version.version}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
    folders = [path.parent for path in sorted(local.rglob("model.json"))]
    native = [folder for folder in folders if not (folder / "model.onnx").exists()]
    exported = [folder for folder in folders if (folder / "model.onnx").exists()]
    references = [path.parent for path in sorted(local.rglob(REFERENCE_SAMPLE))]
    importance = sorted(local.rglob(IMPORTANCE_FILE))
    quality = sorted(local.rglob(QUALITY_FILE))
    if not native:
        raise DataError(
            f"registry version {version.version} of {config.registered_model!r} holds no "
            "Driftline model folder: it was not registered by Driftline"
        )
    return RegisteredModel(
        name=config.registered_model,
        version=str(version.version),
        run_id=version.run_id,
        tags=dict(version.tags or {}),
        directory=native[0],
        onnx_directory=exported[0] if exported else None,
        reference_directory=references[0] if references else None,
        importance_file=importance[0] if importance else None,
        quality_file=quality[0] if quality else None,
    )


def register(config: MlflowConfig, model_uri: str, tags: dict[str, str] | None = None) -> str:
    """Register a logged model as a new version; return the version number."""
    import mlflow

    start_tracking(config)
    version = mlflow.register_model(model_uri, config.registered_model, tags=tags)
    return str(version.version)


def set_alias(config: MlflowConfig, alias: str, version: str) -> None:
    import mlflow

    start_tracking(config)
    mlflow.MlflowClient().set_registered_model_alias(config.registered_model, alias, version)
