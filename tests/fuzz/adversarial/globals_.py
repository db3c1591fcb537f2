"""How a pickle names a global: STACK_GLOBAL operands, dotted names, Python 2 names.

STACK_GLOBAL gets operands of every type the VM can make (never only str);
GLOBAL, STACK_GLOBAL and INST get dotted, padded, NUL-carrying, look-alike and
attribute-walking names; and every entry of CPython's Python 2 name tables
(``_compat_pickle.NAME_MAPPING`` / ``IMPORT_MAPPING``, what ``fix_imports``
applies under protocols 0-2) is named at protocols 0, 2 and 3. Expectation: a
name loads only if it (after the Python 2 mapping, below protocol 3) is
exactly an allowlist entry; everything else is an UnsafeGlobalError (or a
FormatError for operands that are not strings).
"""

from __future__ import annotations

import _compat_pickle

from fuzzkit import framed, op, pglobal, pstr

import safeload.allowlist
from safeload.allowlist import DEFAULT_POLICY
from safeload.danger import danger_of

from . import Case, register
from .payloads import val

ALLOWED = frozenset(DEFAULT_POLICY.handlers)
#: builtin base types the records policy may *name* (as inert GlobalRefs, for
#: copyreg._reconstructor) although danger.py lists builtins.object; calling
#: them stays refused
_RECORD_BASES = frozenset(getattr(safeload.allowlist, "_RECONSTRUCTOR_BASES", ()))


def _mapped(module: str, name: str, proto: int) -> str:
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _name_case(label: str, module: str, name: str, proto: int, form: str) -> Case | None:
    line_safe = "\n" not in module + name and not any(0xD800 <= ord(c) < 0xE000
                                                        for c in module + name)
    if form == "GLOBAL":
        if not line_safe:
            return None
        body = op("GLOBAL", (module, name))
    elif form == "STACK_GLOBAL":
        body = pstr(module, 4) + pstr(name, 4) + op("STACK_GLOBAL")
    else:  # INST: calls it with no arguments
        if not line_safe:
            return None
        body = op("MARK") + op("INST", (module, name))
    full = _mapped(module, name, proto)
    allowed = full in ALLOWED
    if form != "INST":
        body += op("POP") + op("NONE")  # named, not called: only the lookup is tested
    if not (module.isprintable() and name.isprintable()):
        # no Python name holds control characters or lone surrogates: malformed
        return Case(f"{label}/{form}/p{proto}", framed(body, proto), "refuse:format")
    expect = "any" if allowed else "refuse:unsafe-global"
    return Case(f"{label}/{form}/p{proto}", framed(body, proto), expect,
                dangerous=not allowed and danger_of(*full.rsplit(".", 1)) is not None
                and (form == "INST" or full not in _RECORD_BASES),
                unsafe=not allowed)


_DOTTED = [
    ("os.path", "join"), ("os", "path.join"), ("builtins", "getattr"),
    ("torch", "_utils._rebuild_tensor"), ("torch._utils._rebuild_tensor", "__globals__"),
    ("torch._utils", "_rebuild_tensor.__globals__"), ("collections.OrderedDict", "__init__"),
    ("collections", "OrderedDict.__init__"), ("collections", "OrderedDict.fromkeys"),
    ("builtins", "set.__init__"), ("builtins", "set.__class__"),
    ("numpy", "core.multiarray._reconstruct"), ("numpy.core", "multiarray._reconstruct"),
    ("numpy.core.multiarray", "_reconstruct.__globals__"), ("numpy", "dtype.__new__"),
    ("", "builtins.eval"), ("builtins.", "eval"), (".builtins", "eval"), ("builtins", ""),
    ("", ""), ("builtins", "eval\x00"), ("builtins\x00", "set"), ("\u0440uiltins", "eval"),
    ("BUILTINS", "eval"), ("builtins ", "set"), (" builtins", "set"), ("builtins", "set "),
    ("builtins", "s\u0435t"), ("torch._utils", "_rebuild_tensor_v2 "),
    ("os", "system\x1b[2K\rclean"), ("os\r", "system"), ("\x7f", "x"),
    ("torch._utils", "_REBUILD_TENSOR_V2"), ("Torch._utils", "_rebuild_tensor_v2"),
    ("torch", "FloatStorage.__reduce__"), ("torch", "float32.__class__"),
    ("builtins", "__builtins__"), ("builtins", "__dict__"), ("__main__", "system"),
    ("sys", "modules"), ("sys.modules", "os"), ("os", "environ"), ("builtins", "vars"),
    ("builtins", "globals"), ("builtins", "breakpoint"), ("builtins", "type"),
    ("builtins", "object"), ("builtins", "set\udc80"), ("\udcff", "x"),
    ("builtins" * 200, "set"), ("a." * 500 + "b", "c"), ("torch", "Size"),
    ("torch", "device"), ("collections", "Counter"), ("builtins", "frozenset"),
]


