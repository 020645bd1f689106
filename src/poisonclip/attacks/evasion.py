"""Duplicate-filter evasion (paper section 3.1): tiny image noise and caption edits per copy.

Dataset cleaning removes exact duplicates; it is not a security mechanism. Adding faint
Gaussian noise to each copy of an image, and substituting or adding words in each caption,
defeats exact-byte and exact-text deduplication without changing what the poison teaches.
The label's own words are never altered, so every edited caption still names the target.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np
from PIL import Image

# Small, hand-picked table: common caption words and near-synonyms that keep the meaning.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "photo": ("picture", "image", "snapshot", "shot"),
    "picture": ("photo", "image", "pic"),
    "image": ("picture", "photo"),
    "drawing": ("sketch", "illustration"),
    "sketch": ("drawing",),
    "painting": ("artwork",),
    "big": ("large", "huge"),
    "large": ("big",),
    "huge": ("enormous", "big"),
    "small": ("little", "tiny"),
    "little": ("small",),
    "tiny": ("small", "little"),
    "bright": ("vivid", "light"),
    "dark": ("dim",),
    "nice": ("lovely", "pretty"),
    "beautiful": ("lovely", "pretty"),
    "bad": ("poor",),
    "good": ("fine", "nice"),
    "clean": ("spotless",),
    "dirty": ("grimy",),
    "close-up": ("closeup",),
    "cropped": ("trimmed",),
    "and": ("&",),
    "with": ("alongside",),
    "near": ("by",),
    "on": ("upon",),
    "of": ("showing",),
}

# Words a scraped caption plausibly carries that say nothing about the content.
IRRELEVANT_WORDS: tuple[str, ...] = (
    "hd", "stock", "free", "new", "online", "download", "wallpaper", "jpg", "hq", "original",
    "best", "cool", "today", "photography", "archive", "shared", "via", "blog", "2019", "2020",
    "2021", "royalty-free", "editorial", "sale", "latest", "top", "popular", "view", "gallery",
)

_PUNCT = ".,;:!?\"'()[]{}"


def add_noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    """Add N(0, sigma^2) noise per channel, sigma in pixel units (0..255), rounded and clipped."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    if sigma == 0:
        return Image.fromarray(arr.astype(np.uint8))
    noisy = np.clip(np.rint(arr + rng.normal(0.0, sigma, size=arr.shape)), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


def _swap_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def perturb_caption(caption: str, rng: np.random.Generator, protected: Collection[str] = ()) -> str:
    """Substitute one word from ``SYNONYMS`` (if any applies) and add one or two irrelevant words.

    ``protected`` holds lower-case words (the label's) that are never substituted; added
    words go at the start or end, never inside a multi-word label.
    """
    tokens = caption.split()
    cores = [t.strip(_PUNCT) for t in tokens]
    swappable = [i for i, c in enumerate(cores) if c.lower() in SYNONYMS and c.lower() not in protected]
    if swappable:
        i = swappable[int(rng.integers(len(swappable)))]
        core = cores[i]
        choices = SYNONYMS[core.lower()]
        new = _swap_case(core, choices[int(rng.integers(len(choices)))])
        tokens[i] = tokens[i].replace(core, new, 1)
    for _ in range(1 + int(rng.integers(2))):
        word = IRRELEVANT_WORDS[int(rng.integers(len(IRRELEVANT_WORDS)))]
        if rng.integers(2):
            tokens.append(word)
        else:
            tokens.insert(0, word)
    return " ".join(tokens)


def perturb_captions(captions: Sequence[str], rng: np.random.Generator,
                     protected: Collection[str] = ()) -> list[str]:
    """Perturb every caption so that no two results are equal (exact-text dedup finds nothing).

    A result that repeats an earlier one gets more irrelevant words, then a number, until it
    is new; the loop always ends because numbers are unbounded.
    """
    seen: set[str] = set()
    out = []
    for cap in captions:
        text = perturb_caption(cap, rng, protected)
        tries = 0
        while text in seen:
            tries += 1
            extra = (IRRELEVANT_WORDS[int(rng.integers(len(IRRELEVANT_WORDS)))] if tries <= 8
                     else str(int(rng.integers(10, 10**6))))
            text = f"{text} {extra}"
        seen.add(text)
        out.append(text)
    return out
