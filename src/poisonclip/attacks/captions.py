"""Caption sets Y' for a target label (paper section 3.1).

Two built-in sources, registered by name (``CAPTION_SETS``; a registered set of your own is a
source like these): *search* (every training caption that names the label as a word; the only
one allowed for backdoors, which assume no knowledge of the zero-shot prompts) and *templates*
(CLIP's 80 ImageNet prompts, as open_clip ships them, filled with the label). A set is then
sized to the poison count: a random subset, repeated only when the set is too small.

Search runs one RE2 regular expression per label over pyarrow string batches (pyarrow's
``match_substring_regex``), which scans millions of captions per second in C++; captions
are streamed, and only the matches are kept.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from poisonclip.attacks.registry import CAPTION_SETS, register_caption_set
from poisonclip.data.caption_stream import iter_caption_batches
from poisonclip.data.csv_io import CsvFormat
from poisonclip.data.sample import SkipReport
from poisonclip.errors import SettingError, UserError
from poisonclip.io_utils import atomic_write_json

CAPTION_SET_FORMAT = "poisonclip-caption-set"


# --------------------------------------------------------------------------- matching

_IRREGULAR = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
    "goose": "geese", "foot": "feet", "tooth": "teeth", "ox": "oxen", "louse": "lice",
    "fish": "fish", "sheep": "sheep", "deer": "deer", "cactus": "cacti", "leaf": "leaves",
    "knife": "knives", "wolf": "wolves", "loaf": "loaves", "shelf": "shelves", "half": "halves",
}


def plural_forms(label: str) -> list[str]:
    """English plurals of the label's last word (small rule set plus common irregulars).

    Over-generation is harmless (a form that is not a word matches nothing), so the rules
    are generous rather than exact.
    """
    words = label.split()
    if not words:
        return []
    head, last = words[:-1], words[-1]
    low = last.lower()
    forms = {last + "s"}
    if low.endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.add(last + "es")
    if len(low) > 1 and low.endswith("y") and low[-2] not in "aeiou":
        forms.add(last[:-1] + "ies")
    if low in _IRREGULAR:
        forms.add(_IRREGULAR[low])
    return [" ".join([*head, f]) for f in sorted(forms) if f.lower() != low]


def label_pattern(label: str, plurals: bool = True) -> str:
    """RE2 pattern (use case-insensitively) matching the label as whole words.

    Word boundaries are spelled out as "not a letter, digit or underscore" (Unicode classes)
    instead of ``\\b``, which is ASCII-only in RE2 and misbehaves at labels that start or
    end with punctuation ("t-shirt", "c++"). Words of a multi-word label may be separated by
    any whitespace.
    """
    label = " ".join(label.split())
    if not label:
        raise UserError("target label is empty; give a class name such as 'basketball'")
    forms = [label, *(plural_forms(label) if plurals else [])]
    alts = sorted({r"\s+".join(re.escape(w) for w in f.split()) for f in forms}, key=lambda s: (-len(s), s))
    return _OPEN + "|".join(alts) + _CLOSE


_OPEN, _CLOSE = r"(?:^|[^\pL\pN_])(?:", r")(?:[^\pL\pN_]|$)"


def any_label_pattern(labels: Sequence[str], plurals: bool = True) -> str:
    """One pattern that matches a caption naming any of ``labels`` (as ``label_pattern`` does
    for one): the word-boundary groups are shared, so RE2 runs one automaton over the text."""
    inner = [label_pattern(lab, plurals)[len(_OPEN):-len(_CLOSE)] for lab in labels]
    return _OPEN + "|".join(inner) + _CLOSE


class LabelMatcher:
    """Does a caption name the label? One compiled pattern, applied to whole batches."""

    def __init__(self, label: str, plurals: bool = True):
        self.label = label
        self.plurals = plurals
        self.pattern = label_pattern(label, plurals)

    def mask(self, captions) -> np.ndarray:
        """Boolean mask over a pyarrow string array (or a list of str)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = captions if isinstance(captions, (pa.Array, pa.ChunkedArray)) else pa.array(list(captions), pa.string())
        m = pc.match_substring_regex(arr, pattern=self.pattern, ignore_case=True)
        return np.asarray(m.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)

    def __call__(self, caption: str) -> bool:
        return bool(self.mask([caption])[0])

    def protected_words(self) -> frozenset[str]:
        """Lower-case words of the label and its plurals (never altered by evasion)."""
        forms = [self.label, *(plural_forms(self.label) if self.plurals else [])]
        return frozenset(w.lower() for f in forms for w in f.split())


