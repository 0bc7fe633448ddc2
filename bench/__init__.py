"""Benchmarks that print figures (not tests): `python -m bench.stages` times the DVC stages."""

# Quiet offline for every process a benchmark starts: no telemetry, no update checks.
QUIET = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "ORT_DISABLE_TELEMETRY": "1",
    "GX_ANALYTICS_ENABLED": "false",
}
