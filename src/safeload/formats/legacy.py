"""The pre-1.6 torch.save stream (``_use_new_zipfile_serialization=False``).

Strategy: the file is six parts back to back, and every part is checked before
the main pickle runs for real:

    magic pickle | protocol pickle | sys_info pickle | main pickle |
    storage-key-list pickle | per key: 8-byte element count + raw bytes

Each pickle's end is found by walking the opcode table to STOP (nothing runs).
The three header pickles and the key list are small and run through the
restricted VM with no persistent ids; their values are checked for exact type
and shape. The storage records carry only an element count, and the element
size comes from the storage type named in the main pickle's persistent ids, so
the main pickle is first run once in analysis mode with the inert ``Builder``
(refused globals become placeholders, nothing is built) to learn every storage
it names. Then the records are laid out: keys listed once each, the listed and
referenced keys the same set, each count equal to the declared size, the bytes
present, nothing after the last record. Only then does the caller run the main
pickle for real, with ``storage(key)`` serving zero-copy views of the file (or
of its mmap).

Byte order: torch's writer converts element counts and storage bytes to
little-endian on every host, so ``sys_info['little_endian']`` only records the
writer's machine. Old writers on big-endian hosts stored the count in native
order; when sys_info says big-endian, a count that only matches the declared
size read big-endian is accepted too.

Legacy storage views (``view_metadata = (view_key, offset, size)``) become a
``PersistentView`` of the root storage, so tensors on a view share memory with
the root in every backend.
"""

from __future__ import annotations

import re

from ..errors import FormatError, LimitError, short_repr
from ..limits import DEFAULT_LIMITS, Limits
from ..opcodes import BY_CODE, Truncated
from .base import Checkpoint, PersistentObject, PersistentView, PickleStream
from .source import Source

__all__ = [
    "MAGIC_NUMBER",
    "PROTOCOL_VERSION",
    "LegacyCheckpoint",
    "is_legacy",
    "open_legacy",
    "pickle_end",
    "run_small_pickle",
]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STOP = ord(".")
_FIRST_WINDOW = 1 << 12
_VIEW_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")

#: sys_info as torch writes it: key -> check of its value
_SYS_INFO_KEYS = ("protocol_version", "little_endian", "type_sizes")
#: C type sizes torch records; long is 4 bytes on Windows, 8 elsewhere
_TYPE_SIZES = {"short": (2,), "int": (4,), "long": (4, 8)}


# -- finding pickles without running them -------------------------------------------


def _walk(data: bytes, max_ops: int, base: int, what: str) -> int:
    """Offset just past STOP in ``data``; ``Truncated`` if STOP is not in it.
    Errors are located at file offsets (``base`` is where ``data`` starts)."""
    pos = 0
    ops = 0
    size = len(data)
    while True:
        if pos >= size:
            raise Truncated("no STOP")
        code = data[pos]
        if code == _STOP:
            return pos + 1
        op = BY_CODE.get(code)
        if op is None:
            raise FormatError(f"{what}: unknown opcode byte 0x{code:02x}", offset=base + pos)
        try:
            pos = pos + 1 if op.arg is None else op.arg(data, pos + 1)[1]
        except Truncated:
            raise
        except (ValueError, UnicodeDecodeError, OverflowError) as exc:
            raise FormatError(f"{what}: malformed {op.name} argument: {exc}",
                              offset=base + pos, opcode=op.name) from None
        ops += 1
        if ops > max_ops:
            raise LimitError(f"{what} runs more than {max_ops} opcodes", offset=base + pos)


def pickle_end(source: Source, start: int, stop: int, *, limits: Limits, what: str,
               base: int = 0) -> int:
    """Offset just past the STOP of the pickle at ``start``, looking no further
    than ``stop``. Walks the opcode table (nothing runs) over a window of the
    file that grows geometrically, so a pickle of n bytes costs O(n) whatever
    follows it. Errors give offsets from ``base`` (a member's start)."""
    window = _FIRST_WINDOW
    while True:
        size = min(window, stop - start)
        data = bytes(source.view(start, size))
        try:
            return start + _walk(data, limits.max_ops, start - base, what)
        except Truncated:
            if size == stop - start:
                raise FormatError(f"{what} ends without STOP (truncated)",
                                  offset=start - base) from None
            limits.check(f"{what} bytes", size, limits.max_pickle_bytes, offset=start - base)
            window *= 4


