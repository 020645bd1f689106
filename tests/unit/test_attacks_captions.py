"""Caption sets: label matching, search over CSV and shards, templates, sizing, files."""

from __future__ import annotations

import collections

import numpy as np
import open_clip
import pytest

from poisonclip.attacks.captions import (LabelMatcher, any_label_pattern, build_caption_set, label_pattern,
                                         load_caption_set, plural_forms, save_caption_set, search_captions,
                                         size_captions, template_captions)
from poisonclip.data.caption_stream import iter_caption_batches
from poisonclip.data.csv_io import CsvFormat
from poisonclip.data.sample import SkipReport
from poisonclip.errors import UserError
from tests.attack_fixtures import CLASSES, make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("cap") / "d", n=40)


@pytest.mark.parametrize("caption,expected", [
    ("Basketball player attempts a dunk", True),
    ("a BASKETBALL.", True),
    ("basketball-hoop on a rural home", True),   # hyphen is a word boundary
    ("kid's basketball", True),
    ("hotbasketball court", False),              # inside a longer word
    ("basketballer", False),
    ("basket ball", False),
    ("basketball_2020", False),                  # underscore joins words
    ("two basketballs", True),                   # plural
])
def test_label_matches_whole_words_case_insensitively(caption, expected):
    assert LabelMatcher("basketball")(caption) is expected


def test_plurals_are_optional():
    assert LabelMatcher("star", plurals=True)("three stars")
    assert not LabelMatcher("star", plurals=False)("three stars")
    assert LabelMatcher("star", plurals=False)("one star")


def test_plural_forms_and_multiword_labels():
    assert "boxes" in plural_forms("box")
    assert "puppies" in plural_forms("puppy")
    assert "mice" in plural_forms("mouse")
    assert "golden retrievers" in plural_forms("golden retriever")
    m = LabelMatcher("golden retriever")
    assert m("Two Golden  Retrievers playing")  # any whitespace between words
    assert not m("goldenretriever")


def test_labels_with_regex_characters_are_literal():
    m = LabelMatcher("c++")
    assert m("learning c++ today")
    assert not m("learning c today")
    assert "+" in label_pattern("c++") and r"\+" in label_pattern("c++")


def test_search_finds_exactly_the_captions_naming_the_label(tiny):
    got = search_captions(tiny.csv, ["star", "moon"])
    for label in ("star", "moon"):
        want = [s.caption for s in tiny.samples if CLASSES[s.meta["label"]] == label]
        assert list(got[label].captions) == want  # first-seen order, all of them
        assert got[label].n_scanned == len(tiny.samples)
        assert got[label].n_matched == len(want)


def test_search_gives_the_same_set_on_csv_and_shards(tiny):
    a = search_captions(tiny.csv, ["square"])["square"]
    b = search_captions(tiny.shards, ["square"])["square"]
    assert a.captions == b.captions and a.n_scanned == b.n_scanned == 40


def test_search_without_plurals_misses_plural_captions(tiny):
    with_pl = search_captions(tiny.csv, ["circle"], plurals=True)["circle"]
    without = search_captions(tiny.csv, ["circle"], plurals=False)["circle"]
    assert set(without.captions) < set(with_pl.captions)
    assert all("circles" in c for c in set(with_pl.captions) - set(without.captions))


def test_search_streams_in_batches(tiny):
    batches = list(iter_caption_batches(tiny.shards, batch_size=7))
    assert [len(b) for b in batches] == [7, 7, 6] * 2  # per 20-sample shard, at most 7 at a time
    assert [c for b in batches for c in b.to_pylist()] == [s.caption for s in tiny.samples]


def test_search_dedups_repeated_captions_and_counts_matches(tmp_path):
    table = tmp_path / "t.tsv"
    rows = ["filepath\ttitle", "a.png\ta moon", "b.png\ta moon", "c.png\t\"a moon\tat\nnight\"",
            "d.png\t", "e.png\tno match"]
    table.write_text("\n".join(rows) + "\n")
    report = SkipReport()
    cs = search_captions(table, ["moon"], report=report)["moon"]
    assert cs.captions == ("a moon", "a moon\tat\nnight")  # quoted tab/newline kept
    assert cs.n_matched == 3 and cs.n_scanned == 4
    assert report["missing_caption"] == 1


OVERLAPPING = ["golden retriever", "retriever", "car", "cars", "c++", "t-shirt", "dog"]


