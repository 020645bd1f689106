"""WebDataset poisons are spread over as many shards as the clean data has; bunching warns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poisonclip.attacks.plan import shard_bunching


@pytest.mark.parametrize("n, k, clean, warns", [
    (1500, 4, 332, True),      # the old cluster presets: 375 poisons in one shard
    (1500, 332, 332, False),   # the default: one poison shard per clean shard
    (150, 150, 332, False),    # fewer poisons than clean shards: one each
    (20, 2, 4, False),         # 10 per shard against an even 5: exactly 2x, allowed
    (21, 2, 4, True),          # 11 per shard: over 2x
    (3, 1, 10, True),          # 3 in one shard where an even spread puts 1 per shard
    (2, 1, 10, False),
])
def test_shard_bunching_threshold(n, k, clean, warns):
    msg = shard_bunching(n, k, clean)
    assert (msg is not None) == warns
    if warns:
        assert f"poison_shards={k}" in msg and "leave poison_shards unset" in msg


def test_bunched_poison_shards_are_a_warning_in_poison_json_and_the_cli(tmp_path):
    from typer.testing import CliRunner

    from poisonclip.cli import app
    from poisonclip.data.corpus import write_corpus
    from poisonclip.data.synthetic import SynthConfig

    corpus = write_corpus(SynthConfig(n_train=80, n_test=0, n_probe=0), tmp_path / "c", shard_size=10)
    base = ["poison", "backdoor", str(corpus.shards), "--label", "star", "--n-poisons", "12"]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "bunched"), "--poison-shards", "1"])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "bunched" / "poison.json").read_text())
    assert len(info["poison_shards"]) == 1 and len(info["warnings"]) == 1
    assert "poison_shards=1" in info["warnings"][0] and "warning: poison_shards=1" in r.output
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "spread")])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "spread" / "poison.json").read_text())
    assert len(info["poison_shards"]) == 8 and "warnings" not in info and "warning" not in r.output


def test_cluster_presets_leave_the_poisons_spread():
    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    for path in root.rglob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        assert "poison_shards" not in (spec.get("poison") or {}), path
