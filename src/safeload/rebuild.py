"""The rebuild stage: storage records to bytes, tensor records to views.

Strategy: the VM hands every validated record to a ``Builder``. ``Builder``
itself is inert (it returns the records: the scanner and lazy open use it).
``HostBuilder`` is the numpy backend's: it fetches each storage record once
(cached by key, so tensors that shared a storage share memory), checks that the
declared element count matches the record's bytes, byteswaps big-endian files,
routes the storage through ``map_location`` with torch.load's rules, and makes
each tensor a numpy view after checking that shape, strides and offset stay
inside the storage. The torch backend subclasses it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .dtypes import DTYPES, DType
from .errors import CallerError, FormatError, LimitError
from .records import (
    Device,
    QScheme,
    QuantizedTensor,
    Size,
    StorageRef,
    StorageView,
    TensorRecord,
)

__all__ = ["Builder", "HostBuilder", "Storage", "required_elements", "restore_location"]


class _LazyNumpy:
    """``np`` until numpy is first used: then the module itself replaces it.

    Importing numpy is most of ``import safeload``'s time, and a scan never
    builds an array; the first attribute read imports numpy and rebinds the
    global, so later reads cost what a plain module global does."""

    def __getattr__(self, name: str):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _LazyNumpy()


class Builder:
    """Keeps records as they are (analysis mode)."""

    def storage(self, ref: StorageRef) -> object:
        return ref

    def tensor(self, rec: TensorRecord) -> object:
        return rec

    def bare_storage(self, ref: StorageRef, value: object,
                     view: tuple[int, int] | None) -> object:
        """A storage the file saved by itself (``torch.save(storage)``, or next
        to tensors), not through a tensor. ``value`` is what ``storage(ref)``
        returned; ``view`` is ``(offset, numel)`` for a legacy storage view."""
        return ref if view is None else StorageView(ref, *view)

    def parameter(self, data, requires_grad: bool) -> object:
        if not isinstance(data, TensorRecord):
            raise FormatError(f"Parameter data must be a tensor, got {type(data).__name__}")
        data.is_parameter = True
        data.requires_grad = requires_grad
        return data

    def dtype(self, dt: DType) -> object:
        return dt

    def as_dtype(self, value) -> DType | None:
        return value if isinstance(value, DType) else None

    def size(self, dims: Size) -> object:
        return dims

    def device(self, dev: Device) -> object:
        return dev

    # -- quantized tensors ------------------------------------------------------------

    def qscheme(self, scheme: QScheme) -> object:
        return scheme

    def as_qscheme(self, value) -> QScheme | None:
        return value if isinstance(value, QScheme) else None

    def tensor_shape(self, value) -> tuple[int, ...] | None:
        """Shape of a (non-quantized) tensor this builder made, else None: lets
        the allowlist check per-channel scales against the quantized tensor."""
        return value.shape if isinstance(value, TensorRecord) else None

    def qtensor(self, rec: TensorRecord, scheme: str, *, scale: float | None = None,
                zero_point: int | None = None, scales=None, zero_points=None,
                axis: int | None = None) -> object:
        """A quantized tensor (``_rebuild_qtensor``), its parameters validated
        by the allowlist against ``rec.shape``. Inert: a record over ``rec``."""
        return QuantizedTensor(rec, rec.dtype, scheme, scale=scale, zero_point=zero_point,
                               scales=scales, zero_points=zero_points, axis=axis)


class Storage:
    """A storage in host memory: what a ``map_location`` callable receives.

    Mirrors the parts of ``torch.UntypedStorage`` such callables use:
    ``cpu()``, ``cuda(index)``, ``to(device)``, ``device``, ``nbytes()``,
    ``size()``. With the numpy backend data never leaves host memory; moving a
    storage only changes its location tag.
    """

    __slots__ = ("data", "dtype", "location")

    def __init__(self, data: np.ndarray, dtype: DType, location: str) -> None:
        self.data = data  # 1-d uint8 array over the record's bytes
        self.dtype = dtype
        self.location = location

    def nbytes(self) -> int:
        return self.data.nbytes

    def size(self) -> int:
        return self.data.nbytes // self.dtype.itemsize

    @property
    def device(self) -> Device:
        kind, _, index = self.location.partition(":")
        return Device(kind, int(index) if index else None)

    def to(self, device) -> Storage:
        return Storage(self.data, self.dtype, str(device))

    def cpu(self) -> Storage:
        return self.to("cpu")

    def cuda(self, device=None, non_blocking: bool = False) -> Storage:
        if device is None:
            return self.to("cuda:0")
        if isinstance(device, int):
            return self.to(f"cuda:{device}")
        return self.to(device)

    def numpy(self) -> np.ndarray:
        return self.data.view(self.dtype.numpy)

    def __repr__(self) -> str:
        return f"<safeload.Storage {self.dtype.name}[{self.size()}] on {self.location}>"


def _device_text(value) -> str | None:
    """str of a device-like value (str, bytes, Device, torch.device), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, Device) or (
        type(value).__name__ == "device" and hasattr(value, "type") and not callable(value)
    ):
        return str(value)
    return None


