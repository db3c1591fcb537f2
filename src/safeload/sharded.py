"""Sharded checkpoints: a Hugging Face index and the shard files it names.

Strategy: the index (``pytorch_model.bin.index.json``: ``{"metadata": {...},
"weight_map": {weight name: shard file name}}``) is validated before any
shard is opened: a JSON object of bounded size, no duplicate keys anywhere,
weight names and shard names strings, and every shard name a plain file name
in the index's own directory (no separator, no ``..``, not absolute, no drive,
no NUL). Each shard is then an ordinary checkpoint, loaded once with the same
policy as the others; the shard must hold exactly the weights the index gives
it: every weight present in its shard, none in two shards, none the index does
not list. ``load_sharded`` merges the shards in index order; ``open_sharded``
does the same lazily, checking each shard when it is first opened; the scanner
takes ``shard_paths``.

Why a separate function and not ``safeload.load(index)``: ``load`` reads one
file whose format it sniffs from content; an index is a directory-level
description, and loading it opens several files. ``safeload.open`` does accept
an index path, since lazy access to one weight of a sharded model is the point
of both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from .errors import FormatError, SafeloadError

__all__ = [
    "ShardIndex",
    "ShardedCheckpoint",
    "is_index",
    "load_sharded",
    "open_sharded",
    "read_index",
    "shard_paths",
]

#: an index lists names and file names; the largest public ones are a few MB
MAX_INDEX_BYTES = 64 * 1024 * 1024
_LISTED = 10


@dataclass
class ShardIndex:
    """A validated index: ``weight_map`` (weight -> shard file name), ``shards``
    (file names in order of first use), ``metadata`` (the index's, as given)."""

    path: Path
    weight_map: dict[str, str]
    shards: list[str]
    metadata: dict = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def shard_path(self, shard: str) -> Path:
        return self.directory / shard

    def weights_of(self, shard: str) -> list[str]:
        return [name for name, where in self.weight_map.items() if where == shard]


def _fail(reason: str, path, **kwargs) -> FormatError:
    return FormatError(reason, file=os.fspath(path), **kwargs)


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r:.80}")
        result[key] = value
    return result


def _plain_file_name(name: str) -> bool:
    return (
        0 < len(name) <= 255
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0:")
        and not os.path.isabs(name)
        and not PureWindowsPath(name).drive
    )


