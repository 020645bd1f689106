"""The main job: the paper's two attacks end to end on the embedded corpus.

corpus -> {clean, backdoored, targeted-poisoned} datasets -> one tiny open_clip model per
dataset and seed (same seeds for all three) -> evaluation -> one table and an HTML report.

Every seed is an independent replicate: seed s trains the three models with seed s *and*
poisons with seed s (new backdoor source images, new targets drawn from the test split), and
evaluates with seed s. The linear probe trains on the corpus' own labelled probe split, never
on test images; targets are left out of clean accuracy by the evaluator. Targeted success is
reported over (target, model) pairs with the number of distinct targets behind it, and clean
accuracy is compared with the paired test (models of one seed form a pair).

Every stage goes through the same library functions the CLI exposes (``write_corpus``,
``attacks.api.poison``, ``train.run.train``, ``evaluate.api.evaluate``), so the demo proves
they fit together. Each artefact lives in a folder named by a hash of the config that made
it and counts as done only when its completion file exists (corpus.json, poison.json,
run.json, metrics.json — all written last and atomically), so an interrupted demo picks up
where it stopped and a changed setting never reuses a stale artefact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from poisonclip.data.synthetic import SynthConfig
from poisonclip.io_utils import atomic_write_json

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs. Defaults are the tuned full demo; ``quick()`` is the test-sized one."""

    out: Path = Path("runs/demo")
    seeds: int = 1
    corpus: SynthConfig = field(default_factory=lambda: SynthConfig(n_train=4000, n_test=1000, n_probe=1000))
    preset: str = "cpu-tiny"
    model: str | None = None             # None: the preset's
    epochs: int | None = None            # None: the preset's
    batch_size: int | None = None        # None: the preset's
    # Backdoor (section 3.3): corner checkerboard on <= 1% of the data, search captions.
    backdoor_label: str = "star"
    backdoor_poisons: int = 40           # 1% of the poisoned dataset
    patch_size: int = 32                 # pixels at 224x224 (5 px at 32 px); the paper's largest
    placement: str = "corner"
    # Targeted poisoning (section 3.1): several test images, each with its own wrong label.
    targets: int = 2
    copies_per_target: int = 4           # 8 poisons = 0.2%
    caption_source: str = "templates"
    eval_templates: str | None = None    # None: CLIP's 80 ImageNet templates

    @classmethod
    def quick(cls, out: Path = Path("runs/demo-quick"), **overrides: Any) -> "DemoConfig":
        """The whole pipeline in a few minutes on 2 cores, with an effect big enough to test.

        1500 pairs, batch 128 (11 steps an epoch, so 30 epochs give the schedule ~330 steps)
        and 5% backdoor poisons: a smaller corpus needs a larger share for the patch to take
        in so few steps. It tests that the attack is wired end to end, not the paper's ratios.
        """
        base = dict(out=out, corpus=SynthConfig(n_train=1500, n_test=300, n_probe=300), epochs=30, batch_size=128,
                    backdoor_poisons=79, targets=2, copies_per_target=3)
        base.update(overrides)
        return cls(**base)

    @property
    def poison_ratio_backdoor(self) -> float:
        return self.backdoor_poisons / (self.corpus.n_train + self.backdoor_poisons)

    @property
    def poison_ratio_targeted(self) -> float:
        n = self.targets * self.copies_per_target
        return n / (self.corpus.n_train + n)


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def _jsonable(cfg: DemoConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["out"] = str(cfg.out)
    return d


@dataclass(frozen=True)
class ModelResult:
    kind: str          # clean | backdoor | targeted
    seed: int
    run_dir: Path
    metrics: dict[str, dict[str, Any]]   # eval name -> metrics.json content
    train_s: float


@dataclass(frozen=True)
class DemoResult:
    out: Path
    models: tuple[ModelResult, ...]
    summary: dict[str, Any]
    report: Path
    wall_s: float


def run_demo(cfg: DemoConfig, say: Say = print, train_events: Callable[[], Any] | None = None) -> DemoResult:
    """Run (or resume) the whole demo; returns the per-model metrics, summary and report path.

    ``train_events`` makes a fresh event handler (a context manager) for each training run,
    e.g. the CLI's rich progress bar; None trains silently.
    """
    from poisonclip.attacks.api import BackdoorConfig, TargetedConfig, poison
    from poisonclip.contracts import (CORPUS_INFO_FILE, METRICS_FILE, POISON_INFO_FILE, RUN_INFO_FILE, CorpusPaths,
                                      read_metrics, read_run_info)
    from poisonclip.data.corpus import write_corpus
    from poisonclip.evaluate.api import EvalConfig, evaluate
    from poisonclip.train.models import input_size
    from poisonclip.train.run import TrainConfig, train

    t0 = time.perf_counter()
    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)

    corpus_dir = out / f"corpus-{_hash(dataclasses.asdict(cfg.corpus))}"
    if (corpus_dir / CORPUS_INFO_FILE).exists():
        say(f"corpus: reusing {corpus_dir.name}")
    else:
        say(f"corpus: generating {cfg.corpus.n_train} training + {cfg.corpus.n_test} test "
            f"+ {cfg.corpus.n_probe} probe-training images")
        write_corpus(cfg.corpus, corpus_dir, formats=("csv",), overwrite=True)
    paths = CorpusPaths.from_folder(corpus_dir)
    train_csv, test_csv = Path(paths.train), Path(paths.test)
    probe_csv = Path(paths.probe) if paths.probe else None

    # Poisons are written at the model's input size, so training sees the patch pixel for pixel.
    backdoor_cfg = dict(target_label=cfg.backdoor_label, n_poisons=cfg.backdoor_poisons,
                        patch_size=cfg.patch_size, placement=cfg.placement,
                        resolution=input_size(TrainConfig.from_preset(cfg.preset, "-", "-", model=cfg.model).model))
    targeted_cfg = dict(random_targets=cfg.targets, n_poisons=cfg.copies_per_target,
                        caption_source=cfg.caption_source)

    def poisoned_sets(seed: int) -> tuple[Path, Path]:
        """This seed's own poisoned datasets (keyed by corpus, settings and seed: resumable)."""
        backdoor_dir = out / "data" / f"backdoor-seed{seed}-{_hash([corpus_dir.name, backdoor_cfg, seed])}"
        targeted_dir = out / "data" / f"targeted-seed{seed}-{_hash([corpus_dir.name, targeted_cfg, seed])}"
        if not (backdoor_dir / POISON_INFO_FILE).exists():
            say(f"poison: backdoor, seed {seed}, {cfg.backdoor_poisons} poisons "
                f"({100 * cfg.poison_ratio_backdoor:.2f}%), label {cfg.backdoor_label!r}")
            poison(BackdoorConfig(data=str(train_csv), out=str(backdoor_dir), seed=seed, overwrite=True,
                                  **backdoor_cfg))
        if not (targeted_dir / POISON_INFO_FILE).exists():
            say(f"poison: targeted, seed {seed}, {cfg.targets} test images x {cfg.copies_per_target} copies "
                f"({100 * cfg.poison_ratio_targeted:.2f}%), {cfg.caption_source} captions")
            poison(TargetedConfig(data=str(train_csv), out=str(targeted_dir), target_source=str(test_csv),
                                  seed=seed, overwrite=True, **targeted_cfg))
        return backdoor_dir, targeted_dir

    models: list[ModelResult] = []
    for seed in range(cfg.seeds):
        backdoor_dir, targeted_dir = poisoned_sets(seed)
        datasets = {"clean": train_csv, "backdoor": backdoor_dir, "targeted": targeted_dir}
        # Which poisoned folder each model is measured against: the clean model of this seed
        # against both, as the control for each attack.
        evals = {"clean": {"backdoor": backdoor_dir, "targeted": targeted_dir},
                 "backdoor": {"backdoor": backdoor_dir}, "targeted": {"targeted": targeted_dir}}
        for kind, data in datasets.items():
            tcfg = TrainConfig.from_preset(cfg.preset, data=str(data), out="", model=cfg.model,
                                           epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed)
            key = _hash([str(data), dataclasses.asdict(tcfg)])
            run_dir = out / "runs" / f"{kind}-seed{seed}-{key}"
            tcfg = dataclasses.replace(tcfg, out=str(run_dir), resume=True)
            if (run_dir / RUN_INFO_FILE).exists():
                say(f"train: {kind} seed {seed}: reusing {run_dir.name}")
            else:
                say(f"train: {kind} model, seed {seed}")
                if train_events is None:
                    train(tcfg)
                else:
                    with train_events() as handler:
                        train(tcfg, on_event=handler)
            run_info = read_run_info(run_dir)
            metrics = {}
            for name, pdir in evals[kind].items():
                edir = run_dir / f"eval-{name}"
                if not (edir / METRICS_FILE).exists():
                    say(f"eval: {kind} model, seed {seed}, against the {name} attack")
                    evaluate(EvalConfig(data=test_csv, out=edir, run=run_dir, poison=pdir, probe_train=probe_csv,
                                        templates=cfg.eval_templates, seed=seed, overwrite=True))
                metrics[name] = read_metrics(edir).to_json()
            models.append(ModelResult(kind, seed, run_dir, metrics, float(run_info.wall_time_s or 0.0)))

    summary = summarise(cfg, models)
    summary["wall_s"] = time.perf_counter() - t0
    atomic_write_json(out / "summary.json", summary)
    from poisonclip.report.demo_report import write_demo_report

    report = write_demo_report(out / "report.html", cfg, models, summary)
    return DemoResult(out, tuple(models), summary, report, time.perf_counter() - t0)


