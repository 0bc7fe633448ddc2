"""Two more real data sets through ingest -> validate -> clean -> split, by params alone.

Each test copies an example params file from `examples/` into a fresh project, points
`data.source` at a 3,000-row real slice in tests/fixtures, runs the four stage commands
and checks what a user would look at: the split, the classes, the columns.

ELEC2: Harries (1999), "Splice-2 comparative evaluation: electricity pricing"; the
first 3,000 rows of elecNormNew.csv. Bank Marketing: Moro, Cortez & Rita (2014),
Decision Support Systems 62, CC BY 4.0; every 15th row of bank-full.csv.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.config import load_params
from tests.conftest import FIXTURES, REPO, Project

EXAMPLES = REPO / "examples"
ELEC2_PARAMS = EXAMPLES / "elec2.params.yaml"
BANK_PARAMS = EXAMPLES / "bank_marketing.params.yaml"
ELEC2_SLICE = FIXTURES / "elec2_3000.csv"
BANK_SLICE = FIXTURES / "bank_marketing_3000.csv"
SLICE_ROWS = 3000
PARTS = ("train", "val", "test")
FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}
UNKNOWN_COLUMNS = ("job", "education", "contact", "poutcome")


def run_example(root: Path, example: Path, fixture: Path) -> Project:
    """A project holding `example` as its params.yaml, read from `fixture`, stages run."""
    root.mkdir(parents=True)
    project = Project(root)
    params = yaml.safe_load(example.read_text(encoding="utf-8"))
    params["data"]["source"] = str(fixture)
    params["validate"]["min_rows"] = 2500
    project.write_params(params)
    project.run_data_stages()
    return project


def read_parts(project: Project) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(project.root / f"data/split/{name}.parquet") for name in PARTS}


def read_json(project: Project, relative: str) -> dict:
    return json.loads((project.root / relative).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def elec2(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return run_example(tmp_path_factory.mktemp("elec2") / "p", ELEC2_PARAMS, ELEC2_SLICE)


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return run_example(tmp_path_factory.mktemp("bank") / "p", BANK_PARAMS, BANK_SLICE)


# --- the example files themselves -------------------------------------------------------


@pytest.mark.parametrize("example", [ELEC2_PARAMS, BANK_PARAMS], ids=["elec2", "bank"])
def test_example_params_load_and_read_from_data_external(example: Path) -> None:
    params = load_params(example)
    assert params.data.source.startswith("data/external/")
    assert params.data.task == "binary"
    assert params.data.schema_ is not None  # pinned, not inferred
    sections = set(yaml.safe_load(example.read_text(encoding="utf-8")))
    assert sections == set(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))


@pytest.mark.parametrize("example", [ELEC2_PARAMS, BANK_PARAMS], ids=["elec2", "bank"])
def test_fixture_slices_are_small_and_whole(example: Path) -> None:
    fixture = ELEC2_SLICE if example == ELEC2_PARAMS else BANK_SLICE
    assert fixture.stat().st_size < 400_000
    assert len(fixture.read_bytes().splitlines()) == SLICE_ROWS + 1  # header kept


# --- ELEC2: a split in row order ----------------------------------------------------------------


def test_elec2_validates_clean_with_pinned_schema(elec2: Project) -> None:
    summary = read_json(elec2, "reports/validation/summary.json")
    assert summary["success"] is True
    assert summary["rows"] == SLICE_ROWS
    assert summary["critical_failures"] == 0
    assert summary["warnings"] == 0
    assert summary["passed"] == summary["expectations"]
    manifest = read_json(elec2, "data/raw/manifest.json")
    assert manifest["inferred"] == []
    assert manifest["time_range"] is None
    schema = yaml.safe_load((elec2.root / "data/raw/schema.yaml").read_text(encoding="utf-8"))
    assert schema["task"] == "binary"
    assert schema["time_column"] is None


def test_elec2_is_split_in_row_order(elec2: Project) -> None:
    assert read_json(elec2, "reports/split.json")["method"] == "ordered"
    parts = read_parts(elec2)
    train, val, test = (parts[name]["date"] for name in PARTS)
    assert train.max() <= val.min()
    assert val.max() <= test.min()
    assert {name: len(part) for name, part in parts.items()} == {
        name: round(FRACTIONS[name] * SLICE_ROWS) for name in PARTS
    }


def test_elec2_parts_are_the_file_in_order_without_overlap(elec2: Project) -> None:
    """On this slice `date` rises with the rows, so train is the first rows of the file."""
    source = pd.read_csv(ELEC2_SLICE)
    stacked = pd.concat(read_parts(elec2).values(), ignore_index=True)
    pd.testing.assert_frame_equal(stacked, source, check_dtype=False)


def test_elec2_keeps_both_classes_in_every_part(elec2: Project) -> None:
    for name, part in read_parts(elec2).items():
        assert set(part["class"]) == {"DOWN", "UP"}, name
        assert set(part["day"]) <= set(range(1, 8)), name
    shares = read_json(elec2, "reports/split.json")
    for name in PARTS:
        assert set(shares[name]["class_shares"]) == {"DOWN", "UP"}


# --- Bank marketing: a stratified split -------------------------------------------------


def test_bank_delimiter_is_detected(bank: Project) -> None:
    assert bank.params()["data"]["csv"]["delimiter"] is None  # detection is what runs
    raw = pd.read_parquet(bank.root / "data/raw/data.parquet")
    assert list(raw.columns) == [
        "age", "job", "marital", "education", "default", "balance", "housing", "loan",
        "contact", "day", "month", "duration", "campaign", "pdays", "previous", "poutcome", "y",
    ]  # fmt: skip
    assert len(raw) == SLICE_ROWS
    for column in ("age", "balance", "day", "duration", "campaign", "pdays", "previous"):
        assert pd.api.types.is_integer_dtype(raw[column]), column
    assert set(raw["y"]) == {"no", "yes"}  # quotes stripped


def test_bank_validates_clean_with_pinned_schema(bank: Project) -> None:
    summary = read_json(bank, "reports/validation/summary.json")
    assert summary["success"] is True
    assert summary["critical_failures"] == 0
    assert summary["warnings"] == 0
    assert summary["passed"] == summary["expectations"]
    checked = {result["column"] for result in summary["results"]}
    assert "duration" not in checked  # a dropped column is not expected


def test_bank_split_is_stratified_on_y(bank: Project) -> None:
    assert read_json(bank, "reports/split.json")["method"] == "stratified"
    whole = (pd.read_parquet(bank.root / "data/clean/data.parquet")["y"] == "yes").mean()
    parts = read_parts(bank)
    for name, part in parts.items():
        share = (part["y"] == "yes").mean()
        assert abs(share - whole) <= 0.02, f"{name}: {share:.3f} yes vs {whole:.3f}"
    assert sum(len(part) for part in parts.values()) == SLICE_ROWS
    for name, part in parts.items():
        assert abs(len(part) - FRACTIONS[name] * SLICE_ROWS) <= 1, name


def test_bank_parts_hold_each_row_once(bank: Project) -> None:
    clean = pd.read_parquet(bank.root / "data/clean/data.parquet")
    stacked = pd.concat(read_parts(bank).values(), ignore_index=True)
    columns = list(clean.columns)
    pd.testing.assert_frame_equal(
        stacked.sort_values(columns).reset_index(drop=True),
        clean.sort_values(columns).reset_index(drop=True),
    )


def test_bank_duration_is_dropped_as_leakage(bank: Project) -> None:
    assert "duration" in pd.read_parquet(bank.root / "data/raw/data.parquet").columns
    assert "duration" not in pd.read_parquet(bank.root / "data/clean/data.parquet").columns
    for name, part in read_parts(bank).items():
        assert "duration" not in part.columns, name
    reference = pd.read_parquet(bank.root / "data/reference/reference.parquet")
    assert "duration" not in reference.columns
    assert read_json(bank, "reports/clean.json")["dropped_columns"] == ["duration"]


def test_bank_keeps_unknown_as_a_category(bank: Project) -> None:
    raw = pd.read_parquet(bank.root / "data/raw/data.parquet")
    clean = pd.read_parquet(bank.root / "data/clean/data.parquet")
    for column in UNKNOWN_COLUMNS:
        unknown = int((raw[column] == "unknown").sum())
        assert unknown > 0, column
        assert int((clean[column] == "unknown").sum()) == unknown, column
        assert clean[column].notna().all(), column
    assert read_json(bank, "reports/clean.json")["columns"] == {}  # nothing nulled or changed
    train = read_parts(bank)["train"]
    for column in UNKNOWN_COLUMNS:
        assert "unknown" in set(train[column]), column
