"""RoCLIP-style robust training (Yang, Mirzasoleiman et al., NeurIPS 2023): train on the
(poisoned) data, but in every K-th epoch pair each image not with its own caption but with
the caption most similar to it in a pool of recently seen captions.

A poison pairs an image with a caption chosen by the attacker; the nearest caption to a
poison's image in a large, changing pool is rarely that caption, so the poisoned pair is
seen as a pair only in the plain epochs, too seldom to be learned, while clean pairs, whose
image lies near captions like its own, keep their meaning.

The recipe followed is RoCLIP's published code (BigML-CS-UCLA/RoCLIP, ``get_loss``):

* the pool is a first-in first-out queue of caption embeddings (detached: no gradient flows
  into it), an NNCLR-style memory bank;
* in a matching epoch the positive of image i is the pool embedding nearest (cosine) to image
  i's embedding, and the loss is the symmetric image-text InfoNCE (open_clip's ``ClipLoss``)
  between the images and those captions; the text encoder gets no gradient in these steps;
* the other epochs are plain CLIP training; the logit scale is clamped at log 100.

What differs (and why):

* matching epochs are the epochs whose 1-based number is a multiple of ``nn_every`` (RoCLIP:
  ``epoch % break_epoch == 0``), so with the default 2 every other epoch, the first a plain one;
* the pool takes every batch's captions in every epoch (RoCLIP's only in matching epochs,
  after a random start): it is then never empty or random when matching begins;
* augmentation: the image and caption of every pair go through CleanCLIP's augmentations
  (``defend.cleanclip``; RoCLIP uses its own image augmentation) when ``augment`` is on;
* scale: the paper's pool holds 2^16 captions of 1M pairs; the default here (1,024) is a
  similar share of the embedded corpus. The loop is ``defend.loop`` (open_clip_train's step
  has no place for the nearest-neighbour swap).

Output (``--out``): ``run/``, ``eval/`` (+ ``eval-before/`` with ``--before``, a model trained
the ordinary way on the same data) and ``defense.json``, as every defense writes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from poisonclip.contracts import (DEFENSE_BEFORE_DIR, DEFENSE_EVAL_DIR, DEFENSE_RUN_DIR, POISON_INFO_FILE, DefenseInfo,
                                  RunInfo, read_poison_info, write_defense_info)
from poisonclip.defend.cleanclip import augment_caption, augment_image
from poisonclip.defend.filter import DEFENSE_KIND
from poisonclip.defend.loop import STREAM_AUG, Schedule, fresh_model, load_pairs, run_loop, write_run
from poisonclip.defend.measure import MeasureConfig, timed_eval
from poisonclip.errors import SettingError
from poisonclip.io_utils import atomic_dir, input_paths
from poisonclip.train.presets import CPU_TINY

PRESET = "roclip"


@dataclass(frozen=True)
class RoClipConfig:
    data: Path                        # the training data (a poisoned folder, a table, shards, a corpus folder)
    out: Path
    model: str = CPU_TINY.model       # open_clip model name, trained from scratch
    epochs: int = CPU_TINY.epochs
    batch_size: int = CPU_TINY.batch_size
    lr: float = CPU_TINY.lr
    wd: float = CPU_TINY.wd
    warmup: int = CPU_TINY.warmup
    pool_size: int = 1024             # caption embeddings the pool holds
    nn_every: int = 2                 # epochs K, 2K, ... (1-based) match images to pool captions
    augment: bool = True
    crop_scale: float = 0.5
    word_drop: float = 0.2
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    overwrite: bool = False
    before: Path | None = None        # a run trained the ordinary way on the same data, evaluated as "before"
    poison: Path | None = None        # the poisoned folder whose attack is measured (None: `data`, if it is one)
    measure: MeasureConfig | None = None

    def params(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("overwrite", "measure"):
            d.pop(k)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _check(cfg: RoClipConfig) -> None:
    for name in ("epochs", "batch_size", "pool_size", "nn_every"):
        if getattr(cfg, name) < 1:
            raise SettingError(name, f"must be at least 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise SettingError("lr", f"must be positive, got {cfg.lr}")
    for name in ("wd", "warmup"):
        if getattr(cfg, name) < 0:
            raise SettingError(name, f"must not be negative, got {getattr(cfg, name)}")
    if not 0 < cfg.crop_scale <= 1:
        raise SettingError("crop_scale", f"must be in (0, 1], got {cfg.crop_scale}")
    if not 0 <= cfg.word_drop < 1:
        raise SettingError("word_drop", f"must be in [0, 1), got {cfg.word_drop}")
    if cfg.before is not None:
        from poisonclip.evaluate.embed import resolve_run

        resolve_run(cfg.before)
    from poisonclip.train.models import check_model

    check_model(cfg.model)


def matching_epoch(epoch: int, nn_every: int) -> bool:
    """Whether 0-based ``epoch`` pairs images with pool captions (its 1-based number is a multiple of K)."""
    return (epoch + 1) % nn_every == 0


class CaptionPool:
    """A first-in first-out pool of (detached, unit) caption embeddings."""

    def __init__(self, size: int):
        self.size = size
        self.bank: Any = None

    def __len__(self) -> int:
        return 0 if self.bank is None else int(self.bank.shape[0])

    def push(self, emb: Any) -> None:
        import torch

        emb = emb.detach()
        self.bank = emb[-self.size:] if self.bank is None else torch.cat([self.bank, emb])[-self.size:]

    def nearest(self, image_emb: Any) -> Any:
        """For each (unit) image embedding, the pool embedding with the highest cosine similarity."""
        idx = (image_emb.detach() @ self.bank.T).argmax(dim=1)
        return self.bank[idx]


def train_roclip(cfg: RoClipConfig, run_dir: Path, say: Callable[[str], None]) -> tuple[RunInfo, float]:
    import torch
    from open_clip.loss import ClipLoss

    pairs = load_pairs(cfg.data, cfg.batch_size, None, cfg.seed)
    model, preprocess, tokenizer = fresh_model(cfg.model, cfg.seed, cfg.device)
    loss_fn = ClipLoss()
    pool = CaptionPool(cfg.pool_size)
    aug = np.random.default_rng([cfg.seed, STREAM_AUG])
    images, captions = pairs.images, pairs.captions

    def step(model: Any, idx: Sequence[int], epoch: int) -> tuple[Any, dict[str, float]]:
        if cfg.augment:
            ims = [augment_image(images[i], aug, cfg.crop_scale) for i in idx]
            caps = [augment_caption(captions[i], aug, cfg.word_drop) for i in idx]
        else:
            ims, caps = [images[i] for i in idx], [captions[i] for i in idx]
        img = model.encode_image(torch.stack([preprocess(im) for im in ims]).to(cfg.device), normalize=True)
        scale = model.logit_scale.exp()
        if matching_epoch(epoch, cfg.nn_every) and len(pool):
            with torch.no_grad():
                txt = model.encode_text(tokenizer(caps).to(cfg.device), normalize=True)
            loss = loss_fn(img, pool.nearest(img), scale)
            matched = 1.0
        else:
            txt = model.encode_text(tokenizer(caps).to(cfg.device), normalize=True)
            loss = loss_fn(img, txt, scale)
            matched = 0.0
        pool.push(txt)
        return loss, {"matched": matched}

    sch = Schedule(cfg.epochs, cfg.batch_size, cfg.lr, cfg.wd, cfg.warmup, cfg.seed, cfg.device, cfg.threads)
    done = run_loop(model, len(pairs), sch, step, say)
    return write_run(run_dir, model, cfg.model, PRESET, pairs, sch, done, cfg.params()), done.wall_s


def _poison_of(cfg: RoClipConfig) -> Path | None:
    if cfg.poison is not None:
        return Path(read_poison_info(cfg.poison).path or cfg.poison).parent
    data = Path(cfg.data)
    return data.absolute() if (data / POISON_INFO_FILE).is_file() else None


def defend_roclip(cfg: RoClipConfig, progress: Callable[[str], None] | None = None) -> DefenseInfo:
    """Train with RoCLIP's matching epochs, then (with ``cfg.measure``) evaluate the model and
    ``cfg.before``; writes ``cfg.out`` (run/ atomically with defense.json, then the evaluations)."""
    say = progress or (lambda _m: None)
    _check(cfg)
    poison = _poison_of(cfg)
    inputs = [*input_paths(cfg.data), *([Path(cfg.before)] if cfg.before else []), *([poison] if poison else [])]
    final = Path(cfg.out).absolute()
    with atomic_dir(final, cfg.overwrite, kind=DEFENSE_KIND, inputs=inputs) as tmp:
        run, wall = train_roclip(cfg, tmp / DEFENSE_RUN_DIR, say)
        info = DefenseInfo(defense="roclip", data=str(run.data), params=cfg.params(), stage="trained",
                           model=DEFENSE_RUN_DIR, before_model=str(Path(cfg.before).absolute()) if cfg.before else None,
                           poison=str(poison) if poison else None,
                           cost={"train_s": round(wall, 3), "steps": run.steps,
                                 "matching_epochs": sum(matching_epoch(e, cfg.nn_every) for e in range(cfg.epochs))})
        write_defense_info(tmp, info)
    if cfg.measure is not None:
        cost = dict(info.cost)
        after = before = None
        say("evaluating the model trained with RoCLIP")
        after, cost["eval_s"] = timed_eval(cfg.measure, final / DEFENSE_RUN_DIR, poison, final / DEFENSE_EVAL_DIR)
        if cfg.before is not None:
            say("evaluating the model trained without it")
            before, cost["eval_before_s"] = timed_eval(cfg.measure, Path(cfg.before), poison, final / DEFENSE_BEFORE_DIR)
        info = dataclasses.replace(info, before=before, after=after, cost=cost)
    info = dataclasses.replace(info, stage="done")
    write_defense_info(final, info)
    return info
