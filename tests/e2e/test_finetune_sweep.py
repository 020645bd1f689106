"""The fine-tuning threat model in a sweep: `train.finetune_epochs` pretrains a clean model on
the corpus, then fine-tunes it on the poisoned set (and, as the control, on the clean corpus);
both evaluated as usual. CI size (300 pairs, the test model, 1 epoch each)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from poisonclip.cli import app

runner = CliRunner()


@pytest.mark.e2e
def test_a_sweep_fine_tunes_a_pretrained_clean_model_on_the_poisons(tmp_path):
    spec = tmp_path / "ft.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "ft-ci",
        "corpus": {"n_train": 300, "n_test": 100, "n_probe": 0, "resolution": 32, "seed": 0},
        "poison": {"attack": "backdoor", "target_label": "circle", "n_poisons": 20, "patch_size": 32},
        "train": {"model": "poisonclip-test", "epochs": 1, "batch_size": 50, "warmup": 2, "gpus": 0,
                  "finetune_epochs": 1, "finetune_lr": 1e-4, "finetune_warmup": 1},
        "eval": {"templates": "simple", "probe": False},
        "grid": {"seed": [0]},
    }))
    out = tmp_path / "sweep"
    r = runner.invoke(app, ["sweep", "run", str(spec), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 trials run" in r.output and "0 failed" in r.output

    runs = {p.parent: json.loads(p.read_text()) for p in (out / "cache" / "model").glob("*/run.json")}
    assert len(runs) == 3                    # pretrained, fine-tuned on poisons, fine-tuned clean
    (pre,) = [d for d, info in runs.items() if "init" not in info]
    tuned = [info for info in runs.values() if "init" in info]
    assert len(tuned) == 2 and all(info["init"] == runs[pre]["checkpoint"] for info in tuned)
    assert runs[pre]["poison_json"] is None and runs[pre]["epochs"] == 1
    assert sorted(info["poison_json"] is not None for info in tuned) == [False, True]
    for folder, info in runs.items():
        if "init" in info:   # the fine-tuning settings, from the pretrained run folder
            cfg = json.loads((folder / "config.json").read_text())["config"]
            assert cfg["lr"] == 1e-4 and cfg["warmup"] == 1 and cfg["init"] == str(pre)

    table = tmp_path / "table.csv"
    r = runner.invoke(app, ["sweep", "table", str(out), "--csv", str(table)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(table)
    assert df["pretrain_model.wall_time_s"].gt(0).all()
    assert df["poisoned.asr_as_trained_zeroshot_n"].gt(0).all() and df["clean.top1_zeroshot_n"].gt(0).all()