# ---------------------------------------------------------------------------- summary

def _get(d: dict[str, Any], *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


ROWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (row label, eval to read, path to a number or a Rate dict)
    ("clean zero-shot top-1", "*", ("clean", "zeroshot", "top1")),
    ("clean linear-probe top-1", "*", ("clean", "probe", "top1")),
    ("backdoor ASR, corner patch (zero-shot)", "backdoor", ("backdoor", "asr", "train_placement", "zeroshot")),
    ("backdoor ASR, random place (zero-shot)", "backdoor", ("backdoor", "asr", "random", "zeroshot")),
    ("backdoor ASR, corner patch (probe)", "backdoor", ("backdoor", "asr", "train_placement", "probe")),
    ("backdoor z-score, corner patch", "backdoor", ("backdoor", "zscore", "train_placement", "z")),
    ("backdoor z-score, random place", "backdoor", ("backdoor", "zscore", "random", "z")),
    ("targets classified as their label (zero-shot)", "targeted", ("targeted", "summary", "zeroshot", "success")),
    ("targets classified as their label (probe)", "targeted", ("targeted", "summary", "probe", "success")),
    ("mean rank of the target label (zero-shot)", "targeted", ("targeted", "summary", "zeroshot", "mean_rank")),
)


def _value(m: ModelResult, which: str, path: tuple[str, ...]) -> tuple[float | None, Any]:
    if which == "*":
        which = next(iter(m.metrics))
    v = _get(m.metrics.get(which, {}), *path)
    if isinstance(v, dict) and "rate" in v:
        return v["rate"], v
    return (float(v) if isinstance(v, (int, float)) else None), v


