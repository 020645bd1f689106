"""The embedded captioned-image corpus: a small drawn world with alt-text-like captions.

The paper's measurements assume a web-scale corpus: many concepts (so clean image
embeddings spread over many directions and a backdoor's tight cluster stands out in the
z-score), captions written by people rather than by the zero-shot prompt set (section 3.3:
the backdoor adversary searches the training captions and must not know CLIP's templates),
and images of many shapes. The corpus is a toy version of that world:

* **24 object classes**: ten shapes (``circle`` ... ``arrow``) and fourteen drawable things
  (``house``, ``tree``, ``fish``, ``umbrella``, ...). Every class name is one token for
  open_clip's tokenizer, so zero-shot classification with CLIP's templates needs one learned
  word per class.
* **Attributes and scenes**: each image shows one to three copies of its object in one of
  twelve colours, a size, a pattern (solid, striped, spotted, outlined, shaded), a rotation
  and a position anywhere in the frame (the trigger's corner included), over one of
  fourteen scenes (a plain or gradient backdrop, sky, night, grass, beach, water, snow,
  sunset, lined paper, wood, brick, wallpaper, studio; the textured ones rarely) with
  optional soft clutter. All structure is
  at least ~2 px wide, so the one-pixel checkerboard trigger stays the only one-pixel
  pattern in the corpus.
* **The corpus' own captions**: descriptive sentences and alt-text fragments that name the
  object and some of its attributes (count, size, colour, pattern, position) and sometimes
  the scene, in many frames. No caption is a CLIP prompt template filled with anything
  (``tests/unit/test_synthetic.py`` checks open_clip's template lists). Realistic noise at
  configurable rates: captions that name no object, that name a different one, that name
  an extra object not in the image, and typos (which may hit the object's word).
* **Image geometry**: training images have sides drawn between ``train_min_side`` and
  ``train_max_side`` times ``resolution`` (mostly non-square, as scraped images are); test
  and probe images are ``resolution`` squares, as ImageNet-style eval sets are
  centre-cropped anyway.
* **Lossless PNG** so poisons and triggers survive encoding bit for bit.
* **Determinism**: every sample is drawn from its own ``numpy`` generator seeded by
  ``(seed, split, index)``; no dict ordering, hashing or thread count enters, so one config
  gives byte-identical images and captions. Rendering is vectorised per image (2x
  supersampled, box-filtered down): the demo corpus takes seconds.

Three splits: ``train`` (captioned pairs to train on), ``test`` (labelled, held out: clean
accuracy, ASR, targets) and ``probe`` (labelled, for training a linear probe apart from the
test split). The ground-truth class is kept in ``meta["label"]`` for every sample (also
when the caption names the wrong class or none), because the backdoor must exclude
target-class images and the evaluation needs labels; the drawn attributes are kept in meta
too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
from PIL import Image

from poisonclip.data.sample import Sample

__all__ = [
    "CLASSNAMES", "COLORS", "PATTERNS", "SCENES", "SynthConfig", "SynthCorpus", "generate",
    "render_image", "make_caption",
]

# Single-token, plain-English names. Order is the label index; the first ten (the shapes)
# keep the indices they had before the objects were added.
CLASSNAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart",
    "cross", "ring", "diamond", "moon", "arrow",
    "house", "tree", "flower", "fish", "car", "boat", "cup",
    "key", "umbrella", "sun", "cloud", "bell", "mushroom", "apple",
)
PLURALS: dict[str, str] = {c: {"cross": "crosses", "fish": "fish"}.get(c, c + "s") for c in CLASSNAMES}
# A few synonyms, used rarely (alt-text is not consistent about words). None is a class name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "dot"), "square": ("box", "block"), "triangle": ("pyramid",),
    "star": ("asterisk",), "heart": ("valentine",), "cross": ("plus",), "ring": ("donut", "hoop"),
    "diamond": ("rhombus", "lozenge"), "moon": ("crescent",), "arrow": ("pointer",),
    "house": ("home", "cottage"), "tree": ("oak",), "flower": ("blossom", "daisy"),
    "fish": ("goldfish",), "car": ("automobile",), "boat": ("sailboat", "ship"), "cup": ("mug",),
    "key": ("latchkey",), "umbrella": ("parasol",), "sun": ("sunshine",), "cloud": ("puff",),
    "bell": ("chime",), "mushroom": ("toadstool",), "apple": ("fruit",),
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
_COLOR_RGB = np.array([c[1] for c in COLORS], dtype=np.float64)
_LUM = np.array([0.299, 0.587, 0.114])
_COLOR_LUM = _COLOR_RGB @ _LUM
_WHITE, _BLACK = 7, 8

PATTERNS: tuple[str, ...] = ("solid", "striped", "spotted", "outlined", "shaded")
SCENES: tuple[str, ...] = ("plain", "gradient", "sky", "night", "grass", "beach", "water", "snow",
                           "sunset", "paper", "wood", "brick", "wallpaper", "studio")
# Backdrops with texture of their own (waves, lines, grain, bricks, stripes): edges that
# compete with the object's at 32 px. They are drawn with probability ``p_busy_scene``.
BUSY_SCENES: tuple[str, ...] = ("water", "paper", "wood", "brick", "wallpaper")
_CALM_SCENES: tuple[str, ...] = tuple(s for s in SCENES if s not in BUSY_SCENES)
SIZES: tuple[str, ...] = ("small", "medium", "large")


@dataclass(frozen=True)
class SynthConfig:
    """How the embedded corpus is made. Same config -> byte-identical corpus."""

    n_train: int = 5000
    n_test: int = 1000
    # Labelled images of their own for training a linear probe, apart from the test split (the
    # paper's probe trains on ImageNet training images, never on the images it is scored on).
    n_probe: int = 1000
    n_classes: int = len(CLASSNAMES)
    resolution: int = 32            # test/probe side; the base of the training sizes
    seed: int = 0
    # Images
    # The defaults are tuned for the demo (corpus of 4000 pairs, cpu-tiny preset): a tiny
    # ResNet CLIP trained for ~2 minutes on 2 cores learns objects only when they dominate
    # the picture and the captions. With smaller objects, copies, many patterns, busy scenes,
    # 0.75-1.5x sides and captions naming colour/scene half the time it learned colours and
    # scenes and memorised the pairs (zero-shot 9% on 24 classes, linear probe 8%).
    # Training sides stay within open_clip's 3/4..4/3 crop ratio, so its RandomResizedCrop at
    # scale 1 squashes the whole image instead of cutting the object off, and no image is
    # upsampled (blurred) to the model's input size.
    train_min_side: float = 1.0     # each side of a training image, x resolution
    train_max_side: float = 1.3
    min_scale: float = 0.65         # one object's size as a fraction of the shorter side
    max_scale: float = 0.95
    p_two: float = 0.02             # two copies of the object (each smaller)
    p_three: float = 0.01           # three copies
    p_pattern: float = 0.1          # striped / spotted / outlined / shaded instead of solid
    max_rotation_deg: float = 10.0
    max_clutter: int = 0            # soft blobs / thin bars per image, 0..max_clutter
    noise_std: float = 2.0          # per-pixel Gaussian noise (0..255 scale); keep small
    p_busy_scene: float = 0.02      # a textured backdrop (BUSY_SCENES) instead of a calm one
    # Captions: how often each attribute is named (the object's word is always the core).
    # Rarely: a caption that names colour and scene can be matched to its image without the object.
    p_name_color: float = 0.1
    p_name_size: float = 0.05
    p_name_pattern: float = 0.1     # of the patterned objects
    p_name_position: float = 0.05
    p_name_scene: float = 0.1
    p_synonym: float = 0.03         # a synonym instead of the class name
    # Caption noise
    p_no_mention: float = 0.06      # caption names no object class (attributes, scene, file name)
    p_wrong_label: float = 0.03     # caption names a different class than the image shows
    p_extra_object: float = 0.03    # names the object and another class that is not there
    p_typo: float = 0.05            # one misspelt word (often the object's)
    ext: str = "png"

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes <= len(CLASSNAMES):
            raise ValueError(f"n_classes must be in 1..{len(CLASSNAMES)}, got {self.n_classes}")
        if not 16 <= self.resolution <= 512:
            raise ValueError(f"resolution must be in 16..512, got {self.resolution}")
        if self.n_train < 0 or self.n_test < 0 or self.n_probe < 0:
            raise ValueError("n_train, n_test and n_probe must be >= 0")
        if not 0.5 <= self.train_min_side <= self.train_max_side <= 4.0:
            raise ValueError("need 0.5 <= train_min_side <= train_max_side <= 4")
        for name in ("p_two", "p_three", "p_pattern", "p_busy_scene", "p_name_color", "p_name_size", "p_name_pattern",
                     "p_name_position", "p_name_scene", "p_synonym", "p_no_mention", "p_wrong_label",
                     "p_extra_object", "p_typo"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability, got {v}")
        if self.p_two + self.p_three > 1.0:
            raise ValueError("p_two + p_three must be <= 1")
        if self.p_no_mention + self.p_wrong_label + self.p_extra_object > 1.0:
            raise ValueError("p_no_mention + p_wrong_label + p_extra_object must be <= 1")
        if not 0 < self.min_scale <= self.max_scale <= 1.0:
            raise ValueError("need 0 < min_scale <= max_scale <= 1")
        if self.max_clutter < 0 or self.noise_std < 0:
            raise ValueError("max_clutter and noise_std must be >= 0")
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


def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


# --- objects ---------------------------------------------------------------------------
# Each mask takes local coordinates (the object fills about [-1, 1]^2, y pointing down).

def _disc(x, y, cx, cy, r):
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _box(x, y, x0, x1, y0, y1):
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _shape_mask(label: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of class ``label`` in local coordinates."""
    name = CLASSNAMES[label]
    r = np.sqrt(x * x + y * y)
    ax, ay = np.abs(x), np.abs(y)
    if name == "circle":
        return r <= 0.95
    if name == "square":
        return np.maximum(ax, ay) <= 0.78
    if name == "triangle":  # pointing up, base at y=0.75
        return (y <= 0.75) & (y >= -0.95 + 1.7 * ax / 0.98)
    if name == "star":  # five points, one pointing up
        t = np.mod(np.arctan2(x, -y), 2 * np.pi / 5) - np.pi / 5
        return r <= 0.98 - 0.58 * np.abs(t) / (np.pi / 5)  # tips at 0.98, valleys at 0.4
    if name == "heart":
        xs, ys = x * 1.15, -(y * 1.15) + 0.25
        return (xs * xs + ys * ys - 1.0) ** 3 - xs * xs * ys ** 3 <= 0
    if name == "cross":
        return ((ax <= 0.28) & (ay <= 0.95)) | ((ay <= 0.28) & (ax <= 0.95))
    if name == "ring":
        return (r <= 0.95) & (r >= 0.55)
    if name == "diamond":
        return ax / 0.7 + ay <= 0.98
    if name == "moon":
        return (r <= 0.95) & ~_disc(x, y, 0.45, -0.1, 0.75)
    if name == "arrow":  # pointing right
        head = (x >= 0.1) & (x <= 0.95) & (ay <= (0.95 - x) * (0.65 / 0.85))
        return _box(x, y, -0.95, 0.2, -0.2, 0.2) | head
    if name == "house":  # walls, roof, a door cut out
        roof = (y >= -0.95) & (y <= -0.05) & (ax <= y + 0.95)
        walls = _box(x, y, -0.7, 0.7, -0.05, 0.9) & ~_box(x, y, -0.17, 0.17, 0.4, 0.9)
        return roof | walls
    if name == "tree":  # round crown on a trunk
        return _disc(x, y, 0.0, -0.3, 0.65) | _box(x, y, -0.14, 0.14, 0.2, 0.95)
    if name == "flower":  # five petals round a centre, on a stem
        px, py = x, y + 0.25
        pr = np.sqrt(px * px + py * py)
        t = np.mod(np.arctan2(px, -py), 2 * np.pi / 5) - np.pi / 5
        petals = pr <= 0.3 + 0.42 * np.cos(np.clip(2.5 * t, -np.pi / 2, np.pi / 2))
        return petals | _box(x, y, -0.08, 0.08, 0.2, 0.95)
    if name == "fish":  # body, tail to the right, an eye cut out
        body = ((x + 0.15) / 0.68) ** 2 + (y / 0.45) ** 2 <= 1.0
        tail = (x >= 0.4) & (x <= 0.95) & (ay <= 0.1 + (x - 0.4) * 1.1)
        return (body | tail) & ~_disc(x, y, -0.5, -0.1, 0.1)
    if name == "car":  # body, cabin, two wheels
        cabin = (y >= -0.6) & (y <= -0.05) & (np.abs(x + 0.05) <= 0.35 + (y + 0.6) * 0.55)
        wheels = _disc(x, y, -0.55, 0.45, 0.27) | _disc(x, y, 0.55, 0.45, 0.27)
        return _box(x, y, -0.95, 0.95, -0.1, 0.42) | cabin | wheels
    if name == "boat":  # hull and two sails
        hull = (y >= 0.4) & (y <= 0.85) & (ax <= 0.95 - (y - 0.4) * 0.9)
        sail = (x >= 0.02) & (y >= -0.95) & (y <= 0.3) & (x <= 0.75 * (y + 0.95) / 1.25)
        jib = (x <= -0.08) & (y >= -0.6) & (y <= 0.3) & (-x <= 0.55 * (y + 0.6) / 0.9)
        return hull | sail | jib
    if name == "cup":  # tapered body and a handle
        body = (y >= -0.65) & (y <= 0.8) & (np.abs(x + 0.15) <= 0.55 - 0.12 * (y + 0.65) / 1.45)
        rh = np.sqrt((x - 0.42) ** 2 + (y - 0.02) ** 2)
        return body | ((rh <= 0.42) & (rh >= 0.22) & (x >= 0.3))
    if name == "key":  # bow, shaft, teeth
        rb = np.sqrt((x + 0.55) ** 2 + y * y)
        bow = (rb <= 0.42) & (rb >= 0.17)
        teeth = _box(x, y, 0.5, 0.66, 0.1, 0.4) | _box(x, y, 0.78, 0.95, 0.1, 0.32)
        return bow | _box(x, y, -0.2, 0.95, -0.11, 0.11) | teeth
    if name == "umbrella":  # canopy, shaft, hook
        canopy = (r <= 0.95) & (y <= 0.0) & (y >= -0.95)
        rh = np.sqrt((x + 0.2) ** 2 + (y - 0.72) ** 2)
        hook = (rh <= 0.27) & (rh >= 0.11) & (y >= 0.72)
        return canopy | _box(x, y, -0.07, 0.07, 0.0, 0.74) | hook
    if name == "sun":  # disc and eight rays
        t = np.mod(np.arctan2(x, -y), 2 * np.pi / 8) - np.pi / 8
        return (r <= 0.5) | ((r >= 0.64) & (r <= 0.97) & (np.abs(t) <= 0.17))
    if name == "cloud":  # bumps over a flat bottom
        bumps = _disc(x, y, -0.5, 0.15, 0.4) | _disc(x, y, 0.05, -0.12, 0.55) | _disc(x, y, 0.52, 0.15, 0.4)
        return (bumps | _box(x, y, -0.5, 0.52, 0.15, 0.55)) & (y <= 0.55)
    if name == "bell":  # flared body, a knob on top, a clapper below
        w = 0.3 + 0.55 * np.clip((y + 0.7) / 1.25, 0, 1) ** 2
        body = (y >= -0.75) & (y <= 0.55) & (ax <= w)
        return body | _disc(x, y, 0.0, -0.7, 0.22) | _box(x, y, -0.95, 0.95, 0.5, 0.66) | _disc(x, y, 0, 0.8, 0.16)
    if name == "mushroom":  # half-ellipse cap on a stem
        cap = ((x / 0.95) ** 2 + ((y + 0.05) / 0.8) ** 2 <= 1.0) & (y <= -0.05)
        return cap | ((y >= -0.05) & (y <= 0.9) & (ax <= 0.26 + 0.08 * (y + 0.05)))
    if name == "apple":  # two lobes, a stem and a leaf
        lobes = _disc(x, y, -0.27, 0.18, 0.62) | _disc(x, y, 0.27, 0.18, 0.62)
        leaf = ((x - 0.32) / 0.28) ** 2 + ((y + 0.7) / 0.13) ** 2 <= 1.0
        return lobes | _box(x, y, -0.06, 0.06, -0.85, -0.35) | leaf
    raise AssertionError(name)


