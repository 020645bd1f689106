"""What `poisonclip train` costs on top of open_clip_train, and where time goes at toy scale.

Prints four figures (nothing is asserted; the numbers depend on the machine and its load):

1. wrapper overhead: trainer samples/s of `poisonclip train` (a CLI process that starts
   ``python -m poisonclip.train.launch``) over those of calling open_clip_train directly
   (``open_clip_train.main.main(argv)`` in a fresh interpreter, same argv, same data),
   interleaved A/B runs, median ratio (noisy when others share the cores); and, immune to
   that noise, the CPU the wrapper process itself uses while the trainer runs, and what its
   start-up and checks cost;
2. start-up: what a fresh trainer process pays before its first step (interpreter + imports),
   i.e. what running the trainer in-process would save;
3. samples/s of each model on this machine (the trainer's own step timing, first step
   excluded as warm-up);
4. data loading: open_clip_train's own loader alone (PIL decode + transforms + tokenizer per
   sample) against the model's step alone on pre-loaded batches, and trainer samples/s
   with --workers 0 / 1 / 2.

    python bench/bench_train_overhead.py                # defaults: ~5 minutes on 2 cores
    python bench/bench_train_overhead.py --models poisonclip-tiny-rn --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from poisonclip.data.corpus import write_corpus  # noqa: E402
from poisonclip.data.synthetic import SynthConfig  # noqa: E402
from poisonclip.train import dataset  # noqa: E402
from poisonclip.train.logparse import LogParser, StepLog  # noqa: E402
from poisonclip.train.run import TrainConfig, open_clip_argv, processes  # noqa: E402

PY = sys.executable
POISONCLIP = str(Path(PY).with_name("poisonclip"))
DIRECT = ("import sys\nfrom poisonclip.train.models import register_models\nregister_models()\n"
          "from open_clip_train.main import main\nsys.exit(main(sys.argv[1:]) or 0)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--model", default="poisonclip-tiny-rn", help="model for the overhead and loader checks")
    p.add_argument("--models", default="tiny",
                   help="comma list for the per-model samples/s; 'tiny': poisonclip-test and every "
                        "poisonclip-tiny-*; 'all': every shipped config except RN50")
    p.add_argument("--repeats", type=int, default=4, help="A/B pairs for the overhead ratio (order alternates)")
    p.add_argument("--workers", default="0,1,2", help="--workers values to compare")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per training process for checks 1 and 4 (default: all cores); "
                        "1 gives steadier figures when other jobs share the machine")
    p.add_argument("--skip", default="", help="comma list of: overhead, parent, startup, models, loader")
    p.add_argument("--json-out", default=None)
    return p.parse_args(argv)


def steady_samples_per_s(log: Path, batch: int) -> tuple[float, float]:
    """(samples/s, fraction of step time spent waiting for data), first step excluded."""
    parser, t, n, data_t = LogParser(batch), 0.0, 0, 0.0
    for line in log.read_text().splitlines():
        ev = parser.feed(line)
        if isinstance(ev, StepLog) and not (ev.epoch == 0 and ev.step == 1):
            t += ev.batch_time * ev.window
            data_t += ev.data_time * ev.window
            n += ev.window * batch
    return (n / t if t else 0.0), (data_t / t if t else 0.0)


def cfg_for(corpus: Path, out: Path, a, model: str, workers: int = 0, threads: int | None = None) -> TrainConfig:
    return TrainConfig(data=str(corpus), out=str(out), model=model, epochs=a.epochs, batch_size=a.batch_size,
                       lr=1e-3, warmup=5, workers=workers, gpus=0, hash_data=False, threads=threads)


def _children_cpu() -> float:
    # CPU seconds of finished child processes and everything they waited for (the trainer).
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_direct(cfg: TrainConfig, out: Path) -> tuple[float, float, float]:
    """open_clip_train.main.main(argv) in a fresh interpreter; (samples/s, wall s, CPU s)."""
    data = dataset.resolve(cfg.data, hash_data=False)
    argv = open_clip_argv(cfg, data, processes(cfg), out)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(cfg.threads)} if cfg.threads else {})}
    t0, c0 = time.perf_counter(), _children_cpu()
    with open(out.parent / f"{out.name}.console", "w") as f:
        subprocess.run([PY, "-c", DIRECT, *argv], cwd=data.cwd, stdout=f, stderr=subprocess.STDOUT, check=True,
                       env=env)
    return (steady_samples_per_s(out / "out.log", cfg.batch_size)[0], time.perf_counter() - t0,
            _children_cpu() - c0)


def run_wrapper(cfg: TrainConfig, out: Path) -> tuple[float, float, float]:
    """`poisonclip train ...` as a user types it; (samples/s, wall s, CPU s)."""
    cmd = [POISONCLIP, "train", cfg.data, "--out", str(out), "--model", cfg.model, "--epochs", str(cfg.epochs),
           "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr), "--warmup", str(cfg.warmup),
           "--workers", str(cfg.workers), "--gpus", "0", "--no-hash-data",
           *(["--threads", str(cfg.threads)] if cfg.threads else [])]
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    return (steady_samples_per_s(out / "out.log", cfg.batch_size)[0], time.perf_counter() - t0,
            _children_cpu() - c0)


def bench_overhead(corpus: Path, tmp: Path, a) -> dict:
    """Interleaved pairs, alternating which goes first (ABBA), so load drifts cancel out."""
    ratios, direct, wrap = [], [], []
    cfg = cfg_for(corpus, tmp / "x", a, a.model, threads=a.threads)
    for i in range(a.repeats):
        if i % 2 == 0:
            d = run_direct(cfg, tmp / f"direct{i}")
            w = run_wrapper(cfg, tmp / f"wrap{i}")
        else:
            w = run_wrapper(cfg, tmp / f"wrap{i}")
            d = run_direct(cfg, tmp / f"direct{i}")
        ratios.append(w[0] / d[0])
        direct.append(d)
        wrap.append(w)
        print(f"  pair {i + 1}: direct {d[0]:7.1f} samples/s ({d[1]:5.1f} s wall, {d[2]:5.1f} s CPU)   "
              f"poisonclip train {w[0]:7.1f} samples/s ({w[1]:5.1f} s wall, {w[2]:5.1f} s CPU)   "
              f"ratio {w[0] / d[0]:.3f}", flush=True)
    return {"ratio_median": statistics.median(ratios), "ratios": ratios,
            "direct": [dict(zip(("samples_per_s", "wall_s", "cpu_s"), x)) for x in direct],
            "wrapper": [dict(zip(("samples_per_s", "wall_s", "cpu_s"), x)) for x in wrap],
            "wrapper_extra_wall_s_median": statistics.median(w[1] - d[1] for w, d in zip(wrap, direct)),
            "wrapper_extra_cpu_s_median": statistics.median(w[2] - d[2] for w, d in zip(wrap, direct))}


def bench_parent_cost(corpus: Path, tmp: Path, a) -> dict:
    """CPU the wrapper itself uses, measured without the noise of a shared machine.

    The A/B ratio above swings with other users' load; the wrapper's own CPU does not. The
    trainer's step can only be slowed by what the parent process takes from the cores, so
    parent CPU / trainer CPU bounds the wrapper's cost in samples/s.
    """
    import io

    from rich.console import Console

    from poisonclip.train.progress import RichReporter
    from poisonclip.train.run import train

    cfg = cfg_for(corpus, tmp / "parent", a, a.model, threads=a.threads)
    c_self = resource.getrusage(resource.RUSAGE_SELF)
    c_kids = _children_cpu()
    t0 = time.perf_counter()
    with RichReporter(Console(file=io.StringIO(), force_terminal=True)) as rep:
        train(cfg, on_event=rep)
    wall = time.perf_counter() - t0
    e_self = resource.getrusage(resource.RUSAGE_SELF)
    parent = (e_self.ru_utime - c_self.ru_utime) + (e_self.ru_stime - c_self.ru_stime)
    trainer = _children_cpu() - c_kids

    def cli(args: list[str]) -> tuple[float, float]:
        c0, t = _children_cpu(), time.perf_counter()
        subprocess.run([POISONCLIP, "train", *args], stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - t, _children_cpu() - c0

    dry_wall, dry_cpu = cli([str(corpus), "--out", str(tmp / "dry"), "--model", a.model, "--dry-run"])
    return {"parent_cpu_s_while_training": parent, "trainer_cpu_s": trainer, "wall_s": wall,
            "parent_share": parent / trainer if trainer else None,
            "cli_startup_and_checks_wall_s": dry_wall, "cli_startup_and_checks_cpu_s": dry_cpu}


def bench_startup() -> dict:
    def t(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([PY, "-c", code], check=True)
        return time.perf_counter() - t0

    bare = statistics.median(t("pass") for _ in range(3))
    full = statistics.median(t("import open_clip_train.main, poisonclip.train.launch") for _ in range(3))
    return {"python_s": bare, "python_plus_trainer_imports_s": full}


def bench_models(corpus: Path, tmp: Path, a) -> dict:
    from poisonclip.train.models import model_info

    from poisonclip.train.models import register_models

    ours = register_models()
    if a.models == "tiny":
        names = ["poisonclip-test", *[n for n in ours if n.startswith("poisonclip-tiny")]]
    elif a.models == "all":
        names = list(ours)
    else:
        names = [x for x in a.models.split(",") if x]
    out = {}
    for m in sorted(names, key=lambda n: model_info(n).params):
        row = {"params": model_info(m).params}
        for threads in (None, 1):
            # Best of two: other jobs on shared cores only ever slow a run down.
            best = max(run_direct(cfg_for(corpus, tmp / "x", a, m, threads=threads), tmp / f"m-{m}-{threads}-{i}")[0]
                       for i in range(2))
            row["samples_per_s" if threads is None else "samples_per_s_1_thread"] = best
        out[m] = row
        print(f"  {m:22s} {row['params'] / 1e6:6.2f}M params  {row['samples_per_s']:7.1f} samples/s "
              f"({os.cpu_count()} threads), {row['samples_per_s_1_thread']:7.1f} (1 thread)", flush=True)
    return out


def bench_loader(corpus: Path, tmp: Path, a) -> dict:
    """open_clip_train's loader alone vs the model step alone, built exactly as main() does."""
    import torch
    from open_clip import create_loss, create_model_and_transforms, get_tokenizer
    from open_clip_train.data import get_data
    from open_clip_train.params import parse_args as oc_parse
    from PIL import Image

    from poisonclip.train.models import register_models

    register_models()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = cfg_for(corpus, tmp / "loader", a, a.model, threads=a.threads)
    data = dataset.resolve(cfg.data, hash_data=False)
    args = oc_parse(open_clip_argv(cfg, data, processes(cfg), tmp / "loader"))
    args.distributed, args.world_size, args.rank, args.local_rank = False, 1, 0, 0
    args.distill = False
    torch.manual_seed(0)
    model, pre_train, pre_val = create_model_and_transforms(args.model, precision="fp32", device="cpu",
                                                            output_dict=True)
    tok = get_tokenizer(args.model)
    cwd = os.getcwd()
    os.chdir(data.cwd)  # open_clip opens the table's relative paths from its working directory
    try:
        loader = get_data(args, (pre_train, pre_val), epoch=0, tokenizer=tok)["train"].dataloader
        t0 = time.perf_counter()
        batches = [b for b in loader]
        load_sps = len(batches) * args.batch_size / (time.perf_counter() - t0)

        # Per-sample pieces, to see which one dominates.
        import pandas as pd

        rows = pd.read_csv(data.train_data, sep="\t").head(256)
        t0 = time.perf_counter()
        imgs = [Image.open(p).convert("RGB") for p in rows["filepath"]]
        t_open = (time.perf_counter() - t0) / len(rows)
        t0 = time.perf_counter()
        for im in imgs:
            pre_train(im)
        t_tf = (time.perf_counter() - t0) / len(rows)
        t0 = time.perf_counter()
        for c in rows["title"]:
            tok([str(c)])
        t_tok = (time.perf_counter() - t0) / len(rows)
    finally:
        os.chdir(cwd)

    loss_fn = create_loss(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for i, (images, texts) in enumerate(batches[:8]):
        t0 = time.perf_counter()
        out = model(images, texts)
        loss = loss_fn(**out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step_sps = args.batch_size / statistics.median(times[2:] or times)
    print(f"  loader alone {load_sps:7.1f} samples/s  (per sample: PIL open+decode {t_open * 1e6:.0f} us, "
          f"transforms {t_tf * 1e6:.0f} us, tokenizer {t_tok * 1e6:.0f} us)", flush=True)
    print(f"  model step alone {step_sps:7.1f} samples/s  -> loading needs "
          f"{100 * step_sps / load_sps:.0f}% of the step's time when not overlapped", flush=True)

    per_workers = {}
    for w in [int(x) for x in a.workers.split(",") if x]:
        cfg = cfg_for(corpus, tmp / "x", a, a.model, workers=w, threads=a.threads)
        sps = run_direct(cfg, tmp / f"workers{w}")[0]
        _, data_share = steady_samples_per_s(tmp / f"workers{w}" / "out.log", cfg.batch_size)
        per_workers[w] = {"samples_per_s": sps, "data_wait_share": data_share}
        print(f"  trainer --workers {w}: {sps:7.1f} samples/s, {100 * data_share:4.1f}% of step time waiting "
              "for data", flush=True)
    return {"loader_samples_per_s": load_sps, "model_step_samples_per_s": step_sps,
            "per_sample_us": {"pil_open_decode": t_open * 1e6, "transforms": t_tf * 1e6, "tokenizer": t_tok * 1e6},
            "trainer_by_workers": per_workers}


def main(argv=None) -> int:
    a = parse_args(argv)
    skip = set(a.skip.split(","))
    results: dict = {"args": vars(a), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp_s:
        tmp = Path(tmp_s)
        corpus = tmp / "corpus"
        write_corpus(SynthConfig(n_train=a.n_train, n_test=8, resolution=32), corpus, formats=("csv",))
        print(f"corpus: {a.n_train} samples at 32 px; batch {a.batch_size}, {a.epochs} epoch(s), "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        if "overhead" not in skip:
            print(f"1. poisonclip train vs open_clip_train directly ({a.model}):", flush=True)
            results["overhead"] = r = bench_overhead(corpus, tmp, a)
            print(f"  median samples/s ratio {r['ratio_median']:.3f}; the wrapper adds "
                  f"{r['wrapper_extra_wall_s_median']:.1f} s wall / {r['wrapper_extra_cpu_s_median']:.1f} s CPU "
                  "per run (its own process: imports, dataset checks, log reading)", flush=True)
        if "parent" not in skip:
            results["parent"] = r = bench_parent_cost(corpus, tmp, a)
            print(f"  the wrapper process used {r['parent_cpu_s_while_training']:.2f} s CPU while the trainer used "
                  f"{r['trainer_cpu_s']:.1f} s ({100 * r['parent_share']:.2f}%: samples/s ratio >= "
                  f"{1 - r['parent_share']:.3f}); `poisonclip train` start-up + checks: "
                  f"{r['cli_startup_and_checks_wall_s']:.2f} s wall, {r['cli_startup_and_checks_cpu_s']:.2f} s CPU",
                  flush=True)
        if "startup" not in skip:
            results["startup"] = r = bench_startup()
            print(f"2. a fresh trainer process pays {r['python_plus_trainer_imports_s']:.1f} s before training "
                  f"(bare python {r['python_s']:.2f} s)", flush=True)
        if "models" not in skip:
            print("3. samples/s per model:", flush=True)
            results["models"] = bench_models(corpus, tmp, a)
        if "loader" not in skip:
            print(f"4. data loading ({a.model}):", flush=True)
            results["loader"] = bench_loader(corpus, tmp, a)
    results["load_average_end"] = os.getloadavg()[0]
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
