"""Containers: sniff the format from content (never the file name), validate it,
and hand the later stages a ``Checkpoint``.

Strategy: ``SNIFFERS`` is a table of (format, test) pairs tried in order on the
first bytes; the first match opens the file. Each opener validates its whole
container before anything downstream trusts it.
"""

from __future__ import annotations

from ..errors import FormatError
from ..limits import DEFAULT_LIMITS, Limits
from .base import Checkpoint, PickleStream
from .source import Source

__all__ = ["Checkpoint", "PickleStream", "Source", "open_checkpoint", "sniff"]


def _is_zip(head: bytes) -> bool:
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06"))


def _is_pickle(head: bytes) -> bool:
    # Any byte may start a protocol 0/1 pickle; the VM decides. Protocol 2+
    # starts with PROTO.
    return True


SNIFFERS = [
    ("zip", _is_zip),
    ("pickle", _is_pickle),
]


def sniff(source: Source) -> str:
    """Name of the container format, from the first bytes."""
    if source.size == 0:
        raise FormatError("the file is empty", file=source.name)
    head = bytes(source.view(0, min(source.size, 64)))
    for name, test in SNIFFERS:
        if test(head):
            return name
    raise FormatError("not a checkpoint format safeload knows", file=source.name)


def open_checkpoint(source: Source, *, limits: Limits = DEFAULT_LIMITS) -> Checkpoint:
    kind = sniff(source)
    if kind == "zip":
        from .torchzip import open_zip_checkpoint

        return open_zip_checkpoint(source, limits=limits)
    from .pickle import open_pickle

    return open_pickle(source)
