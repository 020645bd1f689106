"""Detectors against the ground truth on the embedded corpus, with and without the attacks'
de-duplication evasion: the table of docs/defenses.md.

    python bench/bench_detect.py [--root /tmp/poisonclip-detect] [--sigmas 0,1,2,4,8,16]

One corpus (the quick demo's size, 1,500 pairs), one clean reference model trained on it
(``cpu-tiny``'s model with the quick demo's schedule; it embeds the data for
``embedding-neighbours`` and ``image-caption-similarity``), then per noise sigma one targeted
poisoned set (random targets from the held-out test split, ``perturb_captions`` on whenever
the noise is) and two backdoor sets (the quick demo's, and one with random placement and the
evasion), each scored by every detector. Prints a
markdown table of AUROC (average precision) per detector and set, and writes it as JSON.
Everything lives under --root, outside the repository, and is reused when present.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from poisonclip.attacks.api import BackdoorConfig, TargetedConfig, poison
from poisonclip.data.corpus import write_corpus
from poisonclip.data.synthetic import SynthConfig
from poisonclip.detect.api import DetectConfig, detect
from poisonclip.detect.registry import detectors
from poisonclip.train.run import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/poisonclip-detect"))
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--targets", type=int, default=4, help="random targets per targeted set")
    ap.add_argument("--copies", type=int, default=8, help="poisons per target")
    ap.add_argument("--backdoor-poisons", type=int, default=75)
    ap.add_argument("--sigmas", default="0,1,2,4,8,16", help="noise sigmas of the targeted sets (pixels)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = args.root
    t0 = time.perf_counter()
    corpus = root / "corpus"
    if not (corpus / "corpus.json").is_file():
        write_corpus(SynthConfig(n_train=args.n, n_test=300, n_probe=0, seed=args.seed), corpus, formats=("csv",))
    model = root / "reference"
    if not (model / "run.json").is_file():
        train(TrainConfig(data=str(corpus), out=str(model), epochs=args.epochs, batch_size=args.batch_size,
                          seed=args.seed, gpus=0, threads=1))
    t_setup = time.perf_counter() - t0
    sets: dict[str, Path] = {}
    for sigma in (float(s) for s in args.sigmas.split(",")):
        name = f"targeted, noise {sigma:g}" + (" + captions" if sigma else "")
        out = root / f"targeted-{sigma:g}"
        if not (out / "poison.json").is_file():
            poison(TargetedConfig(data=str(corpus / "train.tsv"), out=str(out), random_targets=args.targets,
                                  n_poisons=args.copies, target_source=str(corpus / "test.tsv"), seed=args.seed,
                                  noise_sigma=sigma, perturb_captions=sigma > 0))
        sets[name] = out
    for name, folder, kw in (("backdoor, no evasion", "backdoor", {}),
                             ("backdoor, random placement, noise 4 + captions", "backdoor-evasion",
                              {"placement": "random", "noise_sigma": 4.0, "perturb_captions": True})):
        out = root / folder
        if not (out / "poison.json").is_file():
            poison(BackdoorConfig(data=str(corpus / "train.tsv"), out=str(out), target_label="star",
                                  n_poisons=args.backdoor_poisons, patch_size=32, seed=args.seed, **kw))
        sets[name] = out
    methods = tuple(detectors())
    rows = {}
    t1 = time.perf_counter()
    for name, data in sets.items():
        res = detect(DetectConfig(data=data, out=root / "detect" / data.name, methods=methods, model=model,
                                  overwrite=True))
        rows[name] = {"n_samples": res.summary.n_samples,
                      "n_poisons": next(iter(res.summary.scoring.values())).n_poisons,
                      **{m: {"auroc": s.auroc, "average_precision": s.average_precision,
                             "recall_at_5pct": s.flagged[1].recall, "clean_removed_at_5pct": s.flagged[1].clean_removed}
                         for m, s in res.summary.scoring.items()}}
    t_detect = time.perf_counter() - t1
    print(f"| poisoned set (poisons / samples) | {' | '.join(methods)} |")
    print("|---|" + "---|" * len(methods))
    for name, r in rows.items():
        cells = [f"{r[m]['auroc']:.2f} ({r[m]['average_precision']:.2f})" for m in methods]
        print(f"| {name} ({r['n_poisons']} / {r['n_samples']}) | {' | '.join(cells)} |")
    print(f"\nAUROC (average precision). setup (corpus + reference model) {t_setup:.0f} s, "
          f"detection of {len(sets)} sets x {len(methods)} detectors {t_detect:.0f} s")
    (root / "detect-table.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "rows": rows, "setup_s": t_setup,
                                                        "detect_s": t_detect}, indent=2))


if __name__ == "__main__":
    main()
