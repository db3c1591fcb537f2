"""The torch backend: a drop-in for ``torch.load(f, weights_only=True)``.

Strategy: the same pipeline as the numpy backend (``loader.load_checkpoint``:
one container reader, one VM, one policy); only the builder differs.
``TorchBuilder`` subclasses ``HostBuilder``, so storage caching by key, size
checks, big-endian byteswaps, ``map_location`` rules and tensor extent checks
are shared, and it swaps the host values for torch ones:

- a storage record becomes one ``torch.UntypedStorage`` over the bytes safeload
  already holds (the read buffer, or a private copy-on-write mmap with
  ``mmap=True``), without copying; tensors that shared a storage share it;
- ``map_location`` gets that storage on the CPU, as with torch.load, and moving
  it is torch's own ``default_restore_location``: torch code running on a
  storage safeload built, never on anything the file names;
- tensors are ``torch.empty(0, dtype).set_(storage, offset, size, stride)``
  after the extent check, with the dtype looked up by name in a fixed table;
- torch.Size / dtype / device / qscheme values come back as the torch types.

Example::

    import safeload.torch as st
    state = st.load("model.pt", map_location="cpu")
    model.load_state_dict(state)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .allowlist import QSCHEMES, Policy
from .dtypes import DTYPES, DType
from .errors import CallerError, FormatError
from .formats import Checkpoint
from .formats.source import FileLike
from .limits import Limits
from .loader import load_checkpoint
from .rebuild import HostBuilder, restore_location
from .records import Device, QScheme, Size, StorageRef, TensorRecord

__all__ = ["TorchBuilder", "load"]

#: safeload dtype name -> torch dtype. Built from safeload's own table, so a
#: pickle can only ever reach these attributes of ``torch``.
TORCH_DTYPES: dict[str, torch.dtype] = {
    dt.name: getattr(torch, dt.name) for dt in DTYPES.values()
}
_DTYPE_OF_TORCH: dict[torch.dtype, DType] = {
    torch_dt: DTYPES[name] for name, torch_dt in TORCH_DTYPES.items()
}
TORCH_QSCHEMES: dict[str, torch.qscheme] = {name: getattr(torch, name) for name in QSCHEMES}
_QSCHEME_OF_TORCH: dict[torch.qscheme, QScheme] = {
    q: QScheme(name) for name, q in TORCH_QSCHEMES.items()
}

#: ``_rebuild_tensor_v2`` metadata torch writes (``get_tensor_metadata``): the
#: conjugate and negative view bits, nothing else
_METADATA_KEYS = frozenset({"conj", "neg"})

#: storages whose address is a multiple of this are used in place (zip records
#: are 64-byte aligned); others (a record at any offset) are copied to torch memory
_ALIGNMENT = 16


def _untyped_storage(data: np.ndarray) -> torch.UntypedStorage:
    """A CPU ``UntypedStorage`` over a 1-d uint8 array, sharing its memory
    when it is writable and aligned (torch storages are writable)."""
    if data.nbytes == 0:
        return torch.UntypedStorage(0)
    if data.flags.writeable:
        # torch keeps a reference to ``data``, and so to the buffer or mapping.
        # data_ptr() is data.ctypes.data without building a ctypes object (1 us
        # a storage); from_numpy only after the writeable test (it warns otherwise)
        shared = torch.from_numpy(data)
        if shared.data_ptr() % _ALIGNMENT == 0:
            return shared.untyped_storage()
    copy = torch.empty(data.nbytes, dtype=torch.uint8)
    copy.numpy()[:] = data
    return copy.untyped_storage()


class TorchBuilder(HostBuilder):
    """torch tensors over the container's bytes (see the module docstring)."""

    # -- storages ------------------------------------------------------------------

    def make_storage(self, data: np.ndarray, ref: StorageRef) -> torch.UntypedStorage:
        return _untyped_storage(data)

    def default_restore(self, storage, location: str):
        return torch.serialization.default_restore_location(storage, location)

    def storage(self, ref: StorageRef) -> object:
        value = super().storage(ref)
        if not isinstance(value, torch.UntypedStorage):
            # torch.load fails here too (TypedStorage(wrap_storage=...)); the
            # value came from the caller's map_location, so it is the caller's error
            raise CallerError(TypeError(
                f"map_location returned a {type(value).__name__} for storage "
                f"'{ref.key}'; it must return a torch.UntypedStorage (or None)"
            ))
        return value

    def bare_storage(self, ref: StorageRef, value: object,
                     view: tuple[int, int] | None) -> torch.storage.TypedStorage:
        """What torch.load returns for a storage saved by itself: a
        ``TypedStorage`` of the saved dtype (uint8 for an ``UntypedStorage``)
        over the storage tensors on it use."""
        if view is not None:
            itemsize = ref.dtype.itemsize
            value = value[view[0] * itemsize:(view[0] + view[1]) * itemsize]
        return torch.storage.TypedStorage(wrap_storage=value,
                                          dtype=TORCH_DTYPES[ref.dtype.name], _internal=True)

    # -- tensors -------------------------------------------------------------------

    def tensor(self, rec: TensorRecord) -> torch.Tensor:
        storage = rec.storage
        self.check_extent(rec, storage.nbytes())
        # empty(0) is ~0.5 us faster than empty((0,)), same tensor; a fresh
        # tensor already has requires_grad False (rec.requires_grad is a checked bool)
        t = torch.empty(0, dtype=TORCH_DTYPES[rec.dtype.name], device=storage.device)
        t.set_(storage, rec.offset, rec.shape, rec.stride)
        if rec.requires_grad:
            t.requires_grad = True
        if rec.metadata:
            t = _with_metadata(t, rec.metadata)
        return t

    def parameter(self, data, requires_grad: bool) -> torch.nn.Parameter:
        if not isinstance(data, torch.Tensor):
            raise FormatError(f"Parameter data must be a tensor, got {type(data).__name__}")
        return torch.nn.Parameter(data, requires_grad=requires_grad)

    def tensor_shape(self, value) -> tuple[int, ...] | None:
        if isinstance(value, torch.Tensor) and not value.is_quantized:
            return tuple(value.shape)
        return None

    def qtensor(self, rec: TensorRecord, scheme: str, *, scale: float | None = None,
                zero_point: int | None = None, scales=None, zero_points=None,
                axis: int | None = None) -> torch.Tensor:
        storage = rec.storage
        self.check_qextent(rec, storage.nbytes())
        dtype = TORCH_DTYPES[rec.dtype.name]
        try:
            t = self._empty_quantized(rec, dtype, storage.device, scheme, scale, zero_point,
                                      scales, zero_points, axis)
        except NotImplementedError as exc:  # the device chosen (meta) lacks quantized ops
            raise CallerError(exc) from exc
        t.set_(storage, rec.offset, rec.shape, rec.stride)
        t.requires_grad = rec.requires_grad
        return t

    @staticmethod
    def _empty_quantized(rec, dtype, device, scheme, scale, zero_point, scales, zero_points,
                         axis) -> torch.Tensor:
        if scheme == "per_tensor_affine":
            return torch._empty_affine_quantized(rec.shape, scale=scale, zero_point=zero_point,
                                                 dtype=dtype, device=device)
        # lists become tensors as in torch._utils._rebuild_qtensor
        if scheme == "per_channel_affine":
            kinds = (torch.float64, torch.int64)
        else:
            kinds = (torch.float32, torch.float32)
        if isinstance(scales, list):
            scales = torch.tensor(scales, dtype=kinds[0], device=device)
        if isinstance(zero_points, list):
            zero_points = torch.tensor(zero_points, dtype=kinds[1], device=device)
        return torch._empty_per_channel_affine_quantized(
            rec.shape, scales=scales, zero_points=zero_points, axis=axis, dtype=dtype,
            device=device)

    # -- values --------------------------------------------------------------------

    def dtype(self, dt: DType) -> torch.dtype:
        return TORCH_DTYPES[dt.name]

    def as_dtype(self, value) -> DType | None:
        return _DTYPE_OF_TORCH.get(value) if isinstance(value, torch.dtype) else None

    def size(self, dims: Size) -> torch.Size:
        return torch.Size(dims)

    def device(self, dev: Device) -> torch.device:
        return torch.device(str(dev))

    def qscheme(self, scheme: QScheme) -> torch.qscheme:
        return TORCH_QSCHEMES[scheme.name]

    def as_qscheme(self, value) -> QScheme | None:
        return _QSCHEME_OF_TORCH.get(value) if isinstance(value, torch.qscheme) else None


