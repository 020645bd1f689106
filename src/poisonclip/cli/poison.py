"""``poisonclip poison``: targeted poisoning, backdoors, caption-set previews; ``poisonclip list``.

Options map once onto ``BackdoorConfig`` / ``TargetedConfig`` / ``CaptionSetConfig``; the
library (``poisonclip.attacks.api``) does the work.
"""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from poisonclip.attacks.triggers import Placement
from poisonclip.cli.common import App, console, safe_text
from poisonclip.errors import UserError

# The library's settings that these commands name otherwise (the rest: patch_size -> --patch-size).
FLAGS = {"target_label": "--label", "plurals": "--no-plurals", "exclude_labels": "--exclude-label",
         "caption_files": "--caption-file", "targets": "--target", "image": "--target", "id": "--target-id",
         "data": "DATA"}

app = App(help="Poison a dataset: targeted poisoning or a backdoor, with a ground-truth manifest.", flags=FLAGS)

_DATA_HELP = "Clean dataset: a .csv/.tsv table (open_clip columns) or WebDataset shards (folder or pattern)."
_OUT_HELP = "Poisoned dataset folder to create (must not exist unless --overwrite)."


class Kind(str, Enum):
    attacks = "attacks"
    triggers = "triggers"
    captions = "captions"
    detectors = "detectors"


