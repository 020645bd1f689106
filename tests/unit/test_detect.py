"""`poisonclip detect` on small real poisoned sets: each detector against the manifest, the
evasion's effect on de-duplication, the scoring, the hand-off files and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from poisonclip import contracts as C
from poisonclip.attacks.api import BackdoorConfig, TargetedConfig, TargetSpec, poison
from poisonclip.attacks.manifest import read_manifest
from poisonclip.cli import app
from poisonclip.data.sample import Sample
from poisonclip.detect.api import DetectConfig, detect, load_data
from poisonclip.detect.registry import DetectInput, detectors, get_detector
from poisonclip.detect.scoring import flagged_at, score_detector
from poisonclip.errors import SettingError, UserError
from tests.attack_fixtures import make_tiny
from tests.cli_errors import one_line_error

NO_MODEL = ("exact-bytes", "exact-pixels", "phash", "caption-agreement")
N_CLEAN, COPIES = 80, 6


def _targets(root: Path) -> tuple[TargetSpec, ...]:
    specs = []
    for j, label in enumerate(("moon", "star")):
        t = root / f"target{j}.png"
        Image.fromarray(np.random.default_rng(50 + j).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(t)
        specs.append(TargetSpec(str(t), label, COPIES))
    return tuple(specs)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same targeted attack on the same clean data, without and with the evasion, as a
    table and as shards."""
    root = tmp_path_factory.mktemp("detect")
    tiny = make_tiny(root / "clean", n=N_CLEAN)
    specs = _targets(root)
    out = {}
    for name, kw in (("plain", {}), ("evasion", {"noise_sigma": 1.0, "perturb_captions": True})):
        out[name] = Path(poison(TargetedConfig(data=str(tiny.csv), out=str(root / name), targets=specs,
                                               **kw)).out)
    out["shards"] = Path(poison(TargetedConfig(data=str(tiny.shards), out=str(root / "shards"),
                                               targets=specs, noise_sigma=1.0)).out)
    out["clean_table"] = tiny.csv
    out["backdoor"] = Path(poison(BackdoorConfig(data=str(tiny.csv), out=str(root / "backdoor"), target_label="moon",
                                                 n_poisons=8, patch_size=32)).out)
    out["backdoor_evasion"] = Path(poison(BackdoorConfig(
        data=str(tiny.csv), out=str(root / "backdoor_evasion"), target_label="moon", n_poisons=8, patch_size=32,
        placement="random", noise_sigma=4.0, perturb_captions=True)).out)
    return out


