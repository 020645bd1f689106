"""`poisonclip eval` on a tiny real open_clip checkpoint: every field written, bad input -> exit 2.

No training is needed to test the plumbing: a randomly initialised tiny model, saved in
open_clip_train's checkpoint format, goes through the same loading and embedding code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.data.evalset import write_labelled_csv
from poisonclip.data.sample import Sample
from poisonclip.io_utils import sha256_file
from tests.cli_errors import one_line_error

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CLASSES = ["circle", "square", "star"]
runner = CliRunner()

pytestmark = pytest.mark.e2e


def _register_test_models() -> None:
    import open_clip

    open_clip.add_model_config(ASSETS / "eval-tiny.json")
    open_clip.add_model_config(ASSETS / "eval-tiny-wide.json")


def _image(rng: np.random.Generator, label: int, size: int = 32) -> Image.Image:
    arr = np.full((size, size, 3), rng.integers(40, 200, size=3), dtype=np.uint8)
    c = [(220, 30, 30), (30, 170, 50), (30, 70, 220)][label]
    x, y = rng.integers(4, size - 14, size=2)
    arr[y:y + 10, x:x + 10] = c
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A labelled test set, a tiny checkpoint, a backdoor and a targeted poison folder."""
    _register_test_models()
    import open_clip

    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    samples = [Sample.from_pil(f"t{i:03d}", _image(rng, i % 3), CLASSES[i % 3], {"label": i % 3})
               for i in range(24)]
    write_labelled_csv(samples, CLASSES, root / "data", name="test.tsv")
    probe_samples = [Sample.from_pil(f"p{i:03d}", _image(rng, i % 3), CLASSES[i % 3], {"label": i % 3})
                     for i in range(18)]
    write_labelled_csv(probe_samples, CLASSES, root / "probe", name="train.tsv")

    torch.manual_seed(0)
    model = open_clip.create_model("eval-tiny")
    ckpt = root / "run" / "checkpoints" / "epoch_1.pt"
    ckpt.parent.mkdir(parents=True)
    # open_clip_train's checkpoint layout (DDP-style "module." prefixes included)
    torch.save({"epoch": 1, "name": "tiny", "optimizer": {},
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    (root / "run" / "run.json").write_text(json.dumps({"model": "eval-tiny", "checkpoint": str(ckpt), "seed": 0}))
    torch.manual_seed(6)  # a second, different model (an initialisation that scores differently)
    other = root / "run1" / "checkpoints" / "epoch_1.pt"
    other.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "name": "tiny", "optimizer": {},
                "state_dict": {f"module.{k}": v for k, v in open_clip.create_model("eval-tiny").state_dict().items()}},
               other)

    contract = {"dataset_type": "csv", "train_data": str(root / "poisoned.tsv"), "num_samples": 100,
                "n_clean": 98, "n_poisons": 2, "seed": 0, "manifest": "manifest.csv"}
    bd = root / "poison-bd"
    bd.mkdir()
    (bd / "poison.json").write_text(json.dumps({
        **contract, "attack": "backdoor", "backdoor": {"target_label": "star", "patch_size": 32, "placement": "corner"}}))
    rnd = root / "poison-rnd"
    rnd.mkdir()
    (rnd / "poison.json").write_text(json.dumps({
        **contract, "attack": "backdoor", "backdoor": {"target_label": "circle", "patch_size": 32,
                                                       "placement": "random", "trigger": "checkerboard"}}))
    tg = root / "poison-tg"
    (tg / "targets").mkdir(parents=True)
    _image(rng, 0).save(tg / "targets" / "t0.png")
    _image(rng, 1).save(tg / "targets" / "t1.png")
    (tg / "poison.json").write_text(json.dumps({**contract, "attack": "targeted", "targets": [
        {"id": "t0", "label": "square", "image": "targets/t0.png", "n_poisons": 3, "caption_source": "templates"},
        {"id": "t1", "label": "star", "image": "targets/t1.png", "n_poisons": 3, "caption_source": "templates"}]}))
    (root / "templates.txt").write_text("a photo of a {}.\na drawing of a {}.\n")
    return root


def _eval(world: Path, out: Path, *extra: str):
    return runner.invoke(app, ["eval", "--data", str(world / "data" / "test.tsv"), "--out", str(out),
                               "--templates", str(world / "templates.txt"), "--probe-c", "0.1",
                               "--probe-c", "10", *extra])


