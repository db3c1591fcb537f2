"""A bare pickle file (``.pkl``): one pickle, no storage records."""

from __future__ import annotations

from .base import Checkpoint, PickleStream
from .source import Source

__all__ = ["PickleFile", "open_pickle"]


class PickleFile(Checkpoint):
    def main_pickle(self) -> PickleStream:
        return PickleStream(member=None, data=bytes(self.source.view(0, self.source.size)))


def open_pickle(source: Source) -> PickleFile:
    return PickleFile(kind="pickle", source=source)
