"""The hand-off files: each record survives its writer and reader, and an old, foreign,
malformed or too-new file is one clear UserError naming the file and the field."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from poisonclip import contracts as C
from poisonclip.errors import UserError

BACKDOOR = C.PoisonInfo(
    attack="backdoor", dataset_type="csv", train_data="/d/poisoned/train.tsv", num_samples=104, n_clean=100,
    n_poisons=4, seed=3, poison_ratio=4 / 104, clean_data="/d/train.tsv", config={"attack": "backdoor", "seed": 3},
    skipped={"bad_row": 2}, skipped_reading={},
    backdoor=C.BackdoorRecord("star", 16, "corner", "checkerboard", 64, "centre-square", 5, "search", 9, 100,
                              ("star", "4"), "/d/classnames.txt", 30, 6, None))
TARGETED = C.PoisonInfo(
    attack="targeted", dataset_type="webdataset", train_data="/p/poison-{00000..00001}.tar::/d/{00000..00003}.tar",
    num_samples=46, n_clean=40, n_poisons=6, seed=0, poison_ratio=6 / 46, clean_data="/d",
    config={"target_source": "/d/test.tsv"},
    targets=(C.TargetRecord("t000", "moon", "targets/t000.png", 4, "templates", "key:k1", "k1", "ab" * 32, "star",
                            80, 0),
             C.TargetRecord("t001", "star", "targets/t001.png", 2, "search", "/x/img.png", "img.png", "cd" * 32,
                            None, 5, 100)),
    poison_shards=("poison-00000.tar", "poison-00001.tar"), warnings=("poisons bunched",),
    sections={"my_attack": {"strength": 2}})
RUN = C.RunInfo(
    model="poisonclip-tiny", checkpoint="/r/checkpoints/epoch_2.pt", seed=1, epochs=2, steps=22, batch_size=128,
    world_size=1, device="cpu", precision="fp32", preset="cpu-tiny", data="/p", data_origin="poisoned",
    dataset_type="csv", train_data="/p/train.tsv", num_samples=1500, dataset_sha256="00" * 32,
    poison_json="/p/poison.json", poison_json_sha256="11" * 32, wall_time_s=12.5, samples_per_s=300.0,
    train_time_s=10.0, resumed_from_epoch=None, loss_curve=(4.1, 3.2),
    epoch_stats=({"epoch": 1, "loss": 4.1}, {"epoch": 2, "loss": 3.2}), config="config.json", log="out.log",
    versions={"poisonclip": "0.1.0"})
RATE = {"k": 3, "n": 4, "rate": 0.75, "ci95": [0.3, 0.95]}
METRICS = C.Metrics(
    model=C.ModelIdentity("poisonclip-tiny", "/r/c.pt", "22" * 32, "/r", 1),
    clean={"zeroshot": {"top1": RATE}}, similarity={"clean": {"mean": 0.2, "std": 0.1, "n_pairs": 6},
                                                    "arrays": C.SIMILARITIES_FILE},
    config={"seed": 1}, data={"path": "/d/test.tsv", "n_images": 4}, excluded_targets=C.ExcludedTargets(1, 0, ("k1",),
                                                                                                        "sha256"),
    templates={"source": "openai", "n": 1, "templates": ["a {}."]}, versions={"numpy": "2"},
    backdoor={"asr": {"random": {"zeroshot": RATE}}}, poison=C.PoisonRef("/p/poison.json", "33" * 32, "backdoor"))
TRIAL = C.TrialResult("n_poisons=20__seed=1", "abc123", {"n_poisons": 20, "seed": 1},
                      {"poisoned": {"top1_zeroshot": 0.5}}, {"poison": {"n_poisons": 20}}, 1.0, 3.5, 2.5, "node1")
DETECTION = C.DetectionSummary(
    data="/p", methods=("phash", "exact-bytes"), n_samples=10, model="/r", model_checkpoint_sha256="55" * 32,
    manifest="/p/manifest.csv", params={"phash": {"max_distance": 6}, "exact-bytes": {}}, skipped={"bad_row": 1},
    scoring={"phash": C.DetectionScoring(2, 8, 0.9375, 0.75, (0.2, 1.0, 1.0), (1.0, 0.5, 0.0), (0.0, 3.0),
                                         (C.FlaggedAt(0.01, 2, 3.0, 2, 1.0, 1.0, 0),
                                          C.FlaggedAt(0.05, 2, 3.0, 2, 1.0, 1.0, 0))),
             "exact-bytes": C.DetectionScoring(2, 8, None, None)},
    wall_s={"phash": 0.5, "exact-bytes": 0.1})


def _raw(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("record,write,read,name", [
    (BACKDOOR, C.write_poison_info, C.read_poison_info, C.POISON_INFO_FILE),
    (TARGETED, C.write_poison_info, C.read_poison_info, C.POISON_INFO_FILE),
    (RUN, C.write_run_info, C.read_run_info, C.RUN_INFO_FILE),
    (METRICS, C.write_metrics, C.read_metrics, C.METRICS_FILE),
    (TRIAL, C.write_trial_result, C.read_trial_result, C.TRIAL_RESULT_FILE),
    (C.CorpusInfo("poisonclip.data.synthetic", {"seed": 0, "n_train": 40}, ("circle", "star"), 40, 20, 10,
                  ("csv",), {"train.tsv": "44" * 32}), C.write_corpus_info, C.read_corpus_info, C.CORPUS_INFO_FILE),
    (C.CorpusPaths("/d/train.tsv", "/d/test.tsv", None, "/d/probe.tsv"), C.write_external_corpus,
     C.read_external_corpus, C.EXTERNAL_CORPUS_FILE),
    (DETECTION, C.write_detection_summary, C.read_detection_summary, C.DETECT_INFO_FILE),
    (C.AuditInfo("/p", ("phash",), 10, 5, 2, manifest="/p/manifest.csv"), C.write_audit_info, C.read_audit_info,
     C.AUDIT_INFO_FILE),
    (C.DefenseInfo("filter", "/p", {"method": "phash", "drop_fraction": 0.05}, "done",
                   removed={"n_samples": 10, "n_removed": 2, "poisons_removed": 2, "clean_removed": 0},
                   model="run", before_model="/r", poison="/p", before={"top1_zeroshot": 0.5},
                   after={"top1_zeroshot": 0.4}, cost={"detect_s": 0.1, "train_s": 3.0}),
     C.write_defense_info, C.read_defense_info, C.DEFENSE_INFO_FILE),
])
def test_every_record_round_trips_through_its_writer_and_reader(tmp_path, record, write, read, name):
    path = write(tmp_path, record)
    assert path == tmp_path / name
    assert _raw(path)["schema_version"] == C.SCHEMA_VERSION
    back = read(tmp_path)
    assert back == record and read(path) == record     # the folder or the file itself
    # and writing what was read gives the same bytes
    again = tmp_path / "again"
    write(again, back)
    assert (again / name).read_bytes() == path.read_bytes()


def test_poison_info_keeps_what_readers_need(tmp_path):
    C.write_poison_info(tmp_path, TARGETED)
    info = C.read_poison_info(tmp_path)
    assert info.path == (tmp_path / C.POISON_INFO_FILE).absolute() and len(info.sha256) == 64
    assert info.target_image(info.targets[0]) == info.path.parent / "targets" / "t000.png"
    assert info.target_source == "/d/test.tsv" and info.sections == {"my_attack": {"strength": 2}}
    raw = _raw(tmp_path / C.POISON_INFO_FILE)
    assert raw["my_attack"] == {"strength": 2} and "backdoor" not in raw and raw["warnings"] == ["poisons bunched"]
    C.write_poison_info(tmp_path, BACKDOOR)
    raw = _raw(tmp_path / C.POISON_INFO_FILE)
    assert "targets" not in raw and "poison_shards" not in raw and "warnings" not in raw
    assert C.read_poison_info(tmp_path).target_source is None


def test_run_info_resolves_a_relative_checkpoint_from_its_folder(tmp_path):
    C.write_run_info(tmp_path, C.RunInfo(model="m", checkpoint="checkpoints/epoch_1.pt"))
    assert C.read_run_info(tmp_path).checkpoint_path() == tmp_path.absolute() / "checkpoints" / "epoch_1.pt"
    C.write_run_info(tmp_path, RUN)
    assert C.read_run_info(tmp_path).checkpoint_path() == Path("/r/checkpoints/epoch_2.pt")


def test_files_written_before_schema_version_are_read_as_version_1(tmp_path):
    """What the code wrote before the field existed: the same content without it."""
    for record, write, read, name in ((BACKDOOR, C.write_poison_info, C.read_poison_info, C.POISON_INFO_FILE),
                                      (RUN, C.write_run_info, C.read_run_info, C.RUN_INFO_FILE),
                                      (METRICS, C.write_metrics, C.read_metrics, C.METRICS_FILE),
                                      (TRIAL, C.write_trial_result, C.read_trial_result, C.TRIAL_RESULT_FILE)):
        path = write(tmp_path, record)
        old = _raw(path)
        del old["schema_version"]
        if name == C.POISON_INFO_FILE:
            old["format_version"] = 1      # what poison.json carried then
        path.write_text(json.dumps(old))
        assert read(tmp_path) == record
    # hand-written minimal files of that time (a user's own run folder, an eval's poison folder)
    (tmp_path / C.RUN_INFO_FILE).write_text(json.dumps({"model": "m", "checkpoint": "/c.pt", "seed": 0}))
    assert C.read_run_info(tmp_path).seed == 0 and C.read_run_info(tmp_path).epochs is None
    (tmp_path / C.POISON_INFO_FILE).write_text(json.dumps({
        "attack": "backdoor", "dataset_type": "csv", "train_data": "/t.tsv", "num_samples": 10, "n_clean": 9,
        "n_poisons": 1, "seed": 0, "backdoor": {"target_label": "star", "patch_size": 8, "placement": "random"}}))
    bd = C.read_poison_info(tmp_path).backdoor
    assert bd.trigger == "checkerboard" and bd.resolution is None and bd.placement == "random"


def test_a_sweep_folder_from_before_the_rename_still_has_its_results(tmp_path):
    trial = tmp_path / "trials" / "a"
    trial.mkdir(parents=True)
    (trial / "metrics.json").write_text(json.dumps({k: v for k, v in TRIAL.to_json().items() if k != "schema_version"}))
    assert C.read_trial_result(trial) == TRIAL
    C.write_trial_result(trial, dataclasses.replace(TRIAL, host="new"))
    assert C.read_trial_result(trial).host == "new"     # result.json wins
    C.remove_trial_result(trial)
    assert not any(trial.iterdir())
    with pytest.raises(UserError, match="result.json: not found"):
        C.read_trial_result(trial)


def _error(read, source) -> str:
    with pytest.raises(UserError) as e:
        read(source)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("write,read,record,name,writer", [
    (C.write_poison_info, C.read_poison_info, BACKDOOR, C.POISON_INFO_FILE, "poisonclip poison"),
    (C.write_run_info, C.read_run_info, RUN, C.RUN_INFO_FILE, "poisonclip train"),
    (C.write_metrics, C.read_metrics, METRICS, C.METRICS_FILE, "poisonclip eval"),
    (C.write_corpus_info, C.read_corpus_info, C.CorpusInfo("g", {}, ("a",), 1, 1), C.CORPUS_INFO_FILE,
     "poisonclip data synth"),
    (C.write_trial_result, C.read_trial_result, TRIAL, C.TRIAL_RESULT_FILE, "poisonclip sweep run"),
    (C.write_external_corpus, C.read_external_corpus, C.CorpusPaths("/t", "/u", None), C.EXTERNAL_CORPUS_FILE,
     "poisonclip sweep run"),
    (C.write_detection_summary, C.read_detection_summary, DETECTION, C.DETECT_INFO_FILE, "poisonclip detect"),
    (C.write_audit_info, C.read_audit_info, C.AuditInfo("/p", ("phash",), 10, 5, 2), C.AUDIT_INFO_FILE,
     "poisonclip audit"),
])
def test_missing_foreign_too_new_and_broken_files_name_the_file_and_what_to_run(
        tmp_path, write, read, record, name, writer):
    path = tmp_path / name
    assert f"{path}: not found" in _error(read, tmp_path)
    path.write_text("{not json")
    assert f"{path}: not valid JSON" in _error(read, tmp_path)
    path.write_text("[1, 2]")
    assert f"{path}: not a poisonclip" in _error(read, tmp_path)
    path.write_text(json.dumps({"accuracy": 0.9}))            # another tool's file of the same name
    msg = _error(read, tmp_path)
    assert f"{path}: not a poisonclip" in msg and "no field 'schema_version'" in msg and writer in msg
    good = _raw(write(tmp_path, record))
    path.write_text(json.dumps({**good, "schema_version": C.SCHEMA_VERSION + 1}))
    msg = _error(read, tmp_path)
    assert f"{path}: field 'schema_version' is {C.SCHEMA_VERSION + 1}" in msg and "newer poisonclip" in msg
    for bad in (0, "1", True):
        path.write_text(json.dumps({**good, "schema_version": bad}))
        assert f"{path}: malformed: field 'schema_version' must be a positive integer" in _error(read, tmp_path)


@pytest.mark.parametrize("record,write,read,edit,field", [
    (BACKDOOR, C.write_poison_info, C.read_poison_info, lambda d: d["backdoor"].update(patch_size="16"),
     "backdoor.patch_size"),
    (BACKDOOR, C.write_poison_info, C.read_poison_info, lambda d: d["backdoor"].update(patch_size=0),
     "backdoor.patch_size"),
    (BACKDOOR, C.write_poison_info, C.read_poison_info, lambda d: d.pop("backdoor"), "backdoor"),
    (BACKDOOR, C.write_poison_info, C.read_poison_info, lambda d: d.pop("num_samples"), "num_samples"),
    (BACKDOOR, C.write_poison_info, C.read_poison_info, lambda d: d.update(dataset_type="parquet"), "dataset_type"),
    (BACKDOOR, C.write_poison_info, C.read_poison_info, lambda d: d.update(skipped={"bad_row": "2"}), "skipped"),
    (TARGETED, C.write_poison_info, C.read_poison_info, lambda d: d["targets"][1].pop("label"), "targets[1].label"),
    (TARGETED, C.write_poison_info, C.read_poison_info, lambda d: d.update(targets=[]), "targets"),
    (RUN, C.write_run_info, C.read_run_info, lambda d: d.update(epochs=2.5), "epochs"),
    (RUN, C.write_run_info, C.read_run_info, lambda d: d.update(loss_curve=["x"]), "loss_curve"),
    (METRICS, C.write_metrics, C.read_metrics, lambda d: d["model"].pop("checkpoint"), "model.checkpoint"),
    (METRICS, C.write_metrics, C.read_metrics, lambda d: d.update(clean={}), "clean"),
    (METRICS, C.write_metrics, C.read_metrics, lambda d: d.update(backdoor=[1]), "backdoor"),
    (TRIAL, C.write_trial_result, C.read_trial_result, lambda d: d.update(params=None), "params"),
    (DETECTION, C.write_detection_summary, C.read_detection_summary, lambda d: d.update(methods=[]), "methods"),
    (DETECTION, C.write_detection_summary, C.read_detection_summary,
     lambda d: d["scoring"]["phash"].update(auroc="high"), "scoring.phash.auroc"),
    (DETECTION, C.write_detection_summary, C.read_detection_summary,
     lambda d: d["scoring"]["phash"]["flagged"][1].pop("recall"), "scoring.phash.flagged[1].recall"),
])
def test_a_malformed_field_is_named(tmp_path, record, write, read, edit, field):
    path = write(tmp_path, record)
    data = _raw(path)
    edit(data)
    path.write_text(json.dumps(data))
    msg = _error(read, tmp_path)
    assert msg.startswith(f"{path}: malformed") and f"field '{field}'" in msg and "re-run `poisonclip" in msg


def test_a_metrics_file_of_another_schema_is_foreign(tmp_path):
    (tmp_path / C.METRICS_FILE).write_text(json.dumps({"schema": "something-else", "clean": {}}))
    assert "not a poisonclip metrics file: field 'schema'" in _error(C.read_metrics, tmp_path)


def test_a_record_built_in_memory_is_checked_like_a_file():
    with pytest.raises(UserError, match=r"<poison.json>: malformed: field 'backdoor.patch_size'"):
        C.PoisonInfo.from_json({**BACKDOOR.to_json(), "backdoor": {**BACKDOOR.to_json()["backdoor"], "patch_size": -1}})


def test_corpus_paths_from_a_synth_folder_a_shards_only_folder_and_a_pointer(tmp_path):
    synth = tmp_path / "synth"
    synth.mkdir()
    for name in (C.TRAIN_TABLE, C.TEST_TABLE, C.CLASSNAMES_FILE):
        (synth / name).write_text("x\n")
    p = C.CorpusPaths.from_folder(synth)
    assert (p.train, p.test, p.classnames, p.probe) == (str(synth / "train.tsv"), str(synth / "test.tsv"),
                                                        str(synth / "classnames.txt"), None)
    assert p.root == synth and p.shards == synth / "shards"
    (synth / C.PROBE_TABLE).write_text("x\n")
    assert C.CorpusPaths.from_folder(synth).probe == str(synth / "probe.tsv")

    shards_only = tmp_path / "wds"
    (shards_only / C.SHARDS_DIR).mkdir(parents=True)
    p = C.CorpusPaths.from_folder(shards_only)
    assert p.train == str(shards_only / "shards") and p.classnames is None

    entry = tmp_path / "entry"
    C.write_external_corpus(entry, C.CorpusPaths(str(synth / "train.tsv"), str(synth / "test.tsv"), None))
    assert _raw(entry / C.EXTERNAL_CORPUS_FILE) == {"schema_version": 1, "train": str(synth / "train.tsv"),
                                                    "test": str(synth / "test.tsv"), "classnames": None}
    p = C.CorpusPaths.from_folder(entry)
    assert p.train == str(synth / "train.tsv") and p.probe is None and p.root is None
    with pytest.raises(UserError, match="not a corpus folder"):
        p.shards
    # a pointer written before schema_version: just the paths
    (entry / C.EXTERNAL_CORPUS_FILE).write_text(json.dumps({"train": "/a", "test": "/b", "classnames": "/c",
                                                            "probe": "/d"}))
    assert C.CorpusPaths.from_folder(entry) == C.CorpusPaths("/a", "/b", "/c", "/d")

    with pytest.raises(UserError, match=r"not a corpus folder \(no train.tsv, shards/ or external.json\)"):
        C.CorpusPaths.from_folder(tmp_path / "wds" / "shards")
    with pytest.raises(UserError, match="nope: not found"):
        C.CorpusPaths.from_folder(tmp_path / "nope")


def test_similarities_are_byte_identical_and_read_back(tmp_path):
    arrays = {"edges": np.linspace(-1, 1, 5), "clean_counts": np.arange(4, dtype=np.int64)}
    a = C.write_similarities(tmp_path / "a", arrays)
    b = C.write_similarities(tmp_path / "b", dict(reversed(list(arrays.items()))))
    assert a.read_bytes() == b.read_bytes() and a.name == C.SIMILARITIES_FILE
    back = C.read_similarities(tmp_path / "a")
    assert set(back) == set(arrays) and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    assert C.read_similarities(tmp_path / "none") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / C.SIMILARITIES_FILE).write_text("not a zip")
    with pytest.raises(UserError, match="similarities.npz: not a similarities.npz"):
        C.read_similarities(tmp_path / "bad")


def test_every_hand_off_file_has_its_own_name():
    names = [v for k, v in vars(C).items() if k.isupper() and not k.startswith("_") and isinstance(v, str)
             and k != "METRICS_SCHEMA"]
    assert len(names) == len(set(names)), sorted(names)
    assert C.TRIAL_RESULT_FILE != C.METRICS_FILE


# --- one module names the files ------------------------------------------------------------

SRC = Path(C.__file__).parent


def _public_constants() -> dict[str, object]:
    return {k: v for k, v in vars(C).items() if k.isupper() and not k.startswith("_")}


def test_hand_off_file_names_are_spelt_only_in_contracts():
    names = {v: k for k, v in _public_constants().items() if isinstance(v, str) and "." in v and k != "METRICS_SCHEMA"}
    assert {"poison.json", "run.json", "metrics.json", "train.tsv", "classnames.txt", "result.json"} <= set(names)
    found = []
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC).as_posix()
        if rel == "contracts.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{rel}:{node.lineno} {node.value!r} (use contracts.{names[node.value]})")
    assert not found


def test_every_constant_of_the_contracts_is_used():
    text = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))
    unused = [k for k in _public_constants() if len(re.findall(rf"\b{k}\b", text)) < 2]   # more than its definition
    assert not unused


def test_the_manifest_row_has_one_field_per_contract_column():
    from poisonclip.attacks.manifest import ManifestRow

    assert tuple(f.name for f in dataclasses.fields(ManifestRow)) == C.MANIFEST_COLUMNS
    assert (C.MANIFEST_INT_COLUMNS | C.MANIFEST_FLOAT_COLUMNS | C.MANIFEST_OPTIONAL_COLUMNS) <= set(C.MANIFEST_COLUMNS)
