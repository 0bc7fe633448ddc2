"""split: train / val / test, by time or stratified at random, and the reference sample.

Outputs: `data/split/{train,val,test}.parquet`, `data/reference/reference.parquet`
(what the monitor compares production data with: a seeded sample of train rows),
`data/reference/drift_profile/` (what the drift check needs from that sample, computed
once here rather than on every check: see `pipeline.drift`), `reports/split.json` and
flat figures in `metrics/split.json`. Test rows live in a file of their own that the
train and tune stages do not depend on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from pipeline.artifacts import read_stage_input, write_json_atomic, write_parquet_atomic
from pipeline.config import DEFAULT_PARAMS, SplitConfig, load_params
from pipeline.console import report_user_errors, run_command, say
from pipeline.drift import build_profile, profile_columns, write_profile
from pipeline.errors import DataError
from pipeline.schema import DatasetSpec

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    reference: pd.DataFrame
    method: str

    def summary(self, spec: DatasetSpec) -> dict[str, Any]:
        parts = {name: getattr(self, name) for name in (*PARTS, "reference")}
        summary: dict[str, Any] = {"method": self.method}
        for name, frame in parts.items():
            entry: dict[str, Any] = {"rows": len(frame)}
            if spec.time_column:
                times = frame[spec.time_column]
                entry["start"], entry["end"] = str(times.min()), str(times.max())
            target = frame[spec.target]
            if spec.task == "regression":
                entry["target_mean"] = float(target.mean())
            else:
                shares = target.value_counts(normalize=True).sort_index()
                entry["class_shares"] = {str(k): round(float(v), 4) for k, v in shares.items()}
            summary[name] = entry
        return summary

    def figures(self) -> dict[str, int]:
        return {f"{name}_rows": len(getattr(self, name)) for name in (*PARTS, "reference")}


def resolve_method(config: SplitConfig, spec: DatasetSpec) -> str:
    """`auto`: by time when a time column is named, else stratified for classes, else random.
    `ordered` cuts the rows in the order the source holds them, for data whose row order is
    its timeline."""
    if config.method != "auto":
        return config.method
    if spec.time_column:
        return "time"
    return "random" if spec.task == "regression" else "stratified"


def split(frame: pd.DataFrame, spec: DatasetSpec, config: SplitConfig) -> Splits:
    """Cut `frame` into train, val and test, and sample the reference from train."""
    method = resolve_method(config, spec)
    fractions = config.fractions
    if len(frame) < len(PARTS):
        raise DataError(f"{len(frame)} rows cannot be split three ways: more data is needed")
    if method == "time":
        if not spec.time_column:
            raise DataError("split.method is time but data.time_column is not set")
        train, val, test = _split_by_time(frame, spec.time_column, fractions.train, fractions.val)
    elif method == "ordered":
        train_end, val_end = _boundaries(len(frame), fractions.train, fractions.val)
        train, val, test = (
            frame.iloc[:train_end],
            frame.iloc[train_end:val_end],
            frame.iloc[val_end:],
        )
    elif method == "stratified":
        if spec.task == "regression":
            raise DataError("split.method: stratified needs a classification target; use random")
        train, val, test = _split_stratified(frame, spec.target, config)
    else:
        order = np.random.default_rng(config.seed).permutation(len(frame))
        train_end, val_end = _boundaries(len(frame), fractions.train, fractions.val)
        shuffled = frame.iloc[order]
        train, val, test = (
            shuffled.iloc[:train_end].sort_index(),
            shuffled.iloc[train_end:val_end].sort_index(),
            shuffled.iloc[val_end:].sort_index(),
        )
    for name, part in zip(PARTS, (train, val, test), strict=True):
        if part.empty:
            raise DataError(
                f"the {name} set is empty ({len(frame)} rows): add data or change split.fractions"
            )
    reference = train.sample(n=min(config.reference_rows, len(train)), random_state=config.seed)
    return Splits(
        train=train.reset_index(drop=True),
        val=val.reset_index(drop=True),
        test=test.reset_index(drop=True),
        reference=reference.sort_index().reset_index(drop=True),
        method=method,
    )


def _boundaries(rows: int, train: float, val: float) -> tuple[int, int]:
    train_end = round(rows * train)
    val_end = round(rows * (train + val))
    return train_end, val_end


def _split_by_time(
    frame: pd.DataFrame, time_column: str, train: float, val: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Earliest period for train, the next for val, the latest for test.

    A boundary never cuts through one timestamp: rows that share it stay together,
    so no set holds a moment that another set also holds.
    """
    if frame[time_column].isna().any():
        raise DataError(f"time column {time_column!r} has missing values: clean must drop them")
    ordered = frame.sort_values(time_column, kind="stable")
    times = ordered[time_column].to_numpy()
    train_end, val_end = _boundaries(len(ordered), train, val)
    train_end = _next_change(times, train_end)
    val_end = max(_next_change(times, val_end), train_end)
    return ordered.iloc[:train_end], ordered.iloc[train_end:val_end], ordered.iloc[val_end:]


