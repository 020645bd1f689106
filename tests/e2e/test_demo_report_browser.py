"""The demo report in a real browser: headless Chromium loads it with no console errors and
every figure (inline PNG) decodes. Reuses the DevTools pipe client of test_report_browser.py.

The report comes from a real, tiny demo run (about 1.5 min on 2 cores), built only where
Chromium is installed: without it the module is skipped before the fixture runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.test_report_browser import CHROMIUM, DevTools

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (Debian: apt-get install chromium)")]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from poisonclip.data.synthetic import SynthConfig
    from poisonclip.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(out=tmp_path_factory.mktemp("demo-browser") / "d",
                           corpus=SynthConfig(n_train=200, n_test=60), epochs=1, backdoor_poisons=10)
    return run_demo(cfg, say=lambda _msg: None).report


def _problems(events: list[dict]) -> list[dict]:
    return [e for e in events
            if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


def test_demo_report_loads_without_console_errors_and_every_figure_decodes(report, tmp_path):
    html = report.read_text()
    n_figures = len(re.findall(r"<img\b", html))
    assert n_figures >= 3  # two similarity histograms and the same-label curve
    dt = DevTools(tmp_path / "profile")
    try:
        target = dt.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            dt.send(f"{domain}.enable", session=session)
        dt.send("Page.navigate", {"url": report.as_uri()}, session=session)
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
    assert _problems(dt.events) == []
    assert page["title"].startswith("poisonclip demo")
    assert len(page["imgs"]) == n_figures and page["decoded"] == [True] * n_figures
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in page["imgs"]), page["imgs"]
    assert page["tables"] >= 3  # the summary, target by target, what ran
