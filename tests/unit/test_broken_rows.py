"""One bad row never stops a job: every reader skips it and counts it under the same reason.

The central test builds one table holding one row of each broken kind and reads it through
`poisonclip data info`, `poisonclip poison backdoor` (poison.json), training's dataset check
and the evaluation-set loader: all four give the same counts.
"""

from __future__ import annotations

import io
import json
import re
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import BmpImagePlugin, EpsImagePlugin, Image, TiffImagePlugin
from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.data.csv_io import read_csv, write_csv
from poisonclip.data.evalset import load_labelled
from poisonclip.data.sample import SKIP_REASONS, CorruptSample, Sample, SkipReport, check_image_file, decode_image
from poisonclip.data.wds_io import read_shards, write_shards
from poisonclip.errors import UserError
from poisonclip.train import dataset as train_dataset
from tests.attack_fixtures import CLASSES, make_tiny

runner = CliRunner()

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"


def _bmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, "BMP")
    return buf.getvalue()


def _tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "TIFF")
    return buf.getvalue()


def _png_bomb(w: int = 20_000, h: int = 20_000) -> bytes:
    """A 60-byte PNG whose header claims w x h pixels (no pixel data needed to refuse it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def _counts(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"([a-z_0-9]+)=(\d+)", " ".join(text.split()))}


def _append(table: Path, *rows: bytes) -> None:
    with open(table, "ab") as f:
        for r in rows:
            f.write(r + b"\n")


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A table of 40 good rows (label column = class name = the caption) plus one row of each
    broken kind a CSV can hold; returns (root, table, expected counts)."""
    root = tmp_path_factory.mktemp("broken") / "d"
    tiny = make_tiny(root, n=40)
    table = root / "t.tsv"
    lines = ["filepath\ttitle\tkey\tlabel"]
    for s in tiny.samples:
        name = CLASSES[s.meta["label"]]
        lines.append(f"images/{s.key}.png\t{name}\t{s.key}\t{name}")
    table.write_text("\n".join(lines) + "\n")
    (root / "images" / "text.png").write_bytes(b"hello, I am a text file named .png\n")
    (root / "images" / "pic.bmp").write_bytes(_bmp())
    (root / "images" / "doc.eps").write_bytes(EPS)
    (root / "images" / "bomb.png").write_bytes(_png_bomb())
    good = b"images/k00001.png"
    _append(table,
            good + b"\t\tb-empty\t",                         # missing_caption
            good + b"\tst\xffar\tb-utf8\tst\xffar",          # caption_not_utf8
            good + b"\tstar\tb-\xffkey\tstar",               # key_not_utf8
            b"images/\xff.png\tstar\tb-path\tstar",          # path_not_utf8
            b"images/nope.png\tstar\tb-missing\tstar",       # missing_image
            b"images/text.png\tstar\tb-text\tstar",          # corrupt_image
            b"images/pic.bmp\tstar\tb-bmp\tstar",            # unsupported_format
            b"images/doc.eps\tstar\tb-eps\tstar",            # unsupported_format
            b"images/bomb.png\tstar\tb-bomb\tstar",          # decompression_bomb
            good + b"\tstar\tb-extra\tstar\tone field too many",  # bad_row
            )
    want = {"missing_caption": 1, "caption_not_utf8": 1, "key_not_utf8": 1, "path_not_utf8": 1,
            "missing_image": 1, "corrupt_image": 1, "unsupported_format": 2, "decompression_bomb": 1,
            "bad_row": 1}
    assert set(want) <= set(SKIP_REASONS)
    return root, table, want


