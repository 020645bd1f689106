"""Readers and writers: round trips, atomicity, and every kind of bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisonclip.data import dataset_kind, read_dataset
from poisonclip.data.csv_io import CsvFormat, read_csv, write_csv, write_table
from poisonclip.data.evalset import load_labelled, read_image_folder, write_labelled_csv
from poisonclip.data.sample import SkipReport, decode_image
from poisonclip.data.wds_io import expand_shards, iter_captions, read_shards, shard_pattern, write_shards
from poisonclip.errors import UserError
from poisonclip.io_utils import atomic_dir, sha256_file
from tests.conftest import make_samples


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data))


def test_csv_round_trip_keeps_keys_captions_and_bytes(tmp_path, samples):
    table = write_csv(samples, tmp_path / "ds", extra_columns=("label",))
    back = list(read_csv(table))
    assert [s.key for s in back] == [s.key for s in samples]
    assert [s.caption for s in back] == [s.caption for s in samples]
    assert [s.image for s in back] == [s.image for s in samples]
    assert [int(s.meta["label"]) for s in back] == [s.meta["label"] for s in samples]
    # open_clip reads a tab-separated table with filepath/title columns
    header = table.read_text().splitlines()[0].split("\t")
    assert header[:2] == ["filepath", "title"]


def test_csv_to_webdataset_to_csv_keeps_keys_captions_pixels(tmp_path, samples):
    table = write_csv(samples, tmp_path / "a")
    shards = write_shards(read_csv(table), tmp_path / "wds", shard_size=5)
    assert [p.name for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    sizes = json.loads((tmp_path / "wds" / "sizes.json").read_text())
    assert sizes == {"00000.tar": 5, "00001.tar": 5, "00002.tar": 2}
    table2 = write_csv(read_shards(tmp_path / "wds"), tmp_path / "b")
    back = list(read_csv(table2))
    assert [s.key for s in back] == [s.key for s in samples]
    assert [s.caption for s in back] == [s.caption for s in samples]
    for a, b in zip(back, samples):
        np.testing.assert_array_equal(_pixels(a.image), _pixels(b.image))


def test_webdataset_members_follow_img2dataset_layout_and_webdataset_reads_them(tmp_path, samples):
    import webdataset as wds

    write_shards(samples[:3], tmp_path)
    with tarfile.open(tmp_path / "00000.tar") as tf:
        names = tf.getnames()
    assert names[:3] == ["s0000.png", "s0000.txt", "s0000.json"]
    ds = wds.WebDataset(str(tmp_path / "00000.tar"), shardshuffle=False).decode("pil")
    got = [(d["__key__"], d["txt"], d["json"]["label"]) for d in ds]
    assert got == [(s.key, s.caption, s.meta["label"]) for s in samples[:3]]


def test_shards_are_byte_identical_for_the_same_input(tmp_path, samples):
    write_shards(samples, tmp_path / "a", shard_size=4)
    write_shards(samples, tmp_path / "b", shard_size=4)
    for p in sorted((tmp_path / "a").iterdir()):
        assert sha256_file(p) == sha256_file(tmp_path / "b" / p.name)


def test_brace_pattern_folder_and_joined_sources(tmp_path, samples):
    paths = write_shards(samples, tmp_path / "wds", shard_size=4)
    pattern = shard_pattern(paths)
    assert pattern.endswith("{00000..00002}.tar")
    assert expand_shards(pattern) == paths == expand_shards(tmp_path / "wds")
    assert len(expand_shards(f"{paths[0]}::{paths[1]}")) == 2
    assert dataset_kind(pattern) == "webdataset" and dataset_kind("x/train.tsv") == "csv"
    assert [c for _, c in iter_captions(pattern)] == [s.caption for s in samples]


def test_relative_paths_resolve_against_the_table_folder(tmp_path, samples, monkeypatch):
    table = write_csv(samples[:2], tmp_path / "ds")
    monkeypatch.chdir(tmp_path)  # not the table's folder
    assert len(list(read_csv(Path("ds") / table.name))) == 2


def test_configurable_columns_and_comma_separator(tmp_path, samples):
    write_csv(samples[:2], tmp_path)  # images only
    rows = [{"img": f"images/{s.key}.png", "text": s.caption} for s in samples[:2]]
    table = write_table(tmp_path / "other.csv", rows, ["img", "text"], sep=",")
    got = list(read_csv(table, CsvFormat(img_key="img", caption_key="text")))
    assert [s.caption for s in got] == [s.caption for s in samples[:2]]


# --- bad input: user mistakes are UserErrors -------------------------------------------

def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        list(read_csv(tmp_path / "nope.tsv"))


def test_missing_column_is_a_user_error_naming_columns(tmp_path, samples):
    table = write_csv(samples[:1], tmp_path)
    with pytest.raises(UserError, match=r"missing column\(s\) \['caption'\]"):
        list(read_csv(table, CsvFormat(caption_key="caption")))


def test_empty_csv_is_a_user_error(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="empty"):
        list(read_csv(tmp_path / "empty.csv"))


def test_missing_shards_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such shard"):
        expand_shards(tmp_path / "{00000..00001}.tar")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(UserError, match="no .tar shards"):
        expand_shards(tmp_path / "emptydir")


# --- bad samples inside a dataset: skipped and counted per reason ----------------------

def _bad_csv(tmp_path: Path, samples) -> Path:
    table = write_csv(samples[:2], tmp_path)
    img_dir = tmp_path / "images"
    (img_dir / "garbage.png").write_bytes(b"not an image at all")
    good = samples[0].image
    (img_dir / "trunc.png").write_bytes(good[: len(good) // 2])
    lines = table.read_bytes().splitlines(keepends=True)
    extra = [
        b"images/garbage.png\tgarbage caption\tg\n",
        b"images/trunc.png\ttruncated caption\tt\n",
        b"images/absent.png\tabsent caption\ta\n",
        b"images/s0000.png\t\tempty\n",
        b"images/s0001.png\tcaf\xe9 latin-1 caption\tl1\n",
    ]
    table.write_bytes(b"".join(lines) + b"".join(extra))
    return table


def test_corrupt_rows_in_a_csv_are_skipped_and_counted(tmp_path, samples):
    report = SkipReport()
    got = list(read_csv(_bad_csv(tmp_path, samples), report=report))
    assert [s.key for s in got] == ["s0000", "s0001"]
    assert report == {"corrupt_image": 2, "missing_image": 1, "missing_caption": 1,
                      "caption_not_utf8": 1}
    assert "skipped 5 samples" in report.summary()


def test_corrupt_samples_in_shards_are_skipped_and_counted(tmp_path, samples):
    good = samples[0].image
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        add("ok.png", good); add("ok.txt", b"fine caption")
        add("bad.png", b"garbage"); add("bad.txt", b"caption")
        add("noimg.txt", b"caption only")
        add("nocap.png", good)
        add("latin.png", good); add("latin.txt", b"caf\xe9")
        add("badjson.png", good); add("badjson.txt", b"c"); add("badjson.json", b"{not json")
    (tmp_path / "00000.tar").write_bytes(buf.getvalue())
    report = SkipReport()
    got = list(read_shards(tmp_path, report))
    assert [s.key for s in got] == ["ok"]
    assert report == {"corrupt_image": 1, "missing_image": 1, "missing_caption": 1,
                      "caption_not_utf8": 1, "bad_json": 1}


def test_truncated_tar_keeps_earlier_samples_and_reports(tmp_path, samples):
    write_shards(samples, tmp_path, shard_size=100)
    shard = tmp_path / "00000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    report = SkipReport()
    got = list(read_shards(tmp_path, report))
    assert 0 < len(got) < len(samples)
    assert report["truncated_tar"] == 1


def test_decompression_bomb_is_refused(tmp_path, samples, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # our 16x16 images exceed it
    report = SkipReport()
    table = write_csv(samples[:3], tmp_path)
    assert list(read_csv(table, report=report)) == []
    assert report == {"decompression_bomb": 3}


# --- labelled sets ----------------------------------------------------------------------

def test_labelled_csv_and_image_folder_agree(tmp_path, samples):
    names = ["cat", "dog", "fox"]
    table = write_labelled_csv(samples, names, tmp_path / "csv")
    a = load_labelled(table)
    assert a.classnames == names and a.labels == [s.meta["label"] for s in samples]
    root = tmp_path / "folder"
    for s in samples:
        d = root / names[s.meta["label"]]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{s.key}.png").write_bytes(s.image)
    b = read_image_folder(root)
    assert b.classnames == names
    # the same image gets the same label either way (4 images per class, so sorted label lists
    # would agree even if the classes were permuted): compare key -> label and key -> bytes
    truth = {s.key: s.meta["label"] for s in samples}
    assert {s.key: int(s.meta["label"]) for s in a.samples} == truth
    assert {Path(s.meta["source_path"]).stem: int(s.meta["label"]) for s in b.samples} == truth
    assert {s.key: s.image for s in a.samples} == {Path(s.meta["source_path"]).stem: s.image for s in b.samples}


def test_labelled_csv_with_unknown_label_is_a_user_error(tmp_path, samples):
    table = write_labelled_csv(samples[:3], ["cat", "dog", "fox"], tmp_path)
    (tmp_path / "classnames.txt").write_text("cat\ndog\n")  # class 2 no longer exists
    with pytest.raises(UserError, match="neither a class name nor an index"):
        load_labelled(table)


# --- atomic output ----------------------------------------------------------------------

def test_atomic_dir_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_output_unless_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        with atomic_dir(tmp_path / "out"):
            pass
    with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]


def test_read_dataset_dispatches_on_format(tmp_path):
    s = make_samples(3, seed=1)
    write_shards(s, tmp_path / "w")
    t = write_csv(s, tmp_path / "c")
    assert [x.key for x in read_dataset(tmp_path / "w")] == [x.key for x in read_dataset(t)]