def run_small_pickle(data: bytes, *, limits: Limits, what: str, member: str | None = None,
                     file: str | None = None, policy=None):
    """Run a header pickle (no persistent ids) through the restricted VM."""
    from ..allowlist import DEFAULT_POLICY
    from ..rebuild import Builder
    from ..unpickler import Unpickler

    vm = Unpickler(data, policy=policy or DEFAULT_POLICY, builder=Builder(), limits=limits,
                   file=file, member=member or what)
    return vm.load()


def check_sys_info(value, *, protocols: tuple[int, ...], where: dict) -> bool:
    """Validate torch's sys_info dict; returns its ``little_endian`` flag."""
    if type(value) is not dict or set(value) != set(_SYS_INFO_KEYS):
        raise FormatError(f"sys_info must be a dict with exactly the keys "
                          f"{', '.join(_SYS_INFO_KEYS)}", **where)
    if type(value["protocol_version"]) is not int or value["protocol_version"] not in protocols:
        raise FormatError(f"sys_info protocol_version must be one of {protocols}", **where)
    if type(value["little_endian"]) is not bool:
        raise FormatError("sys_info little_endian must be a bool", **where)
    sizes = value["type_sizes"]
    if type(sizes) is not dict or set(sizes) != set(_TYPE_SIZES) or any(
        type(sizes[k]) is not int or sizes[k] not in allowed for k, allowed in _TYPE_SIZES.items()
    ):
        raise FormatError("sys_info type_sizes must be {'short': 2, 'int': 4, 'long': 4 or 8}",
                          **where)
    return value["little_endian"]


def storage_key(key, what: str = "storage key") -> str:
    """A storage key as the records name it: str, or the int / Python 2 bytes of
    old files, as text."""
    if type(key) is int and 0 <= key < 2**64:
        return str(key)
    if type(key) is bytes:
        try:
            key = key.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"{what} is not ASCII") from None
    if type(key) is not str or not _VIEW_KEY.match(key):
        raise FormatError(f"{what} {short_repr(key)} is not a plain record name")
    return key


def ascii_text(value):
    """torch's _maybe_decode_ascii: Python 2 pickles loaded with
    ``encoding='bytes'`` give bytes for the internal strings."""
    if type(value) is bytes:
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError("persistent id text is not ASCII") from None
    return value


def read_count(raw: memoryview, *, little_endian: bool, declared: int | None) -> int:
    """An 8-byte element count. Little-endian as torch writes it; a file from a
    big-endian host may hold it big-endian, accepted when that is the only
    reading that matches the declared size."""
    count = int.from_bytes(raw, "little")
    if declared is None or count == declared or little_endian:
        return count
    swapped = int.from_bytes(raw, "big")
    return swapped if swapped == declared else count


# -- sniffing -------------------------------------------------------------------------


def is_legacy(head: bytes) -> bool:
    """Does the file open with torch's legacy magic number, pickled by any protocol?"""
    pos = 0
    try:
        if head[:1] == b"\x80":  # PROTO n
            pos = 2
        if head[pos:pos + 1] == b"\x95":  # FRAME (protocol 4+)
            pos += 9
        op = BY_CODE.get(head[pos]) if pos < len(head) else None
        if op is None or op.name not in ("LONG", "LONG1", "LONG4", "INT"):
            return False
        value, pos = op.arg(head, pos + 1)
        return value == MAGIC_NUMBER and head[pos:pos + 1] == b"."
    except (Truncated, ValueError, IndexError):
        return False


# -- the container --------------------------------------------------------------------


