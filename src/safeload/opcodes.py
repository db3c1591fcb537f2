"""Every pickle opcode of protocols 0-5, as data.

Strategy (after CPython's ``pickletools``): one table names each opcode, its
byte, the reader for its inline argument, the protocol that introduced it and
what it does to the stack. The VM (``unpickler``) and the scanner walk the same
table: the VM binds one handler per name, the scanner disassembles with the
readers. Readers take ``(data, pos)`` and return ``(value, new_pos)``; they
never read past ``len(data)`` and raise ``Truncated`` when the argument does
not fit, so a hostile length field cannot make them allocate.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OPCODES", "BY_CODE", "BY_NAME", "Opcode", "Truncated"]


class Truncated(Exception):
    """An argument runs past the end of the pickle (turned into FormatError)."""


_I4 = struct.Struct("<i").unpack_from
_U2 = struct.Struct("<H").unpack_from
_U4 = struct.Struct("<I").unpack_from
_U8 = struct.Struct("<Q").unpack_from
_F8 = struct.Struct(">d").unpack_from


def _need(data, pos: int, n: int) -> int:
    end = pos + n
    if end > len(data):
        raise Truncated(f"needs {n} bytes at offset {pos}, {len(data) - pos} remain")
    return end


def read_uint1(data, pos):
    _need(data, pos, 1)
    return data[pos], pos + 1


def read_uint2(data, pos):
    return _U2(data, pos)[0] if pos + 2 <= len(data) else _trunc(data, pos, 2), pos + 2


def read_int4(data, pos):
    return _I4(data, pos)[0] if pos + 4 <= len(data) else _trunc(data, pos, 4), pos + 4


def read_uint4(data, pos):
    return _U4(data, pos)[0] if pos + 4 <= len(data) else _trunc(data, pos, 4), pos + 4


def read_uint8(data, pos):
    return _U8(data, pos)[0] if pos + 8 <= len(data) else _trunc(data, pos, 8), pos + 8


def read_float8(data, pos):
    return _F8(data, pos)[0] if pos + 8 <= len(data) else _trunc(data, pos, 8), pos + 8


def _trunc(data, pos, n):
    raise Truncated(f"needs {n} bytes at offset {pos}, {len(data) - pos} remain")


def read_line(data, pos):
    """Bytes up to (not including) the next newline; protocol 0 arguments."""
    end = data.find(b"\n", pos)
    if end < 0:
        raise Truncated(f"no newline after offset {pos}")
    return data[pos:end], end + 1


def _counted(size_reader):
    def read(data, pos):
        n, pos = size_reader(data, pos)
        if n < 0:
            raise ValueError(f"negative length {n}")
        end = _need(data, pos, n)
        return data[pos:end], end

    return read


read_bytes8 = _counted(read_uint8)
read_string4 = _counted(read_int4)  # BINSTRING's length is signed


# The 1- and 4-byte counted readers are _counted / _utf8 written out flat: a
# state dict's keys and storage names are read by them, once per tensor each.
def read_bytes1(data, pos):
    if pos >= len(data):
        _trunc(data, pos, 1)
    end = pos + 1 + data[pos]
    if end > len(data):
        _trunc(data, pos + 1, data[pos])
    return data[pos + 1 : end], end


def read_bytes4(data, pos):
    if pos + 4 > len(data):
        _trunc(data, pos, 4)
    end = pos + 4 + _U4(data, pos)[0]
    if end > len(data):
        _trunc(data, pos + 4, end - pos - 4)
    return data[pos + 4 : end], end


def read_unicode1(data, pos):
    if pos >= len(data):
        _trunc(data, pos, 1)
    end = pos + 1 + data[pos]
    if end > len(data):
        _trunc(data, pos + 1, data[pos])
    return str(data[pos + 1 : end], "utf-8", "surrogatepass"), end


def read_unicode4(data, pos):
    if pos + 4 > len(data):
        _trunc(data, pos, 4)
    end = pos + 4 + _U4(data, pos)[0]
    if end > len(data):
        _trunc(data, pos + 4, end - pos - 4)
    return str(data[pos + 4 : end], "utf-8", "surrogatepass"), end


def _utf8(reader):
    def read(data, pos):
        raw, pos = reader(data, pos)
        return str(raw, "utf-8", "surrogatepass"), pos

    return read


read_unicode8 = _utf8(read_bytes8)


def read_unicodenl(data, pos):
    raw, pos = read_line(data, pos)
    return str(raw, "raw-unicode-escape"), pos


def read_stringnl(data, pos):
    """A repr-quoted protocol 0 STRING; returns the unescaped bytes."""
    raw, pos = read_line(data, pos)
    if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
        raise ValueError("STRING argument is not a quoted string")
    return codecs.escape_decode(raw[1:-1])[0], pos


def read_name(data, pos):
    """A module or attribute name line (GLOBAL, INST): UTF-8, no escapes."""
    raw, pos = read_line(data, pos)
    return str(raw, "utf-8"), pos


def read_decimal_int(data, pos):
    """INT's argument: '00'/'01' are False/True (protocol 0 bools)."""
    raw, pos = read_line(data, pos)
    if raw == b"00":
        return False, pos
    if raw == b"01":
        return True, pos
    return int(raw, 0), pos


