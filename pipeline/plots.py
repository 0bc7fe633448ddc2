"""The evaluate stage's plots, as data for `dvc plots show` and as PNG files.

DVC renders the CSV files with its Vega-Lite templates, but its HTML loads Vega from a
CDN, so the same plots are also drawn with matplotlib into `png/` for offline readers.
Every function takes arrays and an output folder, writes atomically and returns the
paths it wrote. PNG bytes carry no version or date, so equal inputs give equal files
and DVC sees no change.

Files under `out/` and the DVC template that fits each:

- `predictions.csv` (`actual,predicted,residual[,time]`; at most 5,000 rows): `scatter`
  with x=actual, y=predicted; and `linear` with x=time, y=residual.
- `confusion.csv` (`actual,predicted` class labels, one row per test row): `confusion`
  with x=actual, y=predicted.
- `roc.csv` (`fpr,tpr,threshold`, plus `class` for several classes): `simple` or
  `linear` with x=fpr, y=tpr.
- `pr.csv` (`recall,precision,threshold`; two classes only): `simple` or `linear` with
  x=recall, y=precision.
- `calibration.csv` (`mean_predicted,fraction_positive,count`): `simple` or `linear`
  with x=mean_predicted, y=fraction_positive.
- `importance.csv` (`feature,importance,std`, largest first): `bar_horizontal` with
  x=importance, y=feature.
- `shap.csv` (`feature,mean_abs_shap`, largest first): `bar_horizontal` with
  x=mean_abs_shap, y=feature.

PNG files under `out/png/`: `predicted_vs_actual.png`, `residuals_over_time.png`,
`confusion_matrix.png`, `roc.png`, `pr.png` (two classes only), `calibration.png`,
`importance.png`, `shap_summary.png`.

matplotlib and scikit-learn are imported inside the functions: importing this module
costs nothing for the stages that do not draw.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.artifacts import write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_CSV_ROWS = 5_000
MAX_CURVE_POINTS = 1_000
CALIBRATION_BINS = 10
DPI = 100
SEED = 0


# --- regression -----------------------------------------------------------------------------


def regression_plots(
    actual: np.ndarray | pd.Series,
    predicted: np.ndarray | pd.Series,
    times: pd.Series | None,
    out: Path,
) -> list[Path]:
    """`predictions.csv`, `png/predicted_vs_actual.png` and `png/residuals_over_time.png`.

    The residual is actual minus predicted. Residuals are drawn against `times` when
    given, else against the row number.
    """
    actual = np.asarray(actual, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    if actual.shape != predicted.shape or actual.ndim != 1:
        raise ValueError(f"actual {actual.shape} and predicted {predicted.shape} differ")
    if times is not None and len(times) != len(actual):
        raise ValueError(f"{len(times)} times for {len(actual)} predictions")
    residual = actual - predicted
    moments = None if times is None else _naive_times(times)

    table = pd.DataFrame({"actual": actual, "predicted": predicted, "residual": residual})
    if times is not None:
        table["time"] = [_iso(t) for t in pd.to_datetime(pd.Series(times).reset_index(drop=True))]
    data = out / "predictions.csv"
    _write_csv(data, table.iloc[_spread_sample(len(table), MAX_CSV_ROWS)])

    rmse = float(np.sqrt(np.mean(residual**2))) if len(residual) else float("nan")
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.scatter(actual, predicted, s=8, alpha=0.4, linewidths=0)
        if len(actual):
            low = float(min(actual.min(), predicted.min()))
            high = float(max(actual.max(), predicted.max()))
            ax.plot([low, high], [low, high], color="black", linewidth=1, label="y = x")
            ax.legend(loc="upper left")
        ax.set(xlabel="actual", ylabel="predicted", title=f"Predicted vs actual (RMSE {rmse:.4g})")
        scatter = _save_png(plt, fig, out / "png" / "predicted_vs_actual.png")

        fig, ax = plt.subplots(figsize=(9, 4))
        if moments is None:
            x: Any = np.arange(len(residual))
            ordered = residual
            xlabel = "row"
        else:
            order = np.argsort(moments, kind="stable")
            x = moments[order]
            ordered = residual[order]
            xlabel = "time"
        ax.scatter(x, ordered, s=6, alpha=0.35, linewidths=0, label="residual")
        window = len(ordered) // 50
        if window > 1:
            rolling = pd.Series(ordered).rolling(window, center=True, min_periods=1).mean()
            ax.plot(x, rolling.to_numpy(), color="tab:orange", label=f"rolling mean ({window})")
        ax.axhline(0.0, color="black", linewidth=1)
        ax.set(xlabel=xlabel, ylabel="actual - predicted", title="Residuals over time")
        if len(ordered):
            ax.legend(loc="upper left")
        if moments is not None:
            fig.autofmt_xdate()
        over_time = _save_png(plt, fig, out / "png" / "residuals_over_time.png")
    return [data, scatter, over_time]


def _naive_times(times: pd.Series) -> np.ndarray:
    """datetime64 values for the x axis; zoned times are drawn in UTC."""
    moments = pd.to_datetime(pd.Series(times).reset_index(drop=True))
    if moments.dt.tz is not None:
        moments = moments.dt.tz_convert("UTC").dt.tz_localize(None)
    return moments.to_numpy()


def _iso(moment: Any) -> str:
    return "" if pd.isna(moment) else pd.Timestamp(moment).isoformat()


def _spread_sample(rows: int, limit: int) -> np.ndarray:
    """Row positions, in order: all of them, or one drawn at random (seed 0) from each of
    `limit` equal slices, so the sample covers the whole period evenly."""
    if rows <= limit:
        return np.arange(rows)
    edges = np.linspace(0, rows, limit + 1).astype(int)
    return np.random.default_rng(SEED).integers(edges[:-1], edges[1:])


# --- classification -------------------------------------------------------------------------


def classification_plots(
    y_true_codes: np.ndarray,
    probabilities: np.ndarray,
    predicted_codes: np.ndarray,
    classes: Sequence[Any],
    out: Path,
) -> list[Path]:
    """Confusion, ROC and calibration plots; precision-recall too for two classes.

    Codes index `classes`. With two classes the positive one is `classes[1]`; with more,
    ROC is one-vs-rest per class and calibration is of the top-class confidence. A curve
    that the test set cannot define (a class with no rows) is left out, and the files are
    written all the same so DVC finds every output it declares.
    """
    y_true = np.asarray(y_true_codes).astype(int)
    predicted = np.asarray(predicted_codes).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    labels = [str(label) for label in classes]
    k = len(labels)
    if probabilities.ndim != 2 or probabilities.shape != (len(y_true), k):
        raise ValueError(f"probabilities {probabilities.shape}, expected ({len(y_true)}, {k})")
    if predicted.shape != y_true.shape:
        raise ValueError(f"predicted codes {predicted.shape}, true codes {y_true.shape}")
    if k < 2:
        raise ValueError(f"{k} class(es): classification plots need at least two")

    written = _confusion(y_true, predicted, labels, out)
    if k == 2:
        written += _binary_curves(y_true, probabilities[:, 1], labels[1], out)
        confidence, hit = probabilities[:, 1], y_true == 1
        axis_labels = (f"predicted P({labels[1]})", f"fraction {labels[1]}")
    else:
        written += _one_vs_rest_roc(y_true, probabilities, labels, out)
        confidence = probabilities.max(axis=1)
        hit = probabilities.argmax(axis=1) == y_true
        axis_labels = ("top-class confidence", "fraction correct")
    written += _calibration(confidence, hit, axis_labels, out)
    return written


def _confusion(
    y_true: np.ndarray, predicted: np.ndarray, labels: list[str], out: Path
) -> list[Path]:
    from sklearn.metrics import confusion_matrix

    names = np.asarray(labels, dtype=object)
    data = out / "confusion.csv"
    _write_csv(data, pd.DataFrame({"actual": names[y_true], "predicted": names[predicted]}))

    counts = confusion_matrix(y_true, predicted, labels=np.arange(len(labels)))
    side = max(4.0, 0.6 * len(labels) + 2)
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(side, side))
        ax.imshow(counts, cmap="Blues")
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right")
        ax.set_yticks(ticks, labels)
        bright = counts.max() / 2 if counts.size else 0
        for row, column in np.ndindex(counts.shape):
            value = counts[row, column]
            ax.text(
                column,
                row,
                str(value),
                ha="center",
                va="center",
                color="white" if value > bright else "black",
                fontsize="small",
            )
        ax.set(xlabel="predicted", ylabel="actual", title=f"Confusion matrix ({len(y_true)} rows)")
        png = _save_png(plt, fig, out / "png" / "confusion_matrix.png")
    return [data, png]


def _binary_curves(y_true: np.ndarray, score: np.ndarray, positive: str, out: Path) -> list[Path]:
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    positive_rows = int((y_true == 1).sum())
    defined = 0 < positive_rows < len(y_true)
    roc = pd.DataFrame(columns=["fpr", "tpr", "threshold"], dtype=float)
    pr = pd.DataFrame(columns=["recall", "precision", "threshold"], dtype=float)
    if defined:
        fpr, tpr, roc_thresholds = roc_curve(y_true, score, pos_label=1)
        precision, recall, pr_thresholds = precision_recall_curve(y_true, score, pos_label=1)
        # The last point (recall 0, precision 1) has no threshold of its own.
        pr_thresholds = np.append(pr_thresholds, np.nan)
        roc = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": _finite(roc_thresholds)})
        pr = pd.DataFrame({"recall": recall, "precision": precision, "threshold": pr_thresholds})
        area = auc(fpr, tpr)
        average_precision = average_precision_score(y_true, score, pos_label=1)
    roc_data, pr_data = out / "roc.csv", out / "pr.csv"
    _write_csv(roc_data, roc.iloc[_thin(len(roc))])
    _write_csv(pr_data, pr.iloc[_thin(len(pr))])

    undefined = f"undefined: the test set holds only one class ({len(y_true)} rows)"
    with _pyplot() as plt:
        fig, ax = _square_axes(plt)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
        if defined:
            ax.plot(roc["fpr"], roc["tpr"], label=f"{positive} (AUC {area:.3f})")
        else:
            _note(ax, undefined)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        ax.legend(loc="lower right")
        roc_png = _save_png(plt, fig, out / "png" / "roc.png")

        fig, ax = _square_axes(plt)
        if defined:
            prevalence = positive_rows / len(y_true)
            ax.plot(pr["recall"], pr["precision"], label=f"{positive} (AP {average_precision:.3f})")
            ax.axhline(
                prevalence,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"prevalence {prevalence:.3f}",
            )
            ax.legend(loc="lower left")
        else:
            _note(ax, undefined)
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
        pr_png = _save_png(plt, fig, out / "png" / "pr.png")
    return [roc_data, pr_data, roc_png, pr_png]


def _one_vs_rest_roc(
    y_true: np.ndarray, probabilities: np.ndarray, labels: list[str], out: Path
) -> list[Path]:
    from sklearn.metrics import auc, roc_curve

    curves: list[pd.DataFrame] = []
    areas: list[float] = []
    for code, label in enumerate(labels):
        is_class = y_true == code
        if not 0 < is_class.sum() < len(y_true):
            continue  # ROC needs rows in and out of the class.
        fpr, tpr, thresholds = roc_curve(is_class, probabilities[:, code])
        curve = pd.DataFrame(
            {"fpr": fpr, "tpr": tpr, "threshold": _finite(thresholds), "class": label}
        )
        curves.append(curve.iloc[_thin(len(curve))])
        areas.append(float(auc(fpr, tpr)))
    columns = ["fpr", "tpr", "threshold", "class"]
    table = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=columns)
    data = out / "roc.csv"
    _write_csv(data, table[columns])

    with _pyplot() as plt:
        fig, ax = _square_axes(plt)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
        for curve, area in zip(curves, areas, strict=True):
            ax.plot(curve["fpr"], curve["tpr"], label=f"{curve['class'].iat[0]} (AUC {area:.3f})")
        if not curves:
            _note(ax, f"undefined: the test set holds only one class ({len(y_true)} rows)")
        ax.legend(loc="lower right", fontsize="small", ncol=1 + len(curves) // 12)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one vs rest")
        png = _save_png(plt, fig, out / "png" / "roc.png")
    return [data, png]


def _calibration(
    confidence: np.ndarray, hit: np.ndarray, axis_labels: tuple[str, str], out: Path
) -> list[Path]:
    """Ten equal bins over [0, 1]; empty bins are left out."""
    bins = np.clip((confidence * CALIBRATION_BINS).astype(int), 0, CALIBRATION_BINS - 1)
    count = np.bincount(bins, minlength=CALIBRATION_BINS)
    used = count > 0
    total = np.bincount(bins, weights=confidence, minlength=CALIBRATION_BINS)
    hits = np.bincount(bins, weights=hit.astype(float), minlength=CALIBRATION_BINS)
    table = pd.DataFrame(
        {
            "mean_predicted": total[used] / count[used],
            "fraction_positive": hits[used] / count[used],
            "count": count[used],
        }
    )
    data = out / "calibration.csv"
    _write_csv(data, table)

    with _pyplot() as plt:
        fig, ax = _square_axes(plt)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
        ax.plot(table["mean_predicted"], table["fraction_positive"], marker="o", label="model")
        for row in table.itertuples():
            ax.annotate(
                str(row.count),
                (row.mean_predicted, row.fraction_positive),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize="x-small",
                color="dimgrey",
            )
        ax.set(xlabel=axis_labels[0], ylabel=axis_labels[1], title="Calibration (rows per bin)")
        ax.legend(loc="upper left")
        png = _save_png(plt, fig, out / "png" / "calibration.png")
    return [data, png]


def _finite(thresholds: np.ndarray) -> np.ndarray:
    """sklearn starts ROC thresholds at infinity; an empty cell reads better in a CSV."""
    return np.where(np.isfinite(thresholds), thresholds, np.nan)


def _thin(points: int, limit: int = MAX_CURVE_POINTS) -> np.ndarray:
    """About `limit` evenly spaced positions, always keeping the first and the last."""
    if points <= limit:
        return np.arange(points)
    return np.unique(np.linspace(0, points - 1, limit).round().astype(int))


# --- importance -----------------------------------------------------------------------------


def importance_plot(importance: pd.DataFrame, out: Path, top: int = 20) -> list[Path]:
    """`importance.csv` (every feature, largest first) and `png/importance.png` (the `top`
    features, with one standard deviation as error bars)."""
    missing = {"feature", "importance", "std"} - set(importance.columns)
    if missing:
        raise ValueError(f"importance frame lacks {sorted(missing)}")
    table = (
        importance[["feature", "importance", "std"]]
        .sort_values("feature", kind="stable")
        .sort_values("importance", ascending=False, kind="stable")
        .reset_index(drop=True)
    )
    data = out / "importance.csv"
    _write_csv(data, table)

    shown = table.head(top)
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(shown) + 1.2)))
        positions = np.arange(len(shown))
        ax.barh(
            positions,
            shown["importance"],
            xerr=shown["std"].fillna(0.0),
            color="tab:blue",
            ecolor="black",
            capsize=2,
        )
        ax.set_yticks(positions, shown["feature"].astype(str))
        ax.invert_yaxis()
        ax.axvline(0.0, color="black", linewidth=0.8)
        title = f"Feature importance (top {len(shown)} of {len(table)})"
        ax.set(xlabel="importance", title=title)
        png = _save_png(plt, fig, out / "png" / "importance.png")
    return [data, png]


def shap_plot(
    features: Sequence[str],
    contributions: np.ndarray,
    values: pd.DataFrame,
    scale: str,
    out: Path,
    top: int = 20,
) -> list[Path]:
    """`shap.csv` (`feature,mean_abs_shap`, largest first) and `png/shap_summary.png`:
    per feature (the `top` by mean |SHAP|), each explained row's SHAP value, coloured
    by the feature's value (numerics, low blue to high red; categoricals and gaps grey)."""
    contributions = np.asarray(contributions, dtype=np.float64)
    table = pd.DataFrame(
        {"feature": list(features), "mean_abs_shap": np.abs(contributions).mean(axis=0)}
    )
    table = table.sort_values("mean_abs_shap", ascending=False, kind="stable", ignore_index=True)
    data = out / "shap.csv"
    _write_csv(data, table)

    shown = list(table["feature"].head(top))
    column_of = {name: position for position, name in enumerate(features)}
    rng = np.random.default_rng(SEED)
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(shown) + 1.2)))
        for row, name in enumerate(shown):
            x = contributions[:, column_of[name]]
            y = row + rng.uniform(-0.3, 0.3, size=len(x))
            raw = values[name] if name in values else pd.Series(dtype=object)
            if pd.api.types.is_numeric_dtype(raw) and raw.notna().any():
                low, high = np.nanpercentile(raw, [5, 95])
                shade = np.clip((raw.to_numpy() - low) / ((high - low) or 1.0), 0.0, 1.0)
                colours = plt.cm.coolwarm(np.nan_to_num(shade, nan=0.5))
                colours[raw.isna().to_numpy()] = (0.6, 0.6, 0.6, 1.0)
            else:
                colours = np.tile((0.6, 0.6, 0.6, 1.0), (len(x), 1))
            ax.scatter(x, y, s=6, c=colours, alpha=0.7, linewidths=0)
        ax.set_yticks(np.arange(len(shown)), [str(name) for name in shown])
        ax.invert_yaxis()
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set(
            xlabel=f"SHAP value ({scale})",
            title=f"SHAP summary: {len(contributions)} rows (colour: low to high value)",
        )
        png = _save_png(plt, fig, out / "png" / "shap_summary.png")
    return [data, png]


# --- shared ---------------------------------------------------------------------------------


@contextmanager
def _pyplot() -> Iterator[Any]:
    """pyplot on the Agg backend with matplotlib's default style, whatever the user's
    matplotlibrc says, so the PNG files look the same on every machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context("default"):
        yield plt


def _square_axes(plt: Any) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal")
    return fig, ax


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)


def _save_png(plt: Any, fig: Figure, path: Path) -> Path:
    """Render in memory and write atomically; no Software or date metadata, so the bytes
    depend on the inputs alone."""
    try:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.10g"))
