"""Resource bombs: small inputs that ask for much memory or time, or a crash.

Huge length fields; memo bombs; shared-reference blow-ups (one big value
copied by a handler many times through the memo: set(), frozenset(),
bytearray(), bytes(), _codecs.encode, OrderedDict(), Counter(), tensor
metadata, numpy array states, tuple keys); error messages that would repr a
shared structure; deep nesting (as values, as keys, and hashed by any handler:
a 250 000-deep tuple overflows the C stack if anything hashes it); MARK
floods; huge logical shapes over tiny storages; hash-collision floods of int,
complex and tuple keys through every container opcode and handler; huge ints.

The child runs under RLIMIT_AS (2 GiB) and every load must finish within the
time budget; expectations say which bombs must be a LimitError.
"""

from __future__ import annotations

import struct

from fuzzkit import framed, op, pglobal, pstr, ptuple, torch_zip

from safeload.allowlist import DEFAULT_POLICY

from . import Case, register
from .payloads import (
    STORAGES,
    Raw,
    big_list,
    deep_tuple,
    in_zip,
    memo_get,
    memo_put,
    pid,
    refs,
    storage,
    tensor,
    val,
)

DEEP = 250_000  # hash() of a 200 000-deep tuple already overflows the C stack
M61 = 2**61 - 1  # hash(n) == hash(n + k * M61) for ints


def _p4(body: bytes) -> bytes:
    return framed(body, 4)


@register("resource_bombs")
def generate(canary: str) -> list[Case]:
    cases: list[Case] = []
    cases += _length_fields()
    cases += _memo_bombs()
    cases += _shared_copies()
    cases += _repr_bombs()
    cases += _deep()
    cases += _marks()
    cases += _shapes()
    cases += _collisions()
    cases += _ints()
    _ = canary
    return cases


def _length_fields() -> list[Case]:
    fields = {
        "BINBYTES8-2**63": b"\x8e" + struct.pack("<Q", 2**63),
        "BINBYTES8-max": b"\x8e" + struct.pack("<Q", 2**64 - 1),
        "BINUNICODE8-max": b"\x8d" + struct.pack("<Q", 2**64 - 1),
        "BYTEARRAY8-max": b"\x96" + struct.pack("<Q", 2**64 - 1),
        "BINBYTES-max": b"B" + struct.pack("<I", 2**32 - 1),
        "BINUNICODE-max": b"X" + struct.pack("<I", 2**32 - 1),
        "BINSTRING-max": b"T" + struct.pack("<i", 2**31 - 1),
        "LONG4-max": b"\x8b" + struct.pack("<i", 2**31 - 1),
        "LONG1-max": b"\x8a\xff",
        "FRAME-max": op("FRAME", 2**64 - 1),
        "SHORT_BINBYTES": b"C\xff",
        "LONG_BINGET-max": op("LONG_BINGET", 2**32 - 1),
    }
    cases = []
    for label, body in fields.items():
        data = op("PROTO", 5) + body + b"\x00" * 64 + op("STOP")
        cases.append(Case(f"length/{label}", data, "refuse"))
        cases.append(Case(f"length/{label}/zip", torch_zip(data, STORAGES), "refuse"))
    return cases


