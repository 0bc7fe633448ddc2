"""validate: check the raw data against the expectation suite built from the schema.

Outputs: `reports/validation/summary.json`, GX Data Docs under
`reports/validation/docs/`, and flat figures in `metrics/validate.json`. A critical
failure prints one line per failed expectation, leaves those outputs as they were,
puts the failing run's report in `reports/validation-failed/`, and exits non-zero.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from pipeline.artifacts import (
    read_json,
    read_stage_input,
    replace_dir_atomic,
    write_json_atomic,
)
from pipeline.config import DEFAULT_PARAMS, ValidateConfig, load_params
from pipeline.console import report_user_errors, run_command, say, warn
from pipeline.errors import ValidationFailed
from pipeline.quality import ValidationReport, build_checks, run_checks
from pipeline.schema import DatasetSpec


def validate(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    config: ValidateConfig,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the schema's expectations on `frame`. GX writes Data Docs to `docs_dir` if given."""
    checks = build_checks(spec, frame, config)
    outcomes = run_checks(frame, checks, docs_dir)
    return ValidationReport(
        outcomes=outcomes,
        rows=len(frame),
        columns=len(frame.columns),
        docs_index=docs_dir / "index.html" if docs_dir is not None else None,
    )


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    raw: Annotated[Path, typer.Option(help="The ingest stage's folder.")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="Folder for summary.json and docs/.")] = Path(
        "reports/validation"
    ),
    failed: Annotated[Path, typer.Option(help="Where a failing run's report goes.")] = Path(
        "reports/validation-failed"
    ),
    metrics: Annotated[Path, typer.Option(help="Flat figures for `dvc metrics`.")] = Path(
        "metrics/validate.json"
    ),
) -> None:
    """Check data/raw against the expectation suite; stop on critical failures."""
    config = load_params(params).validation
    frame = read_stage_input(raw / "data.parquet", "ingest")
    spec = DatasetSpec.read(raw / "schema.yaml")
    manifest = read_json(raw / "manifest.json", "ingest")

    staged = out.parent / f".{out.name}.staged"
    shutil.rmtree(staged, ignore_errors=True)
    report = validate(frame, spec, config, docs_dir=staged / "docs")
    # clean checks this hash, so unvalidated raw data is never cleaned.
    summary = {"content_hash": manifest["content_hash"], **report.summary()}
    write_json_atomic(staged / "summary.json", summary)

    for outcome in report.warnings:
        warn(outcome.describe())
    if not report.passed:
        replace_dir_atomic(staged, failed)
        lines = [f"critical: {outcome.describe()}" for outcome in report.critical_failures]
        raise ValidationFailed(lines, str(failed))

    replace_dir_atomic(staged, out)
    figures = report.figures()
    write_json_atomic(metrics, figures)
    say(
        f"validate: {figures['passed']}/{figures['expectations']} expectations met, "
        f"{figures['warnings']} warning(s) on {report.rows} rows; "
        f"Data Docs: {out / 'docs' / 'index.html'}"
    )


if __name__ == "__main__":
    run_command(main)