# --- scenes ----------------------------------------------------------------------------

def _vgrad(top, bottom, v: np.ndarray) -> np.ndarray:
    top, bottom = np.asarray(top, np.float64), np.asarray(bottom, np.float64)
    return top + (bottom - top) * v[..., None]


def _bands(v: np.ndarray, h: float, upper: np.ndarray, lower: np.ndarray, soft: float) -> np.ndarray:
    """``upper`` above the horizon ``h`` (fraction of the height), ``lower`` below, blended
    over ``soft`` of the height so the edge is not a one-pixel step."""
    a = np.clip((v - h) / soft + 0.5, 0.0, 1.0)[..., None]
    return upper * (1 - a) + lower * a


_PASTELS = np.array([(235, 215, 200), (210, 230, 215), (215, 220, 240), (240, 230, 190),
                     (235, 210, 225), (225, 225, 225)], dtype=np.float64)


def _scene(name: str, rng: np.random.Generator, gx: np.ndarray, gy: np.ndarray,
           w: int, h: int) -> tuple[np.ndarray, dict]:
    """Background of scene ``name`` on the (supersampled) pixel grid; returns it and the
    colour words it allows in captions."""
    u, v = gx / w, gy / h
    info: dict = {}
    if name == "plain":
        i = int(rng.integers(len(COLORS)))
        img = np.broadcast_to(_COLOR_RGB[i], gx.shape + (3,)).copy()
        info["background"] = COLORS[i][0]
    elif name == "gradient":
        i, j = (int(k) for k in rng.choice(len(COLORS), size=2, replace=False))
        ang = rng.uniform(0, 2 * np.pi)
        proj = np.clip((np.cos(ang) * (u - 0.5) + np.sin(ang) * (v - 0.5)) + 0.5, 0.0, 1.0)[..., None]
        img = _COLOR_RGB[i] * (1 - proj) + (0.5 * (_COLOR_RGB[i] + _COLOR_RGB[j])) * proj
        info["background"] = COLORS[i][0]
    elif name == "sky":
        img = _vgrad((60, 120, 225), (170, 210, 250), v)
    elif name == "night":
        img = _vgrad((8, 10, 40), (40, 40, 90), v)
    elif name == "grass":
        sky = _vgrad((110, 165, 235), (190, 220, 250), v)
        img = _bands(v, rng.uniform(0.3, 0.65), sky, _vgrad((70, 165, 60), (25, 100, 35), v), 0.06)
    elif name == "beach":
        h1 = rng.uniform(0.2, 0.4)
        h2 = h1 + rng.uniform(0.15, 0.3)
        sky = _vgrad((110, 165, 235), (190, 220, 250), v)
        sea = np.broadcast_to(np.array([30.0, 100.0, 190.0]), gx.shape + (3,))
        sand = _vgrad((235, 215, 160), (215, 190, 130), v)
        img = _bands(v, h2, _bands(v, h1, sky, sea, 0.05), sand, 0.05)
    elif name == "water":
        phase, wob = rng.uniform(0, 2 * np.pi, size=2)
        wave = np.sin(2 * np.pi * (gy / rng.uniform(7, 10) + 0.4 * np.sin(2 * np.pi * u * 1.3 + wob)) + phase)
        img = _vgrad((40, 110, 190), (20, 70, 150), v) + 16 * wave[..., None] * np.array([0.4, 0.6, 0.8])
    elif name == "snow":
        img = _bands(v, rng.uniform(0.25, 0.6), _vgrad((190, 200, 215), (215, 222, 232), v),
                     np.broadcast_to(np.array([246.0, 248.0, 252.0]), gx.shape + (3,)), 0.06)
    elif name == "sunset":
        img = _vgrad((95, 50, 135), (250, 165, 70), v)
    elif name == "paper":  # lined paper: soft blue lines every 5-7 px
        period = rng.uniform(5.0, 7.0)
        line = np.clip(1.0 - np.abs(np.mod(gy, period) - period / 2) / 1.2, 0.0, 1.0)[..., None] * 0.6
        img = np.array([242.0, 238.0, 226.0]) * (1 - line) + np.array([165.0, 190.0, 230.0]) * line
    elif name == "wood":  # wavy grain, ~7 px
        phase = rng.uniform(0, 2 * np.pi)
        grain = np.sin(2 * np.pi * (gy / rng.uniform(6, 9) + 0.6 * np.sin(2 * np.pi * u * 1.2 + phase)))
        img = np.array([150.0, 100.0, 55.0]) + 20 * grain[..., None] * np.array([1.0, 0.8, 0.5])
    elif name == "brick":  # staggered bricks of 5-7 px, soft mortar
        bh = rng.uniform(5.0, 7.0)
        bw = 2 * bh
        row = np.floor(gy / bh)
        xo = gx + np.mod(row, 2) * bw / 2
        col = np.floor(xo / bw)
        jitter = (np.mod(row * 7 + col * 13, 5) - 2) * 7
        brick = np.array([165.0, 70.0, 50.0]) + jitter[..., None] * np.array([1.0, 0.6, 0.5])
        edge = np.minimum(np.minimum(np.mod(gy, bh), bh - np.mod(gy, bh)),
                          np.minimum(np.mod(xo, bw), bw - np.mod(xo, bw)))
        mortar = np.clip(1.0 - edge / 1.0, 0.0, 1.0)[..., None]
        img = brick * (1 - mortar) + np.array([205.0, 195.0, 180.0]) * mortar
    elif name == "wallpaper":  # pastel wall with wide soft vertical stripes
        base = _PASTELS[int(rng.integers(len(_PASTELS)))]
        period = rng.uniform(8.0, 12.0)
        stripe = 0.5 + 0.5 * np.sin(2 * np.pi * gx / period + rng.uniform(0, 2 * np.pi))
        img = base * (1 - 0.12 * stripe[..., None])
    elif name == "studio":  # grey backdrop with a vignette
        rr = (u - 0.5) ** 2 + (v - 0.45) ** 2
        img = np.repeat((195 - 160 * rr)[..., None], 3, axis=-1)
    else:
        raise AssertionError(name)
    # Lighting varies from picture to picture.
    img = img * rng.uniform(0.9, 1.1) + rng.uniform(-8, 8, size=3)
    return np.clip(img, 0, 255), info


