"""What a pickle may name: the allowlist, and the ``Policy`` that applies it.

Strategy (after torch's ``_weights_only_unpickler``, kept apart from the VM): the
allowlist is a plain dict from "module.name" to a ``Handler``. A handler says
what GLOBAL pushes (``value``), and what REDUCE (``reduce``) and NEWOBJ
(``new``) do with it; each validates the *types* of its arguments and returns a
plain value or a record for the builder. Nothing here imports what the pickle
names: handlers are safeload's own functions. BUILD is a short table too: the
only objects whose state a pickle may set are OrderedDict (``_metadata``),
numpy arrays made by ``_reconstruct``, and numpy dtypes (validated, no-op).

One source of truth: the loader, the torch backend and the scanner all ask the
same ``Policy``.

The records policy (``Policy(records=True)``, off by default) is a per-call
opt-in: a global outside the allowlist that is not known to be dangerous is
pushed as an inert ``GlobalRef``; building an instance of it the way Python
pickles plain objects (NEWOBJ, NEWOBJ_EX, ``copyreg._reconstructor`` with a
builtin base, INST / OBJ without arguments) makes a ``Record``, and BUILD and
the container opcodes fill the record's ``state`` / ``items`` / ``listitems``.
A REDUCE is a call, so it stays refused unless the caller names the class in
``records=[...]``. Known-dangerous names are refused under every policy.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .danger import danger_of
from .dtypes import DTYPES, STORAGE_TYPES, DType
from .errors import MAX_NAME, FormatError, UnsafeGlobalError, printable, short_repr
from .rebuild import required_elements
from .records import (
    Device,
    GlobalRef,
    QScheme,
    Record,
    Size,
    StorageRef,
    StorageType,
    TensorRecord,
)

__all__ = [
    "DEFAULT_POLICY",
    "Handler",
    "LoadedStorage",
    "Policy",
    "RecordTypes",
    "storage_ref_from_pid",
]


@dataclass(frozen=True, eq=False)
class Handler:
    """One allowlist entry. ``reduce(vm, args)`` / ``new(vm, args, kwargs)`` are
    None when the pickle may only name the global, not call it."""

    name: str
    reduce: Callable | None = None
    new: Callable | None = None
    push: Callable | None = None  # what GLOBAL pushes; default: the handler itself

    def value(self, vm):
        return self if self.push is None else self.push(vm)

    def __repr__(self) -> str:
        return f"<safeload handler {self.name}>"


class LoadedStorage:
    """What BINPERSID pushes: the validated reference and the builder's value.

    ``view`` is ``(offset, numel)`` in elements of ``ref`` when the persistent id
    named a legacy view of the storage: tensors on it become tensors on the whole
    storage (so they share its memory in every backend), offset by ``offset``.
    """

    __slots__ = ("ref", "value", "view")

    def __init__(self, ref: StorageRef, value: object,
                 view: tuple[int, int] | None = None) -> None:
        self.ref = ref
        self.value = value
        self.view = view

    def place(self, offset: int, shape: tuple[int, ...], stride: tuple[int, ...],
              dtype: DType) -> int:
        """Offset in the whole storage of a tensor at ``offset`` of this one; a
        FormatError unless the tensor lies inside the view."""
        if self.view is None:
            return offset
        start, numel = self.view
        if dtype.itemsize != self.ref.dtype.itemsize:
            _fail(f"a {dtype.name} tensor on a {self.ref.dtype.name} storage view")
        if required_elements(offset, shape, stride) > numel:
            _fail(f"tensor of shape {shape}, stride {stride} at offset {offset} leaves "
                  f"its storage view of {numel} elements")
        return start + offset

    def __repr__(self) -> str:
        return f"<storage {self.ref.key!r} {self.ref.dtype.name}[{self.ref.numel}]>"


def _fail(message: str):
    raise FormatError(message)


def _brief(value, width: int = 40) -> str:
    """A bounded description of a pickle value for messages. Never a full repr:
    a list holding one big list a million times (via the memo) costs the pickle
    a few bytes per reference and its repr terabytes."""
    t = type(value)
    if t is str or t is bytes or t is bytearray:
        return repr(value[:width])[: width + 3]
    if value is None or t is bool or t is float or (t is int and value.bit_length() <= 128):
        return repr(value)[:width]
    return f"<{t.__name__}>"


def _is_int(x) -> bool:
    return type(x) is int


#: sizes, strides and offsets are int64 in torch; bigger ints only cost time
#: (a product of 64 dimensions of 2**524288 takes a minute)
_DIM_MAX = 2**63 - 1


def _int_tuple(x, what: str, vm) -> tuple[int, ...]:
    if not isinstance(x, tuple):  # torch.Size arrives as Size (a tuple)
        _fail(f"{what} must be a tuple of ints, got {type(x).__name__}")
    if len(x) > vm.limits.max_ndim:
        _fail(f"{what} has {len(x)} dimensions, more than {vm.limits.max_ndim}")
    for d in x:
        if type(d) is not int or d < 0 or d > _DIM_MAX:
            _fail(f"{what} must hold non-negative int64 values, got {_brief(d)}")
    return tuple(x)


def _arity(args: tuple, lo: int, hi: int, name: str) -> None:
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        _fail(f"{name} takes {want} arguments, got {len(args)}")


# -- torch: storages and tensors ---------------------------------------------

_LOCATION = re.compile(r"[a-z_][a-z0-9_]{0,31}(:[0-9]{1,4})?\Z")
_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")
#: locations _LOCATION accepts that nearly every file uses (a shortcut, not a rule)
_COMMON_LOCATIONS = frozenset(["cpu", "cuda", "mps", "meta"] + [f"cuda:{i}" for i in range(8)])
assert all(_LOCATION.match(x) for x in _COMMON_LOCATIONS)


def storage_ref_from_pid(pid) -> StorageRef:
    """Validate torch's persistent id ``('storage', type, key, location, numel)``.

    Legacy files append a sixth item (view metadata, None for whole storages);
    the legacy reader handles views before calling this.
    """
    if type(pid) is not tuple or len(pid) not in (5, 6):
        _fail(f"persistent id must be a 5-tuple ('storage', type, key, location, numel), "
              f"got {type(pid).__name__} of length {len(pid) if type(pid) is tuple else '-'}")
    if len(pid) == 5:  # once per storage: unpack without slicing a copy
        typename, storage_type, key, location, numel = pid
    else:
        typename, storage_type, key, location, numel = pid[:5]
        if pid[5] is not None:
            # a legacy view reaching here would load as its whole root storage
            _fail("storage views in persistent ids are only valid in legacy files")
    if typename != "storage":
        _fail(f"persistent id kind must be 'storage', got {_brief(typename)}")
    if type(storage_type) is not StorageType:
        _fail("persistent id must name a torch storage type")
    if type(key) is int:  # legacy files use int-like keys; zip keys are str
        key = str(key)
    # Once per storage: torch's keys (short, ASCII letters and digits) and
    # common locations pass without a regex; the regexes decide the rest.
    if type(key) is not str or not (
        len(key) <= 128 and key.isascii() and key.isalnum() or _KEY.match(key)
    ):
        _fail(f"storage key {_brief(key, 60)} is not a plain record name")
    if type(location) is not str or not (
        location in _COMMON_LOCATIONS or _LOCATION.match(location)
    ):
        _fail(f"storage location {_brief(location, 60)} is not a device tag")
    if type(numel) is not int or numel < 0:
        _fail(f"storage size {_brief(numel)} is not a non-negative int")
    # positional (key, dtype, location, numel): 0.2 us a storage faster than keywords
    return StorageRef(key, storage_type.dtype, location, numel)


def _tensor_record(vm, storage, offset, size, stride, dtype: DType | None = None) -> TensorRecord:
    if type(storage) is not LoadedStorage:
        _fail(f"tensor storage must come from a persistent id, got {type(storage).__name__}")
    if type(offset) is not int or offset < 0 or offset > _DIM_MAX:
        _fail(f"storage offset must be a non-negative int64, got {_brief(offset)}")
    # Once per tensor. Fast path: plain tuples of equal length within max_ndim,
    # every item a non-negative int64 (the _int_tuple checks, in one loop);
    # any deviation takes the general path, which decides and words the error.
    shape, strides = size, stride
    if type(size) is tuple and type(stride) is tuple and \
            len(size) == len(stride) <= vm.limits.max_ndim:
        for d in size + stride:
            if type(d) is not int or d < 0 or d > _DIM_MAX:
                shape = None
                break
    else:
        shape = None
    if shape is None:
        shape = _int_tuple(size, "tensor size", vm)
        strides = _int_tuple(stride, "tensor stride", vm)
        if len(shape) != len(strides):
            _fail(f"tensor size has {len(shape)} dimensions but stride has {len(strides)}")
    ref = storage.ref  # once per tensor: attribute reads bound once, fields positional
    if dtype is None:
        dtype = ref.dtype
    if storage.view is not None:  # place() returns offset unchanged for a whole storage
        offset = storage.place(offset, shape, strides, dtype)
    return TensorRecord(storage.value, ref, dtype, offset, shape, strides)


def _check_hooks(hooks) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        _fail("backward hooks must be empty: safeload never restores callables")


def _finish_tensor(vm, rec: TensorRecord, requires_grad, metadata=None):
    if type(requires_grad) is not bool:
        _fail("requires_grad must be a bool")
    if metadata is not None and type(metadata) not in (dict, OrderedDict):
        _fail("tensor metadata must be a dict")
    rec.requires_grad = requires_grad
    if metadata:
        vm.charge(_DICT_ENTRY * len(metadata))  # one dict, copied per tensor via the memo
        for key, value in metadata.items():
            if key not in _TENSOR_METADATA or type(value) is not bool:
                _fail(f"tensor metadata {_brief(key, 40)} is not a conj / neg flag")
        rec.metadata = dict(metadata)
    return vm.builder.tensor(rec)


#: what torch's get_tensor_metadata writes: the conjugate and negative view bits
_TENSOR_METADATA = frozenset({"conj", "neg"})


def _rebuild_tensor(vm, args):
    _arity(args, 4, 4, "_rebuild_tensor")
    return vm.builder.tensor(_tensor_record(vm, *args))


def _rebuild_tensor_v2(vm, args):
    # once per tensor: the 6-argument form (no metadata) unpacks without a list
    if len(args) == 6:
        storage, offset, size, stride, requires_grad, hooks = args
        metadata = None
    else:
        _arity(args, 6, 7, "_rebuild_tensor_v2")
        storage, offset, size, stride, requires_grad, hooks, metadata = args
    _check_hooks(hooks)
    rec = _tensor_record(vm, storage, offset, size, stride)
    return _finish_tensor(vm, rec, requires_grad, metadata)


def _rebuild_tensor_v3(vm, args):
    _arity(args, 7, 8, "_rebuild_tensor_v3")
    storage, offset, size, stride, requires_grad, hooks, dtype, *metadata = args
    _check_hooks(hooks)
    dt = vm.builder.as_dtype(dtype)
    if dt is None:
        _fail("_rebuild_tensor_v3 needs a torch dtype")
    if type(storage) is LoadedStorage and storage.ref.dtype.itemsize != 1:
        _fail("_rebuild_tensor_v3 needs an untyped (byte) storage")
    rec = _tensor_record(vm, storage, offset, size, stride, dtype=dt)
    return _finish_tensor(vm, rec, requires_grad, *metadata)


def _rebuild_parameter(vm, args):
    _arity(args, 3, 3, "_rebuild_parameter")
    data, requires_grad, hooks = args
    _check_hooks(hooks)
    if type(requires_grad) is not bool:
        _fail("requires_grad must be a bool")
    return vm.builder.parameter(data, requires_grad)


def _rebuild_parameter_with_state(vm, args):
    _arity(args, 4, 4, "_rebuild_parameter_with_state")
    data, requires_grad, hooks, state = args
    if state is not None and not (isinstance(state, dict) and not state):
        _fail("Parameter state with attributes is not supported: it would set "
              "attributes on a tensor")
    return _rebuild_parameter(vm, (data, requires_grad, hooks))


# -- torch: quantized tensors ---------------------------------------------------

#: the qschemes a pickle may name (``GLOBAL torch per_tensor_affine``); only the
#: affine ones describe a saved tensor, the symmetric ones are observer settings.
QSCHEMES = (
    "per_tensor_affine",
    "per_channel_affine",
    "per_channel_affine_float_qparams",
    "per_tensor_symmetric",
    "per_channel_symmetric",
)
_SUB_BYTE = frozenset({"quint4x2", "quint2x4"})


def _finite(x) -> bool:
    return type(x) in (int, float) and x == x and x not in (float("inf"), float("-inf"))


def _channel_params(vm, values, what: str, channels: int, want_int: bool):
    """Per-channel scales or zero points: a tensor or a list of numbers, one per
    channel of the quantized axis."""
    if type(values) in (list, tuple):
        vm.charge(len(values))
        if not all(type(v) is int if want_int else _finite(v) for v in values):
            _fail(f"per-channel {what} must be {'ints' if want_int else 'finite numbers'}")
        values = list(values)
        shape = (len(values),)
    else:
        shape = vm.builder.tensor_shape(values)
        if shape is None:
            _fail(f"per-channel {what} must be a tensor or a list, got {type(values).__name__}")
    if tuple(shape) != (channels,):
        _fail(f"per-channel {what} has shape {tuple(shape)}, the quantized axis has "
              f"{channels} channels")
    return values


def _rebuild_qtensor(vm, args):
    _arity(args, 7, 7, "_rebuild_qtensor")
    storage, offset, size, stride, qparams, requires_grad, hooks = args
    _check_hooks(hooks)
    if type(requires_grad) is not bool:
        _fail("requires_grad must be a bool")
    rec = _tensor_record(vm, storage, offset, size, stride)
    if not rec.dtype.is_quantized:
        _fail(f"_rebuild_qtensor needs a quantized storage (QInt8Storage, ...), "
              f"got {rec.dtype.name}")
    if rec.dtype.name in _SUB_BYTE:
        contiguous, step = [], 1
        for d in reversed(rec.shape):
            contiguous.append(step)
            step *= max(d, 1)
        if rec.offset != 0 or (rec.numel and rec.stride != tuple(reversed(contiguous))):
            _fail(f"{rec.dtype.name} packs several elements per byte: the tensor must be "
                  "contiguous, at offset 0")
    rec.requires_grad = requires_grad
    if type(qparams) is not tuple or not qparams:
        _fail("quantizer parameters must be a tuple (qscheme, ...)")
    scheme = vm.builder.as_qscheme(qparams[0])
    if scheme is None:
        _fail("quantizer parameters must start with a torch qscheme")
    if scheme.name == "per_tensor_affine":
        _arity(qparams, 3, 3, "per_tensor_affine parameters")
        _, scale, zero_point = qparams
        if not _finite(scale) or type(zero_point) is not int:
            _fail("per_tensor_affine needs a finite scale and an int zero point")
        return vm.builder.qtensor(rec, scheme.name, scale=float(scale), zero_point=zero_point)
    if scheme.name in ("per_channel_affine", "per_channel_affine_float_qparams"):
        _arity(qparams, 4, 4, f"{scheme.name} parameters")
        _, scales, zero_points, axis = qparams
        if type(axis) is not int or not 0 <= axis < len(rec.shape):
            _fail(f"per-channel axis {_brief(axis, 20)} is out of range for a tensor of shape "
                  f"{rec.shape}")
        channels = rec.shape[axis]
        scales = _channel_params(vm, scales, "scales", channels, want_int=False)
        zero_points = _channel_params(vm, zero_points, "zero points", channels,
                                      want_int=scheme.name == "per_channel_affine")
        return vm.builder.qtensor(rec, scheme.name, scales=scales, zero_points=zero_points,
                                  axis=axis)
    _fail(f"a tensor cannot be quantized with qscheme {scheme.name}")


_TENSOR_TYPE = Handler("torch.Tensor")
_PARAMETER_TYPE = Handler("torch.nn.parameter.Parameter")


def _rebuild_from_type_v2(vm, args):
    _arity(args, 4, 4, "_rebuild_from_type_v2")
    func, new_type, inner_args, state = args
    # type first: hashing a 10**6-deep tuple overflows the C stack
    if type(func) is not Handler or func not in _TENSOR_FUNCTIONS:
        _fail("_rebuild_from_type_v2 must wrap a tensor rebuild function")
    if new_type is not _TENSOR_TYPE:
        _fail("_rebuild_from_type_v2 may only rebuild a plain torch.Tensor")
    if state is not None and not (isinstance(state, dict) and not state):
        _fail("tensor state with attributes is not supported")
    if type(inner_args) is not tuple:
        _fail("_rebuild_from_type_v2 arguments must be a tuple")
    return func.reduce(vm, inner_args)


def _size(vm, args):
    _arity(args, 0, 1, "torch.Size")
    dims = _int_tuple(args[0] if args else (), "torch.Size", vm)
    return vm.builder.size(Size(dims))


def _device(vm, args):
    _arity(args, 1, 2, "torch.device")
    if type(args[0]) is not str:
        _fail("torch.device needs a device string")
    text = args[0]
    if len(args) == 2:
        if args[1] is not None and (type(args[1]) is not int or args[1] < 0):
            _fail("torch.device index must be a non-negative int")
        if args[1] is not None:
            text = f"{text}:{args[1]}"
    if not _LOCATION.match(text):
        _fail(f"{_brief(text)} is not a device")
    kind, _, index = text.partition(":")
    return vm.builder.device(Device(kind, int(index) if index else None))


# -- builtins and collections --------------------------------------------------


#: copy-budget units for one entry a handler puts in a new set / dict. The
#: budget (16 units per pickle byte) counts bytes and list slots; a set entry
#: costs ~30 bytes of memory, an (Ordered)dict entry 50-100, and one big value
#: can be copied again and again through the memo (a 800 kB OrderedDict bomb
#: took 1.5 GB at one unit per entry). A pickle spends at least 2 bytes on
#: each item it really holds, so real files stay far below the budget.
_SET_ENTRY = 8
_DICT_ENTRY = 16


def _bind(name: str, args: tuple, kwargs: dict | None, params: tuple[str, ...], *,
          required: int = 0, keywords: bool = True) -> dict:
    """Bind a builtin constructor's arguments to ``params`` as CPython does, so
    that a call CPython refuses with a TypeError (too many arguments, an unknown
    or repeated keyword, a missing one) is refused here, as a FormatError."""
    if len(args) > len(params):
        _fail(f"{name}() takes at most {len(params)} argument"
              f"{'s' if len(params) > 1 else ''}, got {len(args)}")
    bound = dict(zip(params, args, strict=False))  # fewer args than params
    for key, value in (kwargs or {}).items():
        if not keywords:
            _fail(f"{name}() takes no keyword arguments")
        if key not in params:
            _fail(f"{name}() got an unexpected keyword argument {_brief(key)}")
        if key in bound:
            _fail(f"{name}() got multiple values for argument {key!r}")
        bound[key] = value
    for param in params[:required]:
        if param not in bound:
            _fail(f"{name}() is missing its argument {param!r}")
    return bound


def _new_empty(kind: type) -> Callable:
    """NEWOBJ on a mutable container: ``kind.__new__`` ignores its arguments and
    returns an empty object (``__init__``, which NEWOBJ never calls, fills it);
    the opcodes after it may fill it (ADDITEMS, SETITEMS)."""
    return lambda vm, args, kwargs=None: kind()


def _iterable_arg(vm, args, name, kwargs=None):
    items = _bind(name, args, kwargs, ("iterable",), keywords=False).get("iterable", ())
    if type(items) not in (list, tuple, set, frozenset):
        _fail(f"{name}() needs a list, tuple or set, got {type(items).__name__}")
    vm.charge(_SET_ENTRY * len(items))
    return items


def _set(vm, args, kwargs=None, name="set"):
    items = _iterable_arg(vm, args, name, kwargs)
    result = set()
    for item in items:
        vm.check_key(item, result)
        result.add(item)
    return result


def _frozenset(vm, args, kwargs=None):
    return frozenset(_set(vm, args, kwargs, "frozenset"))


def _bytearray(vm, args):
    _arity(args, 0, 2, "bytearray")
    if not args:
        return bytearray()
    source = args[0]
    if type(source) in (bytes, bytearray) and len(args) == 1:
        vm.charge(len(source))
        return bytearray(source)
    if type(source) is str and len(args) == 2 and args[1] in ("latin-1", "latin1"):
        vm.charge(len(source))
        return bytearray(source, "latin-1")
    _fail("bytearray() takes bytes, or a str with the latin-1 encoding")


def _bytes(vm, args, kwargs=None):
    bound = _bind("bytes", args, kwargs, ("source", "encoding", "errors"))
    if "source" not in bound:
        if bound:
            _fail("bytes() got an encoding or errors without a string argument")
        return b""
    source = bound["source"]
    if type(source) is str and "encoding" not in bound:
        _fail("bytes() got a string argument without an encoding")
    if type(source) not in (bytes, bytearray, str) and len(bound) > 1:
        _fail("bytes() got an encoding or errors without a string argument")
    if type(source) in (bytes, bytearray) and len(bound) == 1:
        vm.charge(len(source))
        return bytes(source)
    # text is encoded by _codecs.encode, the way pickles write bytes; a count
    # or an iterable of ints is no way CPython pickles bytes
    _fail("bytes() takes no arguments or bytes")


def _number(x) -> bool:
    return type(x) in (int, float, bool)


def _complex(vm, args, kwargs=None):
    bound = _bind("complex", args, kwargs, ("real", "imag"))
    if not all(_number(a) for a in bound.values()):
        _fail("complex() takes two numbers")
    try:
        return complex(**bound)
    except OverflowError:
        _fail("complex(): a number too large for a float")


def _slice(vm, args, kwargs=None):
    # NEWOBJ too: slice.__new__(slice, *args) is slice(*args); it takes no keywords
    if kwargs:
        _fail("slice() takes no keyword arguments")
    _arity(args, 1, 3, "slice")
    if not all(a is None or type(a) is int for a in args):
        _fail("slice() takes ints or None")
    return slice(*args)


def _encode(vm, args):
    _arity(args, 1, 2, "_codecs.encode")
    text = args[0]
    encoding = args[1] if len(args) == 2 else "utf-8"
    if type(text) is not str or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        _fail("_codecs.encode takes a str and the latin-1, utf-8 or ascii encoding")
    vm.charge(len(text))
    return text.encode(encoding)


def _ordered_dict(vm, args):
    if not args:  # once per tensor: torch's empty backward hooks
        return OrderedDict()
    _arity(args, 0, 1, "OrderedDict")
    items = args[0]
    if type(items) not in (list, tuple):
        _fail("OrderedDict() takes a list of pairs")
    vm.charge(_DICT_ENTRY * len(items))
    result = OrderedDict()
    for pair in items:
        if type(pair) not in (list, tuple) or len(pair) != 2:
            _fail("OrderedDict() takes a list of pairs")
        vm.check_key(pair[0], result)
        result[pair[0]] = pair[1]
    return result


def _counter(vm, args):
    _arity(args, 0, 1, "Counter")
    result = Counter()
    if args:
        if type(args[0]) is not dict:
            _fail("Counter() takes a dict")
        vm.charge(_DICT_ENTRY * len(args[0]))
        for key, value in args[0].items():
            vm.check_key(key, result)
            result[key] = value
    return result


# -- numpy ---------------------------------------------------------------------

_NDARRAY = Handler("numpy.ndarray")
_NUMPY_DTYPE = re.compile(r"[<>|=]?(b1|i1|u1|i2|u2|i4|u4|i8|u8|f2|f4|f8|c8|c16)\Z")


def _reconstruct(vm, args):
    import numpy as np

    _arity(args, 3, 3, "numpy _reconstruct")
    cls, shape, code = args
    if cls is not _NDARRAY:
        _fail("numpy _reconstruct may only make numpy.ndarray (no subclasses)")
    if shape != (0,) or code not in (b"b", "b"):
        _fail("numpy _reconstruct arguments must be ((0,), 'b')")
    array = np.ndarray((0,), np.uint8)
    vm.unbuilt.add(id(array))
    vm.keepalive.append(array)
    return array


def _numpy_dtype(vm, args, kwargs=None):
    import numpy as np

    bound = _bind("numpy.dtype", args, kwargs, ("dtype", "align", "copy", "metadata"),
                  required=1)
    if "metadata" in bound:
        _fail("numpy.dtype metadata is not supported: plain numeric dtypes carry none")
    code = bound.pop("dtype")
    if type(code) is not str or not _NUMPY_DTYPE.match(code):
        _fail(f"numpy dtype {_brief(code)} is not a plain numeric type")
    # Python 2 era numpy pickled the flags as the ints 0 / 1
    if not all(type(a) is bool or (type(a) is int and a in (0, 1)) for a in bound.values()):
        _fail("numpy.dtype flags must be bools")
    # A fresh copy (pickle's copy=True), never numpy's shared singleton: BUILD
    # may set its byte order.
    dtype = np.dtype(code, False, True)
    vm.unbuilt.add(id(dtype))
    vm.keepalive.append(dtype)
    return dtype


def _numpy_scalar(vm, args):
    import numpy as np

    _arity(args, 1, 2, "numpy scalar")
    dtype = args[0]
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.hasobject:
        _fail("numpy scalar needs a plain numeric dtype")
    raw = args[1] if len(args) == 2 else b"\0" * dtype.itemsize
    if type(raw) is str and len(raw) == dtype.itemsize:  # Python 2 pickles: latin-1 text
        raw = raw.encode("latin-1")
    if type(raw) is not bytes or len(raw) != dtype.itemsize:
        _fail(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes")
    return np.frombuffer(raw, dtype, count=1)[0]


def _frombuffer(vm, args):
    """numpy's protocol-5 array reduction: (buffer, dtype, shape, order)."""
    import numpy as np

    _arity(args, 4, 4, "numpy _frombuffer")
    buf, dtype, shape, order = args
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.hasobject:
        _fail("numpy array must have a plain numeric dtype (object arrays hold pickles)")
    shape = _int_tuple(shape, "numpy array shape", vm)
    if type(buf) not in (bytes, bytearray) or order not in ("C", "F"):
        _fail("numpy _frombuffer needs bytes and the order 'C' or 'F'")
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(buf):
        _fail(f"numpy array of shape {shape} and dtype {dtype} needs "
              f"{count * dtype.itemsize} bytes, the pickle holds {len(buf)}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _build_ndarray(vm, array, state) -> None:
    import numpy as np

    if id(array) not in vm.unbuilt:
        _fail("BUILD on a numpy array that _reconstruct did not just make")
    if type(state) is not tuple or len(state) not in (4, 5):
        _fail("numpy array state must be a 4- or 5-tuple")
    if len(state) == 4:
        state = (1, *state)
    version, shape, dtype, fortran, raw = state
    if type(version) is not int or type(fortran) is not bool:
        _fail("numpy array state has a bad version or order flag")
    shape = _int_tuple(shape, "numpy array shape", vm)
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.hasobject:
        _fail("numpy array must have a plain numeric dtype (object arrays hold pickles)")
    if type(raw) not in (bytes, bytearray, str):
        _fail("numpy array data must be bytes")
    # numpy copies the data (byteswapped, small or unaligned); one bytes value
    # can be the state of many arrays through the memo
    vm.charge(len(raw))
    if type(raw) is str:
        raw = raw.encode("latin-1")
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(raw):
        _fail(f"numpy array of shape {shape} and dtype {dtype} needs "
              f"{count * dtype.itemsize} bytes, the pickle holds {len(raw)}")
    array.__setstate__((version, shape, dtype, fortran, raw))
    vm.unbuilt.discard(id(array))


_PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)


