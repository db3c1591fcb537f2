"""Containers: sniff the format from content (never the file name), validate it,
and hand the later stages a ``Checkpoint``.

Strategy: ``SNIFFERS`` is a table of (format, test) pairs; every test runs on
the file's content. Exactly one may match; a file that matches two (a legacy
stream with a zip appended, a zip with a pickle before it, an .npy with an
archive behind it) is a polyglot, read differently by different readers, and
is refused rather than guessed at. A file nothing matches is a bare pickle (any
byte may start a protocol 0 pickle; the VM decides). ``OPENERS`` maps each
format to the opener that validates its whole container before anything
downstream trusts it.
"""

from __future__ import annotations

import struct

from ..errors import FormatError
from ..limits import DEFAULT_LIMITS, Limits
from .base import Checkpoint, PickleStream
from .legacy import is_legacy, open_legacy
from .npy import is_npy, is_npz, open_npy, open_npz
from .source import Source
from .tar import is_tar, open_tar

__all__ = ["Checkpoint", "PickleStream", "Source", "open_checkpoint", "sniff"]

_LOCAL_SIG = b"PK\x03\x04"
_END_SIG = b"PK\x05\x06"
_CENTRAL_SIG = b"PK\x01\x02"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_END = struct.Struct("<4s4H2IH")  # end of central directory record, 22 bytes


def _head(source: Source, n: int = 64) -> bytes:
    return bytes(source.view(0, min(source.size, n)))


def _zip_at_start(source: Source) -> bool:
    return _head(source, 4) in (_LOCAL_SIG, _END_SIG)


def _zip_at_end(source: Source) -> bool:
    """Does the file end with a zip's end record (its comment reaching exactly to
    the end, its central directory right before it)? Zip readers look for an
    archive from the end, so this finds one appended to anything."""
    n = min(source.size, _END.size + 0xFFFF)
    tail = bytes(source.view(source.size - n, n))
    i = tail.rfind(_END_SIG)
    while i >= 0:
        if i + _END.size <= n:
            _, _, _, _, entries, cd_size, cd_offset, comment = _END.unpack_from(tail, i)
            at = source.size - n + i
            if i + _END.size + comment == n:
                # torch's writer always adds zip64 records: their locator sits
                # right before the end record
                if at >= 20 and bytes(source.view(at - 20, 4)) == _ZIP64_LOCATOR_SIG:
                    return True
                if 0xFFFFFFFF in (cd_size, cd_offset) or entries == 0xFFFF:
                    pass  # zip64 values without a locator: not an archive
                elif entries == 0:
                    if at == 0:
                        return True
                elif cd_size <= at and bytes(source.view(at - cd_size, 4)) == _CENTRAL_SIG:
                    return True
        i = tail.rfind(_END_SIG, 0, i)
    return False


def _is_zip(source: Source) -> bool:
    return _zip_at_start(source) or _zip_at_end(source)


def _is_legacy(source: Source) -> bool:
    return is_legacy(_head(source))


#: format -> content test; a file must match at most one
SNIFFERS = [
    ("zip", _is_zip),  # torch >= 1.6 (and numpy .npz): local header at 0 or end record
    ("legacy", _is_legacy),  # torch < 1.6: a pickled magic number first
    ("tar", is_tar),  # torch < 0.4: a tar header with a valid checksum
    ("npy", is_npy),  # numpy: \x93NUMPY
]

#: what each format is, for messages
FORMAT_NAMES = {
    "zip": "zip archive",
    "npz": "numpy .npz archive",
    "legacy": "torch legacy stream (torch < 1.6)",
    "tar": "torch tar archive (torch < 0.4)",
    "npy": "numpy .npy file",
    "pickle": "bare pickle",
}


def _open_zip(source: Source, *, limits: Limits) -> Checkpoint:
    from .torchzip import open_zip_checkpoint

    return open_zip_checkpoint(source, limits=limits)


def _open_pickle(source: Source, *, limits: Limits) -> Checkpoint:
    from .pickle import open_pickle

    return open_pickle(source)


OPENERS = {
    "zip": _open_zip,
    "npz": open_npz,
    "legacy": open_legacy,
    "tar": open_tar,
    "npy": open_npy,
    "pickle": _open_pickle,
}


def sniff(source: Source) -> str:
    """Name of the container format, from the content; a FormatError for an
    empty file or a polyglot (content of two formats)."""
    if source.size == 0:
        raise FormatError("the file is empty", file=source.name)
    found = [name for name, test in SNIFFERS if test(source)]
    if "zip" in found and not _zip_at_start(source):
        found.remove("zip")  # an archive at the end: name what comes first first
        # bytes before an archive that are no other format: torch reads a pickle
        found += ["zip"] if found else ["pickle", "zip"]
    if len(found) > 1:
        first, second = (FORMAT_NAMES[k] for k in found[:2])
        raise FormatError(
            f"the file is both a {first} and a {second} (a polyglot: {found[0]} + "
            f"{found[1]}); different readers would see different content",
            file=source.name,
            hint="safeload refuses to guess; re-save the checkpoint from a trusted copy",
        )
    if not found:
        return "pickle"
    if found == ["zip"] and is_npz(source):
        return "npz"
    return found[0]


def open_checkpoint(source: Source, *, limits: Limits = DEFAULT_LIMITS) -> Checkpoint:
    """Sniff ``source`` and open it with its format's validating opener."""
    return OPENERS[sniff(source)](source, limits=limits)
