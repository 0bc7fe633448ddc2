"""check: params against the data source, before any stage does work.

dvc.yaml's first stage: every other stage depends on its report, so `dvc repro` runs
it first whenever params.yaml changes, and a mistake anywhere in params (a column not
in the data, a metric of another task, a `data.until` outside the data) is one line at
second 1. The report holds only what was checked (task, metric, columns, time range),
so a change that passes leaves it as it was and re-runs nothing downstream.
`driftline check-params` runs the same checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline import preflight
from pipeline.artifacts import write_json_atomic
from pipeline.config import DEFAULT_PARAMS
from pipeline.console import report_user_errors, run_command, say
from pipeline.secrets import mask_url


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    report: Annotated[Path, typer.Option(help="What was checked, as JSON.")] = Path(
        "reports/check.json"
    ),
) -> None:
    """Check params.yaml against the data source; one line per run, every problem in it."""
    checked = preflight.check_file(params)
    write_json_atomic(report, checked.facts)
    say(
        f"check: {params} fits {mask_url(checked.params.data.source)} "
        f"(task {checked.facts['task']}, "
        f"metric {checked.primary_metric}) -> {report}"
    )


if __name__ == "__main__":
    run_command(main)
