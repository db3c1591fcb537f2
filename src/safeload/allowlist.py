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
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .danger import danger_of
from .dtypes import DTYPES, STORAGE_TYPES, DType
from .errors import FormatError, UnsafeGlobalError
from .records import Device, Size, StorageRef, StorageType, TensorRecord

__all__ = ["DEFAULT_POLICY", "Handler", "LoadedStorage", "Policy", "storage_ref_from_pid"]


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
    """What BINPERSID pushes: the validated reference and the builder's value."""

    __slots__ = ("ref", "value")

    def __init__(self, ref: StorageRef, value: object) -> None:
        self.ref = ref
        self.value = value

    def __repr__(self) -> str:
        return f"<storage {self.ref.key!r} {self.ref.dtype.name}[{self.ref.numel}]>"


def _fail(message: str):
    raise FormatError(message)


def _is_int(x) -> bool:
    return type(x) is int


def _int_tuple(x, what: str, vm) -> tuple[int, ...]:
    if not isinstance(x, tuple):  # torch.Size arrives as Size (a tuple)
        _fail(f"{what} must be a tuple of ints, got {type(x).__name__}")
    if len(x) > vm.limits.max_ndim:
        _fail(f"{what} has {len(x)} dimensions, more than {vm.limits.max_ndim}")
    for d in x:
        if type(d) is not int or d < 0:
            _fail(f"{what} must hold non-negative ints, got {d!r:.40}")
    return tuple(x)


def _arity(args: tuple, lo: int, hi: int, name: str) -> None:
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        _fail(f"{name} takes {want} arguments, got {len(args)}")


# -- torch: storages and tensors ---------------------------------------------

_LOCATION = re.compile(r"[a-z_][a-z0-9_]{0,31}(:[0-9]{1,4})?\Z")
_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")


def storage_ref_from_pid(pid) -> StorageRef:
    """Validate torch's persistent id ``('storage', type, key, location, numel)``.

    Legacy files append a sixth item (view metadata, None for whole storages);
    the legacy reader handles views before calling this.
    """
    if type(pid) is not tuple or len(pid) not in (5, 6):
        _fail(f"persistent id must be a 5-tuple ('storage', type, key, location, numel), "
              f"got {type(pid).__name__} of length {len(pid) if type(pid) is tuple else '-'}")
    typename, storage_type, key, location, numel = pid[:5]
    if typename != "storage":
        _fail(f"persistent id kind must be 'storage', got {typename!r:.40}")
    if type(storage_type) is not StorageType:
        _fail("persistent id must name a torch storage type")
    if type(key) is int:  # legacy files use int-like keys; zip keys are str
        key = str(key)
    if type(key) is not str or not _KEY.match(key):
        _fail(f"storage key {key!r:.60} is not a plain record name")
    if type(location) is not str or not _LOCATION.match(location):
        _fail(f"storage location {location!r:.60} is not a device tag")
    if type(numel) is not int or numel < 0:
        _fail(f"storage size {numel!r:.40} is not a non-negative int")
    return StorageRef(key=key, dtype=storage_type.dtype, location=location, numel=numel)


def _tensor_record(vm, storage, offset, size, stride, dtype: DType | None = None) -> TensorRecord:
    if type(storage) is not LoadedStorage:
        _fail(f"tensor storage must come from a persistent id, got {type(storage).__name__}")
    if type(offset) is not int or offset < 0:
        _fail(f"storage offset must be a non-negative int, got {offset!r:.40}")
    shape = _int_tuple(size, "tensor size", vm)
    strides = _int_tuple(stride, "tensor stride", vm)
    if len(shape) != len(strides):
        _fail(f"tensor size has {len(shape)} dimensions but stride has {len(strides)}")
    return TensorRecord(
        storage=storage.value,
        storage_ref=storage.ref,
        dtype=dtype or storage.ref.dtype,
        offset=offset,
        shape=shape,
        stride=strides,
    )


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
        rec.metadata = dict(metadata)
    return vm.builder.tensor(rec)


