"""Shared tools for the fuzz and adversarial tests.

Strategy: everything here *writes* bytes (pickle opcodes from safeload's own
opcode table, torch-like zip archives, seed checkpoints made with torch) or
runs ``safeload.load`` and classifies the outcome. Nothing here ever unpickles
a generated or corpus file with ``pickle`` or ``torch.load``, except the oracle
test, which gives CPython only pickles built from the safe opcode subset.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path

import safeload
from safeload.opcodes import (
    BY_NAME,
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

#: examples per hypothesis property; SAFELOAD_FUZZ_EXAMPLES scales every property
FUZZ_EXAMPLES = int(os.environ.get("SAFELOAD_FUZZ_EXAMPLES", "0") or 0)


def examples(default: int) -> int:
    """max_examples for one property: ``default``, or SAFELOAD_FUZZ_EXAMPLES."""
    return FUZZ_EXAMPLES or default


# --- the corpus -----------------------------------------------------------------------


def corpus_dir() -> Path | None:
    env = os.environ.get("SAFELOAD_CORPUS")
    path = Path(env) if env else REPO.parent / "shared" / "corpus"
    return path if (path / "benign").is_dir() else None


def benign_files(max_size: int = 2_000_000) -> list[Path]:
    """Benign corpus files (never the malicious ones), smallest first."""
    root = corpus_dir()
    if root is None:
        return []
    files = [p for p in (root / "benign").iterdir() if p.is_file()]
    return sorted((p for p in files if p.stat().st_size <= max_size),
                  key=lambda p: (p.stat().st_size, p.name))


# --- running safeload -----------------------------------------------------------------


class Escaped(AssertionError):
    """An exception other than SafeloadError left safeload.load."""


def outcome(data: bytes, **kwargs) -> tuple[str, object]:
    """('value', result) or ('refused', SafeloadError); any other exception
    type is a test failure (``Escaped``)."""
    try:
        return "value", safeload.load(data, **kwargs)
    except safeload.SafeloadError as err:
        return "refused", err
    except Exception as exc:  # noqa: BLE001 - exactly what the property forbids
        raise Escaped(f"{type(exc).__name__} escaped safeload.load: {exc!s:.300}") from exc


# --- writing opcodes from the opcode table --------------------------------------------


def _counted(width: str):
    return lambda raw: struct.pack(width, len(raw)) + raw


def _long_bytes(value: int) -> bytes:
    if value == 0:
        return b""
    n = (value.bit_length() + 8) // 8
    return value.to_bytes(n, "little", signed=True)


def _raw_unicode_line(text: str) -> bytes:
    """UNICODE's argument: raw-unicode-escape, with the characters that would
    end the line or start an escape written as \\u escapes (as CPython does)."""
    for char in "\\\0\n\r\x1a":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode("raw-unicode-escape") + b"\n"


def _quoted(raw: bytes) -> bytes:
    return repr(raw)[1:].encode("ascii")  # b'..' -> '..' (repr quotes and escapes)


#: reader -> encoder of the inline argument it reads: one entry per reader of
#: ``safeload.opcodes``, so a new reader fails here loudly
ENCODERS = {
    read_uint1: lambda v: struct.pack("<B", v),
    read_uint2: lambda v: struct.pack("<H", v),
    read_int4: lambda v: struct.pack("<i", v),
    read_uint4: lambda v: struct.pack("<I", v),
    read_uint8: lambda v: struct.pack("<Q", v),
    read_float8: lambda v: struct.pack(">d", v),
    read_bytes1: lambda v: _counted("<B")(v),
    read_bytes4: lambda v: _counted("<I")(v),
    read_bytes8: lambda v: _counted("<Q")(v),
    read_string4: lambda v: _counted("<i")(v),
    read_unicode1: lambda v: _counted("<B")(v.encode("utf-8", "surrogatepass")),
    read_unicode4: lambda v: _counted("<I")(v.encode("utf-8", "surrogatepass")),
    read_unicode8: lambda v: _counted("<Q")(v.encode("utf-8", "surrogatepass")),
    read_unicodenl: lambda v: _raw_unicode_line(v),
    read_stringnl: lambda v: _quoted(v) + b"\n",
    read_name: lambda v: v.encode("utf-8") + b"\n",
    read_decimal_int: lambda v: (b"01" if v is True else b"00" if v is False
                                 else str(v).encode()) + b"\n",
    read_decimal_long: lambda v: str(v).encode() + b"L\n",
    read_float_line: lambda v: repr(float(v)).encode() + b"\n",
    read_long1: lambda v: _counted("<B")(_long_bytes(v)),
    read_long4: lambda v: _counted("<i")(_long_bytes(v)),
    read_decimal_index: lambda v: str(v).encode() + b"\n",
    read_global: lambda v: f"{v[0]}\n{v[1]}\n".encode(),
}


def op(name: str, arg: object = None) -> bytes:
    """One opcode with its argument, encoded as the opcode table says."""
    opcode = BY_NAME[name]
    code = bytes([opcode.code])
    if opcode.arg is None:
        return code
    return code + ENCODERS[opcode.arg](arg)


def ops(*items) -> bytes:
    """``ops("PROTO", 2, "EMPTY_DICT", "STOP")``-style: names, each followed by
    its argument when it has one; bytes are passed through."""
    out = bytearray()
    items = list(items)
    while items:
        item = items.pop(0)
        if isinstance(item, (bytes, bytearray)):
            out += item
            continue
        if BY_NAME[item].arg is not None:
            out += op(item, items.pop(0))
        else:
            out += op(item)
    return bytes(out)


def pstr(text: str, proto: int = 2) -> bytes:
    """A str in the shortest opcode the protocol has."""
    raw = text.encode("utf-8", "surrogatepass")
    if proto >= 4 and len(raw) < 256:
        return op("SHORT_BINUNICODE", text)
    if proto >= 1:
        return op("BINUNICODE", text)
    return op("UNICODE", text)


def pint(value: int, proto: int = 2) -> bytes:
    if proto >= 1 and 0 <= value < 256:
        return op("BININT1", value)
    if proto >= 1 and 0 <= value < 65536:
        return op("BININT2", value)
    if proto >= 1 and -(2**31) <= value < 2**31:
        return op("BININT", value)
    if proto >= 2:
        return op("LONG1", value) if len(_long_bytes(value)) < 256 else op("LONG4", value)
    return op("LONG", value)


def pglobal(module: str, name: str, proto: int = 2) -> bytes:
    """GLOBAL for protocols 0-3, STACK_GLOBAL for 4-5."""
    if proto >= 4:
        return pstr(module, proto) + pstr(name, proto) + op("STACK_GLOBAL")
    return op("GLOBAL", (module, name))


def ptuple(parts: Iterable[bytes], proto: int = 2) -> bytes:
    parts = list(parts)
    if proto >= 2 and 1 <= len(parts) <= 3:
        return b"".join(parts) + op(("TUPLE1", "TUPLE2", "TUPLE3")[len(parts) - 1])
    if proto >= 1 and not parts:
        return op("EMPTY_TUPLE")
    return op("MARK") + b"".join(parts) + op("TUPLE")


def pcall(module: str, name: str, args: Iterable[bytes], proto: int = 2) -> bytes:
    """module.name(*args) through REDUCE."""
    return pglobal(module, name, proto) + ptuple(args, proto) + op("REDUCE")


def framed(body: bytes, proto: int) -> bytes:
    """PROTO, a FRAME around ``body`` for protocol 4+, STOP."""
    head = op("PROTO", proto) if proto >= 2 else b""
    if proto >= 4:
        return head + op("FRAME", len(body) + 1) + body + op("STOP")
    return head + body + op("STOP")


# --- torch-like zip archives ----------------------------------------------------------


def torch_zip(pickle_bytes: bytes, storages: dict[str, bytes] | None = None,
              prefix: str = "archive", extra: dict[str, bytes] | None = None) -> bytes:
    """A zip laid out as torch.save writes it (stored records, one prefix)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", pickle_bytes)
        archive.writestr(f"{prefix}/byteorder", b"little")
        for key, raw in (storages or {}).items():
            archive.writestr(f"{prefix}/data/{key}", raw)
        for name, raw in (extra or {}).items():
            archive.writestr(f"{prefix}/{name}", raw)
        archive.writestr(f"{prefix}/version", b"3\n")
    return buffer.getvalue()