@pytest.fixture(scope="module")
def scored(sets, tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    return {name: detect(DetectConfig(data=sets[name], out=root / name, methods=NO_MODEL))
            for name in ("plain", "evasion")}


def test_every_detector_finds_targeted_poisons_without_evasion(scored, sets):
    s = scored["plain"].summary
    assert s.n_samples == N_CLEAN + 2 * COPIES and s.manifest == str(sets["plain"] / C.MANIFEST_FILE)
    for m in NO_MODEL:
        sc = s.scoring[m]
        assert sc.n_poisons == 2 * COPIES and sc.n_clean == N_CLEAN
        assert sc.auroc >= 0.9, (m, sc.auroc)
        at5 = sc.flagged[1]
        assert at5.fraction == 0.05 and at5.recall >= 0.9 and at5.clean_removed <= 1, (m, at5)


def test_the_evasion_defeats_exact_deduplication_but_not_perceptual_hashes(scored):
    s = scored["evasion"].summary
    for m in ("exact-bytes", "exact-pixels"):
        assert abs(s.scoring[m].auroc - 0.5) < 0.05, (m, s.scoring[m].auroc)
        assert set(scored["evasion"].scores.scores[m]) == {0.0}   # no two images alike any more
    for m in ("phash", "caption-agreement"):   # faint noise barely moves a DCT hash
        assert s.scoring[m].auroc >= 0.9, (m, s.scoring[m].auroc)


def test_scores_are_keyed_like_the_data_and_poisons_score_highest(scored, sets):
    res = scored["plain"]
    poisons = {r.key for r in read_manifest(sets["plain"])}
    table = C.read_detection_scores(res.out)
    assert table == res.scores
    assert set(table.keys) == set(load_data(sets["plain"]).keys) and poisons <= set(table.keys)
    col = dict(zip(table.keys, table.scores["exact-bytes"]))
    assert {col[k] for k in poisons} == {COPIES - 1.0}   # each copy has COPIES - 1 twins
    assert max(v for k, v in col.items() if k not in poisons) == 0.0


def test_detectors_see_contents_only(scored, sets):
    """The same contents in another order under other keys get the same scores, sample by sample."""
    data = load_data(sets["evasion"])
    order = np.random.default_rng(0).permutation(len(data.keys))
    shuffled = DetectInput([data.inputs.images[i] for i in order], [data.inputs.captions[i] for i in order])
    for m in NO_MODEL:
        want = np.asarray(scored["evasion"].scores.scores[m])[order]
        assert np.array_equal(get_detector(m).run(shuffled), want), m


def test_a_poisoned_webdataset_is_read_through_its_poison_json(sets, tmp_path):
    res = detect(DetectConfig(data=sets["shards"], out=tmp_path / "d", methods=("phash", "exact-bytes")))
    assert res.summary.n_samples == N_CLEAN + 2 * COPIES
    assert res.summary.scoring["phash"].auroc >= 0.9
    assert abs(res.summary.scoring["exact-bytes"].auroc - 0.5) < 0.05


@pytest.mark.parametrize("which", ["backdoor", "backdoor_evasion"])
def test_shared_patch_finds_a_backdoor_trigger_it_does_not_know(sets, tmp_path, which):
    """The poisons are different images (no duplicate detector sees them) sharing one patch."""
    res = detect(DetectConfig(data=sets[which], out=tmp_path / "d", methods=("shared-patch", "exact-pixels")))
    sc = res.summary.scoring["shared-patch"]
    assert sc.n_poisons == 8 and sc.auroc >= 0.9, sc.auroc
    assert sc.flagged[1].recall == 1.0 and sc.flagged[1].clean_removed == 0
    assert abs(res.summary.scoring["exact-pixels"].auroc - 0.5) < 0.05
    data = load_data(sets[which])   # contents only: another order gives the same scores, sample by sample
    order = np.random.default_rng(1).permutation(len(data.keys))
    shuffled = DetectInput([data.inputs.images[i] for i in order], [data.inputs.captions[i] for i in order])
    assert np.array_equal(get_detector("shared-patch").run(shuffled),
                          np.asarray(res.scores.scores["shared-patch"])[order])


def test_caption_agreement_needs_captions_that_agree():
    """One image many times with captions about different things is a duplicate, not the attack."""
    rng = np.random.default_rng(3)
    img = Sample.from_pil("x", Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "").image
    others = [Sample.from_pil("y", Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "").image
              for _ in range(10)]
    agree = ["a photo of a moon", "the moon at night", "two moons", "moon, hd wallpaper"]
    differ = ["a red car", "my dog", "sunset over the sea", "a bowl of soup"]
    filler = [f"a thing number {i}" for i in range(10)]
    det = get_detector("caption-agreement")
    s_agree = det.run(DetectInput([img] * 4 + others, agree + filler))
    s_differ = det.run(DetectInput([img] * 4 + others, differ + filler))
    assert list(s_agree[:4]) == [3.0] * 4 and not s_agree[4:].any()
    assert not s_differ.any()
    assert list(get_detector("phash").run(DetectInput([img] * 4 + others, differ + filler))[:4]) == [3.0] * 4


def test_scoring_counts_what_a_threshold_throws_away():
    scores = np.array([5.0, 5.0, 4.0, 4.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    poison = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    f = flagged_at(scores, poison, 0.3)   # the 3rd highest score is 4: four samples reach it
    assert (f.n_flagged, f.threshold, f.poisons_found, f.clean_removed) == (4, 4.0, 3, 1)
    assert f.recall == 1.0 and f.precision == 0.75
    sc = score_detector(scores, poison)
    from sklearn.metrics import roc_auc_score

    assert sc.auroc == pytest.approx(roc_auc_score(poison, scores)) and 0.5 < sc.auroc < 1.0
    assert len(sc.precision) == len(sc.recall) == len(sc.thresholds) + 1
    assert score_detector(scores, np.zeros(10, bool)).auroc is None   # undefined without poisons


def test_without_a_manifest_scores_are_written_but_not_measured(sets, tmp_path):
    res = detect(DetectConfig(data=sets["clean_table"], out=tmp_path / "d", methods=("exact-bytes",)))
    assert res.summary.manifest is None and res.summary.scoring == {}
    assert len(C.read_detection_scores(tmp_path / "d").keys) == N_CLEAN
    none = detect(DetectConfig(data=sets["plain"], out=tmp_path / "e", methods=("exact-bytes",), manifest="none"))
    assert none.summary.scoring == {}


def test_detection_files_round_trip_and_refuse_foreign_ones(scored, tmp_path):
    s = C.read_detection_summary(scored["plain"].out)
    assert s == scored["plain"].summary and s.path == scored["plain"].out / C.DETECT_INFO_FILE
    table = C.DetectionScores(("a\tb", 'q"x', "plain"), {"m": (1.5, -2.0, 0.0), "n": (0.0, 1e-9, 3.0)})
    C.write_detection_scores(tmp_path, table)
    assert C.read_detection_scores(tmp_path) == table
    (tmp_path / C.DETECT_INFO_FILE).write_text(json.dumps({"model": "x", "checkpoint": "y"}))
    with pytest.raises(UserError, match="not a poisonclip detection summary"):
        C.read_detection_summary(tmp_path)
    newer = {**s.to_json(), "schema_version": C.SCHEMA_VERSION + 1}
    (tmp_path / C.DETECT_INFO_FILE).write_text(json.dumps(newer))
    with pytest.raises(UserError, match="newer poisonclip"):
        C.read_detection_summary(tmp_path)
    (tmp_path / C.DETECT_SCORES_FILE).write_text("key\tm\nk1\tnope\n")
    with pytest.raises(UserError, match="column 'm'"):
        C.read_detection_scores(tmp_path)


def test_model_detectors_ask_for_a_model_and_unknown_names_are_refused(sets, tmp_path):
    assert {"embedding-neighbours", "image-caption-similarity"} <= {n for n, d in detectors().items()
                                                                     if d.needs_model}
    with pytest.raises(SettingError, match="model"):
        detect(DetectConfig(data=sets["plain"], out=tmp_path / "d", methods=("embedding-neighbours",)))
    with pytest.raises(SettingError, match="unknown detector 'md5'"):
        detect(DetectConfig(data=sets["plain"], out=tmp_path / "d", methods=("md5",)))
    assert not (tmp_path / "d").exists()


runner = CliRunner()


def test_cli_writes_the_folder_and_refuses_mistakes_in_one_line(sets, tmp_path):
    out = tmp_path / "det"
    r = runner.invoke(app, ["detect", str(sets["evasion"]), "--method", "exact-bytes", "--method", "phash",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "phash" in r.output and C.read_detection_summary(out).methods == ("exact-bytes", "phash")
    with Image.open(out / f"{C.DETECT_PR_FIGURE}.png") as fig:   # the curves, as a figure beside detect.json
        assert fig.format == "PNG" and min(fig.size) > 100
    one_line_error(runner.invoke(app, ["detect", str(sets["plain"]), "--method", "phash", "--out", str(out)]),
                    "--out", "--overwrite")
    one_line_error(runner.invoke(app, ["detect", str(sets["plain"]), "--method", "sha1", "--out",
                                        str(tmp_path / "x")]), "--method", "sha1")
    one_line_error(runner.invoke(app, ["detect", str(sets["plain"]), "--method", "embedding-neighbours",
                                        "--out", str(tmp_path / "x")]), "--model")
    one_line_error(runner.invoke(app, ["detect", str(sets["plain"]), "--method", "phash", "--manifest",
                                        str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")]), "--manifest")
    one_line_error(runner.invoke(app, ["detect", str(tmp_path / "missing.tsv"), "--method", "phash",
                                        "--out", str(tmp_path / "x")]), "missing.tsv")
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_only_an_earlier_detection(sets, tmp_path):
    out = tmp_path / "det"
    args = ["detect", str(sets["plain"]), "--method", "exact-bytes", "--out", str(out), "--overwrite"]
    assert runner.invoke(app, args).exit_code == 0
    r = runner.invoke(app, [*args[:3], "phash", *args[4:]])
    assert r.exit_code == 0, r.output
    assert C.read_detection_summary(out).methods == ("phash",)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    one_line_error(runner.invoke(app, ["detect", str(sets["plain"]), "--method", "phash", "--out", str(mine),
                                        "--overwrite"]), "not a detection")
    assert (mine / "notes.txt").read_text() == "keep me"
    one_line_error(runner.invoke(app, ["detect", str(sets["plain"]), "--method", "phash", "--out",
                                        str(sets["plain"] / "det"), "--overwrite"]), "input")


# --- poisonclip audit: the page for a person -------------------------------------------------

def test_audit_ranks_the_poisons_first_and_writes_a_page(sets, tmp_path):
    from poisonclip.report.audit import AuditConfig, audit

    info = audit(AuditConfig(data=sets["plain"], out=tmp_path / "a", top=2 * COPIES))
    assert C.read_audit_info(tmp_path / "a") == info and info.top == 2 * COPIES and info.n_clusters == 2
    poisons = {r.key for r in read_manifest(sets["plain"])}
    import csv

    with open(tmp_path / "a" / C.AUDIT_RANKING_FILE, newline="", encoding="utf-8") as f:
        ranked = list(csv.DictReader(f, delimiter="\t"))
    assert {r["key"] for r in ranked} == poisons and all(r["poison"] == "True" for r in ranked)
    page = (tmp_path / "a" / C.AUDIT_PAGE_FILE).read_text(encoding="utf-8")
    assert all(k in page for k in poisons)
    # the combined top, each detector's top (exact-pixels, phash and caption-agreement score only the
    # poisons above their minimum; shared-patch finds no shared pattern here, so it has none), the clusters
    assert page.count("<img ") == 2 * COPIES + 3 * 2 * COPIES + 2 * COPIES
    assert "Top by phash" in page and "Top by shared-patch" not in page
    assert "name &#x27;moon&#x27;" in page and "name &#x27;star&#x27;" in page   # each cluster's concept
    assert C.read_detection_summary(tmp_path / "a" / C.AUDIT_DETECTION_DIR).n_samples == N_CLEAN + 2 * COPIES


def test_audit_page_escapes_what_the_data_says(tmp_path):
    from poisonclip.data.csv_io import write_csv
    from poisonclip.report.audit import AuditConfig, audit

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    evil = '<img src=x onerror="alert(1)"> moon'
    samples = [Sample.from_pil(f"k{i}", img, evil) for i in range(3)] + [
        Sample.from_pil(f"c{i}", Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), f"thing {i}")
        for i in range(5)]
    write_csv(samples, tmp_path / "d", name="train.tsv")
    audit(AuditConfig(data=tmp_path / "d" / "train.tsv", out=tmp_path / "a", top=3))
    page = (tmp_path / "a" / C.AUDIT_PAGE_FILE).read_text(encoding="utf-8")
    assert "onerror" in page and '<img src=x' not in page and "&lt;img src=x" in page
    assert "<script" not in page


def test_audit_cli(sets, tmp_path):
    r = runner.invoke(app, ["audit", str(sets["evasion"]), "--out", str(tmp_path / "a"), "--top", "5"])
    assert r.exit_code == 0, r.output
    assert C.read_audit_info(tmp_path / "a").methods == ("exact-pixels", "phash", "caption-agreement", "shared-patch")
    one_line_error(runner.invoke(app, ["audit", str(sets["plain"]), "--out", str(tmp_path / "b"), "--top", "0"]),
                    "--top")
    one_line_error(runner.invoke(app, ["audit", str(sets["plain"]), "--out", str(tmp_path / "a")]), "--overwrite")
    det = tmp_path / "det"
    assert runner.invoke(app, ["detect", str(sets["plain"]), "--method", "phash", "--out", str(det)]).exit_code == 0
    one_line_error(runner.invoke(app, ["audit", str(sets["plain"]), "--out", str(det), "--overwrite"]),
                    "not a detection audit")


def test_precision_recall_figure_draws_each_detectors_curve_and_the_chance_line():
    from poisonclip.detect.scoring import score_detector
    from poisonclip.report.figures import close, precision_recall

    y = [True, True, False, False, False, False, False, False]
    perfect = score_detector([9, 8, 1, 1, 1, 1, 1, 1], y)
    mixed = score_detector([9, 1, 8, 1, 2, 1, 3, 1], y)
    ax = precision_recall({"perfect": perfect, "mixed": mixed})
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"perfect (AP 1.00)", f"mixed (AP {mixed.average_precision:.2f})", "chance (25.0% poisons)"}
    for name, sc in (("perfect (AP 1.00)", perfect), (f"mixed (AP {mixed.average_precision:.2f})", mixed)):
        assert list(lines[name].get_xdata()) == list(sc.recall) and list(lines[name].get_ydata()) == list(sc.precision)
    assert list(lines["chance (25.0% poisons)"].get_ydata()) == [0.25, 0.25]
    assert mixed.average_precision < 1.0
    close(ax)
