"""Driftline's drift check against Evidently's `DataDriftPreset`, on the same frames.

`python -m bench.drift --rows 1000000 --cols 20` prints, for each way of deciding drift,
its wall time and peak memory, the speed-up, and whether the per-column verdicts agree.
It is a benchmark, not a test: it asserts nothing and writes nothing in the repository.

The frames are synthetic and seeded (`--seed`): a reference of `--reference-rows` rows
(default: `--rows`, the same size as the current window, as the issue's 114 s figure
was measured) and a current window of `--rows` rows, with `--cols` columns: continuous
numerics (1% missing), numerics of four values and six-category text columns. A third
of the columns are shifted enough to drift, a third a little (close to the thresholds,
so the methods have to agree where it is hard), the rest not at all.

Each method runs in a fresh Python process that builds the frames it needs, then is
timed; its peak RSS (`ru_maxrss`) covers that process alone:

- evidently: `Report([DataDriftPreset()]).run(...)` on the reference and the window, with
  an explicit `DataDefinition` (which columns are numeric and which categorical), and
  per-column verdicts read from the snapshot. `import evidently` is timed apart.
- profile: `build_profile` on the reference and `write_profile` to a temporary folder:
  what the split stage pays once per reference.
- check: `read_profile` of that folder and `check_drift` on the window: what the
  monitor pays for each decision. It never sees the reference frame. The scipy modules
  that `pipeline.drift` imports on first use are timed with the imports.

"RSS before" is what each process holds once its imports are done and its frames built;
"peak RSS" is its `ru_maxrss` from there on: the process's peak while the method runs,
frames included. (Linux lets a process reset that high-water mark, through
/proc/self/clear_refs, so building the frames does not count; where it cannot, the
header says so and the peak covers the whole process.)

The speed-up is Evidently's run over the check (read + check_drift), and over profile
plus check (a window checked against a reference never profiled before).

Then the check from the log's summaries (pipeline/summaries.py), in two more workers:

- summaries: what serving's flush thread pays to summarise 1,000 logged rows, then the
  window cut into 24 hours and stored as 24 hourly summaries (what each hour's flush
  summaries merge into), as a parquet log stores them;
- summary-check: `read_profile`, reading and merging the 24 summaries, and
  `check_summary`: what the monitor pays per decision. Its verdicts are set against
  Evidently's and the row check's on the same window.

Both run again for a window `--bigger` times larger (10x: 10M rows at --rows 1000000,
the same 24 hours with ten times the traffic, built an hour at a time; Evidently does
not run on it). `--fixtures` instead prints, in seconds, the sketch's verdicts against
the row check's on the bike, ELEC2 and bank fixtures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import QUIET

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = np.array([f"k{index}" for index in range(6)], dtype=object)
MISSING_SHARE = 0.01


# --- the frames --------------------------------------------------------------------------


def column_kind(position: int) -> str:
    """Every fifth column is text categories, every fifth a numeric of four values."""
    if position % 5 == 4:
        return "categorical"
    return "discrete" if position % 5 == 3 else "continuous"


def column_shift(position: int) -> float:
    """How far the current window moves from the reference: 0.25 (drifts), 0.05 (near
    the thresholds) or 0."""
    return (0.25, 0.05, 0.0)[position % 3]


def column_names(cols: int) -> tuple[list[str], list[str]]:
    """(numeric, categorical) column names."""
    names = [f"f{position:02d}" for position in range(cols)]
    numeric = [
        name for position, name in enumerate(names) if column_kind(position) != "categorical"
    ]
    categorical = [name for name in names if name not in numeric]
    return numeric, categorical


def make_frame(rows: int, cols: int, seed: int, current: bool) -> pd.DataFrame:
    """The reference (`current=False`) or the window, seeded per column and role, so each
    process builds the same frames."""
    columns = {}
    for position in range(cols):
        rng = np.random.default_rng([seed, position, int(current)])
        shift = column_shift(position) if current else 0.0
        kind = column_kind(position)
        if kind == "continuous":
            values = rng.normal(loc=shift, scale=1.0 + shift, size=rows)
            values[rng.random(rows) < MISSING_SHARE] = np.nan
        elif kind == "discrete":
            shares = np.array([0.4, 0.3, 0.2, 0.1]) + np.array([-1, 0, 0, 1]) * shift
            values = rng.choice(4, size=rows, p=shares).astype(np.float64)
        else:
            shares = np.full(len(CATEGORIES), 1 / len(CATEGORIES))
            shares[0], shares[-1] = shares[0] + shift / 2, shares[-1] - shift / 2
            values = CATEGORIES[rng.choice(len(CATEGORIES), size=rows, p=shares)]
        columns[f"f{position:02d}"] = values
    return pd.DataFrame(columns)


# --- the workers: one method each, in a fresh process -------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set since the start or the last reset (Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    """What this process holds now."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def start_measuring() -> tuple[float, bool]:
    """RSS now, and whether the peak was reset to it (so the peak is the method's)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    return rss_now_mb(), reset


def run_evidently(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from pipeline.drift import per_column_verdicts, reported_drift, reported_share

    imported = time.perf_counter() - started
    numeric, categorical = column_names(args.cols)
    reference = make_frame(args.reference_rows, args.cols, args.seed, current=False)
    current = make_frame(args.rows, args.cols, args.seed, current=True)
    before, reset = start_measuring()
    started = time.perf_counter()
    definition = DataDefinition(
        numerical_columns=numeric,
        categorical_columns=categorical,
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    wall = time.perf_counter() - started
    reported = reported_drift(snapshot)
    return {
        "import_s": imported,
        "wall_s": wall,
        "rss_before_mb": before,
        "peak_reset": reset,
        "peak_rss_mb": peak_rss_mb(),
        "verdicts": per_column_verdicts(snapshot),
        "methods": {column: drift.method for column, drift in reported.items()},
        "statistics": {column: drift.statistic for column, drift in reported.items()},
        "share": reported_share(snapshot),
    }


def run_profile(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    from pipeline.drift import build_profile, write_profile

    imported = time.perf_counter() - started
    numeric, categorical = column_names(args.cols)
    reference = make_frame(args.reference_rows, args.cols, args.seed, current=False)
    before, reset = start_measuring()
    started = time.perf_counter()
    profile = build_profile(reference, numeric, categorical)
    built = time.perf_counter() - started
    write_profile(profile, args.profile_dir)
    wall = time.perf_counter() - started
    size = sum(path.stat().st_size for path in args.profile_dir.iterdir())
    return {
        "import_s": imported,
        "wall_s": wall,
        "build_s": built,
        "rss_before_mb": before,
        "peak_reset": reset,
        "peak_rss_mb": peak_rss_mb(),
        "profile_mb": size / 2**20,
    }


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    # pipeline.drift imports these on first use: they count as imports here.
    import scipy.spatial.distance
    import scipy.stats  # noqa: F401

    from pipeline.drift import check_drift, read_profile

    imported = time.perf_counter() - started
    current = make_frame(args.rows, args.cols, args.seed, current=True)
    before, reset = start_measuring()
    started = time.perf_counter()
    profile = read_profile(args.profile_dir)
    loaded = time.perf_counter()
    result = check_drift(profile, current, drift_share=0.5)
    done = time.perf_counter()
    return {
        "import_s": imported,
        "wall_s": done - started,
        "read_s": loaded - started,
        "check_s": done - loaded,
        "rss_before_mb": before,
        "peak_reset": reset,
        "peak_rss_mb": peak_rss_mb(),
        **verdict_figures(result),
        "share": result.share,
        "evidently_loaded": "evidently" in sys.modules,
    }


HOURS = 24  # the window's hours: the summaries a check merges
REPEATS = 5  # the check from summaries is timed this many times; the median counts


def hourly_frames(rows: int, cols: int, seed: int, whole: int):
    """The window as `HOURS` frames of about rows / HOURS rows each. A window of
    `whole` rows (`--rows`) is `make_frame`'s window cut in hours, the rows the other
    methods check; a bigger one is built an hour at a time (never whole), seeded per hour."""
    window = make_frame(rows, cols, seed, current=True) if rows == whole else None
    bounds = np.linspace(0, rows, HOURS + 1).astype(np.int64)
    for hour in range(HOURS):
        if window is not None:
            yield hour, window.iloc[bounds[hour] : bounds[hour + 1]]
        else:
            size = int(bounds[hour + 1] - bounds[hour])
            yield hour, make_frame(size, cols, seed * 1000 + hour + 1, current=True)


def run_summaries(args: argparse.Namespace) -> dict[str, Any]:
    """What serving pays as it logs: summaries of 1,000-row flushes (timed), then the
    window's hourly summaries stored as a parquet log stores them (what the hour's
    flush summaries merge into)."""
    from datetime import UTC, datetime, timedelta

    from pipeline.prediction_log import FEATURE_PREFIX, log_table
    from pipeline.summaries import (
        HOUR,
        Summary,
        summarise_columns,
        summarise_table,
        summary_bytes,
        write_summary_file,
    )

    # A flush as serving's log holds it (`log_table`): summarised, then encoded.
    flush = make_frame(1000, args.cols, args.seed, current=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = flush.astype(object).where(flush.notna(), None).to_dict(orient="records")
    table = log_table(
        [
            {"request_id": str(i), "timestamp": start, "model_version": "1", "inputs": row}
            | {"prediction": 1.0}
            for i, row in enumerate(records)
        ]
    )
    for _ in range(2):  # warm-up
        summary_bytes(summarise_table(table, FEATURE_PREFIX)[0])
    repeats = 20
    started = time.perf_counter()
    for _ in range(repeats):
        summary_bytes(summarise_table(table, FEATURE_PREFIX)[0])
    per_flush = (time.perf_counter() - started) / repeats
    shutil.rmtree(args.summary_dir, ignore_errors=True)
    started = time.perf_counter()
    stored = 0
    for hour, frame in hourly_frames(args.rows, args.cols, args.seed, args.window_rows):
        begin = start + timedelta(hours=hour)
        summary: Summary = summarise_columns(
            {name: frame[name].to_numpy() for name in frame.columns},
            begin,
            begin + HOUR,
            len(frame),
        )
        write_summary_file(args.summary_dir, summary, private=False)
        stored += len(frame)
    size = sum(path.stat().st_size for path in args.summary_dir.rglob("*.parquet"))
    return {
        "per_1000_rows_s": per_flush,
        "hourly_s": time.perf_counter() - started,
        "rows": stored,
        "summaries_kb": size / 1024,
    }


def run_summary_check(args: argparse.Namespace) -> dict[str, Any]:
    """What the monitor pays per decision from summaries: read the profile, read and
    merge the window's hourly summaries, compare."""
    from datetime import UTC, datetime, timedelta

    started = time.perf_counter()
    # Imported on first use (the summaries' parquet reader, the statistics): imports.
    import pyarrow.parquet  # noqa: F401
    import scipy.spatial.distance
    import scipy.stats  # noqa: F401

    from pipeline.drift import read_profile
    from pipeline.summaries import check_summary, merge_summaries, read_hour_summaries

    imported = time.perf_counter() - started
    first = datetime(2026, 1, 1, tzinfo=UTC)
    hours = [first + timedelta(hours=hour) for hour in range(HOURS)]
    before, reset = start_measuring()
    timings = []
    for _ in range(REPEATS):  # the machine is shared: the median of a few runs
        started = time.perf_counter()
        profile = read_profile(args.profile_dir)
        loaded = time.perf_counter()
        found = read_hour_summaries(args.summary_dir, hours)
        summaries = [summary for parts in found.values() for summary in parts]
        merged = merge_summaries(summaries)
        merged_at = time.perf_counter()
        checked = check_summary(profile, merged, drift_share=0.5)
        done = time.perf_counter()
        timings.append((done - started, loaded - started, merged_at - loaded, done - merged_at))
    first = timings[0][0]
    wall, read, merge, compare = (float(np.median(column)) for column in zip(*timings, strict=True))
    result = checked.result
    return {
        "import_s": imported,
        "wall_s": wall,
        "first_s": first,
        "read_s": read,
        "merge_s": merge,
        "check_s": compare,
        "summaries": len(summaries),
        "rows": merged.rows,
        "rss_before_mb": before,
        "peak_reset": reset,
        "peak_rss_mb": peak_rss_mb(),
        **verdict_figures(result),
        "bounds": checked.bounds,
        "uncertain": list(checked.uncertain),
        "share": result.share,
    }


