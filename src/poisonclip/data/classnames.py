"""The class list: ``classnames.txt`` (one name per line, in label-index order), where it is
found beside a dataset, and the check that labels an attack uses are in it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from poisonclip.contracts import CLASSNAMES_FILE
from poisonclip.data import dataset_kind
from poisonclip.data.wds_io import expand_shards
from poisonclip.errors import UserError


def read_classnames(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: class-name file not found; give one class name per line")
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise UserError(f"{path}: class-name file is empty")
    if len(set(names)) != len(names):
        raise UserError(f"{path}: class names repeat; each class needs one distinct name")
    return names


def find_classnames(source: str | os.PathLike) -> Path | None:
    """``classnames.txt`` beside a table, or beside / one folder above the shards."""
    if dataset_kind(source) == "csv":
        candidates = [Path(source).parent / CLASSNAMES_FILE]
    else:
        first = expand_shards(source)[0].parent
        candidates = [first / CLASSNAMES_FILE, first.parent / CLASSNAMES_FILE]
    return next((c for c in candidates if c.is_file()), None)


def resolve_classnames(explicit: str | None, disabled: bool, data: str,
                       labels: Sequence[str]) -> tuple[list[str] | None, str | None]:
    """The class list (explicit file, else ``classnames.txt`` near the data) and its path.

    Every label in ``labels`` must be in it: a label outside the list could be neither
    excluded from the backdoor sources nor measured by the zero-shot evaluation.
    """
    if disabled:
        return None, None
    path = Path(explicit) if explicit else find_classnames(data)
    if path is None:
        return None, None
    names = read_classnames(path)
    for label in labels:
        if label not in names:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise UserError(f"{path}: label {label!r} is not in the class list ({len(names)} classes: {shown}); "
                            "use a listed label, another class list (setting `classnames`), or none "
                            "(`no_classnames`)")
    return names, str(path.resolve())
