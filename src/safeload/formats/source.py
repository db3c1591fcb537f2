"""The input bytes, as one bounded buffer.

Strategy: whatever the caller passes (path, PathLike, binary file object, bytes),
safeload holds the file's bytes as one buffer: a buffer filled by a single
read (a big file's by several threads, into memory a finished load may have
freed: ``_Spare``), or a read-only / copy-on-write mmap. Every later stage asks for
``view(offset, size)`` and gets a zero-copy memoryview that is checked to lie
inside the buffer. Nothing is ever read twice, and nothing outside the file
can be reached.
"""

from __future__ import annotations

import io
import mmap as _mmap
import os
from typing import BinaryIO, Union

from ..errors import FormatError

__all__ = ["FileLike", "Source"]

FileLike = Union[str, "os.PathLike[str]", BinaryIO, bytes, bytearray, memoryview]


class Source:
    """The whole input as one buffer. Use ``Source.open``."""

    def __init__(self, buffer, name: str | None, *, mapped: object = None) -> None:
        self._buffer = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) \
            else buffer.cast("B")
        self.name = name
        self.size = len(self._buffer)
        self._mapped = mapped  # the mmap object, kept alive (and closed) here

    @property
    def is_mapped(self) -> bool:
        return self._mapped is not None

    @classmethod
    def open(cls, f: FileLike, *, mmap: bool = False, writable_map: bool = False) -> Source:
        """Read ``f`` once. With ``mmap=True`` map it instead (read-only, or
        private copy-on-write with ``writable_map``), which needs a real file."""
        if isinstance(f, (bytes, bytearray, memoryview)):
            if mmap:
                raise ValueError("mmap=True needs a file path or a file object with a fileno")
            return cls(f, None)
        if isinstance(f, (str, os.PathLike)):
            path = os.fspath(f)
            with open(path, "rb") as fh:
                return cls._from_file(fh, path, mmap=mmap, writable_map=writable_map)
        if hasattr(f, "read"):
            name = getattr(f, "name", None)
            name = name if isinstance(name, str) else None
            return cls._from_file(f, name, mmap=mmap, writable_map=writable_map)
        raise TypeError(
            f"expected a path, a binary file object or bytes, got {type(f).__name__}"
        )

    @classmethod
    def _from_file(cls, fh, name, *, mmap: bool, writable_map: bool) -> Source:
        if mmap:
            try:
                fileno = fh.fileno()
            except (AttributeError, OSError, io.UnsupportedOperation):
                raise ValueError(
                    "mmap=True needs a file path or a file object with a fileno"
                ) from None
            size = os.fstat(fileno).st_size
            if size == 0:
                return cls(b"", name)
            access = _mmap.ACCESS_COPY if writable_map else _mmap.ACCESS_READ
            mapped = _mmap.mmap(fileno, 0, access=access)
            return cls(mapped, name, mapped=mapped)
        start = fh.tell() if _seekable(fh) else 0
        size = None
        if _seekable(fh):
            end = fh.seek(0, os.SEEK_END)
            fh.seek(start)
            size = end - start
        if size is None:
            data = fh.read()
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError("the file object must be opened in binary mode")
            return cls(data, name)
        fd = _plain_fd(fh) if size >= PARALLEL_FROM and _THREADS > 1 else None
        buffer = _new_buffer(size, parallel=fd is not None)
        view = memoryview(buffer)
        if fd is not None:
            got = _read_parallel(fd, view, start, size)
            fh.seek(start + got)  # where one read would have left it
        else:
            got = _read_serial(fh, view, size)
        if got != size:
            del view
            buffer = buffer[:got]
        return cls(buffer, name)

    def view(self, offset: int, size: int, *, member: str | None = None) -> memoryview:
        """Bytes ``[offset, offset+size)``; a FormatError if that is not inside."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise FormatError(
                f"record of {size} bytes at offset {offset} lies outside the "
                f"{self.size}-byte file",
                file=self.name,
                member=member,
            )
        return self._buffer[offset : offset + size]

    def close(self) -> None:
        # Views handed out keep the buffer alive; an mmap is closed only when
        # nothing refers to it any more (closing it under a live view fails).
        self._buffer = memoryview(b"")
        self._mapped = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: files at least this large are read into an anonymous mapping (see _new_buffer)
_POPULATE_FROM = 1 << 24
#: files at least this large are read by several threads at once (_read_parallel)
PARALLEL_FROM = 1 << 26
#: each thread's share starts on a 2 MiB boundary
_ALIGN = 2 << 20
_THREADS = min(4, os.cpu_count() or 1) if hasattr(os, "preadv") else 1


def _plain_fd(fh) -> int | None:
    """The descriptor of a plain file object, whose bytes at an offset are the
    file's (not of a GzipFile or other wrapper whose fileno() is another file's)."""
    if type(fh) not in (io.BufferedReader, io.BufferedRandom, io.FileIO):
        return None
    try:
        return fh.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def _read_serial(fh, view: memoryview, size: int) -> int:
    """Fill ``view`` from ``fh``'s position with its own reads; how many bytes
    it gave before its end."""
    got = 0
    while got < size:
        n = fh.readinto(view[got:]) if hasattr(fh, "readinto") else None
        if n is None:
            chunk = fh.read(size - got)
            if not isinstance(chunk, (bytes, bytearray)):
                raise TypeError("the file object must be opened in binary mode")
            n = len(chunk)
            view[got : got + n] = chunk
        if not n:
            break
        got += n
    return got


def _read_parallel(fd: int, view: memoryview, start: int, size: int) -> int:
    """Fill ``view`` with the file's bytes ``[start, start+size)``, a share per
    thread (``os.preadv`` releases the GIL, and each thread takes the page
    faults of its own share: on two cores a 1 GiB file from the page cache is
    read into fresh memory in ~300 ms instead of ~440). Returns how many bytes from
    the start were read without a gap: a file that shrank meanwhile gives a
    shorter buffer, as one read would."""
    import threading

    step = -(-size // _THREADS)
    step = -(-step // _ALIGN) * _ALIGN
    spans = [(lo, min(size, lo + step)) for lo in range(0, size, step)]
    done = [0] * len(spans)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        lo, hi = spans[i]
        pos = lo
        try:
            while pos < hi:
                n = os.preadv(fd, [view[pos:hi]], start + pos)
                if n <= 0:
                    break
                pos += n
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)
        done[i] = pos - lo

    threads = [threading.Thread(target=work, args=(i,), daemon=True)
               for i in range(1, len(spans))]
    for thread in threads:
        thread.start()
    work(0)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    got = 0
    for (lo, hi), n in zip(spans, done, strict=True):
        got += n
        if lo + n < hi:
            break
    return got


def _new_buffer(size: int, *, parallel: bool = False):
    """A writable buffer of ``size`` bytes for the one read (zeroed, or
    holding bytes of an earlier load, which the read overwrites).

    A large one is a private anonymous mapping. For a read by one thread it is
    made with MAP_POPULATE: the kernel maps every page in one call, where
    ``bytearray(size)`` takes one page fault per 4 KiB and then zero-fills in
    user space (1 GiB on a 2-core VM: ~350 ms before the read instead of
    ~570). For a parallel read it is left unpopulated: each thread faults in
    its own share as it reads, so the faults run in parallel too (1 GiB,
    allocation and read: ~300 ms instead of ~440). Transparent huge pages
    (MADV_HUGEPAGE) were measured and are not used: on this VM, memory the
    process has not touched before costs more as huge pages (fresh 1 GiB:
    460-1300 ms), though memory it just freed is cheaper (~115 ms).

    From ``_REUSE_FROM`` bytes the mapping is kept for the next load once the
    last array over it is gone (``_Spare``): the read into pages that are
    already mapped is a copy and no page fault (1 GiB: ~90 ms instead of
    ~300), which is how a process that loads checkpoints one after another
    (an evaluation loop) gets torch's speed, whose allocator does the same.
    """
    if size >= _POPULATE_FROM and hasattr(_mmap, "MAP_ANONYMOUS"):
        try:
            if size >= _REUSE_FROM and _SPARE.usable:
                return _SPARE.buffer(size, parallel=parallel)
            return _anonymous(size, populate=not parallel)
        except (OSError, ValueError):
            pass  # no mapping to be had: the plain buffer below
    return bytearray(size)


def _anonymous(size: int, *, populate: bool) -> _mmap.mmap:
    flags = _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS
    if populate:
        flags |= getattr(_mmap, "MAP_POPULATE", 0)  # Linux only
    return _mmap.mmap(-1, size, flags=flags)


#: copy buffers from this size on are kept for reuse (see _new_buffer)
_REUSE_FROM = PARALLEL_FROM


class _Spare:
    """At most one mapping that a finished load freed, kept for the next.

    Safety: a mapping becomes the spare only when nothing can read it any
    more. Every view of a load's buffer -- the Source's, each array's, each
    torch storage's -- holds the buffer protocol of one numpy array made over
    the mapping here, so a finalizer on that array runs exactly when the last
    of them is released. Then the pages are marked MADV_FREE: the kernel takes
    them back whenever it needs memory (no swap), and until then a write to
    one keeps it. A later load reads its file over the start of the mapping
    and sees only those bytes (Source's views stop at the file's size). A
    spare is used for a file of its size down to 4/5 of it; any other big load
    drops it, so no more than one file's worth is ever held. Where MADV_FREE
    is missing (not Linux, an old kernel) nothing is kept. A dropped mapping
    is unmapped by its last reference going, not by close(): the array's own
    view of it is released only after the finalizer has run.
    """

    usable = hasattr(_mmap, "MADV_FREE") and hasattr(_mmap.mmap, "madvise")

    def __init__(self) -> None:
        # One slot, changed only by single list operations (pop, slice
        # assignment, clear), each atomic under the GIL: no lock that a fork
        # could leave held in the child.
        self._slot: list[_mmap.mmap] = []

    @property
    def _kept(self) -> _mmap.mmap | None:
        return self._slot[0] if self._slot else None

    def buffer(self, size: int, *, parallel: bool):
        import weakref

        import numpy as np

        mapping = self._take(size)
        if mapping is None:
            mapping = _anonymous(size, populate=not parallel)
        owner = np.frombuffer(mapping, np.uint8, count=size)  # the one exporter
        weakref.finalize(owner, self._keep, mapping).atexit = False
        return owner

    def _take(self, size: int) -> _mmap.mmap | None:
        try:
            mapping = self._slot.pop()
        except IndexError:
            return None
        if not size <= len(mapping) <= size + size // 4:
            return None  # another size: unmapped here (the last reference)
        return mapping

    def _keep(self, mapping: _mmap.mmap) -> None:
        # Runs as the array dies, before it lets go of its buffer view (so the
        # mapping cannot be closed here; dropping the reference unmaps it).
        try:
            mapping.madvise(_mmap.MADV_FREE)
        except (OSError, ValueError):
            return
        self._slot[:] = [mapping]  # the one held before, if any, is unmapped

    def drop(self) -> None:
        """Unmap the spare now (tests; a caller that wants the memory back)."""
        self._slot.clear()


_SPARE = _Spare()


def _seekable(fh) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False