def test_one_pass_over_many_labels_finds_what_separate_searches_find(tmp_path):
    """The one-scan search (every label in one pattern, rows sorted afterwards) must give each
    label exactly the captions, order and counts of a search for that label alone."""
    caps = ["two Golden  Retrievers", "a retriever", "cars and a car", "a carpet", "learn c++ now",
            "red T-Shirt", "t-shirts", "hotdog", "a dog", "a dog", "DOGS!", "nothing here", "scar", "",
            "a retriever and a dog"]
    table = tmp_path / "t.tsv"
    table.write_text("filepath\ttitle\n" + "".join(f"{i}.png\t{c}\n" for i, c in enumerate(caps)))
    together = search_captions(table, OVERLAPPING)
    for label in OVERLAPPING:
        alone = search_captions(table, [label])[label]
        assert together[label] == alone, label
    assert together["dog"].captions == ("a dog", "DOGS!", "a retriever and a dog")
    assert together["dog"].n_matched == 4


@pytest.mark.parametrize("caption", ["a dog", "hotdog", "Golden\tretriever", "cars", "c++ code", "a carpet", ""])
def test_the_combined_pattern_matches_when_any_label_does(caption):
    import pyarrow as pa
    import pyarrow.compute as pc

    def hit(pattern: str) -> bool:
        return bool(pc.match_substring_regex(pa.array([caption]), pattern=pattern, ignore_case=True)[0].as_py())

    assert hit(any_label_pattern(OVERLAPPING)) == any(hit(label_pattern(lab)) for lab in OVERLAPPING)


def test_label_in_no_caption_is_a_user_error_with_the_count(tiny):
    cs = search_captions(tiny.csv, ["zebra"])["zebra"]
    with pytest.raises(UserError, match=r"'zebra' appears in none of the 40 captions"):
        cs.require_nonempty()


def test_templates_are_open_clips_80_prompts():
    cs = template_captions("basketball")
    assert len(cs) == 80 == len(open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert cs.captions == tuple(t("basketball") for t in open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert cs.source == "templates"


def test_builders_are_found_by_name(tiny):
    assert build_caption_set("templates", "moon").captions == template_captions("moon").captions
    searched = search_captions(tiny.csv, ["moon"])["moon"]
    assert build_caption_set("search", "moon", tiny.csv).captions == searched.captions


def test_sizing_takes_a_subset_without_replacement_when_the_set_is_large():
    caps = [f"c{i}" for i in range(50)]
    got = size_captions(caps, 20, np.random.default_rng(0))
    assert len(got) == 20 and len(set(got)) == 20 and set(got) <= set(caps)
    assert got == size_captions(caps, 20, np.random.default_rng(0))
    assert got != size_captions(caps, 20, np.random.default_rng(1))


def test_sizing_repeats_only_when_the_set_is_small():
    caps = [f"c{i}" for i in range(80)]
    got = size_captions(caps, 200, np.random.default_rng(0))
    counts = collections.Counter(got)
    assert len(got) == 200 and set(counts) == set(caps)
    assert sorted(set(counts.values())) == [2, 3] and sum(v == 3 for v in counts.values()) == 40


def test_sizing_rejects_non_positive_counts():
    with pytest.raises(UserError, match="must be positive"):
        size_captions(["a"], 0, np.random.default_rng(0))


def test_caption_set_file_round_trip(tiny, tmp_path):
    cs = search_captions(tiny.csv, ["moon"])["moon"]
    back = load_caption_set(save_caption_set(cs, tmp_path / "moon.json"))
    assert back == cs


def test_caption_file_that_is_not_ours_is_a_user_error(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"captions": ["a"]}')
    with pytest.raises(UserError, match="not a poisonclip caption set"):
        load_caption_set(p)


def test_custom_columns(tmp_path):
    t = tmp_path / "c.csv"
    t.write_text("img,text\na.png,the moon tonight\nb.png,sun\n")
    cs = search_captions(t, ["moon"], fmt=CsvFormat(img_key="img", caption_key="text"))["moon"]
    assert cs.captions == ("the moon tonight",)
    with pytest.raises(UserError, match="missing column"):
        search_captions(t, ["moon"])



def test_caption_that_is_not_utf8_costs_its_row_not_the_table(tmp_path):
    t = tmp_path / "bad.tsv"
    t.write_bytes(b"filepath\ttitle\na.png\tgood moon\nb.png\tbad \xff moon\nc.png\ta moon again\n")
    report = SkipReport()
    cs = search_captions(t, ["moon"], report=report)["moon"]
    assert cs.captions == ("good moon", "a moon again") and cs.n_scanned == 2
    assert report == {"caption_not_utf8": 1}


def test_header_that_is_not_utf8_is_a_user_error(tmp_path):
    t = tmp_path / "bad.tsv"
    t.write_bytes(b"file\xffpath\ttitle\na.png\tgood moon\n")
    with pytest.raises(UserError, match="not UTF-8"):
        search_captions(t, ["moon"])
