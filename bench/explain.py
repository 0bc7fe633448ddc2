"""How long `POST /explain` takes for one record, beside `POST /predict`.

    python -m bench.explain                       # bike sharing, ELEC2, bank marketing
    python -m bench.explain --rows 300 --families xgboost,torch

It is a benchmark, not a test: it prints and asserts nothing. For each data set (the
slices in tests/fixtures/) and family, a small model is fitted on the first 70% of the
rows (seed 0, a few rounds or epochs: the timing depends on the model's size and the
number of features, not on its quality), exported to ONNX as compress does, and
served in process through the app (FastAPI's TestClient: the ASGI app, the request
parsing and the JSON, no socket). Each of `--rows` single records of the last 30% is
sent to /predict and to /explain; printed: p50 and p99 in ms, and the method. xgboost
is explained twice: with its native folder (TreeSHAP, the way `driftline serve` runs
it) and without (the permutation method on the ONNX export).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


@dataclass(frozen=True)
class DataSet:
    name: str
    file: str
    target: str
    task: str
    drop: tuple[str, ...] = ()
    separator: str = ","


DATA_SETS = (
    DataSet(
        "bike",
        "bike_sharing_2000.csv",
        "cnt",
        "regression",
        ("instant", "dteday", "casual", "registered"),
    ),
    DataSet("elec2", "elec2_3000.csv", "class", "binary", ("date",)),
    DataSet("bank", "bank_marketing_3000.csv", "y", "binary", (), ";"),
)
SIZES = {
    "xgboost": {"xgboost": {"n_estimators": 100, "n_jobs": 1}},
    "sklearn": {"sklearn": {"estimator": "forest", "n_estimators": 100}},
    "torch": {"torch": {"max_epochs": 5}},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200, help="single records timed per path")
    parser.add_argument(
        "--families", default="xgboost,sklearn,torch", help="comma-separated (default: all)"
    )
    parser.add_argument("--data", default="bike,elec2,bank", help="comma-separated data sets")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    return args


def plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def percentile_ms(timings: list[float], share: float) -> float:
    return float(np.percentile(timings, share)) * 1000


def timed(client: Any, path: str, records: list[dict[str, Any]]) -> list[float]:
    for record in records[:20]:  # warm-up: the first /explain loads the native model
        client.post(path, json=record).raise_for_status()
    seconds = []
    for record in records:
        started = time.perf_counter()
        client.post(path, json=record).raise_for_status()
        seconds.append(time.perf_counter() - started)
    return seconds


def bench(data: DataSet, family: str, rows: int, root: Path) -> None:
    from fastapi.testclient import TestClient

    from pipeline.config import Schema, TrainConfig
    from pipeline.models import fit_model
    from pipeline.onnx_model import export_onnx
    from pipeline.schema import DatasetSpec
    from pipeline.serving import create_app, load_served_model

    frame = pd.read_csv(FIXTURES / data.file, sep=data.separator).drop(columns=list(data.drop))
    cut = int(len(frame) * 0.7)
    train, test = frame.iloc[: cut - 300], frame.iloc[cut:]
    val = frame.iloc[cut - 300 : cut]
    categorical = {data.target: {}} if data.task != "regression" else {}
    spec = DatasetSpec(target=data.target, task=data.task, schema=Schema(categorical=categorical))
    config = TrainConfig(model=family, seed=0, **SIZES[family])
    model = fit_model(train, val, spec, config)
    folder, native = root / f"{data.name}-{family}", root / f"{data.name}-{family}-native"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(export_onnx(model))
    (folder / "model.json").write_text(json.dumps(model.describe()))
    model.save(native)
    columns = model.features.columns
    records = [
        {column: plain(row[column]) for column in columns} for _, row in test.head(rows).iterrows()
    ]
    while len(records) < rows:
        records += records[: rows - len(records)]
    variants = [("native", native)] if family == "xgboost" else []
    variants.append(("onnx", None))
    for label, native_folder in variants:
        served = load_served_model(folder, "bench", native=native_folder)
        with TestClient(create_app(lambda served=served: served)) as client:
            predict = timed(client, "/predict", records)
            explain = timed(client, "/explain", records)
            method = client.post("/explain", json=records[0]).json()["method"]
        print(
            f"{data.name:6} {family:8} {label:6} {len(columns):3d} features  "
            f"/predict p50 {percentile_ms(predict, 50):6.2f} p99 {percentile_ms(predict, 99):6.2f}"
            f"  /explain p50 {percentile_ms(explain, 50):6.2f} "
            f"p99 {percentile_ms(explain, 99):6.2f} ms  ({method})",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    chosen = set(args.data.split(","))
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="driftline-bench-explain-") as scratch:
        for data in DATA_SETS:
            if data.name not in chosen:
                continue
            for family in args.families.split(","):
                bench(data, family, args.rows, Path(scratch))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
