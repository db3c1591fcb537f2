"""safeload scan on compressed inputs: bounded, streamed, every stream, no silent gaps.

- Compressed files (gzip, bzip2, xz) and deflated zip members inflate within a
  budget: min(max(``Limits.max_inflate_ratio`` x compressed size,
  ``Limits.min_inflate_budget``), ``Limits.max_bytes``, what is left of the
  file's ``Limits.max_inflated_bytes``). Past it, SL303 limit-exceeded says what
  was not scanned and which limit to raise; the exit code is never 0.
- Inflation is streamed: peak memory (tracemalloc sees the decompressors'
  output buffers) is the budget plus a chunk, however large the bomb.
- Every concatenated stream is inflated, so a payload in the second one is found.
- A truncated stream is reported (SL304), never scanned as if it were complete.

Hostile pickles are written byte by byte (protocol 0 is text); nothing here
unpickles anything.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

import safeload
from safeload import Limits
from safeload.scan import FileReport, Skipped, scan_file

OS_SYSTEM = b"cos\nsystem\n(S'echo pwned'\ntR."
CLEAN = pickle.dumps({"step": 3, "lr": 0.1}, protocol=2)
MiB = 1 << 20
BOMB_SIZE = 256 * MiB

#: one-shot compressors, and a streaming compressor for the bombs
KINDS = {
    "gzip": (gzip.compress, lambda: zlib.compressobj(9, zlib.DEFLATED, 31)),
    "bzip2": (bz2.compress, lambda: bz2.BZ2Compressor(9)),
    "xz": (lzma.compress, lambda: lzma.LZMACompressor(preset=1)),
}


def bomb(kind: str, nbytes: int = BOMB_SIZE) -> bytes:
    """``nbytes`` zero bytes, compressed a MiB at a time (never held whole)."""
    obj = KINDS[kind][1]()
    chunk = bytes(MiB)
    return b"".join(obj.compress(chunk) for _ in range(nbytes // MiB)) + obj.flush()


def compress(kind: str, data: bytes) -> bytes:
    return KINDS[kind][0](data)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def report_of(path, **kwargs) -> FileReport:
    report = scan_file(path, **kwargs)
    assert isinstance(report, FileReport), report
    return report


def findings(report: FileReport, rule: str) -> list:
    return [f for f in report.findings if f.rule_name == rule]


def scan_traced(path, **kwargs) -> tuple[FileReport, int]:
    """The report, and the peak of traced allocations while scanning."""
    tracemalloc.start()
    try:
        report = report_of(path, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return report, peak


# --- bombs: bounded memory, a limit finding, a failing exit code -----------------------


@pytest.mark.parametrize("kind", KINDS)
def test_bomb_stops_at_the_budget_with_small_peak_memory(tmp_path, kind):
    data = bomb(kind)
    path = write(tmp_path, f"bomb.{kind}", data)
    report, peak = scan_traced(path)
    # before streaming, the scanner allocated ~560 MiB for the same file
    assert peak < 80 * MiB, f"peak {peak / MiB:.1f} MiB"
    [limit] = findings(report, "limit-exceeded")
    budget = Limits().min_inflate_budget  # the files are far too small for the ratio
    assert limit.member is None and limit.offset is not None
    assert f"more than {budget} bytes" in limit.message
    assert f"stopped after {budget} bytes" in limit.message
    assert f"of {len(data)}" in limit.message  # the compressed size
    assert "Limits.min_inflate_budget" in limit.hint
    assert report.verdict == "error" and not report.complete
    assert safeload.scan(path).exit_code() == 2


def test_bzip2_bomb_is_tiny_and_its_peak_follows_the_budget(tmp_path):
    data = bomb("bzip2")
    assert len(data) < 300  # 256 MiB of zeros
    path = write(tmp_path, "bomb.bz2", data)
    report, peak = scan_traced(path, limits=Limits(min_inflate_budget=8 * MiB))
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert f"more than {8 * MiB} bytes" in findings(report, "limit-exceeded")[0].message


def test_nested_bomb_cannot_multiply_the_budget(tmp_path):
    # gzip of a gzip bomb: the outer stream is small, the inner one is what
    # inflates. The file as a whole keeps to the ratio and floor of its own size.
    data = gzip.compress(bomb("gzip"))
    path = write(tmp_path, "bomb.gz.gz", data)
    report, peak = scan_traced(path)
    assert peak < 80 * MiB, f"peak {peak / MiB:.1f} MiB"
    [limit] = findings(report, "limit-exceeded")
    assert limit.member == "<gzip>"  # the inner stream
    assert "what is left of the file's budget" in limit.message
    assert safeload.scan(path).exit_code() == 2


def test_payload_before_the_bomb_is_still_found(tmp_path):
    # what was inflated before the budget ran out is scanned
    obj = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = obj.compress(OS_SYSTEM) + b"".join(obj.compress(bytes(MiB)) for _ in range(128))
    path = write(tmp_path, "payload-then-zeros.gz", data + obj.flush())
    report = report_of(path)
    assert findings(report, "limit-exceeded")
    assert any(f.global_name == "os.system" for f in findings(report, "dangerous-global"))
    assert safeload.scan(path).exit_code() == 1


def _deflated_zip(members: dict[str, bytes | int]) -> bytes:
    """A zip of deflated members; an int member is that many zero bytes, written
    a MiB at a time."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            if isinstance(content, bytes):
                archive.writestr(name, content)
                continue
            with archive.open(name, "w", force_zip64=True) as member:
                for _ in range(content // MiB):
                    member.write(bytes(MiB))
    return buffer.getvalue()


def test_deflated_zip_member_bomb_gets_the_limit_finding(tmp_path):
    path = write(tmp_path, "bomb.zip",
                 _deflated_zip({"m/data.pkl": CLEAN, "m/zeros.bin": 128 * MiB}))
    report, peak = scan_traced(path)
    assert peak < 80 * MiB, f"peak {peak / MiB:.1f} MiB"
    [limit] = findings(report, "limit-exceeded")
    assert limit.member == "m/zeros.bin" and limit.offset is not None
    assert "deflate data inflates to more than" in limit.message
    assert report.verdict == "error"
    assert safeload.scan(path).exit_code() == 2


# --- benign compressed files still scan clean -----------------------------------------


def _torch_checkpoint() -> bytes:
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
                "b": torch.zeros(1000)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_checkpoint_scans_clean(tmp_path, kind):
    path = write(tmp_path, f"model.pt.{kind}", compress(kind, _torch_checkpoint()))
    report = report_of(path)
    assert report.findings == [] and report.verdict == "clean"
    assert report.format == f"{kind}+zip"
    assert safeload.scan(path).exit_code() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_pickle_in_several_streams_scans_clean(tmp_path, kind):
    # a pickle split across two streams is one pickle once inflated
    path = write(tmp_path, f"state.pkl.{kind}",
                 compress(kind, CLEAN[:10]) + compress(kind, CLEAN[10:]))
    report = report_of(path)
    assert report.findings == [] and report.format == f"{kind}+pickle"


def test_compressed_text_is_still_skipped(tmp_path):
    path = write(tmp_path, "notes.txt.gz", gzip.compress(b"hello\n") + gzip.compress(b"bye\n"))
    assert isinstance(scan_file(path), Skipped)


# --- concatenated streams: every one is scanned ---------------------------------------


@pytest.mark.parametrize("padding", [b"", b"\0" * 4], ids=["adjacent", "zero-padded"])
@pytest.mark.parametrize("kind", KINDS)
def test_payload_in_a_later_stream_is_found(tmp_path, kind, padding):
    data = compress(kind, CLEAN) + padding + compress(kind, b"") + compress(kind, OS_SYSTEM)
    report = report_of(write(tmp_path, f"two.{kind}", data))
    assert report.verdict == "dangerous"
    assert any(f.global_name == "os.system" and f.member == f"<{kind}>"
               for f in findings(report, "dangerous-global"))


def test_stream_of_another_kind_after_the_last_is_a_polyglot(tmp_path):
    data = gzip.compress(CLEAN) + bz2.compress(OS_SYSTEM)
    report = report_of(write(tmp_path, "mixed.gz", data))
    [polyglot] = findings(report, "polyglot")
    assert polyglot.offset == len(gzip.compress(CLEAN))
    assert any(f.global_name == "os.system" for f in findings(report, "dangerous-global"))


# --- truncated and corrupt streams ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_stream_is_not_clean(tmp_path, kind):
    # the end of the stream (checksum, size, index) is missing; what comes
    # before it inflates to the whole, valid pickle
    data = compress(kind, CLEAN)[:-4]
    path = write(tmp_path, f"cut.{kind}", data)
    report = report_of(path)
    [cut] = findings(report, "unreadable")
    assert "truncated" in cut.message
    assert report.verdict == "error" and not report.complete
    assert safeload.scan(path).exit_code() == 2


def test_truncated_second_stream_is_not_clean(tmp_path):
    path = write(tmp_path, "cut2.gz", gzip.compress(CLEAN) + gzip.compress(b"more")[:-3])
    report = report_of(path)
    [cut] = findings(report, "unreadable")
    assert "stream 2" in cut.message
    assert safeload.scan(path).exit_code() == 2


def test_xz_stream_declaring_a_huge_dictionary_is_not_inflated(tmp_path):
    # the block header's LZMA2 property byte rewritten to a 4 GiB dictionary
    # (the header CRC fixed up): the decoder would reserve that much
    data = lzma.compress(CLEAN)
    size = (data[12] + 1) * 4
    header = bytearray(data[12 : 12 + size])
    at = header.find(b"\x21\x01")  # filter id LZMA2, one property byte
    header[at + 2] = 40
    header[-4:] = zlib.crc32(bytes(header[:-4])).to_bytes(4, "little")
    path = write(tmp_path, "dict.xz", data[:12] + bytes(header) + data[12 + size :])
    report = report_of(path)
    [bad] = findings(report, "unreadable")
    assert "could not be inflated" in bad.message and "limit" in bad.message.lower()
    assert safeload.scan(path).exit_code() == 2


def test_corrupt_stream_is_reported_and_what_came_before_scanned(tmp_path):
    second = bytearray(gzip.compress(bytes(1000)))
    second[-8] ^= 0xFF  # the CRC: zlib refuses the stream at its end
    path = write(tmp_path, "crc.gz", gzip.compress(CLEAN) + bytes(second))
    report = report_of(path)
    [bad] = findings(report, "unreadable")
    assert "could not be inflated" in bad.message and "stream 2" in bad.message
    assert safeload.scan(path).exit_code() == 2
    path = write(tmp_path, "crc2.gz", gzip.compress(OS_SYSTEM) + bytes(second))
    assert any(f.global_name == "os.system"
               for f in findings(report_of(path), "dangerous-global"))


def test_compressed_member_nested_too_deeply_is_reported(tmp_path):
    data = gzip.compress(OS_SYSTEM)
    for level in range(4):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(f"level{level}/{'inner.gz' if level == 0 else 'nested.zip'}", data)
        data = buffer.getvalue()
    report = report_of(write(tmp_path, "deep.zip", data))
    assert any("nested too deeply" in f.message for f in findings(report, "unreadable"))
    assert report.verdict != "clean"


def test_model_member_of_a_tar_nested_too_deeply_is_reported(tmp_path):
    import tarfile

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("payload/data.pkl", OS_SYSTEM)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo("inner.zip")
        info.size = len(inner.getvalue())
        archive.addfile(info, io.BytesIO(inner.getvalue()))
    data = tar.getvalue()
    for level in range(4):  # the tar ends up at the depth limit
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(f"level{level}/{'inner.tar' if level == 0 else 'nested.zip'}", data)
        data = buffer.getvalue()
    report = report_of(write(tmp_path, "deep-tar.zip", data))
    deep = [f for f in findings(report, "unreadable") if "nested too deeply" in f.message]
    assert deep and deep[0].member.endswith("inner.zip")
    assert report.verdict != "clean"


# --- each Limits field is honoured ----------------------------------------------------


def test_max_inflate_ratio_is_honoured(tmp_path):
    data = gzip.compress(pickle.dumps([0] * 20_000, protocol=2))
    path = write(tmp_path, "zeros.pkl.gz", data)
    assert report_of(path).verdict == "clean"
    report = report_of(path, limits=Limits(max_inflate_ratio=5, min_inflate_budget=0))
    [limit] = findings(report, "limit-exceeded")
    assert f"more than {5 * len(data)} bytes" in limit.message
    assert "Limits.max_inflate_ratio" in limit.hint


def test_min_inflate_budget_is_honoured(tmp_path):
    path = write(tmp_path, "bomb.bz2", bomb("bzip2", 16 * MiB))
    report = report_of(path, limits=Limits(min_inflate_budget=MiB))
    [limit] = findings(report, "limit-exceeded")
    assert f"more than {MiB} bytes" in limit.message
    assert "Limits.min_inflate_budget" in limit.hint
    # a larger floor lets the same file inflate completely (zeros: not a model file)
    assert isinstance(scan_file(path, limits=Limits(min_inflate_budget=32 * MiB)), Skipped)


def test_max_inflated_bytes_is_honoured_across_members(tmp_path):
    members = {f"m/{i}.pkl": CLEAN for i in range(3)}
    path = write(tmp_path, "three.zip", _deflated_zip(members))
    assert not findings(report_of(path), "limit-exceeded")
    report = report_of(path, limits=Limits(max_inflated_bytes=2 * len(CLEAN) + 1))
    [limit] = findings(report, "limit-exceeded")
    assert limit.member == "m/2.pkl"  # the first two fit, the third does not
    assert "Limits.max_inflated_bytes" in limit.hint


def test_max_bytes_bounds_one_input(tmp_path):
    path = write(tmp_path, "state.pkl.xz", lzma.compress(CLEAN))
    report = report_of(path, limits=Limits(max_bytes=10))
    [limit] = findings(report, "limit-exceeded")
    assert "more than 10 bytes" in limit.message and "Limits.max_bytes" in limit.hint
