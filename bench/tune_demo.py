"""Tuning the demo on the real pipeline: the demo's spec with extra grid axes, run by the
sweep engine, one clean-vs-attack table per setting.

    python bench/tune_demo.py --quick --set train.epochs=20,30 --set train.batch_size=128,256
    python bench/tune_demo.py --set train.crop_scale=0.9,1.0 --seeds 2 --attacks backdoor
    python bench/tune_demo.py --set corpus.n_train=2000,4000 --set poison.n_poisons=20,40 --attacks backdoor

Every value of every ``--set`` axis is crossed with the seeds in each attack's sub-grid of the
demo spec (``src/poisonclip/specs/demo.yaml``, or ``demo-quick.yaml`` with ``--quick``); an
axis replaces the setting of the same name the spec gives. The corpus, poisoned sets and
models are the sweep's content-keyed artefacts in ``--out``, so a clean model is trained once
per (training settings, seed) for both attacks and adding a value reruns only what it
changes. What it measures is exactly what the demo measures (same stages, same evaluator).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from poisonclip.demo import demo_spec, spec_file
from poisonclip.experiments.runner import LocalRunner, PoolRunner, run_sweep
from poisonclip.experiments.spec import GRID_BASE, SEED_AXIS, load_spec
from poisonclip.experiments.store import ResultsStore
from poisonclip.report.tables import attack_summary, column_name, format_cell, is_percent


def parse_axis(text: str) -> tuple[str, list]:
    field, sep, values = text.partition("=")
    if not sep or "." not in field or not values:
        raise SystemExit(f"--set {text!r}: write STAGE.FIELD=V1,V2 (e.g. train.epochs=20,30)")
    return field, [yaml.safe_load(v) for v in values.split(",")]


def tuning_spec(quick: bool, seeds: int, axes: list[tuple[str, list]], attacks: list[str] | None):
    raw = load_spec(spec_file(quick)).to_dict()
    grids = []
    for grid in raw["grid"]:
        if attacks and grid["poison.attack"][0] not in attacks:
            continue
        grid = {k: v for k, v in grid.items() if k != SEED_AXIS}
        for field, values in axes:   # the axis replaces the sub-grid's own setting of that field
            stage, _, name = field.partition(".")
            grid.get(GRID_BASE, {}).get(stage, {}).pop(name, None)
            grid[field] = values
        grids.append(grid)
    if not grids:
        raise SystemExit(f"--attacks {attacks}: the demo has {[g['poison.attack'][0] for g in raw['grid']]}")
    raw.update(grid=grids, name=f"{raw['name']}-tune")
    return demo_spec(quick, seeds, raw=raw)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="start from the quick demo's spec")
    ap.add_argument("--set", dest="axes", action="append", default=[], metavar="STAGE.FIELD=V1,V2",
                    help="a grid axis (repeatable)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--attacks", default=None, help="comma list: backdoor, targeted (default: both)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/poisonclip-tune-demo"))
    ap.add_argument("--workers", type=int, default=1, help="> 1: a process pool of this size")
    args = ap.parse_args(argv)
    axes = [parse_axis(a) for a in args.axes]
    spec = tuning_spec(args.quick, args.seeds, axes, args.attacks.split(",") if args.attacks else None)
    runner = PoolRunner(args.workers) if args.workers > 1 else LocalRunner()
    t0 = time.perf_counter()

    def show(event) -> None:
        if event.kind == "stage":
            print(f"  {event.trial}: {event.stage}", flush=True)
        elif event.kind == "end" and event.outcome is not None and event.outcome.error:
            print(f"  {event.trial} failed: {event.outcome.error}", flush=True)

    result = run_sweep(spec, args.out, runner, show, rerun_changed=True, force=True, note=print)
    print(f"\n{len(result.trials)} trials ({result.already_done} were done) in "
          f"{(time.perf_counter() - t0) / 60:.1f} min; sweep folder {result.sweep.root}")
    df = ResultsStore(result.sweep.db).frame("done")
    if df.empty:
        sys.exit("no trial finished")
    settings = [field for field, _ in axes]
    attacks = list(dict.fromkeys(df["poison.attack"]))
    groups = df.groupby(settings, sort=True, dropna=False) if settings else [((), df)]
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        summary = attack_summary(sub, "poison.attack", attacks)
        label = ", ".join(f"{f}={v}" for f, v in zip(settings, key)) or "the demo as it is"
        print(f"\n== {label} ({sub[SEED_AXIS].nunique()} seed(s))")
        cols = summary["columns"]
        print(f"{'metric':<48}" + "".join(f"{column_name(c):>34}" for c in cols))
        for row in summary["rows"]:
            print(f"{row['metric']:<48}" + "".join(f"{format_cell(row.get(c), is_percent(row['metric'])):>34}"
                                                   for c in cols))
        print("training s (all seeds): "
              + ", ".join(f"{column_name(k)} {v:.0f}" for k, v in summary["train_s"].items()))
    if any(o.state == "failed" for o in result.outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
