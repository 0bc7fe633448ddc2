"""infra/: the files parse, the GPU pool's job templates ask for a GPU, and Prefect takes them.

Nothing here builds an image or needs Docker, Kubernetes or a GPU.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
TEMPLATES = {
    "kubernetes": INFRA / "prefect/gpu-kubernetes-job-template.json",
    "docker": INFRA / "prefect/gpu-docker-job-template.json",
}


def rendered(kind: str, **values: Any) -> dict[str, Any]:
    """The job configuration a worker would get: the variables' defaults, then `values`."""
    from prefect.utilities.templating import apply_values

    template = json.loads(TEMPLATES[kind].read_text())
    defaults = {
        name: spec["default"]
        for name, spec in template["variables"]["properties"].items()
        if "default" in spec
    }
    return apply_values(template["job_configuration"], {**defaults, **values}, remove_notset=True)


def test_kubernetes_pods_request_and_limit_one_gpu() -> None:
    pod = rendered("kubernetes")["job_manifest"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"] == {"nvidia.com/gpu": 1}
    assert resources["limits"] == {"nvidia.com/gpu": 1}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    assert "nodeSelector" not in pod  # unset variables leave no empty keys behind


def test_kubernetes_job_variables_change_the_request() -> None:
    pod = rendered(
        "kubernetes",
        gpu_count=2,
        memory_limit="16Gi",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-L4"},
    )["job_manifest"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": 2, "memory": "16Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}


def test_docker_containers_get_an_nvidia_device_request() -> None:
    configuration = rendered("docker")
    assert configuration["container_create_kwargs"]["device_requests"] == [
        {"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}
    ]
    assert configuration["image"] == "driftline:gpu"


def test_docker_device_request_is_what_docker_py_accepts() -> None:
    from docker.types import HostConfig

    requests = rendered("docker", gpu_count=-1)["container_create_kwargs"]["device_requests"]
    host = HostConfig(version="1.44", device_requests=requests)
    assert host["DeviceRequests"][0]["Count"] == -1


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_a_prefect_server_takes_the_template(prefect_server: str, kind: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads(TEMPLATES[kind].read_text())
    with get_client(sync_client=True) as client:
        pool = client.create_work_pool(
            WorkPoolCreate(name=f"gpu-{kind}", type=kind, base_job_template=template),
            overwrite=True,
        )
    assert pool.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1


def test_the_image_is_cuda_python_311_and_the_tested_versions() -> None:
    dockerfile = (INFRA / "docker/Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\w.-]+-runtime-", dockerfile, re.MULTILINE)
    assert "python3.11" in dockerfile
    assert "constraints" in dockerfile and "torch==2.13.0" in dockerfile
    for path in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert (REPO / path).exists(), path


def test_compose_reserves_a_gpu_and_holds_no_password() -> None:
    text = (INFRA / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    assert {"postgres", "prefect-server", "mlflow", "worker"} <= set(compose["services"])
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Every password is read from the environment.
    passwords = re.findall(r"://postgres:(.+?)@postgres:", text)
    assert passwords == ["${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"] * 2
    assert (INFRA / "postgres/init.sql").exists()


def test_the_readme_names_every_file() -> None:
    readme = (INFRA / "README.md").read_text()
    for path in sorted(INFRA.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert f"`{path.relative_to(INFRA)}`" in readme, path
