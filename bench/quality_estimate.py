"""How closely quality estimated without labels follows the measured one, window by window.

    python -m bench.quality_estimate                     # ELEC2 (CBPE) and bike sharing (DLE)
    python -m bench.quality_estimate --data-dir ../shared/data --window-rows 1344

It is a benchmark, not a test: it prints and asserts nothing. With `--data-dir`, the
whole data sets (`elec2/elecNormNew.csv`, `bike_sharing/hour.csv`); without it, the
slices in tests/fixtures/ (what tests/model/test_quality_estimate.py checks).

Each data set is read in time order and cut into parts, none seen by the next's fit:

- ELEC2 (binary, known concept drift): an xgboost classifier trained on the first
  `--train-share` of the rows, calibrated (isotonic, pipeline/calibration.py) on the
  next `--reference-share`, as Driftline's train stage does on val; every later
  `--window-rows` rows are a window, whose accuracy and ROC AUC are measured on its
  labels and estimated by CBPE from its calibrated probabilities.
- Bike sharing (regression): an xgboost regressor trained on the first part; DLE's
  loss model fitted on the next part (held out, as evaluate fits it on test); each
  later window's RMSE and MAE measured and estimated.

Printed: each window's measured and estimated figures, and the mean absolute gap.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
ELEC2_FEATURES = ("day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")
BIKE_NUMERIC = ("hr", "temp", "atemp", "hum", "windspeed", "mnth", "yr")
BIKE_CATEGORICAL = ("season", "holiday", "weekday", "workingday", "weathersit")
MODEL_PARAMS = {"max_depth": 5, "eta": 0.1, "nthread": 1, "tree_method": "hist"}


@dataclass(frozen=True)
class WindowQuality:
    """One held-out window: its rows and each metric measured and estimated."""

    start: int
    rows: int
    measured: dict[str, float]
    estimated: dict[str, float]


def mean_gap(windows: Sequence[WindowQuality], metric: str) -> float:
    """The mean absolute difference between estimated and measured `metric`."""
    return float(np.mean([abs(w.estimated[metric] - w.measured[metric]) for w in windows]))


def classification_windows(
    frame: pd.DataFrame,
    target: str,
    features: Sequence[str],
    train_share: float,
    reference_share: float,
    window_rows: int,
    rounds: int,
    seed: int,
) -> list[WindowQuality]:
    """CBPE on each held-out window of a time-ordered binary data set."""
    import xgboost

    from pipeline.calibration import fit_calibrator
    from pipeline.metrics import classification_metrics
    from pipeline.quality_estimate import estimate_classification

    classes = sorted(frame[target].unique())
    codes = frame[target].map({label: code for code, label in enumerate(classes)}).to_numpy()
    inputs = frame[list(features)].astype("float64")
    train_end = int(len(frame) * train_share)
    reference_end = train_end + int(len(frame) * reference_share)
    booster = xgboost.train(
        {**MODEL_PARAMS, "objective": "binary:logistic", "seed": seed},
        xgboost.DMatrix(inputs.iloc[:train_end], label=codes[:train_end]),
        num_boost_round=rounds,
    )

    def raw(rows: slice) -> np.ndarray:
        positive = booster.predict(xgboost.DMatrix(inputs.iloc[rows]))
        return np.column_stack([1.0 - positive, positive])

    calibrator = fit_calibrator(
        codes[train_end:reference_end], raw(slice(train_end, reference_end)), "isotonic"
    )
    windows = []
    for start in range(reference_end, len(frame) - window_rows + 1, window_rows):
        rows = slice(start, start + window_rows)
        probabilities = calibrator.apply(raw(rows))
        predicted = probabilities.argmax(axis=1)
        measured = classification_metrics(codes[rows], probabilities, predicted, "binary")
        estimated = estimate_classification(probabilities, predicted, "binary")
        metrics = ("accuracy", "roc_auc", "pr_auc", "f1")
        windows.append(
            WindowQuality(
                start,
                window_rows,
                {m: measured[m] for m in metrics},
                {m: estimated[m] for m in metrics},
            )
        )
    return windows


def regression_windows(
    frame: pd.DataFrame,
    target: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    train_share: float,
    reference_share: float,
    window_rows: int,
    rounds: int,
    seed: int,
) -> list[WindowQuality]:
    """DLE on each held-out window of a time-ordered regression data set."""
    import xgboost

    from pipeline.metrics import regression_metrics
    from pipeline.quality_estimate import fit_loss_estimator

    actual = frame[target].to_numpy(dtype=np.float64)
    inputs = frame[[*numeric, *categorical]].astype("float64")
    train_end = int(len(frame) * train_share)
    reference_end = train_end + int(len(frame) * reference_share)
    booster = xgboost.train(
        {**MODEL_PARAMS, "objective": "reg:squarederror", "seed": seed},
        xgboost.DMatrix(inputs.iloc[:train_end], label=actual[:train_end]),
        num_boost_round=rounds,
    )
    predicted = booster.predict(xgboost.DMatrix(inputs)).astype(np.float64)
    reference = slice(train_end, reference_end)
    estimators = {
        metric: fit_loss_estimator(
            frame.iloc[reference],
            predicted[reference],
            actual[reference],
            metric,
            numeric,
            categorical,
            rounds,
            seed,
        )
        for metric in ("rmse", "mae")
    }
    windows = []
    for start in range(reference_end, len(frame) - window_rows + 1, window_rows):
        rows = slice(start, start + window_rows)
        measured = regression_metrics(actual[rows], predicted[rows])
        estimated = {
            metric: estimator.estimate(frame.iloc[rows], predicted[rows])
            for metric, estimator in estimators.items()
        }
        windows.append(
            WindowQuality(start, window_rows, {m: measured[m] for m in estimators}, estimated)
        )
    return windows


def read_elec2(data_dir: Path | None) -> pd.DataFrame:
    if data_dir is None:
        return pd.read_csv(FIXTURES / "elec2_3000.csv")
    return pd.read_csv(data_dir / "elec2" / "elecNormNew.csv")


def read_bike(data_dir: Path | None) -> pd.DataFrame:
    if data_dir is None:
        return pd.read_csv(FIXTURES / "bike_sharing_2000.csv")
    return pd.read_csv(data_dir / "bike_sharing" / "hour.csv")


def _print(name: str, windows: Sequence[WindowQuality]) -> None:
    metrics = list(windows[0].measured)
    print(f"\n{name}: {len(windows)} held-out windows of {windows[0].rows} rows")
    print("start   " + "  ".join(f"{m:>8} meas  {m:>8} est" for m in metrics))
    for window in windows:
        cells = [f"{window.measured[m]:13.4f}  {window.estimated[m]:12.4f}" for m in metrics]
        print(f"{window.start:<7} " + "  ".join(cells))
    gaps = ", ".join(f"{m} {mean_gap(windows, m):.4f}" for m in metrics)
    print(f"mean absolute gap: {gaps}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="the whole data sets")
    parser.add_argument("--window-rows", type=int, default=300)
    parser.add_argument("--train-share", type=float, default=0.4)
    parser.add_argument("--reference-share", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    common = {
        "train_share": args.train_share,
        "reference_share": args.reference_share,
        "window_rows": args.window_rows,
        "rounds": args.rounds,
        "seed": args.seed,
    }
    elec2 = classification_windows(read_elec2(args.data_dir), "class", ELEC2_FEATURES, **common)
    _print("ELEC2, CBPE", elec2)
    bike = regression_windows(
        read_bike(args.data_dir), "cnt", BIKE_NUMERIC, BIKE_CATEGORICAL, **common
    )
    _print("bike sharing, DLE", bike)


if __name__ == "__main__":
    main()
