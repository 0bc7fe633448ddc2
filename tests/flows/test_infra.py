"""infra/: the files parse, agree with each other, and hold no secret; the GPU pool's job
templates ask for a GPU, and Prefect takes them.

Nothing here builds an image, needs Docker, Kubernetes, a GPU or the network: compose.yaml
and the manifests are read with PyYAML and checked against the image, .env.example,
.dockerignore and each other.
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
K8S = INFRA / "k8s"

# The image infra/docker/Dockerfile builds, and the only other images allowed: official
# ones, pinned.
BUILT_IMAGE = "driftline:gpu"
OFFICIAL_IMAGES = {"postgres:16", "rclone/rclone:1.75.2"}
CLIENTS = ["deploy", "worker-cpu", "worker-gpu", "api"]  # the services that run Driftline's code
SERVICES = {"postgres", "s3", "prefect-server", "mlflow", *CLIENTS}
# What the workers, the API and `deploy` read: the contract the Python code implements.
CLIENT_ENVIRONMENT = {
    "PREFECT_API_URL",
    "MLFLOW_TRACKING_URI",
    "DRIFTLINE_PREDICTION_LOG",
    "DRIFTLINE_OPTUNA_STORAGE",
    "DRIFTLINE_DVC_REMOTE",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "DRIFTLINE_GIT_URL",
    "DRIFTLINE_GIT_REF",
    "DRIFTLINE_DATA_BRANCH",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
}
PROJECT_COPY = "/opt/driftline"  # where the image holds the project (params.yaml)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN")
# `${VAR}`, `${VAR:?message}` or `${VAR:-default}`; `$$` is compose's escaped `$`.
VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?:(:[?-])[^}]*)?\}")
# The password of a URL's user: `scheme://user:PASSWORD@host`.
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")


def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML tree (compose interpolates values, not keys)."""
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in strings(value)]
    return [node] if isinstance(node, str) else []


