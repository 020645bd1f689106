"""A toy attack registered from outside the package, the way a user's module would add one.

"solid-square": dataset images of other classes with a solid magenta square in the corner
(its own trigger, ``solid-square``), each paired with a caption from its own caption set
(``fixed-phrase``) naming the target label. Its evaluation measures how often the square sends
a non-target eval image to the target label (zero-shot). Nothing in poisonclip names it: the
sweep stages, the writer and the evaluator find all of it through the registry.

``register()`` adds the three entries, ``unregister()`` takes them away again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
from PIL import Image

from poisonclip.attacks.captions import CaptionSet, build_caption_set, size_captions
from poisonclip.attacks.plan import Plan, PoisonItem, absolute_spec, jsonable, poison_key, rng_for
from poisonclip.attacks.registry import ATTACKS, CAPTION_SETS, TRIGGERS, register_attack, stamp_trigger
from poisonclip.data.csv_io import CsvFormat, read_csv
from poisonclip.data.evalset import read_classnames
from poisonclip.evaluate import metrics as M
from poisonclip.evaluate.columns import rate_columns
from poisonclip.evaluate.embed import embed_images
from poisonclip.contracts import PoisonInfo
from poisonclip.evaluate.hooks import AttackEvaluation, EvalContext, class_index
from poisonclip.evaluate.zeroshot import zeroshot_scores

NAME = "solid-square"
COLOUR = (255, 0, 255)
SECTION = "solid_square"


def paste_solid_square(image: Image.Image, where: Any) -> Image.Image:
    """A solid magenta square (the toy trigger)."""
    arr = np.array(image.convert("RGB"), dtype=np.uint8)
    arr[where.y:where.y + where.size, where.x:where.x + where.size] = COLOUR
    return Image.fromarray(arr)


def fixed_phrase(label: str, dataset: Any = None, plurals: bool = True, fmt: Any = None,
                 report: Any = None) -> CaptionSet:
    """Three fixed sentences naming the label (the toy caption set)."""
    caps = (f"a {label} with a square", f"the {label}, boxed", f"look: a {label}")
    return CaptionSet(label=label, source="fixed-phrase", captions=caps)


@dataclass(frozen=True)
class SolidSquareConfig:
    attack: ClassVar[str] = NAME

    data: str
    out: str
    target_label: str
    n_poisons: int
    patch_size: int = 32
    resolution: int = 224               # linked to the trained model's input size by the sweep
    caption_source: str = "fixed-phrase"
    classnames: str | None = None       # handed over from the corpus by the sweep
    seed: int = 0
    overwrite: bool = False


def plan_solid_square(cfg: SolidSquareConfig) -> Plan:
    """Toy: a solid square in the corner of images of other classes, captioned with the target."""
    data = absolute_spec(cfg.data)
    classnames = read_classnames(cfg.classnames)
    target = str(classnames.index(cfg.target_label))
    pool = [s for s in read_csv(data) if s.meta.get("label") != target]
    rng = rng_for(cfg.seed, "sources")
    chosen = [pool[int(i)] for i in rng.choice(len(pool), size=cfg.n_poisons, replace=False)]
    cs = build_caption_set(cfg.caption_source, cfg.target_label)
    captions = size_captions(cs.captions, cfg.n_poisons, rng_for(cfg.seed, "captions"))
    items = tuple(PoisonItem(index=i, key=poison_key(NAME, cfg.seed, i), attack=NAME, caption=captions[i],
                             target_label=cfg.target_label, source_key=s.key, source_image=s.image,
                             patch_size=cfg.patch_size, resolution=cfg.resolution, placement="corner",
                             trigger=NAME)
                  for i, s in enumerate(chosen))
    section = {SECTION: {"target_label": cfg.target_label, "patch_size": cfg.patch_size, "trigger": NAME}}
    return Plan(attack=NAME, seed=cfg.seed, dataset=data, fmt=CsvFormat(), items=items, section=section,
                config={"attack": NAME, **jsonable(cfg), "data": data})


def _prepare(poison: PoisonInfo, eval_set: Any, path: Path) -> tuple[int, int]:
    section = poison.sections[SECTION]   # poison.json keeps a registered attack's own section as written
    return class_index(section["target_label"], eval_set.classnames, str(poison.path)), int(section["patch_size"])


def _measure(ctx: EvalContext, prepared: tuple[int, int]) -> dict[str, Any]:
    target, patch = prepared

    def with_square(im: Image.Image, i: int) -> Image.Image:
        return stamp_trigger(NAME, im, patch, "corner", None)[0]

    emb = embed_images(ctx.model, ctx.decoded(), ctx.batch_size, trigger=with_square)
    hit = M.backdoor_asr(zeroshot_scores(emb, ctx.weights), ctx.labels, target)
    return {SECTION: {"hit": {"zeroshot": hit.to_dict()}}}


def _columns(m: Mapping[str, Any]) -> dict[str, Any]:
    return rate_columns("solid_square_hit_zeroshot", (m.get(SECTION) or {}).get("hit", {}).get("zeroshot"))


EVALUATION = AttackEvaluation(measure=_measure, prepare=_prepare, columns=_columns)


def register() -> None:
    TRIGGERS.register(NAME, paste_solid_square)
    CAPTION_SETS.register("fixed-phrase", fixed_phrase)
    register_attack(NAME, config=SolidSquareConfig, evaluation=EVALUATION)(plan_solid_square)


def unregister() -> None:
    ATTACKS.unregister(NAME)
    TRIGGERS.unregister(NAME)
    CAPTION_SETS.unregister("fixed-phrase")
