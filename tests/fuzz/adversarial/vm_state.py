"""Malformed VM state: memo misuse, underflow, MARK and STOP misuse, truncation,
trailing data and second pickles, bad PROTO, bad UTF-8 and bad text arguments,
unknown opcodes, out-of-band buffers.

Every opcode of the table runs on an empty stack and right after a MARK;
several valid pickles (bare and in a zip) are cut at every offset; a second
pickle carrying a payload follows a valid one. All of it must be refused with
a FormatError (nothing here is a resource bomb), except the few well-formed
oddities marked "any" (PROTO in the middle, memo overwrite, surrogates).
"""

from __future__ import annotations

from fuzzkit import framed, op, pglobal, torch_zip

from safeload.opcodes import BY_CODE, OPCODES

from . import Case, register
from .payloads import STORAGES, in_zip, tensor, val

#: a well-formed argument for each opcode that takes one
_ARGS = {
    "INT": 1, "BININT": 1, "BININT1": 1, "BININT2": 1, "LONG": 1, "LONG1": 1, "LONG4": 1,
    "STRING": b"a", "BINSTRING": b"a", "SHORT_BINSTRING": b"a", "BINBYTES": b"a",
    "SHORT_BINBYTES": b"a", "BINBYTES8": b"a", "BYTEARRAY8": b"a", "UNICODE": "a",
    "SHORT_BINUNICODE": "a", "BINUNICODE": "a", "BINUNICODE8": "a", "FLOAT": 1.0,
    "BINFLOAT": 1.0, "GET": 0, "BINGET": 0, "LONG_BINGET": 0, "PUT": 0, "BINPUT": 0,
    "LONG_BINPUT": 0, "EXT1": 1, "EXT2": 1, "EXT4": 1, "GLOBAL": ("builtins", "set"),
    "INST": ("builtins", "set"), "PROTO": 2, "FRAME": 0, "PERSID": "0",
}


def _op(opcode) -> bytes:
    return op(opcode.name, _ARGS[opcode.name]) if opcode.arg else op(opcode.name)


