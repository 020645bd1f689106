"""``similarities.npz``: the evaluator's histogram arrays (Figure 3), written and read here only.

The arrays are the counts behind the similarity histograms and curves of one evaluation
(``edges``, ``clean_counts``, ``triggered_<test>_counts``, ...); ``metrics.json`` names the
file, the sweep report reads it back to draw Figure 3.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from poisonclip.io_utils import atomic_write_bytes

SIMILARITIES_FILE = "similarities.npz"


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz numpy can load, written by hand because ``np.savez`` stamps the current time
    into the zip and same inputs must give byte-identical files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, arr.getvalue())
    return buf.getvalue()


def write_similarities(eval_dir: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """``eval_dir/similarities.npz``, atomically and byte-reproducibly."""
    return atomic_write_bytes(Path(eval_dir) / SIMILARITIES_FILE, npz_bytes(arrays))


def read_similarities(eval_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The evaluator's histogram arrays (``similarities.npz``) for Figure 3, if written."""
    path = Path(eval_dir) / SIMILARITIES_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
