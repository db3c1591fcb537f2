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
import time

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


# --- the spare: a freed buffer kept for the next load ------------------------------------

needs_madv_free = pytest.mark.skipif(not source_mod._Spare.usable, reason="no MADV_FREE here")


@pytest.fixture
def spare(monkeypatch, parallel):
    """A fresh spare slot, used from 1 KiB on."""
    monkeypatch.setattr(source_mod, "_REUSE_FROM", 1 << 10)
    slot = source_mod._Spare()
    monkeypatch.setattr(source_mod, "_SPARE", slot)
    yield slot
    slot.drop()


def _mapping_of(src: Source):
    array = src._buffer.obj  # the views' exporter: the array over the mapping
    base = array.base
    return base.obj if isinstance(base, memoryview) else base


def _spare_and_next(tmp_path, spare, next_size: int):
    """Load a 100 000-byte file and drop it (its mapping becomes the spare);
    return that mapping, and the path and bytes of a next file."""
    first_path, next_path = tmp_path / "a.bin", tmp_path / "b.bin"
    first_path.write_bytes(_payload(100_000))
    next_path.write_bytes(data := _payload(next_size))
    src = Source.open(first_path)
    first = _mapping_of(src)
    del src
    assert spare._kept is first
    return first, next_path, data


@needs_madv_free
def test_a_freed_buffer_is_kept_and_used_by_the_next_load(tmp_path, spare):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(_payload(100_000))
    b.write_bytes(data := _payload(99_999))
    src = Source.open(a)
    first = _mapping_of(src)
    view = src.view(10, 20)
    del src
    assert spare._kept is None  # a view is still alive
    del view
    assert spare._kept is first
    src = Source.open(b)
    assert spare._kept is None and _mapping_of(src) is first
    assert bytes(src.view(0, src.size)) == data


@needs_madv_free
def test_a_live_array_keeps_its_bytes_through_later_loads(tmp_path, spare):
    one, two = tmp_path / "one.npy", tmp_path / "two.npy"
    np.save(one, np.arange(40_000, dtype=np.float32))
    np.save(two, -np.arange(40_000, dtype=np.float32))
    kept = safeload.load(one)
    for _ in range(3):
        loaded = safeload.load(two)
        assert np.array_equal(loaded, -np.arange(40_000, dtype=np.float32))
        del loaded
    assert np.array_equal(kept, np.arange(40_000, dtype=np.float32))
    part = kept[100:200]  # a view of the array: holds the buffer too
    del kept
    safeload.load(two)
    assert np.array_equal(part, np.arange(100, 200, dtype=np.float32))


@needs_madv_free
def test_a_live_torch_tensor_keeps_its_bytes_through_later_loads(tmp_path, spare):
    torch = pytest.importorskip("torch")
    import safeload.torch as safeload_torch

    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    torch.save({"w": torch.arange(40_000, dtype=torch.float32)}, one)
    torch.save({"w": -torch.arange(40_000, dtype=torch.float32)}, two)
    tensor = safeload_torch.load(one)["w"]  # a torch storage over the buffer
    for _ in range(3):
        loaded = safeload_torch.load(two)
        assert torch.equal(loaded["w"], -torch.arange(40_000, dtype=torch.float32))
        del loaded
    assert torch.equal(tensor, torch.arange(40_000, dtype=torch.float32))


@needs_madv_free
def test_a_reused_buffer_shows_only_the_new_file(tmp_path, spare):
    first, b, data = _spare_and_next(tmp_path, spare, 85_000)  # within 4/5: reused
    src = Source.open(b)
    assert _mapping_of(src) is first and src.size == 85_000
    assert bytes(src.view(0, src.size)) == data
    with pytest.raises(safeload.FormatError):
        src.view(0, 85_001)


@needs_madv_free
@pytest.mark.parametrize("other", [79_999, 200_000])
def test_a_spare_of_another_size_is_unmapped(tmp_path, spare, other):
    import weakref

    first, b, data = _spare_and_next(tmp_path, spare, other)
    src = Source.open(b)
    assert spare._kept is None and _mapping_of(src) is not first
    assert bytes(src.view(0, src.size)) == data
    gone = weakref.ref(first)
    del first
    assert gone() is None  # unmapped


def test_without_madv_free_nothing_is_kept(tmp_path, spare, monkeypatch):
    import mmap
    import types

    no_free = types.SimpleNamespace(**{k: getattr(mmap, k) for k in dir(mmap)
                                       if not k.startswith("__")})
    no_free.MADV_FREE = 0x7FFF  # refused by the kernel: EINVAL
    monkeypatch.setattr(source_mod, "_mmap", no_free)
    path = tmp_path / "a.bin"
    path.write_bytes(_payload(100_000))
    src = Source.open(path)
    assert isinstance(src._buffer.obj, np.ndarray)  # it took the spare's path
    del src
    assert spare._kept is None


@needs_madv_free
def test_a_big_file_is_read_into_a_plain_buffer_when_no_mapping_can_be_had(tmp_path, spare,
                                                                            monkeypatch):
    # as for every file of _POPULATE_FROM bytes or more: a failed mmap (ENOMEM,
    # vm.max_map_count reached) falls back to a bytearray, it does not fail the load
    def no_mapping(size, *, populate):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(source_mod, "_anonymous", no_mapping)
    path = tmp_path / "a.bin"
    path.write_bytes(data := _payload(100_000))
    src = Source.open(path)
    assert bytes(src.view(0, src.size)) == data
    assert spare._kept is None


@needs_madv_free
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_reads_its_own_file_over_the_inherited_spare(tmp_path, spare):
    first, b, data = _spare_and_next(tmp_path, spare, 99_000)
    pid = os.fork()
    if pid == 0:  # the child: takes the copy-on-write spare it inherited
        ok = False
        try:
            got = Source.open(b)
            ok = _mapping_of(got) is first and bytes(got.view(0, got.size)) == data
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on its load")
    assert os.waitstatus_to_exitcode(status) == 0
    assert spare._kept is first  # the parent's spare is its own