def test_backdoor_eval_writes_every_field(world, tmp_path):
    r = _eval(world, tmp_path / "m", "--run", str(world / "run"), "--poison", str(world / "poison-bd"))
    assert r.exit_code == 0, r.output
    assert "z-score" in r.output and "ASR" in r.output and "clean top-1" in r.output
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["model"]["name"] == "eval-tiny"
    assert m["model"]["checkpoint_sha256"] == sha256_file(world / "run" / "checkpoints" / "epoch_1.pt")
    assert m["data"]["sha256"] == sha256_file(world / "data" / "test.tsv")
    assert m["data"]["n_images"] == 24 and m["data"]["classnames"] == CLASSES
    assert m["templates"]["templates"] == ["a photo of a {}.", "a drawing of a {}."]
    assert m["config"]["seed"] == 0 and m["config"]["poison"] == str(world / "poison-bd")
    zs = m["clean"]["zeroshot"]["top1"]
    assert zs["n"] == 24 and 0 <= zs["k"] <= 24 and zs["ci95"][0] <= zs["rate"] <= zs["ci95"][1]
    probe = m["clean"]["probe"]
    assert probe["n_train"] + probe["n_test"] == 24 and probe["top1"]["n"] == probe["n_test"]
    assert probe["train_set"]["source"] == "split_of_data" and probe["C"] in (0.1, 10.0)
    bd = m["backdoor"]
    assert bd["target_label"] == "star" and bd["target_index"] == 2 and bd["train_placement"] == "corner"
    assert bd["trigger"] == "checkerboard"
    for name in ("train_placement", "random"):
        assert bd["asr"][name]["zeroshot"]["n"] == 16  # the 8 "star" images are excluded
        # the probe is scored on the held-out half of each class (4 of 8): 12 images, 8 not "star"
        assert probe["n_test"] == 12 and bd["asr"][name]["probe"]["n"] == 8
        assert bd["target_rate_without_trigger"]["probe"]["n"] == 8
        z = bd["zscore"][name]
        assert z["n_pairs"] == 24 * 23 // 2 and z["std_clean"] > 0
        assert z["z"] == pytest.approx((z["mean_triggered"] - z["mean_clean"]) / z["std_clean"])
    assert bd["asr"]["random"]["placement"] == "random" and "corner" not in bd["asr"]  # corner == as trained
    arr = np.load(tmp_path / "m" / "similarities.npz")
    assert arr["clean_counts"].sum() == 24 * 23 // 2 == arr["triggered_random_counts"].sum()
    assert arr["same_label_pairs"].sum() == 276 and arr["same_label_same"].sum() == 3 * (8 * 7 // 2)
    corner = arr["trigger_train_placement_xys"]
    assert corner.shape == (24, 3) and (corner[:, :2] == 0).all() and (corner[:, 2] == 5).all()  # 32px@224 -> 5px@32
    assert (arr["trigger_random_xys"][:, :2] > 0).any()


def test_same_inputs_give_byte_identical_outputs(world, tmp_path):
    for d in ("a", "b"):
        r = _eval(world, tmp_path / d, "--model", "eval-tiny", "--checkpoint",
                  str(world / "run" / "checkpoints" / "epoch_1.pt"), "--poison", str(world / "poison-bd"),
                  "--no-probe")
        assert r.exit_code == 0, r.output
    for f in ("similarities.npz",):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    a["config"].pop("out"), b["config"].pop("out")
    assert a == b and "probe" not in a["clean"]


def test_retrieval_is_measured_on_the_eval_sets_own_captions(world, tmp_path):
    from poisonclip.evaluate import metrics as M
    from poisonclip.evaluate.columns import flat_metrics
    from poisonclip.evaluate.embed import embed_images, embed_texts, load_model

    r = _eval(world, tmp_path / "m", "--run", str(world / "run"), "--poison", str(world / "poison-bd"), "--no-probe")
    assert r.exit_code == 0, r.output
    assert "image-to-text R@1" in r.output
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    ret = m["retrieval"]
    assert (ret["caption_key"], ret["n_images"], ret["n_texts"]) == ("title", 24, 24)
    # the same numbers from the model's own embeddings of the table's images and captions
    lm = load_model("eval-tiny", world / "run" / "checkpoints" / "epoch_1.pt")
    from poisonclip.data.evalset import load_labelled
    ls = load_labelled(world / "data" / "test.tsv")
    img = embed_images(lm, (s.decode() for s in ls.samples))
    txt = embed_texts(lm, [s.meta["title"] for s in ls.samples])
    want = M.retrieval_recall(img, txt, np.arange(24))
    for direction in ("image_to_text", "text_to_image"):
        assert {k: (v["k"], v["n"]) for k, v in ret[direction].items()} == \
               {f"R@{k}": (v.k, v.n) for k, v in want[direction].items()}
    # the backdoor's retrieval: the 16 non-star images as queries, the 8 star captions as targets
    bret = m["backdoor"]["retrieval"]
    assert (bret["n_queries"], bret["n_target_captions"]) == (16, 8)
    stars = np.array([s.meta["label"] == 2 for s in ls.samples])
    base = M.target_retrieval(img[~stars], txt, stars)
    assert {k: v["k"] for k, v in bret["without_trigger"].items()} == {f"R@{k}": v.k for k, v in base.items()}
    assert all(v["n"] == 16 for v in bret["with_trigger"].values())
    geo = m["backdoor"]["geometry"]
    assert set(geo) == {"image", "text", "cross"}
    assert geo["image"]["clean_to_target_images"] == pytest.approx(M.mean_cosine(img[~stars], M.centroid(img[stars])),
                                                                  abs=1e-5)
    assert geo["cross"]["target_text_to_target_images"] <= 1.0 and "target_captions_to_target_text" in geo["text"]
    cols = flat_metrics(m)
    assert cols["retrieval_i2t_r1_n"] == 24 and cols["retrieval_t2i_r10"] == ret["text_to_image"]["R@10"]["rate"]
    assert cols["retrieval_i2t_target_as_trained_r10_n"] == 16

    r = _eval(world, tmp_path / "off", "--run", str(world / "run"), "--no-probe", "--no-retrieval")
    assert r.exit_code == 0, r.output
    assert "retrieval" not in json.loads((tmp_path / "off" / "metrics.json").read_text())


def test_an_eval_set_without_captions_records_why_retrieval_was_skipped(world, tmp_path):
    folder = tmp_path / "folder"
    for i, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for j in range(2):
            _image(np.random.default_rng([i, j]), i).save(folder / name / f"{j}.png")
    r = runner.invoke(app, ["eval", "--data", str(folder), "--out", str(tmp_path / "m"), "--run", str(world / "run"),
                            "--templates", str(world / "templates.txt"), "--no-probe"])
    assert r.exit_code == 0, r.output
    ret = json.loads((tmp_path / "m" / "metrics.json").read_text())["retrieval"]
    assert set(ret) == {"skipped"} and "'title'" in ret["skipped"]


def test_random_placement_poisons_are_also_tested_at_the_corner(world, tmp_path):
    r = _eval(world, tmp_path / "r", "--run", str(world / "run"), "--poison", str(world / "poison-rnd"),
              "--no-probe")
    assert r.exit_code == 0, r.output
    bd = json.loads((tmp_path / "r" / "metrics.json").read_text())["backdoor"]
    assert bd["train_placement"] == "random" and bd["target_index"] == 0
    assert [bd["asr"][k]["placement"] for k in ("train_placement", "random", "corner")] == ["random", "random", "corner"]
    assert all(bd["asr"][k]["zeroshot"]["n"] == 16 for k in bd["asr"])
    arr = np.load(tmp_path / "r" / "similarities.npz")
    assert (arr["trigger_corner_xys"][:, :2] == 0).all()
    # two random streams: as-trained and test-time random positions differ
    assert (arr["trigger_train_placement_xys"] != arr["trigger_random_xys"]).any()


def test_targeted_eval_with_probe_train_and_compare(world, tmp_path):
    ckpt = str(world / "run" / "checkpoints" / "epoch_1.pt")
    r = _eval(world, tmp_path / "t", "--model", "eval-tiny", "--checkpoint", ckpt,
              "--poison", str(world / "poison-tg"), "--probe-train", str(world / "probe" / "train.tsv"))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert "backdoor" not in m
    assert m["clean"]["probe"]["train_set"]["source"] == "probe_train"
    assert m["clean"]["probe"]["n_train"] == 18 and m["clean"]["probe"]["top1"]["n"] == 24
    rows = m["targeted"]["targets"]
    assert [(t["id"], t["label"], t["label_index"]) for t in rows] == [("t0", "square", 1), ("t1", "star", 2)]
    for t in rows:
        for head in ("zeroshot", "probe"):
            assert t[head]["success"] == (t[head]["rank"] == 1) and 1 <= t[head]["rank"] <= 3
            assert t[head]["success"] == (t[head]["predicted"] == t["label"])
    assert m["targeted"]["summary"]["zeroshot"]["success"]["n"] == 2
    # rerun refuses to overwrite
    again = _eval(world, tmp_path / "t", "--model", "eval-tiny", "--checkpoint", ckpt)
    assert again.exit_code == 2 and "already exists" in again.output
    # compare two DIFFERENT models: the other initialisation as "clean"
    r = _eval(world, tmp_path / "c", "--model", "eval-tiny", "--checkpoint",
              str(world / "run1" / "checkpoints" / "epoch_1.pt"), "--no-probe")
    assert r.exit_code == 0, r.output
    k_p = m["clean"]["zeroshot"]["top1"]["k"]
    k_c = json.loads((tmp_path / "c" / "metrics.json").read_text())["clean"]["zeroshot"]["top1"]["k"]
    assert k_p != k_c  # the two models differ here (measured: 8 vs 11 of 24), so the sign is not 0
    js = tmp_path / "cmp.json"
    c = runner.invoke(app, ["eval-compare", str(tmp_path / "t"), "--clean", str(tmp_path / "c" / "metrics.json"),
                            "--json", str(js)])
    assert c.exit_code == 0, c.output
    res = json.loads(js.read_text())
    assert res["poisoned"]["n_models"] == 1 and res["clean"]["n_models"] == 1
    zs = res["accuracy_tests"]["zeroshot"]
    assert zs["test"] == "fisher_exact"
    # poisoned minus clean, in that direction
    assert zs["diff"] == pytest.approx((k_p - k_c) / 24) and (zs["diff"] > 0) == (k_p > k_c)
    assert f"diff {100 * (k_p - k_c) / 24:+.2f} points" in c.output
    # files that are not metrics: one line, exit 2
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something-else", "clean": {}}))
    (tmp_path / "text.json").write_text("not json")
    one_line_error(runner.invoke(app, ["eval-compare", str(tmp_path / "other.json"), "--clean",
                                        str(tmp_path / "c" / "metrics.json")]), "not a poisonclip metrics file")
    one_line_error(runner.invoke(app, ["eval-compare", str(tmp_path / "t"), "--clean", str(tmp_path / "text.json")]),
                    "text.json: not valid JSON")
    one_line_error(runner.invoke(app, ["eval-compare", str(tmp_path / "t"), "--clean", str(world / "templates.txt")]),
                    "templates.txt: not valid JSON")


def test_targets_found_in_the_eval_or_probe_set_are_left_out_and_counted(world, tmp_path):
    """A target x' drawn from a labelled set is the attack's own image: it must not count in
    clean accuracy (nor train the probe); found by content hash, or by key in its source set."""
    from poisonclip.data.evalset import read_labelled_csv
    from poisonclip.io_utils import sha256_bytes

    test = read_labelled_csv(world / "data" / "test.tsv")
    probe = read_labelled_csv(world / "probe" / "train.tsv")
    by_hash, by_key, in_probe = test.samples[3], test.samples[10], probe.samples[4]
    tg = tmp_path / "poison-leak"
    (tg / "targets").mkdir(parents=True)
    (tg / "targets" / "a.png").write_bytes(by_hash.image)
    (tg / "targets" / "c.png").write_bytes(in_probe.image)
    _image(np.random.default_rng(99), 2).save(tg / "targets" / "b.png")  # other bytes: found by key only
    contract = json.loads((world / "poison-tg" / "poison.json").read_text())
    contract["config"] = {"target_source": str(world / "data" / "test.tsv")}
    contract["targets"] = [
        {"id": "a", "label": "star", "image": "targets/a.png", "source_sha256": sha256_bytes(by_hash.image),
         "source_key": "elsewhere-1"},
        {"id": "b", "label": "circle", "image": "targets/b.png", "source_sha256": "0" * 64,
         "source_key": by_key.key},
        {"id": "c", "label": "square", "image": "targets/c.png", "source_sha256": sha256_bytes(in_probe.image),
         "source_key": "elsewhere-2"}]
    (tg / "poison.json").write_text(json.dumps(contract))
    r = _eval(world, tmp_path / "m", "--run", str(world / "run"), "--poison", str(tg),
              "--probe-train", str(world / "probe" / "train.tsv"))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    ex = m["excluded_targets"]
    assert (ex["data"], ex["probe_train"]) == (2, 1)
    assert ex["keys"] == sorted([by_hash.key, by_key.key, in_probe.key])
    assert m["clean"]["zeroshot"]["top1"]["n"] == 22 and m["clean"]["probe"]["top1"]["n"] == 22
    assert m["clean"]["probe"]["n_train"] == 17
    assert m["data"]["n_images"] == 24  # the identity still pins the whole file
    assert [t["id"] for t in m["targeted"]["targets"]] == ["a", "b", "c"]  # scored as targets
    assert m["targeted"]["targets"][0]["source_sha256"] == sha256_bytes(by_hash.image)
    assert m["model"]["train_seed"] == 0
    # the same targets evaluated on a set they were not drawn from: nothing matches by key
    contract["config"] = {"target_source": str(world / "probe" / "train.tsv")}
    (tg / "poison.json").write_text(json.dumps(contract))
    r = _eval(world, tmp_path / "m2", "--run", str(world / "run"), "--poison", str(tg), "--no-probe")
    assert r.exit_code == 0, r.output
    m2 = json.loads((tmp_path / "m2" / "metrics.json").read_text())
    assert m2["excluded_targets"]["data"] == 1 and m2["clean"]["zeroshot"]["top1"]["n"] == 23


class _NotATensor:
    """An arbitrary Python object: a weights-only load must refuse a checkpoint holding one."""


def test_bad_input_gives_one_line_errors(world, tmp_path):
    ckpt = world / "run" / "checkpoints" / "epoch_1.pt"
    base = ["--model", "eval-tiny", "--checkpoint"]
    one_line_error(_eval(world, tmp_path / "1", *base, str(tmp_path / "nope.pt")), "checkpoint not found")
    one_line_error(_eval(world, tmp_path / "2", "--model", "eval-tiny-wide", "--checkpoint", str(ckpt)),
                    "does not fit model 'eval-tiny-wide'")
    one_line_error(_eval(world, tmp_path / "3", "--model", "no-such-model", "--checkpoint", str(ckpt)),
                    "not an open_clip model name")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    one_line_error(_eval(world, tmp_path / "4", *base, str(garbage)), "not a readable PyTorch checkpoint")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _NotATensor()}, unsafe)
    one_line_error(_eval(world, tmp_path / "9", *base, str(unsafe)), "refused to load", "weights_only=True")
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    partial = tmp_path / "partial.pt"
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.endswith("visual.proj")}}, partial)
    one_line_error(_eval(world, tmp_path / "10", *base, str(partial)), "1 model tensor(s) missing")
    bad_poison = tmp_path / "bad-poison"
    bad_poison.mkdir()
    bad = json.loads((world / "poison-bd" / "poison.json").read_text())
    del bad["backdoor"]
    (bad_poison / "poison.json").write_text(json.dumps(bad))
    one_line_error(_eval(world, tmp_path / "11", *base, str(ckpt), "--poison", str(bad_poison)),
                    "poison.json: malformed")
    short = tmp_path / "two_classes.txt"
    short.write_text("circle\nsquare\n")
    one_line_error(_eval(world, tmp_path / "5", *base, str(ckpt), "--classnames", str(short)),
                    "neither a class name nor an index")
    other = tmp_path / "other_classes.txt"
    other.write_text("circle\nsquare\nheart\n")
    one_line_error(_eval(world, tmp_path / "6", *base, str(ckpt), "--classnames", str(other),
                          "--poison", str(world / "poison-bd")), "target label 'star' is not in the eval class list")
    one_line_error(_eval(world, tmp_path / "7", *base, str(ckpt)[:-3] + "x"), "checkpoint not found")
    one_line_error(runner.invoke(app, ["eval", "--data", str(world / "data" / "test.tsv"), "--model", "eval-tiny"]),
                    "--out")
    one_line_error(_eval(world, tmp_path / "8", "--run", str(tmp_path)), "run.json")
    assert not any((tmp_path / str(d) / "metrics.json").exists() for d in range(1, 12))
