"""The compiled loop (``_vmfast.c``) changes nothing but speed.

It runs the hot pure-data opcodes and hands every other opcode -- and every
one that would fail or reach a bound -- back to the Python handler. So for any
bytes and any Limits, a load with it and a load without it must give the same
value (same types, float bits, array bytes, sharing) or the same error (same
type, same message, same location). Each property here runs both and compares.
The other suites (oracle, adversarial, properties) run with the compiled loop,
as users do; this one is what ties it to the pure-Python VM they were written
against.
"""

from __future__ import annotations

import math
import struct
import sys
from collections import OrderedDict

import numpy as np
import pytest
from fuzzkit import examples, op, torch_zip
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_oracle import _TIGHT, pickles
from test_fuzz_properties import _STORAGES, mutate, opcode_sequences

import safeload
from safeload import unpickler

FAST = unpickler._fast_run() if unpickler.FAST_RUN is None else unpickler.FAST_RUN

pytestmark = pytest.mark.skipif(FAST is None, reason="safeload._vmfast is not built here")


def _load(data: bytes, fast, **kwargs):
    saved = unpickler.FAST_RUN
    unpickler.FAST_RUN = fast
    try:
        return "value", safeload.load(data, **kwargs)
    except safeload.SafeloadError as err:
        return "refused", err
    finally:
        unpickler.FAST_RUN = saved


def _same(a, b, pairs: dict) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, dict, set, bytearray, np.ndarray)):
        # the same sharing: each object of one value pairs with one of the other
        if id(a) in pairs:
            return pairs[id(a)] is b
        pairs[id(a)] = b
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape or a.strides != b.strides:
            return False
        if a.nbytes <= 1 << 24:
            return a.tobytes() == b.tobytes()
        # a huge logical view (stride 0) over a small storage: its corners
        corners = [tuple(0 if k else n - 1 for n in a.shape) for k in (0, 1)]
        return all(a[c].tobytes() == b[c].tobytes() for c in corners)
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, complex):
        return _same(a.real, b.real, pairs) and _same(a.imag, b.imag, pairs)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, pairs) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if len(a) != len(b) or not _same(getattr(a, "_metadata", None),
                                         getattr(b, "_metadata", None), pairs):
            return False
        return all(_same(ka, kb, pairs) and _same(a[ka], b[kb], pairs)
                   for ka, kb in zip(a, b, strict=True))
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and sorted(map(repr, a)) == sorted(map(repr, b))
    if isinstance(a, (str, bytes, int, bool, type(None), bytearray)):
        return a == b
    return repr(a) == repr(b)  # records, Opaque, numpy scalars: by what they show


def assert_same(data: bytes, **kwargs) -> None:
    fast = _load(data, FAST, **kwargs)
    pure = _load(data, None, **kwargs)
    assert fast[0] == pure[0], f"compiled: {fast[1]!r:.300}; pure Python: {pure[1]!r:.300}"
    if fast[0] == "refused":
        assert type(fast[1]) is type(pure[1])
        assert str(fast[1]) == str(pure[1])
        assert vars(fast[1]) == vars(pure[1])
    else:
        assert _same(fast[1], pure[1], {}), f"{fast[1]!r:.300} != {pure[1]!r:.300}"


# --- opcode soup: mostly the opcodes the compiled loop runs ---------------------------------

_HOT_NOARG = ["MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE", "EMPTY_LIST",
              "EMPTY_DICT", "NONE", "NEWTRUE", "NEWFALSE", "SETITEM", "SETITEMS", "APPEND",
              "APPENDS", "MEMOIZE", "POP", "DICT", "LIST", "EMPTY_SET", "ADDITEMS"]