def restore_location(map_location) -> Callable:
    """torch.load's map_location rules, as ``(storage, tag, default) -> storage``.

    ``default(storage, tag)`` moves a storage to a tag (the backend's
    ``default_restore_location``).
    """
    if map_location is None:
        return lambda storage, tag, default: default(storage, tag)
    text = _device_text(map_location)
    if text is not None:
        return lambda storage, tag, default: default(storage, text)
    if isinstance(map_location, dict):
        def by_dict(storage, tag, default):
            target = map_location.get(tag, tag)
            return default(storage, _device_text(target) or target)

        return by_dict
    if callable(map_location):
        def by_callable(storage, tag, default):
            result = map_location(storage, tag)
            return default(storage, tag) if result is None else result

        return by_callable
    raise TypeError(
        "map_location must be None, a str, a device, a dict or a callable, "
        f"got {type(map_location).__name__}"
    )


def required_elements(offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Elements a strided view needs from its storage (torch's rule: 0 when
    the view is empty, else one past its last element)."""
    last = offset
    for size, step in zip(shape, stride, strict=True):
        if size == 0:
            return 0
        last += (size - 1) * step
    return last + 1


_INT64_MAX = 2**63 - 1


def check_same_storage(first: StorageRef, ref: StorageRef) -> None:
    """A storage key referenced twice must name the same bytes as the same dtype."""
    if first.dtype.itemsize * first.numel != ref.dtype.itemsize * ref.numel or \
            first.dtype.name != ref.dtype.name:
        raise FormatError(
            f"storage '{ref.key}' is referenced as {ref.dtype.name}[{ref.numel}] "
            f"and as {first.dtype.name}[{first.numel}]"
        )


def raise_size_mismatch(ref: StorageRef, size: int, file: str | None) -> None:
    raise FormatError(
        f"storage '{ref.key}' declares {ref.numel} elements of {ref.dtype.name} "
        f"({ref.nbytes} bytes), its record holds {size} bytes",
        file=file,
    )


class HostBuilder(Builder):
    """numpy arrays over the container's bytes.

    ``fetch(key)`` returns the record's bytes (a bounded memoryview);
    ``byteorder`` is the file's; ``map_location`` follows torch.load.
    """

    def __init__(self, fetch: Callable[[str], memoryview], *, byteorder: str = "little",
                 map_location=None, file: str | None = None) -> None:
        self.fetch = fetch
        self.byteorder = byteorder
        self.restore = restore_location(map_location)
        # None: ``restore`` would only call default_restore(storage, tag); skip that layer
        self.restore_as_saved = map_location is None
        self.file = file
        self.loaded: dict[str, tuple[StorageRef, object]] = {}

    # -- storages ------------------------------------------------------------------

    def storage(self, ref: StorageRef) -> object:
        key = ref.key
        seen = self.loaded.get(key)
        if seen is not None:
            first, value = seen
            check_same_storage(first, ref)
            return value
        raw = self.fetch(key)
        if len(raw) != ref.numel * ref.dtype.itemsize:  # ref.nbytes, without the property
            raise_size_mismatch(ref, len(raw), self.file)
        data = np.frombuffer(raw, np.uint8)
        if self.byteorder != sys.byteorder:
            data = _swapped(data, ref.dtype)
        storage = self.make_storage(data, ref)
        try:
            if self.restore_as_saved:
                value = self.default_restore(storage, ref.location)
            else:
                value = self.restore(storage, ref.location, self.default_restore)
        except Exception as exc:  # the caller's map_location or device: not the file's
            raise CallerError(exc) from exc
        self.loaded[ref.key] = (ref, value)
        return value

    def make_storage(self, data: np.ndarray, ref: StorageRef) -> object:
        return Storage(data, ref.dtype, ref.location)

    def default_restore(self, storage, location: str):
        if not isinstance(storage, Storage):
            raise TypeError(f"map_location returned {type(storage).__name__}, not a Storage")
        if storage.location == location:  # already there: as is, as torch does
            return storage
        return storage.to(location)

    # -- tensors -------------------------------------------------------------------

    def check_extent(self, rec: TensorRecord, storage_nbytes: int) -> None:
        itemsize = rec.dtype.itemsize
        shape, stride = rec.shape, rec.stride
        if len(shape) != len(stride):  # the handlers refuse this; zip would cut short
            raise FormatError(f"tensor size has {len(shape)} dimensions but stride has "
                              f"{len(stride)}", file=self.file)
        # required_elements and rec.numel in one pass (once per tensor); zip
        # without strict=, whose keyword costs 0.15 us a call: lengths tested above
        numel, last, span = 1, rec.offset, 1
        for size, step in zip(shape, stride):  # noqa: B905
            numel *= size
            span *= size or 1  # numpy refuses an empty array whose other sizes overflow
            last += (size - 1) * step
        need = last + 1 if numel else 0
        if span * itemsize > _INT64_MAX or need * itemsize > _INT64_MAX:
            raise LimitError(f"tensor of shape {rec.shape} is too large to address")
        if need * itemsize > storage_nbytes:
            raise FormatError(
                f"tensor of shape {rec.shape}, stride {rec.stride} at offset {rec.offset} "
                f"needs {need * itemsize} bytes of storage '{rec.storage_ref.key}', "
                f"which holds {storage_nbytes}",
                file=self.file,
            )

    def tensor(self, rec: TensorRecord) -> object:
        storage = rec.storage
        if not isinstance(storage, Storage):
            raise TypeError(f"map_location returned {type(storage).__name__}, not a Storage")
        data = storage.data
        self.check_extent(rec, data.nbytes)
        view = host_view(data, rec)
        if rec.metadata:
            # torch's lazy conjugate / negative bits: numpy has no such views,
            # so the values are materialized (the copy no longer aliases).
            if rec.metadata.get("conj"):
                view = np.conj(view)
            if rec.metadata.get("neg"):
                view = np.negative(view)
        return view

    def bare_storage(self, ref: StorageRef, value: object,
                     view: tuple[int, int] | None) -> object:
        """A 1-d array of the storage's dtype (uint8 for an untyped storage)
        over the storage's memory, which tensors on it share."""
        if not isinstance(value, Storage):
            raise CallerError(TypeError(
                f"map_location returned {type(value).__name__}, not a Storage"))
        array = value.data.view(ref.dtype.numpy)
        if view is not None:
            offset, numel = view
            array = array[offset:offset + numel]
        return array

    def parameter(self, data, requires_grad: bool) -> object:
        if not isinstance(data, np.ndarray):
            raise FormatError(f"Parameter data must be a tensor, got {type(data).__name__}")
        return data

    def check_qextent(self, rec: TensorRecord, storage_nbytes: int) -> None:
        """``check_extent`` for quantized tensors: sub-byte types (quint4x2,
        quint2x4) pack several elements per byte, and the allowlist only lets
        them through contiguous and at offset 0."""
        per_byte = SUB_BYTE_ELEMENTS.get(rec.dtype.name, 1)
        if per_byte == 1:
            return self.check_extent(rec, storage_nbytes)
        need = -(-rec.numel // per_byte)
        if need > storage_nbytes:
            raise FormatError(
                f"{rec.dtype.name} tensor of shape {rec.shape} needs {need} bytes of storage "
                f"'{rec.storage_ref.key}', which holds {storage_nbytes}",
                file=self.file,
            )

    def tensor_shape(self, value) -> tuple[int, ...] | None:
        return value.shape if isinstance(value, np.ndarray) else None

    def qtensor(self, rec: TensorRecord, scheme: str, *, scale: float | None = None,
                zero_point: int | None = None, scales=None, zero_points=None,
                axis: int | None = None) -> QuantizedTensor:
        storage = rec.storage
        if not isinstance(storage, Storage):
            raise TypeError(f"map_location returned {type(storage).__name__}, not a Storage")
        self.check_qextent(rec, storage.data.nbytes)
        per_byte = SUB_BYTE_ELEMENTS.get(rec.dtype.name, 1)
        if per_byte == 1:
            int_repr = host_view(storage.data, rec)
        else:  # packed: torch's int_repr() is the bytes, flat
            int_repr = storage.data[: -(-rec.numel // per_byte)]
        if scheme == "per_channel_affine" and isinstance(zero_points, np.ndarray) and \
                zero_points.dtype.kind == "f":
            # torch writes float-qparams tensors under per_channel_affine; the
            # float zero points are what make torch rebuild them as float_qparams
            scheme = "per_channel_affine_float_qparams"
        if scheme == "per_channel_affine_float_qparams":
            want = (np.float32, np.float32)
        else:
            want = (np.float64, np.int64)
        if isinstance(scales, list):
            scales = np.array(scales, dtype=want[0])
        if isinstance(zero_points, list):
            zero_points = np.array(zero_points, dtype=want[1])
        return QuantizedTensor(int_repr, rec.dtype, scheme, scale=scale, zero_point=zero_point,
                               scales=scales, zero_points=zero_points, axis=axis)


def host_view(data: np.ndarray, rec: TensorRecord) -> np.ndarray:
    """numpy view of ``rec`` over a uint8 buffer whose extent was checked."""
    dt, shape = rec.dtype, rec.shape  # once per tensor: each attribute read once
    dtype = dt.numpy
    itemsize = dt.itemsize
    strides = tuple([s * itemsize for s in rec.stride])  # a list is built faster than a genexpr
    if 0 in shape:  # numel == 0: keep torch's strides; the offset may lie past the end
        return np.ndarray(shape, dtype=dtype, buffer=data[:0], strides=strides)
    # positional (shape, dtype, buffer, offset, strides): 0.35 us faster than keywords
    return np.ndarray(shape, dtype, data, rec.offset * itemsize, strides)


def _swapped(data: np.ndarray, dtype: DType) -> np.ndarray:
    """A native-order copy of a big-endian storage."""
    unit = dtype.itemsize // 2 if dtype.name.startswith("complex") else dtype.itemsize
    if unit == 1:
        return data
    if len(data) % unit:
        raise FormatError(f"storage of {len(data)} bytes is not whole {dtype.name} elements")
    return data.view(f">u{unit}").astype(f"<u{unit}").view(np.uint8)


UINT8 = DTYPES["uint8"]

#: quantized types that pack several elements into one byte: elements per byte
SUB_BYTE_ELEMENTS = {"quint4x2": 2, "quint2x4": 4}
