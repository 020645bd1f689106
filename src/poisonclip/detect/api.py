"""The detection stage as a library: a dataset (+ a model) -> ``scores.tsv`` and ``detect.json``.

The dataset is read as training reads it (``train.dataset.resolve``: a table, shards, a corpus
folder, or a poisoned folder through its poison.json's training data), with the data readers'
checks; the detectors get only its image bytes and captions. Keys are kept aside to write the
score table and to look the manifest's poisons up.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from poisonclip.contracts import (DETECT_INFO_FILE, MANIFEST_FILE, DetectionScores, DetectionSummary,
                                  write_detection_scores, write_detection_summary)
from poisonclip.data import CsvFormat, SkipReport, read_dataset
from poisonclip.detect.registry import DetectInput, get_detector
from poisonclip.detect.scoring import score_detector
from poisonclip.errors import SettingError, UserError
from poisonclip.io_utils import OutputKind, atomic_dir, check_out, input_paths

DETECT_KIND = OutputKind("detection (`poisonclip detect`)", ((DETECT_INFO_FILE, ("methods", "n_samples", "data")),))


@dataclass(frozen=True)
class DetectConfig:
    data: Path                        # table, shards, corpus folder or poisoned folder
    out: Path
    methods: tuple[str, ...]          # registered detector names
    model: Path | None = None         # a run folder written by `poisonclip train`
    manifest: str = "auto"            # "auto" (the poisoned folder's), "none", or a manifest.csv / its folder
    batch_size: int = 64
    device: str = "cpu"
    overwrite: bool = False


@dataclass(frozen=True)
class DetectResult:
    out: Path
    summary: DetectionSummary
    scores: DetectionScores = field(repr=False)


@dataclass(frozen=True)
class LoadedData:
    """The dataset as detection reads it: keys aside, contents for the detectors."""

    source: Path
    keys: list[str]
    inputs: DetectInput
    skipped: dict[str, int]
    poison_json: Path | None


def load_data(data: str | os.PathLike, batch_size: int = 64) -> LoadedData:
    from poisonclip.train.dataset import resolve

    td = resolve(data, hash_data=False)
    report = SkipReport()
    keys, images, captions = [], [], []
    fmt = CsvFormat(td.img_key, td.caption_key, td.csv_sep)
    for s in read_dataset(td.train_data, fmt, report):
        keys.append(s.key)
        images.append(s.image)
        captions.append(s.caption)
    if not keys:
        raise UserError(f"{data}: no usable samples to score ({report.summary()})")
    return LoadedData(Path(td.source), keys, DetectInput(images, captions, batch_size=batch_size),
                      dict(sorted(report.items())), Path(td.poison_json) if td.poison_json else None)


def find_manifest(spec: str, poison_json: Path | None) -> Path | None:
    """The manifest to score against: ``auto`` is the poisoned folder's, if DATA is one."""
    if spec == "none":
        return None
    if spec == "auto":
        if poison_json is None:
            return None
        from poisonclip.contracts import read_poison_info

        info = read_poison_info(poison_json)
        path = Path(info.manifest)
        path = path if path.is_absolute() else poison_json.parent / path
        if not path.is_file():
            raise SettingError("manifest", f"{path}: the poisoned folder's manifest is missing; pass "
                               "`manifest` none to score without ground truth")
        return path
    path = Path(spec).expanduser()
    path = path / MANIFEST_FILE if path.is_dir() else path
    if not path.is_file():
        raise SettingError("manifest", f"{spec}: no such manifest; give a manifest.csv (or the poisoned "
                           "folder holding it), auto or none")
    return path


def _poison_mask(manifest: Path, keys: list[str]) -> np.ndarray:
    from poisonclip.attacks.manifest import read_manifest

    poisons = {r.key for r in read_manifest(manifest)}
    present = poisons & set(keys)
    if poisons and not present:
        raise UserError(f"{manifest}: none of its {len(poisons)} poison keys is in the data; is it the "
                        "manifest of this dataset?")
    return np.array([k in poisons for k in keys], dtype=bool)


