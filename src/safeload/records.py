"""Inert values the unpickler hands to the rebuild stage.

Strategy: allowlist handlers never build tensors. They validate the *types* of
their arguments and return one of these records; a ``Builder`` (rebuild stage or
backend) turns records into arrays or tensors, or keeps them as they are (the
scanner and lazy open). Records hold only data: no callables, no imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .dtypes import DType

__all__ = [
    "Device",
    "QuantizedTensor",
    "Size",
    "StorageRef",
    "StorageType",
    "TensorRecord",
]


@dataclass(frozen=True)
class StorageType:
    """What ``GLOBAL torch FloatStorage`` (or ``UntypedStorage``) stands for."""

    name: str
    dtype: DType

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclass(frozen=True)
class StorageRef:
    """A persistent id ``('storage', type, key, location, numel)``, validated."""

    key: str
    dtype: DType  # element type of the storage as saved (uint8 for untyped)
    location: str  # location tag as saved, e.g. "cpu", "cuda:1"
    numel: int  # elements of ``dtype``

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass
class TensorRecord:
    """Arguments of ``_rebuild_tensor*``, validated for type and sign.

    ``storage`` is whatever the builder returned for the StorageRef; ``offset``,
    ``shape`` and ``stride`` count elements of ``dtype``.
    """

    storage: object
    storage_ref: StorageRef
    dtype: DType
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool = False
    is_parameter: bool = False
    metadata: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass
class QuantizedTensor:
    """A quantized tensor for backends without quantized types (numpy).

    ``int_repr`` holds the stored integers; ``scheme`` is torch's qscheme name
    (``per_tensor_affine``, ``per_channel_affine``...).
    """

    int_repr: object
    dtype: DType
    scheme: str
    scale: float | None = None
    zero_point: int | None = None
    scales: object | None = None
    zero_points: object | None = None
    axis: int | None = None


class Size(tuple):
    """``torch.Size`` without torch: a tuple of ints that remembers its name."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"torch.Size({list(self)!r})"


@dataclass(frozen=True)
class Device:
    """``torch.device`` without torch."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        return f"device({str(self)!r})"
