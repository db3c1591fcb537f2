"""The zip container that ``torch.save`` writes (torch >= 1.6).

Strategy: the archive is validated as a whole before any record is handed out,
by a parser written with ``struct`` for what torch's writer (miniz) produces.
The stdlib ``zipfile`` is not used for reading: it accepts junk before the
archive, overlapping records and local headers that disagree with the central
directory, and each of those lets one tool scan different bytes than another
loads. Four steps, each working only on data the step before has bounded:

1. end records: find the end-of-central-directory record in the last 65 557
   bytes, follow the zip64 locator if there is one, and require the central
   directory to end exactly where the end records start (so a junk prefix or a
   directory "somewhere else" is refused, not silently re-based);
2. central directory: bound the entry count by what the directory can hold and
   by ``Limits``, then read every entry (name, flags, method, sizes, zip64);
3. local headers, in the same pass: each agrees with its central entry, and
   the records, in file order, tile the file from byte 0 to the central
   directory with nothing in between but data descriptors;
4. torch layout: plain relative names in one top folder, no two that torch's
   reader (miniz, which ignores letter case) would take for the same, no
   TorchScript, stored records only, ``data.pkl`` present, ``byteorder`` and
   ``.storage_alignment`` well formed.

The per-entry loop is written flat (tuples, one combined test for the rare
cases, checks over all names run once on the joined names, diagnostics only
once something is wrong) because checkpoints can hold 10^5 records. Every
refusal goes through ``_fail``: one ``FormatError`` with file, archive member
and byte offset. CRC-32s are checked when a record is read, not here.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import NoReturn

from ..errors import FormatError
from ..limits import DEFAULT_LIMITS, Limits
from .source import Source

__all__ = [
    "TorchScriptArchive",
    "TorchZip",
    "ZipRecord",
    "is_zip",
    "open_torch_zip",
]


class TorchScriptArchive(FormatError):
    """The archive is a TorchScript module (``torch.jit.save``), not a checkpoint."""


@dataclass(frozen=True)
class ZipRecord:
    """One validated record: where its bytes are and what their CRC must be."""

    name: str  # full name in the archive, e.g. "archive/data/0"
    offset: int  # file offset of the record's data (after the local header)
    size: int  # stored records only, so compressed size == uncompressed size
    crc32: int
    header_offset: int  # file offset of the local file header


# --- wire format ----------------------------------------------------------------------

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_END = struct.Struct("<IHHHHIIH")  # 22 bytes
_END64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes
_END64 = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_EXTRA_HEADER = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

_LOCAL_SIG = 0x04034B50
_CENTRAL_SIG = 0x02014B50
_END_SIG = b"PK\x05\x06"
_END64_LOCATOR_SIG = 0x07064B50
_END64_SIG = 0x06064B50
_ZIP64_EXTRA = 0x0001
_MAX_COMMENT = 0xFFFF
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF

_FLAG_ENCRYPTED = 0x0001 | 0x0040 | 0x2000  # traditional, strong, masked directory
_FLAG_PATCHED = 0x0020
_FLAG_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_METHOD_STORED = 0
_MAX_VERSION = 63  # "version needed to extract" 6.3, the latest the zip spec defines
_MADE_BY_UNIX = 3
_S_IFMT = 0o170000
_S_IFLNK = 0o120000
# A data descriptor (CRC, sizes, optional signature) is 12, 16, 20 or 24 bytes;
# miniz writes 16 or 24. Nothing else may sit between records, so no second
# archive can hide in the gaps for a streaming reader to find.
_DESCRIPTOR_SIZES = frozenset((12, 16, 20, 24))

# Record names are plain relative paths: components non-empty and neither "."
# nor "..", no backslash, no NUL, no leading "/" or drive letter. _check_names
# tests all names of an archive at once with string methods; this pattern only
# finds the culprit once that test failed.
_COMPONENT = r"(?!\.\.?(?:/|\Z))[^/\\\x00]+"
_PLAIN_NAME = re.compile(rf"(?![A-Za-z]:){_COMPONENT}(?:/{_COMPONENT})*")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:")
# What torch.save writes below the top folder.
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_KNOWN_NAME = re.compile(
    r"data\.pkl|byteorder|version|\.format_version|\.storage_alignment"
    r"|\.data/serialization_id|\.data/version|data/[A-Za-z0-9_.\-]+"
)
_BYTEORDERS = {b"little": "little", b"big": "big"}

_TORCHSCRIPT_REASON = (
    "TorchScript archive: it holds Python/TorchScript code, which safeload never runs"
)
_TORCHSCRIPT_HINT = "load it with torch.jit.load only if you trust its source"


def _fail(
    source: Source,
    reason: str,
    offset: int | None = None,
    member: str | None = None,
    hint: str | None = None,
) -> NoReturn:
    raise FormatError(reason, file=source.name, member=member, offset=offset, hint=hint)


def is_zip(source: Source) -> bool:
    """Content sniff only (no validation): does the file start like a zip?

    >>> is_zip(Source(b"PK\\x03\\x04...", "model.pt"))
    True
    """
    head = bytes(source.view(0, min(4, source.size)))
    return head in (b"PK\x03\x04", _END_SIG)


def open_torch_zip(source: Source, *, limits: Limits = DEFAULT_LIMITS) -> TorchZip:
    """Parse and validate a ``torch.save`` zip archive, all of it, up front.

    >>> import io, torch
    >>> buffer = io.BytesIO()
    >>> torch.save({"w": torch.ones(2)}, buffer)
    >>> archive = open_torch_zip(Source.open(buffer.getvalue()))
    >>> archive.prefix, archive.byteorder, bytes(archive.storage("0"))
    ('archive', 'little', b'\\x00\\x00\\x80?\\x00\\x00\\x80?')
    """
    try:
        return TorchZip(source, limits)
    except FormatError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        # Offsets are bounds-checked before use; this only keeps a parser bug
        # from escaping as a non-safeload exception on hostile bytes.
        raise FormatError(
            f"malformed zip archive ({type(exc).__name__}: {exc})", file=source.name
        ) from None


class TorchZip:
    """A validated torch zip archive. Build it with ``open_torch_zip``.

    ``records`` maps names below the top folder ("data.pkl", "data/0", ...) to
    ``ZipRecord``; ``unknown`` lists those torch does not write (never read here).
    """

    source: Source
    prefix: str
    byteorder: str
    storage_alignment: int | None
    unknown: list[str]
    checksums: bool  # False if the writer left every CRC-32 at 0 (nothing to verify)

    def __init__(self, source: Source, limits: Limits = DEFAULT_LIMITS) -> None:
        self.source = source
        self.limits = limits
        self._buffer = source.view(0, source.size)
        central_offset, central_size, count = self._find_central_directory()
        # full name -> (full name, data offset, size, crc32, header offset, data end)
        self._spans = self._read_entries(central_offset, central_size, count)
        cut = len(self.prefix) + 1
        self.unknown = sorted(
            name[cut:] for name in self._spans if not _KNOWN_NAME.fullmatch(name, cut)
        )
        for short in self.unknown:
            # torch finds records ignoring case: to it, "BYTEORDER" is "byteorder".
            if _KNOWN_NAME.fullmatch(short.lower()):
                name, _, _, _, header, _ = self._span(short)
                _fail(source, f"record {name!r} is torch's {short.lower()!r} but for letter "
                      "case, and torch would read it as that record", header, name)
        # torch.save with torch.serialization.set_crc32_options(False) leaves
        # every CRC-32 at 0; then there is nothing to check.
        self.checksums = any(span[3] for span in self._spans.values())
        if self._span("data.pkl") is None:
            _fail(
                source,
                "no data.pkl in the archive: not a torch.save checkpoint",
                member=f"{self.prefix}/data.pkl",
                hint=f"records found: {', '.join(sorted(self._spans)[:8])}",
            )
        self._check_pickle_size()
        self.byteorder = self._read_byteorder()
        self.storage_alignment = self._read_storage_alignment()

    @cached_property
    def records(self) -> dict[str, ZipRecord]:
        """Every record by its name below the top folder, e.g. ``"data/0"``."""
        # Built on first use: 10^5 frozen dataclasses cost more than the parse.
        cut = len(self.prefix) + 1
        return {name[cut:]: ZipRecord(*span[:5]) for name, span in self._spans.items()}

    def _span(self, name: str) -> tuple[str, int, int, int, int, int] | None:
        return self._spans.get(f"{self.prefix}/{name}")

    # --- public reads -----------------------------------------------------------------

    def read(self, name: str, *, verify_crc: bool = True) -> memoryview:
        """The bytes of record ``name`` (short name, e.g. ``"byteorder"``), CRC-checked
        unless ``verify_crc=False``."""
        span = self._span(name) if isinstance(name, str) else None
        if span is None:
            _fail(self.source, f"the archive has no record {name!r}",
                  member=f"{self.prefix}/{name}")
        full_name, offset, size, crc, _, _ = span
        view = self.source.view(offset, size, member=full_name)
        if verify_crc and self.checksums:
            actual = zlib.crc32(view)
            if actual != crc:
                _fail(
                    self.source,
                    f"CRC-32 of record {full_name!r} is {actual:#010x} but the archive "
                    f"says {crc:#010x}: the record is corrupt or was altered",
                    offset,
                    full_name,
                )
        return view

    def pickle(self) -> memoryview:
        """The pickle stream (``data.pkl``), size-limited and CRC-checked."""
        self._check_pickle_size()
        return self.read("data.pkl")

    def storage(self, key: str) -> memoryview:
        """The bytes of storage record ``data/<key>``: zero-copy (a view of the
        file's buffer or mmap) and not CRC-checked, since storages can be huge."""
        span = self._storage_span(key)
        return self.source.view(span[1], span[2], member=span[0])

    def storage_size(self, key: str) -> int:
        """``len(self.storage(key))`` without making the view (the scanner
        checks sizes once per tensor); the record was checked to lie inside
        the file when the archive was opened."""
        return self._storage_span(key)[2]

    def _storage_span(self, key: str) -> tuple:
        span = None
        # Called once per tensor storage: ASCII letters and digits (torch's
        # keys) pass without the regex, which decides everything else.
        if isinstance(key, str) and (
            key.isascii() and key.isalnum() or _STORAGE_KEY.fullmatch(key)
        ):
            span = self._spans.get(f"{self.prefix}/data/{key}")
        if span is None:
            _fail(self.source, f"storage record 'data/{key}' is missing",
                  member=f"{self.prefix}/data/{key}")
        return span

    def __repr__(self) -> str:
        return (
            f"<TorchZip {self.source.name!r} prefix={self.prefix!r} "
            f"records={len(self._spans)} byteorder={self.byteorder!r}>"
        )

    # --- step 1: end records ----------------------------------------------------------

    def _find_central_directory(self) -> tuple[int, int, int]:
        """(offset, size, entry count) of the central directory, all checked."""
        source, buffer = self.source, self._buffer
        end = self._find_end_record()
        (_, disk, central_disk, disk_entries, entries, central_size, central_offset,
         _) = _END.unpack_from(buffer, end)
        directory_end = end  # the central directory must stop right here

        locator = end - _END64_LOCATOR.size
        if locator >= 0 and _U32.unpack_from(buffer, locator)[0] == _END64_LOCATOR_SIG:
            _, end64_disk, end64, disks = _END64_LOCATOR.unpack_from(buffer, locator)
            if end64_disk != 0 or disks > 1:
                _fail(source, "multi-disk (spanned) zip archives are not supported", locator)
            if end64 > locator - _END64.size:
                _fail(source, "the zip64 locator points outside the archive", locator)
            (signature, record_size, _, _, disk64, central_disk64, disk_entries64,
             entries64, central_size64, central_offset64) = _END64.unpack_from(buffer, end64)
            if signature != _END64_SIG:
                _fail(source, "the zip64 locator does not point at a zip64 end record", end64)
            if end64 + 12 + record_size != locator:
                _fail(
                    source,
                    "the zip64 end record is not right before its locator: bytes were "
                    "added before or inside the archive",
                    end64,
                )
            # miniz writes min(value, field maximum) in the classic record; other
            # writers write the maximum. Anything else is two different archives.
            for classic, wide, saturated in (
                (disk, disk64, _U16_MAX),
                (central_disk, central_disk64, _U16_MAX),
                (disk_entries, disk_entries64, _U16_MAX),
                (entries, entries64, _U16_MAX),
                (central_size, central_size64, _U32_MAX),
                (central_offset, central_offset64, _U32_MAX),
            ):
                if classic not in (wide, saturated):
                    _fail(source, "the zip64 end record disagrees with the end record", end)
            disk, central_disk = disk64, central_disk64
            disk_entries, entries = disk_entries64, entries64
            central_size, central_offset = central_size64, central_offset64
            directory_end = end64

        if disk != 0 or central_disk != 0 or disk_entries != entries:
            _fail(source, "multi-disk (spanned) zip archives are not supported", end)
        if central_offset + central_size != directory_end:
            _fail(
                source,
                f"the end record puts the central directory at bytes {central_offset}+"
                f"{central_size}, but it must end at byte {directory_end}: bytes were "
                "added before or inside the archive (a polyglot or a damaged file)",
                end,
            )
        # Both bounds before anything is allocated per entry.
        if entries * _CENTRAL.size > central_size:
            _fail(
                source,
                f"the end record declares {entries} entries, more than a "
                f"{central_size}-byte central directory can hold",
                end,
            )
        self.limits.check(
            "the number of archive records", entries, self.limits.max_records,
            file=source.name, offset=end,
        )
        return central_offset, central_size, entries

    def _find_end_record(self) -> int:
        """Offset of the end-of-central-directory record that ends the file."""
        size = self.source.size
        if size < _END.size:
            _fail(self.source, f"a {size}-byte file is too short to be a zip archive", 0)
        lowest = max(0, size - _END.size - _MAX_COMMENT)
        tail = bytes(self._buffer[lowest:])
        last_seen = None
        # Backwards: the right record is the one whose comment ends the file
        # exactly (a comment may itself contain the signature).
        position = tail.rfind(_END_SIG, 0, len(tail) - _END.size + 4)
        while position >= 0:
            if last_seen is None:
                last_seen = lowest + position
            if position + _END.size + _U16.unpack_from(tail, position + 20)[0] == len(tail):
                return lowest + position
            position = tail.rfind(_END_SIG, 0, position + 3)
        if last_seen is not None:
            _fail(self.source, "bytes follow the end of the zip archive (a polyglot or "
                  "a damaged file)", last_seen)
        _fail(self.source, "no zip end-of-central-directory record: the file is truncated "
              "or not a zip archive", lowest)

    # --- steps 2 and 3: central directory and local headers ----------------------------

    def _read_entries(self, offset: int, size: int, count: int) -> dict[str, tuple]:
        """Every record's span, keyed by its full name.

        One pass checks each central entry together with its local header; the
        checks over all names (syntax, one top folder, no duplicates) run once
        at the end, in C. Diagnostics are worked out only once something fails.
        """
        source, buffer = self.source, self._buffer
        directory = bytes(buffer[offset : offset + size])
        unpack_central, unpack_local = _CENTRAL.unpack_from, _LOCAL.unpack_from
        refused_flags = _FLAG_ENCRYPTED | _FLAG_PATCHED
        spans: dict[str, tuple] = {}
        compressed = []  # (name, method, header, where) of records that are not stored
        covered, covered_flags, in_order = 0, 0, True
        position = 0
        for _ in range(count):
            where = offset + position
            try:
                (signature, made_by, needed, flags, method, _, _, crc, compressed_size,
                 file_size, name_length, extra_length, comment_length, disk, _, attributes,
                 header) = unpack_central(directory, position)
            except struct.error:
                _fail(source, "the central directory is truncated", where)
            name_start = position + 46
            extra_start = name_start + name_length
            position = extra_start + extra_length + comment_length
            if signature != _CENTRAL_SIG or position > size:
                _fail(source, "bad central directory entry (signature or lengths)", where)
            raw_name = directory[name_start:extra_start]
            try:
                # ASCII reads the same in UTF-8 and cp437, and it is what torch writes.
                name = raw_name.decode("ascii")
            except UnicodeDecodeError:
                name = _decode_name(source, raw_name, flags, where)
            # One test for everything uncommon: zip64 fields, refused flags,
            # other disks, unknown zip versions, and Unix attributes (which may
            # say "symlink").
            if (flags & refused_flags or disk or made_by >= _MADE_BY_UNIX << 8
                    or needed > _MAX_VERSION or compressed_size == _U32_MAX
                    or file_size == _U32_MAX or header == _U32_MAX):
                if (compressed_size == _U32_MAX or file_size == _U32_MAX
                        or header == _U32_MAX or disk == _U16_MAX):
                    file_size, compressed_size, header, disk = _zip64_values(
                        source, directory[extra_start : extra_start + extra_length],
                        (file_size, compressed_size, header, disk), name, where,
                    )
                if flags & refused_flags or disk or needed > _MAX_VERSION or (
                    made_by >> 8 == _MADE_BY_UNIX
                    and attributes >> 16 & _S_IFMT == _S_IFLNK
                ):
                    _fail(source, _entry_problem(name, flags, disk, needed), where, name)

            # The local header: torch (miniz) reads the central directory, so
            # the local copy must say the same thing to every other reader.
            if header + 30 > offset:
                # located at this central entry: the header offset may lie
                # past the end of the file
                _fail(source, f"the local header of {name!r} at byte {header} is past "
                      "the records", where, name)
            (signature, _, local_flags, local_method, _, _, local_crc, local_compressed,
             local_size, name_length, extra_length) = unpack_local(buffer, header)
            data = header + 30 + name_length + extra_length
            data_end = data + compressed_size
            if (
                signature != _LOCAL_SIG
                or data_end > offset
                or local_method != method
                or local_flags & _FLAG_ENCRYPTED
                or buffer[header + 30 : header + 30 + name_length] != raw_name
            ):
                _fail(source, self._local_problem(name, header, raw_name, method),
                      header, name)
            if not local_flags & _FLAG_DESCRIPTOR and (
                local_crc != crc or local_compressed != compressed_size
                or local_size != file_size
            ):
                self._check_local_sizes(name, header, data, (crc, compressed_size, file_size))
            # Records in file order, each right after the previous one (or its
            # data descriptor), is what every writer produces; anything else
            # gets the full check in _check_tiling.
            if header != covered and not (
                covered_flags & _FLAG_DESCRIPTOR and header - covered in _DESCRIPTOR_SIZES
            ):
                in_order = False
            covered, covered_flags = data_end, local_flags

            if method != _METHOD_STORED or compressed_size != file_size:
                compressed.append((name, method, header, where))
            spans[name] = (name, data, file_size, crc, header, data_end)

        if position != size:
            _fail(source, f"the central directory has {size - position} bytes after its "
                  f"{count} entries", offset + position)
        if not spans:
            _fail(source, "the zip archive is empty: no data.pkl", 0)
        self.prefix = self._check_names(spans, offset, size, count)
        if not (in_order and (
            offset == covered
            or covered_flags & _FLAG_DESCRIPTOR and offset - covered in _DESCRIPTOR_SIZES
        )):
            self._check_tiling(spans, offset)
        self._reject_torchscript(spans)
        for name, method, header, where in compressed:
            if method != _METHOD_STORED:
                _fail(source, f"record {name!r} is compressed (method {method}); torch "
                      "writes stored (uncompressed) records only", header, name)
            _fail(source, f"stored record {name!r} has different compressed and "
                  "uncompressed sizes", where, name)
        return spans

    def _check_names(self, names: dict[str, tuple], offset: int, size: int, count: int) -> str:
        """All names are plain relative paths below one top folder, no two equal;
        returns the top folder."""
        # Joined by NUL (which no valid name contains) and seen as one path,
        # each test runs over all names at once: "//" finds empty components,
        # empty names, directory entries and absolute names.
        joined = "\x00".join(names)
        path = f"/{joined.replace(chr(0), '/')}/"
        prefix = next(iter(names)).partition("/")[0]
        if (
            len(names) == count
            and joined.count("\x00") == count - 1
            and "\\" not in joined
            and "//" not in path
            and "/./" not in path
            and "/../" not in path
            and f"\x00{joined}".count(f"\x00{prefix}/") == count
            and prefix
            and not _WINDOWS_DRIVE.match(prefix)
        ):
            # torch's zip reader (miniz) looks names up ignoring ASCII case, on
            # the raw bytes: "data.pkl" and "DATA.PKL" would be one name to it,
            # and it may read the one safeload did not. Only names with capitals
            # or non-ASCII bytes can collide that way; for ASCII names, the
            # decoded name is the raw name and str.lower() is miniz's tolower.
            lowered = joined.lower()
            if not joined.isascii() or (
                lowered != joined and len(set(lowered.split("\x00"))) != count
            ):
                self._check_case_collisions(offset, size, count)
            return prefix
        seen = set()
        for name, _, where in self._entry_names(offset, size, count):
            if not _PLAIN_NAME.fullmatch(name):
                _fail(self.source, f"record name {name!r} {_name_problem(name)}",
                      where, name)
            top, slash, _ = name.partition("/")
            if not slash or top != prefix:
                _fail(self.source, _prefix_problem(prefix, name), where, name)
            if name in seen:
                _fail(self.source, f"duplicate record name {name!r}", where, name)
            seen.add(name)
        _fail(self.source, "invalid record names", offset)  # not reached

    def _check_case_collisions(self, offset: int, size: int, count: int) -> None:
        seen: dict[bytes, str] = {}
        for name, raw_name, where in self._entry_names(offset, size, count):
            other = seen.setdefault(raw_name.lower(), name)
            if other != name:
                _fail(
                    self.source,
                    f"record names {other!r} and {name!r} are the same name to torch, "
                    "whose zip reader ignores letter case: it could read either",
                    where,
                    name,
                )

    def _entry_names(
        self, offset: int, size: int, count: int
    ) -> Iterator[tuple[str, bytes, int]]:
        """(name, raw name, entry offset) of each central entry again, for the
        rare checks; only called once _read_entries has walked them safely."""
        directory = bytes(self._buffer[offset : offset + size])
        position = 0
        for _ in range(count):
            (_, _, _, flags, _, _, _, _, _, _, name_length, extra_length, comment_length,
             _, _, _, _) = _CENTRAL.unpack_from(directory, position)
            raw_name = directory[position + 46 : position + 46 + name_length]
            where = offset + position
            yield _decode_name(self.source, raw_name, flags, where), raw_name, where
            position += 46 + name_length + extra_length + comment_length

    def _local_problem(self, name: str, header: int, raw_name: bytes, method: int) -> str:
        (signature, _, flags, local_method, _, _, _, _, _, name_length,
         _) = _LOCAL.unpack_from(self._buffer, header)
        if signature != _LOCAL_SIG:
            return f"no local header where the central directory puts {name!r}"
        if flags & _FLAG_ENCRYPTED:
            return (f"record {name!r} is encrypted: the archive is encrypted "
                    "(password-protected), and torch never writes encrypted archives")
        if bytes(self._buffer[header + 30 : header + 30 + name_length]) != raw_name:
            return f"the local header of {name!r} names a different record"
        if local_method != method:
            return (f"the local header of {name!r} says compression method "
                    f"{local_method}, the central directory says {method}")
        return (f"record {name!r} runs past the records area (into the central "
                "directory or beyond the file)")

    def _check_local_sizes(
        self, name: str, header: int, data: int, central: tuple[int, int, int]
    ) -> None:
        """A local header without a data descriptor repeats the CRC and sizes
        (in a zip64 extra field when they are saturated): they must agree."""
        (_, _, _, _, _, _, crc, compressed_size, file_size, name_length,
         _) = _LOCAL.unpack_from(self._buffer, header)
        if compressed_size == _U32_MAX or file_size == _U32_MAX:
            file_size, compressed_size = _zip64_values(
                self.source, bytes(self._buffer[header + 30 + name_length : data]),
                (file_size, compressed_size), name, header, local=True,
            )
        if (crc, compressed_size, file_size) != central:
            _fail(self.source, f"the local header of {name!r} disagrees with the central "
                  "directory on the CRC or the sizes", header, name)

    def _check_tiling(self, spans: dict[str, tuple], end: int) -> None:
        """The records must tile [0, central directory): nothing before the first
        (a polyglot's other format), no overlap, only data descriptors between."""
        layout = sorted((span[4], span[5], span[0]) for span in spans.values())
        covered, previous_flags = 0, None
        for header, data_end, name in layout:
            self._check_gap(covered, header, previous_flags, name)
            covered = data_end
            previous_flags = _LOCAL.unpack_from(self._buffer, header)[2]
        self._check_gap(covered, end, previous_flags, None)

    def _check_gap(self, start: int, stop: int, flags: int | None, name: str | None) -> None:
        gap = stop - start
        if gap == 0 or (
            flags is not None and flags & _FLAG_DESCRIPTOR and gap in _DESCRIPTOR_SIZES
        ):
            return
        if flags is None:
            reason = (f"{gap} bytes come before the first zip record (a polyglot or a "
                      "junk prefix): the first local header must be at byte 0")
        elif gap < 0:
            reason = f"record {name!r} overlaps the record before it"
        else:
            reason = (f"{gap} unaccounted bytes sit between zip records (only a 12 to "
                      "24-byte data descriptor may)")
        _fail(self.source, reason, min(start, stop), name)

    # --- step 4: torch layout ---------------------------------------------------------

    def _reject_torchscript(self, spans: dict[str, tuple]) -> None:
        # Before the compression check: TorchScript's code records are deflated,
        # and "compressed record" would hide the real reason.
        top = self.prefix + "/"
        found = [top + n for n in ("constants.pkl", "bytecode.pkl") if top + n in spans]
        code = top + "code/"  # once, not once per record name
        found = found or [n for n in spans if n.startswith(code)][:1]
        if found:
            name, _, _, _, header, _ = spans[found[0]]
            raise TorchScriptArchive(
                _TORCHSCRIPT_REASON, hint=_TORCHSCRIPT_HINT,
                file=self.source.name, member=name, offset=header,
            )

    def _check_pickle_size(self) -> None:
        name, offset, size, _, _, _ = self._span("data.pkl")
        self.limits.check(
            "the size of data.pkl", size, self.limits.max_pickle_bytes,
            file=self.source.name, member=name, offset=offset,
        )

    def _read_byteorder(self) -> str:
        if self._span("byteorder") is None:
            return "little"  # torch < 1.10 wrote no byteorder record, and only little
        value = bytes(self.read("byteorder"))
        if value not in _BYTEORDERS:
            name, offset = self._span("byteorder")[:2]
            _fail(self.source, f"the byteorder record is {value[:16]!r}, expected b'little' "
                  "or b'big'", offset, name)
        return _BYTEORDERS[value]

    def _read_storage_alignment(self) -> int | None:
        if self._span(".storage_alignment") is None:
            return None
        text = bytes(self.read(".storage_alignment"))
        # torch writes the decimal text "64"; an alignment is a power of two.
        alignment = int(text) if 0 < len(text) <= 10 and text.isdigit() else 0
        if alignment <= 0 or alignment & (alignment - 1):
            name, offset = self._span(".storage_alignment")[:2]
            _fail(self.source, f"the .storage_alignment record is {text[:16]!r}, expected "
                  "a power of two in decimal", offset, name)
        return alignment


# --- helpers --------------------------------------------------------------------------


def _decode_name(source: Source, raw_name: bytes, flags: int, offset: int) -> str:
    # The rule of zipfile and miniz: UTF-8 when flag bit 11 says so, else cp437.
    try:
        return raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
    except UnicodeDecodeError:
        _fail(source, f"record name {raw_name[:80]!r} is not valid UTF-8", offset)


def _prefix_problem(prefix: str, name: str) -> str:
    if "/" not in name:
        where = f"{name!r} is at the root of the archive"
    else:
        where = f"found both {prefix!r} and {name.partition('/')[0]!r}"
    return f"not a torch checkpoint: records must live in one top folder; {where}"


def _name_problem(name: str) -> str:
    """Why ``name`` is not a plain relative path (it failed _PLAIN_NAME)."""
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL byte"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "has a '..' component"
    return "has an empty or '.' component (or is a directory entry)"


def _entry_problem(name: str, flags: int, disk: int, needed: int) -> str:
    if flags & _FLAG_ENCRYPTED:
        return (f"record {name!r} is encrypted: the archive is encrypted "
                "(password-protected), and torch never writes encrypted archives")
    if flags & _FLAG_PATCHED:
        return f"record {name!r} uses patched data (flag bit 5), which torch never writes"
    if disk:
        return "multi-disk (spanned) zip archives are not supported"
    if needed > _MAX_VERSION:
        return (f"record {name!r} needs zip version {needed / 10:.1f} to extract; "
                "torch writes 2.0 to 4.5 and safeload reads up to 6.3")
    return f"record {name!r} is a symbolic link"


def _zip64_values(
    source: Source,
    extra: bytes,
    values: tuple[int, ...],
    name: str,
    offset: int,
    *,
    local: bool = False,
) -> tuple[int, ...]:
    """Replace the saturated ``values`` (size, compressed size, header offset,
    disk) by those of the zip64 extra field, in that order. In a local header
    the field always holds both sizes."""
    field = None
    position = 0
    while position + 4 <= len(extra):
        tag, length = _EXTRA_HEADER.unpack_from(extra, position)
        position += 4
        if position + length > len(extra):
            _fail(source, f"record {name!r} has a truncated extra field", offset, name)
        if tag == _ZIP64_EXTRA:
            if field is not None:
                _fail(source, f"record {name!r} has two zip64 extra fields", offset, name)
            field = extra[position : position + length]
        position += length
    if field is None:
        _fail(source, f"record {name!r} has saturated sizes but no zip64 extra field",
              offset, name)
    result = []
    cursor = 0
    for index, value in enumerate(values):
        wide = _U32 if index == 3 else _U64
        if local or value == (_U16_MAX if index == 3 else _U32_MAX):
            if cursor + wide.size > len(field):
                _fail(source, f"record {name!r} has a short zip64 extra field", offset, name)
            value = wide.unpack_from(field, cursor)[0]
            cursor += wide.size
        result.append(value)
    return tuple(result)
