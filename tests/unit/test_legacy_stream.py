"""The pre-1.6 torch.save stream (``_use_new_zipfile_serialization=False``).

Differential: every ``torch_cases`` case, written by real torch in the legacy
format with each pickle protocol, loads with ``safeload.load`` exactly as
``torch.load(weights_only=False)`` loads it (``compare.assert_same_checkpoint``);
where torch cannot read its own legacy file back (float8 and unsigned types), the
oracle is torch's reading of the same object saved as a zip. Storage views (a
format feature torch no longer writes) are written by hand and compared with
torch.load too, including which tensors share memory. The same runs go through
``safeload.torch.load`` when that backend exists.

Malformed streams (truncated, lying counts, key lists that disagree with the
pickle, wrong headers, trailing bytes, views out of bounds, huge declared sizes)
are refused with FormatError / LimitError, and without large allocations
(tracemalloc peak bound).
"""

from __future__ import annotations

import collections
import io
import pickle
import random
import struct
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safeload  # noqa: E402
from safeload.formats import open_checkpoint, sniff  # noqa: E402
from safeload.formats.legacy import MAGIC_NUMBER, open_legacy  # noqa: E402
from safeload.formats.source import Source  # noqa: E402

try:  # tests/unit as a package, or as a plain directory on sys.path
    from . import torch_cases
    from .compare import assert_same_checkpoint
except ImportError:
    import torch_cases  # type: ignore[no-redef]
    from compare import assert_same_checkpoint  # type: ignore[no-redef]

PROTOCOLS = (1, 2, 3, 4, 5)


