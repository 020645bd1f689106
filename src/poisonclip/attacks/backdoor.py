"""Backdoor poisoning (paper sections 3.3, 4.3, 5.1).

P = {(x_i + bd, c_i)}: different images x_i drawn from the dataset (not of the target class
where labels are known), each with the trigger bd (the paper's checkerboard patch, or another
registered trigger: a noise patch, a blend, a warp), each paired with one caption
from the *search* caption set of the target label. No prompt templates: the paper's
backdoor adversary knows nothing about the zero-shot prompts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

from poisonclip.attacks import triggers
from poisonclip.attacks.captions import CaptionSet, LabelMatcher, load_caption_set, search_captions, size_captions
from poisonclip.attacks.evasion import perturb_captions
from poisonclip.attacks.plan import (Plan, PoisonItem, absolute_spec, check_common, jsonable, poison_key,
                                     rng_for)
from poisonclip.io_utils import sha256_bytes
from poisonclip.attacks.registry import TRIGGERS, WHOLE_IMAGE, register_attack, trigger_traits
from poisonclip.attacks.sources import draw_sources
from poisonclip.data import dataset_kind
from poisonclip.data.classnames import resolve_classnames
from poisonclip.data.csv_io import CsvFormat
from poisonclip.data.sample import SkipReport
from poisonclip.errors import SettingError, UserError


@dataclass(frozen=True)
class BackdoorConfig:
    """Everything one backdoor poisoning run needs; the CLI maps its options onto this."""

    attack: ClassVar[str] = "backdoor"

    data: str                        # clean dataset: .csv/.tsv table or WebDataset shards
    out: str                         # poisoned dataset folder to create
    target_label: str                # y'
    n_poisons: int                   # |P|
    patch_size: int = 16             # trigger side in pixels at 224x224 (paper: 16; ablation 1..32)
    placement: triggers.Placement = triggers.Placement.corner
    resolution: int = triggers.REFERENCE_RESOLUTION  # poisons are written as their source's centre
    #                                  square at this side: the input size of the model to be trained
    trigger: str = "checkerboard"    # registered trigger name
    trigger_seed: int = 0            # noise-patch, blended, warp: the seed of the fixed pattern / field
    blend_alpha: float = 0.2         # blended: weight of the pattern, (1 - a) * x + a * pattern (Chen et al.: 0.2)
    blend_pattern: str | None = None  # blended: an image file as the pattern; None: seeded uniform noise
    warp_grid: int = 4               # warp: control grid side k (WaNet: 4)
    warp_strength: float = 0.5       # warp: strength s (WaNet: 0.5); displacement about s/2 px per unit of field
    seed: int = 0
    plurals: bool = True             # caption search also matches plural forms
    caption_file: str | None = None  # a saved search caption set (`poisonclip poison captions --out`)
    classnames: str | None = None    # class list; None: classnames.txt beside the data, if any
    no_classnames: bool = False      # ignore any class list
    label_key: str = "label"         # label column (CSV) / json field (WebDataset)
    exclude_labels: tuple[str, ...] = ()  # label values never used as sources (besides the target's)
    pool_factor: float = 4.0         # WebDataset: read shards until pool_factor * n eligible; <= 0: all
    noise_sigma: float = 0.0         # evasion: Gaussian noise per poison, pixel units
    perturb_captions: bool = False   # evasion: caption edits so no two poison captions are equal
    img_key: str = "filepath"
    caption_key: str = "title"
    csv_sep: str | None = None
    poison_shards: int | None = None  # WebDataset: shards the poisons are spread over
    shard_prefix: str = "poison-"
    overwrite: bool = False

    @property
    def fmt(self) -> CsvFormat:
        return CsvFormat(self.img_key, self.caption_key, self.csv_sep)


def _check(cfg: BackdoorConfig) -> None:
    check_common(cfg.n_poisons, cfg.seed, cfg.noise_sigma, cfg.poison_shards, cfg.shard_prefix)
    if cfg.patch_size <= 0:
        raise SettingError("patch_size", f"must be positive (pixels at 224x224), got {cfg.patch_size}")
    if cfg.patch_size > triggers.REFERENCE_RESOLUTION:
        raise SettingError("patch_size", f"a {cfg.patch_size}px patch is larger than the "
                           f"{triggers.REFERENCE_RESOLUTION}x{triggers.REFERENCE_RESOLUTION} image it is "
                           "sized for; give at most 224 (paper: 16)")
    if cfg.resolution <= 0:
        raise SettingError("resolution", f"must be positive (the model's input size in pixels), got {cfg.resolution}")
    if not cfg.target_label.strip():
        raise SettingError("target_label", "target label is empty")
    if cfg.placement not in {p.value for p in triggers.Placement}:
        raise SettingError("placement", f"{cfg.placement!r} is not one of corner, random")
    if cfg.trigger not in TRIGGERS.names():
        raise SettingError("trigger", f"{cfg.trigger!r} is not one of {', '.join(TRIGGERS.names())}")
    _check_trigger(cfg)
    dataset_kind(cfg.data)


def _check_trigger(cfg: BackdoorConfig) -> None:
    """The trigger's own settings; a whole-image trigger refuses a placement it cannot have."""
    traits = trigger_traits(cfg.trigger)
    if traits.whole_image and triggers.Placement(cfg.placement) is not triggers.Placement.corner:
        raise SettingError("placement", f"the {cfg.trigger} trigger changes the whole image, so a "
                           f"{triggers.Placement(cfg.placement).value!r} placement does not apply; leave it unset")
    if cfg.trigger_seed < 0:
        raise SettingError("trigger_seed", f"must be >= 0, got {cfg.trigger_seed}")
    if not 0.0 < cfg.blend_alpha <= 1.0:
        raise SettingError("blend_alpha", f"must be in (0, 1] (the pattern's weight), got {cfg.blend_alpha}")
    if cfg.warp_grid < 2:
        raise SettingError("warp_grid", f"must be at least 2 control points a side (WaNet: 4), got {cfg.warp_grid}")
    if not cfg.warp_strength > 0:
        raise SettingError("warp_strength", f"must be positive (WaNet: 0.5), got {cfg.warp_strength}")
    if cfg.blend_pattern is not None and "blend_pattern" in traits.params:
        try:
            with Image.open(cfg.blend_pattern) as im:
                im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise SettingError("blend_pattern", f"{cfg.blend_pattern}: not a readable image ({e})") from None