def _with_metadata(t: torch.Tensor, metadata: dict) -> torch.Tensor:
    """Apply ``_rebuild_tensor_v2``'s metadata (conj / neg bits), validated."""
    for key, value in metadata.items():
        if key not in _METADATA_KEYS or type(value) is not bool:
            raise FormatError(f"tensor metadata {key!r:.40}: {value!r:.20} is not a "
                              "conj / neg flag")
    flags = {key: value for key, value in metadata.items() if value}
    if flags:
        torch._utils.set_tensor_metadata(t, flags)
    return t


def _refuse_unpickling_options(weights_only, pickle_module, pickle_load_args: dict) -> None:
    if weights_only is not None and not weights_only:
        raise ValueError(
            "safeload.torch.load never runs code from a pickle, so weights_only=False "
            "is not available. Use torch.load(..., weights_only=False) only on files you "
            "trust, or pass allow={'module.Name': obj} for the classes you trust"
        )
    if pickle_module is not None:
        # torch.load(weights_only=True) refuses it with this error and message
        raise RuntimeError(
            "Can not safely load weights when explicit pickle_module is specified"
        )
    if pickle_load_args:
        raise TypeError(
            "safeload.torch.load takes no pickle_load_args other than encoding, got "
            + ", ".join(sorted(pickle_load_args))
        )


