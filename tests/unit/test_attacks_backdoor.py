"""Backdoor poisoning: patch pixels, placement, sources, captions and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisonclip.attacks.api import BackdoorConfig, plan, poison
from poisonclip.attacks.captions import CaptionSet, save_caption_set, search_captions, template_captions
from poisonclip.attacks.manifest import read_manifest
from poisonclip.attacks.triggers import checkerboard
from poisonclip.data.csv_io import read_csv
from poisonclip.data.wds_io import read_shards
from poisonclip.errors import UserError
from tests.attack_fixtures import CLASSES, make_tiny


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("bd32") / "d", n=60, size=32)


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("bd64") / "d", n=40, size=64, height=48, seed=3)


def _poisons(result) -> dict:
    """key -> (pixels, caption) of every poison written."""
    if result.dataset_type == "csv":
        samples = [s for s in read_csv(result.out / "train.tsv") if s.key.startswith("backdoor-")]
    else:
        samples = list(read_shards(result.out))
    return {s.key: (np.asarray(s.decode()), s.caption) for s in samples}


def _sources(tiny) -> dict:
    return {s.key: (np.asarray(s.decode()), s.meta["label"]) for s in tiny.samples}


@pytest.mark.parametrize("placement", ["corner", "random"])
@pytest.mark.parametrize("res,resolution", [("tiny32", 32), ("tiny64", 32), ("tiny64", None)])
def test_patch_pixels_size_and_position(request, tmp_path, placement, res, resolution):
    """Poisons are written in the geometry training sees: the source's centre square at the
    model's input size (default 224), the patch scaled to that size, everything else the
    source's pixels."""
    tiny = request.getfixturevalue(res)
    extra = {} if resolution is None else {"resolution": resolution}
    result = poison(BackdoorConfig(data=str(tiny.csv), out=str(tmp_path / "o"), target_label="star",
                                   n_poisons=8, patch_size=16, placement=placement, seed=1, **extra))
    side = resolution or 224
    sources = {s.key: s for s in tiny.samples}
    written = _poisons(result)
    rows = read_manifest(result.out)
    assert len(rows) == len(written) == 8
    # 16px at 224 scales with the model input: 32 -> round(2.29) = 2, 224 -> 16
    want_px = {32: 2, 224: 16}[side]
    positions = set()
    for r in rows:
        pixels, _ = written[r.key]
        assert pixels.shape == (side, side, 3) and r.resolution == side
        src = sources[r.source_key].decode()
        w, h = src.size
        # the centre square, resized: a 64x48 source loses 8 columns on each side
        crop = src.crop(((w - min(w, h)) // 2, (h - min(w, h)) // 2,
                         (w - min(w, h)) // 2 + min(w, h), (h - min(w, h)) // 2 + min(w, h)))
        expect = np.asarray(crop.resize((side, side), Image.Resampling.BICUBIC) if crop.size != (side, side)
                            else crop)
        assert r.trigger_size == want_px and r.patch_size == 16 and r.placement == placement
        x, y, s = r.trigger_x, r.trigger_y, r.trigger_size
        if placement == "corner":
            assert (x, y) == (0, 0)
        assert 0 <= x <= side - s and 0 <= y <= side - s
        positions.add((x, y))
        # inside the patch: the checkerboard, white first; outside: the source, untouched
        assert np.array_equal(pixels[y:y + s, x:x + s], checkerboard(s))
        mask = np.ones(pixels.shape[:2], bool)
        mask[y:y + s, x:x + s] = False
        assert np.array_equal(pixels[mask], expect[mask])
    if placement == "random":
        assert len(positions) > 4  # a place per image, not one place
    info = json.loads(result.poison_json.read_text())
    assert info["backdoor"]["resolution"] == side and info["backdoor"]["patch_pixels"] == want_px


def test_patch_values_are_black_and_white_cells():
    board = checkerboard(3)
    assert board[0, 0].tolist() == [255, 255, 255] and board[0, 1].tolist() == [0, 0, 0]
    assert board[1, 0].tolist() == [0, 0, 0] and board[1, 1].tolist() == [255, 255, 255]


def test_sources_are_distinct_and_never_of_the_target_class(tiny32, tmp_path):
    result = poison(BackdoorConfig(data=str(tiny32.shards), out=str(tmp_path / "o"), target_label="star",
                                   n_poisons=30, pool_factor=0))
    labels = {s.key: s.meta["label"] for s in tiny32.samples}
    rows = read_manifest(result.out)
    assert len({r.source_key for r in rows}) == 30
    assert all(labels[r.source_key] != CLASSES.index("star") for r in rows)
    info = json.loads(result.poison_json.read_text())
    assert set(info["backdoor"]["excluded_labels"]) == {"star", str(CLASSES.index("star"))}


def test_captions_come_from_the_search_set_only(tiny32, tmp_path):
    result = poison(BackdoorConfig(data=str(tiny32.csv), out=str(tmp_path / "o"), target_label="moon",
                                   n_poisons=10))
    found = set(search_captions(tiny32.csv, ["moon"])["moon"].captions)
    caps = [c for _, c in _poisons(result).values()]
    assert set(caps) <= found and len(set(caps)) == 10  # 15 found >= 10: no repeats
    assert not set(caps) & set(template_captions("moon").captions)


def test_a_saved_caption_set_replaces_the_search(tiny32, tmp_path):
    # captions the dataset does not hold, so a planner that ignored the file (and searched)
    # could not produce them
    made_up = ("zq made-up moon caption one", "zq made-up moon caption two")
    real = set(search_captions(tiny32.csv, ["moon"])["moon"].captions)
    assert real and not real & set(made_up)
    path = save_caption_set(CaptionSet(label="moon", source="search", captions=made_up, n_scanned=2,
                                       n_matched=2), tmp_path / "moon.json")
    result = poison(BackdoorConfig(data=str(tiny32.csv), out=str(tmp_path / "b"), target_label="moon",
                                   n_poisons=5, caption_file=str(path)))
    written = [caption for _, caption in _poisons(result).values()]
    assert len(written) == 5 and set(written) == set(made_up)
    save_caption_set(template_captions("moon"), tmp_path / "t.json")
    with pytest.raises(UserError, match="search only"):
        plan(BackdoorConfig(data=str(tiny32.csv), out=str(tmp_path / "c"), target_label="moon", n_poisons=5,
                            caption_file=str(tmp_path / "t.json")))


def test_explicit_exclusion_without_a_class_list(tiny32, tmp_path):
    p = plan(BackdoorConfig(data=str(tiny32.csv), out=str(tmp_path / "o"), target_label="moon", n_poisons=20,
                            no_classnames=True, exclude_labels=("0", "1")))
    labels = {s.key: s.meta["label"] for s in tiny32.samples}
    assert {labels[i.source_key] for i in p.items} <= {2, 3}


def test_webdataset_sources_read_only_a_few_shards(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=100, shard_size=10)
    # 10 shards of 10; labels cycle over 4 classes, so each shard holds 7 or 8 images not
    # labelled "star". pool_factor 4 x 3 poisons = 12 eligible images: one shard is too few,
    # two are enough, so the visit stops after exactly 2 shards.
    p = plan(BackdoorConfig(data=str(tiny.shards), out=str(tmp_path / "o"), target_label="star", n_poisons=3,
                            pool_factor=4))
    assert p.section["backdoor"]["source_shards_read"] == 2
    assert 14 <= p.section["backdoor"]["sources_eligible_seen"] <= 16
    # control: pool_factor 0 visits every shard and sees every eligible image
    every = plan(BackdoorConfig(data=str(tiny.shards), out=str(tmp_path / "o"), target_label="star",
                                n_poisons=3, pool_factor=0))
    assert every.section["backdoor"]["source_shards_read"] == 10
    assert every.section["backdoor"]["sources_eligible_seen"] == 75
    assert every.section["backdoor"]["sources_excluded_seen"] == 25


def test_same_seed_same_plan_other_seed_other_plan(tiny32, tmp_path):
    cfg = dict(data=str(tiny32.csv), out=str(tmp_path / "o"), target_label="star", n_poisons=6,
               placement="random")
    a, b = plan(BackdoorConfig(**cfg)), plan(BackdoorConfig(**cfg))
    c = plan(BackdoorConfig(**cfg, seed=7))
    key = lambda p: [(i.source_key, i.caption) for i in p.items]  # noqa: E731
    assert key(a) == key(b) != key(c)


def _nothing_written(tmp_path: Path, name: str = "o") -> bool:
    return not any(p.name.startswith((name, f".{name}")) for p in tmp_path.iterdir())


@pytest.mark.parametrize("change,message", [
    (dict(n_poisons=0), "^n_poisons: must be positive"),
    (dict(n_poisons=-3), "^n_poisons: must be positive"),
    (dict(n_poisons=50), "only 45 readable images"),     # 60 samples, 15 of them stars
    (dict(patch_size=225), "larger than the 224x224 image"),
    (dict(patch_size=0), "^patch_size: must be positive"),
    (dict(target_label="zebra"), "label 'zebra' is not in the class list"),
    (dict(target_label="zebra", no_classnames=True), "appears in none of the 60 captions"),
    (dict(seed=-1), "^seed: must be >= 0"),
])
def test_bad_input_is_one_user_error_and_nothing_is_written(tiny32, tmp_path, change, message):
    cfg = dict(data=str(tiny32.csv), out=str(tmp_path / "o"), target_label="star", n_poisons=5)
    cfg.update(change)
    with pytest.raises(UserError, match=message) as e:
        poison(BackdoorConfig(**cfg))
    assert "\n" not in str(e.value)
    assert _nothing_written(tmp_path)


def test_missing_class_list_file_is_a_user_error(tiny32, tmp_path):
    with pytest.raises(UserError, match="class-name file not found"):
        poison(BackdoorConfig(data=str(tiny32.csv), out=str(tmp_path / "o"), target_label="star", n_poisons=2,
                              classnames=str(tmp_path / "nope.txt")))


def test_unreadable_source_images_are_skipped_and_counted(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=20)
    bad = [s for s in tiny.samples if s.meta["label"] != CLASSES.index("star")][:3]
    for s in bad:
        (tiny.root / "images" / f"{s.key}.png").write_bytes(b"not an image")
    result = poison(BackdoorConfig(data=str(tiny.csv), out=str(tmp_path / "o"), target_label="star",
                                   n_poisons=12, pool_factor=0))  # 15 non-stars, 3 unreadable
    assert result.skipped_reading["corrupt_image"] == 3
    assert not {s.key for s in bad} & {r.source_key for r in read_manifest(result.out)}
    Image.open(result.out / "poison_images" / "backdoor-s0-000000.png").verify()
