"""Reading and writing the files that cross stage boundaries.

Writes are atomic (a temporary file, then a rename), so a stage that fails part way
leaves the previous outputs exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import DataError


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    temporary.write_bytes(payload)
    os.replace(temporary, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    frame.to_parquet(temporary, index=False)
    os.replace(temporary, path)


def replace_dir_atomic(staged: Path, target: Path) -> None:
    """Swap a fully written directory into place of `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    retired = _temporary_sibling(target)
    if target.exists():
        os.replace(target, retired)
    os.replace(staged, target)
    shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """An empty folder named like `target` to fill. When the block succeeds it replaces
    `target` in one rename; when it fails it is removed and `target` stays as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staged = scratch / target.name
    staged.mkdir()
    try:
        yield staged
        replace_dir_atomic(staged, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_stage_input(path: Path, produced_by: str) -> pd.DataFrame:
    """Read a parquet table written by an earlier stage, naming that stage if it is missing."""
    if not path.exists():
        raise DataError(f"{path} does not exist: run the {produced_by} stage first (dvc repro)")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not readable parquet ({exc}): re-run {produced_by}") from None


def read_json(path: Path, produced_by: str) -> Any:
    if not path.exists():
        raise DataError(f"{path} does not exist: run the {produced_by} stage first (dvc repro)")
    return json.loads(path.read_text(encoding="utf-8"))


def folder_digest(directory: Path) -> str:
    """A hash of a folder's files, names and bytes: a model's identity, the same on any
    host that holds the same bytes (MLflow runs are found by it, not by a stored id)."""
    digest = hashlib.sha256()
    files = sorted(path for path in Path(directory).rglob("*") if path.is_file())
    if not files:
        raise DataError(f"{directory} holds no files: run the stage that writes it")
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
