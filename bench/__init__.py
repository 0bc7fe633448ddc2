"""Benchmarks that print figures (not tests): `python -m bench.stages` times the DVC stages."""
