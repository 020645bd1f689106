"""The demo report in a real browser: headless Chromium loads it with no console errors and
every figure (inline PNG) decodes. The report is the quick demo's (the session's shared run);
without Chromium the module is skipped.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.test_report_browser import CHROMIUM, load_page

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (Debian: apt-get install chromium)")]


def test_demo_report_loads_without_console_errors_and_every_figure_decodes(quick_demo, tmp_path):
    out, r = quick_demo
    assert r.exit_code == 0, r.output
    report = out / "report.html"
    n_figures = len(re.findall(r"<img\b", report.read_text()))
    assert n_figures >= 3  # two similarity histograms and the same-label curve
    page, problems = load_page(report, tmp_path / "profile")
    assert problems == []
    assert page["title"].startswith("poisonclip demo")
    assert len(page["imgs"]) == n_figures and page["decoded"] == [True] * n_figures
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in page["imgs"]), page["imgs"]
    assert page["tables"] >= 3  # the summary, target by target, what ran
