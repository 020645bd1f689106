"""Defenses in a sweep: ``defense`` (a name) and ``defense_settings`` in the spec's ``train`` section.

    train: {model: poisonclip-test, epochs: 1, defense: filter,
            defense_settings: {method: shared-patch, drop_fraction: 0.05}}
    grid:  {train.defense: [none, roclip], ...}

A defense changes how a model comes out of the data, so it is part of the model's content
key: the engine trains a defended model once per (data, training settings, defense) like any
other. ``defense: none`` is an ordinary training (recorded, so the table has a "none" row); a
spec without ``defense`` keeps the keys it always had. The trial's model artefact then holds:

    defense/         the defense folder (`poisonclip defend`'s output: defense.json, run/, ...)
    base/            cleanclip only: the model trained the ordinary way, which it fine-tunes

and the evaluator measures ``defense/run``. The clean baseline of a trial (the same training
on the corpus) goes through the same defense, so its accuracy shows what the defense costs on
clean data. Where each defense's training settings come from:

* filter: the train section, unchanged, on the kept data (open_clip's trainer);
* roclip: model, epochs, batch_size, lr, wd, warmup, seed and threads of the train section
  (its own loop, on one device: a GPU unless ``gpus`` is 0; other settings such as the
  preset's precision or several GPUs do not apply);
* cleanclip: the base model as the train section says; the fine-tuning's own settings
  (epochs, lr, subset, ...) in the defense mapping, on the clean data the poisons were added
  to (``poison.json``'s ``clean_data``; for the clean baseline, the corpus itself).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from poisonclip.contracts import (DEFENSE_BASE_DIR, DEFENSE_INFO_FILE, DEFENSE_RUN_DIR, DEFENSE_SWEEP_DIR,
                                  POISON_INFO_FILE, read_poison_info, read_run_info)
from poisonclip.errors import SettingError, UserError

NONE = "none"
DEFENSES = (NONE, "filter", "roclip", "cleanclip")
# Settings of each defense a spec may give (the rest are the sweep's or the train section's).
_OWN = {
    "filter": ("method", "threshold", "drop_fraction"),
    "roclip": ("pool_size", "nn_every", "augment", "crop_scale", "word_drop"),
    "cleanclip": ("subset", "epochs", "batch_size", "lr", "wd", "warmup", "lambda_clip", "lambda_ss", "crop_scale",
                  "word_drop"),
}


def _defaults(name: str) -> dict[str, Any]:
    from poisonclip.defend.cleanclip import CleanClipConfig
    from poisonclip.defend.filter import FilterConfig
    from poisonclip.defend.roclip import RoClipConfig

    cls = {"filter": FilterConfig, "roclip": RoClipConfig, "cleanclip": CleanClipConfig}[name]
    fields = {f.name: (None if f.default is dataclasses.MISSING else f.default) for f in dataclasses.fields(cls)}
    return {k: fields[k] for k in _OWN[name]}


def resolve_defense(name: Any, settings: Any = None) -> dict[str, Any]:
    """A spec's ``train.defense`` (a name) and ``train.defense_settings`` (a mapping) as the
    content key hashes them: ``{"defense": name, "defense_settings": {every setting, defaults
    filled}}``; a mistake is a ``SettingError`` naming ``defense`` or ``defense_settings``."""
    if name not in DEFENSES:
        raise SettingError("defense", f"{name!r}: choose one of {', '.join(DEFENSES)}")
    settings = {} if settings is None else settings
    if not isinstance(settings, Mapping):
        raise SettingError("defense_settings", f"must be a mapping of the defense's settings, got {settings!r}")
    if name == NONE:
        if settings:
            raise SettingError("defense_settings", f"defense none takes no settings, got {sorted(settings)}")
        return {"defense": NONE, "defense_settings": {}}
    unknown = sorted(set(settings) - set(_OWN[name]))
    if unknown:
        raise SettingError("defense_settings", f"{name}: unknown setting(s) {unknown}; known: {list(_OWN[name])}")
    out = {**_defaults(name), **settings}
    if name == "filter":
        from poisonclip.detect.registry import get_detector

        if not out["method"]:
            raise SettingError("defense_settings", "filter needs a detector, `method` (`poisonclip list detectors`)")
        try:
            detector = get_detector(out["method"])
        except SettingError as e:
            raise SettingError("defense_settings", e.problem) from None
        if detector.needs_model:
            raise SettingError("defense_settings", f"{out['method']} embeds the data with a model, which a sweep does "
                               "not provide yet; use a model-free detector")
        if (out["threshold"] is None) == (out["drop_fraction"] is None):
            raise SettingError("defense_settings", "filter needs either a threshold or a drop_fraction")
    return {"defense": name, "defense_settings": out}


def defended_run(model_folder: Path) -> Path:
    """The run folder to evaluate in a model artefact: the defense's, when it has one."""
    folder = Path(model_folder) / DEFENSE_SWEEP_DIR
    return folder / DEFENSE_RUN_DIR if (folder / DEFENSE_INFO_FILE).is_file() else Path(model_folder)


