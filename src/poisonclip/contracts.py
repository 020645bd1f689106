"""The files that pass between stages: their names, typed records, and one reader and one writer each.

    corpus   ``corpus.json`` (CorpusInfo) beside train.tsv / test.tsv / probe.tsv / classnames.txt
             / shards/; a sweep's corpus of the user's own files is ``external.json`` instead.
             ``CorpusPaths.from_folder`` finds the files of either.
    poison   ``poison.json`` (PoisonInfo: BackdoorRecord, TargetRecord) + ``manifest.csv``
             (``MANIFEST_COLUMNS``; rows are ``attacks.manifest.ManifestRow``) + targets/<id>.png
    train    ``run.json`` (RunInfo), written once training has finished
    evaluate ``metrics.json`` (Metrics) + ``similarities.npz`` (the histogram arrays)
    sweep    ``trials/<name>/result.json`` (TrialResult), a finished trial's row of the table
    detect   ``detect.json`` (DetectionSummary: DetectionScoring per method, FlaggedAt) + ``scores.tsv``
             (DetectionScores: one row per sample, its key and a score per method)
    audit    ``audit.json`` (AuditInfo) + ``audit.html`` + ``suspicious.tsv`` + ``detection/`` (a detection)
    defend   ``defense.json`` (DefenseInfo) + ``data/`` (filter: a poisoned-style folder) + ``detection/``
             + ``run/`` (the defended model) + ``eval/`` and ``eval-before/`` (metrics.json each)

Every stage writes its files with ``write_*`` (atomically, through ``io_utils``) and every
consumer reads them with ``read_*``; nothing else parses these files, so a field changes in one
place. Readers take the file or the folder holding it and raise a one-line ``UserError`` naming
the file, the field and what to run again for a file that is missing, foreign, malformed, too old
or too new.

Schema versions. Each file carries ``schema_version`` (an integer; this code writes and reads
version 1 of every file). A file without it was written by poisonclip before the field existed,
and version 1 is exactly what that code wrote, so it is read as version 1 when it holds the
fields that identify its kind (``poison.json``: attack, dataset_type and train_data, or its old
``format_version: 1``; ``metrics.json``: ``"schema": "poisonclip.metrics/1"``; ``run.json``:
model and checkpoint; ``corpus.json``: generator and n_train; a trial result: name, config_hash
and params) and is refused otherwise, as another tool's file. A version above the one this code
knows is refused (written by a newer poisonclip). When a format changes incompatibly its version
goes up and its reader converts the older version where that is cheap, else refuses it with the
command that writes it again. One rename: sweep folders from before ``result.json`` keep a
finished trial's record in ``trials/<name>/metrics.json``; ``read_trial_result`` reads that when
``result.json`` is absent, so old sweeps resume and report without rerunning.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from poisonclip.errors import UserError
from poisonclip.io_utils import atomic_write_bytes, atomic_write_json, sha256_bytes

# --------------------------------------------------------------------------- file names

# corpus (`poisonclip data synth`, the sweep's corpus stage)
TRAIN_TABLE = "train.tsv"            # training pairs (also the poisoned CSV dataset's table)
TEST_TABLE = "test.tsv"              # labelled eval split
PROBE_TABLE = "probe.tsv"            # labelled split that trains the linear probe
PROBE_IMAGES_DIR = "probe_images"
SHARDS_DIR = "shards"                # the training pairs as WebDataset shards
CLASSNAMES_FILE = "classnames.txt"   # one class name per line, in label-index order
CORPUS_INFO_FILE = "corpus.json"
EXTERNAL_CORPUS_FILE = "external.json"
# poisoned dataset (`poisonclip poison`)
POISON_INFO_FILE = "poison.json"
MANIFEST_FILE = "manifest.csv"
POISON_IMAGES_DIR = "poison_images"
TARGETS_DIR = "targets"
# training run (`poisonclip train`)
RUN_INFO_FILE = "run.json"
# evaluation (`poisonclip eval`)
METRICS_FILE = "metrics.json"
SIMILARITIES_FILE = "similarities.npz"
# sweep trial (`poisonclip sweep run`)
TRIAL_RESULT_FILE = "result.json"
_OLD_TRIAL_RESULT_FILE = "metrics.json"   # the same record, in sweep folders written before the rename
# detection (`poisonclip detect`)
DETECT_INFO_FILE = "detect.json"
DETECT_SCORES_FILE = "scores.tsv"
DETECT_PR_FIGURE = "pr_curves"       # .png and .svg: the detectors' precision/recall curves (given a manifest)
# audit (`poisonclip audit`)
AUDIT_INFO_FILE = "audit.json"
AUDIT_PAGE_FILE = "audit.html"
AUDIT_RANKING_FILE = "suspicious.tsv"
AUDIT_DETECTION_DIR = "detection"        # also a defense's detection (`poisonclip defend filter`)

DEFENSE_INFO_FILE = "defense.json"
DEFENSE_DATA_DIR = "data"                 # filter: the filtered dataset, trainable as it is
DEFENSE_RUN_DIR = "run"                   # the defended model's run folder (run.json)
DEFENSE_EVAL_DIR = "eval"                 # the defended model's evaluation (metrics.json)
DEFENSE_BEFORE_DIR = "eval-before"        # the model before the defense, evaluated the same way
DEFENSE_SWEEP_DIR = "defense"             # a sweep's defended model artefact: the defense folder inside it
DEFENSE_BASE_DIR = "base"                 # ... and, for cleanclip, the ordinary model it fine-tunes

# manifest.csv columns, in order (``attacks.manifest.ManifestRow`` has one field per column)
MANIFEST_COLUMNS: tuple[str, ...] = (
    "key", "attack", "target_id", "target_label", "caption", "source_key", "source_sha256",
    "trigger_size", "trigger_x", "trigger_y", "patch_size", "placement", "noise_sigma", "seed",
    "sha256", "location", "resolution", "trigger", "trigger_params")
MANIFEST_INT_COLUMNS = frozenset({"trigger_size", "trigger_x", "trigger_y", "patch_size", "seed", "resolution"})
MANIFEST_FLOAT_COLUMNS = frozenset({"noise_sigma"})
# absent from manifests written before the geometry fix (resolution) or before the trigger registry grew
MANIFEST_OPTIONAL_COLUMNS = frozenset({"resolution", "trigger", "trigger_params"})

SCHEMA_VERSION = 1         # the version of every file this code writes
METRICS_SCHEMA = "poisonclip.metrics/1"   # metrics.json's kind tag, written since its first version

# --------------------------------------------------------------------------- typed fields

_REQUIRED: Any = object()


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class _Fields:
    """One JSON object of a file, read field by field; every error names the file and field."""

    where: str                 # the file (or "<poison.json>" for a record built in memory)
    data: Mapping[str, Any]
    remedy: str                # what to run to write the file again
    prefix: str = ""

    def fail(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.where}: malformed: field '{self.prefix}{key}' {problem}; {self.remedy}")

    def get(self, key: str, what: str, ok: Callable[[Any], bool], default: Any = _REQUIRED,
            null: bool = False) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise UserError(f"{self.where}: malformed: missing field '{self.prefix}{key}'; {self.remedy}")
            return default
        value = self.data[key]
        if value is None and null:
            return None
        if not ok(value):
            raise self.fail(key, f"must be {what}, not {_show(value)}")
        return value

    def text(self, key: str, default: Any = _REQUIRED, null: bool = False) -> Any:
        return self.get(key, "a string", lambda v: isinstance(v, str), default, null)

    def integer(self, key: str, default: Any = _REQUIRED, null: bool = False) -> Any:
        return self.get(key, "an integer", _is_int, default, null)

    def number(self, key: str, default: Any = _REQUIRED, null: bool = False) -> Any:
        v = self.get(key, "a number", lambda v: _is_int(v) or isinstance(v, float), default, null)
        return float(v) if _is_int(v) else v

    def mapping(self, key: str, default: Any = _REQUIRED, null: bool = False) -> Any:
        v = self.get(key, "an object", lambda v: isinstance(v, dict), default, null)
        return dict(v) if isinstance(v, dict) else v

    def texts(self, key: str, default: Any = _REQUIRED, null: bool = False) -> Any:
        v = self.get(key, "a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                     default, null)
        return tuple(v) if isinstance(v, list) else v

    def counts(self, key: str) -> dict[str, int]:
        return self.get(key, "an object of counts", lambda v: isinstance(v, dict) and all(map(_is_int, v.values())),
                        {})

    def section(self, key: str, default: Any = _REQUIRED, null: bool = False) -> "_Fields | None":
        v = self.get(key, "an object", lambda v: isinstance(v, dict), default, null)
        return None if v is None else _Fields(self.where, v, self.remedy, f"{self.prefix}{key}.")

    def sections(self, key: str, default: Any = _REQUIRED) -> list["_Fields"]:
        v = self.get(key, "a list of objects", lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
                     default)
        return [_Fields(self.where, x, self.remedy, f"{self.prefix}{key}[{i}].") for i, x in enumerate(v or ())]

    def rest(self, known: Sequence[str]) -> dict[str, Any]:
        """The fields not in ``known``: kept as written (sections of other attacks, newer extras)."""
        return {k: v for k, v in self.data.items() if k not in known}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class _Kind:
    """What a reader needs to know about one file."""

    name: str                      # its file name
    title: str                     # what it is, for messages: "not a poisonclip <title>"
    writer: str                    # who writes it, for messages
    remedy: str                    # what to run to write it again
    identity: tuple[str, ...]      # fields a file without schema_version must hold to be ours
    version: int = SCHEMA_VERSION
    legacy: Callable[[Mapping[str, Any]], bool] | None = None   # another sign of an old file of ours


def _path_of(source: str | os.PathLike, kind: _Kind) -> Path:
    """The file itself, or ``kind.name`` in the folder (also a missing one: no file suffix)."""
    path = Path(source).expanduser()
    return path / kind.name if path.is_dir() or (not path.exists() and not path.suffix) else path


def _load(path: Path, kind: _Kind) -> tuple[bytes, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: not found; give a folder written by {kind.writer}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror}); give a folder written by {kind.writer}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not valid JSON ({str(e).splitlines()[0]}), so not a poisonclip {kind.title}; "
                        f"{kind.remedy}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a poisonclip {kind.title} (a JSON {type(data).__name__}, not an object); "
                        f"{kind.remedy}")
    return raw, data


def _check_version(where: str, data: Mapping[str, Any], kind: _Kind) -> int:
    """The file's schema version, after refusing another tool's file and a newer one."""
    if "schema_version" not in data:
        if kind.legacy is not None and kind.legacy(data):
            return 1
        missing = [k for k in kind.identity if k not in data]
        if missing:
            raise UserError(f"{where}: not a poisonclip {kind.title}: no field 'schema_version' and missing field "
                            f"'{missing[0]}' (another tool's file, or an older format); {kind.remedy}")
        return 1
    v = data["schema_version"]
    if not _is_int(v) or v < 1:
        raise UserError(f"{where}: malformed: field 'schema_version' must be a positive integer, not {_show(v)}; "
                        f"{kind.remedy}")
    if v > kind.version:
        raise UserError(f"{where}: field 'schema_version' is {v}, but this poisonclip reads {kind.name} up to "
                        f"version {kind.version}: it was written by a newer poisonclip; upgrade poisonclip, "
                        f"or {kind.remedy} with this one")
    if v < kind.version:   # no older version is read yet: each bump adds its conversion here
        raise UserError(f"{where}: field 'schema_version' is {v}, an older format than the {kind.version} this "
                        f"poisonclip reads; {kind.remedy}")
    return v


def _fields(where: str, data: Mapping[str, Any], kind: _Kind) -> _Fields:
    _check_version(where, data, kind)
    return _Fields(where, data, kind.remedy)


def _jsonable(obj: Any) -> Any:
    """A record as plain JSON values (tuples as lists, nested records as objects)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.compare}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _without_none(d: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``d`` without those of ``keys`` whose value is None (sections a file holds only sometimes)."""
    return {k: v for k, v in d.items() if not (k in keys and v is None)}


def _folder_file(folder: str | os.PathLike, name: str) -> Path:
    return Path(folder).expanduser() / name


# --------------------------------------------------------------------------- corpus

_CORPUS = _Kind(CORPUS_INFO_FILE, "corpus description", "`poisonclip data synth`",
                "re-run `poisonclip data synth`", ("generator", "n_train"))


@dataclass(frozen=True)
class CorpusInfo:
    """``corpus.json``: how the embedded corpus was generated, and the hashes of its tables."""

    generator: str                          # "poisonclip.data.synthetic"
    config: Mapping[str, Any]               # data.synthetic.SynthConfig as a mapping
    classnames: tuple[str, ...]
    n_train: int
    n_test: int
    n_probe: int = 0
    formats: tuple[str, ...] = ()           # "csv", "webdataset"
    sha256: Mapping[str, str] = field(default_factory=dict)   # table file name -> sha256
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _jsonable(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = f"<{CORPUS_INFO_FILE}>") -> "CorpusInfo":
        f = _fields(where, data, _CORPUS)
        return cls(generator=f.text("generator"), config=f.mapping("config", {}), classnames=f.texts("classnames", ()),
                   n_train=f.integer("n_train"), n_test=f.integer("n_test", 0), n_probe=f.integer("n_probe", 0),
                   formats=f.texts("formats", ()),
                   sha256=f.get("sha256", "an object of sha256 strings",
                                lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()), {}))


def write_corpus_info(folder: str | os.PathLike, info: CorpusInfo) -> Path:
    return atomic_write_json(_folder_file(folder, CORPUS_INFO_FILE), info.to_json())


def read_corpus_info(source: str | os.PathLike) -> CorpusInfo:
    path = _path_of(source, _CORPUS)
    _, data = _load(path, _CORPUS)
    return CorpusInfo.from_json(data, str(path))


_EXTERNAL = _Kind(EXTERNAL_CORPUS_FILE, "corpus pointer", "the corpus stage of `poisonclip sweep run`",
                  "delete this cache entry and re-run `poisonclip sweep run`", ("train", "test"))


@dataclass(frozen=True)
class CorpusPaths:
    """Where a corpus' files are: the training data, the labelled eval set, the class list and
    the probe's training set. ``root``: the corpus folder itself (None for the user's own files
    named one by one)."""

    train: str                  # training data: CSV/TSV table or WebDataset shards (folder, pattern)
    test: str                   # labelled eval set: table with a label column, or ImageFolder
    classnames: str | None      # class list (None: classnames.txt beside the eval table, if any)
    probe: str | None = None    # labelled set that trains the linear probe (None: none of its own)
    root: Path | None = field(default=None, compare=False)

    @property
    def shards(self) -> Path:
        """The corpus' WebDataset shards (``poisonclip data synth --format webdataset``)."""
        if self.root is None:
            raise UserError("this corpus is a set of the user's own files, not a corpus folder with shards/")
        return self.root / SHARDS_DIR

    def to_json(self) -> dict[str, Any]:
        """The ``external.json`` object: without ``probe`` when the corpus has none."""
        out = {"schema_version": SCHEMA_VERSION, "train": self.train, "test": self.test,
               "classnames": self.classnames}
        if self.probe is not None:
            out["probe"] = self.probe
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = f"<{EXTERNAL_CORPUS_FILE}>") -> "CorpusPaths":
        f = _fields(where, data, _EXTERNAL)
        return cls(f.text("train"), f.text("test"), f.text("classnames", None, null=True),
                   f.text("probe", None, null=True))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "CorpusPaths":
        """The corpus in ``folder``: files laid out as `poisonclip data synth` writes them, or the
        user's own files an ``external.json`` there points to (a sweep's corpus cache entry)."""
        root = Path(folder).expanduser()
        if (root / EXTERNAL_CORPUS_FILE).is_file():
            return read_external_corpus(root)
        if not root.is_dir():
            raise UserError(f"{root}: not found; give a corpus folder written by `poisonclip data synth`")
        train = root / TRAIN_TABLE
        if not train.is_file():
            if not (root / SHARDS_DIR).is_dir():
                raise UserError(f"{root}: not a corpus folder (no {TRAIN_TABLE}, {SHARDS_DIR}/ or "
                                f"{EXTERNAL_CORPUS_FILE}); write one with `poisonclip data synth`")
            train = root / SHARDS_DIR
        names, probe = root / CLASSNAMES_FILE, root / PROBE_TABLE
        return cls(str(train), str(root / TEST_TABLE), str(names) if names.is_file() else None,
                   str(probe) if probe.is_file() else None, root)


