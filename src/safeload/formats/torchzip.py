"""The torch >= 1.6 zip checkpoint as a ``Checkpoint``: ``zip.py`` validates the
archive, this adapter names its pickle and storage records."""

from __future__ import annotations

from ..limits import DEFAULT_LIMITS, Limits
from .base import Checkpoint, PickleStream
from .source import Source
from .zip import TorchZip, open_torch_zip

__all__ = ["ZipCheckpoint", "open_zip_checkpoint"]


class ZipCheckpoint(Checkpoint):
    archive: TorchZip

    def main_pickle(self) -> PickleStream:
        archive = self.archive
        return PickleStream(member=f"{archive.prefix}/data.pkl", data=bytes(archive.pickle()))

    def storage(self, key: str) -> memoryview:
        return self.archive.storage(key)

    def storage_size(self, key: str) -> int:
        return self.archive.storage_size(key)


def open_zip_checkpoint(source: Source, *, limits: Limits = DEFAULT_LIMITS) -> ZipCheckpoint:
    archive = open_torch_zip(source, limits=limits)
    ckpt = ZipCheckpoint(kind="zip", source=source, byteorder=archive.byteorder)
    ckpt.archive = archive
    ckpt.notes.extend(f"unknown record '{name}' (not read)" for name in archive.unknown)
    return ckpt
