"""Run the paper's figures at toy scale (configs/paper/*.yaml), one after another, and check in
what the report makes of them.

    python bench/paper_figures.py                         # every preset, in the order below
    python bench/paper_figures.py fig6-patch-size         # one
    python bench/paper_figures.py --report-only           # re-make reports from finished sweeps

Each preset runs with ``poisonclip sweep run`` into ``runs/paper/<name>`` with one shared
``--cache runs/paper-cache``, so models several figures have in common (the clean models, the
corner backdoor at 80 poisons) are trained once; a killed run resumes where it stopped when
started again. Then ``poisonclip report`` writes the figures and tables, and its CSVs and PNGs
are copied to ``bench/results/paper/<name>/`` (committed), with ``run.json``: the measured wall
time of each ``sweep run`` call (several after a resume) and what ran. Last, the clean-accuracy
table over every trained model of every preset (``poisonclip report --pool``).

The sweeps run one at a time and nothing else should run beside them: each wall time is a
measurement. ``--workers 2`` (the pool runner, one torch thread per worker) trained 1.2x more
samples per second than one two-thread process on the 2-core machine (measured: 10.1 vs 8.6
steps/s of the demo's model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Order: the headline first, then the figures whose models the later ones reuse.
PRESETS = ("fig2-targeted", "fig4-placement", "fig6-patch-size", "fig5-data-size", "fig5-model-size",
           "fig2-backdoor")
CLI = [sys.executable, "-m", "poisonclip"]


def run_preset(name: str, runs: Path, cache: Path, results: Path, workers: int) -> None:
    out = runs / name
    dest = results / name
    dest.mkdir(parents=True, exist_ok=True)
    log = dest / "run.json"
    record = json.loads(log.read_text()) if log.is_file() else {"preset": f"configs/paper/{name}.yaml", "calls": []}
    cmd = [*CLI, "sweep", "run", str(ROOT / "configs" / "paper" / f"{name}.yaml"), "--out", str(out),
           "--cache", str(cache), "--runner", "pool", "--workers", str(workers), "--no-report"]
    t0 = time.time()
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    record["calls"].append({"command": " ".join(cmd[2:]), "wall_s": round(time.time() - t0, 1), "rc": rc,
                            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0)),
                            "cpus": len(os.sched_getaffinity(0))})
    log.write_text(json.dumps(record, indent=1) + "\n")
    make_report(name, runs, results)


def make_report(name: str, runs: Path, results: Path) -> None:
    out = runs / name
    if not (out / "spec.yaml").is_file():
        print(f"{name}: no sweep folder at {out}; skipped")
        return
    subprocess.run([*CLI, "report", str(out)], cwd=ROOT, check=True)
    copy_report(out / "report", results / name)


# The columns each figure's markdown table shows (summary.csv has every metric).
KEY_METRICS = (
    ("poisoned.targeted_success_zeroshot", "targets hit, zero-shot"),
    ("poisoned.targeted_success_probe", "targets hit, probe"),
    ("clean.targeted_success_zeroshot", "clean model, zero-shot"),
    ("poisoned.asr_as_trained_zeroshot", "ASR as trained"),
    ("poisoned.z_as_trained", "z as trained"),
    ("poisoned.z_corner", "z, corner test"),
    ("poisoned.z_random", "z, random-place test"),
    ("poisoned.asr_as_trained_probe", "ASR, probe"),
    ("poisoned.top1_zeroshot", "top-1 poisoned"),
    ("clean.top1_zeroshot", "top-1 clean"),
)


def _cell(row: dict, col: str, rate: bool) -> str:
    import math

    m = row.get(f"{col} mean")
    if m is None or m != m:
        return "-"
    s = row.get(f"{col} std")
    fmt = (lambda v: f"{100 * v:.1f}%") if rate else (lambda v: f"{v:.2f}")
    text = fmt(m) + (f" ± {fmt(s).rstrip('%')}" if s is not None and s == s and math.isfinite(s) else "")
    k, n = row.get(f"{col} k"), row.get(f"{col} n")
    if rate and k is not None and k == k and ".targeted_" in col:
        lo, hi = row.get(f"{col} ci95_lo"), row.get(f"{col} ci95_hi")
        text = f"{int(k)}/{int(n)} = {100 * k / n:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
    return text


def markdown_table(summary_csv: Path) -> str:
    """summary.csv's figure columns as a markdown table (mean ± std over models; targeted
    success as pooled k/n with its 95% Wilson interval)."""
    import csv

    rows = list(csv.DictReader(summary_csv.open()))
    if not rows:
        return ""
    settings = [c for c in rows[0] if " " not in c and c not in ("n_models",) and not c.startswith("model.")]
    # parameter counts only where the model is the figure's axis
    sizes = [c for c in ("model.vision_params", "model.n_params") if c in rows[0] and len({r[c] for r in rows}) > 1]
    metrics = [(c, label) for c, label in KEY_METRICS if f"{c} mean" in rows[0]]
    head = [*(c.rsplit(".", 1)[-1] for c in settings), *(("image tower", "whole model")[i] for i, _ in
                                                         enumerate(sizes)), "models", *(lbl for _, lbl in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        stats = ("mean", "std", "ci95_lo", "ci95_hi", "k", "n")
        vals = {k: ((float(v) if v not in ("", None) else None) if k.split(" ")[-1] in stats else v)
                for k, v in r.items()}
        cells = [vals[c] for c in settings]
        cells += [f"{float(r[c]) / 1e6:.2f}M" if r[c] else "-" for c in sizes]
        cells.append(r["n_models"])
        cells += [_cell(vals, c, not c.endswith(("z_as_trained", "z_corner", "z_random"))) for c, _ in metrics]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def copy_report(report: Path, dest: Path) -> None:
    """The report's CSVs and PNGs (not the SVGs and HTML: the PNGs are what the docs show)."""
    dest.mkdir(parents=True, exist_ok=True)
    # pooled.json only marks the pooled report's own folder (with absolute paths): not a result
    for f in [*report.glob("*.csv"), *(j for j in report.glob("*.json") if j.name != "pooled.json"),
              *(report / "figures").glob("*.png")]:
        shutil.copyfile(f, dest / f.name)
    if (report / "summary.csv").is_file():
        (dest / "summary.md").write_text(markdown_table(report / "summary.csv"))


