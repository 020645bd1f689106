"""Targeted poisoning (paper section 3.1): P = {(x', c) : c in the caption set of y'}.

Several targets can be poisoned into one dataset, each with its own image x', label y',
number of copies and caption source (the paper poisons many targets per trained model and
scores success over (model, target) pairs). Targets are image files, keys of a dataset, or
drawn at random from a held-out labelled set with a random wrong label, as in section 4.2.

Random targets never come from the training data itself: such an image already sits in the
data with its true caption, so the attack would have to overturn a clean pair the paper's
targets never have. A target named explicitly by a key of the training data is allowed (a
deliberate choice) and recorded as a warning in poison.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from poisonclip.attacks.captions import (CaptionSet, LabelMatcher, build_caption_set, check_caption_source,
                                         load_caption_set, search_captions, size_captions)
from poisonclip.attacks.evasion import perturb_captions
from poisonclip.attacks.plan import (Plan, PoisonItem, TargetImage, absolute_spec, check_common, jsonable,
                                     poison_key, rng_for)
from poisonclip.attacks.registry import register_attack
from poisonclip.attacks.sources import draw_sources
from poisonclip.contracts import TARGETS_DIR
from poisonclip.data import dataset_kind
from poisonclip.data.classnames import find_classnames, resolve_classnames
from poisonclip.data.csv_io import CsvFormat, safe_key
from poisonclip.data.lookup import find_sample
from poisonclip.data.sample import CorruptSample, SkipReport, decode_image, encode_image
from poisonclip.errors import SettingError, UserError
from poisonclip.io_utils import same_path, sha256_bytes


@dataclass(frozen=True)
class TargetSpec:
    """One target to poison, as asked for: image (file path, ``key:<key>`` or a bare dataset
    key), label, copies, caption source (a registered caption-set name). The target as written
    to poison.json, for the evaluator, is another record (``poisonclip.contracts``)."""

    image: str
    label: str
    n_poisons: int
    caption_source: str = "templates"
    id: str = ""


@dataclass(frozen=True)
class TargetedConfig:
    """Everything one targeted poisoning run needs; the CLI maps its options onto this."""

    attack: ClassVar[str] = "targeted"

    data: str                              # clean dataset: .csv/.tsv table or WebDataset shards
    out: str                               # poisoned dataset folder to create
    targets: tuple[TargetSpec, ...] = ()
    random_targets: int = 0                # extra targets drawn from target_source, random wrong labels
    n_poisons: int = 0                     # copies per random target
    caption_source: str = "templates"       # registered caption set of the random targets
    target_source: str | None = None       # dataset for target keys / random targets (default: data)
    seed: int = 0
    plurals: bool = True
    caption_files: tuple[str, ...] = ()    # saved caption sets used instead of searching again
    classnames: str | None = None          # None: classnames.txt beside the data / target source
    no_classnames: bool = False
    label_key: str = "label"               # true-label column of the target source
    noise_sigma: float = 0.0               # evasion: Gaussian noise per copy, pixel units
    perturb_captions: bool = False         # evasion: caption edits so no two poison captions are equal
    img_key: str = "filepath"
    caption_key: str = "title"
    csv_sep: str | None = None
    poison_shards: int | None = None
    shard_prefix: str = "poison-"
    overwrite: bool = False

    @property
    def fmt(self) -> CsvFormat:
        return CsvFormat(self.img_key, self.caption_key, self.csv_sep)


@dataclass(frozen=True)
class _Resolved:
    id: str
    label: str
    n_poisons: int
    caption_source: str
    image: bytes
    source_key: str
    source: str
    true_label: str | None


def _check(cfg: TargetedConfig) -> None:
    if not cfg.targets and cfg.random_targets <= 0:
        raise SettingError("targets", "no target: give `targets` (image + label) or `random_targets`")
    if cfg.random_targets < 0:
        raise SettingError("random_targets", f"must be >= 0, got {cfg.random_targets}")
    if cfg.random_targets and cfg.n_poisons <= 0:
        raise SettingError("n_poisons", f"must be positive, got {cfg.n_poisons}")
    check_caption_source("caption_source", cfg.caption_source)
    for i, t in enumerate(cfg.targets):
        check_caption_source(f"targets[{i}].caption_source", t.caption_source)
        if t.n_poisons <= 0:
            raise SettingError(f"targets[{i}].n_poisons", f"must be positive, got {t.n_poisons} ({t.image})")
        if not t.label.strip():
            raise SettingError(f"targets[{i}].label", f"label is empty ({t.image})")
        if t.id and safe_key(t.id) != t.id:
            raise SettingError(f"targets[{i}].id", f"{t.id!r} may hold only letters, digits, - and _")
    total = sum(t.n_poisons for t in cfg.targets) + cfg.random_targets * max(cfg.n_poisons, 0)
    check_common(total, cfg.seed, cfg.noise_sigma, cfg.poison_shards, cfg.shard_prefix)
    dataset_kind(cfg.data)


def _read_target(spec: str, lookup: str, fmt: CsvFormat, report: SkipReport) -> tuple[bytes, str, object]:
    """(image bytes, source key, raw true label) for a path, ``key:<key>`` or bare key."""
    key = spec[4:] if spec.startswith("key:") else None
    if key is None and Path(spec).is_file():
        try:
            data = Path(spec).read_bytes()
        except OSError as e:
            raise UserError(f"target image {spec}: cannot read ({e.strerror})") from None
        src_key, label = Path(spec).name, None
    else:
        key = key if key is not None else spec
        s = find_sample(lookup, key, fmt, report)
        if s is None:
            raise UserError(f"target image {spec!r}: neither an image file nor a key in {lookup}")
        data, src_key, label = s.image, s.key, s.meta.get("label")
    try:
        decode_image(data)
    except CorruptSample as e:
        raise UserError(f"target image {spec}: not a readable image ({e.reason}); give a PNG/JPEG file "
                        "or a dataset key") from None
    return data, src_key, label


def _target_source(spec: str) -> str:
    """A target's image as recorded: absolute path for files, ``key:<key>`` for dataset keys."""
    if not spec.startswith("key:") and Path(spec).is_file():
        return str(Path(spec).resolve())
    return spec if spec.startswith("key:") else f"key:{spec}"


