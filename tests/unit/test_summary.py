"""The summary at the end of `make run`, from the reports a run wrote."""

from __future__ import annotations

from pathlib import Path

from pipeline.summary import WIDTH, summarize
from tests.conftest import Project


def test_the_summary_says_what_the_run_decided(shipped: Project) -> None:
    lines = summarize(shipped.root)
    text = "\n".join(lines)
    assert lines[1].startswith("model: xgboost (objective ")
    assert "test rmse (lower is better): " in text
    assert "naive baseline (mean per weekday x hr)" in text
    assert "no champion before this run" in text
    assert "gate: passed: no champion yet: the candidate meets every floor" in text
    assert "deploy: promote (v1)" in text
    assert "predicted_vs_actual.png" in text
    assert "driftline serve --port 8000" in text
    assert all(len(line) <= WIDTH for line in lines[:-1])


def test_before_a_run_the_summary_says_what_to_run(tmp_path: Path) -> None:
    assert summarize(tmp_path) == [
        "no evaluation yet: `dvc repro` runs the pipeline up to the gate"
    ]
