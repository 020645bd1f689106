"""Hostile shards: every shard reader ends, on every input, with samples or a counted skip or
a clear error.

Each case is a small file; one worker process (spawned, so no state leaks from the test
process) runs every reader over the cases in turn and reports after each, and the test gives
each case a 10 s bound: a reader that loops makes the report late, and the test names the
case and kills the worker.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import multiprocessing as mp
import queue
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from poisonclip.data.sample import SkipReport
from poisonclip.data.wds_io import read_shards, write_shards
from poisonclip.errors import UserError
from tests.conftest import make_samples

CASE_BOUND_S = 10


def _run_readers(path: str) -> dict:
    """Every reader over one shard: their samples / captions and skip counts, or the error."""
    from poisonclip.data.caption_stream import iter_caption_batches
    from poisonclip.data.tar_io import scan_groups
    from poisonclip.data.wds_io import shard_sizes
    from poisonclip.data.wds_io import count_samples, iter_captions

    out: dict = {}
    readers = {
        "read_shards": lambda r: [s.key for s in read_shards(path, r)],
        "captions": lambda r: [c for b in iter_caption_batches(path, report=r) for c in b.to_pylist()],
        "iter_captions": lambda r: [c for _, c in iter_captions(path, r)],
        "scan_groups": lambda r: [k for k, _ in scan_groups(Path(path), r)],
        "shard_sizes": lambda r: shard_sizes([Path(path)], r),
        "count_samples": lambda r: count_samples([Path(path)], r),
    }
    for name, fn in readers.items():
        report = SkipReport()
        try:
            out[name] = {"result": fn(report), "skipped": dict(report)}
        except UserError as e:
            out[name] = {"user_error": str(e)}
        except Exception as e:  # anything else is a bug the test reports
            out[name] = {"crash": f"{type(e).__name__}: {e}"}
    return out


def _worker(paths: list[str], q) -> None:
    for p in paths:
        q.put((p, _run_readers(p)))


def run_bounded(paths: list[Path]) -> dict[str, dict]:
    """Run every reader over every path in a worker; fail if one case takes > CASE_BOUND_S."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_worker, args=([str(p) for p in paths], q), daemon=True)
    proc.start()
    results: dict[str, dict] = {}
    try:
        for i, p in enumerate(paths):
            bound = CASE_BOUND_S + (30 if i == 0 else 0)  # the first also pays the worker's imports
            try:
                name, res = q.get(timeout=bound)
            except queue.Empty:
                pytest.fail(f"a reader did not finish {p.name} within {bound} s (hang)")
            results[name] = res
    finally:
        proc.kill()
        proc.join(5)
    return results


def _check_outcomes(results: dict[str, dict]) -> None:
    for case, res in results.items():
        for reader, out in res.items():
            assert "crash" not in out, f"{case}: {reader} crashed: {out['crash']}"
            if "user_error" in out:
                assert case in out["user_error"], out  # a clear error names the shard


