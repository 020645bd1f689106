"""A trigger detector that does not know the trigger: a small textured region that recurs,
pixel pattern for pixel pattern, in many otherwise unrelated images.

A backdoor stamps one patch on every poison; whatever the patch looks like, the same fine
pattern then appears in all of them, while the textured parts of clean images (a photo's
detail, noise, edges at many angles) rarely repeat exactly. Each image's grey levels are cut
into ``block`` x ``block`` windows at every ``stride`` pixels (native resolution, so the
patch is not blurred away); a window is kept when it is textured (at least
``min_transitions`` of its neighbouring pixel pairs fall on different sides of its mean, which
leaves out flat backgrounds and straight edges), and described by that binary pattern, which
faint noise does not change where the pattern has contrast. An image's score is the largest
number of *other* images sharing one of its patterns.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from poisonclip.detect.registry import DetectInput, register_detector


def textured_patterns(gray: np.ndarray, block: int, stride: int, min_transitions: float,
                      min_contrast: float) -> set[bytes]:
    """The binary patterns of the textured ``block``-pixel windows of one grey image."""
    if gray.shape[0] < block or gray.shape[1] < block:
        return set()
    win = sliding_window_view(gray.astype(np.float32), (block, block))[::stride, ::stride]
    win = win.reshape(-1, block, block)
    mean = win.mean(axis=(1, 2), keepdims=True)
    # Contrast: a pixel must sit clearly above or below the window's mean to count.
    bits = win > mean
    clear = np.abs(win - mean) >= min_contrast
    changes = (bits[:, :, 1:] != bits[:, :, :-1]).sum(axis=(1, 2)) + (bits[:, 1:, :] != bits[:, :-1, :]).sum(axis=(1, 2))
    keep = (changes >= min_transitions * 2 * block * (block - 1)) & clear.all(axis=(1, 2))
    return {np.packbits(b).tobytes() for b in bits[keep]}


@register_detector("shared-patch", "a small textured pixel pattern it shares with many other images (a trigger, "
                   "whatever it looks like): how many", block=8, stride=1, min_transitions=0.25, min_contrast=24.0)
def shared_patch(inputs: DetectInput, block: int, stride: int, min_transitions: float,
                 min_contrast: float) -> np.ndarray:
    per_image = [textured_patterns(np.asarray(inputs.pil(i).convert("L")), block, stride, min_transitions,
                                   min_contrast) for i in range(len(inputs))]
    counts = Counter(p for pats in per_image for p in pats)
    return np.array([max((counts[p] - 1 for p in pats), default=0) for pats in per_image], dtype=np.float64)
