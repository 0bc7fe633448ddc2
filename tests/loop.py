"""What the two real-server loop tests share: production traffic through the API, the
runs of a deployment, and a drift alert sent to a given Prefect server.

tests/flows/test_drift_loop.py runs the loop on one laptop (`driftline up`);
tests/multihost/test_loop_across_hosts.py runs it across three hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from tests.conftest import REPO

HOUR_CSV = REPO / "pipeline/datasets/bike_sharing/hour.csv"


def summer(rows: int = 1200) -> pd.DataFrame:
    """Summer 2012 bike rows: traffic the first champion (trained on early 2011) never
    saw, so the data and the model's quality drift."""
    bike = pd.read_csv(HOUR_CSV)
    return bike[(bike["yr"] == 1) & (bike["mnth"].isin([6, 7]))].iloc[:rows]


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def served_version(server: str) -> str | None:
    try:
        return str(get(f"{server}/health")["model_version"])
    except OSError:
        return None


def requests_for(rows: pd.DataFrame, features: dict[str, list[str]], prefix: str) -> list[dict]:
    """Raw bike rows as /predict records: the features (with clean's calendar feature),
    the key and time as context, and an id to join labels on."""
    frame = rows.assign(dteday_dayofyear=pd.to_datetime(rows["dteday"]).dt.dayofyear)
    records = []
    for position, row in enumerate(frame.to_dict(orient="records")):
        record = {name: row[name] for name in (*features["numeric"], *features["categorical"])}
        record.update(id=f"{prefix}-{position}", instant=row["instant"], dteday=row["dteday"])
        records.append(record)
    return records


def send(server: str, records: list[dict]) -> None:
    for start in range(0, len(records), 100):
        status, body = post(f"{server}/predict", {"records": records[start : start + 100]})
        assert status == 200, body


def labels_for(records: list[dict], rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": [r["id"] for r in records], "label": rows["cnt"].to_numpy(), "time": now()}
    )


@contextlib.contextmanager
def traffic(server: str, records: list[dict]) -> Iterator[tuple[list[str], list[str]]]:
    """Requests to `server` in a thread while the block runs: (failures, the version of
    every answer)."""
    failures: list[str] = []
    seen: list[str] = []
    done = threading.Event()

    def keep_sending() -> None:
        while not done.is_set():
            try:
                status, body = post(f"{server}/predict", {"records": records})
            except OSError as exc:  # refused, reset, timed out: a failed request all the same
                status, body = 0, {"error": str(exc)}
            if status != 200:
                failures.append(f"{status}: {body}")
            else:
                seen.append(body["model_version"])
            time.sleep(0.05)

    thread = threading.Thread(target=keep_sending)
    thread.start()
    try:
        yield failures, seen
    finally:
        done.set()
        thread.join()


# --- Prefect, at a given server -----------------------------------------------------


@contextlib.contextmanager
def prefect_at(api: str) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        yield


def run_deployment(name: str, parameters: dict[str, Any]) -> Any:
    from prefect.deployments import run_deployment as run

    return run(name, parameters=parameters, timeout=0)


def flow_runs(deployment: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            sort=FlowRunSort.START_TIME_ASC,
        )


def finished(runs: list[Any], count: int) -> list[Any] | None:
    if len(runs) == count and all(run.state and run.state.is_final() for run in runs):
        return runs
    return None


def emit_drift(api: str, decision: dict[str, Any]) -> None:
    """The event a second monitor would send for the same window. A client of its own:
    `emit_event` goes through this process's events worker, which a test that ran
    earlier in the same process may have bound to another server."""
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    from flows.monitoring import DRIFT_EVENT

    fingerprint = decision["window"]["fingerprint"]
    event = Event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": f"driftline.window.{fingerprint}"},
        payload={
            "fingerprint": fingerprint,
            "window": decision["window"],
            "drift_share": decision["drift_share"],
            "report": decision.get("mlflow_run"),
        },
    )

    async def send_it() -> None:
        async with PrefectEventsClient(api_url=api) as client:
            await client.emit(event)

    asyncio.run(send_it())


def now() -> str:
    return datetime.now(UTC).isoformat()


def hours_since(start: datetime) -> float:
    return (datetime.now(UTC) - start).total_seconds() / 3600 + 1 / 3600
