"""CleanCLIP-style fine-tuning (Bansal et al., ICCV 2023): fine-tune a poisoned model on clean
pairs with the multimodal contrastive loss plus unimodal self-supervised losses.

    L = lambda_clip * L_CLIP(image, caption) + lambda_ss * (L(image, image') + L(caption, caption')) / 2

Every term is open_clip's ``ClipLoss`` (symmetric InfoNCE at the model's logit scale) on L2
-normalised embeddings; image' and caption' are augmented views. The unimodal terms make each
modality's embedding stand on its own, which breaks the spurious link between a trigger and
the target caption that the multimodal loss alone keeps (CleanCLIP's argument).

A hand-written loop rather than open_clip_train: its trainer has only the image-caption loss
(and distillation/CoCa variants), with no way to add image-image and text-text terms on
augmented views, and it cannot start from a checkpoint's weights without ``--pretrained``,
which for this project's model names it does not resolve. The loop is short: the same model,
open_clip's loss, AdamW and a cosine schedule with warm-up, as open_clip_train uses.

What differs from the paper's recipe (and why):

* images: random resized crop, horizontal flip and brightness/contrast/saturation jitter
  drawn from one numpy generator, instead of AutoAugment (torchvision's draws from the global
  RNG; here every draw is reproducible from ``seed``);
* captions: EDA's random deletion and random swap only (no synonym replacement/insertion,
  which need WordNet); tiny captions of the embedded corpus have no synonyms worth having;
* scale: the paper fine-tunes CLIP RN50 on 100K clean CC3M pairs for 10 epochs at lr 1e-5,
  batch 64; the defaults here suit tiny models trained from scratch (``lr`` 1e-4).

Output (in ``--out``): ``run/`` with ``checkpoints/epoch_<n>.pt`` (open_clip_train's
layout: ``{"epoch", "name", "state_dict"}``, read by `poisonclip eval` with
``weights_only=True``), ``config.json`` and ``run.json``; then ``eval-before/``, ``eval/``
and ``defense.json`` as every defense writes them.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from poisonclip.contracts import (DEFENSE_BEFORE_DIR, DEFENSE_EVAL_DIR, DEFENSE_RUN_DIR, DefenseInfo, RunInfo,
                                  read_poison_info, read_run_info, write_defense_info, write_run_info)
from poisonclip.data import CsvFormat, SkipReport, read_dataset
from poisonclip.defend.filter import DEFENSE_KIND
from poisonclip.defend.measure import MeasureConfig, timed_eval
from poisonclip.errors import SettingError, UserError
from poisonclip.io_utils import atomic_dir, atomic_write_bytes, atomic_write_json, input_paths
from poisonclip.train.run import CHECKPOINT_DIR as CHECKPOINTS
from poisonclip.train.run import CONFIG_FILE as CONFIG

PRESET = "cleanclip"       # run.json's preset: how this model was made

# Streams of the seed, one per purpose, so adding one never shifts another.
_STREAM_SUBSET, _STREAM_ORDER, _STREAM_AUG = 1, 2, 3


@dataclass(frozen=True)
class CleanClipConfig:
    run: Path                         # the poisoned model: a run folder written by `poisonclip train`
    data: Path                        # clean pairs: a table, shards or a corpus folder
    out: Path
    subset: int | None = None         # fine-tune on this many pairs drawn at random (None: all)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-4
    wd: float = 0.1
    warmup: int = 10                  # steps
    lambda_clip: float = 1.0          # weight of the image-caption loss (the paper's lambda_1)
    lambda_ss: float = 1.0            # weight of the unimodal losses (lambda_2)
    crop_scale: float = 0.5           # lower bound of the random crop's area
    word_drop: float = 0.2            # probability of deleting each caption word
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None        # torch CPU threads for the loop (None: torch's default)
    overwrite: bool = False
    poison: Path | None = None        # the poisoned folder whose attack is measured (None: the run's own)
    measure: MeasureConfig | None = None   # None: no evaluation

    def params(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("overwrite")
        d.pop("measure")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _check(cfg: CleanClipConfig) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise SettingError(name, f"must be at least 1, got {getattr(cfg, name)}")
    if cfg.subset is not None and cfg.subset < 1:
        raise SettingError("subset", f"must be at least 1, got {cfg.subset}")
    if cfg.threads is not None and cfg.threads < 1:
        raise SettingError("threads", f"must be at least 1, got {cfg.threads}")
    if cfg.lr <= 0:
        raise SettingError("lr", f"must be positive, got {cfg.lr}")
    for name in ("wd", "warmup", "lambda_clip", "lambda_ss"):
        if getattr(cfg, name) < 0:
            raise SettingError(name, f"must not be negative, got {getattr(cfg, name)}")
    if cfg.lambda_clip == 0 and cfg.lambda_ss == 0:
        raise SettingError("lambda_clip", "`lambda_clip` and `lambda_ss` are both 0: there is no loss to fine-tune on")
    if not 0 < cfg.crop_scale <= 1:
        raise SettingError("crop_scale", f"must be in (0, 1], got {cfg.crop_scale}")
    if not 0 <= cfg.word_drop < 1:
        raise SettingError("word_drop", f"must be in [0, 1), got {cfg.word_drop}")


# --- augmentations -----------------------------------------------------------------------

def augment_image(im: Image.Image, rng: np.random.Generator, crop_scale: float = 0.5) -> Image.Image:
    """A random resized crop (area in [crop_scale, 1], aspect in [3/4, 4/3]) back to the
    image's size, a horizontal flip half the time, and colour jitter of up to 40%."""
    w, h = im.size
    area = w * h
    for _ in range(10):
        a = area * rng.uniform(crop_scale, 1.0)
        r = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            im = im.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
            break
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhance(im).enhance(float(rng.uniform(0.6, 1.4)))
    return im