@dataclass(frozen=True)
class Scored:
    """A detection before it is written: the data read, its scores, the summary, and the
    poison mask when a manifest gave one (for pages that show the ground truth)."""

    data: LoadedData
    scores: DetectionScores
    summary: DetectionSummary
    is_poison: np.ndarray | None
    inputs: tuple[Path, ...]          # every path read (what an output must not replace)


def _check(cfg: DetectConfig) -> tuple[list[Any], tuple[str, Path] | None]:
    if not cfg.methods:
        raise SettingError("methods", "name one detector at least")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise SettingError("methods", f"a detector is named twice ({', '.join(cfg.methods)})")
    found = [get_detector(m) for m in cfg.methods]
    needs = [d.name for d in found if d.needs_model]
    if needs and cfg.model is None:
        raise SettingError("model", f"{', '.join(needs)} embed(s) the data with a model; give a run folder "
                           "written by `poisonclip train`")
    if cfg.batch_size <= 0:
        raise SettingError("batch_size", f"must be positive, got {cfg.batch_size}")
    run = None
    if cfg.model is not None:   # checked even when no detector asked for it: a wrong folder is a mistake
        from poisonclip.evaluate.embed import resolve_run

        run = resolve_run(cfg.model)
    return found, run


def given_inputs(cfg: DetectConfig) -> list[Path]:
    """The paths ``cfg`` names to read (an output may not be, hold or lie inside them)."""
    return [*input_paths(cfg.data), *([Path(cfg.model)] if cfg.model else [])]


def score(cfg: DetectConfig, progress: Callable[[str], None] | None = None,
          kind: OutputKind | None = None) -> Scored:
    """Read ``cfg.data`` and score every sample with each method (``cfg.out`` is checked as an
    output of ``kind``, default a detection, before the data is read, but nothing is written)."""
    say = progress or (lambda _m: None)
    found, run = _check(cfg)
    given = given_inputs(cfg)
    check_out(cfg.out, kind or DETECT_KIND, overwrite=cfg.overwrite, inputs=given)   # before minutes of scoring
    say("reading the data")
    data = load_data(cfg.data, cfg.batch_size)
    manifest = find_manifest(cfg.manifest, data.poison_json)
    is_poison = _poison_mask(manifest, data.keys) if manifest is not None else None
    model_sha = None
    if run is not None and any(d.uses_model for d in found):
        from poisonclip.evaluate.embed import load_model

        say("loading the model")
        data.inputs.model = load_model(*run, cfg.device)
        model_sha = data.inputs.model.checkpoint_sha256
    columns: dict[str, tuple[float, ...]] = {}
    scoring, wall = {}, {}
    for d in found:
        say(f"scoring with {d.name}")
        t0 = time.perf_counter()
        s = d.run(data.inputs)
        wall[d.name] = round(time.perf_counter() - t0, 3)
        columns[d.name] = tuple(map(float, s))
        if is_poison is not None:
            scoring[d.name] = score_detector(s, is_poison)
    table = DetectionScores(tuple(data.keys), columns)
    params: dict[str, Any] = {d.name: dict(d.params) for d in found}
    summary = DetectionSummary(
        data=str(data.source), methods=tuple(cfg.methods), n_samples=len(data.keys),
        model=str(Path(cfg.model).absolute()) if cfg.model else None, model_checkpoint_sha256=model_sha,
        manifest=str(manifest.absolute()) if manifest else None, params=params, skipped=data.skipped,
        scoring=scoring, wall_s=wall)
    return Scored(data, table, summary, is_poison, (*given, *([manifest] if manifest else [])))


def write_detection(folder: Path, scored: Scored) -> None:
    """A detection's files into ``folder``: ``scores.tsv``, then ``detect.json`` (last)."""
    write_detection_scores(folder, scored.scores)
    write_detection_summary(folder, scored.summary)


def detect(cfg: DetectConfig, progress: Callable[[str], None] | None = None) -> DetectResult:
    """Score every sample of ``cfg.data`` with each method; write ``scores.tsv`` then ``detect.json``."""
    scored = score(cfg, progress)
    with atomic_dir(cfg.out, cfg.overwrite, kind=DETECT_KIND, inputs=scored.inputs) as tmp:
        write_detection(tmp, scored)
    return DetectResult(Path(cfg.out).absolute(), scored.summary, scored.scores)
