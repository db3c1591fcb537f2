"""Pickle fragments the generators share: values, calls, tensors, containers.

Everything is written opcode by opcode (``fuzzkit.op`` over safeload's opcode
table); nothing is produced by pickling a live object, so no generator can
depend on what the pickler of the day chooses to emit.
"""

from __future__ import annotations

import struct

from fuzzkit import framed, op, pcall, pglobal, pint, pstr, ptuple, torch_zip


class Raw(bytes):
    """A pickle fragment passed through ``val`` as it is."""


def val(x, proto: int = 2) -> bytes:
    """A Python value as pickle opcodes (no memo)."""
    if isinstance(x, Raw):
        return bytes(x)
    if x is None:
        return op("NONE")
    if x is True or x is False:
        return op("NEWTRUE" if x else "NEWFALSE") if proto >= 2 else op("INT", x)
    if type(x) is int:
        return pint(x, proto)
    if type(x) is float:
        return op("BINFLOAT", x) if proto >= 1 else op("FLOAT", x)
    if type(x) is str:
        return pstr(x, proto)
    if type(x) is bytes:
        if proto >= 3:
            return op("SHORT_BINBYTES", x) if len(x) < 256 else op("BINBYTES", x)
        return pcall("_codecs", "encode", [pstr(x.decode("latin-1"), proto),
                                           pstr("latin1", proto)], proto)
    if type(x) is tuple:
        return ptuple([val(v, proto) for v in x], proto)
    if type(x) is list:
        return op("MARK") + b"".join(val(v, proto) for v in x) + op("LIST")
    if type(x) is dict:
        return op("MARK") + b"".join(val(k, proto) + val(v, proto) for k, v in x.items()) + \
            op("DICT")
    raise TypeError(type(x))


def call(module: str, name: str, args, proto: int = 2) -> bytes:
    return pcall(module, name, [val(a, proto) for a in args], proto)


def pickle_of(body: bytes, proto: int = 2) -> bytes:
    """A complete pickle around one value fragment."""
    return framed(body, proto)


# --- torch records ------------------------------------------------------------------

#: the storages every tensor case's zip carries: 4 float32 (16 bytes), 64 bytes
STORAGES = {"0": struct.pack("<4f", 1.0, 2.0, 3.0, 4.0), "1": bytes(range(64))}


def pid(key="0", storage="FloatStorage", location="cpu", numel=4, kind="storage",
        proto: int = 2, extra=()) -> bytes:
    """A persistent id tuple (not yet BINPERSID)."""
    storage_part = storage if isinstance(storage, Raw) else pglobal("torch", storage, proto)
    return ptuple([val(kind, proto), storage_part, val(key, proto), val(location, proto),
                   val(numel, proto), *[val(e, proto) for e in extra]], proto)


def storage(proto: int = 2, **kwargs) -> bytes:
    return pid(proto=proto, **kwargs) + op("BINPERSID")


#: the empty hooks dict torch writes (a fragment, passed through ``val``)
EMPTY_DICT = Raw(op("EMPTY_DICT"))


def tensor(storage_part: bytes | None = None, offset=0, size=(4,), stride=(1,),
           requires_grad=False, hooks=EMPTY_DICT, metadata=None,
           fn: str = "_rebuild_tensor_v2", proto: int = 2, extra_args=()) -> bytes:
    """``torch._utils.<fn>(storage, offset, size, stride, requires_grad, hooks[, metadata])``."""
    storage_part = storage(proto) if storage_part is None else storage_part
    args = [storage_part, val(offset, proto), val(size, proto), val(stride, proto)]
    if fn != "_rebuild_tensor":
        args += [val(requires_grad, proto), val(hooks, proto)]
        if metadata is not None:
            args.append(val(metadata, proto))
    args += [val(a, proto) for a in extra_args]
    return pglobal("torch._utils", fn, proto) + op("MARK") + b"".join(args) + op("TUPLE") + \
        op("REDUCE")


def in_zip(body: bytes, proto: int = 2, storages: dict | None = None) -> bytes:
    """A torch zip whose data.pkl is ``body`` as a whole pickle."""
    return torch_zip(pickle_of(body, proto), STORAGES if storages is None else storages)


def memo_put(index: int) -> bytes:
    return op("BINPUT", index) if index < 256 else op("LONG_BINPUT", index)


def memo_get(index: int) -> bytes:
    return op("BINGET", index) if index < 256 else op("LONG_BINGET", index)


def deep_tuple(depth: int) -> bytes:
    """A ``depth``-deep nested 1-tuple in depth+1 bytes: hashing it recurses in C."""
    return op("NONE") + op("TUPLE1") * depth


def big_list(n: int, item: bytes = op("BININT1", 7)) -> bytes:
    """A list of n items in about 2n bytes."""
    out = bytearray(op("EMPTY_LIST"))
    for start in range(0, n, 1000):
        out += op("MARK") + item * min(1000, n - start) + op("APPENDS")
    return bytes(out)


def refs(index: int, count: int) -> bytes:
    """``count`` references to memo[index], 2 bytes each."""
    return memo_get(index) * count