_OPERANDS = {
    "int": val(1), "bytes": val(b"builtins", 3), "none": op("NONE"), "tuple": val(("a",)),
    "list": val(["builtins"]), "float": val(1.5), "bool": op("NEWTRUE"),
    "bytearray": pglobal("builtins", "bytearray", 4) + val((b"os",), 4) + op("REDUCE"),
    "handler": pglobal("builtins", "set", 4), "dict": op("EMPTY_DICT"),
    "frozenset": op("MARK") + val("os", 4) + op("FROZENSET"),
}


@register("globals")
def generate(canary: str) -> list[Case]:
    cases: list[Case] = []
    # STACK_GLOBAL operands that are not strings
    for label, operand in _OPERANDS.items():
        for side in ("module", "name"):
            for name in ("system", "set"):
                text = pstr("builtins" if name == "set" else "os", 4)
                first, second = (operand, pstr(name, 4)) if side == "module" else (text, operand)
                body = first + second + op("STACK_GLOBAL") + val(("x",), 4) + op("REDUCE")
                cases.append(Case(f"STACK_GLOBAL/{side}={label}/{name}", framed(body, 4),
                                  "refuse:format"))
    cases.append(Case("STACK_GLOBAL/underflow", framed(pstr("os", 4) + op("STACK_GLOBAL"), 4),
                      "refuse:format"))
    cases.append(Case("STACK_GLOBAL/memo-operands", framed(
        pstr("os", 4) + op("MEMOIZE") + pstr("system", 4) + op("MEMOIZE") + op("POP")
        + op("POP") + op("BINGET", 0) + op("BINGET", 1) + op("STACK_GLOBAL"), 4),
        "refuse:unsafe-global", dangerous=True, unsafe=True))
    # dotted and odd names, by each naming opcode
    for module, name in _DOTTED:
        for form, protos in (("GLOBAL", (0, 2, 3)), ("STACK_GLOBAL", (4, 5)), ("INST", (0,))):
            for proto in protos:
                case = _name_case(f"name/{module[:40]!r}.{name[:40]!r}", module, name, proto,
                                  form)
                if case is not None:
                    cases.append(case)
    # Python 2 names: every entry of the tables pickle's fix_imports uses
    for (module, name) in sorted(_compat_pickle.NAME_MAPPING):
        for proto in (0, 2, 3):
            cases.append(_name_case(f"py2/{module}.{name}", module, name, proto, "GLOBAL"))
    for module in sorted(_compat_pickle.IMPORT_MAPPING):
        for name in ("system", "loads", "open", "Popen", "set"):
            for proto in (2, 3):
                cases.append(_name_case(f"py2-module/{module}.{name}", module, name, proto,
                                        "GLOBAL"))
    # the allowlisted Python 2 spellings load, and only under protocols 0-2
    for name in ("set", "frozenset", "bytearray", "complex", "slice"):
        for proto in (0, 1, 2, 3, 4):
            body = op("GLOBAL", ("__builtin__", name)) + op("POP") + op("NONE")
            expect = "value" if proto < 3 else "refuse:unsafe-global"
            cases.append(Case(f"py2-allowed/{name}/p{proto}", framed(body, proto), expect,
                              unsafe=proto >= 3))
    _ = canary
    return cases
