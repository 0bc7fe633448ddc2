"""tune: an Optuna search over the family's params, then a refit of the best.

TPE proposes params from `tune.search_space.<family>` (an ensemble: its members' spaces,
keys prefixed by the member, `xgboost.max_depth`, each trial fitting the whole
ensemble, under the same budget and `min_improvement` rule); a Hyperband (or median) pruner
stops trials whose loss, reported every few boosting rounds or epochs (or after each
fold), trails the others. Trials are scored as train scored its objective
(`pipeline.selection`): on rolling-origin folds over the val period for time-ordered
data, else on val (or `tune.cv_folds` folds of train), with train's objective.
The first trial is train's own params with the loss train measured (read from
`models/candidate/model.json`), so nothing is fitted twice. Every trial is a nested
MLflow run under the tune run.

The tuned params replace train's only when their loss beats train's by
`tune.min_improvement`; otherwise the tuned model is train's model, unchanged. When
they win, the best trial's early-stopped model is kept (scored on val) or fitted once
(scored on folds), then refitted on train + val once (`train.refit`).

The study lives in `tune.storage` under a name fixed by the data, the family and the
search space. `tune.n_trials` is the study's total, so re-running with the same
inputs adds no trials and refits the same model, and other processes running
`driftline tune --search-only` on the same storage share the budget.

`tune.n_trials` is the budget; `tune.timeout`, off by default, only caps a study that
would run too long, and when it cuts one the summary says so (`budget`).

Outputs: `models/tuned/`, `reports/tuning/{summary.json,trials.csv}`, `metrics/tune.json`,
the same bytes for the same inputs: no run id, no wall time, no trial's start or
duration (those are in MLflow: the run's `tune_seconds` and its `tuning/trials.csv`).
The run carries the hash of `models/tuned` (`driftline.model_sha256`), by which
evaluate and deploy find it; its id and wall time are also in `reports/runs/tune.json`,
a record for people that is not a DVC output.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import typer

from pipeline.artifacts import (
    read_stage_input,
    staged_directory,
    write_json_atomic,
    write_text_atomic,
)
from pipeline.config import (
    DEFAULT_PARAMS,
    SearchRange,
    TrainConfig,
    TuneConfig,
    is_integer_param,
    load_params,
)
from pipeline.console import report_user_errors, run_command, say
from pipeline.errors import ConfigError, first_line
from pipeline.metrics import rounded
from pipeline.schema import DatasetSpec
from pipeline.secrets import mask_url, redact
from pipeline.stores import prepare_store

if TYPE_CHECKING:
    import optuna

    from pipeline.models import TabularModel

# Report a trial's val loss to the pruner every this many boosting rounds (epochs are
# reported every time): each report is a write to the study's storage.
REPORT_EVERY_ROUNDS = 10
# Columns of Optuna's trials table that say when a trial ran, not what it found: they
# stay in MLflow's copy and out of the versioned one.
TIMING_COLUMNS = ("datetime_start", "datetime_complete", "duration")


@dataclass(frozen=True)
class Untuned:
    """train's model and the loss it scored under the scheme tune's trials use."""

    model: TabularModel
    loss: float | None
    per_fold: list[float] = field(default_factory=list)


@dataclass
class TuneResult:
    model: TabularModel
    best_params: dict[str, Any]
    best_value: float | None
    default_value: float | None
    study_name: str
    trials: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    # "tuned": the best trial's params won by tune.min_improvement; "train": they did
    # not, and `model` is train's; with why, and the study's budget.
    kept: str = "tuned"
    reason: str = ""
    budget: dict[str, Any] = field(default_factory=dict)
    # `model` is train's final model as it is (already refitted when train.refit).
    is_train_model: bool = False


TrialHook = Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None]


def suggest(trial: optuna.Trial, family: str, space: dict[str, SearchRange]) -> dict[str, Any]:
    """One point of the search space, typed as the family's params are."""
    params: dict[str, Any] = {}
    for key, search in space.items():
        if search.choices is not None:
            # Optuna's choices must be scalars, so lists (layer sizes) travel as JSON.
            encoded = [json.dumps(choice) for choice in search.choices]
            params[key] = json.loads(trial.suggest_categorical(key, encoded))
        elif is_integer_param(family, key):
            step = int(search.step) if search.step else 1
            params[key] = trial.suggest_int(
                key, int(search.low), int(search.high), step=step, log=search.log
            )
        else:
            params[key] = trial.suggest_float(
                key, search.low, search.high, step=search.step, log=search.log
            )
    return params