def legacy_bytes(obj: object, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    return buf.getvalue()


def torch_reads(data: bytes) -> object:
    return torch.load(io.BytesIO(data), weights_only=False)


def _torch_backend():
    try:
        import safeload.torch as backend
    except ImportError:
        return None
    return backend


# --- hand-written legacy streams -----------------------------------------------------


class StorageMark:
    """Pickles as a legacy persistent id."""

    def __init__(self, storage_cls, key: str, numel: int, view=None, location: str = "cpu"):
        self.pid = ("storage", storage_cls, key, location, numel, view)


class TensorMark:
    """Pickles as ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: StorageMark, offset: int, size, stride) -> None:
        self.args = (storage, offset, torch.Size(size), tuple(stride), False,
                     collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def _pickle(obj, protocol: int, marks: bool = False) -> bytes:
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=protocol)
    if marks:
        pickler.persistent_id = lambda o: o.pid if isinstance(o, StorageMark) else None
    pickler.dump(obj)
    return buf.getvalue()


def write_stream(obj, storages: dict[str, tuple[int, bytes]], *, protocol: int = 2,
                 keys=None, sys_info=None, magic=MAGIC_NUMBER, version=1001,
                 counts: dict[str, bytes] | None = None) -> bytes:
    """A legacy stream: ``storages`` maps key -> (element size, raw bytes)."""
    info = sys_info if sys_info is not None else {
        "protocol_version": 1001, "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 8}}
    out = _pickle(magic, protocol) + _pickle(version, protocol) + _pickle(info, protocol)
    out += _pickle(obj, protocol, marks=True)
    keys = list(storages) if keys is None else keys
    out += _pickle(keys, protocol)
    for key in keys if isinstance(keys, list) else []:
        if not isinstance(key, str) or key not in storages:
            continue
        itemsize, raw = storages[key]
        count = (counts or {}).get(key, struct.pack("<q", len(raw) // itemsize))
        out += count + raw
    return out


def _floats(n: int, start: float = 0.0) -> bytes:
    return np.arange(start, start + n, dtype=np.float32).tobytes()


def view_stream(protocol: int = 2) -> bytes:
    """A root storage of 12 floats, two views of it, tensors on root and views."""
    root = StorageMark(torch.FloatStorage, "10", 12)
    low = StorageMark(torch.FloatStorage, "10", 12, view=("11", 2, 6))
    high = StorageMark(torch.FloatStorage, "10", 12, view=("12", 8, 4))
    obj = {
        "root": TensorMark(root, 0, (3, 4), (4, 1)),
        "low": TensorMark(low, 1, (2, 2), (2, 1)),  # elements 3..6 of the root
        "low_again": TensorMark(low, 0, (6,), (1,)),
        "high": TensorMark(high, 0, (2, 2), (1, 2)),  # transposed, elements 8..11
        "disjoint": TensorMark(high, 3, (1,), (1,)),
    }
    return write_stream(obj, {"10": (4, _floats(12))}, protocol=protocol)


# --- differential: torch-written files ---------------------------------------------------

_TORCH_CANNOT_READ_ITS_LEGACY = {  # torch's legacy reader fails on UntypedStorage ids
    "dtype-float8_e4m3fn", "dtype-float8_e5m2", "dtype-uint16", "dtype-uint32", "dtype-uint64",
}

MATRIX = [
    pytest.param(case_id, protocol, id=f"{case_id}-p{protocol}")
    for case_id in torch_cases.CASE_IDS
    for protocol in (2, 3, 4, 5)
]


@pytest.mark.parametrize(("case_id", "protocol"), MATRIX)
def test_torch_written_legacy_file_loads_as_torch_loads_it(case_id: str, protocol: int) -> None:
    obj = torch_cases.build(case_id)
    data = legacy_bytes(obj, protocol)
    assert sniff(Source(data, None)) == "legacy"
    if case_id in _TORCH_CANNOT_READ_ITS_LEGACY:
        zipped = io.BytesIO()
        torch.save(obj, zipped)
        zipped.seek(0)
        expected = torch.load(zipped, weights_only=False)
    else:
        expected = torch_reads(data)
    assert_same_checkpoint(expected, safeload.load(data))


@pytest.mark.parametrize("protocol", [1, 2, 5])
def test_every_dtype_in_one_legacy_file(protocol: int) -> None:
    tensors = {
        str(dt).removeprefix("torch."): (torch.arange(6) * 3 - 7).to(dt).reshape(2, 3)
        for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8,
                   torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
                   torch.complex64, torch.complex128)
    }
    tensors["slice"] = tensors["float32"][:, 1:]
    tensors["param"] = torch.nn.Parameter(torch.ones(2, 2))
    data = legacy_bytes(tensors, protocol)
    got = safeload.load(data)
    assert_same_checkpoint(torch_reads(data), got)
    assert np.shares_memory(got["slice"], got["float32"])


def test_mmap_gives_read_only_views_of_the_file(tmp_path) -> None:
    obj = {"a": torch.arange(10.0), "b": torch.arange(10.0)[2:5]}
    path = tmp_path / "legacy.pt"
    path.write_bytes(legacy_bytes(obj))
    got = safeload.load(path, mmap=True)
    assert_same_checkpoint(torch.load(path, weights_only=False), got, readonly=True)


def test_sys_info_big_endian_flag_does_not_change_the_bytes() -> None:
    # torch converts storage bytes to little-endian on every host; sys_info only
    # records the writer's machine, and torch.load ignores it.
    data = legacy_bytes({"w": torch.arange(6, dtype=torch.int32), "h": torch.ones(3).half()})
    flag = b"little_endianq\x02\x88"
    assert data.count(flag) == 1
    patched = data.replace(flag, b"little_endianq\x02\x89")
    ckpt = open_legacy(Source(patched, None))
    assert not ckpt.little_endian and any("big-endian" in n for n in ckpt.notes)
    assert_same_checkpoint(torch_reads(patched), safeload.load(patched))


def test_big_endian_writer_may_store_the_count_big_endian() -> None:
    # Old writers on big-endian hosts stored the element count natively.
    raw = _floats(5)
    info = {"protocol_version": 1001, "little_endian": False,
            "type_sizes": {"short": 2, "int": 4, "long": 8}}
    obj = TensorMark(StorageMark(torch.FloatStorage, "1", 5), 0, (5,), (1,))
    be_count = {"1": struct.pack(">q", 5)}
    got = safeload.load(write_stream(obj, {"1": (4, raw)}, sys_info=info, counts=be_count))
    assert got.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    info["little_endian"] = True  # a little-endian writer never did
    with pytest.raises(safeload.FormatError, match="holds 360287970189639680 elements"):
        safeload.load(write_stream(obj, {"1": (4, raw)}, sys_info=info, counts=be_count))


# --- storage views ------------------------------------------------------------------------


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    if t.numel() == 0:
        return (0, 0)
    low = t.data_ptr()
    high = low + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True)) \
        * t.element_size()
    return low, high + t.element_size()


def _overlap(a, b) -> bool:
    (a0, a1), (b0, b1) = a, b
    return a0 < b1 and b0 < a1


@pytest.mark.parametrize("protocol", [1, 2, 4, 5])
def test_storage_views_load_as_torch_loads_them_and_share_memory(protocol: int) -> None:
    data = view_stream(protocol)
    expected = torch_reads(data)
    got = safeload.load(bytearray(data))  # writable, to show the sharing below
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        array = got[name]
        assert array.shape == tuple(tensor.shape)
        assert array.strides == tuple(s * 4 for s in tensor.stride())
        assert array.tobytes() == tensor.contiguous().numpy().tobytes(), name
    names = list(expected)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            torch_overlap = _overlap(_byte_span(expected[a]), _byte_span(expected[b]))
            assert np.shares_memory(got[a], got[b]) == torch_overlap, (a, b)
    got["root"][0, 3] = 99.0  # one buffer: a write through the root shows in the view
    assert got["low"][0, 0] == 99.0


def test_storage_views_with_the_torch_backend() -> None:
    backend = _torch_backend()
    if backend is None:
        pytest.skip("safeload.torch is not written yet")
    data = view_stream()
    expected = torch_reads(data)
    got = backend.load(data)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
        assert got[name].stride() == tensor.stride()
        assert got[name].data_ptr() - got["root"].data_ptr() == \
            tensor.data_ptr() - expected["root"].data_ptr(), name


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _assert_same_tensors(expected, got, path="obj") -> None:
    """The torch backend's result against torch.load's (values, types, layout)."""
    if isinstance(expected, torch.Tensor):
        assert type(got) is type(expected), path
        assert got.dtype == expected.dtype and got.shape == expected.shape, path
        assert got.stride() == expected.stride(), path
        assert got.requires_grad == expected.requires_grad, path
        assert torch.equal(_bits(got), _bits(expected)), path
    elif isinstance(expected, dict):
        assert list(got) == list(expected), path
        for k in expected:
            _assert_same_tensors(expected[k], got[k], f"{path}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), path
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            _assert_same_tensors(e, g, f"{path}[{i}]")


@pytest.mark.parametrize("case_id", ["views", "shared-storage", "parameters", "cnn-state-dict",
                                     "dtype-bfloat16", "empties", "scalars"])
def test_torch_backend_reads_legacy_files(case_id: str) -> None:
    backend = _torch_backend()
    if backend is None:
        pytest.skip("safeload.torch is not written yet")
    data = legacy_bytes(torch_cases.build(case_id), 2)
    _assert_same_tensors(torch_reads(data), backend.load(data))


# --- the header and the key list ------------------------------------------------------------


def _simple(protocol: int = 2, **kw) -> bytes:
    obj = {"t": TensorMark(StorageMark(torch.FloatStorage, "1", 4), 0, (4,), (1,))}
    return write_stream(obj, {"1": (4, _floats(4))}, protocol=protocol, **kw)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hand_written_stream_matches_torch(protocol: int) -> None:
    data = _simple(protocol)
    assert_same_checkpoint(torch_reads(data), safeload.load(data))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 1002}, "protocol version 1002"),
        ({"version": "1001"}, "protocol version"),
        ({"sys_info": {"protocol_version": 1001}}, "sys_info must be a dict"),
        ({"sys_info": {"protocol_version": 1001, "little_endian": 1,
                       "type_sizes": {"short": 2, "int": 4, "long": 8}}}, "little_endian"),
        ({"sys_info": {"protocol_version": 1001, "little_endian": True,
                       "type_sizes": {"short": 2, "int": 4, "long": 16}}}, "type_sizes"),
        ({"sys_info": [1, 2]}, "sys_info must be a dict"),
        ({"keys": ["1", "1"]}, "listed twice"),
        ({"keys": []}, "storage-key list does not hold"),
        ({"keys": ["1", "2"]}, "storage '2' is listed but no persistent id names it"),
        ({"keys": "1"}, "must be a list"),
        ({"keys": [["1"]]}, "not a plain record name"),
    ],
)
def test_bad_headers_and_key_lists_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(safeload.FormatError, match=message):
        safeload.load(_simple(**kwargs))


def test_a_different_magic_number_is_not_the_legacy_format() -> None:
    data = _simple(magic=MAGIC_NUMBER + 1)
    assert sniff(Source(data, None)) == "pickle"
    with pytest.raises(safeload.FormatError):
        safeload.load(data)
    with pytest.raises(safeload.FormatError, match="wrong magic number"):
        open_legacy(Source(data, None))


def test_header_pickles_may_not_name_globals() -> None:
    evil = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 8}, "x": print}
    with pytest.raises(safeload.UnsafeGlobalError):
        safeload.load(_simple(sys_info=evil))


def test_unsafe_global_in_the_main_pickle_is_refused_and_never_called() -> None:
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    data = write_stream({"t": Boom(), "s": TensorMark(StorageMark(torch.FloatStorage, "1", 1),
                                                      0, (1,), (1,))}, {"1": (4, _floats(1))})
    with pytest.raises(safeload.UnsafeGlobalError, match="builtins.print") as err:
        safeload.load(data)
    assert err.value.member.startswith("main pickle at byte")


# --- storage records --------------------------------------------------------------------


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except safeload.SafeloadError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_truncated_streams_are_refused_at_every_cut() -> None:
    data = legacy_bytes({"a": torch.arange(20.0), "b": torch.ones(3, dtype=torch.int64)})
    for cut in range(0, len(data)):
        with pytest.raises(safeload.SafeloadError):
            safeload.load(data[:cut] if cut else b"\x80")


def test_trailing_bytes_are_refused() -> None:
    data = legacy_bytes({"a": torch.arange(3.0)})
    with pytest.raises(safeload.FormatError, match="1 bytes after the last storage record"):
        safeload.load(data + b"\0")


@pytest.mark.parametrize("count", [5, 3, 2**62, 2**63 - 1, 2**64 - 1])
def test_lying_element_counts_are_refused(count: int) -> None:
    data = _simple(counts={"1": struct.pack("<Q", count)})
    with pytest.raises(safeload.FormatError, match="holds .* elements, its persistent id"):
        safeload.load(data)


@pytest.mark.parametrize("numel", [2**40, 2**62, 2**63 - 1])
def test_huge_declared_sizes_do_not_allocate(numel: int) -> None:
    obj = {"t": TensorMark(StorageMark(torch.FloatStorage, "1", numel), 0, (numel,), (1,))}
    data = write_stream(obj, {"1": (4, _floats(4))},
                        counts={"1": struct.pack("<Q", numel)})
    with pytest.raises(safeload.FormatError, match="needs .* bytes, the file has"):
        safeload.load(data)
    assert _peak(lambda: safeload.load(data)) < 2_000_000


def test_storage_named_with_two_sizes_is_refused() -> None:
    a = StorageMark(torch.FloatStorage, "1", 4)
    b = StorageMark(torch.FloatStorage, "1", 3)
    obj = [TensorMark(a, 0, (4,), (1,)), TensorMark(b, 0, (3,), (1,))]
    with pytest.raises(safeload.FormatError, match="named as float32\\[4\\] and as"):
        safeload.load(write_stream(obj, {"1": (4, _floats(4))}))


def test_tensor_outside_its_storage_is_refused() -> None:
    obj = TensorMark(StorageMark(torch.FloatStorage, "1", 4), 2, (3,), (1,))
    with pytest.raises(safeload.FormatError, match="needs 20 bytes of storage '1'"):
        safeload.load(write_stream(obj, {"1": (4, _floats(4))}))


@pytest.mark.parametrize(
    ("view", "message"),
    [
        (("2", 3, 2), "leaves storage '1' of 4 elements"),
        (("2", -1, 2), "non-negative"),
        (("2", 0, "2"), "non-negative ints"),
        (("2", 0), "must be \\(view_key, offset, size\\)"),
        (("1", 0, 4), "names a stored storage"),
    ],
)
def test_bad_storage_views_are_refused(view, message: str) -> None:
    obj = TensorMark(StorageMark(torch.FloatStorage, "1", 4, view=view), 0, (1,), (1,))
    with pytest.raises(safeload.FormatError, match=message):
        safeload.load(write_stream(obj, {"1": (4, _floats(4))}))


def test_tensor_leaving_its_view_is_refused_even_inside_the_root() -> None:
    view = StorageMark(torch.FloatStorage, "1", 8, view=("2", 0, 2))
    obj = TensorMark(view, 1, (2,), (1,))  # elements 1..2 of a 2-element view
    with pytest.raises(safeload.FormatError, match="leaves its storage view of 2 elements"):
        safeload.load(write_stream(obj, {"1": (4, _floats(8))}))


def test_one_view_key_declared_two_ways_is_refused() -> None:
    a = StorageMark(torch.FloatStorage, "1", 8, view=("2", 0, 2))
    b = StorageMark(torch.FloatStorage, "1", 8, view=("2", 4, 2))
    obj = [TensorMark(a, 0, (2,), (1,)), TensorMark(b, 0, (2,), (1,))]
    with pytest.raises(safeload.FormatError, match="declared twice"):
        safeload.load(write_stream(obj, {"1": (4, _floats(8))}))


def test_legacy_module_ids_load_as_the_named_class_only_if_allowed() -> None:
    # ('module', cls, file, source): how legacy whole-model saves name classes
    data = legacy_bytes(torch.nn.Linear(2, 2))
    with pytest.raises(safeload.UnsafeGlobalError, match="torch.nn.modules.linear.Linear"):
        safeload.load(data)


def test_container_errors_locate_the_storage_record() -> None:
    data = legacy_bytes({"a": torch.arange(4.0)})
    with pytest.raises(safeload.FormatError, match="storage '[0-9]+' needs 16 bytes") as err:
        safeload.load(data[:-3])
    assert err.value.offset == len(data) - 16 - 8  # the record's element count, in the file


def test_open_checkpoint_gives_a_legacy_checkpoint_with_file_views() -> None:
    data = legacy_bytes({"a": torch.arange(4, dtype=torch.int16)})
    ckpt = open_checkpoint(Source(bytearray(data), "x.pt"))
    assert ckpt.kind == "legacy"
    (key,) = ckpt._records
    view = ckpt.storage(key)
    assert bytes(view) == np.arange(4, dtype=np.int16).tobytes()
    with pytest.raises(safeload.FormatError, match="storage-key list does not hold"):
        ckpt.storage("nope")


def test_random_corruption_only_ever_raises_safeload_errors() -> None:
    data = legacy_bytes({"a": torch.arange(6.0).reshape(2, 3), "b": [1, 2.5, "x"],
                         "c": torch.arange(3)[1:]})
    rng = random.Random(1234)
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            safeload.load(bytes(mutated))
        except safeload.SafeloadError:
            pass


# --- the shared corpus ---------------------------------------------------------------------


def _corpus_legacy_files() -> list:
    from corpus_paths import CORPUS_ROOT

    benign = CORPUS_ROOT / "benign"
    if not benign.is_dir():
        return [pytest.param(None, id="no-corpus", marks=pytest.mark.skip("corpus not found"))]
    files = [p for p in sorted(benign.iterdir())
             if p.is_file() and sniff(Source.open(p)) == "legacy"]
    return [pytest.param(p, id=p.name) for p in files]


@pytest.mark.parametrize("path", _corpus_legacy_files())
def test_corpus_legacy_files_load_as_torch_loads_them(path) -> None:
    # the 2018-2020 files were saved on GPUs: both readers map them to the CPU
    expected = torch.load(path, weights_only=False, map_location="cpu")
    assert_same_checkpoint(expected, safeload.load(path, map_location="cpu"))
    assert_same_checkpoint(expected, safeload.load(path, map_location="cpu", mmap=True),
                           readonly=True)
    backend = _torch_backend()
    if backend is not None:
        _assert_same_tensors(expected, backend.load(path, map_location="cpu"))


@pytest.mark.parametrize("protocol", range(0, 6))
def test_the_opcode_walk_finds_the_same_end_as_the_vm(protocol: int) -> None:
    # the container finds each pickle's end without running it; the VM must agree
    from safeload.formats.legacy import pickle_end
    from safeload.limits import DEFAULT_LIMITS

    values = [None, True, 0, -1, 255, 65536, -(2**31), 2**70, -(2**300), 1.5, "", "é" * 300,
              b"", b"x" * 300, bytearray(b"ab"), (), (1,), (1, 2), (1, 2, 3), tuple(range(9)),
              [], [1] * 1500, {}, {"a": [1, {"b": (2,)}]}, {1, 2}, frozenset({3}),
              collections.OrderedDict(a=1), complex(1, 2), slice(1, 2)]
    shared = [1, 2]
    values.append([shared, shared, {"k": shared}])
    for value in values:
        data = pickle.dumps(value, protocol=protocol) + b"trailing bytes"
        end = pickle_end(Source(data, None), 0, len(data), limits=DEFAULT_LIMITS, what="t")
        assert data[:end] == pickle.dumps(value, protocol=protocol), value
        if not isinstance(value, (slice, complex, set, frozenset, bytearray,
                                  collections.OrderedDict)) or protocol >= 2:
            assert safeload.load(data[:end]) == value
