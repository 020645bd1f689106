"""Filter-then-train: drop what a registered detector flags, train on the rest, measure again.

The defense of web-scale pipelines (de-duplication, CLIP-score filtering) applied to a
poisoned set with known ground truth. The detector sees only image and caption contents
(``detect.registry.DetectInput``); the manifest is read only to count what was removed.

``--out DIR`` holds::

    detection/   the detection (scores.tsv, detect.json), as `poisonclip detect` writes it
    data/        the kept samples in the data's own format (a table: train.tsv with absolute
                 image paths; shards: shards/), and for a poisoned folder its poison.json with
                 the counts of what was kept, the manifest rows of the kept poisons and targets/
                 -- a poisoned folder `poisonclip train` and `poisonclip eval --poison` read
    run/         the model trained on data/ (optional)
    eval/, eval-before/   its evaluation, and that of the model trained without the defense
    defense.json the record (``contracts.DefenseInfo``), written when data/ is complete and
                 again, last, when everything asked for is done

data/ points at the original images (the clean corpus, the poisoned folder's poison_images/):
it is a view of them, not a copy.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from poisonclip.contracts import (AUDIT_DETECTION_DIR, DEFENSE_BEFORE_DIR, DEFENSE_DATA_DIR, DEFENSE_EVAL_DIR,
                                  DEFENSE_INFO_FILE, DEFENSE_RUN_DIR, MANIFEST_FILE, SHARDS_DIR, TARGETS_DIR,
                                  TRAIN_TABLE, DefenseInfo, PoisonInfo, read_poison_info, write_defense_info,
                                  write_poison_info)
from poisonclip.data import CsvFormat, SkipReport, read_dataset
from poisonclip.data.csv_io import csv_columns, csv_key, iter_rows
from poisonclip.defend.measure import MeasureConfig, timed_eval
from poisonclip.detect.api import DetectConfig, Scored, score, write_detection
from poisonclip.errors import SettingError, UserError
from poisonclip.io_utils import OutputKind, atomic_dir, atomic_write_bytes

DEFENSE_KIND = OutputKind("defense (`poisonclip defend`)", ((DEFENSE_INFO_FILE, ("defense", "params", "stage")),))


@dataclass(frozen=True)
class FilterConfig:
    data: Path                          # a poisoned folder (or a table, shards, a corpus folder)
    out: Path
    method: str                         # a registered detector (`poisonclip list detectors`)
    threshold: float | None = None      # flag every sample scoring at least this ...
    drop_fraction: float | None = None  # ... or at most this fraction of the data, top scores first
    model: Path | None = None           # a run folder, for the model-based detectors
    manifest: str = "auto"              # ground truth to count removals against (detect's `manifest`)
    batch_size: int = 64
    device: str = "cpu"
    overwrite: bool = False
    # What follows is optional: train on the kept data, then evaluate before and after.
    train: Mapping[str, Any] | None = None   # TrainConfig settings (``preset`` + overrides); None: no training
    before: Path | None = None               # a run folder: the model trained without the defense
    measure: MeasureConfig | None = None     # None: no evaluation

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": self.threshold, "drop_fraction": self.drop_fraction,
                "model": str(Path(self.model).absolute()) if self.model else None,
                "train": dict(self.train) if self.train is not None else None}


@dataclass(frozen=True)
class FilterResult:
    out: Path
    info: DefenseInfo
    flagged: np.ndarray = field(repr=False)   # one bool per sample scored, in the data's order


def _check(cfg: FilterConfig) -> None:
    if (cfg.threshold is None) == (cfg.drop_fraction is None):
        raise SettingError("threshold", "give either a `threshold` on the detector's score or a `drop_fraction` "
                           "of the data to drop, not both and not neither")
    if cfg.drop_fraction is not None and not 0 <= cfg.drop_fraction < 1:
        raise SettingError("drop_fraction", f"must be in [0, 1), got {cfg.drop_fraction}")
    if cfg.threshold is not None and not math.isfinite(cfg.threshold):
        raise SettingError("threshold", f"must be a finite number, got {cfg.threshold}")
    if cfg.before is not None:
        from poisonclip.evaluate.embed import resolve_run

        resolve_run(cfg.before)
        if cfg.measure is None:
            raise SettingError("before", "a model to compare with is only evaluated with an evaluation; "
                               "give the evaluation settings too")
    if cfg.train is not None:
        _train_config(cfg, Path("-"), Path("-"))   # a misspelt setting fails now, not after the detection


def flag(scores: np.ndarray, threshold: float | None, drop_fraction: float | None) -> tuple[np.ndarray, float]:
    """(flagged, the cut): every score at least ``threshold``; or, for a fraction, at most
    ``drop_fraction`` of the data: the samples scoring above the highest score left in (the
    one ranked just below the fraction), so samples tied at the cut are kept together rather
    than dropped beyond the budget (a detector that gives most samples 0 would otherwise drop
    them all). The cut reported is that score, flagged being ``scores > cut``."""
    scores = np.asarray(scores, dtype=np.float64)
    if threshold is not None:
        return scores >= threshold, float(threshold)
    k = math.floor(float(drop_fraction or 0.0) * len(scores))
    if k == 0:
        return np.zeros(len(scores), dtype=bool), math.inf
    cut = float(np.sort(scores)[::-1][min(k, len(scores) - 1)])
    return scores > cut, cut


def _write_table(src: Path, fmt: CsvFormat, keep: set[str], dst: Path) -> int:
    """The rows of ``src`` whose key is in ``keep``, same columns, image paths made absolute."""
    header = csv_columns(src, fmt)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(header)
    n = 0
    for i, row in enumerate(iter_rows(src, fmt)):
        if csv_key(row, i) not in keep:
            continue
        rel = row.get(fmt.img_key) or ""
        row = {**row, fmt.img_key: rel if os.path.isabs(rel) else str(src.parent / rel)}
        w.writerow([row.get(c) or "" for c in header])
        n += 1
    atomic_write_bytes(dst, buf.getvalue().encode("utf-8", "replace"))
    return n


def _write_kept(scored: Scored, keep: set[str], tmp: Path, final: Path) -> tuple[str, str, int]:
    """The kept samples into ``tmp`` (to become ``final``): (dataset type, train_data, n written)."""
    from poisonclip.data.wds_io import write_shards
    from poisonclip.train.dataset import resolve

    td = resolve(scored.data.source, hash_data=False)
    fmt = CsvFormat(td.img_key, td.caption_key, td.csv_sep)
    if td.dataset_type == "csv":
        n = _write_table(Path(td.train_data), fmt, keep, tmp / TRAIN_TABLE)
        return "csv", str(final / TRAIN_TABLE), n
    samples = (s for s in read_dataset(td.train_data, fmt, SkipReport()) if s.key in keep)
    report = SkipReport()
    shards = write_shards(samples, tmp / SHARDS_DIR, report=report)
    spec = "::".join(str(final / SHARDS_DIR / p.name) for p in shards)
    return "webdataset", spec, len(keep) - sum(report.values())


def _poisoned_copy(poison_json: Path, keep: set[str], tmp: Path, kind: str, train_data: str, n: int) -> dict[str, int]:
    """poison.json, manifest.csv (the kept poisons' rows) and targets/ for the kept data."""
    from poisonclip.attacks.manifest import read_manifest, write_manifest

    info = read_poison_info(poison_json)
    src = poison_json.parent
    rows = read_manifest(src / info.manifest)
    kept_rows = [r for r in rows if r.key in keep]
    write_manifest(tmp / MANIFEST_FILE, kept_rows)
    if (src / TARGETS_DIR).is_dir():
        shutil.copytree(src / TARGETS_DIR, tmp / TARGETS_DIR)
    n_p = len(kept_rows)
    new = dataclasses.replace(
        info, dataset_type=kind, train_data=train_data, csv_sep="\t", num_samples=n, n_clean=n - n_p, n_poisons=n_p,
        poison_ratio=n_p / n if n else None, manifest=MANIFEST_FILE, poison_shards=None,
        warnings=(*info.warnings, f"filtered by `poisonclip defend filter` from {src}"))
    write_poison_info(tmp, PoisonInfo.from_json(new.to_json()))
    return {"n_poisons_before": len(rows), "n_poisons_kept": n_p}


def _train_config(cfg: FilterConfig, data: Path, out: Path) -> Any:
    from poisonclip.train.presets import DEFAULT_PRESET
    from poisonclip.train.run import TrainConfig

    settings = dict(cfg.train or {})
    preset = settings.pop("preset", DEFAULT_PRESET)
    try:
        return TrainConfig.from_preset(preset, data=str(data), out=str(out), **settings)
    except TypeError as e:
        raise SettingError("train", f"{e}") from None


def filter_data(cfg: FilterConfig, progress: Callable[[str], None] | None = None) -> FilterResult:
    """Score ``cfg.data`` with ``cfg.method``, drop what it flags, write detection/, data/ and
    defense.json (stage "filtered") into ``cfg.out`` atomically."""
    say = progress or (lambda _m: None)
    _check(cfg)
    dcfg = DetectConfig(data=Path(cfg.data), out=Path(cfg.out), methods=(cfg.method,), model=cfg.model,
                        manifest=cfg.manifest, batch_size=cfg.batch_size, device=cfg.device, overwrite=cfg.overwrite)
    t0 = time.perf_counter()
    scored = score(dcfg, say, kind=DEFENSE_KIND)
    detect_s = round(time.perf_counter() - t0, 3)
    flagged, thr = flag(np.asarray(scored.scores.scores[cfg.method]), cfg.threshold, cfg.drop_fraction)
    keys = scored.data.keys
    keep = {k for k, f in zip(keys, flagged) if not f}
    if not keep:
        raise UserError(f"{cfg.data}: {cfg.method} flags all {len(keys)} samples (cut {thr:g}); "
                        "nothing would be left to train on (raise `threshold` or lower `drop_fraction`)")
    removed: dict[str, Any] = {"n_samples": len(keys), "n_removed": int(flagged.sum()), "threshold": thr}
    if scored.is_poison is not None:
        p = scored.is_poison
        removed.update(n_poisons=int(p.sum()), poisons_removed=int((flagged & p).sum()),
                       clean_removed=int((flagged & ~p).sum()))
    final = Path(cfg.out).absolute()
    say("writing the kept data")
    with atomic_dir(final, cfg.overwrite, kind=DEFENSE_KIND, inputs=scored.inputs) as tmp:
        write_detection(tmp / AUDIT_DETECTION_DIR, scored)
        data_dir = tmp / DEFENSE_DATA_DIR
        data_dir.mkdir()
        kind, train_data, n = _write_kept(scored, keep, data_dir, final / DEFENSE_DATA_DIR)
        removed["n_kept"] = n
        if scored.data.poison_json is not None:
            removed.update(_poisoned_copy(scored.data.poison_json, keep, data_dir, kind, train_data, n))
        info = DefenseInfo(defense="filter", data=str(scored.data.source), params=cfg.params(), stage="filtered",
                           removed=removed, poison=str(scored.data.poison_json.parent) if scored.data.poison_json
                           else None, cost={"detect_s": detect_s, "removed": removed["n_removed"]})
        write_defense_info(tmp, info)
    return FilterResult(final, info, flagged)


def defend_filter(cfg: FilterConfig, progress: Callable[[str], None] | None = None,
                  on_event: Callable[[object], None] | None = None) -> FilterResult:
    """``filter_data``, then (if asked) train on the kept data and evaluate it and ``cfg.before``."""
    say = progress or (lambda _m: None)
    res = filter_data(cfg, say)
    info, out = res.info, res.out
    if cfg.train is None and cfg.measure is None:
        info = dataclasses.replace(info, stage="done")
        write_defense_info(out, info)
        return dataclasses.replace(res, info=info)
    cost = dict(info.cost)
    if cfg.train is not None:
        from poisonclip.train.run import train

        say("training on the kept data")
        run = train(_train_config(cfg, out / DEFENSE_DATA_DIR, out / DEFENSE_RUN_DIR), on_event=on_event)
        cost["train_s"] = round(run.wall_time_s, 3)
        info = dataclasses.replace(info, stage="trained", model=DEFENSE_RUN_DIR, cost=cost)
        write_defense_info(out, info)
    poison = Path(info.poison) if info.poison else None
    if cfg.measure is not None:
        after = before = None
        if cfg.train is not None:
            say("evaluating the defended model")
            after, cost["eval_s"] = timed_eval(cfg.measure, out / DEFENSE_RUN_DIR, poison, out / DEFENSE_EVAL_DIR)
        if cfg.before is not None:
            say("evaluating the model before the defense")
            before, cost["eval_before_s"] = timed_eval(cfg.measure, Path(cfg.before), poison,
                                                       out / DEFENSE_BEFORE_DIR)
        info = dataclasses.replace(info, before=before, after=after, cost=cost,
                                   before_model=str(Path(cfg.before).absolute()) if cfg.before else None)
    info = dataclasses.replace(info, stage="done")
    write_defense_info(out, info)
    return dataclasses.replace(res, info=info)