def _build_dtype(vm, dtype, state) -> None:
    if id(dtype) not in vm.unbuilt:
        _fail("BUILD on a numpy dtype that numpy.dtype did not just make")
    if type(state) is not tuple or len(state) not in (8, 9):
        _fail("numpy dtype state must be an 8- or 9-tuple")
    version, order = state[:2]
    if version not in (3, 4) or state[2:8] != _PLAIN_DTYPE_STATE or state[8:] not in ((), (None,)):
        _fail("numpy dtype state must be plain (no fields, subarrays, flags or metadata)")
    if order not in ("<", ">", "|", "="):
        _fail(f"numpy dtype byte order {_brief(order, 10)} is not one of < > | =")
    # The state passed on is rebuilt from validated parts, never the file's tuple.
    dtype.__setstate__((3, order, *_PLAIN_DTYPE_STATE))
    vm.unbuilt.discard(id(dtype))


def _build_ordered_dict(vm, target, state) -> None:
    if state is None:
        return
    if type(state) is not dict or set(state) - {"_metadata"}:
        _fail("OrderedDict state may only set _metadata")
    if "_metadata" in state:
        target._metadata = state["_metadata"]


# -- the table -----------------------------------------------------------------


def _numpy_names(module_tail: str, name: str) -> list[str]:
    return [f"numpy.core.{module_tail}.{name}", f"numpy._core.{module_tail}.{name}"]


