"""Convert a checkpoint to safetensors, without running any of its code.

Strategy: read the checkpoint with safeload's numpy backend (same pipeline and
policy as ``safeload.load``), with a builder that remembers each array's
tensor record (storage key, offset, shape, stride). Flatten the structure to
dotted names (``lazy.flatten``): tensors become safetensors tensors, every
other value must fit the safetensors ``__metadata__`` (a str -> str map).
safetensors has no views: each tensor owns one contiguous byte range of the
file, and ranges may not overlap. So tensors that are the *same view* of one
storage (tied weights) are written once and the other names recorded in the
metadata (``shared="dedupe"``, what ``safetensors.torch.save_model`` does), or
written once per name (``shared="clone"``); any other view of a shared storage
is written as its own contiguous copy. bfloat16 and float8 arrays (ml_dtypes)
are written by ``safetensors.numpy`` as BF16 / F8_*. The file is written under
a temporary name next to ``dst``, read back and compared byte for byte with the
source tensors, and only then renamed to ``dst``.

Metadata: strings are stored as they are; ints, floats, bools, None and small
containers of them (and of Records, via ``to_plain``) as JSON text (NaN and
Infinity spelled as Python's json module writes and reads them). What does
not fit (tensors inside objects, quantized tensors, complex128, large values)
is refused with every offending key listed; ``select=`` and ``drop=`` pick
what to convert.

A sharded checkpoint's index (``pytorch_model.bin.index.json``) converts
shard by shard into the layout transformers writes (``convert_sharded``):
each shard is checked against the index as ``load_sharded`` checks it,
planned with the rules above, written and read back under a temporary name;
the new index is written last, and nothing is renamed into place until every
shard succeeded.

Command line: ``safeload convert SRC DST [--records] ...`` (also
``python -m safeload.convert``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .allowlist import Policy
from .dtypes import DType
from .errors import SafeloadError
from .formats import Checkpoint
from .formats.source import FileLike
from .lazy import dotted, flatten
from .limits import Limits
from .loader import load_checkpoint
from .rebuild import HostBuilder
from .records import Device, GlobalRef, QScheme, Record, TensorRecord, to_plain

__all__ = ["ConvertError", "Conversion", "ShardedConversion", "convert", "convert_sharded",
           "main"]

#: dtype name (torch's, which is also numpy's / ml_dtypes') -> what safetensors
#: calls it; anything else is refused
SAFETENSORS_DTYPES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "complex64": "C64",
}

#: metadata keys safeload writes itself
ALIASES_KEY = "safeload.aliases"
FORMAT_KEY = "format"  # "pt": what transformers checks before loading a safetensors file

_MAX_VALUE_CHARS = 64 * 1024  # one metadata value, as JSON text
_MAX_METADATA_CHARS = 1 << 20  # all metadata; safetensors caps the header at 100 MB
_MAX_VALUE_NODES = 10_000  # containers and scalars walked for one value
_LISTED = 20  # keys listed in a refusal


class ConvertError(SafeloadError):
    """The checkpoint loads, but part of it has no place in a safetensors file."""

    kind = "convert"

    def __init__(self, reason: str, *, keys: Iterable[str] = (), **kwargs) -> None:
        self.keys = list(keys)
        if self.keys:
            shown = ", ".join(repr(k) for k in self.keys[:_LISTED])
            more = len(self.keys) - _LISTED
            reason = f"{reason}: {shown}" + (f" and {more} more" if more > 0 else "")
        super().__init__(reason, **kwargs)


@dataclass
class Conversion:
    """What ``convert`` wrote."""

    path: Path
    #: safetensors name -> (safetensors dtype, shape)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    #: name left out -> the name holding the same view (shared="dedupe")
    aliases: dict[str, str] = field(default_factory=dict)
    #: the ``__metadata__`` written
    metadata: dict[str, str] = field(default_factory=dict)


class _RecordingBuilder(HostBuilder):
    """HostBuilder that remembers the tensor record of every array it makes."""

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt.storage, byteorder=ckpt.byteorder, file=ckpt.source.name)
        self.made: dict[int, tuple[TensorRecord, np.ndarray]] = {}

    def tensor(self, rec: TensorRecord) -> object:
        array = super().tensor(rec)
        self.made[id(array)] = (rec, array)  # keeps the array alive: ids stay unique
        return array


# -- metadata values -----------------------------------------------------------


def _plain_scalar(value):
    """A JSON scalar for ``value``, or the _NO sentinel."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return _plain_scalar(value.item())
    if type(value) in (DType, Device, QScheme):  # torch.float32, cuda:0, ...
        return str(value) if type(value) is Device else repr(value)
    return _NO


