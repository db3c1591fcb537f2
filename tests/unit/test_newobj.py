"""NEWOBJ / NEWOBJ_EX on allowlisted classes, with CPython's unpickler as the oracle.

pickle's NEWOBJ is ``cls.__new__(cls, *args)`` (NEWOBJ_EX adds ``**kwargs``),
not ``cls(*args)``: for the mutable containers (set, bytearray, OrderedDict,
Counter) ``__new__`` ignores its arguments and returns an empty object, for
the immutable ones (frozenset, bytes, complex, numpy.dtype) it consumes them.
Each case is a hand-built pickle: ``GLOBAL cls``, the arguments (written by
``pickle.dumps`` of plain builtin values), then NEWOBJ or NEWOBJ_EX. CPython's
``pickle.loads`` decides what it means; safeload must return an equal value of
the same type, or raise a FormatError where CPython raises. A few argument
forms CPython accepts are refused by safeload on purpose (``_NARROWER``).
"""

from __future__ import annotations

import pickle
from collections import Counter, OrderedDict

import numpy as np
import pytest

import safeload
from safeload.allowlist import DEFAULT_POLICY

_NEWOBJ = b"\x81"
_NEWOBJ_EX = b"\x92"
_ADDITEMS = b"\x90"


def _body(value) -> bytes:
    """The opcodes of ``value`` alone: a protocol 3 pickle without PROTO and STOP."""
    data = pickle.dumps(value, protocol=3)
    assert data[:2] == b"\x80\x03" and data[-1:] == b"."
    return data[2:-1]


def _newobj(module: str, name: str, args: tuple, kwargs: dict | None = None,
            tail: bytes = b"") -> bytes:
    """``module.name.__new__(module.name, *args, **kwargs)`` as a protocol 4 pickle:
    NEWOBJ without ``kwargs``, NEWOBJ_EX with them. ``tail`` runs on the result."""
    head = b"\x80\x04" + f"c{module}\n{name}\n".encode() + _body(args)
    if kwargs is None:
        return head + _NEWOBJ + tail + b"."
    return head + _body(kwargs) + _NEWOBJ_EX + tail + b"."


# (module, name, args, kwargs): kwargs None means NEWOBJ
_CASES = [
    # __new__ ignores every argument: an empty object, whatever follows
    ("builtins", "set", ([1, 2],), None),
    ("builtins", "set", (), None),
    ("builtins", "set", (1, 2, 3), None),
    ("builtins", "set", ({1, 2},), {}),
    ("builtins", "set", (), {"x": 1}),
    ("builtins", "bytearray", (b"ab",), None),
    ("builtins", "bytearray", ("ab", "latin-1"), None),
    ("builtins", "bytearray", (1, [2]), {"x": 2}),
    ("collections", "OrderedDict", ([(1, 2)],), None),
    ("collections", "OrderedDict", ([("a", 1)],), {"b": 2}),
    ("collections", "Counter", ({"a": 1},), None),
    ("collections", "Counter", (), {"a": 3}),
    # __new__ consumes its arguments
    ("builtins", "frozenset", ([1, 2],), None),
    ("builtins", "frozenset", ((1, 2, 2),), {}),
    ("builtins", "frozenset", (), None),
    ("builtins", "frozenset", ({3, 4},), None),
    ("builtins", "frozenset", ([1], [2]), None),  # TypeError: at most 1 argument
    ("builtins", "frozenset", (), {"iterable": [1]}),  # TypeError: no keywords
    ("builtins", "frozenset", ([[1]],), None),  # TypeError: unhashable
    ("builtins", "frozenset", (5,), None),  # TypeError: not iterable
    ("builtins", "bytes", (b"ab",), None),
    ("builtins", "bytes", (bytearray(b"xy"),), None),
    ("builtins", "bytes", (), None),
    ("builtins", "bytes", (), {"source": b"ab"}),
    ("builtins", "bytes", ("ab",), None),  # TypeError: str without an encoding
    ("builtins", "bytes", (b"ab", "latin-1"), None),  # TypeError: encoding without a str
    ("builtins", "bytes", (b"a", 1, 2, 3), None),  # TypeError: at most 3 arguments
    ("builtins", "bytes", (b"a",), {"source": b"b"}),  # TypeError: given twice
    ("builtins", "bytes", (None,), None),  # TypeError: cannot convert
    ("builtins", "complex", (1, 2), None),
    ("builtins", "complex", (1.5,), None),
    ("builtins", "complex", (), None),
    ("builtins", "complex", (True, False), None),
    ("builtins", "complex", (), {"real": 1, "imag": 2}),
    ("builtins", "complex", (3,), {"imag": 4.0}),
    ("builtins", "complex", (1, 2, 3), None),  # TypeError: at most 2 arguments
    ("builtins", "complex", (), {"x": 1}),  # TypeError: unexpected keyword
    ("builtins", "complex", (1, None), None),  # TypeError: not a number
    ("builtins", "complex", (2**2000,), None),  # OverflowError
    ("builtins", "slice", (1, 5), None),
    ("builtins", "slice", (None, 3, -1), None),
    ("builtins", "slice", (7,), None),
    ("builtins", "slice", (1,), {}),
    ("builtins", "slice", (), None),  # TypeError: at least 1 argument
    ("builtins", "slice", (1, 2, 3, 4), None),  # TypeError: at most 3 arguments
    ("builtins", "slice", (1,), {"stop": 2}),  # TypeError: no keywords
    ("numpy", "dtype", ("f4",), None),
    ("numpy", "dtype", ("<i8", False, True), None),
    ("numpy", "dtype", (">f8",), {"align": True}),
    ("numpy", "dtype", (), {"dtype": "u1", "copy": True}),
    ("numpy", "dtype", (), None),  # TypeError: missing dtype
    ("numpy", "dtype", ("f4",), {"bogus": 1}),  # TypeError: unexpected keyword
    ("numpy", "dtype", ("f4", False), {"align": True}),  # TypeError: given twice
]

