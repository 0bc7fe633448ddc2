"""Creating the stores Driftline writes to, readable by their owner only.

The prediction log and its labels hold production inputs, predictions and labels; the
retraining ledger, the MLflow store, the Optuna storage and the Evidently workspace
hold what was decided on them. With `stores.private: true` (the default) whatever
Driftline creates for them is owner-only: files 0600, folders 0700. A store that
already exists keeps its permissions, and `stores.private: false` leaves every mode to
the process's umask.

A library that creates a SQLite database itself (MLflow, Optuna, SQLAlchemy) gets an
empty file made here first: SQLite takes an empty file as a new database and creates
its journal and WAL files with the database file's permissions. A server database
(PostgreSQL) is left to its server. The process umask is not changed: it would also
make every DVC output owner-only, and it is shared by all of the process's threads.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def create_folder(path: Path, private: bool) -> Path:
    """`mkdir -p path`; the folders it creates are 0700 when `private`."""
    path = Path(path)
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_FOLDER if private else 0o777)
        except FileExistsError:  # another process made it meanwhile
            continue
    return path


def create_file(path: Path, private: bool) -> Path:
    """An empty file at `path` unless one is there, 0600 when `private`. A writer that
    then opens it keeps the mode. Its folder must exist."""
    path = Path(path)
    try:
        mode = PRIVATE_FILE if private else 0o666  # then less the umask, as open() does
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return path
    os.close(handle)
    return path


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (`sqlite:///mlflow.db`), or None for any other
    URL, an in-memory database or a `file:` URI."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or "uri" in parsed.query:
        return None
    return Path(database)


def prepare_store(location: str | Path, private: bool) -> None:
    """Before anything creates the store at `location` (a SQLAlchemy URL or a folder),
    create it owner-only when `private`: a SQLite database as an empty file, a folder as
    a folder. Nothing for a server's URL, or when not private; nor for a SQLite file
    whose folder is missing, which SQLite then reports as the mistake it likely is."""
    if not private:
        return
    if isinstance(location, str) and "://" in location:
        database = sqlite_file(location)
        if database is not None and database.parent.is_dir():
            create_file(database, private)
        return
    create_folder(Path(location), private)