def _device(train: Mapping[str, Any]) -> str:
    """Where the defenses' own loop runs: as the train section's ``gpus`` says (0: the CPU;
    unset: a GPU when one is visible), on one device."""
    if train.get("gpus") == 0:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _clean_data(data: Path) -> str:
    """What CleanCLIP fine-tunes on: the clean data the poisons were added to (or the corpus)."""
    if (data / POISON_INFO_FILE).is_file():
        clean = read_poison_info(data).clean_data
        if not clean:
            raise UserError(f"{data / POISON_INFO_FILE}: no clean_data recorded, so no clean pairs to fine-tune on")
        return clean
    return str(data)


def train_defended(name: str, own: Mapping[str, Any], train: Mapping[str, Any], data: Path, source: str, out: Path,
                   on_event: Callable[[object], None] | None = None) -> dict[str, Any]:
    """Train the trial's model with defense ``name`` (settings ``own``) into ``out/defense`` (``source``: the data as
    the trainer takes it; ``data``: the poisoned or corpus folder). Returns the model's
    columns for the results table: the defense's cost and what it removed."""
    from poisonclip.contracts import read_defense_info
    from poisonclip.defend.cleanclip import CleanClipConfig, defend_cleanclip
    from poisonclip.defend.filter import FilterConfig, defend_filter
    from poisonclip.defend.roclip import RoClipConfig, defend_roclip
    from poisonclip.train.run import TrainConfig
    from poisonclip.train.run import train as train_run

    out.mkdir(parents=True, exist_ok=True)
    target = out / DEFENSE_SWEEP_DIR
    if name == "filter":
        defend_filter(FilterConfig(data=Path(source), out=target, train=dict(train), **own), on_event=on_event)
    elif name == "roclip":
        keep = ("model", "epochs", "batch_size", "lr", "wd", "warmup", "seed", "threads")
        defend_roclip(RoClipConfig(data=Path(source), out=target, device=_device(train),
                                   **{k: train[k] for k in keep}, **own))
    elif name == "cleanclip":
        base = train_run(TrainConfig(data=source, out=str(out / DEFENSE_BASE_DIR), **train), on_event=on_event)
        defend_cleanclip(CleanClipConfig(run=base.run_dir, data=Path(_clean_data(data)), out=target,
                                         seed=train["seed"], threads=train.get("threads"), device=_device(train),
                                         **own))
    else:
        raise ValueError(f"not a defense to train with: {name!r}")
    info = read_defense_info(target)
    run = read_run_info(target / DEFENSE_RUN_DIR)
    removed = info.removed or {}
    cols: dict[str, Any] = {"defense": name, "wall_time_s": run.wall_time_s,
                            "final_loss": run.loss_curve[-1] if run.loss_curve else None,
                            **{k: v for k, v in info.cost.items() if isinstance(v, (int, float))}}
    for k in ("n_removed", "poisons_removed", "clean_removed", "n_poisons"):
        if k in removed:
            cols[k] = removed[k]
    return cols