#: argument forms CPython accepts (or refuses with other than a TypeError) that
#: safeload refuses on purpose, with a FormatError, as it does for REDUCE: the
#: hostile-arguments suite pins these (tests/fuzz/adversarial/hostile_args.py)
_NARROWER = [
    ("builtins", "frozenset", ("abc",), None),  # only containers the pickle built
    ("builtins", "frozenset", ({"k": 1},), None),
    ("builtins", "frozenset", (b"ab",), None),
    ("builtins", "bytes", ("ab\xe9", "latin-1"), None),  # text: _codecs.encode's job
    ("builtins", "bytes", ("ab", "utf-8", "strict"), None),
    ("builtins", "bytes", ("ab",), {"encoding": "ascii"}),
    ("builtins", "bytes", ("\xe9", "ascii"), None),  # UnicodeEncodeError
    ("builtins", "bytes", (3,), None),  # a count of zero bytes
    ("builtins", "bytes", (-1,), None),  # ValueError: negative count
    ("builtins", "bytes", ([1, 2],), None),  # an iterable of ints
    ("builtins", "complex", (1j, 1j), None),  # only int, float and bool parts
    ("builtins", "complex", ("1+2j",), None),  # text
    ("builtins", "slice", ("a", [1]), None),  # only ints and None
    ("numpy", "dtype", ("O",), None),  # object arrays hold pickles
    ("numpy", "dtype", ("f4", False, False, {}), None),  # metadata
]


def _case_id(case) -> str:
    module, name, args, kwargs = case
    text = f"{name}{args!r}" + (f"-kw{kwargs!r}" if kwargs is not None else "")
    return text[:60]


def _same(got, expected) -> bool:
    return type(got) is type(expected) and got == expected and (
        not isinstance(expected, np.dtype) or got.str == expected.str
    )


@pytest.mark.parametrize("case", _CASES + _NARROWER, ids=_case_id)
def test_newobj_on_an_allowlisted_class_is_cls_new_as_cpython_runs_it(case):
    module, name, args, kwargs = case
    data = _newobj(module, name, args, kwargs)
    try:
        expected = pickle.loads(data)
    except Exception:  # noqa: BLE001 - CPython's verdict is the point of the test
        expected = None
        cpython_refuses = True
    else:
        cpython_refuses = False
    if cpython_refuses or case in _NARROWER:
        with pytest.raises(safeload.FormatError) as info:
            safeload.load(data)
        assert info.value.opcode in ("NEWOBJ", "NEWOBJ_EX")
        return
    got = safeload.load(data)
    assert _same(got, expected), (got, expected)


def test_every_allowlisted_class_built_by_newobj_has_a_case():
    """A handler that gains ``new=`` must gain oracle cases above."""
    with_new = {h.name for h in DEFAULT_POLICY.handlers.values() if h.new is not None}
    covered = {f"{module}.{name}" for module, name, _, _ in _CASES}
    assert with_new <= covered, with_new - covered


def test_containers_made_by_newobj_are_filled_by_the_opcodes_that_follow():
    # how a pickle fills what NEWOBJ made: ADDITEMS on a set, SETITEMS on a dict
    cases = [
        _newobj("builtins", "set", ([9],), tail=b"(K\x01K\x02" + _ADDITEMS),
        _newobj("collections", "OrderedDict", ([("z", 0)],),
                tail=b"(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x02u"),
        _newobj("collections", "Counter", ({"z": 5},), {}, tail=b"X\x01\x00\x00\x00aK\x03s"),
    ]
    for data in cases:
        expected = pickle.loads(data)
        got = safeload.load(data)
        assert _same(got, expected), (got, expected)
        if type(expected) is OrderedDict:
            assert list(got) == list(expected) == ["a", "b"]
    assert safeload.load(cases[0]) == {1, 2}
    assert safeload.load(cases[2]) == Counter(a=3)


def test_newobj_of_a_set_does_not_touch_its_ignored_arguments():
    # CPython never looks at them: an unhashable list is no error either
    data = _newobj("builtins", "set", ([[1], [2]],))
    assert pickle.loads(data) == set() == safeload.load(data)
