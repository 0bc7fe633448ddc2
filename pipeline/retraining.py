"""The guards between a drift alert and a retraining, so that alerts cannot start a storm.

`RetrainingLedger` is an append-only record of every alert the retraining flow received
and what it did about it. `open_ledger` puts it where every worker finds it: the
`retrainings` table of the prediction log's database when the log is a SQL URL (each flow
run works in a fresh checkout, so a file there would be forgotten), else the JSON-lines
file the flow names (`reports/monitoring/retrainings.jsonl`) when the log is a parquet
folder on one machine. `claim` reads the ledger, decides whether an alert may start a
retraining and writes the decision down, all under one lock that serialises claims (a
PostgreSQL advisory lock, SQLite's write lock, or an exclusive file lock):

- a window (by its fingerprint, the hash of its request ids) is retrained at most once:
  ten alerts for the same window start one retraining;
- the window must hold at least `monitor.min_window_rows` rows;
- no retraining may start while another is running, nor within `monitor.cooldown_minutes`
  of the last one that started.

A refusal names every guard that applied, the most specific first (`GUARDS`' order), so
a repeated alert that also falls in the cooldown reads "duplicate" before "cooldown".
An alert for a window whose earlier alert was refused, or whose retraining failed, is a
duplicate too, but that alone refuses nothing: what refused it then may be gone now.

Prefect's concurrency limit on the retraining deployment keeps two runs from starting
at once; the ledger makes the decision durable and explains it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError, DriftlineError, TransientError
from pipeline.stores import create_file, create_folder, prepare_store

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Table

STARTED, DONE, FAILED, REFUSED = "started", "done", "failed", "refused"
# A retraining that started this long ago without finishing is presumed dead.
STALE_AFTER = timedelta(hours=6)

LEDGER_TABLE = "retrainings"
# The PostgreSQL advisory lock that serialises claims: the first 8 bytes, signed, of
# sha256(b"driftline.retrainings"). Fixed, so that every worker takes the same lock.
ADVISORY_LOCK_KEY = 5175062634166554351
# How long a claim waits for another claim's lock before giving up.
LOCK_WAIT = timedelta(seconds=30)
CONNECT_TIMEOUT_SECONDS = 10


# The guards, the most specific first: this very window, its size, then the others'.
DUPLICATE, TOO_FEW_ROWS, RUNNING, COOLDOWN = "duplicate", "too few rows", "running", "cooldown"
GUARDS = (DUPLICATE, TOO_FEW_ROWS, RUNNING, COOLDOWN)


@dataclass(frozen=True)
class Claim:
    """A claim's decision. `guards` are the guards that applied to a refusal, most
    specific first; `reason` says each one, in the same order."""

    allowed: bool
    reason: str
    guards: tuple[str, ...] = ()


class RetrainingLedger:
    """The ledger as a JSON-lines file, guarded by an exclusive file lock beside it
    (`SqlRetrainingLedger` keeps the same ledger in a database). Files and folders it
    creates are owner-only when `private` (`stores.private`)."""

    def __init__(self, path: Path, private: bool = True) -> None:
        self.path = Path(path)
        self.private = private

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        create_folder(self.path.parent, self.private)
        lock_file = create_file(self.path.parent / f".{self.path.name}.lock", self.private)
        create_file(self.path, self.private)
        with lock_file.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, entry: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")

    def claim(
        self,
        fingerprint: str,
        rows: int,
        *,
        min_rows: int,
        cooldown: timedelta,
        run: str | None = None,
        now: datetime | None = None,
    ) -> Claim:
        """Decide whether the alert for window `fingerprint` may start a retraining, and
        write the decision down; an allowed claim is the `started` entry."""
        now = now or datetime.now(UTC)
        with self._locked():
            claim = self._decide(fingerprint, rows, min_rows, cooldown, now)
            entry = {
                "time": now.isoformat(),
                "fingerprint": fingerprint,
                "status": STARTED if claim.allowed else REFUSED,
                "reason": claim.reason,
                "rows": rows,
                "run": run,
            }
            if claim.guards:
                entry["guards"] = list(claim.guards)
            self._append(entry)
        return claim

    def _decide(
        self, fingerprint: str, rows: int, min_rows: int, cooldown: timedelta, now: datetime
    ) -> Claim:
        """Every guard that applies, in `GUARDS`' order; refused if any of them blocks."""
        applied: dict[str, str] = {}  # guard -> what it says, in GUARDS' order
        blocked = False
        entries = self.entries()
        states = _states(entries)
        mine = states.get(fingerprint)
        earlier = _last_alert(entries, fingerprint)
        if mine is not None and mine["status"] in (STARTED, DONE):
            applied[DUPLICATE] = (
                f"window {fingerprint} has a retraining already ({mine['status']}, started "
                f"{mine['started']}): a duplicate alert"
            )
            blocked = True
        elif earlier is not None:
            # Said when something else refuses; alone it refuses nothing.
            applied[DUPLICATE] = f"window {fingerprint} was alerted before ({earlier})"
        if rows < min_rows:
            applied[TOO_FEW_ROWS] = f"the window holds {rows} rows, fewer than {min_rows}"
            blocked = True
        running = [
            other
            for other, state in states.items()
            if other != fingerprint
            and state["status"] == STARTED
            and now - _started(state) < STALE_AFTER
        ]
        if running:
            applied[RUNNING] = f"the retraining for window {running[0]} is still running"
            blocked = True
        if states:  # failed retrainings count too: a failing one is not retried every hour
            last = max(states.values(), key=_started)
            ready = _started(last) + cooldown
            if now < ready:
                applied[COOLDOWN] = (
                    f"the last retraining started at {last['started']} and the next may start "
                    f"after {ready.isoformat()} (monitor.cooldown_minutes)"
                )
                blocked = True
        if blocked:
            guards = tuple(guard for guard in GUARDS if guard in applied)
            reason = "; ".join(f"{guard}: {applied[guard]}" for guard in guards)
            return Claim(False, reason, guards)
        again = f" (its last alert: {earlier})" if earlier is not None else ""
        return Claim(True, f"window {fingerprint} drifted: retraining{again}")

    def finish(self, fingerprint: str, ok: bool, detail: dict[str, Any]) -> None:
        with self._locked():
            self._append(
                {
                    "time": datetime.now(UTC).isoformat(),
                    "fingerprint": fingerprint,
                    "status": DONE if ok else FAILED,
                    **detail,
                }
            )


