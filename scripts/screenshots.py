"""Pictures of the UIs for README: `make screenshots`, after `driftline up` and
`driftline simulate` in this project.

It drives Debian's Chromium headless (`apt-get install chromium`) over its DevTools
protocol, so that it shows each single-page app once its data has arrived and can click
a tab: the Artifacts tab of a monitoring flow run in the Prefect UI (the newest that
decided drift, else the newest) and that run's summary artifact, then the dashboard of
the Evidently project `driftline`, served for the occasion by `evidently ui` on a free
port and stopped afterwards. Both UIs ship their assets, so nothing is fetched from the
network. The pictures are scaled to 1,000 pixels wide, a blank bottom cut, and reduced
to 256 colours, so each stays well under 300 KB:

    docs/prefect-artifacts.png
    docs/prefect-summary.png
    docs/evidently-dashboard.png

Chromium and the UI server run with a temporary HOME: nothing is written to ~.
A stack that is not running, a missing Chromium or no check yet is one line on stderr
and exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import DriftlineError

MONITORING_FLOW = "monitoring"
DRIFT_STATE = "Drift detected"
WIDTH = 1000  # pixels of the pictures in docs/


class ScreenshotError(DriftlineError):
    """A picture cannot be taken: the stack, Chromium or the checks are missing."""


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def prefect_ui(root: Path) -> str:
    """The running stack's Prefect UI."""
    from pipeline.stack import Stack

    stack = Stack.load(root)
    if stack is None or not answers(f"{stack.prefect_api}/health"):
        raise ScreenshotError(
            "the local stack is not running here: start it with `driftline up`, then run "
            "`driftline simulate`"
        )
    os.environ["PREFECT_API_URL"] = stack.prefect_api
    return stack.prefect_api.removesuffix("/api")


@dataclass(frozen=True)
class ShownRun:
    """The monitoring flow run in the pictures, and its summary artifact."""

    run: str
    summary: str


