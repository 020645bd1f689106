"""``poisonclip defend``: apply a defense and measure the model before and after it.

``defend filter``: drop what a detector flags, train on the rest; ``defend cleanclip``:
fine-tune a poisoned model on clean pairs with CleanCLIP's added unimodal losses;
``defend roclip``: train with RoCLIP's nearest-caption matching epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

import typer
from rich.table import Table

from poisonclip.cli.common import App, console
from poisonclip.train.presets import CPU_TINY

app = App(help="Defenses: filter the data with a detector then train, CleanCLIP fine-tuning, or RoCLIP "
               "training; each measured before and after.")

_EVAL_HELP = "Labelled set to evaluate on (default: the test split of the corpus the poisoned set was made from)."

# The evaluation options every defense command shares (one definition, three commands).
EvalData = Annotated[Optional[Path], typer.Option(help=_EVAL_HELP)]
Classnames = Annotated[Optional[Path], typer.Option(help="Class list (default: beside the eval set).")]
Templates = Annotated[Optional[str], typer.Option(help="Zero-shot templates: openai, simple or a file.")]
Probe = Annotated[bool, typer.Option(help="Also fit the linear probe (slower).")]
Overwrite = Annotated[bool, typer.Option(help="Replace an earlier defense in --out.")]


def _measure(evaluate: bool, eval_data: Optional[Path], classnames: Optional[Path], templates: Optional[str],
             probe: bool, seed: int) -> Any:
    from poisonclip.defend.measure import MeasureConfig

    if not evaluate:
        return None
    return MeasureConfig(eval_data=eval_data, classnames=classnames, templates=templates, probe=probe, seed=seed)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _show(info: Any, out: Path) -> None:
    from poisonclip.contracts import DEFENSE_INFO_FILE
    from poisonclip.defend.measure import headline

    r = info.removed
    if r:
        line = f"{r['n_removed']} of {r['n_samples']} samples removed (score cut {r['threshold']:g})"
        if "poisons_removed" in r:
            line += f": {r['poisons_removed']} of {r['n_poisons']} poisons, {r['clean_removed']} clean"
        console.print(line)
    rows = headline(info.before, info.after)
    if rows:
        t = Table("measure", "before", "after", title="before -> after the defense", title_justify="left")
        for what, b, a in rows:
            t.add_row(what, _cell(b), _cell(a))
        console.print(t)
    cost = ", ".join(f"{k} {_cell(v)}" for k, v in info.cost.items())
    console.print(f"cost: {cost}")
    console.print(f"wrote [bold]{out / DEFENSE_INFO_FILE}[/]")


@app.command("filter")
def filter_command(
    data: Annotated[str, typer.Argument(help="A poisoned dataset folder (or a CSV/TSV table, shards, a corpus "
                                             "folder).")],
    method: Annotated[str, typer.Option(help="The detector whose flags are dropped (`poisonclip list detectors`).")],
    out: Annotated[Path, typer.Option(help="Output folder: detection/, data/ (the kept samples), run/, eval/, "
                                           "eval-before/, defense.json.")],
    threshold: Annotated[Optional[float], typer.Option(help="Drop every sample scoring at least this.")] = None,
    drop_fraction: Annotated[Optional[float], typer.Option(help="Drop at most this fraction of the data, top "
                                                                "scores first (ties at the cut are kept).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Run folder whose model embeds the data (model-based "
                                                       "detectors).")] = None,
    manifest: Annotated[str, typer.Option(help="Ground truth to count removals: auto, none or a manifest.csv.")]
    = "auto",
    train: Annotated[bool, typer.Option(help="Train on the kept data (open_clip's trainer).")] = True,
    preset: Annotated[str, typer.Option(help="Training preset (`poisonclip train --help`).")] = "cpu-tiny",
    train_model: Annotated[Optional[str], typer.Option(help="open_clip model name to train (default: the "
                                                            "preset's).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch (default: the preset's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the preset's).")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Warm-up steps (default: the preset's).")] = None,
    seed: Annotated[int, typer.Option(help="Training and evaluation seed.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads of the training process.")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="GPUs for training (0: CPU).")] = None,
    before: Annotated[Optional[Path], typer.Option(help="Run folder of the model trained without the defense "
                                                        "(on DATA), evaluated the same way.")] = None,
    evaluate: Annotated[bool, typer.Option(help="Evaluate the trained model (and --before).")] = True,
    eval_data: EvalData = None,
    classnames: Classnames = None,
    templates: Templates = None,
    probe: Probe = False,
    overwrite: Overwrite = False,
) -> None:
    """Filter-then-train: drop what a detector flags, train on the rest, measure before and after."""
    from poisonclip.defend.filter import FilterConfig, defend_filter

    settings: Mapping[str, Any] | None = None
    if train:
        settings = {k: v for k, v in {"preset": preset, "model": train_model, "epochs": epochs,
                                      "batch_size": batch_size, "lr": lr, "warmup": warmup, "seed": seed,
                                      "threads": threads, "gpus": gpus}.items() if v is not None}
    cfg = FilterConfig(data=Path(data), out=out, method=method, threshold=threshold, drop_fraction=drop_fraction,
                       model=model, manifest=manifest, overwrite=overwrite, train=settings, before=before,
                       measure=_measure(evaluate and (train or before is not None), eval_data, classnames,
                                        templates, probe, seed))
    with console.status("filtering") as status:
        res = defend_filter(cfg, progress=lambda msg: status.update(msg))
    _show(res.info, res.out)


@app.command("cleanclip")
def cleanclip_command(
    run: Annotated[Path, typer.Argument(help="The poisoned model: a run folder written by `poisonclip train`.")],
    data: Annotated[str, typer.Option(help="Clean pairs to fine-tune on: a CSV/TSV table, shards or a corpus "
                                           "folder.")],
    out: Annotated[Path, typer.Option(help="Output folder: run/ (the fine-tuned model), eval-before/, eval/, "
                                           "defense.json.")],
    subset: Annotated[Optional[int], typer.Option(help="Fine-tune on this many pairs drawn at random "
                                                       "(default: all).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 1e-4,
    wd: Annotated[float, typer.Option(help="Weight decay.")] = 0.1,
    warmup: Annotated[int, typer.Option(help="Warm-up steps.")] = 10,
    lambda_clip: Annotated[float, typer.Option(help="Weight of the image-caption loss.")] = 1.0,
    lambda_ss: Annotated[float, typer.Option(help="Weight of the unimodal (image-image, text-text) losses.")] = 1.0,
    crop_scale: Annotated[float, typer.Option(help="Lower bound of the augmentation's crop area.")] = 0.5,
    word_drop: Annotated[float, typer.Option(help="Probability of deleting each caption word.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the subset, the order and the augmentations.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    poison: Annotated[Optional[Path], typer.Option(help="Poisoned folder whose attack is measured (default: the "
                                                        "one RUN trained on).")] = None,
    evaluate: Annotated[bool, typer.Option(help="Evaluate RUN and the fine-tuned model.")] = True,
    eval_data: EvalData = None,
    classnames: Classnames = None,
    templates: Templates = None,
    probe: Probe = False,
    overwrite: Overwrite = False,
) -> None:
    """CleanCLIP: fine-tune a poisoned model on clean pairs with multimodal + unimodal contrastive losses."""
    from poisonclip.defend.cleanclip import CleanClipConfig, defend_cleanclip

    cfg = CleanClipConfig(run=run, data=Path(data), out=out, subset=subset, epochs=epochs, batch_size=batch_size,
                          lr=lr, wd=wd, warmup=warmup, lambda_clip=lambda_clip, lambda_ss=lambda_ss,
                          crop_scale=crop_scale, word_drop=word_drop, seed=seed, device=device, threads=threads,
                          overwrite=overwrite, poison=poison,
                          measure=_measure(evaluate, eval_data, classnames, templates, probe, seed))
    with console.status("fine-tuning") as status:
        info = defend_cleanclip(cfg, progress=lambda msg: status.update(msg))
    _show(info, out.absolute())


@app.command("roclip")
def roclip_command(
    data: Annotated[str, typer.Argument(help="The training data: a poisoned dataset folder (or a table, shards, a "
                                             "corpus folder).")],
    out: Annotated[Path, typer.Option(help="Output folder: run/ (the model), eval/, eval-before/, defense.json.")],
    model: Annotated[str, typer.Option(help="open_clip model name, trained from scratch.")] = CPU_TINY.model,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = CPU_TINY.epochs,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = CPU_TINY.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = CPU_TINY.lr,
    wd: Annotated[float, typer.Option(help="Weight decay.")] = CPU_TINY.wd,
    warmup: Annotated[int, typer.Option(help="Warm-up steps.")] = CPU_TINY.warmup,
    pool_size: Annotated[int, typer.Option(help="Caption embeddings in the pool.")] = 1024,
    nn_every: Annotated[int, typer.Option(help="Every K-th epoch pairs each image with its nearest pool "
                                               "caption.")] = 2,
    augment: Annotated[bool, typer.Option(help="Augment images and captions.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights, the order and the augmentations.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    before: Annotated[Optional[Path], typer.Option(help="Run folder of a model trained the ordinary way on DATA, "
                                                        "evaluated the same way.")] = None,
    poison: Annotated[Optional[Path], typer.Option(help="Poisoned folder whose attack is measured (default: DATA, "
                                                        "if it is one).")] = None,
    evaluate: Annotated[bool, typer.Option(help="Evaluate the model (and --before).")] = True,
    eval_data: EvalData = None,
    classnames: Classnames = None,
    templates: Templates = None,
    probe: Probe = False,
    overwrite: Overwrite = False,
) -> None:
    """RoCLIP: train with every K-th epoch pairing each image with its nearest caption in a pool."""
    from poisonclip.defend.roclip import RoClipConfig, defend_roclip

    cfg = RoClipConfig(data=Path(data), out=out, model=model, epochs=epochs, batch_size=batch_size, lr=lr, wd=wd,
                       warmup=warmup, pool_size=pool_size, nn_every=nn_every, augment=augment, seed=seed,
                       threads=threads, device=device, overwrite=overwrite, before=before, poison=poison,
                       measure=_measure(evaluate, eval_data, classnames, templates, probe, seed))
    with console.status("training with RoCLIP") as status:
        info = defend_roclip(cfg, progress=lambda msg: status.update(msg))
    _show(info, out.absolute())


def register(root: App) -> None:
    """Add this stage's commands to the root app."""
    root.add_typer(app, name="defend")
