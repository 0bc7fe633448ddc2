"""Driftline: an orchestrated MLOps pipeline for tabular supervised learning."""

__version__ = "0.1.0"
