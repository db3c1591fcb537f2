"""Storages saved by themselves, not through a tensor, with torch.load as the oracle.

``torch.save(t.storage())``, ``torch.save(torch.FloatStorage(...))``,
``torch.save(t.untyped_storage())`` and ``{"s": storage, "t": tensor_on_it}``
are written by real ``torch.save`` (zip and legacy formats) and read back by
``torch.load(weights_only=True)``. ``safeload.torch.load`` must return what
torch returns: a ``torch.storage.TypedStorage`` of the saved dtype (uint8 for an
untyped storage), same bytes, same device after ``map_location``, the same
object for every reference to one storage, sharing memory with the tensors on
it. ``safeload.load`` returns a 1-d numpy array of the storage's dtype sharing
memory with those tensors; the inert builders (scanner, lazy open) return the
storage's ``StorageRef``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safeload  # noqa: E402
import safeload.torch as st  # noqa: E402
from safeload.records import StorageRef, StorageView  # noqa: E402
from safeload.scan import inspect_file  # noqa: E402

try:  # tests/unit as a package, or as a plain directory on sys.path
    from .compare import NUMPY_DTYPES
    from .test_legacy_stream import StorageMark, _floats, write_stream
except ImportError:
    from compare import NUMPY_DTYPES  # type: ignore[no-redef]
    from test_legacy_stream import StorageMark, _floats, write_stream  # type: ignore[no-redef]

DTYPES = [torch.float32, torch.float16, torch.int64, torch.bool, torch.bfloat16]
FORMATS = ["zip", "legacy"]


def _save(obj, fmt: str) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated
        torch.save(obj, buffer, _use_new_zipfile_serialization=fmt == "zip")
    return buffer.getvalue()


def _torch_load(data: bytes, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(data), weights_only=True, **kwargs)


def _values(dtype: torch.dtype, n: int = 5) -> torch.Tensor:
    return (torch.arange(n) * 3 - 4).to(dtype)


def _typed(t: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t.storage()


def _raw(storage) -> bytes:
    """Every byte of a TypedStorage (b"" on the meta device)."""
    untyped = storage._untyped_storage
    if untyped.device.type == "meta" or untyped.nbytes() == 0:
        return b""
    return torch.empty(0, dtype=torch.uint8).set_(untyped).numpy().tobytes()


def assert_same_storage(expected, got) -> None:
    assert type(got) is type(expected) is torch.storage.TypedStorage
    assert got.dtype == expected.dtype
    assert got.device == expected.device
    assert got.size() == expected.size()
    assert _raw(got) == _raw(expected)


# --- safeload.torch.load -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_backend_loads_a_typed_storage_as_torch_does(fmt, dtype):
    data = _save(_typed(_values(dtype)), fmt)
    assert_same_storage(_torch_load(data), st.load(data))


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_backend_loads_a_legacy_storage_class_as_torch_does(fmt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = torch.FloatStorage([1.5, -2.0, 3.25])
    data = _save(storage, fmt)
    assert_same_storage(_torch_load(data), st.load(data))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_backend_loads_an_untyped_storage_as_torch_does(dtype):
    data = _save(_values(dtype).untyped_storage(), "zip")
    expected = _torch_load(data)
    assert expected.dtype == torch.uint8  # torch.load gives a uint8 TypedStorage
    assert_same_storage(expected, st.load(data))


def test_legacy_untyped_storage_loads_as_the_zip_one_does():
    # torch's own legacy reader fails on it (UntypedStorage has no .dtype);
    # safeload reads it as torch reads the same storage from a zip
    storage = _values(torch.float32).untyped_storage()
    with pytest.raises(AttributeError):
        _torch_load(_save(storage, "legacy"))
    assert_same_storage(_torch_load(_save(storage, "zip")), st.load(_save(storage, "legacy")))


_MAP_LOCATIONS = {
    "none": None,
    "str": "cpu",
    "device": torch.device("cpu"),
    "dict": {"cpu": "cpu"},
    "callable": lambda storage, location: storage,
    "callable-none": lambda storage, location: None,
    "meta": "meta",
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", list(_MAP_LOCATIONS))
def test_map_location_applies_to_bare_storages_as_in_torch(fmt, where):
    t = _values(torch.float32)
    data = _save({"s": _typed(t), "t": t[1:]}, fmt)
    location = _MAP_LOCATIONS[where]
    expected = _torch_load(data, map_location=location)
    got = st.load(data, map_location=location)
    assert_same_storage(expected["s"], got["s"])
    assert got["t"].device == expected["t"].device


@pytest.mark.parametrize("fmt", FORMATS)
def test_bare_storage_shares_memory_with_the_tensors_on_it(fmt):
    t = _values(torch.float32, 8)
    s = _typed(t)
    data = _save({"s": s, "t": t[2:], "more": [s, (s, 1)]}, fmt)
    expected = _torch_load(data)
    got = st.load(data)
    assert_same_storage(expected["s"], got["s"])
    # torch.load returns one object per storage record: so does safeload
    assert expected["s"] is expected["more"][0] is expected["more"][1][0]
    assert got["s"] is got["more"][0] is got["more"][1][0]
    assert got["more"][1][1] == 1
    assert got["s"]._untyped_storage.data_ptr() == got["t"].untyped_storage().data_ptr()
    got["t"][0] = 99  # writes through to the storage, as with torch.load
    assert got["s"][2] == 99


# --- safeload.load (numpy) ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_numpy_backend_loads_a_storage_as_a_flat_array_of_its_dtype(fmt, dtype):
    t = _values(dtype)
    data = _save(_typed(t), fmt)
    got = safeload.load(data)
    assert type(got) is np.ndarray and got.ndim == 1
    assert got.dtype == NUMPY_DTYPES[dtype]
    assert got.tobytes() == _raw(_torch_load(data))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_numpy_backend_loads_an_untyped_storage_as_uint8(dtype):
    data = _save(_values(dtype).untyped_storage(), "zip")
    got = safeload.load(data)
    assert got.dtype == np.uint8 and got.ndim == 1
    assert got.tobytes() == _raw(_torch_load(data))


@pytest.mark.parametrize("fmt", FORMATS)
def test_numpy_storage_array_shares_memory_with_tensors_on_it(fmt):
    t = _values(torch.int64, 6)
    s = _typed(t)
    data = _save({"s": s, "t": t[1:4], "l": [s]}, fmt)
    got = safeload.load(data)
    assert got["s"] is got["l"][0]
    assert np.shares_memory(got["s"], got["t"])
    assert got["t"].ctypes.data - got["s"].ctypes.data == 8  # one int64 in
    np.testing.assert_array_equal(got["s"], t.numpy())


@pytest.mark.parametrize("location", ["cpu", {"cpu": "cuda:1"}, "meta"])
def test_numpy_map_location_leaves_the_storage_bytes_in_host_memory(location):
    t = _values(torch.float16)
    got = safeload.load(_save({"s": _typed(t), "t": t}, "zip"), map_location=location)
    np.testing.assert_array_equal(got["s"], t.numpy())
    assert np.shares_memory(got["s"], got["t"])


def test_numpy_map_location_callable_sees_bare_storages():
    seen = []

    def record(storage, location):
        seen.append((storage.dtype.name, location, storage.size()))

    got = safeload.load(_save(_typed(_values(torch.float32)), "zip"), map_location=record)
    assert seen == [("float32", "cpu", 5)]
    assert got.tolist() == [-4, -1, 2, 5, 8]


# --- the inert builders: lazy open and the scanner ---------------------------------------


def test_lazy_open_shows_a_bare_storage_as_its_storage_ref(tmp_path):
    t = _values(torch.float32)
    path = tmp_path / "storage.pt"
    path.write_bytes(_save({"s": _typed(t), "t": t[1:]}, "zip"))
    with safeload.open(path) as ckpt:
        ref = ckpt.structure["s"]
        assert type(ref) is StorageRef
        assert (ref.dtype.name, ref.numel, ref.location) == ("float32", 5, "cpu")
        assert ref.key == ckpt.handle("t").storage_key
        assert list(ckpt) == ["t"]  # storages are not tensors


def test_inspect_lists_a_bare_storage(tmp_path):
    path = tmp_path / "storage.pt"
    path.write_bytes(_save(_typed(_values(torch.bfloat16, 3)), "legacy"))
    rows, report = inspect_file(path)
    assert report.verdict == "clean"
    assert [(r.name, r.dtype, r.shape, r.nbytes, r.kind) for r in rows] == [
        ("<root>", "bfloat16", (3,), 6, "storage")]


def test_a_legacy_storage_view_saved_by_itself_is_a_slice_of_its_root():
    # a hand-written legacy stream: storage view '11' = elements 2..7 of '10'
    low = StorageMark(torch.FloatStorage, "10", 12, view=("11", 2, 6))
    root = StorageMark(torch.FloatStorage, "10", 12)
    data = write_stream({"low": low, "root": root}, {"10": (4, _floats(12))})
    got = safeload.load(data)
    assert got["low"].tolist() == [2, 3, 4, 5, 6, 7]
    assert np.shares_memory(got["low"], got["root"]) and got["root"].size == 12
    loaded = st.load(data)
    assert loaded["low"].tolist() == [2, 3, 4, 5, 6, 7]
    assert loaded["low"]._untyped_storage.data_ptr() == \
        loaded["root"]._untyped_storage.data_ptr() + 8
    with safeload.open(data) as ckpt:
        view = ckpt.structure["low"]
        assert type(view) is StorageView and (view.offset, view.numel) == (2, 6)
        assert view.storage.key == "10" and view.nbytes == 24


# --- objects admitted with allow= get storages as the load returns them ----------------


class Holder:
    """A caller's class, admitted with ``allow=``: pickled as a call with the
    storage in its arguments and in its state."""

    def __init__(self, storage, extra):
        self.storage = storage
        self.extra = extra

    def __reduce__(self):
        return (Holder, (self.storage, {"again": [self.storage]}), {"state": (self.storage,)})


_HOLDER = f"{Holder.__module__}.{Holder.__qualname__}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_objects_admitted_with_allow_receive_public_storages(tmp_path, fmt):
    tensor = torch.arange(6, dtype=torch.float32)
    path = tmp_path / "holder.pt"
    with warnings.catch_warnings():  # TypedStorage is deprecated; torch's legacy
        warnings.simplefilter("ignore")  # reader cannot read an UntypedStorage here
        torch.save(Holder(tensor.storage(), None), path,
                   _use_new_zipfile_serialization=fmt == "zip")
    expected = torch.load(path, weights_only=False)  # the oracle: torch runs the class

    got = st.load(path, allow={_HOLDER: Holder})
    assert type(got) is Holder
    for value, oracle in [(got.storage, expected.storage),
                          (got.extra["again"][0], expected.extra["again"][0]),
                          (got.state[0], expected.state[0])]:
        assert type(value) is type(oracle) and value.dtype == oracle.dtype
        assert bytes(value.cpu().untyped()) == bytes(oracle.cpu().untyped())

    arrays = safeload.load(path, allow={_HOLDER: Holder})
    for value in (arrays.storage, arrays.extra["again"][0], arrays.state[0]):
        assert type(value) is np.ndarray and value.dtype == np.float32
        assert value.tobytes() == tensor.numpy().tobytes()


def test_the_scanner_walks_for_bare_storages_only_when_it_shows_the_value(tmp_path,
                                                                          monkeypatch):
    # The walk checks nothing; the scan's value is only shown by --explain. A
    # walk that fails must not change a plain scan's verdict, and --explain
    # still walks (its listing names storages as records, not LoadedStorage).
    import safeload.loader as loader
    from safeload.scan import scan_file

    t = _values(torch.float32)
    path = tmp_path / "storage.pt"
    path.write_bytes(_save({"s": _typed(t), "t": t[1:]}, "zip"))
    walked = []

    def failing_walk(result, builder):
        walked.append(type(builder).__name__)
        raise RuntimeError("walked")

    monkeypatch.setattr(loader, "bare_storages", failing_walk)
    report = scan_file(path)
    assert (report.verdict, report.findings, walked) == ("clean", [], [])
    assert scan_file(path, explain=True).verdict == "error"  # the walk's failure, reported
    assert walked == ["ScanBuilder"]
