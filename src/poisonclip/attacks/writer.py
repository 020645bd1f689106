"""Plan + clean dataset -> poisoned dataset folder that open_clip_train reads unchanged.

Folder layout (``poison.json`` is the hand-off contract with training and evaluation):

* WebDataset input: the clean shards stay where they are, untouched; the poisons go into
  new shards ``<prefix>{i:05d}.tar`` here, and ``sizes.json`` here lists the poison shards
  *and* every clean shard's basename, because open_clip_train looks sizes up only next to
  the first shard of ``--train-data``, which is therefore the poison folder:
  ``train_data = "<out>/poison-{00000..000NN}.tar::<clean shards>"``. Cost grows with the
  number of poisons (plus one ``sizes.json`` per clean folder), never with the dataset.
* CSV input: ``train.tsv`` here holds the clean rows (absolute image paths, so open_clip
  runs from any working directory) with the poison rows inserted at seeded random
  positions; poison images are written under ``poison_images/``.
* Both: ``manifest.csv`` (one row per poison), ``targets/<id>.png`` (targeted: the clean
  target images for the evaluator) and ``poison.json``, written last.

The folder appears atomically: any error leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
import numpy as np

from poisonclip.attacks import triggers
from poisonclip.attacks.evasion import add_noise
from poisonclip.attacks.manifest import ManifestRow, write_manifest
from poisonclip.attacks.plan import Plan, PoisonItem, rng_for, shard_bunching
from poisonclip.attacks.registry import stamp_trigger
from poisonclip.contracts import (MANIFEST_FILE, POISON_IMAGES_DIR, POISON_INFO_FILE, TARGETS_DIR, TRAIN_TABLE,
                                  PoisonInfo, write_poison_info)
from poisonclip.data import dataset_kind
from poisonclip.data.csv_io import (OPEN_CLIP_CAPTION_KEY, OPEN_CLIP_IMG_KEY, check_row, clean_text, csv_columns,
                                    csv_key, iter_rows, safe_key)
from poisonclip.data.sample import CorruptSample, Sample, SkipReport, check_image_file, decode_image, encode_image
from poisonclip.data.wds_io import SIZES_FILE, expand_shards, shard_bytes, shard_sizes
from poisonclip.errors import SettingError, UserError
from poisonclip.io_utils import (OutputKind, atomic_dir, atomic_write_bytes, atomic_write_json, check_out,
                                 input_paths, sha256_bytes)

# What `--overwrite` may replace: a folder holding a valid poison.json (written last).
POISONED_KIND = OutputKind("poisoned dataset", ((POISON_INFO_FILE, ("attack", "dataset_type", "train_data")),))


@dataclass(frozen=True)
class PoisonResult:
    """What was written; ``train_data`` is the exact ``--train-data`` for open_clip_train."""

    out: Path
    attack: str
    dataset_type: str
    train_data: str
    num_samples: int
    n_clean: int
    n_poisons: int
    skipped: dict[str, int] = field(default_factory=dict)          # clean rows left out (CSV)
    skipped_reading: dict[str, int] = field(default_factory=dict)  # unusable samples the attack met
    warnings: tuple[str, ...] = ()                                 # also in poison.json

    @property
    def manifest(self) -> Path:
        return self.out / MANIFEST_FILE

    @property
    def poison_json(self) -> Path:
        return self.out / POISON_INFO_FILE


# --------------------------------------------------------------------------- rendering

def render(item: PoisonItem, seed: int, attempt: int = 0) -> tuple[bytes, triggers.TriggerSpec | None]:
    """The poison image's bytes (PNG, lossless so the trigger survives) and the trigger used.

    A triggered poison is first cut to the geometry training will see (centre square at
    ``item.resolution``), so the patch is in model-input pixels. Noise next, trigger last, so
    the patch's pixels are exact. Randomness comes from (seed, purpose, item index), so
    rendering order does not matter.
    """
    img = decode_image(item.source_image)
    triggered = bool(item.patch_size or item.trigger)   # a whole-image trigger has no patch size
    if triggered:
        img = triggers.to_input_geometry(img, item.resolution or triggers.REFERENCE_RESOLUTION)
    if item.noise_sigma > 0:
        img = add_noise(img, item.noise_sigma, rng_for(seed, "noise", item.index, attempt))
    spec = None
    if triggered:
        img, spec = stamp_trigger(item.trigger or "checkerboard", img, item.patch_size, item.placement,
                                  rng_for(seed, "placement", item.index), dict(item.trigger_params))
    return encode_image(img, "png"), spec


def render_all(plan: Plan) -> list[tuple[Sample, ManifestRow]]:
    """Render every item; with noise on, redraw the rare copy whose bytes repeat another's."""
    seen: set[str] = set()
    out = []
    for item in plan.items:
        attempt = 0
        data, spec = render(item, plan.seed, attempt)
        digest = sha256_bytes(data)
        while item.noise_sigma > 0 and digest in seen and attempt < 100:
            attempt += 1
            data, spec = render(item, plan.seed, attempt)
            digest = sha256_bytes(data)
        seen.add(digest)
        row = ManifestRow(
            key=item.key, attack=item.attack, target_id=item.target_id, target_label=item.target_label,
            caption=item.caption, source_key=item.source_key, source_sha256=sha256_bytes(item.source_image),
            trigger_size=spec.size if spec else None, trigger_x=spec.x if spec else None,
            trigger_y=spec.y if spec else None, patch_size=item.patch_size, placement=item.placement,
            noise_sigma=float(item.noise_sigma), seed=plan.seed, sha256=digest, location="",
            resolution=(item.resolution or triggers.REFERENCE_RESOLUTION) if spec else None,
            trigger=item.trigger if spec else "",
            trigger_params=json.dumps(dict(item.trigger_params), sort_keys=True) if item.trigger_params else "")
        out.append((Sample(key=item.key, image=data, caption=item.caption, meta={}, ext="png"), row))
    return out


