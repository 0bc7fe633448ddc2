"""The served model takes the source's row: a request with the bike data's raw columns
(`dteday` as a date, no `dteday_dayofyear`) scores as the frame path scores the test
split; the derived field is still accepted; a value not scored as sent is said."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from pipeline.schema import DatasetSpec
from pipeline.serving import ServedModel, create_app, load_served_model
from tests.conftest import Project


def source_records(project: Project) -> tuple[list[dict[str, Any]], pd.DataFrame, ServedModel]:
    """The test split's rows as the source holds them, the split itself, the model."""
    root = project.root
    spec = DatasetSpec.read(root / "data/raw/schema.yaml")
    test = pd.read_parquet(root / "data/split/test.parquet")
    raw = pd.read_parquet(root / "data/raw/data.parquet").set_index("instant", drop=False)
    rows = raw.loc[test["instant"]].drop(columns=[spec.target])
    fmt = spec.schema.datetime["dteday"].format
    records = []
    for row in rows.to_dict(orient="records"):
        record = {}
        for column, value in row.items():
            if isinstance(value, pd.Timestamp):
                value = value.strftime(fmt)
            elif isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and math.isnan(value):
                value = None
            record[column] = value
        records.append(record)
    served = load_served_model(root / "models/compressed", "1")
    return records, test, served


def test_raw_source_rows_score_as_the_frame_path(shipped: Project) -> None:
    records, test, served = source_records(shipped)
    assert "dteday_dayofyear" in served.features.columns
    assert "dteday_dayofyear" not in records[0] and isinstance(records[0]["dteday"], str)
    client = TestClient(create_app(lambda: served))
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200, response.text[:500]
    answered = np.array([p["prediction"] for p in response.json()["predictions"]])
    expected = served.model.predict_arrays(served.features.arrays(served.features.prepare(test)))
    np.testing.assert_allclose(answered, expected.ravel(), rtol=1e-6, atol=1e-6)
    assert len(answered) == len(test) > 100

    # The derived field instead of the date: still accepted, the same answer.
    derived = [
        {**{k: v for k, v in record.items() if k != "dteday"}, "dteday_dayofyear": day}
        for record, day in zip(records, test["dteday_dayofyear"].tolist(), strict=True)
    ]
    again = client.post("/predict", json={"records": derived}).json()["predictions"]
    np.testing.assert_allclose([p["prediction"] for p in again], answered, rtol=1e-6)

    # Neither: a 422 that says what to send.
    neither = {k: v for k, v in records[0].items() if k != "dteday"}
    refused = client.post("/predict", json=neither)
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "dteday"]
    assert "dteday_dayofyear" in error["msg"] and "%Y-%m-%d" in error["msg"]


def test_values_not_scored_as_sent_are_warned_per_field(shipped: Project) -> None:
    records, _, served = source_records(shipped)
    client = TestClient(create_app(lambda: served))
    # The slice's train months hold one season: the test rows' season is new to it.
    seen = int(served.features.categories["season"][0])
    usual = {**records[0], "season": seen}
    odd = {**usual, "hr": -1, "season": 7, "dteday": "31/12/2011"}
    item = client.post("/predict", json=odd).json()["predictions"][0]
    assert item["warnings"]["hr"] == "-1 is outside [0, 23]: clipped to 0"
    assert item["warnings"]["dteday"].startswith("'31/12/2011' is not a date (%Y-%m-%d)")
    assert "was not seen in training" in item["warnings"]["season"]
    clean = client.post("/predict", json=usual).json()["predictions"][0]
    assert "warnings" not in clean
    unseen = client.post("/predict", json=records[0]).json()["predictions"][0]
    assert unseen["warnings"]["season"].startswith(f"'{records[0]['season']}' was not seen")
    # The typed schema names every input with its range or categories.
    spec = client.get("/openapi.json").json()
    record = spec["components"]["schemas"]["PredictionRecord"]
    assert {"dteday", "hr", "season", "instant"} <= set(record["properties"])
    assert "[0, 23]" in record["properties"]["hr"]["description"]
    assert "dteday" not in record.get("required", [])  # or its derived feature instead
    assert "hr" in record["required"]
