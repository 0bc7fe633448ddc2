"""deploy: register the candidate and move `champion` to it, only if the gate passed.

The registered version carries the native model, its ONNX export, the reference
sample and drift profile split drew for it (what the monitor compares production with),
evaluate's feature importance (how the monitor weighs each column's drift) and its
quality estimator (how the monitor estimates the metric before labels arrive), tagged
with the git commit, the data version, the model's hash and its test metrics. The old
champion becomes `previous`. Every outcome, a promotion or a refusal with its
numbers, is a line in `reports/promotions.jsonl`; `reports/deploy.json` holds the last.
The candidate's model card (pipeline.model_card) goes to `reports/model_card.md` whatever
the outcome, and a registered version carries it as its description and in its run.

The gate is trusted only if it was decided against the champion the registry holds
now; a candidate that is the champion already (the same model) keeps it.

An experiment never moves the champion: inside `dvc exp run` (DVC_EXP_NAME is set), a
candidate that passed its gate is registered under the `challenger` alias, tagged with
the experiment's name, and `driftline promote VERSION` serves it when a person decides.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline import model_card
from pipeline.artifacts import (
    folder_digest,
    read_json,
    read_stage_input,
    write_json_atomic,
    write_text_atomic,
)
from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.console import report_user_errors, run_command, say, warn
from pipeline.errors import DataError
from pipeline.importance import FeatureImportance
from pipeline.registry import QUALITY_FILE


@dataclass(frozen=True)
class Decision:
    action: str  # promote | keep | refuse
    reason: str


def decide(
    gate: dict[str, Any],
    candidate_sha: str,
    champion_version: str | None,
    champion_sha: str | None,
) -> Decision:
    """Promote only on a passed gate that was decided against today's champion."""
    if champion_version is not None and champion_sha == candidate_sha:
        return Decision(
            "keep", f"the candidate is champion v{champion_version} already: nothing changed"
        )
    if gate.get("champion_version") != champion_version:
        judged = gate.get("champion_version")
        return Decision(
            "refuse",
            f"the gate compared with {'v' + judged if judged else 'no champion'} but the "
            f"champion is now {'v' + champion_version if champion_version else 'none'}: "
            "re-run evaluate (dvc repro -f -s evaluate)",
        )
    if not gate["passed"]:
        return Decision("refuse", f"gate refused: {gate['reason']}")
    return Decision("promote", gate["reason"])


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    gate: Annotated[Path, typer.Option(help="The gate's decision.")] = Path("reports/gate.json"),
    evaluation: Annotated[
        Path, typer.Option(help="evaluate's report (the feature importance).")
    ] = Path("reports/evaluation.json"),
    model: Annotated[Path, typer.Option(help="The candidate model.")] = Path("models/tuned"),
    compressed: Annotated[Path, typer.Option(help="Its ONNX export.")] = Path("models/compressed"),
    split: Annotated[Path, typer.Option(help="The split (an input example).")] = Path("data/split"),
    reference: Annotated[
        Path, typer.Option(help="The monitor's reference sample and drift profile.")
    ] = Path("data/reference"),
    report: Annotated[Path, typer.Option(help="This run's decision.")] = Path(
        "reports/deploy.json"
    ),
    quality: Annotated[
        Path, typer.Option(help="evaluate's quality estimator (CBPE check or DLE model).")
    ] = Path("models/quality_estimator"),
    latency: Annotated[
        Path, typer.Option(help="compress's latency record, logged with the model if present.")
    ] = Path("reports/compression_latency.json"),
    split_report: Annotated[
        Path, typer.Option(help="split's report: the rows and period the model saw.")
    ] = Path("reports/split.json"),
    fairness: Annotated[
        Path, typer.Option(help="evaluate's fairness audit, shown in the card if present.")
    ] = Path("reports/fairness.json"),
    card: Annotated[Path, typer.Option(help="The candidate's model card.")] = Path(
        "reports/model_card.md"
    ),
) -> None:
    """Register the candidate and make it the champion if the gate passed; record why."""
    loaded = load_params(params)
    config = loaded.mlflow
    decided = read_json(gate, "evaluate")
    evaluated = read_json(evaluation, "evaluate")
    importance = FeatureImportance.from_evaluation(evaluated)
    if not (compressed / "model.onnx").exists():
        raise DataError(f"{compressed}/model.onnx does not exist: run the compress stage first")
    if not (reference / "reference.parquet").exists() or not (reference / "drift_profile").is_dir():
        raise DataError(
            f"{reference} holds no reference sample and drift profile: run the split stage first"
        )
    candidate_sha = folder_digest(model)
    quality_dir = quality if (quality / QUALITY_FILE).exists() else None
    if quality_dir is None:
        warn(
            f"{quality} holds no {QUALITY_FILE}: the version is registered without it, and "
            "the monitor judges quality by labels alone (re-run evaluate to make it)"
        )

    from pipeline import promotions, tracking
    from pipeline.distill import student_folder
    from pipeline.models import load_model
    from pipeline.registry import CHAMPION, alias_version

    trigger = promotions.trigger_from_environment()
    experiment = promotions.experiment_from_environment()
    experiment_id = tracking.start_tracking(config, loaded.stores.private)
    # The tune run that logged this model folder (by its hash): the deployable model,
    # ONNX export and reference go into it.
    run_id = tracking.model_run(config, experiment_id, "tune", model)
    card_inputs = model_card.CardInputs(
        registered_model=config.registered_model,
        evaluation=evaluated,
        gate=decided,
        model=read_json(model / "model.json", "tune"),
        source=loaded.data.source,
        split=read_json(split_report, "split") if split_report.exists() else None,
        fairness=read_json(fairness, "evaluate") if fairness.exists() else None,
        intended_use=loaded.deploy.model_card.intended_use,
        limitations=[*loaded.deploy.model_card.limitations, *distilled_note(compressed)],
    )
    with tracking.tracking_errors(config):
        import mlflow

        run_tags = mlflow.MlflowClient().get_run(run_id).data.tags
        card_inputs = replace(card_inputs, provenance=model_card.Provenance.from_run_tags(run_tags))
        champion = alias_version(config, CHAMPION)
        champion_version = str(champion.version) if champion is not None else None
        champion_sha = (champion.tags or {}).get(tracking.MODEL_SHA256_TAG) if champion else None
        decision = decide(decided, candidate_sha, champion_version, champion_sha)
        metrics = decided.get("candidate") or {}
        if decision.action == "promote":
            example = read_stage_input(split / "val.parquet", "split")
            with mlflow.start_run(run_id=run_id) as run:
                # The model serving serves: a distilled student where compress kept one
                # (its signature, requirements and pyfunc), the tuned model otherwise.
                uri = tracking.log_model(
                    load_model(student_folder(model, compressed)),
                    model,
                    example,
                    onnx_dir=compressed,
                    name="deployable",
                    reference_dir=reference,
                    importance=importance,
                    quality_dir=quality_dir,
                )
                if latency.exists():  # timings: a record of this host, not a DVC output
                    mlflow.log_dict(read_json(latency, "compress"), "compression/latency.json")
                tags = {
                    tracking.MODEL_SHA256_TAG: candidate_sha,
                    "driftline.metrics": json.dumps(metrics),
                    "driftline.data_version": run.data.tags.get("driftline.data_version", ""),
                    "driftline.git_commit": run.data.tags.get("mlflow.source.git.commit", ""),
                    "driftline.gate": decided["reason"][:5000],
                }
                if experiment:
                    tags["driftline.experiment"] = experiment
            from pipeline.registry import CHALLENGER, register, set_alias

            version = register(config, uri, tags=tags)
            card_text = model_card.build_model_card(
                replace(card_inputs, version=version, outcome=_card_outcome(decision, experiment))
            )
            with mlflow.start_run(run_id=run_id):
                mlflow.log_text(card_text, model_card.CARD_FILE)
            mlflow.MlflowClient().update_model_version(
                config.registered_model,
                version,
                description=model_card.version_description(card_text),
            )
            if experiment:
                set_alias(config, CHALLENGER, version)
                record = promotions.PromotionRecord(
                    time=promotions.now(),
                    action="challenger",
                    version=version,
                    previous=champion_version,
                    trigger=trigger,
                    reason=f"experiment {experiment}: {decision.reason}; the champion stays "
                    f"{'v' + champion_version if champion_version else 'unset'} "
                    f"(`driftline promote {version}` serves this one)",
                    metrics=metrics,
                    champion_metrics=decided.get("champion"),
                )
                promotions.append_record(record)
            else:
                record = promotions.move_champion(
                    config, version, "promote", trigger, decision.reason, metrics=metrics
                )
        else:
            record = promotions.PromotionRecord(
                time=promotions.now(),
                action=decision.action,
                # keep: the champion stays; refuse: nothing was registered.
                version=champion_version if decision.action == "keep" else None,
                previous=None if decision.action == "keep" else champion_version,
                trigger=trigger,
                reason=decision.reason,
                metrics=metrics,
                champion_metrics=decided.get("champion"),
            )
            promotions.append_record(record)
    if decision.action != "promote":
        version = champion_version if decision.action == "keep" else None
    # The file is a DVC output: it leaves out what names the repository's state (the git
    # commit, dvc.lock's hash), which the commit recording the file would change. The
    # card in the run and in the registered version carries them.
    file_inputs = replace(
        card_inputs,
        version=version,
        outcome=_card_outcome(decision, experiment),
        provenance=card_inputs.provenance.of_data(),
    )
    write_text_atomic(card, model_card.build_model_card(file_inputs))
    write_json_atomic(report, asdict(record))
    say(f"deploy: {record.action}: {record.reason}")
    say(f"model card -> {card}")
    if record.action == "promote":
        say(f"champion is now v{record.version} (previous: {record.previous or 'none'})")


def distilled_note(compressed: Path) -> list[str]:
    """The card's line for a version served as a distilled student (`compress.distill`):
    the card describes the tuned model, which serving does not score."""
    meta_path = compressed / "model.json"
    if not meta_path.exists():
        return []
    meta = read_json(meta_path, "compress")
    teacher = meta.get("distilled_from")
    if not teacher:
        return []
    return [
        f"Serving scores a {meta['family']} student distilled from this {teacher['family']} "
        f"model (compress.distill), within compress.max_metric_drop of its test "
        f"{teacher['metric']} ({teacher['score']:.4g}); its figures are in "
        "reports/compression.json."
    ]


def _card_outcome(decision: Decision, experiment: str | None) -> str:
    if decision.action == "promote" and experiment:
        return f"challenger from experiment {experiment}: {decision.reason}"
    return f"{decision.action}: {decision.reason}"


if __name__ == "__main__":
    run_command(main)
