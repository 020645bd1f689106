"""Duplicate-filter evasion: image noise, caption edits, and exact dedup finding nothing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from poisonclip.attacks.api import TargetedConfig, TargetSpec, poison
from poisonclip.attacks.captions import LabelMatcher
from poisonclip.attacks.evasion import add_noise, perturb_caption, perturb_captions
from poisonclip.attacks.manifest import read_manifest
from poisonclip.data.wds_io import read_shards
from tests.attack_fixtures import make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("ev") / "d", n=24)


def test_noise_is_gaussian_in_pixel_units():
    img = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    out = np.asarray(add_noise(img, 2.0, np.random.default_rng(0)), dtype=float) - 128
    assert abs(out.mean()) < 0.1 and 1.8 < out.std() < 2.2
    assert np.abs(out).max() <= 12  # rounded noise, no wrap-around


def test_noise_clips_instead_of_wrapping():
    img = Image.fromarray(np.full((16, 16, 3), 255, np.uint8))
    out = np.asarray(add_noise(img, 5.0, np.random.default_rng(0)))
    assert out.max() == 255 and out.min() > 200


def test_zero_noise_leaves_pixels_alone():
    arr = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(add_noise(Image.fromarray(arr), 0.0, np.random.default_rng(0))), arr)


def test_caption_edit_keeps_the_label_and_changes_the_text():
    rng = np.random.default_rng(0)
    m = LabelMatcher("photo")  # a label that is also in the synonym table
    for _ in range(50):
        out = perturb_caption("a photo of a big photo", rng, m.protected_words())
        assert out != "a photo of a big photo"
        assert out.count("photo") >= 2  # the label's words are never swapped away


def test_caption_edits_are_unique_even_for_identical_inputs():
    m = LabelMatcher("basketball")
    caps = ["a photo of a basketball."] * 300
    out = perturb_captions(caps, np.random.default_rng(0), m.protected_words())
    assert len(set(out)) == 300
    assert m.mask(out).all()
    assert out == perturb_captions(caps, np.random.default_rng(0), m.protected_words())


def _poison_images_and_captions(out):
    samples = [s for s in read_shards(out, verify=False) if s.key.startswith("targeted-")]
    return [hashlib.sha256(s.image).hexdigest() for s in samples], [s.caption for s in samples]


def test_exact_dedup_finds_duplicates_without_evasion_and_none_with_it(tiny, tmp_path):
    target = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(target)
    spec = (TargetSpec(str(target), "moon", 120),)  # 120 copies > 80 templates: captions repeat

    plain = poison(TargetedConfig(data=str(tiny.shards), out=str(tmp_path / "plain"), targets=spec))
    hashes, caps = _poison_images_and_captions(plain.out)
    assert len(hashes) == 120
    assert len(set(hashes)) == 1 and len(set(caps)) == 80  # what dedup would collapse

    ev = poison(TargetedConfig(data=str(tiny.shards), out=str(tmp_path / "ev"), targets=spec,
                               noise_sigma=1.0, perturb_captions=True))
    hashes, caps = _poison_images_and_captions(ev.out)
    assert len(hashes) == 120
    assert len(set(hashes)) == 120 and len(set(caps)) == 120  # exact dedup finds nothing
    assert LabelMatcher("moon").mask(caps).all()
    rows = read_manifest(ev.out)
    assert {r.noise_sigma for r in rows} == {1.0}
    # the noise is tiny: every copy stays within a few grey levels of x'
    x = np.asarray(Image.open(target).convert("RGB"), dtype=int)
    for s in list(read_shards(ev.out, verify=False))[:5]:
        diff = np.asarray(s.decode(), dtype=int) - x
        assert 0 < np.abs(diff).mean() < 2
