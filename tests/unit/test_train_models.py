"""The shipped model zoo: registered with open_clip, counted right, sized for the ablation."""

from __future__ import annotations

import pytest

from poisonclip.errors import UserError
from poisonclip.train.models import PAPER_MODEL, check_model, list_models, model_info, register_models


def test_shipped_configs_are_open_clip_models():
    import open_clip

    names = register_models()
    assert {"poisonclip-small", "poisonclip-medium", "poisonclip-large", "poisonclip-test"} <= set(names)
    assert set(names) <= set(open_clip.list_models())


@pytest.mark.parametrize("name", ["poisonclip-test", "poisonclip-small"])
def test_meta_device_count_equals_a_real_build(name):
    import open_clip

    real = open_clip.create_model(name, device="cpu")
    info = model_info(name)
    assert info.params == sum(p.numel() for p in real.parameters())
    assert info.vision_params == sum(p.numel() for p in real.visual.parameters())
    assert info.token_embedding_params == real.token_embedding.weight.numel()


def test_size_family_spans_the_papers_range():
    # Paper 5.1.2 compares ~1M, ~5M and ~30M parameter models.
    sizes = {m.name: m.params for m in list_models()}
    assert 0.8e6 <= sizes["poisonclip-small"] <= 1.5e6
    assert 4e6 <= sizes["poisonclip-medium"] <= 6.5e6
    assert 25e6 <= sizes["poisonclip-large"] <= 35e6
    assert sizes["poisonclip-small"] < sizes["poisonclip-medium"] < sizes["poisonclip-large"]


def test_paper_model_is_rn50_with_a_resnet_image_tower():
    info = model_info(PAPER_MODEL)
    assert info.vision == "ResNet" and info.image_size == 224
    assert 100e6 < info.params < 105e6  # CLIP RN50: ResNet-50 image tower + 12-layer Transformer
    assert list_models()[-1].name == PAPER_MODEL


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        check_model("poisonclip-nope")
    assert "poisonclip-small" in str(e.value) and "RN50" in str(e.value)
    assert check_model("ViT-B-32") == "ViT-B-32"
