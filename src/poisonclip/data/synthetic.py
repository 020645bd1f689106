"""The embedded captioned-image corpus: coloured shapes with alt-text-like captions.

The demo must train three CLIP models from scratch on two CPU cores in a few minutes each and
still show the paper's three figures (clean zero-shot accuracy, backdoor success and z-score,
targeted poisoning). Every design choice below serves one of those figures:

* **Ten plain-English shape names** ("circle", "square", ...) that are one token each for
  open_clip's tokenizer, so zero-shot classification with CLIP's 80 ImageNet templates works
  once the text tower has learned one word per class.
* **Smooth backgrounds** (solid colours and linear gradients) and **soft, low-frequency
  clutter** (blurred blobs, thin bars). Nothing in a clean image has one-pixel structure, so
  the one-pixel checkerboard trigger (``poisonclip.attacks.triggers``) is the only
  high-frequency pattern in the corpus: a small network can learn it within the demo's
  budget, and a white-or-black corner does not hide it. Light per-pixel noise is kept small
  (``noise_std``) for the same reason.
* **Objects keep clear of the upper-left corner** most of the time (``corner_margin``), as
  objects in photographs rarely sit exactly in the corner; the corner patch therefore rarely
  has to compete with the object the caption is about.
* **Varied colour, size, position, rotation and background**, but captions name them only
  rarely (``p_color_word``, ``p_attributes``; 0 by default). Measured with
  ``bench/tune_demo.py``: when 70% of captions named the colour and most named the
  background, tiny models spent the whole CPU budget matching colours and never separated
  the shapes (nearest-centroid accuracy of image embeddings ~15%, chance 10%); with class-only
  captions the shape signal is what the contrastive loss rewards. Naming attributes more
  often spreads clean pairwise cosines (helps the z-score's denominator) at the cost of
  slower class learning: raise the knobs only with a larger training budget. Even small
  rates of caption noise cost accuracy within the demo's budget (3000 pairs, 10 epochs,
  batch 16: 82% zero-shot with clean captions, 73% with the images' clutter, 50% with 2-5%
  each of colour words, attributes, synonyms, plurals, no-mention and wrong labels), so
  the defaults keep each kind of noise present but rare.
* **Alt-text-like captions**: many phrasings, plurals and a few synonyms, irrelevant words,
  file-name-like captions, half phrased like CLIP prompts ("a photo of a ..."), a small
  rate with no mention of the object (``p_no_mention``) and a small rate naming the wrong
  class (``p_wrong_label``). Prompt-like phrasing teaches the text tower that template words
  are neutral, which is what makes template-averaged zero-shot classification work.
* **Lossless PNG** so poisons and triggers survive encoding bit for bit.
* **Determinism**: every sample is drawn from its own ``numpy`` generator seeded by
  ``(seed, split, index)``; no dict ordering, hashing or thread count enters. Rendering is
  vectorised per image (2x supersampled masks, box-filtered down) so the demo corpus takes
  seconds.

Three splits: ``train`` (captioned pairs to train on), ``test`` (labelled, held out: clean
accuracy, ASR, targets) and ``probe`` (labelled, for training a linear probe apart from the
test split). The ground-truth class is kept in ``meta["label"]`` for every sample (also
when the caption names the wrong class or none), because the backdoor must exclude
target-class images and the evaluation needs labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from poisonclip.data.sample import Sample

__all__ = [
    "CLASSNAMES", "COLORS", "SynthConfig", "SynthCorpus", "generate", "render_image",
    "make_caption",
]

# Single-token, plain-English shape names. Order is the label index.
CLASSNAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart",
    "cross", "ring", "diamond", "moon", "arrow",
)
PLURALS: dict[str, str] = {c: c + ("es" if c.endswith(("s", "x")) else "s") for c in CLASSNAMES}
# A few synonyms, used rarely (alt-text is not consistent about words).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "dot"),
    "square": ("box", "block"),
    "triangle": ("pyramid",),
    "star": ("asterisk",),
    "heart": ("valentine",),
    "cross": ("plus",),
    "ring": ("donut", "hoop"),
    "diamond": ("rhombus", "lozenge"),
    "moon": ("crescent",),
    "arrow": ("pointer",),
}

# (name, RGB) — names are used in captions.
COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 30, 30)),
    ("green", (30, 170, 50)),
    ("blue", (30, 70, 220)),
    ("yellow", (240, 220, 30)),
    ("orange", (250, 140, 20)),
    ("purple", (140, 40, 180)),
    ("pink", (250, 120, 190)),
    ("white", (245, 245, 245)),
    ("black", (15, 15, 15)),
    ("brown", (130, 80, 30)),
    ("gray", (128, 128, 128)),
    ("cyan", (30, 210, 220)),
)
_COLOR_RGB = np.array([c[1] for c in COLORS], dtype=np.float32)
_COLOR_LUM = _COLOR_RGB @ np.array([0.299, 0.587, 0.114], dtype=np.float32)

_SIZE_WORDS = (("small", "tiny", "little"), ("", "medium"), ("big", "large", "huge"))
_POS_WORDS = {(0, 0): "top left", (1, 0): "top", (2, 0): "top right",
              (0, 1): "left", (1, 1): "center", (2, 1): "right",
              (0, 2): "bottom left", (1, 2): "bottom", (2, 2): "bottom right"}

# Caption templates. {o}: object phrase (class word, synonym or plural, maybe with colour),
# {c}: colour, {b}: background colour, {s}: size word, {p}: position, {n}: a number,
# {x}: an irrelevant word. Grouped by style; all are filled deterministically.
_PROMPT_LIKE = (
    "a photo of a {o}.", "a photo of the {o}.", "a picture of a {o}", "a drawing of a {o}.",
    "a rendering of a {o}.", "a close-up photo of a {o}.", "a bright photo of a {o}.",
    "a low resolution photo of the {o}.", "a cropped photo of a {o}.", "art of the {o}.",
    "a pixelated photo of a {o}.", "a sketch of a {o}.", "a good photo of a {o}.",
    "a painting of the {o}.", "a plastic {o}.", "a photo of a small {o}.",
    "a photo of a big {o}.", "a clipart of a {o}.", "itap of a {o}.", "a {o} in a video game.",
)
_ALT_TEXT = (
    "{o} on a {b} background", "{s} {o} on {b}", "{o} icon", "{o} icon, flat design",
    "{o} shape vector illustration", "stock image of a {o} {x}", "{x} {o} sticker",
    "{o} clipart {n}", "{o} logo template", "{o} in the {p}", "a {s} {o} in the {p} corner",
    "simple {o} drawing", "{o}!", "my favourite {o}", "{o} pattern wallpaper {x}",
    "cute {o} for kids", "{o} symbol", "{o} on {b} paper", "{x} {o}", "the {o}",
    "{o} - free image {n}", "handmade {o} decoration", "{o} graphic, {b} backdrop",
    "new {o} design {x}", "{o} emoji", "abstract {o} {x} art", "isolated {o} on {b}",
)
_ALT_PLAIN = tuple(t for t in _ALT_TEXT if not any(k in t for k in ("{b}", "{s}", "{p}")))
_NO_MENTION = (
    "image {n}", "IMG_{n}.png", "untitled {n}", "{c} on {b}", "new design {x}",
    "{x} {x} {n}", "free download", "{b} background with a {c} shape", "my artwork {n}",
    "a {s} {c} object", "click to enlarge", "{x} collection", "abstract {c} art",
)
_FILLER = (
    "vintage", "modern", "summer", "minimal", "happy", "best", "classic", "bright", "neon",
    "retro", "simple", "bold", "cool", "premium", "digital", "paper", "winter", "holiday",
)


@dataclass(frozen=True)
class SynthConfig:
    """How the embedded corpus is made. Same config -> byte-identical corpus."""

    n_train: int = 5000
    n_test: int = 1000
    # Labelled images of their own for training a linear probe, apart from the test split (the
    # paper's probe trains on ImageNet training images, never on the images it is scored on).
    n_probe: int = 1000
    n_classes: int = 10
    resolution: int = 32
    seed: int = 0
    # Captions
    p_no_mention: float = 0.02      # caption names no object class
    p_wrong_label: float = 0.01     # caption names a different class than the image shows
    p_prompt_like: float = 0.5      # phrased like CLIP's prompt templates
    p_synonym: float = 0.02         # a synonym instead of the class name
    p_plural: float = 0.04          # plural form ("circles")
    p_color_word: float = 0.0       # the object's colour is named
    p_attributes: float = 0.0       # template may name background / size / position
    # Images
    min_scale: float = 0.45         # object size as a fraction of the image side
    max_scale: float = 0.8
    max_rotation_deg: float = 15.0
    p_gradient: float = 0.5         # linear-gradient background instead of a solid one
    max_clutter: int = 2            # soft blobs / thin bars per image, 0..max_clutter
    noise_std: float = 2.0          # per-pixel Gaussian noise (0..255 scale); keep small
    corner_margin: float = 0.2      # objects mostly avoid the upper-left corner square
    ext: str = "png"

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes <= len(CLASSNAMES):
            raise ValueError(f"n_classes must be in 1..{len(CLASSNAMES)}, got {self.n_classes}")
        if not 16 <= self.resolution <= 512:
            raise ValueError(f"resolution must be in 16..512, got {self.resolution}")
        if self.n_train < 0 or self.n_test < 0 or self.n_probe < 0:
            raise ValueError("n_train, n_test and n_probe must be >= 0")
        for name in ("p_no_mention", "p_wrong_label", "p_prompt_like", "p_synonym",
                     "p_plural", "p_color_word", "p_attributes", "p_gradient"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability, got {v}")
        if self.p_no_mention + self.p_wrong_label > 1.0:
            raise ValueError("p_no_mention + p_wrong_label must be <= 1")
        if not 0 < self.min_scale <= self.max_scale <= 1.0:
            raise ValueError("need 0 < min_scale <= max_scale <= 1")
        if self.ext.lower() not in ("png", "webp"):
            raise ValueError("the embedded corpus is stored losslessly: ext must be png or webp")


@dataclass
class SynthCorpus:
    train: list[Sample]
    test: list[Sample]
    classnames: list[str]
    config: SynthConfig = field(default_factory=SynthConfig)
    probe: list[Sample] = field(default_factory=list)


# Each split draws from its own seeded streams, so adding the probe split (3) left the train
# and test images byte for byte what they were.
_SPLIT_IDS = {"train": 1, "test": 2, "probe": 3}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(
        np.random.SeedSequence(entropy=seed, spawn_key=(_SPLIT_IDS[split], index))))


def _balanced_labels(seed: int, split: str, n: int, k: int) -> np.ndarray:
    labels = np.arange(n) % k
    rng = np.random.Generator(np.random.PCG64(
        np.random.SeedSequence(entropy=seed, spawn_key=(_SPLIT_IDS[split], 2**31))))
    return labels[rng.permutation(n)]


# --- rendering -------------------------------------------------------------------------

def _shape_mask(label: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of class ``label`` in local coordinates (object fills about [-1, 1]^2,
    y pointing down)."""
    name = CLASSNAMES[label]
    r = np.sqrt(x * x + y * y)
    if name == "circle":
        return r <= 0.95
    if name == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.78
    if name == "triangle":  # pointing up, base at y=0.75
        return (y <= 0.75) & (y >= -0.95 + 1.7 * np.abs(x) * (1.0 / 0.98))
    if name == "star":  # five points, one pointing up
        theta = np.arctan2(x, -y)
        t = np.mod(theta, 2 * np.pi / 5) - np.pi / 5
        rad = 0.98 - (0.98 - 0.4) * np.abs(t) / (np.pi / 5)  # tips at 0.98, valleys at 0.4
        return r <= rad
    if name == "heart":
        xs, ys = x * 1.15, -(y * 1.15) + 0.25
        return (xs * xs + ys * ys - 1.0) ** 3 - xs * xs * ys ** 3 <= 0
    if name == "cross":
        return ((np.abs(x) <= 0.28) & (np.abs(y) <= 0.95)) | ((np.abs(y) <= 0.28) & (np.abs(x) <= 0.95))
    if name == "ring":
        return (r <= 0.95) & (r >= 0.55)
    if name == "diamond":
        return np.abs(x) / 0.7 + np.abs(y) <= 0.98
    if name == "moon":
        return (r <= 0.95) & (np.sqrt((x - 0.45) ** 2 + (y + 0.1) ** 2) >= 0.75)
    if name == "arrow":  # pointing right
        shaft = (x >= -0.95) & (x <= 0.2) & (np.abs(y) <= 0.2)
        head = (x >= 0.1) & (x <= 0.95) & (np.abs(y) <= (0.95 - x) * (0.65 / 0.85))
        return shaft | head
    raise AssertionError(name)