def test_every_reader_counts_a_broken_table_alike(broken, tmp_path):
    root, table, want = broken
    # data info
    r = runner.invoke(app, ["data", "info", str(table)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("40 readable samples") and _counts(r.output) == want
    # poison: the clean rows written are the 40 good ones; the rest are counted in poison.json
    out = tmp_path / "p"
    r = runner.invoke(app, ["poison", "backdoor", str(table), "--out", str(out), "--label", "star",
                            "--n-poisons", "2", "--patch-size", "4"])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "poison.json").read_text())
    assert info["skipped"] == want and info["n_clean"] == 40
    assert info["skipped_reading"]["caption_not_utf8"] == 1  # the caption search met it too
    rows = (out / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(rows) == 42
    for row in rows:
        check_image_file(row.split("\t")[0])  # open_clip can open every image
    # train: the poisoned folder carries the counts; the raw table is trained through a
    # checked copy without the broken rows, with the same counts
    assert train_dataset.resolve(out, hash_data=False).skipped == want
    raw = train_dataset.resolve(table, hash_data=False)
    assert raw.skipped == want and raw.num_samples == 40 and len(raw.drop_rows) == sum(want.values())
    # eval-set loader (label column, class list beside the table)
    report = SkipReport()
    ls = load_labelled(table, report=report)
    assert len(ls.samples) == 40 and dict(report) == want


def test_a_caption_that_is_not_utf8_costs_one_row_of_poison(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=30)
    _append(tiny.csv, b"images/k00001.png\ta shiny st\xffar \xfe\tbad-1\t2")
    r = runner.invoke(app, ["poison", "backdoor", str(tiny.csv), "--out", str(tmp_path / "o"), "--label", "star",
                            "--n-poisons", "2"])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "o" / "poison.json").read_text())
    assert info["skipped"] == {"caption_not_utf8": 1} and info["n_clean"] == 30
    assert info["skipped_reading"] == {"caption_not_utf8": 1}


def test_unreadable_clean_images_are_left_out_of_the_poisoned_table(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=30)
    imgs = sorted((tiny.root / "images").iterdir())
    imgs[3].write_text("not an image at all")
    imgs[7].unlink()
    out = tmp_path / "o"
    r = runner.invoke(app, ["poison", "backdoor", str(tiny.csv), "--out", str(out), "--label", "star",
                            "--n-poisons", "2"])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "poison.json").read_text())
    assert info["skipped"] == {"corrupt_image": 1, "missing_image": 1} and info["n_clean"] == 28
    paths = [ln.split("\t")[0] for ln in (out / "train.tsv").read_text().splitlines()[1:]]
    assert str(imgs[3]) not in paths and str(imgs[7]) not in paths and len(paths) == 30


# --------------------------------------------------------------------------- image formats

def test_only_jpeg_png_webp_are_parsed(monkeypatch):
    def never(*_a, **_k):
        raise AssertionError("a refused format's Pillow plugin was run")

    for plugin in (BmpImagePlugin.BmpImageFile, EpsImagePlugin.EpsImageFile, TiffImagePlugin.TiffImageFile):
        monkeypatch.setattr(plugin, "_open", never)
    for data in (_bmp(), EPS, _tiff()):
        with pytest.raises(CorruptSample) as e:
            decode_image(data)
        assert e.value.reason == "unsupported_format"
    with pytest.raises(CorruptSample) as e:
        decode_image(b"plain text")
    assert e.value.reason == "corrupt_image"
    with pytest.raises(CorruptSample) as e:
        decode_image(_png_bomb())
    assert e.value.reason == "decompression_bomb"
    for ext in ("png", "jpg", "webp"):
        s = Sample.from_pil("k", Image.new("RGB", (8, 8), (1, 2, 3)), "c", ext=ext)
        assert decode_image(s.image).size == (8, 8)


def test_a_bmp_inside_a_shard_is_a_counted_skip(tmp_path):
    good = Sample.from_pil("a", Image.new("RGB", (8, 8)), "fine")
    bmp = Sample(key="b", image=_bmp(), caption="a bmp posing as jpg", ext="jpg")
    write_shards([good, bmp], tmp_path / "w")
    report = SkipReport()
    assert [s.key for s in read_shards(tmp_path / "w", report)] == ["a"]
    assert report == {"unsupported_format": 1}


def test_table_rows_naming_devices_or_folders_are_skipped(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=5)
    _append(tiny.csv, b"/dev/zero\tzero\tz\t0", b"images\ta folder\tf\t0")
    report = SkipReport()
    assert len(list(read_csv(tiny.csv, report=report))) == 5
    assert report == {"missing_image": 2}


