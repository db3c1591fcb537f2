"""Checkpoints built with real torch, for differential tests against ``torch.load``.

Strategy: a case is ``(case_id, factory)``; the factory returns the object a user
would hand to ``torch.save``. Factories are lazy so that collecting the tests costs
nothing but the import of torch; each one seeds torch itself, so a case is the same
on every run. ``save`` writes a case with a given pickle protocol, always in the zip
format (the legacy formats have their own tests). No tests live here.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

__all__ = ["CASES", "CASE_IDS", "PROTOCOLS", "build", "save", "saved_with_location"]

#: pickle protocols torch.save is exercised with (zip format for all of them)
PROTOCOLS = (2, 3, 4, 5)


def save(obj: object, path_or_buf: str | os.PathLike[str] | BinaryIO, protocol: int) -> None:
    """``torch.save`` in the zip format with pickle protocol ``protocol``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol} is not one of {PROTOCOLS}")
    torch.save(obj, path_or_buf, pickle_protocol=protocol)


def saved_with_location(
    obj: object, path_or_buf: str | os.PathLike[str] | BinaryIO, protocol: int, location: str
) -> None:
    """``save``, but every storage record is tagged ``location`` (e.g. "cuda:1") as if
    the tensors had lived on that device. Lets a CPU-only machine write GPU checkpoints."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: location
    try:
        save(obj, path_or_buf, protocol)
    finally:
        torch.serialization.location_tag = original


# --- dtypes -------------------------------------------------------------------------

_FLOAT_SPECIALS = [0.0, -0.0, 1.0, -2.5, math.inf, -math.inf, math.nan, 1e-3, 65504.0, 3.0e38]


def _float_tensor(dtype: torch.dtype) -> torch.Tensor:
    values = torch.tensor(_FLOAT_SPECIALS, dtype=torch.float64)
    noise = torch.randn(20, dtype=torch.float64) * 10
    data = torch.cat([values, noise]).to(dtype)
    return data.reshape(6, 5)


def _float32_with_nan_payloads() -> torch.Tensor:
    # Quiet and signalling NaNs with payloads, a subnormal, and -0.0: bit patterns
    # a value-level comparison would not tell apart.
    bits = [0x7FC00001, 0x7FA00000, 0xFFC00123, 0x00000001, 0x80000000, 0x7F7FFFFF]
    as_int32 = torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits], dtype=torch.int32)
    return as_int32.view(torch.float32)


def _int_tensor(dtype: torch.dtype) -> torch.Tensor:
    info = torch.iinfo(dtype)
    values = [info.min, info.max, 0, 1, info.max // 3, info.min // 7 if info.min else 2]
    values += [int(v) for v in torch.randint(0, min(info.max, 2**31 - 1), (6,))]
    return torch.tensor(values, dtype=dtype).reshape(3, 4)


def _uint_tensor(bits: int) -> torch.Tensor:
    # torch.tensor() cannot spell the top half of uint32 / uint64 directly, so build
    # the bit patterns in the signed type of the same width and reinterpret them.
    signed = {16: torch.int16, 32: torch.int32, 64: torch.int64}[bits]
    unsigned = {16: torch.uint16, 32: torch.uint32, 64: torch.uint64}[bits]
    info = torch.iinfo(signed)
    values = [0, 1, -1, info.min, info.max, 12345, -2, 7]
    return torch.tensor(values, dtype=signed).view(unsigned).reshape(2, 4)


def _complex_tensor(dtype: torch.dtype) -> torch.Tensor:
    real = torch.tensor([0.0, -0.0, math.inf, math.nan, 1.5, -3.25], dtype=torch.float64)
    imag = torch.tensor([1.0, math.nan, -math.inf, 0.0, -0.0, 2.0], dtype=torch.float64)
    return torch.complex(real, imag).to(dtype).reshape(2, 3)


def _dtype_case(dtype: torch.dtype) -> Callable[[], object]:
    def factory() -> object:
        if dtype in (torch.complex64, torch.complex128):
            t = _complex_tensor(dtype)
        elif dtype == torch.bool:
            t = torch.rand(4, 5) > 0.5
        elif dtype in (torch.uint16, torch.uint32, torch.uint64):
            t = _uint_tensor(torch.iinfo(dtype).bits)
        elif dtype.is_floating_point:
            t = _float_tensor(dtype)
        else:
            t = _int_tensor(dtype)
        # A strided view of the same data too: the element type must survive
        # non-trivial strides and offsets, not only the contiguous case.
        return {"value": t, "view": t.t()[1:, ::2], "scalar": t.reshape(-1)[3]}

    return factory


_DTYPES = [
    torch.float16,
    torch.float32,
    torch.float64,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.bool,
    torch.complex64,
    torch.complex128,
]


# --- layouts ------------------------------------------------------------------------


def _views() -> object:
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    return {
        "base": base,
        "transpose": base.transpose(0, 2),
        "permute": base.permute(1, 2, 0),
        "slice_step": base[:, 1:, ::2],
        "row": base[1],
        "column": base[:, :, 3],
        "flipped_copy": base.flip(0),  # flip copies: its own storage
        "expand": torch.arange(3, dtype=torch.float64).expand(4, 3),
        "expand_inner": torch.tensor([[1.0], [2.0]]).expand(2, 5),
        "channels_last": torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last),
        "diagonal": torch.arange(16, dtype=torch.int32).reshape(4, 4).diagonal(),
        "as_strided_overlap": torch.arange(10, dtype=torch.int64).as_strided((4, 3), (2, 1)),
    }


def _scalars() -> object:
    base = torch.arange(12, dtype=torch.float32)
    return {
        "zero_d": torch.tensor(3.5),
        "zero_d_int": torch.tensor(-7, dtype=torch.int64),
        "zero_d_view_with_offset": base[5],
        "one_element": torch.tensor([42], dtype=torch.int16),
        "size_one_dims": torch.randn(1, 3, 1),
    }


def _empties() -> object:
    base = torch.arange(12, dtype=torch.float32)
    return {
        "empty_1d": torch.empty(0),
        "empty_3d": torch.empty(3, 0, 2, dtype=torch.float16),
        "empty_slice_of_storage": base[4:4],
        "empty_rows_of_matrix": base.reshape(3, 4)[1:1],
    }


def _rank8() -> object:
    t = torch.arange(2**8, dtype=torch.float32).reshape(2, 2, 2, 2, 2, 2, 2, 2)
    return {"rank8": t, "rank8_permuted": t.permute(7, 6, 5, 4, 3, 2, 1, 0)[:, 1]}


def _slice_of_big_storage() -> object:
    # Only a small window of a larger storage is saved; torch writes the whole storage.
    big = torch.arange(1000, dtype=torch.float64)
    return {"window": big[500:510], "strided_window": big[100:200:25]}


def _shared_storage() -> object:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    flat = base.view(-1)
    return {
        "base": base,
        "same_object_again": base,
        "reshaped": base.view(6, 4),
        "row": base[2],
        "transposed": base.t(),
        "overlapping_window": flat[3:9],
        "first_half": flat[:12],
        "second_half": flat[12:],  # same storage, no overlap with first_half
        "in_a_list": [flat[1:4], base[:, 0]],
        "other": torch.ones(3),
    }


def _parameters() -> object:
    trained = nn.Parameter(torch.randn(3, 4))
    frozen = nn.Parameter(torch.randn(2, dtype=torch.float64), requires_grad=False)
    return {
        "trained": trained,
        "frozen": frozen,
        "tensor_requires_grad": torch.randn(2, 2, requires_grad=True),
        "view_of_parameter_data": trained.data[1:],
    }


# --- models and optimizers ----------------------------------------------------------


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _cnn_state_dict() -> object:
    model = _SmallCNN()
    model(torch.randn(2, 1, 8, 8))  # updates BatchNorm running stats
    return model.state_dict()


def _optimizer_state(make: Callable[[list[nn.Parameter]], torch.optim.Optimizer]) -> object:
    def factory() -> object:
        model = _SmallCNN()
        optimizer = make(list(model.parameters()))
        loss = model(torch.randn(2, 1, 8, 8)).square().sum()
        loss.backward()
        optimizer.step()
        return optimizer.state_dict()

    return factory


def _training_checkpoint() -> object:
    model = _SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    return {
        "epoch": 3,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loss": 0.125,
        "best": torch.tensor(0.5),
    }


# --- plain Python values ------------------------------------------------------------


def _python_values() -> object:
    shared_list = [1, "two", 3.0]
    return {
        "none": None,
        "true": True,
        "false": False,
        "zero": 0,
        "small_ints": [1, -1, 255, 256, 65535, 65536, -129, 2**31 - 1, -(2**31), 2**31],
        "int64_edges": [2**63 - 1, -(2**63), 2**63, 2**64],
        "big_int": 2**100,
        "big_negative_int": -(2**70),
        "huge_int": 3**2000,  # more than 255 bytes: LONG4, not LONG1
        "floats": [1.5, -0.0, 0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308],
        "complex": complex(1.5, -2.0),
        "complex_special": complex(math.inf, -0.0),
        "str": "plain",
        "unicode": "héllo ☃ \U0001f600 \x00",
        "long_str": "x" * 300,
        "bytes": b"\x00\x01\xff raw",
        "long_bytes": bytes(range(256)) * 2,
        "empty_bytes": b"",
        "bytearray": bytearray(b"mutable\x00\xff"),
        "set": {1, 2, 3},
        "frozenset": frozenset({"a", "b"}),
        "empty_set": set(),
        "tuple": (1, "a", None),
        "empty_tuple": (),
        "singleton_tuple": (None,),
        "long_tuple": tuple(range(10)),
        "tuple_keys": {(1, "a"): "pair", (): "empty", (2, (3, 4)): "nested"},
        "int_keys": {1: "one", -5: "minus five", 2**40: "big"},
        "mixed_keys": {None: 0, True: 1, 2.5: 2, b"k": 3, "k": 4},
        "nested": {"a": [1, [2, [3, {"b": (4, [5])}]]], "c": {"d": {"e": {}}}},
        "empty_list": [],
        "empty_dict": {},
        "long_list": list(range(2500)),  # APPENDS comes in batches of 1000
        "big_dict": {f"k{i}": i for i in range(1200)},  # SETITEMS batches too
        "shared_a": shared_list,
        "shared_b": shared_list,  # memo: one object, referenced twice
        "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
    }


def _recursive_list() -> object:
    loop: list[object] = [1, 2]
    loop.append(loop)
    return {"loop": loop}


# --- numpy values inside a checkpoint -----------------------------------------------


def _numpy_values() -> object:
    return {
        "float64_scalar": np.float64(1.5),
        "int64_scalar": np.int64(-3),
        "bool_scalar": np.bool_(True),
        "float32_scalar": np.float32(-0.0),
        "int32_array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "float32_fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        "bool_array": np.array([True, False, True]),
        "zero_d_array": np.array(2.5),
        "empty_array": np.zeros((0, 3), dtype=np.uint8),
        "complex_array": np.array([1 + 2j, -0.0 - 1j], dtype=np.complex128),
        "next_to_a_tensor": torch.ones(2),
    }


def _numpy_big_endian() -> object:
    return {"big_endian": np.arange(4, dtype=">i4"), "big_endian_f8": np.array([1.5], ">f8")}


# --- scale and torch value types ----------------------------------------------------


def _many_tensors() -> object:
    return collections.OrderedDict(
        (f"layer{i // 10}.param{i % 10}", torch.full((2,), float(i))) for i in range(3000)
    )


def _torch_values() -> object:
    return {
        "size": torch.Size([2, 3]),
        "empty_size": torch.Size([]),
        "shape_of_tensor": torch.zeros(4, 1, 2).shape,
        "dtypes": [
            torch.float32,
            torch.float16,
            torch.bfloat16,
            torch.float8_e4m3fn,
            torch.int64,
            torch.uint16,
            torch.bool,
            torch.complex64,
        ],
        "cpu": torch.device("cpu"),
        "cuda1": torch.device("cuda", 1),
        "cuda": torch.device("cuda"),
        "meta": torch.device("meta"),
    }


# --- the list ---------------------------------------------------------------------

CASES: list[tuple[str, Callable[[], object]]] = [
    *((f"dtype-{str(dt).removeprefix('torch.')}", _dtype_case(dt)) for dt in _DTYPES),
    ("float32-nan-payloads", lambda: {"bits": _float32_with_nan_payloads()}),
    ("views", _views),
    ("scalars", _scalars),
    ("empties", _empties),
    ("rank8", _rank8),
    ("slice-of-big-storage", _slice_of_big_storage),
    ("shared-storage", _shared_storage),
    ("parameters", _parameters),
    ("cnn-state-dict", _cnn_state_dict),
    (
        "sgd-state-dict",
        _optimizer_state(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    ),
    ("adam-state-dict", _optimizer_state(lambda ps: torch.optim.Adam(ps, lr=1e-3))),
    ("training-checkpoint", _training_checkpoint),
    ("python-values", _python_values),
    ("recursive-list", _recursive_list),
    ("numpy-values", _numpy_values),
    ("numpy-big-endian", _numpy_big_endian),
    ("3000-tensors", _many_tensors),
    ("torch-values", _torch_values),
    ("bare-tensor", lambda: torch.arange(5, dtype=torch.int16)),
    ("bare-list-of-tensors", lambda: [torch.zeros(2), torch.ones(1, dtype=torch.bool)]),
]

CASE_IDS = [case_id for case_id, _ in CASES]
_FACTORIES = dict(CASES)


def build(case_id: str) -> object:
    """The object of case ``case_id``, built deterministically."""
    torch.manual_seed(0)
    return _FACTORIES[case_id]()