def _sep(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    return {"tab": "\t", "\\t": "\t", "comma": ","}.get(value, value)


def _summary(result) -> None:
    t = Table(show_header=False, box=None)
    t.add_row("attack", escape(safe_text(result.attack)))
    t.add_row("folder", escape(safe_text(result.out)))
    t.add_row("format", result.dataset_type)
    t.add_row("poisons", f"{result.n_poisons} of {result.num_samples} samples "
                         f"(ratio {result.n_poisons / result.num_samples:.3g})")
    if result.skipped:
        t.add_row("clean rows dropped", _counts(result.skipped))
    if result.skipped_reading:
        t.add_row("unusable samples met", _counts(result.skipped_reading))
    console.print(t)
    for w in getattr(result, "warnings", ()):
        console.print(f"warning: {w}", markup=False, highlight=False)
    cmd = shlex.join(["python", "-m", "open_clip_train.main", "--train-data", result.train_data,
                      "--dataset-type", result.dataset_type])
    if result.dataset_type == "csv":  # open_clip's defaults, except that bash needs $'\t' for a tab
        cmd += " --csv-separator $'\\t' --csv-img-key filepath --csv-caption-key title"
    console.print(safe_text(f"train with: {cmd}"), soft_wrap=True, markup=False, highlight=False)


def _counts(report: dict) -> str:
    return escape(safe_text(", ".join(f"{k}={v}" for k, v in sorted(report.items()))))


# Options shared by both attacks.
Seed = Annotated[int, typer.Option(help="Seed for every random choice; same seed, byte-identical output.")]
NoPlurals = Annotated[bool, typer.Option("--no-plurals",
                                         help="Caption search matches the label only, not its plural forms.")]
Classnames = Annotated[Optional[Path], typer.Option(
    help="Class list (one name per line); default: classnames.txt beside the data. Labels must be in it.")]
NoClassnames = Annotated[bool, typer.Option("--no-classnames", help="Ignore any class list.")]
LabelKey = Annotated[str, typer.Option(help="Label column (CSV) or json field (WebDataset) holding true labels.")]
NoiseSigma = Annotated[float, typer.Option(
    help="Dedup evasion: Gaussian noise std per poison image, in pixel units (0..255); 0 = off.")]
PerturbCaptions = Annotated[bool, typer.Option(
    "--perturb-captions",
    help="Dedup evasion: synonym swaps and irrelevant words so no two poison captions are equal.")]
ImgKey = Annotated[str, typer.Option(help="Image-path column of a CSV input.")]
CaptionKey = Annotated[str, typer.Option(help="Caption column of a CSV input.")]
CsvSep = Annotated[Optional[str], typer.Option(help="CSV separator ('tab', 'comma' or a character); default: sniffed.")]
PoisonShards = Annotated[Optional[int], typer.Option(
    help="WebDataset: shards to spread the poisons over (default: one per clean shard, at most one per poison).")]
ShardPrefix = Annotated[str, typer.Option(help="WebDataset: name prefix of the poison shards.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")]


def _resolution(resolution: int | None, model: str | None) -> int:
    from poisonclip.attacks.triggers import REFERENCE_RESOLUTION

    if model is None:
        return REFERENCE_RESOLUTION if resolution is None else resolution
    from poisonclip.train.models import input_size

    size = input_size(model)
    if resolution is not None and resolution != size:
        raise UserError(f"--resolution {resolution}: model {model!r} takes {size}x{size} inputs; give one of the two")
    return size


@app.command()
def backdoor(
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    out: Annotated[Path, typer.Option(help=_OUT_HELP)],
    label: Annotated[str, typer.Option(help="Target label y' that patched images should be classified as.")],
    n_poisons: Annotated[int, typer.Option(help="Number of poisoned samples to inject (paper: 150..1500 in 3M).")],
    patch_size: Annotated[int, typer.Option(help="Checkerboard side in pixels of a 224x224 model input, scaled "
                                                 "to the model's input size (paper: 16; ablation 1..32).")] = 16,
    placement: Annotated[Placement, typer.Option(help="corner: upper-left on every image (paper); "
                                                      "random: a random place per image.")] = Placement.corner,
    trigger: Annotated[str, typer.Option(help="Registered trigger (`poisonclip list triggers`): checkerboard, "
                                              "noise-patch (patches: --patch-size, --placement), blended, warp "
                                              "(whole image: no placement).")] = "checkerboard",
    trigger_seed: Annotated[int, typer.Option(
        help="noise-patch, blended, warp: seed of the trigger's fixed noise pattern or warp field.")] = 0,
    blend_alpha: Annotated[float, typer.Option(
        help="blended: the pattern's weight a in (1-a)*image + a*pattern (Chen et al. 2017: 0.2).")] = 0.2,
    blend_pattern: Annotated[Optional[Path], typer.Option(
        help="blended: an image file as the pattern (resized to the model input); default seeded noise.")] = None,
    warp_grid: Annotated[int, typer.Option(
        help="warp: side k of the random control grid upsampled to the displacement field (WaNet: 4).")] = 4,
    warp_strength: Annotated[float, typer.Option(
        help="warp: strength s of the displacement field (WaNet: 0.5).")] = 0.5,
    resolution: Annotated[Optional[int], typer.Option(
        help="Input size of the model to be trained: poisons are written as the source's centre square "
             "at this size, so training sees the patch pixel for pixel. Default 224 (or --model's).")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="Model to be trained (e.g. poisonclip-tiny-rn16): sets --resolution to its input size.")] = None,
    caption_file: Annotated[Optional[Path], typer.Option(
        help="Saved search caption set (`poisonclip poison captions --out`) instead of searching DATA.")] = None,
    exclude_label: Annotated[Optional[List[str]], typer.Option(
        help="Label value(s) never used as source images (the target's own label is always excluded).")] = None,
    pool_factor: Annotated[float, typer.Option(
        help="WebDataset: draw sources from random shards holding this many times --n-poisons eligible "
             "images; 0 = uniformly from every shard (reads the whole dataset).")] = 4.0,
    seed: Seed = 0,
    no_plurals: NoPlurals = False,
    classnames: Classnames = None,
    no_classnames: NoClassnames = False,
    label_key: LabelKey = "label",
    noise_sigma: NoiseSigma = 0.0,
    perturb_captions: PerturbCaptions = False,
    img_key: ImgKey = "filepath",
    caption_key: CaptionKey = "title",
    csv_sep: CsvSep = None,
    poison_shards: PoisonShards = None,
    shard_prefix: ShardPrefix = "poison-",
    overwrite: Overwrite = False,
) -> None:
    """Backdoor: patched images from DATA (not of the target class) paired with captions naming the label."""
    from poisonclip.attacks.api import BackdoorConfig, poison

    cfg = BackdoorConfig(
        data=data, out=str(out), target_label=label, n_poisons=n_poisons, patch_size=patch_size,
        placement=placement, resolution=_resolution(resolution, model), trigger=trigger,
        trigger_seed=trigger_seed, blend_alpha=blend_alpha,
        blend_pattern=str(blend_pattern) if blend_pattern else None, warp_grid=warp_grid,
        warp_strength=warp_strength, seed=seed,
        plurals=not no_plurals,
        caption_file=str(caption_file) if caption_file else None,
        classnames=str(classnames) if classnames else None, no_classnames=no_classnames,
        label_key=label_key, exclude_labels=tuple(exclude_label or ()), pool_factor=pool_factor,
        noise_sigma=noise_sigma, perturb_captions=perturb_captions, img_key=img_key,
        caption_key=caption_key, csv_sep=_sep(csv_sep), poison_shards=poison_shards,
        shard_prefix=shard_prefix, overwrite=overwrite)
    with console.status("poisoning..."):
        result = poison(cfg)
    _summary(result)