# --------------------------------------------------------------------------- sizes.json, keys

@pytest.mark.parametrize("value", ['"ten"', "-3", "1.5", "true", "null"])
def test_bad_sizes_json_is_a_user_error_naming_file_and_key(tmp_path, value):
    from poisonclip.data.wds_io import shard_sizes

    tiny = make_tiny(tmp_path / "d", n=20, shard_size=10)
    sizes = tiny.shards / "sizes.json"
    sizes.write_text('{"00000.tar": 10, "00001.tar": %s}' % value)
    shards = sorted(tiny.shards.glob("*.tar"))
    for call in (lambda: shard_sizes(shards), lambda: train_dataset.resolve(tiny.shards, hash_data=False)):
        with pytest.raises(UserError) as e:
            call()
        assert str(sizes) in str(e.value) and "'00001.tar'" in str(e.value)
    r = runner.invoke(app, ["poison", "backdoor", str(tiny.shards), "--out", str(tmp_path / "o"),
                            "--label", "star", "--n-poisons", "2"])
    assert r.exit_code == 2 and "00001.tar" in r.output and "Traceback" not in r.output


def test_keys_that_sanitise_alike_keep_their_own_images(tmp_path):
    rng = np.random.default_rng(0)
    samples = [Sample.from_pil(k, Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), f"caption of {k}")
               for k in ("x.1", "x_1", "x 1", "y")]
    want = {s.key: (s.caption, s.image) for s in samples}
    write_shards(samples, tmp_path / "w")
    got = {s.meta.get("key", s.key): s for s in read_shards(tmp_path / "w")}
    assert len(got) == 4
    back = list(read_shards(tmp_path / "w"))
    assert sorted(s.caption for s in back) == sorted(c for c, _ in want.values())
    for s in back:  # each caption still sits with its own image
        key = s.caption.removeprefix("caption of ")
        assert s.image == want[key][1]
    table = write_csv(samples, tmp_path / "c")
    for s in read_csv(table):
        assert (s.caption, s.image) == want[s.key]


def test_convert_skips_and_counts_empty_and_repeated_keys(tmp_path):
    img = Sample.from_pil("k", Image.new("RGB", (8, 8)), "c").image
    shard = tmp_path / "s" / "00000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in ((".png", img), (".txt", b"no key"), ("a.png", img), ("a.txt", b"first a"),
                           ("b.png", img), ("b.txt", b"a b"), ("a.png", img), ("a.txt", b"second a")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    r = runner.invoke(app, ["data", "convert", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--to", "csv"])
    assert r.exit_code == 0, r.output
    assert _counts(r.output) == {"empty_key": 1, "duplicate_key": 1}
    assert [s.caption for s in read_csv(tmp_path / "o" / "train.tsv")] == ["first a", "a b"]


def test_training_counts_what_it_skips_in_shards_without_sizes(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=20, shard_size=10)
    (tiny.shards / "sizes.json").unlink()
    with tarfile.open(tiny.shards / "00000.tar", "a") as tf:  # plus one sample without an image
        info = tarfile.TarInfo("zz.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    data = train_dataset.resolve(tiny.shards, hash_data=False)
    assert data.num_samples == 20 and data.skipped == {"missing_image": 1}


def test_the_docs_list_every_skip_reason():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "untrusted-input.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_0-9]+)` \|", doc, re.M))
    assert listed == set(SKIP_REASONS)


def test_one_very_long_row_does_not_stop_caption_search(tmp_path):
    from poisonclip.attacks.captions import search_captions

    t = tmp_path / "long.tsv"
    rows = ["filepath\ttitle", *(f"a{i}.png\ta moon {i}" for i in range(50)), "x.png\t" + "moon " * 600_000,
            *(f"b{i}.png\tmoon b{i}" for i in range(50))]
    t.write_text("\n".join(rows) + "\n")
    cs = search_captions(t, ["moon"])["moon"]
    assert cs.n_scanned == 101 and len(cs.captions) == 101
