"""Spec -> trials: grid expansion, stable folder names, and content keys for shared artefacts.

A trial is corpus -> poison -> train -> evaluate for one point of the grid. Its folder name is
made from its grid values only (``n_poisons=10__seed=1``), as CLIP_benchmark names its outputs
from a template: adding a value to an axis leaves the existing names, and so the finished
trials, untouched.

Expensive artefacts are shared between trials through content keys: each is the hash of the
stage's fully resolved config plus the keys of its inputs. So the corpus is built once per
corpus config, a poisoned dataset once per (corpus, poison config) whatever the training
settings, a model once per (data, training config), and the clean baseline of a trial (same
corpus, model, seed and training settings, no poisons) is the same artefact for every poison
count. Two trials that differ only in evaluation settings share the trained model.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from poisonclip.errors import UserError
from poisonclip.experiments.spec import SEED_AXIS, STAGES, SweepSpec, get_path, set_path
from poisonclip.experiments.stages import pretrain_config

MAX_NAME = 120
_SAFE = re.compile(r"[^A-Za-z0-9._+\-]+")


def content_key(obj: Any) -> str:
    """Stable 16-hex-digit key of plain data (sorted-key JSON), the same on every machine."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:16]


@dataclass(frozen=True)
class ArtefactKeys:
    corpus: str
    poison: str
    model: str
    clean_model: str
    pretrain: str | None = None   # the clean pre-trained model fine-tuning starts from (train.finetune_epochs)


@dataclass(frozen=True)
class Trial:
    """One grid point. ``config`` is the resolved per-stage config it runs with; ``params``
    holds the value of every axis of the spec (also axes of other sub-grids), which become the
    results table's parameter columns."""

    name: str
    params: Mapping[str, Any]
    config: Mapping[str, Mapping[str, Any]]
    keys: ArtefactKeys
    config_hash: str
    baseline: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params),
                "config": {k: dict(v) for k, v in self.config.items()},
                "keys": self.keys.__dict__.copy(), "config_hash": self.config_hash,
                "baseline": self.baseline}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Trial":
        return cls(name=d["name"], params=dict(d["params"]), config=dict(d["config"]),
                   keys=ArtefactKeys(**d["keys"]), config_hash=d["config_hash"],
                   baseline=bool(d["baseline"]))


def format_value(value: Any) -> str:
    """A grid value as a filesystem-safe token (letters, digits, ``._+-``)."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return _SAFE.sub("-", text).strip("-") or "empty"


def _short_names(axes: tuple[str, ...]) -> dict[str, str]:
    """The last dotted part of each axis, or the whole path where two axes end alike."""
    last = [a.rsplit(".", 1)[-1] for a in axes]
    return {a: (s if last.count(s) == 1 else a) for a, s in zip(axes, last)}


def trial_name(assignment: tuple[tuple[str, Any], ...], short: Mapping[str, str]) -> str:
    if not assignment:
        return "base"
    name = "__".join(f"{format_value(short[a])}={format_value(v)}" for a, v in assignment)
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 17]}-{content_key([list(p) for p in assignment])}"
    return name


def expand(spec: SweepSpec, resolve=None, link=None) -> list[Trial]:
    """All trials of a spec, in grid order (first axis slowest), without duplicates.

    ``resolve(stage, mapping) -> mapping`` fills defaults and validates one stage config (the
    stage adapter's ``resolve``); the identity when None. ``link(raw) -> raw``, if given, first
    fills settings one stage takes from another (the poisons' resolution from the model).
    """
    resolve = resolve or (lambda stage, cfg: dict(cfg))
    short = _short_names(spec.axes)
    trials: dict[str, Trial] = {}
    for index, grid in enumerate(spec.grids):
        axes = tuple(a for a, _ in grid)
        grid_base = spec.grid_base(index)
        for values in itertools.product(*(v for _, v in grid)):
            assignment = tuple(zip(axes, values))
            # the spec's sections, then this sub-grid's own settings field by field, then the axes
            raw = {stage: json.loads(json.dumps({**spec.base.get(stage, {}), **grid_base.get(stage, {})}))
                   for stage in STAGES}
            for axis, value in assignment:
                for path in (spec.seed_fields if axis == SEED_AXIS else (axis,)):
                    set_path(raw, path, value)
            if link is not None:
                raw = link(raw)
            config = {stage: dict(resolve(stage, raw[stage])) for stage in STAGES}
            trial = _make_trial(spec, trial_name(assignment, short), config)
            old = trials.get(trial.name)
            if old is not None and old.config_hash != trial.config_hash:
                raise UserError(f"{spec.source}: two grid points are both named '{trial.name}' but differ; "
                                "give the sub-grids distinct axes")
            trials.setdefault(trial.name, trial)
    return list(trials.values())


def _make_trial(spec: SweepSpec, name: str, config: dict[str, dict[str, Any]]) -> Trial:
    params = {}
    for axis in spec.axes:
        path = spec.seed_fields[0] if axis == SEED_AXIS and spec.seed_fields else axis
        params[axis] = get_path(config, path)
    corpus = content_key({"stages": spec.stages, "stage": "corpus", "config": config["corpus"]})
    poison = content_key({"stage": "poison", "corpus": corpus, "config": config["poison"]})
    model = content_key({"stage": "train", "data": poison, "config": config["train"]})
    clean = content_key({"stage": "train", "data": corpus, "config": config["train"]})
    # a pre-trained model is a clean model trained from scratch: the same key as one
    pre = pretrain_config(config["train"])
    pretrain = content_key({"stage": "train", "data": corpus, "config": pre}) if pre is not None else None
    config_hash = content_key({"stages": spec.stages, "config": config, "baseline": spec.baseline})
    return Trial(name=name, params=params, config=config,
                 keys=ArtefactKeys(corpus, poison, model, clean, pretrain), config_hash=config_hash,
                 baseline=spec.baseline)