def _rebuild_tensor(vm, args):
    _arity(args, 4, 4, "_rebuild_tensor")
    return vm.builder.tensor(_tensor_record(vm, *args))


def _rebuild_tensor_v2(vm, args):
    _arity(args, 6, 7, "_rebuild_tensor_v2")
    storage, offset, size, stride, requires_grad, hooks, *metadata = args
    _check_hooks(hooks)
    rec = _tensor_record(vm, storage, offset, size, stride)
    return _finish_tensor(vm, rec, requires_grad, *metadata)


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


_TENSOR_TYPE = Handler("torch.Tensor")
_PARAMETER_TYPE = Handler("torch.nn.parameter.Parameter")


def _rebuild_from_type_v2(vm, args):
    _arity(args, 4, 4, "_rebuild_from_type_v2")
    func, new_type, inner_args, state = args
    if func not in _TENSOR_FUNCTIONS:
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
        _fail(f"{text!r:.40} is not a device")
    kind, _, index = text.partition(":")
    return vm.builder.device(Device(kind, int(index) if index else None))


# -- builtins and collections --------------------------------------------------


def _iterable_arg(vm, args, name):
    _arity(args, 0, 1, name)
    if not args:
        return ()
    items = args[0]
    if type(items) not in (list, tuple, set, frozenset):
        _fail(f"{name}() needs a list, tuple or set, got {type(items).__name__}")
    vm.charge(len(items))
    return items


def _set(vm, args, kwargs=None):
    items = _iterable_arg(vm, args, "set")
    result = set()
    for item in items:
        vm.check_key(item, result)
        result.add(item)
    return result


def _frozenset(vm, args, kwargs=None):
    return frozenset(_set(vm, args))


def _bytearray(vm, args, kwargs=None):
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
    _arity(args, 0, 1, "bytes")
    if not args:
        return b""
    if type(args[0]) in (bytes, bytearray):
        vm.charge(len(args[0]))
        return bytes(args[0])
    _fail("bytes() takes no arguments or bytes")


def _number(x) -> bool:
    return type(x) in (int, float, bool)


def _complex(vm, args, kwargs=None):
    _arity(args, 0, 2, "complex")
    if not all(_number(a) for a in args):
        _fail("complex() takes two numbers")
    return complex(*args)


def _slice(vm, args, kwargs=None):
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


def _ordered_dict(vm, args, kwargs=None):
    _arity(args, 0, 1, "OrderedDict")
    result = OrderedDict()
    if args:
        items = args[0]
        if type(items) not in (list, tuple):
            _fail("OrderedDict() takes a list of pairs")
        vm.charge(len(items))
        for pair in items:
            if type(pair) not in (list, tuple) or len(pair) != 2:
                _fail("OrderedDict() takes a list of pairs")
            vm.check_key(pair[0], result)
            result[pair[0]] = pair[1]
    return result


def _counter(vm, args, kwargs=None):
    _arity(args, 0, 1, "Counter")
    result = Counter()
    if args:
        if type(args[0]) is not dict:
            _fail("Counter() takes a dict")
        vm.charge(len(args[0]))
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