def _label_name(raw: object, classnames: list[str] | None) -> str | None:
    if raw is None or raw == "":
        return None
    text = str(raw).strip()
    if classnames:
        if text in classnames:
            return text
        if text.lstrip("-").isdigit() and 0 <= int(text) < len(classnames):
            return classnames[int(text)]
    return text


def _resolve_targets(cfg: TargetedConfig, data: str, lookup: str, classnames: list[str] | None,
                     report: SkipReport) -> list[_Resolved]:
    out: list[_Resolved] = []
    for i, t in enumerate(cfg.targets):
        img, key, raw = _read_target(t.image, lookup, cfg.fmt, report)
        out.append(_Resolved(t.id or f"t{i:03d}", " ".join(t.label.split()), t.n_poisons,
                             t.caption_source, img, key, _target_source(t.image),
                             _label_name(raw, classnames)))
    if cfg.random_targets:
        if not classnames:
            raise SettingError("random_targets", "needs a class list to draw labels from; give `classnames`")
        if lookup == data or same_path(lookup, data):
            raise SettingError("random_targets", "draws targets from the training data, where each already sits "
                               "with its true caption; set `target_source` to a held-out labelled set "
                               "(e.g. the corpus' test.tsv)")
        rng = rng_for(cfg.seed, "random-targets")
        fmt_lookup = CsvFormat(cfg.img_key, cfg.caption_key, cfg.csv_sep)
        draw = draw_sources(lookup, cfg.random_targets, rng, label_key=cfg.label_key, fmt=fmt_lookup,
                            pool_factor=0, report=report, need_caption=False)
        if len(draw.samples) < cfg.random_targets:
            raise UserError(f"{lookup}: only {len(draw.samples)} readable images for "
                            f"{cfg.random_targets} random targets")
        for j, s in enumerate(draw.samples):
            true = _label_name(s.meta.get(cfg.label_key), classnames)
            choices = [c for c in classnames if c != true]
            label = choices[int(rng.integers(len(choices)))]
            out.append(_Resolved(f"t{len(cfg.targets) + j:03d}", label, cfg.n_poisons,
                                 cfg.caption_source, s.image, s.key, f"key:{s.key}", true))
    ids = [r.id for r in out]
    if len(set(ids)) != len(ids):
        raise UserError(f"target ids repeat: {sorted({x for x in ids if ids.count(x) > 1})}; give distinct ids")
    return out


