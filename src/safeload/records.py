"""Inert values the unpickler hands to the rebuild stage.

Strategy: allowlist handlers never build tensors. They validate the *types* of
their arguments and return one of these records; a ``Builder`` (rebuild stage or
backend) turns records into arrays or tensors, or keeps them as they are (the
scanner and lazy open). Records hold only data: no callables, no imports.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

from .dtypes import DType

__all__ = [
    "Device",
    "GlobalRef",
    "QScheme",
    "QuantizedTensor",
    "Record",
    "Size",
    "StorageRef",
    "StorageType",
    "StorageView",
    "TensorRecord",
    "to_plain",
]


@dataclass(frozen=True)
class StorageType:
    """What ``GLOBAL torch FloatStorage`` (or ``UntypedStorage``) stands for."""

    name: str
    dtype: DType

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclass(frozen=True, init=False)
class StorageRef:
    """A persistent id ``('storage', type, key, location, numel)``, validated."""

    # declared here, not with slots=True: that makes a second class, whose
    # frozen __setattr__ then fails with a TypeError for names not fields
    __slots__ = ("key", "dtype", "location", "numel")

    key: str
    dtype: DType  # element type of the storage as saved (uint8 for untyped)
    location: str  # location tag as saved, e.g. "cpu", "cuda:1"
    numel: int  # elements of ``dtype``

    def __init__(self, key: str, dtype: DType, location: str, numel: int) -> None:
        # Once per storage. A frozen dataclass's own __init__ sets each field
        # through object.__setattr__ (0.57 us); the slots' own setters take
        # 0.35 us, and the instance stays frozen to everyone else.
        _set_key(self, key)
        _set_dtype(self, dtype)
        _set_location(self, location)
        _set_numel(self, numel)

    def __reduce__(self):
        # copy, deepcopy and pickle: through __init__, as the fields are frozen
        # (the default for slots would set them with the refusing __setattr__)
        return StorageRef, (self.key, self.dtype, self.location, self.numel)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


# the slot setters of StorageRef, bound once
_set_key = StorageRef.key.__set__
_set_dtype = StorageRef.dtype.__set__
_set_location = StorageRef.location.__set__
_set_numel = StorageRef.numel.__set__


@dataclass(frozen=True)
class StorageView:
    """A bare storage that a legacy file saved as a view of another:
    ``numel`` elements of ``storage`` from element ``offset``. What the inert
    builders return for one (a whole bare storage is its ``StorageRef``)."""

    storage: StorageRef
    offset: int
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.storage.dtype.itemsize


@dataclass(slots=True)
class TensorRecord:
    """Arguments of ``_rebuild_tensor*``, validated for type and sign.

    ``storage`` is whatever the builder returned for the StorageRef; ``offset``,
    ``shape`` and ``stride`` count elements of ``dtype``; ``metadata`` holds
    torch's conj / neg bits when the file set any (None otherwise: one dict
    fewer per tensor).
    """

    storage: object
    storage_ref: StorageRef
    dtype: DType
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool = False
    is_parameter: bool = False
    metadata: dict | None = None

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


@dataclass(frozen=True)
class QScheme:
    """``torch.per_tensor_affine`` (and the other qschemes) without torch."""

    name: str  # "per_tensor_affine", "per_channel_affine", ...

    def __repr__(self) -> str:
        return f"torch.{self.name}"


# -- foreign objects, kept as data (the records policy) -------------------------


@dataclass(frozen=True)
class GlobalRef:
    """A global the pickle names but that safeload never imports: a class or
    function outside the allowlist, referenced and not called (under the
    records policy). Compared and hashed by name.

    >>> GlobalRef("torch.optim.adam", "Adam")
    GlobalRef('torch.optim.adam.Adam')
    """

    module: str
    name: str

    @property
    def global_name(self) -> str:
        return f"{self.module}.{self.name}"

    def __str__(self) -> str:
        return self.global_name

    def __repr__(self) -> str:
        return f"GlobalRef({self.global_name!r})"


#: keys of ``Record.to_dict()`` that are not attributes of the object
RESERVED_KEYS = frozenset(
    {"__class__", "__args__", "__kwargs__", "__state__", "__items__", "__listitems__"}
)


class Record:
    """An instance of a class outside the allowlist, kept as data.

    Under the records policy an object the pickle builds the way Python
    pickles plain objects (``cls.__new__(cls, *args)`` then its state) comes
    back as a ``Record``: the class name as text, the constructor ``args`` (and
    ``kwargs``), the ``state`` that BUILD would have set, and for dict or list
    subclasses the ``items`` / ``listitems`` the pickle added. Nothing was
    imported, called or looked up to make it, and a Record has no behaviour of
    the class it names: no attribute access to its fields, no ``__getattr__``.

    >>> r = Record("argparse", "Namespace", state={"lr": 0.1})
    >>> r
    Record('argparse.Namespace', state={'lr': 0.1})
    >>> r.attributes["lr"], r.to_dict()
    (0.1, {'__class__': 'argparse.Namespace', 'lr': 0.1})
    """

    __slots__ = ("module", "name", "args", "kwargs", "state", "items", "listitems")

    def __init__(self, module: str, name: str, args: tuple = (), state: object = None, *,
                 kwargs: dict | None = None, items: dict | None = None,
                 listitems: list | None = None) -> None:
        self.module = module
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.state = state  # what BUILD passed; None if the pickle set no state
        self.items = items  # SETITEM(S) on a dict subclass
        self.listitems = listitems  # APPEND(S) on a list subclass

    @property
    def global_name(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def attributes(self) -> dict | None:
        """The object's attributes when its state has pickle's default form
        (the instance ``__dict__``, or ``(__dict__ or None, slots)``), else None."""
        state = self.state
        if type(state) is dict:
            merged = state
        elif (type(state) is tuple and len(state) == 2 and type(state[1]) is dict
              and (state[0] is None or type(state[0]) is dict)):
            merged = {**(state[0] or {}), **state[1]}
        else:
            return None
        if not all(type(k) is str for k in merged):
            return None
        return dict(merged)

    def to_dict(self) -> dict:
        """A plain dict: ``"__class__"`` names the class, the attributes follow
        when the state is an attribute dict; anything else the pickle gave sits
        under ``"__args__"``, ``"__kwargs__"``, ``"__state__"``, ``"__items__"``,
        ``"__listitems__"``. Values are not converted (see ``to_plain``)."""
        out: dict = {"__class__": self.global_name}
        attrs = self.attributes
        if attrs is not None and not RESERVED_KEYS.intersection(attrs):
            out.update(attrs)
        elif self.state is not None:
            out["__state__"] = self.state
        if self.args:
            out["__args__"] = self.args
        if self.kwargs:
            out["__kwargs__"] = self.kwargs
        if self.items is not None:
            out["__items__"] = self.items
        if self.listitems is not None:
            out["__listitems__"] = self.listitems
        return out

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        parts = [repr(self.global_name)]
        if self.args:
            parts.append(f"args={self.args!r}")
        if self.kwargs:
            parts.append(f"kwargs={self.kwargs!r}")
        if self.state is not None:
            parts.append(f"state={self.state!r}")
        if self.items is not None:
            parts.append(f"items={self.items!r}")
        if self.listitems is not None:
            parts.append(f"listitems={self.listitems!r}")
        return f"Record({', '.join(parts)})"


def _plain_key(key: object) -> object:
    """A dict key or set member with GlobalRefs turned into their names (keys
    must stay hashable, so a Record key stays a Record). Iterative: keys may
    nest as deep as Limits.max_nesting."""
    if type(key) is GlobalRef:
        return key.global_name
    if type(key) is not tuple:
        return key
    done: dict[int, tuple] = {}
    todo: list[tuple[tuple, bool]] = [(key, False)]
    while todo:
        node, ready = todo.pop()
        if id(node) in done:
            continue
        if ready:
            done[id(node)] = tuple(
                done[id(c)] if type(c) is tuple else
                c.global_name if type(c) is GlobalRef else c
                for c in node
            )
            continue
        todo.append((node, True))
        todo.extend((c, False) for c in node if type(c) is tuple and id(c) not in done)
    return done[id(key)]


def to_plain(obj: object) -> object:
    """``obj`` with every Record replaced by its ``to_dict()`` and every
    GlobalRef by its dotted name, recursively. Arrays and other leaves are kept
    as they are; shared and cyclic references stay shared and cyclic (no
    infinite recursion, at any depth).

    >>> to_plain({"hparams": Record("argparse", "Namespace", state={"lr": 0.1}),
    ...           "opt": GlobalRef("torch.optim.adam", "Adam")})
    {'hparams': {'__class__': 'argparse.Namespace', 'lr': 0.1}, 'opt': 'torch.optim.adam.Adam'}
    """
    from collections import Counter, OrderedDict

    dict_types = (dict, OrderedDict, Counter)
    memo: dict[int, object] = {}
    fills: list[object] = []  # mutable sources, filled once every value exists
    tuples: list[tuple] = []
    seen: set[int] = set()
    todo = [obj]
    # 1. discover the graph; mutable containers get an empty shell at once, so
    #    that cycles (which always pass through one) find their target.
    while todo:
        x = todo.pop()
        t = type(x)
        if id(x) in seen:
            continue
        if t is Record:
            memo[id(x)] = {}
            todo.extend((x.args, x.kwargs, x.state, x.items, x.listitems))
        elif t in dict_types:
            memo[id(x)] = t()
            todo.extend(x.values())
        elif t is list:
            memo[id(x)] = []
            todo.extend(x)
        elif t is set:
            memo[id(x)] = set()
        elif t is tuple:
            tuples.append(x)
            todo.extend(x)
        else:
            continue
        seen.add(id(x))
        if t is not tuple:
            fills.append(x)

    def value(x):
        t = type(x)
        if t is GlobalRef:
            return x.global_name
        if t is frozenset:
            return frozenset(_plain_key(m) for m in x)
        if t is Record or t is list or t is set or t is tuple or t in dict_types:
            return memo[id(x)]
        return x

    # 2. tuples, children first; only tuple -> tuple edges need an order (a
    #    cycle cannot be made of tuples alone).
    for root in tuples:
        stack = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in memo:
                continue
            if ready:
                memo[id(node)] = tuple(value(c) for c in node)
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in node if type(c) is tuple and id(c) not in memo)

    # 3. fill the shells.
    for src in fills:
        out = memo[id(src)]
        t = type(src)
        if t is Record:
            out.update((k, value(v)) for k, v in src.to_dict().items())
        elif t is list:
            out.extend(value(v) for v in src)
        elif t is set:
            out.update(_plain_key(m) for m in src)
        else:
            for k, v in src.items():
                out[_plain_key(k)] = value(v)
            if hasattr(src, "_metadata"):
                out._metadata = src._metadata
    return value(obj)
