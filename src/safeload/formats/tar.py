"""The pre-0.4 torch.save tar archive (members ``sys_info``, ``pickle``,
``storages``, ``tensors``), read without extracting anything.

Strategy: a small tar reader of safeload's own walks the 512-byte headers in
the input buffer and keeps, for each member, a bounded view of its bytes. It
accepts only what torch wrote: regular files with the four names above, each
once, with valid header checksums, octal sizes inside the file, and nothing but
zero blocks after the end of the archive. Links, devices, directories and
extended headers are refused, since tarfile and torch would read them
differently (or touch the disk).

Then the members are parsed before the main pickle runs:

- ``sys_info``: one pickle, checked like the legacy stream's.
- ``storages``: a count pickle; per storage a pickle ``(key, location,
  storage_type)``, an 8-byte element count and the raw little-endian bytes;
  then a pickle listing storage views ``(view_key, root_key, offset, numel)``.
- ``tensors``: a count pickle; per tensor a pickle ``(key, storage_key,
  tensor_type)``, then int32 ndim, 4 pad bytes, ndim int64 sizes, ndim int64
  strides and an int64 storage offset.
- ``pickle``: the main pickle, whose persistent ids are tensor or storage keys.

Every small pickle runs through the restricted VM (storage and tensor types are
the only globals it may name). A persistent id that names a tensor loads as a
``PersistentTensor`` (the loader builds it through the backend's builder), a
storage as torch's 5-tuple, a view as a ``PersistentView``.

A missing ``tensors`` member or view list reads as an empty one (noted), so that
archives from writers other than torch open; torch itself requires both.
"""

from __future__ import annotations

import struct

from ..errors import FormatError, short_repr
from ..limits import DEFAULT_LIMITS, Limits
from .base import Checkpoint, PersistentObject, PersistentTensor, PersistentView, PickleStream
from .legacy import PROTOCOL_VERSION, check_sys_info, pickle_end, run_small_pickle, storage_key
from .source import Source

__all__ = ["TarCheckpoint", "is_tar", "open_tar", "tar_members"]

_BLOCK = 512
_MEMBERS = ("sys_info", "pickle", "storages", "tensors")
_REQUIRED = ("sys_info", "pickle", "storages")
_REGULAR = (b"0", b"\0")
#: type flags a tar header may carry, for messages
_TYPE_NAMES = {
    b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device",
    b"4": "a block device", b"5": "a directory", b"6": "a FIFO",
    b"7": "a contiguous file", b"x": "a pax extended header", b"g": "a pax global header",
    b"L": "a GNU long name", b"K": "a GNU long link name", b"S": "a GNU sparse file",
}
#: the tensor classes old torch pickled as each tensor's type (it is ignored:
#: the storage's type decides the dtype); GLOBAL may name these and nothing else
_TENSOR_TYPES = tuple(
    f"{module}.{kind}Tensor"
    for module in ("torch", "torch.cuda")
    for kind in ("Float", "Double", "Half", "Long", "Int", "Short", "Char", "Byte", "Bool",
                 "BFloat16")
)
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")


# -- the tar layer --------------------------------------------------------------------


def _octal(field: bytes, what: str, at: int) -> int:
    if field[:1] and field[0] & 0x80:
        raise FormatError(f"tar {what} uses base-256 encoding (not written by torch)",
                          offset=at)
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not all(0x30 <= c <= 0x37 for c in text):
        raise FormatError(f"tar {what} {text[:12]!r} is not an octal number", offset=at)
    return int(text, 8)


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = _octal(block[148:156], "checksum", 0)
    except FormatError:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - sum(256 for c in block[:148] + block[156:] if c >= 0x80)
    return stored in (unsigned, signed)


def is_tar(source: Source) -> bool:
    """Is the first block a tar header (its checksum matches)?"""
    if source.size < _BLOCK:
        return False
    block = bytes(source.view(0, _BLOCK))
    return any(block) and _checksum_ok(block)