def load(
    f: FileLike,
    map_location: str | torch.device | dict | Callable | None = None,
    pickle_module=None,
    *,
    weights_only: bool | None = True,
    mmap: bool | None = None,
    encoding: str = "utf-8",
    limits: Limits | None = None,
    policy: Policy | None = None,
    allow=None,
    records=None,
    **pickle_load_args,
) -> object:
    """``torch.load(f, map_location, weights_only=True)``, run by safeload.

    Returns what torch.load returns: ``torch.Tensor`` / ``nn.Parameter``
    (requires_grad kept) with torch's dtype, shape, stride and storage offset,
    one ``UntypedStorage`` per storage record (so tensors that shared one
    still do), ``OrderedDict._metadata``, ``torch.Size`` / ``dtype`` /
    ``device`` values, quantized tensors. Unlike torch, it also loads numpy
    scalars and arrays, every pickle protocol and the formats safeload reads.

    ``map_location`` is torch.load's: a str or ``torch.device`` moves every
    storage there, a dict maps saved location tags to new ones, a callable
    ``fn(storage, location)`` gets each storage on the CPU and its saved tag and
    returns a storage (or None for the default); without it storages go back
    where they were saved, which fails like torch.load when that device is
    absent. ``"meta"`` gives meta tensors. ``mmap=True`` maps the file once
    (private, copy-on-write) and builds the storages over the mapping.

    ``weights_only=False`` raises ValueError: safeload never runs pickled code.
    A ``pickle_module`` raises RuntimeError, as torch.load(weights_only=True)
    does. ``allow`` / ``records`` / ``policy`` / ``limits`` are
    ``safeload.load``'s. Raises ``SafeloadError`` (a ``pickle.UnpicklingError``)
    for any file it refuses; exceptions from ``map_location`` or from moving a
    storage to a device pass through unchanged.

    >>> import io, torch, safeload.torch as st
    >>> buf = io.BytesIO(); torch.save({"w": torch.ones(2)}, buf)
    >>> st.load(io.BytesIO(buf.getvalue()), map_location="cpu")
    {'w': tensor([1., 1.])}
    """
    _refuse_unpickling_options(weights_only, pickle_module, pickle_load_args)
    restore_location(map_location)  # a TypeError for a bad map_location, before any I/O

    def make_builder(ckpt: Checkpoint) -> TorchBuilder:
        return TorchBuilder(ckpt.storage, byteorder=ckpt.byteorder, map_location=map_location,
                            file=ckpt.source.name)

    extra = {} if records is None else {"records": records}
    return load_checkpoint(f, make_builder, mmap=bool(mmap), writable_map=bool(mmap),
                           encoding=encoding, limits=limits, policy=policy, allow=allow,
                           **extra)