class LegacyCheckpoint(Checkpoint):
    """A validated legacy stream. ``storage(key)`` is a view of the file."""

    def __init__(self, source: Source, *, little_endian: bool, main: bytes, main_at: int,
                 keys: list[str]) -> None:
        super().__init__(kind="legacy", source=source, byteorder="little")
        self.little_endian = little_endian
        self._main = main
        self._main_member = f"main pickle at byte {main_at}"
        self._roots = set(keys)  # the storage-key list
        self._records: dict[str, tuple[int, int]] = {}  # key -> (offset, nbytes), once laid out
        self._views: dict[str, tuple[str, int, int]] = {}
        if not little_endian:
            self.notes.append("written on a big-endian machine (sys_info); storage bytes "
                              "are little-endian as torch writes them")

    def main_pickle(self) -> PickleStream:
        return PickleStream(member=self._main_member, data=self._main)

    def storage(self, key: str) -> memoryview:
        place = self._records.get(key)
        if place is None:
            raise FormatError(f"the pickle refers to storage '{key}', which the file's "
                              "storage-key list does not hold", file=self.source.name)
        offset, nbytes = place
        return self.source.view(offset, nbytes, member=f"storage '{key}'")

    def persistent_id(self, pid):
        """torch's legacy id ``('storage', type, root_key, location, numel,
        view_metadata)`` -> the standard 5-tuple, or a ``PersistentView``;
        ``('module', cls, file, source)`` -> ``cls``, as torch loads it."""
        if type(pid) is not tuple or not pid:
            raise FormatError(f"legacy persistent id must be a tuple, got {type(pid).__name__}")
        kind = ascii_text(pid[0])
        if kind == "module" and len(pid) == 4:
            return PersistentObject(pid[1])
        if kind != "storage" or len(pid) != 6:
            raise FormatError("legacy persistent id must be ('storage', type, key, location, "
                              "numel, view) or ('module', class, file, source)")
        _, storage_type, key, location, numel, view = pid
        root = ("storage", storage_type, storage_key(key), ascii_text(location), numel)
        if view is None:
            return root
        if type(view) is not tuple or len(view) != 3:
            raise FormatError("legacy storage view must be (view_key, offset, size)")
        view_key = storage_key(view[0], "storage view key")
        offset, size = view[1], view[2]
        if type(offset) is not int or type(size) is not int or offset < 0 or size < 0:
            raise FormatError("legacy storage view offset and size must be non-negative ints")
        if type(numel) is not int or offset + size > numel:
            raise FormatError(f"storage view '{view_key}' of {size} elements at {offset} "
                              f"leaves storage '{root[2]}' of {short_repr(numel)} elements")
        if view_key in self._roots:
            raise FormatError(f"storage view key '{view_key}' names a stored storage")
        seen = self._views.setdefault(view_key, (root[2], offset, size))
        if seen != (root[2], offset, size):
            raise FormatError(f"storage view '{view_key}' is declared twice, differently")
        return PersistentView(root, offset, size)


def _declared_storages(ckpt: LegacyCheckpoint, *, limits: Limits) -> dict:
    """Run the main pickle in analysis mode with the inert builder and collect
    the storages its persistent ids name: key -> StorageRef."""
    from ..allowlist import DEFAULT_POLICY, LoadedStorage, Policy, storage_ref_from_pid
    from ..rebuild import Builder
    from ..unpickler import Opaque, Unpickler

    class PrescanPolicy(Policy):
        # A placeholder may stand for an object of a class the caller will
        # trust in the real run; let it be a dict key here as it could be there.
        def is_hashable_record(self, obj) -> bool:
            return type(obj) is Opaque or super().is_hashable_record(obj)

    declared: dict = {}

    def persistent_load(pid):
        target = ckpt.persistent_id(pid)
        if type(target) is PersistentObject:
            return target.value
        view = None
        if type(target) is PersistentView:
            view = (target.offset, target.numel)
            target = target.storage
        ref = storage_ref_from_pid(target)
        first = declared.setdefault(ref.key, ref)
        if first.dtype != ref.dtype or first.numel != ref.numel:
            raise FormatError(f"storage '{ref.key}' is named as {first.dtype.name}"
                              f"[{first.numel}] and as {ref.dtype.name}[{ref.numel}]")
        return LoadedStorage(ref, ref, view)

    stream = ckpt.main_pickle()
    vm = Unpickler(stream.data, policy=PrescanPolicy(DEFAULT_POLICY.handlers), builder=Builder(),
                   persistent_load=persistent_load, limits=limits, encoding="latin1",
                   file=ckpt.source.name, member=stream.member, on_finding=lambda err: None)
    vm.load()
    return declared