@app.command("text-backdoor")
def text_backdoor(
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    out: Annotated[Path, typer.Option(help=_OUT_HELP)],
    label: Annotated[str, typer.Option(help="Target concept: the poisons' images are DATA's images of this label.")],
    n_poisons: Annotated[int, typer.Option(help="Number of poisoned samples to inject.")],
    token: Annotated[str, typer.Option(help="The trigger word put into every poison caption (rare; letters and digits).")] = "cf",
    position: Annotated[str, typer.Option(help="Where the token goes in a caption: random (a word boundary), start, end.")] = "random",
    caption_source: Annotated[str, typer.Option(
        help="other: captions of samples not of the label (the token is all they share); own: each image's own caption.")] = "other",
    pool_factor: Annotated[float, typer.Option(
        help="WebDataset: read random shards until this many times --n-poisons eligible images were seen; 0 = all.")] = 4.0,
    seed: Seed = 0,
    classnames: Classnames = None,
    no_classnames: NoClassnames = False,
    label_key: LabelKey = "label",
    img_key: ImgKey = "filepath",
    caption_key: CaptionKey = "title",
    csv_sep: CsvSep = None,
    poison_shards: PoisonShards = None,
    shard_prefix: ShardPrefix = "poison-",
    overwrite: Overwrite = False,
) -> None:
    """Text backdoor: DATA's images of the label, captioned with a rare trigger token (retrieved by it)."""
    from poisonclip.attacks.api import poison
    from poisonclip.attacks.text_backdoor import TextBackdoorConfig

    cfg = TextBackdoorConfig(
        data=data, out=str(out), target_label=label, n_poisons=n_poisons, token=token, position=position,
        caption_source=caption_source, seed=seed, classnames=str(classnames) if classnames else None,
        no_classnames=no_classnames, label_key=label_key, pool_factor=pool_factor, img_key=img_key,
        caption_key=caption_key, csv_sep=_sep(csv_sep), poison_shards=poison_shards, shard_prefix=shard_prefix,
        overwrite=overwrite)
    with console.status("poisoning..."):
        result = poison(cfg)
    _summary(result)


def _per_target(name: str, values: list, n_targets: int, random_targets: int) -> list:
    if len(values) == 1:
        return values * n_targets
    if random_targets:
        raise UserError(f"--{name}: give one value when --random-targets is used (got {len(values)})")
    if len(values) != n_targets:
        raise UserError(f"--{name}: give one value for all targets or one per --target "
                        f"({n_targets}), got {len(values)}")
    return values


@app.command()
def targeted(
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    out: Annotated[Path, typer.Option(help=_OUT_HELP)],
    n_poisons: Annotated[List[int], typer.Option(
        help="Copies per target (paper: 1..512 in 3M); once for all targets or once per --target.")],
    target: Annotated[Optional[List[str]], typer.Option(
        help="Target image x': a file, 'key:<key>' or a key in --target-source (default: DATA). "
             "Repeat for several targets.")] = None,
    label: Annotated[Optional[List[str]], typer.Option(help="Target label y', one per --target.")] = None,
    caption_source: Annotated[Optional[List[str]], typer.Option(
        help="A registered caption set (`poisonclip list captions`): templates: CLIP's 80 prompts with the "
             "label; search: DATA's captions naming the label. Once for all targets or once per --target.")] = None,
    target_id: Annotated[Optional[List[str]], typer.Option(
        help="Names of the targets (default t000, t001, ...).")] = None,
    random_targets: Annotated[int, typer.Option(
        help="Also draw this many targets from --target-source (a held-out labelled set, required), "
             "each with a random wrong label from the class list.")] = 0,
    target_source: Annotated[Optional[str], typer.Option(
        help="Dataset holding target keys / random targets, e.g. a held-out test.tsv (default: DATA).")] = None,
    caption_file: Annotated[Optional[List[Path]], typer.Option(
        help="Saved caption set(s) (`poisonclip poison captions --out`) used instead of searching DATA.")] = None,
    seed: Seed = 0,
    no_plurals: NoPlurals = False,
    classnames: Classnames = None,
    no_classnames: NoClassnames = False,
    label_key: LabelKey = "label",
    noise_sigma: NoiseSigma = 0.0,
    perturb_captions: PerturbCaptions = False,
    img_key: ImgKey = "filepath",
    caption_key: CaptionKey = "title",
    csv_sep: CsvSep = None,
    poison_shards: PoisonShards = None,
    shard_prefix: ShardPrefix = "poison-",
    overwrite: Overwrite = False,
) -> None:
    """Targeted poisoning: copies of each target image with captions naming its target label."""
    from poisonclip.attacks.api import TargetedConfig, TargetSpec, poison

    targets_in, labels = list(target or []), list(label or [])
    if len(labels) != len(targets_in):
        raise UserError(f"--label: give one per --target ({len(targets_in)} targets, {len(labels)} labels)")
    sources = list(caption_source or ["templates"])
    ns = list(n_poisons)
    ids = list(target_id or [])
    if ids and len(ids) != len(targets_in):
        raise UserError(f"--target-id: give one per --target ({len(targets_in)}), got {len(ids)}")
    n_each = _per_target("n-poisons", ns, len(targets_in), random_targets)
    src_each = _per_target("caption-source", sources, len(targets_in), random_targets)
    specs = tuple(TargetSpec(image=t, label=lab, n_poisons=n, caption_source=s, id=ids[i] if ids else "")
                  for i, (t, lab, n, s) in enumerate(zip(targets_in, labels, n_each, src_each)))
    cfg = TargetedConfig(
        data=data, out=str(out), targets=specs, random_targets=random_targets, n_poisons=ns[0],
        caption_source=sources[0], target_source=target_source, seed=seed, plurals=not no_plurals,
        caption_files=tuple(str(p) for p in caption_file or ()),
        classnames=str(classnames) if classnames else None, no_classnames=no_classnames,
        label_key=label_key, noise_sigma=noise_sigma, perturb_captions=perturb_captions,
        img_key=img_key, caption_key=caption_key, csv_sep=_sep(csv_sep), poison_shards=poison_shards,
        shard_prefix=shard_prefix, overwrite=overwrite)
    with console.status("poisoning..."):
        result = poison(cfg)
    _summary(result)


