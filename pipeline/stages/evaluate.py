"""evaluate: test metrics, a naive baseline, slices, importance, plots, and the gate.

The chosen model is tune's refit (`models/tuned`). Train's untuned model and a naive
baseline (hour-of-week mean for regression, class priors for classification) are
scored on the same test rows for comparison, never to choose.

The gate compares the candidate with the registry's champion on these test rows: it
passes only when the candidate beats the champion by `evaluate.min_improvement` on
the primary metric, meets every floor and keeps every bounded fairness gap. With no
champion, the floors alone decide.

Outputs: `metrics/evaluate.json`, `reports/gate.json`, `reports/evaluation.json`
(baseline, untuned, slices, importance), `reports/fairness.json` (per-group metrics and
gaps, pipeline/fairness.py; empty unless `evaluate.fairness` names columns), `plots/`
(CSV for `dvc plots`, PNG in `plots/png/`) and `models/quality_estimator/`: how the
monitor estimates the primary metric before labels arrive (pipeline/quality_estimate.py:
CBPE checked on the test rows for a classifier, DLE's loss model fitted on them for a
regression), which deploy registers with the model. The test metrics, plots, gate and
fairness audit are added to the tune run in MLflow.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import typer

from pipeline.artifacts import (
    read_json,
    read_stage_input,
    staged_directory,
    write_json_atomic,
)
from pipeline.config import DEFAULT_PARAMS, EvaluateConfig, load_params
from pipeline.console import report_user_errors, run_command, say, warn
from pipeline.errors import DataError, DriftlineError
from pipeline.metrics import (
    HIGHER_IS_BETTER,
    check_floors,
    classification_metrics,
    improvement,
    meets_floor,
    primary_metric,
    regression_metrics,
)
from pipeline.schema import DatasetSpec

if TYPE_CHECKING:
    from pipeline.fairness import FairnessAudit
    from pipeline.models import TabularModel
    from pipeline.quality_estimate import QualityEstimator
    from pipeline.scoring import Scored

MAX_SLICE_VALUES = 20


@dataclass(frozen=True)
class GateDecision:
    """Whether the candidate may replace the champion, and the numbers behind it."""

    passed: bool
    reason: str
    primary_metric: str
    candidate: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: str | None = None
    improvement: float | None = None
    min_improvement: float = 0.0
    floors: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The largest gap per metric between groups, with its interval and bound (fairness).
    fairness: dict[str, dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return finite(asdict(self))


def gate(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    metric: str,
    min_improvement: float,
    floors: dict[str, float],
    champion_version: str | None = None,
    champion_error: str | None = None,
    fairness: FairnessAudit | None = None,
) -> GateDecision:
    """Judge a candidate's test metrics against the floors and the champion's.

    `champion_error` says why a champion exists but cannot be scored on these rows (its
    features are gone, say): then nothing is compared, so the candidate is refused.
    `fairness`, the audit of the candidate's groups, refuses it when a gap between two
    groups exceeds `evaluate.fairness.max_gap` beyond the bootstrap noise.
    """
    checked = {
        name: {
            "bound": bound,
            "kind": "min" if HIGHER_IS_BETTER[name] else "max",
            "value": candidate.get(name, float("nan")),
            "met": meets_floor(name, candidate.get(name, float("nan")), bound),
        }
        for name, bound in floors.items()
    }
    failed = [name for name, check in checked.items() if not check["met"]]
    common = {
        "primary_metric": metric,
        "candidate": candidate,
        "champion": champion,
        "champion_version": champion_version,
        "min_improvement": min_improvement,
        "floors": checked,
        "fairness": fairness.to_dict()["gaps"] if fairness is not None else None,
    }
    if failed:
        parts = [
            f"{name} {checked[name]['value']:.4g} "
            f"{'<' if checked[name]['kind'] == 'min' else '>'} {checked[name]['bound']:g}"
            for name in failed
        ]
        return GateDecision(False, f"fails the floor: {'; '.join(parts)}", **common)
    unfair = fairness.failures() if fairness is not None else []
    if unfair:
        return GateDecision(False, f"fails the fairness gap: {'; '.join(unfair)}", **common)
    if champion_error is not None:
        return GateDecision(
            False,
            f"the champion v{champion_version} cannot score the current test rows "
            f"({champion_error}), so the candidate cannot be compared with it",
            **common,
        )
    if champion is None:
        return GateDecision(True, "no champion yet: the candidate meets every floor", **common)
    gain = improvement(metric, candidate[metric], champion[metric])
    versus = (
        f"{metric} {candidate[metric]:.5g} vs champion v{champion_version} "
        f"{champion[metric]:.5g} ({gain:+.2%}, needs {min_improvement:+.2%})"
    )
    if gain >= min_improvement and not math.isnan(gain):
        return GateDecision(True, f"beats the champion: {versus}", improvement=gain, **common)
    return GateDecision(
        False, f"does not beat the champion by enough: {versus}", improvement=gain, **common
    )


def baseline(
    train: pd.DataFrame,
    test: pd.DataFrame,
    spec: DatasetSpec,
    groups: list[str] | None,
    classes: list[Any] | None = None,
) -> tuple[str, dict[str, float]]:
    """A naive model's test metrics: the mean per group (hour of week) for regression,
    the class priors of train for classification. `classes` is the model's class order,
    so the baseline scores the same positive class."""
    target = spec.target
    if spec.task == "regression":
        keys_train, keys_test, label = _baseline_keys(train, test, spec, groups)
        actual = test[target].to_numpy(dtype=np.float64)
        if keys_train is None:
            predicted = np.full(len(test), train[target].mean())
            return "train mean", regression_metrics(actual, predicted)
        names = [f"key{position}" for position in range(len(keys_train))]
        seen = pd.DataFrame(dict(zip(names, (k.to_numpy() for k in keys_train), strict=True)))
        means = seen.assign(mean=train[target].to_numpy()).groupby(names)["mean"].mean()
        wanted = pd.DataFrame(dict(zip(names, (k.to_numpy() for k in keys_test), strict=True)))
        looked_up = wanted.merge(means.reset_index(), on=names, how="left")["mean"]
        predicted = looked_up.fillna(train[target].mean()).to_numpy(dtype=np.float64)
        return label, regression_metrics(actual, predicted)
    from pipeline.models import class_order, encode_labels

    classes = classes or class_order(train[target], spec.task)
    priors = np.bincount(encode_labels(train[target], classes), minlength=len(classes))
    priors = priors / priors.sum()
    codes = encode_labels(test[target], classes, "test")
    probabilities = np.tile(priors, (len(test), 1))
    predicted = np.full(len(test), int(np.argmax(priors)))
    return "majority class, train priors", classification_metrics(
        codes, probabilities, predicted, spec.task
    )


def _baseline_keys(
    train: pd.DataFrame, test: pd.DataFrame, spec: DatasetSpec, groups: list[str] | None
) -> tuple[list | None, list | None, str]:
    if groups:
        missing = [column for column in groups if column not in train.columns]
        if missing:
            raise DataError(f"evaluate.baseline_groups: {', '.join(missing)} not in the data")
        return (
            [train[column] for column in groups],
            [test[column] for column in groups],
            f"mean per {' x '.join(groups)}",
        )
    if spec.time_column:
        train_times = pd.to_datetime(train[spec.time_column])
        test_times = pd.to_datetime(test[spec.time_column])
        return (
            [train_times.dt.dayofweek, train_times.dt.hour],
            [test_times.dt.dayofweek, test_times.dt.hour],
            "hour-of-week mean",
        )
    return None, None, "train mean"


def slice_metrics(
    scored: Scored, test: pd.DataFrame, spec: DatasetSpec, model: TabularModel
) -> dict[str, list[dict[str, Any]]]:
    """The test metrics within each value of each slice column (largest groups first)."""
    slices: dict[str, list[dict[str, Any]]] = {}
    for column in spec.slice_columns:
        if column not in test.columns:
            continue
        values = test[column]
        entries = []
        for value in values.value_counts().index[:MAX_SLICE_VALUES]:
            mask = (values == value).to_numpy()
            if model.task == "regression":
                metrics = regression_metrics(scored.actual[mask], scored.raw[mask])
            else:
                metrics = classification_metrics(
                    scored.codes[mask], scored.raw[mask], scored.predicted_codes[mask], model.task
                )
            entries.append({"value": _plain(value), "rows": int(mask.sum()), **metrics})
        slices[column] = finite(entries)
    return slices


def permutation_importance(
    model: TabularModel, frame: pd.DataFrame, target: str, metric: str, repeats: int, seed: int
) -> pd.DataFrame:
    """How much the metric worsens on `frame` when one feature's values are shuffled
    (positive: the model relies on it). Model-agnostic, so every family gets it."""
    from pipeline.scoring import score

    base = score(model, frame, target).metrics[metric]
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    rng = np.random.default_rng(seed)
    rows = []
    for column in model.features.columns:
        drops = []
        for _ in range(repeats):
            shuffled = frame.copy()
            shuffled[column] = frame[column].to_numpy()[rng.permutation(len(frame))]
            drops.append(sign * (base - score(model, shuffled, target).metrics[metric]))
        rows.append(
            {"feature": column, "importance": float(np.mean(drops)), "std": float(np.std(drops))}
        )
    return pd.DataFrame(rows).sort_values("importance", ascending=False, ignore_index=True)


def finite(value: Any) -> Any:
    """NaN and infinities as null, so the JSON is valid for every reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def champion_metrics(
    champion: TabularModel | None, test: pd.DataFrame, target: str
) -> tuple[dict[str, float] | None, str | None]:
    """The champion's metrics on these test rows, or why it cannot be scored on them."""
    if champion is None:
        return None, None
    from pipeline.scoring import score

    try:
        return score(champion, test, target).metrics, None
    except DriftlineError as exc:
        return None, str(exc)


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    raw: Annotated[Path, typer.Option(help="The ingest stage's folder.")] = Path("data/raw"),
    split: Annotated[Path, typer.Option(help="The split stage's folder.")] = Path("data/split"),
    model: Annotated[Path, typer.Option(help="The chosen model folder.")] = Path("models/tuned"),
    untuned: Annotated[Path, typer.Option(help="Train's model, for comparison.")] = Path(
        "models/candidate"
    ),
    tuning: Annotated[Path, typer.Option(help="Tune's summary (its budget).")] = Path(
        "reports/tuning/summary.json"
    ),
    metrics: Annotated[Path, typer.Option(help="Test metrics for `dvc metrics`.")] = Path(
        "metrics/evaluate.json"
    ),
    report: Annotated[Path, typer.Option(help="Baseline, slices, importance.")] = Path(
        "reports/evaluation.json"
    ),
    gate_report: Annotated[Path, typer.Option("--gate", help="The gate's decision.")] = Path(
        "reports/gate.json"
    ),
    plots: Annotated[Path, typer.Option(help="Plot data and PNGs.")] = Path("plots"),
    quality: Annotated[
        Path, typer.Option(help="The monitor's quality estimator (CBPE check or DLE model).")
    ] = Path("models/quality_estimator"),
    fairness_report: Annotated[
        Path, typer.Option("--fairness", help="Per-group metrics and gaps (evaluate.fairness).")
    ] = Path("reports/fairness.json"),
) -> None:
    """Score the tuned model on test, compare it with the baseline and the champion."""
    loaded = load_params(params)
    config: EvaluateConfig = loaded.evaluate
    spec = DatasetSpec.read(raw / "schema.yaml")
    metric = primary_metric(spec.task, config.primary_metric)
    check_floors(spec.task, config.floors)
    train_rows = read_stage_input(split / "train.parquet", "split")
    val_rows = read_stage_input(split / "val.parquet", "split")
    test_rows = read_stage_input(split / "test.parquet", "split")
    tuned_summary = read_json(tuning, "tune")

    from pipeline import registry
    from pipeline.models import load_model
    from pipeline.scoring import score
    from pipeline.tracking import model_run, start_tracking, tracking_errors

    experiment_id = start_tracking(loaded.mlflow, loaded.stores.private)
    # The tune run that logged this very model folder, found by its hash: on this host
    # or on any that shares the MLflow server, whoever pulled the folder from DVC.
    tune_run_id = model_run(loaded.mlflow, experiment_id, "tune", model)
    candidate = load_model(model)
    scored = score(candidate, test_rows, spec.target)
    untuned_metrics = score(load_model(untuned), test_rows, spec.target).metrics
    baseline_name, baseline_metrics = baseline(
        train_rows, test_rows, spec, config.baseline_groups, candidate.classes
    )

    with (
        tracking_errors(loaded.mlflow),
        tempfile.TemporaryDirectory(prefix="driftline-champion-") as scratch,
    ):
        champion = registry.fetch_alias(loaded.mlflow, registry.CHAMPION, Path(scratch))
        champion_model = champion.load() if champion else None
        champion_scores, incompatible = champion_metrics(champion_model, test_rows, spec.target)
    if incompatible:
        warn(f"the champion v{champion.version} cannot score these test rows ({incompatible})")
    fairness = None
    if config.fairness.enabled:
        from pipeline.fairness import audit

        fairness = audit(scored, test_rows, spec.task, config.fairness, config.seed)
    decision = gate(
        scored.metrics,
        champion_scores,
        metric,
        config.min_improvement,
        config.floors,
        champion.version if champion else None,
        champion_error=incompatible,
        fairness=fairness,
    )
    budget = tuned_summary.get("budget", {})
    if "cut_by_timeout" in budget:
        # A time cap makes the study depend on the machine's load: say so where it counts.
        decision = replace(
            decision,
            reason=f"{decision.reason} (tuning was cut by tune.timeout "
            f"({budget['cut_by_timeout']:g} s) after {budget['finished']} of "
            f"{budget['n_trials']} trials)",
        )

    importance_frame = val_rows
    if len(val_rows) > config.importance_rows:
        importance_frame = val_rows.sample(n=config.importance_rows, random_state=config.seed)
    importance = permutation_importance(
        candidate, importance_frame, spec.target, metric, config.importance_repeats, config.seed
    )
    from pipeline.explain import shap_summary  # SHAP beside permutation importance
    from pipeline.plots import shap_plot

    shap = shap_summary(candidate, importance_frame, seed=config.seed)
    slices = slice_metrics(scored, test_rows, spec, candidate)
    estimator = quality_estimator(
        candidate, scored, test_rows, metric, loaded.monitor.loss_estimator_rounds, config.seed
    )

    test_metrics = finite(scored.metrics)
    evaluation = {
        "primary_metric": metric,
        "model": {"family": candidate.family, "path": str(model)},
        "test": test_metrics,
        "untuned": finite(untuned_metrics),
        "baseline": {"name": baseline_name, **finite(baseline_metrics)},
        "champion": finite(champion_scores) if champion_scores else None,
        "slices": slices,
        "importance": finite(importance.to_dict(orient="records")),
        "shap": finite(shap.to_dict()),
        "test_rows": len(test_rows),
        "quality_estimate": {
            key: value
            for key, value in estimator.to_dict().items()
            if key in ("method", "metric", "reason", "test")
        },
    }
    flat = {
        **test_metrics,
        **{f"untuned_{name}": value for name, value in finite(untuned_metrics).items()},
        **{f"baseline_{name}": value for name, value in finite(baseline_metrics).items()},
        **(fairness.flat() if fairness is not None else {}),
        "gate_passed": decision.passed,
    }
    fairness_json = (
        fairness.to_dict()
        if fairness is not None
        else {"sensitive_columns": [], "gaps": {}, "groups": {}}
    )
    with staged_directory(plots) as staged:
        written_plots = _draw_plots(scored, candidate, test_rows, spec, importance, staged)
        written_plots += shap_plot(
            shap.explanation.features,
            shap.explanation.contributions,
            shap.values,
            shap.explanation.scale,
            staged,
        )
        if fairness is not None:
            from pipeline.fairness import fairness_plot

            written_plots += fairness_plot(fairness, metric, staged)
        # Logged before anything is replaced: a store that fails leaves every output as it was.
        _log_to_mlflow(
            loaded.mlflow, tune_run_id, flat, decision, evaluation, staged, fairness_json
        )
    with staged_directory(quality) as staged:
        estimator.write(staged)
    write_json_atomic(report, evaluation)
    write_json_atomic(gate_report, decision.to_dict())
    write_json_atomic(fairness_report, fairness_json)
    write_json_atomic(metrics, flat)
    say(
        f"evaluate: test {metric} {scored.metrics[metric]:.5g} (untuned "
        f"{untuned_metrics[metric]:.5g}, baseline {baseline_metrics[metric]:.5g}); "
        f"{len(written_plots)} plot files -> {plots}"
    )
    if fairness is not None:
        say(f"fairness: {describe_fairness(fairness)} -> {fairness_report}")
    say(f"gate: {'PASSED' if decision.passed else 'REFUSED'}: {decision.reason}")
    say(f"quality before labels: {describe_estimator(estimator)}")