def _default_handlers() -> dict[str, Handler]:
    table: dict[str, Handler] = {}

    def add(name, reduce=None, new=None, push=None):
        table[name] = Handler(name, reduce=reduce, new=new, push=push)

    for fn in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
               _rebuild_parameter_with_state):
        add(f"torch._utils.{fn.__name__}", reduce=fn)
    add("torch._tensor._rebuild_from_type_v2", reduce=_rebuild_from_type_v2)
    table["torch.Tensor"] = _TENSOR_TYPE
    table["torch._tensor.Tensor"] = _TENSOR_TYPE
    table["torch.nn.parameter.Parameter"] = _PARAMETER_TYPE
    for storage_name, dt in STORAGE_TYPES.items():
        record = StorageType(storage_name, dt)
        add(f"torch.{storage_name}", push=lambda vm, r=record: r)
    add("torch.storage.UntypedStorage", push=lambda vm: StorageType("UntypedStorage",
                                                                     DTYPES["uint8"]))
    for dtype_name, dt in DTYPES.items():
        add(f"torch.{dtype_name}", push=lambda vm, d=dt: vm.builder.dtype(d))
    add("torch.Size", reduce=_size)
    add("torch.device", reduce=_device)
    add("torch._utils._rebuild_qtensor", reduce=_rebuild_qtensor)
    for scheme in map(QScheme, QSCHEMES):
        add(f"torch.{scheme.name}", push=lambda vm, q=scheme: vm.builder.qscheme(q))

    # NEWOBJ is cls.__new__(cls, *args): empty for the mutable containers,
    # the value itself for the immutable types
    add("collections.OrderedDict", reduce=_ordered_dict, new=_new_empty(OrderedDict))
    add("collections.Counter", reduce=_counter, new=_new_empty(Counter))
    add("builtins.set", reduce=_set, new=_new_empty(set))
    add("builtins.frozenset", reduce=_frozenset, new=_frozenset)
    add("builtins.bytearray", reduce=_bytearray, new=_new_empty(bytearray))
    add("builtins.bytes", reduce=_bytes, new=_bytes)
    add("builtins.complex", reduce=_complex, new=_complex)
    add("builtins.slice", reduce=_slice, new=_slice)
    add("_codecs.encode", reduce=_encode)

    table["numpy.ndarray"] = _NDARRAY
    for name in _numpy_names("multiarray", "_reconstruct"):
        add(name, reduce=_reconstruct)
    for name in _numpy_names("numeric", "_frombuffer"):
        add(name, reduce=_frombuffer)
    for name in _numpy_names("multiarray", "scalar"):
        add(name, reduce=_numpy_scalar)
    add("numpy.dtype", reduce=_numpy_dtype, new=_numpy_dtype)
    return table


