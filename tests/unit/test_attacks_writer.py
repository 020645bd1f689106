"""The poisoned dataset folder: poison.json contract, manifest vs bytes, layout, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from poisonclip.attacks.api import BackdoorConfig, TargetedConfig, TargetSpec, poison
from poisonclip.attacks.manifest import COLUMNS, read_manifest
from poisonclip.contracts import read_poison_info
from poisonclip.attacks.plan import rng_for
from poisonclip.data.wds_io import expand_shards, write_shards
from poisonclip.errors import UserError
from tests.attack_fixtures import make_tiny, tree_digest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("wr") / "d", n=50, shard_size=20)


def _backdoor(tiny, out, fmt="csv", **kw):
    data = tiny.csv if fmt == "csv" else tiny.shards
    return poison(BackdoorConfig(data=str(data), out=str(out), target_label="star", n_poisons=kw.pop("n", 9),
                                 placement=kw.pop("placement", "random"), resolution=kw.pop("resolution", 32),
                                 **kw))


def _targeted(tiny, out, fmt="csv", **kw):
    data = tiny.csv if fmt == "csv" else tiny.shards
    img = tiny.root / "images" / f"{tiny.samples[3].key}.png"
    return poison(TargetedConfig(data=str(data), out=str(out), targets=(TargetSpec(str(img), "moon", 6),), **kw))


@pytest.mark.parametrize("fmt", ["csv", "webdataset"])
def test_poison_json_follows_the_contract(tiny, tmp_path, fmt):
    r = _backdoor(tiny, tmp_path / "o", fmt)
    info = read_poison_info(r.out)
    assert info.attack == "backdoor" and info.dataset_type == fmt
    assert (info.csv_sep, info.csv_img_key, info.csv_caption_key) == ("\t", "filepath", "title")
    assert info.n_clean == 50 and info.n_poisons == 9 and info.num_samples == 59
    assert info.seed == 0 and info.manifest == "manifest.csv" and info.skipped == {}
    assert (info.backdoor.target_label, info.backdoor.patch_size, info.backdoor.placement) == ("star", 16, "random")
    assert info.config["n_poisons"] == 9 and info.config["data"] == os.path.abspath(
        tiny.csv if fmt == "csv" else tiny.shards)
    assert os.path.isabs(info.train_data.split("::")[0])
    # the file holds exactly the record (nothing a reader would drop), with its schema version
    assert json.loads(r.poison_json.read_text()) == info.to_json() and info.to_json()["schema_version"] == 1
    t = _targeted(tiny, tmp_path / "t", fmt)
    info = read_poison_info(t.out)
    assert info.attack == "targeted" and info.backdoor is None
    target = info.targets[0]
    assert (target.id, target.label, target.image, target.n_poisons, target.caption_source) == (
        "t000", "moon", "targets/t000.png", 6, "templates")
    assert info.target_image(target) == t.out / "targets" / "t000.png" and info.target_image(target).is_file()
    assert json.loads(t.poison_json.read_text()) == info.to_json()


@pytest.mark.parametrize("fmt", ["csv", "webdataset"])
def test_manifest_matches_the_bytes_written(tiny, tmp_path, fmt):
    r = _backdoor(tiny, tmp_path / "o", fmt, noise_sigma=1.0)
    rows = read_manifest(r.out)
    assert [c for c in COLUMNS][:5] == ["key", "attack", "target_id", "target_label", "caption"]
    assert len(rows) == 9 and len({r_.key for r_ in rows}) == 9
    written: dict[str, tuple[bytes, str]] = {}
    if fmt == "csv":
        for row in rows:
            written[row.key] = ((r.out / row.location).read_bytes(), None)
        table = pd.read_csv(r.out / "train.tsv", sep="\t")
        caps = dict(zip(table["key"], table["title"]))
        written = {k: (b, caps[k]) for k, (b, _) in written.items()}
    else:
        for name in sorted({row.location for row in rows}):
            with tarfile.open(r.out / name) as tf:
                for m in tf.getmembers():
                    key, ext = m.name.split(".", 1)
                    data = tf.extractfile(m).read()
                    img, cap = written.get(key, (None, None))
                    if ext == "png":
                        img = data
                    elif ext == "txt":
                        cap = data.decode()
                    written[key] = (img, cap)
    src = {s.key: s.image for s in tiny.samples}
    for row in rows:
        data, caption = written[row.key]
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert caption == row.caption
        assert row.source_sha256 == hashlib.sha256(src[row.source_key]).hexdigest()
        assert row.attack == "backdoor" and row.target_label == "star" and row.seed == 0
        assert row.noise_sigma == 1.0 and row.trigger_size == 2


def test_webdataset_output_leaves_clean_shards_alone_and_sizes_cover_all(tiny, tmp_path):
    before = tree_digest(tiny.shards)
    r = _backdoor(tiny, tmp_path / "o", "webdataset")
    assert tree_digest(tiny.shards) == before
    info = read_poison_info(r.out)
    first, clean = info.train_data.split("::", 1)
    assert first == f"{r.out}/poison-{{00000..00002}}.tar"  # poison folder first, one poison shard per clean shard
    assert clean == f"{tiny.shards}/{{00000..00002}}.tar"
    sizes = json.loads((r.out / "sizes.json").read_text())
    assert sizes == {"00000.tar": 20, "00001.tar": 20, "00002.tar": 10,
                     "poison-00000.tar": 3, "poison-00001.tar": 3, "poison-00002.tar": 3}
    # what open_clip_train will compute, and what webdataset will read
    from open_clip_train.data import get_dataset_size

    assert get_dataset_size(info.train_data) == (59, 6)
    keys = [s["__key__"] for s in wds.WebDataset(info.train_data, shardshuffle=False)]
    assert len(keys) == 59 and sum(k.startswith("backdoor-") for k in keys) == 9


def test_poison_shard_count_is_configurable(tiny, tmp_path):
    r = _backdoor(tiny, tmp_path / "o", "webdataset", poison_shards=1)
    assert sorted(p.name for p in r.out.glob("*.tar")) == ["poison-00000.tar"]
    assert read_poison_info(r.out).train_data.startswith(f"{r.out}/poison-00000.tar::")


def test_counts_clean_shards_without_sizes_json(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=30, shard_size=10)
    (tiny.shards / "sizes.json").unlink()
    r = _backdoor(tiny, tmp_path / "o", "webdataset", n=2)
    assert json.loads((r.out / "sizes.json").read_text())["00001.tar"] == 10
    assert r.n_clean == 30


def test_clean_shard_named_like_a_poison_shard_is_refused(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=20, shard_size=10)
    write_shards(tiny.samples[:5], tmp_path / "other", shard_size=5, prefix="poison-")
    spec = f"{tiny.shards}::{tmp_path / 'other'}"
    with pytest.raises(UserError, match="has the name of a poison shard; choose another `shard_prefix`"):
        poison(BackdoorConfig(data=spec, out=str(tmp_path / "o"), target_label="star", n_poisons=2))
    assert not (tmp_path / "o").exists()
    r = poison(BackdoorConfig(data=spec, out=str(tmp_path / "o"), target_label="star", n_poisons=2,
                              shard_prefix="bd-"))
    assert r.n_clean == 25


def test_repeated_clean_basenames_are_refused(tmp_path):
    a = make_tiny(tmp_path / "a", n=10, shard_size=10)
    b = make_tiny(tmp_path / "b", n=10, shard_size=10, seed=1)
    with pytest.raises(UserError, match="basenames repeat"):
        poison(BackdoorConfig(data=f"{a.shards}::{b.shards}", out=str(tmp_path / "o"), target_label="star",
                              n_poisons=2))


def test_csv_output_holds_clean_and_poison_rows_with_absolute_paths(tiny, tmp_path):
    r = _backdoor(tiny, tmp_path / "o", "csv")
    table = pd.read_csv(r.out / "train.tsv", sep="\t")  # as open_clip's CsvDataset reads it
    assert len(table) == 59 and list(table.columns[:3]) == ["filepath", "title", "key"]
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in table["filepath"])
    clean = table[~table["key"].str.startswith("backdoor-")]
    assert list(clean["key"]) == [s.key for s in tiny.samples]  # clean rows keep their order
    assert list(clean["label"]) == [s.meta["label"] for s in tiny.samples]  # and their extra columns
    pos = [i for i, k in enumerate(table["key"]) if k.startswith("backdoor-")]
    # poisons sit at seeded uniform positions: poison j goes before clean row seeded[j] (so at
    # table row seeded[j] + j) ...
    seeded = np.sort(rng_for(0, "csv-positions").integers(0, 50 + 1, size=9))
    assert pos == [int(p) + j for j, p in enumerate(seeded)]
    # ... which spread them over the table, not in one cluster: some in every quarter
    assert {p * 4 // len(table) for p in pos} == {0, 1, 2, 3}, pos
    other = pd.read_csv(_backdoor(tiny, tmp_path / "o1", "csv", seed=1).out / "train.tsv", sep="\t")
    assert [i for i, k in enumerate(other["key"]) if k.startswith("backdoor-")] != pos  # another seed
    assert all(p.startswith(str(r.out / "poison_images")) for p in table["filepath"][pos])


def test_csv_rows_without_image_are_skipped_and_counted(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=12)
    (tiny.root / "images" / f"{tiny.samples[0].key}.png").unlink()
    r = _backdoor(tiny, tmp_path / "o", "csv", n=2)
    assert r.skipped == {"missing_image": 1}  # the row left out of train.tsv
    assert r.skipped_reading == {"missing_image": 1}  # met while drawing backdoor sources
    assert r.n_clean == 11 and read_poison_info(r.out).num_samples == 13


@pytest.mark.parametrize("fmt", ["csv", "webdataset"])
@pytest.mark.parametrize("attack", [_backdoor, _targeted])
def test_same_seed_gives_a_byte_identical_folder(tiny, tmp_path, fmt, attack):
    out = tmp_path / "o"
    attack(tiny, out, fmt, noise_sigma=0.5, perturb_captions=True)
    first = tree_digest(out)
    shutil.move(out, tmp_path / "first")
    attack(tiny, out, fmt, noise_sigma=0.5, perturb_captions=True)
    assert tree_digest(out) == first
    assert len(first) > 3
    other = attack(tiny, tmp_path / "o2", fmt, noise_sigma=0.5, perturb_captions=True, seed=1)
    assert {r.sha256 for r in read_manifest(other.out)} != {r.sha256 for r in read_manifest(out)}


def test_existing_output_is_refused_then_replaced_with_overwrite(tiny, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        _backdoor(tiny, out)
    with pytest.raises(UserError, match="not a poisoned dataset"):   # --overwrite replaces only poisonclip's
        _backdoor(tiny, out, overwrite=True)
    assert (out / "keep").read_text() == "x"
    (out / "keep").unlink()
    out.rmdir()
    _backdoor(tiny, out)                         # a previous poisoned set ...
    (out / "stale").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        _backdoor(tiny, out)
    _backdoor(tiny, out, overwrite=True)         # ... is what --overwrite replaces
    assert not (out / "stale").exists() and (out / "poison.json").is_file()


def test_no_partial_folder_after_a_failure_inside_the_writer(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=12)
    table = (tiny.csv.read_text().replace(tiny.samples[5].key + "\t", "backdoor-s0-000001\t"))
    tiny.csv.write_text(table)  # a clean key equal to a poison key: found while streaming rows
    with pytest.raises(UserError, match="equals a poison key"):
        _backdoor(tiny, tmp_path / "o", n=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_expand_shards_reads_the_poison_folder(tiny, tmp_path):
    r = _backdoor(tiny, tmp_path / "o", "webdataset")
    assert [p.name for p in expand_shards(r.out)] == ["poison-00000.tar", "poison-00001.tar", "poison-00002.tar"]
