"""The guards between a drift alert and a retraining, so that alerts cannot start a storm.

`RetrainingLedger` is an append-only JSON-lines file (`reports/monitoring/retrainings.jsonl`)
of every alert the retraining flow received and what it did about it. `claim` decides,
under an exclusive file lock, whether an alert may start a retraining:

- the window must hold at least `monitor.min_window_rows` rows;
- a window (by its fingerprint, the hash of its request ids) is retrained at most once:
  ten alerts for the same window start one retraining;
- no retraining may start while another is running, nor within `monitor.cooldown_minutes`
  of the last one that started.

Prefect's concurrency limit on the retraining deployment keeps two runs from starting
at once; the ledger makes the decision durable and explains it.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

STARTED, DONE, FAILED, REFUSED = "started", "done", "failed", "refused"
# A retraining that started this long ago without finishing is presumed dead.
STALE_AFTER = timedelta(hours=6)


@dataclass(frozen=True)
class Claim:
    allowed: bool
    reason: str


class RetrainingLedger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / f".{self.path.name}.lock").open("w") as lock:
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
            status = STARTED if claim.allowed else REFUSED
            self._append(
                {
                    "time": now.isoformat(),
                    "fingerprint": fingerprint,
                    "status": status,
                    "reason": claim.reason,
                    "rows": rows,
                    "run": run,
                }
            )
        return claim

    def _decide(
        self, fingerprint: str, rows: int, min_rows: int, cooldown: timedelta, now: datetime
    ) -> Claim:
        if rows < min_rows:
            return Claim(False, f"the window holds {rows} rows, fewer than {min_rows}")
        states = self._states()
        mine = states.get(fingerprint)
        if mine is not None and mine["status"] in (STARTED, DONE):
            return Claim(
                False,
                f"window {fingerprint} has a retraining already ({mine['status']}, started "
                f"{mine['started']}): a duplicate alert",
            )
        for other, state in states.items():
            if state["status"] == STARTED and now - _started(state) < STALE_AFTER:
                return Claim(False, f"the retraining for window {other} is still running")
        if states:  # failed retrainings count too: a failing one is not retried every hour
            last = max(states.values(), key=_started)
            ready = _started(last) + cooldown
            if now < ready:
                return Claim(
                    False,
                    f"cooldown: the last retraining started at {last['started']}; the next may "
                    f"start after {ready.isoformat()} (monitor.cooldown_minutes)",
                )
        return Claim(True, f"window {fingerprint} drifted: retraining")

    def _states(self) -> dict[str, dict[str, Any]]:
        """Per window: when its retraining last started, and how it ended (refusals do
        not count)."""
        states: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            fingerprint, status = entry["fingerprint"], entry["status"]
            if status == STARTED:
                states[fingerprint] = {"status": STARTED, "started": entry["time"]}
            elif status in (DONE, FAILED) and fingerprint in states:
                states[fingerprint]["status"] = status
        return states

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


def _started(state: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(state["started"])
