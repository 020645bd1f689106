"""Every training caption of a dataset, streamed as pyarrow string arrays: what caption search
scans, at a cost that fits Conceptual-Captions scale (memory bounded by one batch)."""

from __future__ import annotations

import os

from poisonclip.data import dataset_kind
from poisonclip.data.csv_io import CsvFormat, csv_columns, csv_separator
from poisonclip.data.sample import SkipReport
from poisonclip.data.tar_io import shard_captions
from poisonclip.data.wds_io import expand_shards
from poisonclip.errors import UserError

# pyarrow cannot parse a row longer than one block: as long as the csv module's field limit
# (``csv_io``), so both readers agree on which rows are too long.
_CSV_BLOCK = 1 << 24


def iter_caption_batches(source: str | os.PathLike, fmt: CsvFormat = CsvFormat(),
                         report: SkipReport | None = None, batch_size: int = 1 << 16):
    """Stream every non-empty training caption as pyarrow string arrays.

    CSV: pyarrow's multi-threaded streaming CSV reader, caption column only (the same
    quoting rules as the pandas reader open_clip uses). WebDataset: the ``.txt`` member of
    every sample that has an image, found by the tar header scan (``tar_io.shard_captions``).
    """
    import pyarrow as pa

    report = report if report is not None else SkipReport()
    if dataset_kind(source) == "csv":
        import pyarrow.csv as pcsv

        csv_columns(source, fmt)  # the file and its columns exist, else a UserError

        def bad_row(row) -> str:
            report.skip("bad_row")
            return "skip"

        def unreadable(e: Exception) -> UserError:
            return UserError(f"{source}: cannot read the table ({str(e).splitlines()[0]})")

        # Read as bytes: one caption that is not UTF-8 costs its row, not the table.
        try:
            batches = iter(pcsv.open_csv(
                str(source),
                read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK, use_threads=True),
                parse_options=pcsv.ParseOptions(delimiter=csv_separator(source, fmt), newlines_in_values=True,
                                                invalid_row_handler=bad_row),
                convert_options=pcsv.ConvertOptions(include_columns=[fmt.caption_key],
                                                    column_types={fmt.caption_key: pa.binary()},
                                                    strings_can_be_null=False)))
        except pa.ArrowInvalid as e:
            raise unreadable(e) from None
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise unreadable(e) from None
            col = batch.column(0)
            if len(col):
                yield _decode_captions(col, report)
        return
    for shard in expand_shards(source):
        raw = shard_captions(shard, report)
        for i in range(0, len(raw), batch_size):
            yield _decode_captions(raw[i:i + batch_size], report)


def _decode_captions(raw, report: SkipReport):
    """UTF-8-checked, non-blank captions as a pyarrow string array (checks run in C).

    ``raw``: a list of bytes or a pyarrow binary array (nulls count as missing).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = raw if isinstance(raw, pa.Array) else pa.array(raw, pa.binary())
    n_null = arr.null_count
    if n_null:
        report.skip("missing_caption", n_null)
        arr = arr.drop_null()
    try:
        arr = arr.cast(pa.string())
    except pa.ArrowInvalid:  # some caption is not UTF-8: find and count it the slow way
        good = []
        for b in arr.to_pylist():
            try:
                good.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                report.skip("caption_not_utf8")
        arr = pa.array(good, pa.string())
    ok = pc.invert(pc.equal(pc.utf8_trim_whitespace(arr), ""))
    n_bad = len(arr) - (pc.sum(ok).as_py() or 0)
    if n_bad:
        report.skip("missing_caption", n_bad)
        arr = pc.filter(arr, ok)
    return arr
