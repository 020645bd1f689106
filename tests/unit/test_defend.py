"""`poisonclip defend` without a model: the filter on a small targeted set (table and shards),
the cut a drop fraction makes, CleanCLIP's augmentations and the settings' checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisonclip import contracts as C
from poisonclip.attacks.api import TargetedConfig, TargetSpec, poison
from poisonclip.attacks.manifest import read_manifest
from poisonclip.defend.cleanclip import CleanClipConfig, augment_caption, augment_image, defend_cleanclip
from poisonclip.defend.filter import FilterConfig, defend_filter, flag
from poisonclip.defend.roclip import CaptionPool, RoClipConfig, defend_roclip, matching_epoch
from poisonclip.errors import SettingError, UserError
from poisonclip.train.dataset import resolve
from tests.attack_fixtures import make_tiny

N_CLEAN, COPIES = 80, 6


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("defend")
    tiny = make_tiny(root / "clean", n=N_CLEAN)
    specs = []
    for j, label in enumerate(("moon", "star")):
        t = root / f"target{j}.png"
        Image.fromarray(np.random.default_rng(50 + j).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(t)
        specs.append(TargetSpec(str(t), label, COPIES))
    return {kind: Path(poison(TargetedConfig(data=str(src), out=str(root / kind), targets=tuple(specs))).out)
            for kind, src in (("table", tiny.csv), ("shards", tiny.shards))}


def test_a_threshold_flags_every_score_at_least_it():
    flagged, cut = flag(np.array([0.0, 2.0, 1.0, 2.0]), 1.0, None)
    assert flagged.tolist() == [False, True, True, True] and cut == 1.0


def test_a_drop_fraction_drops_at_most_that_share_and_keeps_ties_at_the_cut():
    scores = np.array([5.0, 0.0, 5.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert flag(scores, None, 0.2)[0].tolist() == [True, False, True] + [False] * 7        # the top 2
    assert flag(scores, None, 0.3)[0].sum() == 3
    # 5 of 10 would cut into the tied zeros: only the 3 above them go, never a zero
    flagged, cut = flag(scores, None, 0.5)
    assert flagged.sum() == 3 and cut == 0.0
    assert not flag(scores, None, 0.0)[0].any()


@pytest.mark.parametrize("kind", ["table", "shards"])
def test_filter_removes_the_flagged_samples_and_keeps_the_rest_as_a_poisoned_folder(sets, tmp_path, kind):
    res = defend_filter(FilterConfig(data=sets[kind], out=tmp_path / "d", method="phash",
                                     drop_fraction=(2 * COPIES + 0.5) / (N_CLEAN + 2 * COPIES)))
    r = res.info.removed
    assert res.info.stage == "done" and r["n_poisons"] == 2 * COPIES
    assert r["poisons_removed"] == 2 * COPIES and r["clean_removed"] == 0 and r["n_kept"] == N_CLEAN
    data = res.out / C.DEFENSE_DATA_DIR
    info = C.read_poison_info(data)
    assert info.dataset_type == ("csv" if kind == "table" else "webdataset")
    assert info.n_poisons == 0 and info.n_clean == N_CLEAN and read_manifest(data) == []
    assert [t.id for t in info.targets] == [t.id for t in C.read_poison_info(sets[kind]).targets]
    assert all(info.target_image(t).is_file() for t in info.targets)   # the evaluator finds the targets
    assert resolve(data).num_samples == N_CLEAN                          # and the trainer the kept data


def test_a_threshold_keeps_some_poisons_and_their_manifest_rows(sets, tmp_path):
    res = defend_filter(FilterConfig(data=sets["table"], out=tmp_path / "d", method="phash", threshold=1e9))
    assert res.info.removed["n_removed"] == 0
    kept = read_manifest(res.out / C.DEFENSE_DATA_DIR)
    assert [r.key for r in kept] == [r.key for r in read_manifest(sets["table"])]


def test_filter_settings_are_checked_before_anything_is_written(sets, tmp_path):
    out = tmp_path / "d"
    for kw, setting in (({}, "threshold"), ({"threshold": 1.0, "drop_fraction": 0.1}, "threshold"),
                        ({"drop_fraction": 1.0}, "drop_fraction"), ({"threshold": float("nan")}, "threshold"),
                        ({"threshold": 1.0, "train": {"epochz": 1}}, "train"),
                        ({"threshold": 1.0, "before": sets["table"]}, None)):
        with pytest.raises(UserError) as e:
            defend_filter(FilterConfig(data=sets["table"], out=out, method="phash", **kw))
        assert setting is None or (isinstance(e.value, SettingError) and e.value.setting == setting)
    with pytest.raises(UserError, match="flags all"):
        defend_filter(FilterConfig(data=sets["table"], out=out, method="phash", threshold=0.0))
    assert not out.exists()


def test_overwrite_replaces_only_an_earlier_defense(sets, tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="already exists"):
        defend_filter(FilterConfig(data=sets["table"], out=out, method="phash", threshold=1.0))
    with pytest.raises(UserError, match="not a defense"):
        defend_filter(FilterConfig(data=sets["table"], out=out, method="phash", threshold=1.0, overwrite=True))
    assert (out / "mine.txt").read_text() == "keep me"
    other = tmp_path / "e"
    defend_filter(FilterConfig(data=sets["table"], out=other, method="phash", threshold=1.0))
    res = defend_filter(FilterConfig(data=sets["table"], out=other, method="exact-bytes", threshold=1.0,
                                     overwrite=True))
    assert C.read_defense_info(other).params["method"] == "exact-bytes" == res.info.params["method"]


def test_augmentations_are_drawn_from_the_generator_only():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8))
    a = augment_image(im, np.random.default_rng(7))
    assert a.size == im.size and a.tobytes() == augment_image(im, np.random.default_rng(7)).tobytes()
    assert a.tobytes() != im.tobytes()
    text = "a big red star on a plain background"
    views = {augment_caption(text, np.random.default_rng(s)) for s in range(20)}
    assert len(views) > 1 and augment_caption(text, np.random.default_rng(3)) == augment_caption(
        text, np.random.default_rng(3))
    assert all(set(v.split()) <= set(text.split()) and v for v in views)
    swapped = augment_caption(text, np.random.default_rng(1), word_drop=0.0)    # no deletion: a permutation
    assert sorted(swapped.split()) == sorted(text.split()) and swapped != text
    assert augment_caption("star", np.random.default_rng(0), word_drop=0.99) == "star"


def test_cleanclip_settings_are_checked_before_anything_is_read(sets, tmp_path):
    for kw, setting in (({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"lambda_clip": 0.0, "lambda_ss": 0.0},
                        "lambda_clip"), ({"crop_scale": 0.0}, "crop_scale"), ({"word_drop": 1.0}, "word_drop"),
                        ({"subset": 0}, "subset")):
        with pytest.raises(SettingError) as e:
            defend_cleanclip(CleanClipConfig(run=tmp_path, data=sets["table"], out=tmp_path / "c", **kw))
        assert e.value.setting == setting
    with pytest.raises(UserError, match="run.json"):
        defend_cleanclip(CleanClipConfig(run=tmp_path / "nowhere", data=sets["table"], out=tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_the_caption_pool_keeps_the_newest_and_matches_each_image_to_its_nearest_caption():
    import torch

    pool = CaptionPool(3)
    eye = torch.eye(4)
    pool.push(eye[:2])
    pool.push(eye[2:])
    assert len(pool) == 3 and torch.equal(pool.bank, eye[1:])        # the oldest went first
    images = torch.nn.functional.normalize(torch.tensor([[0.1, 0.2, 0.0, 0.9], [0.0, 0.9, 0.3, 0.0],
                                                         [1.0, 0.0, 0.0, 0.1]]), dim=1)
    nearest = pool.nearest(images)
    assert torch.equal(nearest, eye[[3, 1, 3]])     # image 3's own best (axis 0) is no longer in the pool
    emb = torch.ones(2, 4, requires_grad=True)
    pool.push(emb * 2)
    assert not pool.bank.requires_grad


def test_matching_epochs_and_the_schedule():
    assert [matching_epoch(e, 2) for e in range(5)] == [False, True, False, True, False]
    assert all(matching_epoch(e, 1) for e in range(3)) and [matching_epoch(e, 3) for e in range(3)] == [False, False, True]
    import torch
    from open_clip_train.scheduler import cosine_lr   # the schedule the defenses' loop steps through

    set_lr = cosine_lr(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 1.0, 2, 10)
    lrs = [set_lr(s) for s in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0] and all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] > 0


def test_roclip_settings_are_checked_before_anything_is_read(sets, tmp_path):
    for kw, setting in (({"nn_every": 0}, "nn_every"), ({"pool_size": 0}, "pool_size"), ({"lr": -1.0}, "lr"),
                        ({"model": "no-such-model"}, "model")):
        with pytest.raises(SettingError) as e:
            defend_roclip(RoClipConfig(data=sets["table"], out=tmp_path / "r", **kw))
        assert e.value.setting == setting
    with pytest.raises(UserError, match="run.json"):
        defend_roclip(RoClipConfig(data=sets["table"], out=tmp_path / "r", before=tmp_path / "nowhere"))
    assert not (tmp_path / "r").exists()


def test_a_sweep_names_a_defense_in_its_train_section():
    from poisonclip.defend.sweep import resolve_defense
    from poisonclip.experiments.spec import load_spec
    from poisonclip.experiments.stages import PoisonclipStages
    from poisonclip.experiments.trials import expand

    S = PoisonclipStages()
    plain = S.resolve("train", {"model": "poisonclip-test"})
    assert "defense" not in plain     # a spec without a defense keeps its models' content keys
    none = S.resolve("train", {"model": "poisonclip-test", "defense": "none"})
    assert none["defense"] == "none" and none["defense_settings"] == {}
    f = resolve_defense("filter", {"method": "phash", "drop_fraction": 0.1})
    assert f == {"defense": "filter", "defense_settings": {"method": "phash", "threshold": None, "drop_fraction": 0.1}}
    assert resolve_defense("roclip")["defense_settings"]["pool_size"] == \
        RoClipConfig.__dataclass_fields__["pool_size"].default
    for name, settings, says in (("magic", None, "magic"), ("none", {"pool_size": 3}, "no settings"),
                                 ("roclip", {"method": "phash"}, "unknown"), ("filter", None, "detector"),
                                 ("filter", {"method": "phash"}, "threshold"),
                                 ("filter", {"method": "nope", "threshold": 1.0}, "nope"),
                                 ("filter", {"method": "embedding-neighbours", "threshold": 1.0}, "model"),
                                 ("filter", "phash", "mapping")):
        with pytest.raises(UserError, match=says) as e:
            S.resolve("train", {"model": "poisonclip-test", "defense": name, "defense_settings": settings})
        assert str(e.value).startswith("sweep spec: train.defense")
    root = Path(__file__).resolve().parents[2] / "configs" / "defenses"
    trials = expand(load_spec(root / "quick.yaml"), S.resolve, S.link)
    assert len(trials) == 24 and len({t.keys.model for t in trials}) == 24
    names = {(t.params["poison.attack"], t.params["train.defense"]) for t in trials}
    assert names == {(a, d) for a in ("backdoor", "targeted") for d in ("none", "filter", "roclip", "cleanclip")}
    # the poisoned data is shared by every defense of an attack and seed
    assert len({t.keys.poison for t in trials}) == 6