def write_external_corpus(folder: str | os.PathLike, paths: CorpusPaths) -> Path:
    """The pointer a sweep's corpus cache entry holds for a corpus of the user's own files."""
    return atomic_write_json(_folder_file(folder, EXTERNAL_CORPUS_FILE), paths.to_json())


def read_external_corpus(source: str | os.PathLike) -> CorpusPaths:
    path = _path_of(source, _EXTERNAL)
    _, data = _load(path, _EXTERNAL)
    return CorpusPaths.from_json(data, str(path))


# --------------------------------------------------------------------------- poisoned dataset

_POISON = _Kind(POISON_INFO_FILE, "poisoned-dataset description", "`poisonclip poison`",
                "re-run `poisonclip poison`", ("attack", "dataset_type", "train_data"),
                legacy=lambda d: d.get("format_version") == 1)


@dataclass(frozen=True)
class BackdoorRecord:
    """``poison.json`` "backdoor": the trigger as the poisons carry it, which evaluation re-applies."""

    target_label: str
    patch_size: int | None           # trigger side in pixels at 224x224, scaled to the image; None: whole-image
    placement: str                   # attacks.triggers.Placement value: "corner" | "random"; or "whole-image"
    trigger: str = "checkerboard"    # name in attacks.registry.TRIGGERS
    resolution: int | None = None    # side of the centre square the poisons were written at (None: older files)
    geometry: str | None = None      # "centre-square"
    patch_pixels: int | None = None  # the patch side at ``resolution``
    caption_source: str = "search"
    captions_found: int | None = None
    captions_scanned: int | None = None
    excluded_labels: tuple[str, ...] = ()
    classnames: str | None = None    # the class list used (absolute path)
    sources_eligible_seen: int | None = None
    sources_excluded_seen: int | None = None
    source_shards_read: int | None = None
    # The trigger's own parameters, present for the triggers that take them (None otherwise and
    # in older files): the seed of its fixed pattern/field, the blend's weight and pattern file
    # (with the file's sha256 when poisoned), the warp's control grid and strength.
    trigger_seed: int | None = None
    blend_alpha: float | None = None
    blend_pattern: str | None = None
    blend_pattern_sha256: str | None = None
    warp_grid: int | None = None
    warp_strength: float | None = None

    TRIGGER_PARAMS: ClassVar[tuple[str, ...]] = ("trigger_seed", "blend_alpha", "blend_pattern",
                                                 "blend_pattern_sha256", "warp_grid", "warp_strength")

    @classmethod
    def _read(cls, f: _Fields) -> "BackdoorRecord":
        placement = f.text("placement")
        # A whole-image trigger (blended, warp) has no patch; every other needs a positive size.
        patch = f.integer("patch_size", None, null=True) if placement == "whole-image" else f.integer("patch_size")
        if patch is not None and patch <= 0:
            raise f.fail("patch_size", f"must be positive, not {patch}")
        opt_int = {k: f.integer(k, None, null=True) for k in (
            "resolution", "patch_pixels", "captions_found", "captions_scanned", "sources_eligible_seen",
            "sources_excluded_seen", "source_shards_read", "trigger_seed", "warp_grid")}
        opt_num = {k: f.number(k, None, null=True) for k in ("blend_alpha", "warp_strength")}
        opt_text = {k: f.text(k, None, null=True) for k in ("blend_pattern", "blend_pattern_sha256")}
        return cls(target_label=f.text("target_label"), patch_size=patch, placement=placement,
                   **opt_num, **opt_text,
                   trigger=f.text("trigger", None, null=True) or "checkerboard",
                   geometry=f.text("geometry", None, null=True), caption_source=f.text("caption_source", "search"),
                   excluded_labels=f.texts("excluded_labels", ()), classnames=f.text("classnames", None, null=True),
                   **opt_int)