def monitoring_run() -> ShownRun:
    """The monitoring flow run to show: the newest that decided drift and published its
    summary, else the newest with a summary."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.artifacts import MONITORING_SUMMARY

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[MONITORING_FLOW])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=50,
        )
        shown = [run for run in runs if run.state is not None and run.state.is_completed()]
        shown.sort(key=lambda run: run.state is None or run.state.name != DRIFT_STATE)
        for run in shown:
            summaries = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                    key=ArtifactFilterKey(any_=[MONITORING_SUMMARY]),
                ),
                limit=1,
            )
            if summaries:
                return ShownRun(str(run.id), str(summaries[0].id))
    raise ScreenshotError("no monitoring flow run with artifacts yet: run `driftline simulate`")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quiet_environment(home: Path) -> dict[str, str]:
    """A temporary HOME, no telemetry."""
    return {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "DO_NOT_TRACK": "true",
    }


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise ScreenshotError(
            "chromium is missing: install Debian's package (`apt-get install -y chromium`)"
        )
    return found


class Page:
    """One headless Chromium tab, driven over the DevTools protocol (a websocket):
    a single-page app is shown once its own data has arrived, and a tab that a URL
    cannot select (Prefect's Artifacts tab, hidden until the flow run has loaded) is
    clicked."""

    def __init__(self, browser: str, size: tuple[int, int], home: Path) -> None:
        port = free_port()
        self.process = subprocess.Popen(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                f"--user-data-dir={home / 'chromium'}",
                f"--remote-debugging-port={port}",
                f"--window-size={size[0]},{size[1]}",
                "about:blank",
            ],
            env=quiet_environment(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.next_id = 0
        try:
            target = self._page_target(f"http://127.0.0.1:{port}/json/list")
            from websockets.sync.client import connect

            self.socket = connect(target, max_size=None, open_timeout=30)
        except BaseException:
            self.close()
            raise

    def _page_target(self, listing: str) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(listing, timeout=3) as response:
                    targets = json.loads(response.read())
                return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            except (urllib.error.URLError, OSError, StopIteration, ValueError):
                time.sleep(0.5)
        raise ScreenshotError("chromium did not start headless (is it Debian's package?)")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise ScreenshotError(f"chromium: {method}: {message['error']}")
                return dict(message.get("result") or {})

    def evaluate(self, script: str) -> Any:
        found = self.call("Runtime.evaluate", expression=script, returnByValue=True)
        return (found.get("result") or {}).get("value")

    def wait_for(self, script: str, what: str, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while not self.evaluate(script):
            if time.monotonic() > deadline:
                raise ScreenshotError(f"the page never showed {what} within {seconds:.0f} s")
            time.sleep(0.5)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def picture(self, path: Path, settle: float = 3) -> None:
        """The viewport after `settle` seconds (charts finish their transitions), scaled
        to WIDTH, the page's blank bottom cut, in 256 colours."""
        from PIL import Image, ImageChops

        time.sleep(settle)
        shot = self.call("Page.captureScreenshot", format="png")
        with Image.open(io.BytesIO(base64.b64decode(shot["data"]))) as raw:
            image = raw.convert("RGB")
        background = Image.new(
            "RGB", image.size, image.getpixel((image.width - 1, image.height - 1))
        )
        box = ImageChops.difference(image, background).getbbox()
        if box is not None:  # keep a margin under the last thing drawn
            image = image.crop((0, 0, image.width, min(image.height, box[3] + 24)))
        height = round(image.height * WIDTH / image.width)
        scaled = image.resize((WIDTH, height), Image.Resampling.LANCZOS)
        scaled.quantize(colors=256).save(path, optimize=True)

    def close(self) -> None:
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def text_shown(text: str) -> str:
    return f"document.body !== null && document.body.innerText.includes({json.dumps(text)})"


def click_tab(label: str) -> str:
    """A script that clicks the tab named `label`; true once it has."""
    return (
        "(() => { const tab = [...document.querySelectorAll('[role=tab], button, a, li')]"
        f".find(e => e.textContent.trim() === {json.dumps(label)});"
        " if (!tab) return false; tab.click(); return true; })()"
    )


def prefect_artifacts(browser: str, url: str, picture: Path, home: Path) -> None:
    page = Page(browser, (1400, 1150), home)
    try:
        page.open(url)
        page.wait_for(click_tab("Artifacts"), "the flow run's Artifacts tab")
        page.wait_for(text_shown("monitoring-summary"), "the artifact monitoring-summary")
        page.picture(picture)
    finally:
        page.close()


def prefect_summary(browser: str, url: str, picture: Path, home: Path) -> None:
    page = Page(browser, (1400, 1400), home)
    try:
        page.open(url)
        page.wait_for(text_shown("fingerprint"), "the summary of the check")
        page.picture(picture)
    finally:
        page.close()


def evidently_picture(browser: str, url: str, picture: Path, home: Path) -> None:
    page = Page(browser, (1400, 2900), home)
    try:
        page.open(url)
        page.wait_for(
            # The last panel's title; its plot is empty when fairness is not audited.
            text_shown("Fairness gap over time")
            + " && document.querySelectorAll('svg').length >= 6",
            "the dashboard's panels",
        )
        page.picture(picture)
    finally:
        page.close()


def evidently_dashboard(workspace: Path, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`evidently ui` over the workspace on a free port, and the dashboard's URL."""
    from pipeline.evidently_dashboard import project_id

    project = project_id(workspace)
    if project is None:
        raise ScreenshotError(
            f"the Evidently workspace {workspace} has no project `driftline` yet: run "
            "`driftline simulate` first"
        )
    port = free_port()
    evidently = Path(sys.executable).parent / "evidently"
    server = subprocess.Popen(
        [str(evidently), "ui", "--workspace", str(workspace), "--port", str(port)],
        env=quiet_environment(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not answers(base):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise ScreenshotError(f"`evidently ui --workspace {workspace}` did not start")
        time.sleep(0.5)
    return server, f"{base}/projects/{project}"


def screenshots(root: Path, params_file: Path, out: Path) -> list[Path]:
    from pipeline.config import load_params

    browser = chromium()
    params = load_params(params_file)
    prefect = prefect_ui(root)
    shown = monitoring_run()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="driftline-screenshots-") as folder:
        home = Path(folder)
        picture = out / "prefect-artifacts.png"
        url = f"{prefect}/runs/flow-run/{shown.run}"
        prefect_artifacts(browser, url, picture, home)
        written.append(picture)
        picture = out / "prefect-summary.png"
        prefect_summary(browser, f"{prefect}/artifacts/artifact/{shown.summary}", picture, home)
        written.append(picture)
        server, url = evidently_dashboard(root / params.monitor.evidently_workspace, home)
        try:
            picture = out / "evidently-dashboard.png"
            evidently_picture(browser, url, picture, home)
            written.append(picture)
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    try:
        written = screenshots(Path.cwd(), args.params, args.out)
    except DriftlineError as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    for picture in written:
        print(f"{picture}: {picture.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
