"""`driftline init`: params for a new data set that load, fit the data, keep the user's
other settings, never lose the old file, and fail in one line on bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import load_params
from pipeline.init import infer_choices, render_params
from tests.conftest import FIXTURES, REPO, Project

ELEC2 = FIXTURES / "elec2_3000.csv"
BANK = FIXTURES / "bank_marketing_3000.csv"
BIKE = FIXTURES / "bike_sharing_2000.csv"
# Values of the bike data's params.yaml that no other data set may inherit.
BIKE_ONLY = ("instant", "dteday", "season", "weathersit", "workingday", "weekday", "hr")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project whose params.yaml is a copy of the repo's (the bike data's)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return Project(root)


def init(project: Project, source: Path | str, target: str, *extra: str):
    return project.run("init", str(source), "--target", target, *extra)


def data_specific_values(params: dict) -> list:
    data, clean, evaluate = params["data"], params["clean"], params["evaluate"]
    return [
        data["time_column"],
        *data["key_columns"],
        *data["slice_columns"],
        *(evaluate["baseline_groups"] or []),
        *clean["calendar_features"],
        *data["schema"]["id"],
        *data["schema"]["drop"],
    ]


@pytest.mark.parametrize(
    ("source", "target", "task", "time_column", "metric", "floors", "positive"),
    [
        (ELEC2, "class", "binary", None, "roc_auc", {"roc_auc": 0.5}, "UP"),
        (BANK, "y", "binary", None, "roc_auc", {"roc_auc": 0.5}, "yes"),
        (BIKE, "cnt", "regression", "dteday", "rmse", {"r2": 0.0}, None),
    ],
    ids=["elec2", "bank", "bike"],
)
def test_init_writes_params_that_load_and_fit_the_data(
    project: Project,
    source: Path,
    target: str,
    task: str,
    time_column: str | None,
    metric: str,
    floors: dict,
    positive: str | None,
) -> None:
    result = init(project, source, target)
    assert result.exit_code == 0, result.stderr
    loaded = load_params(project.params_path)
    assert loaded.data.source == str(source)
    assert loaded.data.target == target
    assert loaded.data.task == task
    assert loaded.data.time_column == time_column
    assert loaded.data.until is None
    # ELEC2's `date` is a number that never decreases: its rows are split in order.
    assert loaded.split.method == ("ordered" if source == ELEC2 else "auto")
    assert loaded.data.schema_ is not None and target in loaded.data.schema_.declared_columns()
    assert loaded.evaluate.primary_metric == metric
    assert dict(loaded.evaluate.floors) == floors
    assert loaded.train.positive_class == positive  # "yes" stays a string, not True
    assert loaded.validation.min_rows <= len(pd.read_csv(source, sep=None, engine="python")) // 10
    expected_calendar = {time_column: ["dayofweek", "month"]} if time_column else {}
    assert dict(loaded.clean.calendar_features) == expected_calendar
    for decision in ("task:", "time column:", "key columns:", "slice columns:", "metric:"):
        assert decision in result.stdout
    assert "params.yaml.bak" in result.stdout


@pytest.mark.parametrize(("source", "target"), [(ELEC2, "class"), (BANK, "y")])
def test_no_bike_setting_survives_on_other_data(
    project: Project, source: Path, target: str
) -> None:
    assert init(project, source, target).exit_code == 0
    params = project.params()
    assert not set(BIKE_ONLY) & set(data_specific_values(params))
    assert "r2" not in params["evaluate"]["floors"]
    assert "2012" not in yaml.safe_dump(params["data"])
    assert params["monitor"]["calendar_columns"] == []  # the bike's yr, mnth, season went


def test_inferred_columns_on_the_fixtures() -> None:
    bike = infer_choices(pd.read_csv(BIKE), "cnt")
    assert bike.key_columns == ("instant",)
    assert bike.time_column == "dteday"
    assert "registered" in bike.leak_suspects
    assert bike.baseline_groups is None  # hour-of-week from the time column
    bank = infer_choices(pd.read_csv(BANK, sep=";"), "y")
    assert bank.na_values == ("unknown",)
    assert set(bank.na_columns) == {"job", "education", "contact", "poutcome"}
    assert len(bank.slice_columns) <= 3 and "y" not in bank.slice_columns
    assert bank.key_columns == () and bank.time_column is None
    elec2 = infer_choices(pd.read_csv(ELEC2), "class")
    assert elec2.slice_columns == ("day",)
    assert elec2.time_column is None  # `date` is a normalised number, not a date
    assert elec2.order_column == "date"  # ...that never decreases: split in row order
    assert bank.order_column is None


def test_choices_on_a_small_frame() -> None:
    rows = 60
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(rows)],
            "shipped": ["2024-01-01 10:00"] * 5 + [None] * (rows - 5),
            "ordered": pd.date_range("2024-01-01", periods=rows, freq="h").astype(str),
            "region": rng.choice(["north", "south", "?"], rows),
            "colour": rng.choice(["red", "blue", "green"], rows),
            "size": rng.choice(["s", "m", "l", "xl"], rows),
            "flag": rng.choice(["a", "b"], rows),
            "amount": rng.normal(100, 10, rows),
        }
    )
    choices = infer_choices(frame, "amount")
    assert choices.task == "regression"
    assert choices.key_columns == ("order_id",)
    assert choices.time_column == "ordered"  # complete, in order; `shipped` has gaps
    assert choices.other_time_columns == ("shipped",)
    assert choices.calendar_parts == ("hour", "dayofweek", "month")
    assert choices.na_values == ("?",) and choices.na_columns == ("region",)
    assert len(choices.slice_columns) == 3 and "order_id" not in choices.slice_columns
    assert choices.min_rows(1000) == 6

    untimed = infer_choices(frame.drop(columns=["shipped", "ordered"]), "amount")
    assert untimed.baseline_groups == [untimed.slice_columns[0]]  # a mean per group


def test_user_settings_and_comments_survive(project: Project) -> None:
    text = project.params_path.read_text()
    text = text.replace("  seed: 42\n", "  seed: 7                       # my own seed\n", 1)
    text = text.replace("n_trials: 25", "n_trials: 3")
    project.params_path.write_text(text)
    assert init(project, ELEC2, "class").exit_code == 0
    written = project.params_path.read_text()
    assert "# my own seed" in written
    assert "# The ONNX export that serving loads" in written
    loaded = load_params(project.params_path)
    assert loaded.split.seed == 7
    assert loaded.tune.n_trials == 3
    assert loaded.monitor.window_hours == 1344
    assert "# inferred" in written


def test_every_run_keeps_a_new_backup(project: Project) -> None:
    original = project.params_path.read_bytes()
    assert init(project, ELEC2, "class").exit_code == 0
    first = project.params_path.read_bytes()
    assert (project.root / "params.yaml.bak").read_bytes() == original

    second = init(project, BANK, "y")
    assert second.exit_code == 0
    assert "params.yaml.bak.1" in second.stdout
    assert (project.root / "params.yaml.bak").read_bytes() == original
    assert (project.root / "params.yaml.bak.1").read_bytes() == first
    assert load_params(project.params_path).data.target == "y"


def test_without_a_params_file_the_defaults_are_used(tmp_path: Path) -> None:
    project = Project(tmp_path)
    result = init(project, BIKE, "cnt")
    assert result.exit_code == 0, result.stderr
    loaded = load_params(project.params_path)
    assert loaded.data.key_columns == ["instant"]
    assert loaded.train.model == "xgboost" and loaded.tune.n_trials == 25
    assert list(tmp_path.iterdir()) == [project.params_path]  # no backup of nothing


def test_a_source_inside_the_project_is_written_relative(project: Project) -> None:
    (project.root / "data").mkdir()
    shutil.copy(ELEC2, project.root / "data" / "elec2.csv")
    assert init(project, "data/elec2.csv", "class").exit_code == 0
    assert load_params(project.params_path).data.source == "data/elec2.csv"


def test_settings_that_cannot_hold_are_reset_with_a_note(project: Project) -> None:
    project.update("split", method="time")
    result = init(project, BANK, "y")
    assert result.exit_code == 0, result.stderr
    assert load_params(project.params_path).split.method == "auto"
    assert "split.method" in result.stdout

    project.update("split", method="auto")
    project.update("tune", cv_folds=3)
    result = init(project, BIKE, "cnt")
    assert result.exit_code == 0, result.stderr
    assert load_params(project.params_path).tune.cv_folds == 0
    assert "tune.cv_folds" in result.stdout


def binary_file(folder: Path) -> Path:
    path = folder / "binary.csv"
    path.write_bytes(b"\x00\x01\x02" * 100)
    return path


def one_value_target(folder: Path) -> Path:
    path = folder / "flat.csv"
    pd.DataFrame({"x": range(50), "label": ["same"] * 50}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("make_source", "target", "extra", "message"),
    [
        (lambda folder: ELEC2, "price", (), "--target 'price' is not a column"),
        (lambda folder: folder / "missing.csv", "class", (), "no such file or folder"),
        (one_value_target, "label", (), "fewer than two values"),
        (binary_file, "class", (), "binary content"),
        (lambda folder: "sqlite:///x.db", "y", (), "--query"),
    ],
    ids=["unknown-target", "missing-file", "one-value-target", "unreadable", "sql-no-query"],
)
def test_bad_input_is_one_line_and_writes_nothing(
    project: Project, make_source, target: str, extra: tuple, message: str
) -> None:
    before = project.params_path.read_bytes()
    result = init(project, make_source(project.root), target, *extra)
    assert result.exit_code != 0
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert project.params_path.read_bytes() == before
    assert not list(project.root.glob("params.yaml.bak*"))


def test_a_kept_setting_that_does_not_load_writes_nothing(project: Project) -> None:
    project.update("train", n_layers=3)
    before = project.params_path.read_bytes()
    result = init(project, ELEC2, "class")
    assert result.exit_code == 2
    assert "train.n_layers: unknown key" in result.stderr
    assert result.stderr.count("\n") == 1
    assert project.params_path.read_bytes() == before
    assert not list(project.root.glob("params.yaml.bak*"))


def test_render_keeps_quoted_answers_as_text() -> None:
    frame = pd.DataFrame({"answer": ["no", "yes"] * 20, "on": ["off", "on"] * 20})
    rendered = render_params(infer_choices(frame, "answer"), "data.csv")
    schema = rendered.params.data.schema_
    assert schema is not None
    assert schema.categorical["answer"].values == ["no", "yes"]
    assert schema.categorical["on"].values == ["off", "on"]
    assert rendered.params.train.positive_class == "yes"


def test_a_registry_of_the_data_before_is_pointed_out(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A champion fitted on other columns cannot be compared with: the gate would refuse
    every candidate, so init says to give the new data set its own registered model."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # params' sqlite:///mlflow.db
    assert "registered_model" not in init(project, ELEC2, "class").stdout  # no store yet
    (project.root / "mlflow.db").touch()
    assert "mlflow.registered_model" in init(project, BANK, "y").stdout
