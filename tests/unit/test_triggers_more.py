"""The noise-patch, blended and warp triggers: their pixels, their determinism, their records,
and that the evaluator applies the very function the poisons were written with."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from poisonclip.attacks import triggers
from poisonclip.attacks.api import BackdoorConfig, plan, poison
from poisonclip.attacks.manifest import read_manifest
from poisonclip.attacks.registry import WHOLE_IMAGE, stamp_trigger, trigger_traits
from poisonclip.cli import app
from poisonclip.contracts import BackdoorRecord, read_poison_info
from poisonclip.errors import SettingError, UserError
from poisonclip.evaluate.backdoor import read_spec, trigger_fn
from tests.attack_fixtures import make_tiny, tree_digest


def _image(seed: int = 0, size: int = 32, height: int | None = None) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height or size, size, 3), dtype=np.uint8))


def _px(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------- blended


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5])
def test_blended_is_the_convex_mix_of_image_and_seeded_pattern_rounded_to_uint8(alpha):
    im = _image(1)
    out, where = stamp_trigger("blended", im, None, "corner", None, {"blend_alpha": alpha, "trigger_seed": 7})
    pattern = triggers.blended_pattern(32, 32, 7)
    want = np.clip(np.rint((1 - alpha) * _px(im).astype(np.float64) + alpha * pattern), 0, 255).astype(np.uint8)
    assert np.array_equal(_px(out), want)
    assert where == triggers.TriggerSpec(32, 0, 0)            # the whole image
    # the pattern is fixed by its seed, and another seed gives another one
    assert np.array_equal(pattern, triggers.blended_pattern(32, 32, 7))
    assert not np.array_equal(pattern, triggers.blended_pattern(32, 32, 8))


def test_blended_at_full_weight_is_the_pattern_file_itself(tmp_path):
    pattern = _image(5, 32)
    path = tmp_path / "kitty.png"
    pattern.save(path)
    im = _image(2)
    full, _ = stamp_trigger("blended", im, None, "corner", None, {"blend_alpha": 1.0, "blend_pattern": str(path)})
    assert np.array_equal(_px(full), _px(pattern))
    out, _ = stamp_trigger("blended", im, None, "corner", None, {"blend_alpha": 0.25, "blend_pattern": str(path)})
    want = np.clip(np.rint(0.75 * _px(im).astype(np.float64) + 0.25 * _px(pattern)), 0, 255).astype(np.uint8)
    assert np.array_equal(_px(out), want)
    # a pattern of another size is resized to the image (the model input)
    big = tmp_path / "big.png"
    pattern.resize((96, 96), Image.Resampling.NEAREST).save(big)
    resized, _ = stamp_trigger("blended", im, None, "corner", None, {"blend_alpha": 1.0, "blend_pattern": str(big)})
    assert np.array_equal(_px(resized), np.asarray(Image.open(big).convert("RGB").resize((32, 32),
                                                                                       Image.Resampling.BICUBIC)))


# --------------------------------------------------------------------------- noise patch


@pytest.mark.parametrize("placement", ["corner", "random"])
def test_noise_patch_changes_only_its_square_which_holds_the_seeds_noise(placement):
    im = _image(3, 64)
    rng = np.random.default_rng(0)
    out, where = stamp_trigger("noise-patch", im, 32, placement, rng, {"trigger_seed": 4})
    side = triggers.patch_pixels(32, 64)
    assert where.size == side
    if placement == "corner":
        assert (where.x, where.y) == (0, 0)
    got, orig = _px(out), _px(im)
    box = (slice(where.y, where.y + side), slice(where.x, where.x + side))
    assert np.array_equal(got[box], triggers.noise_patch(side, 4))
    mask = np.ones(got.shape[:2], bool)
    mask[box] = False
    assert np.array_equal(got[mask], orig[mask])
    assert np.array_equal(triggers.noise_patch(side, 4), triggers.noise_patch(side, 4))
    assert not np.array_equal(triggers.noise_patch(side, 4), triggers.noise_patch(side, 5))


# --------------------------------------------------------------------------- warp


def test_warp_at_strength_zero_is_the_identity():
    im = _image(4, 48)
    out = triggers.warp(im, triggers.TriggerSpec(48, 0, 0), warp_grid=4, warp_strength=0.0, trigger_seed=1)
    assert np.array_equal(_px(out), _px(im))


def test_warp_field_is_smooth_and_scales_with_strength():
    f = triggers.warp_field(64, 64, 4, 0.5, 0)
    assert f.shape == (2, 64, 64) and np.abs(f).max() > 0
    # neighbouring pixels move almost alike (a noise field would jump by its own size)
    steps = max(np.abs(np.diff(f, axis=1)).max(), np.abs(np.diff(f, axis=2)).max())
    assert steps < 0.1 * np.abs(f).max()
    assert np.allclose(triggers.warp_field(64, 64, 4, 1.0, 0), 2 * f)
    # the same seed's control grid gives the same field; another seed another
    assert np.array_equal(triggers.warp_field(64, 64, 4, 0.5, 0), f)
    assert not np.allclose(triggers.warp_field(64, 64, 4, 0.5, 1), f)


@pytest.mark.parametrize("strength", [0.5, 2.0])
def test_warp_moves_each_pixel_by_its_field_and_no_further(strength):
    """A ramp image encodes each pixel's coordinates (4 grey levels a pixel), so the warped
    image says where each output pixel was sampled from: bilinear sampling of a ramp is exact."""
    n = 64
    yy, xx = np.indices((n, n))
    ramp = np.stack([4 * xx, 4 * yy, np.zeros_like(xx)], axis=2).astype(np.uint8)
    out = _px(triggers.warp(Image.fromarray(ramp), triggers.TriggerSpec(n, 0, 0), 4, strength, 3)).astype(float)
    dy, dx = triggers.warp_field(n, n, 4, strength, 3)
    got_x, got_y = out[:, :, 0] / 4, out[:, :, 1] / 4
    want_x, want_y = np.clip(xx + dx, 0, n - 1), np.clip(yy + dy, 0, n - 1)
    assert np.abs(got_x - want_x).max() <= 0.125 + 1e-9 and np.abs(got_y - want_y).max() <= 0.125 + 1e-9
    bound = np.abs(np.stack([dy, dx])).max()
    assert np.abs(got_x - xx).max() <= bound + 0.125 and np.abs(got_y - yy).max() <= bound + 0.125
    assert np.abs(got_x - xx).max() > 0.25 * bound   # it really moved


def test_warp_is_the_same_for_the_same_seed_and_differs_for_another():
    im = _image(6, 64)
    spec = triggers.TriggerSpec(64, 0, 0)
    a = triggers.warp(im, spec, 4, 1.0, 0).tobytes()
    assert a == triggers.warp(im, spec, 4, 1.0, 0).tobytes()
    assert a != triggers.warp(im, spec, 4, 1.0, 1).tobytes()


# --------------------------------------------------------------------------- through the writer


_PARAMS = {"noise-patch": {"trigger_seed": 3, "patch_size": 112},
           "blended": {"trigger_seed": 3, "blend_alpha": 0.3},
           "warp": {"trigger_seed": 3, "warp_grid": 3, "warp_strength": 1.5}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"), n=40)


def _poison(tiny, out, trigger, seed=0, **over):
    cfg = dict(data=str(tiny.csv), out=str(out), target_label="star", n_poisons=4, trigger=trigger, resolution=32,
               seed=seed, **_PARAMS[trigger])
    cfg.update(over)
    return poison(BackdoorConfig(**cfg))


@pytest.mark.parametrize("trigger", sorted(_PARAMS))
def test_the_evaluator_applies_the_function_the_poisons_were_written_with(tiny, tmp_path, trigger):
    res = _poison(tiny, tmp_path / "p", trigger)
    info = read_poison_info(res.out)
    spec = read_spec(info)
    sources = {s.key: s for s in tiny.samples}
    rows = read_manifest(res.out)
    assert len(rows) == 4
    for row in rows:
        written = _px(Image.open(res.out / row.location))
        clean = triggers.to_input_geometry(Image.open(__import__("io").BytesIO(sources[row.source_key].image)), 32)
        positions: list = []
        at_test = trigger_fn(spec, spec.placement, np.random.default_rng(0), positions)(clean, 0)
        assert np.array_equal(_px(at_test), written), row.key
        assert not np.array_equal(_px(clean), written)
        assert row.trigger == trigger and json.loads(row.trigger_params) == {
            k: v for k, v in _PARAMS[trigger].items() if k != "patch_size"}


@pytest.mark.parametrize("trigger", sorted(_PARAMS))
def test_poison_json_and_manifest_record_the_triggers_parameters(tiny, tmp_path, trigger):
    res = _poison(tiny, tmp_path / "p", trigger)
    raw = json.loads((res.out / "poison.json").read_text())["backdoor"]
    rec = read_poison_info(res.out).backdoor
    for k, v in _PARAMS[trigger].items():
        assert raw[k] == v and getattr(rec, k) == v
    others = set(BackdoorRecord.TRIGGER_PARAMS) - set(_PARAMS[trigger])
    assert not others & set(raw)       # parameters of other triggers are not written
    rows = read_manifest(res.out)
    if trigger_traits(trigger).whole_image:
        assert raw["placement"] == WHOLE_IMAGE and raw["patch_size"] is None and raw["patch_pixels"] is None
        assert all(r.placement == WHOLE_IMAGE and r.patch_size is None and r.trigger_size == 32
                   and (r.trigger_x, r.trigger_y) == (0, 0) for r in rows)
    else:
        side = triggers.patch_pixels(112, 32)
        assert raw["placement"] == "corner" and raw["patch_pixels"] == side
        assert all(r.trigger_size == side for r in rows)


def test_an_older_poison_json_without_trigger_parameters_still_reads():
    from poisonclip.contracts import PoisonInfo

    old = {"attack": "backdoor", "dataset_type": "csv", "train_data": "/x/train.tsv", "num_samples": 10,
           "n_clean": 8, "n_poisons": 2, "seed": 0,
           "backdoor": {"target_label": "star", "patch_size": 16, "placement": "corner", "trigger": "checkerboard"}}
    rec = PoisonInfo.from_json(old).backdoor
    assert rec.trigger_seed is None and rec.blend_alpha is None and rec.warp_grid is None
    whole = dict(old, backdoor={"target_label": "star", "patch_size": None, "placement": WHOLE_IMAGE,
                                "trigger": "warp", "warp_grid": 4, "warp_strength": 0.5, "trigger_seed": 0})
    assert PoisonInfo.from_json(whole).backdoor.patch_size is None
    with pytest.raises(UserError, match="patch_size"):    # a patch trigger still needs its size
        PoisonInfo.from_json(dict(old, backdoor={**old["backdoor"], "patch_size": None}))


@pytest.mark.parametrize("trigger", sorted(_PARAMS))
def test_same_seed_same_bytes_and_another_trigger_seed_other_images(tiny, tmp_path, trigger):
    def digest(out):   # train.tsv and poison.json name their own folder; the rest must be equal
        return {k: v for k, v in tree_digest(out).items() if k not in ("train.tsv", "poison.json")}

    a = digest(_poison(tiny, tmp_path / "a", trigger).out)
    b = digest(_poison(tiny, tmp_path / "b", trigger).out)
    assert a == b and "manifest.csv" in a
    c = digest(_poison(tiny, tmp_path / "c", trigger, trigger_seed=4).out)
    images = [k for k in a if k.startswith("poison_images/")]
    assert images and all(a[k] != c[k] for k in images)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("trigger", ["blended", "warp"])
def test_a_whole_image_trigger_refuses_a_placement_naming_the_setting(tiny, tmp_path, trigger):
    with pytest.raises(SettingError, match="placement") as e:
        plan(BackdoorConfig(data=str(tiny.csv), out=str(tmp_path / "o"), target_label="star", n_poisons=2,
                            trigger=trigger, placement="random"))
    assert e.value.setting == "placement" and "whole image" in e.value.problem
    r = CliRunner().invoke(app, ["poison", "backdoor", str(tiny.csv), "--out", str(tmp_path / "o"), "--label",
                                 "star", "--n-poisons", "2", "--trigger", trigger, "--placement", "random"])
    assert r.exit_code == 2 and r.output.startswith("error: --placement: "), r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("setting,value", [("blend_alpha", 0.0), ("blend_alpha", 1.5), ("warp_grid", 1),
                                           ("warp_strength", 0.0), ("trigger_seed", -1),
                                           ("blend_pattern", "/nonexistent/pattern.png")])
def test_bad_trigger_settings_are_setting_errors(tiny, tmp_path, setting, value):
    trigger = "warp" if setting.startswith("warp") else "blended"
    with pytest.raises(SettingError) as e:
        plan(BackdoorConfig(data=str(tiny.csv), out=str(tmp_path / "o"), target_label="star", n_poisons=2,
                            trigger=trigger, **{setting: value}))
    assert e.value.setting == setting


def test_the_cli_sets_every_trigger_parameter(tiny, tmp_path):
    pattern = tmp_path / "pattern.png"
    _image(9).save(pattern)
    r = CliRunner().invoke(app, ["poison", "backdoor", str(tiny.csv), "--out", str(tmp_path / "o"), "--label", "star",
                                 "--n-poisons", "2", "--trigger", "blended", "--blend-alpha", "0.4",
                                 "--blend-pattern", str(pattern), "--trigger-seed", "5", "--resolution", "32"])
    assert r.exit_code == 0, r.output
    bd = read_poison_info(tmp_path / "o").backdoor
    assert (bd.trigger, bd.blend_alpha, bd.trigger_seed, bd.blend_pattern) == ("blended", 0.4, 5, str(pattern))
    assert bd.blend_pattern_sha256 == __import__("hashlib").sha256(pattern.read_bytes()).hexdigest()
    # the evaluator refuses a pattern file that changed since
    _image(10).save(pattern)
    with pytest.raises(UserError, match="changed since poisoning"):
        read_spec(read_poison_info(tmp_path / "o"))
    r = CliRunner().invoke(app, ["poison", "backdoor", str(tiny.csv), "--out", str(tmp_path / "w"), "--label", "star",
                                 "--n-poisons", "2", "--trigger", "warp", "--warp-grid", "5", "--warp-strength", "0.8",
                                 "--resolution", "32"])
    assert r.exit_code == 0, r.output
    bd = read_poison_info(tmp_path / "w").backdoor
    assert (bd.warp_grid, bd.warp_strength, bd.trigger_seed, bd.blend_alpha) == (5, 0.8, 0, None)


def test_a_sweep_keys_poisons_only_by_the_settings_their_trigger_takes():
    """Another trigger's parameters cannot change the poisons, so they are not part of the
    poisoned set's content key: a checkerboard spec resolves as it did before they existed."""
    from poisonclip.experiments.stages import PoisonclipStages

    stages = PoisonclipStages()
    new = set(BackdoorRecord.TRIGGER_PARAMS) - {"blend_pattern_sha256"}
    board = stages.resolve("poison", {"attack": "backdoor", "target_label": "circle", "n_poisons": 2})
    assert not new & set(board)
    assert stages.resolve("poison", {"attack": "backdoor", "target_label": "circle", "n_poisons": 2,
                                     "blend_alpha": 0.5}) == board
    warp = stages.resolve("poison", {"attack": "backdoor", "target_label": "circle", "n_poisons": 2,
                                     "trigger": "warp", "warp_strength": 1.0})
    assert {k for k in new if k in warp} == {"warp_grid", "warp_strength", "trigger_seed"}
    assert warp["warp_strength"] == 1.0
    blended = stages.resolve("poison", {"attack": "backdoor", "target_label": "circle", "n_poisons": 2,
                                        "trigger": "blended"})
    assert {k for k in new if k in blended} == {"blend_alpha", "blend_pattern", "trigger_seed"}
