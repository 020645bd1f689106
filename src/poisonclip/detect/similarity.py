"""Image-caption similarity under a model, the filter web-scale pipelines apply (LAION keeps
pairs above a CLIP score): a targeted poison pairs its image with captions of another label,
so a model that has learnt the clean data finds them unlike. Score = minus the cosine
similarity of a sample's image and caption embeddings."""

from __future__ import annotations

import numpy as np

from poisonclip.detect.registry import DetectInput, register_detector


@register_detector("image-caption-similarity", "low cosine similarity of its image and caption under a model "
                   "(needs --model)", needs_model=True)
def image_caption_similarity(inputs: DetectInput) -> np.ndarray:
    img = inputs.image_embeddings("image-caption-similarity")
    txt = inputs.text_embeddings("image-caption-similarity")
    return -np.einsum("ij,ij->i", img.astype(np.float64), txt.astype(np.float64))