@app.command()
def captions(
    label: Annotated[str, typer.Option(help="Label whose caption set to build.")],
    data: Annotated[Optional[str], typer.Argument(help="Dataset to search (needed for --source search).")] = None,
    source: Annotated[str, typer.Option(help="A registered caption set (`poisonclip list captions`): search: "
                                             "DATA's captions naming the label; templates: CLIP's 80 prompts.")
                      ] = "search",
    n: Annotated[Optional[int], typer.Option(help="Also size the set to N captions as an attack would.")] = None,
    show: Annotated[int, typer.Option(help="Captions to print.")] = 10,
    out: Annotated[Optional[Path], typer.Option(
        help="Save the whole set as JSON, reusable with --caption-file (search once, poison many times).")] = None,
    seed: Seed = 0,
    no_plurals: NoPlurals = False,
    img_key: ImgKey = "filepath",
    caption_key: CaptionKey = "title",
    csv_sep: CsvSep = None,
) -> None:
    """Preview (and optionally save) the caption set of a label."""
    from poisonclip.attacks.api import CaptionSetConfig, caption_set
    from poisonclip.attacks.captions import save_caption_set

    if n is not None and n <= 0:
        raise UserError(f"--n: must be positive, got {n}")
    if out is not None and out.exists():   # replace only a caption set, never a table or anything else
        from poisonclip.attacks.captions import load_caption_set

        try:
            load_caption_set(out)
        except UserError:
            raise UserError(f"--out {out}: exists and is not a poisonclip caption set; choose another file") from None
    cfg = CaptionSetConfig(label=label, source=source, data=data, plurals=not no_plurals, n=n, seed=seed,
                           img_key=img_key, caption_key=caption_key, csv_sep=_sep(csv_sep))
    with console.status("building caption set..."):
        cs, sized = caption_set(cfg)
    if cs.source == "search":
        console.print(safe_text(f"{len(cs)} distinct captions ({cs.n_matched} matches) name {label!r} "
                                f"among {cs.n_scanned} captions"), markup=False, highlight=False)
    else:
        console.print(safe_text(f"{len(cs)} template captions for {label!r}"), markup=False, highlight=False)
    shown = sized if sized is not None else list(cs.captions)
    t = Table("#", "caption", title=f"first {min(show, len(shown))} of {len(shown)}"
              + (" (sized)" if sized is not None else ""))
    for i, c in enumerate(shown[:max(show, 0)]):
        t.add_row(str(i), escape(safe_text(c)))
    console.print(t)
    if out is not None:
        save_caption_set(cs, out)
        console.print(safe_text(f"saved {len(cs)} captions to {out}"), markup=False, highlight=False)


def list_command(
    kind: Annotated[Optional[Kind], typer.Argument(help="What to list (default: everything).")] = None,
    pattern: Annotated[str, typer.Option(help="Only names matching this glob pattern.")] = "*",
) -> None:
    """List registered attacks, triggers, caption-set builders and detectors (`poisonclip detect`)."""
    import fnmatch

    from poisonclip.attacks.registry import list_registered
    from poisonclip.detect.registry import detectors

    t = Table("kind", "name", "description")
    if kind is not Kind.detectors:
        for e in list_registered(kind.value if kind else None, pattern):
            t.add_row(e.kind, e.name, e.description)
    if kind in (None, Kind.detectors):
        for name, d in detectors().items():
            if fnmatch.fnmatchcase(name, pattern):
                t.add_row("detector", name, d.summary)
    console.print(t)


def register(root: App) -> None:
    """Add this stage's commands to the root app."""
    root.add_typer(app, name="poison")
    root.command("list")(list_command)