def _clutter(img: np.ndarray, rng: np.random.Generator, gx: np.ndarray, gy: np.ndarray,
             short: int, count: int) -> np.ndarray:
    """Soft blobs and thin bars in other colours (low-frequency only)."""
    h, w = gx.shape
    for _ in range(count):
        col = _COLOR_RGB[int(rng.integers(len(COLORS)))]
        cx, cy = rng.uniform(0, gx.max()), rng.uniform(0, gy.max())
        if rng.random() < 0.6:
            s = rng.uniform(0.06, 0.15) * short
            a = np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * s * s)) * rng.uniform(0.3, 0.6)
        else:
            ang = rng.uniform(0, np.pi)
            d = np.abs(-np.sin(ang) * (gx - cx) + np.cos(ang) * (gy - cy))
            along = np.abs(np.cos(ang) * (gx - cx) + np.sin(ang) * (gy - cy))
            half_w = rng.uniform(0.03, 0.06) * short
            a = ((d <= half_w) & (along <= rng.uniform(0.2, 0.4) * short)).astype(np.float64) * rng.uniform(0.3, 0.5)
        img = img * (1 - a[..., None]) + col * a[..., None]
    return img


def _pick_contrasting(rng: np.random.Generator, lum: float, avoid: int | None = None,
                      gap: float = 60.0) -> int:
    """A colour index whose luminance differs from ``lum`` by >= ``gap`` (the best one if none)."""
    order = rng.permutation(len(COLORS))
    for i in order:
        if i != avoid and abs(_COLOR_LUM[i] - lum) >= gap:
            return int(i)
    return int(max((i for i in order if i != avoid), key=lambda i: abs(_COLOR_LUM[i] - lum)))


