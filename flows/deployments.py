"""The two deployments, their work pools, and the drift trigger.

- `training` runs `flows/retraining.py:retraining_flow` on the pool named by
  `monitor.retrain_pool` (default `gpu`): by hand (`prefect deployment run
  retraining/training`) and on every `driftline.drift.detected` event, whose payload
  fills the flow's parameters. The deployment's concurrency limit is 1, so runs queue
  rather than overlap; the flow's guards handle duplicates and the cooldown.
- `monitoring` runs `flows/monitoring.py:monitoring_flow` on `monitor.cron` on the
  `monitor.monitor_pool` pool (default `cpu`).

Where a flow run gets its code:

- with `DRIFTLINE_GIT_URL` set (production), from that git remote at `DRIFTLINE_GIT_REF`
  (a branch, `main` by default, or a commit): every run clones it into a fresh
  directory of the worker that picks it up, so a worker on any machine can run it;
- without it (a laptop, `driftline up`), from the project folder itself.

No parameter and no event payload carries a path: a run works in the directory its
pull step leaves it in. The pools are process pools; infra/prefect/ holds Docker and
Kubernetes base job templates for a GPU pool, where `train.device: auto` trains on CUDA.

    python -m flows.deployments [PROJECT]   # create the pools and (re)deploy both
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from flows.monitoring import DRIFT_EVENT

POOL_TYPE = "process"
TRAINING = "training"
MONITORING = "monitoring"
# The event's payload, as the retraining flow's parameters (Jinja, rendered by Prefect).
DRIFT_PARAMETERS = {
    "trigger": "drift",
    "fingerprint": "{{ event.payload.fingerprint }}",
    "rows": "{{ event.payload.window.rows }}",
    "window_start": "{{ event.payload.window.start }}",
    "window_end": "{{ event.payload.window.end }}",
    "drift_share": "{{ event.payload.drift_share }}",
    "report": "{{ event.payload.report }}",  # the report's MLflow run, when it was logged
}


def ensure_pools(names: list[str]) -> list[str]:
    """Create the process work pools that do not exist yet; the names created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    created = []
    with get_client(sync_client=True) as client:
        for name in dict.fromkeys(names):
            try:
                client.create_work_pool(work_pool=WorkPoolCreate(name=name, type=POOL_TYPE))
            except ObjectAlreadyExists:
                continue
            created.append(name)
    return created


def code_source(project: Path) -> Any:
    """Where runs get the code: the git remote of `DRIFTLINE_GIT_URL`, at
    `DRIFTLINE_GIT_REF` (a branch or a full commit hash), or else the project folder."""
    from prefect.runner.storage import GitRepository

    url = os.environ.get("DRIFTLINE_GIT_URL")
    if not url:
        return str(project)
    ref = os.environ.get("DRIFTLINE_GIT_REF") or "main"
    if re.fullmatch(r"[0-9a-f]{40}", ref):
        return GitRepository(url=url, commit_sha=ref)
    return GitRepository(url=url, branch=ref)


def deploy(project: Path, params_file: str = "params.yaml") -> dict[str, Any]:
    """Create the pools and deploy both flows; their ids and pools. `project` is read
    for params (and is the code's source when `DRIFTLINE_GIT_URL` is not set)."""
    from prefect import Flow
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from pipeline.config import load_params

    root = Path(project).resolve()
    config = load_params(root / params_file).monitor
    ensure_pools([config.retrain_pool, config.monitor_pool])
    common = {"params_file": params_file}
    source = code_source(root)
    training = Flow.from_source(source, "flows/retraining.py:retraining_flow")
    training_id = training.deploy(
        name=TRAINING,
        work_pool_name=config.retrain_pool,
        parameters=common,
        concurrency_limit=1,
        triggers=[
            DeploymentEventTrigger(
                name="retrain on drift",
                expect={DRIFT_EVENT},
                match={"prefect.resource.id": "driftline.window.*"},
                parameters=DRIFT_PARAMETERS,
            )
        ],
        tags=["driftline"],
        print_next_steps=False,
    )
    monitoring = Flow.from_source(source, "flows/monitoring.py:monitoring_flow")
    monitoring_id = monitoring.deploy(
        name=MONITORING,
        work_pool_name=config.monitor_pool,
        parameters=common,
        schedule=Cron(config.cron, timezone=config.timezone),
        tags=["driftline"],
        print_next_steps=False,
    )
    return {
        TRAINING: {"id": str(training_id), "pool": config.retrain_pool},
        MONITORING: {"id": str(monitoring_id), "pool": config.monitor_pool, "cron": config.cron},
    }


if __name__ == "__main__":
    print(deploy(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
