"""Lazy open: a checkpoint's structure first, one tensor's bytes when asked.

Strategy: ``open`` runs the container and the pickle VM once, like ``load``,
but with ``HandleBuilder``: an inert builder that checks each storage
reference against its record (sizes only, through a zero-copy view: no tensor
byte is read) and each tensor's extent, and puts a ``TensorHandle`` where the
tensor would be. ``ckpt[name]`` then hands that one tensor's record to the
backend's builder (numpy ``HostBuilder``, or the torch backend's), which
fetches its storage once and caches it, so tensors that share a storage share
memory as with ``load``. Files are memory-mapped (private, copy-on-write), so
opening a 10 GB checkpoint touches only its pickle.

Names: a nested dict / list / tuple structure is flattened to dotted names
(``"state_dict.fc.weight"``, ``"optimizer_states.0.state.3.exp_avg"``); a tuple
of keys (``ckpt[("state_dict", "fc.weight")]``) addresses a tensor exactly when
a dotted name is ambiguous.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .allowlist import Policy
from .errors import CallerError, FormatError, SafeloadError
from .formats import Checkpoint
from .formats.source import FileLike, Source
from .limits import DEFAULT_LIMITS, Limits
from .loader import open_container, resolve_policy, run_pickle
from .rebuild import Builder, HostBuilder, check_same_storage, raise_size_mismatch
from .records import GlobalRef, StorageRef, TensorRecord

if TYPE_CHECKING:
    from .sharded import ShardedCheckpoint

__all__ = ["HandleBuilder", "LazyCheckpoint", "TensorHandle", "flatten", "open"]


class TensorHandle:
    """A tensor of a lazily opened checkpoint: what it is, not its bytes.

    ``name`` (first dotted name it was found under), ``dtype`` (a
    ``safeload.dtypes.DType``; ``dtype.name`` is torch's name), ``shape``,
    ``stride``, ``offset`` (in elements), ``nbytes``, ``location`` (the saved
    device tag), ``storage_key`` (the record it lives in), ``requires_grad``
    and ``is_parameter``. ``quantized`` is None, or ``(qscheme name,
    parameters)`` for a quantized tensor (per-channel scales may be handles).
    """

    __slots__ = ("record", "name", "quantized")

    def __init__(self, record: TensorRecord, name: str | None = None,
                 quantized: tuple[str, dict] | None = None) -> None:
        self.record = record
        self.name = name
        self.quantized = quantized

    dtype = property(lambda self: self.record.dtype)
    shape = property(lambda self: self.record.shape)
    stride = property(lambda self: self.record.stride)
    offset = property(lambda self: self.record.offset)
    numel = property(lambda self: self.record.numel)
    nbytes = property(lambda self: self.record.nbytes)
    location = property(lambda self: self.record.storage_ref.location)
    storage_key = property(lambda self: self.record.storage_ref.key)
    requires_grad = property(lambda self: self.record.requires_grad)
    is_parameter = property(lambda self: self.record.is_parameter)

    def __repr__(self) -> str:
        kind = "Parameter" if self.is_parameter else "TensorHandle"
        return (f"<{kind} {self.name!r} {self.dtype.name}{list(self.shape)} "
                f"on {self.location}, storage {self.storage_key!r}>")


class HandleBuilder(HostBuilder):
    """The VM's builder for lazy open: validates sizes and extents like
    ``HostBuilder`` but keeps storages as references and tensors as handles."""

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt.storage, byteorder=ckpt.byteorder, file=ckpt.source.name)
        self.refs: dict[str, StorageRef] = {}

    def storage(self, ref: StorageRef) -> object:
        first = self.refs.get(ref.key)
        if first is not None:
            check_same_storage(first, ref)
            return first
        size = len(self.fetch(ref.key))  # a bounded view: no byte is read
        if size != ref.nbytes:
            raise_size_mismatch(ref, size, self.file)
        self.refs[ref.key] = ref
        return ref

    def tensor(self, rec: TensorRecord) -> object:
        self.check_extent(rec, rec.storage_ref.nbytes)
        return TensorHandle(rec)

    #: a storage saved by itself stays its StorageRef (or StorageView): inert
    bare_storage = Builder.bare_storage

    def tensor_shape(self, value) -> tuple[int, ...] | None:
        if type(value) is TensorHandle and value.quantized is None:
            return value.shape
        return None

    def qtensor(self, rec: TensorRecord, scheme: str, **params) -> object:
        self.check_qextent(rec, rec.storage_ref.nbytes)
        return TensorHandle(rec, quantized=(scheme, params))

    def parameter(self, data, requires_grad: bool) -> object:
        if type(data) is not TensorHandle:
            raise FormatError(f"Parameter data must be a tensor, got {type(data).__name__}")
        data.record.is_parameter = True
        data.record.requires_grad = requires_grad
        return data


def _key_text(key: object) -> str:
    if type(key) in (str, int, bool) or type(key) is GlobalRef:
        return str(key)
    return repr(key)


def flatten(structure: object, leaf_type: type | tuple = TensorHandle
            ) -> list[tuple[tuple, object]]:
    """(path, value) for every ``leaf_type`` value reachable through dicts,
    lists and tuples, in container order. Each container is walked once (the
    first path wins), so shared and cyclic structures end. Iterative."""
    found: list[tuple[tuple, object]] = []
    seen: set[int] = set()
    todo: list[tuple[tuple, object]] = [((), structure)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, leaf_type):
            found.append((path, value))
            continue
        if isinstance(value, dict):
            children = list(value.items())
        elif type(value) in (list, tuple):
            children = list(enumerate(value))
        else:
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        todo.extend(((*path, k), v) for k, v in reversed(children))
    return found


def dotted(path: tuple) -> str:
    return ".".join(_key_text(k) for k in path)


class LazyCheckpoint:
    """An open checkpoint (see ``safeload.open``). Use it as a context manager."""

    def __init__(self, source: Source, container: Checkpoint, structure: object,
                 read_builder, *, framework: str) -> None:
        self.source = source
        self.container = container
        #: the checkpoint's object, with a TensorHandle for every tensor
        self.structure = structure
        self.framework = framework
        self._read_builder = read_builder  # None once closed
        self._handles: dict[str, TensorHandle] = {}
        self._ambiguous: set[str] = set()
        for path, handle in flatten(structure):
            name = dotted(path)
            if handle.name is None:
                handle.name = name
            other = self._handles.get(name)
            if other is not None and other is not handle:
                self._ambiguous.add(name)
            else:
                self._handles[name] = handle

    # -- names -------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Dotted names of every tensor, in the checkpoint's order."""
        return list(self._handles)

    def __iter__(self) -> Iterator[str]:
        return iter(self._handles)

    def __len__(self) -> int:
        return len(self._handles)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._handles

    def handles(self) -> dict[str, TensorHandle]:
        """Dotted name -> TensorHandle, without reading any tensor data."""
        return dict(self._handles)

    def handle(self, key: str | tuple) -> TensorHandle:
        """The TensorHandle for a dotted name or an exact tuple of keys."""
        if isinstance(key, tuple):
            value = self.structure
            for part in key:
                try:
                    value = value[part]
                except (KeyError, IndexError, TypeError):
                    raise KeyError(f"no tensor at path {key!r}") from None
            if type(value) is not TensorHandle:
                raise KeyError(f"path {key!r} holds a {type(value).__name__}, not a tensor")
            return value
        if key in self._ambiguous:
            raise KeyError(f"{key!r} names more than one tensor (keys containing dots); "
                           "address it with a tuple of keys")
        try:
            return self._handles[key]
        except KeyError:
            close = difflib.get_close_matches(str(key), self._handles, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"no tensor named {key!r}{hint}") from None

    # -- data ----------------------------------------------------------------------

    def __getitem__(self, key: str | tuple) -> object:
        """Read one tensor (numpy array, or torch tensor with framework='torch')."""
        return self.read(self.handle(key))

    def read(self, handle: TensorHandle) -> object:
        builder = self._read_builder
        if builder is None:
            raise ValueError("the checkpoint is closed")
        rec = handle.record
        try:
            storage = builder.storage(rec.storage_ref)
            rec = dataclasses.replace(rec, storage=storage)
            if handle.quantized is not None:
                scheme, params = handle.quantized
                params = {k: self.read(v) if type(v) is TensorHandle else v
                          for k, v in params.items()}
                return builder.qtensor(rec, scheme, **params)
            value = builder.tensor(rec)
            if rec.is_parameter:
                value = builder.parameter(value, rec.requires_grad)
            return value
        except SafeloadError as err:
            raise err.at(file=self.source.name) from None
        except CallerError as err:
            raise err.original from None

    @property
    def storages_read(self) -> list[str]:
        """Keys of the storage records read so far (each is read once)."""
        builder = self._read_builder
        return list(builder.loaded) if builder is not None else []

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Release the file. Tensors already read stay valid."""
        self._read_builder = None
        self.source.close()

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._read_builder is None else "open"
        return (f"<safeload.LazyCheckpoint {self.source.name!r} ({self.container.kind}, "
                f"{len(self._handles)} tensors, {state})>")


def _numpy_builder(ckpt: Checkpoint, map_location):
    return HostBuilder(ckpt.storage, byteorder=ckpt.byteorder, map_location=map_location,
                       file=ckpt.source.name)


def _torch_builder(ckpt: Checkpoint, map_location):
    try:
        from .torch import TorchBuilder
    except ImportError as exc:
        raise ValueError(f"framework='torch' needs torch: {exc}") from None
    return TorchBuilder(ckpt.storage, byteorder=ckpt.byteorder, map_location=map_location,
                        file=ckpt.source.name)


_FRAMEWORKS = {"numpy": _numpy_builder, "np": _numpy_builder, "torch": _torch_builder,
               "pt": _torch_builder}


def open(  # noqa: A001 - safeload.open mirrors safetensors.safe_open / builtins.open
    f: FileLike,
    *,
    framework: str = "numpy",
    map_location=None,
    mmap: bool | None = None,
    encoding: str = "ASCII",
    limits: Limits | None = None,
    policy: Policy | None = None,
    allow=None,
    records=None,
) -> LazyCheckpoint | ShardedCheckpoint:
    """Open a checkpoint lazily: its structure now, tensor data on demand.

    The whole file is validated and its pickle run (with the same policy as
    ``safeload.load``: ``policy``, ``allow``, ``records``), but no tensor byte
    is read until you index it. ``mmap=None`` maps paths (private,
    copy-on-write: arrays are writable, the file never changes) and reads file
    objects and bytes. ``framework`` is ``"numpy"`` or ``"torch"``. The path
    of a sharded checkpoint's index (``pytorch_model.bin.index.json``) gives a
    ``ShardedCheckpoint`` with the same interface over all its shards.

    >>> import safeload
    >>> with safeload.open("examples/tiny_cnn.pt") as ckpt:     # doctest: +SKIP
    ...     ckpt.handle("fc.weight")
    ...     w = ckpt["fc.weight"]
    <TensorHandle 'fc.weight' float32[10, 144] on cpu, storage '7'>
    """
    try:
        make_reader = _FRAMEWORKS[framework]
    except KeyError:
        raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}") from None
    if isinstance(f, (str, os.PathLike)):
        from .sharded import is_index, open_sharded

        if is_index(f):  # a sharded checkpoint's *.index.json: its shards, lazily
            return open_sharded(f, framework=framework, map_location=map_location,
                                mmap=mmap, encoding=encoding, limits=limits, policy=policy,
                                allow=allow, records=records)
    limits = limits or DEFAULT_LIMITS
    policy = resolve_policy(policy, allow, records)
    if mmap is None:
        mmap = isinstance(f, (str, os.PathLike))
    source = Source.open(f, mmap=mmap, writable_map=mmap)
    try:
        ckpt = open_container(source, limits)
        structure = run_pickle(ckpt, HandleBuilder(ckpt), policy=policy, limits=limits,
                               encoding=encoding)
        reader = make_reader(ckpt, map_location)
    except SafeloadError as err:
        source.close()
        raise err.at(file=source.name) from None
    except BaseException:
        source.close()
        raise
    return LazyCheckpoint(source, ckpt, structure, reader, framework=framework)