def zip_records(data: bytes) -> tuple[str, dict[str, bytes]] | None:
    """(prefix, {name below prefix: bytes}) of a torch zip, read with zipfile
    (reading records is not unpickling them); None if it is not one."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            prefix = names[0].partition("/")[0]
            return prefix, {n[len(prefix) + 1:]: archive.read(n) for n in names
                            if n.startswith(prefix + "/")}
    except Exception:  # noqa: BLE001 - not a readable zip: not a seed
        return None


def rezip(prefix: str, records: dict[str, bytes]) -> bytes:
    """Records back into a torch-like zip, data.pkl first."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(records, key=lambda n: n != "data.pkl"):
            archive.writestr(f"{prefix}/{name}", records[name])
    return buffer.getvalue()


# --- seed checkpoints written with torch ----------------------------------------------


def torch_seed_checkpoints() -> dict[str, bytes]:
    """Small checkpoints ``torch.save`` writes (every pickle protocol, views,
    shared storages, Parameters, optimizer state, nested Python values); empty
    when torch is not installed."""
    try:
        import torch
    except ImportError:
        return {}
    from collections import OrderedDict

    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    values = {
        "state_dict": model.state_dict(),
        "views": {"t": base.t(), "row": base[1], "slice": base[:, 2:5], "expand":
                  torch.ones(3, 1).expand(3, 4), "scalar": torch.tensor(2.5),
                  "empty": torch.zeros(0, 3)},
        "dtypes": {str(dt): torch.ones(3, dtype=dt) for dt in (
            torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64,
            torch.uint8, torch.bool, torch.complex64)},
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "optim": optimizer.state_dict(),
        "python": {"none": None, "flags": (True, False), "big": 2**100, "neg": -7,
                   "float": [1.5, float("inf"), float("-inf")], "bytes": b"\x00\xff",
                   "bytearray": bytearray(b"ab"), "set": {1, 2}, "frozen": frozenset({3}),
                   "complex": 1 + 2j, "tuple_key": {(1, 2): "x", 3: "y"},
                   "ordered": OrderedDict(a=1)},
    }
    seeds = {}
    for name, value in values.items():
        for protocol in (2, 3, 4, 5):
            buffer = io.BytesIO()
            torch.save(value, buffer, pickle_protocol=protocol)
            seeds[f"torch_{name}_p{protocol}"] = buffer.getvalue()
    return seeds