def _shard(tmp_path: Path, n: int = 5, fmt=tarfile.USTAR_FORMAT, long_names: bool = False) -> Path:
    samples = make_samples(n)
    path = tmp_path / f"real-{fmt}-{long_names}.tar"
    with tarfile.open(path, "w", format=fmt) as tf:
        for s in samples:
            key = ("x" * 120 + "/" + s.key) if long_names else s.key
            for ext, data in (("png", s.image), ("txt", s.caption.encode()),
                              ("json", json.dumps({"label": s.meta["label"]}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _header(name: bytes, size_field: bytes, typ: bytes = b"0") -> bytes:
    h = bytearray(512)
    h[:len(name)] = name
    h[100:108], h[108:116], h[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    h[124:136] = size_field
    h[136:148] = b"00000000000\0"
    h[156:157] = typ
    h[257:265] = b"ustar\x0000"
    return _with_checksum(h)


def _with_checksum(h: bytearray) -> bytes:
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _set_size(data: bytes, header_at: int, field: bytes) -> bytes:
    h = bytearray(data[header_at:header_at + 512])
    h[124:136] = field
    return data[:header_at] + _with_checksum(h) + data[header_at + 512:]


def _header_offsets(path: Path) -> list[int]:
    with tarfile.open(path) as tf:
        return [m.offset for m in tf.getmembers()]


def _pax_shard(records: bytes, pax_size: int | None = None) -> bytes:
    body = records.ljust(-(-len(records) // 512) * 512, b"\0")
    size = len(records) if pax_size is None else pax_size
    member = b"hello world caption"
    return (_header(b"PaxHeader/a", b"%011o\0" % size, typ=b"x") + body
            + _header(b"a.txt", b"%011o\0" % len(member)) + member.ljust(512, b"\0") + bytes(1024))


# --------------------------------------------------------------------------- the cases

def test_crafted_headers_end_with_a_counted_skip(tmp_path):
    """The issue's shards (negative size, pax record of length 0) and their relatives."""
    real = _shard(tmp_path)
    data = real.read_bytes()
    second = _header_offsets(real)[6]  # the first header of the third sample
    neg = _header(b"a.txt", b"-0000001000\0") + b"x" * 3000
    cases = {
        "neg-first.tar": neg,
        "neg-second.tar": _set_size(data, second, b"-0000001000\0"),
        "neg-minus-one.tar": _set_size(data, second, b"-1\0".ljust(12, b"\0")),
        "size-overflow.tar": _set_size(data, second, b"77777777777\0"),
        "base256-huge.tar": _set_size(data, second, b"\x80" + b"\xff" * 11),
        "base256-negative.tar": _set_size(data, second, b"\xff" * 12),
        "pax-length-0.tar": _pax_shard(b"0 path=x\n"),
        "pax-length-1.tar": _pax_shard(b"1 path=x\n"),
        "pax-negative-size.tar": _pax_shard(b"15 size=-50000\n"),
        "pax-size-overflow.tar": _pax_shard(b"25 size=99999999999999\n"),
        "pax-huge-length.tar": _pax_shard(b"99999999999 path=x\n"),
        "pax-huge-header.tar": _pax_shard(b"17 path=abcdefg\n", pax_size=1 << 40),
        # Python < 3.11.10 parses pax records in quadratic time (CVE-2024-6232): the size cap bounds it
        "pax-slow-regex.tar": _pax_shard(b"9" * 8000 + b" "),
        "pax-slow-regex-big.tar": _pax_shard(b"9" * 200_000 + b" "),
    }
    paths = []
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        paths.append(tmp_path / name)
    results = run_bounded(paths)
    _check_outcomes(results)
    for name in cases:
        got = results[str(tmp_path / name)]["read_shards"]
        assert "user_error" in got or sum(got["skipped"].values()) >= 1, (name, got)
    # damage at the third sample keeps the first; the one being assembled is lost, and counted
    got = results[str(tmp_path / "neg-second.tar")]["read_shards"]
    assert got["result"] == ["s0000"] and got["skipped"] == {"truncated_tar": 1}


@pytest.mark.parametrize("fmt,long_names", [(tarfile.USTAR_FORMAT, False), (tarfile.GNU_FORMAT, True),
                                            (tarfile.PAX_FORMAT, True)])
def test_truncated_shards_keep_a_prefix_and_count_the_loss(tmp_path, fmt, long_names):
    real = _shard(tmp_path, n=4, fmt=fmt, long_names=long_names)
    data = real.read_bytes()
    full = [s.key for s in read_shards(real)]
    assert len(full) == 4
    cuts = sorted(set(range(0, len(data), 97)) | {len(data) - 1, 511, 512, 513})
    paths = []
    for c in cuts:
        p = tmp_path / f"cut-{c:06d}.tar"
        p.write_bytes(data[:c])
        paths.append(p)
    results = run_bounded(paths)
    _check_outcomes(results)
    for p in paths:
        res = results[str(p)]
        got, skipped = res["read_shards"]["result"], res["read_shards"]["skipped"]
        assert got == full[:len(got)], p.name
        if len(got) < len(full):  # nothing lost silently
            assert skipped.get("truncated_tar") == 1, (p.name, skipped)
        caps = res["captions"]
        assert len(caps["result"]) == len(got) and caps["skipped"].get("truncated_tar") == skipped.get("truncated_tar")


def test_random_bytes_and_mutated_headers_terminate(tmp_path):
    rng = np.random.default_rng(12)
    real = _shard(tmp_path, n=3)
    data = real.read_bytes()
    heads = _header_offsets(real)
    paths = []
    for i in range(40):  # pure noise, some with a valid-looking first header
        blob = rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
        if i % 4 == 0:
            blob = _header(b"n.txt", b"%011o\0" % int(rng.integers(0, 10**6))) + blob
        paths.append(tmp_path / f"noise-{i:03d}.tar")
        paths[-1].write_bytes(blob)
    for i in range(80):  # a few bytes of one header changed, checksum fixed half the time
        at = heads[int(rng.integers(0, len(heads)))]
        h = bytearray(data[at:at + 512])
        for pos in rng.integers(0, 512, int(rng.integers(1, 6))):
            h[int(pos)] = int(rng.integers(0, 256))
        blob = data[:at] + (_with_checksum(h) if i % 2 else bytes(h)) + data[at + 512:]
        paths.append(tmp_path / f"mutated-{i:03d}.tar")
        paths[-1].write_bytes(blob)
    results = run_bounded(paths)
    _check_outcomes(results)
    keys = [s.key for s in read_shards(real)]
    for p in paths:
        got = results[str(p)]["read_shards"]
        if "result" in got and p.name.startswith("mutated"):
            n_lost = sum(got["skipped"].values())
            assert len(got["result"]) + n_lost >= 1, (p.name, got)  # something read or counted
            assert set(got["result"]) <= set(keys) | {""}, p.name


# --------------------------------------------------------------------------- compression, size caps

def test_compressed_shards_are_refused_before_decompressing(tmp_path):
    """A 65 KB gzip "shard" of a 64 MiB tar: refused, and reading it costs far less than its size."""
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("k.txt")
        info.size = 64 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    raw = big.getvalue()
    import pyarrow.compute  # noqa: F401  (imports are not what is measured)

    from poisonclip.data.caption_stream import iter_caption_batches
    for name, blob in (("bomb.tar", gzip.compress(raw, 9)), ("x.tar", lzma.compress(raw[:1 << 20]))):
        p = tmp_path / name
        p.write_bytes(blob)
        tracemalloc.start()
        try:
            with pytest.raises(UserError, match="compressed"):
                list(read_shards(p))
            with pytest.raises(UserError, match="compressed"):
                list(iter_caption_batches(p))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10 * len(blob) + (1 << 20), (name, len(blob), peak)
    assert len((tmp_path / "bomb.tar").read_bytes()) < 100_000


def test_a_member_over_the_cap_is_a_counted_skip_and_never_read(tmp_path):
    from poisonclip.data.tar_io import iter_groups, shard_captions

    samples = make_samples(3)
    write_shards(samples, tmp_path / "w")
    shard = tmp_path / "w" / "00000.tar"
    cap = max(len(s.image) for s in samples) - 1  # every image is over it
    report = SkipReport()
    assert list(iter_groups(shard, report, max_member=cap)) == []
    assert report == {"member_too_large": 3}
    report = SkipReport()
    assert shard_captions(shard, report, max_member=cap) == []
    assert report == {"member_too_large": 3}
    # the default cap lets ordinary samples through
    assert [s.key for s in read_shards(shard)] == [s.key for s in samples]


def test_data_info_reports_hostile_shards_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from poisonclip.cli import app

    runner = CliRunner()
    neg = tmp_path / "neg.tar"
    neg.write_bytes(_header(b"a.txt", b"-0000001000\0") + b"x" * 3000)
    r = runner.invoke(app, ["data", "info", str(neg)])
    assert r.exit_code == 0 and "0 readable samples" in r.output and "truncated_tar=1" in r.output
    gz = tmp_path / "gz.tar"
    gz.write_bytes(gzip.compress(_shard(tmp_path).read_bytes()))
    r = runner.invoke(app, ["data", "info", str(gz)])
    assert r.exit_code == 2 and "gzip-compressed" in r.output and "Traceback" not in r.output
