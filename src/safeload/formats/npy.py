"""numpy ``.npy`` and ``.npz`` files.

Strategy: an ``.npy`` file is a magic string, a version, a length-prefixed
header (a Python dict literal) and the array's bytes. The header is read with
``ast.literal_eval`` on a string no longer than numpy's own bound, and must hold
exactly ``descr`` (a plain dtype string), ``fortran_order`` and ``shape``. A
numeric array loads as a zero-copy view of the input (of the mmap with
``mmap=True``), after checking that the bytes present are exactly the bytes the
header describes. An object array's bytes are a pickle: it runs through the
same restricted VM as every other pickle (``Checkpoint.assemble``), so it loads
only as far as the allowlist allows.

An ``.npz`` file is a zip of ``.npy`` members. The stdlib ``zipfile`` reads its
directory from the in-memory buffer (it never touches the disk); safeload then
checks what zipfile does not: member names are plain ``<key>.npy`` names, each
once, members do not overlap, nothing is encrypted, only stored or deflated
data, and the total size after decompression is bounded by ``Limits``. Stored
members are views of the input; deflated ones are decompressed (their CRC is
checked by zipfile, a stored member's by safeload). The value is a dict of key
to array, in archive order.
"""

from __future__ import annotations

import ast
import io
import re
import struct
import zipfile
import zlib

from ..errors import FormatError, LimitError
from ..limits import DEFAULT_LIMITS, Limits
from .base import Checkpoint, PickleStream
from .source import Source

__all__ = ["NpyCheckpoint", "NpzCheckpoint", "is_npy", "is_npz", "open_npy", "open_npz"]

MAGIC = b"\x93NUMPY"
#: numpy's own default bound on the header (``max_header_size``)
MAX_HEADER = 10_000
_HEADER_KEYS = {"descr", "fortran_order", "shape"}
#: dtype strings safeload builds: numbers, bool, fixed-size bytes / text / void,
#: datetimes, and objects (whose data is a pickle)
_DESCR = re.compile(
    r"[<>|=]?(b1|\?|[iu][1248]|f[248]|c(8|16)|[SUV][0-9]{1,9}"
    r"|[Mm]8(\[[0-9]{0,4}[a-zA-Z]{1,2}\])?|O[48]?)\Z"
)
_DIM_MAX = 2**63 - 1
_LOCAL = struct.Struct("<4s5H3I2H")  # zip local file header, 30 bytes


def is_npy(source: Source) -> bool:
    return source.size >= len(MAGIC) and bytes(source.view(0, len(MAGIC))) == MAGIC


def is_npz(source: Source) -> bool:
    """A zip whose first member is a ``.npy`` file."""
    if source.size < _LOCAL.size:
        return False
    head = _LOCAL.unpack(source.view(0, _LOCAL.size))
    name_len = head[9]
    if head[0] != b"PK\x03\x04" or _LOCAL.size + name_len > source.size:
        return False
    return bytes(source.view(_LOCAL.size, name_len)).endswith(b".npy")


# -- one .npy ------------------------------------------------------------------------


