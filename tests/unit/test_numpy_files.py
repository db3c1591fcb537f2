"""numpy ``.npy`` and ``.npz`` files, against ``numpy.load`` as the oracle.

Numeric arrays load as zero-copy views of the input, equal to what numpy.load
gives (dtype, shape, strides, bytes) for every dtype numpy writes as a plain
descr, both byte orders, C and Fortran order, and format versions 1, 2 and 3.
Headers are parsed as literals with a bound; anything else in them is refused.
Object arrays hold pickles, which run through the restricted VM. ``.npz`` files
load as a dict; hostile archives (compression bombs, encrypted or renamed
members, duplicates, bad CRCs) are refused without large allocations.
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import safeload
from safeload.formats import sniff
from safeload.formats.npy import MAX_HEADER
from safeload.formats.source import Source

DTYPES = ["?", "i1", "u1", "<i2", ">i2", "<u2", "<i4", ">u4", "<i8", ">i8", "<u8", "<f2", ">f2",
          "<f4", ">f4", "<f8", ">f8", "<c8", ">c16", "S5", "<U3", "V4", "<M8[ns]", "<m8[s]"]


def _array(dtype: str, shape=(3, 4)) -> np.ndarray:
    dt = np.dtype(dtype)
    raw = (np.arange(int(np.prod(shape)) * dt.itemsize, dtype=np.uint64) * 37 % 251)
    return np.frombuffer(raw.astype(np.uint8).tobytes(), dtype=dt).reshape(shape)


def npy_bytes(array: np.ndarray, version=None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=True)
    return buf.getvalue()


def _assert_same_array(expected: np.ndarray, got: object) -> None:
    assert type(got) is np.ndarray
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if expected.size:  # an empty array's strides are free
        assert got.strides == expected.strides
    assert got.tobytes() == expected.tobytes()


# --- .npy -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_npy_loads_as_numpy_loads_it(dtype: str) -> None:
    data = npy_bytes(_array(dtype))
    assert sniff(Source(data, None)) == "npy"
    _assert_same_array(np.load(io.BytesIO(data)), safeload.load(data))


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (5,), (2, 3, 4)])
def test_npy_versions_orders_and_shapes(version, order: str, shape) -> None:
    array = np.asfortranarray(_array("<f4", shape)) if order == "F" else _array("<f4", shape)
    data = npy_bytes(array, version)
    _assert_same_array(np.load(io.BytesIO(data)), safeload.load(data))


def test_npy_is_a_zero_copy_view_of_the_input() -> None:
    buffer = bytearray(npy_bytes(_array("<i4")))
    got = safeload.load(buffer)
    got[0, 0] = 12345
    assert np.frombuffer(buffer[-48:], "<i4")[0] == 12345


def test_npy_with_mmap_is_a_read_only_view_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, _array("<f8", (100, 3)))
    got = safeload.load(path, mmap=True)
    _assert_same_array(np.load(path), got)
    assert not got.flags.writeable


def test_npy_header_written_by_python2() -> None:
    header = b"{'descr': '<i2', 'fortran_order': False, 'shape': (2L, 3L), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(12)
    assert safeload.load(data).shape == (2, 3)


def _npy(header: str | bytes, body: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    raw = header.encode("latin-1") if isinstance(header, str) else header
    length = struct.pack("<H", len(raw)) if version[0] == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes(version) + length + raw + body


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", bytes(7)),
         safeload.FormatError, "needs 8 bytes, the file has 7"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", bytes(9)),
         safeload.FormatError, "1 bytes after the .npy data"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1048576)}",
              bytes(8)),
         safeload.FormatError, "the file has 8 \\(truncated\\)"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}"),
         safeload.FormatError, "shape must be a tuple of non-negative ints"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': [2]}"),
         safeload.FormatError, "shape must be a tuple"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2.0,)}"),
         safeload.FormatError, "shape must be a tuple"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,) * 65}"),
         safeload.FormatError, "not a Python literal"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1," * 65 + ")}"),
         safeload.LimitError, ".npy dimensions is 65"),
        (_npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}"),
         safeload.FormatError, "fortran_order must be a bool"),
        (_npy("{'descr': '<f4', 'shape': (2,)}"), safeload.FormatError, "exactly the keys"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}"),
         safeload.FormatError, "exactly the keys"),
        (_npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}"),
         safeload.FormatError, "structured dtypes are not supported"),
        (_npy("{'descr': '<f16', 'fortran_order': False, 'shape': (2,)}"),
         safeload.FormatError, "not a plain dtype"),
        (_npy("{'descr': 'float32', 'fortran_order': False, 'shape': (2,)}"),
         safeload.FormatError, "not a plain dtype"),
        (_npy("{'descr': 'S0', 'fortran_order': False, 'shape': (1152921504606846976,)}"),
         safeload.FormatError, "has no size"),
        (_npy("{'descr': '<M8[zz]', 'fortran_order': False, 'shape': (1,)}", bytes(8)),
         safeload.FormatError, "not one numpy knows"),
        (_npy("__import__('os').system('echo pwned')"), safeload.FormatError,
         "not a Python literal"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)"), safeload.FormatError,
         "not a Python literal"),
        (_npy("(" * 5000 + ")" * 5000), safeload.FormatError, "not a Python literal"),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",)}"),
         safeload.FormatError, "not a Python literal"),
        (_npy("x" * (MAX_HEADER + 1), version=(2, 0)), safeload.LimitError, "header of 10001"),
        (_npy("{}", version=(4, 0)), safeload.FormatError, "version 4.0"),
        (_npy("{'descr'"), safeload.FormatError, "not a Python literal"),
        (b"\x93NUMPY\x01\x00\xff\x00{", safeload.FormatError, "runs past the end"),
        (b"\x93NUMPY\x02\x00\x01", safeload.FormatError, "truncated"),
        (_npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}\xff", bytes(4),
              version=(3, 0)), safeload.FormatError, "not a Python literal"),
    ],
)
def test_malformed_npy_is_refused(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        safeload.load(data)


def test_huge_npy_shape_does_not_allocate() -> None:
    data = _npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2147483648, 2147483648)}",
                bytes(64))
    tracemalloc.start()
    try:
        with pytest.raises(safeload.FormatError):
            safeload.load(data)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 1_000_000


class _Calls:
    """Pickles as a call to ``os.system``; never called here."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_object_npy_runs_its_pickle_through_the_vm() -> None:
    array = np.empty(2, dtype=object)
    array[0], array[1] = _Calls(), 1
    data = npy_bytes(array)
    with pytest.raises(safeload.SafeloadError) as err:
        safeload.load(data)
    assert err.value.opcode is not None  # refused inside the VM, at an opcode


