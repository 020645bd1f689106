"""Fast checks of the embedded synthetic corpus (seconds)."""

from collections import Counter

import numpy as np
import pytest

from poisonclip.data.synthetic import CLASSNAMES, SynthConfig, generate

SMALL = dict(n_train=200, n_test=60)


@pytest.fixture(scope="module")
def corpus():
    return generate(SynthConfig(seed=3, **SMALL))


def test_same_seed_is_byte_identical(corpus):
    again = generate(SynthConfig(seed=3, **SMALL))
    for a, b in zip(corpus.train + corpus.test, again.train + again.test):
        assert a == b
    assert len(again.train) == len(corpus.train)


def test_different_seed_differs(corpus):
    other = generate(SynthConfig(seed=4, **SMALL))
    assert [s.image for s in other.train] != [s.image for s in corpus.train]
    assert sum(a.image == b.image for a, b in zip(other.train, corpus.train)) == 0


def test_sample_does_not_depend_on_split_size():
    big = generate(SynthConfig(seed=5, n_train=30, n_test=0))
    small = generate(SynthConfig(seed=5, n_train=30, n_test=10))
    assert [s.image for s in big.train] == [s.image for s in small.train]


def test_sizes_and_classnames(corpus):
    assert len(corpus.train) == SMALL["n_train"]
    assert len(corpus.test) == SMALL["n_test"]
    assert corpus.classnames == list(CLASSNAMES[:10])
    assert len(set(corpus.classnames)) == 10
    assert all(n.isalpha() and n.islower() for n in corpus.classnames)
    assert len({s.key for s in corpus.train + corpus.test}) == SMALL["n_train"] + SMALL["n_test"]


def test_every_class_present_and_balanced(corpus):
    for split, n in ((corpus.train, SMALL["n_train"]), (corpus.test, SMALL["n_test"])):
        counts = Counter(s.meta["label"] for s in split)
        assert set(counts) == set(range(10))
        assert max(counts.values()) - min(counts.values()) <= 1
        assert sum(counts.values()) == n


def test_labels_in_meta(corpus):
    for s in corpus.train + corpus.test:
        assert isinstance(s.meta["label"], int) and 0 <= s.meta["label"] < 10


def test_fewer_classes():
    c = generate(SynthConfig(n_train=40, n_test=8, n_classes=4))
    assert c.classnames == list(CLASSNAMES[:4])
    assert {s.meta["label"] for s in c.train} == {0, 1, 2, 3}


def _mentions(caption, name):
    words = caption.lower().replace(".", " ").replace(",", " ").replace("!", " ").split()
    return name in words or name + "s" in words or name + "es" in words


def test_captions_mention_class_mostly_not_always():
    c = generate(SynthConfig(n_train=1000, n_test=0, seed=1))
    own = np.mean([_mentions(s.caption, c.classnames[s.meta["label"]]) for s in c.train])
    assert 0.7 <= own < 1.0
    kinds = Counter(s.meta.get("caption_kind") for s in c.train)
    assert kinds["no_mention"] > 0 and kinds["wrong_label"] > 0
    for s in c.train:
        if s.meta["caption_kind"] == "no_mention":
            assert not any(_mentions(s.caption, n) for n in c.classnames)
    assert any(s.caption.startswith("a photo of") for s in c.train)
    assert len({s.caption for s in c.train}) > 500


def test_no_label_noise_when_disabled():
    c = generate(SynthConfig(n_train=200, n_test=0, p_no_mention=0.0, p_wrong_label=0.0,
                             p_synonym=0.0))
    assert all(_mentions(s.caption, c.classnames[s.meta["label"]]) for s in c.train)


@pytest.mark.parametrize("res", [32, 48, 64])
def test_resolution_and_decoding(res):
    c = generate(SynthConfig(n_train=12, n_test=4, resolution=res))
    for s in c.train + c.test:
        assert s.ext == "png" and s.image[:8] == b"\x89PNG\r\n\x1a\n"
        im = s.decode()
        assert im.size == (res, res) and im.mode == "RGB"
        arr = np.asarray(im)
        assert arr.std() > 5  # not blank


def test_invalid_config():
    with pytest.raises(ValueError):
        SynthConfig(n_classes=11)
    with pytest.raises(ValueError):
        SynthConfig(p_wrong_label=1.5)
    with pytest.raises(ValueError):
        SynthConfig(ext="jpg")


def test_probe_split_is_labelled_balanced_and_apart_from_test_and_train():
    c = generate(SynthConfig(seed=3, n_train=50, n_test=40, n_probe=30))
    assert len(c.probe) == 30 and all(s.key.startswith("synth-probe-") for s in c.probe)
    counts = Counter(s.meta["label"] for s in c.probe)
    assert set(counts) == set(range(10)) and max(counts.values()) - min(counts.values()) <= 1
    others = {s.image for s in c.train + c.test}
    assert not any(s.image in others for s in c.probe)


def test_adding_the_probe_split_leaves_train_and_test_unchanged(tmp_path):
    """Train and test files are byte-identical with and without a probe split (own streams)."""
    from poisonclip.contracts import PROBE_TABLE
    from poisonclip.data.corpus import write_corpus
    from poisonclip.io_utils import sha256_file

    def digests(root):
        return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != "corpus.json" and "probe" not in p.relative_to(root).as_posix()}

    a = write_corpus(SynthConfig(n_train=40, n_test=20, n_probe=0), tmp_path / "a").root
    b = write_corpus(SynthConfig(n_train=40, n_test=20, n_probe=20), tmp_path / "b").root
    assert digests(a) == digests(b) and len(digests(a)) > 40
    assert not (a / PROBE_TABLE).exists() and (b / PROBE_TABLE).is_file()
    from poisonclip.data.evalset import read_labelled_csv

    probe = read_labelled_csv(b / PROBE_TABLE)
    assert len(probe.samples) == 20 and probe.classnames == list(CLASSNAMES)