def _next_change(times: np.ndarray, index: int) -> int:
    """The first position at or after `index` where the time differs from the one before."""
    if index <= 0 or index >= len(times):
        return index
    return int(np.searchsorted(times, times[index - 1], side="right"))


def _split_stratified(
    frame: pd.DataFrame, target: str, config: SplitConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    counts = frame[target].value_counts()
    if counts.min() < len(PARTS):
        rare = counts.idxmin()
        raise DataError(
            f"class {rare!r} of {target!r} has only {counts.min()} row(s); a stratified split "
            "needs at least 3 per class (add data, or set split.method: random)"
        )
    # Whole row counts, as for the other methods, so 0.7 of 1000 rows is 700.
    train_end, val_end = _boundaries(len(frame), config.fractions.train, config.fractions.val)
    rest, test = train_test_split(
        frame, test_size=len(frame) - val_end, stratify=frame[target], random_state=config.seed
    )
    train, val = train_test_split(
        rest, test_size=val_end - train_end, stratify=rest[target], random_state=config.seed
    )
    return train.sort_index(), val.sort_index(), test.sort_index()


@report_user_errors
def main(
    params: Annotated[Path, typer.Option(help="The params file.")] = DEFAULT_PARAMS,
    raw: Annotated[Path, typer.Option(help="The ingest stage's folder.")] = Path("data/raw"),
    clean: Annotated[Path, typer.Option(help="The cleaned table.")] = Path(
        "data/clean/data.parquet"
    ),
    out: Annotated[Path, typer.Option(help="Folder for train/val/test.parquet.")] = Path(
        "data/split"
    ),
    reference: Annotated[Path, typer.Option(help="The monitor's reference sample.")] = Path(
        "data/reference/reference.parquet"
    ),
    profile: Annotated[
        Path, typer.Option(help="Folder for the drift check's profile of the reference.")
    ] = Path("data/reference/drift_profile"),
    report: Annotated[Path, typer.Option(help="Rows, periods and target per set.")] = Path(
        "reports/split.json"
    ),
    metrics: Annotated[Path, typer.Option(help="Flat figures for `dvc metrics`.")] = Path(
        "metrics/split.json"
    ),
) -> None:
    """Split data/clean into train, val and test; sample the monitor's reference and
    profile it for the drift check."""
    config = load_params(params).split
    spec = DatasetSpec.read(raw / "schema.yaml")
    frame = read_stage_input(clean, "clean")
    result = split(frame, spec, config)
    # Built before anything is written: a failure leaves every output as it was.
    drift_profile = build_profile(result.reference, *profile_columns(result.reference, spec))
    for name in PARTS:
        write_parquet_atomic(out / f"{name}.parquet", getattr(result, name))
    write_parquet_atomic(reference, result.reference)
    write_profile(drift_profile, profile)
    write_json_atomic(report, result.summary(spec))
    figures = result.figures()
    write_json_atomic(metrics, figures)
    say(
        f"split ({result.method}): train {figures['train_rows']}, val {figures['val_rows']}, "
        f"test {figures['test_rows']} rows; reference {figures['reference_rows']} -> {out}; "
        f"drift profile of {len(drift_profile.columns)} columns -> {profile}"
    )


if __name__ == "__main__":
    run_command(main)
