"""The two deployments, their work pools, and the drift trigger.

- `training` runs `flows/retraining.py:retraining_flow` on the pool named by
  `monitor.retrain_pool` (default `gpu`): by hand (`prefect deployment run
  retraining/training`) and on every `driftline.drift.detected` event, whose payload
  fills the flow's parameters. The deployment's concurrency limit is 1, so runs queue
  rather than overlap; the flow's guards handle duplicates and the cooldown.
- `monitoring` runs `flows/monitoring.py:monitoring_flow` on `monitor.cron` on the
  `monitor.monitor_pool` pool (default `cpu`).

Both pools are process pools here, and the flows run from the project folder itself
(`Flow.from_source`). infra/prefect/ holds Docker and Kubernetes base job templates
for a GPU pool; on such a pool, `train.device: auto` trains on CUDA.

    python -m flows.deployments [PROJECT]   # create the pools and (re)deploy both
"""

from __future__ import annotations

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
    "report": "{{ event.payload.report }}",
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


def deploy(project: Path, params_file: str = "params.yaml") -> dict[str, Any]:
    """Create the pools and deploy both flows for `project`; their ids and pools."""
    from prefect import Flow
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from pipeline.config import load_params

    root = Path(project).resolve()
    config = load_params(root / params_file).monitor
    ensure_pools([config.retrain_pool, config.monitor_pool])
    common = {"project": str(root), "params_file": params_file}
    training = Flow.from_source(str(root), "flows/retraining.py:retraining_flow")
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
    monitoring = Flow.from_source(str(root), "flows/monitoring.py:monitoring_flow")
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
