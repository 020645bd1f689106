"""Fast checks of the embedded synthetic corpus (seconds)."""

import csv
import os
import re
from collections import Counter

import numpy as np
import pytest

from poisonclip.attacks.captions import LabelMatcher, openai_templates
from poisonclip.data.synthetic import CLASSNAMES, PATTERNS, SCENES, SynthConfig, generate

SMALL = dict(n_train=200, n_test=60, n_probe=30)
K = len(CLASSNAMES)


@pytest.fixture(scope="module")
def corpus():
    return generate(SynthConfig(seed=3, **SMALL))


@pytest.fixture(scope="module")
def big():
    """Enough training captions to see every kind of noise and attribute."""
    return generate(SynthConfig(seed=1, n_train=1500, n_test=0, n_probe=0))


def test_same_seed_is_byte_identical(corpus):
    again = generate(SynthConfig(seed=3, **SMALL))
    for a, b in zip(corpus.train + corpus.test + corpus.probe, again.train + again.test + again.probe):
        assert a == b
    assert len(again.train) == len(corpus.train) and len(again.probe) == len(corpus.probe)


def test_different_seed_differs(corpus):
    other = generate(SynthConfig(seed=4, **SMALL))
    assert [s.image for s in other.train] != [s.image for s in corpus.train]
    assert sum(a.image == b.image for a, b in zip(other.train, corpus.train)) == 0
    assert sum(a.caption == b.caption for a, b in zip(other.train, corpus.train)) < len(corpus.train) / 4


def test_another_config_field_changes_the_corpus(corpus):
    other = generate(SynthConfig(seed=3, p_name_color=0.0, **SMALL))
    assert [s.image for s in other.train] == [s.image for s in corpus.train]  # captions only
    assert [s.caption for s in other.train] != [s.caption for s in corpus.train]


def test_sample_does_not_depend_on_split_size():
    big = generate(SynthConfig(seed=5, n_train=30, n_test=0, n_probe=0))
    small = generate(SynthConfig(seed=5, n_train=30, n_test=10, n_probe=0))
    assert [s.image for s in big.train] == [s.image for s in small.train]


def test_sizes_and_classnames(corpus):
    assert len(corpus.train) == SMALL["n_train"]
    assert len(corpus.test) == SMALL["n_test"]
    assert corpus.classnames == list(CLASSNAMES) and len(CLASSNAMES) >= 20
    assert len(set(corpus.classnames)) == K
    assert {"star", "circle"} <= set(corpus.classnames)  # the demo's and the CI sweep's targets
    assert all(n.isalpha() and n.islower() for n in corpus.classnames)
    assert len({s.key for s in corpus.train + corpus.test}) == SMALL["n_train"] + SMALL["n_test"]