@register("vm_state")
def generate(canary: str) -> list[Case]:
    cases: list[Case] = []
    # every opcode that takes values, on an empty stack and right after a MARK
    for opcode in OPCODES:
        if not opcode.stack_before or opcode.name in ("STOP",):
            continue
        for proto in (2, 4):
            head = op("PROTO", proto)
            cases.append(Case(f"underflow/{opcode.name}/empty/p{proto}",
                              head + _op(opcode) + op("NONE") + op("STOP"), "refuse"))
            # an opcode that takes the MARK itself (LIST, INST...) may make a value
            takes_mark = opcode.stack_before.startswith("mark")
            cases.append(Case(f"underflow/{opcode.name}/mark/p{proto}",
                              head + op("MARK") + _op(opcode) + op("STOP"),
                              "any" if takes_mark else "refuse"))
    cases += [
        Case("stop/empty", op("STOP"), "refuse:format"),
        Case("stop/two-values", op("NONE") + op("NONE") + op("STOP"), "refuse:format"),
        Case("stop/unclosed-mark", op("MARK") + op("NONE") + op("STOP"), "refuse:format"),
        Case("stop/unclosed-mark-below", op("NONE") + op("MARK") + op("STOP"), "refuse:format"),
        Case("stop/many-marks", op("MARK") * 50 + op("NONE") + op("STOP"), "refuse:format"),
        Case("stop/none", b"", "refuse:format"),
        Case("stop/missing", op("PROTO", 2) + op("NONE"), "refuse:format"),
        Case("pop-mark/none", op("POP_MARK") + op("NONE") + op("STOP"), "refuse:format"),
        Case("pop/empty", op("POP") + op("NONE") + op("STOP"), "refuse:format"),
        Case("pop/mark", op("MARK") + op("POP") + op("NONE") + op("STOP"), "value"),
        Case("dict/odd", op("MARK") + op("NONE") + op("DICT") + op("STOP"), "refuse:format"),
        Case("setitems/odd", op("EMPTY_DICT") + op("MARK") + op("NONE") + op("SETITEMS")
             + op("STOP"), "refuse:format"),
        Case("obj/empty-mark", op("MARK") + op("OBJ") + op("STOP"), "refuse:format"),
        Case("dup/empty", op("DUP") + op("STOP"), "refuse:format"),
    ]
    # memo misuse
    memo = {
        "GET-missing": (op("GET", 5), "refuse:format"),
        "BINGET-255": (op("BINGET", 255), "refuse:format"),
        "LONG_BINGET-max": (op("LONG_BINGET", 2**32 - 1), "refuse:format"),
        "GET-negative": (b"g-1\n", "refuse:format"),
        "GET-text": (b"gx\n", "refuse:format"),
        "GET-huge": (b"g" + b"9" * 5000 + b"\n", "refuse"),
        "PUT-negative": (op("NONE") + b"p-1\n", "refuse:format"),
        "PUT-text": (op("NONE") + b"px\n", "refuse:format"),
        "PUT-empty": (b"p0\n" + op("NONE"), "refuse:format"),
        "BINPUT-empty": (op("BINPUT", 0) + op("NONE"), "refuse:format"),
        "MEMOIZE-empty": (op("MEMOIZE") + op("NONE"), "refuse:format"),
        "PUT-after-mark": (op("MARK") + op("BINPUT", 0) + op("POP_MARK") + op("NONE"),
                           "refuse:format"),
        "LONG_BINPUT-max": (op("NONE") + op("LONG_BINPUT", 2**32 - 1) + op("POP")
                            + op("LONG_BINGET", 2**32 - 1), "value"),
        "overwrite": (op("NONE") + op("BINPUT", 0) + op("POP") + op("NEWTRUE")
                      + op("BINPUT", 0) + op("POP") + op("BINGET", 0), "value"),
        "get-before-put": (op("BINGET", 0) + op("NONE") + op("BINPUT", 0), "refuse:format"),
        "self-list": (op("EMPTY_LIST") + op("BINPUT", 0) + op("BINGET", 0) + op("APPEND"),
                      "value"),
        "self-dict": (op("EMPTY_DICT") + op("BINPUT", 0) + op("NONE") + op("BINGET", 0)
                      + op("SETITEM"), "value"),
        "self-key": (op("EMPTY_DICT") + op("BINPUT", 0) + op("BINGET", 0) + op("NONE")
                     + op("SETITEM"), "refuse"),
        "self-set": (op("EMPTY_SET") + op("BINPUT", 0) + op("MARK") + op("BINGET", 0)
                     + op("ADDITEMS"), "refuse"),
    }
    for label, (body, expect) in memo.items():
        cases.append(Case(f"memo/{label}", op("PROTO", 4) + body + op("STOP"), expect))
    # truncation at every offset, bare and inside a valid zip
    whole = [
        ("dict", framed(val({"a": [1, 2.5, "x", b"y"], "b": (None, True)}, 4), 4)),
        ("tensor", framed(tensor(), 2)),
        ("globals", framed(pglobal("collections", "OrderedDict") + op("EMPTY_TUPLE")
                           + op("REDUCE"), 2)),
        ("proto0", framed(val({"a": [1, 2.5, "x"]}, 0), 0)),
    ]
    for label, data in whole:
        for cut in range(len(data)):
            if label == "tensor":
                cases.append(Case(f"truncate/zip-{label}/{cut}",
                                  torch_zip(data[:cut], STORAGES), "refuse:format"))
            else:
                cases.append(Case(f"truncate/{label}/{cut}", data[:cut], "refuse:format"))
    zipped = in_zip(tensor())
    for cut in range(0, len(zipped), max(1, len(zipped) // 60)):
        cases.append(Case(f"truncate/zip-file/{cut}", zipped[:cut], "refuse:format"))
    # trailing data and second pickles (one of them carrying a payload)
    payload = framed(pglobal("os", "system") + val(("touch " + canary + "/CANARY",))
                     + op("REDUCE"), 2)
    first = framed(val({"a": 1}), 2)
    trailers = {"junk1": b"\x00", "junk100": bytes(range(100)), "stop": op("STOP"),
                "second": first, "payload": payload, "newline": b"\n", "zip": zipped}
    for label, tail in trailers.items():
        cases.append(Case(f"trailing/{label}", first + tail, "refuse:format"))
        cases.append(Case(f"trailing/{label}/zip", torch_zip(first + tail, STORAGES),
                          "refuse:format"))
    cases.append(Case("trailing/payload-first", payload + first, "refuse:unsafe-global",
                      dangerous=True, unsafe=True))
    # PROTO
    for proto in (6, 7, 0x80, 255):
        cases.append(Case(f"proto/{proto}", op("PROTO", proto) + op("NONE") + op("STOP"),
                          "refuse:format"))
    cases.append(Case("proto/middle", op("PROTO", 2) + op("NONE") + op("PROTO", 5)
                      + op("STOP"), "value"))
    cases.append(Case("proto/down", op("PROTO", 5) + op("PROTO", 0) + op("NONE") + op("STOP"),
                      "value"))
    cases.append(Case("proto/truncated", op("PROTO", 2)[:1], "refuse:format"))
    # UTF-8 and text arguments
    bad_utf8 = [b"\xff", b"\xc3", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"a\x80b"]
    for raw in bad_utf8:
        n = len(raw)
        forms = {
            "SHORT_BINUNICODE": b"\x8c" + bytes([n]) + raw,
            "BINUNICODE": b"X" + n.to_bytes(4, "little") + raw,
            "BINUNICODE8": b"\x8d" + n.to_bytes(8, "little") + raw,
            "GLOBAL-module": b"c" + raw + b"\nset\n",
            "GLOBAL-name": b"cbuiltins\n" + raw + b"\n",
            "INST": b"(cbuiltins\n" + raw + b"\n",
            "PERSID": b"P" + raw + b"\n",
        }
        for label, body in forms.items():
            cases.append(Case(f"utf8/{label}/{raw!r}", op("PROTO", 4) + body + op("STOP"),
                              "refuse"))
    cases.append(Case("utf8/surrogate", op("PROTO", 4) + b"\x8c\x03\xed\xa0\x80" + op("STOP"),
                      "value"))
    text_args = {
        "unicode-escape-short": b"V\\u12\n",
        "unicode-escape-range": b"V\\U0011ffff\n",
        "string-unquoted": b"Sabc\n",
        "string-mismatched": b"S'abc\"\n",
        "string-bad-escape": b"S'\\x'\n",
        "string-one-quote": b"S'\n",
        "string-nonascii": b"S'\xff'\n",
        "binstring-negative": b"T\xff\xff\xff\xff",
        "float-garbage": b"F1.2.3\n",
        "float-empty": b"F\n",
        "int-empty": b"I\n",
        "int-0x": b"I0x\n",
        "int-exp": b"I1e5\n",
        "long-empty": b"L\n",
        "long-LL": b"L1LL\n",
        "int-huge-decimal": b"I" + b"9" * 5000 + b"\n",
        "no-newline": b"I12",
        "global-one-line": b"cbuiltins\n",
        "frame-past-end": op("FRAME", 100),
        "frame-huge": op("FRAME", 2**64 - 1),
        "next-buffer": op("NEXT_BUFFER"),
        "readonly-buffer": op("NONE") + op("READONLY_BUFFER"),
        "long1-truncated": b"\x8a\x05\x01",
        "long4-negative": b"\x8b\xff\xff\xff\xff",
        "bytes8-truncated": b"\x8e" + (5).to_bytes(8, "little") + b"ab",
    }
    for label, body in text_args.items():
        cases.append(Case(f"arg/{label}", op("PROTO", 4) + body + op("STOP"), "refuse"))
    oddities = {
        "int-space": (b"I 1\n", "value"),
        "float-nan": (b"Fnan\n", "value"),
        "int-bool": (b"I01\n", "value"),
        "frame-zero": (op("FRAME", 0) + op("NONE"), "value"),
        "frames-nested": (op("FRAME", 11) + op("FRAME", 1) + op("NONE"), "value"),
    }
    for label, (body, expect) in oddities.items():
        cases.append(Case(f"arg/{label}", op("PROTO", 4) + body + op("STOP"), expect))
    # every byte that is not an opcode
    for code in range(256):
        if code in BY_CODE:
            continue
        cases.append(Case(f"unknown/0x{code:02x}", bytes([code]) + op("STOP"), "refuse:format"))
        cases.append(Case(f"unknown/0x{code:02x}/after", op("PROTO", 2) + op("NONE")
                          + bytes([code]) + op("STOP"), "refuse:format"))
    return cases
