"""Zero-shot classifier heads: class names x prompt templates -> one unit vector per class.

The head is open_clip's own ``build_zero_shot_classifier``: each class embedding is the mean
of the normalised text embeddings of the class name in every template, renormalised (the
definition in docs/evaluation.md). Prediction is the arg-max cosine similarity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from poisonclip.errors import UserError

# Built-in template sets shipped with open_clip, by name.
BUILTIN_TEMPLATES = ("openai", "simple")


def _builtin(name: str) -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    # open_clip stores them as callables; calling with "{}" recovers the format string so
    # that metrics.json can record the exact prompts and files and built-ins are one type.
    funcs = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}[name]
    return tuple(f("{}") for f in funcs)


def load_templates(spec: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Templates by name (``openai``: CLIP's 80 ImageNet prompts, the default; ``simple``) or
    from a UTF-8 file with one template per line, each containing ``{}`` once."""
    if spec is None or str(spec) in BUILTIN_TEMPLATES:
        return _builtin(str(spec or "openai"))
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"{path}: template file not found; give one of {list(BUILTIN_TEMPLATES)} "
                        "or a file with one template per line containing {}")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise UserError(f"{path}: template file is not UTF-8 text") from None
    templates = tuple(ln for ln in lines if ln)
    if not templates:
        raise UserError(f"{path}: template file is empty; put one template per line, e.g. 'a photo of a {{}}.'")
    for i, t in enumerate(templates, 1):
        try:
            ok = t.count("{}") == 1 and t.format("x") == t.replace("{}", "x")
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"{path}: template {i} {t!r} must contain '{{}}' exactly once and no other braces")
    return templates


def classifier_weights(model: Any, tokenizer: Any, classnames: Sequence[str],
                       templates: Sequence[str], device: str = "cpu") -> np.ndarray:
    """(n_classes, dim) float32 unit vectors, row i for ``classnames[i]``."""
    import open_clip
    import torch

    if not classnames:
        raise ValueError("no class names")
    if not templates:
        raise ValueError("no templates")
    with torch.no_grad():
        w = open_clip.build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates),
                                                 num_classes_per_batch=10, device=device)
    return w.T.float().cpu().numpy()


def zeroshot_scores(image_emb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (normalised) image embedding to each class embedding."""
    e = np.asarray(image_emb, dtype=np.float32)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    return e @ np.asarray(weights, dtype=np.float32).T


def logit_scale(model: Any) -> float | None:
    """The temperature CLIP learnt (``exp(model.logit_scale)``), which turns cosines into the
    softmax probabilities its zero-shot classifier reports; None for a model without one."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return None
    try:
        return float(np.exp(float(np.asarray(scale.detach().cpu() if hasattr(scale, "detach") else scale).ravel()[0])))
    except (TypeError, ValueError, IndexError):
        return None


def probabilities(scores: np.ndarray, scale: float) -> np.ndarray:
    """Softmax over classes of ``scale`` x the cosine scores, row by row (CLIP's zero-shot
    probabilities)."""
    z = np.asarray(scores, dtype=np.float64) * scale
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
