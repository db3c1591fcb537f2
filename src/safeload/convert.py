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

Command line: ``safeload convert SRC DST [--records] ...`` (also
``python -m safeload.convert``).
"""

from __future__ import annotations

import argparse
import json
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

__all__ = ["ConvertError", "Conversion", "convert", "main"]

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
) -> Conversion:
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
        from safetensors.numpy import save_file
    except ImportError as exc:  # an optional dependency, only for convert
        raise ImportError(f"safeload.convert needs the safetensors package: {exc}") from exc

    builders: list[_RecordingBuilder] = []

    def make_builder(ckpt: Checkpoint) -> _RecordingBuilder:
        builders.append(_RecordingBuilder(ckpt))
        return builders[-1]

    structure = load_checkpoint(src, make_builder, encoding=encoding, limits=limits,
                                policy=policy, allow=allow, records=records)
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

    dst = Path(dst)
    # A fresh name next to dst (same file system, so the rename is atomic), created
    # exclusively: never through a symlink planted there. safetensors then writes it
    # (with the 0600 permissions it gives every file it writes).
    tmp = dst.parent / f".{dst.name}.{secrets.token_hex(8)}.tmp"
    with open(tmp, "xb"):
        pass
    try:
        save_file(arrays, tmp, metadata=metadata)
        if verify_output:
            verify(tmp, arrays, metadata)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Conversion(
        path=dst,
        tensors={n: (SAFETENSORS_DTYPES[a.dtype.name], a.shape) for n, a in arrays.items()},
        aliases=aliases,
        metadata=metadata,
    )


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
    parser.add_argument("dst", help="the .safetensors file to write")
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
    print(f"wrote {len(result.tensors)} tensors to {result.path}"
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
