"""The `driftline` command. Stage commands are the same `main` functions DVC runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.console import report_user_errors, say
from pipeline.stages import clean, compress, evaluate, ingest, split, train, tune, validate

app = typer.Typer(
    name="driftline",
    help="Driftline: an orchestrated MLOps pipeline for tabular supervised learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

app.command("ingest")(ingest.main)
app.command("validate")(validate.main)
app.command("clean")(clean.main)
app.command("split")(split.main)
app.command("train")(train.main)
app.command("tune")(tune.main)
app.command("evaluate")(evaluate.main)
app.command("compress")(compress.main)


@app.command("check-params")
@report_user_errors
def check_params(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
) -> None:
    """Load and check params.yaml without running anything."""
    loaded = load_params(params)
    say(f"{params}: ok (source {loaded.data.source}, target {loaded.data.target})")


if __name__ == "__main__":
    app()