def _numpy_dtype(vm, args):
    import numpy as np

    _arity(args, 1, 3, "numpy.dtype")
    code = args[0]
    if type(code) is not str or not _NUMPY_DTYPE.match(code):
        _fail(f"numpy dtype {code!r:.40} is not a plain numeric type")
    if not all(type(a) is bool for a in args[1:]):
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
    if type(raw) is str:  # Python 2 pickles: latin-1 text
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
    if type(raw) is str:
        raw = raw.encode("latin-1")
    if type(raw) not in (bytes, bytearray):
        _fail("numpy array data must be bytes")
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
        _fail(f"numpy dtype byte order {order!r:.10} is not one of < > | =")
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

    add("collections.OrderedDict", reduce=_ordered_dict, new=_ordered_dict)
    add("collections.Counter", reduce=_counter, new=_counter)
    add("builtins.set", reduce=_set, new=_set)
    add("builtins.frozenset", reduce=_frozenset, new=_frozenset)
    add("builtins.bytearray", reduce=_bytearray, new=_bytearray)
    add("builtins.bytes", reduce=_bytes, new=_bytes)
    add("builtins.complex", reduce=_complex, new=_complex)
    add("builtins.slice", reduce=_slice)
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
    """

    def __init__(self, handlers: Mapping[str, Handler] | None = None,
                 trusted: Mapping[str, object] | None = None) -> None:
        self.handlers: dict[str, Handler] = dict(handlers or _DEFAULT_HANDLERS)
        self.trusted: dict[str, object] = dict(trusted or {})
        self._trusted_by_id = {id(obj): obj for obj in self.trusted.values()}
        self._trusted_types = {obj for obj in self.trusted.values() if isinstance(obj, type)}

    def allowing(self, allow: Iterable[object] | Mapping[str, object] | None) -> Policy:
        if not allow:
            return self
        if isinstance(allow, Mapping):
            extra = dict(allow)
        else:
            extra = {}
            for obj in allow:
                module = getattr(obj, "__module__", None)
                qualname = getattr(obj, "__qualname__", None)
                if not isinstance(module, str) or not isinstance(qualname, str):
                    raise TypeError(f"cannot tell the global name of {obj!r}; pass "
                                    "allow={'module.name': obj}")
                extra[f"{module}.{qualname}"] = obj
        return Policy(self.handlers, {**self.trusted, **extra})

    # -- lookups used by the VM --------------------------------------------------

    def lookup(self, module: str, name: str):
        full = f"{module}.{name}"
        handler = self.handlers.get(full)
        if handler is not None:
            return handler
        obj = self.trusted.get(full)
        if obj is not None:
            return Handler(full, push=lambda vm, o=obj: o)
        return None

    def unsafe_global(self, module: str, name: str) -> UnsafeGlobalError:
        full = f"{module}.{name}"
        why = danger_of(module, name)
        if why is not None:
            return UnsafeGlobalError(
                f"global '{full}' is refused: it {why}",
                global_name=full,
                hint="This file tries to run code; do not load it",
            )
        return UnsafeGlobalError(
            f"global '{full}' is not in safeload's allowlist of tensor, storage and "
            "primitive types",
            global_name=full,
            hint=(f"safeload never imports it. If you trust this file, import it yourself "
                  f"and pass allow={{'{full}': obj}} for this call"),
        )

    def call(self, vm, func, args: tuple, kwargs: dict | None, opname: str):
        if type(func) is Handler:
            if opname in ("NEWOBJ", "NEWOBJ_EX"):
                if func.new is None:
                    _fail(f"{opname} on {func.name}, which is not a class safeload builds")
                return func.new(vm, args, kwargs) if kwargs else func.new(vm, args)
            if func.reduce is None:
                _fail(f"{func.name} may be named but not called")
            return func.reduce(vm, args)
        trusted = self._trusted_by_id.get(id(func))
        if trusted is not None and trusted is func:
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
            return _pickle_build(target, state)
        from .unpickler import Opaque

        if isinstance(target, Opaque):
            vm.refuse(UnsafeGlobalError(f"BUILD sets the state of '{target.what}'",
                                        global_name=target.what), target.what)
            return
        _fail(f"BUILD on a {t.__name__} value: the pickle may only set state on "
              "objects safeload builds")

    def is_hashable_record(self, obj) -> bool:
        return type(obj) in _HASHABLE_RECORDS or (
            type(obj).__module__ == "numpy" and hasattr(obj, "dtype")  # numpy scalars
        ) or type(obj) in self._trusted_types


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


_HASHABLE_RECORDS = frozenset({Size, Device, DType, StorageType})
_DEFAULT_HANDLERS = _default_handlers()
_TENSOR_FUNCTIONS.update(
    _DEFAULT_HANDLERS[f"torch._utils.{n}"]
    for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
              "_rebuild_parameter", "_rebuild_parameter_with_state")
)
DEFAULT_POLICY = Policy()
