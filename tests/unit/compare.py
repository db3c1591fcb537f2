"""Is what safeload returned the same checkpoint that ``torch.load`` returned?

Strategy: walk the oracle (torch's result) and safeload's result side by side and
fail with the path of the first difference. Containers must have the same type
(dict is not OrderedDict, tuple is not list), keys in the same order, and the same
object identities (pickle's memo). Floats compare bit for bit. A torch tensor must
come back as an ndarray of the matching dtype with the same shape, torch's strides
in bytes and the same element bytes. Aliasing is checked once the walk is done:
two arrays share memory exactly when the two tensors shared it in torch, and arrays
of one storage sit at the same byte distance from each other as the tensors do.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import torch

__all__ = ["NUMPY_DTYPES", "assert_same_checkpoint"]

#: torch dtype -> the numpy dtype safeload's numpy backend must use for it
NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.bfloat16: np.dtype(ml_dtypes.bfloat16),
    torch.float8_e4m3fn: np.dtype(ml_dtypes.float8_e4m3fn),
    torch.float8_e5m2: np.dtype(ml_dtypes.float8_e5m2),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.uint8: np.dtype(np.uint8),
    torch.uint16: np.dtype(np.uint16),
    torch.uint32: np.dtype(np.uint32),
    torch.uint64: np.dtype(np.uint64),
    torch.bool: np.dtype(np.bool_),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}

# Types whose identity pickle preserves through its memo and a caller can observe
# (mutating one alias changes the other).
_IDENTITY_TYPES = (list, dict, set, bytearray)
_SCALAR_TYPES = (type(None), bool, int, str, bytes, bytearray)


def assert_same_checkpoint(expected: object, got: object, *, readonly: bool = False) -> None:
    """Fail unless ``got`` (safeload) is the same checkpoint as ``expected`` (torch).

    With ``readonly`` every array that stands for a tensor must be read-only (mmap).
    """
    walker = _Walker(readonly=readonly)
    walker.compare(expected, got, "obj")
    walker.check_aliasing()


@dataclass
class _TensorPair:
    path: str
    tensor: torch.Tensor
    array: np.ndarray


def _fail(path: str, message: str) -> None:
    raise AssertionError(f"at {path}: {message}")


def _float_bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """Element bytes of ``t`` in C order, whatever its dtype and layout."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _array_address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _byte_extent(address: int, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int):
    low = high = address
    for n, s in zip(shape, strides, strict=True):
        if s >= 0:
            high += (n - 1) * s
        else:
            low += (n - 1) * s
    return low, high + itemsize


def _torch_byte_view(t: torch.Tensor) -> np.ndarray:
    """A numpy uint8 view of exactly the bytes ``t`` covers in its storage, so that
    ``np.shares_memory`` can tell whether two tensors really overlap."""
    storage = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy()
    itemsize = t.element_size()
    return np.lib.stride_tricks.as_strided(
        storage[t.storage_offset() * itemsize :],
        shape=(*t.shape, itemsize),
        strides=(*(s * itemsize for s in t.stride()), 1),
    )