# --------------------------------------------------------------------------- layout checks

def _check_out(out: str | os.PathLike, overwrite: bool, *datasets: str | None) -> Path:
    """``out`` may be written: not a dataset read (nor its folder), and only a previous poisoned
    set is ever replaced (``io_utils.check_out``). Returns it absolute."""
    inputs = [p for d in datasets if d for p in input_paths(d)]
    return check_out(out, POISONED_KIND, overwrite=overwrite, inputs=inputs)


@dataclass(frozen=True)
class _WdsLayout:
    clean: list[Path]
    clean_sizes: list[int]
    poison_names: list[str]
    train_data: str
    warnings: tuple[str, ...] = ()


def _spec_of(paths: list[Path]) -> str:
    """``::``-joined brace patterns (one per run of shards in one folder) open_clip expands back."""
    from poisonclip.data.wds_io import shard_pattern

    parts: list[str] = []
    run: list[Path] = []

    def flush() -> None:
        if not run:
            return
        try:
            pat = shard_pattern(run)
            ok = list(braceexpand.braceexpand(pat)) == [str(p) for p in run]
        except Exception:  # odd names: fall back to listing them
            ok = False
        parts.extend([pat] if ok else [str(p) for p in run])
        run.clear()

    for p in paths:
        if run and p.parent != run[-1].parent:
            flush()
        run.append(p)
    flush()
    return "::".join(parts)


def _wds_layout(plan: Plan, out: Path, report: SkipReport) -> _WdsLayout:
    if any(c in str(out) for c in "{}") or "::" in str(out):
        raise SettingError("out", f"{out}: braces and '::' would break open_clip's shard list; choose another path")
    clean = expand_shards(plan.dataset)
    names = [p.name for p in clean]
    dup = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if dup:
        raise UserError(f"{plan.dataset}: shard basenames repeat ({dup[:3]}); open_clip reads all sizes from "
                        "one sizes.json keyed by basename, so rename the shards to be unique")
    n = len(plan.items)
    k = min(plan.poison_shards or len(clean), n)
    poison_names = [f"{plan.shard_prefix}{i:05d}.tar" for i in range(k)]
    clash = sorted(set(poison_names) & set(names))
    if clash:
        raise UserError(f"{plan.dataset}: clean shard {clash[0]} has the name of a poison shard; "
                        "choose another `shard_prefix`")
    sizes = shard_sizes(clean, report)
    poison_paths = [out / nm for nm in poison_names]
    train_data = _spec_of(poison_paths) + "::" + _spec_of(clean)
    bunched = shard_bunching(n, k, len(clean))
    return _WdsLayout(clean, sizes, poison_names, train_data, (bunched,) if bunched else ())


# --------------------------------------------------------------------------- writers

def _write_wds(rendered: list[tuple[Sample, ManifestRow]], layout: _WdsLayout, tmp: Path
               ) -> list[ManifestRow]:
    k = len(layout.poison_names)
    rows = []
    sizes = {p.name: n for p, n in zip(layout.clean, layout.clean_sizes)}
    for name, idx in zip(layout.poison_names, np.array_split(np.arange(len(rendered)), k)):
        part = [rendered[int(i)] for i in idx]
        data, n = shard_bytes(s for s, _ in part)
        atomic_write_bytes(tmp / name, data)
        sizes[name] = n
        rows.extend(_with_location(r, name) for _, r in part)
    atomic_write_json(tmp / SIZES_FILE, sizes)
    return rows


def _with_location(row: ManifestRow, location: str) -> ManifestRow:
    from dataclasses import replace

    return replace(row, location=location)


