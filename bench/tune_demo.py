"""Tuning harness for the demo: corpus + tiny model + schedule -> the demo's figures.

Trains tiny CLIP models in-process the way open_clip_train.main does (open_clip's
``create_model_and_transforms`` -> ``preprocess_train`` with RandomResizedCrop(--crop-scale, 1),
``ClipLoss``, AdamW with no weight decay on gains/biases/logit_scale, open_clip_train's
``cosine_lr`` with warmup stepped per batch, logit_scale clamped to ln(100), shuffled batches
with drop_last) on the embedded synthetic corpus, then prints:

  clean zero-shot top-1 (80 OpenAI ImageNet templates), backdoor ASR (corner / random
  placement), backdoor z-score (paper Definition 1), targeted-poisoning success, train time
  and samples/s.

Its defaults are the cpu-tiny preset and the demo's attack settings. It uses only
poisonclip.data.synthetic, poisonclip.attacks.triggers and open_clip (+ the scheduler from
open_clip_train), so its numbers transfer to the real pipeline (checked: the same checkpoint
scores the same accuracy in both evaluators).

    python bench/tune_demo.py --runs clean,backdoor,targeted          # the demo, in-process
    python bench/tune_demo.py --runs backdoor --batch-size 128 --epochs 30 --crop-scale 0.9
    python bench/tune_demo.py --help
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import open_clip  # noqa: E402
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES  # noqa: E402
from open_clip_train.scheduler import cosine_lr, const_lr  # noqa: E402

from poisonclip.attacks import triggers  # noqa: E402
from poisonclip.data.sample import Sample  # noqa: E402
from poisonclip.data.synthetic import SynthConfig, generate  # noqa: E402

MODEL_DIR = ROOT / "src" / "poisonclip" / "train" / "model_configs"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("corpus")
    g.add_argument("--n-train", type=int, default=4000)
    g.add_argument("--n-test", type=int, default=1000)
    g.add_argument("--resolution", type=int, default=32)
    g.add_argument("--seed", type=int, default=0, help="corpus seed; model/poison seeds derive from it")
    g.add_argument("--synth", type=str, default="{}", help="JSON dict of extra SynthConfig fields")
    g = p.add_argument_group("model / schedule (open_clip_train flags)")
    g.add_argument("--model", default="poisonclip-tiny-rn16", help="model-config name in model_configs/")
    g.add_argument("--model-dir", default=None, help="extra folder of open_clip JSON configs")
    g.add_argument("--epochs", type=int, default=32)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--wd", type=float, default=0.1)
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.999)
    g.add_argument("--eps", type=float, default=1e-8)
    g.add_argument("--warmup", type=int, default=100, help="warmup steps")
    g.add_argument("--lr-scheduler", choices=["cosine", "const"], default="cosine")
    g.add_argument("--grad-clip-norm", type=float, default=1.0, help="0: no clipping")
    g.add_argument("--threads", type=int, default=2)
    g = p.add_argument_group("attacks")
    g.add_argument("--runs", default="clean,backdoor,targeted",
                   help="comma list of clean, backdoor, targeted")
    g.add_argument("--patch224", type=int, default=32, help="patch side at 224 px (<= 32)")
    g.add_argument("--bd-ratio", type=float, default=0.01, help="backdoor poison ratio")
    g.add_argument("--bd-target", type=int, default=3, help="backdoor target label (3: star, as the demo)")
    g.add_argument("--tg-targets", type=int, default=2, help="number of targeted-poisoning targets")
    g.add_argument("--tg-copies", type=int, default=4, help="poisons per target")
    g.add_argument("--tg-source", choices=["templates", "search"], default="templates")
    g.add_argument("--json-out", type=str, default=None)
    g.add_argument("--crop-scale", type=float, default=1.0,
                   help="RandomResizedCrop area lower bound: 1.0 = no crop (the cpu-tiny preset), "
                        "0.9 = open_clip's default")
    return p.parse_args(argv)


# --- data ------------------------------------------------------------------------------

def caption_mentions(caption: str, name: str) -> bool:
    words = caption.lower().replace(".", " ").replace(",", " ").replace("!", " ").split()
    return name in words


def backdoor_poisons(corpus, cfg, target: int, n_poison: int, patch: int, rng) -> list[Sample]:
    """Other-class train images + corner checkerboard, captioned with train captions that
    mention the target label."""
    name = corpus.classnames[target]
    caps = [s.caption for s in corpus.train if caption_mentions(s.caption, name)]
    cands = [i for i, s in enumerate(corpus.train) if s.meta["label"] != target]
    idx = rng.choice(len(cands), size=n_poison, replace=False)
    out = []
    for j, k in enumerate(idx):
        s = corpus.train[cands[int(k)]]
        img = s.decode()
        spec = triggers.place(img.size, patch, "corner")
        out.append(Sample.from_pil(f"bd-{j}", triggers.apply(img, spec),
                                   caps[int(rng.integers(len(caps)))], {"label": s.meta["label"]}))
    return out


def targeted_poisons(corpus, n_targets: int, copies: int, source: str, rng):
    """Targets are test images (never in train); each gets ``copies`` captions naming a
    different class y'. Returns (poisons, [(test_index, y')])."""
    k = len(corpus.classnames)
    tidx = rng.choice(len(corpus.test), size=n_targets, replace=False)
    targets, out = [], []
    for t in tidx:
        s = corpus.test[int(t)]
        y = s.meta["label"]
        yp = int((y + rng.integers(1, k)) % k)
        targets.append((int(t), yp))
        name = corpus.classnames[yp]
        if source == "templates":
            pool = [tpl(name) if callable(tpl) else tpl.format(name) for tpl in OPENAI_IMAGENET_TEMPLATES]
        else:
            pool = [x.caption for x in corpus.train if caption_mentions(x.caption, name)]
        for c in range(copies):
            out.append(Sample(f"tg-{t}-{c}", s.image, pool[int(rng.integers(len(pool)))], {"label": y}))
    return out, targets


# --- training --------------------------------------------------------------------------

def build(args):
    open_clip.add_model_config(MODEL_DIR)
    if args.model_dir:
        open_clip.add_model_config(Path(args.model_dir))
    aug = {"scale": (args.crop_scale, 1.0)}
    model, pre_train, pre_val = open_clip.create_model_and_transforms(args.model, aug_cfg=aug)
    tok = open_clip.get_tokenizer(args.model)
    return model, pre_train, pre_val, tok


def train(args, samples: list[Sample], seed: int):
    torch.manual_seed(seed)  # model init + torchvision's RandomResizedCrop use torch's RNG
    model, pre_train, pre_val, tok = build(args)
    imgs = [s.decode() for s in samples]
    texts = tok([s.caption for s in samples])
    n = len(samples)
    bs = args.batch_size
    nb = n // bs  # drop_last, like open_clip_train
    steps = nb * args.epochs
    exclude = lambda nm, p: p.ndim < 2 or "bn" in nm or "ln" in nm or "bias" in nm or "logit_scale" in nm
    named = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for nm, p in named if exclude(nm, p)], "weight_decay": 0.0},
         {"params": [p for nm, p in named if not exclude(nm, p)], "weight_decay": args.wd}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    sched = (cosine_lr if args.lr_scheduler == "cosine" else const_lr)(opt, args.lr, args.warmup, steps)
    loss_fn = open_clip.ClipLoss()
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    t0 = time.perf_counter()
    seen = 0
    for ep in range(args.epochs):
        perm = torch.randperm(n, generator=gen)
        tot = 0.0
        for b in range(nb):
            sched(ep * nb + b)
            idx = perm[b * bs:(b + 1) * bs]
            x = torch.stack([pre_train(imgs[int(i)]) for i in idx])
            out = model(x, texts[idx])
            if isinstance(out, dict):
                loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            else:
                loss = loss_fn(*out[:3])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            tot += loss.item()
            seen += len(idx)
        print(f"    epoch {ep + 1}/{args.epochs} loss {tot / max(nb, 1):.3f}", flush=True)
    dt = time.perf_counter() - t0
    model.eval()
    return model, pre_val, tok, dt, seen / dt


# --- evaluation ------------------------------------------------------------------------

@torch.no_grad()
def encode(model, pre, pil_images, bs=256):
    feats = []
    for i in range(0, len(pil_images), bs):
        x = torch.stack([pre(im) for im in pil_images[i:i + bs]])
        feats.append(model.encode_image(x, normalize=True))
    return torch.cat(feats)


def zscore(clean: torch.Tensor, patched: torch.Tensor) -> float:
    n = clean.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    c = (clean @ clean.T)[off]
    p = (patched @ patched.T)[off]
    return float((p.mean() - c.mean()) / c.std())


def evaluate(model, pre, tok, corpus, args, patch: int, targets=None):
    zs = open_clip.build_zero_shot_classifier(model, tok, corpus.classnames, OPENAI_IMAGENET_TEMPLATES)
    imgs = [s.decode() for s in corpus.test]
    labels = torch.tensor([s.meta["label"] for s in corpus.test])
    f = encode(model, pre, imgs)
    logits = f @ zs
    pred = logits.argmax(1)
    res = {"acc": float((pred == labels).float().mean())}
    # diagnostics: one plain prompt; nearest class centroid of image embeddings (text-free)
    zs1 = open_clip.build_zero_shot_classifier(model, tok, corpus.classnames, ["a photo of a {}."])
    res["acc_1prompt"] = float(((f @ zs1).argmax(1) == labels).float().mean())
    cent = torch.stack([f[labels == k].mean(0) for k in range(len(corpus.classnames))])
    res["acc_centroid"] = float(((f @ cent.T).argmax(1) == labels).float().mean())
    rng = np.random.default_rng(args.seed + 999)
    corner = [triggers.apply(im, triggers.place(im.size, patch, "corner")) for im in imgs]
    rand = [triggers.apply(im, triggers.place(im.size, patch, "random", rng)) for im in imgs]
    fc, fr = encode(model, pre, corner), encode(model, pre, rand)
    nt = labels != args.bd_target
    res["asr_corner"] = float(((fc @ zs).argmax(1)[nt] == args.bd_target).float().mean())
    res["asr_random"] = float(((fr @ zs).argmax(1)[nt] == args.bd_target).float().mean())
    res["z_corner"] = zscore(f, fc)
    res["z_random"] = zscore(f, fr)
    res["pred_target_frac_clean"] = float((pred == args.bd_target).float().mean())
    if targets:
        ok, ranks = [], []
        for t, yp in targets:
            lg = logits[t]
            ok.append(int(lg.argmax()) == yp)
            ranks.append(int((lg > lg[yp]).sum()) + 1)
        res["targeted_success"] = ok
        res["targeted_rank"] = ranks
    return res


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.patch224 > 32:
        raise SystemExit("--patch224 must be <= 32 (the paper's ablation maximum)")
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    t = time.perf_counter()
    cfg = SynthConfig(n_train=args.n_train, n_test=args.n_test, resolution=args.resolution,
                      seed=args.seed, **json.loads(args.synth))
    corpus = generate(cfg)
    gen_s = time.perf_counter() - t
    patch = triggers.patch_pixels(args.patch224, cfg.resolution)
    print(f"corpus: {len(corpus.train)} train / {len(corpus.test)} test at {cfg.resolution}px "
          f"in {gen_s:.1f}s; patch {args.patch224}@224 -> {patch}px", flush=True)
    rng = np.random.default_rng([args.seed, 7])
    n_bd = int(math.floor(args.bd_ratio * len(corpus.train) / (1 - args.bd_ratio) + 1e-9))
    bd = backdoor_poisons(corpus, cfg, args.bd_target, n_bd, patch, rng)
    tg, targets = targeted_poisons(corpus, args.tg_targets, args.tg_copies, args.tg_source, rng)
    results = {"args": vars(args), "gen_s": gen_s, "patch_px": patch}
    for run in runs:
        data = list(corpus.train) + {"clean": [], "backdoor": bd, "targeted": tg}[run]
        ratio = (len(data) - len(corpus.train)) / len(data)
        print(f"[{run}] {len(data)} samples, poison ratio {100 * ratio:.3f}%", flush=True)
        model, pre, tok, dt, sps = train(args, data, seed=args.seed * 1000 + 17)
        r = evaluate(model, pre, tok, corpus, args, patch, targets)
        r.update(train_s=dt, samples_per_s=sps, poison_ratio=ratio, n_poison=len(data) - len(corpus.train))
        results[run] = r
        ts = r.get("targeted_success")
        print(f"[{run}] acc {100 * r['acc']:.1f}% (1 prompt {100 * r['acc_1prompt']:.1f}%, "
              f"centroid {100 * r['acc_centroid']:.1f}%)  ASR corner {100 * r['asr_corner']:.1f}% "
              f"random {100 * r['asr_random']:.1f}%  z corner {r['z_corner']:.2f} random "
              f"{r['z_random']:.2f}  targeted {ts} ranks {r.get('targeted_rank')}  "
              f"train {dt:.0f}s  {sps:.0f} samples/s", flush=True)
    if "clean" in results and "targeted" in results:
        c, p = results["clean"]["targeted_success"], results["targeted"]["targeted_success"]
        wins = sum(1 for a, b in zip(c, p) if b and not a)
        print(f"targeted: {wins}/{len(c)} targets flipped (poisoned hit, clean miss)")
    if "clean" in results and "backdoor" in results:
        print(f"backdoor clean-acc drop: {100 * (results['clean']['acc'] - results['backdoor']['acc']):.1f} pts")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
