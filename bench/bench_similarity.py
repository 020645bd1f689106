#!/usr/bin/env python3
"""All-pairs cosine similarity and the backdoor z-score on 10k embeddings: time and peak memory.

    python bench/bench_similarity.py [--n 10000] [--dims 512 64] [--chunks 256 1024 4096]

Prints one line per (dim, dtype, chunk): seconds for the clean pair statistics + histogram,
for the full z-score (clean + triggered), and the peak numpy memory (tracemalloc) above the
inputs. The naive n x n matrix for comparison would take n^2 * 8 bytes (800 MB at 10k).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from poisonclip.evaluate.metrics import backdoor_zscore, pairwise_similarity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 64])
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.n
    print(f"n={n} images, {n * (n - 1) // 2:,} pairs; naive float64 n x n matrix: {n * n * 8 / 2**20:.0f} MiB")
    print(f"{'dim':>4} {'dtype':>8} {'chunk':>6} {'pairs s':>8} {'z-score s':>10} {'peak MiB':>9} {'Mpairs/s':>9}")
    for dim in args.dims:
        clean = rng.normal(size=(n, dim)).astype(np.float32) + 0.3  # mean offset: cosines ~0.1 like CLIP's
        trig = clean + rng.normal(size=(1, dim)).astype(np.float32) * 2
        for dtype in (np.float64, np.float32):
            for chunk in args.chunks:
                tracemalloc.start()
                t0 = time.perf_counter()
                st = pairwise_similarity(clean, chunk=chunk, dtype=dtype)
                t1 = time.perf_counter()
                z = backdoor_zscore(clean, trig, chunk=chunk, dtype=dtype, clean=st)
                t2 = time.perf_counter()
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                print(f"{dim:>4} {np.dtype(dtype).name:>8} {chunk:>6} {t1 - t0:>8.2f} {t2 - t0:>10.2f} "
                      f"{peak / 2**20:>9.0f} {st.n_pairs / (t1 - t0) / 1e6:>9.1f}   "
                      f"(mean {st.mean:.4f}, std {st.std:.4f}, z {z.z:.2f})")


if __name__ == "__main__":
    main()
