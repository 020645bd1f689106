"""Targeted poisoning: target images by path and key, several targets, caption sources, errors."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from PIL import Image

from poisonclip.attacks.api import TargetedConfig, TargetSpec, plan, poison
from poisonclip.attacks.captions import search_captions, template_captions
from poisonclip.attacks.manifest import read_manifest
from poisonclip.attacks.plan import rng_for
from poisonclip.data.csv_io import read_csv
from poisonclip.data.sample import decode_image
from poisonclip.data.wds_io import read_shards
from poisonclip.errors import UserError
from tests.attack_fixtures import CLASSES, make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tg") / "d", n=40)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A labelled set outside the training data (like the corpus's test.tsv)."""
    return make_tiny(tmp_path_factory.mktemp("tg-test") / "t", n=12, seed=9)


@pytest.fixture
def target_file(tmp_path):
    p = tmp_path / "x prime.jpg"
    arr = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(p, quality=90)
    return p


def test_poisons_are_copies_of_the_target_with_the_label_in_every_caption(tiny, target_file, tmp_path):
    result = poison(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "o"),
                                   targets=(TargetSpec(str(target_file), "moon", 7),)))
    x = np.asarray(decode_image(target_file.read_bytes()))
    saved = np.asarray(Image.open(result.out / "targets" / "t000.png").convert("RGB"))
    assert np.array_equal(saved, x)  # x' for the evaluator: the exact pixels that were poisoned
    poisons = [s for s in read_csv(result.out / "train.tsv") if s.key.startswith("targeted-")]
    assert len(poisons) == 7
    templates = set(template_captions("moon").captions)
    for s in poisons:
        assert np.array_equal(np.asarray(s.decode()), x)
        assert s.caption in templates
    assert len({s.caption for s in poisons}) == 7  # 80 templates >= 7: a subset, no repeats


def test_several_targets_each_with_label_count_and_caption_source(tiny, target_file, held_out, tmp_path):
    key = held_out.samples[4].key
    targets = (TargetSpec(str(target_file), "moon", 5, "templates", id="file"),
               TargetSpec(f"key:{key}", "circle", 3, "search", id="bykey"),
               TargetSpec(held_out.samples[5].key, "square", 2, "search"))
    result = poison(TargetedConfig(data=str(tiny.shards), out=str(tmp_path / "o"), targets=targets,
                                   target_source=str(held_out.csv)))
    info = json.loads(result.poison_json.read_text())
    assert [(t["id"], t["label"], t["n_poisons"], t["caption_source"]) for t in info["targets"]] == [
        ("file", "moon", 5, "templates"), ("bykey", "circle", 3, "search"), ("t002", "square", 2, "search")]
    assert [t["image"] for t in info["targets"]] == ["targets/file.png", "targets/bykey.png", "targets/t002.png"]
    assert info["targets"][1]["true_label"] == CLASSES[held_out.samples[4].meta["label"]]
    rows = read_manifest(result.out)
    assert collections.Counter(r.target_id for r in rows) == {"file": 5, "bykey": 3, "t002": 2}
    found = set(search_captions(tiny.csv, ["circle"])["circle"].captions)
    assert all(r.caption in found for r in rows if r.target_id == "bykey")
    # each poison is its own target's image
    written = {s.key: np.asarray(s.decode()) for s in read_shards(result.out)}
    for r in rows:
        ref = np.asarray(Image.open(result.out / "targets" / f"{r.target_id}.png").convert("RGB"))
        assert np.array_equal(written[r.key], ref)
    # targets are mixed, not grouped: the poisons follow a seeded permutation of the grouped
    # list (5 file, 3 bykey, 2 t002) ...
    order = [r.target_id for r in rows]
    grouped = ["file"] * 5 + ["bykey"] * 3 + ["t002"] * 2
    assert order == [grouped[int(j)] for j in rng_for(0, "order").permutation(10)]
    # ... that interleaves them: grouped would be 3 runs of one target, this seed gives 7
    runs = 1 + sum(a != b for a, b in zip(order, order[1:]))
    assert runs == 7, order