def augment_caption(text: str, rng: np.random.Generator, word_drop: float = 0.2) -> str:
    """EDA's random deletion (each word with probability ``word_drop``, one kept at least) and
    one random swap of two words."""
    words = text.split()
    if not words:
        return text
    kept = [w for w in words if rng.random() >= word_drop] or [words[int(rng.integers(len(words)))]]
    if len(kept) > 1:
        i, j = rng.choice(len(kept), size=2, replace=False)
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)


# --- the loop ----------------------------------------------------------------------------

def _load_pairs(cfg: CleanClipConfig) -> tuple[list[Image.Image], list[str], Any]:
    from poisonclip.train.dataset import resolve

    td = resolve(cfg.data, hash_data=True)
    report = SkipReport()
    images, captions = [], []
    for s in read_dataset(td.train_data, CsvFormat(td.img_key, td.caption_key, td.csv_sep), report):
        images.append(s.decode())
        captions.append(s.caption)
    if cfg.subset is not None and cfg.subset < len(images):
        pick = np.sort(np.random.default_rng([cfg.seed, _STREAM_SUBSET]).choice(len(images), cfg.subset,
                                                                                replace=False))
        images, captions = [images[i] for i in pick], [captions[i] for i in pick]
    if len(images) < cfg.batch_size:
        raise UserError(f"{cfg.data}: {len(images)} usable pairs, fewer than one batch of {cfg.batch_size}; "
                        "lower `batch_size` or give more clean data")
    return images, captions, td