@dataclass(frozen=True)
class TargetRecord:
    """One entry of ``poison.json`` "targets": a targeted-poisoning target x' and its label y'."""

    id: str
    label: str
    image: str                       # the saved target image, relative to the folder: targets/<id>.png
    n_poisons: int | None = None
    caption_source: str | None = None
    source: str | None = None        # where the image came from: an absolute path or key:<key>
    source_key: str | None = None    # its key in the set it was drawn from (``config.target_source``)
    source_sha256: str | None = None  # sha256 of its original bytes
    true_label: str | None = None
    captions_found: int | None = None
    captions_scanned: int | None = None

    @classmethod
    def _read(cls, f: _Fields) -> "TargetRecord":
        return cls(id=f.text("id"), label=f.text("label"), image=f.text("image"),
                   n_poisons=f.integer("n_poisons", None, null=True),
                   caption_source=f.text("caption_source", None, null=True),
                   source=f.text("source", None, null=True), source_key=f.text("source_key", None, null=True),
                   source_sha256=f.text("source_sha256", None, null=True),
                   true_label=f.text("true_label", None, null=True),
                   captions_found=f.integer("captions_found", None, null=True),
                   captions_scanned=f.integer("captions_scanned", None, null=True))


_POISON_KNOWN = ("schema_version", "format_version", "attack", "dataset_type", "train_data", "csv_sep",
                 "csv_img_key", "csv_caption_key", "num_samples", "n_clean", "n_poisons", "poison_ratio", "seed",
                 "clean_data", "config", "manifest", "skipped", "skipped_reading", "backdoor", "targets",
                 "poison_shards", "warnings")