def read_decimal_long(data, pos):
    raw, pos = read_line(data, pos)
    if raw.endswith(b"L"):
        raw = raw[:-1]
    return int(raw, 0), pos


def read_float_line(data, pos):
    raw, pos = read_line(data, pos)
    return float(raw), pos


def read_long1(data, pos):
    raw, pos = read_bytes1(data, pos)
    return int.from_bytes(raw, "little", signed=True), pos


def read_long4(data, pos):
    n, pos2 = read_int4(data, pos)
    if n < 0:
        raise ValueError(f"negative LONG4 length {n}")
    end = _need(data, pos2, n)
    return int.from_bytes(data[pos2:end], "little", signed=True), end


def read_decimal_index(data, pos):
    """GET / PUT index line: a plain decimal integer."""
    raw, pos = read_line(data, pos)
    return int(raw), pos


def read_global(data, pos):
    module, pos = read_name(data, pos)
    name, pos = read_name(data, pos)
    return (module, name), pos


@dataclass(frozen=True)
class Opcode:
    name: str
    code: int
    arg: Callable | None  # reader for the inline argument, None when there is none
    proto: int
    stack_before: str
    stack_after: str
    doc: str

    @property
    def char(self) -> str:
        return chr(self.code)


def _op(name, char, arg, proto, before, after, doc):
    return Opcode(name, ord(char), arg, proto, before, after, doc)


