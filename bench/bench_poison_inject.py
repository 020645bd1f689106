"""Poison injection cost vs dataset size: 1,500 backdoor poisons into 30k- and 300k-sample WebDatasets.

    python bench/bench_poison_inject.py [--root /tmp/poisonclip-bench] [--sizes 30000,300000]

Clean shards (10,000 samples each, 16x16 PNG images, labels and captions in img2dataset's
layout plus sizes.json) are generated once under --root, outside the repository, and
reused. Each measurement runs in a fresh subprocess so its peak RSS is its own. Three
figures per dataset size:

* inject: ``poisonclip poison backdoor`` with a saved caption set (``--caption-file``), i.e.
  source drawing + rendering + writing the poison shards, sizes.json and manifest. This is
  what must not grow with the dataset; the printed ratio (300k / 30k) should be near 1.
* search: the caption search alone (a full pass over the captions; it is O(dataset) by
  definition, reported for completeness).
* full: inject including the search.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

N_POISONS = 1500
SHARD = 10_000
CLASSES = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond", "moon", "arrow")
_FILLER = ("a", "photo", "of", "the", "on", "with", "red", "blue", "small", "big", "in", "street", "view",
           "vintage", "icon", "art", "shape", "background", "for", "kids", "design", "new", "simple")


def _tiny_pngs(k: int, rng: np.random.Generator) -> list[bytes]:
    from PIL import Image

    out = []
    for _ in range(k):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    return info, io.BytesIO(data)


def make_shards(folder: Path, n: int, seed: int = 0) -> Path:
    """n samples in 10k-sample shards + sizes.json; skipped when already complete."""
    if (folder / "sizes.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pngs = _tiny_pngs(256, rng)
    sizes = {}
    for s in range((n + SHARD - 1) // SHARD):
        count = min(SHARD, n - s * SHARD)
        labels = rng.integers(0, len(CLASSES), count).tolist()
        imgs = rng.integers(0, len(pngs), count).tolist()
        words = rng.integers(0, len(_FILLER), (count, 5)).tolist()
        name = f"{s:05d}.tar"
        with tarfile.open(folder / f".{name}.tmp", "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(count):
                key = f"{s:05d}{i:05d}"
                w = [_FILLER[j] for j in words[i]]
                caption = " ".join(w[:3] + [CLASSES[labels[i]]] + w[3:])
                tf.addfile(*_member(f"{key}.png", pngs[imgs[i]]))
                tf.addfile(*_member(f"{key}.txt", caption.encode()))
                tf.addfile(*_member(f"{key}.json", json.dumps({"key": key, "label": labels[i]}).encode()))
        os.replace(folder / f".{name}.tmp", folder / name)
        sizes[name] = count
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return folder


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(mode: str, data: str, out: str, caption_file: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    from poisonclip.attacks.api import BackdoorConfig, poison
    from poisonclip.attacks.captions import save_caption_set, search_captions
    from poisonclip.contracts import read_poison_info

    base = peak_rss_mb()
    t0 = time.perf_counter()
    if mode == "search":
        cs = search_captions(data, ["star"])["star"]
        save_caption_set(cs, caption_file)
        extra = {"captions_scanned": cs.n_scanned, "captions_found": len(cs)}
    else:
        r = poison(BackdoorConfig(data=data, out=out, target_label="star", n_poisons=N_POISONS, seed=0,
                                  caption_file=caption_file if mode == "inject" else None))
        extra = {"num_samples": r.num_samples,
                 "source_shards_read": read_poison_info(r.out).backdoor.source_shards_read}
    wall = time.perf_counter() - t0
    peak = peak_rss_mb()
    print(json.dumps({"wall_s": wall, "peak_rss_mb": peak, "import_rss_mb": base, **extra}))


def _measure(mode: str, data: Path, out: Path, caption_file: Path) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([sys.executable, __file__, "--child", mode, str(data), str(out), str(caption_file)],
                       capture_output=True, text=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/poisonclip-bench")
    ap.add_argument("--sizes", default="30000,300000")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    root = Path(args.root)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for n in sizes:
        t0 = time.perf_counter()
        data = make_shards(root / f"wds-{n}", n)
        print(f"clean data {data} ({n} samples) ready in {time.perf_counter() - t0:.1f}s", flush=True)
        caps = root / f"star-captions-{n}.json"
        res = {m: _measure(m, data, root / f"out-{n}-{m}", caps) for m in ("search", "inject", "full")}
        results[n] = res
        for m, r in res.items():
            print(f"  {n:>8} samples  {m:<6}  {r['wall_s']:7.2f} s  peak RSS {r['peak_rss_mb']:7.1f} MB "
                  f"(after imports {r['import_rss_mb']:.1f} MB)  "
                  + ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("wall_s", "peak_rss_mb", "import_rss_mb")),
                  flush=True)
    if len(sizes) >= 2:
        a, b = results[sizes[0]], results[sizes[-1]]
        for m in ("inject", "search", "full"):
            print(f"ratio {sizes[-1]}/{sizes[0]} {m:<6}: time x{b[m]['wall_s'] / a[m]['wall_s']:.2f}, "
                  f"peak RSS x{b[m]['peak_rss_mb'] / a[m]['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