@dataclass(frozen=True)
class PoisonInfo:
    """``poison.json``: the poisoned dataset's contract with training (``train_data`` and its CSV
    columns) and evaluation (the backdoor trigger or the targets). Attacks of the registry other
    than backdoor and targeted keep their own sections in ``sections``, as written."""

    attack: str
    dataset_type: str                # open_clip --dataset-type: "csv" | "webdataset"
    train_data: str                  # open_clip --train-data, verbatim
    num_samples: int
    n_clean: int
    n_poisons: int
    seed: int
    manifest: str = MANIFEST_FILE
    csv_sep: str = "\t"
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    poison_ratio: float | None = None
    clean_data: str | None = None    # the clean dataset (absolute spec)
    config: Mapping[str, Any] = field(default_factory=dict)        # the attack's resolved config
    skipped: Mapping[str, int] = field(default_factory=dict)       # clean rows left out, per reason
    skipped_reading: Mapping[str, int] = field(default_factory=dict)  # unusable samples the attack met
    backdoor: BackdoorRecord | None = None
    targets: tuple[TargetRecord, ...] = ()
    poison_shards: tuple[str, ...] | None = None   # WebDataset: the poison shards' names
    warnings: tuple[str, ...] = ()
    sections: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False)     # the file read (readers only)
    sha256: str | None = field(default=None, compare=False)   # its bytes' sha256 (readers only)

    @property
    def folder(self) -> Path | None:
        return self.path.parent if self.path is not None else None

    def target_image(self, target: TargetRecord) -> Path:
        """The saved image of ``target`` (``targets/<id>.png`` in the folder read)."""
        p = Path(target.image)
        return p if p.is_absolute() or self.folder is None else self.folder / p

    @property
    def target_source(self) -> str | None:
        """The labelled set the targets were taken from (absolute), if the attack has targets."""
        src = self.config.get("target_source") if self.targets else None
        return str(src) if src else None

    def to_json(self) -> dict[str, Any]:
        d = _jsonable(self)
        sections = d.pop("sections")
        d["targets"] = d["targets"] or None
        d["warnings"] = d["warnings"] or None
        if d["backdoor"] is not None:   # a trigger's parameters are written only for the triggers that take them
            d["backdoor"] = _without_none(d["backdoor"], BackdoorRecord.TRIGGER_PARAMS)
        return {**_without_none(d, ("backdoor", "targets", "poison_shards", "warnings")), **sections}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = f"<{POISON_INFO_FILE}>") -> "PoisonInfo":
        f = _fields(where, data, _POISON)
        attack = f.text("attack")
        bd = f.section("backdoor", None, null=True)
        targets = tuple(TargetRecord._read(t) for t in f.sections("targets", []))
        if attack == "backdoor" and bd is None:
            raise UserError(f"{where}: malformed: missing field 'backdoor' (attack 'backdoor' needs it); "
                            f"{_POISON.remedy}")
        if attack == "targeted" and not targets:
            raise UserError(f"{where}: malformed: field 'targets' is missing or empty (attack 'targeted' "
                            f"needs one target at least); {_POISON.remedy}")
        kind = f.text("dataset_type")
        if kind not in ("csv", "webdataset"):
            raise f.fail("dataset_type", f"must be 'csv' or 'webdataset', not {_show(kind)}")
        return cls(attack=attack, dataset_type=kind, train_data=f.text("train_data"),
                   num_samples=f.integer("num_samples"), n_clean=f.integer("n_clean"),
                   n_poisons=f.integer("n_poisons"), seed=f.integer("seed"),
                   manifest=f.text("manifest", MANIFEST_FILE), csv_sep=f.text("csv_sep", "\t"),
                   csv_img_key=f.text("csv_img_key", "filepath"),
                   csv_caption_key=f.text("csv_caption_key", "title"),
                   poison_ratio=f.number("poison_ratio", None, null=True),
                   clean_data=f.text("clean_data", None, null=True), config=f.mapping("config", {}, null=True) or {},
                   skipped=f.counts("skipped"), skipped_reading=f.counts("skipped_reading"),
                   backdoor=BackdoorRecord._read(bd) if bd is not None else None, targets=targets,
                   poison_shards=f.texts("poison_shards", None, null=True), warnings=f.texts("warnings", ()),
                   sections=f.rest(_POISON_KNOWN))