def search_space(train_config: TrainConfig, config: TuneConfig) -> dict[str, SearchRange]:
    """The family's space; an ensemble's is each member's, keys prefixed by the member."""
    if train_config.model != "ensemble":
        return config.search_space.get(train_config.model, {})
    return {
        f"{member}.{key}": search
        for member in train_config.ensemble.members
        for key, search in config.search_space.get(member, {}).items()  # type: ignore[call-overload]
    }


def flat_params(train_config: TrainConfig) -> dict[str, Any]:
    """train's params as the search space names them (an ensemble member's dotted)."""
    params = train_config.family_params()
    if train_config.model != "ensemble":
        return params
    flat = {key: value for key, value in params.items() if key not in train_config.ensemble.members}
    for member in train_config.ensemble.members:
        flat.update({f"{member}.{key}": value for key, value in params[member].items()})
    return flat


def default_point(
    train_config: TrainConfig, space: dict[str, SearchRange]
) -> dict[str, Any] | None:
    """train's own params as a trial, when they lie inside the search space."""
    defaults = flat_params(train_config)
    point: dict[str, Any] = {}
    for key, search in space.items():
        value = defaults[key]
        if search.choices is not None:
            if value not in search.choices:
                return None
            point[key] = json.dumps(value)
        elif value is None or not search.low <= value <= search.high:
            return None
        else:
            point[key] = value
    return point