_NO = object()


def _json_value(value) -> tuple[str | None, str | None]:
    """(JSON text, None) for a value that fits the metadata, else (None, why)."""
    budget = _MAX_VALUE_NODES
    todo = [value]
    while todo:  # bounded check first: json.dumps of a shared DAG could explode
        budget -= 1
        if budget < 0:
            return None, "too large (or cyclic) for the metadata"
        item = todo.pop()
        if isinstance(item, np.ndarray):
            return None, "holds a tensor inside a value that is not a dict or list of tensors"
        if type(item) in (Record, GlobalRef):
            return None, "is an object (Record)"  # to_plain runs before this check
        if _plain_scalar(item) is not _NO:
            continue
        if isinstance(item, (list, tuple)):  # torch.Size too: a tuple
            todo.extend(item)
        elif isinstance(item, dict):
            if not all(type(k) in (str, int) and type(k) is not bool for k in item):
                return None, "is a dict with keys that are not strings or ints"
            todo.extend(item.values())
        else:
            return None, f"is a {type(item).__module__}.{type(item).__qualname__}"

    def default(x):
        scalar = _plain_scalar(x)
        if scalar is _NO:
            raise TypeError(type(x).__name__)
        return scalar

    # NaN and Infinity as Python's json writes (and reads) them
    text = json.dumps(value, default=default, ensure_ascii=False)
    if len(text) > _MAX_VALUE_CHARS:
        return None, f"is {len(text)} characters as JSON, more than {_MAX_VALUE_CHARS}"
    return text, None


def _metadata_text(value) -> tuple[str | None, str | None]:
    if type(value) is str:
        if len(value) > _MAX_VALUE_CHARS:
            return None, f"is a string of {len(value)} characters"
        return value, None
    if type(value).__name__ == "QuantizedTensor":
        return None, "is a quantized tensor (safetensors has no quantized types)"
    if type(value) in (Record, GlobalRef) or isinstance(value, (dict, list, tuple)):
        value = to_plain(value)
    return _json_value(value)


# -- the walk ------------------------------------------------------------------


def _select(structure, select: str | tuple | None):
    if select is None:
        return structure
    path = select if isinstance(select, tuple) else tuple(select.split("."))
    value = structure
    for part in path:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif type(value) in (list, tuple) and isinstance(part, str) and part.isdigit() \
                and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and isinstance(part, str) and part.isdigit() \
                and int(part) in value:
            value = value[int(part)]
        else:
            raise ConvertError(f"select={select!r}: the checkpoint has no {part!r} there")
    return value


def _split(structure, made: dict, drop: tuple[str, ...]):
    """Walk the structure: ({name: (tensor record or None, array)}, {name: value})."""
    tensors: dict[str, tuple[TensorRecord, np.ndarray]] = {}
    values: dict[str, object] = {}
    collisions: list[str] = []

    def dropped(name: str) -> bool:
        return any(name == d or name.startswith(d + ".") for d in drop)

    # Containers that lead to a tensor are walked; any other value is metadata.
    holds_tensor: set[int] = set()
    for path, _array in flatten(structure, np.ndarray):
        node = structure
        holds_tensor.add(id(node))
        for key in path[:-1]:
            node = node[key]
            holds_tensor.add(id(node))

    seen: set[int] = set()
    todo: list[tuple[tuple, object]] = [((), structure)]
    while todo:
        path, value = todo.pop()
        name = dotted(path)
        if path and dropped(name):
            continue
        if isinstance(value, np.ndarray):
            if name in tensors:
                collisions.append(name)
            # an array that is not a torch tensor (a pickled numpy array) has no record
            tensors[name] = made.get(id(value), (None, value))
            continue
        if id(value) in holds_tensor and (isinstance(value, dict) or type(value) in
                                           (list, tuple)):
            if id(value) in seen:
                raise ConvertError("the same container of tensors is reachable twice "
                                   "(safetensors has one name per tensor)", keys=[name])
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            todo.extend(((*path, k), v) for k, v in reversed(list(items)))
            continue
        if not path:
            raise ConvertError("the checkpoint holds no tensors in dicts or lists: "
                               f"it is a {type(value).__name__}")
        if name in values or name in tensors:
            collisions.append(name)
        values[name] = value
    if collisions:
        raise ConvertError("dotted names collide (keys containing dots)", keys=collisions)
    return tensors, values


