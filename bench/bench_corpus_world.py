#!/usr/bin/env python3
"""The embedded corpus as a world: what it holds, how fast it is made, how its captions and
images spread, against the ten-shape corpus it replaced.

    python bench/bench_corpus_world.py [--n-train 4000 --n-test 1000 --n-probe 1000]
                                       [--old-rev fdf320b] [--run RUN_DIR]

Prints: generation time (in memory, and written to disk through ``write_corpus``); class,
attribute and scene counts; caption statistics (share naming the object as the backdoor's
caption search finds it, each kind of noise, attribute mentions, distinct captions, and
captions that are a CLIP prompt template filled with anything, open_clip's and the
project's lists); training image sizes; the pixel-space pairwise cosine similarity of
the test images (raw and with the mean image removed) with the z-score ceiling
(1 - mean) / std it would give; and the same for idealised embeddings that encode only the
class, or the class and some attributes. These are only cheap proxies: the figure that bounds
the backdoor z-score is the spread of a trained model's image embeddings, which ``--run``
(a folder written by ``poisonclip train`` on this corpus) measures on the same test images.

``--old-rev`` names a git revision whose ``src/poisonclip/data/synthetic.py`` is the old
generator to compare with (loaded from ``git show``; skipped if git cannot find it).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from poisonclip.attacks.captions import LabelMatcher, openai_templates  # noqa: E402
from poisonclip.data.synthetic import SynthConfig, generate  # noqa: E402
from poisonclip.evaluate.metrics import pairwise_similarity  # noqa: E402


def template_patterns() -> list[re.Pattern]:
    import open_clip.zero_shot_metadata as zsm

    texts = {t("{}") for t in (*openai_templates(), *zsm.OPENAI_IMAGENET_TEMPLATES, *zsm.SIMPLE_IMAGENET_TEMPLATES)}
    return [re.compile(re.escape(t).replace(re.escape("{}"), ".+") + "$") for t in sorted(texts)]


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def load_old(rev: str):
    """The generator module as it was at ``rev``, or None."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/poisonclip/data/synthetic.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "old_synthetic.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("_old_synthetic", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_old_synthetic"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def caption_stats(corpus, pats) -> dict[str, float]:
    caps = [s.caption for s in corpus.train]
    names = corpus.classnames
    hits = {n: LabelMatcher(n).mask(caps) for n in names}
    own = np.array([hits[names[s.meta["label"]]][i] for i, s in enumerate(corpus.train)])
    filled_names = {norm(t(n)) for t in openai_templates() for n in names}
    return {
        "captions": len(caps),
        "distinct": len(set(caps)),
        "name the object (search)": float(own.mean()),
        "name no class at all": float(np.mean([not any(hits[n][i] for n in names) for i in range(len(caps))])),
        "template filled with a class name": sum(norm(c) in filled_names for c in caps),
        "template filled with anything": sum(any(p.match(norm(c)) for p in pats) for c in caps),
    }


def pixel_spread(samples) -> dict[str, float]:
    x = np.stack([np.asarray(s.decode(), dtype=np.float64).reshape(-1) for s in samples])
    out = {}
    for name, m in (("raw", x), ("centred", x - x.mean(axis=0))):
        st = pairwise_similarity(m, dtype=np.float32)
        out[name] = (st.mean, st.std, (1 - st.mean) / st.std)
    return out


def concept_spread(samples, keys: tuple[str, ...]) -> tuple[float, float, float]:
    """Pairwise cosine of idealised embeddings that encode exactly ``keys`` (one orthogonal
    direction per value of each, blocks weighted alike): a model that separates the classes
    perfectly and nothing else has sqrt(K - 1) as its ceiling (3.0 for ten classes)."""
    blocks = []
    for key in keys:
        values = [str(s.meta[key]) for s in samples]
        index = {v: i for i, v in enumerate(sorted(set(values)))}
        onehot = np.zeros((len(values), len(index)))
        onehot[np.arange(len(values)), [index[v] for v in values]] = 1.0
        blocks.append(onehot)
    st = pairwise_similarity(np.concatenate(blocks, axis=1))
    return st.mean, st.std, (1 - st.mean) / st.std


def print_spread(label: str, spread: dict[str, tuple[float, float, float]]) -> None:
    for name, (mean, std, ceiling) in spread.items():
        print(f"  {label:<5} {name:<8} mean {mean:+.3f}  std {std:.3f}  ceiling (1-mean)/std {ceiling:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-probe", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--old-rev", default="fdf320b", help="git revision of the old generator ('' to skip)")
    ap.add_argument("--run", help="a training run on this corpus: measure its clean embedding spread")
    args = ap.parse_args()
    cfg = SynthConfig(n_train=args.n_train, n_test=args.n_test, n_probe=args.n_probe, seed=args.seed)

    t0, c0 = time.perf_counter(), time.process_time()
    corpus = generate(cfg)
    t_gen, c_gen = time.perf_counter() - t0, time.process_time() - c0
    from poisonclip.data.corpus import write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_corpus(cfg, Path(tmp) / "c")
        t_write = time.perf_counter() - t0
    n = cfg.n_train + cfg.n_test + cfg.n_probe
    print(f"generation: {n} images ({cfg.n_train}+{cfg.n_test}+{cfg.n_probe}) in {t_gen:.1f} s in memory "
          f"({c_gen:.1f} s of CPU), "
          f"{t_write:.1f} s written to disk (CSV + WebDataset + labelled splits)")

    metas = [s.meta for s in corpus.train]
    print(f"\nworld: {len(corpus.classnames)} classes; per attribute, distinct values in the training split:")
    for key in ("color", "size", "pattern", "count", "position", "scene"):
        c = Counter(m[key] for m in metas)
        print(f"  {key:<9} {len(c):>2}  " + ", ".join(f"{k}={v / len(metas):.2f}" for k, v in sorted(c.items(), key=str)))
    combos = {(m["label"], m["color"], m["size"], m["pattern"], m["count"], m["scene"]) for m in metas}
    print(f"  distinct (class, colour, size, pattern, count, scene) combinations: {len(combos)} of {len(metas)}")
    corner = np.mean([m["bbox"][0] <= 4 and m["bbox"][1] <= 4 for m in metas])
    print(f"  objects reaching into the top-left 5x5 px: {corner:.1%}")

    pats = template_patterns()
    print("\ncaptions (training split):")
    for k, v in caption_stats(corpus, pats).items():
        print(f"  {k:<34} {v:.3f}" if isinstance(v, float) else f"  {k:<34} {v}")
    kinds = Counter(m["caption_kind"] for m in metas)
    print("  kinds: " + ", ".join(f"{k}={v / len(metas):.3f}" for k, v in sorted(kinds.items())))
    print(f"  a typo somewhere: {np.mean([m['typo'] for m in metas]):.3f}")
    caps = [s.caption.lower() for s in corpus.train]
    colour = np.mean([re.search(rf"\b{m['color']}\b", c) is not None for m, c in zip(metas, caps)])
    print(f"  name the object's colour: {colour:.3f}")

    sizes = [s.decode().size for s in corpus.train]
    ws, hs = np.array([w for w, _ in sizes]), np.array([h for _, h in sizes])
    aspect = ws / hs
    print(f"\ntraining images: {len(set(sizes))} distinct sizes, {np.mean(ws != hs):.1%} non-square; "
          f"width {ws.min()}-{ws.max()}, height {hs.min()}-{hs.max()} px; "
          f"aspect w/h quantiles 5/50/95%: {np.quantile(aspect, 0.05):.2f}/{np.median(aspect):.2f}/{np.quantile(aspect, 0.95):.2f}")
    print(f"test images: {sorted({s.decode().size for s in corpus.test})}; probe: {sorted({s.decode().size for s in corpus.probe})}")

    print("\npixel-space pairwise cosine similarity of the test images (a proxy, not the model's):")
    print_spread("new", pixel_spread(corpus.test))
    print("idealised embeddings that encode only some concepts (what a trained model could reach):")
    keys = ("label", "color", "pattern", "scene", "size", "count")
    for upto in (1, 2, 4, 6):
        mean, std, ceiling = concept_spread(corpus.test, keys[:upto])
        print(f"  new   {'+'.join(keys[:upto]):<36} mean {mean:+.3f}  std {std:.3f}  ceiling {ceiling:.2f}")
    old = load_old(args.old_rev) if args.old_rev else None
    if old is not None:
        ocfg = old.SynthConfig(n_train=args.n_train, n_test=args.n_test, n_probe=0, seed=args.seed)
        t0 = time.perf_counter()
        ocorpus = old.generate(ocfg)
        print_spread("old", pixel_spread(ocorpus.test))
        mean, std, ceiling = concept_spread(ocorpus.test, ("label",))
        print(f"  old   {'label':<36} mean {mean:+.3f}  std {std:.3f}  ceiling {ceiling:.2f}")
        print(f"\nold corpus ({args.old_rev}): {len(ocorpus.classnames)} classes, "
              f"{args.n_train}+{args.n_test} images in {time.perf_counter() - t0:.1f} s; captions:")
        for k, v in caption_stats(ocorpus, pats).items():
            print(f"  {k:<34} {v:.3f}" if isinstance(v, float) else f"  {k:<34} {v}")
    elif args.old_rev:
        print(f"  (old generator at {args.old_rev!r} not found; skipped)")

    if args.run:
        from poisonclip.evaluate.embed import embed_images, load_model, resolve_run

        name, ckpt = resolve_run(args.run)
        emb = embed_images(load_model(name, ckpt), (s.decode() for s in corpus.test))
        st = pairwise_similarity(emb)
        print(f"\ntrained model {args.run}: clean image-embedding similarity mean {st.mean:+.3f}, "
              f"std {st.std:.3f}, z-score ceiling {(1 - st.mean) / st.std:.2f}")


if __name__ == "__main__":
    main()