def write_poison_info(folder: str | os.PathLike, info: PoisonInfo) -> Path:
    """Write ``poison.json`` (the poisoned folder's completion file: write it last)."""
    return atomic_write_json(_folder_file(folder, POISON_INFO_FILE), info.to_json())


def read_poison_info(source: str | os.PathLike) -> PoisonInfo:
    """``poison.json`` of a poisoned dataset folder (or the file itself), with its path and sha256."""
    path = _path_of(source, _POISON)
    raw, data = _load(path, _POISON)
    return dataclasses.replace(PoisonInfo.from_json(data, str(path)), path=path.absolute(), sha256=sha256_bytes(raw))


# --------------------------------------------------------------------------- training run

_RUN = _Kind(RUN_INFO_FILE, "run record", "`poisonclip train`",
             "re-run `poisonclip train` (run.json is written when training finishes)", ("model", "checkpoint"))


@dataclass(frozen=True)
class RunInfo:
    """``run.json``: a finished training run (written last, only once training has finished)."""

    model: str                           # open_clip model name
    checkpoint: str | None               # final checkpoint (absolute, or relative to the run folder)
    seed: int | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None        # global
    world_size: int | None = None
    device: str | None = None
    precision: str | None = None
    preset: str | None = None
    data: str | None = None              # the dataset given (made absolute)
    data_origin: str | None = None       # "table" | "shards" | "poisoned" | "corpus"
    dataset_type: str | None = None
    train_data: str | None = None        # open_clip --train-data
    num_samples: int | None = None
    dataset_sha256: str | None = None
    poison_json: str | None = None       # the poisoned folder's poison.json, if it trained on one
    poison_json_sha256: str | None = None
    init: str | None = None              # fine-tuning: the checkpoint training started from (absolute)
    init_sha256: str | None = None
    wall_time_s: float | None = None
    samples_per_s: float | None = None
    train_time_s: float | None = None
    resumed_from_epoch: int | None = None
    loss_curve: tuple[float, ...] = ()
    epoch_stats: tuple[Mapping[str, Any], ...] = ()
    config: str | None = None            # the run folder's config.json
    log: str | None = None               # open_clip's log file
    versions: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False)

    def checkpoint_path(self) -> Path | None:
        """The checkpoint, a relative one taken from the run folder read."""
        if not self.checkpoint:
            return None
        p = Path(self.checkpoint)
        return p if p.is_absolute() or self.path is None else self.path.parent / p

    def to_json(self) -> dict[str, Any]:
        return _without_none(_jsonable(self), ("init", "init_sha256"))   # only fine-tuned runs have them

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = f"<{RUN_INFO_FILE}>") -> "RunInfo":
        f = _fields(where, data, _RUN)
        ints = ("seed", "epochs", "steps", "batch_size", "world_size", "num_samples", "resumed_from_epoch")
        texts = ("device", "precision", "preset", "data", "data_origin", "dataset_type", "train_data",
                 "dataset_sha256", "poison_json", "poison_json_sha256", "init", "init_sha256", "config", "log")
        floats = ("wall_time_s", "samples_per_s", "train_time_s")
        curve = f.get("loss_curve", "a list of numbers",
                      lambda v: isinstance(v, list) and all(_is_int(x) or isinstance(x, float) for x in v), [])
        stats = f.get("epoch_stats", "a list of objects", lambda v: isinstance(v, list) and
                      all(isinstance(x, dict) for x in v), [])
        return cls(model=f.text("model"), checkpoint=f.text("checkpoint", null=True),
                   **{k: f.integer(k, None, null=True) for k in ints},
                   **{k: f.text(k, None, null=True) for k in texts},
                   **{k: f.number(k, None, null=True) for k in floats},
                   loss_curve=tuple(float(x) for x in curve), epoch_stats=tuple(dict(x) for x in stats),
                   versions=f.mapping("versions", {}))


def write_run_info(folder: str | os.PathLike, info: RunInfo) -> Path:
    """Write ``run.json`` (a run folder's completion file: only once training has finished)."""
    return atomic_write_json(_folder_file(folder, RUN_INFO_FILE), info.to_json())


def read_run_info(source: str | os.PathLike) -> RunInfo:
    """``run.json`` of a run folder (or the file itself)."""
    path = _path_of(source, _RUN)
    _, data = _load(path, _RUN)
    return dataclasses.replace(RunInfo.from_json(data, str(path)), path=path.absolute())


# --------------------------------------------------------------------------- evaluation

_METRICS = _Kind(METRICS_FILE, "metrics file", "`poisonclip eval`", "re-run `poisonclip eval`", ("schema",),
                 legacy=lambda d: d.get("schema") == METRICS_SCHEMA)


@dataclass(frozen=True)
class ModelIdentity:
    """``metrics.json`` "model": which weights were measured."""

    name: str
    checkpoint: str
    checkpoint_sha256: str | None = None
    run: str | None = None            # the run folder, when evaluated with one
    train_seed: int | None = None     # its run.json's seed (pairs models across groups)


@dataclass(frozen=True)
class ExcludedTargets:
    """``metrics.json`` "excluded_targets": targets of the poisoned set found among the labelled
    images and left out of clean accuracy, the probe's training split, ASR and z-score."""

    data: int = 0
    probe_train: int = 0
    keys: tuple[str, ...] = ()
    match: str = ""


@dataclass(frozen=True)
class PoisonRef:
    """``metrics.json`` "poison": the poisoned folder the measurement used."""

    path: str
    sha256: str
    attack: str


_METRICS_KNOWN = ("schema_version", "schema", "config", "model", "data", "excluded_targets", "templates",
                  "versions", "clean", "similarity", "retrieval", "backdoor", "targeted", "poison")


