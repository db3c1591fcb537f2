"""Whatever the bytes, ``safeload.load`` returns a value or raises SafeloadError.

Four generators feed the one property (``fuzzkit.outcome`` fails the test on
any other exception): arbitrary bytes, real checkpoints mutated (the raw file,
and data.pkl alone re-wrapped in a valid zip so mutations reach the VM past the
CRC check), and opcode sequences built from ``safeload.opcodes.OPCODES`` with
well-formed arguments. Refusals must also be well-formed: a located,
bounded-length message.
"""

from __future__ import annotations

import struct

import pytest
from fuzzkit import (
    ENCODERS,
    examples,
    op,
    outcome,
    pglobal,
    pint,
    pstr,
    rezip,
    seed_checkpoints,
    torch_zip,
    zip_seeds,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import safeload
from safeload.opcodes import (
    OPCODES,
    read_bytes1,
    read_bytes4,
    read_bytes8,
    read_decimal_index,
    read_decimal_int,
    read_decimal_long,
    read_float8,
    read_float_line,
    read_global,
    read_int4,
    read_long1,
    read_long4,
    read_name,
    read_string4,
    read_stringnl,
    read_uint1,
    read_uint2,
    read_uint4,
    read_uint8,
    read_unicode1,
    read_unicode4,
    read_unicode8,
    read_unicodenl,
)


def check(data: bytes, **kwargs) -> None:
    kind, value = outcome(data, **kwargs)
    if kind == "refused":
        err = value
        assert isinstance(err.reason, str) and err.reason
        assert len(str(err)) < 50_000, "a refusal message must stay bounded"
        if err.offset is not None:
            assert 0 <= err.offset <= len(data) + 8


# --- arbitrary bytes --------------------------------------------------------------------

_HEADS = st.sampled_from([b"", b"\x80\x02", b"\x80\x04\x95", b"\x80\x05", b"PK\x03\x04",
                          b"PK\x05\x06", b"(", b"c"])


@settings(max_examples=examples(300))
@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_a_value_or_a_safeload_error(data):
    check(data)


@settings(max_examples=examples(300))
@given(_HEADS, st.binary(max_size=256))
def test_bytes_after_a_format_magic_give_a_value_or_a_safeload_error(head, data):
    check(head + data)


# --- mutated real checkpoints -----------------------------------------------------------

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                2**63 - 1, 2**64 - 1]