def k8s_documents() -> list[dict[str, Any]]:
    """Every document of every manifest under infra/k8s/, the examples included."""
    return [
        document
        for path in sorted(K8S.rglob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document is not None
    ]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    (found,) = [
        document
        for document in k8s_documents()
        if document["kind"] == kind and document["metadata"]["name"] == name
    ]
    return found


def pod_templates() -> dict[str, dict[str, Any]]:
    """The pod template of each Deployment and Job, by the object's name."""
    return {
        document["metadata"]["name"]: document["spec"]["template"]
        for document in k8s_documents()
        if document["kind"] in {"Deployment", "Job"}
    }


def containers() -> list[dict[str, Any]]:
    return [c for pod in pod_templates().values() for c in pod["spec"]["containers"]]


def documented_variables() -> set[str]:
    """The names .env.example describes, set or commented out (`# NAME=example`)."""
    text = (REPO / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for .dockerignore, enough for these patterns: the last pattern that
    matches the path or one of its folders decides, `!` re-includes."""
    folders = path.split("/")
    candidates = ["/".join(folders[: i + 1]) for i in range(len(folders))]
    ignored = False
    for pattern in patterns:
        include = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = "".join(
            {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
            for part in re.split(r"(\*\*/|\*\*|\*|\?)", glob)
        )
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not include
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


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


def test_compose_reserves_a_gpu_for_the_gpu_worker_only() -> None:
    services = compose()["services"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert [name for name, service in services.items() if "deploy" in service] == ["worker-gpu"]


def test_the_readme_names_every_file() -> None:
    readme = (INFRA / "README.md").read_text()
    for path in sorted(INFRA.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert f"`{path.relative_to(INFRA)}`" in readme, path


def test_compose_runs_the_whole_stack_from_one_image() -> None:
    services = compose()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        if "build" in service:
            assert service["image"] == BUILT_IMAGE, name
            assert service["build"] == {"context": "..", "dockerfile": "infra/docker/Dockerfile"}
        else:
            assert service["image"] in OFFICIAL_IMAGES, name
    assert {name for name, service in services.items() if "build" not in service} == {
        "postgres",
        "s3",
    }


def test_every_image_is_the_built_one_or_a_pinned_official_one() -> None:
    images = [service["image"] for service in compose()["services"].values()]
    images += [container["image"] for container in containers()]
    assert set(images) <= {BUILT_IMAGE, *OFFICIAL_IMAGES}
    assert not [image for image in images if ":" not in image or image.endswith(":latest")]


def test_the_clients_get_the_whole_contract_and_run_what_they_should() -> None:
    services = compose()["services"]
    for name in CLIENTS:
        assert set(services[name]["environment"]) == CLIENT_ENVIRONMENT, name
    assert services["api"]["command"] == "driftline serve --host 0.0.0.0 --port 8000"
    assert services["deploy"]["command"] == "python -m flows.deployments"
    assert services["deploy"]["restart"] == "no"  # a one-shot
    assert services["api"]["working_dir"] == services["deploy"]["working_dir"] == PROJECT_COPY
    for pool in ("cpu", "gpu"):
        command = services[f"worker-{pool}"]["command"]
        assert command == f"prefect worker start --pool {pool} --type process"
        assert "volumes" not in services[f"worker-{pool}"]  # runs clone the git remote
    assert "/health" in " ".join(services["api"]["healthcheck"]["test"])


def test_one_bucket_holds_the_dvc_remote_and_mlflow_artifacts() -> None:
    services = compose()["services"]
    environment = services["worker-gpu"]["environment"]
    assert "mkdir -p /data/driftline " in services["s3"]["command"][0]  # the bucket
    assert environment["DRIFTLINE_DVC_REMOTE"] == "s3://driftline/dvc"
    assert "--artifacts-destination s3://driftline/mlflow" in services["mlflow"]["command"]
    assert (
        environment["AWS_ENDPOINT_URL"]
        == services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"]
    )


def test_every_compose_variable_is_documented_and_none_is_silently_empty() -> None:
    variables = [m for text in strings(compose()) for m in VARIABLE.finditer(text)]
    assert {m[1] for m in variables} <= documented_variables()
    # A bare ${VAR} would start the stack with an empty value: each one either stops
    # compose with a message (`:?`) or has a default (`:-`).
    assert not [m[0] for m in variables if m[2] is None]
    assert not [m[0] for m in variables if SECRET_NAME.search(m[1]) and m[2] != ":?"]


def test_depends_on_names_services_that_can_satisfy_it() -> None:
    services = compose()["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):
            depends_on = {other: {"condition": "service_started"} for other in depends_on}
        for other, condition in depends_on.items():
            assert other in services, f"{name} depends on {other}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[other], f"{name} waits on {other}'s health"


def test_compose_publishes_ports_on_this_machine_only_and_mounts_what_exists() -> None:
    services = compose()["services"]
    ports = [port for service in services.values() for port in service.get("ports", [])]
    assert ports and all(port.startswith("127.0.0.1:") for port in ports)
    mounts = [
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if volume.startswith(".")
    ]
    assert mounts == ["./postgres/init.sql", "./postgres/init.sh"]
    assert all((INFRA / mount).is_file() for mount in mounts)


def test_no_password_or_key_is_written_anywhere() -> None:
    # compose: every secret and every URL's password is a variable.
    services = compose()["services"]
    for text in strings(services):
        for password in URL_PASSWORD.findall(text):
            assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", password), text
    for service in services.values():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key) or key.endswith("_KEY_ID"):
                assert VARIABLE.fullmatch(value), f"{key}: {value}"
    # Kubernetes: no literal env values; the example Secret holds placeholders only, and
    # the example ConfigMap nothing secret.
    assert not [env for c in containers() for env in c.get("env", []) if "value" in env]
    secret = k8s_object("Secret", "driftline-secrets")["stringData"]
    assert all(re.search(r"<[\w-]+>", value) for value in secret.values()), secret
    config = k8s_object("ConfigMap", "driftline-config")["data"]
    assert not [key for key in config if SECRET_NAME.search(key)]
    assert not [value for value in config.values() if URL_PASSWORD.search(value)]
    # .env.example: every value it sets is empty; an example URL has a placeholder.
    text = (REPO / ".env.example").read_text()
    assert re.findall(r"^[A-Z][A-Z0-9_]*=(.+)$", text, re.MULTILINE) == []
    for password in URL_PASSWORD.findall(text):
        assert re.fullmatch(r"<\w+>|\$\{\w+\}", password), password
    # The databases' init: the role's password is a psql variable, never SQL text.
    init = (INFRA / "postgres/init.sql").read_text() + (INFRA / "postgres/init.sh").read_text()
    assert re.findall(r"PASSWORD\s+(\S+)", init) == [":'password';"]


def test_kubernetes_manifests_are_named_objects() -> None:
    found = {(d["kind"], d["metadata"]["name"]) for d in k8s_documents()}
    assert all(d["apiVersion"] for d in k8s_documents())
    assert found == {
        ("Deployment", "driftline-worker-cpu"),
        ("Deployment", "driftline-worker-gpu"),
        ("Deployment", "driftline-api"),
        ("Service", "driftline-api"),
        ("Job", "driftline-deploy"),
        ("ConfigMap", "driftline-config"),
        ("Secret", "driftline-secrets"),
    }
    # Only the examples hold the ConfigMap and the Secret, where `kubectl apply -f
    # infra/k8s/` does not reach, so that it never overwrites the real ones.
    for path in K8S.glob("*.yaml"):
        kinds = {d["kind"] for d in yaml.safe_load_all(path.read_text())}
        assert not kinds & {"ConfigMap", "Secret"}, path


def test_kubernetes_selectors_select_their_own_pods() -> None:
    pods = pod_templates()
    for document in k8s_documents():
        if document["kind"] == "Deployment":
            labels = document["spec"]["template"]["metadata"]["labels"]
            assert document["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = k8s_object("Service", "driftline-api")["spec"]
    selected = [
        name
        for name, pod in pods.items()
        if service["selector"].items() <= pod["metadata"]["labels"].items()
    ]
    assert selected == ["driftline-api"]
    ports = pods["driftline-api"]["spec"]["containers"][0]["ports"]
    (target,) = [p["targetPort"] for p in service["ports"]]
    assert target in [p["name"] for p in ports] + [p["containerPort"] for p in ports]


def test_kubernetes_pods_read_the_contract_from_the_configmap_and_secret() -> None:
    config = k8s_object("ConfigMap", "driftline-config")["data"]
    secret = k8s_object("Secret", "driftline-secrets")["stringData"]
    assert set(config) | set(secret) == CLIENT_ENVIRONMENT
    assert not set(config) & set(secret)
    assert set(config) | set(secret) <= documented_variables()
    for container in containers():
        assert container["envFrom"] == [
            {"configMapRef": {"name": "driftline-config"}},
            {"secretRef": {"name": "driftline-secrets"}},
        ]
        for env in container.get("env", []):  # a single key, should one be added
            source = env["valueFrom"]
            if "configMapKeyRef" in source:
                assert source["configMapKeyRef"]["key"] in config
            else:
                assert source["secretKeyRef"]["key"] in secret


def test_kubernetes_pods_run_what_compose_runs() -> None:
    services = compose()["services"]
    pods = pod_templates()
    for pod, service in [
        ("driftline-worker-cpu", "worker-cpu"),
        ("driftline-worker-gpu", "worker-gpu"),
        ("driftline-api", "api"),
        ("driftline-deploy", "deploy"),
    ]:
        (container,) = pods[pod]["spec"]["containers"]
        command = " ".join(container["command"]).removesuffix(" --with-healthcheck")
        assert command == services[service]["command"], pod
        if "working_dir" in services[service]:
            assert container["workingDir"] == services[service]["working_dir"], pod


def test_kubernetes_gpu_worker_is_scheduled_like_the_gpu_pool_jobs() -> None:
    template = json.loads(TEMPLATES["kubernetes"].read_text())
    job_pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pods = pod_templates()
    gpu_pod = pods["driftline-worker-gpu"]["spec"]
    resources = gpu_pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert gpu_pod["tolerations"] == job_pod["tolerations"]
    others = [pod for name, pod in pods.items() if name != "driftline-worker-gpu"]
    assert "nvidia.com/gpu" not in json.dumps(others)


def test_kubernetes_api_is_probed_on_health() -> None:
    (container,) = pod_templates()["driftline-api"]["spec"]["containers"]
    ports = {p["name"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
        assert container[probe]["httpGet"]["port"] in ports, probe


def test_the_image_copies_the_project_from_paths_that_reach_the_build() -> None:
    dockerfile = (INFRA / "docker/Dockerfile").read_text()
    patterns = dockerignore_patterns()
    copies = [line.split()[1:] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    sources = [s for copy in copies for s in copy[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source == "." or not dockerignored(source, patterns), source
    # The API and `deploy` run in the project copy: it holds what they read.
    assert re.search(rf"^WORKDIR {PROJECT_COPY}$", dockerfile, re.MULTILINE)
    assert [".", "."] in copies
    for needed in ("params.yaml", "dvc.yaml", "README.md", "pipeline/cli.py", "flows/training.py"):
        assert not dockerignored(needed, patterns), needed


def test_the_build_context_leaves_out_data_stores_and_secrets() -> None:
    patterns = dockerignore_patterns()
    for path in (
        "data/raw/data.parquet",
        ".venv/bin/python",
        ".git/HEAD",
        "mlflow.db",
        "mlartifacts/1/model.onnx",
        ".dvc/cache/files/md5/ab/cdef",
        ".dvc/cache/runs/ab/cdef",
        ".env",
        "infra/.env",
    ):
        assert dockerignored(path, patterns), path


@pytest.mark.parametrize(
    ("pattern", "path", "ignored"),
    [
        ("data", "data/raw/x.parquet", True),
        ("data", "pipeline/data.py", False),
        ("*.db", "mlflow.db", True),
        ("*.db", "pipeline/x.db", False),
        ("**/.env", ".env", True),
        ("**/.env", "infra/.env", True),
        (".dvc/cache", ".dvc/config", False),
    ],
)
def test_dockerignored_follows_dockers_rule(pattern: str, path: str, ignored: bool) -> None:
    assert dockerignored(path, [pattern]) is ignored
    assert dockerignored(path, [pattern, f"!{path}"]) is False
