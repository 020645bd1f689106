"""The demo's figures over several seeds, against the targets the project set for it.

    python bench/bench_demo.py --seeds 3 --out /tmp/demo-bench

Runs the full demo (``poisonclip demo --seeds N``), then prints, for each figure, the mean
and spread over seeds and whether the target is met: whole demo <= 10 min per seed on 2
cores (goal 5), clean zero-shot >= 80%, backdoor ASR (corner) >= 90%, z-score >= 3, clean
accuracy within 3 points of the clean model, and a majority of targets hit by the targeted
model while the clean model hits (almost) none.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from poisonclip.demo import DemoConfig, run_demo


def _vals(models, kind, eval_name, path):
    out = []
    for m in models:
        if m.kind != kind or eval_name not in m.metrics:
            continue
        d = m.metrics[eval_name]
        for p in path:
            d = d[p]
        out.append(d["rate"] if isinstance(d, dict) else d)
    return np.asarray(out, dtype=float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/poisonclip-demo-bench"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cfg = (DemoConfig.quick(out=args.out) if args.quick else DemoConfig(out=args.out))
    import dataclasses

    cfg = dataclasses.replace(cfg, seeds=args.seeds)
    t0 = time.perf_counter()
    res = run_demo(cfg, say=lambda m: print(f"  {m}", flush=True))
    wall = time.perf_counter() - t0
    ms = res.models

    def show(name, v, target, fmt="{:.1%}", ok=None):
        ok = ok if ok is not None else (v.mean() >= target)
        print(f"{name:<48} mean {fmt.format(v.mean())}  std {fmt.format(v.std(ddof=1) if v.size > 1 else 0.0)}"
              f"  min {fmt.format(v.min())}  max {fmt.format(v.max())}  target {target}  {'MET' if ok else 'NOT MET'}")

    print(f"\nseeds: {args.seeds}; wall time {wall / 60:.1f} min in all, {wall / 60 / args.seeds:.1f} min per seed")
    train_s = [m.train_s for m in ms]
    print(f"training wall time per model: mean {np.mean(train_s):.0f} s, max {np.max(train_s):.0f} s")
    acc_clean = _vals(ms, "clean", "backdoor", ("clean", "zeroshot", "top1"))
    acc_bd = _vals(ms, "backdoor", "backdoor", ("clean", "zeroshot", "top1"))
    show("clean model zero-shot top-1", acc_clean, ">= 80%", ok=acc_clean.mean() >= 0.8)
    show("backdoored model zero-shot top-1", acc_bd, "within 3 pts", ok=acc_clean.mean() - acc_bd.mean() <= 0.03)
    asr = _vals(ms, "backdoor", "backdoor", ("backdoor", "asr", "train_placement", "zeroshot"))
    asr_clean = _vals(ms, "clean", "backdoor", ("backdoor", "asr", "train_placement", "zeroshot"))
    show("backdoor ASR, corner (backdoored model)", asr, ">= 90%", ok=asr.mean() >= 0.9)
    show("backdoor ASR, corner (clean model)", asr_clean, "low", ok=True)
    asr_r = _vals(ms, "backdoor", "backdoor", ("backdoor", "asr", "random", "zeroshot"))
    show("backdoor ASR, random place (backdoored model)", asr_r, "-", ok=True)
    z = _vals(ms, "backdoor", "backdoor", ("backdoor", "zscore", "train_placement", "z"))
    show("backdoor z-score, corner (backdoored model)", z, ">= 3", fmt="{:.2f}", ok=z.mean() >= 3)
    z_clean = _vals(ms, "clean", "backdoor", ("backdoor", "zscore", "train_placement", "z"))
    show("backdoor z-score, corner (clean model)", z_clean, "~0", fmt="{:.2f}", ok=True)
    tg = _vals(ms, "targeted", "targeted", ("targeted", "summary", "zeroshot", "success"))
    tg_clean = _vals(ms, "clean", "targeted", ("targeted", "summary", "zeroshot", "success"))
    show("targets hit (targeted model)", tg, "> 50%", ok=tg.mean() > 0.5)
    show("targets hit (clean model)", tg_clean, "low", ok=True)
    print(json.dumps({"summary": str(res.out / "summary.json"), "report": str(res.report)}))


if __name__ == "__main__":
    main()
