"""The tensor element types torch writes, as data.

One table: torch dtype name -> (element size, numpy dtype spelling). The numpy
spelling is a numpy type code, or ``ml_dtypes.<name>`` for the types numpy does
not have (bfloat16, float8). Quantized types map to their integer storage type.
The aliases torch accepts (``torch.float``, ``torch.half``...) are listed too, since
a pickle may name a dtype by either spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DTYPES",
    "STORAGE_TYPES",
    "DType",
    "numpy_dtype",
]


@dataclass(frozen=True)
class DType:
    """A torch element type, by name. Inert: it never touches torch."""

    name: str  # canonical torch name, e.g. "float32"
    itemsize: int
    numpy_name: str  # "<f4", "ml_dtypes.bfloat16", ...
    is_quantized: bool = False

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    @property
    def numpy(self) -> np.dtype:
        return numpy_dtype(self.numpy_name)


_TABLE = [
    # name, itemsize, numpy spelling, aliases
    ("float32", 4, "<f4", ("float",)),
    ("float64", 8, "<f8", ("double",)),
    ("float16", 2, "<f2", ("half",)),
    ("bfloat16", 2, "ml_dtypes.bfloat16", ()),
    ("float8_e4m3fn", 1, "ml_dtypes.float8_e4m3fn", ()),
    ("float8_e5m2", 1, "ml_dtypes.float8_e5m2", ()),
    ("float8_e4m3fnuz", 1, "ml_dtypes.float8_e4m3fnuz", ()),
    ("float8_e5m2fnuz", 1, "ml_dtypes.float8_e5m2fnuz", ()),
    ("int64", 8, "<i8", ("long",)),
    ("int32", 4, "<i4", ("int",)),
    ("int16", 2, "<i2", ("short",)),
    ("int8", 1, "i1", ()),
    ("uint8", 1, "u1", ()),
    ("uint16", 2, "<u2", ()),
    ("uint32", 4, "<u4", ()),
    ("uint64", 8, "<u8", ()),
    ("bool", 1, "?", ()),
    ("complex64", 8, "<c8", ("cfloat",)),
    ("complex128", 16, "<c16", ("cdouble",)),
    # complex32 has no numpy type: its elements are two float16s.
    ("complex32", 4, "<f2,<f2", ("chalf",)),
]
_QUANTIZED = [
    ("qint8", 1, "i1"),
    ("quint8", 1, "u1"),
    ("qint32", 4, "<i4"),
    ("quint4x2", 1, "u1"),
    ("quint2x4", 1, "u1"),
]

#: torch dtype name (and alias) -> DType
DTYPES: dict[str, DType] = {}
for _name, _size, _np, _aliases in _TABLE:
    _dt = DType(_name, _size, _np)
    DTYPES[_name] = _dt
    for _alias in _aliases:
        DTYPES[_alias] = _dt
for _name, _size, _np in _QUANTIZED:
    DTYPES[_name] = DType(_name, _size, _np, is_quantized=True)

#: legacy typed storage class name (``torch.FloatStorage``) -> DType.
#: ``UntypedStorage`` holds raw bytes; the tensor record names the real dtype.
STORAGE_TYPES: dict[str, DType] = {
    "FloatStorage": DTYPES["float32"],
    "DoubleStorage": DTYPES["float64"],
    "HalfStorage": DTYPES["float16"],
    "BFloat16Storage": DTYPES["bfloat16"],
    "LongStorage": DTYPES["int64"],
    "IntStorage": DTYPES["int32"],
    "ShortStorage": DTYPES["int16"],
    "CharStorage": DTYPES["int8"],
    "ByteStorage": DTYPES["uint8"],
    "BoolStorage": DTYPES["bool"],
    "ComplexFloatStorage": DTYPES["complex64"],
    "ComplexDoubleStorage": DTYPES["complex128"],
    "QInt8Storage": DTYPES["qint8"],
    "QUInt8Storage": DTYPES["quint8"],
    "QInt32Storage": DTYPES["qint32"],
    "QUInt4x2Storage": DTYPES["quint4x2"],
    "QUInt2x4Storage": DTYPES["quint2x4"],
    "UntypedStorage": DTYPES["uint8"],
}


@cache
def numpy_dtype(spelling: str) -> np.dtype:
    """numpy dtype for a table spelling; imports ml_dtypes only when needed."""
    # numpy too: importing it is most of `import safeload`'s time, and the
    # scanner and the table itself never need it.
    import numpy as np

    if spelling.startswith("ml_dtypes."):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, spelling.removeprefix("ml_dtypes.")))
    if "," in spelling:
        return np.dtype([("real", "<f2"), ("imag", "<f2")])
    return np.dtype(spelling)
