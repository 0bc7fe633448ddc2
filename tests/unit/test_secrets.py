"""No password in a URL reaches any output: console lines, error messages, manifests,
reports. A SQL source carries one in its query string (`?password=${VAR}`), in
`sslpassword` or in its userinfo; PostgreSQL's trust auth accepts and ignores it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import DataConfig, MlflowConfig, Params, TuneConfig
from pipeline.errors import DriftlineError
from pipeline.secrets import mask_url, redact
from pipeline.sources import read_source
from pipeline.stages.ingest import ingest
from tests.conftest import FIXTURES, QUIET, REPO, Project, new_project, postgres_schema

PASSWORD = f"pw-{uuid.uuid4().hex}"  # unlike anything else a run prints or writes
VARIABLE = "DRIFTLINE_TEST_DB_PASSWORD"
QUERY = "SELECT * FROM bike ORDER BY instant"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:hunter2@db:5432/x", "postgresql://u:***@db:5432/x"),
        (
            "postgresql://u@h/db?sslmode=require&password=hunter2",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        ("postgresql://u@h/db?sslpassword=a&PWD=b", "postgresql://u@h/db?sslpassword=***&PWD=***"),
        (
            "mssql+pyodbc://u@dsn?passwd=1&secret=2&api_key=3&access_key=4&token=5&key=6",
            "mssql+pyodbc://u@dsn?passwd=***&secret=***&api_key=***&access_key=***&token=***&key=***",
        ),
        ("postgresql://u:p@ss/w?rd@h/db", "postgresql://u:***@h/db"),  # unencoded @ / ? in it
        (
            "postgresql://h/db?user=a@b.com&password=x",
            "postgresql://h/db?user=a@b.com&password=***",
        ),
        ("s3://bucket/key@v1?X-Amz-Signature=abc", "s3://bucket/key@v1?X-Amz-Signature=***"),
        ("https://ghp_token@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("https://u:pw@mlflow.example.com", "https://u:***@mlflow.example.com"),
        ("sqlite:///data/production.db", "sqlite:///data/production.db"),
        ("postgresql://u@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require"),
        ("builtin:bike_sharing", "builtin:bike_sharing"),
        ("data/raw.csv", "data/raw.csv"),
    ],
)
def test_mask_url_hides_every_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_redact_takes_a_urls_secrets_out_of_any_text() -> None:
    url = "postgresql://u:p%40ss@h/db?password=s%2Fcret"
    text = "failed for p@ss, p%40ss, s/cret and s%2Fcret on h"
    assert redact(text, url) == "failed for ***, ***, *** and *** on h"
    assert redact("nothing secret", None, "sqlite:///x.db") == "nothing secret"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def sqlite_source(folder: Path) -> Iterator[str]:
    from sqlalchemy import create_engine

    url = f"sqlite:///{folder / 'source.db'}"
    engine = create_engine(url)
    pd.read_csv(FIXTURES / "bike_sharing_2000.csv").head(800).to_sql("bike", engine, index=False)
    engine.dispose()
    yield f"{url}?password=${{{VARIABLE}}}"


@contextmanager
def postgres_source(folder: Path) -> Iterator[str]:
    from sqlalchemy import create_engine

    with postgres_schema() as url:
        engine = create_engine(url)
        frame = pd.read_csv(FIXTURES / "bike_sharing_2000.csv").head(800)
        frame.to_sql("bike", engine, index=False)
        engine.dispose()
        # userinfo, query string and sslpassword: trust auth ignores all three.
        user, host = url.split("://", 1)[1].split("@", 1)
        yield (
            f"postgresql+psycopg2://{user}:${{{VARIABLE}}}@{host}"
            f"&password=${{{VARIABLE}}}&sslpassword=${{{VARIABLE}}}"
        )


SOURCES = {"sqlite": sqlite_source, "postgresql": postgres_source}


def files_holding(root: Path, secret: str) -> list[str]:
    return [
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and secret.encode() in path.read_bytes()
    ]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.setenv(VARIABLE, PASSWORD)
    return new_project(tmp_path / "project")


def use_source(project: Project, source: str) -> None:
    params = project.params()
    params["data"].update(source=source, query=QUERY)
    project.write_params(params)


@pytest.mark.parametrize("kind", SOURCES)
def test_ingest_core_describes_the_source_without_its_password(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VARIABLE, PASSWORD)
    with SOURCES[kind](tmp_path) as source:
        data = DataConfig(source=source, query=QUERY, target="cnt")
        table = read_source(data)
        result = ingest(table.frame, [], data, table.description)
    assert len(table.frame) == 800
    assert "password=***" in table.description
    assert PASSWORD not in json.dumps(result.manifest)


@pytest.mark.parametrize("kind", SOURCES)
def test_ingest_and_check_commands_never_show_the_password(kind: str, project: Project) -> None:
    with SOURCES[kind](project.root.parent) as source:
        use_source(project, source)
        checked = project.run("check-params")
        ingested = project.run("ingest")
    assert checked.exit_code == 0, checked.stderr
    assert ingested.exit_code == 0, ingested.stderr
    assert "800 rows" in ingested.stdout
    assert "password=***" in ingested.stdout
    for result in (checked, ingested):
        assert PASSWORD not in result.stdout + result.stderr
    manifest = json.loads((project.root / "data/raw/manifest.json").read_text())
    assert "password=***" in manifest["source"]
    assert files_holding(project.root, PASSWORD) == []


def test_the_ingest_stage_process_never_shows_the_password(project: Project) -> None:
    """As DVC runs it: `python -m pipeline.stages.ingest` in the project."""
    with sqlite_source(project.root.parent) as source:
        use_source(project, source)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.stages.ingest"],
            cwd=project.root,
            env={**os.environ, **QUIET, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert files_holding(project.root, PASSWORD) == []


@pytest.mark.parametrize("problem", ["server down", "bad query"])
def test_a_failed_source_is_one_line_without_the_password(
    problem: str, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    if problem == "server down":
        source = (
            f"postgresql+psycopg2://postgres:${{{VARIABLE}}}@127.0.0.1:{closed_port()}/test"
            f"?password=${{{VARIABLE}}}&sslpassword=${{{VARIABLE}}}&connect_timeout=3"
        )
        use_source(project, source)
        result = project.run("ingest")
        expected = "cannot connect to postgresql+psycopg2://postgres:***@127.0.0.1:"
    else:
        with sqlite_source(project.root.parent) as source:
            use_source(project, source)
            params = project.params()
            params["data"]["query"] = "SELECT * FROM no_such_table"
            project.write_params(params)
            result = project.run("ingest")
        expected = "data.query failed on sqlite:///"
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]
    assert PASSWORD not in result.stdout + result.stderr
    assert files_holding(project.root, PASSWORD) == []


def secret_url(scheme: str, port: int) -> str:
    return f"{scheme}://user:{PASSWORD}@127.0.0.1:{port}/x?password={PASSWORD}&token={PASSWORD}"


def assert_nothing_printed_it(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the console (both file descriptors) nor a library's log saw it."""
    captured = capfd.readouterr()
    assert PASSWORD not in captured.out + captured.err
    assert all(PASSWORD not in record.getMessage() for record in caplog.records)


