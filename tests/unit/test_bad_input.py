"""Everything a user can get wrong: one clear line, a non-zero exit, no traceback,
and the outputs of the last good run left exactly as they were."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FIXTURES, REPO, Project

BIKE = FIXTURES / "bike_sharing_2000.csv"


def bike() -> pd.DataFrame:
    return pd.read_csv(BIKE)


def write_csv(frame: pd.DataFrame) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "bad.csv"
        frame.to_csv(path, index=False)
        return path

    return make


def write_bytes(name: str, payload: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(payload)
        return path

    return make


def changed(column: str, row: int, value: object) -> pd.DataFrame:
    frame = bike().astype({column: object})
    frame.loc[row, column] = value
    return frame


# (case, how to make the bad source, the stage that must refuse it, what stderr must say)
INGEST_REFUSES = [
    ("missing path", lambda folder: folder / "nowhere.csv", "no such file or folder"),
    ("empty file", write_bytes("empty.csv", b""), "the file is empty"),
    ("header only", write_bytes("header.csv", BIKE.read_bytes().split(b"\n")[0] + b"\n"), "a header but no rows"),
    ("corrupt parquet", write_bytes("broken.parquet", b"PAR1" + b"\x13\x37" * 200), "not a readable Parquet file"),
    ("binary garbage", write_bytes("garbage.csv", bytes(range(256)) * 40), "binary content"),
    ("not utf-8", write_bytes("latin.csv", "a,b\ncafé,1\n".encode("latin-1")), "data.csv.encoding"),
    ("missing target", write_csv(bike().drop(columns=["cnt"])), "target column 'cnt' is not in the data"),
    ("missing key column", write_csv(bike().drop(columns=["instant"])), "data.key_columns: instant"),
    ("empty folder", lambda folder: (folder / "empty_dir").mkdir() or folder / "empty_dir", "no .csv or .parquet files"),
]  # fmt: skip

VALIDATE_REFUSES = [
    ("missing required column", write_csv(bike().drop(columns=["temp"])), "column 'temp': ExpectColumnToExist"),
    ("text in a numeric column", write_csv(changed("hum", 5, "very humid")), "'very humid'"),
    ("null target", write_csv(changed("cnt", 7, None)), "column 'cnt': ExpectColumnValuesToNotBeNull"),
    ("invalid target", write_csv(changed("cnt", 3, "lots")), "column 'cnt': ExpectColumnValuesToBeInTypeList"),
    ("unparseable dates", write_csv(changed("dteday", 11, "2011-02-30")), "'2011-02-30'"),
    ("duplicate keys", write_csv(changed("instant", 4, 1)), "column 'instant': ExpectColumnValuesToBeUnique"),
    ("too few rows", write_csv(bike().head(50)), "ExpectTableRowCountToBeBetween(min_value=100): observed 50"),
]  # fmt: skip


def assert_one_clear_line(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("case", "make_source", "expected"), INGEST_REFUSES, ids=[c[0] for c in INGEST_REFUSES]
)
def test_ingest_refuses(produced: Project, case: str, make_source, expected: str) -> None:
    before = produced.snapshot()
    produced.update("data", source=str(make_source(produced.root)))
    result = produced.run("ingest")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert_one_clear_line(result.stderr, expected)
    assert produced.snapshot() == before


@pytest.mark.parametrize(
    ("case", "make_source", "expected"), VALIDATE_REFUSES, ids=[c[0] for c in VALIDATE_REFUSES]
)
def test_validate_refuses(produced: Project, case: str, make_source, expected: str) -> None:
    produced.update("data", source=str(make_source(produced.root)))
    assert produced.run("ingest").exit_code == 0
    before = produced.snapshot()

    result = produced.run("validate")

    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    failures = [line for line in lines if line.startswith("critical: ")]
    assert failures and lines[-1].startswith("error: ")
    assert lines[-1].endswith("report in reports/validation-failed")
    assert any(expected in line for line in failures), result.stderr
    after = produced.snapshot()
    failed_report = {path for path in after if path.startswith("reports/validation-failed/")}
    assert {path: after[path] for path in after.keys() - failed_report} == before
    assert (produced.root / "reports/validation-failed/summary.json").exists()

    # Nothing downstream accepts the refused data, even when run by hand.
    refused = produced.run("clean")
    assert refused.exit_code == 1
    assert_one_clear_line(refused.stderr, "changed since it was last validated")


def test_sql_url_that_does_not_connect(produced: Project) -> None:
    before = produced.snapshot()
    params = produced.params()
    params["data"]["source"] = "postgresql://driftline:${DRIFTLINE_TEST_PW}@127.0.0.1:1/none"
    params["data"]["query"] = "SELECT 1"
    produced.write_params(params)

    unset = produced.run("ingest")
    assert unset.exit_code == 1
    assert_one_clear_line(unset.stderr, "${DRIFTLINE_TEST_PW} but that variable is not set")

    with pytest.MonkeyPatch.context() as env:
        env.setenv("DRIFTLINE_TEST_PW", "s3cret")
        refused = produced.run("ingest")
    assert refused.exit_code == 1
    assert_one_clear_line(
        refused.stderr, "cannot connect to postgresql://driftline:***@127.0.0.1:1/none"
    )
    assert "s3cret" not in refused.stderr
    assert produced.snapshot() == before


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nosuchdialect://x/y", "SQLAlchemy has no dialect 'nosuchdialect'"),
        ("sqlite:///{root}/none.db", "data.query failed on sqlite:///"),
    ],
)
def test_sql_errors_are_told_apart(produced: Project, url: str, expected: str) -> None:
    params = produced.params()
    params["data"]["source"] = url.format(root=produced.root)
    params["data"]["query"] = "SELECT * FROM hours"
    produced.write_params(params)
    result = produced.run("ingest")
    assert result.exit_code == 1
    assert_one_clear_line(result.stderr, expected)


def test_bad_params_exit_2_naming_the_key(produced: Project) -> None:
    before = produced.snapshot()
    produced.update("split", fractions={"train": 0.9, "val": 0.2, "test": 0.1})
    for stage in ("ingest", "validate", "clean", "split"):
        result = produced.run(stage)
        assert result.exit_code == 2
        assert_one_clear_line(result.stderr, "split.fractions: train + val + test must add up to 1")
    assert produced.snapshot() == before


def test_stage_run_before_its_input_exists(project: Project) -> None:
    result = project.run("split")
    assert result.exit_code == 1
    assert_one_clear_line(result.stderr, "run the ingest stage first")


def test_real_process_prints_no_traceback(produced: Project) -> None:
    """The same path as `dvc repro`: a fresh interpreter running the stage module."""
    produced.update("data", source=str(produced.root / "missing.parquet"))
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.ingest"],
        cwd=produced.root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": str(Path(sys.executable).parent)},
        check=False,
    )
    assert completed.returncode == 1
    assert_one_clear_line(completed.stderr, "missing.parquet: no such file or folder")


def test_the_local_stack_explains_what_is_wrong(tmp_path: Path) -> None:
    """`driftline down` with nothing up, `up` on a port in use or with no champion: one
    line each, exit 1, nothing started."""
    import socket

    from pipeline.stack import StackError, down, up

    with pytest.raises(StackError, match=r"nothing to stop: no \.driftline/up\.json"):
        down(tmp_path)
    options = {
        "poll": 1.0,
        "pools": ["gpu"],
        "deploy": lambda root: {},
        "say": lambda line: None,
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(StackError, match=f"port {busy} on 127.0.0.1 is in use: choose"):
            up(tmp_path, prefect_port=busy, serve_port=1, has_champion=lambda: True, **options)
    with pytest.raises(StackError, match="no champion yet: run `make run` first"):
        up(tmp_path, prefect_port=0, serve_port=0, has_champion=lambda: False, **options)
    assert not (tmp_path / ".driftline").exists()
