"""Named training presets: the numbers for the demo and for the paper, in one place.

A preset fixes the hyperparameters; a run (``TrainConfig``) adds the data, the output folder,
the seed and where it runs. ``batch_size`` is always the *global* batch, the quantity the
paper reports and the contrastive loss sees (open_clip gathers features from all ranks);
the launcher divides it by the number of processes for open_clip's per-GPU ``--batch-size``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from poisonclip.errors import SettingError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: str
    epochs: int
    batch_size: int  # global batch over all processes
    lr: float
    wd: float
    warmup: int  # optimizer steps of linear warm-up
    beta1: float | None = None  # None: open_clip's default for the model
    beta2: float | None = None
    eps: float | None = None
    opt: str = "adamw"  # open_clip_train --opt: "adamw" or "timm/<name>" (e.g. timm/momentum)
    momentum: float | None = None  # only for timm optimizers
    lr_scheduler: str = "cosine"
    grad_clip_norm: float | None = None
    precision: str = "fp32"
    workers: int = 0  # data-loader worker processes per training process
    gpus: int | None = None  # None: one GPU if CUDA is visible, else the CPU
    log_every_n_steps: int = 1
    # Lower bound of open_clip's RandomResizedCrop area scale (open_clip's default: 0.9).
    # 1.0 keeps every image whole: at 32 px a crop-and-resize blurs one-pixel structure such
    # as the checkerboard trigger into grey, so the model never sees the patch it is tested on.
    crop_scale: float | None = None


# The demo: tiny ResNet CLIP on the embedded corpus, two CPU cores, minutes per model.
# fp32 because autocast on CPU was twice as slow here; workers=0 because a loader process
# competes with the two training threads for the same two cores (bench/bench_train_overhead.py).
# The schedule is the demo tuning's (bench/tune_demo.py, 4000 pairs + 1% corner backdoor);
# change it here only.
CPU_TINY = Preset(
    name="cpu-tiny",
    description="demo: tiny ResNet CLIP on the embedded corpus, CPU, minutes",
    model="poisonclip-tiny-rn16",
    # Many epochs of large batches: a step of this model costs ~50 ms of fixed overhead (the
    # AdamW update of the 49408-token embedding among it), so batch 256 trains 4.7x more
    # samples/s than batch 16 (1160 vs 247 on 2 cores). The backdoor is learned only once the
    # model starts to tell captions of one class apart (loss well under ln(batch/classes)):
    # 30 epochs at batch 128 reached 95% zero-shot but 23% ASR; 40 epochs at batch 256, 85%.
    epochs=32,
    batch_size=256,
    # On the small-world corpus (20 classes, 4000 pairs) a higher rate learns objects instead
    # of memorising pairs: zero-shot 64% at 3e-3, 66-76% at 5e-3, 74-83% at 8e-3, 47% at 1.2e-2
    # (one seed each; docs/demo-tuning.md).
    lr=8e-3,
    wd=0.1,
    warmup=100,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    # Without clipping, rates >= 2e-3 collapsed to the loss plateau (all embeddings alike).
    grad_clip_norm=1.0,
    precision="fp32",
    workers=0,
    gpus=None,
    log_every_n_steps=5,
    # No random crop: at 32 px a crop-and-resize resamples the one-pixel checkerboard into a
    # different grey blur each epoch. With crops (scale 0.9-1), 50 epochs gave 54% ASR; without,
    # 40 epochs gave 85% (zero-shot accuracy 90% -> 83%: the price of less augmentation).
    crop_scale=1.0,
)

# The paper (section 4.1): RN50 + Transformer, batch 1024 over 8 GPUs, 30 epochs, lr 2e-4,
# weight decay 0.02. The paper says "momentum SGD", but the open_clip trainer of the time
# only had AdamW and 2e-4 is an AdamW-sized rate, so we keep open_clip_train's AdamW with
# its RN50 defaults (betas 0.9/0.999, eps 1e-8); `--opt timm/momentum --momentum 0.9` gives
# SGD for anyone who wants to test that reading. Warm-up is not stated in the paper:
# 10000 steps is open_clip_train's default.
PAPER_CC3M = Preset(
    name="paper-cc3m",
    description="paper 4.1: RN50 on Conceptual Captions, batch 1024, 30 epochs, 8 GPUs",
    model="RN50",
    epochs=30,
    batch_size=1024,
    lr=2e-4,
    wd=0.02,
    warmup=10_000,
    precision="amp",
    workers=8,
    gpus=8,
    log_every_n_steps=100,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (CPU_TINY, PAPER_CC3M)}
DEFAULT_PRESET = CPU_TINY.name

HYPER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Preset) if f.name not in ("name", "description"))


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise SettingError("preset", f"{name}: unknown preset; known: {', '.join(PRESETS)}") from None