def test_class_names_are_one_token_each():
    """Zero-shot with CLIP's templates then needs one learned word per class."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    assert {n: len(tok.encode(n)) for n in CLASSNAMES} == {n: 1 for n in CLASSNAMES}


def test_every_class_present_and_balanced(corpus):
    for split, n in ((corpus.train, SMALL["n_train"]), (corpus.test, SMALL["n_test"])):
        counts = Counter(s.meta["label"] for s in split)
        assert set(counts) == set(range(K))
        assert max(counts.values()) - min(counts.values()) <= 1
        assert sum(counts.values()) == n


def test_labels_in_meta(corpus):
    for s in corpus.train + corpus.test:
        assert isinstance(s.meta["label"], int) and 0 <= s.meta["label"] < K


def test_fewer_classes():
    c = generate(SynthConfig(n_train=40, n_test=8, n_probe=0, n_classes=4))
    assert c.classnames == list(CLASSNAMES[:4])
    assert {s.meta["label"] for s in c.train} == {0, 1, 2, 3}
    wrong = [s for s in c.train if s.meta["caption_kind"] in ("wrong_label", "extra_object")]
    assert not any(LabelMatcher(n)(s.caption) for s in wrong for n in CLASSNAMES[4:])


def test_the_world_varies_over_every_attribute(big):
    metas = [s.meta for s in big.train]
    assert {m["scene"] for m in metas} == set(SCENES)
    assert {m["pattern"] for m in metas} == set(PATTERNS)
    assert {m["count"] for m in metas} == {1, 2, 3}
    assert {m["size"] for m in metas} == {"small", "medium", "large"}
    assert len({m["color"] for m in metas}) == 12
    # The demo's objects fill most of the frame, so their centres seldom reach the corner
    # thirds; smaller objects go everywhere (the next test).
    assert len({m["position"] for m in metas}) >= 5


def test_smaller_objects_take_every_position():
    c = generate(SynthConfig(seed=1, n_train=300, n_test=0, n_probe=0, min_scale=0.3, max_scale=0.5))
    assert len({s.meta["position"] for s in c.train}) == 9


def test_objects_appear_anywhere_the_corner_included(big):
    """Nothing keeps objects away from the upper-left corner, where the backdoor patch goes."""
    boxes = [s.meta["bbox"] for s in big.train]
    in_corner = [b for b in boxes if b[0] <= 2 and b[1] <= 2]
    assert len(in_corner) >= 10
    for s in big.train[:50]:
        x0, y0, x1, y1 = s.meta["bbox"]
        w, h = s.decode().size
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def _template_patterns():
    """Every open_clip prompt template (and the project's own list) as a pattern that matches
    it filled with anything."""
    import open_clip.zero_shot_metadata as zsm

    texts = {t("{}") for t in (*openai_templates(), *zsm.OPENAI_IMAGENET_TEMPLATES, *zsm.SIMPLE_IMAGENET_TEMPLATES)}
    assert len(texts) >= 80  # SIMPLE_IMAGENET_TEMPLATES is a subset of the 80
    return [re.compile(re.escape(t).replace(re.escape("{}"), ".+") + "$") for t in sorted(texts)]


def _norm(text):
    return " ".join(text.lower().split())


def test_the_template_check_catches_a_filled_template():
    pats = _template_patterns()
    assert any(p.match(_norm("A photo of a  small red star.")) for p in pats)
    assert any(p.match(_norm("itap of a circle.")) for p in pats)
    assert not any(p.match(_norm("a small red star on the beach")) for p in pats)


@pytest.mark.parametrize("knobs", [{}, dict(p_name_color=1.0, p_name_size=1.0, p_name_pattern=1.0,
                                            p_name_position=1.0, p_name_scene=1.0, p_typo=0.3,
                                            p_no_mention=0.2, p_wrong_label=0.2, p_extra_object=0.2)])
def test_no_caption_is_a_filled_clip_template(big, knobs):
    """The corpus' captions are its own: none is a zero-shot prompt filled with anything (the
    backdoor's caption search would otherwise return the evaluator's prompts)."""
    caps = [s.caption for s in big.train] if not knobs else [
        s.caption for s in generate(SynthConfig(seed=2, n_train=800, n_test=0, n_probe=0, **knobs)).train]
    pats = _template_patterns()
    bad = [c for c in caps if any(p.match(_norm(c)) for p in pats)]
    assert bad == []
    named = {_norm(t(n)) for t in openai_templates() for n in CLASSNAMES}
    assert not named & {_norm(c) for c in caps}


def test_captions_name_the_object_mostly_with_every_kind_of_noise(big):
    names = big.classnames
    caps = [s.caption for s in big.train]
    hits = {n: LabelMatcher(n).mask(caps) for n in names}  # one pass per class
    own = np.array([hits[names[s.meta["label"]]][i] for i, s in enumerate(big.train)])
    assert 0.7 <= own.mean() < 0.97
    kinds = Counter(s.meta["caption_kind"] for s in big.train)
    assert set(kinds) == {"correct", "no_mention", "wrong_label", "extra_object", "typo"}
    assert kinds["correct"] > 0.7 * len(big.train)
    for i, (s, named) in enumerate(zip(big.train, own)):
        kind, true = s.meta["caption_kind"], names[s.meta["label"]]
        others = [n for n in names if n != true and hits[n][i]]
        if kind == "no_mention":
            assert not named and not others, s.caption
        elif kind in ("wrong_label", "typo"):
            assert not named, s.caption
        elif kind == "extra_object":
            assert named and others, s.caption
    assert any(s.meta["typo"] and s.meta["caption_kind"] == "correct" for s in big.train)
    assert len({s.caption for s in big.train}) > 0.9 * len(big.train)


def test_captions_describe_the_image(big):
    """Named attributes are the drawn ones: the colour word of a caption that names one is
    the object's colour, a scene phrase is the image's scene, a count is the image's count."""
    c = generate(SynthConfig(seed=4, n_train=300, n_test=0, n_probe=0, p_name_color=1.0, p_name_scene=1.0,
                             p_no_mention=0.0, p_wrong_label=0.0, p_extra_object=0.0, p_typo=0.0))
    for s in c.train:
        words = re.findall(r"[a-z]+", s.caption.lower())
        assert s.meta["color"] in words, s.caption
        if s.meta["count"] == 1:
            assert not {"two", "three", "pair", "couple", "several"} & set(words), s.caption
    # Words only one scene's phrases use (frames without a place name no scene at all).
    scene_words = {"beach": r"beach|sea|sand|seaside", "snow": r"snow|snowy", "night": r"night",
                   "brick": r"brick|bricks", "grass": r"grass|field|meadow|lawn", "water": r"water|lake",
                   "paper": r"paper|notebook", "wood": r"wood|wooden", "studio": r"studio"}
    named = 0
    for s in c.train:
        scenes = {k for k, pat in scene_words.items() if re.search(rf"\b({pat})\b", s.caption.lower())}
        assert scenes <= {s.meta["scene"]}, s.caption
        named += bool(scenes)
    assert named > 0.2 * len(c.train)


def test_no_label_noise_when_disabled():
    c = generate(SynthConfig(n_train=200, n_test=0, n_probe=0, p_no_mention=0.0, p_wrong_label=0.0, p_extra_object=0.0,
                             p_synonym=0.0, p_typo=0.0))
    caps = [s.caption for s in c.train]
    hits = {n: LabelMatcher(n).mask(caps) for n in c.classnames}
    assert all(hits[c.classnames[s.meta["label"]]][i] for i, s in enumerate(c.train))
    assert {s.meta["caption_kind"] for s in c.train} == {"correct"}