def test_object_npy_of_plain_values_is_refused_by_the_allowlist() -> None:
    # numpy's object arrays are not in safeload's allowlist (they are pickles of
    # arbitrary objects); the VM refuses them at the dtype, located.
    array = np.array([1, "two", None], dtype=object)
    with pytest.raises(safeload.FormatError, match="numpy dtype 'O8'") as err:
        safeload.load(npy_bytes(array))
    assert err.value.opcode == "REDUCE"


# --- .npz --------------------------------------------------------------------------------


def _npz(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_loads_as_numpy_loads_it(compressed: bool) -> None:
    arrays = {"b": _array("<f4"), "a": _array(">i8", (2, 2)), "c": _array("?", (0,)),
              "nested/name": _array("<c8", (1,))}
    data = _npz(compressed, **arrays)
    assert sniff(Source(data, None)) == "npz"
    got = safeload.load(data)
    with np.load(io.BytesIO(data)) as expected:
        assert list(got) == expected.files
        for key in expected.files:
            _assert_same_array(expected[key], got[key])


def test_stored_npz_members_are_views_of_the_input() -> None:
    buffer = bytearray(_npz(a=np.zeros(4, dtype="<i4")))
    got = safeload.load(buffer)
    got["a"][:] = 7
    assert buffer.count(np.full(4, 7, dtype="<i4").tobytes()) == 1


def _rezip(members: list[tuple[str, bytes]], method=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buf.getvalue()


NPY = npy_bytes(np.arange(4, dtype="<i2"))


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("a.npy", NPY), ("a.npy", NPY)], "appears twice"),
        ([("a.npy", NPY), ("notes.txt", b"x")], "not a plain '<key>.npy' name"),
        ([("a.npy", NPY), ("../b.npy", NPY)], "not a plain"),
        ([("a.npy", NPY), ("/b.npy", NPY)], "not a plain"),
        ([("a.npy", NPY), ("x\\b.npy", NPY)], "not a plain"),
        ([("a.npy", NPY), ("x/./b.npy", NPY)], "not a plain"),
        ([("a.npy", NPY), (".npy", NPY)], "not a plain"),
        ([("a.npy", NPY[:-1])], "needs 8 bytes, the file has 7"),
        ([("a.npy", b"not an npy")], "not a .npy file"),
    ],
)
def test_bad_npz_members_are_refused(members, message: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        data = _rezip(members)
    with pytest.raises(safeload.FormatError, match=message):
        safeload.load(data)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_npz_members_compressed_otherwise_are_refused(method: int) -> None:
    with pytest.raises(safeload.FormatError, match="compression method"):
        safeload.load(_rezip([("a.npy", NPY)], method))


def test_npz_crc_mismatch_is_refused() -> None:
    data = bytearray(_npz(a=np.arange(4, dtype="<i2")))
    data[data.index(np.arange(4, dtype="<i2").tobytes())] ^= 1
    with pytest.raises(safeload.FormatError, match="CRC"):
        safeload.load(bytes(data))
    deflated = bytearray(_npz(True, a=np.arange(1000, dtype="<i2")))
    deflated[60] ^= 0x55  # inside the compressed stream
    with pytest.raises(safeload.FormatError):
        safeload.load(bytes(deflated))


def test_encrypted_npz_members_are_refused() -> None:
    data = bytearray(_npz(a=np.arange(4, dtype="<i2")))
    data[6] |= 1  # general purpose flag, local header
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 1  # and central directory
    with pytest.raises(safeload.FormatError, match="encrypted"):
        safeload.load(bytes(data))


def test_npz_compression_bomb_stops_before_inflating() -> None:
    bomb = _npz(True, a=np.zeros(40_000_000, dtype=np.uint8))  # 40 MB of zeros, ~40 kB
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(safeload.LimitError, match="inflate to more than"):
            safeload.load(bomb, limits=safeload.Limits(max_pickle_bytes=10_000_000))
        with pytest.raises(safeload.LimitError, match="npz member size"):
            safeload.load(bomb, limits=safeload.Limits(max_bytes=1_000_000))
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 2_000_000


def test_npz_member_lying_about_its_size_is_refused() -> None:
    data = bytearray(_npz(True, a=np.zeros(1000, dtype=np.uint8)))
    central = data.index(b"PK\x01\x02")
    size = struct.unpack_from("<I", data, central + 24)[0]
    struct.pack_into("<I", data, central + 24, size - 10)  # declares less than it inflates to
    with pytest.raises(safeload.FormatError):
        safeload.load(bytes(data))


def test_npz_object_members_run_through_the_vm() -> None:
    data = _npz(a=np.arange(3), b=np.array([_Calls()], dtype=object))
    with pytest.raises(safeload.SafeloadError) as err:
        safeload.load(data)
    assert err.value.member == "b.npy"


def test_npz_with_junk_before_it_is_a_polyglot() -> None:
    with pytest.raises(safeload.FormatError, match="polyglot"):
        safeload.load(b"\x80\x02K\x01." + _npz(a=np.arange(3)))


@pytest.mark.parametrize("make", [lambda: npy_bytes(_array("<f4", (3, 5))),
                                  lambda: _npz(a=_array("<i2"), b=_array("?", (4,))),
                                  lambda: _npz(True, a=_array("<i2"), b=_array("<c8", (4,)))],
                         ids=["npy", "npz", "npz-deflated"])
def test_random_corruption_only_ever_raises_safeload_errors(make) -> None:
    import random

    data = make()
    rng = random.Random(99)
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            safeload.load(bytes(mutated))
        except safeload.SafeloadError:
            pass
