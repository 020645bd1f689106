"""The evaluation stage: one checkpoint + a labelled eval set (+ a poisoned dataset's
poison.json) -> ``metrics.json`` and ``similarities.npz``.

Every measurement of the paper for one model, each with its sample size and a Wilson
interval, and the identities (hashes) of everything it was computed from. Triggers come
from ``poisonclip.attacks.triggers`` and are applied in the model's input space: after the
model's resize and centre crop, before normalisation, the patch scaled to the input size --
the geometry the training poisons were written in, whatever the eval images' size or aspect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from poisonclip.attacks.triggers import Placement, patch_pixels, place
from poisonclip.data.evalset import LabelledSet, load_labelled
from poisonclip.data.sample import CorruptSample, SkipReport, decode_image
from poisonclip.errors import UserError
from poisonclip.evaluate import metrics as M
from poisonclip.evaluate.embed import LoadedModel, embed_images, input_size, load_model, resolve_run
from poisonclip.evaluate.probe import DEFAULT_CS, ProbeConfig, fit_probe, stratified_split
from poisonclip.evaluate.similarities import SIMILARITIES_FILE, write_similarities
from poisonclip.evaluate.stats import Rate, compare_accuracy, mean_std, pooled_rate
from poisonclip.evaluate.zeroshot import classifier_weights, load_templates, zeroshot_scores
from poisonclip.io_utils import atomic_write_json, same_path, sha256_bytes, sha256_file

METRICS_FILE = "metrics.json"
POISON_FILE = "poison.json"
SCHEMA = "poisonclip.metrics/1"

# Independent random streams per purpose, so adding one never shifts another.
_STREAM_RANDOM_TRIGGER = 1
_STREAM_PROBE_SPLIT = 2
_STREAM_TRAIN_RANDOM_TRIGGER = 3


@dataclass(frozen=True)
class EvalConfig:
    """Everything one evaluation depends on; recorded verbatim in metrics.json."""

    data: Path                              # labelled eval set: table with a label column, or ImageFolder
    out: Path                               # folder for metrics.json and similarities.npz
    run: Path | None = None                 # a run folder (run.json) ...
    model: str | None = None                # ... or an open_clip model name
    checkpoint: Path | None = None          # ... and its checkpoint
    classnames: Path | None = None          # default: classnames.txt beside the eval table
    templates: str | None = None            # "openai" (CLIP's 80; default), "simple", or a file
    poison: Path | None = None              # poisoned dataset folder: its poison.json gives trigger/targets
    probe: bool = True
    probe_train: Path | None = None         # labelled set to train the probe on; default: split `data`
    probe_fraction: float = 0.5             # share of `data` (per class) that trains the probe, if split
    probe_cs: tuple[float, ...] = DEFAULT_CS
    probe_val_fraction: float = 0.2
    seed: int = 0
    batch_size: int = 128
    device: str = "cpu"
    chunk: int = 2048                       # rows per block of the all-pairs similarity products
    n_bins: int = 200                       # histogram bins over cosine [-1, 1]
    overwrite: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("overwrite")  # how to write, not what was measured
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in d.items()}


@dataclass(frozen=True)
class BackdoorSpec:
    target_label: str
    patch_size: int          # side in pixels at 224x224, scaled to each image
    placement: Placement     # as in training
    trigger: str = "checkerboard"   # name in poisonclip.attacks.registry.TRIGGERS, as in training
    resolution: int | None = None   # square side the poisons were written at (None: older files)


@dataclass(frozen=True)
class TargetSpec:
    id: str
    label: str
    image: Path
    source_sha256: str = ""    # sha256 of the target's original image bytes (poison.json)
    source_key: str = ""       # its key in the set it was drawn from (``target_source``)


@dataclass(frozen=True)
class PoisonInfo:
    path: Path
    sha256: str
    attack: str
    backdoor: BackdoorSpec | None
    targets: tuple[TargetSpec, ...]
    target_source: str | None = None   # the labelled set the targets were taken from (absolute)


def read_poison(folder: str | os.PathLike) -> PoisonInfo:
    """The trigger or targets of a poisoned dataset folder (poison.json, the hand-off contract)."""
    from poisonclip.attacks.api import read_poison_info

    folder = Path(folder)
    path = folder / POISON_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise UserError(f"{path}: not found; --poison takes a folder written by `poisonclip poison`")
    info = read_poison_info(path)
    root = path.parent
    attack = info.get("attack")
    backdoor, targets = None, ()
    try:
        if attack == "backdoor":
            b = info["backdoor"]
            backdoor = BackdoorSpec(str(b["target_label"]), int(b["patch_size"]), Placement(b["placement"]),
                                    str(b.get("trigger") or "checkerboard"),
                                    int(b["resolution"]) if b.get("resolution") is not None else None)
            if backdoor.patch_size <= 0:
                raise ValueError("patch_size must be positive")
        elif attack == "targeted":
            targets = tuple(TargetSpec(str(t["id"]), str(t["label"]), root / t["image"],
                                       str(t.get("source_sha256") or ""), str(t.get("source_key") or ""))
                            for t in info["targets"])
            if not targets:
                raise ValueError("no targets")
        else:
            raise ValueError(f"attack {attack!r} is neither 'backdoor' nor 'targeted'")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: malformed ({type(e).__name__}: {e}); rewrite it with `poisonclip poison`") from None
    source = (info.get("config") or {}).get("target_source") if attack == "targeted" else None
    return PoisonInfo(path.resolve(), sha256_file(path), attack, backdoor, targets,
                      str(source) if source else None)


def _class_index(label: str, classnames: Sequence[str], where: str) -> int:
    if label not in classnames:
        raise UserError(f"{where}: target label {label!r} is not in the eval class list {list(classnames)}; "
                        "evaluate on a set whose classnames include it (or pass --classnames)")
    return list(classnames).index(label)


def _identity(ls: LabelledSet, path: Path, report: SkipReport,
              digests: Sequence[str] | None = None) -> dict[str, Any]:
    """Hashes that pin the eval set: the table file itself and the labelled images it names."""
    h = hashlib.sha256()
    digests = digests if digests is not None else [sha256_bytes(s.image) for s in ls.samples]
    for s, d in zip(ls.samples, digests):
        h.update(f"{s.key}\t{s.meta['label']}\t{d}\n".encode())
    return {
        "path": str(path.resolve()),
        "sha256": sha256_file(path) if path.is_file() else None,
        "content_sha256": h.hexdigest(),
        "n_images": len(ls.samples),
        "classnames": list(ls.classnames),
        "skipped": dict(sorted(report.items())),
    }


def _without_targets(ls: LabelledSet, path: Path, poison: PoisonInfo | None
                     ) -> tuple[LabelledSet, list[str], list[str]]:
    """``ls`` without the images that are targets of the poisoned set, with the sha256 of
    every image of ``ls`` (the full set, for its identity) and the keys taken out.

    A target x' may come from a labelled set (``--target-source``: the test split, a probe
    set); counted in clean accuracy it would score the attack's own image, and in a probe's
    training split it would teach the probe its true label. It is found by the sha256 of its
    original bytes (``source_sha256`` in poison.json) or of the saved ``targets/<id>.png``, and
    by key when ``path`` is the very set the targets were drawn from.
    """
    digests = [sha256_bytes(s.image) for s in ls.samples]
    if poison is None or not poison.targets:
        return ls, digests, []
    hashes = {t.source_sha256 for t in poison.targets if t.source_sha256}
    for t in poison.targets:
        if t.image.is_file():
            hashes.add(sha256_file(t.image))
    keys = ({t.source_key for t in poison.targets if t.source_key}
            if poison.target_source and same_path(poison.target_source, path) else set())
    drop = [i for i, (s, d) in enumerate(zip(ls.samples, digests)) if d in hashes or s.key in keys]
    if not drop:
        return ls, digests, []
    gone = set(drop)
    kept = LabelledSet([s for i, s in enumerate(ls.samples) if i not in gone], ls.classnames)
    return kept, digests, [ls.samples[i].key for i in drop]


def _images(ls: LabelledSet, indices: Sequence[int] | None = None) -> Iterator[Image.Image]:
    for i in (range(len(ls.samples)) if indices is None else indices):
        yield ls.samples[i].decode()


def _trigger_fn(spec: BackdoorSpec, placement: Placement, rng: np.random.Generator,
                positions: list[tuple[int, int, int]]) -> Callable[[Image.Image, int], Image.Image]:
    """The training poisons' trigger (the registry's, ``triggers.apply`` for the checkerboard)
    at ``triggers.place``, on the model-input image: the patch side scaled from 224 to the
    input size, positions in input pixels (random ones drawn afresh from ``rng``)."""
    from poisonclip.attacks.registry import TRIGGERS

    paste = TRIGGERS.get(spec.trigger)

    def fn(im: Image.Image, i: int) -> Image.Image:
        size = patch_pixels(spec.patch_size, min(im.size))
        try:
            where = place(im.size, size, placement, rng)
        except ValueError as e:
            raise UserError(f"poison.json: backdoor patch_size {spec.patch_size}: {e}") from None
        positions.append((where.x, where.y, where.size))
        return paste(im, where)
    return fn


def _resolve_model(cfg: EvalConfig) -> tuple[str, Path]:
    if cfg.run is not None:
        if cfg.model or cfg.checkpoint:
            raise UserError("--run: give either --run or --model with --checkpoint, not both")
        return resolve_run(cfg.run)
    if not cfg.model or cfg.checkpoint is None:
        raise UserError("no model: pass --run RUN_FOLDER, or --model NAME with --checkpoint PATH")
    return cfg.model, Path(cfg.checkpoint)


def _check_metrics_out(out: Path, overwrite: bool) -> None:
    """``out`` takes metrics.json: refused if one is there (unless ``overwrite``) or if the one
    there is not poisonclip's (``--overwrite`` replaces only a previous evaluation's)."""
    f = out / METRICS_FILE
    if not os.path.lexists(f):
        return
    if not overwrite:
        raise UserError(f"{f}: already exists; choose another --out or pass --overwrite")
    try:
        old = json.loads(f.read_text(encoding="utf-8")) if f.is_file() and not f.is_symlink() else None
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("schema") != SCHEMA:
        raise UserError(f"{f}: not a metrics file written by `poisonclip eval` (schema {SCHEMA}); "
                        "--overwrite replaces only those, so it is left untouched: choose another --out")


def _validate(cfg: EvalConfig) -> None:
    if not 0 < cfg.probe_fraction < 1:
        raise UserError(f"--probe-fraction must be between 0 and 1, got {cfg.probe_fraction}")
    if not 0 < cfg.probe_val_fraction < 1:
        raise UserError(f"--probe-val-fraction must be between 0 and 1, got {cfg.probe_val_fraction}")
    for name in ("batch_size", "chunk", "n_bins"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.probe and not cfg.probe_cs:
        raise UserError("--probe-c: give at least one C value")


def evaluate(cfg: EvalConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every applicable measurement; write ``metrics.json`` (last) and ``similarities.npz``
    into ``cfg.out`` atomically and return the metrics."""
    say = progress or (lambda _msg: None)
    _validate(cfg)
    out = Path(cfg.out)
    _check_metrics_out(out, cfg.overwrite)
    model_name, ckpt = _resolve_model(cfg)

    report = SkipReport()
    data_path = Path(cfg.data)
    if not data_path.exists():
        raise UserError(f"{data_path}: eval set not found; give a labelled table (e.g. test.tsv) or an image folder")
    ls = load_labelled(data_path, cfg.classnames, report)
    classnames = list(ls.classnames)
    poison = read_poison(cfg.poison) if cfg.poison is not None else None
    full_set = ls
    ls, digests, excluded = _without_targets(ls, data_path, poison)
    labels = np.asarray(ls.labels, dtype=np.int64)
    if len(labels) < 2:
        raise UserError(f"{data_path}: {len(labels)} readable labelled image(s)"
                        + (f" once {len(excluded)} target image(s) are left out" if excluded else "")
                        + "; pairwise metrics need at least 2")
    templates = load_templates(cfg.templates)
    target_idx = (_class_index(poison.backdoor.target_label, classnames, str(poison.path))
                  if poison and poison.backdoor else None)
    if target_idx is not None and not (labels != target_idx).any():
        raise UserError(f"{data_path}: every image has the backdoor target label; ASR needs images of other classes")
    for t in poison.targets if poison else ():
        _class_index(t.label, classnames, str(poison.path))

    probe_set, probe_report = None, SkipReport()
    probe_full, probe_digests, probe_excluded = None, None, []
    if cfg.probe and cfg.probe_train is not None:
        if not Path(cfg.probe_train).exists():
            raise UserError(f"{cfg.probe_train}: --probe-train set not found")
        probe_set = load_labelled(cfg.probe_train, cfg.classnames, probe_report)
        if list(probe_set.classnames) != classnames:
            raise UserError(f"{cfg.probe_train}: its class list {list(probe_set.classnames)} differs from the "
                            f"eval set's {classnames}; both must list the same classes in the same order")
        probe_full = probe_set
        probe_set, probe_digests, probe_excluded = _without_targets(probe_set, Path(cfg.probe_train), poison)

    say(f"loading {model_name} from {ckpt}")
    lm = load_model(model_name, ckpt, cfg.device)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "config": cfg.to_dict(),
        "model": {"name": lm.name, "checkpoint": str(lm.checkpoint), "checkpoint_sha256": lm.checkpoint_sha256,
                  "run": str(Path(cfg.run).resolve()) if cfg.run else None,
                  "train_seed": _train_seed(cfg.run)},
        "data": _identity(full_set, data_path, report, digests),
        # Targets of the poisoned set found among the labelled images: left out of clean
        # accuracy, the probe's training split, ASR and z-score (they are scored as targets).
        "excluded_targets": {"data": len(excluded), "probe_train": len(probe_excluded),
                             "keys": sorted(excluded + probe_excluded),
                             "match": "sha256 of the image bytes, or key in the targets' source set"},
        "templates": {"source": cfg.templates or "openai", "n": len(templates), "templates": list(templates)},
        "versions": _versions(),
    }

    say(f"zero-shot head: {len(classnames)} classes x {len(templates)} templates")
    weights = classifier_weights(lm.model, lm.tokenizer, classnames, templates, cfg.device)
    say(f"embedding {len(ls.samples)} eval images")
    clean_emb = embed_images(lm, _images(ls), cfg.batch_size)
    zs_clean = zeroshot_scores(clean_emb, weights)
    clean = {"zeroshot": {"top1": M.top1(zs_clean, labels).to_dict()}}

    probe, probe_idx = None, np.arange(len(labels))
    if cfg.probe:
        if probe_set is not None:
            say(f"embedding {len(probe_set.samples)} probe-training images")
            ptrain_emb = embed_images(lm, _images(probe_set), cfg.batch_size)
            ptrain_labels = np.asarray(probe_set.labels, dtype=np.int64)
            split = {"source": "probe_train",
                     **_identity(probe_full, Path(cfg.probe_train), probe_report, probe_digests)}
        else:
            rng = np.random.default_rng([cfg.seed, _STREAM_PROBE_SPLIT])
            tr, probe_idx = stratified_split(labels, cfg.probe_fraction, rng)
            ptrain_emb, ptrain_labels = clean_emb[tr], labels[tr]
            split = {"source": "split_of_data", "fraction": cfg.probe_fraction, "seed": cfg.seed,
                     "train_keys_sha256": sha256_bytes("\n".join(ls.samples[i].key for i in tr).encode())}
        say("fitting the linear probe")
        try:
            probe = fit_probe(ptrain_emb, ptrain_labels, len(classnames),
                              ProbeConfig(tuple(cfg.probe_cs), cfg.probe_val_fraction, seed=cfg.seed))
        except ValueError as e:
            raise UserError(f"{cfg.probe_train or data_path}: cannot train the linear probe ({e}); "
                            "give more labelled images or pass --no-probe") from None
        clean["probe"] = {"top1": M.top1(probe.scores(clean_emb[probe_idx]), labels[probe_idx]).to_dict(),
                          "n_train": int(len(ptrain_labels)), "n_test": int(len(probe_idx)),
                          "train_set": split, **probe.info()}
    result["clean"] = clean

    edges = np.linspace(-1.0, 1.0, cfg.n_bins + 1)
    say("all-pairs similarity of clean embeddings")
    clean_pairs = M.pairwise_similarity(clean_emb, edges, cfg.chunk)
    curve_true = M.similarity_vs_same_label(clean_emb, labels, edges, cfg.chunk)
    curve_pred = M.similarity_vs_same_label(clean_emb, M.predict(zs_clean), edges, cfg.chunk)
    arrays: dict[str, np.ndarray] = {
        "edges": edges, "clean_counts": clean_pairs.counts,
        "same_label_pairs": curve_true.pairs, "same_label_same": curve_true.same,
        "same_prediction_same": curve_pred.same,
        "labels": labels, "zeroshot_pred_clean": M.predict(zs_clean),
    }
    result["similarity"] = {"clean": {"mean": clean_pairs.mean, "std": clean_pairs.std,
                                      "n_pairs": clean_pairs.n_pairs},
                            "arrays": SIMILARITIES_FILE}

    if poison and poison.backdoor:
        result["backdoor"] = _backdoor(cfg, lm, ls, labels, poison.backdoor, int(target_idx), weights,
                                       zs_clean, probe, probe_idx, clean_emb, clean_pairs, edges, arrays, say)
    if poison and poison.targets:
        result["targeted"] = _targeted(lm, poison.targets, classnames, weights, probe, cfg.batch_size, say)
    if poison:
        result["poison"] = {"path": str(poison.path), "sha256": poison.sha256, "attack": poison.attack}

    _check_metrics_out(out, cfg.overwrite)   # again: one may have appeared meanwhile
    out.mkdir(parents=True, exist_ok=True)
    write_similarities(out, arrays)
    try:
        atomic_write_json(out / METRICS_FILE, result, replace=cfg.overwrite)
    except FileExistsError:
        raise UserError(f"{out / METRICS_FILE}: appeared while this evaluation ran; left it untouched "
                        "(choose another --out)") from None
    say(f"wrote {out / METRICS_FILE}")
    return result