class NpyHeader:
    """A validated ``.npy`` header and where the data starts."""

    __slots__ = ("dtype", "fortran", "shape", "start")

    def __init__(self, dtype, shape: tuple[int, ...], fortran: bool, start: int) -> None:
        self.dtype = dtype
        self.shape = shape
        self.fortran = fortran
        self.start = start

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_header(buf: memoryview, *, limits: Limits, member: str | None = None) -> NpyHeader:
    import numpy as np

    def fail(reason: str, offset: int | None = None) -> FormatError:
        return FormatError(reason, member=member, offset=offset)

    if bytes(buf[:6]) != MAGIC:
        raise fail("not a .npy file (no \\x93NUMPY magic)", 0)
    if len(buf) < 10:
        raise fail(".npy header is truncated", 6)
    major, minor = buf[6], buf[7]
    if major not in (1, 2, 3) or minor != 0:
        raise fail(f".npy version {major}.{minor} is not one numpy writes (1.0, 2.0, 3.0)", 6)
    if major == 1:
        (length,), start = struct.unpack("<H", buf[8:10]), 10
    else:
        if len(buf) < 12:
            raise fail(".npy header length is truncated", 8)
        (length,), start = struct.unpack("<I", buf[8:12]), 12
    if length > MAX_HEADER:
        raise LimitError(f".npy header of {length} bytes, above numpy's bound of {MAX_HEADER}",
                         member=member, offset=8)
    if start + length > len(buf):
        raise fail(".npy header runs past the end of the file (truncated)", start)
    raw = bytes(buf[start:start + length])
    try:
        text = raw.decode("utf-8" if major == 3 else "latin-1")
        if major == 1:  # headers written by Python 2 spell shape ints as 3L
            text = re.sub(r"\b([0-9]+)L\b", r"\1", text)
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError,
            UnicodeDecodeError) as exc:
        raise fail(f".npy header is not a Python literal: {type(exc).__name__}", start) from None
    if type(header) is not dict or set(header) != _HEADER_KEYS:
        raise fail(".npy header must be a dict with exactly the keys descr, fortran_order, "
                   "shape", start)
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if type(descr) is not str or not _DESCR.match(descr):
        raise fail(f".npy dtype {descr!r:.60} is not a plain dtype safeload reads "
                   "(structured dtypes are not supported)", start)
    if type(fortran) is not bool:
        raise fail(".npy fortran_order must be a bool", start)
    if type(shape) is not tuple or not all(type(d) is int and 0 <= d <= _DIM_MAX
                                           for d in shape):
        raise fail(".npy shape must be a tuple of non-negative ints", start)
    limits.check(".npy dimensions", len(shape), limits.max_ndim, member=member)
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        raise fail(f".npy dtype {descr!r} is not one numpy knows", start) from None
    if dtype.itemsize == 0:
        raise fail(f".npy dtype {descr!r} has no size", start)
    return NpyHeader(dtype, shape, fortran, start + length)


def npy_value(buf: memoryview, header: NpyHeader, run, *, member: str | None) -> object:
    """The array in ``buf``: a view of it, or its pickle run through the VM."""
    import numpy as np

    data = buf[header.start:]
    if header.dtype.hasobject:
        value = run(PickleStream(member=member, data=bytes(data)))
        if type(value) is not np.ndarray or value.shape != header.shape:
            raise FormatError("the pickle of an object .npy is not the array its header "
                              "describes", member=member)
        return value
    nbytes = header.count * header.dtype.itemsize
    if nbytes > len(data):
        raise FormatError(f".npy data of shape {header.shape} needs {nbytes} bytes, the file "
                          f"has {len(data)} (truncated)", member=member, offset=header.start)
    if nbytes < len(data):
        raise FormatError(f"{len(data) - nbytes} bytes after the .npy data", member=member,
                          offset=header.start + nbytes)
    try:
        return np.ndarray(header.shape, dtype=header.dtype, buffer=data,
                          order="F" if header.fortran else "C")
    except (ValueError, TypeError, MemoryError) as exc:  # numpy's own bounds
        raise FormatError(f".npy array of shape {header.shape} cannot be made: {exc}",
                          member=member) from None


class NpyCheckpoint(Checkpoint):
    """A validated ``.npy`` file; its value is the array."""

    header: NpyHeader

    def main_pickle(self) -> PickleStream:
        if not self.header.dtype.hasobject:
            raise FormatError("a numeric .npy file holds no pickle", file=self.source.name)
        data = self.source.view(self.header.start, self.source.size - self.header.start)
        return PickleStream(member=None, data=bytes(data))

    def assemble(self, run) -> object:
        buf = self.source.view(0, self.source.size)
        return npy_value(buf, self.header, run, member=None)


def open_npy(source: Source, *, limits: Limits = DEFAULT_LIMITS) -> NpyCheckpoint:
    ckpt = NpyCheckpoint(kind="npy", source=source)
    ckpt.header = read_header(source.view(0, source.size), limits=limits)
    return ckpt


# -- .npz --------------------------------------------------------------------------


