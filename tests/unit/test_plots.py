"""The evaluate stage's plot files: names, CSV columns and rows, valid and repeatable PNGs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.plots import classification_plots, importance_plot, regression_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def names(paths: list[Path], out: Path) -> set[str]:
    return {path.relative_to(out).as_posix() for path in paths}


def assert_pngs_valid(paths: list[Path]) -> None:
    for path in paths:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC, path


def snapshot(paths: list[Path]) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in paths}


def binary_case(rows: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, rows)
    positive = np.clip(0.3 * y_true + rng.uniform(0, 0.7, rows), 0, 1)
    probabilities = np.column_stack([1 - positive, positive])
    return y_true, probabilities, (positive > 0.5).astype(int)


# --- regression -----------------------------------------------------------------------------


def test_regression_plots_write_predictions_and_pngs(tmp_path: Path) -> None:
    actual = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([1.5, 2.0, 2.0, 4.5])
    times = pd.Series(pd.date_range("2024-01-01", periods=4, freq="D"), index=[10, 11, 12, 13])
    written = regression_plots(actual, predicted, times, tmp_path)
    assert names(written, tmp_path) == {
        "predictions.csv",
        "png/predicted_vs_actual.png",
        "png/residuals_over_time.png",
    }
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert list(table.columns) == ["actual", "predicted", "residual", "time"]
    assert table["residual"].tolist() == [-0.5, 0.0, 1.0, -0.5]
    assert table["time"].iloc[0] == "2024-01-01T00:00:00"
    assert_pngs_valid(written)


def test_regression_plots_without_times_use_the_row_number(tmp_path: Path) -> None:
    actual = np.linspace(0, 10, 300)
    written = regression_plots(actual, actual + 0.1, None, tmp_path)
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert list(table.columns) == ["actual", "predicted", "residual"]
    assert len(table) == 300
    assert_pngs_valid(written)


def test_regression_csv_is_a_seeded_spread_sample_above_5000_rows(tmp_path: Path) -> None:
    rows = 12_345
    actual = np.arange(rows, dtype=float)
    times = pd.Series(pd.date_range("2020-01-01", periods=rows, freq="h"))
    regression_plots(actual, actual * 0.9, times, tmp_path / "a")
    regression_plots(actual, actual * 0.9, times, tmp_path / "b")
    table = pd.read_csv(tmp_path / "a" / "predictions.csv")
    assert len(table) == 5_000
    assert table["actual"].is_monotonic_increasing and table["actual"].is_unique
    # Evenly spread: every tenth of the period holds about a tenth of the sample.
    per_tenth = np.bincount((table["actual"] * 10 // rows).astype(int))
    assert (np.abs(per_tenth - 500) <= 1).all()
    csv = "predictions.csv"
    assert (tmp_path / "a" / csv).read_bytes() == (tmp_path / "b" / csv).read_bytes()


def test_regression_pngs_are_byte_identical_on_a_second_call(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    actual = rng.normal(size=500)
    times = pd.Series(pd.date_range("2024-01-01", periods=500, freq="min", tz="Europe/Paris"))
    first = snapshot(regression_plots(actual, actual + rng.normal(size=500), times, tmp_path))
    rng = np.random.default_rng(0)
    actual = rng.normal(size=500)
    second = snapshot(regression_plots(actual, actual + rng.normal(size=500), times, tmp_path))
    assert first == second
    assert pd.read_csv(tmp_path / "predictions.csv")["time"].iloc[0].endswith("+01:00")


def test_regression_refuses_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ"):
        regression_plots(np.zeros(3), np.zeros(4), None, tmp_path)
    with pytest.raises(ValueError, match="2 times for 3"):
        regression_plots(np.zeros(3), np.zeros(3), pd.Series(["2024-01-01"] * 2), tmp_path)


# --- classification -------------------------------------------------------------------------


def test_binary_classification_writes_every_file(tmp_path: Path) -> None:
    y_true, probabilities, predicted = binary_case()
    written = classification_plots(y_true, probabilities, predicted, ["no", "yes"], tmp_path)
    assert names(written, tmp_path) == {
        "confusion.csv",
        "roc.csv",
        "pr.csv",
        "calibration.csv",
        "png/confusion_matrix.png",
        "png/roc.png",
        "png/pr.png",
        "png/calibration.png",
    }
    confusion = pd.read_csv(tmp_path / "confusion.csv", dtype=str)
    assert list(confusion.columns) == ["actual", "predicted"]
    assert len(confusion) == len(y_true)
    assert confusion["actual"].tolist() == [["no", "yes"][code] for code in y_true]
    assert set(confusion["predicted"]) <= {"no", "yes"}

    roc = pd.read_csv(tmp_path / "roc.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert (roc.iloc[0]["fpr"], roc.iloc[-1]["tpr"]) == (0.0, 1.0)
    pr = pd.read_csv(tmp_path / "pr.csv")
    assert list(pr.columns) == ["recall", "precision", "threshold"]

    calibration = pd.read_csv(tmp_path / "calibration.csv")
    assert list(calibration.columns) == ["mean_predicted", "fraction_positive", "count"]
    assert calibration["count"].sum() == len(y_true)
    assert (calibration["count"] > 0).all() and len(calibration) <= 10
    assert calibration["mean_predicted"].is_monotonic_increasing
    assert_pngs_valid(written)


def test_calibration_bins_are_the_ten_uniform_ones_and_skip_empty_bins(tmp_path: Path) -> None:
    positive = np.array([0.05, 0.05, 0.15, 0.95, 1.0])
    y_true = np.array([0, 1, 0, 1, 1])
    probabilities = np.column_stack([1 - positive, positive])
    classification_plots(y_true, probabilities, (positive > 0.5).astype(int), [0, 1], tmp_path)
    calibration = pd.read_csv(tmp_path / "calibration.csv")
    assert calibration["count"].tolist() == [2, 1, 2]
    assert calibration["mean_predicted"].tolist() == pytest.approx([0.05, 0.15, 0.975])
    assert calibration["fraction_positive"].tolist() == [0.5, 0.0, 1.0]


def test_long_curves_are_thinned_for_the_csv(tmp_path: Path) -> None:
    y_true, probabilities, predicted = binary_case(rows=20_000)
    classification_plots(y_true, probabilities, predicted, ["a", "b"], tmp_path)
    roc = pd.read_csv(tmp_path / "roc.csv")
    pr = pd.read_csv(tmp_path / "pr.csv")
    assert 2 <= len(roc) <= 1_000 and 2 <= len(pr) <= 1_000
    assert (roc["fpr"].iloc[[0, -1]].tolist(), roc["tpr"].iloc[-1]) == ([0.0, 1.0], 1.0)
    assert pr["recall"].iloc[-1] == 0.0 and pr["precision"].iloc[-1] == 1.0


def test_binary_with_one_class_in_the_test_set_still_writes_every_file(tmp_path: Path) -> None:
    probabilities = np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1]])
    written = classification_plots(
        np.zeros(3, dtype=int), probabilities, np.array([0, 1, 0]), ["no", "yes"], tmp_path
    )
    assert len(written) == 8 and all(path.exists() for path in written)
    assert pd.read_csv(tmp_path / "roc.csv").empty
    assert_pngs_valid(written)


def test_multiclass_writes_one_vs_rest_roc_and_top_class_calibration(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 2 * np.eye(3)[y_true]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    classes = ["low", "mid", 7]
    written = classification_plots(y_true, probabilities, predicted, classes, tmp_path)
    assert names(written, tmp_path) == {
        "confusion.csv",
        "roc.csv",
        "calibration.csv",
        "png/confusion_matrix.png",
        "png/roc.png",
        "png/calibration.png",
    }
    roc = pd.read_csv(tmp_path / "roc.csv", dtype={"class": str})
    assert list(roc.columns) == ["fpr", "tpr", "threshold", "class"]
    assert set(roc["class"]) == {"low", "mid", "7"}
    confusion = pd.read_csv(tmp_path / "confusion.csv", dtype=str)
    assert set(confusion["actual"]) == {"low", "mid", "7"}
    calibration = pd.read_csv(tmp_path / "calibration.csv")
    assert calibration["count"].sum() == 300
    assert calibration["mean_predicted"].min() >= 1 / 3
    assert_pngs_valid(written)


def test_classification_pngs_are_byte_identical_on_a_second_call(tmp_path: Path) -> None:
    y_true, probabilities, predicted = binary_case()
    first = snapshot(classification_plots(y_true, probabilities, predicted, [0, 1], tmp_path))
    second = snapshot(classification_plots(y_true, probabilities, predicted, [0, 1], tmp_path))
    assert first == second


def test_classification_refuses_probabilities_of_the_wrong_shape(tmp_path: Path) -> None:
    y_true, probabilities, predicted = binary_case(rows=10)
    with pytest.raises(ValueError, match="expected"):
        classification_plots(y_true, probabilities, predicted, ["a", "b", "c"], tmp_path)


# --- importance -----------------------------------------------------------------------------


def test_importance_plot_sorts_largest_first(tmp_path: Path) -> None:
    importance = pd.DataFrame(
        {
            "feature": [f"f{i}" for i in range(30)],
            "importance": np.linspace(-0.1, 1.0, 30)[::-1][np.argsort(np.arange(30) % 7)],
            "std": 0.01,
        }
    )
    written = importance_plot(importance, tmp_path, top=5)
    assert names(written, tmp_path) == {"importance.csv", "png/importance.png"}
    table = pd.read_csv(tmp_path / "importance.csv")
    assert list(table.columns) == ["feature", "importance", "std"]
    assert len(table) == 30
    assert table["importance"].is_monotonic_decreasing
    assert_pngs_valid(written)
    first = snapshot(written)
    assert snapshot(importance_plot(importance, tmp_path, top=5)) == first


# --- import cost ----------------------------------------------------------------------------


def test_importing_the_module_loads_neither_matplotlib_nor_sklearn() -> None:
    code = (
        "import sys, pipeline.plots; "
        "print(sorted(m for m in ('matplotlib', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
