"""The hand-written training loop the defenses share (CleanCLIP's fine-tuning, RoCLIP's
training): pairs in memory, a seeded order, AdamW with open_clip_train's weight-decay split,
a cosine schedule with warm-up, the temperature clamp, and a run folder the evaluator reads.

Why not open_clip_train: both defenses change the loss inside a step (CleanCLIP adds
image-image and text-text terms on augmented views; RoCLIP swaps a caption for its image's
nearest neighbour in a pool of past captions), and open_clip_train's step computes only its
own image-caption loss. What each defense computes per batch is its ``step`` function; the
rest is here, written once.

Every random draw comes from a numpy generator seeded by ``seed`` (one stream per purpose);
a model built from scratch draws its initial weights from torch's global generator, which is
seeded and restored around the build (``fresh_model``).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from poisonclip.contracts import RunInfo, write_run_info
from poisonclip.data import CsvFormat, SkipReport, read_dataset
from poisonclip.errors import UserError
from poisonclip.io_utils import atomic_write_bytes, atomic_write_json
from poisonclip.train.run import CHECKPOINT_DIR, CONFIG_FILE

# Streams of the seed, one per purpose, so adding one never shifts another.
STREAM_SUBSET, STREAM_ORDER, STREAM_AUG = 1, 2, 3


@dataclass(frozen=True)
class Pairs:
    """Image-caption pairs held in memory (decoded once), and where they came from."""

    images: list[Image.Image]
    captions: list[str]
    data: Any                      # train.dataset.TrainData

    def __len__(self) -> int:
        return len(self.images)


def load_pairs(data: str | Path, batch_size: int, subset: int | None = None, seed: int = 0) -> Pairs:
    """The usable pairs of ``data`` (a table, shards, a corpus or poisoned folder); with
    ``subset``, that many drawn at random (the same ones for the same seed)."""
    from poisonclip.train.dataset import resolve

    td = resolve(data, hash_data=True)
    images, captions = [], []
    for s in read_dataset(td.train_data, CsvFormat(td.img_key, td.caption_key, td.csv_sep), SkipReport()):
        images.append(s.decode())
        captions.append(s.caption)
    if subset is not None and subset < len(images):
        pick = np.sort(np.random.default_rng([seed, STREAM_SUBSET]).choice(len(images), subset, replace=False))
        images, captions = [images[i] for i in pick], [captions[i] for i in pick]
    if len(images) < batch_size:
        raise UserError(f"{data}: {len(images)} usable pairs, fewer than one batch of {batch_size}; "
                        "lower `batch_size` or give more data")
    return Pairs(images, captions, td)


def fresh_model(name: str, seed: int, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model, validation transform, tokenizer) of open_clip model ``name`` with initial
    weights drawn from ``seed`` (torch's global generator is seeded and then restored)."""
    import open_clip
    import torch

    from poisonclip.train.models import check_model, register_models

    check_model(name)
    register_models()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
    return model, preprocess, open_clip.get_tokenizer(name)


def _param_groups(model: Any, wd: float) -> list[dict[str, Any]]:
    """open_clip_train's split: no weight decay on gains, biases, norms and the logit scale."""
    decay, rest = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (rest if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n else decay).append(p)
    return [{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    lr: float
    wd: float
    warmup: int
    seed: int
    device: str = "cpu"
    threads: int | None = None


# One step of a defense: (model, the batch's indices, epoch) -> (loss tensor, {part: value}).
Step = Callable[[Any, Sequence[int], int], tuple[Any, Mapping[str, float]]]


@dataclass(frozen=True)
class Trained:
    curve: tuple[float, ...]
    epoch_stats: tuple[dict[str, Any], ...]
    steps: int
    wall_s: float


def run_loop(model: Any, n: int, sch: Schedule, step_fn: Step, say: Callable[[str], None]) -> Trained:
    """Train ``model`` for ``sch.epochs`` over ``n`` samples in a seeded order (whole batches)."""
    import torch

    if sch.threads:
        torch.set_num_threads(sch.threads)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, sch.wd), lr=sch.lr, betas=(0.9, 0.98), eps=1e-6)
    order = np.random.default_rng([sch.seed, STREAM_ORDER])
    per_epoch = n // sch.batch_size
    total = per_epoch * sch.epochs
    from open_clip_train.scheduler import cosine_lr   # the trainer's own schedule, step by step

    set_lr = cosine_lr(opt, sch.lr, sch.warmup, total)
    curve, stats, step = [], [], 0
    t0 = time.perf_counter()
    for epoch in range(sch.epochs):
        perm = order.permutation(n)
        losses: list[float] = []
        parts: dict[str, list[float]] = {}
        for b in range(per_epoch):
            set_lr(step)
            loss, part = step_fn(model, perm[b * sch.batch_size:(b + 1) * sch.batch_size], epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():   # as open_clip_train: the temperature stays within CLIP's bound
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            for k, v in part.items():
                parts.setdefault(k, []).append(float(v))
            step += 1
        curve.append(float(np.mean(losses)))
        stats.append({"epoch": epoch + 1, "loss": curve[-1], "steps": per_epoch,
                      **{k: float(np.mean(v)) for k, v in parts.items()}})
        say(f"epoch {epoch + 1}/{sch.epochs}: loss {curve[-1]:.4f}")
    model.eval()
    return Trained(tuple(curve), tuple(stats), total, time.perf_counter() - t0)


def write_run(run_dir: Path, model: Any, name: str, preset: str, pairs: Pairs, sch: Schedule, done: Trained,
              config: Mapping[str, Any]) -> RunInfo:
    """The run folder `poisonclip eval` reads: ``checkpoints/epoch_<n>.pt`` in open_clip_train's
    layout (``{"epoch", "name", "state_dict"}``: tensors only, for ``weights_only=True``),
    ``config.json``, then ``run.json`` (last) with the checkpoint relative to the folder."""
    import torch

    buf = io.BytesIO()
    torch.save({"epoch": sch.epochs, "name": preset, "state_dict": model.state_dict()}, buf)
    rel = f"{CHECKPOINT_DIR}/epoch_{sch.epochs}.pt"
    atomic_write_bytes(run_dir / rel, buf.getvalue())
    atomic_write_json(run_dir / CONFIG_FILE, {"config": dict(config), "model": name, "num_samples": len(pairs),
                                              "steps_per_epoch": len(pairs) // sch.batch_size})
    td, wall = pairs.data, done.wall_s
    info = RunInfo(model=name, checkpoint=rel, seed=sch.seed, epochs=sch.epochs, steps=done.steps,
                   batch_size=sch.batch_size, world_size=1, device=sch.device, precision="fp32", preset=preset,
                   data=td.source, data_origin=td.origin, dataset_type=td.dataset_type, train_data=td.train_data,
                   num_samples=len(pairs), dataset_sha256=td.sha256, poison_json=td.poison_json,
                   poison_json_sha256=td.poison_json_sha256, wall_time_s=round(wall, 3),
                   samples_per_s=round(done.steps * sch.batch_size / wall, 3) if wall > 0 else 0.0,
                   train_time_s=round(wall, 3), loss_curve=done.curve, epoch_stats=done.epoch_stats,
                   config=CONFIG_FILE)
    write_run_info(run_dir, info)
    return info
