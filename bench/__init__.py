"""Benchmarks that print figures (not tests): `python -m bench.stages` times the DVC stages."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Quiet offline for every process a benchmark starts: no telemetry, no update checks.
QUIET = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "ORT_DISABLE_TELEMETRY": "1",
    "GX_ANALYTICS_ENABLED": "false",
}


def pipeline_stages() -> tuple[str, ...]:
    """dvc.yaml's stages, upstream first (the order dvc.yaml lists them in)."""
    return tuple(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