class _ViewFile(io.RawIOBase):
    """A read-only, seekable file over a memoryview (what zipfile reads from)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, len(self._view))[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the buffer")
        self._pos = base + offset
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), len(self._view) - self._pos))
        b[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n


def _member_key(name: str) -> str:
    key = name[:-4]
    parts = key.split("/")
    if not name.endswith(".npy") or not key or name.startswith("/") or "\\" in name \
            or any(p in ("", ".", "..") for p in parts) \
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise FormatError(f".npz member {name!r:.80} is not a plain '<key>.npy' name",
                          member=name[:100])
    return key


class NpzCheckpoint(Checkpoint):
    """A validated ``.npz`` file; its value is a dict of key to array."""

    #: key -> (member name, buffer, header)
    members: dict

    def main_pickle(self) -> PickleStream:
        raise FormatError("an .npz file holds one pickle per object member, no main pickle",
                          file=self.source.name)

    def assemble(self, run) -> object:
        return {key: npy_value(buf, header, run, member=name)
                for key, (name, buf, header) in self.members.items()}


def _member_bytes(source: Source, archive: zipfile.ZipFile, info, data_offset: int,
                  limits: Limits, budget: list[int]) -> memoryview:
    name = info.filename
    if info.flag_bits & 0x1:
        raise FormatError(f".npz member {name!r} is encrypted", member=name)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FormatError(f".npz member {name!r} uses compression method "
                          f"{info.compress_type} (only stored and deflated are read)",
                          member=name)
    limits.check(".npz member size", info.file_size, limits.max_bytes, member=name)
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise FormatError(f"stored .npz member {name!r} has two sizes", member=name)
        view = source.view(data_offset, info.file_size, member=name)
        if zlib.crc32(view) != info.CRC:
            raise FormatError(f".npz member {name!r} fails its CRC check", member=name)
        return view
    budget[0] += info.file_size  # a compression bomb stops here, before inflating
    if budget[0] > limits.max_pickle_bytes:
        raise LimitError(f".npz members inflate to more than {limits.max_pickle_bytes} bytes",
                         member=name, hint="raise Limits.max_pickle_bytes if the file is "
                         "trusted")
    with archive.open(info) as fh:  # reads at most file_size bytes, checks the CRC
        data = fh.read(info.file_size)
        extra = fh.read(1)
    if extra or len(data) != info.file_size:
        raise FormatError(f".npz member {name!r} does not inflate to its {info.file_size} "
                          "bytes", member=name)
    return memoryview(data)


def _data_offset(source: Source, info, start_dir: int) -> int:
    """Check the member's local header; where its data starts."""
    name = info.filename
    if info.header_offset + _LOCAL.size > start_dir:
        raise FormatError(f".npz member {name!r} starts outside the archive", member=name)
    head = _LOCAL.unpack(source.view(info.header_offset, _LOCAL.size))
    name_len, extra_len = head[9], head[10]
    if head[0] != b"PK\x03\x04":
        raise FormatError(f".npz member {name!r} has no local header", member=name)
    start = info.header_offset + _LOCAL.size
    raw_name = bytes(source.view(start, min(name_len, start_dir - start)))
    if raw_name != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"):
        raise FormatError(f".npz member {name!r}: local and central names differ",
                          member=name)
    data = start + name_len + extra_len
    if data + info.compress_size > start_dir:
        raise FormatError(f".npz member {name!r} runs into the zip directory", member=name)
    return data


def _read_npz(source: Source, archive: zipfile.ZipFile, limits: Limits) -> dict:
    infos = archive.infolist()
    limits.check(".npz members", len(infos), limits.max_records)
    start_dir = archive.start_dir
    if start_dir > source.size:
        raise FormatError("the zip directory lies past the end of the file")
    keys: dict[str, tuple] = {}
    spans = []
    for info in infos:
        key = _member_key(info.filename)
        if key in keys:
            raise FormatError(f".npz member {info.filename!r} appears twice",
                              member=info.filename)
        offset = _data_offset(source, info, start_dir)
        keys[key] = (info, offset)
        spans.append((info.header_offset, offset + info.compress_size, info.filename))
    spans.sort()
    for (_, end, name), (start, _, _) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise FormatError(f".npz member {name!r} overlaps the next one", member=name)
    members = {}
    budget = [0]
    for key, (info, offset) in keys.items():
        buf = _member_bytes(source, archive, info, offset, limits, budget)
        header = read_header(buf, limits=limits, member=info.filename)
        members[key] = (info.filename, buf, header)
    return members


def open_npz(source: Source, *, limits: Limits = DEFAULT_LIMITS) -> NpzCheckpoint:
    ckpt = NpzCheckpoint(kind="npz", source=source)
    try:
        with zipfile.ZipFile(_ViewFile(source.view(0, source.size))) as archive:
            ckpt.members = _read_npz(source, archive, limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            struct.error, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise FormatError(f"not a readable .npz (zip) file: {type(exc).__name__}: "
                          f"{str(exc)[:200]}") from None
    return ckpt
