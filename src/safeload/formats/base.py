"""What every container gives the later stages.

Strategy: a container (zip, legacy stream, tar, plain pickle, npy) is parsed and
validated when it is opened. It then offers the main pickle (bytes plus the
member name used in error locations) and ``storage(key)``: the bytes of one
storage record as a bounded memoryview. ``persistent_id`` lets a container
adapt its own persistent-id shape to torch's standard one, or to one of the
three records below (legacy storage views, pre-0.4 tensors named by id, legacy
class references); ``assemble`` lets a container that has no pickle (npy) or
several (npz) say how its value is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .source import Source

__all__ = [
    "Checkpoint",
    "PersistentObject",
    "PersistentTensor",
    "PersistentView",
    "PickleStream",
]


@dataclass
class PickleStream:
    """One pickle inside a container."""

    member: str | None  # archive member, or None for a bare pickle file
    data: bytes
    start: int = 0  # offset of the pickle inside ``data``
    #: bytes after STOP are allowed (legacy streams chain pickles)
    allow_trailing: bool = False


@dataclass(frozen=True)
class PersistentView:
    """A legacy storage view: ``numel`` elements from element ``offset`` of the
    root storage named by ``storage`` (torch's 5-tuple), sharing its memory.
    The container has checked that the view lies inside the root."""

    storage: tuple
    offset: int
    numel: int


@dataclass(frozen=True)
class PersistentTensor:
    """A whole tensor named by a persistent id (the pre-0.4 tar format): a
    strided view of ``storage`` (torch's 5-tuple, or a ``PersistentView``).
    ``key`` identifies it, so that every reference loads as one tensor."""

    key: str
    storage: object
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class PersistentObject:
    """A persistent id that stands for a value the pickle built itself: the
    legacy formats name the classes of pickled modules this way (``('module',
    cls, file, source)``), and torch loads such an id as ``cls``."""

    value: object


@dataclass
class Checkpoint:
    kind: str  # "zip", "legacy", "tar", "pickle", "npy"
    source: Source
    byteorder: str = "little"
    #: notes a scanner may report (unknown records, ...)
    notes: list[str] = field(default_factory=list)

    def main_pickle(self) -> PickleStream:
        raise NotImplementedError

    def storage(self, key: str) -> memoryview:
        """Bytes of storage record ``key``; FormatError if there is none."""
        from ..errors import FormatError

        raise FormatError(
            f"the pickle refers to storage '{key}', but a {self.kind} file has no "
            "storage records",
            file=self.source.name,
        )

    def storage_size(self, key: str) -> int:
        """Bytes in storage record ``key`` (what a scan checks), without a view
        where the container knows it; the same errors as ``storage``."""
        return len(self.storage(key))

    def persistent_id(self, pid):
        """Map this container's persistent id onto torch's standard 5-tuple (or a
        ``PersistentView`` / ``PersistentTensor`` / ``PersistentObject``).
        Returns the pid unchanged by default."""
        return pid

    def assemble(self, run: Callable[[PickleStream], object]) -> object:
        """The checkpoint's value. ``run(stream)`` runs one pickle through the VM
        with the caller's builder and policy; most containers run their main
        pickle, a numpy file may run none or several."""
        return run(self.main_pickle())