def _backdoor(cfg: EvalConfig, lm: LoadedModel, ls: LabelledSet, labels: np.ndarray, spec: BackdoorSpec,
              target: int, weights: np.ndarray, zs_clean: np.ndarray, probe: Any, probe_idx: np.ndarray,
              clean_emb: np.ndarray, clean_pairs: M.PairStats, edges: np.ndarray,
              arrays: dict[str, np.ndarray], say: Callable[[str], None]) -> dict[str, Any]:
    try:
        size = input_size(lm)
    except ValueError as e:
        raise UserError(f"--model {lm.name}: {e}") from None
    res: dict[str, Any] = {
        "target_label": spec.target_label, "target_index": target, "patch_size_224": spec.patch_size,
        "train_placement": spec.placement.value, "trigger": spec.trigger,
        # Where the patch goes: on the model-input image (after resize and centre crop).
        "input_size": size, "patch_pixels": patch_pixels(spec.patch_size, size),
        "poison_resolution": spec.resolution,
        # Non-target images the clean-image classifier already sends to the target: the floor
        # an ASR should be read against.
        "target_rate_without_trigger": {"zeroshot": M.backdoor_asr(zs_clean, labels, target).to_dict()},
        "asr": {}, "zscore": {},
    }
    if spec.resolution is not None and spec.resolution != size:
        res["warning"] = (f"the poisons were written at {spec.resolution}px but this model takes {size}px inputs: "
                          "training resampled their patch, so the trigger tested here is not the one it learned")
        say(f"warning: {res['warning']}")
    if probe is not None:
        res["target_rate_without_trigger"]["probe"] = _probe_asr(probe.scores(clean_emb[probe_idx]),
                                                                 labels[probe_idx], target)
    stream = {"train_placement": _STREAM_TRAIN_RANDOM_TRIGGER, "random": _STREAM_RANDOM_TRIGGER, "corner": 0}
    tests = [("train_placement", spec.placement), ("random", Placement.random)]
    if spec.placement is not Placement.corner:
        # Poisons placed randomly are still tested with the paper's consistent (corner) patch.
        tests.append(("corner", Placement.corner))
    for name, placement in tests:
        rng = np.random.default_rng([cfg.seed, stream[name]])
        positions: list[tuple[int, int, int]] = []
        say(f"embedding triggered images ({name}: {placement.value})")
        trig = embed_images(lm, _images(ls), cfg.batch_size,
                            trigger=_trigger_fn(spec, placement, rng, positions))
        asr = {"placement": placement.value,
               "zeroshot": M.backdoor_asr(zeroshot_scores(trig, weights), labels, target).to_dict()}
        if probe is not None:
            asr["probe"] = _probe_asr(probe.scores(trig[probe_idx]), labels[probe_idx], target)
        res["asr"][name] = asr
        try:
            z = M.backdoor_zscore(clean_emb, trig, edges, cfg.chunk, clean=clean_pairs)
            res["zscore"][name] = {"placement": placement.value, **z.to_dict()}
            arrays[f"triggered_{name}_counts"] = z.triggered.counts
        except ValueError as e:  # a collapsed model (all clean embeddings equal): z undefined
            res["zscore"][name] = {"placement": placement.value, "z": None, "note": str(e)}
        arrays[f"trigger_{name}_xys"] = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
    return res