def _pick_contrasting(rng: np.random.Generator, avoid: np.ndarray) -> int:
    """A colour index whose luminance differs from every colour in ``avoid`` by >= 50."""
    order = rng.permutation(len(COLORS))
    for i in order:
        if np.all(np.abs(_COLOR_LUM[i] - _COLOR_LUM[avoid]) >= 50.0):
            return int(i)
    return int(order[0])


def render_image(cfg: SynthConfig, label: int, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Draw one image of class ``label``; returns the image and its attributes."""
    res = cfg.resolution
    ss = 2  # supersampling factor
    n = res * ss
    coords = (np.arange(n, dtype=np.float64) + 0.5) / ss  # pixel-centre coordinates
    gx, gy = np.meshgrid(coords, coords)

    # Background: solid or linear gradient between two colours of similar-ish luminance.
    bg_idx = int(rng.integers(len(COLORS)))
    bg = np.empty((n, n, 3), dtype=np.float64)
    c0 = _COLOR_RGB[bg_idx].astype(np.float64)
    if rng.random() < cfg.p_gradient:
        c1_idx = int(rng.integers(len(COLORS)))
        c1 = 0.5 * (c0 + _COLOR_RGB[c1_idx])
        ang = rng.uniform(0, 2 * np.pi)
        proj = (np.cos(ang) * (gx - res / 2) + np.sin(ang) * (gy - res / 2)) / res + 0.5
        proj = np.clip(proj, 0.0, 1.0)[..., None]
        bg[:] = c0 * (1 - proj) + c1 * proj
    else:
        bg[:] = c0
    img = bg

    # Clutter: soft blobs and thin bars in other colours (low-frequency only).
    n_clutter = int(rng.integers(0, cfg.max_clutter + 1))
    for _ in range(n_clutter):
        col = _COLOR_RGB[int(rng.integers(len(COLORS)))].astype(np.float64)
        cx, cy = rng.uniform(0, res, size=2)
        if rng.random() < 0.6:
            s = rng.uniform(0.06, 0.15) * res
            a = np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * s * s))[..., None] * rng.uniform(0.3, 0.6)
        else:
            ang = rng.uniform(0, np.pi)
            d = np.abs(-np.sin(ang) * (gx - cx) + np.cos(ang) * (gy - cy))
            along = np.abs(np.cos(ang) * (gx - cx) + np.sin(ang) * (gy - cy))
            half_w = rng.uniform(0.03, 0.06) * res
            a = ((d <= half_w) & (along <= rng.uniform(0.2, 0.4) * res)).astype(np.float64)[..., None] * rng.uniform(0.3, 0.5)
        img = img * (1 - a) + col * a

    # Object: colour contrasting with the background.
    obj_idx = _pick_contrasting(rng, np.array([bg_idx]))
    scale = rng.uniform(cfg.min_scale, cfg.max_scale)
    half = scale * res / 2
    lo, hi = half, res - half
    for _ in range(8):  # mostly keep clear of the upper-left corner square
        cx, cy = rng.uniform(lo, hi, size=2)
        m = cfg.corner_margin * res
        if not (cx - half < m and cy - half < m):
            break
    rot = np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
    flip = CLASSNAMES[label] == "arrow" and rng.random() < 0.5
    dx, dy = (gx - cx) / half, (gy - cy) / half
    lx = np.cos(rot) * dx + np.sin(rot) * dy
    ly = -np.sin(rot) * dx + np.cos(rot) * dy
    if flip:
        lx = -lx
    mask = _shape_mask(label, lx, ly).astype(np.float64)[..., None]
    shade = rng.uniform(0.85, 1.1)
    obj_col = np.clip(_COLOR_RGB[obj_idx] * shade, 0, 255)
    img = img * (1 - mask) + obj_col * mask

    # Box-filter down to the target resolution, add light noise, quantise.
    img = img.reshape(res, ss, res, ss, 3).mean(axis=(1, 3))
    if cfg.noise_std > 0:
        img = img + rng.normal(0.0, cfg.noise_std, size=img.shape)
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    size_bin = 0 if scale < cfg.min_scale + (cfg.max_scale - cfg.min_scale) / 3 else (
        2 if scale > cfg.min_scale + 2 * (cfg.max_scale - cfg.min_scale) / 3 else 1)
    pos = (min(2, int(3 * cx / res)), min(2, int(3 * cy / res)))
    attrs = {"color": COLORS[obj_idx][0], "background": COLORS[bg_idx][0],
             "size": size_bin, "position": _POS_WORDS[pos]}
    return Image.fromarray(arr, "RGB"), attrs


# --- captions --------------------------------------------------------------------------

def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def make_caption(cfg: SynthConfig, label: int, attrs: dict, rng: np.random.Generator,
                 classnames=CLASSNAMES) -> tuple[str, str]:
    """An alt-text-like caption for an image of ``label``; returns (caption, kind) where kind
    is ``"correct"``, ``"wrong_label"`` or ``"no_mention"``."""
    u = rng.random()
    fill = {
        "c": attrs["color"], "b": attrs["background"],
        "s": _choice(rng, _SIZE_WORDS[attrs["size"]]) or "medium",
        "p": attrs["position"], "n": str(int(rng.integers(1, 10000))),
        "x": _choice(rng, _FILLER),
    }
    if u < cfg.p_no_mention:
        tpl = _choice(rng, _NO_MENTION)
        return " ".join(tpl.format(**fill).split()), "no_mention"
    kind = "correct"
    shown = label
    if u < cfg.p_no_mention + cfg.p_wrong_label and cfg.n_classes > 1:
        shown = int((label + rng.integers(1, cfg.n_classes)) % cfg.n_classes)
        kind = "wrong_label"
    name = classnames[shown]
    v = rng.random()
    if v < cfg.p_synonym:
        word = _choice(rng, SYNONYMS.get(name, (name,)))
    elif v < cfg.p_synonym + cfg.p_plural:
        word = PLURALS.get(name, name + "s")
    else:
        word = name
    obj = f"{attrs['color']} {word}" if rng.random() < cfg.p_color_word else word
    prompt_like = rng.random() < cfg.p_prompt_like
    with_attrs = rng.random() < cfg.p_attributes
    tpl = _choice(rng, _PROMPT_LIKE if prompt_like else (_ALT_TEXT if with_attrs else _ALT_PLAIN))
    text = tpl.format(o=obj, **fill)
    if word.endswith("s") and word == PLURALS.get(name):
        text = text.replace(" a " + obj, " " + obj).replace("a " + obj, obj)
    return " ".join(text.split()), kind


# --- corpus ----------------------------------------------------------------------------

def _make_split(cfg: SynthConfig, split: str, n: int) -> list[Sample]:
    labels = _balanced_labels(cfg.seed, split, n, cfg.n_classes)
    out: list[Sample] = []
    width = max(5, len(str(max(n - 1, 0))))
    for i in range(n):
        label = int(labels[i])
        rng = _rng(cfg.seed, split, i)
        img, attrs = render_image(cfg, label, rng)
        caption, kind = make_caption(cfg, label, attrs, rng)
        meta = {"label": label, "caption_kind": kind}
        out.append(Sample.from_pil(f"synth-{split}-{i:0{width}d}", img, caption, meta, cfg.ext))
    return out


def generate(cfg: SynthConfig | None = None) -> SynthCorpus:
    """Generate the corpus. ``meta["label"]`` is the true class of every image."""
    cfg = cfg or SynthConfig()
    return SynthCorpus(
        train=_make_split(cfg, "train", cfg.n_train),
        test=_make_split(cfg, "test", cfg.n_test),
        classnames=list(CLASSNAMES[: cfg.n_classes]),
        config=cfg,
        probe=_make_split(cfg, "probe", cfg.n_probe),
    )