@dataclass(frozen=True)
class Metrics:
    """``metrics.json``: every measurement of one model. Rates are ``{"k", "n", "rate", "ci95"}``
    (``evaluate.stats.Rate.to_dict``); the sections:

    * ``clean``: ``{"zeroshot": {"top1": rate}, "probe": {"top1": rate, "n_train", "n_test",
      "train_set", ...}}`` (probe only when one was trained);
    * ``similarity``: ``{"clean": {"mean", "std", "n_pairs"}, "arrays": "similarities.npz"}``;
    * ``retrieval`` (when measured): clean recall on the eval set's own captions,
      ``image_to_text`` / ``text_to_image`` -> ``{"R@1", "R@5", "R@10"}`` rates, with
      ``caption_key``, ``n_images``, ``n_texts``; or ``{"skipped": reason}`` for a set without captions;
    * ``backdoor`` (poison with a trigger): ``target_label``, ``asr.<placement>.<head>`` rates,
      ``zscore.<placement>`` (``z``, ``mean_triggered``, ...), ``target_rate_without_trigger``;
      placements ``train_placement``, ``random`` and (for random-placed poisons) ``corner``;
      ``examples`` (absent in older files): a few test images (index, key, label, trigger_xy,
      trigger_side) with their zero-shot prediction ``clean`` and ``triggered`` (predicted,
      target_rank, probability, target_probability), whose model-input pixels are in
      ``similarities.npz`` (``example_inputs``, ``example_triggered_inputs``);
    * ``targeted`` (poison with targets): ``targets`` (one row per target: id, label,
      source_sha256, source_key, and per head success/rank/predicted; zero-shot also the
      softmax ``probability`` of the prediction and ``label_probability`` of the target label,
      absent in older files) and ``summary.<head>`` (``success`` rate, ``mean_rank``);
    * ``data``, ``config``, ``templates``, ``versions``: what was measured on, and how.
    Sections of other attacks go to ``sections``, as written."""

    model: ModelIdentity
    clean: Mapping[str, Any]
    similarity: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    excluded_targets: ExcludedTargets = ExcludedTargets()
    retrieval: Mapping[str, Any] | None = None
    templates: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    backdoor: Mapping[str, Any] | None = None
    targeted: Mapping[str, Any] | None = None
    poison: PoisonRef | None = None
    sections: Mapping[str, Any] = field(default_factory=dict)
    schema: str = METRICS_SCHEMA
    schema_version: int = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        d = _jsonable(self)
        sections = d.pop("sections")
        return {**_without_none(d, ("retrieval", "backdoor", "targeted", "poison")), **sections}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = f"<{METRICS_FILE}>") -> "Metrics":
        f = _fields(where, data, _METRICS)
        schema = data.get("schema", METRICS_SCHEMA)
        if schema != METRICS_SCHEMA:
            raise UserError(f"{where}: not a poisonclip metrics file: field 'schema' is {_show(schema)}, not "
                            f"{METRICS_SCHEMA!r}; {_METRICS.remedy}")
        m = f.section("model")
        assert m is not None
        model = ModelIdentity(m.text("name"), m.text("checkpoint"), m.text("checkpoint_sha256", None, null=True),
                              m.text("run", None, null=True), m.integer("train_seed", None, null=True))
        ex = f.section("excluded_targets", None, null=True)
        excluded = ExcludedTargets() if ex is None else ExcludedTargets(
            ex.integer("data", 0), ex.integer("probe_train", 0), ex.texts("keys", ()), ex.text("match", ""))
        p = f.section("poison", None, null=True)
        poison = None if p is None else PoisonRef(p.text("path"), p.text("sha256"), p.text("attack"))
        clean = f.mapping("clean")
        if not isinstance(clean.get("zeroshot"), dict):
            raise f.fail("clean", "must hold the zero-shot measurement 'zeroshot'")
        return cls(model=model, clean=clean, similarity=f.mapping("similarity", {}), config=f.mapping("config", {}),
                   data=f.mapping("data", {}), excluded_targets=excluded, templates=f.mapping("templates", {}),
                   versions=f.mapping("versions", {}), retrieval=f.mapping("retrieval", None, null=True),
                   backdoor=f.mapping("backdoor", None, null=True),
                   targeted=f.mapping("targeted", None, null=True), poison=poison,
                   sections=f.rest(_METRICS_KNOWN), schema=schema)


def write_metrics(folder: str | os.PathLike, metrics: Metrics, *, replace: bool = True) -> Path:
    """Write ``metrics.json`` (last, after ``similarities.npz``). ``replace=False``: raise
    ``FileExistsError`` (writing nothing) if one is there by the time it is written."""
    return atomic_write_json(_folder_file(folder, METRICS_FILE), metrics.to_json(), replace=replace)


def read_metrics(source: str | os.PathLike) -> Metrics:
    """``metrics.json`` of an evaluation folder (or the file itself)."""
    path = _path_of(source, _METRICS)
    _, data = _load(path, _METRICS)
    return dataclasses.replace(Metrics.from_json(data, str(path)), path=path.absolute())


def similarities_bytes(arrays: Mapping[str, Any]) -> bytes:
    """``similarities.npz`` as bytes numpy loads, written by hand because ``np.savez`` stamps the
    current time into the zip and the same inputs must give byte-identical files."""
    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, arr.getvalue())
    return buf.getvalue()


def write_similarities(folder: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Write the evaluator's histogram arrays (edges, clean_counts, triggered_<placement>_counts, ...)."""
    return atomic_write_bytes(_folder_file(folder, SIMILARITIES_FILE), similarities_bytes(arrays))


def read_similarities(source: str | os.PathLike) -> dict[str, Any] | None:
    """The histogram arrays of an evaluation folder (or the file), None when it has none."""
    import numpy as np

    path = Path(source).expanduser()
    path = path / SIMILARITIES_FILE if path.is_dir() else path
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a {SIMILARITIES_FILE} written by `poisonclip eval` ({e}); "
                        "re-run `poisonclip eval`") from None


# --------------------------------------------------------------------------- sweep trial

_TRIAL = _Kind(TRIAL_RESULT_FILE, "trial result", "`poisonclip sweep run`",
               "re-run `poisonclip sweep run` (the trial is redone)", ("name", "config_hash", "params"))


@dataclass(frozen=True)
class TrialResult:
    """``trials/<name>/result.json``: a finished trial, its row of the results table. Written
    atomically as the trial's last step: it is the sweep's "done" marker."""

    name: str
    config_hash: str
    params: Mapping[str, Any]          # the trial's values of the swept axes
    metrics: Mapping[str, Any]         # "data", "model", "poisoned" (flat metrics), "clean", ...
    config: Mapping[str, Any] = field(default_factory=dict)   # the resolved config of every stage
    started: float | None = None
    finished: float | None = None
    wall_s: float | None = None
    host: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _jsonable(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = f"<{TRIAL_RESULT_FILE}>") -> "TrialResult":
        f = _fields(where, data, _TRIAL)
        return cls(name=f.text("name"), config_hash=f.text("config_hash"), params=f.mapping("params"),
                   metrics=f.mapping("metrics", {}), config=f.mapping("config", {}),
                   started=f.number("started", None, null=True), finished=f.number("finished", None, null=True),
                   wall_s=f.number("wall_s", None, null=True), host=f.text("host", None, null=True))