_TENSOR_FUNCTIONS: set[Handler] = set()


class Policy:
    """The allowlist, plus anything the caller trusts for one call.

    ``Policy()`` is safeload's default; ``policy.allowing(objs)`` returns a new
    policy that also accepts the given objects (classes or functions the caller
    imported and trusts), called with pickle's usual semantics.

    ``records=True`` (or a list of class names, which also turns it on) keeps
    instances of classes outside the allowlist as inert ``Record`` values;
    named classes may also be rebuilt by a call (REDUCE: enums, defaultdict).
    Names are exact (``"pkg.mod.Name"``) or a package pattern (``"pkg.*"``).

    >>> policy = Policy(allow={"mypkg.Config": dict}, records=["enum_pkg.*"])
    >>> policy.records
    RecordTypes(['enum_pkg.*'])
    """

    def __init__(self, handlers: Mapping[str, Handler] | None = None,
                 trusted: Mapping[str, object] | None = None, *,
                 allow: Iterable[object] | Mapping[str, object] | None = None,
                 records: bool | Iterable[str] | RecordTypes | None = None) -> None:
        self.handlers: dict[str, Handler] = dict(handlers or _DEFAULT_HANDLERS)
        self.trusted: dict[str, object] = {**(trusted or {}), **_global_names(allow)}
        self._trusted_by_id = {id(obj): obj for obj in self.trusted.values()}
        self._trusted_types = {obj for obj in self.trusted.values() if isinstance(obj, type)}
        #: None when the records policy is off
        self.records: RecordTypes | None = RecordTypes.of(records)

    def allowing(self, allow: Iterable[object] | Mapping[str, object] | None) -> Policy:
        if not allow:
            return self
        return Policy(self.handlers, {**self.trusted, **_global_names(allow)},
                      records=self.records)

    def with_records(self, records: bool | Iterable[str] | RecordTypes | None) -> Policy:
        """This policy with the records policy turned on (``True``, or class names
        added to the ones it has), or off (``False``); ``None`` changes nothing."""
        if records is None:
            return self
        if records is False:
            return Policy(self.handlers, self.trusted) if self.records is not None else self
        extra = RecordTypes.of(records)
        merged = extra if self.records is None else self.records.merged(extra)
        return Policy(self.handlers, self.trusted, records=merged)

    # -- lookups used by the VM --------------------------------------------------

    def lookup(self, module: str, name: str):
        full = f"{module}.{name}"
        handler = self.handlers.get(full)
        if handler is not None:
            return handler
        obj = self.trusted.get(full)
        if obj is not None:
            return Handler(full, push=lambda vm, o=obj: o)
        if self.records is not None:
            if module == "__main__" and full not in self.records.exact:
                # __main__ is whichever script loads the file: the file cannot say
                # what code that is, so such names are kept only when named.
                return None
            return _record_lookup(module, name)
        return None

    def unsafe_global(self, module: str, name: str) -> UnsafeGlobalError:
        # the name is the file's text (STACK_GLOBAL takes any str): escaped
        # and cut, as everything the file chose in a message
        full = printable(f"{module}.{name}", MAX_NAME)
        why = danger_of(module, name)
        if why is not None:
            hint = "This file tries to run code; do not load it"
            if full == "copyreg._reconstructor" and self.records is None:
                # how protocols 0 and 1 pickle plain objects: not an attack in itself
                hint = ("Protocols 0 and 1 pickle plain objects this way: load with "
                        "records=True to get them back as inert safeload.Record data")
            return UnsafeGlobalError(
                f"global '{full}' is refused: it {why}",
                global_name=full,
                hint=hint,
            )
        if module == "__main__" and self.records is not None:
            return UnsafeGlobalError(
                f"global '{full}' names code in whichever script loads the file",
                global_name=full,
                hint=(f"Even records=True keeps __main__ names only when named: pass "
                      f"records=['{full}'] if you trust this file"),
            )
        return UnsafeGlobalError(
            f"global '{full}' is not in safeload's allowlist of tensor, storage and "
            "primitive types",
            global_name=full,
            hint=(f"safeload never imports it. To get its objects back as inert data "
                  f"(safeload.Record), load with records=True; if you trust this file, "
                  f"import it yourself and pass allow={{'{full}': obj}} for this call"),
        )

    def direct_reduce_type(self) -> type | None:
        """``Handler`` if this policy's ``call`` is this class's: then REDUCE
        on a Handler is exactly ``func.reduce(vm, args)`` (or the "may not be
        called" refusal when that is None), and the compiled loop may make
        that call itself. A subclass that overrides ``call`` gets None, and
        so does every policy once ``Policy.call`` itself is replaced."""
        return Handler if type(self).call is _ALLOWLIST_CALL else None

    def call(self, vm, func, args: tuple, kwargs: dict | None, opname: str):
        if type(func) is Handler:
            if opname in ("NEWOBJ", "NEWOBJ_EX"):
                if func.new is None:
                    _fail(f"{opname} on {func.name}, which is not a class safeload builds")
                return func.new(vm, args, kwargs) if kwargs else func.new(vm, args)
            if func.reduce is None:
                _fail(f"{func.name} may be named but not called")
            return func.reduce(vm, args)
        if type(func) is GlobalRef and self.records is not None:
            return _record_call(self.records, vm, func, args, kwargs, opname)
        trusted = self._trusted_by_id.get(id(func))
        if trusted is not None and trusted is func:
            # the caller's code gets storages as the load returns them, never
            # safeload's internal LoadedStorage
            args = _public(vm, args)
            kwargs = _public(vm, kwargs) if kwargs else kwargs
            if opname in ("NEWOBJ", "NEWOBJ_EX"):
                return func.__new__(func, *args, **(kwargs or {}))
            return func(*args)
        from .unpickler import Opaque

        if isinstance(func, Opaque):
            return vm.refuse(
                UnsafeGlobalError(f"{opname} calls '{func.what}'", global_name=func.what),
                f"{func.what}(...)",
            )
        _fail(f"{opname} on a {type(func).__name__} value: only allowlisted callables "
              "can be called")

    def build(self, vm, target, state) -> None:
        import numpy as np

        t = type(target)
        if t is OrderedDict:
            return _build_ordered_dict(vm, target, state)
        if t is np.ndarray:
            return _build_ndarray(vm, target, state)
        if isinstance(target, np.dtype):
            return _build_dtype(vm, target, state)
        if t in self._trusted_types:
            return _pickle_build(target, _public(vm, state))
        if t is Record and self.records is not None:
            return _build_record(vm, target, state)
        from .unpickler import Opaque

        if isinstance(target, Opaque):
            vm.refuse(UnsafeGlobalError(f"BUILD sets the state of '{target.what}'",
                                        global_name=target.what), target.what)
            return
        _fail(f"BUILD on a {t.__name__} value: the pickle may only set state on "
              "objects safeload builds")

    def container_items(self, vm, opname: str, target, items: list) -> bool:
        """APPEND(S) / SETITEM(S) / ADDITEMS on a value that is not a container
        the pickle built: True when the policy took the items (a Record's
        ``listitems`` / ``items`` under the records policy), False to refuse."""
        if self.records is None or type(target) is not Record:
            return False
        return _record_items(vm, opname, target, items)

    def is_hashable_record(self, obj) -> bool:
        return type(obj) in _HASHABLE_RECORDS or (
            type(obj).__module__ == "numpy" and hasattr(obj, "dtype")  # numpy scalars
        ) or (type(obj).__module__, type(obj).__name__) in _TORCH_VALUE_TYPES or (
            type(obj) in self._trusted_types) or (
            type(obj) is Record and self.records is not None  # hashed by identity
        )


