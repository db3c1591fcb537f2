"""What every container gives the later stages.

Strategy: a container (zip, legacy stream, tar, plain pickle, npy) is parsed and
validated when it is opened. It then offers the main pickle (bytes plus the
member name used in error locations) and ``storage(key)``: the bytes of one
storage record as a bounded memoryview. ``persistent_id`` lets a container
adapt its own persistent-id shape (legacy views) to torch's standard one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .source import Source

__all__ = ["Checkpoint", "PickleStream"]


@dataclass
class PickleStream:
    """One pickle inside a container."""

    member: str | None  # archive member, or None for a bare pickle file
    data: bytes
    start: int = 0  # offset of the pickle inside ``data``
    #: bytes after STOP are allowed (legacy streams chain pickles)
    allow_trailing: bool = False


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

    def persistent_id(self, pid):
        """Map this container's persistent id onto torch's standard 5-tuple.
        Returns the pid unchanged by default."""
        return pid