def _write_csv(plan: Plan, rendered: list[tuple[Sample, ManifestRow]], tmp: Path, out: Path,
               report: SkipReport) -> tuple[int, list[ManifestRow]]:
    src, fmt = Path(plan.dataset), plan.fmt
    cols = csv_columns(src, fmt)
    own = (fmt.img_key, fmt.caption_key, OPEN_CLIP_IMG_KEY, OPEN_CLIP_CAPTION_KEY, "key")
    extra = [c for c in cols if c not in own]
    header = [OPEN_CLIP_IMG_KEY, OPEN_CLIP_CAPTION_KEY, "key", *extra]
    n_rows = sum(1 for _ in iter_rows(src, fmt))
    # Inserting poisons at uniformly random positions places them exactly as a full shuffle
    # would, while the clean table is streamed instead of held in memory.
    pos = np.sort(rng_for(plan.seed, "csv-positions").integers(0, n_rows + 1, size=len(rendered)))

    (tmp / POISON_IMAGES_DIR).mkdir()
    poison_rows, rows = [], []
    for sample, r in rendered:
        rel = f"{POISON_IMAGES_DIR}/{safe_key(sample.key)}.png"
        (tmp / rel).write_bytes(sample.image)
        poison_rows.append([str(out / rel), sample.caption, sample.key, *([""] * len(extra))])
        rows.append(_with_location(r, rel))
    poison_keys = {s.key for s, _ in rendered}

    root = src.parent
    n_clean, j = 0, 0
    with open(tmp / TRAIN_TABLE, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(header)
        for i, row in enumerate(iter_rows(src, fmt)):
            while j < len(poison_rows) and pos[j] <= i:
                w.writerow(poison_rows[j])
                j += 1
            # The rows open_clip's trainer would fail on mid-epoch are left out and counted:
            # the read_csv checks, then the image's header (cheap: pixels are not decoded).
            checked = check_row(row, i, fmt, root, report)
            if checked is None:
                continue
            caption, img = checked
            try:
                check_image_file(img)
            except CorruptSample as e:
                report.skip(e.reason)
                continue
            key = csv_key(row, i)
            if key in poison_keys:
                raise UserError(f"{src}: clean key {key!r} equals a poison key; rename it or use another `seed`")
            w.writerow([os.path.abspath(img), caption, key, *[clean_text(row.get(c) or "") for c in extra]])
            n_clean += 1
        for pr in poison_rows[j:]:
            w.writerow(pr)
    return n_clean, rows


def write_poisoned(plan: Plan, out: str | os.PathLike, overwrite: bool = False) -> PoisonResult:
    """Write the poisoned dataset folder ``out`` for ``plan`` (all or nothing)."""
    out = _check_out(out, overwrite, plan.dataset)
    kind = dataset_kind(plan.dataset)
    report, reading = SkipReport(), SkipReport()
    reading.update(plan.skipped)
    layout = _wds_layout(plan, out, reading) if kind == "webdataset" else None
    rendered = render_all(plan)
    with atomic_dir(out, overwrite=overwrite, kind=POISONED_KIND, inputs=input_paths(plan.dataset)) as tmp:
        for t in plan.targets:
            atomic_write_bytes(tmp / TARGETS_DIR / f"{t.id}.png", t.png)
        if layout is not None:
            rows = _write_wds(rendered, layout, tmp)
            n_clean, train_data = sum(layout.clean_sizes), layout.train_data
        else:
            n_clean, rows = _write_csv(plan, rendered, tmp, out, report)
            train_data = str(out / TRAIN_TABLE)
        write_manifest(tmp / MANIFEST_FILE, rows)
        n_p = len(rendered)
        info = {
            "attack": plan.attack,
            "dataset_type": kind,
            "train_data": train_data,
            "csv_sep": "\t",
            "csv_img_key": OPEN_CLIP_IMG_KEY,
            "csv_caption_key": OPEN_CLIP_CAPTION_KEY,
            "num_samples": n_clean + n_p,
            "n_clean": n_clean,
            "n_poisons": n_p,
            "poison_ratio": n_p / (n_clean + n_p),
            "seed": plan.seed,
            "clean_data": plan.dataset,
            "config": dict(plan.config),
            "manifest": MANIFEST_FILE,
            "skipped": dict(sorted(report.items())),
            "skipped_reading": dict(sorted(reading.items())),
            **plan.section,
        }
        if layout is not None:
            info["poison_shards"] = layout.poison_names
        warnings = tuple(plan.section.get("warnings", ())) + (tuple(layout.warnings) if layout is not None else ())
        if warnings:
            info["warnings"] = list(warnings)
        # Through the record: what is written is what every reader of poison.json accepts, and a
        # planner's field the contract does not know is a bug found here, not a field lost.
        record = PoisonInfo.from_json(info)
        if record.to_json() != {**info, "schema_version": record.schema_version}:
            raise RuntimeError(f"{plan.attack}: poison.json fields differ from contracts.PoisonInfo's; "
                               "add them to the contract")
        write_poison_info(tmp, record)
    return PoisonResult(out=out, attack=plan.attack, dataset_type=kind, train_data=train_data,
                        num_samples=n_clean + n_p, n_clean=n_clean, n_poisons=n_p, skipped=dict(report),
                        skipped_reading=dict(reading), warnings=warnings)