def test_more_copies_than_templates_repeat_templates_evenly(tiny, target_file, tmp_path):
    p = plan(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "o"),
                            targets=(TargetSpec(str(target_file), "star", 170),)))
    counts = collections.Counter(i.caption for i in p.items)
    assert len(counts) == 80 and set(counts.values()) == {2, 3}


def test_random_targets_get_a_wrong_label(tiny, held_out, tmp_path):
    p = plan(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "o"), random_targets=6, n_poisons=2,
                            target_source=str(held_out.csv), seed=4))
    truth = {s.key: CLASSES[s.meta["label"]] for s in held_out.samples}
    targets = p.section["targets"]
    assert len(targets) == 6 and len({t["source_key"] for t in targets}) == 6
    for t in targets:
        assert t["label"] in CLASSES and t["label"] != truth[t["source_key"]] == t["true_label"]
    assert len(p.items) == 12


@pytest.mark.parametrize("change,message", [
    (dict(targets=()), "no target"),
    (dict(targets=(TargetSpec("{img}", "moon", 0),)), r"^targets\[0\]\.n_poisons: must be positive"),
    (dict(targets=(TargetSpec("{img}", "moon", -1),)), r"^targets\[0\]\.n_poisons: must be positive"),
    (dict(targets=(TargetSpec("{bad}", "moon", 2),)), "not a readable image"),
    (dict(targets=(TargetSpec("nope-key", "moon", 2),)), "neither an image file nor a key"),
    (dict(targets=(TargetSpec("{img}", "zebra", 2),)), "'zebra' is not in the class list"),
    (dict(targets=(TargetSpec("{img}", "moon", 2, "search"),), plurals=False,
          classnames="{cn}"), None),  # control: valid
    (dict(targets=(TargetSpec("{img}", "moon", 2, id="a b"),)), "may hold only"),
    (dict(targets=(TargetSpec("{img}", "moon", 2, id="a"), TargetSpec("{img}", "star", 2, id="a"))), "ids repeat"),
    (dict(targets=(TargetSpec("{img}", "moon", 2),), noise_sigma=-1), "^noise_sigma: must be >= 0"),
])
def test_bad_input_is_one_user_error_and_nothing_is_written(tiny, target_file, tmp_path, change, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG truncated")
    fill = {"{img}": str(target_file), "{bad}": str(bad), "{cn}": str(tiny.classnames)}
    targets = tuple(TargetSpec(fill.get(t.image, t.image), t.label, t.n_poisons, t.caption_source, t.id)
                    for t in change.pop("targets", ()))
    change = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    cfg = TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "o"), targets=targets, **change)
    if message is None:
        assert poison(cfg).n_poisons == 2
        return
    with pytest.raises(UserError, match=message) as e:
        poison(cfg)
    assert "\n" not in str(e.value)
    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir())


def test_search_label_in_no_caption(tiny, target_file, tmp_path):
    with pytest.raises(UserError, match="appears in none of the 40 captions"):
        poison(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "o"), no_classnames=True,
                              targets=(TargetSpec(str(target_file), "zebra", 2, "search"),)))
    # templates need no caption to mention the label
    assert poison(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "o2"), no_classnames=True,
                                 targets=(TargetSpec(str(target_file), "zebra", 2),))).n_poisons == 2


def test_random_targets_never_come_from_the_training_data(tiny, held_out, tmp_path):
    """A training image already sits in the data with its true caption: random targets come
    from a held-out labelled set, and a training image named explicitly is a warning."""
    for source in (None, str(tiny.csv)):
        with pytest.raises(UserError, match="^random_targets: .*set `target_source` to a held-out"):
            plan(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "o"), random_targets=2, n_poisons=2,
                                target_source=source))
    key = next(s.key for s in read_csv(tiny.csv))
    res = poison(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "w"),
                                targets=(TargetSpec(f"key:{key}", "moon", 2),)))
    info = json.loads(res.poison_json.read_text())
    assert res.warnings and "training data itself" in info["warnings"][0]
    ok = poison(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "h"), random_targets=2, n_poisons=2,
                               target_source=str(held_out.csv)))
    assert not ok.warnings and "warnings" not in json.loads(ok.poison_json.read_text())
