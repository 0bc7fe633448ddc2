"""Hosts on one machine for the multi-host tests: a network namespace per host (`ip
netns` + a veth pair on a bridge the test makes, as root), a TCP forwarder that puts a
service of 127.0.0.1 on the bridge, and the waits and SQL the tests share.

Where namespaces cannot be made (not root, no `ip`), every host is on 127.0.0.1 and the
tests keep them apart by folder and environment only.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import socket
import socketserver
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ONE_THREAD, QUIET

BIN = Path(sys.executable).parent


@dataclass
class Network:
    """A bridge with the services' address, and one namespace per host on it."""

    tag: str
    hosts: tuple[str, ...]
    prefix: str | None  # "10.x.y" with namespaces; None: every host on 127.0.0.1
    made: list[list[str]] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.1" if self.prefix else "127.0.0.1"

    def address(self, host: str) -> str:
        return f"{self.prefix}.{self.hosts.index(host) + 2}" if self.prefix else "127.0.0.1"

    def namespace(self, host: str) -> str:
        return f"dl{self.tag}{host}"

    def on(self, host: str, argv: list[str]) -> list[str]:
        """`argv` as run on `host`."""
        return ["ip", "netns", "exec", self.namespace(host), *argv] if self.prefix else argv


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def make_network(hosts: tuple[str, ...]) -> Network:
    """A bridge and a namespace per host, or (not root, no `ip`) a network of one."""
    tag = uuid.uuid4().hex[:4]
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return Network(tag, hosts, None)
    taken = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    prefix = next(
        candidate
        for candidate in (
            f"10.{random.randint(200, 250)}.{random.randint(0, 255)}" for _ in range(50)
        )
        if f"{candidate}." not in taken
    )
    network = Network(tag, hosts, prefix)
    bridge = f"dlb{tag}"
    try:
        _ip("link", "add", bridge, "type", "bridge")
        network.made.append(["link", "del", bridge])
        _ip("addr", "add", f"{network.gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for position, host in enumerate(hosts):
            namespace, outer, inner = network.namespace(host), f"dlv{tag}{position}", "eth0"
            _ip("netns", "add", namespace)
            network.made.append(["netns", "del", namespace])
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", namespace)
            _ip("link", "set", outer, "master", bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{network.address(host)}/24", "dev", inner)
            _ip("-n", namespace, "link", "set", inner, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
    except subprocess.CalledProcessError:  # a container without the right to make them
        remove_network(network)
        return Network(tag, hosts, None)
    return network


def remove_network(network: Network) -> None:
    for command in reversed(network.made):
        subprocess.run(["ip", *command], capture_output=True)


class Forwarder(socketserver.ThreadingTCPServer):
    """PostgreSQL's 127.0.0.1:5432 on the bridge's address, byte for byte."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        super().__init__(listen, _Pipe)


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, Forwarder)
        with socket.create_connection(self.server.target) as upstream:
            ends = {self.request: upstream, upstream: self.request}
            while True:
                ready, _, _ = select.select(list(ends), [], [], 60)
                if not ready:
                    continue
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        return
                    ends[end].sendall(data)


# --- processes --------------------------------------------------------------------------


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def host_environment(home: Path) -> dict[str, str]:
    """A host's own environment: this interpreter's tools, its folders under `home`
    (made here), telemetry off, one thread per library; no variable of the test's own
    process and no path outside `home`. Callers add where the services are."""
    for folder in ("home", "tmp", "prefect"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(home / "home"),
        "TMPDIR": str(home / "tmp"),
        "XDG_CACHE_HOME": str(home / "home/.cache"),
        "XDG_CONFIG_HOME": str(home / "home/.config"),
        "MPLCONFIGDIR": str(home / "home/.config/matplotlib"),
        "PREFECT_HOME": str(home / "prefect"),
        **QUIET,
        **ONE_THREAD,
    }


def wait_for(check: Any, what: str, logs: list[Path] = (), timeout: float = 900) -> Any:
    """Wait for `check` to return something true; `timeout` is a safety net far above the
    expected time (a training run takes about a minute on a quiet machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    tails = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def sql(url: str, *statements: str) -> list[Any]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            results = [connection.execute(sqlalchemy.text(s)) for s in statements]
            return [result.fetchall() if result.returns_rows else [] for result in results]
    finally:
        engine.dispose()
