"""Dataset access attacks use (data/: tar scan, caption stream, lookups, shard sizes) and the source draw."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from poisonclip.attacks.sources import draw_sources
from poisonclip.data.caption_stream import iter_caption_batches
from poisonclip.data.lookup import find_sample
from poisonclip.data.sample import SkipReport
from poisonclip.data.tar_io import scan_groups
from poisonclip.data.wds_io import read_shards, shard_sizes
from tests.attack_fixtures import make_tiny


def _tar(path, members, fmt):
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _members_for(samples, prefix=""):
    out = []
    for s in samples:
        out += [(f"{prefix}{s.key}.png", s.image), (f"{prefix}{s.key}.txt", s.caption.encode()),
                (f"{prefix}{s.key}.json", json.dumps({"label": s.meta["label"]}).encode())]
    return out


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_caption_scan_agrees_with_the_reader_for_every_tar_flavour(tmp_path, fmt):
    tiny = make_tiny(tmp_path / "d", n=6)
    deep = "folder/" + "x" * 120 + "/"  # > 100 chars: ustar prefix, GNU long name or pax path
    members = _members_for(tiny.samples[:3], deep if fmt != tarfile.USTAR_FORMAT else "sub/dir/")
    members += _members_for(tiny.samples[3:])
    members += [("café-ü.txt", "ünïcode caption".encode()), ("café-ü.png", tiny.samples[0].image)]
    shard = _tar(tmp_path / "00000.tar", members, fmt)
    want = [s.caption for s in read_shards(shard, verify=False)]
    got = [c for b in iter_caption_batches(shard) for c in b.to_pylist()]
    assert got == want and len(got) == 7
    keys = [k for k, _ in scan_groups(shard, SkipReport())]
    assert keys == [s.key for s in read_shards(shard, verify=False)]


def test_caption_scan_counts_what_it_skips(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=3)
    members = _members_for(tiny.samples)
    members += [("noimg.txt", b"a caption without image"), ("nocap.png", tiny.samples[0].image),
                ("blank.png", tiny.samples[0].image), ("blank.txt", b"   "),
                ("badutf.png", tiny.samples[0].image), ("badutf.txt", b"\xff\xfe")]
    shard = _tar(tmp_path / "s.tar", members, tarfile.USTAR_FORMAT)
    report = SkipReport()
    got = [c for b in iter_caption_batches(shard, report=report) for c in b.to_pylist()]
    assert got == [s.caption for s in tiny.samples]
    assert report == {"missing_image": 1, "missing_caption": 2, "caption_not_utf8": 1}


def test_truncated_shard_keeps_what_came_before_like_the_reader(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=5)
    data = _tar(tmp_path / "s.tar", _members_for(tiny.samples), tarfile.USTAR_FORMAT).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    r1, r2 = SkipReport(), SkipReport()
    got = [c for b in iter_caption_batches(cut, report=r1) for c in b.to_pylist()]
    want = [s.caption for s in read_shards(cut, r2, verify=False)]
    assert got == want and 0 < len(got) < 5
    assert r1["truncated_tar"] == r2["truncated_tar"] == 1


def test_garbage_shard_is_a_counted_skip(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 40)
    report = SkipReport()
    assert list(iter_caption_batches(bad, report=report)) == []
    assert report == {"truncated_tar": 1}


def test_shard_sizes_from_sizes_json_or_counted(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=25, shard_size=10)
    shards = sorted(tiny.shards.glob("*.tar"))
    assert shard_sizes(shards) == [10, 10, 5]
    (tiny.shards / "sizes.json").write_text('{"00000.tar": 10}')
    assert shard_sizes(shards) == [10, 10, 5]  # the other two counted


def test_find_sample_by_key_in_csv_and_shards(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=30, shard_size=10)
    want = tiny.samples[17]
    for source in (tiny.csv, tiny.shards):
        s = find_sample(source, want.key)
        assert s is not None and s.image == want.image and s.caption == want.caption
        assert str(s.meta["label"]) == str(want.meta["label"])
        assert find_sample(source, "no-such-key") is None


def test_draw_sources_is_seeded_distinct_and_respects_exclusion(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=40, shard_size=10)
    for source in (tiny.csv, tiny.shards):
        a = draw_sources(source, 12, np.random.default_rng(0), frozenset({"1"}), pool_factor=0)
        b = draw_sources(source, 12, np.random.default_rng(0), frozenset({"1"}), pool_factor=0)
        keys = [s.key for s in a.samples]
        assert keys == [s.key for s in b.samples] and len(set(keys)) == 12
        assert all(str(s.meta["label"]) != "1" for s in a.samples)
        assert a.n_excluded == 10 and a.n_eligible_seen == 30


def test_draw_sources_is_roughly_uniform(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=20)
    counts = dict.fromkeys((s.key for s in tiny.samples), 0)
    rng = np.random.default_rng(0)
    for _ in range(400):
        for s in draw_sources(tiny.csv, 5, rng, pool_factor=0).samples:
            counts[s.key] += 1
    # each of 20 images is drawn with probability 1/4 per draw: 100 expected, sd ~8.7
    assert min(counts.values()) > 60 and max(counts.values()) < 140


def test_drawn_shard_samples_equal_what_the_reader_yields(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=30, shard_size=10)
    canon = {s.key: s for s in read_shards(tiny.shards)}
    draw = draw_sources(tiny.shards, 8, np.random.default_rng(2), pool_factor=0)
    assert len(draw.samples) == 8
    for s in draw.samples:
        c = canon[s.key]
        assert (s.image, s.caption, dict(s.meta), s.ext) == (c.image, c.caption, dict(c.meta), c.ext)
