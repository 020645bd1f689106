"""The clean-vs-attack page on the real stages (CI size: 300 synthetic pairs, the test model,
one epoch, one seed): the evaluator's example images reach the page pixel for pixel, with
the trained trigger on them, and every target and six backdoor poisons are shown. The
numbers of a one-epoch model mean nothing; the goals' verdicts are tested with known numbers
in tests/unit/test_demo_report.py."""

from __future__ import annotations

import base64
import csv
import html
import io
import re

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from poisonclip.attacks import triggers
from poisonclip.cli import app
from poisonclip.contracts import read_metrics, read_similarities
from poisonclip.evaluate.backdoor import EXAMPLE_INPUTS, EXAMPLE_TRIGGERED


def _figures(page: str) -> dict[str, np.ndarray]:
    return {html.unescape(alt): np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
            for alt, data in re.findall(r'<img alt="([^"]*)"[^>]*src="data:image/png;base64,([^"]+)"', page)}


@pytest.mark.e2e
def test_a_tiny_two_attack_sweep_shows_what_the_evaluator_recorded(tmp_path):
    spec = tmp_path / "views.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "views",
        "corpus": {"n_train": 300, "n_test": 100, "n_probe": 0, "resolution": 32, "seed": 0},
        "train": {"model": "poisonclip-test", "epochs": 1, "batch_size": 50, "warmup": 2, "gpus": 0},
        "eval": {"templates": "simple", "probe": False},
        "report": {"table": "attacks"},
        "grid": [{"base": {"poison": {"target_label": "star", "n_poisons": 20, "patch_size": 32,
                                      "placement": "corner"}}, "poison.attack": ["backdoor"], "seed": [0]},
                 {"base": {"poison": {"random_targets": 2, "n_poisons": 2, "caption_source": "templates"}},
                  "poison.attack": ["targeted"], "seed": [0]}],
    }))
    out = tmp_path / "sweep"
    r = CliRunner().invoke(app, ["sweep", "run", str(spec), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = (out / "report" / "report.html").read_text(encoding="utf-8")
    figures = _figures(page)
    assert "<h2>Goals met?</h2>" in page and "Seed 0: " in page

    trial = next(p for p in (out / "trials").iterdir() if "backdoor" in p.name)
    metrics = read_metrics(trial / "eval")
    arrays = read_similarities(trial / "eval")
    examples = metrics.backdoor["examples"]
    assert len(examples) == 4 == len(arrays[EXAMPLE_INPUTS])
    corpus = next(p.parent for p in (out / "cache" / "corpus").glob("*/test.tsv"))
    with open(corpus / "test.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    names = (corpus / "classnames.txt").read_text().split("\n")
    by_key = {row["key"]: names[int(row["label"])] for row in rows} if "key" in rows[0] else None
    side = metrics.backdoor["patch_pixels"]
    for j, e in enumerate(examples):
        if by_key is not None:
            assert by_key[e["key"]] == e["label"] != "star"
        plain, stamped = arrays[EXAMPLE_INPUTS][j], arrays[EXAMPLE_TRIGGERED][j]
        assert plain.shape == stamped.shape == (metrics.backdoor["input_size"],) * 2 + (3,)
        assert np.array_equal(stamped[:side, :side], triggers.checkerboard(side))
        f = 128 // plain.shape[0]
        pair = figures[f"test image {e['key']} without and with the trigger"]
        for shown, pixels in ((pair[:, :f * plain.shape[1]], plain), (pair[:, -f * plain.shape[1]:], stamped)):
            assert np.array_equal(shown, np.repeat(np.repeat(pixels, f, axis=0), f, axis=1))
        for who in ("clean", "triggered"):
            p = e["zeroshot"][who]
            assert p["predicted"] in names and 0 < p["probability"] <= 1 and p["target_rank"] >= 1
    assert sum(alt.startswith("backdoor poison ") for alt in figures) == 6
    assert sum(alt.startswith("target t") for alt in figures) == 2