# fmt: off
OPCODES: list[Opcode] = [
    # integers
    _op("INT", "I", read_decimal_int, 0, "", "int|bool", "decimal int line; 00/01 are False/True"),
    _op("BININT", "J", read_int4, 1, "", "int", "4-byte signed int"),
    _op("BININT1", "K", read_uint1, 1, "", "int", "1-byte unsigned int"),
    _op("BININT2", "M", read_uint2, 1, "", "int", "2-byte unsigned int"),
    _op("LONG", "L", read_decimal_long, 0, "", "int", "decimal long line"),
    _op("LONG1", "\x8a", read_long1, 2, "", "int", "long, 1-byte length"),
    _op("LONG4", "\x8b", read_long4, 2, "", "int", "long, 4-byte length"),
    # strings and bytes
    _op("STRING", "S", read_stringnl, 0, "", "str|bytes", "quoted py2 str line"),
    _op("BINSTRING", "T", read_string4, 1, "", "str|bytes", "py2 str, 4-byte length"),
    _op("SHORT_BINSTRING", "U", read_bytes1, 1, "", "str|bytes", "py2 str, 1-byte length"),
    _op("BINBYTES", "B", read_bytes4, 3, "", "bytes", "bytes, 4-byte length"),
    _op("SHORT_BINBYTES", "C", read_bytes1, 3, "", "bytes", "bytes, 1-byte length"),
    _op("BINBYTES8", "\x8e", read_bytes8, 4, "", "bytes", "bytes, 8-byte length"),
    _op("BYTEARRAY8", "\x96", read_bytes8, 5, "", "bytearray", "bytearray, 8-byte length"),
    _op("NEXT_BUFFER", "\x97", None, 5, "", "buffer", "out-of-band buffer"),
    _op("READONLY_BUFFER", "\x98", None, 5, "buffer", "buffer", "make buffer read-only"),
    _op("NONE", "N", None, 0, "", "None", "push None"),
    _op("NEWTRUE", "\x88", None, 2, "", "True", "push True"),
    _op("NEWFALSE", "\x89", None, 2, "", "False", "push False"),
    _op("UNICODE", "V", read_unicodenl, 0, "", "str", "raw-unicode-escape line"),
    _op("SHORT_BINUNICODE", "\x8c", read_unicode1, 4, "", "str", "UTF-8, 1-byte length"),
    _op("BINUNICODE", "X", read_unicode4, 1, "", "str", "UTF-8, 4-byte length"),
    _op("BINUNICODE8", "\x8d", read_unicode8, 4, "", "str", "UTF-8, 8-byte length"),
    _op("FLOAT", "F", read_float_line, 0, "", "float", "float line"),
    _op("BINFLOAT", "G", read_float8, 1, "", "float", "8-byte big-endian double"),
    # containers
    _op("EMPTY_LIST", "]", None, 1, "", "list", "push []"),
    _op("APPEND", "a", None, 0, "list any", "list", "list.append"),
    _op("APPENDS", "e", None, 1, "list mark any*", "list", "list.extend"),
    _op("LIST", "l", None, 0, "mark any*", "list", "list from mark"),
    _op("EMPTY_TUPLE", ")", None, 1, "", "tuple", "push ()"),
    _op("TUPLE", "t", None, 0, "mark any*", "tuple", "tuple from mark"),
    _op("TUPLE1", "\x85", None, 2, "any", "tuple", "1-tuple"),
    _op("TUPLE2", "\x86", None, 2, "any any", "tuple", "2-tuple"),
    _op("TUPLE3", "\x87", None, 2, "any any any", "tuple", "3-tuple"),
    _op("EMPTY_DICT", "}", None, 1, "", "dict", "push {}"),
    _op("DICT", "d", None, 0, "mark (key value)*", "dict", "dict from mark"),
    _op("SETITEM", "s", None, 0, "dict key value", "dict", "dict[key] = value"),
    _op("SETITEMS", "u", None, 1, "dict mark (key value)*", "dict", "dict.update"),
    _op("EMPTY_SET", "\x8f", None, 4, "", "set", "push set()"),
    _op("ADDITEMS", "\x90", None, 4, "set mark any*", "set", "set.update"),
    _op("FROZENSET", "\x91", None, 4, "mark any*", "frozenset", "frozenset from mark"),
    # stack manipulation
    _op("POP", "0", None, 0, "any", "", "discard top"),
    _op("DUP", "2", None, 0, "any", "any any", "duplicate top"),
    _op("MARK", "(", None, 0, "", "mark", "push mark"),
    _op("POP_MARK", "1", None, 1, "mark any*", "", "discard to mark"),
    # memo
    _op("GET", "g", read_decimal_index, 0, "", "any", "push memo[n]"),
    _op("BINGET", "h", read_uint1, 1, "", "any", "push memo[n]"),
    _op("LONG_BINGET", "j", read_uint4, 1, "", "any", "push memo[n]"),
    _op("PUT", "p", read_decimal_index, 0, "any", "any", "memo[n] = top"),
    _op("BINPUT", "q", read_uint1, 1, "any", "any", "memo[n] = top"),
    _op("LONG_BINPUT", "r", read_uint4, 1, "any", "any", "memo[n] = top"),
    _op("MEMOIZE", "\x94", None, 4, "any", "any", "memo[len(memo)] = top"),
    # extension registry
    _op("EXT1", "\x82", read_uint1, 2, "", "any", "copyreg extension, 1-byte code"),
    _op("EXT2", "\x83", read_uint2, 2, "", "any", "copyreg extension, 2-byte code"),
    _op("EXT4", "\x84", read_int4, 2, "", "any", "copyreg extension, 4-byte code"),
    # globals, calls, objects
    _op("GLOBAL", "c", read_global, 0, "", "global", "module and name lines"),
    _op("STACK_GLOBAL", "\x93", None, 4, "str str", "global", "module and name from stack"),
    _op("REDUCE", "R", None, 0, "callable tuple", "any", "callable(*args)"),
    _op("BUILD", "b", None, 0, "any state", "any", "__setstate__ / __dict__ update"),
    _op("INST", "i", read_global, 0, "mark any*", "any", "class(*args) from lines"),
    _op("OBJ", "o", None, 1, "mark class any*", "any", "class(*args)"),
    _op("NEWOBJ", "\x81", None, 2, "class tuple", "any", "cls.__new__(cls, *args)"),
    _op("NEWOBJ_EX", "\x92", None, 4, "class tuple dict", "any", "cls.__new__(cls, *a, **kw)"),
    # machine control
    _op("PROTO", "\x80", read_uint1, 2, "", "", "protocol version"),
    _op("STOP", ".", None, 0, "any", "", "end of pickle"),
    _op("FRAME", "\x95", read_uint8, 4, "", "", "frame length hint"),
    # persistent ids
    _op("PERSID", "P", read_name, 0, "", "any", "persistent_load(line)"),
    _op("BINPERSID", "Q", None, 1, "any", "any", "persistent_load(top)"),
]
# fmt: on

BY_CODE: dict[int, Opcode] = {op.code: op for op in OPCODES}
BY_NAME: dict[str, Opcode] = {op.name: op for op in OPCODES}
assert len(BY_CODE) == len(OPCODES) == len(BY_NAME)

#: opcodes that call, construct or mutate through a global: what scanners rank
CALLING = frozenset(
    {"REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"}
)