#: the ``call`` defined above, the one ``direct_reduce_type`` vouches for (not
#: whatever ``Policy.call`` names later: a wrapper patched onto the class)
_ALLOWLIST_CALL = Policy.call


def _public(vm, value):
    """``value`` with each LoadedStorage in it (through lists, dicts, tuples and
    records) replaced by what the load returns for a bare storage: what objects
    admitted with ``allow=`` receive, as torch.load would hand them storages."""
    from .loader import bare_storages

    return bare_storages(value, vm.builder)


def _pickle_build(target, state) -> None:
    """pickle's BUILD, for objects of classes the caller trusts."""
    setstate = getattr(target, "__setstate__", None)
    if setstate is not None:
        setstate(state)
        return
    slotstate = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slotstate = state
    if state:
        target.__dict__.update(state)
    if slotstate:
        for k, v in slotstate.items():
            setattr(target, k, v)


def _global_names(allow) -> dict[str, object]:
    """``allow=`` as {"module.qualname": obj}."""
    if not allow:
        return {}
    if isinstance(allow, Mapping):
        return dict(allow)
    extra = {}
    for obj in allow:
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not isinstance(module, str) or not isinstance(qualname, str):
            raise TypeError(f"cannot tell the global name of {obj!r}; pass "
                            "allow={'module.name': obj}")
        extra[f"{module}.{qualname}"] = obj
    return extra


