"""``poisonclip train`` (open_clip's trainer, one command) and ``poisonclip models``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from poisonclip.cli.common import App, console, err_console, safe_text
from poisonclip.train.presets import DEFAULT_PRESET, PRESETS

Preset = Enum("Preset", {name.replace("-", "_"): name for name in PRESETS}, type=str)


class Precision(str, Enum):
    fp32 = "fp32"
    amp = "amp"
    amp_bf16 = "amp_bf16"
    bf16 = "bf16"
    fp16 = "fp16"


_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def train_cmd(
    ctx: typer.Context,
    data: Annotated[str, typer.Argument(help="CSV/TSV table, WebDataset shards (folder, .tar, brace "
                                             "pattern), a poisoned dataset folder or a corpus folder.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, open_clip's log, config.json, run.json.")],
    preset: Annotated[Preset, typer.Option(help="Hyperparameters to start from.")] = DEFAULT_PRESET,
    model: Annotated[Optional[str], typer.Option(help="open_clip model name (`poisonclip models`).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="GLOBAL batch (split over all processes).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    wd: Annotated[Optional[float], typer.Option(help="Weight decay.")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Warm-up steps.")] = None,
    crop_scale: Annotated[Optional[float], typer.Option(help="Lower bound of the random crop's area (1.0: no "
                                                            "crop, the cpu-tiny default; open_clip's: 0.9).")] = None,
    precision: Annotated[Optional[Precision], typer.Option(help="open_clip precision (fp32 on CPU).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Data-loader workers per process.")] = None,
    init: Annotated[Optional[Path], typer.Option(
        help="Fine-tune: start from this local checkpoint (.pt/.safetensors, or a run folder of `poisonclip train`) "
             "instead of random weights; it must fit --model. Nothing is downloaded.")] = None,
    seed: Annotated[int, typer.Option(help="Seed; same seed and data give the same loss curve on CPU.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per training process (default: all "
                                                        "cores; 1 when other jobs share the cores).")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="GPUs per node (0: CPU). Default: the preset's, "
                                                     "else 1 if a GPU is visible, else CPU.")] = None,
    nodes: Annotated[int, typer.Option(help="Nodes; >1 needs --rdzv-endpoint (run the command on each).")] = 1,
    node_rank: Annotated[int, typer.Option(help="This node's rank (0 writes run.json).")] = 0,
    rdzv_endpoint: Annotated[Optional[str], typer.Option(help="HOST:PORT of the torchrun rendezvous.")] = None,
    rdzv_id: Annotated[Optional[str], typer.Option(help="Rendezvous id, same on all nodes "
                                                         "(default: the run folder's name).")] = None,
    rdzv_backend: Annotated[str, typer.Option(help="torchrun rendezvous backend.")] = "c10d",
    cpu_procs: Annotated[int, typer.Option(help="CPU processes (gloo) per node; exercises the "
                                                "distributed path without GPUs.")] = 1,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete the run in --out and start again.")] = False,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep every epoch's checkpoint, not only the last.")] = False,
    hash_data: Annotated[bool, typer.Option(help="Record the dataset's sha256 in run.json.")] = True,
    img_key: Annotated[str, typer.Option(help="Image-path column of a CSV.")] = "filepath",
    caption_key: Annotated[str, typer.Option(help="Caption column of a CSV.")] = "title",
    verbose: Annotated[bool, typer.Option(help="Echo everything the trainer prints.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Check everything, print the command, do not train.")] = False,
) -> None:
    """Train CLIP with open_clip's own trainer (CPU, GPUs, or several nodes), from scratch or (--init) fine-tuning a checkpoint.

    Arguments after `--` go to open_clip_train unchanged, e.g. `-- --grad-clip-norm 1.0`.
    """
    import shlex

    from poisonclip.train.progress import RichReporter
    from poisonclip.train.run import TrainConfig, TrainingFailed, prepare, train

    cfg = TrainConfig.from_preset(
        preset.value, data=data, out=str(out), model=model, epochs=epochs, batch_size=batch_size,
        lr=lr, wd=wd, warmup=warmup, crop_scale=crop_scale, precision=precision.value if precision else None, workers=workers,
        seed=seed, threads=threads, gpus=gpus, nodes=nodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
        rdzv_id=rdzv_id, rdzv_backend=rdzv_backend, cpu_procs=cpu_procs, resume=resume,
        overwrite=overwrite, keep_checkpoints=keep_checkpoints, hash_data=hash_data,
        img_key=img_key, caption_key=caption_key, extra_args=tuple(ctx.args), init=str(init) if init else None)
    if dry_run:
        d, place, cmd, steps = prepare(cfg)
        console.print(f"{d.num_samples} samples ({d.dataset_type}), {steps} steps/epoch, "
                      f"{place.device} x {place.world_size}; cwd {d.cwd}", highlight=False)
        typer.echo(shlex.join(cmd))
        return
    try:
        with RichReporter(console, verbose=verbose) as reporter:
            res = train(cfg, on_event=reporter)
    except TrainingFailed as e:
        err_console.print(safe_text(f"error: {e}"), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    if res.skipped:
        console.print(f"already trained for {cfg.epochs} epochs, nothing to do: {res.run_dir}", highlight=False)
    elif res.checkpoint is not None:
        console.print(f"done: {res.steps} steps, {res.samples_per_s:.1f} samples/s, "
                      f"{res.wall_time_s:.1f} s; checkpoint {res.checkpoint}", highlight=False)


def models_cmd(
    all_: Annotated[bool, typer.Option("--all", help="Also list every open_clip built-in name (no counts).")] = False,
) -> None:
    """List the shipped models with their parameter counts."""
    from rich.table import Table

    from poisonclip.train.models import list_models, register_models

    table = Table(title="models: open_clip configs, parameters in millions",
                  caption="text includes the token embedding (49408 x text width)")
    table.add_column("name", no_wrap=True)
    for col in ("total", "image", "text"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("image tower", no_wrap=True)
    table.add_column("use")
    for m in list_models():
        table.add_row(m.name, _m(m.params), _m(m.vision_params), _m(m.text_params),
                      f"{m.vision} {m.image_size}px", m.role)
    console.print(table)
    if all_:
        import open_clip

        ours = set(register_models())
        console.print(", ".join(n for n in open_clip.list_models() if n not in ours), highlight=False)


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}"


def register(root: App) -> None:
    """Add this stage's commands to the root app."""
    root.command("train", context_settings=_EXTRA)(train_cmd)
    root.command("models")(models_cmd)


__all__ = ["register", "train_cmd", "models_cmd"]