@st.composite
def mutate(draw, data: bytes, max_steps: int = 6) -> bytes:
    """Bit flips, truncations, insertions, deletions, duplications, splices
    from another seed and interesting little-endian integers."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "dup",
                                     "splice", "int", "byte"]))
        pos = draw(st.integers(0, max(len(out), 1) - 1)) if out else 0
        if kind == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and out:
            out[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[pos:pos + draw(st.integers(1, 16))]
        elif kind == "dup":
            n = draw(st.integers(1, 64))
            out[pos:pos] = out[pos:pos + n]
        elif kind == "splice":
            seeds = seed_checkpoints()
            other = seeds[draw(st.sampled_from(sorted(seeds)))]
            start = draw(st.integers(0, max(len(other) - 1, 0)))
            out[pos:pos + draw(st.integers(0, 64))] = other[start:start + draw(
                st.integers(1, 256))]
        elif kind == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(_INTERESTING)) % (1 << (8 * width))
            out[pos:pos + width] = value.to_bytes(width, "little")
    return bytes(out)


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    found = seed_checkpoints()
    if not found:
        pytest.skip("no seed checkpoints: torch is not installed and the corpus is absent")
    return found


@settings(max_examples=examples(300))
@given(st.data())
def test_mutated_checkpoint_files_give_a_value_or_a_safeload_error(seeds, data):
    name = data.draw(st.sampled_from(sorted(seeds)))
    check(data.draw(mutate(seeds[name])))


@settings(max_examples=examples(400))
@given(st.data())
def test_mutated_data_pkl_in_a_valid_zip_gives_a_value_or_a_safeload_error(seeds, data):
    parts = zip_seeds()
    if not parts:
        pytest.skip("no zip seeds")
    name = data.draw(st.sampled_from(sorted(parts)))
    prefix, records = parts[name]
    records = dict(records)
    records["data.pkl"] = data.draw(mutate(records["data.pkl"], max_steps=3))
    check(rezip(prefix, records))


# --- structured pickles from the opcode table -----------------------------------------

_NAMES = st.sampled_from([
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"), ("torch", "FloatStorage"),
    ("torch", "UntypedStorage"), ("torch", "float32"), ("torch", "Size"),
    ("torch", "device"), ("collections", "OrderedDict"), ("collections", "Counter"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("builtins", "complex"), ("builtins", "slice"), ("_codecs", "encode"),
    ("__builtin__", "set"), ("copy_reg", "_reconstructor"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch", "Tensor"),
    ("os", "system"), ("builtins", "eval"), ("posix", "system"), ("builtins", "getattr"),
    ("subprocess", "Popen"), ("", ""), ("a.b", "c.d"),
])
_TEXT = st.text(max_size=12)
_LINE_TEXT = st.text(st.characters(blacklist_characters="\n\\", blacklist_categories=["Cs"]),
                     max_size=12)
_SMALL = st.integers(0, 12)

#: reader -> strategy for a well-formed argument of that reader
ARGUMENTS = {
    read_uint1: st.integers(0, 255),
    read_uint2: st.integers(0, 65535),
    read_int4: st.one_of(st.integers(-3, 300), st.integers(-(2**31), 2**31 - 1)),
    read_uint4: st.one_of(_SMALL, st.integers(0, 2**32 - 1)),
    read_uint8: st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1)),
    read_float8: st.floats(),
    read_bytes1: st.binary(max_size=20),
    read_bytes4: st.binary(max_size=20),
    read_bytes8: st.binary(max_size=20),
    read_string4: st.binary(max_size=20),
    read_unicode1: _TEXT,
    read_unicode4: _TEXT,
    read_unicode8: _TEXT,
    read_unicodenl: _LINE_TEXT,
    read_stringnl: st.binary(max_size=12),
    read_name: _LINE_TEXT,
    read_decimal_int: st.one_of(st.booleans(), st.integers(-(2**40), 2**40)),
    read_decimal_long: st.integers(-(2**200), 2**200),
    read_float_line: st.floats(),
    read_long1: st.integers(-(2**100), 2**100),
    read_long4: st.integers(-(2**300), 2**300),
    read_decimal_index: _SMALL,
    read_global: _NAMES,
}


def test_every_opcode_reader_has_an_argument_strategy_and_an_encoder():
    for opcode in OPCODES:
        if opcode.arg is not None:
            assert opcode.arg in ARGUMENTS, opcode.name
            assert opcode.arg in ENCODERS, opcode.name


def _pid(proto: int, key: str = "0", numel: int = 4) -> bytes:
    return (op("MARK") + pstr("storage", proto) + pglobal("torch", "FloatStorage", proto)
            + pstr(key, proto) + pstr("cpu", proto) + pint(numel, proto) + op("TUPLE")
            + op("BINPERSID"))


#: multi-opcode fragments that reach deep paths (a valid storage, a tensor)
_MACROS = [
    _pid(2), _pid(2, "1", 16), _pid(2, "0", 5),
    pglobal("torch._utils", "_rebuild_tensor_v2") + op("MARK") + _pid(2) + pint(0)
    + pint(2) + pint(2) + op("TUPLE2") + pint(2) + pint(1) + op("TUPLE2") + op("NEWFALSE")
    + op("EMPTY_DICT") + op("TUPLE") + op("REDUCE"),
    op("EMPTY_DICT"), op("MARK"), op("EMPTY_LIST"), op("NONE"),
]


@st.composite
def opcode_sequences(draw) -> bytes:
    proto = draw(st.integers(0, 5))
    parts = [op("PROTO", proto)] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 40))):
        if draw(st.integers(0, 5)) == 0:
            parts.append(draw(st.sampled_from(_MACROS)))
            continue
        opcode = draw(st.sampled_from(OPCODES))
        if opcode.arg is None:
            parts.append(op(opcode.name))
        else:
            parts.append(op(opcode.name, draw(ARGUMENTS[opcode.arg])))
    if draw(st.integers(0, 9)):
        parts.append(op("STOP"))
    return b"".join(parts)


_STORAGES = {"0": struct.pack("<4f", 1, 2, 3, 4), "1": bytes(64)}


@settings(max_examples=examples(600))
@given(opcode_sequences(), st.booleans())
def test_structured_opcode_sequences_give_a_value_or_a_safeload_error(pickle_bytes, in_zip):
    check(torch_zip(pickle_bytes, _STORAGES) if in_zip else pickle_bytes)


@settings(max_examples=examples(200))
@given(opcode_sequences())
def test_structured_opcode_sequences_with_records_policy(pickle_bytes):
    check(torch_zip(pickle_bytes, _STORAGES), records=True)


@settings(max_examples=examples(200))
@given(opcode_sequences(), st.sampled_from(["ASCII", "latin1", "bytes", "utf-8"]))
def test_structured_opcode_sequences_with_each_encoding(pickle_bytes, encoding):
    check(pickle_bytes, encoding=encoding)


def test_tiny_limits_turn_work_into_limit_errors_not_crashes():
    data = torch_zip(b"\x80\x02" + _MACROS[3] + b".", _STORAGES)
    kind, value = outcome(data)
    assert kind == "value", value
    limits = safeload.Limits(max_ops=3)
    kind, err = outcome(data, limits=limits)
    assert kind == "refused" and isinstance(err, safeload.LimitError)