def _contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous and little-endian, as safetensors stores it. (Tensors come
    native from the rebuild stage; a pickled numpy array may be big-endian.)"""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and
                                        sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return array if array.flags.c_contiguous else array.copy(order="C")


def _plan_tensors(tensors: dict, shared: str):
    """(arrays to write, aliases, refused names)."""
    out: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    refused: list[str] = []
    first_view: dict[tuple, str] = {}
    for name, (rec, array) in tensors.items():
        dtype = rec.dtype.name if rec is not None else array.dtype.name
        if dtype not in SAFETENSORS_DTYPES or array.dtype.hasobject:
            refused.append(f"{name} ({dtype})")
            continue
        if rec is None:  # a numpy array from the pickle: shares nothing
            out[name] = _contiguous(array)
            continue
        view = (rec.storage_ref.key, rec.dtype.name, rec.offset, rec.shape, rec.stride)
        if shared == "dedupe" and rec.numel and view in first_view:
            aliases[name] = first_view[view]
            continue
        first_view.setdefault(view, name)
        out[name] = _contiguous(array)
    return out, aliases, refused


def _build_metadata(values: dict, aliases: dict) -> dict[str, str]:
    metadata: dict[str, str] = {}
    problems: list[str] = []
    for name, value in values.items():
        if name in (FORMAT_KEY, ALIASES_KEY):
            problems.append(f"{name} (a key safeload writes itself)")
            continue
        text, why = _metadata_text(value)
        if text is None:
            problems.append(f"{name} {why}")
        else:
            metadata[name] = text
    if problems:
        raise ConvertError(
            "these values have no place in a safetensors file",
            keys=problems,
            hint="Leave them out with drop=[...] (--drop), or convert a part of the "
                 "checkpoint with select='state_dict' (--select)",
        )
    metadata[FORMAT_KEY] = "pt"
    if aliases:
        metadata[ALIASES_KEY] = json.dumps(aliases, ensure_ascii=False)
    total = sum(len(k) + len(v) for k, v in metadata.items())
    if total > _MAX_METADATA_CHARS:
        raise ConvertError(f"the metadata would be {total} characters, more than "
                           f"{_MAX_METADATA_CHARS}", keys=sorted(metadata, key=lambda k:
                                                                 -len(metadata[k]))[:5],
                           hint="Leave the largest values out with drop=[...]")
    return metadata


# -- verification ----------------------------------------------------------------


def _read_header(path: Path) -> tuple[dict, int]:
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(size)), 8 + size


def verify(path: str | os.PathLike, tensors: dict[str, np.ndarray],
           metadata: dict[str, str]) -> None:
    """Read ``path`` back (safetensors parses it) and compare every tensor byte
    for byte, its dtype and shape, and the metadata. ConvertError if not."""
    from safetensors import safe_open

    path = Path(path)
    problems: list[str] = []
    with safe_open(path, framework="np") as reader:
        names = set(reader.keys())
        if names != set(tensors):
            problems.extend(sorted(names ^ set(tensors)))
        if (reader.metadata() or {}) != metadata:
            problems.append("__metadata__")
        for name in sorted(names & set(tensors)):
            piece = reader.get_slice(name)
            array = tensors[name]
            if piece.get_dtype() != SAFETENSORS_DTYPES[array.dtype.name] or \
                    tuple(piece.get_shape()) != array.shape:
                problems.append(name)
    header, data_start = _read_header(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        for name, array in tensors.items():
            entry = header.get(name)
            if entry is None:
                continue
            start, end = entry["data_offsets"]
            got = mapped[data_start + start:data_start + end]
            want = array.reshape(-1).view(np.uint8)
            if got.shape != want.shape or not np.array_equal(got, want):
                problems.append(name)
    finally:
        del mapped
    if problems:
        raise ConvertError("the safetensors file read back differs from the checkpoint",
                           keys=problems)


# -- the entry point ---------------------------------------------------------------


@dataclass
class _Plan:
    """One safetensors file, checked and ready to write."""

    arrays: dict[str, np.ndarray]
    aliases: dict[str, str]
    metadata: dict[str, str]


def _plan(src: FileLike, *, select, drop: tuple[str, ...], shared: str, records, policy,
          allow, limits, encoding: str, check=None) -> _Plan:
    """Load ``src`` and decide what goes where; ``check(structure)`` may refuse
    the loaded structure first (a shard against its index)."""
    builders: list[_RecordingBuilder] = []

    def make_builder(ckpt: Checkpoint) -> _RecordingBuilder:
        builders.append(_RecordingBuilder(ckpt))
        return builders[-1]

    structure = load_checkpoint(src, make_builder, encoding=encoding, limits=limits,
                                policy=policy, allow=allow, records=records)
    if check is not None:
        check(structure)
    made = builders[-1].made
    try:
        part = _select(structure, select)
        if isinstance(part, np.ndarray):  # torch.save(tensor): one unnamed tensor
            part = {"tensor": part}
        tensors, values = _split(part, made, drop)
        arrays, aliases, refused = _plan_tensors(tensors, shared)
        if refused:
            raise ConvertError("these tensors have dtypes safetensors cannot store",
                               keys=refused)
        metadata = _build_metadata(values, aliases)
    except ConvertError as err:
        raise err.at(file=_name_of(src)) from None
    return _Plan(arrays, aliases, metadata)


def _write_temporary(plan: _Plan, dst: Path, verify_output: bool) -> Path:
    """Write ``plan`` to a fresh temporary name next to ``dst`` (same file
    system, so renaming it to ``dst`` is atomic), read it back; its path."""
    from safetensors.numpy import save_file

    # Created exclusively: never through a symlink planted there. safetensors then
    # writes it (with the 0600 permissions it gives every file it writes).
    tmp = dst.parent / f".{dst.name}.{secrets.token_hex(8)}.tmp"
    with open(tmp, "xb"):
        pass
    try:
        save_file(plan.arrays, tmp, metadata=plan.metadata)
        if verify_output:
            verify(tmp, plan.arrays, plan.metadata)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _conversion(dst: Path, plan: _Plan) -> Conversion:
    return Conversion(
        path=dst,
        tensors={n: (SAFETENSORS_DTYPES[a.dtype.name], a.shape) for n, a in plan.arrays.items()},
        aliases=plan.aliases,
        metadata=plan.metadata,
    )


def convert(
    src: FileLike,
    dst: str | os.PathLike,
    *,
    select: str | tuple | None = None,
    drop: Iterable[str] = (),
    shared: str = "dedupe",
    records=None,
    policy: Policy | None = None,
    allow=None,
    limits: Limits | None = None,
    encoding: str = "ASCII",
    verify_output: bool = True,
) -> Conversion | ShardedConversion:
    """Write the tensors of checkpoint ``src`` to the safetensors file ``dst``.

    Reads ``src`` with safeload (never runs its code; ``records``, ``policy``,
    ``allow`` as for ``safeload.load``). Nested dicts and lists of tensors get
    dotted names; other values go to the metadata (strings as they are, numbers
    and small containers as JSON). ``select="state_dict"`` converts one part of
    the checkpoint; ``drop=["optimizer_states"]`` leaves names (and everything
    under them) out. ``shared="dedupe"`` writes tied tensors (the same view of
    one storage) once and records the other names in the ``safeload.aliases``
    metadata entry; ``shared="clone"`` writes every name. The output is read
    back and compared byte for byte before it replaces ``dst``. A checkpoint that
    is one bare tensor is written under the name ``"tensor"``.

    When ``src`` is the path of a sharded checkpoint's index
    (``pytorch_model.bin.index.json``), each shard becomes a safetensors shard
    (``pytorch_model-00001-of-00002.bin`` -> ``model-00001-of-00002.safetensors``)
    and an index is written as transformers writes one; see ``convert_sharded``.

    Raises ``ConvertError`` (a SafeloadError) listing whatever does not fit.

    >>> import safeload
    >>> safeload.convert("model.pt", "model.safetensors")   # doctest: +SKIP
    Conversion(path=PosixPath('model.safetensors'), tensors={...}, ...)
    """
    if shared not in ("dedupe", "clone"):
        raise ValueError(f"shared must be 'dedupe' or 'clone', got {shared!r}")
    if isinstance(drop, str):
        drop = [drop]
    drop = tuple(drop)
    try:
        import safetensors.numpy  # noqa: F401 - fail before reading anything
    except ImportError as exc:  # an optional dependency, only for convert
        raise ImportError(f"safeload.convert needs the safetensors package: {exc}") from exc
    if isinstance(src, (str, os.PathLike)):
        from .sharded import is_index

        if is_index(src):
            if select is not None:
                raise ValueError("select= does not apply to a sharded index: its shards are "
                                 "state dicts; use drop= to leave weights out")
            return convert_sharded(src, dst, drop=drop, shared=shared, records=records,
                                   policy=policy, allow=allow, limits=limits,
                                   encoding=encoding, verify_output=verify_output)

    plan = _plan(src, select=select, drop=drop, shared=shared, records=records, policy=policy,
                 allow=allow, limits=limits, encoding=encoding)
    dst = Path(dst)
    tmp = _write_temporary(plan, dst, verify_output)
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _conversion(dst, plan)


# -- sharded checkpoints --------------------------------------------------------------

#: the index name transformers writes next to safetensors shards
SAFETENSORS_INDEX = "model.safetensors.index.json"


@dataclass
class ShardedConversion:
    """What ``convert`` wrote for a sharded index: the new index, and one
    ``Conversion`` per shard (keyed by the new shard's file name)."""

    path: Path
    shards: dict[str, Conversion] = field(default_factory=dict)
    #: the index's weight_map: weight name -> new shard file name
    weight_map: dict[str, str] = field(default_factory=dict)
    #: the index's metadata (``total_size``: bytes of tensor data in the shards)
    metadata: dict = field(default_factory=dict)

    @property
    def tensors(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {n: t for shard in self.shards.values() for n, t in shard.tensors.items()}

    @property
    def aliases(self) -> dict[str, str]:
        return {n: a for shard in self.shards.values() for n, a in shard.aliases.items()}


def safetensors_shard_name(shard: str) -> str:
    """The safetensors name of a shard, as Hugging Face's converter names it:
    ``pytorch_model-00001-of-00002.bin`` -> ``model-00001-of-00002.safetensors``."""
    stem = shard[:-len(Path(shard).suffix)] if Path(shard).suffix else shard
    return stem.replace("pytorch_model", "model") + ".safetensors"


def _output_place(dst: Path) -> tuple[Path, str]:
    """(directory, index file name): ``dst`` is the index to write (a name
    ending in ``.json``) or the directory to write it and the shards into."""
    if dst.name.endswith(".json"):
        return dst.parent, dst.name
    if dst.name.endswith(".safetensors"):
        raise ValueError(f"a sharded checkpoint converts to sharded files: give a directory "
                         f"or the index to write ({SAFETENSORS_INDEX}), not {dst.name!r}")
    return dst, SAFETENSORS_INDEX


def _check_shard_structure(index, shard: str):
    from .sharded import check_shard

    where = os.fspath(index.shard_path(shard))

    def check(structure) -> None:
        if not isinstance(structure, dict):
            raise ConvertError(f"shard {shard!r} holds a {type(structure).__name__}, not a "
                               "dict of weights", file=where)
        check_shard(index, shard, structure.keys())
        not_tensors = [k for k, v in structure.items() if not isinstance(v, np.ndarray)]
        if not_tensors:
            raise ConvertError(f"shard {shard!r} holds values that are not tensors",
                               keys=not_tensors, file=where)

    return check


def convert_sharded(
    index: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    drop: Iterable[str] = (),
    shared: str = "dedupe",
    records=None,
    policy: Policy | None = None,
    allow=None,
    limits: Limits | None = None,
    encoding: str = "ASCII",
    verify_output: bool = True,
) -> ShardedConversion:
    """Convert a sharded checkpoint (its ``*.index.json``) to safetensors shards.

    The layout is the one transformers writes: the same split into shards, each
    ``pytorch_model-0000k-of-0000n.bin`` written as ``model-0000k-of-0000n.safetensors``
    (with ``"format": "pt"`` metadata), and ``model.safetensors.index.json`` whose
    ``weight_map`` names the new files and whose ``metadata`` is the old index's
    with ``total_size`` set to the bytes of tensor data written. ``dst`` is the
    directory to write into (created if missing), or the path of the index to
    write. Every shard is checked against the index as ``load_sharded`` checks
    it, converted with ``convert``'s rules (tied weights within a shard, dtypes,
    ``drop``) and read back, each under a temporary name; only when all of them
    are written are they renamed into place, so a bad shard leaves nothing
    behind (a ``SafeloadError`` naming the shard).

    >>> import safeload
    >>> safeload.convert("llama/pytorch_model.bin.index.json", "llama-st/")  # doctest: +SKIP
    ShardedConversion(path=PosixPath('llama-st/model.safetensors.index.json'), ...)
    """
    from .sharded import read_index

    if isinstance(drop, str):
        drop = [drop]
    drop = tuple(drop)
    idx = read_index(index)
    directory, index_name = _output_place(Path(dst))
    names = {shard: safetensors_shard_name(shard) for shard in idx.shards}
    sources = {idx.path.resolve(), *(idx.shard_path(s).resolve() for s in idx.shards)}
    targets = [directory / n for n in names.values()] + [directory / index_name]
    clash = [os.fspath(t) for t in targets if t.resolve() in sources]
    if len(set(targets)) != len(targets) or clash:
        raise ConvertError("the safetensors files would overwrite each other or the "
                           "checkpoint", keys=clash or [os.fspath(t) for t in targets],
                           file=os.fspath(idx.path))
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}  # final name -> temporary file
    result = ShardedConversion(path=directory / index_name)
    try:
        for shard in idx.shards:
            plan = _plan(idx.shard_path(shard), select=None, drop=drop, shared=shared,
                         records=records, policy=policy, allow=allow, limits=limits,
                         encoding=encoding, check=_check_shard_structure(idx, shard))
            if not plan.arrays:  # every weight dropped: no shard
                continue
            final = directory / names[shard]
            written[names[shard]] = _write_temporary(plan, final, verify_output)
            result.shards[names[shard]] = _conversion(final, plan)
            result.weight_map.update(dict.fromkeys(plan.arrays, names[shard]))
            del plan  # one shard's arrays in memory at a time
        if not result.shards:
            raise ConvertError("drop= leaves no weight to convert", file=os.fspath(idx.path))
        total = sum(math.prod(shape) * _ITEMSIZES[dtype]
                    for conv in result.shards.values()
                    for dtype, shape in conv.tensors.values())
        result.metadata = {**idx.metadata, "total_size": total}
        # weights in the old index's order, as transformers keeps them
        result.weight_map = {w: result.weight_map[w] for w in idx.weight_map
                             if w in result.weight_map}
        text = json.dumps({"metadata": result.metadata, "weight_map": result.weight_map},
                          indent=2, ensure_ascii=False) + "\n"
        tmp = directory / f".{index_name}.{secrets.token_hex(8)}.tmp"
        with open(tmp, "x", encoding="utf-8") as fh:
            written[index_name] = tmp
            fh.write(text)
        for final, tmp in list(written.items()):  # the index last
            os.replace(tmp, directory / final)
            del written[final]
    except BaseException:
        for tmp in written.values():
            tmp.unlink(missing_ok=True)
        if created:
            try:
                directory.rmdir()  # only if still empty
            except OSError:
                pass
        raise
    return result


#: bytes per element of each safetensors dtype safeload writes
_ITEMSIZES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8,
              "U64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
              "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "C64": 8}
assert set(_ITEMSIZES) == set(SAFETENSORS_DTYPES.values())


def _name_of(src) -> str | None:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else None


# -- command line ------------------------------------------------------------------


def main(argv: list[str] | None = None, *, prog: str = "safeload convert") -> int:
    """``safeload convert SRC DST`` (or ``python -m safeload.convert``); exit 0
    when written, 1 when refused."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert a PyTorch checkpoint to safetensors without running its code.",
    )
    parser.add_argument("src", help="the checkpoint (any format safeload reads)")
    parser.add_argument("dst", help="the .safetensors file to write; for a sharded index "
                        "(*.bin.index.json), the directory (or the index path) to write to")
    parser.add_argument("--select", help="convert only this part, e.g. state_dict")
    parser.add_argument("--drop", action="append", default=[], metavar="NAME",
                        help="leave out this dotted name and what is under it (repeatable)")
    parser.add_argument("--clone-shared", action="store_true",
                        help="write tied tensors once per name instead of recording aliases")
    parser.add_argument("--records", action="store_true",
                        help="keep objects of unknown classes as data (see safeload.Record)")
    parser.add_argument("--record-type", action="append", default=[], metavar="NAME",
                        help="a class the pickle may call, kept as a record (repeatable)")
    args = parser.parse_args(argv)
    records = args.record_type or (True if args.records else None)
    try:
        result = convert(args.src, args.dst, select=args.select, drop=args.drop,
                         shared="clone" if args.clone_shared else "dedupe", records=records)
    except SafeloadError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    shards = (f" in {len(result.shards)} shards" if isinstance(result, ShardedConversion)
              else "")
    print(f"wrote {len(result.tensors)} tensors{shards} to {result.path}"
          + (f" ({len(result.aliases)} tied names recorded as aliases)" if result.aliases
             else ""))
    return 0


class _CallableModule(types.ModuleType):
    """``safeload.convert`` is this module's function; but importing the submodule
    makes the package attribute the module. So the module calls through too."""

    def __call__(self, *args, **kwargs) -> Conversion:
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main(prog="python -m safeload.convert"))
