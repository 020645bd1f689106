"""The attacks as a person wants to see them, for the clean-vs-attack page (the demo's):

* a few of the backdoor's poisons with their captions, from the poisoned set's manifest;
* each target of targeted poisoning beside a few of its poison captions and what the clean
  and the poisoned model of its seed predicted for it (the evaluator's metrics.json);
* a test image without and with the trigger exactly as the model received it (the pixels
  the evaluator kept in similarities.npz, made by its own trigger function after the model's
  resize and centre crop), with the clean and the backdoored model's predictions of both.

Nothing here runs a model: every prediction is one the evaluator recorded. The images are
small (32 px on the embedded corpus), so they are enlarged with nearest-neighbour
resampling, which keeps each pixel (and the checkerboard's squares) visible as it is.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image as PILImage

from poisonclip.attacks.manifest import ManifestRow, read_manifest
from poisonclip.contracts import METRICS_FILE, PoisonInfo, read_metrics, read_poison_info, read_similarities
from poisonclip.data.lookup import find_sample
from poisonclip.data.sample import CorruptSample, decode_image, read_image_file
from poisonclip.errors import UserError
from poisonclip.evaluate.backdoor import EXAMPLE_INPUTS, EXAMPLE_TRIGGERED
from poisonclip.experiments.spec import SEED_AXIS
from poisonclip.experiments.store import EVAL_DIRS, SweepDir
from poisonclip.experiments.trials import Trial
from poisonclip.report.html import Image, Section, Table, Text

N_POISONS_SHOWN = 6
N_CAPTIONS_SHOWN = 3
SHOWN_SIDE = 128        # thumbnails are enlarged to about this many pixels a side
GAP = 8                 # white pixels between an image without and with the trigger


def enlarged_png(image: PILImage.Image | np.ndarray, side: int = SHOWN_SIDE) -> tuple[bytes, int]:
    """PNG bytes of ``image`` enlarged by a whole factor to about ``side`` pixels (nearest
    neighbour: every pixel stays a sharp square), and the factor."""
    im = PILImage.fromarray(image) if isinstance(image, np.ndarray) else image
    im = im.convert("RGB")
    factor = max(1, side // max(im.size))
    if factor > 1:
        im = im.resize((im.width * factor, im.height * factor), PILImage.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue(), factor


def side_by_side(left: np.ndarray, right: np.ndarray, side: int = SHOWN_SIDE, gap: int = GAP
                 ) -> tuple[bytes, int]:
    """One PNG of two images of one size, each enlarged as ``enlarged_png`` does, ``gap``
    white pixels apart; and the factor."""
    a, factor = enlarged_png(left, side)
    b, _ = enlarged_png(right, side)
    ia, ib = (PILImage.open(io.BytesIO(x)).convert("RGB") for x in (a, b))
    canvas = PILImage.new("RGB", (ia.width + gap + ib.width, max(ia.height, ib.height)), "white")
    canvas.paste(ia, (0, 0))
    canvas.paste(ib, (ia.width + gap, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue(), factor


def _seed_order(t: Trial) -> tuple:
    seed = t.params.get(SEED_AXIS)
    return (not isinstance(seed, int), seed if isinstance(seed, int) else 0, t.name)


def _poison_info(sweep: SweepDir, trial: Trial) -> PoisonInfo | None:
    folder = sweep.artefact("poison", trial.keys.poison)
    if folder is None:
        return None
    try:
        return read_poison_info(folder)
    except UserError:
        return None


def _manifest(info: PoisonInfo) -> list[ManifestRow]:
    assert info.folder is not None
    try:
        return read_manifest(info.folder / info.manifest)
    except UserError:
        return []


def poison_bytes(info: PoisonInfo, row: ManifestRow) -> bytes | None:
    """A poison's image bytes where the manifest says they were written: a file of the
    poisoned folder, or a member of one of its shards (None if gone)."""
    assert info.folder is not None
    where = info.folder / row.location
    try:
        if where.is_file() and where.suffix.lower() != ".tar":
            return read_image_file(where)
        sample = find_sample(where, row.key) if where.exists() else None
        return sample.image if sample is not None else None
    except (OSError, CorruptSample, UserError):
        return None


def _poison_image(info: PoisonInfo, row: ManifestRow) -> PILImage.Image | None:
    data = poison_bytes(info, row)
    try:
        return decode_image(data) if data is not None else None
    except CorruptSample:
        return None


def _metrics(sweep: SweepDir, trial: Trial, who: str) -> Any:
    path = sweep.trial(trial.name) / EVAL_DIRS[who] / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return read_metrics(path)
    except UserError:
        return None


def backdoor_poisons(sweep: SweepDir, trial: Trial, n: int = N_POISONS_SHOWN) -> list[Any]:
    """The first ``n`` poisons of the trial's backdoor, enlarged, each with its caption."""
    info = _poison_info(sweep, trial)
    if info is None:
        return []
    rows = [r for r in _manifest(info) if r.attack == "backdoor"]
    blocks: list[Any] = []
    factor, size = 1, (0, 0)
    for r in rows[:n]:
        im = _poison_image(info, r)
        if im is None:
            continue
        size = im.size
        png, factor = enlarged_png(im)
        blocks.append(Image(png, caption=f"“{r.caption}”", alt=f"backdoor poison {r.key}"))
    if not blocks:
        return []
    bd = info.backdoor
    what = (f"a {bd.trigger} at the {bd.placement} placement" if bd is not None else "the trigger")
    seed = trial.params.get(SEED_AXIS, "—")
    intro = Text(f"{len(blocks)} of the {len(rows)} poisons of seed {seed} as training reads them: an image "
                 f"with {what}, paired with a caption that names the target label "
                 f"'{bd.target_label if bd is not None else '?'}'"
                 + (f" (written at {size[0]}x{size[1]} px, shown enlarged {factor}x without smoothing)"
                    if factor > 1 else "") + ". From the poisoned set's manifest.csv.")
    return [intro, *blocks]


