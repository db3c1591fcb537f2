"""The pre-0.4 torch.save tar archive (members sys_info, pickle, storages, tensors).

Archives are written here in torch's layout (the one ``torch.serialization``'s
``legacy_load`` reads) with tarfile, and compared with
``torch.load(weights_only=False)``, which still reads them; torch's
``weights_only=True`` refuses the format outright. Broken archives (missing or
duplicate members, links and devices, bad checksums, truncated or lying storage
records, huge counts) are refused with FormatError / LimitError, without large
allocations. burn's two ``tar_*`` fixtures in the shared corpus are not torch's
format (their ``pickle`` member holds storage tuples where torch writes
persistent ids, and torch.load cannot read them); their storages are checked
against the values burn wrote, and loading them is refused with a located error.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safeload  # noqa: E402
from safeload.formats import sniff  # noqa: E402
from safeload.formats.source import Source  # noqa: E402
from safeload.formats.tar import open_tar  # noqa: E402


class Ref:
    """Pickles as the persistent id ``str(key)`` (how torch < 0.4 named tensors and
    storages in the ``pickle`` member)."""

    def __init__(self, key: int) -> None:
        self.key = key


def _pk(obj, protocol: int, refs: bool = False) -> bytes:
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=protocol)
    if refs:
        pickler.persistent_id = lambda o: str(o.key) if isinstance(o, Ref) else None
    pickler.dump(obj)
    return buf.getvalue()


SYS_INFO = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 8}}


def storages_member(storages: dict, views: list | None, protocol: int = 2,
                    counts: dict | None = None) -> bytes:
    """``storages``: key -> (storage class, tensor of its elements)."""
    out = _pk(len(storages), protocol)
    for key, (cls, values) in storages.items():
        raw = values.contiguous().view(torch.uint8).numpy().tobytes()
        count = (counts or {}).get(key, struct.pack("<q", values.numel()))
        out += _pk((key, "cpu", cls), protocol) + count + raw
    if views is not None:
        out += _pk(views, protocol)
    return out


def tensors_member(tensors: dict, protocol: int = 2) -> bytes:
    """``tensors``: key -> (storage key, tensor class, size, stride, offset)."""
    out = _pk(len(tensors), protocol)
    for key, (storage, cls, size, stride, offset) in tensors.items():
        out += _pk((key, storage, cls), protocol)
        out += struct.pack("<i", len(size)) + b"\0" * 4
        out += struct.pack(f"<{2 * len(size) + 1}q", *size, *stride, offset)
    return out


def write_tar(path: Path, members: list[tuple[str, bytes]], *,
              fmt: int = tarfile.PAX_FORMAT, types: dict | None = None) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if types and name in types:
                info.type = types[name]
                info.linkname = "elsewhere"
                info.size = 0
                tar.addfile(info)
            else:
                tar.addfile(info, io.BytesIO(data))
    return path


def members_for(obj, storages, views, tensors, protocol: int = 2) -> list[tuple[str, bytes]]:
    return [
        ("sys_info", _pk(SYS_INFO, protocol)),
        ("pickle", _pk(obj, protocol, refs=True)),
        ("tensors", tensors_member(tensors, protocol)),
        ("storages", storages_member(storages, views, protocol)),
    ]


def sample(protocol: int = 2) -> list[tuple[str, bytes]]:
    """Every storage type, a view, tensors sharing storages, one tensor twice."""
    storages = {
        1: (torch.FloatStorage, torch.arange(12, dtype=torch.float32) / 4),
        2: (torch.DoubleStorage, torch.tensor([1.5, -2.25, 1e300], dtype=torch.float64)),
        3: (torch.HalfStorage, torch.tensor([0.5, -1.0, 65504.0], dtype=torch.float16)),
        4: (torch.LongStorage, torch.tensor([-(2**63), 2**63 - 1, 7], dtype=torch.int64)),
        5: (torch.IntStorage, torch.tensor([-5, 6], dtype=torch.int32)),
        6: (torch.ShortStorage, torch.tensor([-300, 300], dtype=torch.int16)),
        7: (torch.CharStorage, torch.tensor([-128, 127], dtype=torch.int8)),
        8: (torch.ByteStorage, torch.tensor([0, 255, 3], dtype=torch.uint8)),
    }
    views = [(20, 1, 4, 6)]  # view 20 = elements 4..9 of storage 1
    tensors = {
        101: (1, torch.FloatTensor, (3, 4), (4, 1), 0),
        102: (1, torch.FloatTensor, (4, 3), (1, 4), 0),  # transposed, same storage
        103: (20, torch.FloatTensor, (2, 2), (3, 1), 1),  # on the view
        104: (2, torch.DoubleTensor, (3,), (1,), 0),
        105: (3, torch.HalfTensor, (2,), (1,), 1),
        106: (4, torch.LongTensor, (3,), (1,), 0),
        107: (5, torch.IntTensor, (1, 2), (2, 1), 0),
        108: (6, torch.ShortTensor, (2,), (1,), 0),
        109: (7, torch.CharTensor, (), (), 1),
        110: (8, torch.ByteTensor, (0,), (1,), 0),
        111: (1, torch.FloatTensor, (2, 2), (0, 1), 10),  # zero stride
    }
    obj = collections.OrderedDict(
        [(f"t{key}", Ref(key)) for key in tensors] + [("again", Ref(101)), ("meta", [1, "x"])]
    )
    return members_for(obj, storages, views, tensors, protocol)


def _assert_matches_torch(expected: dict, got: dict) -> None:
    assert type(got) is type(expected) and list(got) == list(expected)
    for name, value in expected.items():
        if not isinstance(value, torch.Tensor):
            assert got[name] == value
            continue
        array = got[name]
        assert array.shape == tuple(value.shape), name
        assert array.strides == tuple(s * value.element_size() for s in value.stride()), name
        assert array.tobytes() == value.contiguous().view(torch.uint8).numpy().tobytes(), name


# --- differential ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT],
                         ids=["pax", "ustar", "gnu"])
@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_torch_tar_archive_loads_as_torch_loads_it(tmp_path: Path, protocol: int,
                                                   fmt: int) -> None:
    path = write_tar(tmp_path / "old.tar", sample(protocol), fmt=fmt)
    assert sniff(Source.open(path)) == "tar"
    expected = torch.load(path, weights_only=False)
    got = safeload.load(path)
    _assert_matches_torch(expected, got)
    assert got["again"] is got["t101"]  # one tensor, named twice
    assert np.shares_memory(got["t101"], got["t102"])
    assert np.shares_memory(got["t101"], got["t103"])  # the view shares its root
    assert not np.shares_memory(got["t101"], got["t104"])


def test_torch_refuses_the_tar_format_with_weights_only(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "old.tar", sample())
    with pytest.raises(Exception, match="legacy .tar format"):
        torch.load(path, weights_only=True)
    assert safeload.load(path)["t104"].tolist() == [1.5, -2.25, 1e300]


def test_tar_archive_with_mmap_gives_read_only_views(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "old.tar", sample())
    got = safeload.load(path, mmap=True)
    _assert_matches_torch(torch.load(path, weights_only=False), got)
    assert not got["t101"].flags.writeable


def test_tar_archive_with_the_torch_backend(tmp_path: Path) -> None:
    try:
        import safeload.torch as backend
    except ImportError:
        pytest.skip("safeload.torch is not written yet")
    path = write_tar(tmp_path / "old.tar", sample())
    expected = torch.load(path, weights_only=False)
    got = backend.load(path)
    for name, tensor in expected.items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(got[name], tensor), name
            assert got[name].stride() == tensor.stride(), name
    assert got["t101"].data_ptr() == got["t102"].data_ptr()
    assert got["t103"].data_ptr() - got["t101"].data_ptr() == \
        expected["t103"].data_ptr() - expected["t101"].data_ptr()


def test_map_location_callable_sees_each_root_storage_once(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "old.tar", sample())
    seen = []

    def record(storage, location):
        seen.append((location, storage.nbytes()))
        return storage

    safeload.load(path, map_location=record)
    assert sorted(seen) == sorted([("cpu", n) for n in (48, 24, 6, 24, 8, 4, 2, 3)])


# --- the tar layer ---------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["sys_info", "pickle", "storages"])
def test_missing_members_are_refused(tmp_path: Path, missing: str) -> None:
    members = [m for m in sample() if m[0] != missing]
    with pytest.raises(safeload.FormatError, match=f"has no '{missing}' member"):
        safeload.load(write_tar(tmp_path / "t.tar", members))


@pytest.mark.parametrize("name", ["pickle", "storages", "tensors", "sys_info"])
def test_duplicate_members_are_refused(tmp_path: Path, name: str) -> None:
    members = sample()
    members.append(next(m for m in members if m[0] == name))
    with pytest.raises(safeload.FormatError, match=f"'{name}' appears twice"):
        safeload.load(write_tar(tmp_path / "t.tar", members))


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "character device"),
        (tarfile.BLKTYPE, "block device"),
        (tarfile.DIRTYPE, "directory"),
        (tarfile.FIFOTYPE, "FIFO"),
        (tarfile.CONTTYPE, "contiguous file"),
    ],
)
def test_non_regular_members_are_refused(tmp_path: Path, kind: bytes, what: str) -> None:
    path = write_tar(tmp_path / "t.tar", sample(), types={"storages": kind})
    with pytest.raises(safeload.FormatError, match=f"'storages/?' is a {what}, not a regular"):
        safeload.load(path)


def test_pax_extended_headers_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sample():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if name == "pickle":  # a pax header can rename or resize the next member
                info.pax_headers = {"size": str(len(data))}
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(safeload.FormatError, match="pax extended header"):
        safeload.load(path)


def test_unknown_member_names_are_refused(tmp_path: Path) -> None:
    members = sample() + [("../../etc/passwd", b"x")]
    with pytest.raises(safeload.FormatError, match="unexpected tar member"):
        safeload.load(write_tar(tmp_path / "t.tar", members))
    members = [("./pickle" if n == "pickle" else n, d) for n, d in sample()]
    with pytest.raises(safeload.FormatError, match="unexpected tar member './pickle'"):
        safeload.load(write_tar(tmp_path / "u.tar", members))


def _tar_bytes(tmp_path: Path, members=None) -> bytearray:
    return bytearray(write_tar(tmp_path / "t.tar", members or sample()).read_bytes())


def test_bad_checksum_is_refused(tmp_path: Path) -> None:
    data = _tar_bytes(tmp_path)
    offset = data.index(b"pickle\0")  # flip a byte of the 'pickle' header's name
    data[offset + 1] ^= 0x20
    with pytest.raises(safeload.FormatError, match="checksum"):
        safeload.load(bytes(data))


def test_member_running_past_the_end_is_refused(tmp_path: Path) -> None:
    data = _tar_bytes(tmp_path)
    header = data.rindex(b"storages\0")
    with pytest.raises(safeload.FormatError, match="runs past the end of the file"):
        safeload.load(bytes(data[:header + 512 + 40]))  # cut inside the storages data


def test_data_after_the_end_of_the_archive_is_refused(tmp_path: Path) -> None:
    data = _tar_bytes(tmp_path)
    data += b"PK\x03\x04 zip appended"
    with pytest.raises(safeload.FormatError, match="after the end of the tar archive"):
        safeload.load(bytes(data))


def test_truncated_archives_are_refused_at_every_block(tmp_path: Path) -> None:
    data = bytes(_tar_bytes(tmp_path))
    for cut in range(1, len(data), 97):
        try:
            safeload.load(data[:cut])
        except safeload.SafeloadError:
            continue
        # the cut fell in the zero padding after the last member: still the archive
        assert not any(data[cut:])


# --- the members -------------------------------------------------------------------------


def _with(members, name: str, data: bytes):
    return [(n, data if n == name else d) for n, d in members]


def _storages_case(counts=None, views=None) -> bytes:
    return storages_member({1: (torch.FloatStorage, torch.arange(4.0))}, views, counts=counts)


def _tensors_case(**override) -> bytes:
    spec = {"storage": 1, "cls": torch.FloatTensor, "size": (4,), "stride": (1,), "offset": 0}
    spec.update(override)
    return tensors_member({9: (spec["storage"], spec["cls"], spec["size"], spec["stride"],
                               spec["offset"])})


def _small(storages: bytes | None = None, tensors: bytes | None = None, obj=None):
    return [
        ("sys_info", _pk(SYS_INFO, 2)),
        ("pickle", _pk(obj if obj is not None else {"t": Ref(9)}, 2, refs=True)),
        ("tensors", tensors if tensors is not None else _tensors_case()),
        ("storages", storages if storages is not None else _storages_case([])),
    ]


def test_the_small_archive_loads(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "t.tar", _small())
    assert safeload.load(path)["t"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (_small(storages=_storages_case(counts={1: struct.pack("<q", 5)})),
         "needs 20 bytes, the member has 16 left"),
        (_small(storages=_storages_case(counts={1: struct.pack("<q", 2**62)}, views=[])),
         "needs 18446744073709551616 bytes"),
        (_small(storages=_storages_case(counts={1: struct.pack("<q", 3)}, views=[])),
         "storage views: unknown opcode"),
        (_small(storages=_pk(10**12, 2)), "10000000000000 storages cannot fit|above the limit"),
        (_small(storages=_pk(-1, 2)), "count must be a non-negative int"),
        (_small(storages=_storages_case(views=[(5, 1, 2, 3)])), "leaves storage '1'"),
        (_small(storages=_storages_case(views=[(5, 7, 0, 1)])), "unknown storage '7'"),
        (_small(storages=_storages_case(views=[(1, 1, 0, 1)])), "reuses a storage key"),
        (_small(storages=_storages_case(views=[(5, 1, 0, 1), (5, 1, 0, 1)])),
         "reuses a storage key"),
        (_small(storages=_storages_case(views=[]) + b"x"), "1 bytes after the storage-view"),
        (_small(tensors=_tensors_case(size=(5,))), "needs 20 bytes of storage '1'"),
        (_small(tensors=_tensors_case(offset=4)), "needs 32 bytes of storage '1'"),
        (_small(tensors=_tensors_case(stride=(-1,))), "negative size, stride or offset"),
        (_small(tensors=_tensors_case(storage=3)), "storage '3', which 'storages' lacks"),
        (_small(tensors=_tensors_case(storage=None)), "has no storage"),
        (_small(tensors=_tensors_case(cls=torch.FloatStorage)), "tensor type must be"),
        (_small(tensors=_tensors_case(size=(1,) * 65, stride=(1,) * 65)), "65 dimensions"),
        (_small(tensors=_pk(1, 2) + _pk((9, 1, torch.FloatTensor), 2)
                + struct.pack("<i", 2**31 - 1) + b"\0" * 4), "2147483647 dimensions"),
        (_small(tensors=_tensors_case()[:-3]), "truncated"),
        (_small(tensors=_tensors_case() + b"\0"), "1 bytes after the last tensor"),
        (_small(obj={"t": Ref(77)}), "persistent id '77' names no tensor or storage"),
    ],
)
def test_broken_members_are_refused(tmp_path: Path, members, message: str) -> None:
    path = write_tar(tmp_path / "t.tar", members)
    with pytest.raises((safeload.FormatError, safeload.LimitError), match=message):
        safeload.load(path)


def test_metadata_pickles_may_only_name_storage_and_tensor_types(tmp_path: Path) -> None:
    evil = tensors_member({9: (1, os.system, (4,), (1,), 0)})
    with pytest.raises(safeload.UnsafeGlobalError, match="posix.system|os.system") as err:
        safeload.load(write_tar(tmp_path / "t.tar", _small(tensors=evil)))
    assert err.value.member.startswith("tensors")
    evil = _pk(1, 2) + _pk((1, "cpu", os.system), 2)
    with pytest.raises(safeload.UnsafeGlobalError):
        safeload.load(write_tar(tmp_path / "u.tar", _small(storages=evil)))


def test_unsafe_global_in_the_pickle_member_is_refused(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(safeload.UnsafeGlobalError) as err:
        safeload.load(write_tar(tmp_path / "t.tar", _small(obj={"t": Ref(9), "x": Boom()})))
    assert err.value.member == "pickle"


def test_huge_counts_do_not_allocate(tmp_path: Path) -> None:
    cases = [
        _small(storages=_storages_case(counts={1: struct.pack("<q", 2**62)}, views=[])),
        _small(storages=_pk(10**15, 2)),
        _small(tensors=_pk(10**15, 2)),
    ]
    for i, members in enumerate(cases):
        path = write_tar(tmp_path / f"t{i}.tar", members)
        tracemalloc.start()
        try:
            with pytest.raises((safeload.FormatError, safeload.LimitError)):
                safeload.load(path)
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < 2_000_000, (i, peak)


def test_open_tar_without_tensors_member_or_view_list(tmp_path: Path) -> None:
    members = [m for m in _small(storages=_storages_case(), obj={"s": Ref(1)})
               if m[0] != "tensors"]
    ckpt = open_tar(Source.open(write_tar(tmp_path / "t.tar", members)))
    assert any("no 'tensors' member" in n for n in ckpt.notes)
    assert any("no storage-view list" in n for n in ckpt.notes)
    assert bytes(ckpt.storage("1")) == np.arange(4, dtype=np.float32).tobytes()


# --- the shared corpus ---------------------------------------------------------------------


from corpus_paths import CORPUS  # noqa: E402

#: burn's fixtures, with the values burn's own tests expect of them
BURN_TAR = {
    "burn_tar_multi_dtype.tar": {
        "0": ("float32", [1.5, 2.5, 3.5]),
        "1": ("float64", [1.111, 2.222]),
        "2": ("int64", [10, 20, 30, 40]),
    },
    "burn_tar_weight_bias.tar": {"0": ("float32", None), "1": ("float32", None)},
}


@pytest.mark.parametrize("name", sorted(BURN_TAR))
def test_burn_tar_fixtures(name: str) -> None:
    if CORPUS is None or not (CORPUS / "benign" / name).is_file():
        pytest.skip("corpus not found (set SAFELOAD_CORPUS)")
    path = CORPUS / "benign" / name
    source = Source.open(path)
    assert sniff(source) == "tar"
    ckpt = open_tar(source)
    for key, (dtype, values) in BURN_TAR[name].items():
        array = np.frombuffer(ckpt.storage(key), dtype=dtype)
        assert np.isfinite(array).all() and array.size > 0
        if values is not None:
            assert array.tolist() == values
    # Not torch's format: storage tuples where torch writes persistent ids. torch
    # cannot read these files; safeload refuses them, located, rather than guess.
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises
        torch.load(path, weights_only=False)
    with pytest.raises(safeload.FormatError, match="persistent id") as err:
        safeload.load(path)
    assert err.value.member == "pickle"


def test_random_corruption_only_ever_raises_safeload_errors(tmp_path: Path) -> None:
    import random

    data = bytes(_tar_bytes(tmp_path))
    used = len(data.rstrip(b"\0"))  # the headers and members, not the zero padding
    rng = random.Random(7)
    for _ in range(250):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(used)] = rng.randrange(256)
        try:
            safeload.load(bytes(mutated))
        except safeload.SafeloadError:
            pass


def test_big_endian_writer_stored_counts_in_its_own_order(tmp_path: Path) -> None:
    # pre-0.4 torch wrote the element count natively and the bytes little-endian
    info = dict(SYS_INFO, little_endian=False)
    members = _small(storages=_storages_case(counts={1: struct.pack(">q", 4)}, views=[]))
    members = _with(members, "sys_info", _pk(info, 2))
    ckpt = open_tar(Source.open(write_tar(tmp_path / "t.tar", members)))
    assert any("big-endian" in note for note in ckpt.notes)
    assert safeload.load(tmp_path / "t.tar")["t"].tolist() == [0.0, 1.0, 2.0, 3.0]
