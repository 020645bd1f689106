"""The demo's figures over several seeds, against the targets the project set for it.

    python bench/bench_demo.py --seeds 3 --out /tmp/demo-bench
    python bench/bench_demo.py --quick --seeds 1

Runs the demo (``poisonclip demo --seeds N``: the packaged spec through the sweep engine),
timing each stage of each trial as it runs, then prints the numbers of every seed, the time
per stage (of this run, and the recorded build time of every cached artefact), and for each
goal of the demo whether each seed met it, with the mean and spread over seeds (the report's
own judgement, ``report/goals.py``): whole demo <= 5 min per seed on 2 cores, clean zero-shot
>= 80%, poisoned models within 2 points of the clean one, backdoor ASR >= 90% and z-score >= 3
on every seed (clean models < 0.5), at least 4 targets a seed, a majority hit by the poisoned
model and none by the clean one; and the z-score's ceiling (1 - mean) / std of each seed. Stages whose artefact was already
in ``--out`` take no time in this run: use a fresh folder to time them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from poisonclip.demo import demo_spec, run_demo
from poisonclip.experiments.store import ResultsStore
from poisonclip.report.goals import judge, statements


class StageClock:
    """Event sink: wall time of each (trial, stage), from its start to the trial's next event."""

    def __init__(self) -> None:
        self.open: dict[str, tuple[str, float]] = {}
        self.seconds: dict[tuple[str, str], float] = {}

    def __call__(self, event) -> None:
        now = time.perf_counter()
        if event.trial in self.open:
            stage, t0 = self.open.pop(event.trial)
            self.seconds[(event.trial, stage)] = now - t0
        if event.kind == "stage":
            self.open[event.trial] = (event.stage, now)
            print(f"  {event.trial}: {event.stage}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/poisonclip-demo-bench"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    clock = StageClock()
    t0 = time.perf_counter()
    res = run_demo(demo_spec(args.quick, args.seeds), args.out, clock)
    wall = time.perf_counter() - t0
    df = ResultsStore(res.sweep.sweep.db).frame("done").sort_values(["poison.attack", "seed"])
    bd, tg = (df[df["poison.attack"] == a].set_index("seed") for a in ("backdoor", "targeted"))

    print(f"\nseeds: {args.seeds}; wall time {wall / 60:.1f} min in all, {wall / 60 / args.seeds:.1f} min per seed"
          f" ({res.sweep.already_done} trial(s) were done before)")
    print("\nper seed (zero-shot; backdoor: trigger as trained):")
    head = ("seed", "clean top1", "bd top1", "tg top1", "ASR bd", "ASR clean", "z bd", "z clean", "hits tg",
            "hits clean")
    print("".join(f"{h:>11}" for h in head))
    for seed in sorted(set(bd.index) | set(tg.index)):
        b, t = bd.loc[seed] if seed in bd.index else {}, tg.loc[seed] if seed in tg.index else {}

        def g(row, col, fmt="{:.1%}"):
            v = row.get(col) if hasattr(row, "get") else None
            return "-" if v is None or v != v else fmt.format(v)

        def hits(row, who):
            k, n = row.get(f"{who}.targeted_success_zeroshot_k"), row.get(f"{who}.targeted_success_zeroshot_n")
            return "-" if k is None or k != k else f"{int(k)}/{int(n)}"

        print("".join(f"{v:>11}" for v in (
            seed, g(b, "clean.top1_zeroshot"), g(b, "poisoned.top1_zeroshot"), g(t, "poisoned.top1_zeroshot"),
            g(b, "poisoned.asr_as_trained_zeroshot"), g(b, "clean.asr_as_trained_zeroshot"),
            g(b, "poisoned.z_as_trained", "{:.2f}"), g(b, "clean.z_as_trained", "{:.2f}"),
            hits(t, "poisoned"), hits(t, "clean"))))

    per_stage: dict[str, list[float]] = defaultdict(list)
    for (_, stage), s in clock.seconds.items():
        per_stage[stage].append(s)
    print("\ntime per stage (this run; reused artefacts take ~0 s):")
    for stage, secs in per_stage.items():
        print(f"  {stage:<12} {len(secs)} x, total {sum(secs):7.1f} s, mean {np.mean(secs):6.1f} s, "
              f"max {max(secs):6.1f} s")
    built: dict[str, list[float]] = defaultdict(list)   # what each cached artefact took when it was made
    for marker in (res.out / "cache").glob("*/*.json"):
        info = json.loads(marker.read_text())
        built[info["kind"]].append(float(info.get("built_s", 0.0)))
    print("build time of the shared artefacts (recorded when each was made, also in earlier runs):")
    for kind, secs in built.items():
        print(f"  {kind:<12} {len(secs)} x, total {sum(secs):7.1f} s, mean {np.mean(secs):6.1f} s")
    trained = [s for s in (*bd.get("model.wall_time_s", []), *tg.get("model.wall_time_s", []),
                           *bd.get("clean_model.wall_time_s", [])) if s == s]
    if trained:
        print(f"training wall time per model (as recorded): mean {np.mean(trained):.0f} s, max {np.max(trained):.0f} s")

    # The goals, judged seed by seed exactly as the demo's report does (report/goals.py), plus
    # the z-score's ceiling: z = (mean triggered sim - mean clean sim) / clean std cannot exceed
    # (1 - mean clean sim) / clean std, whatever the attack does.
    print()
    results = judge(df, "poison.attack", ["backdoor", "targeted"])
    for r in results:
        print(f"{r.goal:<60} {r.verdict.upper():<13} {r.spread}")
    print()
    for line in statements(results):
        print(line)
    for seed, row in bd.iterrows():
        mean, std = row.get("poisoned.sim_clean_mean"), row.get("poisoned.sim_clean_std")
        if mean == mean and std == std and std:
            print(f"seed {seed}: clean pairwise similarity {mean:.3f} +- {std:.3f}; z-score ceiling "
                  f"{(1 - mean) / std:.2f}")
    print(json.dumps({"summary": str(res.out / "summary.json"), "report": str(res.report)}))


if __name__ == "__main__":
    main()
