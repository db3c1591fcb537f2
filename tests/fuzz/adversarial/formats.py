"""Legacy stream, pre-0.4 tar, .npy / .npz, and polyglots of them.

The legacy stream is five pickles and raw records back to back; the tar
archive has four members, three of them sequences of small pickles and raw
fields; .npy has a literal header and maybe a pickle; .npz is a zip of .npy.
Each generator puts a code-running payload in every pickle slot, makes every
count and size lie (too big, too small, negative, past the end, in the other
byte order), cuts the file at every part boundary, and glues formats together
(a zip after a legacy stream or an .npy, a pickle before a zip, a tar with an
archive behind it). A payload must never run; a lie must be refused.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib

from fuzzkit import framed, op, pglobal, pstr, ptuple, torch_zip

from . import Case, register
from .payloads import STORAGES, in_zip, tensor, val

MAGIC = 0x1950A86A20F9469CFC6C


def _pkl(body: bytes, proto: int = 2) -> bytes:
    return framed(body, proto)


def _payload(canary: str) -> bytes:
    return pglobal("os", "system") + val((f"touch {canary}/CANARY",)) + op("REDUCE")


def _sys_info(little: bool = True, protocol: int = 1001, **extra) -> bytes:
    info = {"protocol_version": protocol, "little_endian": little,
            "type_sizes": {"short": 2, "int": 4, "long": 8}, **extra}
    return _pkl(val(info))


def _legacy_pid(key="0", numel=4, view=None, storage="FloatStorage") -> bytes:
    return ptuple([val("storage"), pglobal("torch", storage), val(key), val("cpu"), val(numel),
                   view if isinstance(view, bytes) else val(view)]) + op("BINPERSID")


def _legacy(parts: dict | None = None, records: list[bytes] | None = None,
            trailing: bytes = b"") -> bytes:
    """A legacy stream: magic, protocol, sys_info, main, keys pickles, records."""
    main = op("MARK") + val("w") + tensor(_legacy_pid()) + op("DICT")
    default = {"magic": _pkl(op("LONG1", MAGIC)), "protocol": _pkl(val(1001)),
               "sys_info": _sys_info(), "main": _pkl(main), "keys": _pkl(val(["0"]))}
    default.update(parts or {})
    if records is None:
        records = [struct.pack("<q", 4) + STORAGES["0"]]
    return b"".join(default[k] for k in ("magic", "protocol", "sys_info", "main", "keys")) + \
        b"".join(records) + trailing


def _legacy_cases(canary: str) -> list[Case]:
    payload = _pkl(_payload(canary))
    cases = [Case("legacy/valid", _legacy(), "value")]
    for slot in ("magic", "protocol", "sys_info", "main", "keys"):
        cases.append(Case(f"legacy/payload-in-{slot}", _legacy({slot: payload}), "refuse",
                          dangerous=slot == "main", unsafe=slot == "main"))
        cases.append(Case(f"legacy/payload-nested-{slot}", _legacy({slot: _pkl(
            op("MARK") + val("k") + _payload(canary) + op("DICT"))}), "refuse"))
    main_with = {
        "payload-in-view": op("MARK") + val("w") + tensor(_legacy_pid(view=ptuple(
            [val("v"), _payload(canary), val(2)]))) + op("DICT"),
        "payload-in-module-pid": ptuple([val("module"), _payload(canary), val("f.py"),
                                         val("src")]) + op("BINPERSID"),
        "module-pid-refused-class": ptuple([val("module"), pglobal("torch.nn", "Linear"),
                                            val("f.py"), val("src")]) + op("BINPERSID"),
        "view-past-end": op("MARK") + val("w") + tensor(_legacy_pid(view=("v", 2, 3)),
                                                        size=(3,)) + op("DICT"),
        "view-neg": op("MARK") + val("w") + tensor(_legacy_pid(view=("v", -1, 2)),
                                                   size=(2,)) + op("DICT"),
        "view-is-root": op("MARK") + val("w") + tensor(_legacy_pid(view=("0", 0, 2)),
                                                       size=(2,)) + op("DICT"),
        "view-twice-differently": op("MARK") + val("a") + tensor(_legacy_pid(
            view=("v", 0, 2)), size=(2,)) + val("b") + tensor(_legacy_pid(view=("v", 1, 2)),
                                                               size=(2,)) + op("DICT"),
        "view-ok": op("MARK") + val("a") + tensor(_legacy_pid(view=("v", 1, 2)), size=(2,))
        + op("DICT"),
        "view-key-traversal": op("MARK") + val("a") + tensor(_legacy_pid(view=("../v", 0, 2)),
                                                             size=(2,)) + op("DICT"),
        "two-dtypes": op("MARK") + val("a") + tensor(_legacy_pid()) + val("b")
        + tensor(_legacy_pid(storage="IntStorage")) + op("DICT"),
        "two-sizes": op("MARK") + val("a") + tensor(_legacy_pid()) + val("b")
        + tensor(_legacy_pid(numel=2), size=(2,)) + op("DICT"),
        "5-tuple-pid": tensor(ptuple([val("storage"), pglobal("torch", "FloatStorage"),
                                      val("0"), val("cpu"), val(4)]) + op("BINPERSID")),
        "str-pid": tensor(val("0") + op("BINPERSID")),
        "key-traversal": tensor(_legacy_pid(key="../0")),
        "unlisted-key": tensor(_legacy_pid(key="1")),
    }
    for label, body in main_with.items():
        expect = "value" if label == "view-ok" else "refuse"
        hostile = b"system" in body
        cases.append(Case(f"legacy/main-{label}", _legacy({"main": _pkl(body)}), expect,
                          dangerous=hostile, unsafe=hostile))
    wrong = {
        "magic-wrong": {"magic": _pkl(op("LONG1", MAGIC + 1))},
        "magic-str": {"magic": _pkl(val("magic"))},
        "protocol-1000": {"protocol": _pkl(val(1000))},
        "protocol-huge": {"protocol": _pkl(op("LONG4", 2**100_000))},
        "sys_info-big-endian": {"sys_info": _sys_info(little=False)},
        "sys_info-extra-key": {"sys_info": _sys_info(extra=1)},
        "sys_info-list": {"sys_info": _pkl(val([1]))},
        "sys_info-long-16": {"sys_info": _pkl(val({"protocol_version": 1001,
                                                   "little_endian": True, "type_sizes": {
                                                       "short": 2, "int": 4, "long": 16}}))},
        "keys-dup": {"keys": _pkl(val(["0", "0"]))},
        "keys-extra": {"keys": _pkl(val(["0", "1"]))},
        "keys-missing": {"keys": _pkl(val([]))},
        "keys-tuple": {"keys": _pkl(val(("0",)))},
        "keys-traversal": {"keys": _pkl(val(["../0"]))},
        "keys-int": {"keys": _pkl(val([0]))},
        "keys-bytes": {"keys": _pkl(val([b"0"], 3))},
        "keys-huge-list": {"keys": _pkl(op("EMPTY_LIST") + op("MARK") + val("0") * 100_000
                                        + op("APPENDS"))},
    }
    for label, parts in wrong.items():
        expect = "value" if label in ("sys_info-big-endian", "keys-int", "keys-bytes") \
            else "refuse"
        cases.append(Case(f"legacy/{label}", _legacy(parts), expect))
    counts = {
        "count-less": [struct.pack("<q", 3) + STORAGES["0"]],
        "count-more": [struct.pack("<q", 5) + STORAGES["0"]],
        "count-neg": [struct.pack("<q", -1) + STORAGES["0"]],
        "count-max": [struct.pack("<Q", 2**64 - 1) + STORAGES["0"]],
        "count-big-endian": [struct.pack(">q", 4) + STORAGES["0"]],
        "record-short": [struct.pack("<q", 4) + STORAGES["0"][:-1]],
        "record-long": [struct.pack("<q", 4) + STORAGES["0"] + b"\0"],
        "count-truncated": [struct.pack("<q", 4)[:5]],
        "no-records": [],
        "two-records": [struct.pack("<q", 4) + STORAGES["0"]] * 2,
    }
    for label, records in counts.items():
        expect = "refuse"
        cases.append(Case(f"legacy/{label}", _legacy(records=records), expect))
    cases.append(Case("legacy/trailing-pickle", _legacy(trailing=payload), "refuse"))
    cases.append(Case("legacy/trailing-zip", _legacy(trailing=in_zip(tensor())), "refuse"))
    whole = _legacy()
    for cut in range(0, len(whole), 7):
        cases.append(Case(f"legacy/truncated/{cut}", whole[:cut], "refuse"))
    # sys_info keys whose str() would be huge (one big str shared by every key)
    big = pstr("x" * 1_000_000, 4) + op("MEMOIZE") + op("POP")
    keys = b"".join(ptuple([val(i, 4), op("MARK") + op("BINGET", 0) * 2_000 + op("TUPLE")], 4)
                    + op("NONE") for i in range(20))
    cases.append(Case("legacy/sys_info-repr-bomb", _legacy({"sys_info": framed(
        big + op("MARK") + keys + op("DICT"), 4)}), "refuse"))
    bigbytes = op("BINBYTES", b"x" * 1_000_000) + op("MEMOIZE") + op("POP")
    nest = op("MARK") + (op("MARK") + (op("MARK") + op("BINGET", 0) * 6 + op("TUPLE")) * 6
                         + op("TUPLE")) * 6 + op("TUPLE")
    cases.append(Case("legacy/protocol-short-repr-bomb", _legacy({"protocol": framed(
        bigbytes + nest, 4)}), "refuse"))
    cases.append(Case("legacy/mmap", _legacy(), "value", via="mmap"))
    return cases


def _tar(members: dict[str, bytes], *, kinds: dict[str, bytes] | None = None,
         trailing: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            if kinds and name in kinds:
                info.type = kinds[name]
                if info.type == tarfile.SYMTYPE:
                    info.linkname = "/etc/passwd"
                    info.size = 0
                    data = b""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue() + trailing


def _tar_members(**overrides) -> dict[str, bytes]:
    storage_type = pglobal("torch", "FloatStorage")
    storages = (_pkl(val(1)) + _pkl(ptuple([val("0"), val("cpu"), storage_type]))
                + struct.pack("<q", 4) + STORAGES["0"] + _pkl(val([])))
    tensors = (_pkl(val(1)) + _pkl(ptuple([val("t0"), val("0"),
                                           pglobal("torch", "FloatTensor")]))
               + struct.pack("<ii", 1, 0) + struct.pack("<3q", 4, 1, 0))
    members = {"sys_info": _sys_info(), "pickle": _pkl(op("MARK") + val("w")
                                                       + op("PERSID", "t0") + op("DICT")),
               "storages": storages, "tensors": tensors}
    members.update(overrides)
    return {k: v for k, v in members.items() if v is not None}


def _tar_cases(canary: str) -> list[Case]:
    payload = _pkl(_payload(canary))
    storage_type = pglobal("torch", "FloatStorage")
    cases = [Case("tar/valid", _tar(_tar_members()), "value")]

    def storages(count=1, header=None, raw=None, views=b"default") -> bytes:
        header = header or _pkl(ptuple([val("0"), val("cpu"), storage_type]))
        raw = struct.pack("<q", 4) + STORAGES["0"] if raw is None else raw
        views = _pkl(val([])) if views == b"default" else views
        return (count if isinstance(count, bytes) else _pkl(val(count))) + header + raw + views

    def tensors(count=1, header=None, dims=None) -> bytes:
        header = header or _pkl(ptuple([val("t0"), val("0"), pglobal("torch", "FloatTensor")]))
        dims = struct.pack("<ii", 1, 0) + struct.pack("<3q", 4, 1, 0) if dims is None else dims
        return (count if isinstance(count, bytes) else _pkl(val(count))) + header + dims

    variants = {
        "payload-sys_info": _tar_members(sys_info=payload),
        "payload-pickle": _tar_members(pickle=payload),
        "payload-storage-count": _tar_members(storages=storages(count=payload)),
        "payload-storage-header": _tar_members(storages=storages(header=payload)),
        "payload-views": _tar_members(storages=storages(views=payload)),
        "payload-tensor-count": _tar_members(tensors=tensors(count=payload)),
        "payload-tensor-header": _tar_members(tensors=tensors(header=payload)),
        "payload-module-pid": _tar_members(pickle=_pkl(ptuple([
            _payload(canary), val("f.py"), val("src")]) + op("BINPERSID"))),
        "storage-count-more": _tar_members(storages=storages(count=2)),
        "storage-count-huge": _tar_members(storages=storages(count=2**40)),
        "storage-count-neg": _tar_members(storages=storages(count=-1)),
        "element-count-more": _tar_members(storages=storages(raw=struct.pack("<q", 5)
                                                              + STORAGES["0"])),
        "element-count-max": _tar_members(storages=storages(raw=struct.pack("<Q", 2**64 - 1)
                                                             + STORAGES["0"])),
        "element-count-less": _tar_members(storages=storages(raw=struct.pack("<q", 3)
                                                              + STORAGES["0"])),
        "storage-key-traversal": _tar_members(storages=storages(header=_pkl(ptuple(
            [val("../0"), val("cpu"), storage_type])))),
        "storage-location-bad": _tar_members(storages=storages(header=_pkl(ptuple(
            [val("0"), val("cpu;rm"), storage_type])))),
        "storage-type-dtype": _tar_members(storages=storages(header=_pkl(ptuple(
            [val("0"), val("cpu"), pglobal("torch", "float32")])))),
        "view-past-end": _tar_members(storages=storages(views=_pkl(val([("v", "0", 2, 3)])))),
        "view-of-unknown": _tar_members(storages=storages(views=_pkl(val([("v", "9", 0, 1)])))),
        "view-reuses-key": _tar_members(storages=storages(views=_pkl(val([("0", "0", 0, 1)])))),
        "view-ok": _tar_members(storages=storages(views=_pkl(val([("v", "0", 1, 2)])))),
        "tensor-count-more": _tar_members(tensors=tensors(count=2)),
        "tensor-count-huge": _tar_members(tensors=tensors(count=2**40)),
        "ndim-huge": _tar_members(tensors=tensors(dims=struct.pack("<ii", 2**31 - 1, 0))),
        "ndim-neg": _tar_members(tensors=tensors(dims=struct.pack("<ii", -1, 0))),
        "ndim-65": _tar_members(tensors=tensors(dims=struct.pack("<ii", 65, 0)
                                                + struct.pack("<131q", *[1] * 131))),
        "size-neg": _tar_members(tensors=tensors(dims=struct.pack("<ii", 1, 0)
                                                 + struct.pack("<3q", -4, 1, 0))),
        "size-past-storage": _tar_members(tensors=tensors(dims=struct.pack("<ii", 1, 0)
                                                          + struct.pack("<3q", 5, 1, 0))),
        "stride-huge": _tar_members(tensors=tensors(dims=struct.pack("<ii", 1, 0)
                                                    + struct.pack("<3q", 2, 2**62, 0))),
        "offset-past": _tar_members(tensors=tensors(dims=struct.pack("<ii", 1, 0)
                                                    + struct.pack("<3q", 1, 1, 4))),
        "tensor-type-refused": _tar_members(tensors=tensors(header=_pkl(ptuple(
            [val("t0"), val("0"), pglobal("torch.nn", "Linear")])))),
        "tensor-no-storage": _tar_members(tensors=tensors(header=_pkl(ptuple(
            [val("t0"), op("NONE"), pglobal("torch", "FloatTensor")])))),
        "pid-unknown": _tar_members(pickle=_pkl(op("PERSID", "t9"))),
        "pid-traversal": _tar_members(pickle=_pkl(op("PERSID", "../t0"))),
        "missing-storages": _tar_members(storages=None),
        "missing-tensors": _tar_members(tensors=None, pickle=_pkl(val(1))),
        "extra-member": {**_tar_members(), "evil.pkl": payload},
        "sys_info-1000": _tar_members(sys_info=_sys_info(protocol=1000)),
    }
    for label, members in variants.items():
        expect = "value" if label in ("view-ok", "missing-tensors", "sys_info-1000") \
            else "refuse"
        hostile = label == "payload-pickle" or label == "payload-module-pid"
        cases.append(Case(f"tar/{label}", _tar(members), expect, dangerous=hostile,
                          unsafe=hostile))
    for kind_name, kind in (("symlink", tarfile.SYMTYPE), ("dir", tarfile.DIRTYPE),
                            ("fifo", tarfile.FIFOTYPE), ("chr", tarfile.CHRTYPE),
                            ("hardlink", tarfile.LNKTYPE)):
        cases.append(Case(f"tar/{kind_name}-member", _tar(_tar_members(),
                                                          kinds={"pickle": kind}), "refuse"))
    good = _tar(_tar_members())
    cases.append(Case("tar/trailing-junk", good + b"x", "refuse"))
    cases.append(Case("tar/trailing-zip", good + in_zip(tensor()), "refuse"))
    cases.append(Case("tar/dup-member", _tar(_tar_members()) [:-1024] + _tar(
        {"pickle": payload})[:-1024] + bytes(1024), "refuse"))
    bad_checksum = bytearray(good)
    bad_checksum[148:156] = b"0000000\0"
    cases.append(Case("tar/checksum", bytes(bad_checksum), "refuse"))
    huge_size = bytearray(good)
    huge_size[124:136] = b"77777777777\0"
    cases.append(Case("tar/size-huge", _rechecksum(huge_size), "refuse"))
    base256 = bytearray(good)
    base256[124:136] = b"\x80" + b"\0" * 10 + b"\x10"
    cases.append(Case("tar/size-base256", _rechecksum(base256), "refuse"))
    pax = _tar_pax(_tar_members())
    cases.append(Case("tar/pax-header", pax, "refuse"))
    # cut anywhere before the last member's data ends: refused; after it only
    # the end-of-archive zero blocks go, which tar readers do not require
    with tarfile.open(fileobj=io.BytesIO(good)) as archive:
        last = archive.getmembers()[-1]
        data_end = last.offset_data + last.size
    for cut in range(0, len(good), 256):
        cases.append(Case(f"tar/truncated/{cut}", good[:cut],
                          "refuse" if cut < data_end else "any"))
    cases.append(Case("tar/mmap", good, "value", via="mmap"))
    return cases


def _rechecksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:512])
    return bytes(block)


def _tar_pax(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"comment": "x"}
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _npy(descr: str = "<f4", shape=(2,), fortran: bool = False, data: bytes = b"\0" * 8,
         header: str | None = None, version: bytes = b"\x01\x00") -> bytes:
    text = header if header is not None else (
        f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}")
    raw = text.encode("latin-1")
    pad = 64 - (10 + len(raw) + 1) % 64
    raw += b" " * pad + b"\n"
    size = struct.pack("<H", len(raw)) if version[0] == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + version + size + raw + data


def _npy_cases(canary: str) -> list[Case]:
    payload = _pkl(_payload(canary))
    obj_array = _pkl(pglobal("numpy.core.multiarray", "_reconstruct") + ptuple([
        pglobal("numpy", "ndarray"), val((0,)), val(b"b", 3)]) + op("REDUCE") + ptuple([
            val(1), val((1,)), pglobal("numpy", "dtype") + val(("O8", False, True))
            + op("REDUCE"), op("NEWFALSE"), op("MARK") + _payload(canary) + op("LIST")])
        + op("BUILD"), 3)
    cases = [Case("npy/valid", _npy(), "value"), Case("npy/mmap", _npy(), "value", via="mmap")]
    variants = {
        "object-payload": (_npy("|O", (1,), data=payload), "refuse", True),
        "object-array-payload": (_npy("|O", (1,), data=obj_array), "refuse", True),
        "object-benign": (_npy("|O", (1,), data=_pkl(val([1]))), "refuse", False),
        "short-data": (_npy(data=b"\0" * 7), "refuse", False),
        "long-data": (_npy(data=b"\0" * 9), "refuse", False),
        "huge-shape": (_npy(shape=(2**62, 4)), "refuse", False),
        "neg-shape": (_npy(shape=(-2,)), "refuse", False),
        "shape-str": (_npy(header="{'descr': '<f4', 'fortran_order': False, 'shape': 'x', }"),
                      "refuse", False),
        "fortran-int": (_npy(header="{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }"),
                        "refuse", False),
        "extra-key": (_npy(header="{'descr': '<f4', 'fortran_order': False, 'shape': (2,), "
                                  "'x': 1}"), "refuse", False),
        "call-in-header": (_npy(header="__import__('os').system('touch CANARY')"), "refuse",
                           False),
        "nested-header": (_npy(header="[" * 3000 + "]" * 3000), "refuse", False),
        "huge-int-header": (_npy(header="{'descr': '<f4', 'fortran_order': False, 'shape': ("
                                        + "9" * 5000 + ",)}"), "refuse", False),
        "header-too-long": (_npy(header=" " * 70_000, version=b"\x02\x00"), "refuse", False),
        "descr-record": (_npy("[('a', '<f4')]"), "refuse", False),
        "descr-weird": (_npy("<f4 "), "refuse", False),
        "version-9": (_npy(version=b"\x09\x00"), "refuse", False),
        "bool": (_npy("|b1", (8,)), "value", False),
        "fortran": (_npy(shape=(1, 2), fortran=True), "value", False),
    }
    for label, (data, expect, hostile) in variants.items():
        cases.append(Case(f"npy/{label}", data, expect, dangerous=hostile, unsafe=hostile))
    # .npz
    def npz(members: dict[str, bytes], method=zipfile.ZIP_STORED) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", method) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return buffer.getvalue()

    npz_variants = {
        "valid": (npz({"a.npy": _npy(), "b.npy": _npy()}), "value"),
        "deflated": (npz({"a.npy": _npy()}, zipfile.ZIP_DEFLATED), "value"),
        "traversal": (npz({"../a.npy": _npy()}), "refuse"),
        "not-npy": (npz({"a.txt": b"x"}), "refuse"),
        "object-payload": (npz({"a.npy": _npy("|O", (1,), data=payload)}), "refuse"),
        # 256 kB that inflate to 256 MiB: .npz members inflate up to
        # Limits.max_pickle_bytes in total (SECURITY.md); within the child's 2 GiB
        "bomb-256MiB": (_npz_bomb(1 << 28), "any"),
        "dup": (npz({"a.npy": _npy(), "a.npy ": _npy()}), "any"),
    }
    for label, (data, expect) in npz_variants.items():
        hostile = label == "object-payload"
        cases.append(Case(f"npz/{label}", data, expect, dangerous=hostile, unsafe=hostile))
    return cases


def _npz_bomb(nbytes: int) -> bytes:
    """An .npz whose one member deflates to an .npy of ``nbytes`` zeros
    (about 1000:1), written without holding the zeros in memory."""
    from .zip_container import Archive, Entry

    head = _npy("|u1", (nbytes,), data=b"")
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc = zlib.crc32(head)
    parts = [deflate.compress(head)]
    chunk = bytes(1 << 20)
    for _ in range(nbytes >> 20):
        parts.append(deflate.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    parts.append(deflate.flush())
    payload = b"".join(parts)
    entry = Entry(b"a.npy", payload, method=8, crc=crc, usize=len(head) + nbytes)
    return Archive([entry]).build()


def _polyglots(canary: str) -> list[Case]:
    payload = _pkl(_payload(canary))
    zipped = in_zip(tensor())
    evil_zip = torch_zip(payload, STORAGES)
    legacy = _legacy()
    npy = _npy()
    tar = _tar(_tar_members())
    combos = {
        "legacy+zip": legacy + zipped,
        "legacy+evil-zip": legacy + evil_zip,
        "pickle+zip": _pkl(val(1)) + zipped,
        "evil-pickle+zip": payload + zipped,
        "zip+pickle": zipped + payload,
        "npy+zip": npy + zipped,
        "tar+zip": tar + zipped,
        "zip+tar": zipped + tar,
        "npy+legacy": npy + legacy,
        "legacy+npy": legacy + npy,
        "pickle+tar": payload + tar[len(payload):] if len(payload) < 512 else payload + tar,
    }
    return [Case(f"polyglot/{label}", data, "refuse") for label, data in combos.items()]


def _compressed(canary: str) -> list[Case]:
    """Compressed files: the loader refuses them (no such checkpoint format);
    the scanner inflates them, within its budget, to look for payloads."""
    import bz2
    import gzip
    import lzma

    payload = _pkl(_payload(canary))

    def bomb(obj, nbytes: int) -> bytes:
        chunk = bytes(1 << 20)
        parts = [obj.compress(chunk) for _ in range(nbytes >> 20)]
        return b"".join(parts) + obj.flush()

    cases = []
    for name, compress, obj in (
        ("gzip", gzip.compress, zlib.compressobj(9, zlib.DEFLATED, 31)),
        ("bz2", bz2.compress, bz2.BZ2Compressor(9)),
        ("lzma", lzma.compress, lzma.LZMACompressor(preset=1)),
    ):
        cases.append(Case(f"compressed/{name}-payload", compress(payload), "refuse",
                          unsafe=True, dangerous=True))
        cases.append(Case(f"compressed/{name}-zip-payload",
                          compress(torch_zip(payload, STORAGES)), "refuse", unsafe=True,
                          dangerous=True))
        cases.append(Case(f"compressed/{name}-nested-payload", compress(compress(payload)),
                          "refuse"))
        # 256 MiB of zeros: 208 bytes as bz2. The scanner stops at its inflate
        # budget (Limits.min_inflate_budget, 64 MiB, for files this small)
        cases.append(Case(f"compressed/{name}-bomb-256MiB", bomb(obj, 1 << 28), "refuse"))
    return cases


@register("formats")
def generate(canary: str) -> list[Case]:
    return _legacy_cases(canary) + _tar_cases(canary) + _npy_cases(canary) + \
        _polyglots(canary) + _compressed(canary)