def quality_estimator(
    model: TabularModel, scored: Scored, test: pd.DataFrame, metric: str, rounds: int, seed: int
) -> QualityEstimator:
    """How the monitor will estimate `metric` before labels arrive, made from the test
    rows the model never trained on."""
    from pipeline.quality_estimate import build_quality_estimator

    return build_quality_estimator(
        model.task,
        metric,
        test,
        scored.raw,
        scored.actual,
        scored.codes,
        scored.predicted_codes,
        model.features.numeric,
        model.features.categorical,
        rounds,
        seed,
    )


def describe_fairness(fairness: FairnessAudit) -> str:
    """One line: the largest gap of each bounded metric, else of every metric."""
    bounded = [gap for gap in fairness.gaps.values() if gap.max_gap is not None]
    shown = bounded or list(fairness.gaps.values())
    if not shown:
        return "no gap (fewer than two groups large enough)"
    return "; ".join(
        f"{gap.metric} gap {gap.gap:.3g} [{gap.low:.3g}, {gap.high:.3g}] ({gap.column})"
        + (f", max {gap.max_gap:g}" if gap.max_gap is not None else "")
        for gap in shown
    )


def describe_estimator(estimator: QualityEstimator) -> str:
    """One line: the method and how close its estimate came on test."""
    if not estimator.available:
        return f"none ({estimator.reason})"
    test, metric = estimator.test, estimator.metric
    checks = test.get("cross_fitted") or [test]
    pairs = [
        f"{check['estimated']:.4g} estimated vs {check['measured']:.4g} measured"
        for check in checks
        if check.get("estimated") is not None and check.get("measured") is not None
    ]
    where = "on each half of test (cross-fitted)" if "cross_fitted" in test else "on test"
    return f"{estimator.method} {metric} {where}: {'; '.join(pairs) or 'undefined'}"


