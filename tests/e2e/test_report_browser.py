"""The sweep report in a real browser: headless Chromium loads it with no console errors and
every figure decodes (naturalWidth > 0).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no port and no extra Python
package is needed. Skipped when no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from poisonclip.experiments.runner import LocalRunner, run_sweep
from poisonclip.experiments.spec import parse_spec
from poisonclip.report.sweep_report import build_report
from tests.sweep_fakes import FakeStages

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (Debian: apt-get install chromium)")]


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, profile: Path):
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def fds() -> None:  # runs in the child: its fd 3 reads our commands, fd 4 writes replies
            # move both ends above 4 first, so placing one cannot overwrite the other
            r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w))
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            # close_fds=False: Popen would otherwise close fds 3 and 4 after preexec_fn; our
            # os.pipe() ends are close-on-exec, so only the two dup2'd descriptors are inherited.
            preexec_fn=fds, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._next(timeout)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            m = self._next(timeout)
            self.events.append(m)
            if m.get("method") == method:
                return m

    def _next(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    spec = parse_spec({"name": "browser", "stages": "tests.sweep_fakes:FakeStages", "grid": [
        {"poison.n_poisons": [5, 20], "poison.placement": ["corner", "random"], "seed": [0, 1]},
        {"poison.patch_size": [8, 32], "seed": [0, 1]}]}, allow_custom_stages=True)
    run_sweep(spec, root / "s", LocalRunner(FakeStages()))
    return build_report(root / "s").html


def load_page(html: Path, profile: Path) -> tuple[dict, list[dict]]:
    """Open ``html`` in headless Chromium; (what the page holds once every image has been
    decoded, the console errors and exceptions it raised)."""
    dt = DevTools(profile)
    try:
        target = dt.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            dt.send(f"{domain}.enable", session=session)
        dt.send("Page.navigate", {"url": html.as_uri()}, session=session)
        dt.wait_event("Page.loadEventFired")
        res = dt.send("Runtime.evaluate", {"expression": (
            "Promise.all([...document.images].map(i => i.decode().then(() => true, () => false)))"
            ".then(ok => JSON.stringify({title: document.title, decoded: ok, imgs: [...document.images].map(i => "
            "({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})), "
            "tables: document.querySelectorAll('table').length}))"),
            "awaitPromise": True, "returnByValue": True}, session=session)
        page = json.loads(res["result"]["value"])
    finally:
        dt.close()
    problems = [e for e in dt.events
                if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    return page, problems


def test_report_loads_without_console_errors_and_every_figure_decodes(report, tmp_path):
    n_figures = len(list((report.parent / "figures").glob("*.png")))
    assert n_figures >= 5
    page, problems = load_page(report, tmp_path / "profile")
    assert problems == []
    assert page["title"].startswith("Sweep report: browser")
    assert len(page["imgs"]) == n_figures and page["decoded"] == [True] * n_figures
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in page["imgs"]), page["imgs"]
    assert page["tables"] >= 2