def is_index(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file whose content looks like a JSON index (its
    first non-blank byte is ``{``, which no pickle starts with)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip()
    except (OSError, TypeError):
        return False
    return head.startswith(b"{")


def read_index(path: str | os.PathLike) -> ShardIndex:
    """Read and validate a sharded-checkpoint index (see the module docstring).

    >>> index = read_index("model/pytorch_model.bin.index.json")   # doctest: +SKIP
    >>> index.shards
    ['pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin']
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise _fail(f"the index is {size} bytes, more than {MAX_INDEX_BYTES}", path)
        text = path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read the index: {exc.strerror or exc}", path) from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise _fail(f"the index is not valid JSON: {exc}", path) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise _fail("the index must be a JSON object with a 'weight_map' object", path)
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _fail("the index's 'metadata' must be an object", path)
    weight_map: dict[str, str] = doc["weight_map"]
    if not weight_map:
        raise _fail("the index's weight_map is empty", path)
    shards: list[str] = []
    bad: list[str] = []
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise _fail(f"weight {name!r:.80} maps to a {type(shard).__name__}, not a file "
                        "name", path)
        if not _plain_file_name(shard):
            bad.append(shard)
        elif shard not in shards:
            shards.append(shard)
    if bad:
        raise _fail(f"shard names must be plain file names in the index's directory: "
                    f"{_listing(sorted(set(bad)))}", path,
                    hint="An index that names other directories could read any file")
    missing = [s for s in shards if not (path.parent / s).is_file()]
    if missing:
        raise _fail(f"shard files named by the index are missing: {_listing(missing)}", path)
    return ShardIndex(path=path, weight_map=dict(weight_map), shards=shards,
                      metadata=metadata)


def shard_paths(index: str | os.PathLike | ShardIndex) -> list[Path]:
    """The shard files of a (validated) index, in order: what to scan."""
    index = index if isinstance(index, ShardIndex) else read_index(index)
    return [index.shard_path(s) for s in index.shards]


def check_shard(index: ShardIndex, shard: str, names) -> None:
    """FormatError unless ``names`` (the shard's top-level keys) are exactly
    the weights the index assigns to ``shard``."""
    names = list(names)
    want = set(index.weights_of(shard))
    got = set(names)
    where = index.shard_path(shard)
    missing = [n for n in index.weights_of(shard) if n not in got]
    if missing:
        raise _fail(f"the index puts these weights in shard {shard!r}, which lacks them: "
                    f"{_listing(missing)}", where)
    extra = [n for n in names if n not in want]
    if extra:
        elsewhere = [n for n in extra if isinstance(n, str) and n in index.weight_map]
        what = ("also in another shard (duplicates)" if elsewhere
                else "not listed in the index")
        raise _fail(f"shard {shard!r} holds weights {what}: {_listing(extra)}", where)


def load_sharded(
    index: str | os.PathLike,
    map_location=None,
    *,
    framework: str = "numpy",
    **load_options,
) -> dict:
    """Load every shard of a sharded checkpoint as one state dict.

    ``index`` is the ``*.index.json`` path. Each shard is loaded with
    ``safeload.load`` (``framework="torch"``: ``safeload.torch.load``) and the
    same ``map_location`` and options (``mmap``, ``records``, ``policy``,
    ``allow``, ``limits``, ``encoding``). Returns ``{weight: tensor}`` in the
    index's order. FormatError if the index or a shard disagrees with it.

    >>> import safeload
    >>> state = safeload.load_sharded("model/pytorch_model.bin.index.json")  # doctest: +SKIP
    """
    loader = _loader(framework)
    idx = read_index(index)
    values: dict = {}
    for shard in idx.shards:
        where = idx.shard_path(shard)
        try:
            part = loader(where, map_location, **load_options)
        except SafeloadError as err:
            raise err.at(file=os.fspath(where)) from None
        if not isinstance(part, Mapping):
            raise _fail(f"shard {shard!r} holds a {type(part).__name__}, not a dict of weights",
                        where)
        check_shard(idx, shard, part.keys())
        values.update(part)
    return {name: values[name] for name in idx.weight_map}


def _loader(framework: str) -> Callable:
    if framework in ("numpy", "np"):
        from .numpy import load
        return load
    if framework in ("torch", "pt"):
        from .torch import load as torch_load
        return torch_load
    raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")


class ShardedCheckpoint:
    """``safeload.open`` of an index: the weights of every shard by name; a
    shard is opened (lazily, validated against the index) on first access."""

    def __init__(self, index: ShardIndex, open_shard: Callable) -> None:
        self.index = index
        self._open_shard = open_shard
        self._open: dict[str, object] = {}
        self._closed = False

    def keys(self) -> list[str]:
        return list(self.index.weight_map)

    def __iter__(self) -> Iterator[str]:
        return iter(self.index.weight_map)

    def __len__(self) -> int:
        return len(self.index.weight_map)

    def __contains__(self, name: object) -> bool:
        return name in self.index.weight_map

    def shard(self, shard: str):
        """The LazyCheckpoint of one shard file, opened and checked once."""
        if self._closed:
            raise ValueError("the checkpoint is closed")
        ckpt = self._open.get(shard)
        if ckpt is None:
            ckpt = self._open_shard(self.index.shard_path(shard))
            top = ckpt.structure
            if not isinstance(top, Mapping):
                ckpt.close()
                raise _fail(f"shard {shard!r} holds a {type(top).__name__}, not a dict of "
                            "weights", self.index.shard_path(shard))
            try:
                check_shard(self.index, shard, top.keys())
            except FormatError:
                ckpt.close()
                raise
            self._open[shard] = ckpt
        return ckpt

    def handle(self, name: str):
        """The TensorHandle of weight ``name`` (opens its shard, reads no data)."""
        try:
            shard = self.index.weight_map[name]
        except KeyError:
            raise KeyError(f"no weight named {name!r} in the index") from None
        return self.shard(shard).handle((name,))

    def __getitem__(self, name: str) -> object:
        shard = self.index.weight_map.get(name)
        if shard is None:
            raise KeyError(f"no weight named {name!r} in the index")
        ckpt = self.shard(shard)
        return ckpt.read(ckpt.handle((name,)))

    def close(self) -> None:
        self._closed = True
        for ckpt in self._open.values():
            ckpt.close()
        self._open.clear()

    def __enter__(self) -> ShardedCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<safeload.ShardedCheckpoint {os.fspath(self.index.path)!r} "
                f"({len(self.index.shards)} shards, {len(self)} weights)>")


def open_sharded(index: str | os.PathLike, **open_options) -> ShardedCheckpoint:
    """``safeload.open`` for an index: options as for ``safeload.open``."""
    from .lazy import open as open_one

    idx = read_index(index)
    return ShardedCheckpoint(idx, lambda path: open_one(path, **open_options))