WORKERS = {
    "evidently": run_evidently,
    "profile": run_profile,
    "check": run_check,
    "summaries": run_summaries,
    "summary-check": run_summary_check,
}


def verdict_figures(result: Any) -> dict[str, Any]:
    """A `DriftResult`'s verdicts, methods and statistics per column, as the workers
    report them."""
    return {
        "verdicts": result.verdicts,
        "methods": {column.column: column.method for column in result.columns},
        "statistics": {column.column: column.statistic for column in result.columns},
    }


def spawn(
    worker: str, args: argparse.Namespace, scratch: Path, rows: int | None = None
) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; its figures from the JSON it writes.
    `rows` (default `--rows`) sizes the window; its summaries go to their own folder."""
    rows = args.rows if rows is None else rows
    out = scratch / f"{worker}-{rows}.json"
    argv = [
        sys.executable,
        "-m",
        "bench.drift",
        "--rows",
        str(rows),
        "--cols",
        str(args.cols),
        "--reference-rows",
        str(args.reference_rows),
        "--seed",
        str(args.seed),
        "--worker",
        worker,
        "--profile-dir",
        str(scratch / "drift_profile"),
        "--summary-dir",
        str(scratch / f"summaries-{rows}"),
        "--window-rows",
        str(args.rows),
        "--out",
        str(out),
    ]
    done = subprocess.run(
        argv, cwd=REPO, env={**os.environ, **QUIET}, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"the {worker} run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


# --- the report ---------------------------------------------------------------------------


def print_figures(args: argparse.Namespace, figures: dict[str, dict[str, Any]], load: float):
    numeric, categorical = column_names(args.cols)
    evidently, profile, check = figures["evidently"], figures["profile"], figures["check"]
    print(
        f"Drift check vs Evidently DataDriftPreset: reference {args.reference_rows:,} rows, "
        f"current {args.rows:,} rows, {args.cols} columns ({len(numeric)} numeric, "
        f"{len(categorical)} categorical), seed {args.seed}"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f} at the start; each method in a fresh process"
    )
    if load >= 1:
        print(f"warning: the machine was busy (load {load:.2f}): the figures may be inflated")
    if not all(entry.get("peak_reset", True) for entry in figures.values()):
        print("note: the peak RSS could not be reset: it covers building the frames too")
    print()
    header = (
        f"{'method':<40} {'wall s':>8} {'import s':>9} {'RSS before MB':>14} {'peak RSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    rows = [
        ("Evidently DataDriftPreset (Report.run)", evidently),
        ("profile: build + write (once, at split)", profile),
        ("check: read profile + check_drift", check),
    ]
    for label, entry in rows:
        print(
            f"{label:<40} {entry['wall_s']:>8.2f} {entry['import_s']:>9.2f}"
            f" {entry['rss_before_mb']:>14.0f} {entry['peak_rss_mb']:>12.0f}"
        )
    print(f"{'  of which build_profile':<40} {profile['build_s']:>8.2f}")
    print(f"{'  of which read_profile':<40} {check['read_s']:>8.2f}")
    print(f"{'  of which check_drift':<40} {check['check_s']:>8.2f}")
    print()
    print(f"profile on disk: {profile['profile_mb']:.1f} MB")
    print(f"evidently imported by the check: {'yes' if check['evidently_loaded'] else 'no'}")
    once = profile["wall_s"] + check["wall_s"]
    print(f"speed-up, Evidently / check:             {evidently['wall_s'] / check['wall_s']:6.1f}x")
    print(f"speed-up, Evidently / (profile + check): {evidently['wall_s'] / once:6.1f}x")
    print()
    ours, theirs = check["verdicts"], evidently["verdicts"]
    print(
        f"{'column':<8} {'method':<14} {'check_drift':>14} {'Evidently':>14}  drifted (ours/theirs)"
    )
    for column in ours:
        method = check["methods"][column]
        if evidently["methods"].get(column) != method:
            method += f"/{evidently['methods'].get(column)}"
        print(
            f"{column:<8} {method:<14} {check['statistics'][column]:>14.6g}"
            f" {evidently['statistics'].get(column, float('nan')):>14.6g}"
            f"  {ours[column]!s:>5} / {theirs.get(column)!s}"
        )
    differ = sorted(
        column for column in set(ours) | set(theirs) if ours.get(column) != theirs.get(column)
    )
    print()
    print(
        f"verdicts: {len(ours)} columns; drifted: check_drift {sum(ours.values())}, "
        f"Evidently {sum(theirs.values())}; share {check['share']:.3f} vs {evidently['share']:.3f}"
    )
    print(f"disagreements: {len(differ)}{': ' + ', '.join(differ) if differ else ''}")


def print_summary_figures(
    args: argparse.Namespace, figures: dict[str, dict[str, Any]], load: float, load_end: float
) -> None:
    """The check from stored hourly summaries, against Evidently and the row check."""
    evidently, check = figures["evidently"], figures["check"]
    small, big = figures["summary-check"], figures["summary-check-big"]
    built, built_big = figures["summaries"], figures["summaries-big"]
    print()
    print(
        f"Check from the log's summaries: the window as {HOURS} hourly summaries "
        f"(what serving's flush summaries merge into); load average {load:.2f} at the "
        f"start, {load_end:.2f} at the end"
    )
    print(
        f"building summaries (serving's flush thread: summarise + encode, not the file "
        f"write): {built['per_1000_rows_s'] * 1000:.1f} ms per 1,000 rows; the {HOURS} "
        f"hourly summaries of {built['rows']:,} rows: "
        f"{built['summaries_kb']:.0f} KiB on disk ({built_big['rows']:,} rows: "
        f"{built_big['summaries_kb']:.0f} KiB)"
    )
    print(
        f"each check run {REPEATS} times in its process: the median, and the first run "
        "(cold: files and profile not yet in memory)"
    )
    header = (
        f"{'check':<44} {'wall s':>8} {'first s':>8} {'read s':>8} {'merge s':>8} {'compare s':>10}"
    )
    print(header)
    print("-" * len(header))
    for label, entry in (
        (f"summaries, {small['rows']:,} rows", small),
        (f"summaries, {big['rows']:,} rows ({args.bigger}x)", big),
    ):
        print(
            f"{label:<44} {entry['wall_s']:>8.3f} {entry['first_s']:>8.3f} "
            f"{entry['read_s']:>8.3f} {entry['merge_s']:>8.3f} {entry['check_s']:>10.3f}"
        )
    print(f"{'rows: read profile + check_drift':<44} {check['wall_s']:>8.3f}")
    print(f"{'Evidently DataDriftPreset':<44} {evidently['wall_s']:>8.3f}")
    print(f"speed-up, Evidently / summary check:     {evidently['wall_s'] / small['wall_s']:7.1f}x")
    print(
        f"  the same, first run against first run:  {evidently['wall_s'] / small['first_s']:7.1f}x"
    )
    print(f"speed-up, row check / summary check:     {check['wall_s'] / small['wall_s']:7.1f}x")
    print(
        f"{args.bigger}x window / 1x window, summary check: "
        f"{big['wall_s'] / small['wall_s']:.2f}x the time"
    )
    theirs, ours = evidently["verdicts"], small["verdicts"]
    print(f"{'column':<8} {'method':<14} {'rows':>12} {'summaries':>12} {'bound':>10}  drifted")
    for column in ours:
        print(
            f"{column:<8} {small['methods'][column]:<14} {check['statistics'][column]:>12.6g}"
            f" {small['statistics'][column]:>12.6g} {small['bounds'][column]:>10.2g}"
            f"  {ours[column]!s:>5} (Evidently {theirs.get(column)!s})"
        )
    differ = sorted(c for c in set(ours) | set(theirs) if ours.get(c) != theirs.get(c))
    uncertain = small["uncertain"]
    print(
        f"summary check vs Evidently: {len(differ)} disagreements"
        f"{': ' + ', '.join(differ) if differ else ''}; columns too close to call from "
        f"summaries (the monitor reads their rows): {', '.join(uncertain) or 'none'}"
    )
    print(
        f"summary check vs row check: "
        f"{sum(ours[c] != check['verdicts'][c] for c in ours)} disagreements"
    )


FIXTURE_DATASETS = {
    "bike": ("params.yaml", "bike_sharing_2000.csv"),
    "elec2": ("examples/elec2.params.yaml", "elec2_3000.csv"),
    "bank": ("examples/bank_marketing.params.yaml", "bank_marketing_3000.csv"),
}


def print_fixture_figures() -> None:
    """The sketch's verdicts against the row check's on the real fixtures: the first
    60% of rows as the reference, the rest (and the rest shifted: a third of the
    numerics by half a deviation) as the window, summarised per 100-row flush, with
    every numeric column of more than five values forced into buckets (these windows
    are too small to overflow `EXACT_VALUES` on their own)."""
    from pipeline.config import load_params
    from pipeline.drift import FEW_VALUES, build_profile, check_drift, profile_columns
    from pipeline.schema import resolve_spec
    from pipeline.sources import read_source
    from pipeline.summaries import HOUR, Summary, as_sketch, check_summary, merge_summaries
    from pipeline.summaries import summarise_columns as summarise

    fixtures = REPO / "tests" / "fixtures"
    start = pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime()
    print(
        f"{'data':<6} {'window':<8} {'columns':>7} {'sketched':>8} {'too close':>9} "
        f"{'disagree':>8} {'max |stat diff|':>15} {'max bound':>10}"
    )
    for name, (params_file, fixture) in FIXTURE_DATASETS.items():
        data = load_params(REPO / params_file).data
        data = data.model_copy(update={"source": str(fixtures / fixture)})
        frame = read_source(data).frame
        numeric, categorical = profile_columns(frame, resolve_spec(frame, data))
        cut = int(len(frame) * 0.6)
        profile = build_profile(frame.iloc[:cut], numeric, categorical)
        later = frame.iloc[cut:]
        moved = later.copy()
        for column in numeric[::3]:
            values = pd.to_numeric(moved[column], errors="coerce")
            moved[column] = values + 0.5 * values.std()
        for label, window in (("later", later), ("shifted", moved)):
            window = window[list(profile.names)]
            parts = [
                summarise(
                    {c: chunk[c].to_numpy() for c in chunk.columns}, start, start + HOUR, len(chunk)
                )
                for chunk in (window.iloc[i : i + 100] for i in range(0, len(window), 100))
            ]
            merged = merge_summaries(parts)
            columns = {
                c: as_sketch(s) if c in profile.numeric and s.values.size > FEW_VALUES else s
                for c, s in merged.columns.items()
            }
            summary = Summary(merged.start, merged.end, merged.rows, columns)
            checked = check_summary(profile, summary)
            rows = check_drift(profile, window)
            differ = sum(
                checked.result.verdicts[c] != rows.verdicts[c]
                for c in profile.names
                if c not in checked.uncertain
            )
            sketched = [c for c, s in columns.items() if not s.exact]
            gaps = [
                abs(a.statistic - b.statistic)
                for a, b in zip(checked.result.columns, rows.columns, strict=True)
                if a.column in sketched
            ]
            print(
                f"{name:<6} {label:<8} {len(profile.names):>7} {len(sketched):>8} "
                f"{len(checked.uncertain):>9} {differ:>8} {max(gaps, default=0):>15.2e} "
                f"{max(checked.bounds.values()):>10.2e}"
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.drift",
        description="Time Driftline's drift check against Evidently's DataDriftPreset.",
    )
    parser.add_argument("--rows", type=int, default=100_000, help="current window rows")
    parser.add_argument("--cols", type=int, default=20, help="feature columns")
    parser.add_argument(
        "--reference-rows", type=int, default=None, help="reference rows (default: --rows)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic frames")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--summary-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--window-rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--fixtures",
        action="store_true",
        help="only the sketch's verdicts on the bike, ELEC2 and bank fixtures (seconds)",
    )
    parser.add_argument(
        "--bigger", type=int, default=10, help="the larger window, as a multiple of --rows"
    )
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_rows is None:
        args.reference_rows = args.rows
    if args.rows < 1 or args.cols < 1 or args.reference_rows < 1:
        parser.error("--rows, --cols and --reference-rows must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.fixtures:
        print_fixture_figures()
        return
    if args.worker:
        figures = WORKERS[args.worker](args)
        args.out.write_text(json.dumps(figures))
        return
    load = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="driftline-bench-drift-"))
    try:
        figures = {worker: spawn(worker, args, scratch) for worker in ("profile", "check")}
        figures["summaries"] = spawn("summaries", args, scratch)
        figures["summary-check"] = spawn("summary-check", args, scratch)
        bigger = args.rows * args.bigger
        figures["summaries-big"] = spawn("summaries", args, scratch, rows=bigger)
        figures["summary-check-big"] = spawn("summary-check", args, scratch, rows=bigger)
        figures["evidently"] = spawn("evidently", args, scratch)
        print_figures(args, figures, load)
        print_summary_figures(args, figures, load, os.getloadavg()[0])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
