"""The `driftline` command. Stage commands are the same `main` functions DVC runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.console import report_user_errors, run_command, say
from pipeline.secrets import mask_url
from pipeline.stages import (
    clean,
    compress,
    deploy,
    evaluate,
    ingest,
    split,
    train,
    tune,
    validate,
)

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
app.command("deploy")(deploy.main)


@app.command("check-params")
@report_user_errors
def check_params(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
) -> None:
    """Check params.yaml, and check it against the data source, without running anything."""
    from pipeline import preflight

    checked = preflight.check_file(params)
    data = checked.params.data
    say(
        f"{params}: ok (source {mask_url(data.source)}, target {data.target}, "
        f"task {checked.facts['task']}, metric {checked.primary_metric})"
    )


@app.command("summary")
def summary() -> None:
    """What the last pipeline run decided, and what to run next (the end of `make run`)."""
    from pipeline.summary import summarize

    for line in summarize():
        say(line)


@app.command("init")
@report_user_errors
def init(
    source: Annotated[
        str,
        typer.Argument(
            help="A CSV or Parquet file, a folder of them, builtin:<name>, or a SQLAlchemy "
            "URL (with --query)."
        ),
    ],
    target: Annotated[str, typer.Option("--target", help="The column to predict.")],
    query: Annotated[
        str | None, typer.Option(help="The SELECT to run when SOURCE is a SQL URL.")
    ] = None,
    params: Annotated[Path, typer.Option(help="The params file to write.")] = DEFAULT_PARAMS,
) -> None:
    """Write a complete params.yaml for SOURCE: the task, schema, time, key and slice
    columns and the metric are inferred from the data; every other setting is kept. The
    old file is kept as <params>.bak (then .bak.1, ...)."""
    from pipeline.init import init_params

    result = init_params(source, target, params, query)
    for line in result.summary_lines():
        say(line)


@app.command("promote")
@report_user_errors
def promote(
    version: Annotated[str, typer.Argument(help="The registry version to serve.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit trail.")],
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
) -> None:
    """Make VERSION the champion by hand; the old champion becomes `previous`."""
    from pipeline import promotions

    if not reason.strip():
        raise promotions.RegistryError("--reason is empty: say why, for the audit trail")
    config = load_params(params).mlflow
    record = promotions.move_champion(config, version, "promote", "manual", reason)
    say(f"champion is now v{record.version} (previous: {record.previous or 'none'})")


@app.command("rollback")
@report_user_errors
def rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit trail.")] = (
        "manual rollback"
    ),
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
) -> None:
    """Move `champion` back to `previous`."""
    from pipeline import promotions

    record = promotions.rollback(load_params(params).mlflow, reason)
    say(f"rolled back: champion is now v{record.version} (previous: v{record.previous})")


@app.command("status")
@report_user_errors
def status(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    last: Annotated[int, typer.Option(help="How many promotion records to show.")] = 5,
) -> None:
    """The champion, the previous version, their metrics and data, the last records."""
    import json

    from pipeline import promotions
    from pipeline.registry import CHAMPION, PREVIOUS

    config = load_params(params).mlflow
    for alias in (CHAMPION, PREVIOUS):
        found = promotions.describe_version(config, alias)
        if found is None:
            say(f"{alias}: none")
            continue
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in found["metrics"].items() if v is not None)
        say(
            f"{alias}: v{found['version']} registered {found['registered']}, data "
            f"{found['data_version'] or '?'}, commit {(found['git_commit'] or '?')[:10]}; {metrics}"
        )
    say(
        "model cards: each version's description in the MLflow registry (model_card.md in its "
        "run); the last candidate's in reports/model_card.md"
    )
    records = promotions.read_records()[-last:]
    say(f"last {len(records)} record(s) in {promotions.PROMOTIONS}:")
    for record in records:
        say(
            "  "
            + json.dumps(
                {
                    k: record[k]
                    for k in ("time", "action", "version", "previous", "trigger", "reason")
                }
            )
        )


@app.command("serve")
@report_user_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    poll: Annotated[float, typer.Option(help="Seconds between champion checks.")] = 10.0,
    log: Annotated[
        str | None,
        typer.Option(
            help="Prediction log: a folder (parquet by day) or a SQLAlchemy URL. "
            "Default: monitor.prediction_log (DRIFTLINE_PREDICTION_LOG sets it)."
        ),
    ] = None,
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
) -> None:
    """Serve the registry's champion (ONNX) over HTTP; reload when the alias moves.

    POST /admin/reload reloads at once when DRIFTLINE_ADMIN_TOKEN is set.
    """
    import functools
    import os

    from pipeline.label_store import expire_log
    from pipeline.prediction_log import PredictionLog, is_sql_url
    from pipeline.served_champion import champion_source, champion_version
    from pipeline.serving import create_app, run_server

    settings = load_params(params)
    config, log = settings.mlflow, log or settings.monitor.prediction_log
    days, private = settings.monitor.prediction_log_retention_days, settings.stores.private
    expire = None if days is None else functools.partial(expire_log, log, days)
    if is_sql_url(log):
        predictions = PredictionLog.sql(log, private=private, expire=expire)
    else:
        predictions = PredictionLog.parquet(Path(log), private=private, expire=expire)
    app_ = create_app(
        champion_source(config),
        log=predictions,
        admin_token=os.environ.get("DRIFTLINE_ADMIN_TOKEN") or None,
        poll_seconds=poll,
        current_version=champion_version(config),
        limits=settings.serve,
    )
    say(f"serving the champion of {config.registered_model!r} on http://{host}:{port}")
    run_server(app_, host, port)


@app.command("label")
@report_user_errors
def label(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet with columns id, label, time.")],
    log: Annotated[
        str | None,
        typer.Option(
            help="The prediction log (folder or SQL URL). Default: monitor.prediction_log "
            "(DRIFTLINE_PREDICTION_LOG sets it)."
        ),
    ] = None,
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
) -> None:
    """Join labels that arrived later to the logged predictions; store them beside them."""
    from pipeline.label_store import store_labels

    loaded = load_params(params)
    stored = store_labels(file, log or loaded.monitor.prediction_log, loaded.stores.private)
    examples = f" (e.g. {', '.join(stored.unmatched[:3])})" if stored.unmatched else ""
    say(
        f"label: {stored.matched} of {stored.received} label(s) match a logged prediction; "
        f"{len(stored.unmatched)} unmatched{examples}; {stored.unlabelled} prediction(s) "
        f"still wait for a label -> {stored.path or 'nothing stored'}"
    )


@app.command("up")
@report_user_errors
def up(
    port: Annotated[int, typer.Option(help="Port of the prediction API.")] = 8000,
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect server and UI.")] = 4200,
    poll: Annotated[float, typer.Option(help="Seconds between champion checks.")] = 5.0,
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
) -> None:
    """Start the whole loop here: Prefect server, work pools, deployments, workers and
    the prediction API. `driftline down` stops it."""
    from pipeline import stack
    from pipeline.registry import CHAMPION, alias_version

    loaded = load_params(params)
    root = Path.cwd()

    def deploy(project: Path) -> dict:
        from flows.deployments import deploy as deploy_flows

        return deploy_flows(project, str(params))

    def has_champion() -> bool:
        from pipeline.tracking import start_tracking

        start_tracking(loaded.mlflow, loaded.stores.private)
        return alias_version(loaded.mlflow, CHAMPION) is not None

    started = stack.up(
        root,
        prefect_port=prefect_port,
        serve_port=port,
        poll=poll,
        pools=[loaded.monitor.retrain_pool, loaded.monitor.monitor_pool],
        deploy=deploy,
        has_champion=has_champion,
        say=say,
        # The API logs where the monitor reads (monitor.prediction_log of these params, in
        # the same environment) and serves the registry they name. Not `--log URL`: a
        # command line is readable by every local user (`ps`), a password in it too.
        serve_options=["--params", str(params)],
    )
    say(f"Prefect UI:      {started.prefect_api.removesuffix('/api')}")
    say(f"prediction API:  {started.serving} (POST /predict, GET /model)")
    say(f"MLflow UI:       mlflow ui --backend-store-uri {mask_url(loaded.mlflow.tracking_uri)}")
    say(f"Evidently UI:    evidently ui --workspace {loaded.monitor.evidently_workspace}")
    say(f"logs:            {stack.LOGS}/; stop everything with `driftline down`")


@app.command("down")
@report_user_errors
def down() -> None:
    """Stop everything `driftline up` started here."""
    from pipeline import stack

    stopped = stack.down(Path.cwd())
    say(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command("simulate")
@report_user_errors
def simulate(
    weeks: Annotated[int, typer.Option(min=1, help="Weeks of held-out data to replay.")] = 12,
    check_days: Annotated[
        int | None,
        typer.Option(min=1, help="Days between monitor runs; default: monitor.window_hours."),
    ] = None,
    label_delay_days: Annotated[
        int, typer.Option(min=0, help="Days before a prediction's label arrives.")
    ] = 1,
    day_seconds: Annotated[
        float, typer.Option(min=0, help="Wall seconds per simulated day.")
    ] = 0.5,
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
) -> None:
    """Replay the data held out of training (after data.until) through the running
    stack: watch drift detected, a retraining, a new champion and the server reload."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline import simulate as simulation
    from pipeline.stack import Stack

    loaded = load_params(params)
    root = Path.cwd()
    with Progress(
        TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("days")
    ) as progress:
        task = progress.add_task("days", total=None)
        outcome = simulation.simulate(
            root,
            loaded,
            weeks=weeks,
            check_days=check_days or max(1, round(loaded.monitor.window_hours / 24)),
            label_delay_days=label_delay_days,
            day_seconds=day_seconds,
            report=progress.console.print,
            advance=lambda days: progress.advance(task, days),
            days_known=lambda total: progress.update(task, total=total),
        )
    stack = Stack.load(root)
    ui = stack.prefect_api.removesuffix("/api") if stack else "(stack stopped)"
    for line in simulation.summary_lines(outcome, ui, loaded):
        say(line)


def main() -> None:
    """The `driftline` console script: the app, then an exit without the last full
    garbage collection (`run_command`)."""
    run_command(app)


if __name__ == "__main__":
    main()