# -- the records policy: foreign objects kept as data ---------------------------

#: builtin types are safeload's to build or refuse: never records, never named
_BUILTIN_MODULES = frozenset({"builtins", "__builtin__"})
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_CONSTRUCTS = frozenset({"NEWOBJ", "NEWOBJ_EX"})


class RecordTypes:
    """The records policy's list of named classes.

    Any class outside the allowlist may come back as a Record when the pickle
    builds it without a call (NEWOBJ, ``copyreg._reconstructor``); a class that
    the pickle *calls* (REDUCE, INST / OBJ with arguments: how enums and
    ``collections.defaultdict`` are pickled) must be named here. Names are
    exact (``"pkg.mod.Name"``) or package patterns (``"pkg.*"``: the package
    and its submodules). A pattern admits only CapWords names, classes by
    Python's convention: a pickle that calls a *function* of the package (a
    ``run_cprofile(code)``) stays refused; name lowercase classes exactly.
    Known-dangerous names and builtins are refused with a ValueError: no policy
    admits them.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        if isinstance(names, (str, bytes)):
            raise TypeError("records= takes True or a list of class names, not one string")
        exact: set[str] = set()
        packages: set[str] = set()
        for text in names:
            if not isinstance(text, str):
                raise TypeError(f"record type names are strings, got {type(text).__name__}")
            pattern = text.endswith(".*")
            module, _, name = (text[:-2], "", "*") if pattern else text.rpartition(".")
            if not module or not _DOTTED.match(module) or not (pattern or name.isidentifier()):
                raise ValueError(f"record type {text!r} is not 'module.Name' or 'package.*'")
            why = danger_of(module, name)
            if why is None and module.partition(".")[0] in _BUILTIN_MODULES:
                why = "is a builtin (safeload builds builtins itself, or refuses them)"
            if why is not None:
                raise ValueError(f"{text!r} can never be a record type: it {why}")
            if pattern:
                packages.add(module)
            else:
                exact.add(text)
        self.exact = frozenset(exact)
        self.packages = frozenset(packages)

    @classmethod
    def of(cls, records) -> RecordTypes | None:
        """``records=`` as given by a caller: None / False (off), True, names."""
        if records is None or records is False:
            return None
        if records is True:
            return cls()
        if isinstance(records, cls):
            return records
        return cls(records)

    def merged(self, other: RecordTypes) -> RecordTypes:
        both = RecordTypes()
        both.exact = self.exact | other.exact
        both.packages = self.packages | other.packages
        return both

    def named(self, module: str, name: str) -> bool:
        if f"{module}.{name}" in self.exact:
            return True
        if not name[:1].isupper():
            return False
        probe = module
        while probe:
            if probe in self.packages:
                return True
            probe = probe.rpartition(".")[0]
        return False

    def names(self) -> list[str]:
        return sorted(self.exact) + sorted(f"{p}.*" for p in self.packages)

    def __repr__(self) -> str:
        return f"RecordTypes({self.names()!r})"


#: the bases ``copyreg._reconstructor(cls, base, state)`` may name, with the
#: type ``state`` must have (None: no state). Protocols 0 and 1 pickle an
#: instance as ``_reconstructor(cls, base, base(obj))`` + BUILD of its __dict__.
_RECONSTRUCTOR_BASES: dict[str, type | None] = {
    "builtins.object": None,
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.tuple": tuple,
    "builtins.int": int,
    "builtins.float": float,
    "builtins.complex": complex,
    "builtins.str": str,
    "builtins.bytes": bytes,
    "builtins.bytearray": bytearray,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
}


def _record_lookup(module: str, name: str) -> Handler | None:
    full = f"{module}.{name}"
    if full == "copyreg._reconstructor":
        return _RECONSTRUCTOR
    if full not in _RECONSTRUCTOR_BASES and danger_of(module, name) is not None:
        return None  # refused as dangerous, under every policy
    return Handler(full, push=lambda vm: GlobalRef(module, name))


def _refuse_builtin_record(vm, opname: str, full: str):
    return vm.refuse(UnsafeGlobalError(
        f"{opname} builds a '{full}': builtin types are never kept as records",
        global_name=full,
    ), f"{full}(...)")


def _new_record(vm, ref: GlobalRef, args: tuple = (), kwargs: dict | None = None,
                items: dict | None = None, listitems: list | None = None) -> Record:
    record = Record(ref.module, ref.name, args, kwargs=kwargs or None, items=items,
                    listitems=listitems)
    vm.unbuilt.add(id(record))  # BUILD may set its state, once
    vm.keepalive.append(record)
    return record


def _record_call(types: RecordTypes, vm, ref: GlobalRef, args: tuple, kwargs,
                 opname: str):
    full = ref.global_name
    if ref.module.partition(".")[0] in _BUILTIN_MODULES:
        return _refuse_builtin_record(vm, opname, full)
    constructs = opname in _CONSTRUCTS or (opname in ("INST", "OBJ") and not args)
    if not constructs and not types.named(ref.module, ref.name):
        return vm.refuse(UnsafeGlobalError(
            f"{opname} calls '{full}': the records policy keeps objects as data, and a "
            "call is not an object",
            global_name=full,
            hint=(f"If '{full}' is a class whose instances are pickled as a call (an enum, "
                  f"a defaultdict), name it to keep the call's arguments as data: "
                  f"records=['{full}']"),
        ), f"{full}(...)")
    return _new_record(vm, ref, args, kwargs)


def _reconstructor(vm, args):
    """``copyreg._reconstructor(cls, base, state)``, inert: never calls ``base``."""
    _arity(args, 3, 3, "copyreg._reconstructor")
    cls, base, base_state = args
    base_name = (base.global_name if type(base) is GlobalRef
                 else base.name if type(base) is Handler else None)
    if base_name not in _RECONSTRUCTOR_BASES:
        _fail("copyreg._reconstructor needs a builtin base type (object, dict, list, ...), "
              f"got {short_repr(base)}")
    want = _RECONSTRUCTOR_BASES[base_name]
    if (base_state is not None) if want is None else (type(base_state) is not want):
        _fail(f"copyreg._reconstructor with base {base_name} needs "
              f"{'no state' if want is None else 'a ' + want.__name__ + ' value'}")
    if isinstance(cls, type) and cls in vm.policy._trusted_types and want is None:
        return object.__new__(cls)  # a class the caller passed in allow=
    if type(cls) is not GlobalRef:
        _fail("copyreg._reconstructor may only rebuild a class outside the allowlist, "
              f"as a record; got {short_repr(cls)}")
    if cls.module.partition(".")[0] in _BUILTIN_MODULES:
        return _refuse_builtin_record(vm, "copyreg._reconstructor", cls.global_name)
    if want is dict:
        vm.charge(_DICT_ENTRY * len(base_state))
        return _new_record(vm, cls, items=dict(base_state))
    if want is list:
        vm.charge(len(base_state))
        return _new_record(vm, cls, listitems=list(base_state))
    return _new_record(vm, cls, () if want is None else (base_state,))


_RECONSTRUCTOR = Handler("copyreg._reconstructor", reduce=_reconstructor)


def _build_record(vm, record: Record, state) -> None:
    if id(record) not in vm.unbuilt:
        _fail(f"BUILD on record {record.global_name} a second time: a pickle sets an "
              "object's state once")
    vm.unbuilt.discard(id(record))
    record.state = state


def _record_items(vm, opname: str, record: Record, items: list) -> bool:
    if opname in ("APPEND", "APPENDS"):
        if record.listitems is None:
            record.listitems = []
        record.listitems.extend(items)
        return True
    if opname in ("SETITEM", "SETITEMS"):
        if record.items is None:
            record.items = {}
        target = record.items
        for i in range(0, len(items), 2):
            key = items[i]
            if type(key) is not str:
                vm.check_key(key, target)
            target[key] = items[i + 1]
        return True
    return False  # ADDITEMS: set subclasses pickle their items as arguments


_HASHABLE_RECORDS = frozenset({Size, Device, DType, StorageType, GlobalRef, QScheme})
#: what the torch backend's builder makes of those records: hashed by value (Size)
#: or identity, cheaply
_TORCH_VALUE_TYPES = frozenset({("torch", "Size"), ("torch", "dtype"), ("torch", "device"),
                                ("torch", "qscheme")})
_DEFAULT_HANDLERS = _default_handlers()
_TENSOR_FUNCTIONS.update(
    _DEFAULT_HANDLERS[f"torch._utils.{n}"]
    for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
              "_rebuild_parameter", "_rebuild_parameter_with_state", "_rebuild_qtensor")
)
DEFAULT_POLICY = Policy()