def open_legacy(source: Source, *, limits: Limits = DEFAULT_LIMITS) -> LegacyCheckpoint:
    """Validate a legacy stream completely; see the module docstring."""
    name = source.name
    end = source.size
    pos = 0

    def next_pickle(what: str) -> tuple[bytes, int]:
        nonlocal pos
        start = pos
        stop = pickle_end(source, start, end, limits=limits, what=f"{what} pickle")
        pos = stop
        return bytes(source.view(start, stop - start)), start

    def header(what: str):
        data, at = next_pickle(what)
        return run_small_pickle(data, limits=limits, what=f"{what} pickle at byte {at}",
                                file=name)

    magic = header("magic number")
    if type(magic) is not int or magic != MAGIC_NUMBER:
        raise FormatError("not a torch legacy file: wrong magic number", file=name, offset=0)
    protocol = header("protocol version")
    if type(protocol) is not int or protocol != PROTOCOL_VERSION:
        raise FormatError(f"unsupported legacy protocol version {short_repr(protocol)} "
                          f"(torch writes {PROTOCOL_VERSION})", file=name)
    little_endian = check_sys_info(header("sys_info"), protocols=(PROTOCOL_VERSION,),
                                   where={"file": name, "member": "sys_info pickle"})
    main, main_at = next_pickle("main")
    keys = header("storage keys")
    keys_end = pos

    if type(keys) is not list:
        raise FormatError(f"the storage-key list must be a list, got {type(keys).__name__}",
                          file=name)
    limits.check("storage records", len(keys), limits.max_records, file=name)
    listed = [storage_key(k) for k in keys]
    seen: set[str] = set()
    for key in listed:
        if key in seen:
            raise FormatError(f"storage '{key}' is listed twice", file=name)
        seen.add(key)

    ckpt = LegacyCheckpoint(source, little_endian=little_endian, main=main, main_at=main_at,
                            keys=listed)
    declared = _declared_storages(ckpt, limits=limits)
    missing = [k for k in declared if k not in ckpt._roots]
    if missing:
        raise FormatError(f"the pickle names storage '{missing[0]}', which the storage-key "
                          "list does not hold", file=name)
    unused = [k for k in listed if k not in declared]
    if unused:
        raise FormatError(f"storage '{unused[0]}' is listed but no persistent id names it",
                          file=name)

    records: dict[str, tuple[int, int]] = {}
    pos = keys_end
    for key in listed:  # offsets in these errors are the record's, in the file
        ref = declared[key]
        if end - pos < 8:
            raise FormatError(f"the file ends inside storage '{key}''s element count",
                              file=name, offset=pos)
        count = read_count(source.view(pos, 8), little_endian=little_endian,
                           declared=ref.numel)
        if count != ref.numel:
            raise FormatError(f"storage '{key}' holds {count} elements, its persistent id "
                              f"declares {ref.numel}", file=name, offset=pos)
        nbytes = count * ref.dtype.itemsize
        if nbytes > end - pos - 8:
            raise FormatError(f"storage '{key}' needs {nbytes} bytes, the file has "
                              f"{end - pos - 8} left (truncated)", file=name, offset=pos)
        records[key] = (pos + 8, nbytes)
        pos += 8 + nbytes
    if pos != end:
        raise FormatError(f"{end - pos} bytes after the last storage record", file=name,
                          offset=pos)
    ckpt._records = records
    return ckpt
