"""Prefect flows over the DVC stages. They orchestrate only; the logic lives in `pipeline`."""
