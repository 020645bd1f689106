"""What the poisoned folder records matches what it holds: targeted poisons' manifest hashes,
CSV file paths vs manifest locations, and WebDataset poison shards split unevenly or asked
for in larger number than there are poisons."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter

import pandas as pd
import pytest
import webdataset as wds

from poisonclip.attacks.api import BackdoorConfig, TargetedConfig, TargetSpec, poison
from poisonclip.attacks.manifest import read_manifest
from poisonclip.contracts import read_poison_info
from tests.attack_fixtures import make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("rec") / "d", n=30, shard_size=10)


def _targeted(tiny, out, fmt, **kw):
    imgs = [tiny.root / "images" / f"{tiny.samples[i].key}.png" for i in (3, 4)]
    return poison(TargetedConfig(data=str(tiny.csv if fmt == "csv" else tiny.shards), out=str(out),
                                 targets=(TargetSpec(str(imgs[0]), "moon", 4), TargetSpec(str(imgs[1]), "star", 3)),
                                 noise_sigma=2.0, **kw))


def _tar_members(path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} of one shard."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def test_targeted_manifest_hashes_are_those_of_the_csv_bytes_and_paths_match_locations(tiny, tmp_path):
    r = _targeted(tiny, tmp_path / "o", "csv")
    rows = read_manifest(r.out)
    assert len(rows) == 7 and Counter(row.target_label for row in rows) == {"moon": 4, "star": 3}
    table = pd.read_csv(r.out / "train.tsv", sep="\t")
    path_of = dict(zip(table["key"], table["filepath"]))
    caption_of = dict(zip(table["key"], table["title"]))
    for row in rows:
        # the table points at exactly the file the manifest names ...
        assert path_of[row.key] == str(r.out / row.location)
        # ... and the manifest's hash is that of the bytes there (noise makes each poison unique)
        assert hashlib.sha256((r.out / row.location).read_bytes()).hexdigest() == row.sha256
        assert caption_of[row.key] == row.caption and row.attack == "targeted"
    assert len({row.sha256 for row in rows}) == 7
    # every poison row of the table is in the manifest, and no clean row is
    assert {k for k in table["key"] if k.startswith("targeted-")} == {row.key for row in rows}
    assert len(table) == 30 + 7


def test_targeted_manifest_hashes_are_those_of_the_shard_bytes(tiny, tmp_path):
    r = _targeted(tiny, tmp_path / "o", "webdataset")
    rows = read_manifest(r.out)
    members = {}
    for name in {row.location for row in rows}:
        members.update({k: (name, v) for k, v in _tar_members(r.out / name).items()})
    assert set(members) == {row.key for row in rows}
    for row in rows:
        name, files = members[row.key]
        assert name == row.location
        assert hashlib.sha256(files["png"]).hexdigest() == row.sha256
        assert files["txt"].decode() == row.caption


@pytest.mark.parametrize("n, shards, want", [
    (7, None, [3, 2, 2]),      # one poison shard per clean shard (3): 7 split unevenly
    (8, 3, [3, 3, 2]),
    (3, 5, [1, 1, 1]),         # more poison shards asked for than poisons: one poison each
    (2, None, [1, 1]),         # fewer poisons than clean shards: no empty poison shard
])
def test_webdataset_poison_shards_split_unevenly_and_never_empty(tiny, tmp_path, n, shards, want):
    r = poison(BackdoorConfig(data=str(tiny.shards), out=str(tmp_path / "o"), target_label="star", n_poisons=n,
                              poison_shards=shards))
    names = [f"poison-{i:05d}.tar" for i in range(len(want))]
    assert sorted(p.name for p in r.out.glob("poison-*.tar")) == names
    held = {nm: _tar_members(r.out / nm) for nm in names}
    assert [len(held[nm]) for nm in names] == want
    sizes = json.loads((r.out / "sizes.json").read_text())
    assert {nm: sizes[nm] for nm in names} == dict(zip(names, want))
    assert all(sizes[f"{i:05d}.tar"] == 10 for i in range(3))
    rows = read_manifest(r.out)
    assert Counter(row.location for row in rows) == dict(zip(names, want))
    assert all(row.key in held[row.location] for row in rows)
    info = read_poison_info(r.out)
    assert info.train_data.startswith(f"{r.out}/poison-{{00000..{len(want) - 1:05d}}}.tar::"
                                         if len(want) > 1 else f"{r.out}/poison-00000.tar::")
    # what open_clip_train and webdataset will read: every sample once
    from open_clip_train.data import get_dataset_size

    assert get_dataset_size(info.train_data) == (30 + n, 3 + len(want))
    keys = [s["__key__"] for s in wds.WebDataset(info.train_data, shardshuffle=False)]
    assert len(keys) == len(set(keys)) == 30 + n and sum(k.startswith("backdoor-") for k in keys) == n