def write_trial_result(folder: str | os.PathLike, result: TrialResult) -> Path:
    return atomic_write_json(_folder_file(folder, TRIAL_RESULT_FILE), result.to_json())


def read_trial_result(source: str | os.PathLike) -> TrialResult:
    """A trial folder's result (or the file); a folder from before the rename: its metrics.json."""
    path = _path_of(source, _TRIAL)
    if path.name == TRIAL_RESULT_FILE and not path.exists() and (path.parent / _OLD_TRIAL_RESULT_FILE).is_file():
        path = path.parent / _OLD_TRIAL_RESULT_FILE
    _, data = _load(path, _TRIAL)
    return TrialResult.from_json(data, str(path))


def remove_trial_result(folder: str | os.PathLike) -> None:
    """Remove a trial's result (and one of the old name) before the trial runs again."""
    for name in (TRIAL_RESULT_FILE, _OLD_TRIAL_RESULT_FILE):
        _folder_file(folder, name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- detection

_DETECT = _Kind(DETECT_INFO_FILE, "detection summary", "`poisonclip detect`", "re-run `poisonclip detect`",
                ("methods", "n_samples", "data"))


def _is_number(v: Any) -> bool:
    return _is_int(v) or isinstance(v, float)


def _numbers(f: _Fields, key: str) -> tuple[float, ...]:
    v = f.get(key, "a list of numbers", lambda v: isinstance(v, list) and all(map(_is_number, v)), [])
    return tuple(float(x) for x in v)


@dataclass(frozen=True)
class FlaggedAt:
    """What a threshold that flags the top ``fraction`` of the data (by score) would do."""

    fraction: float                 # share of all samples flagged (0.01, 0.05)
    n_flagged: int
    threshold: float                # the lowest score flagged
    poisons_found: int
    recall: float                   # poisons_found / n_poisons
    precision: float                # poisons_found / n_flagged
    clean_removed: int              # clean samples the threshold would throw away


@dataclass(frozen=True)
class DetectionScoring:
    """``detect.json`` "scoring.<method>": one detector's scores against the manifest's poisons.

    ``auroc``/``average_precision`` are None when the data holds only poisons or only clean
    samples (undefined). The precision/recall curve is scikit-learn's
    ``precision_recall_curve`` (``thresholds`` one shorter than the other two)."""

    n_poisons: int
    n_clean: int
    auroc: float | None
    average_precision: float | None
    precision: tuple[float, ...] = ()
    recall: tuple[float, ...] = ()
    thresholds: tuple[float, ...] = ()
    flagged: tuple[FlaggedAt, ...] = ()

    @classmethod
    def _read(cls, f: _Fields) -> "DetectionScoring":
        flagged = tuple(FlaggedAt(fraction=g.number("fraction"), n_flagged=g.integer("n_flagged"),
                                  threshold=g.number("threshold"), poisons_found=g.integer("poisons_found"),
                                  recall=g.number("recall"), precision=g.number("precision"),
                                  clean_removed=g.integer("clean_removed")) for g in f.sections("flagged", []))
        return cls(n_poisons=f.integer("n_poisons"), n_clean=f.integer("n_clean"),
                   auroc=f.number("auroc", None, null=True),
                   average_precision=f.number("average_precision", None, null=True),
                   precision=_numbers(f, "precision"), recall=_numbers(f, "recall"),
                   thresholds=_numbers(f, "thresholds"), flagged=flagged)


@dataclass(frozen=True)
class DetectionSummary:
    """``detect.json``: what was scored, how, and (given a manifest) how well; the detection
    folder's completion file, written last, after ``scores.tsv``."""

    data: str                                   # the dataset scored (absolute)
    methods: tuple[str, ...]                    # registered detector names, the score columns' order
    n_samples: int
    scores: str = DETECT_SCORES_FILE
    model: str | None = None                    # the run folder whose model embedded the data
    model_checkpoint_sha256: str | None = None
    manifest: str | None = None                 # the ground truth scored against (None: not scored)
    params: Mapping[str, Any] = field(default_factory=dict)    # per method: its settings
    skipped: Mapping[str, int] = field(default_factory=dict)   # unusable samples, per reason
    scoring: Mapping[str, DetectionScoring] = field(default_factory=dict)
    wall_s: Mapping[str, float] = field(default_factory=dict)  # per method: seconds scoring took
    schema_version: int = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return _jsonable(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = f"<{DETECT_INFO_FILE}>") -> "DetectionSummary":
        f = _fields(where, data, _DETECT)
        methods = f.texts("methods")
        if not methods:
            raise f.fail("methods", "must name one detector at least")
        sc = f.section("scoring", {})
        assert sc is not None
        scoring = {m: DetectionScoring._read(s) for m in sc.data
                   if (s := sc.section(m)) is not None}
        wall = f.get("wall_s", "an object of numbers", lambda v: isinstance(v, dict) and
                     all(map(_is_number, v.values())), {})
        return cls(data=f.text("data"), methods=methods, n_samples=f.integer("n_samples"),
                   scores=f.text("scores", DETECT_SCORES_FILE), model=f.text("model", None, null=True),
                   model_checkpoint_sha256=f.text("model_checkpoint_sha256", None, null=True),
                   manifest=f.text("manifest", None, null=True), params=f.mapping("params", {}),
                   skipped=f.counts("skipped"), scoring=scoring, wall_s={k: float(v) for k, v in wall.items()})


def write_detection_summary(folder: str | os.PathLike, summary: DetectionSummary) -> Path:
    """Write ``detect.json`` (the detection folder's completion file: write it last)."""
    return atomic_write_json(_folder_file(folder, DETECT_INFO_FILE), summary.to_json())


def read_detection_summary(source: str | os.PathLike) -> DetectionSummary:
    """``detect.json`` of a detection folder (or the file itself)."""
    path = _path_of(source, _DETECT)
    _, data = _load(path, _DETECT)
    return dataclasses.replace(DetectionSummary.from_json(data, str(path)), path=path.absolute())


@dataclass(frozen=True)
class DetectionScores:
    """``scores.tsv``: one row per sample in the data's order, its key and one score per method
    (higher = more suspicious). Tab-separated with a header ``key<TAB><method>...``."""

    keys: tuple[str, ...]
    scores: Mapping[str, tuple[float, ...]]     # method -> one score per key

    def __post_init__(self) -> None:
        for m, col in self.scores.items():
            if len(col) != len(self.keys):
                raise ValueError(f"method {m!r}: {len(col)} scores for {len(self.keys)} keys")


def write_detection_scores(folder: str | os.PathLike, table: DetectionScores) -> Path:
    """Write ``scores.tsv`` (keys quoted where they hold a tab, quote or line break)."""
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    methods = list(table.scores)
    w.writerow(["key", *methods])
    for i, key in enumerate(table.keys):
        w.writerow([key, *(repr(float(table.scores[m][i])) for m in methods)])
    return atomic_write_bytes(_folder_file(folder, DETECT_SCORES_FILE), buf.getvalue().encode("utf-8"))


def read_detection_scores(source: str | os.PathLike) -> DetectionScores:
    """``scores.tsv`` of a detection folder (or the file itself)."""
    import csv

    path = Path(source).expanduser()
    path = path / DETECT_SCORES_FILE if path.is_dir() else path
    remedy = "re-run `poisonclip detect`"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not found; give a folder written by `poisonclip detect`") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror}); {remedy}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text, so not a poisonclip score table; {remedy}") from None
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    if not rows or not rows[0] or rows[0][0] != "key" or len(rows[0]) < 2:
        raise UserError(f"{path}: not a poisonclip score table (the header must be key, then one column per "
                        f"method); {remedy}")
    methods = rows[0][1:]
    cols: list[list[float]] = [[] for _ in methods]
    keys = []
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(rows[0]):
            raise UserError(f"{path}: malformed: line {n} has {len(row)} fields, not {len(rows[0])}; {remedy}")
        keys.append(row[0])
        for j, v in enumerate(row[1:]):
            try:
                cols[j].append(float(v))
            except ValueError:
                raise UserError(f"{path}: malformed: line {n}, column '{methods[j]}' is {_show(v)}, not a "
                                f"number; {remedy}") from None
    return DetectionScores(tuple(keys), {m: tuple(c) for m, c in zip(methods, cols)})


