"""The split stage writes the drift check's profile of the reference next to it."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import load_params
from pipeline.drift import check_drift, profile_columns, read_profile
from pipeline.schema import DatasetSpec, resolve_spec
from tests.conftest import FIXTURES, Project


@pytest.fixture
def cleaned(project: Project) -> Project:
    """What ingest and clean leave for split, from the 2,000-row bike slice (without
    running them: GX's validation is not what these tests are about)."""
    bike = pd.read_csv(FIXTURES / "bike_sharing_2000.csv")
    spec = resolve_spec(bike, load_params(project.params_path).data)
    (project.root / "data/raw").mkdir(parents=True)
    (project.root / "data/raw/schema.yaml").write_text(spec.to_yaml())
    (project.root / "data/clean").mkdir(parents=True)
    bike.assign(dteday=pd.to_datetime(bike["dteday"])).to_parquet(
        project.root / "data/clean/data.parquet", index=False
    )
    return project


def test_split_profiles_the_reference_it_writes(cleaned: Project) -> None:
    result = cleaned.run("split")
    assert result.exit_code == 0, result.stderr
    assert "drift profile of 12 columns -> data/reference/drift_profile" in result.stdout
    reference = pd.read_parquet(cleaned.root / "data/reference/reference.parquet")
    spec = DatasetSpec.read(cleaned.root / "data/raw/schema.yaml")
    profile = read_profile(cleaned.root / "data/reference/drift_profile")
    numeric, categorical = profile_columns(reference, spec)
    assert (profile.numeric, profile.categorical) == (tuple(numeric), tuple(categorical))
    assert profile.reference_rows == len(reference)
    # The reference against itself: nothing drifts.
    assert not check_drift(profile, reference).drifted_columns
    # The test period (the latest weeks) against it: the season has moved on.
    test = pd.read_parquet(cleaned.root / "data/split/test.parquet")
    assert "temp" in check_drift(profile, test).drifted_columns


def test_profile_goes_where_the_option_says(cleaned: Project) -> None:
    result = cleaned.run("split", "--profile", "elsewhere/profile")
    assert result.exit_code == 0, result.stderr
    assert read_profile(cleaned.root / "elsewhere/profile").names
    assert not (cleaned.root / "data/reference/drift_profile").exists()


def test_failed_split_leaves_the_profile_as_it_was(cleaned: Project) -> None:
    assert cleaned.run("split").exit_code == 0
    before = cleaned.snapshot()
    (cleaned.root / "data/clean/data.parquet").write_bytes(b"not parquet")
    result = cleaned.run("split")
    assert result.exit_code == 1
    assert "is not readable parquet" in result.stderr
    after = cleaned.snapshot()
    profile_files = [path for path in before if "drift_profile" in path]
    assert profile_files and all(after[path] == before[path] for path in profile_files)