def prediction_text(p: Mapping[str, Any] | None, target: str, short: bool = False) -> str:
    """A recorded zero-shot prediction as text: the class, its probability and (unless
    ``short``) the target label's rank and probability when it is not the prediction."""
    if not p:
        return "—"
    text = str(p.get("predicted", "?"))
    if p.get("probability") is not None:
        text += f" ({100 * p['probability']:.0f}%)"
    if short:
        return text
    rank = p.get("target_rank", p.get("rank"))
    prob = p.get("target_probability", p.get("label_probability"))
    if str(p.get("predicted")) != target:
        extra = [f"rank {rank}" if rank is not None else "", f"{100 * prob:.0f}%" if prob is not None else ""]
        extra = [e for e in extra if e]
        if extra:
            text += f"; '{target}': {', '.join(extra)}"
    return text


def trigger_example(sweep: SweepDir, trial: Trial) -> list[Any]:
    """Test images without and with the trigger as the backdoored model received them, and
    what the clean and the backdoored model of the trial's seed predicted for each."""
    poisoned, clean = _metrics(sweep, trial, "poisoned"), _metrics(sweep, trial, "clean")
    if poisoned is None or not poisoned.backdoor:
        return []
    bd = poisoned.backdoor
    examples = bd.get("examples") or []
    arrays = read_similarities(sweep.trial(trial.name) / EVAL_DIRS["poisoned"]) or {}
    target = str(bd.get("target_label"))
    seed = trial.params.get(SEED_AXIS, "—")
    if not examples or EXAMPLE_INPUTS not in arrays or EXAMPLE_TRIGGERED not in arrays:
        return [Text(f"Seed {seed}: the evaluation of this backdoored model kept no example images (it predates "
                     f"them). To see a test image with and without the trigger, remove the trial's folder "
                     f"(trials/{trial.name}/) and run the sweep or the demo again: the trained models stay in "
                     "cache/, only the evaluations run again.", note=True)]
    clean_by_key = {e.get("key"): e for e in ((clean.backdoor or {}).get("examples") or [])} if clean else {}
    blocks: list[Any] = []
    rows = []
    size = arrays[EXAMPLE_INPUTS].shape[1:3]
    for j, e in enumerate(examples[: len(arrays[EXAMPLE_INPUTS])]):
        pair, factor = side_by_side(arrays[EXAMPLE_INPUTS][j], arrays[EXAMPLE_TRIGGERED][j])
        mine = e.get("zeroshot", {})
        theirs = (clean_by_key.get(e.get("key")) or {}).get("zeroshot", {})
        blocks.append(Image(pair, alt=f"test image {e.get('key')} without and with the trigger",
                            caption=f"{e.get('key')} ('{e.get('label')}'), left without, right with the trigger. "
                                    f"Clean model: {prediction_text(theirs.get('clean'), target, True)} | "
                                    f"{prediction_text(theirs.get('triggered'), target, True)}. Backdoored model: "
                                    f"{prediction_text(mine.get('clean'), target, True)} | "
                                    f"{prediction_text(mine.get('triggered'), target, True)}."))
        rows.append([e.get("key"), e.get("label"), prediction_text(theirs.get("clean"), target),
                     prediction_text(theirs.get("triggered"), target), prediction_text(mine.get("clean"), target),
                     prediction_text(mine.get("triggered"), target)])
    intro = Text(f"Seed {seed}: test images exactly as the model receives them ({size[1]}x{size[0]} px after its "
                 f"resize and centre crop, shown enlarged {factor}x without smoothing), without and with the "
                 f"trigger where training put it, stamped by the evaluator's own trigger function. The first "
                 f"test image of each of the first {len(rows)} classes other than '{target}', not the ones "
                 "the attack works best on. Zero-shot predictions with CLIP's probability; when the prediction "
                 f"is not '{target}', the rank and probability of '{target}'.")
    table = Table(["test image", "true label", "clean model, no trigger", "clean model, trigger",
                   "backdoored model, no trigger", "backdoored model, trigger"], rows,
                  caption=f"What the two models of seed {seed} predicted")
    return [intro, *blocks, table]