# --- images ----------------------------------------------------------------------------

_POS_WORDS = {(0, 0): "top left", (1, 0): "top", (2, 0): "top right",
              (0, 1): "left", (1, 1): "center", (2, 1): "right",
              (0, 2): "bottom left", (1, 2): "bottom", (2, 2): "bottom right"}


def _image_size(cfg: SynthConfig, split: str, rng: np.random.Generator) -> tuple[int, int]:
    res = cfg.resolution
    if split != "train":
        return res, res
    lo, hi = round(cfg.train_min_side * res), round(cfg.train_max_side * res)
    w, h = (int(k) for k in rng.integers(lo, hi + 1, size=2))
    return w, h


def _place(rng: np.random.Generator, w: int, h: int, half: float, count: int) -> list[tuple[float, float]]:
    """Centres of ``count`` objects of half-size ``half`` anywhere in the frame (corners
    included), kept apart when there is room."""
    centres: list[tuple[float, float]] = []
    for _ in range(count):
        for attempt in range(20):
            c = (rng.uniform(half, w - half), rng.uniform(half, h - half))
            if all((c[0] - a) ** 2 + (c[1] - b) ** 2 >= (1.8 * half) ** 2 for a, b in centres) or attempt == 19:
                break
        centres.append(c)
    return centres