def _states(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per window: when its retraining last started, and how it ended (refusals do not
    count)."""
    states: dict[str, dict[str, Any]] = {}
    for entry in entries:
        fingerprint, status = entry["fingerprint"], entry["status"]
        if status == STARTED:
            states[fingerprint] = {"status": STARTED, "started": entry["time"]}
        elif status in (DONE, FAILED) and fingerprint in states:
            states[fingerprint]["status"] = status
    return states


def _last_alert(entries: list[dict[str, Any]], fingerprint: str) -> str | None:
    """How the last alert for `fingerprint` ended, or None if this is the first."""
    for entry in reversed(entries):
        if entry["fingerprint"] == fingerprint:
            if entry["status"] != REFUSED:
                return f"retraining {entry['status']} at {entry['time']}"
            guards = ", ".join(entry.get("guards") or [])
            return f"refused at {entry['time']}{f': {guards}' if guards else ''}"
    return None


def _started(state: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(state["started"])


class RetrainingLedgerError(DriftlineError):
    """The database that holds the retraining ledger refused: the message names it."""


class RetrainingLedgerUnavailable(RetrainingLedgerError, TransientError):
    """That database is down or busy: worth a retry (exit 75)."""


class SqlRetrainingLedger(RetrainingLedger):
    """The ledger as the `retrainings` table of a database every worker reaches (PostgreSQL
    in production, a SQLite file on a laptop), so that alerts handled on different hosts
    share one record. One row an entry: `id`, `time`, `fingerprint`, `status` and `entry`
    (the whole entry as JSON).

    A claim is one transaction that first takes a lock serialising claims, then reads,
    decides and appends; each operation opens its own engine and disposes of it.
    """

    def __init__(self, url: str, private: bool = True) -> None:
        self.url = url
        self.backend = _backend(url)
        self.private = private
        self._claiming = threading.local()  # the transaction a claim in this thread holds

    def entries(self) -> list[dict[str, Any]]:
        held: Connection | None = getattr(self._claiming, "connection", None)
        if held is not None:
            return _read_entries(held)
        with self._transaction(serialised=False) as connection:
            return _read_entries(connection)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._transaction(serialised=True) as connection:
            _ledger_table().create(connection, checkfirst=True)  # under the lock: no race
            self._claiming.connection = connection
            try:
                yield
            finally:
                del self._claiming.connection

    def _append(self, entry: dict[str, Any]) -> None:
        self._claiming.connection.execute(
            _ledger_table().insert(),
            {
                "time": entry["time"],
                "fingerprint": entry["fingerprint"],
                "status": entry["status"],
                "entry": json.dumps(entry, sort_keys=True),
            },
        )

    @contextmanager
    def _transaction(self, *, serialised: bool) -> Iterator[Connection]:
        """A transaction on an engine of its own; `serialised`: holding the claims' lock
        from its first statement, so that what it reads no other claim is changing."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        prepare_store(self.url, self.private)  # a SQLite file the log has not made yet
        engine = self._engine(serialised)
        try:
            with engine.begin() as connection:
                if serialised and self.backend == "postgresql":
                    connection.execute(
                        text("SELECT set_config('lock_timeout', :wait, true)"),
                        {"wait": f"{int(LOCK_WAIT.total_seconds())}s"},
                    )
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                    )
                yield connection
        except SQLAlchemyError as exc:
            raise _ledger_error(self.url, exc) from None
        finally:
            engine.dispose()

    def _engine(self, serialised: bool) -> Engine:
        from sqlalchemy import create_engine, event
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        if self.backend == "sqlite":
            # `timeout` is SQLite's busy timeout: a claim waits for another's write lock.
            engine = create_engine(
                self.url, poolclass=NullPool, connect_args={"timeout": LOCK_WAIT.total_seconds()}
            )
            if serialised:
                # SQLAlchemy's recipe for a real BEGIN with sqlite3: the driver's own
                # would only come before the INSERT, after the read; IMMEDIATE takes the
                # write lock at once, so that two claims cannot both read before writing.
                event.listen(engine, "connect", _without_driver_begin)
                event.listen(engine, "begin", _begin_immediate)
            return engine
        url = make_url(self.url)
        options: dict[str, Any] = {}
        if url.get_driver_name() in ("psycopg2", "psycopg") and "connect_timeout" not in url.query:
            options["connect_timeout"] = CONNECT_TIMEOUT_SECONDS  # a host that never answers
        # READ COMMITTED, whatever the server's default: each statement sees what the
        # claim before this one committed, once the advisory lock is granted.
        return create_engine(
            url, poolclass=NullPool, isolation_level="READ COMMITTED", connect_args=options
        )