def times_table(runs: Path, results: Path) -> str:
    """Per preset: the measured wall time of its runs (with the models earlier presets left in
    the cache), the models it trained, and the time it would take alone: the measured time
    plus half (two workers) the recorded training time of the models it found in the cache."""
    from datetime import datetime, timezone

    from poisonclip.experiments.store import SweepDir

    lines = ["| preset | trials | models (trained here / reused) | measured wall time | alone (estimate) |",
             "|---|---|---|---|---|"]
    for name in PRESETS:
        log, sweep = results / name / "run.json", SweepDir(runs / name)
        if not log.is_file() or not (sweep.root / "trials.json").is_file():
            continue
        calls = [c for c in json.loads(log.read_text())["calls"] if c["rc"] == 0]
        windows = [(datetime.strptime(c["started"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp(),
                    c["wall_s"]) for c in calls]
        trials = sweep.load_trials()
        keys = {t.keys.model for t in trials} | {t.keys.clean_model for t in trials if t.baseline}
        here, reused_s, n_reused = 0, 0.0, 0
        for key in keys:
            marker = sweep.cache_marker("model", key)
            if not marker.is_file():
                continue
            built = any(t0 <= marker.stat().st_mtime <= t0 + w for t0, w in windows)
            if built:
                here += 1
            else:
                n_reused += 1
                reused_s += json.loads(marker.read_text()).get("built_s", 0.0)
        wall = sum(w for _, w in windows)
        lines.append(f"| {name} | {len(trials)} | {here} / {n_reused} | {wall / 60:.1f} min "
                     f"({len(calls)} run{'s' if len(calls) > 1 else ''}) | {(wall + reused_s / 2) / 60:.0f} min |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "paper")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "paper-cache")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "paper")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    for name in args.presets:
        if args.report_only:
            make_report(name, args.runs, args.results)
        else:
            run_preset(name, args.runs, args.cache, args.results, args.workers)
    (args.results / "times.md").write_text(times_table(args.runs, args.results))
    folders = [args.runs / n for n in PRESETS if (args.runs / n / "spec.yaml").is_file()]
    if folders:
        pooled = args.runs / "clean-accuracy"
        rc = subprocess.run([*CLI, "report", "--pool", *map(str, folders), "--out", str(pooled)], cwd=ROOT).returncode
        if rc == 0:
            copy_report(pooled, args.results / "clean-accuracy")


if __name__ == "__main__":
    main()