def _caption_sets(cfg: TargetedConfig, targets: list[_Resolved], data: str,
                  report: SkipReport) -> dict[tuple[str, str], CaptionSet]:
    sets: dict[tuple[str, str], CaptionSet] = {}
    for path in cfg.caption_files:
        cs = load_caption_set(path)
        sets[(cs.source, cs.label)] = cs
    to_search = []
    for t in targets:
        k = (t.caption_source, t.label)
        if k in sets:
            continue
        if t.caption_source == "search":
            to_search.append(t.label)   # one pass over the data for every label, below
        else:
            sets[k] = build_caption_set(t.caption_source, t.label, data, cfg.plurals, cfg.fmt, report)
    if to_search:
        for label, cs in search_captions(data, to_search, cfg.plurals, cfg.fmt, report).items():
            sets[("search", label)] = cs
    for cs in sets.values():
        cs.require_nonempty()
    return sets


@register_attack("targeted", config=TargetedConfig, evaluation="poisonclip.evaluate.targeted:EVALUATION")
def plan_targeted(cfg: TargetedConfig) -> Plan:
    """Targeted poisoning: copies of each target image x' with captions naming its label y'."""
    _check(cfg)
    data = absolute_spec(cfg.data)
    lookup = absolute_spec(cfg.target_source) if cfg.target_source else data
    report = SkipReport()
    labels = [" ".join(t.label.split()) for t in cfg.targets]
    cn_explicit = cfg.classnames
    if cn_explicit is None and not cfg.no_classnames and find_classnames(data) is None and lookup != data:
        found = find_classnames(lookup)
        cn_explicit = str(found) if found else None
    classnames, cn_path = resolve_classnames(cn_explicit, cfg.no_classnames, data, labels)

    targets = _resolve_targets(cfg, data, lookup, classnames, report)
    sets = _caption_sets(cfg, targets, data, report)

    entries: list[tuple[_Resolved, str]] = []
    for t in targets:
        cs = sets[(t.caption_source, t.label)]
        for c in size_captions(cs.captions, t.n_poisons, rng_for(cfg.seed, "captions", t.id)):
            entries.append((t, c))
    captions = [c for _, c in entries]
    if cfg.perturb_captions:
        protected = frozenset().union(*(LabelMatcher(t.label, cfg.plurals).protected_words() for t in targets))
        captions = perturb_captions(captions, rng_for(cfg.seed, "caption-perturb"), protected)

    order = rng_for(cfg.seed, "order").permutation(len(entries))
    items = tuple(
        PoisonItem(index=i, key=poison_key("targeted", cfg.seed, i), attack="targeted",
                   caption=captions[int(j)], target_label=entries[int(j)][0].label,
                   source_key=entries[int(j)][0].source_key, source_image=entries[int(j)][0].image,
                   target_id=entries[int(j)][0].id, noise_sigma=cfg.noise_sigma)
        for i, j in enumerate(order))
    section = []
    for t in targets:
        cs = sets[(t.caption_source, t.label)]
        section.append({
            "id": t.id, "label": t.label, "image": f"{TARGETS_DIR}/{t.id}.png", "n_poisons": t.n_poisons,
            "caption_source": t.caption_source, "source": t.source, "source_key": t.source_key,
            "source_sha256": sha256_bytes(t.image), "true_label": t.true_label,
            "captions_found": len(cs.captions), "captions_scanned": cs.n_scanned,
        })
    in_training = [t.id for t in targets if t.source.startswith("key:") and lookup == data]
    warnings = ([f"target(s) {', '.join(in_training)} are images of the training data itself, where each "
                 "already sits with its true caption; the paper's targets are held-out images "
                 "(`target_source`)"] if in_training else [])
    pngs = tuple(TargetImage(t.id, t.label, encode_image(decode_image(t.image), "png")) for t in targets)
    config = {"attack": "targeted", **jsonable(cfg), "data": data, "target_source": lookup,
              "classnames": cn_path}
    config["targets"] = [{**jsonable(t), "image": _target_source(t.image)} for t in cfg.targets]
    return Plan(attack="targeted", seed=cfg.seed, dataset=data, fmt=cfg.fmt, items=items,
                section={"targets": section, **({"warnings": warnings} if warnings else {})},
                config=config, targets=pngs, skipped=dict(report),
                poison_shards=cfg.poison_shards, shard_prefix=cfg.shard_prefix)
