"""The evaluation stage for one model: a checkpoint + a labelled eval set (+ a poisoned
dataset's poison.json) -> ``metrics.json`` and ``similarities.npz``.

Every measurement of the paper for one model, each with its sample size and a Wilson
interval, and the identities (hashes) of everything it was computed from. Clean accuracy and
the similarity of clean embeddings are measured here for every model; what the poisoned set's
attack adds (a backdoor's ASR and z-score, targeted success) is measured by the evaluation its
attack registered (``evaluate.hooks``; the built-ins are ``evaluate.backdoor`` and
``evaluate.targeted``). Summaries over many models: ``evaluate.compare``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from poisonclip.contracts import (METRICS_FILE, METRICS_SCHEMA, SIMILARITIES_FILE, Metrics, read_poison_info,
                                  read_run_info, write_metrics, write_similarities)
from poisonclip.data.evalset import LabelledSet, load_labelled
from poisonclip.data.sample import SkipReport
from poisonclip.errors import SettingError, UserError
from poisonclip.evaluate import metrics as M
from poisonclip.evaluate.embed import embed_images, embed_texts, load_model, resolve_run
from poisonclip.evaluate.hooks import Captions, EvalContext, HeldOut, attack_evaluation
from poisonclip.evaluate.probe import DEFAULT_CS, ProbeConfig, fit_probe, stratified_split
from poisonclip.evaluate.zeroshot import classifier_weights, load_templates, zeroshot_scores
from poisonclip.io_utils import same_path, sha256_bytes, sha256_file

# Random streams of the evaluation seed, one per purpose, so adding one never shifts another
# (the backdoor's trigger positions draw from streams 1 and 3: evaluate.backdoor).
_STREAM_PROBE_SPLIT = 2


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
    retrieval: bool = True                  # image<->text recall@k on the eval set's own captions
    caption_key: str = "title"              # the eval table's caption column (retrieval)
    overwrite: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("overwrite")  # how to write, not what was measured
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in d.items()}


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


def _without(ls: LabelledSet, path: Path, held: HeldOut | None) -> tuple[LabelledSet, list[str], list[str]]:
    """``ls`` without the attack's own images (``held``), with the sha256 of every image of
    ``ls`` (the full set, for its identity) and the keys taken out.

    A targeted attack's target x' may come from a labelled set (``target_source``: the test
    split, a probe set); counted in clean accuracy it would score the attack's own image, and
    in a probe's training split it would teach the probe its true label. It is found by the
    sha256 of its bytes, and by key when ``path`` is the very set it was drawn from.
    """
    digests = [sha256_bytes(s.image) for s in ls.samples]
    if held is None or not (held.sha256 or held.keys):
        return ls, digests, []
    keys = held.keys if held.source and same_path(held.source, path) else frozenset()
    drop = [i for i, (s, d) in enumerate(zip(ls.samples, digests)) if d in held.sha256 or s.key in keys]
    if not drop:
        return ls, digests, []
    gone = set(drop)
    kept = LabelledSet([s for i, s in enumerate(ls.samples) if i not in gone], ls.classnames)
    return kept, digests, [ls.samples[i].key for i in drop]


def _images(ls: LabelledSet, indices: Sequence[int] | None = None) -> Iterator[Image.Image]:
    for i in (range(len(ls.samples)) if indices is None else indices):
        yield ls.samples[i].decode()


def _resolve_model(cfg: EvalConfig) -> tuple[str, Path]:
    if cfg.run is not None:
        if cfg.model or cfg.checkpoint:
            raise SettingError("run", "give either `run` or `model` with `checkpoint`, not both")
        return resolve_run(cfg.run)
    if not cfg.model or cfg.checkpoint is None:
        raise SettingError("model", "no model: give `run` (a run folder), or `model` with `checkpoint`")
    return cfg.model, Path(cfg.checkpoint)


def _check_metrics_out(out: Path, overwrite: bool) -> None:
    """``out`` takes metrics.json: refused if one is there (unless ``overwrite``) or if the one
    there is not poisonclip's (``overwrite`` replaces only a previous evaluation's)."""
    f = out / METRICS_FILE
    if not os.path.lexists(f):
        return
    if not overwrite:
        raise UserError(f"{f}: already exists; choose another `out` folder or set `overwrite`")
    # only the kind is checked (the schema tag every version of the file carries): a
    # metrics.json of ours that no longer reads is still ours to replace
    try:
        old = json.loads(f.read_text(encoding="utf-8")) if f.is_file() and not f.is_symlink() else None
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("schema") != METRICS_SCHEMA:
        raise UserError(f"{f}: not a metrics file written by `poisonclip eval` (schema {METRICS_SCHEMA}); "
                        "`overwrite` replaces only those, so it is left untouched: choose another `out` folder")


def _validate(cfg: EvalConfig) -> None:
    if not 0 < cfg.probe_fraction < 1:
        raise SettingError("probe_fraction", f"must be between 0 and 1, got {cfg.probe_fraction}")
    if not 0 < cfg.probe_val_fraction < 1:
        raise SettingError("probe_val_fraction", f"must be between 0 and 1, got {cfg.probe_val_fraction}")
    if cfg.retrieval and not cfg.caption_key.strip():
        raise SettingError("caption_key", "is empty; name the eval table's caption column (default 'title')")
    for name in ("batch_size", "chunk", "n_bins"):
        if getattr(cfg, name) <= 0:
            raise SettingError(name, f"must be positive, got {getattr(cfg, name)}")
    if cfg.probe and not cfg.probe_cs:
        raise SettingError("probe_cs", "give at least one C value")


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
    poison = read_poison_info(cfg.poison) if cfg.poison is not None else None
    attack, prepared, held = None, None, None
    if poison is not None:
        # the poisoned set's attack, as registered: checked against the eval set before any
        # model is loaded, and its own images (targets) kept out of the clean measurements
        attack = attack_evaluation(poison)
        prepared = attack.prepare(poison, ls, data_path)
        held = attack.held_out(prepared)
    full_set = ls
    ls, digests, excluded = _without(ls, data_path, held)
    labels = np.asarray(ls.labels, dtype=np.int64)
    if len(labels) < 2:
        raise UserError(f"{data_path}: {len(labels)} readable labelled image(s)"
                        + (f" once {len(excluded)} target image(s) are left out" if excluded else "")
                        + "; pairwise metrics need at least 2")
    templates = load_templates(cfg.templates)

    probe_set, probe_report = None, SkipReport()
    probe_full, probe_digests, probe_excluded = None, None, []
    if cfg.probe and cfg.probe_train is not None:
        if not Path(cfg.probe_train).exists():
            raise SettingError("probe_train", f"{cfg.probe_train} not found")
        probe_set = load_labelled(cfg.probe_train, cfg.classnames, probe_report)
        if list(probe_set.classnames) != classnames:
            raise UserError(f"{cfg.probe_train}: its class list {list(probe_set.classnames)} differs from the "
                            f"eval set's {classnames}; both must list the same classes in the same order")
        probe_full = probe_set
        probe_set, probe_digests, probe_excluded = _without(probe_set, Path(cfg.probe_train), held)

    say(f"loading {model_name} from {ckpt}")
    lm = load_model(model_name, ckpt, cfg.device)
    result: dict[str, Any] = {
        "schema": METRICS_SCHEMA,
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
                            "give more labelled images, or do without the probe (`probe`)") from None
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

    captions = retrieval = None
    if cfg.retrieval:
        captions, retrieval = _retrieval(lm, ls, clean_emb, cfg, say)
        result["retrieval"] = retrieval

    if poison is not None and attack is not None:
        ctx = EvalContext(model=lm, images=ls, labels=labels, classnames=tuple(classnames), weights=weights,
                          zeroshot_clean=zs_clean, clean_emb=clean_emb, clean_pairs=clean_pairs, edges=edges,
                          probe=probe, probe_idx=probe_idx, seed=cfg.seed, batch_size=cfg.batch_size,
                          chunk=cfg.chunk, arrays=arrays, say=say, captions=captions)
        result.update(attack.measure(ctx, prepared))
        result["poison"] = {"path": str(Path(str(poison.path)).resolve()), "sha256": poison.sha256,
                            "attack": poison.attack}

    _check_metrics_out(out, cfg.overwrite)   # again: one may have appeared meanwhile
    out.mkdir(parents=True, exist_ok=True)
    metrics = Metrics.from_json(result)
    write_similarities(out, arrays)
    try:
        write_metrics(out, metrics, replace=cfg.overwrite)
    except FileExistsError:
        raise UserError(f"{out / METRICS_FILE}: appeared while this evaluation ran; left it untouched "
                        "(choose another `out` folder)") from None
    say(f"wrote {out / METRICS_FILE}")
    return metrics.to_json()


def _retrieval(lm: Any, ls: LabelledSet, clean_emb: np.ndarray, cfg: EvalConfig, say: Callable[[str], None]
               ) -> tuple[Captions | None, dict[str, Any]]:
    """Clean image<->text recall@k on the eval set's own captions (each image's caption is its
    positive, as CLIP_benchmark scores a captioned set), and the captions for the attacks."""
    index = [i for i, s in enumerate(ls.samples) if str(s.meta.get(cfg.caption_key) or "").strip()]
    if len(index) < 2:
        reason = (f"the eval set has {len(index)} image(s) with a caption in column {cfg.caption_key!r}; "
                  "retrieval needs a captioned set (the corpus' test.tsv has them)")
        say(f"no retrieval: {reason}")
        return None, {"skipped": reason}
    texts = [str(ls.samples[i].meta[cfg.caption_key]).strip() for i in index]
    say(f"embedding {len(texts)} eval captions for retrieval")
    text_emb = embed_texts(lm, texts)
    image_of = np.asarray(index, dtype=np.int64)
    rec = M.retrieval_recall(clean_emb, text_emb, image_of, chunk=cfg.chunk)
    out = {"caption_key": cfg.caption_key, "n_images": int(len(ls.samples)), "n_texts": len(texts),
           "image_to_text": M.recall_dict(rec["image_to_text"]), "text_to_image": M.recall_dict(rec["text_to_image"]),
           "ties": "broken by index (stable sort)"}
    return Captions(tuple(texts), image_of, text_emb), out


def _train_seed(run: Path | None) -> int | None:
    """The training seed recorded in a run folder's run.json (pairs models across groups)."""
    if run is None:
        return None
    try:
        return read_run_info(run).seed
    except UserError:
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("poisonclip", "open_clip_torch", "torch", "scikit-learn", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out
