"""CleanCLIP-style fine-tuning (Bansal et al., ICCV 2023): fine-tune a poisoned model on clean
pairs with the multimodal contrastive loss plus unimodal self-supervised losses.

    L = lambda_clip * L_CLIP(image, caption) + lambda_ss * (L(image, image') + L(caption, caption')) / 2

Every term is open_clip's ``ClipLoss`` (symmetric InfoNCE at the model's logit scale) on L2
-normalised embeddings; image' and caption' are augmented views. The unimodal terms make each
modality's embedding stand on its own, which breaks the spurious link between a trigger and
the target caption that the multimodal loss alone keeps (CleanCLIP's argument).

A hand-written loop (``defend.loop``) rather than open_clip_train: its trainer has only the
image-caption loss (and distillation/CoCa variants), with no way to add image-image and
text-text terms on augmented views. The loop is short: the same model, open_clip's loss,
AdamW and a cosine schedule with warm-up, as open_clip_train uses.

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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from poisonclip.contracts import (DEFENSE_BEFORE_DIR, DEFENSE_EVAL_DIR, DEFENSE_RUN_DIR, DefenseInfo, RunInfo,
                                  read_poison_info, read_run_info, write_defense_info)
from poisonclip.defend.filter import DEFENSE_KIND
from poisonclip.defend.loop import STREAM_AUG, Schedule, load_pairs, run_loop, write_run
from poisonclip.defend.measure import MeasureConfig, timed_eval
from poisonclip.errors import SettingError
from poisonclip.io_utils import atomic_dir, input_paths

PRESET = "cleanclip"       # run.json's preset: how this model was made

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


# --- the fine-tuning ----------------------------------------------------------------------

def finetune(cfg: CleanClipConfig, run_dir: Path, say: Callable[[str], None]) -> tuple[RunInfo, float]:
    """Fine-tune ``cfg.run``'s model on ``cfg.data`` into ``run_dir`` (checkpoint, config.json,
    run.json with a checkpoint path relative to the folder); (its record, seconds)."""
    import torch
    from open_clip.loss import ClipLoss

    from poisonclip.evaluate.embed import load_model, resolve_run

    name, ckpt = resolve_run(cfg.run)
    pairs = load_pairs(cfg.data, cfg.batch_size, cfg.subset, cfg.seed)
    lm = load_model(name, ckpt, cfg.device)
    preprocess, tokenizer = lm.preprocess, lm.tokenizer
    loss_fn = ClipLoss()
    aug = np.random.default_rng([cfg.seed, STREAM_AUG])
    images, captions = pairs.images, pairs.captions

    def step(model: Any, idx: Sequence[int], epoch: int) -> tuple[Any, dict[str, float]]:
        im = torch.stack([preprocess(images[i]) for i in idx]
                         + [preprocess(augment_image(images[i], aug, cfg.crop_scale)) for i in idx])
        tx = torch.cat([tokenizer([captions[i] for i in idx]),
                        tokenizer([augment_caption(captions[i], aug, cfg.word_drop) for i in idx])])
        img = model.encode_image(im.to(cfg.device), normalize=True)
        txt = model.encode_text(tx.to(cfg.device), normalize=True)
        scale, k = model.logit_scale.exp(), len(idx)
        l_mm = loss_fn(img[:k], txt[:k], scale)
        l_ss = (loss_fn(img[:k], img[k:], scale) + loss_fn(txt[:k], txt[k:], scale)) / 2
        loss = cfg.lambda_clip * l_mm + cfg.lambda_ss * l_ss
        return loss, {"loss_clip": float(l_mm.detach()), "loss_unimodal": float(l_ss.detach())}

    sch = Schedule(cfg.epochs, cfg.batch_size, cfg.lr, cfg.wd, cfg.warmup, cfg.seed, cfg.device, cfg.threads)
    done = run_loop(lm.model, len(pairs), sch, step, say)
    config = {**cfg.params(), "base_model": name, "base_checkpoint": str(ckpt),
              "base_checkpoint_sha256": lm.checkpoint_sha256}
    return write_run(run_dir, lm.model, name, PRESET, pairs, sch, done, config), done.wall_s


def _poisons_in(run: RunInfo) -> dict[str, int]:
    """The poisons in the data the fine-tuning pairs were drawn from, when it is a poisoned
    folder (CleanCLIP assumes none: a defender's "clean" subset may not be clean)."""
    if not run.poison_json:
        return {}
    return {"poisons_in_source": read_poison_info(run.poison_json).n_poisons}


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
                                 "steps": run_info.steps, **_poisons_in(run_info)})
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