def _probe_asr(scores: np.ndarray, labels: np.ndarray, target: int) -> dict[str, Any] | None:
    """None when the probe's held-out images are all of the target class (tiny eval sets)."""
    if not (labels != target).any():
        return None
    return M.backdoor_asr(scores, labels, target).to_dict()


def _targeted(lm: LoadedModel, targets: Sequence[TargetSpec], classnames: Sequence[str], weights: np.ndarray,
              probe: Any, batch_size: int, say: Callable[[str], None]) -> dict[str, Any]:
    images = []
    for t in targets:
        try:
            images.append(decode_image(t.image.read_bytes()))
        except OSError:
            raise UserError(f"{t.image}: target image of {t.id!r} not found beside poison.json") from None
        except CorruptSample as e:
            raise UserError(f"{t.image}: target image of {t.id!r} cannot be decoded ({e})") from None
    say(f"embedding {len(images)} target images")
    emb = embed_images(lm, images, batch_size)
    ys = np.asarray([list(classnames).index(t.label) for t in targets], dtype=np.int64)
    heads = {"zeroshot": zeroshot_scores(emb, weights)}
    if probe is not None:
        heads["probe"] = probe.scores(emb)
    per_target: list[dict[str, Any]] = [{"id": t.id, "label": t.label, "label_index": int(y),
                                         "source_sha256": t.source_sha256 or None,
                                         "source_key": t.source_key or None}
                                        for t, y in zip(targets, ys)]
    summary: dict[str, Any] = {}
    for head, scores in heads.items():
        results = M.targeted_success(scores, ys)
        for row, r in zip(per_target, results):
            row[head] = {"success": r.success, "rank": r.rank, "predicted": classnames[r.predicted]}
        summary[head] = {"success": Rate(sum(r.success for r in results), len(results)).to_dict(),
                         "mean_rank": float(np.mean([r.rank for r in results]))}
    return {"targets": per_target, "summary": summary}


