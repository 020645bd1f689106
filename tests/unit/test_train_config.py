"""Training requests -> open_clip_train command lines, without training anything."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from poisonclip.contracts import BackdoorRecord, PoisonInfo, write_poison_info
from poisonclip.data.csv_io import write_csv
from poisonclip.data.wds_io import write_shards
from poisonclip.errors import UserError
from poisonclip.train import dataset
from poisonclip.train.presets import CPU_TINY, HYPER_FIELDS, PAPER_CC3M, PRESETS, get_preset
from poisonclip.train.run import (Processes, TrainConfig, check_fit, launch_command, open_clip_argv, processes,
                                  validate)
from tests.conftest import make_samples


def _parse(argv: list[str]):
    from open_clip_train.params import parse_args

    return parse_args(argv)


@pytest.fixture
def table(tmp_path) -> Path:
    return write_csv(make_samples(40), tmp_path / "t")


def test_every_preset_field_is_a_train_config_field():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(HYPER_FIELDS) <= names
    # TrainConfig's defaults are the default preset's numbers.
    default = TrainConfig(data="d", out="o")
    assert all(getattr(default, k) == getattr(CPU_TINY, k) for k in HYPER_FIELDS)


def test_paper_preset_is_the_papers_setting():
    p = get_preset("paper-cc3m")
    assert (p.model, p.batch_size, p.epochs, p.lr, p.wd, p.gpus) == ("RN50", 1024, 30, 2e-4, 0.02, 8)
    assert set(PRESETS) == {"cpu-tiny", "paper-cc3m"}
    with pytest.raises(UserError, match="cpu-tiny"):
        get_preset("nope")


def test_from_preset_applies_overrides_and_ignores_none():
    cfg = TrainConfig.from_preset("paper-cc3m", data="d", out="o", epochs=2, lr=None)
    assert cfg.epochs == 2 and cfg.lr == PAPER_CC3M.lr and cfg.preset == "paper-cc3m"


def test_argv_is_accepted_by_open_clip_train_and_splits_the_global_batch(table, tmp_path):
    cfg = TrainConfig.from_preset("paper-cc3m", data=str(table), out=str(tmp_path / "runs" / "r1"),
                                  resume=True, gpus=0)
    data = dataset.resolve(table)
    argv = open_clip_argv(cfg, data, Processes("cuda", 8, 1), tmp_path / "runs" / "r1")
    args = _parse(argv)
    assert args.batch_size == 128  # 1024 over 8 processes
    assert (args.model, args.epochs, args.lr, args.wd) == ("RN50", 30, 2e-4, 0.02)
    assert args.train_data == str(table) and args.dataset_type == "csv"
    assert args.train_num_samples == 40
    assert args.resume == "latest" and args.save_most_recent and args.delete_previous_checkpoint
    assert Path(args.logs) / args.name == tmp_path / "runs" / "r1"
    assert args.precision == "amp" and args.device == "cuda"


def test_extra_args_go_last_so_they_win(table, tmp_path):
    cfg = TrainConfig(data=str(table), out=str(tmp_path / "r"), extra_args=("--lr", "0.5"))
    argv = open_clip_argv(cfg, dataset.resolve(table), Processes("cpu", 1, 1), tmp_path / "r")
    assert _parse(argv).lr == 0.5


def test_crop_scale_one_keeps_the_trigger_pixel_exact_in_open_clips_train_transform(table, tmp_path):
    import numpy as np
    import open_clip
    from PIL import Image

    from poisonclip.attacks import triggers

    cfg = TrainConfig(data=str(table), out=str(tmp_path / "r"), crop_scale=1.0)
    args = _parse(open_clip_argv(cfg, dataset.resolve(table), Processes("cpu", 1, 1), tmp_path / "r"))
    assert args.aug_cfg == {"scale": (1.0, 1.0)}
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    patched = triggers.apply(image, triggers.place(image.size, 5, "corner"))
    train_tf = open_clip.image_transform(32, is_train=True, aug_cfg=args.aug_cfg, mean=(0, 0, 0), std=(1, 1, 1))
    for _ in range(5):  # random crops would move or resample the one-pixel checkerboard
        x = train_tf(patched)
        assert np.array_equal((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), np.asarray(patched))


def test_launch_command_single_process_standalone_and_multinode(tmp_path):
    run = tmp_path / "myrun"
    one = launch_command(TrainConfig(data="d", out=str(run)), Processes("cpu", 1, 1), ["--x"], run)
    assert one == [sys.executable, "-m", "poisonclip.train.launch", "--x"]

    two = launch_command(TrainConfig(data="d", out=str(run), cpu_procs=2), Processes("cpu", 2, 1), ["--x"], run)
    assert two[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in two
    assert two[two.index("--nproc-per-node") + 1] == "2"
    assert two[-4:] == ["-m", "poisonclip.train.launch", "--", "--x"]

    cfg = TrainConfig(data="d", out=str(run), nodes=4, node_rank=3, rdzv_endpoint="head:29500")
    multi = launch_command(cfg, Processes("cuda", 8, 4), [], run)
    assert "--standalone" not in multi
    for flag, value in (("--nnodes", "4"), ("--node-rank", "3"), ("--rdzv-endpoint", "head:29500"),
                        ("--rdzv-id", "myrun"), ("--rdzv-backend", "c10d"), ("--nproc-per-node", "8")):
        assert multi[multi.index(flag) + 1] == value


@pytest.mark.parametrize("change, message", [
    (dict(nodes=2), "^nodes: 2: multi-node training needs `rdzv_endpoint`"),
    (dict(resume=True, overwrite=True), "contradict"),
    (dict(epochs=0), "^epochs: must be at least 1, got 0"),
    (dict(precision="fp8"), "^precision: 'fp8'"),
    (dict(node_rank=1), "^node_rank: 1 must be below `nodes`"),
    (dict(threads=0), "^threads: must be at least 1"),
])
def test_bad_requests_are_user_errors(change, message):
    with pytest.raises(UserError, match=message):
        validate(TrainConfig(data="d", out="o", **change))


def test_batch_must_split_over_processes_and_fit_the_data(table):
    data = dataset.resolve(table)
    assert check_fit(TrainConfig(data="d", out="o", batch_size=16), data, Processes("cpu", 1, 1)) == 2
    with pytest.raises(UserError, match="split evenly"):
        check_fit(TrainConfig(data="d", out="o", batch_size=15), data, Processes("cpu", 2, 1))
    with pytest.raises(UserError, match="fewer than one batch"):
        check_fit(TrainConfig(data="d", out="o", batch_size=64), data, Processes("cpu", 1, 1))


def test_gpus_without_a_gpu_is_a_user_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="no CUDA GPU"):
        processes(TrainConfig(data="d", out="o", gpus=2))
    assert processes(TrainConfig(data="d", out="o")).device == "cpu"  # default: CPU when none


# --- dataset resolution ------------------------------------------------------------------

def test_table_resolves_to_csv_with_row_count_and_hash(table):
    d = dataset.resolve(table)
    assert (d.dataset_type, d.num_samples, d.cwd, d.csv_sep) == ("csv", 40, str(table.parent), "\t")
    assert d.sha256 and len(d.sha256) == 64
    assert dataset.resolve(table, hash_data=False).sha256 is None


def test_comma_csv_is_detected(tmp_path):
    t = write_csv(make_samples(3), tmp_path, name="train.csv", sep=",")
    assert dataset.resolve(t).csv_sep == ","


def test_corpus_folder_uses_its_table(table):
    d = dataset.resolve(table.parent)  # a folder holding train.tsv
    assert d.origin == "corpus" and d.train_data == str(table)


def test_shards_count_from_sizes_json_or_by_reading(tmp_path):
    write_shards(make_samples(10), tmp_path / "s", shard_size=4)
    d = dataset.resolve(tmp_path / "s")
    assert d.dataset_type == "webdataset" and d.num_samples == 10
    assert len(d.train_data.split("::")) == 3
    (tmp_path / "s" / "sizes.json").unlink()
    again = dataset.resolve(tmp_path / "s")
    assert again.num_samples == 10 and again.sha256 == d.sha256 and again.num_shards == 3
    # Two processes with one loader each need two shards at least; three are enough.
    place = Processes("cpu", 2, 1)
    assert check_fit(TrainConfig(data="d", out="o", batch_size=4, workers=1), d, place) == 3
    with pytest.raises(UserError, match="at least one shard each"):
        check_fit(TrainConfig(data="d", out="o", batch_size=4, workers=2), d, place)


def test_poisoned_folder_reads_poison_json(table, tmp_path):
    folder = tmp_path / "poisoned"
    folder.mkdir()
    write_poison_info(folder, PoisonInfo(
        attack="backdoor", dataset_type="csv", train_data=str(table), csv_sep="\t", csv_img_key="filepath",
        csv_caption_key="title", num_samples=40, n_clean=39, n_poisons=1, seed=0,
        backdoor=BackdoorRecord("star", 16, "corner")))
    d = dataset.resolve(folder)
    assert d.origin == "poisoned" and d.train_data == str(table) and d.source == str(folder)
    assert d.poison_json == str(folder / "poison.json") and len(d.poison_json_sha256) == 64
    (folder / "poison.json").write_text(json.dumps({"attack": "backdoor"}))
    with pytest.raises(UserError, match="missing field"):
        dataset.resolve(folder)


def test_bad_datasets_are_user_errors(tmp_path, table):
    with pytest.raises(UserError, match="no such file or folder"):
        dataset.resolve(tmp_path / "missing")
    with pytest.raises(UserError, match="no such file"):
        dataset.resolve(tmp_path / "missing.tsv")
    with pytest.raises(UserError, match="missing column"):
        dataset.resolve(table, dataset.CsvFormat(img_key="path"))
    empty = tmp_path / "empty.tsv"
    empty.write_text("filepath\ttitle\nnope.png\ta caption\n")
    with pytest.raises(UserError, match="no usable rows.*missing_image=1"):
        dataset.resolve(empty)


def test_unusable_rows_are_dropped_from_a_checked_copy_not_fatal(tmp_path, table):
    """One bad row in a scraped table costs that row: it is counted, and training reads a
    checked copy (absolute image paths) instead of stopping mid-epoch in open_clip."""
    import pandas as pd

    (table.parent / "images" / "s0003.png").unlink()
    (table.parent / "images" / "s0005.png").write_bytes(b"not an image")
    original = table.read_bytes()
    d = dataset.resolve(table)
    assert d.num_samples == 38 and d.drop_rows == (3, 5)
    assert d.skipped == {"corrupt_image": 1, "missing_image": 1}
    run = tmp_path / "run"
    run.mkdir()
    checked = dataset.use_checked_copy(d, run)
    assert checked.train_data == str(run / dataset.CHECKED_TABLE) and checked.checked_from == str(table)
    dataset.write_checked_table(checked)
    rows = pd.read_csv(checked.train_data, sep="\t")
    assert len(rows) == 38 and "s0003" not in set(rows["key"]) and "s0005" not in set(rows["key"])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in rows["filepath"])
    assert table.read_bytes() == original