_SEEDS: dict[str, bytes] | None = None


def seed_checkpoints(max_size: int = 300_000) -> dict[str, bytes]:
    """torch-saved seeds plus the small benign corpus files, by name (cached)."""
    global _SEEDS
    if _SEEDS is None:
        seeds = torch_seed_checkpoints()
        for path in benign_files(max_size):
            seeds[f"corpus_{path.name}"] = path.read_bytes()
        _SEEDS = seeds
    return _SEEDS


def zip_seeds() -> dict[str, tuple[str, dict[str, bytes]]]:
    """Seeds that are torch zips, split into records (for mutating data.pkl
    while keeping the container valid)."""
    out = {}
    for name, data in seed_checkpoints().items():
        if data[:4] == b"PK\x03\x04":
            parts = zip_records(data)
            if parts is not None and "data.pkl" in parts[1]:
                out[name] = parts
    return out


# --- comparing values -------------------------------------------------------------------


def same_value(expected: object, got: object) -> bool:
    """Deep equality with exact types, float bits (nan == nan, -0.0 != 0.0),
    OrderedDict ``_metadata``, and the same sharing of mutable objects."""
    seen_e: dict[int, int] = {}
    seen_g: dict[int, int] = {}
    return _same(expected, got, seen_e, seen_g)


def _same(e, g, seen_e, seen_g) -> bool:
    if type(e) is not type(g):
        return False
    if isinstance(e, (list, dict, set, bytearray)):
        # sharing: the n-th distinct mutable object must pair with the n-th
        ie, ig = seen_e.get(id(e)), seen_g.get(id(g))
        if ie is not None or ig is not None:
            return ie == ig
        seen_e[id(e)] = seen_g[id(g)] = len(seen_e)
    if isinstance(e, float):
        return struct.pack("<d", e) == struct.pack("<d", g) or (math.isnan(e) and math.isnan(g))
    if isinstance(e, complex):
        return _same(e.real, g.real, seen_e, seen_g) and _same(e.imag, g.imag, seen_e, seen_g)
    if isinstance(e, (list, tuple)):
        return len(e) == len(g) and all(
            _same(a, b, seen_e, seen_g) for a, b in zip(e, g, strict=True))
    if isinstance(e, dict):
        if list(e) != list(g) and not _keys_match(list(e), list(g)):
            return False
        if getattr(e, "_metadata", None) is not None or getattr(g, "_metadata", None) is not None:
            if not _same(getattr(e, "_metadata", None), getattr(g, "_metadata", None),
                         seen_e, seen_g):
                return False
        return all(_same(e[a], g[b], seen_e, seen_g) for a, b in zip(e, g, strict=True))
    if isinstance(e, (set, frozenset)):
        return len(e) == len(g) and _keys_match(sorted(e, key=repr), sorted(g, key=repr))
    return e == g


def _keys_match(a: list, b: list) -> bool:
    return len(a) == len(b) and all(_same(x, y, {}, {}) for x, y in zip(a, b, strict=True))