def _trigger_params(cfg: BackdoorConfig) -> dict[str, Any]:
    """The settings the trigger's function takes, as recorded and as passed to it."""
    params: dict[str, Any] = {k: getattr(cfg, k) for k in trigger_traits(cfg.trigger).params
                              if getattr(cfg, k) is not None}   # unset (no pattern file): not recorded
    if params.get("blend_pattern") is not None:
        params["blend_pattern"] = os.path.abspath(os.path.expanduser(params["blend_pattern"]))
    return params


def _caption_set(cfg: BackdoorConfig, report: SkipReport) -> CaptionSet:
    if cfg.caption_file:
        cs = load_caption_set(cfg.caption_file)
        if cs.source != "search":
            raise UserError(f"{cfg.caption_file}: holds a {cs.source!r} caption set; backdoors use "
                            "captions found by search only")
        if cs.label.strip().lower() != cfg.target_label.strip().lower():
            raise UserError(f"{cfg.caption_file}: caption set is for label {cs.label!r}, "
                            f"not {cfg.target_label!r}")
        return cs.require_nonempty()
    return search_captions(cfg.data, [cfg.target_label], cfg.plurals, cfg.fmt, report)[cfg.target_label] \
        .require_nonempty()


@register_attack("backdoor", config=BackdoorConfig, evaluation="poisonclip.evaluate.backdoor:EVALUATION")
def plan_backdoor(cfg: BackdoorConfig) -> Plan:
    """Backdoor: patched dataset images paired with search captions of the target label."""
    _check(cfg)
    data = absolute_spec(cfg.data)
    report = SkipReport()
    classnames, cn_path = resolve_classnames(cfg.classnames, cfg.no_classnames, data, [cfg.target_label])

    excluded = {cfg.target_label, *cfg.exclude_labels}
    if classnames:
        excluded.add(str(classnames.index(cfg.target_label)))
    excluded_f = frozenset(excluded)

    cs = _caption_set(cfg, report)
    captions = size_captions(cs.captions, cfg.n_poisons, rng_for(cfg.seed, "captions"))
    if cfg.perturb_captions:
        captions = perturb_captions(captions, rng_for(cfg.seed, "caption-perturb"),
                                    LabelMatcher(cfg.target_label, cfg.plurals).protected_words())

    params = _trigger_params(cfg)
    if params.get("blend_pattern") is not None:
        with open(params["blend_pattern"], "rb") as f:   # the evaluator checks the file is still this one
            pattern_sha256 = sha256_bytes(f.read())
    else:
        pattern_sha256 = None

    draw = draw_sources(data, cfg.n_poisons, rng_for(cfg.seed, "sources"), excluded_f, cfg.label_key,
                        cfg.fmt, cfg.pool_factor, report)
    if len(draw.samples) < cfg.n_poisons:
        scope = ("" if draw.n_shards is None or draw.n_shards_read == draw.n_shards
                 else f" in {draw.n_shards_read} of {draw.n_shards} shards")
        raise UserError(f"{cfg.data}: only {len(draw.samples)} readable images not labelled "
                        f"{sorted(excluded_f)}{scope} for {cfg.n_poisons} poisons "
                        f"({draw.n_excluded} excluded by label); ask for fewer poisons")

    whole = trigger_traits(cfg.trigger).whole_image
    # A whole-image trigger has no patch size and no placement: recorded as such.
    patch_size = None if whole else cfg.patch_size
    placement = WHOLE_IMAGE if whole else triggers.Placement(cfg.placement).value
    items = tuple(
        PoisonItem(index=i, key=poison_key("backdoor", cfg.seed, i), attack="backdoor", caption=captions[i],
                   target_label=cfg.target_label, source_key=s.key, source_image=s.image,
                   patch_size=patch_size, resolution=cfg.resolution, placement=placement,
                   trigger=cfg.trigger, trigger_params=tuple(params.items()), noise_sigma=cfg.noise_sigma)
        for i, s in enumerate(draw.samples))
    section = {
        "target_label": cfg.target_label,
        "patch_size": patch_size,
        "placement": placement,
        "trigger": cfg.trigger,
        **params,
        **({"blend_pattern_sha256": pattern_sha256} if pattern_sha256 else {}),
        # The geometry the poisons were written in: centre square at `resolution` px, the
        # patch (patch_size at 224, scaled) in those pixels; evaluation applies it likewise
        # after the model's resize and centre crop.
        "resolution": cfg.resolution,
        "geometry": "centre-square",
        "patch_pixels": None if whole else triggers.patch_pixels(cfg.patch_size, cfg.resolution),
        "caption_source": "search",
        "captions_found": len(cs.captions),
        "captions_scanned": cs.n_scanned,
        "excluded_labels": sorted(excluded_f),
        "classnames": cn_path,
        "sources_eligible_seen": draw.n_eligible_seen,
        "sources_excluded_seen": draw.n_excluded,
        "source_shards_read": draw.n_shards_read,
    }
    return Plan(attack="backdoor", seed=cfg.seed, dataset=data, fmt=cfg.fmt, items=items,
                section={"backdoor": section},
                config={"attack": "backdoor", **jsonable(cfg), "data": data, "classnames": cn_path},
                skipped=dict(report),
                poison_shards=cfg.poison_shards, shard_prefix=cfg.shard_prefix)