@st.composite
def hot_op(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        return op(draw(st.sampled_from(_HOT_NOARG)))
    if kind == 4:
        return op("BININT1", draw(st.integers(0, 255))) if draw(st.booleans()) else \
            op("BININT2", draw(st.integers(0, 65535)))
    if kind == 5:
        return op("BININT", draw(st.integers(-(2**31), 2**31 - 1))) if draw(st.booleans()) \
            else op("BINFLOAT", draw(st.floats()))
    if kind == 6:
        name = draw(st.sampled_from(["SHORT_BINUNICODE", "BINUNICODE"]))
        return op(name, draw(st.text(max_size=8)))
    if kind == 7:
        # raw bytes: invalid UTF-8 and lone surrogates (surrogatepass) reach the decoder
        raw = draw(st.binary(max_size=6) | st.sampled_from([b"\xed\xa0\x80", b"\xff", b"a\xc3"]))
        return b"\x8c" + bytes([len(raw)]) + raw
    index = draw(st.integers(0, 6) | st.integers(0, 2**32 - 1))
    if kind == 8:
        return op("BINPUT", index % 256) if index < 256 and draw(st.booleans()) else \
            op("LONG_BINPUT", index)
    return op("BINGET", index % 256) if index < 256 and draw(st.booleans()) else \
        op("LONG_BINGET", index)


@st.composite
def hot_soup(draw) -> bytes:
    proto = draw(st.integers(2, 5))
    body = b"".join(draw(st.lists(hot_op(), max_size=60)))
    data = op("PROTO", proto) + body + op("STOP")
    cut = draw(st.integers(0, 3))
    return data[: len(data) - cut] if cut and len(data) > cut else data


@settings(max_examples=examples(800))
@given(hot_soup())
def test_hot_opcode_soup_gives_the_same_outcome(data):
    assert_same(data)


@settings(max_examples=examples(500))
@given(hot_soup(), _TIGHT)
def test_hot_opcode_soup_under_tight_limits_gives_the_same_outcome(data, limits):
    assert_same(data, limits=limits)


@settings(max_examples=examples(300))
@given(opcode_sequences(), st.booleans())
def test_structured_opcode_sequences_give_the_same_outcome(data, in_zip):
    assert_same(torch_zip(data, _STORAGES) if in_zip else data)


@settings(max_examples=examples(200))
@given(pickles())
def test_safe_pickles_give_the_same_value(case):
    data, encoding, _ = case
    assert_same(data, encoding=encoding)


@settings(max_examples=examples(200))
@given(st.data())
def test_mutated_pickles_under_tight_limits_give_the_same_outcome(data):
    pickle_bytes, encoding, _ = data.draw(pickles())
    mutated = data.draw(mutate(pickle_bytes))
    assert_same(mutated, encoding=encoding, limits=data.draw(_TIGHT))


# --- each hand-back condition, named -----------------------------------------------------

_P = op("PROTO", 2)


@pytest.mark.parametrize(
    "body,limits",
    [
        (op("MARK") * 5 + op("STOP"), {"max_nesting": 4}),
        (op("MARK") * 4 + op("TUPLE") * 4 + op("STOP"), {"max_nesting": 4}),
        (op("MARK") + op("NONE") * 5 + op("TUPLE") + op("STOP"), {"max_container_items": 4}),
        (op("MARK") + op("NONE") * 4 + op("TUPLE") + op("STOP"), {"max_container_items": 4}),
        (op("NONE") + op("BINPUT", 1) + op("BINPUT", 2) + op("STOP"), {"max_memo": 1}),
        (op("NONE") + op("BINPUT", 1) + op("BINPUT", 1) + op("STOP"), {"max_memo": 1}),
        (op("NONE") + op("MEMOIZE") * 3 + op("STOP"), {"max_memo": 2}),
        (op("BINUNICODE", "abcde") + op("STOP"), {"max_bytes": 4}),
        (op("BINUNICODE", "éé") + op("STOP"), {"max_bytes": 2}),  # 4 bytes, 2 letters
        (op("SHORT_BINUNICODE", "abcd") + op("STOP"), {"max_bytes": 4}),
        (op("NONE") * 10 + op("POP") * 9 + op("STOP"), {"max_ops": 12}),
        (op("NONE") * 10 + op("POP") * 9 + op("STOP"), {"max_ops": 21}),
        (op("MARK") + op("NONE") * 3000 + op("TUPLE") + op("STOP"), {"max_stack": 2000}),
    ],
)
def test_each_bound_is_decided_by_the_python_vm(body, limits):
    assert_same(_P + body, limits=safeload.Limits(**limits))


@pytest.mark.parametrize(
    "body",
    [
        op("BINGET", 3) + op("STOP"),                    # never stored
        op("LONG_BINGET", 2**32 - 1) + op("STOP"),
        op("BINPUT", 0) + op("STOP"),                    # empty stack
        op("MEMOIZE") + op("STOP"),
        op("TUPLE") + op("STOP"),                        # no MARK
        op("NONE") + op("TUPLE2") + op("STOP"),          # too few values
        op("NONE") + op("NONE") + op("TUPLE3") + op("STOP"),
        op("TUPLE1") + op("STOP"),
        b"X\x05\x00\x00\x00ab" ,                         # length past the end
        b"X\x01\x00",                                    # length itself cut
        b"\x8c\x02\xff\xfe" + op("STOP"),                # invalid UTF-8
        b"\x8c\x03\xed\xa0\x80" + op("STOP"),            # a lone surrogate: accepted
        b"J\x01\x02",                                    # BININT cut
        b"G\x00\x00\x00\x00",                            # BINFLOAT cut
        op("EMPTY_DICT") + op("MARK") + op("NONE") + op("NONE") + op("SETITEMS") + op("STOP"),
        op("EMPTY_DICT") + op("MARK") + op("NONE") + op("SETITEMS") + op("STOP"),
        op("EMPTY_DICT") + op("NONE") + op("NONE") + op("SETITEM") + op("STOP"),
        op("EMPTY_DICT") + op("BININT1", 1) + op("NONE") + op("SETITEM") + op("STOP"),
        op("EMPTY_LIST") + op("MARK") + op("SETITEMS") + op("STOP"),
        op("EMPTY_TUPLE") + op("MARK") + op("NONE") + op("APPENDS") + op("STOP"),
        op("EMPTY_TUPLE") + op("NONE") + op("APPEND") + op("STOP"),
        op("MARK") + op("APPENDS") + op("STOP"),                       # nothing below MARK
        op("MARK") + op("SETITEMS") + op("STOP"),
        op("EMPTY_DICT") + op("SETITEM") + op("STOP"),
        op("NONE") + op("APPEND") + op("STOP"),
        op("EMPTY_LIST") + op("MARK") + op("BININT1", 2) + op("NONE") + op("APPENDS")
        + op("DUP") + op("NONE") + op("APPEND") + op("POP") + op("STOP"),
        op("EMPTY_DICT") + op("SHORT_BINUNICODE", "k") + op("EMPTY_LIST") + op("SETITEM")
        + op("MARK") + op("SHORT_BINUNICODE", "k") + op("NONE") + op("SETITEMS") + op("STOP"),
        op("NONE") + op("BINPUT", 0) + op("BINGET", 0) + op("BINGET", 0) + op("TUPLE2")
        + op("STOP"),
        b"",
        op("NONE"),
    ],
)
def test_each_failure_is_raised_by_the_python_vm(body):
    assert_same(_P + body)


@pytest.mark.parametrize(
    "body,limits",
    [
        # a bound that is not an int: the opcode count is compared, not passed to C
        (op("NONE") + op("STOP"), {"max_ops": 100.0}),
        (op("NONE") * 3 + op("POP") * 2 + op("STOP"), {"max_ops": 2.5}),
        (op("NONE") + op("STOP"), {"max_ops": np.int64(100)}),
        (op("NONE") + op("STOP"), {"max_ops": float("inf")}),
        # a negative bound refuses even the empty value (0 > -1)
        (op("SHORT_BINUNICODE", "") + op("STOP"), {"max_bytes": -1}),
        (op("BINUNICODE", "") + op("STOP"), {"max_bytes": -1}),
        (op("MARK") + op("TUPLE") + op("STOP"), {"max_container_items": -1}),
        (op("EMPTY_LIST") + op("MARK") + op("APPENDS") + op("STOP"), {"max_container_items": -1}),
        (op("MARK") + op("STOP"), {"max_nesting": -1}),
        (op("NONE") + op("MEMOIZE") + op("STOP"), {"max_memo": -1}),
    ],
)
def test_any_limits_value_gives_the_same_outcome(body, limits):
    assert_same(_P + body, limits=safeload.Limits(**limits))


def test_an_ordered_dict_target_gives_the_same_dict():
    data = (_P + b"ccollections\nOrderedDict\n" + op("EMPTY_TUPLE") + op("REDUCE")
            + op("MARK") + op("SHORT_BINUNICODE", "a") + op("NONE") + op("SETITEMS")
            + op("SHORT_BINUNICODE", "b") + op("NONE") + op("SETITEM") + op("STOP"))
    assert_same(data)
    assert _load(data, FAST)[1] == OrderedDict(a=None, b=None)


def test_a_real_state_dict_gives_the_same_arrays():
    parts = [_P, op("EMPTY_DICT"), op("MARK")]
    for i in range(50):
        parts += [op("BINUNICODE", f"layer{i}.weight"), op("BINFLOAT", i / 7)]
    data = b"".join(parts) + op("SETITEMS") + op("STOP")
    assert_same(data)


class _Meddler:
    """An allowed class whose __del__ empties the VM's stacks: Python code that
    a dict value's last reference, dropped by SETITEM(S) or a memo PUT, runs in
    the middle of an opcode (the compiled loop's too)."""

    def __del__(self):
        frame = sys._getframe(1)
        while frame is not None:
            vm = frame.f_locals.get("self")
            if isinstance(vm, unpickler.Unpickler):
                vm.stack.clear()
                vm.metastack.clear()
                return
            frame = frame.f_back


@pytest.mark.parametrize("more", [1, 40])
def test_python_code_run_by_a_dropped_value_leaves_no_dangling_reference(more):
    # d["a"] = _Meddler(); then SETITEMS d["a"] = None drops it: its __del__
    # empties the stack d was on, so only the running opcode still holds d,
    # and SETITEMS goes on inserting into it
    meddler = _P + b"c" + __name__.encode() + b"\n_Meddler\n" + op("EMPTY_TUPLE") + op("REDUCE")
    items = b"".join(op("SHORT_BINUNICODE", f"k{i}") + op("NONE") for i in range(more))
    data = (_P + op("EMPTY_DICT") + op("SHORT_BINUNICODE", "a") + meddler[2:] + op("SETITEM")
            + op("MARK") + op("SHORT_BINUNICODE", "a") + op("NONE") + items + op("SETITEMS")
            + op("STOP"))
    for _ in range(20):
        assert_same(data, allow={f"{__name__}._Meddler": _Meddler})


def test_an_allocation_failure_in_the_compiled_loop_is_located_at_its_opcode(monkeypatch):
    # The Python loop locates "out of memory" at the opcode whose handler ran
    # out; the compiled loop must report which of the opcodes it ran failed.
    testcapi = pytest.importorskip("_testcapi")
    if not hasattr(testcapi, "set_nomemory"):
        pytest.skip("no _testcapi.set_nomemory here")
    data = _P + op("NONE") * 3 + op("BINUNICODE", "x" * 300) + op("TUPLE2") + op("STOP")

    def failing(data, pos, stack, metastack, memo, budget, *rest):
        # three opcodes run as usual, then the next allocation fails: the
        # 300-letter str of BINUNICODE (offset 5), not the stretch's first opcode
        first = FAST(data, pos, stack, metastack, memo, min(3, budget), *rest)
        if first[1] < 3:
            return first
        # made first: nothing allocates between the hooks but FAST
        args = (data, first[0], first[2], metastack, memo, budget - 3, *rest)
        testcapi.set_nomemory(0, 1)
        try:
            second = FAST(*args)
        finally:
            testcapi.remove_mem_hooks()
        return (second[0], first[1] + second[1], *second[2:])

    def out_of_memory(self, pos):
        raise MemoryError

    fast = _load(data, failing)
    with monkeypatch.context() as m:
        m.setattr(unpickler.Unpickler, "_op_BINUNICODE", out_of_memory)
        pure = _load(data, None)
    assert fast[0] == pure[0] == "refused"
    assert str(fast[1]) == str(pure[1]) and vars(fast[1]) == vars(pure[1])
    assert fast[1].location.offset == 5


# --- the two opcodes it runs by calling the Python handler's own code --------------------

_PID = (op("MARK") + op("SHORT_BINUNICODE", "storage") + b"ctorch\nFloatStorage\n"
        + op("SHORT_BINUNICODE", "0") + op("SHORT_BINUNICODE", "cpu") + op("BININT1", 4)
        + op("TUPLE"))
_V2 = b"ctorch._utils\n_rebuild_tensor_v2\n"
_HOOKS = b"ccollections\nOrderedDict\n" + op("EMPTY_TUPLE") + op("REDUCE")


_FALSE = op("NEWFALSE")


def _tensor(shape=(4,), stride=(1,), offset=0, grad=_FALSE, hooks=_HOOKS) -> bytes:
    def ints(xs):
        return op("MARK") + b"".join(op("BININT1", x) for x in xs) + op("TUPLE")
    return (_V2 + op("MARK") + _PID + op("BINPERSID") + op("BININT1", offset) + ints(shape)
            + ints(stride) + grad + hooks + op("TUPLE") + op("REDUCE"))


@pytest.mark.parametrize(
    "body,in_zip",
    [
        (_tensor() + op("STOP"), True),
        (op("EMPTY_DICT") + op("MARK") + b"".join(
            op("SHORT_BINUNICODE", f"t{i}") + _tensor(offset=i % 4, shape=(4 - i % 4,))
            for i in range(40)) + op("SETITEMS") + op("STOP"), True),
        (_tensor(shape=(5,)) + op("STOP"), True),                  # past its storage
        (_tensor(offset=200) + op("STOP"), True),
        (_tensor(grad=op("NONE")) + op("STOP"), True),             # requires_grad not a bool
        (_tensor(hooks=op("EMPTY_LIST")) + op("STOP"), True),      # hooks: not a dict
        (_PID + op("BINPERSID") + op("STOP"), True),              # a bare storage
        (_PID + op("BINPERSID") + op("STOP"), False),             # no storage records
        (_PID.replace(b"\x8c\x010", b"\x8c\x019") + op("BINPERSID") + op("STOP"), True),
        (_PID.replace(b"cpu", b"c/u") + op("BINPERSID") + op("STOP"), True),
        (op("NONE") + op("BINPERSID") + op("STOP"), True),         # not a 5-tuple
        (op("BINPERSID") + op("STOP"), True),                      # empty stack
        (b"ctorch\nFloatStorage\n" + op("EMPTY_TUPLE") + op("REDUCE") + op("STOP"), False),
        (b"ccollections\nOrderedDict\n" + op("NONE") + op("REDUCE") + op("STOP"), False),
        (b"ccollections\nOrderedDict\n" + op("MARK") + op("BININT1", 1) + op("TUPLE")
         + op("REDUCE") + op("STOP"), False),
        (op("EMPTY_TUPLE") + op("REDUCE") + op("STOP"), False),    # one value only
        (op("NONE") + op("EMPTY_TUPLE") + op("REDUCE") + op("STOP"), False),  # not callable
        (b"cbuiltins\nset\n" + op("MARK") + op("EMPTY_LIST") + op("TUPLE")
         + op("REDUCE") + op("STOP"), False),
        (b"cos\nsystem\n" + op("MARK") + op("SHORT_BINUNICODE", "true") + op("TUPLE")
         + op("REDUCE") + op("STOP"), False),
    ],
)
def test_each_handler_call_gives_the_same_outcome(body, in_zip):
    data = _P + body
    assert_same(torch_zip(data, _STORAGES) if in_zip else data)


@pytest.mark.parametrize("limits", [{"max_ops": n} for n in range(18, 34)]
                         + [{"max_stack": 4}, {"max_nesting": 2}])
def test_a_bound_reached_at_a_handler_call_is_decided_the_same(limits):
    data = torch_zip(_P + _tensor() + op("STOP"), _STORAGES)
    assert_same(data, limits=safeload.Limits(**limits))


def test_scan_reports_are_the_same_both_ways(tmp_path):
    from safeload.scan import scan_file

    def report(path, fast, **kwargs):
        saved = unpickler.FAST_RUN
        unpickler.FAST_RUN = fast
        try:
            return scan_file(path, **kwargs).to_dict()
        finally:
            unpickler.FAST_RUN = saved

    bad = (_P + op("EMPTY_DICT") + op("SHORT_BINUNICODE", "w") + _tensor() + op("SETITEM")
           + op("SHORT_BINUNICODE", "x") + b"cos\nsystem\n" + op("MARK")
           + op("SHORT_BINUNICODE", "true") + op("TUPLE") + op("REDUCE") + op("SETITEM")
           + op("STOP"))
    path = tmp_path / "x.pt"
    path.write_bytes(torch_zip(bad, _STORAGES))
    for kwargs in ({}, {"explain": True}):
        got = report(path, FAST, **kwargs)
        assert got["findings"] and got == report(path, None, **kwargs)


class _Popper:
    """An allowed class whose __del__ pops the VM's stack: it sees the stack
    the running opcode has left so far, which must be the Python handler's."""

    def __del__(self):
        frame = sys._getframe(1)
        while frame is not None:
            vm = frame.f_locals.get("self")
            if isinstance(vm, unpickler.Unpickler):
                if vm.stack:
                    vm.stack.pop()
                return
            frame = frame.f_back


_ALLOW_MEDDLERS = {f"{__name__}._Meddler": _Meddler, f"{__name__}._Popper": _Popper}


def _made(name: str) -> bytes:
    return (b"c" + __name__.encode() + b"\n" + name.encode() + b"\n" + op("EMPTY_TUPLE")
            + op("REDUCE"))


@pytest.mark.parametrize("target", [op("EMPTY_DICT"), _HOOKS], ids=["dict", "OrderedDict"])
@pytest.mark.parametrize("inside", ["tensor", "global"])
@pytest.mark.parametrize("name", ["_Meddler", "_Popper"])
def test_a_dropped_values_del_sees_the_stack_the_python_vm_has(target, inside, name):
    # d["a"] = X(); MARK "a" <a tensor or an OrderedDict> SETITEMS: the insert
    # drops X, whose __del__ works on vm.stack. The Python VM has popped the
    # MARK by then (vm.stack is d's stack); the compiled loop must show the
    # same stack, though it ran the MARK and the calls inside it itself
    value = _tensor() if inside == "tensor" else _HOOKS
    body = (target + op("SHORT_BINUNICODE", "a") + _made(name) + op("SETITEM")
            + op("MARK") + op("SHORT_BINUNICODE", "a") + value + op("SETITEMS") + op("STOP"))
    assert_same(torch_zip(_P + body, _STORAGES), allow=_ALLOW_MEDDLERS)


@pytest.mark.parametrize("target", [op("EMPTY_DICT"), _HOOKS], ids=["dict", "OrderedDict"])
def test_a_dropped_values_del_in_setitem_sees_key_and_value_popped(target):
    # SETITEM pops value and key before it inserts: a __del__ run by the
    # insert that pops the stack pops the dict, both ways
    body = (target + op("SHORT_BINUNICODE", "a") + _made("_Popper") + op("SETITEM")
            + op("SHORT_BINUNICODE", "a") + op("NONE") + op("SETITEM") + op("STOP"))
    assert_same(_P + body, allow=_ALLOW_MEDDLERS)


def _recording(name: str, seen: list, *, replace_stack: bool = False):
    """Wrap allowlist entry ``name``'s reduce: it notes what the VM shows it."""
    from safeload import allowlist

    entry = allowlist._DEFAULT_HANDLERS[name]
    real = entry.reduce

    def reduce(vm, args):
        seen.append((vm.op_offset, list(vm.stack), args))
        if replace_stack:
            vm.stack = [*vm.stack, "swapped"]
        return real(vm, args)

    object.__setattr__(entry, "reduce", reduce)  # a frozen dataclass
    return lambda: object.__setattr__(entry, "reduce", real)


@pytest.mark.parametrize("replace_stack", [False, True])
def test_a_handler_sees_the_same_vm_state_both_ways(replace_stack):
    data = torch_zip(_P + op("EMPTY_LIST") + op("MARK") + _tensor() + _tensor(offset=1, shape=(3,))
                     + op("APPENDS") + op("STOP"), _STORAGES)
    runs = []
    for fast in (FAST, None):
        seen: list = []
        restore = _recording("collections.OrderedDict", seen,
                             replace_stack=replace_stack)
        try:
            outcome = _load(data, fast)
        finally:
            restore()
        runs.append((seen, outcome))
    (seen_fast, fast), (seen_pure, pure) = runs
    # with the stack swapped, the next opcodes work on the new one: the
    # second tensor's arguments are not where REDUCE looks (both ways)
    assert len(seen_fast) == (1 if replace_stack else 2)
    assert repr(seen_fast) == repr(seen_pure)
    assert fast[0] == pure[0]
    if fast[0] == "refused":
        assert str(fast[1]) == str(pure[1])
    else:
        assert _same(fast[1], pure[1], {})


def test_only_a_policy_whose_call_is_the_allowlists_gets_direct_calls():
    from safeload.allowlist import DEFAULT_POLICY, Handler, Policy
    from safeload.scan import _AnalysisPolicy

    class Audited(Policy):
        def call(self, vm, func, args, kwargs, opname):
            return super().call(vm, func, args, kwargs, opname)

    class Forwarding:
        def __init__(self, base):
            self.base = base

        def __getattr__(self, name):
            return getattr(self.base, name)

    direct = unpickler._direct_reduce_type
    assert direct(DEFAULT_POLICY) is Handler
    assert direct(DEFAULT_POLICY.allowing({"x.y": dict})) is Handler
    assert direct(Audited()) is None
    assert direct(_AnalysisPolicy(DEFAULT_POLICY, trace=False)) is Handler  # call is base's
    assert direct(_AnalysisPolicy(DEFAULT_POLICY, trace=True)) is None  # it wraps call
    # forwarding everything, call included, is still the allowlist's call
    assert direct(Forwarding(DEFAULT_POLICY)) is Handler
    assert direct(object()) is None


def test_a_patched_policy_call_is_not_bypassed(monkeypatch):
    # Policy.call replaced on the class (an audit hook, a test's monkeypatch):
    # every REDUCE on an allowlist entry must still go through it
    from safeload.allowlist import Policy

    seen: list = []
    real = Policy.call

    def audited(self, vm, func, args, kwargs, opname):
        seen.append((opname, repr(func)))
        return real(self, vm, func, args, kwargs, opname)

    monkeypatch.setattr(Policy, "call", audited)
    data = torch_zip(_P + _tensor() + op("STOP"), _STORAGES)
    calls = []
    for fast in (FAST, None):
        seen.clear()
        assert _load(data, fast)[0] == "value"
        calls.append(list(seen))
    assert calls[0] == calls[1] and len(calls[1]) == 2


# --- the entry point itself ---------------------------------------------------------------


_NO_CALLS = (None, None, None)  # vm, persistent_load, entry type: no handler is called


def test_run_refuses_wrong_argument_types():
    for args in [
        (b"N.", 0, [], [], {}, 10, 1, 1, 1, 1),  # 10 arguments
        (b"N.", 0, [], [], {}, 10, 1, 1, 1, 1, None, None),
        (bytearray(b"N."), 0, [], [], {}, 10, 1, 1, 1, 1, *_NO_CALLS),
        (b"N.", 0, (), [], {}, 10, 1, 1, 1, 1, *_NO_CALLS),
        (b"N.", 0, [], [], OrderedDict(), 10, 1, 1, 1, 1, *_NO_CALLS),
        (b"N.", 0.0, [], [], {}, 10, 1, 1, 1, 1, *_NO_CALLS),
        (b"N.", -1, [], [], {}, 10, 1, 1, 1, 1, *_NO_CALLS),
        (b"N.", 0, [], [], {}, 10, 1, 1, 1, -1, *_NO_CALLS),  # a negative bound: Python decides
        (b"N.", 0, [], [], {}, 10, 1, 1, -(2**80), 1, *_NO_CALLS),
        (b"N.", 0, [], [], {}, 10, 1.0, 1, 1, 1, *_NO_CALLS),
        (b"N.", 0, [], [], {}, 10, 1, 1, 1, 1, None, 5, None),  # not callable
        (b"N.", 0, [], [], {}, 10, 1, 1, 1, 1, None, None, object()),  # not a type
    ]:
        with pytest.raises((TypeError, ValueError)):
            FAST(*args)


def test_run_stops_at_the_first_opcode_it_does_not_run():
    stack: list = []
    pos, done, new, failed = FAST(b"NNK\x05c", 0, stack, [], {}, 100, 10, 10, 10, 10, *_NO_CALLS)
    assert (pos, done, new, failed) == (4, 3, [None, None, 5], None) and new is stack
    # the budget: two opcodes, then back
    assert FAST(b"NNN", 0, [], [], {}, 2, 10, 10, 10, 10, *_NO_CALLS)[:2] == (2, 2)
    # past the end, or at it: nothing run
    assert FAST(b"N", 1, [], [], {}, 5, 10, 10, 10, 10, *_NO_CALLS)[:2] == (1, 0)
    assert FAST(b"N", 2**62, [], [], {}, 5, 10, 10, 10, 10, *_NO_CALLS)[:2] == (2**62, 0)
    # a huge bound is "no bound"
    assert FAST(b"N", 0, [], [], {}, 2**80, 2**80, 2**80, 2**80, 2**80, *_NO_CALLS)[:2] == (1, 1)
    # with no persistent_load and no entry type, BINPERSID and REDUCE go back
    assert FAST(b"NQ", 0, [], [], {}, 5, 10, 10, 10, 10, *_NO_CALLS)[:2] == (1, 1)
    assert FAST(b"N)R", 0, [], [], {}, 5, 10, 10, 10, 10, *_NO_CALLS)[:2] == (2, 2)


# --- the adversarial corpus, both ways ----------------------------------------------------

_QUICK_CLASSES = ("vm_state", "globals", "calls", "hostile_args")


@pytest.mark.parametrize("name", _QUICK_CLASSES)
def test_adversarial_cases_give_the_same_outcome(name, tmp_path):
    # the cheap classes only (bombs and containers need the harness's child
    # processes and memory limits); nothing in them runs: the VM refuses it
    from adversarial import generate, load_all

    load_all()
    cases = [c for c in generate(name, str(tmp_path)) if c.via == "bytes"]
    assert len(cases) > 100
    for case in cases:
        kwargs = dict(case.kwargs)
        if "limits" in kwargs:
            kwargs["limits"] = safeload.Limits(**kwargs["limits"])
        try:
            assert_same(case.data, **kwargs)
        except AssertionError as exc:
            raise AssertionError(f"{case.id}: {exc}") from None
    assert not any(tmp_path.iterdir()), "a payload left a file in the canary directory"