def test_a_tracking_server_that_is_down_is_named_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pipeline.tracking import start_tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_url("http", closed_port()))
    with pytest.raises(DriftlineError) as caught:
        start_tracking(MlflowConfig())
    assert "MLflow server http://user:***@127.0.0.1:" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert_nothing_printed_it(capfd, caplog)


def test_an_optuna_storage_that_is_down_is_named_without_the_password(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.stages.tune import make_study

    storage = secret_url("postgresql+psycopg2", closed_port()) + "&connect_timeout=3"
    with pytest.raises(DriftlineError) as caught:
        make_study(TuneConfig(storage=storage), "study")
    assert "tune.storage: cannot open 'postgresql+psycopg2://user:***@" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert_nothing_printed_it(capfd, caplog)


def test_a_ledger_database_that_is_down_is_named_without_the_password(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.retraining import SqlRetrainingLedger

    url = secret_url("postgresql+psycopg2", closed_port())
    with pytest.raises(DriftlineError) as caught:
        SqlRetrainingLedger(url).entries()
    assert "postgresql+psycopg2://user:***@" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert_nothing_printed_it(capfd, caplog)


def test_the_simulation_summary_names_stores_without_passwords(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.simulate import Outcome, summary_lines

    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_url("https", 443))
    params = Params.model_validate(
        {
            "data": {"target": "cnt"},
            "monitor": {"prediction_log": secret_url("postgresql", 5432)},
        }
    )
    text = "\n".join(summary_lines(Outcome(), "http://127.0.0.1:4200", params))
    assert "the retrainings table of postgresql://user:***@" in text
    assert "--backend-store-uri https://user:***@" in text
    assert PASSWORD not in text