# --------------------------------------------------------------------------- audit

_AUDIT = _Kind(AUDIT_INFO_FILE, "audit record", "`poisonclip audit`", "re-run `poisonclip audit`",
               ("methods", "n_samples", "page"))


@dataclass(frozen=True)
class AuditInfo:
    """``audit.json``: an audit folder's completion file, written last. The page and the ranked
    table are for people; the detection folder inside holds every sample's scores."""

    data: str
    methods: tuple[str, ...]
    n_samples: int
    top: int                                  # samples shown on the page and ranked in the table
    n_clusters: int                           # clusters of near-identical images shown
    page: str = AUDIT_PAGE_FILE
    ranking: str = AUDIT_RANKING_FILE
    detection: str = AUDIT_DETECTION_DIR
    manifest: str | None = None               # ground truth shown beside each sample, if known
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _jsonable(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = f"<{AUDIT_INFO_FILE}>") -> "AuditInfo":
        f = _fields(where, data, _AUDIT)
        return cls(data=f.text("data"), methods=f.texts("methods"), n_samples=f.integer("n_samples"),
                   top=f.integer("top"), n_clusters=f.integer("n_clusters", 0), page=f.text("page"),
                   ranking=f.text("ranking", AUDIT_RANKING_FILE), detection=f.text("detection", AUDIT_DETECTION_DIR),
                   manifest=f.text("manifest", None, null=True))


def write_audit_info(folder: str | os.PathLike, info: AuditInfo) -> Path:
    """Write ``audit.json`` (the audit folder's completion file: write it last)."""
    return atomic_write_json(_folder_file(folder, AUDIT_INFO_FILE), info.to_json())


def read_audit_info(source: str | os.PathLike) -> AuditInfo:
    """``audit.json`` of an audit folder (or the file itself)."""
    path = _path_of(source, _AUDIT)
    _, data = _load(path, _AUDIT)
    return AuditInfo.from_json(data, str(path))


# --------------------------------------------------------------------------- defense

_DEFENSE = _Kind(DEFENSE_INFO_FILE, "defense record", "`poisonclip defend`", "re-run `poisonclip defend`",
                 ("defense", "params", "stage"))


@dataclass(frozen=True)
class DefenseInfo:
    """``defense.json``: one defense applied, and what it cost and changed. Written when the
    folder's first product is complete (``stage`` "filtered" or "trained") and again, last of
    all, with ``stage`` "done": the folder is a defense's from its first write on.

    ``removed`` (filter): n_samples, n_kept, n_removed, n_poisons, poisons_removed,
    clean_removed, threshold. ``before`` / ``after``: the evaluations' table columns
    (``evaluate.columns.flat_metrics``) of the model before and after the defense.
    ``cost``: seconds per step (detect_s, train_s, eval_s), and the data it removed or used."""

    defense: str                              # "filter" | "cleanclip"
    data: str                                 # the data read (the poisoned set; cleanclip: the clean subset)
    params: Mapping[str, Any]                 # the defense's settings
    stage: str = "done"                       # "filtered" | "trained" | "done"
    removed: Mapping[str, Any] | None = None
    model: str | None = None                  # the defended model's run folder (relative to this folder)
    before_model: str | None = None           # the run evaluated as "before", if any
    poison: str | None = None                 # the poisoned folder whose attack the evaluations measure
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    cost: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _jsonable(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = f"<{DEFENSE_INFO_FILE}>") -> "DefenseInfo":
        f = _fields(where, data, _DEFENSE)
        stage = f.text("stage")
        if stage not in ("filtered", "trained", "done"):
            raise f.fail("stage", f"must be 'filtered', 'trained' or 'done', not {_show(stage)}")
        return cls(defense=f.text("defense"), data=f.text("data"), params=f.mapping("params"), stage=stage,
                   removed=f.mapping("removed", None, null=True), model=f.text("model", None, null=True),
                   before_model=f.text("before_model", None, null=True), poison=f.text("poison", None, null=True),
                   before=f.mapping("before", None, null=True), after=f.mapping("after", None, null=True),
                   cost=f.mapping("cost", {}))


def write_defense_info(folder: str | os.PathLike, info: DefenseInfo) -> Path:
    """Write ``defense.json`` (atomically; the last write of a defense has ``stage`` done)."""
    return atomic_write_json(_folder_file(folder, DEFENSE_INFO_FILE), info.to_json())


def read_defense_info(source: str | os.PathLike) -> DefenseInfo:
    """``defense.json`` of a defense folder (or the file itself)."""
    path = _path_of(source, _DEFENSE)
    _, data = _load(path, _DEFENSE)
    return DefenseInfo.from_json(data, str(path))
