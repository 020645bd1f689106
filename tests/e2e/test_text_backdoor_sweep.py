"""The text backdoor through a real sweep: synthetic corpus -> target-class images with
token captions through the writer -> open_clip training of the test model (300 pairs, 1 epoch)
-> the evaluator's text-to-image retrieval with and without the token -> table and report.
The numbers of a one-epoch model mean nothing; the test follows the attack through every stage.
"""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.data.lookup import find_sample
from tests.e2e.tiny_sweep import run_tiny_sweep

runner = CliRunner()


@pytest.mark.e2e
def test_the_text_backdoor_runs_through_a_sweep(tmp_path):
    out = run_tiny_sweep(tmp_path, "text-bd-ci", {"attack": "text-backdoor", "target_label": "circle",
                                                  "n_poisons": 10, "token": "zq", "position": "end"})

    (poison_json,) = (out / "cache" / "poison").glob("*/poison.json")
    info = json.loads(poison_json.read_text())
    assert info["attack"] == "text-backdoor" and info["n_poisons"] == 10
    assert info["text_backdoor"]["token"] == "zq" and info["text_backdoor"]["caption_source"] == "other"
    (train_tsv,) = (out / "cache" / "corpus").glob("*/train.tsv")
    classes = (train_tsv.parent / "classnames.txt").read_text().split()
    with open(poison_json.parent / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and all(r["caption"].endswith(" zq") for r in rows)
    assert {int(find_sample(train_tsv, r["source_key"]).meta["label"]) for r in rows} == {classes.index("circle")}

    metrics = [json.loads(p.read_text()) for p in out.glob("trials/*/*eval/metrics.json")]
    assert len(metrics) == 2                      # the poisoned model and the clean one of its seed
    for m in metrics:
        tb = m["text_backdoor"]
        assert tb["token"] == "zq" and tb["n_queries"] > 0 and tb["n_target_images"] > 0
        assert tb["n_queries"] + tb["n_target_images"] == m["retrieval"]["n_texts"]
        assert tb["example_query"].endswith(" zq")
        for key in ("with_token", "without_token"):
            assert [tb[key][f"R@{k}"]["n"] for k in (1, 5, 10)] == [tb["n_queries"]] * 3
            assert tb[key]["R@1"]["k"] <= tb[key]["R@5"]["k"] <= tb[key]["R@10"]["k"]
        assert m["retrieval"]["image_to_text"]["R@1"]["n"] == m["data"]["n_images"]

        geo = tb["geometry"]
        assert set(geo) == {"text", "image", "cross"}
        assert all(-1.0 <= v <= 1.0 for side in geo.values() for v in side.values())

    # which encoder moved: the poisoned model against the clean one of its seed
    from poisonclip.experiments.store import EVAL_DIRS

    (trial,) = (out / "trials").iterdir()
    res_json = tmp_path / "compare.json"
    r = runner.invoke(app, ["eval-compare", str(trial / EVAL_DIRS["poisoned"]), "--clean",
                            str(trial / EVAL_DIRS["clean"]), "--json", str(res_json)])
    assert r.exit_code == 0, r.output
    assert "which encoder moved (text_backdoor; paired by seed)" in r.output
    d = json.loads(res_json.read_text())["drift"]["text_backdoor"]
    by_dir = {who: json.loads((trial / EVAL_DIRS[who] / "metrics.json").read_text())["text_backdoor"]["geometry"]
              for who in ("poisoned", "clean")}
    row = d["cross"]["token_queries_to_target_images"]
    assert row["change"] == pytest.approx(by_dir["poisoned"]["cross"]["token_queries_to_target_images"]
                                          - by_dir["clean"]["cross"]["token_queries_to_target_images"])

    table = tmp_path / "table.csv"
    r = runner.invoke(app, ["sweep", "table", str(out), "--csv", str(table)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(table)
    for who in ("poisoned", "clean"):
        assert df[f"{who}.text_backdoor_t2i_target_with_token_r10"].between(0, 1).all()
        assert df[f"{who}.retrieval_t2i_r1_n"].gt(0).all()
        assert df[f"{who}.text_backdoor_geometry_text_token_to_plain_caption"].between(-1, 1).all()
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "text_backdoor_t2i_target_with_token_r10" in html and "retrieval_t2i_r1" in html
