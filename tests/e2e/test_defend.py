"""`poisonclip defend` end to end on the CI-sized setting: a backdoored model trained on a
small poisoned corpus, then each defense applied to it and measured before and after.

The numbers of a one-epoch model mean nothing; the tests check what each defense must do
whatever they are: what filtering removes and keeps, that the defended model trains on what
was kept, that the fine-tuned checkpoint is a new model the evaluator reads, and that both
evaluations measure the same attack."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from poisonclip import contracts as C
from poisonclip.attacks.api import BackdoorConfig, poison
from poisonclip.attacks.manifest import read_manifest
from poisonclip.cli import app
from poisonclip.data.corpus import write_corpus
from poisonclip.data.synthetic import SynthConfig
from poisonclip.defend.cleanclip import CleanClipConfig, defend_cleanclip
from poisonclip.defend.filter import FilterConfig, defend_filter
from poisonclip.defend.measure import MeasureConfig
from poisonclip.defend.roclip import RoClipConfig, defend_roclip
from poisonclip.train.run import TrainConfig, train
from tests.cli_errors import one_line_error

pytestmark = pytest.mark.e2e

TRAIN = {"model": "poisonclip-test", "epochs": 1, "batch_size": 50, "warmup": 2, "gpus": 0, "threads": 1}
MEASURE = MeasureConfig(templates="simple")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("defend-e2e")
    corpus = root / "corpus"
    write_corpus(SynthConfig(n_train=300, n_test=100, n_probe=0, resolution=32, seed=0), corpus, formats=("csv",))
    bad = Path(poison(BackdoorConfig(data=str(corpus / C.TRAIN_TABLE), out=str(root / "poisoned"),
                                     target_label="star", n_poisons=15, patch_size=64, resolution=32,
                                     classnames=str(corpus / C.CLASSNAMES_FILE))).out)
    train(TrainConfig(data=str(bad), out=str(root / "before"), seed=0, **TRAIN))
    return root, corpus, bad


def _keys(table: Path) -> set[str]:
    with open(table, newline="", encoding="utf-8") as f:
        return {row["key"] for row in csv.DictReader(f, delimiter="\t")}


def test_filter_then_train_drops_the_flagged_poisons_and_measures_both_models(world):
    root, corpus, bad = world
    res = defend_filter(FilterConfig(data=bad, out=root / "filter", method="shared-patch", drop_fraction=0.05,
                                     train=TRAIN, before=root / "before", measure=MEASURE))
    info = C.read_defense_info(res.out)
    assert info == res.info and info.defense == "filter" and info.stage == "done"
    r = info.removed
    assert r["n_poisons"] == 15 and r["poisons_removed"] == 15          # shared-patch finds every backdoor poison
    assert r["n_removed"] == r["poisons_removed"] + r["clean_removed"] and r["n_kept"] == 315 - r["n_removed"]
    # the kept data: a poisoned folder without the flagged rows, its manifest the kept poisons' rows
    data = res.out / C.DEFENSE_DATA_DIR
    kept = _keys(data / C.TRAIN_TABLE)
    poisons = {row.key for row in read_manifest(bad)}
    assert len(kept) == r["n_kept"] and not kept & poisons
    assert kept == _keys(bad / C.TRAIN_TABLE) - {k for k, f in zip(
        C.read_detection_scores(res.out / C.AUDIT_DETECTION_DIR).keys, res.flagged) if f}
    pi = C.read_poison_info(data)
    assert pi.n_poisons == 0 and pi.num_samples == r["n_kept"] and pi.backdoor == C.read_poison_info(bad).backdoor
    assert read_manifest(data) == []
    # the defended model trained on exactly that table, through open_clip's trainer
    run = C.read_run_info(res.out / C.DEFENSE_RUN_DIR)
    assert run.train_data == str(data / C.TRAIN_TABLE) and run.num_samples == r["n_kept"]
    # both models measured against the same attack on the same eval set
    for side in (info.before, info.after):
        assert 0 <= side["asr_as_trained_zeroshot"] <= 1 and 0 <= side["top1_zeroshot"] <= 1
        assert math.isfinite(side["z_as_trained"])
    m_before = C.read_metrics(res.out / C.DEFENSE_BEFORE_DIR)
    m_after = C.read_metrics(res.out / C.DEFENSE_EVAL_DIR)
    assert m_before.data == m_after.data and m_before.poison == m_after.poison
    assert m_before.model.run == str((root / "before").resolve())
    assert info.cost["train_s"] > 0 and info.cost["detect_s"] >= 0


def test_cleanclip_fine_tunes_the_poisoned_model_into_a_checkpoint_the_evaluator_reads(world):
    root, corpus, bad = world
    out = root / "cleanclip"
    info = defend_cleanclip(CleanClipConfig(run=root / "before", data=corpus, out=out, subset=100, epochs=2,
                                            batch_size=50, warmup=1, threads=1, measure=MEASURE))
    assert C.read_defense_info(out) == info and info.stage == "done" and info.defense == "cleanclip"
    assert info.poison == str(bad)          # the attack the poisoned run trained on, found from its run.json
    assert "poisons_in_source" not in info.cost and info.cost["clean_pairs"] == 100
    run = C.read_run_info(out / C.DEFENSE_RUN_DIR)
    assert run.epochs == 2 and run.steps == 4 and run.num_samples == 100 and len(run.loss_curve) == 2
    assert all(math.isfinite(x) for x in run.loss_curve)
    assert all({"loss_clip", "loss_unimodal"} <= set(e) for e in run.epoch_stats)
    old = torch.load(C.read_run_info(root / "before").checkpoint_path(), weights_only=True, map_location="cpu")
    new = torch.load(run.checkpoint_path(), weights_only=True, map_location="cpu")
    assert set(new["state_dict"]) == set(old["state_dict"])
    assert any(not torch.equal(new["state_dict"][k], old["state_dict"][k]) for k in new["state_dict"])
    m_before = C.read_metrics(out / C.DEFENSE_BEFORE_DIR)
    m_after = C.read_metrics(out / C.DEFENSE_EVAL_DIR)
    assert m_after.model.checkpoint_sha256 != m_before.model.checkpoint_sha256
    assert m_before.poison == m_after.poison and info.after["asr_as_trained_zeroshot"] is not None
    # same settings, same model: every random draw comes from the seed
    again = defend_cleanclip(CleanClipConfig(run=root / "before", data=corpus, out=root / "cleanclip2", subset=100,
                                             epochs=2, batch_size=50, warmup=1, threads=1))
    assert again.stage == "done" and again.after is None
    assert C.read_run_info(root / "cleanclip2" / C.DEFENSE_RUN_DIR).loss_curve == run.loss_curve
    # "clean" data that is not: the record says how many poisons its source holds
    dirty = defend_cleanclip(CleanClipConfig(run=root / "before", data=bad, out=root / "cleanclip3", subset=50,
                                             epochs=1, batch_size=50, threads=1))
    assert dirty.cost["poisons_in_source"] == 15


def test_roclip_trains_with_matching_epochs_and_is_measured_against_the_same_attack(world):
    root, corpus, bad = world
    kw = dict(data=bad, model="poisonclip-test", epochs=2, batch_size=50, warmup=2, pool_size=100, nn_every=2,
              threads=1)
    info = defend_roclip(RoClipConfig(out=root / "roclip", before=root / "before", measure=MEASURE, **kw))
    assert C.read_defense_info(root / "roclip") == info and info.defense == "roclip" and info.stage == "done"
    assert info.poison == str(bad) and info.cost["matching_epochs"] == 1
    run = C.read_run_info(root / "roclip" / C.DEFENSE_RUN_DIR)
    assert run.num_samples == 315 and run.train_data == str(bad / C.TRAIN_TABLE) and run.poison_json
    assert [e["matched"] for e in run.epoch_stats] == [0.0, 1.0]     # epoch 2 pairs images with pool captions
    m_before = C.read_metrics(root / "roclip" / C.DEFENSE_BEFORE_DIR)
    m_after = C.read_metrics(root / "roclip" / C.DEFENSE_EVAL_DIR)
    assert m_after.model.name == "poisonclip-test" and m_before.poison == m_after.poison
    assert 0 <= info.after["asr_as_trained_zeroshot"] <= 1 and 0 <= info.before["asr_as_trained_zeroshot"] <= 1
    # the initial weights, the order and the augmentations all come from the seed
    again = defend_roclip(RoClipConfig(out=root / "roclip2", **kw))
    assert C.read_run_info(root / "roclip2" / C.DEFENSE_RUN_DIR).loss_curve == run.loss_curve and again.after is None


def test_cli_runs_a_defense_and_refuses_mistakes_in_one_line(world):
    root, corpus, bad = world
    cli = CliRunner()
    r = cli.invoke(app, ["defend", "filter", str(bad), "--method", "phash", "--drop-fraction", "0.1",
                         "--no-train", "--out", str(root / "cli-filter")])
    assert r.exit_code == 0, r.output
    assert "samples removed" in r.output and C.read_defense_info(root / "cli-filter").stage == "done"
    for args, says in (
        (["defend", "filter", str(bad), "--method", "phash", "--threshold", "1", "--drop-fraction", "0.1",
          "--out", str(root / "x")], "--threshold"),
        (["defend", "filter", str(bad), "--method", "nope", "--threshold", "1", "--out", str(root / "x")], "nope"),
        (["defend", "filter", str(bad), "--method", "phash", "--threshold", "1", "--out", str(root / "cli-filter")],
         "already exists"),
        (["defend", "cleanclip", str(root / "nowhere"), "--data", str(corpus), "--out", str(root / "x")], "run.json"),
        (["defend", "cleanclip", str(root / "before"), "--data", str(corpus), "--epochs", "0", "--out",
          str(root / "x")], "--epochs"),
        (["defend", "roclip", str(bad), "--nn-every", "0", "--out", str(root / "x")], "--nn-every"),
        (["defend", "roclip", str(bad), "--model", "no-such-model", "--out", str(root / "x")], "no-such-model"),
    ):
        one_line_error(cli.invoke(app, args), says)
    assert not (root / "x").exists()