# --------------------------------------------------------------------------- sets

@dataclass(frozen=True)
class CaptionSet:
    """The caption set Y' for one label, with where it came from."""

    label: str
    source: str                  # the registered caption-set name that built it
    captions: tuple[str, ...]    # distinct captions, in first-seen order
    n_scanned: int = 0           # captions searched (search only)
    n_matched: int = 0           # matching captions, repeats included (search only)
    dataset: str | None = None
    plurals: bool | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def to_json(self) -> dict:
        return {"format": CAPTION_SET_FORMAT, "version": 1, **asdict(self), "captions": list(self.captions)}

    def require_nonempty(self) -> "CaptionSet":
        if not self.captions:
            where = self.dataset or "the dataset"
            raise UserError(f"{where}: label {self.label!r} appears in none of the {self.n_scanned} captions "
                            f"searched (0 found{', plurals included' if self.plurals else ''}); "
                            "choose a label the captions use, or `caption_source` templates for targeted poisoning")
        return self


def openai_templates() -> tuple:
    """``open_clip.OPENAI_IMAGENET_TEMPLATES``, without importing torch when open_clip isn't loaded.

    ``import open_clip`` pulls in torch and torchvision (seconds); the templates live in a
    dependency-free module of the package, which is loaded on its own here.
    """
    loaded = sys.modules.get("open_clip")
    if loaded is not None:
        return tuple(loaded.OPENAI_IMAGENET_TEMPLATES)
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise UserError("open_clip is not installed; install open_clip_torch")
    path = Path(spec.origin).parent / "zero_shot_metadata.py"
    mspec = importlib.util.spec_from_file_location("_poisonclip_open_clip_zero_shot_metadata", path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return tuple(module.OPENAI_IMAGENET_TEMPLATES)


def template_captions(label: str) -> CaptionSet:
    """CLIP's 80 ImageNet prompt templates (``open_clip.OPENAI_IMAGENET_TEMPLATES``) filled in."""
    label = " ".join(label.split())
    if not label:
        raise UserError("target label is empty; give a class name such as 'basketball'")
    caps = tuple(dict.fromkeys(t(label) for t in openai_templates()))
    return CaptionSet(label=label, source="templates", captions=caps)


def search_captions(dataset: str | os.PathLike, labels: Sequence[str], plurals: bool = True,
                    fmt: CsvFormat = CsvFormat(), report: SkipReport | None = None) -> dict[str, CaptionSet]:
    """Search sets for several labels in one streaming pass over the dataset's captions.

    Skipped rows are folded into ``report`` with ``SkipReport.merge_max``: other passes over
    the same data (source drawing) meet the same broken rows, and each counts once.
    """
    own = SkipReport()
    try:
        return _search(dataset, labels, plurals, fmt, own)
    finally:
        if report is not None:
            report.merge_max(own)


def _search(dataset: str | os.PathLike, labels: Sequence[str], plurals: bool, fmt: CsvFormat,
            report: SkipReport) -> dict[str, CaptionSet]:
    """One RE2 scan per batch with every label in one pattern; only the few matching rows are
    then sorted by label. (A scan per label cost as much as separate searches: 3M captions,
    five labels: 1.7 s before, see bench/bench_caption_search.py.)"""
    import pyarrow as pa
    import pyarrow.compute as pc

    matchers = {lab: LabelMatcher(lab, plurals) for lab in dict.fromkeys(labels)}
    combined = any_label_pattern(list(matchers), plurals)
    hits: list = []
    n = 0
    for arr in iter_caption_batches(dataset, fmt, report):
        n += len(arr)
        found = pc.filter(arr, pc.match_substring_regex(arr, pattern=combined, ignore_case=True))
        if len(found):
            hits.append(found)
    hits_all = pa.chunked_array(hits, pa.string())
    sets = {}
    for lab, m in matchers.items():
        mine = hits_all if len(matchers) == 1 else pc.filter(
            hits_all, pc.match_substring_regex(hits_all, pattern=m.pattern, ignore_case=True))
        sets[lab] = CaptionSet(label=lab, source="search",
                               captions=tuple(dict.fromkeys(mine.to_pylist())),
                               n_scanned=n, n_matched=len(mine), dataset=str(dataset), plurals=plurals)
    return sets


@register_caption_set("search")
def search_caption_set(label: str, dataset: str | os.PathLike | None = None, plurals: bool = True,
                       fmt: CsvFormat = CsvFormat(), report: SkipReport | None = None) -> CaptionSet:
    """Training captions that contain the label as a word (case-insensitive, plurals optional)."""
    if dataset is None:
        raise UserError("caption search needs a dataset to search; pass one")
    return search_captions(dataset, [label], plurals, fmt, report)[label]


@register_caption_set("templates")
def templates_caption_set(label: str, dataset: str | os.PathLike | None = None, plurals: bool = True,
                          fmt: CsvFormat = CsvFormat(), report: SkipReport | None = None) -> CaptionSet:
    """CLIP's 80 zero-shot prompt templates filled with the label (adversary knows the prompts)."""
    return template_captions(label)


def check_caption_source(setting: str, name: object) -> str:
    """``name`` if it is a registered caption set, else a SettingError for ``setting``."""
    known = CAPTION_SETS.names()
    if name not in known:
        raise SettingError(setting, f"{name!r} is not one of {', '.join(known)}")
    return str(name)


def build_caption_set(source: str, label: str, dataset: str | os.PathLike | None = None,
                      plurals: bool = True, fmt: CsvFormat = CsvFormat(),
                      report: SkipReport | None = None) -> CaptionSet:
    """The registered builder for ``source`` ("search", "templates", or one of your own)."""
    return CAPTION_SETS.get(str(source))(label, dataset=dataset, plurals=plurals, fmt=fmt, report=report)


def size_captions(captions: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` captions: a random subset without replacement, or whole repeats plus a subset.

    Repeats happen only when the set has fewer than ``n`` captions; the result is shuffled.
    """
    if n <= 0:
        raise UserError(f"number of poisons must be positive, got {n}")
    k = len(captions)
    if k == 0:
        raise ValueError("cannot size an empty caption set")
    if k >= n:
        idx = rng.choice(k, size=n, replace=False)
    else:
        reps, rem = divmod(n, k)
        idx = np.concatenate([np.tile(np.arange(k), reps), rng.choice(k, size=rem, replace=False)])
        rng.shuffle(idx)
    return [captions[int(i)] for i in idx]


# --------------------------------------------------------------------------- files

def save_caption_set(cs: CaptionSet, path: str | os.PathLike) -> Path:
    """JSON file that ``--caption-file`` reuses (search a large dataset once, poison many times)."""
    return atomic_write_json(path, cs.to_json())


def load_caption_set(path: str | os.PathLike) -> CaptionSet:
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read caption set ({e.strerror})") from None
    except ValueError:
        raise UserError(f"{path}: not JSON; write caption sets with `poisonclip poison captions --out`") from None
    if not isinstance(obj, dict) or obj.get("format") != CAPTION_SET_FORMAT:
        raise UserError(f"{path}: not a poisonclip caption set; write one with `poisonclip poison captions --out`")
    caps = obj.get("captions")
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise UserError(f"{path}: 'captions' must be a list of strings")
    return CaptionSet(label=str(obj.get("label", "")), source=str(obj.get("source", "")), captions=tuple(caps),
                      n_scanned=int(obj.get("n_scanned") or 0), n_matched=int(obj.get("n_matched") or 0),
                      dataset=obj.get("dataset"), plurals=obj.get("plurals"))
