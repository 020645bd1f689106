"""Labelled evaluation sets: an ImageFolder tree or a table with a label column.

Both give samples whose ``meta["label"]`` is an index into an ordered class-name list; the
order matters because zero-shot heads and probes index classes by it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from poisonclip.contracts import CLASSNAMES_FILE, TEST_TABLE
from poisonclip.data.classnames import read_classnames
from poisonclip.data.csv_io import CsvFormat, read_csv, write_csv
from poisonclip.data.sample import IMAGE_EXTS, CorruptSample, Sample, SkipReport, decode_image, read_image_file
from poisonclip.errors import UserError
from poisonclip.io_utils import atomic_write_text


@dataclass(frozen=True)
class LabelledSet:
    samples: list[Sample]
    classnames: list[str]

    @property
    def labels(self) -> list[int]:
        return [int(s.meta["label"]) for s in self.samples]


def read_image_folder(root: str | os.PathLike, classnames: Sequence[str] | None = None,
                      report: SkipReport | None = None, verify: bool = True) -> LabelledSet:
    """``root/<class>/<image>``; class order from ``classnames`` / ``classnames.txt`` / sorted folders."""
    root = Path(root)
    report = report if report is not None else SkipReport()
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; expected one sub-folder of images per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classnames is None:
        classnames = read_classnames(root / CLASSNAMES_FILE) if (root / CLASSNAMES_FILE).exists() else folders
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise UserError(f"{root}: folders {unknown} are not in the class list {list(classnames)}")
    samples = []
    for label, name in enumerate(classnames):
        d = root / name
        if not d.is_dir():
            continue
        for img in sorted(d.iterdir()):
            if img.name.startswith("."):  # .DS_Store and the like
                continue
            ext = img.suffix.lower().lstrip(".")
            if ext not in IMAGE_EXTS:
                report.skip("unsupported_format")
                continue
            try:
                data = read_image_file(img)
                if verify:
                    decode_image(data)
            except CorruptSample as e:
                report.skip(e.reason)
                continue
            samples.append(Sample(key=f"{name}_{img.stem}", image=data, caption=name,
                                  meta={"label": label, "source_path": str(img)}, ext=ext))
    if not samples:
        raise UserError(f"{root}: no readable images in any class folder")
    return LabelledSet(samples, list(classnames))


def read_labelled_csv(path: str | os.PathLike, classnames: Sequence[str] | None = None,
                      img_key: str = "filepath", label_key: str = "label",
                      report: SkipReport | None = None, verify: bool = True) -> LabelledSet:
    """A table with an image column and a label column (class index or class name)."""
    path = Path(path)
    if classnames is None:
        cn = path.parent / CLASSNAMES_FILE
        if not cn.exists():
            raise UserError(f"{path}: no class list; put {CLASSNAMES_FILE} beside it or give one (setting `classnames`)")
        classnames = read_classnames(cn)
    classnames = list(classnames)
    index = {n: i for i, n in enumerate(classnames)}
    samples = []
    # The label column doubles as the "caption" column so read_csv's checks apply to it.
    for s in read_csv(path, CsvFormat(img_key=img_key, caption_key=label_key), report, verify):
        raw = s.caption.strip()
        if raw in index:
            label = index[raw]
        elif raw.lstrip("-").isdigit() and 0 <= int(raw) < len(classnames):
            label = int(raw)
        else:
            raise UserError(f"{path}: label {raw!r} of {s.key} is neither a class name nor an index "
                            f"below {len(classnames)}; check the class list")
        samples.append(Sample(s.key, s.image, classnames[label], {**s.meta, "label": label}, s.ext))
    if not samples:
        raise UserError(f"{path}: no readable labelled images")
    return LabelledSet(samples, classnames)


def load_labelled(path: str | os.PathLike, classnames_file: str | os.PathLike | None = None,
                  report: SkipReport | None = None) -> LabelledSet:
    path = Path(path)
    names = read_classnames(classnames_file) if classnames_file else None
    if path.is_dir():
        return read_image_folder(path, names, report)
    return read_labelled_csv(path, names, report=report)


def write_labelled_csv(samples: Iterable[Sample], classnames: Sequence[str],
                       out_dir: str | os.PathLike, name: str = TEST_TABLE,
                       image_dir: str = "test_images", path_root: str | os.PathLike | None = None) -> Path:
    """Images + a table with a ``label`` column + ``classnames.txt`` (written first);
    ``path_root`` as in ``write_csv``."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / CLASSNAMES_FILE, "\n".join(classnames) + "\n")
    return write_csv(samples, out_dir, name=name, image_dir=image_dir, extra_columns=("label",),
                     path_root=path_root)