def _all_zero(source: Source, start: int) -> bool:
    chunk = 1 << 16
    for pos in range(start, source.size, chunk):
        if any(bytes(source.view(pos, min(chunk, source.size - pos)))):
            return False
    return True


def tar_members(source: Source) -> dict[str, tuple[int, int]]:
    """Name -> (offset, size) of the archive's members, after checking that it
    holds only regular files with torch's names, each once."""
    members: dict[str, tuple[int, int]] = {}
    pos = 0
    while pos < source.size:
        if source.size - pos < _BLOCK:
            raise FormatError("the archive ends inside a tar header", offset=pos)
        block = bytes(source.view(pos, _BLOCK))
        if not any(block):  # end of archive: nothing may follow but zero blocks
            if not _all_zero(source, pos):
                raise FormatError("data after the end of the tar archive", offset=pos)
            break
        if not _checksum_ok(block):
            raise FormatError("tar header checksum does not match", offset=pos)
        raw_name = block[:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0" and block[345:500].strip(b"\0"):
            raw_name = block[345:500].split(b"\0", 1)[0] + b"/" + raw_name
        name = raw_name.decode("ascii", "replace")
        kind = block[156:157]
        if kind not in _REGULAR:
            what = _TYPE_NAMES.get(kind, f"of tar type {kind!r}")
            raise FormatError(f"tar member {name!r:.60} is {what}, not a regular file",
                              offset=pos, member=name[:100])
        if name not in _MEMBERS:
            raise FormatError(f"unexpected tar member {name!r:.60} (torch writes "
                              f"{', '.join(_MEMBERS)})", offset=pos)
        if name in members:
            raise FormatError(f"tar member {name!r} appears twice", offset=pos, member=name)
        size = _octal(block[124:136], "size", pos + 124)
        data = pos + _BLOCK
        if size > source.size - data:
            raise FormatError(f"tar member {name!r} of {size} bytes runs past the end of the "
                              "file", offset=pos, member=name)
        members[name] = (data, size)
        pos = data + -(-size // _BLOCK) * _BLOCK
    missing = [m for m in _REQUIRED if m not in members]
    if missing:
        raise FormatError(f"the tar archive has no {missing[0]!r} member")
    return members


# -- the members ----------------------------------------------------------------------


def _metadata_policy():
    from ..allowlist import DEFAULT_POLICY, Handler, Policy

    handlers = dict(DEFAULT_POLICY.handlers)
    for name in _TENSOR_TYPES:
        handlers[name] = Handler(name)
    return Policy(handlers)


class _Reader:
    """Reads a member's parts in order: pickles (through the VM) and raw bytes."""

    def __init__(self, source: Source, member: str, offset: int, size: int, *,
                 limits: Limits, policy) -> None:
        self.source = source
        self.member = member
        self.base = offset
        self.pos = offset
        self.end = offset + size
        self.limits = limits
        self.policy = policy

    def fail(self, reason: str) -> FormatError:
        return FormatError(reason, member=self.member, offset=self.pos - self.base)

    def at_end(self) -> bool:
        return self.pos == self.end

    def pickle(self, what: str):
        start = self.pos
        try:
            stop = pickle_end(self.source, start, self.end, limits=self.limits, what=what,
                              base=self.base)
        except FormatError as err:
            raise err.at(member=self.member) from None
        self.pos = stop
        return run_small_pickle(bytes(self.source.view(start, stop - start)), limits=self.limits,
                                what=what, member=f"{self.member} ({what} at byte "
                                f"{start - self.base})", file=self.source.name,
                                policy=self.policy)

    def raw(self, n: int, what: str) -> memoryview:
        if n > self.end - self.pos:
            raise self.fail(f"{what} needs {n} bytes, the member has {self.end - self.pos} "
                            "left (truncated)")
        view = self.source.view(self.pos, n)
        self.pos += n
        return view

    def count(self, what: str, smallest: int) -> int:
        """A record count pickle; each record takes at least ``smallest`` bytes,
        so a count the member cannot hold is refused before anything loops."""
        n = self.pickle(f"{what} count")
        if type(n) is not int or n < 0:
            raise self.fail(f"{what} count must be a non-negative int")
        self.limits.check(f"{what} count", n, self.limits.max_records, member=self.member)
        if n * smallest > self.end - self.pos:
            raise self.fail(f"{n} {what} cannot fit in the {self.end - self.pos} bytes left")
        return n


def _is_tensor_type(value) -> bool:
    from ..allowlist import Handler

    return type(value) is Handler and value.name in _TENSOR_TYPES


def _storage_type(value):
    from ..records import StorageType

    if type(value) is not StorageType:
        raise FormatError("storage type must be a torch storage class")
    return value


class TarCheckpoint(Checkpoint):
    """A validated pre-0.4 archive. ``storage(key)`` is a view of the file."""

    def __init__(self, source: Source, *, main: bytes) -> None:
        super().__init__(kind="tar", source=source, byteorder="little")
        self._main = main
        self.roots: dict[str, tuple] = {}  # key -> torch 5-tuple
        self.places: dict[str, tuple[int, int]] = {}  # key -> (offset, nbytes)
        self.views: dict[str, PersistentView] = {}
        self.tensors: dict[str, PersistentTensor] = {}

    def main_pickle(self) -> PickleStream:
        return PickleStream(member="pickle", data=self._main)

    def storage(self, key: str) -> memoryview:
        place = self.places.get(key)
        if place is None:
            raise FormatError(f"no storage '{key}' in the 'storages' member",
                              file=self.source.name)
        return self.source.view(*place, member="storages")

    def persistent_id(self, pid):
        """A tensor or storage key -> ``PersistentTensor`` / torch's 5-tuple /
        ``PersistentView``; ``(cls, file, source)`` -> ``cls``, as torch loads it."""
        if type(pid) is tuple:
            if len(pid) == 3:  # a pickled module's class, with its source
                return PersistentObject(pid[0])
            raise FormatError("a tar persistent id is a tensor or storage key, or "
                              "(class, file, source)")
        key = storage_key(pid, "persistent id")
        for table in (self.tensors, self.roots, self.views):
            if key in table:
                return table[key]
        raise FormatError(f"persistent id '{key}' names no tensor or storage of the archive")


def _read_storages(ckpt: TarCheckpoint, reader: _Reader, *, little_endian: bool) -> None:
    from ..allowlist import storage_ref_from_pid

    for _ in range(reader.count("storages", 8 + 2)):
        entry = reader.pickle("storage header")
        if type(entry) is not tuple or len(entry) != 3:
            raise reader.fail("storage header must be (key, location, storage type)")
        key = storage_key(entry[0])
        if key in ckpt.roots:
            raise reader.fail(f"storage '{key}' is stored twice")
        storage_type = _storage_type(entry[2])
        # pre-0.4 writers stored the count in the machine's order, the bytes
        # little-endian
        count = int.from_bytes(reader.raw(8, f"storage '{key}' element count"),
                               "little" if little_endian else "big")
        pid = ("storage", storage_type, key, entry[1], count)
        ref = storage_ref_from_pid(pid)  # checks the key, location tag and count
        nbytes = count * ref.dtype.itemsize
        ckpt.places[key] = (reader.pos, nbytes)
        reader.raw(nbytes, f"storage '{key}'")
        ckpt.roots[key] = pid
    if reader.at_end():  # no view list: burn's writer leaves it out
        ckpt.notes.append("the 'storages' member has no storage-view list")
        return
    views = reader.pickle("storage views")
    if type(views) is not list:
        raise reader.fail("the storage-view list must be a list")
    for view in views:
        if type(view) is not tuple or len(view) != 4:
            raise reader.fail("a storage view must be (key, root key, offset, numel)")
        key, root_key = storage_key(view[0]), storage_key(view[1])
        offset, numel = view[2], view[3]
        root = ckpt.roots.get(root_key)
        if root is None:
            raise reader.fail(f"storage view '{key}' of unknown storage '{root_key}'")
        if key in ckpt.roots or key in ckpt.views:
            raise reader.fail(f"storage view '{key}' reuses a storage key")
        if type(offset) is not int or type(numel) is not int or offset < 0 or numel < 0 \
                or offset + numel > root[4]:
            raise reader.fail(f"storage view '{key}' ({short_repr(offset)} + "
                              f"{short_repr(numel)}) leaves "
                              f"storage '{root_key}' of {root[4]} elements")
        ckpt.views[key] = PersistentView(root, offset, numel)
    if not reader.at_end():
        raise reader.fail(f"{reader.end - reader.pos} bytes after the storage-view list")


def _read_tensors(ckpt: TarCheckpoint, reader: _Reader) -> None:
    max_ndim = reader.limits.max_ndim
    for _ in range(reader.count("tensors", 8 + 8 + 2)):
        entry = reader.pickle("tensor header")
        if type(entry) is not tuple or len(entry) != 3:
            raise reader.fail("tensor header must be (key, storage key, tensor type)")
        key = storage_key(entry[0], "tensor key")
        if entry[1] is None:
            raise reader.fail(f"tensor '{key}' has no storage")
        storage = storage_key(entry[1])
        target = ckpt.roots.get(storage) or ckpt.views.get(storage)
        if target is None:
            raise reader.fail(f"tensor '{key}' is on storage '{storage}', which 'storages' "
                              "lacks")
        if key in ckpt.tensors or key in ckpt.roots or key in ckpt.views:
            raise reader.fail(f"tensor key '{key}' is used twice")
        if not _is_tensor_type(entry[2]):
            raise reader.fail("tensor type must be a torch tensor class")
        (ndim,) = _I32.unpack(reader.raw(4, "tensor ndim"))
        reader.raw(4, "tensor ndim padding")
        if not 0 <= ndim <= max_ndim:
            raise reader.fail(f"tensor '{key}' has {ndim} dimensions (0 to {max_ndim} allowed)")
        dims = struct.unpack(f"<{2 * ndim + 1}q", reader.raw(8 * (2 * ndim + 1),
                                                             f"tensor '{key}' shape"))
        shape, stride, offset = dims[:ndim], dims[ndim:2 * ndim], dims[-1]
        if min(dims) < 0:
            raise reader.fail(f"tensor '{key}' has a negative size, stride or offset")
        ckpt.tensors[key] = PersistentTensor(key, target, offset, tuple(shape), tuple(stride))
    if not reader.at_end():
        raise reader.fail(f"{reader.end - reader.pos} bytes after the last tensor")


def open_tar(source: Source, *, limits: Limits = DEFAULT_LIMITS) -> TarCheckpoint:
    """Validate a pre-0.4 archive completely; see the module docstring."""
    members = tar_members(source)
    policy = _metadata_policy()

    def reader(name: str) -> _Reader:
        offset, size = members[name]
        return _Reader(source, name, offset, size, limits=limits, policy=policy)

    info = reader("sys_info")
    little_endian = check_sys_info(info.pickle("sys_info"), protocols=(1000, PROTOCOL_VERSION),
                                   where={"member": "sys_info"})
    if not info.at_end():
        raise info.fail("bytes after the sys_info pickle")
    offset, size = members["pickle"]
    ckpt = TarCheckpoint(source, main=bytes(source.view(offset, size)))
    _read_storages(ckpt, reader("storages"), little_endian=little_endian)
    if "tensors" in members:
        _read_tensors(ckpt, reader("tensors"))
    else:
        ckpt.notes.append("the archive has no 'tensors' member")
    if not little_endian:
        ckpt.notes.append("written on a big-endian machine (sys_info)")
    return ckpt