def open_ledger(
    prediction_log: str | Path, fallback_file: Path, private: bool = True
) -> RetrainingLedger:
    """The ledger for a project whose prediction log is at `prediction_log`: the
    `retrainings` table of its database when it is a SQL URL, else `fallback_file`."""
    from pipeline.prediction_log import is_sql_url

    if is_sql_url(prediction_log):
        return SqlRetrainingLedger(str(prediction_log), private)
    return RetrainingLedger(fallback_file, private)


def _backend(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ConfigError(
            f"monitor.prediction_log: {url.split('://', 1)[0]}://... is not a database URL"
        ) from None
    if backend not in ("postgresql", "sqlite"):
        from pipeline.secrets import mask_url

        raise ConfigError(
            f"monitor.prediction_log: the retraining ledger lives in the prediction log's "
            f"database and needs PostgreSQL or SQLite, not {backend} ({mask_url(url)})"
        )
    return backend


@functools.cache
def _ledger_table() -> Table:
    from sqlalchemy import Column, Integer, MetaData, Table, Text

    return Table(
        LEDGER_TABLE,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("time", Text, nullable=False),
        Column("fingerprint", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("entry", Text, nullable=False),
    )


def _read_entries(connection: Connection) -> list[dict[str, Any]]:
    from sqlalchemy import inspect, select

    if not inspect(connection).has_table(LEDGER_TABLE):
        return []
    table = _ledger_table()
    rows = connection.execute(select(table.c.entry).order_by(table.c.id)).scalars()
    return [json.loads(row) for row in rows]


def _without_driver_begin(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


# Errors that say the database is down, restarting or busy, not that the request is wrong.
UNAVAILABLE_SIGNS = (
    "connection refused",
    "could not connect",
    "timeout expired",
    "timed out",
    "server closed the connection",
    "the database system is",  # ... starting up / shutting down / in recovery mode
    "too many clients",
    "database is locked",
    "lock timeout",
)


def _ledger_error(url: str, exc: Exception) -> RetrainingLedgerError:
    from sqlalchemy.exc import DBAPIError

    from pipeline.secrets import mask_url, redact

    reason = redact((str(exc).strip().splitlines() or [type(exc).__name__])[0], url)
    lowered = reason.lower()
    invalidated = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if invalidated or any(sign in lowered for sign in UNAVAILABLE_SIGNS):
        return RetrainingLedgerUnavailable(
            f"the retraining ledger's database {mask_url(url)} is unavailable: {reason}; "
            "start it or wait, then retry"
        )
    return RetrainingLedgerError(
        f"the retraining ledger's database {mask_url(url)} refused: {reason}; "
        "check monitor.prediction_log and the database user's rights"
    )