class _Walker:
    def __init__(self, *, readonly: bool) -> None:
        self.readonly = readonly
        self.pairs: list[_TensorPair] = []
        self.expected_seen: dict[int, object] = {}
        self.got_seen: dict[int, object] = {}
        self.keepalive: list[object] = []

    # --- the walk ---------------------------------------------------------------------

    def compare(self, e: object, g: object, path: str) -> None:
        if isinstance(e, _IDENTITY_TYPES):
            if id(e) in self.expected_seen:
                if self.expected_seen[id(e)] is not g:
                    _fail(
                        path,
                        "torch returned one object here and earlier (pickle memo); "
                        f"safeload returned a different {type(g).__name__}",
                    )
                return
            if id(g) in self.got_seen:
                _fail(path, f"safeload returned an object seen earlier, torch a new {type(e)}")
            self.expected_seen[id(e)] = g
            self.got_seen[id(g)] = e
            self.keepalive += [e, g]

        if isinstance(e, torch.Tensor):
            self.compare_tensor(e, g, path)
        elif isinstance(e, np.ndarray):
            self.compare_ndarray(e, g, path)
        elif isinstance(e, np.generic):
            self.compare_numpy_scalar(e, g, path)
        elif isinstance(e, torch.Size):
            from safeload.records import Size

            if not isinstance(g, Size):
                _fail(path, f"torch.Size should load as safeload.records.Size, got {type(g)}")
            if tuple(g) != tuple(e) or not all(type(x) is int for x in g):
                _fail(path, f"Size {tuple(e)} loaded as {g!r}")
        elif isinstance(e, torch.dtype):
            from safeload.dtypes import DType

            if not isinstance(g, DType):
                _fail(path, f"torch.dtype should load as safeload.dtypes.DType, got {type(g)}")
            if g.name != str(e).removeprefix("torch."):
                _fail(path, f"{e} loaded as DType {g.name!r}")
        elif isinstance(e, torch.device):
            from safeload.records import Device

            if not isinstance(g, Device):
                _fail(path, f"torch.device should load as safeload.records.Device, got {type(g)}")
            if str(g) != str(e):
                _fail(path, f"device {str(e)!r} loaded as {str(g)!r}")
        elif isinstance(e, dict):
            self.compare_dict(e, g, path)
        elif isinstance(e, (list, tuple)):
            self.compare_sequence(e, g, path)
        elif isinstance(e, (set, frozenset)):
            self.compare_set(e, g, path)
        elif isinstance(e, (float, complex)):
            self.compare_float(e, g, path)
        elif isinstance(e, _SCALAR_TYPES):
            if type(g) is not type(e) or g != e:
                _fail(path, f"expected {type(e).__name__} {e!r}, got {type(g).__name__} {g!r}")
        else:
            _fail(path, f"the oracle holds a {type(e)}; teach compare.py about it")

    def compare_dict(self, e: dict, g: object, path: str) -> None:
        if type(g) is not type(e):
            _fail(path, f"expected {type(e).__name__}, got {type(g).__name__}")
        assert isinstance(g, dict)
        e_keys, g_keys = list(e), list(g)
        if len(e_keys) != len(g_keys):
            _fail(
                path,
                f"{len(e_keys)} keys expected, got {len(g_keys)}: "
                f"missing {set(e_keys) - set(g_keys)!r}, extra {set(g_keys) - set(e_keys)!r}",
            )
        for i, (ek, gk) in enumerate(zip(e_keys, g_keys, strict=True)):
            self.compare(ek, gk, f"{path}.keys()[{i}]")
        for key in e_keys:
            self.compare(e[key], g[key], f"{path}[{key!r}]")
        if isinstance(e, collections.OrderedDict):
            e_meta = getattr(e, "_metadata", None)
            g_meta = getattr(g, "_metadata", None)
            if (e_meta is None) != (g_meta is None):
                _fail(path, f"_metadata expected {e_meta is not None}, got {g_meta is not None}")
            if e_meta is not None:
                self.compare(e_meta, g_meta, f"{path}._metadata")

    def compare_sequence(self, e: list | tuple, g: object, path: str) -> None:
        if type(g) is not type(e):
            _fail(path, f"expected {type(e).__name__}, got {type(g).__name__}")
        assert isinstance(g, (list, tuple))
        if len(g) != len(e):
            _fail(path, f"expected {len(e)} items, got {len(g)}")
        for i, (ei, gi) in enumerate(zip(e, g, strict=True)):
            self.compare(ei, gi, f"{path}[{i}]")

    def compare_set(self, e: set | frozenset, g: object, path: str) -> None:
        if type(g) is not type(e):
            _fail(path, f"expected {type(e).__name__}, got {type(g).__name__}")
        assert isinstance(g, (set, frozenset))
        typed_e = {(type(x), x) for x in e}
        typed_g = {(type(x), x) for x in g}
        if typed_e != typed_g:
            _fail(path, f"set items differ: expected {e!r}, got {g!r}")

    def compare_float(self, e: float | complex, g: object, path: str) -> None:
        if type(g) is not type(e):
            _fail(path, f"expected {type(e).__name__} {e!r}, got {type(g).__name__} {g!r}")
        if isinstance(e, complex):
            assert isinstance(g, complex)
            same = _float_bits(e.real) + _float_bits(e.imag) == _float_bits(g.real) + _float_bits(
                g.imag
            )
        else:
            assert isinstance(g, float)
            same = _float_bits(e) == _float_bits(g)
        if not same:
            _fail(path, f"expected {e!r}, got {g!r} (compared bit for bit)")

    def compare_numpy_scalar(self, e: np.generic, g: object, path: str) -> None:
        if type(g) is not type(e):
            _fail(path, f"expected numpy scalar {type(e).__name__}, got {type(g).__name__}")
        assert isinstance(g, np.generic)
        if g.dtype != e.dtype or g.tobytes() != e.tobytes():
            _fail(path, f"expected {e!r} ({e.dtype}), got {g!r} ({g.dtype})")

    def compare_ndarray(self, e: np.ndarray, g: object, path: str) -> None:
        if type(g) is not np.ndarray:
            _fail(path, f"expected a numpy array, got {type(g)}")
        assert isinstance(g, np.ndarray)
        if g.dtype != e.dtype:
            _fail(path, f"dtype {e.dtype} expected, got {g.dtype}")
        if g.shape != e.shape:
            _fail(path, f"shape {e.shape} expected, got {g.shape}")
        if e.size and g.strides != e.strides:
            _fail(path, f"strides {e.strides} expected, got {g.strides}")
        if g.tobytes() != e.tobytes():
            _fail(path, f"values differ: expected {e!r}, got {g!r}")

    def compare_tensor(self, e: torch.Tensor, g: object, path: str) -> None:
        if e.is_quantized:
            self.compare_quantized(e, g, path)
            return
        if type(g) is not np.ndarray:
            _fail(path, f"a {type(e).__name__} should load as numpy.ndarray, got {type(g)}")
        assert isinstance(g, np.ndarray)
        want_dtype = NUMPY_DTYPES[e.dtype]
        if g.dtype != want_dtype:
            _fail(path, f"{e.dtype} should load as numpy {want_dtype}, got {g.dtype}")
        if g.shape != tuple(e.shape):
            _fail(path, f"shape {tuple(e.shape)} expected, got {g.shape}")
        want_strides = tuple(s * e.element_size() for s in e.stride())
        if g.strides != want_strides:
            _fail(
                path,
                f"byte strides {want_strides} (torch stride {tuple(e.stride())}) "
                f"expected, got {g.strides}",
            )
        if g.tobytes() != _tensor_bytes(e):
            _fail(path, f"element bytes differ: expected {e!r}, got {g!r}")
        if self.readonly and g.flags.writeable:
            _fail(path, "an array over a memory-mapped file must be read-only")
        self.pairs.append(_TensorPair(path, e, g))

    def compare_quantized(self, e: torch.Tensor, g: object, path: str) -> None:
        # The numpy backend has no quantized types: it returns the stored integers
        # and the quantization parameters (safeload.records.QuantizedTensor).
        int_repr = getattr(g, "int_repr", None)
        if not isinstance(int_repr, np.ndarray):
            _fail(path, f"a quantized tensor should load with an int_repr array, got {g!r}")
        assert isinstance(int_repr, np.ndarray)
        want = e.int_repr()
        if int_repr.shape != tuple(want.shape) or int_repr.dtype != NUMPY_DTYPES[want.dtype]:
            _fail(
                path,
                f"int_repr {want.dtype}{tuple(want.shape)} expected, "
                f"got {int_repr.dtype}{int_repr.shape}",
            )
        if int_repr.tobytes() != _tensor_bytes(want):
            _fail(path, "int_repr values differ")
        scheme = str(e.qscheme()).removeprefix("torch.")
        if getattr(g, "scheme", None) != scheme:
            _fail(path, f"qscheme {scheme!r} expected, got {getattr(g, 'scheme', None)!r}")
        if scheme in ("per_tensor_affine", "per_tensor_symmetric"):
            if g.scale != e.q_scale() or g.zero_point != e.q_zero_point():  # type: ignore[attr-defined]
                _fail(
                    path,
                    f"scale/zero_point {e.q_scale()}/{e.q_zero_point()} expected, "
                    f"got {g.scale}/{g.zero_point}",
                )  # type: ignore[attr-defined]

    # --- aliasing ---------------------------------------------------------------------

    def check_aliasing(self) -> None:
        pairs = [p for p in self.pairs if p.tensor.numel() > 0]
        by_storage: dict[int, list[_TensorPair]] = collections.defaultdict(list)
        for p in pairs:
            by_storage[p.tensor.untyped_storage().data_ptr()].append(p)

        # Within one torch storage: same relative layout, overlap exactly as in torch.
        for group in by_storage.values():
            for i, a in enumerate(group):
                for b in group[i + 1 :]:
                    torch_gap = a.tensor.data_ptr() - b.tensor.data_ptr()
                    numpy_gap = _array_address(a.array) - _array_address(b.array)
                    if torch_gap != numpy_gap:
                        _fail(
                            f"{a.path} / {b.path}",
                            f"share one storage in torch ({torch_gap} bytes apart); "
                            f"safeload's arrays are {numpy_gap} bytes apart",
                        )
                    overlap = np.shares_memory(
                        _torch_byte_view(a.tensor), _torch_byte_view(b.tensor)
                    )
                    if np.shares_memory(a.array, b.array) != overlap:
                        _fail(
                            f"{a.path} / {b.path}", f"torch: overlap={overlap}; safeload disagrees"
                        )

        # Across storages: no memory in common. Sweep by extent so that 3 000
        # tensors do not make 4.5 million shares_memory calls.
        spans = []
        for p in pairs:
            low, high = _byte_extent(
                _array_address(p.array), p.array.shape, p.array.strides, p.array.itemsize
            )
            spans.append((low, high, p))
        spans.sort(key=lambda s: s[0])
        active: list[tuple[int, int, _TensorPair]] = []
        for low, high, p in spans:
            active = [s for s in active if s[1] > low]
            for _, _, q in active:
                same_storage = (
                    p.tensor.untyped_storage().data_ptr() == q.tensor.untyped_storage().data_ptr()
                )
                if not same_storage and np.shares_memory(p.array, q.array):
                    _fail(
                        f"{q.path} / {p.path}",
                        "separate storages in torch, but safeload's arrays share memory",
                    )
            active.append((low, high, p))