def study_name(train_config: TrainConfig, config: TuneConfig, data_digest: str, space: dict) -> str:
    """Same data, family, params and space: same study, so workers can share it."""
    identity = json.dumps(
        {
            "data": data_digest,
            "train": train_config.model_dump(mode="json"),
            "space": {key: value.model_dump(mode="json") for key, value in space.items()},
            "cv_folds": config.cv_folds,
            "sampler_seed": config.sampler_seed,
            "pruner": config.pruner,
        },
        sort_keys=True,
    )
    return f"driftline-{train_config.model}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def make_study(config: TuneConfig, name: str) -> optuna.Study:
    import optuna

    pruners = {
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "median": lambda: optuna.pruners.MedianPruner(n_warmup_steps=2),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    shown = mask_url(config.storage) if config.storage else None  # never a password
    attempt = 0
    while True:
        try:
            return optuna.create_study(
                study_name=name,
                storage=config.storage,
                direction="minimize",
                sampler=optuna.samplers.TPESampler(seed=config.sampler_seed),
                pruner=pruners[config.pruner](),
                load_if_exists=True,
            )
        except (ImportError, ValueError, RuntimeError) as exc:
            reason = redact(str(exc), config.storage)
            raise ConfigError(f"tune.storage: cannot open {shown!r} ({reason})") from None
        except Exception as exc:  # SQLAlchemy errors for a database that is down
            # Workers started together on a fresh database race to create Optuna's
            # tables (optuna/optuna#1092): the loser finds them made and tries again.
            if _created_meanwhile(exc) and attempt < STORAGE_RETRIES:
                attempt += 1
                time.sleep(0.5 * attempt)
                continue
            first = redact(first_line(exc), config.storage)
            raise ConfigError(f"tune.storage: cannot open {shown!r} ({first})") from None


STORAGE_RETRIES = 3


def _created_meanwhile(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "duplicate key" in text or "already exists" in text


def cv_folds(train_rows: pd.DataFrame, spec: DatasetSpec, folds: int, seed: int) -> list:
    """k folds of the train rows: in time order when there is a time column (each
    fold validates on rows later than it trains on), stratified for classes."""
    from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit

    if spec.time_column:
        ordered = train_rows.sort_values(spec.time_column, kind="stable")
        splitter = TimeSeriesSplit(n_splits=folds)
        return [
            (ordered.iloc[train_idx], ordered.iloc[val_idx])
            for train_idx, val_idx in splitter.split(ordered)
        ]
    if spec.task == "regression":
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
        indices = splitter.split(train_rows)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        indices = splitter.split(train_rows, train_rows[spec.target])
    return [(train_rows.iloc[a], train_rows.iloc[b]) for a, b in indices]


def distributions(family: str, space: dict[str, SearchRange]) -> dict[str, Any]:
    """Optuna's distributions for the space, as `suggest` samples it."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    found: dict[str, Any] = {}
    for key, search in space.items():
        if search.choices is not None:
            found[key] = CategoricalDistribution([json.dumps(c) for c in search.choices])
        elif is_integer_param(family, key):
            step = int(search.step) if search.step else 1
            found[key] = IntDistribution(
                int(search.low), int(search.high), step=step, log=search.log
            )
        else:
            found[key] = FloatDistribution(
                search.low, search.high, step=search.step, log=search.log
            )
    return found


def tune(
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    spec: DatasetSpec,
    train_config: TrainConfig,
    config: TuneConfig,
    data_digest: str,
    on_trial: TrialHook | None = None,
    search_only: bool = False,
    untuned: Untuned | None = None,
    time_ordered: bool = False,
) -> TuneResult | None:
    """Search, then keep train's model or the best trial's (refitted by the caller).

    `untuned` is train's model with its loss under the scheme the trials use: it is
    trial 0 and the bar the best trial must clear. Without it, train's params are
    enqueued as trial 0 and fitted like any other.
    """
    import optuna

    from pipeline.models import fit_model
    from pipeline.selection import capped_train, loss_on, rolling_folds, score_choice

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    family = train_config.model
    train_config = train_config.with_time_order(time_ordered)  # an ensemble's OOF folds
    if untuned is not None and untuned.model.objective is not None:
        # Trials fit the objective train chose (`train.objective: auto`).
        train_config = train_config.model_copy(update={"objective": untuned.model.objective})
    space = search_space(train_config, config)
    name = study_name(train_config, config, data_digest, space)
    rolling = []
    if time_ordered:
        rolling = rolling_folds(
            train_rows, val_rows, train_config.selection_folds, train_config.selection_rows
        )
    # Trials scored on val fit at most selection_rows rows; the final model fits all.
    trial_rows = capped_train(
        train_rows, train_config.selection_rows, time_ordered, train_config.seed
    )
    folds = (
        cv_folds(train_rows, spec, config.cv_folds, train_config.seed) if config.cv_folds else []
    )
    if folds and untuned is not None:
        untuned = Untuned(untuned.model, None)  # train scored on val, not on these folds

    # Parallel trials share the cores rather than each claiming all of them.
    threads = {}
    if config.n_jobs > 1 and family in ("xgboost", "sklearn"):
        threads = {"n_jobs": max(1, (os.cpu_count() or 1) // config.n_jobs)}
    known_folds = untuned.per_fold if untuned is not None and untuned.loss is not None else []
    # Scored on val, the best trial's early-stopped model is the one to refit: keep it.
    best_fit: dict[str, Any] = {}
    lock = threading.Lock()

    def prune(trial: optuna.Trial, step: int, loss: float) -> None:
        trial.report(loss, step)
        if trial.should_prune():
            raise optuna.TrialPruned()

    def objective(trial: optuna.Trial) -> float:
        params = {**suggest(trial, family, space), **threads}
        if folds:
            losses = []
            for step, (fold_train, fold_val) in enumerate(folds):
                model = fit_model(fold_train, fold_val, spec, train_config, params)
                losses.append(loss_on(model, fold_val, spec.target))
                prune(trial, step, float(np.mean(losses)))
            trial.set_user_attr("best_step", model.report.best_step)
            return float(np.mean(losses))
        if rolling:

            def fold_done(step: int, loss: float, mean: float) -> None:
                # A trial that does not beat train's params on a fold by the margin can
                # never replace them.
                if known_folds and loss >= known_folds[step] * (1 - config.min_improvement):
                    trial.set_user_attr("lost_fold", step)
                    trial.report(mean, step)
                    raise optuna.TrialPruned()
                prune(trial, step, mean)

            scored = score_choice(
                train_rows, val_rows, spec, train_config, rolling, params, on_fold=fold_done
            )
            trial.set_user_attr("per_fold", [round(v, 6) for v in scored.per_fold])
            return scored.loss
        every = REPORT_EVERY_ROUNDS if family == "xgboost" else 1

        def report(step: int, loss: float) -> None:
            if step % every == 0:
                prune(trial, step, loss)

        model = fit_model(trial_rows, val_rows, spec, train_config, params, on_step=report)
        trial.set_user_attr("best_step", model.report.best_step)
        loss = loss_on(model, val_rows, spec.target)
        if trial_rows is not train_rows:
            return loss  # a sample's model: the winner is fitted on every row
        with lock:
            if "loss" not in best_fit or loss < best_fit["loss"]:
                best_fit.update(loss=loss, number=trial.number, model=model)
        return loss

    study = None
    cut_by_timeout = False
    if space and config.n_trials > 0:
        study = make_study(config, name)
        # n_trials is the study's total: a re-run with the same inputs adds no trials
        # and refits the same best, and workers stop once the study holds the budget.
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        remaining = config.n_trials - len(study.get_trials(deepcopy=False, states=finished))
        if remaining > 0:
            default = default_point(train_config, space)
            has_default = any(t.user_attrs.get("default") for t in study.get_trials(deepcopy=False))
            if default is not None and not search_only and not has_default:
                if untuned is not None and untuned.loss is not None:
                    # train fitted these params and measured this loss: trial 0 for free.
                    study.add_trial(
                        optuna.trial.create_trial(
                            params=default,
                            distributions=distributions(family, space),
                            value=untuned.loss,
                            user_attrs={
                                "default": True,
                                "from": "train",
                                "per_fold": untuned.per_fold,
                            },
                        )
                    )
                    remaining -= 1
                    if on_trial:  # recorded like every trial (a nested run, progress)
                        on_trial(study, study.get_trials(deepcopy=False)[-1])
                else:
                    study.enqueue_trial(default, user_attrs={"default": True})
            callbacks: list = [optuna.study.MaxTrialsCallback(config.n_trials, states=finished)]
            if on_trial:
                callbacks.append(on_trial)
            started = time.perf_counter()
            if remaining > 0:
                study.optimize(
                    objective,
                    n_trials=remaining,
                    timeout=config.timeout,
                    n_jobs=config.n_jobs,
                    callbacks=callbacks,
                    catch=(),
                )
            done = len(study.get_trials(deepcopy=False, states=finished))
            cut_by_timeout = (
                config.timeout is not None
                and done < config.n_trials
                and time.perf_counter() - started >= config.timeout
            )
    if search_only:
        return None
    complete = _complete_trials(study)
    counts = _counts(study)
    budget = {"n_trials": config.n_trials, "finished": counts["complete"] + counts["pruned"]}
    if cut_by_timeout:
        budget["cut_by_timeout"] = config.timeout
    trials = study.trials_dataframe() if study is not None else pd.DataFrame()
    defaults = [trial for trial in complete if trial.user_attrs.get("default")]
    default_value = defaults[0].value if defaults else None
    bar = untuned.loss if untuned is not None and untuned.loss is not None else default_value
    bar_folds = defaults[0].user_attrs.get("per_fold", []) if defaults else []
    if untuned is not None and untuned.loss is not None:
        bar_folds = untuned.per_fold
    # Across folds: a trial must beat train's params by the margin on every fold.
    eligible = [trial for trial in complete if _beats(trial, bar, bar_folds, config)]
    best = min(eligible or complete, key=lambda trial: trial.value) if complete else None
    best_params = {k: _decoded(v) for k, v in best.params.items()} if best else {}
    best_value = best.value if best else None

    def result(model: TabularModel, params: dict[str, Any], kept: str, reason: str) -> TuneResult:
        is_train_model = untuned is not None and model is untuned.model
        return TuneResult(
            model,
            params,
            best_value,
            default_value,
            name,
            trials,
            counts,
            kept,
            reason,
            budget,
            is_train_model,
        )

    if best is not None and eligible:
        gain = f" ({1 - best.value / bar:.1%} below train's {bar:.5g})" if bar else ""
        reason = f"trial {best.number} scored {best.value:.5g}{gain}"
        if best_fit.get("number") == best.number:
            return result(best_fit["model"], best_params, "tuned", reason)
        model = fit_model(train_rows, val_rows, spec, train_config, best_params)
        return result(model, best_params, "tuned", reason)
    if best is None:
        reason = "no trial completed (no budget or no search space): train's params"
    elif best.user_attrs.get("default"):
        reason = f"train's params scored best ({best.value:.5g})"
    elif best.value < bar * (1 - config.min_improvement):
        reason = (
            f"the best trial ({best.value:.5g}, trial {best.number}) is not "
            f"{config.min_improvement:.0%} better than train's params on every fold"
        )
    else:
        reason = (
            f"the best trial ({best.value:.5g}) is not {config.min_improvement:.0%} below "
            f"train's {bar:.5g}"
        )
    train_params = train_config.family_params()
    if untuned is not None:
        return result(untuned.model, train_params, "train", reason)
    return result(
        fit_model(train_rows, val_rows, spec, train_config), train_params, "train", reason
    )


def _beats(trial: Any, bar: float | None, bar_folds: list[float], config: TuneConfig) -> bool:
    """Whether a trial clears train's loss by `tune.min_improvement`: on val, or, scored
    on folds, on every fold (one lucky fold does not make a better model)."""
    if trial.user_attrs.get("default"):
        return False
    if bar is None:
        return True
    if trial.value >= bar * (1 - config.min_improvement):
        return False
    per_fold = trial.user_attrs.get("per_fold") or []
    if bar_folds and len(per_fold) == len(bar_folds):
        return all(
            mine < theirs * (1 - config.min_improvement)
            for mine, theirs in zip(per_fold, bar_folds, strict=True)
        )
    return True


def _complete_trials(study: optuna.Study | None) -> list:
    if study is None:
        return []
    import optuna

    return [
        trial
        for trial in study.get_trials(deepcopy=False)
        if trial.state == optuna.trial.TrialState.COMPLETE and math.isfinite(trial.value)
    ]


def _counts(study: optuna.Study | None) -> dict[str, int]:
    if study is None:
        return {"trials": 0, "complete": 0, "pruned": 0, "failed": 0}
    states = [trial.state.name for trial in study.get_trials(deepcopy=False)]
    return {
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
    }


def _decoded(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class TrialLogger:
    """Each finished trial as a nested MLflow run, and a line of progress.

    Optuna calls this from its worker threads, so it uses the thread-safe client, not
    the fluent API's active-run stack.
    """

    def __init__(self, experiment_id: str, parent_run_id: str, progress: Any, task_id: Any) -> None:
        import mlflow

        self.client = mlflow.MlflowClient()
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.progress = progress
        self.task_id = task_id
        self.lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial.number}",
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "driftline.stage": "tune-trial",
                "driftline.trial_state": trial.state.name,
            },
        )
        run_id = run.info.run_id
        for key, value in trial.params.items():
            self.client.log_param(run_id, key, str(_decoded(value)))
        if trial.value is not None:
            self.client.log_metric(run_id, "val_loss", trial.value)
        for step, value in sorted(trial.intermediate_values.items()):
            self.client.log_metric(run_id, "val_loss_curve", value, step=step)
        if "best_step" in trial.user_attrs:
            self.client.log_metric(run_id, "best_step", trial.user_attrs["best_step"])
        state = "FINISHED" if trial.state.name in ("COMPLETE", "PRUNED") else "FAILED"
        self.client.set_terminated(run_id, status=state)
        with self.lock:
            complete = _complete_trials(study)
            best = min((t.value for t in complete), default=float("nan"))
            self.progress.update(
                self.task_id, advance=1, description=f"tune: best val loss {best:.5g}"
            )


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    raw: Annotated[Path, typer.Option(help="The ingest stage's folder.")] = Path("data/raw"),
    split: Annotated[Path, typer.Option(help="The split stage's folder.")] = Path("data/split"),
    out: Annotated[Path, typer.Option(help="The tuned model folder.")] = Path("models/tuned"),
    report: Annotated[Path, typer.Option(help="Folder for summary.json, trials.csv.")] = Path(
        "reports/tuning"
    ),
    run_record: Annotated[
        Path, typer.Option(help="The MLflow run's id and wall time (not a DVC output).")
    ] = Path("reports/runs/tune.json"),
    metrics: Annotated[Path, typer.Option(help="Flat figures for `dvc metrics`.")] = Path(
        "metrics/tune.json"
    ),
    untuned: Annotated[
        Path, typer.Option(help="train's model: trial 0, and the bar tuned params must clear.")
    ] = Path("models/candidate"),
    search_only: Annotated[
        bool,
        typer.Option(
            "--search-only", help="Add trials to the shared study; write nothing (a worker)."
        ),
    ] = False,
) -> None:
    """Search train.<model>'s params with Optuna; refit the best into models/tuned."""
    loaded = load_params(params)
    config, train_config = loaded.tune, loaded.train.with_time_order(loaded.time_ordered)
    spec = DatasetSpec.read(raw / "schema.yaml")
    train_path, val_path = split / "train.parquet", split / "val.parquet"
    train_rows = read_stage_input(train_path, "split")
    val_rows = read_stage_input(val_path, "split")
    if search_only and not config.storage:
        raise ConfigError("tune.storage is null: --search-only workers need a shared storage")

    import mlflow
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pipeline import tracking
    from pipeline.scoring import score

    experiment_id = tracking.start_tracking(loaded.mlflow, loaded.stores.private)
    if config.storage:
        prepare_store(config.storage, loaded.stores.private)  # before Optuna creates it
    provenance = tracking.provenance_tags([train_path, val_path])
    data_digest = provenance["driftline.data_version"]
    space = search_space(train_config, config)
    budget = config.n_trials if space else 0
    baseline = read_untuned(untuned, train_config, data_digest)
    if baseline is None and train_config.objective == "auto" and spec.task == "regression":
        raise ConfigError(
            f"{untuned}: no model train fitted on these split files, so the objective that "
            "train.objective: auto chose is unknown: run train first"
        )
    started = time.perf_counter()
    run_name = f"tune-{train_config.model}" + ("-worker" if search_only else "")
    with (
        tracking.tracking_errors(loaded.mlflow),
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
        ) as progress,
    ):
        mlflow.set_tags(
            {"driftline.stage": "tune", "driftline.family": train_config.model, **provenance}
        )
        mlflow.log_params(tracking.flat_params("train", train_config.recorded()))
        mlflow.log_params(
            {
                "tune.n_trials": config.n_trials,
                "tune.timeout": config.timeout,
                "tune.n_jobs": config.n_jobs,
                "tune.pruner": config.pruner,
                "tune.cv_folds": config.cv_folds,
            }
        )
        task_id = progress.add_task("tune: searching", total=budget or None)
        logger = TrialLogger(experiment_id, run.info.run_id, progress, task_id)
        result = tune(
            train_rows,
            val_rows,
            spec,
            train_config,
            config,
            data_digest,
            on_trial=logger,
            search_only=search_only,
            untuned=baseline,
            time_ordered=loaded.time_ordered,
        )
        if result is None:
            say(f"tune worker: the shared study holds its {config.n_trials} trials")
            return
        mlflow.set_tag("driftline.study", result.study_name)
        mlflow.log_params({f"best.{key}": value for key, value in result.best_params.items()})
        mlflow.set_tags({"driftline.kept": result.kept, "driftline.kept_reason": result.reason})
        if result.is_train_model:  # train's model, refitted already: its val figures
            val_metrics = dict(result.model.selection.get("val", {}))
        else:
            val_metrics = rounded(score(result.model, val_rows, spec.target).metrics)
        if train_config.refit and not result.is_train_model:
            from pipeline.models import refit_model

            refitted = refit_model(result.model, train_rows, val_rows, spec, train_config)
            result = replace(result, model=refitted)
        seconds = time.perf_counter() - started
        mlflow.log_text(result.trials.to_csv(index=False), "tuning/trials.csv")
        trials_csv = versioned_trials(result.trials).to_csv(index=False)
        # Logged from the staged folder before it replaces `out`: a store that fails
        # leaves the previous model and reports as they were.
        with staged_directory(out) as staged:
            result.model.write(staged)
            model_uri = tracking.log_fitted_model(
                result.model,
                staged,
                {f"val_{name}": value for name, value in val_metrics.items()},
                val_rows,
            )
            mlflow.log_metric("tune_seconds", seconds)
            model_sha256 = tracking.tag_model_folder(staged)

    write_text_atomic(report / "trials.csv", trials_csv)

    summary = {
        "family": train_config.model,
        "study": result.study_name,
        "storage": mask_url(config.storage) if config.storage else None,
        "objective": result.model.objective,
        "kept": result.kept,
        "reason": result.reason,
        "budget": result.budget,
        "scored_on": result.model.selection.get("objective", {}).get("scored_on", "val"),
        "best_params": result.best_params,
        "best_val_loss": result.best_value,
        "default_val_loss": result.default_value,
        "refit_val_loss": round(result.model.report.val_loss, 6),
        "best_step": result.model.report.best_step,
        "refit_rows": result.model.report.refit_rows,
        "threshold": result.model.threshold,
        **result.counts,
        "val": val_metrics,
    }
    write_json_atomic(report / "summary.json", summary)
    tracking.write_run_record(run_record, "tune", run.info.run_id, model_uri, model_sha256, seconds)
    write_json_atomic(
        metrics,
        {
            "trials": result.counts["trials"],
            "pruned": result.counts["pruned"],
            "refit_val_loss": summary["refit_val_loss"],
            **{f"val_{name}": value for name, value in val_metrics.items()},
        },
    )
    cut = ""
    if "cut_by_timeout" in result.budget:
        cut = f", cut by tune.timeout after {result.budget['finished']} of {config.n_trials}"
    say(
        f"tune ({train_config.model}): {result.counts['complete']} complete, "
        f"{result.counts['pruned']} pruned in {seconds:.0f} s{cut}; kept {result.kept}'s "
        f"params: {result.reason} -> {out}"
    )


def versioned_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials table without the columns that say when each trial ran."""
    return trials.drop(columns=[c for c in TIMING_COLUMNS if c in trials.columns])


def read_untuned(folder: Path, train_config: TrainConfig, data_digest: str) -> Untuned | None:
    """train's model from `folder`, when it was fitted on these split files with the
    params in params.yaml; its loss is the one train measured (`pipeline.selection`)."""
    from pipeline.models import load_model

    if not (folder / "model.json").exists():
        return None
    model = load_model(folder)
    wanted = train_config.family_params()
    same_params = all(model.params.get(key) == value for key, value in wanted.items())
    selection = model.selection
    if (
        model.family != train_config.model
        or not same_params
        or selection.get("data_version") != data_digest
        or (train_config.objective not in ("auto", model.objective) and model.objective)
    ):
        return None
    figures = selection.get("objective", {})
    per_fold = figures.get("per_fold", {})
    if isinstance(per_fold, dict):  # per objective: the chosen one's
        per_fold = per_fold.get(model.objective or "", [])
    return Untuned(model, figures.get("loss"), list(per_fold))


if __name__ == "__main__":
    run_command(main)
