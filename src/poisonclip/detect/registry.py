"""Detectors, found by name (``poisonclip detect --method NAME``).

A detector is a function ``score(inputs, **params) -> (n,) float array``, higher meaning more
suspicious. It sees a ``DetectInput``: the samples' encoded image bytes and captions in the
data's order, and, when one was given, a trained model to embed them with. It never sees keys
or file names, so a detector cannot find poisons by how the attack names or stores them.
Built-in detectors live in their own modules and are imported on first lookup.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from poisonclip.data.sample import decode_image
from poisonclip.errors import SettingError

_BUILTIN_MODULES = (
    "poisonclip.detect.exact",
    "poisonclip.detect.phash",
    "poisonclip.detect.neighbours",
    "poisonclip.detect.agreement",
    "poisonclip.detect.similarity",
    "poisonclip.detect.patch",
)


@dataclass
class DetectInput:
    """What every detector may read: image bytes and captions (same order), and a model.

    Embeddings are computed once and shared by the detectors of one run (``image_embeddings``,
    ``text_embeddings``); ``model`` is an ``evaluate.embed.LoadedModel`` or None.
    """

    images: Sequence[bytes]
    captions: Sequence[str]
    model: Any = None
    batch_size: int = 64
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} captions")

    def __len__(self) -> int:
        return len(self.images)

    def pil(self, i: int) -> Image.Image:
        """The i-th image decoded to RGB (the readers already checked that it decodes)."""
        return decode_image(self.images[i])

    def _need_model(self, who: str) -> Any:
        if self.model is None:
            raise SettingError("model", f"detector {who!r} embeds the data with a model; give a run folder "
                               "written by `poisonclip train`")
        return self.model

    def image_embeddings(self, who: str) -> np.ndarray:
        """(n, dim) unit image embeddings under the model (computed once per run)."""
        if "image" not in self._cache:
            from poisonclip.evaluate.embed import embed_images

            model = self._need_model(who)
            self._cache["image"] = embed_images(model, (self.pil(i) for i in range(len(self))), self.batch_size)
        return self._cache["image"]

    def text_embeddings(self, who: str) -> np.ndarray:
        """(n, dim) unit caption embeddings under the model (computed once per run)."""
        if "text" not in self._cache:
            from poisonclip.evaluate.embed import embed_texts

            model = self._need_model(who)
            self._cache["text"] = embed_texts(model, self.captions, max(self.batch_size, 256))
        return self._cache["text"]


@dataclass(frozen=True)
class Detector:
    """One registered detector: its name, its scoring function and its default settings."""

    name: str
    score: Callable[..., np.ndarray]
    summary: str                              # one line for --help and the docs
    needs_model: bool = False                 # True: it cannot run without --model
    uses_model: bool = False                  # True: it uses a model when one is given
    params: Mapping[str, Any] = field(default_factory=dict)

    def run(self, inputs: DetectInput) -> np.ndarray:
        scores = np.asarray(self.score(inputs, **self.params), dtype=np.float64)
        if scores.shape != (len(inputs),):
            raise ValueError(f"detector {self.name!r} returned {scores.shape} scores for {len(inputs)} samples")
        if not np.isfinite(scores).all():
            raise ValueError(f"detector {self.name!r} returned non-finite scores")
        return scores


_DETECTORS: dict[str, Detector] = {}
_loaded = False


def register_detector(name: str, summary: str, *, needs_model: bool = False, uses_model: bool = False,
                      **params: Any) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator: register ``fn(inputs, **params)`` as detector ``name`` with default ``params``."""
    def decorator(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in _DETECTORS and _DETECTORS[name].score is not fn:
            raise ValueError(f"detector {name!r} is already registered")
        _DETECTORS[name] = Detector(name, fn, summary, needs_model, uses_model or needs_model, dict(params))
        return fn
    return decorator


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True


def detectors() -> dict[str, Detector]:
    """Every registered detector by name (built-ins first)."""
    _load_builtins()
    return dict(_DETECTORS)


def get_detector(name: str) -> Detector:
    found = detectors()
    if name not in found:
        raise SettingError("methods", f"unknown detector {name!r}; choose from {', '.join(found)}")
    return found[name]