def _draw_plots(
    scored: Scored,
    model: TabularModel,
    test: pd.DataFrame,
    spec: DatasetSpec,
    importance: pd.DataFrame,
    out: Path,
) -> list[Path]:
    """Every plot of the task, as CSV for `dvc plots` and PNG, into `out`."""
    from pipeline import plots

    if model.task == "regression":
        times = test[spec.time_column] if spec.time_column else None
        written = plots.regression_plots(scored.actual, scored.raw, times, out)
    else:
        written = plots.classification_plots(
            scored.codes, scored.raw, scored.predicted_codes, model.classes, out
        )
    return written + plots.importance_plot(importance, out)


def _log_to_mlflow(
    config: Any,
    run_id: str,
    flat: dict[str, Any],
    decision: GateDecision,
    evaluation: dict[str, Any],
    plots: Path,
    fairness: dict[str, Any] | None = None,
) -> None:
    """Add the test metrics, slices, importance, gate and plots to the tune run that made
    the model."""
    import mlflow

    from pipeline.tracking import tracking_errors

    own_prefix = ("untuned_", "baseline_", "fairness_")
    numbers = {
        name if name.startswith(own_prefix) else f"test_{name}": float(value)
        for name, value in flat.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    with (
        tracking_errors(config),
        mlflow.start_run(run_id=run_id),
    ):
        mlflow.log_metrics(numbers)
        mlflow.set_tags(
            {
                "driftline.gate": "passed" if decision.passed else "refused",
                "driftline.gate_reason": decision.reason[:5000],
            }
        )
        mlflow.log_dict(decision.to_dict(), "evaluation/gate.json")
        mlflow.log_dict(evaluation, "evaluation/evaluation.json")
        if fairness is not None:
            mlflow.log_dict(fairness, "evaluation/fairness.json")
        mlflow.log_artifacts(str(plots), "evaluation/plots")


if __name__ == "__main__":
    run_command(main)
