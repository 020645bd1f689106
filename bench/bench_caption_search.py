"""Caption-search throughput and peak memory on a 3-million-caption corpus (Conceptual Captions scale).

    python bench/bench_caption_search.py [--root /tmp/poisonclip-bench] [--n 3000000]

A TSV of --n generated alt-text-like captions (Zipf-distributed vocabulary of 5,000 words,
label words at realistic rates, plurals and capitals included) is written once under --root, outside the
repository. Each search runs in a fresh subprocess, so the peak RSS printed is that search's
own (the imports alone are printed beside it). Cases: one common label, one rare label, a
two-word label, and a five-label single pass (what targeted poisoning with several search
targets does). If bench_poison_inject.py's 300k-sample shards exist under --root, the
WebDataset path (tar header scan) is measured on them too.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LABELS = {"common": ["dog"], "rare": ["basketball"], "two-word": ["golden retriever"],
          "five-in-one-pass": ["dog", "basketball", "golden retriever", "car", "umbrella"]}


def make_captions(path: Path, n: int, seed: int = 0) -> Path:
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(5000)]
    # put real words at fixed Zipf ranks so they occur at natural rates
    for rank, word in ((40, "dog"), (90, "car"), (300, "dogs"), (1200, "basketball"), (2500, "umbrella"),
                       (2600, "golden retriever"), (2700, "Golden Retrievers"), (3000, "retriever")):
        vocab[rank] = word
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("filepath\ttitle\n")
        chunk = 200_000
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            lens = rng.integers(4, 14, m).tolist()
            words = rng.choice(len(vocab), size=(m, 14), p=p).tolist()
            f.write("".join(f"images/{start + i:09d}.jpg\t{' '.join(vocab[j] for j in words[i][:lens[i]])}\n"
                            for i in range(m)))
    tmp.replace(path)
    return path


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(data: str, labels: str) -> None:
    from poisonclip.attacks.captions import search_captions

    base = peak_rss_mb()
    t0 = time.perf_counter()
    sets = search_captions(data, labels.split(","))
    wall = time.perf_counter() - t0
    peak = peak_rss_mb()
    any_set = next(iter(sets.values()))
    print(json.dumps({"wall_s": wall, "peak_rss_mb": peak, "import_rss_mb": base,
                      "scanned": any_set.n_scanned,
                      "found": {k: [v.n_matched, len(v)] for k, v in sets.items()}}))


def _measure(data: Path, labels: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", str(data), ",".join(labels)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _report(name: str, r: dict) -> None:
    rate = r["scanned"] / r["wall_s"]
    found = ", ".join(f"{k}: {m} matches/{u} distinct" for k, (m, u) in r["found"].items())
    print(f"  {name:<18} {r['scanned']:>9} captions in {r['wall_s']:6.2f} s = {rate / 1e6:5.2f} M captions/s; "
          f"peak RSS {r['peak_rss_mb']:6.1f} MB (imports {r['import_rss_mb']:.1f} MB); {found}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/poisonclip-bench")
    ap.add_argument("--n", type=int, default=3_000_000)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    root = Path(args.root)
    t0 = time.perf_counter()
    data = make_captions(root / f"captions-{args.n}.tsv", args.n)
    print(f"corpus {data} ({data.stat().st_size / 1e6:.0f} MB) ready in {time.perf_counter() - t0:.1f}s")
    print("CSV/TSV (pyarrow streaming reader + RE2):")
    for name, labels in LABELS.items():
        _report(name, _measure(data, labels))
    wds = root / "wds-300000"
    if (wds / "sizes.json").is_file():
        print(f"WebDataset ({wds}, tar header scan):")
        _report("common", _measure(wds, ["star"]))
    else:
        print(f"(no {wds}; run bench/bench_poison_inject.py first to also measure the WebDataset path)")


if __name__ == "__main__":
    main()
