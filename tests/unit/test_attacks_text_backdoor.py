"""The text backdoor: its caption transform, its poisons (target-class images, token-bearing
captions of other samples) and its evaluation hook's preparation, on tiny real datasets."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from poisonclip.attacks.api import poison
from poisonclip.attacks.registry import ATTACKS, insert_trigger_token
from poisonclip.attacks.text_backdoor import TextBackdoorConfig
from poisonclip.attacks.tokens import insert_token
from poisonclip.contracts import read_poison_info
from poisonclip.data.csv_io import read_csv
from poisonclip.data.lookup import find_sample
from poisonclip.errors import UserError
from tests.attack_fixtures import CLASSES, make_tiny


@pytest.fixture
def tiny(tmp_path):
    return make_tiny(tmp_path / "data", n=60)


def test_the_token_goes_first_or_last_as_a_word_of_its_own():
    assert insert_token("a red  circle", "cf", "start") == "cf a red circle"
    assert insert_token("a red circle", "cf", "end") == "a red circle cf"
    assert insert_token("", "cf", "end") == "cf"


def test_random_positions_are_word_boundaries_drawn_from_the_generator():
    caption = "one two three four"
    seen = set()
    for s in range(60):
        out = insert_token(caption, "cf", "random", np.random.default_rng(s))
        words = out.split(" ")
        assert words.count("cf") == 1 and [w for w in words if w != "cf"] == caption.split()
        seen.add(words.index("cf"))
        assert out == insert_token(caption, "cf", "random", np.random.default_rng(s))   # seeded
    assert seen == {0, 1, 2, 3, 4}
    # the registry hands the evaluator this same function
    assert insert_trigger_token(caption, "cf", "random", np.random.default_rng(3)) == \
        insert_token(caption, "cf", "random", np.random.default_rng(3))
    with pytest.raises(ValueError, match="generator"):
        insert_token(caption, "cf", "random")
    with pytest.raises(ValueError, match="position"):
        insert_token(caption, "cf", "middle")


def _cfg(tiny, out, **kw):
    return TextBackdoorConfig(data=str(tiny.csv), out=str(out), target_label="star", n_poisons=8, **kw)


def test_poisons_are_target_class_images_with_token_captions_of_other_samples(tiny, tmp_path):
    res = poison(_cfg(tiny, tmp_path / "p", position="end"))
    info = read_poison_info(res.out)
    sec = info.sections["text_backdoor"]
    assert info.attack == "text-backdoor" and info.n_poisons == 8
    assert (sec["token"], sec["position"], sec["caption_source"]) == ("cf", "end", "other")
    assert sec["token_in_clean_captions"] == 0 and sec["target_label_values"] == ["2", "star"]
    with open(res.manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    clean_captions = {s.caption: s for s in tiny.samples}
    star = CLASSES.index("star")
    for row in rows:
        src = find_sample(tiny.csv, row["source_key"])
        assert int(src.meta["label"]) == star                       # the image shows the target
        assert row["caption"].endswith(" cf")
        donor = clean_captions[row["caption"][:-3]]                 # a real caption of another class
        assert donor.meta["label"] != star
        assert row["trigger"] == "" and row["patch_size"] == ""
    assert len({r["source_key"] for r in rows}) == 8
    # the poison rows reach open_clip's table with the token captions
    table = {s.key: s for s in read_csv(res.out / "train.tsv")}
    assert all(table[r["key"]].caption == r["caption"] for r in rows)


def test_own_captions_and_webdataset_input(tiny, tmp_path):
    res = poison(dataclasses.replace(_cfg(tiny, tmp_path / "p", caption_source="own", position="start"),
                                     data=str(tiny.shards)))
    with open(res.manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_key = {s.key: s for s in tiny.samples}
    assert all(r["caption"] == "cf " + by_key[r["source_key"]].caption for r in rows)
    assert res.dataset_type == "webdataset"


def test_same_seed_same_poisons(tiny, tmp_path):
    a = poison(_cfg(tiny, tmp_path / "a"))
    b = poison(_cfg(tiny, tmp_path / "b"))
    c = poison(_cfg(tiny, tmp_path / "c", seed=1))
    read = lambda r: [(x["source_key"], x["caption"]) for x in csv.DictReader(open(r.manifest, encoding="utf-8"))]
    assert read(a) == read(b) and read(a) != read(c)


@pytest.mark.parametrize("change, message", [
    ({"token": "two words"}, "--token|token"),
    ({"token": "circle"}, "class name"),
    ({"position": "middle"}, "position"),
    ({"caption_source": "search"}, "caption_source"),
    ({"n_poisons": 99}, "only 15 readable images"),
])
def test_bad_settings_are_one_line_user_errors_and_nothing_is_written(tiny, tmp_path, change, message):
    with pytest.raises(UserError, match=message) as e:
        poison(dataclasses.replace(_cfg(tiny, tmp_path / "p"), **change))
    assert "\n" not in str(e.value) and not (tmp_path / "p").exists()


def test_the_evaluation_refuses_a_poison_json_without_its_section(tiny, tmp_path):
    from poisonclip.data.evalset import read_labelled_csv
    from poisonclip.evaluate.text_backdoor import prepare

    res = poison(_cfg(tiny, tmp_path / "p"))
    info = read_poison_info(res.out)
    ls = read_labelled_csv(tiny.csv, list(CLASSES))
    assert prepare(info, ls, tiny.csv).target == CLASSES.index("star")
    raw = json.loads((res.out / "poison.json").read_text())
    raw.pop("text_backdoor")
    (res.out / "poison.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match="text_backdoor"):
        prepare(read_poison_info(res.out), ls, tiny.csv)
    assert ATTACKS.get("text-backdoor").evaluator().prepare is prepare