def _train_seed(run: Path | None) -> int | None:
    """The training seed recorded in a run folder's run.json (pairs models across groups)."""
    if run is None:
        return None
    try:
        seed = json.loads((Path(run) / "run.json").read_text(encoding="utf-8")).get("seed")
    except (OSError, ValueError, AttributeError):
        return None
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("poisonclip", "open_clip_torch", "torch", "scikit-learn", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


# ---- across models -------------------------------------------------------------------------

def load_metrics(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """metrics.json files; a folder stands for every metrics.json below it (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob(METRICS_FILE))
            if not found:
                raise UserError(f"{p}: no {METRICS_FILE} below this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: not found; give metrics.json files or folders holding them")
    out = []
    for f in files:
        try:
            m = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{f}: not valid JSON ({e})") from None
        if not isinstance(m, dict) or m.get("schema") != SCHEMA:
            raise UserError(f"{f}: not a poisonclip metrics file (schema {SCHEMA})")
        out.append({**m, "_path": str(f)})
    return out


def _rates(ms: Sequence[Mapping[str, Any]], *keys: str) -> list[Rate]:
    out = []
    for m in ms:
        node: Any = m
        for k in keys:
            node = node.get(k) if isinstance(node, Mapping) else None
        if node is None:
            return []  # a metric not every model has is not summarised
        out.append(Rate.from_dict(node))
    return out


def _rate_summary(rates: Sequence[Rate]) -> dict[str, Any] | None:
    if not rates:
        return None
    return {"per_model": mean_std([r.rate for r in rates]).to_dict(), "pooled": pooled_rate(rates).to_dict()}


def summarise(ms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean +- std over models (seeds) and pooled Wilson intervals for every shared metric."""
    if not ms:
        raise ValueError("no metrics to summarise")
    out: dict[str, Any] = {"n_models": len(ms)}
    for head in ("zeroshot", "probe"):
        out[f"clean_top1_{head}"] = _rate_summary(_rates(ms, "clean", head, "top1"))
        for pl in ("train_placement", "random", "corner"):
            out[f"asr_{pl}_{head}"] = _rate_summary(_rates(ms, "backdoor", "asr", pl, head))
        out[f"targeted_success_{head}"] = _rate_summary(_rates(ms, "targeted", "summary", head, "success"))
        if out[f"targeted_success_{head}"] is not None:
            # (target, model) pairs are independent only across distinct targets: say how many
            ids = {f"{t.get('source_sha256') or t.get('id')}:{t.get('label')}"
                   for m in ms for t in (m.get("targeted") or {}).get("targets", [])}
            out[f"targeted_success_{head}"]["n_distinct_targets"] = len(ids)
    for pl in ("train_placement", "random", "corner"):
        zs = [m.get("backdoor", {}).get("zscore", {}).get(pl, {}).get("z") for m in ms]
        out[f"zscore_{pl}"] = mean_std(zs).to_dict() if all(z is not None for z in zs) else None
    return {k: v for k, v in out.items() if v is not None}


def _seed_pairs(poisoned: Sequence[Mapping[str, Any]], clean: Sequence[Mapping[str, Any]]
                ) -> tuple[list[int], list[int]] | None:
    """Index pairs (poisoned, clean) of models trained with the same seed, when the two groups
    hold exactly the same seeds once each (``model.train_seed``, from run.json); else None."""
    def seeds(ms: Sequence[Mapping[str, Any]]) -> list[Any]:
        return [(m.get("model") or {}).get("train_seed") for m in ms]

    sp, sc = seeds(poisoned), seeds(clean)
    if None in sp or None in sc or len(set(sp)) != len(sp) or sorted(sp) != sorted(sc):
        return None
    order = sorted(sp)
    return [sp.index(s) for s in order], [sc.index(s) for s in order]


def compare(poisoned: Sequence[Mapping[str, Any]], clean: Sequence[Mapping[str, Any]],
            alpha: float = 0.05) -> dict[str, Any]:
    """Summaries of both groups and the test of clean accuracy, poisoned vs clean models:
    paired by training seed when both groups hold the same seeds, unpaired (Welch) otherwise."""
    res: dict[str, Any] = {"poisoned": summarise(poisoned), "clean": summarise(clean), "accuracy_tests": {}}
    pairs = _seed_pairs(poisoned, clean)
    for head in ("zeroshot", "probe"):
        rp, rc = _rates(poisoned, "clean", head, "top1"), _rates(clean, "clean", head, "top1")
        if rp and rc:
            if pairs is not None:
                rp, rc = [rp[i] for i in pairs[0]], [rc[i] for i in pairs[1]]
            res["accuracy_tests"][head] = compare_accuracy(
                [r.rate for r in rp], [r.rate for r in rc], alpha, rp, rc, paired=pairs is not None).to_dict()
    return res