def _targets_of(m: ModelResult, which: str) -> list[str]:
    """Identities (image hash or id, and label) of the targets one model was measured on."""
    rows = _get(m.metrics.get(which, {}), "targeted", "targets") or []
    return [f"{r.get('source_sha256') or r.get('id')}:{r.get('label')}" for r in rows]


def summarise(cfg: DemoConfig, models: list[ModelResult]) -> dict[str, Any]:
    """Per row and model kind: mean and std over seeds (rates also pooled k/n with Wilson CI;
    targeted rows also say how many distinct targets stand behind the (target, model) pairs)."""
    from poisonclip.evaluate.stats import Rate, compare_accuracy, mean_std, pooled_rate

    rows = []
    for label, which, path in ROWS:
        row: dict[str, Any] = {"metric": label}
        for kind in ("clean", "backdoor", "targeted"):
            if which not in ("*", kind) and kind != "clean":
                continue
            vals, rates, targets = [], [], []
            for m in models:
                if m.kind != kind or (which != "*" and which not in m.metrics):
                    continue
                v, raw = _value(m, which, path)
                if v is not None:
                    vals.append(v)
                if isinstance(raw, dict) and "k" in raw:
                    rates.append(Rate.from_dict(raw))
                if which == "targeted":
                    targets.extend(_targets_of(m, which))
            if vals:
                s = mean_std(vals)
                cell: dict[str, Any] = {"mean": s.mean, "std": s.std, "n_models": len(vals)}
                if rates:
                    pooled = pooled_rate(rates)
                    cell.update(k=pooled.k, n=pooled.n, ci95=list(pooled.ci95))
                if targets and rates:
                    cell.update(n_targets_per_model=len(targets) // len(vals), n_distinct_targets=len(set(targets)))
                row[kind] = cell
        rows.append(row)

    def accs(kind: str, which: str) -> dict[int, dict[str, Any]]:
        """Clean top-1 per seed, measured in the evaluation against attack ``which`` (for the
        clean model: the same images the poisoned model was scored on, targets left out)."""
        out = {}
        for m in models:
            if m.kind == kind and which in m.metrics:
                raw = _value(m, which, ("clean", "zeroshot", "top1"))[1]
                if isinstance(raw, dict) and "k" in raw:
                    out[m.seed] = raw
        return out

    tests = {}
    for kind in ("backdoor", "targeted"):
        pois, clean = accs(kind, kind), accs("clean", kind)
        seeds = sorted(set(pois) & set(clean))
        paired = bool(seeds) and len(seeds) == len(pois) == len(clean)
        if not paired:
            seeds_p, seeds_c = sorted(pois), sorted(clean)
        else:
            seeds_p = seeds_c = seeds
        if seeds_p and seeds_c:
            tests[kind] = compare_accuracy(
                [pois[s]["rate"] for s in seeds_p], [clean[s]["rate"] for s in seeds_c],
                poisoned_counts=[Rate.from_dict(pois[s]) for s in seeds_p],
                clean_counts=[Rate.from_dict(clean[s]) for s in seeds_c], paired=paired).to_dict()
    return {"config": _jsonable(cfg), "rows": rows, "accuracy_tests": tests,
            "train_s": {k: sum(m.train_s for m in models if m.kind == k) for k in ("clean", "backdoor", "targeted")}}


def format_cell(cell: dict[str, Any] | None, percent: bool) -> str:
    if not cell:
        return "—"
    mean, std = cell["mean"], cell["std"]
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{mean * scale:.1f}{unit}" if percent else f"{mean:.2f}"
    if cell["n_models"] > 1 and std == std:
        text += f" ± {std * scale:.1f}" if percent else f" ± {std:.2f}"
    if "n_distinct_targets" in cell:
        # (target, model) pairs are not independent draws when targets repeat across models
        text += (f" ({cell['k']}/{cell['n']}: {cell['n_targets_per_model']} targets x {cell['n_models']} "
                 f"model{'s' if cell['n_models'] > 1 else ''}, {cell['n_distinct_targets']} distinct)")
    elif "k" in cell and cell["n_models"] == 1 and cell["n"] <= 20:
        text += f" ({cell['k']}/{cell['n']})"
    return text


def is_percent(row_label: str) -> bool:
    return "z-score" not in row_label and "rank" not in row_label