def _param_groups(model: Any, wd: float) -> list[dict[str, Any]]:
    """open_clip_train's split: no weight decay on gains, biases, norms and the logit scale."""
    decay, rest = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (rest if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n else decay).append(p)
    return [{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def _lr_at(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base


def finetune(cfg: CleanClipConfig, run_dir: Path, say: Callable[[str], None]) -> tuple[RunInfo, float]:
    """Fine-tune ``cfg.run``'s model on ``cfg.data`` into ``run_dir`` (checkpoint, config.json,
    run.json with a checkpoint path relative to the folder); (its record, seconds)."""
    import torch
    from open_clip.loss import ClipLoss

    from poisonclip.evaluate.embed import load_model, resolve_run

    name, ckpt = resolve_run(cfg.run)
    images, captions, td = _load_pairs(cfg)
    lm = load_model(name, ckpt, cfg.device)
    model, preprocess, tokenizer = lm.model, lm.preprocess, lm.tokenizer
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.wd), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    order_rng = np.random.default_rng([cfg.seed, _STREAM_ORDER])
    aug_rng = np.random.default_rng([cfg.seed, _STREAM_AUG])
    n, bs = len(images), cfg.batch_size
    steps_per_epoch = n // bs
    total = steps_per_epoch * cfg.epochs
    curve, parts, step = [], [], 0
    t0 = time.perf_counter()

    def views(idx: Sequence[int]) -> tuple[Any, Any, Any, Any]:
        im = torch.stack([preprocess(images[i]) for i in idx])
        im_aug = torch.stack([preprocess(augment_image(images[i], aug_rng, cfg.crop_scale)) for i in idx])
        tx = tokenizer([captions[i] for i in idx])
        tx_aug = tokenizer([augment_caption(captions[i], aug_rng, cfg.word_drop) for i in idx])
        return im.to(cfg.device), im_aug.to(cfg.device), tx.to(cfg.device), tx_aug.to(cfg.device)

    for epoch in range(cfg.epochs):
        perm = order_rng.permutation(n)
        losses, mm, ss = [], [], []
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            im, im_aug, tx, tx_aug = views(idx)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg.lr, cfg.warmup, total)
            img = model.encode_image(torch.cat([im, im_aug]), normalize=True)
            txt = model.encode_text(torch.cat([tx, tx_aug]), normalize=True)
            scale = model.logit_scale.exp()
            img, img_aug = img[:len(idx)], img[len(idx):]
            txt, txt_aug = txt[:len(idx)], txt[len(idx):]
            l_mm = loss_fn(img, txt, scale)
            l_ss = (loss_fn(img, img_aug, scale) + loss_fn(txt, txt_aug, scale)) / 2
            loss = cfg.lambda_clip * l_mm + cfg.lambda_ss * l_ss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():   # as open_clip_train: the temperature stays within CLIP's bound
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            mm.append(float(l_mm.detach()))
            ss.append(float(l_ss.detach()))
            step += 1
        curve.append(float(np.mean(losses)))
        parts.append({"epoch": epoch + 1, "loss": curve[-1], "loss_clip": float(np.mean(mm)),
                      "loss_unimodal": float(np.mean(ss)), "steps": steps_per_epoch})
        say(f"epoch {epoch + 1}/{cfg.epochs}: loss {curve[-1]:.4f}")
    wall = time.perf_counter() - t0
    model.eval()

    buf = io.BytesIO()
    torch.save({"epoch": cfg.epochs, "name": PRESET, "state_dict": model.state_dict()}, buf)
    rel = f"{CHECKPOINTS}/epoch_{cfg.epochs}.pt"
    atomic_write_bytes(run_dir / rel, buf.getvalue())
    atomic_write_json(run_dir / CONFIG, {"config": cfg.params(), "base_model": name,
                                         "base_checkpoint": str(ckpt), "base_checkpoint_sha256": lm.checkpoint_sha256,
                                         "num_samples": n, "steps_per_epoch": steps_per_epoch})
    info = RunInfo(model=name, checkpoint=rel, seed=cfg.seed, epochs=cfg.epochs, steps=total, batch_size=bs,
                   world_size=1, device=cfg.device, precision="fp32", preset=PRESET, data=td.source,
                   data_origin=td.origin, dataset_type=td.dataset_type, train_data=td.train_data, num_samples=n,
                   dataset_sha256=td.sha256, poison_json=td.poison_json, poison_json_sha256=td.poison_json_sha256,
                   wall_time_s=round(wall, 3), samples_per_s=round(total * bs / wall, 3) if wall > 0 else 0.0,
                   train_time_s=round(wall, 3), loss_curve=tuple(curve), epoch_stats=tuple(parts), config=CONFIG)
    write_run_info(run_dir, info)
    return info, wall


def _poison_of(cfg: CleanClipConfig) -> Path | None:
    """The poisoned folder to measure against: given, else the one the poisoned run trained on."""
    if cfg.poison is not None:
        return Path(read_poison_info(cfg.poison).path or cfg.poison).parent
    pj = read_run_info(cfg.run).poison_json
    return Path(pj).parent if pj and Path(pj).is_file() else None


def defend_cleanclip(cfg: CleanClipConfig, progress: Callable[[str], None] | None = None) -> DefenseInfo:
    """Fine-tune, then (with ``cfg.measure``) evaluate the model before and after; writes
    ``cfg.out`` (run/ atomically with defense.json, then the evaluations, then defense.json
    again with stage done)."""
    from poisonclip.evaluate.embed import resolve_run

    say = progress or (lambda _m: None)
    _check(cfg)
    resolve_run(cfg.run)                     # a folder that is not a finished run: refused before any work
    poison = _poison_of(cfg)
    inputs = [Path(cfg.run), *input_paths(cfg.data), *([poison] if poison else [])]
    final = Path(cfg.out).absolute()
    with atomic_dir(final, cfg.overwrite, kind=DEFENSE_KIND, inputs=inputs) as tmp:
        run_info, wall = finetune(cfg, tmp / DEFENSE_RUN_DIR, say)
        info = DefenseInfo(defense="cleanclip", data=str(run_info.data), params=cfg.params(), stage="trained",
                           model=DEFENSE_RUN_DIR, before_model=str(Path(cfg.run).absolute()),
                           poison=str(poison) if poison else None,
                           cost={"train_s": round(wall, 3), "clean_pairs": run_info.num_samples,
                                 "steps": run_info.steps})
        write_defense_info(tmp, info)
    if cfg.measure is not None:
        cost = dict(info.cost)
        say("evaluating the model before the defense")
        before, cost["eval_before_s"] = timed_eval(cfg.measure, Path(cfg.run), poison, final / DEFENSE_BEFORE_DIR)
        say("evaluating the fine-tuned model")
        after, cost["eval_s"] = timed_eval(cfg.measure, final / DEFENSE_RUN_DIR, poison, final / DEFENSE_EVAL_DIR)
        info = dataclasses.replace(info, before=before, after=after, cost=cost)
    info = dataclasses.replace(info, stage="done")
    write_defense_info(final, info)
    return info