def targets(sweep: SweepDir, trial: Trial, n_captions: int = N_CAPTIONS_SHOWN) -> list[Any]:
    """Each target image of the trial beside a few of its poison captions, and what the clean
    and the poisoned model of its seed predicted for it."""
    info = _poison_info(sweep, trial)
    if info is None or not info.targets:
        return []
    captions: dict[str, list[str]] = {}
    for r in _manifest(info):
        captions.setdefault(r.target_id, []).append(r.caption)
    seen = {}
    for who in ("clean", "poisoned"):
        m = _metrics(sweep, trial, who)
        seen[who] = {x.get("id"): x for x in ((m.targeted or {}).get("targets") or [])} if m is not None else {}
    seed = trial.params.get(SEED_AXIS, "—")
    blocks: list[Any] = []
    for t in info.targets:
        path = info.target_image(t)
        try:
            png, factor = enlarged_png(decode_image(Path(path).read_bytes()))
        except (OSError, CorruptSample):
            continue
        caps = captions.get(t.id, [])
        shown = " / ".join(f"“{c}”" for c in caps[:n_captions])
        verdicts = []
        for who, name in (("clean", "Clean model"), ("poisoned", "Poisoned model")):
            zs = (seen[who].get(t.id) or {}).get("zeroshot")
            if not zs:
                verdicts.append(f"{name}: not evaluated")
                continue
            p = {**zs, "target_rank": zs.get("rank"), "target_probability": zs.get("label_probability")}
            verdicts.append(f"{name}: {prediction_text(p, t.label)} — {'HIT' if zs.get('success') else 'not hit'}")
        true = f"a test image of '{t.true_label}'" if t.true_label else "a test image"
        count = "its poison captions" if len(caps) <= n_captions else f"{len(caps)} poison captions, e.g."
        blocks.append(Image(png, alt=f"target {t.id}, seed {seed}",
                            caption=f"Seed {seed}, target {t.id}: {true}, poisoned toward '{t.label}'; "
                                    f"{count} {shown or '—'}. " + ". ".join(verdicts) + "."))
    return blocks


def sections(sweep: SweepDir, done: Sequence[Trial], attack_of: Mapping[str, str]) -> list[Section]:
    """The page's "what the attack looks like" sections, from the finished trials (the lowest
    seed's backdoor for the poisons and the trigger; every seed's targets)."""
    backdoors = sorted((t for t in done if attack_of.get(t.name) == "backdoor"), key=_seed_order)
    targeted = sorted((t for t in done if attack_of.get(t.name) == "targeted"), key=_seed_order)
    out = []
    if backdoors:
        blocks = backdoor_poisons(sweep, backdoors[0])
        if blocks:
            out.append(Section("The backdoor poisons", blocks))
        blocks = trigger_example(sweep, backdoors[0])
        if blocks:
            out.append(Section("A test image with and without the trigger", blocks))
    target_blocks: list[Any] = []
    for t in targeted:
        target_blocks.extend(targets(sweep, t))
    if target_blocks:
        out.append(Section("The targets of targeted poisoning", [Text(
            "Each target image (shown enlarged without smoothing) with a few of the captions its poisons "
            "pair it with, and what the clean and the poisoned model of its seed predict for it (zero-shot, "
            "with CLIP's probability; when the prediction is not the target label, that label's rank and "
            "probability)."), *target_blocks]))
    return out
