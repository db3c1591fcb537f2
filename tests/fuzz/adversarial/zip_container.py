"""The zip container: every way an archive can say two things at once.

A small zip writer here controls each field separately for the local header
and the central directory (names, flags, method, CRC, sizes, offsets, Unix
attributes, extra fields) and can put bytes anywhere. From a valid torch-like
archive it derives: local/central name mismatches, every flag bit, bad CRCs,
duplicate and case-colliding names, prefix confusion, compressed / missing /
short records, a zip bomb, overlapping entries, junk before, between and after
the records, symlinks, traversal in names, TorchScript markers, lying counts
and directory offsets, zip64 records, an encrypted archive. Each container is
tried with a benign data.pkl and with one that runs os.system; a record that
holds the payload is also hidden where another zip reader would find it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from fuzzkit import framed, op, pglobal

from . import Case, register
from .payloads import STORAGES, tensor, val


@dataclass
class Entry:
    name: bytes
    data: bytes
    local_name: bytes | None = None
    method: int = 0
    local_method: int | None = None
    flags: int = 0
    local_flags: int | None = None
    crc: int | None = None
    local_crc: int | None = None
    csize: int | None = None
    usize: int | None = None
    local_csize: int | None = None
    local_usize: int | None = None
    made_by: int = 20
    attrs: int = 0
    extra: bytes = b""
    local_extra: bytes = b""
    offset: int | None = None  # central directory's header offset, if not the real one
    compress: bool = False  # deflate the data (method should then be 8)
    needed: int = 20
    before: bytes = b""  # bytes written before this entry's local header


@dataclass
class Archive:
    entries: list[Entry]
    prefix_junk: bytes = b""
    suffix: bytes = b""
    comment: bytes = b""
    count: int | None = None
    cd_offset: int | None = None
    cd_size: int | None = None
    disk: int = 0
    between_cd: bytes = b""  # bytes between the records and the central directory
    drop_locals: set[int] = field(default_factory=set)

    def build(self) -> bytes:
        out = bytearray(self.prefix_junk)
        central = bytearray()
        for index, e in enumerate(self.entries):
            out += e.before
            payload = zlib.compress(e.data)[2:-4] if e.compress else e.data
            crc = zlib.crc32(e.data) if e.crc is None else e.crc
            csize = len(payload) if e.csize is None else e.csize
            usize = len(e.data) if e.usize is None else e.usize
            header = len(out)
            local_name = e.name if e.local_name is None else e.local_name
            if index not in self.drop_locals:
                out += struct.pack(
                    "<IHHHHHIIIHH", 0x04034B50, e.needed,
                    e.flags if e.local_flags is None else e.local_flags,
                    e.method if e.local_method is None else e.local_method, 0, 0x21,
                    crc if e.local_crc is None else e.local_crc,
                    csize if e.local_csize is None else e.local_csize,
                    usize if e.local_usize is None else e.local_usize,
                    len(local_name), len(e.local_extra))
                out += local_name + e.local_extra + payload
            central += struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, e.made_by, e.needed, e.flags, e.method, 0,
                0x21, crc, csize, usize, len(e.name), len(e.extra), 0, 0, 0, e.attrs,
                header if e.offset is None else e.offset)
            central += e.name + e.extra
        out += self.between_cd
        cd_offset = len(out)
        out += central
        count = len(self.entries) if self.count is None else self.count
        out += struct.pack("<IHHHHIIH", 0x06054B50, self.disk, self.disk, count, count,
                           len(central) if self.cd_size is None else self.cd_size,
                           cd_offset if self.cd_offset is None else self.cd_offset,
                           len(self.comment))
        out += self.comment + self.suffix
        return bytes(out)


def _records(body: bytes, prefix: str = "archive") -> list[Entry]:
    names = {"data.pkl": framed(body, 2), "byteorder": b"little",
             **{f"data/{k}": v for k, v in STORAGES.items()}, "version": b"3\n"}
    return [Entry(f"{prefix}/{n}".encode(), d) for n, d in names.items()]


def _benign_body() -> bytes:
    return op("MARK") + val("w") + tensor() + val("n") + val(3) + op("DICT")


def _payload_body(canary: str) -> bytes:
    return pglobal("os", "system") + val((f"touch {canary}/CANARY",)) + op("REDUCE")


def _find(entries: list[Entry], suffix: str) -> int:
    return next(i for i, e in enumerate(entries) if e.name.endswith(suffix.encode()))


def _variants(body: bytes, canary: str) -> dict[str, tuple[Archive, str]]:
    """(archive, expectation) by name, all derived from the valid layout."""
    def base(**kwargs) -> Archive:
        return Archive(_records(body), **kwargs)

    out: dict[str, tuple[Archive, str]] = {"valid": (base(), "value")}

    def mutate(name: str, expect: str, fn, **kwargs) -> None:
        archive = base(**kwargs)
        fn(archive.entries)
        out[name] = (archive, expect)

    pkl = 0
    evil = framed(_payload_body(canary), 2)
    # local / central disagreements
    mutate("name/local-differs", "refuse", lambda es: setattr(es[pkl], "local_name",
                                                                b"archive/data.pk1"))
    mutate("name/local-is-storage", "refuse", lambda es: setattr(es[pkl], "local_name",
                                                                   b"archive/data/0\x00\x00"))
    mutate("method/local-differs", "refuse", lambda es: setattr(es[pkl], "local_method", 8))
    mutate("crc/local-differs", "refuse", lambda es: setattr(es[pkl], "local_crc", 1))
    mutate("size/local-differs", "refuse", lambda es: setattr(es[pkl], "local_csize", 3))
    mutate("size/local-usize-differs", "refuse",
           lambda es: setattr(es[pkl], "local_usize", 1 << 30))
    # flag bits, in both headers and in the local one only
    for bit in range(16):
        refused = bit in (0, 5, 6, 13)
        mutate(f"flags/bit{bit}", "refuse" if refused else "any",
               lambda es, b=bit: setattr(es[pkl], "flags", 1 << b))
        mutate(f"flags/local-bit{bit}", "refuse" if bit in (0, 6, 13) else "any",
               lambda es, b=bit: setattr(es[pkl], "local_flags", 1 << b))
        mutate(f"flags/storage-bit{bit}", "refuse" if refused else "any",
               lambda es, b=bit: setattr(es[_find(es, "data/0")], "flags", 1 << b))
    # CRCs
    mutate("crc/data.pkl", "refuse", lambda es: setattr(es[pkl], "crc", 0x12345678))
    mutate("crc/byteorder", "refuse", lambda es: setattr(es[_find(es, "byteorder")], "crc", 1))
    mutate("crc/storage-unchecked", "value",
           lambda es: setattr(es[_find(es, "data/0")], "crc", 1))
    # duplicates and case
    mutate("dup/data.pkl-evil-second", "refuse",
           lambda es: es.append(Entry(b"archive/data.pkl", evil)))
    mutate("dup/data.pkl-evil-first", "refuse",
           lambda es: es.insert(0, Entry(b"archive/data.pkl", evil)))
    mutate("dup/storage", "refuse", lambda es: es.append(Entry(b"archive/data/0", b"\0" * 16)))
    mutate("dup/case", "refuse", lambda es: es.append(Entry(b"archive/DATA.PKL", evil)))
    mutate("dup/case-prefix", "refuse", lambda es: es.append(Entry(b"ARCHIVE/data.pkl", evil)))
    # prefixes
    mutate("prefix/two", "refuse", lambda es: es.append(Entry(b"other/data.pkl", evil)))
    mutate("prefix/root-record", "refuse", lambda es: es.append(Entry(b"data.pkl", evil)))
    for prefix in ("..", ".", "", "a/b", "ar\\chive", "/archive", "C:", "c:/x", "archive/"):
        def rename(es, p=prefix):
            for e in es:
                e.name = p.encode() + e.name[len(b"archive"):]
        mutate(f"prefix/{prefix!r}", "refuse", rename)
    for prefix in ("x" * 200, "archive ", "model.pt", "\u00e9t\u00e9"):
        def rename_ok(es, p=prefix):
            for e in es:
                e.name = p.encode() + e.name[len(b"archive"):]
                e.flags |= 0x800
        mutate(f"prefix/ok-{prefix[:20]!r}", "value", rename_ok)
    # compressed, missing, short records; a zip bomb
    def compress(index_of, method=8, really=True):
        def fn(es):
            e = es[index_of(es)]
            e.method, e.compress = method, really
        return fn
    mutate("compressed/data.pkl", "refuse", compress(lambda es: pkl))
    mutate("compressed/storage", "refuse", compress(lambda es: _find(es, "data/0")))
    mutate("compressed/claimed-not-done", "refuse", compress(lambda es: pkl, 8, False))
    for method in (1, 9, 12, 14, 93, 99, 0xFFFF):
        mutate(f"compressed/method-{method}", "refuse", compress(lambda es: pkl, method, False))
    bomb = Entry(b"archive/data/1", b"\0" * 50_000_000, method=8, compress=True)
    mutate("bomb/deflate-50MB", "refuse",
           lambda es: es.__setitem__(_find(es, "data/1"), bomb))
    mutate("missing/data.pkl", "refuse", lambda es: es.pop(pkl))
    mutate("missing/storage", "refuse", lambda es: es.pop(_find(es, "data/0")))
    mutate("missing/byteorder", "value", lambda es: es.pop(_find(es, "byteorder")))
    mutate("missing/version", "value", lambda es: es.pop(_find(es, "version")))
    mutate("byteorder/big", "value", lambda es: setattr(es[_find(es, "byteorder")], "data",
                                                         b"big"))
    mutate("byteorder/garbage", "refuse",
           lambda es: setattr(es[_find(es, "byteorder")], "data", b"middle"))
    mutate("alignment/garbage", "refuse",
           lambda es: es.append(Entry(b"archive/.storage_alignment", b"63")))
    mutate("short/storage", "refuse",
           lambda es: setattr(es[_find(es, "data/0")], "data", b"\0" * 15))
    mutate("long/storage", "refuse",
           lambda es: setattr(es[_find(es, "data/0")], "data", b"\0" * 17))
    mutate("short/central-size", "refuse",
           lambda es: setattr(es[_find(es, "data/0")], "csize", 8))
    mutate("long/central-size", "refuse",
           lambda es: (setattr(es[_find(es, "data/0")], "csize", 10_000),
                       setattr(es[_find(es, "data/0")], "usize", 10_000)))
    # overlapping entries and offsets
    def alias_header(es):
        es.append(Entry(b"archive/data/9", b"", offset=0))
    archive = base()
    alias_header(archive.entries)
    archive.drop_locals = {len(archive.entries) - 1}
    out["overlap/second-name-same-header"] = (archive, "refuse")
    archive = base()
    archive.entries[_find(archive.entries, "data/1")].offset = 0
    out["overlap/offset-to-first"] = (archive, "refuse")
    mutate("overlap/offset-past-end", "refuse",
           lambda es: setattr(es[_find(es, "data/1")], "offset", 1 << 31))
    # junk before, between, after
    out["junk/before-1"] = (base(prefix_junk=b"\0"), "refuse")
    out["junk/before-pickle"] = (base(prefix_junk=evil), "refuse")
    out["junk/before-shifted"] = (_shifted(base(), b"x" * 100), "refuse")
    out["junk/between-records"] = (_with_before(base(), 2, b"\0" * 7), "refuse")
    out["junk/between-records-descriptor-size"] = (_with_before(base(), 2, b"\0" * 16),
                                                   "refuse")
    out["junk/before-central"] = (base(between_cd=evil), "refuse")
    out["junk/after"] = (base(suffix=b"\0"), "refuse")
    out["junk/after-pickle"] = (base(suffix=evil), "refuse")
    out["comment/plain"] = (base(comment=b"hello"), "value")
    out["comment/with-eocd"] = (base(comment=b"PK\x05\x06" + b"\0" * 18), "any")
    out["append/second-archive"] = (base(suffix=Archive(_records(_payload_body(canary)))
                                         .build()), "refuse")
    # symlinks, directories, traversal
    for label, attrs, made_by in (("symlink", 0o120777 << 16, 3 << 8),
                                  ("symlink-storage", 0o120777 << 16, 3 << 8),
                                  ("regular-unix", 0o100644 << 16, 3 << 8),
                                  ("dir-attr", 0o040755 << 16, 3 << 8)):
        target = "data/0" if label == "symlink-storage" else "data.pkl"
        mutate(f"attrs/{label}", "value" if label in ("regular-unix", "dir-attr") else "refuse",
               lambda es, a=attrs, m=made_by, t=target: (
                   setattr(es[_find(es, t)], "attrs", a), setattr(es[_find(es, t)], "made_by",
                                                                   m)))
    for name in ("archive/../data.pkl", "archive/data/../data.pkl", "archive/./data.pkl",
                 "archive//data.pkl", "archive/data/0/..", "archive/data\\..\\x",
                 "archive\\..\\x", "archive/data/0\x00.pkl", "archive/data/", "/etc/passwd",
                 "archive/../../../../tmp/x", "../archive/data.pkl"):
        mutate(f"traversal/{name!r}", "refuse",
               lambda es, n=name: es.append(Entry(n.encode(), evil)))
    # a drive letter inside the path: a record nobody reads, never a path
    mutate("name/inner-drive", "any", lambda es: es.append(Entry(b"archive/C:/x", evil)))
    mutate("name/bad-utf8-flagged", "refuse",
           lambda es: es.append(Entry(b"archive/\xff\xfe", b"", flags=0x800)))
    mutate("name/cp437", "value", lambda es: es.append(Entry(b"archive/\x81x", b"")))
    # TorchScript
    for marker in ("constants.pkl", "bytecode.pkl", "code/__torch__.py", "code/x/y.py"):
        mutate(f"torchscript/{marker}", "refuse",
               lambda es, m=marker: es.append(Entry(f"archive/{m}".encode(), evil)))
    # end records that lie
    out["eocd/count-more"] = (base(count=9), "refuse")
    out["eocd/count-less"] = (base(count=2), "refuse")
    out["eocd/count-zero"] = (base(count=0), "refuse")
    out["eocd/cd-offset"] = (base(cd_offset=10), "refuse")
    out["eocd/cd-size"] = (base(cd_size=46), "refuse")
    out["eocd/disk"] = (base(disk=1), "refuse")
    out["eocd/only"] = (Archive([]), "refuse")
    # zip64 fields
    def zip64(es):
        e = es[_find(es, "data/0")]
        e.csize = e.usize = 0xFFFFFFFF
        e.extra = e.local_extra = struct.pack("<HHQQ", 1, 16, 16, 16)
    mutate("zip64/sizes-ok", "value", zip64)

    def zip64_lie(es):
        e = es[_find(es, "data/0")]
        e.csize = e.usize = 0xFFFFFFFF
        e.extra = struct.pack("<HHQQ", 1, 16, 1 << 40, 1 << 40)
    mutate("zip64/sizes-lie", "refuse", zip64_lie)

    def zip64_short(es):
        e = es[_find(es, "data/0")]
        e.csize = e.usize = 0xFFFFFFFF
        e.extra = struct.pack("<HHQ", 1, 8, 16)
    mutate("zip64/short-extra", "refuse", zip64_short)

    def zip64_missing(es):
        e = es[_find(es, "data/0")]
        e.csize = e.usize = 0xFFFFFFFF
    mutate("zip64/missing-extra", "refuse", zip64_missing)

    def zip64_offset(es):
        e = es[_find(es, "data/1")]
        e.offset = 0xFFFFFFFF
        e.extra = struct.pack("<HHQ", 1, 8, 0)
    mutate("zip64/offset-to-first", "refuse", zip64_offset)
    mutate("version/needed-99", "refuse", lambda es: setattr(es[pkl], "needed", 99))
    # many small records: time stays in proportion
    many = base()
    many.entries += [Entry(f"archive/extra/{i}".encode(), b"") for i in range(20_000)]
    out["many/20000-unknown-records"] = (many, "value")
    # a payload in a record nobody reads
    mutate("hidden/unknown-record", "value",
           lambda es: es.append(Entry(b"archive/evil.pkl", evil)))
    return out


def _with_before(archive: Archive, index: int, junk: bytes) -> Archive:
    archive.entries[index].before = junk
    return archive


def _shifted(archive: Archive, junk: bytes) -> Archive:
    """Junk before the archive with every offset moved to match (a
    self-extracting-style archive a lenient reader would accept)."""
    data = archive.build()
    archive.prefix_junk = junk
    position = 0
    for e in archive.entries:
        e.offset = position + len(junk)
        position += 30 + len(e.name) + len(e.data)
    _ = data
    return archive


@register("zip_container")
def generate(canary: str) -> list[Case]:
    cases: list[Case] = []
    for flavour, body in (("benign", _benign_body()), ("payload", _payload_body(canary))):
        for name, (archive, expect) in _variants(body, canary).items():
            data = archive.build()
            # when the container loads, the payload in data.pkl must be refused
            reaches_vm = flavour == "payload" and expect in ("value", "any")
            if reaches_vm:
                expect = "refuse:unsafe-global" if expect == "value" else "refuse"
            cases.append(Case(f"{flavour}/{name}", data, expect, dangerous=reaches_vm,
                              unsafe=reaches_vm))
            if name in ("valid", "crc/storage-unchecked", "many/20000-unknown-records",
                        "flags/bit3", "junk/after", "name/local-differs"):
                cases.append(Case(f"{flavour}/{name}/mmap", data, expect, via="mmap"))
    return cases