@pytest.mark.parametrize("res", [32, 48])
def test_training_images_are_of_several_non_square_sizes_and_test_images_square(res):
    c = generate(SynthConfig(n_train=80, n_test=8, n_probe=8, resolution=res))
    sizes = [s.decode().size for s in c.train]
    assert all(round(0.75 * res) <= side <= round(1.5 * res) for wh in sizes for side in wh)
    assert len(set(sizes)) >= 20 and sum(w != h for w, h in sizes) > 0.8 * len(sizes)
    for s in c.train + c.test + c.probe:
        assert s.ext == "png" and s.image[:8] == b"\x89PNG\r\n\x1a\n"
        im = s.decode()
        assert im.mode == "RGB" and np.asarray(im).std() > 5  # not blank
    assert {s.decode().size for s in c.test + c.probe} == {(res, res)}


def test_square_training_images_when_asked():
    c = generate(SynthConfig(n_train=10, n_test=0, n_probe=0, train_min_side=1.0, train_max_side=1.0))
    assert {s.decode().size for s in c.train} == {(32, 32)}


def test_invalid_config():
    with pytest.raises(ValueError):
        SynthConfig(n_classes=K + 1)
    with pytest.raises(ValueError):
        SynthConfig(p_wrong_label=1.5)
    with pytest.raises(ValueError):
        SynthConfig(p_no_mention=0.5, p_wrong_label=0.3, p_extra_object=0.3)
    with pytest.raises(ValueError):
        SynthConfig(train_min_side=1.5, train_max_side=1.0)
    with pytest.raises(ValueError):
        SynthConfig(ext="jpg")


def test_probe_split_is_labelled_balanced_and_apart_from_test_and_train():
    c = generate(SynthConfig(seed=3, n_train=50, n_test=40, n_probe=30))
    assert len(c.probe) == 30 and all(s.key.startswith("synth-probe-") for s in c.probe)
    counts = Counter(s.meta["label"] for s in c.probe)
    assert set(counts) == set(range(K)) and max(counts.values()) - min(counts.values()) <= 1
    others = {s.image for s in c.train + c.test}
    assert not any(s.image in others for s in c.probe)


def _digests(root, skip=lambda rel: False):
    """sha256 of every file; tables with the corpus' own folder written as ROOT (their image
    paths are absolute)."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or skip(rel):
            continue
        data = p.read_bytes()
        if p.suffix == ".tsv":
            data = data.replace(str(root).encode(), b"ROOT")
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def test_adding_the_probe_split_leaves_train_and_test_unchanged(tmp_path):
    """Train and test files are byte-identical with and without a probe split (own streams)."""
    from poisonclip.contracts import PROBE_TABLE as PROBE_CSV
    from poisonclip.data.corpus import write_corpus
    from poisonclip.data.evalset import read_labelled_csv

    def skip(rel):
        return rel == "corpus.json" or "probe" in rel

    a = write_corpus(SynthConfig(n_train=40, n_test=20, n_probe=0), tmp_path / "a").root
    b = write_corpus(SynthConfig(n_train=40, n_test=20, n_probe=20), tmp_path / "b").root
    assert _digests(a, skip) == _digests(b, skip) and len(_digests(a, skip)) > 40
    assert not (a / PROBE_CSV).exists() and (b / PROBE_CSV).is_file()
    probe = read_labelled_csv(b / PROBE_CSV)
    assert len(probe.samples) == 20 and probe.classnames == list(CLASSNAMES)


def test_tables_hold_absolute_paths_that_resolve_from_any_directory(tmp_path, monkeypatch):
    """open_clip_train opens a CSV's image paths relative to its working directory, so the
    corpus' tables name each image by its absolute path in the final folder."""
    from poisonclip.data.corpus import write_corpus

    monkeypatch.chdir(tmp_path)
    write_corpus(SynthConfig(n_train=12, n_test=6, n_probe=6), "c", formats=("csv",))  # relative out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for table in ("train.tsv", "test.tsv", "probe.tsv"):
        with open(tmp_path / "c" / table, newline="", encoding="utf-8") as f:
            paths = [row["filepath"] for row in csv.DictReader(f, delimiter="\t")]
        assert len(paths) in (12, 6)
        assert all(os.path.isabs(p) and p.startswith(str(tmp_path / "c") + os.sep) for p in paths)
        assert all(os.path.isfile(p) for p in paths)  # not in the hidden folder it was written in
    before = _digests(tmp_path / "c")
    write_corpus(SynthConfig(n_train=12, n_test=6, n_probe=6), tmp_path / "c", formats=("csv",), overwrite=True)
    assert (tmp_path / "c" / "train.tsv").read_bytes().count(str(tmp_path / "c").encode()) == 12
    assert _digests(tmp_path / "c") == before  # regenerated in place: byte-identical files
