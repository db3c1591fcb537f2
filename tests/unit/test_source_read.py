"""Reading a large file: huge-page buffer and one share per thread.

``Source.open`` reads files of ``PARALLEL_FROM`` bytes or more with several
``os.preadv`` calls at once. The thresholds are lowered here so that small
files take that path; the bytes, the file position afterwards and a file that
ends early must all come out as one plain read gives them.
"""

from __future__ import annotations

import gzip
import io
import os

import numpy as np
import pytest

import safeload
from safeload.formats import source as source_mod
from safeload.formats.source import Source

pytestmark = pytest.mark.skipif(not hasattr(os, "preadv"), reason="no os.preadv here")


@pytest.fixture
def parallel(monkeypatch):
    monkeypatch.setattr(source_mod, "PARALLEL_FROM", 1 << 10)
    monkeypatch.setattr(source_mod, "_ALIGN", 4096)
    monkeypatch.setattr(source_mod, "_THREADS", 3)
    monkeypatch.setattr(source_mod, "_POPULATE_FROM", 1 << 10)


def _payload(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("size", [1 << 10, 12_289, 3 * 4096, 100_003])
def test_parallel_read_gives_the_file_bytes(tmp_path, parallel, size):
    path = tmp_path / "f.bin"
    data = _payload(size)
    path.write_bytes(data)
    src = Source.open(path)
    assert src.size == size
    assert bytes(src.view(0, size)) == data


def test_parallel_read_starts_at_the_file_position_and_leaves_it_at_the_end(tmp_path,
                                                                           parallel):
    path = tmp_path / "f.bin"
    data = _payload(50_000)
    path.write_bytes(b"HEADER" + data)
    with open(path, "rb") as fh:
        fh.read(6)
        src = Source.open(fh)
        assert fh.tell() == 6 + len(data)
    assert bytes(src.view(0, src.size)) == data


def test_a_short_read_keeps_the_bytes_before_the_gap(tmp_path, parallel, monkeypatch):
    path = tmp_path / "f.bin"
    data = _payload(40_000)
    path.write_bytes(data)
    real = os.preadv

    def short(fd, buffers, offset):
        if offset >= 16_384:  # as if the file ended there while the threads read
            return 0
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", short)
    src = Source.open(path)
    got = bytes(src.view(0, src.size))
    assert 0 < len(got) <= 16_384 and got == data[: len(got)]


def test_an_error_in_a_reading_thread_reaches_the_caller(tmp_path, parallel, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(_payload(40_000))
    real = os.preadv

    def failing(fd, buffers, offset):
        if offset > 0:
            raise OSError(5, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", failing)
    with pytest.raises(OSError, match="Input/output"):
        Source.open(path)


def test_wrappers_are_read_through_their_own_read(tmp_path, parallel):
    # a GzipFile's fileno() is the compressed file's: reading that descriptor
    # would give the wrong bytes, so only plain files take the parallel path
    path = tmp_path / "f.gz"
    data = _payload(30_000)
    with gzip.open(path, "wb") as fh:
        fh.write(data)
    with gzip.open(path, "rb") as fh:
        assert source_mod._plain_fd(fh) is None
        src = Source.open(fh)
    assert bytes(src.view(0, src.size)) == data
    assert source_mod._plain_fd(io.BytesIO(b"x")) is None


def test_a_checkpoint_read_in_parallel_loads_the_same(tmp_path, parallel):
    torch = pytest.importorskip("torch")
    path = tmp_path / "m.pt"
    state = {f"w{i}": torch.arange(i * 1000, dtype=torch.float32) for i in range(1, 30)}
    torch.save(state, path)
    assert os.path.getsize(path) > source_mod.PARALLEL_FROM
    got = safeload.load(path)
    for key, value in state.items():
        assert np.array_equal(got[key], value.numpy())
