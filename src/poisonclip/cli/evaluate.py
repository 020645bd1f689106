"""``poisonclip eval`` (one checkpoint -> metrics.json) and ``poisonclip eval-compare``
(poisoned vs clean models, over seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from poisonclip.cli.common import App, console, safe_text
from poisonclip.errors import UserError


def _pct(rate: dict[str, Any] | None) -> str:
    if not rate or rate.get("rate") is None:
        return "-"
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({rate['k']}/{rate['n']})"


def _metrics_table(m: dict[str, Any]) -> Table:
    t = Table(title=f"{m['model']['name']}  {Path(m['model']['checkpoint']).name}", title_justify="left")
    t.add_column("metric")
    t.add_column("zero-shot (95% CI)")
    t.add_column("linear probe (95% CI)")
    clean = m["clean"]
    t.add_row("clean top-1", _pct(clean["zeroshot"]["top1"]), _pct(clean.get("probe", {}).get("top1")))
    ret = m.get("retrieval") or {}
    for direction, name in (("image_to_text", "image-to-text"), ("text_to_image", "text-to-image")):
        for key, rate in (ret.get(direction) or {}).items():
            t.add_row(f"{name} {key}", _pct(rate), "")
    bd = m.get("backdoor")
    if bd:
        def which(name: str, placement: str) -> str:
            return f"{placement} (as trained)" if name == "train_placement" else placement

        for name, a in bd["asr"].items():
            t.add_row(f"ASR, trigger {which(name, a['placement'])}", _pct(a["zeroshot"]), _pct(a.get("probe")))
        for key, name in (("with_trigger", "with"), ("without_trigger", "without")):
            for k, rate in ((bd.get("retrieval") or {}).get(key) or {}).items():
                t.add_row(f"  target caption in image-to-text top {k.removeprefix('R@')}, {name} trigger", _pct(rate), "")
        base = bd["target_rate_without_trigger"]
        t.add_row("  as target without trigger", _pct(base["zeroshot"]), _pct(base.get("probe")))
        for name, z in bd["zscore"].items():
            if z["z"] is None:
                t.add_row(f"z-score, trigger {which(name, z['placement'])}", escape(safe_text(f"undefined: {z['note']}")), "")
                continue
            t.add_row(f"z-score, trigger {which(name, z['placement'])}",
                      f"{z['z']:.2f} ({z['mean_triggered']:.3f} vs {z['mean_clean']:.3f} "
                      f"+- {z['std_clean']:.3g})", "")
    tb = m.get("text_backdoor")
    if tb:
        if "skipped" in tb:
            t.add_row(f"text backdoor ({escape(safe_text(tb['token']))})", escape(safe_text(tb["skipped"])), "")
        for key, name in (("with_token", "with"), ("without_token", "without")):
            for k, rate in (tb.get(key) or {}).items():
                t.add_row(f"caption {name} token retrieves a target image, top {k.removeprefix('R@')}", _pct(rate), "")
    tg = m.get("targeted")
    if tg:
        s = tg["summary"]
        t.add_row("targeted success", _pct(s["zeroshot"]["success"]), _pct(s.get("probe", {}).get("success")))
        for row in tg["targets"]:
            cells = [f"{'hit' if row[h]['success'] else 'miss'} (rank {row[h]['rank']}, as {row[h]['predicted']})"
                     if h in row else "-" for h in ("zeroshot", "probe")]
            t.add_row(escape(safe_text(f"  {row['id']} -> {row['label']}")), *cells)
    return t


def eval_command(
    data: Annotated[Path, typer.Option(help="Labelled eval set: a table with a label column (test.tsv) or an ImageFolder.")],
    run: Annotated[Optional[Path], typer.Option(help="Run folder written by `poisonclip train` (reads run.json).")] = None,
    model: Annotated[Optional[str], typer.Option(help="open_clip model name (instead of --run).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint file for --model (.pt or .safetensors).")] = None,
    classnames: Annotated[Optional[Path], typer.Option(help="Class names, one per line (default: classnames.txt beside --data).")] = None,
    templates: Annotated[Optional[str], typer.Option(help="Prompt templates: 'openai' (CLIP's 80, default), 'simple', or a file with one template per line containing {}.")] = None,
    poison: Annotated[Optional[Path], typer.Option(help="Poisoned dataset folder; its poison.json gives the backdoor trigger or the targets. Also valid for clean models (the control).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder for metrics.json (default: RUN/eval with --run).")] = None,
    probe: Annotated[bool, typer.Option(help="Train and evaluate a linear probe.")] = True,
    probe_train: Annotated[Optional[Path], typer.Option(help="Labelled set to train the probe on (default: a per-class split of --data).")] = None,
    probe_fraction: Annotated[float, typer.Option(help="Share of --data that trains the probe when --probe-train is not given.")] = 0.5,
    probe_c: Annotated[Optional[list[float]], typer.Option("--probe-c", help="Inverse regularisation strengths to try (repeatable; default 1e-2..1e4).")] = None,
    retrieval: Annotated[bool, typer.Option(help="Measure image-to-text and text-to-image recall@1/5/10 on the eval set's own captions.")] = True,
    caption_key: Annotated[str, typer.Option(help="Caption column of the eval table (retrieval).")] = "title",
    seed: Annotated[int, typer.Option(help="Seed for random trigger positions and the probe split.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 128,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing metrics.json in --out.")] = False,
) -> None:
    """Evaluate one checkpoint: clean accuracy, backdoor ASR and z-score, targeted success."""
    from poisonclip.contracts import METRICS_FILE
    from poisonclip.evaluate.api import EvalConfig, evaluate
    from poisonclip.evaluate.probe import DEFAULT_CS

    if out is None:
        if run is None:
            raise UserError("--out: required with --model/--checkpoint (with --run it defaults to RUN/eval)")
        out = run / "eval"
    cfg = EvalConfig(data=data, out=out, run=run, model=model, checkpoint=checkpoint, classnames=classnames,
                     templates=templates, poison=poison, probe=probe, probe_train=probe_train,
                     probe_fraction=probe_fraction, probe_cs=tuple(probe_c) if probe_c else DEFAULT_CS,
                     seed=seed, batch_size=batch_size, device=device, overwrite=overwrite,
                     retrieval=retrieval, caption_key=caption_key)
    with console.status("evaluating") as status:
        m = evaluate(cfg, progress=lambda msg: status.update(msg))
    console.print(_metrics_table(m))
    console.print(f"wrote [bold]{out / METRICS_FILE}[/]")


def compare_command(
    poisoned: Annotated[list[Path], typer.Argument(help="metrics.json files (or folders holding them) of poisoned models.")],
    clean: Annotated[list[Path], typer.Option(help="metrics.json files or folders of clean models (repeatable).")],
    alpha: Annotated[float, typer.Option(help="Significance level of the accuracy test.")] = 0.05,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the comparison as JSON here.")] = None,
) -> None:
    """Poisoned vs clean models over seeds: mean +- std, pooled Wilson intervals, accuracy test."""
    from poisonclip.evaluate.compare import compare, load_metrics
    from poisonclip.io_utils import atomic_write_json

    if json_out is not None and json_out.exists():   # replace only an earlier comparison
        import json

        try:
            old = json.loads(json_out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if not (isinstance(old, dict) and {"poisoned", "clean", "accuracy_tests"} <= set(old)):
            raise UserError(f"--json {json_out}: exists and is not an eval-compare result; choose another file")
    res = compare(load_metrics(poisoned), load_metrics(clean), alpha)
    t = Table(title="poisoned vs clean models", title_justify="left")
    t.add_column("metric")
    t.add_column(f"poisoned (n={res['poisoned']['n_models']})")
    t.add_column(f"clean (n={res['clean']['n_models']})")

    def cell(s: dict[str, Any] | None) -> str:
        if s is None:
            return "-"
        if "per_model" in s:
            pm, po = s["per_model"], s["pooled"]
            std = f" +- {100 * pm['std']:.1f}" if pm["std"] is not None else ""
            distinct = (f", {po['n']} target-model pairs of {s['n_distinct_targets']} distinct targets"
                        if "n_distinct_targets" in s else "")
            return f"{100 * pm['mean']:.1f}%{std}  (pooled {_pct(po)}{distinct})"
        std = f" +- {s['std']:.2f}" if s["std"] is not None else ""
        return f"{s['mean']:.2f}{std}"

    for k in sorted((set(res["poisoned"]) | set(res["clean"])) - {"n_models"}):
        t.add_row(k, cell(res["poisoned"].get(k)), cell(res["clean"].get(k)))
    console.print(t)
    for head, c in res["accuracy_tests"].items():
        p = f"p={c['p_value']:.3g}" if c["p_value"] is not None else "p=n/a"
        verdict = "significant LOSS" if c["significant_loss"] else (
            "significant difference" if c["significant"] else "no significant difference")
        console.print(f"clean top-1 ({head}): diff {100 * c['diff']:+.2f} points, {c['test']}, {p}: "
                      f"{verdict} at alpha={c['alpha']} -- {c['note']}")
    for section, sec in res.get("drift", {}).items():
        d = Table(title=f"which encoder moved ({section}; {'paired by seed' if sec['paired'] else 'unpaired means'})",
                  title_justify="left")
        for col in ("side", "cosine", "clean", "poisoned", "change"):
            d.add_column(col)
        for side in ("image", "text", "cross"):
            for key, row in (sec.get(side) or {}).items():
                if isinstance(row, dict):
                    d.add_row(side, key, f"{row['clean']:.3f}", f"{row['poisoned']:.3f}", f"{row['change']:+.3f}")
        console.print(d)
    if json_out:
        atomic_write_json(json_out, res)


def register(root: App) -> None:
    """Add this stage's commands to the root app."""
    root.command("eval", flags={"probe_cs": "--probe-c", "probe": "--no-probe", "retrieval": "--no-retrieval"})(eval_command)
    root.command("eval-compare")(compare_command)