def _memo_bombs() -> list[Case]:
    n = 300_000
    cases = [
        Case("memo/memoize-300k", _p4(op("NONE") + op("MEMOIZE") * n), "value"),
        Case("memo/spread-indexes", _p4(op("NONE") + b"".join(
            op("LONG_BINPUT", i * 14_000) for i in range(n // 2))), "value"),
        Case("memo/big-list-300k-puts", _p4(big_list(10_000) + op("MEMOIZE") * n), "value"),
        Case("memo/limited", _p4(op("NONE") + op("MEMOIZE") * 5_000), "refuse:limit",
             kwargs={"limits": {"max_memo": 1_000}}),
    ]
    return cases


def _shared_copies() -> list[Case]:
    """One big value, then a handler applied to it K times through the memo."""
    n, k = 100_000, 20_000

    def repeat(setup: bytes, call: bytes) -> bytes:
        # setup leaves the big value in memo 0 and the callable in memo 1
        return _p4(setup + op("EMPTY_LIST") + op("MARK") + call * k + op("APPENDS"))

    big = big_list(n) + memo_put(0) + op("POP")
    pairs = op("EMPTY_LIST") + op("MARK") + b"".join(
        op("BININT", i) + op("NONE") + op("TUPLE2") for i in range(n)) + op("APPENDS") + \
        memo_put(0) + op("POP")
    big_str = pstr("x" * (4 * n), 4) + memo_put(0) + op("POP")
    big_bytes = op("BINBYTES", b"x" * (4 * n)) + memo_put(0) + op("POP")
    big_dict = op("EMPTY_DICT") + op("MARK") + b"".join(
        op("BININT", i) + op("NONE") for i in range(n)) + op("SETITEMS") + memo_put(0) + op("POP")
    args = memo_get(0) + op("TUPLE1")
    cases = []
    for label, setup, module, name in [
        ("set", big, "builtins", "set"), ("frozenset", big, "builtins", "frozenset"),
        ("bytearray", big_bytes, "builtins", "bytearray"),
        ("bytes", big_bytes, "builtins", "bytes"),
        ("OrderedDict", pairs, "collections", "OrderedDict"),
        ("Counter", big_dict, "collections", "Counter"),
    ]:
        call = memo_get(1) + args + op("REDUCE")
        head = setup + pglobal(module, name, 4) + memo_put(1) + op("POP")
        cases.append(Case(f"copies/{label}", repeat(head, call), "refuse:limit"))
        if label not in ("Counter",):
            newobj = memo_get(1) + args + op("NEWOBJ")
            cases.append(Case(f"copies/{label}/NEWOBJ", repeat(head, newobj), "any"))
    encode = big_str + pglobal("_codecs", "encode", 4) + memo_put(1) + op("POP")
    cases.append(Case("copies/_codecs.encode", repeat(
        encode, memo_get(1) + memo_get(0) + pstr("latin1", 4) + op("TUPLE2") + op("REDUCE")),
        "refuse:limit"))
    # tensor metadata: one big dict copied into every tensor record
    meta = op("EMPTY_DICT") + op("MARK") + b"".join(
        pstr(f"k{i}", 4) + op("NONE") for i in range(50_000)) + op("SETITEMS")
    targs = (op("MARK") + storage(4) + val(0, 4) + val((4,), 4) + val((1,), 4)
             + op("NEWFALSE") + op("EMPTY_DICT") + meta + op("TUPLE") + memo_put(2))
    body = (pglobal("torch._utils", "_rebuild_tensor_v2", 4) + memo_put(1) + targs
            + op("REDUCE") + op("POP") + op("EMPTY_LIST") + op("MARK")
            + (memo_get(1) + memo_get(2) + op("REDUCE")) * 30_000 + op("APPENDS"))
    cases.append(Case("copies/tensor-metadata", torch_zip(_p4(body), STORAGES), "any"))
    # numpy array states: one big raw bytes, byteswapped (copied) per array
    raw = op("BINBYTES8", b"\0" * 4_000_000) + memo_put(0) + op("POP")
    dtype = (pglobal("numpy", "dtype", 4) + val(("f4", False, True), 4) + op("REDUCE")
             + ptuple([val(3, 4), val(">", 4), op("NONE"), op("NONE"), op("NONE"),
                       val(-1, 4), val(-1, 4), val(0, 4)], 4) + op("BUILD") + memo_put(1)
             + op("POP"))
    state = ptuple([val(1, 4), val((1_000_000,), 4), memo_get(1), op("NEWFALSE"),
                    memo_get(0)], 4) + memo_put(2) + op("POP")
    rec = (pglobal("numpy.core.multiarray", "_reconstruct", 4) + ptuple([
        pglobal("numpy", "ndarray", 4), val((0,), 4), val(b"b", 4)], 4) + memo_put(3)
        + op("POP"))
    # each array: _reconstruct(*args) BUILD(state): 6 bytes for a 4 MB copy
    one = pglobal("numpy.core.multiarray", "_reconstruct", 4) + memo_get(3) + op("REDUCE") + \
        memo_get(2) + op("BUILD")
    cases.append(Case("copies/ndarray-byteswap", _p4(
        raw + dtype + state + rec + op("EMPTY_LIST") + op("MARK") + one * 600 + op("APPENDS")),
        "refuse:limit"))
    small = op("SHORT_BINBYTES", b"\0" * 200) + memo_put(0) + op("POP")
    small_state = ptuple([val(1, 4), val((50,), 4), pglobal("numpy", "dtype", 4)
                          + val(("<f4", False, True), 4) + op("REDUCE"), op("NEWFALSE"),
                          memo_get(0)], 4) + memo_put(2) + op("POP")
    cases.append(Case("copies/ndarray-small", _p4(
        small + small_state + rec + op("EMPTY_LIST") + op("MARK") + one * 20_000
        + op("APPENDS")), "any"))
    # tuple keys sharing one 9 999-part tuple: each key is walked and hashed
    part = op("MARK") + op("BININT1", 0) * 9_990 + op("TUPLE") + memo_put(0) + op("POP")
    keys = b"".join(op("BININT", i) + memo_get(0) + op("TUPLE2") + op("NONE")
                    for i in range(5_000))
    cases.append(Case("copies/tuple-keys", _p4(part + op("EMPTY_DICT") + op("MARK") + keys
                                               + op("SETITEMS")), "refuse:limit"))
    set_of_keys = part + pglobal("builtins", "set", 4) + op("EMPTY_LIST") + op("MARK") + \
        b"".join(op("BININT", i) + memo_get(0) + op("TUPLE2") for i in range(5_000)) + \
        op("APPENDS") + op("TUPLE1") + op("REDUCE")
    cases.append(Case("copies/tuple-keys-set", _p4(set_of_keys), "refuse:limit"))
    # references alone copy nothing: a list of K references to a big list
    cases.append(Case("copies/references-only", _p4(
        big + op("EMPTY_LIST") + op("MARK") + refs(0, 200_000) + op("APPENDS")), "value"))
    return cases


def _repr_bombs() -> list[Case]:
    """A refused value whose full repr would be huge (a list of K references to
    a big list): every message that names it must stay short and cheap."""
    big = big_list(20_000) + memo_put(0) + op("POP")
    huge = op("EMPTY_LIST") + op("MARK") + refs(0, 20_000) + op("APPENDS")  # repr: 1.2 GB
    huge_bytes = op("BINBYTES", b"x" * 1_000_000) + memo_put(5) + op("POP")
    shared_bytes = op("EMPTY_LIST") + op("MARK") + refs(5, 2_000) + op("APPENDS")
    slots = {
        "pid-kind": lambda h: ptuple([h, pglobal("torch", "FloatStorage", 4), val("0", 4),
                                      val("cpu", 4), val(4, 4)], 4) + op("BINPERSID"),
        "pid-key": lambda h: pid(key=Raw(h), proto=4) + op("BINPERSID"),
        "pid-location": lambda h: pid(location=Raw(h), proto=4) + op("BINPERSID"),
        "pid-numel": lambda h: pid(numel=Raw(h), proto=4) + op("BINPERSID"),
        "offset": lambda h: tensor(offset=Raw(h), proto=4),
        "size-item": lambda h: tensor(size=Raw(h + op("TUPLE1")), proto=4),
        "stride-item": lambda h: tensor(stride=Raw(h + op("TUPLE1")), proto=4),
        "device": lambda h: pglobal("torch", "device", 4) + h + op("TUPLE1") + op("REDUCE"),
        "numpy-dtype": lambda h: pglobal("numpy", "dtype", 4) + h + op("TUPLE1")
        + op("REDUCE"),
        "Size": lambda h: pglobal("torch", "Size", 4) + h + op("TUPLE1") + op("TUPLE1")
        + op("REDUCE"),
        "dict-key": lambda h: op("EMPTY_DICT") + h + op("NONE") + op("SETITEM"),
        "reduce-args": lambda h: pglobal("builtins", "set", 4) + h + op("REDUCE"),
        "build-state": lambda h: pglobal("collections", "OrderedDict", 4) + op("EMPTY_TUPLE")
        + op("REDUCE") + h + op("BUILD"),
        "stack-global": lambda h: h + pstr("x", 4) + op("STACK_GLOBAL"),
        "append-target": lambda h: h + op("TUPLE1") + op("NONE") + op("APPEND"),
        "qtensor-axis": lambda h: pglobal("torch._utils", "_rebuild_qtensor", 4) + op("MARK")
        + storage(4, storage="QInt8Storage", numel=16) + val(0, 4) + val((4,), 4)
        + val((1,), 4) + op("MARK") + pglobal("torch", "per_channel_affine", 4)
        + val([1.0] * 4, 4) + val([0] * 4, 4) + h + op("TUPLE") + op("NEWFALSE")
        + op("EMPTY_DICT") + op("TUPLE") + op("REDUCE"),
    }
    cases = []
    for label, build in slots.items():
        for kind, setup, value in (("list", big, huge), ("bytes", huge_bytes, shared_bytes)):
            data = torch_zip(_p4(setup + build(value)), {**STORAGES, "0": bytes(16)})
            cases.append(Case(f"repr/{label}/{kind}", data, "refuse"))
    return cases


def _deep() -> list[Case]:
    deep = deep_tuple(DEEP)
    cases = [
        Case("deep/tuple-value", _p4(deep), "value"),
        Case("deep/list-value", _p4(op("EMPTY_LIST") + memo_put(0) + op("POP") + (
            op("EMPTY_LIST") + memo_get(0) + op("APPEND") + memo_put(0) + op("POP")) * 200_000
            + memo_get(0)), "value"),
        Case("deep/dict-value", _p4(op("EMPTY_DICT") + memo_put(0) + op("POP") + (
            op("EMPTY_DICT") + op("BININT1", 0) + memo_get(0) + op("SETITEM") + memo_put(0)
            + op("POP")) * 200_000 + memo_get(0)), "value"),
        Case("deep/key-1001", _p4(op("EMPTY_DICT") + deep_tuple(1_001) + op("NONE")
                                  + op("SETITEM")), "refuse:limit"),
        Case("deep/key-999", _p4(op("EMPTY_DICT") + deep_tuple(999) + op("NONE")
                                 + op("SETITEM")), "value"),
    ]
    # a frozenset chain built through the handler: each level re-checks the key
    chain = op("EMPTY_TUPLE")
    for _ in range(1_100):
        chain = pglobal("builtins", "frozenset", 4) + op("MARK") + chain + op("LIST") + \
            op("TUPLE1") + op("REDUCE")
    cases.append(Case("deep/frozenset-1100", _p4(chain), "refuse"))
    # the deep tuple in every argument slot of every handler that can be called
    for name, handler in sorted(DEFAULT_POLICY.handlers.items()):
        module, _, attr = name.rpartition(".")
        if handler.reduce is None:
            continue
        for slot, arity in ((0, 1), (0, 4), (1, 4), (2, 4), (3, 4)):
            args = [op("NONE")] * slot + [deep] + [op("NONE")] * (3 - slot)
            body = pglobal(module, attr, 4) + op("MARK") + b"".join(args[:arity]) + \
                op("TUPLE") + op("REDUCE")
            # the records policy adds nothing for allowlisted handlers
            cases.append(Case(f"deep/arg/{name}/{slot}/{arity}", torch_zip(
                _p4(body), STORAGES), "any", modes=("load", "scan")))
    hashed = {
        "dict-key": op("EMPTY_DICT") + deep + op("NONE") + op("SETITEM"),
        "DICT-key": op("MARK") + deep + op("NONE") + op("DICT"),
        "set-item": op("EMPTY_SET") + op("MARK") + deep + op("ADDITEMS"),
        "frozenset-item": op("MARK") + deep + op("FROZENSET"),
        "set()": pglobal("builtins", "set", 4) + op("MARK") + deep + op("LIST") + op("TUPLE1")
        + op("REDUCE"),
        "OrderedDict-key": pglobal("collections", "OrderedDict", 4) + op("MARK") + deep
        + op("NONE") + op("TUPLE2") + op("LIST") + op("TUPLE1") + op("REDUCE"),
        "Counter-key": pglobal("collections", "Counter", 4) + op("EMPTY_DICT") + deep
        + op("NONE") + op("SETITEM") + op("TUPLE1") + op("REDUCE"),
        "key-part": op("EMPTY_DICT") + deep + op("NONE") + op("TUPLE2") + op("NONE")
        + op("SETITEM"),
        "build-state": pglobal("collections", "OrderedDict", 4) + op("EMPTY_TUPLE")
        + op("REDUCE") + deep + op("BUILD"),
        "build-metadata": pglobal("collections", "OrderedDict", 4) + op("EMPTY_TUPLE")
        + op("REDUCE") + op("EMPTY_DICT") + pstr("_metadata", 4) + deep + op("SETITEM")
        + op("BUILD"),
        "pid": deep + op("BINPERSID"),
        "stack-global": deep + pstr("x", 4) + op("STACK_GLOBAL"),
        "newobj-args": pglobal("builtins", "set", 4) + deep + op("NEWOBJ"),
        "newobj_ex-kwargs": pglobal("builtins", "set", 4) + op("EMPTY_TUPLE") + op("EMPTY_DICT")
        + deep + op("NONE") + op("SETITEM") + op("NEWOBJ_EX"),
        "reduce-func": deep + op("EMPTY_TUPLE") + op("REDUCE"),
        "obj-class": op("MARK") + deep + op("OBJ"),
        "append-target": deep + op("NONE") + op("APPEND"),
        "setitem-target": deep + op("NONE") + op("NONE") + op("SETITEM"),
        "from_type": pglobal("torch._tensor", "_rebuild_from_type_v2", 4) + op("MARK") + deep
        + op("NONE") + op("EMPTY_TUPLE") + op("NONE") + op("TUPLE") + op("REDUCE"),
        "from_type-type": pglobal("torch._tensor", "_rebuild_from_type_v2", 4) + op("MARK")
        + pglobal("torch._utils", "_rebuild_tensor_v2", 4) + deep + op("EMPTY_TUPLE")
        + op("NONE") + op("TUPLE") + op("REDUCE"),
    }
    for label, body in hashed.items():
        cases.append(Case(f"deep/hashed/{label}", torch_zip(_p4(body), STORAGES), "any"))
    return cases


def _marks() -> list[Case]:
    return [
        Case("marks/1001-open", _p4(op("MARK") * 1_001 + op("NONE")), "refuse:limit"),
        Case("marks/1000-nested-tuples", _p4(op("MARK") * 1_000 + op("TUPLE") * 1_000),
             "value"),
        Case("marks/million-pairs", _p4(op("NONE") + (op("MARK") + op("POP_MARK")) * 1_000_000),
             "value"),
        Case("marks/million-empty-lists", _p4(op("EMPTY_LIST") + op("MARK") + (
            op("MARK") + op("LIST")) * 500_000 + op("APPENDS")), "value"),
    ]


def _shapes() -> list[Case]:
    """Huge logical shapes over a 16-byte storage: views, never allocations."""
    cases = []
    for label, size, stride, expect in [
        ("2**40-stride0", (2**40,), (0,), "value"),
        ("2**15^4-stride0", (2**15,) * 4, (0,) * 4, "value"),
        ("2**31^2-over-int64", (2**31, 2**31), (0, 0), "refuse"),
        ("2**21^3-over-int64", (2**21,) * 3, (0, 0, 0), "refuse"),
        ("2**20^3-f4", (2**20,) * 3, (0, 0, 0), "value"),
        ("2**61-f4", (2**61,), (0,), "refuse"),
        ("2**60-f4", (2**60,), (0,), "value"),
        ("60-dims-of-2", (2,) * 60, (0,) * 60, "value"),
        ("64-dims-of-1", (1,) * 64, (0,) * 64, "value"),
    ]:
        cases.append(Case(f"shape/{label}", in_zip(tensor(size=size, stride=stride)), expect))
        param = pglobal("torch._utils", "_rebuild_parameter") + op("MARK") + tensor(
            size=size, stride=stride) + op("NEWTRUE") + op("EMPTY_DICT") + op("TUPLE") + \
            op("REDUCE")
        cases.append(Case(f"shape/{label}/parameter", in_zip(param), expect))
    # 100 000 views of one storage through the memo: time in proportion
    body = (pglobal("torch._utils", "_rebuild_tensor_v2", 4) + memo_put(1) + op("MARK")
            + storage(4) + val(0, 4) + val((4,), 4) + val((1,), 4) + op("NEWFALSE")
            + op("EMPTY_DICT") + op("TUPLE") + memo_put(2) + op("REDUCE") + op("POP")
            + op("EMPTY_LIST") + op("MARK") + (memo_get(1) + memo_get(2) + op("REDUCE"))
            * 100_000 + op("APPENDS"))
    cases.append(Case("shape/100k-views", torch_zip(_p4(body), STORAGES), "value"))
    return cases


def _collisions() -> list[Case]:
    """Keys with one hash: quadratic dict insertion unless refused."""
    ints = [1 + i * M61 for i in range(1, 401)]  # all past the modulus: bookkept
    floats_ints = [-1, -2]  # hash(-1) == hash(-2)
    cplx = [(float(7 - 1_000_003 * i), float(i)) for i in range(400)]

    def int_keys(keys, value=None):
        value = op("NONE") if value is None else value
        return b"".join(val(k, 4) + value for k in keys)

    def complex_key(re_im):
        return pglobal("builtins", "complex", 4) + val(re_im, 4) + op("REDUCE")

    tuples = []
    for i in range(400):  # 2**n tuples of -1/-2 share one hash
        bits = [(-1 if i >> b & 1 else -2) for b in range(9)]
        tuples.append(tuple(bits))
    cases = []
    for count, expect in ((16, "value"), (17, "refuse:limit"), (400, "refuse:limit")):
        keys = ints[:count]
        forms = {
            "SETITEMS": op("EMPTY_DICT") + op("MARK") + int_keys(keys) + op("SETITEMS"),
            "SETITEM": op("EMPTY_DICT") + b"".join(val(k, 4) + op("NONE") + op("SETITEM")
                                                   for k in keys),
            "DICT": op("MARK") + int_keys(keys) + op("DICT"),
            "ADDITEMS": op("EMPTY_SET") + op("MARK") + b"".join(val(k, 4) for k in keys)
            + op("ADDITEMS"),
            "FROZENSET": op("MARK") + b"".join(val(k, 4) for k in keys) + op("FROZENSET"),
            "set()": pglobal("builtins", "set", 4) + op("MARK") + b"".join(
                val(k, 4) for k in keys) + op("LIST") + op("TUPLE1") + op("REDUCE"),
            "OrderedDict()": pglobal("collections", "OrderedDict", 4) + op("MARK") + b"".join(
                ptuple([val(k, 4), op("NONE")], 4) for k in keys) + op("LIST") + op("TUPLE1")
            + op("REDUCE"),
            "Counter-SETITEMS": pglobal("collections", "Counter", 4) + op("EMPTY_TUPLE")
            + op("REDUCE") + op("MARK") + int_keys(keys, val(1, 4)) + op("SETITEMS"),
            "complex-keys": op("EMPTY_DICT") + op("MARK") + b"".join(
                complex_key(c) + op("NONE") for c in cplx[:count]) + op("SETITEMS"),
            "tuple-keys": op("EMPTY_DICT") + op("MARK") + int_keys(tuples[:count])
            + op("SETITEMS"),
            "tuple-key-parts": op("EMPTY_DICT") + op("MARK") + b"".join(
                ptuple([val(t, 4), val(0, 4)], 4) + op("NONE") for t in tuples[:count])
            + op("SETITEMS"),
        }
        for label, body in forms.items():
            cases.append(Case(f"collide/{label}/{count}", _p4(body), expect))
    cases.append(Case("collide/-1-and--2", _p4(op("MARK") + int_keys(floats_ints) + op("DICT")),
                      "value"))
    # distinct hashes that share low bits: fine, no flood
    low = [i << 40 for i in range(5_000)]
    cases.append(Case("collide/low-bits-5000", _p4(op("EMPTY_DICT") + op("MARK") + int_keys(low)
                                                   + op("SETITEMS")), "value"))
    return cases


def _ints() -> list[Case]:
    return [
        Case("int/LONG4-max-int-bytes", _p4(op("LONG4", 2**(8 * 65_535) - 1)), "value"),
        Case("int/LONG4-over", _p4(b"\x8b" + struct.pack("<i", 65_537) + b"\x01" * 65_537),
             "refuse:limit"),
        Case("int/INT-hex-long", _p4(b"I0x" + b"f" * 140_000 + b"\n"), "refuse:limit"),
        Case("int/LONG-long", _p4(b"L" + b"9" * 140_000 + b"\n"), "refuse:limit"),
        Case("int/INT-4301-digits", _p4(b"I" + b"9" * 4_301 + b"\n"), "refuse"),
        Case("int/huge-in-shape", in_zip(tensor(size=(Raw(op("LONG4", 2**500_000)),))),
             "refuse"),
        Case("int/huge-complex", _p4(pglobal("builtins", "complex", 4)
                                     + op("LONG4", 2**100_000) + op("TUPLE1") + op("REDUCE")),
             "refuse"),
        Case("int/huge-keys", _p4(op("EMPTY_DICT") + op("MARK") + b"".join(
            op("LONG4", 2**(8 * 60_000) + i) + op("NONE") for i in range(20)) + op("SETITEMS")),
            "value"),
    ]