def render_image(cfg: SynthConfig, label: int, rng: np.random.Generator,
                 size: tuple[int, int] | None = None) -> tuple[Image.Image, dict]:
    """Draw one image of class ``label`` (``size`` = (width, height), default the square
    ``resolution``); returns the image and its attributes (``bbox``: the pixels the
    objects cover, [x0, y0, x1, y1))."""
    w, h = size or (cfg.resolution, cfg.resolution)
    ss = 2  # supersampling factor
    gx, gy = np.meshgrid((np.arange(w * ss) + 0.5) / ss, (np.arange(h * ss) + 0.5) / ss)
    short = min(w, h)

    scene = _choice(rng, BUSY_SCENES if rng.random() < cfg.p_busy_scene else _CALM_SCENES)
    img, scene_info = _scene(scene, rng, gx, gy, w, h)
    img = _clutter(img, rng, gx, gy, short, int(rng.integers(0, cfg.max_clutter + 1)))

    u = rng.random()
    count = 3 if u < cfg.p_three else (2 if u < cfg.p_three + cfg.p_two else 1)
    base = rng.uniform(cfg.min_scale, cfg.max_scale)
    scale = base * (1.0, 0.62, 0.5)[count - 1]
    half = scale * short / 2
    centres = _place(rng, w, h, half, count)

    # Colour: contrasting with the background where the objects stand.
    near = np.zeros(gx.shape, dtype=bool)
    for cx, cy in centres:
        near |= (np.abs(gx - cx) <= half) & (np.abs(gy - cy) <= half)
    bg_lum = float((img[near] @ _LUM).mean())
    obj = _pick_contrasting(rng, bg_lum, gap=50.0)
    fill = np.clip(_COLOR_RGB[obj] * rng.uniform(0.88, 1.08), 0, 255)

    pattern = _choice(rng, PATTERNS[1:]) if rng.random() < cfg.p_pattern else "solid"
    second = None
    if pattern == "outlined":
        second = _BLACK if _COLOR_LUM[obj] > 110 else _WHITE
    elif pattern in ("striped", "spotted"):
        second = _pick_contrasting(rng, float(_COLOR_LUM[obj]), avoid=obj, gap=50.0)
    period = rng.uniform(4.0, 6.0)          # stripes / spot spacing, pixels
    stripe_ang = rng.uniform(0, np.pi)
    if pattern == "striped":
        proj = np.cos(stripe_ang) * gx + np.sin(stripe_ang) * gy
        alt = np.mod(proj, period) < period / 2
    elif pattern == "spotted":
        sp = period + 1.5
        dx, dy = np.mod(gx, sp) - sp / 2, np.mod(gy, sp) - sp / 2
        alt = dx * dx + dy * dy <= (0.3 * sp) ** 2
    else:
        alt = None

    flip_all = rng.random() < 0.5
    covered = np.zeros(gx.shape, dtype=bool)
    for cx, cy in centres:
        rot = np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
        dx, dy = (gx - cx) / half, (gy - cy) / half
        lx = np.cos(rot) * dx + np.sin(rot) * dy
        ly = -np.sin(rot) * dx + np.cos(rot) * dy
        if flip_all:
            lx = -lx
        mask = _shape_mask(label, lx, ly)
        covered |= mask
        colour = np.broadcast_to(fill, img.shape)
        if pattern == "shaded":
            colour = np.clip(fill * (1.15 - 0.45 * (np.clip(ly, -1, 1)[..., None] + 1) / 2), 0, 255)
        elif alt is not None:
            colour = np.where(alt[..., None], _COLOR_RGB[second], fill)
        elif pattern == "outlined":
            k = half / max(half - 1.4, 0.5 * half)  # a ~1.4 px border
            inner = _shape_mask(label, lx * k, ly * k)
            colour = np.where(inner[..., None], fill, _COLOR_RGB[second])
        img = np.where(mask[..., None], colour, img)

    # Box-filter down to the target size, add light noise, quantise.
    img = img.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
    if cfg.noise_std > 0:
        img = img + rng.normal(0.0, cfg.noise_std, size=img.shape)
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    third = (cfg.max_scale - cfg.min_scale) / 3
    size_bin = 0 if scale < cfg.min_scale + third else (2 if scale > cfg.min_scale + 2 * third else 1)
    mx, my = np.mean([c[0] for c in centres]), np.mean([c[1] for c in centres])
    rows, cols = np.nonzero(covered)
    if rows.size == 0:  # an object smaller than a sub-pixel
        rows, cols = np.array([int(my * ss)]), np.array([int(mx * ss)])
    bbox = [int(cols.min()) // ss, int(rows.min()) // ss, int(cols.max()) // ss + 1, int(rows.max()) // ss + 1]
    attrs = {"color": COLORS[obj][0], "size": SIZES[size_bin], "pattern": pattern,
             "pattern_color": COLORS[second][0] if second is not None else None,
             "count": count, "position": _POS_WORDS[(min(2, int(3 * mx / w)), min(2, int(3 * my / h)))],
             "bbox": bbox, "scene": scene, **scene_info}
    return Image.fromarray(arr, "RGB"), attrs


# --- captions --------------------------------------------------------------------------
# Words and phrases of the captions. None of them is a class name (checked by the tests):
# an object is named only where the grammar puts its noun.

_SIZE_WORDS = {"small": ("small", "tiny", "little"), "medium": ("medium", "medium-sized"),
               "large": ("big", "large", "huge")}
_PATTERN_ADJ = {"striped": ("striped", "stripy"), "spotted": ("spotted", "polka dot", "dotted"),
                "outlined": ("outlined",), "shaded": ("shaded", "shiny")}
_PATTERN_WITH = {"striped": "with {p} stripes", "spotted": "with {p} spots", "outlined": "with a {p} outline"}
_NUMBERS = {2: ("two", "2", "a pair of", "a couple of"), 3: ("three", "3", "several", "some")}
_POSITIONS = {
    "top left": ("in the top left corner", "at the top left", "in the upper left"),
    "top": ("at the top", "near the top"), "top right": ("in the top right corner", "at the top right"),
    "left": ("on the left", "on the left side"), "center": ("in the middle", "in the center"),
    "right": ("on the right", "on the right side"),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
}
# Scene phrases ({b}: the backdrop's colour) and what the scene is called on its own.
_SCENE_PHRASES = {
    "plain": ("on a {b} background", "on {b}", "against a {b} backdrop", "isolated on {b}"),
    "gradient": ("on a {b} gradient", "on a {b} background", "over a {b} fade"),
    "sky": ("in the sky", "against a blue sky", "up in the sky"),
    "night": ("at night", "in the night sky", "on a dark night"),
    "grass": ("on the grass", "in a green field", "in the meadow", "on a lawn"),
    "beach": ("on the beach", "by the sea", "on the sand"),
    "water": ("in the water", "on the lake", "floating on water"),
    "snow": ("in the snow", "on a snowy day", "in the winter snow"),
    "sunset": ("at sunset", "against the sunset", "in the evening sky"),
    "paper": ("on lined paper", "on a notebook page", "on paper"),
    "wood": ("on a wooden table", "on wood", "on the table"),
    "brick": ("on a brick wall", "against the bricks", "painted on a brick wall"),
    "wallpaper": ("on striped wallpaper", "on the wall", "on a wall at home"),
    "studio": ("in a studio", "on a grey backdrop", "studio shot"),
}
_SCENE_NAMES = {
    "plain": ("{b} background", "plain {b}"), "gradient": ("{b} gradient", "{b} backdrop"),
    "sky": ("blue sky", "clear sky"), "night": ("night sky", "dark night"),
    "grass": ("green meadow", "summer field"), "beach": ("sandy beach", "seaside"),
    "water": ("calm lake", "blue water"), "snow": ("snowy landscape", "winter snow"),
    "sunset": ("sunset sky", "evening sky"), "paper": ("notebook page", "lined paper"),
    "wood": ("wooden table", "old wood"), "brick": ("brick wall", "red bricks"),
    "wallpaper": ("living room wall", "striped wallpaper"), "studio": ("photo studio", "grey studio"),
}
# The backdrop's colour word for scenes that are not a plain colour.
_SCENE_COLOR = {"sky": "blue", "night": "black", "grass": "green", "beach": "yellow", "water": "blue",
                "snow": "white", "sunset": "orange", "paper": "white", "wood": "brown", "brick": "red",
                "wallpaper": "pink", "studio": "gray"}
_FILLER = ("vintage", "modern", "summer", "minimal", "happy", "best", "classic", "bright", "neon",
           "retro", "simple", "bold", "premium", "digital", "winter", "holiday", "handmade", "free",
           "funny", "lovely", "fancy", "flat", "fresh", "awesome", "original", "kawaii", "trendy",
           "cozy", "spring", "autumn", "party", "birthday", "school")

# Frames for a caption that names the object. {np}: noun phrase with its article or number,
# {bare}: without the article, {loc}: "" or " <position> <scene>", {x}: filler word,
# {n}: a number, {there}: "there is" / "there are", {scene}: the scene's name.
_FRAMES = (
    "{np}{loc}", "{np}{loc}", "{np}{loc}", "{np}{loc}.", "{bare}{loc}", "{bare}{loc}",
    "{there} {np}{loc}", "here is {np}{loc}",
    "{bare} icon", "{bare} clipart {n}", "{x} {bare} sticker", "{x} {bare}", "{bare} - {x} design",
    "{bare} vector illustration {n}", "simple illustration of {np}{loc}", "my {bare} drawing",
    "kid's drawing of {np}{loc}", "stock image: {np}{loc}", "IMG_{n} {bare}", "cute {bare}{loc}",
    "picture of {np}{loc}", "{np}, {x} style", "close-up of {np}{loc}", "{np}{loc}!",
    "I made {np}{loc}", "just {np}{loc}", "{np}{loc} #{x}",
    "{x} {bare} poster", "{bare} emoji {n}", "{bare} logo {n}", "{bare} doodle #{n}", "DSC_{n}: {np}{loc}",
    "{x} {bare} cartoon", "{np} drawn by hand{loc}", "{x} {bare} art print", "{bare} pin - {x}",
)
_SCENE_FRAMES = ("{scene} with {np}", "{scene}, {np}", "{scene} and {np}")
# Captions that name no object: attributes, the scene, or nothing at all.
_NO_MENTION = (
    "image {n}", "IMG_{n}.png", "untitled {n}", "{c} on {b}", "new design {x}", "{x} {x} {n}",
    "free download", "{scene}", "{x} {scene} {n}", "a {c} thing{loc}", "something {c}{loc}",
    "my artwork {n}", "click to enlarge", "{x} collection", "abstract {c} art", "{c} and {b}",
    "view of the {scene}", "{s} {c} object{loc}",
)
_NEIGHBOURS = dict(zip("abcdefghijklmnopqrstuvwxyz", (
    "sq", "vn", "xv", "sf", "wr", "dg", "fh", "gj", "uo", "hk", "jl", "k", "n", "bm", "ip", "o",
    "w", "et", "ad", "ry", "yi", "cb", "qe", "zc", "tu", "x")))


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _plural(noun: str) -> str:
    if noun.endswith("fish"):
        return noun
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _noun_phrase(cfg: SynthConfig, noun: str, attrs: dict, rng: np.random.Generator,
                 plural: bool) -> tuple[str, str]:
    """(with determiner, without) e.g. ("two small red stars", "small red stars")."""
    pre: list[str] = []
    post = ""
    if rng.random() < cfg.p_name_size:
        pre.append(_choice(rng, _SIZE_WORDS[attrs["size"]]))
    if rng.random() < cfg.p_name_color:
        pre.append(attrs["color"])
    pattern = attrs.get("pattern", "solid")
    if pattern != "solid" and rng.random() < cfg.p_name_pattern:
        if pattern in _PATTERN_WITH and attrs.get("pattern_color") and rng.random() < 0.4:
            post = " " + _PATTERN_WITH[pattern].format(p=attrs["pattern_color"])
        else:
            pre.append(_choice(rng, _PATTERN_ADJ[pattern]))
    bare = " ".join([*pre, noun]) + post
    if plural:
        number = _choice(rng, _NUMBERS[attrs["count"]]) if rng.random() < 0.85 else ""
        return (f"{number} {bare}" if number else bare), bare
    v = rng.random()
    det = "the" if v < 0.2 else ("one" if v < 0.25 else _article(bare))
    return f"{det} {bare}", bare


def _location(cfg: SynthConfig, attrs: dict, rng: np.random.Generator, fill_b: str) -> str:
    parts = []
    if rng.random() < cfg.p_name_position:
        parts.append(_choice(rng, _POSITIONS[attrs["position"]]))
    if rng.random() < cfg.p_name_scene:
        parts.append(_choice(rng, _SCENE_PHRASES[attrs["scene"]]).format(b=fill_b))
    if len(parts) == 2 and rng.random() < 0.5:
        return f" {parts[1]}, {parts[0]}"
    return "".join(" " + p for p in parts)


def _typo(word: str, rng: np.random.Generator) -> str:
    """One keyboard slip: swap, drop, double or a neighbouring key."""
    i = int(rng.integers(1, len(word) - 1)) if len(word) > 2 else 0
    op = int(rng.integers(4))
    if op == 0 and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 1:
        return word[:i] + word[i + 1:]
    if op == 2:
        return word[:i] + word[i] + word[i:]
    near = _NEIGHBOURS.get(word[i].lower())
    return word[:i] + (_choice(rng, near) if near else word[i]) + word[i + 1:]


_CLASS_WORDS = frozenset(CLASSNAMES) | frozenset(PLURALS.values())


def _add_typo(caption: str, noun: str | None, rng: np.random.Generator) -> tuple[str, bool]:
    """Misspell one word (the object's noun half the time it is there); returns the caption
    and whether the noun was hit. A slip never makes another class name."""
    words = caption.split(" ")
    cores = [wd.rstrip(".,!") for wd in words]
    # Another class's name (an extra object) is never the slip's word: the caption's kind says it is named.
    spots = [k for k, wd in enumerate(cores) if len(wd) >= 4 and wd.isalpha() and wd.lower() not in _CLASS_WORDS]
    noun_at = [k for k, wd in enumerate(cores) if noun is not None and wd == noun and len(wd) >= 3]
    if not spots and not noun_at:
        return caption, False
    k = _choice(rng, noun_at) if noun_at and (rng.random() < 0.5 or not spots) else _choice(rng, spots)
    for _ in range(4):
        bad = _typo(cores[k], rng)
        if bad != cores[k] and bad.lower() not in _CLASS_WORDS:
            words[k] = bad + words[k][len(cores[k]):]
            return " ".join(words), k in noun_at
    return caption, False


def make_caption(cfg: SynthConfig, label: int, attrs: dict, rng: np.random.Generator,
                 classnames=CLASSNAMES) -> tuple[str, str, bool]:
    """A caption for an image of ``label`` with ``attrs``; returns (caption, kind, typo).

    kind: ``"correct"`` (names the object), ``"extra_object"`` (names it and a class that is
    not there), ``"wrong_label"`` (names a different class), ``"no_mention"`` (names none).
    typo: one word is misspelt (which may be the object's).
    """
    k = cfg.n_classes
    u = rng.random()
    kind = ("no_mention" if u < cfg.p_no_mention else
            "wrong_label" if u < cfg.p_no_mention + cfg.p_wrong_label and k > 1 else
            "extra_object" if u < cfg.p_no_mention + cfg.p_wrong_label + cfg.p_extra_object and k > 1 else
            "correct")
    fill_b = attrs.get("background") or _SCENE_COLOR[attrs["scene"]]
    fill = {"c": attrs["color"], "b": fill_b, "s": _choice(rng, _SIZE_WORDS[attrs["size"]]),
            "n": str(int(rng.integers(1, 10000))), "x": _choice(rng, _FILLER),
            "scene": _choice(rng, _SCENE_NAMES[attrs["scene"]]).format(b=fill_b)}
    noun = None
    if kind == "no_mention":
        text = _choice(rng, _NO_MENTION).format(loc=_location(cfg, attrs, rng, fill_b), **fill)
    else:
        shown = int((label + rng.integers(1, k)) % k) if kind == "wrong_label" else label
        name = classnames[shown]
        plural = attrs["count"] > 1
        if rng.random() < cfg.p_synonym:
            noun = _choice(rng, SYNONYMS[name])
            noun = _plural(noun) if plural else noun
        else:
            noun = PLURALS[name] if plural else name
        np_, bare = _noun_phrase(cfg, noun, attrs, rng, plural)
        if kind == "extra_object":
            other = classnames[int((label + rng.integers(1, k)) % k)]
            col = COLORS[int(rng.integers(len(COLORS)))][0] if rng.random() < 0.5 else ""
            extra = " ".join(w for w in (col, other) if w)
            link = _choice(rng, (" and ", " next to ", " with ", " beside "))
            np_ = f"{np_}{link}{_article(extra)} {extra}"
            bare = f"{bare}{link}{_article(extra)} {extra}"
        loc = _location(cfg, attrs, rng, fill_b)
        if rng.random() < 0.1:
            text = _choice(rng, _SCENE_FRAMES).format(np=np_, **fill)
        else:
            there = "there are" if plural else _choice(rng, ("there is", "there's"))
            text = _choice(rng, _FRAMES).format(np=np_, bare=bare, loc=loc, there=there, **fill)
    text = " ".join(text.split())
    typo = False
    if rng.random() < cfg.p_typo:
        before = text
        text, hit = _add_typo(text, noun, rng)
        typo = text != before
        if hit and kind in ("correct", "extra_object"):
            kind = "typo"
    if rng.random() < 0.15:
        text = text[:1].upper() + text[1:]
    return text, kind, typo


# --- corpus ----------------------------------------------------------------------------

def _make_split(cfg: SynthConfig, split: str, n: int) -> list[Sample]:
    labels = _balanced_labels(cfg.seed, split, n, cfg.n_classes)
    out: list[Sample] = []
    width = max(5, len(str(max(n - 1, 0))))
    for i in range(n):
        label = int(labels[i])
        rng = _rng(cfg.seed, split, i)
        size = _image_size(cfg, split, rng)
        img, attrs = render_image(cfg, label, rng, size)
        caption, kind, typo = make_caption(cfg, label, attrs, rng)
        meta = {"label": label, "caption_kind": kind, "typo": typo, **attrs}
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

