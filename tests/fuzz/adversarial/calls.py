"""Every opcode that can call or mutate, carrying code-running payloads.

Payloads that would leave a file in the canary directory (os.system, posix,
subprocess, exec / eval, open, FileIO, logging.FileHandler, numpy.savetxt,
tempfile, shutil, nested pickle.loads, ...) reach the VM through REDUCE, INST,
OBJ, NEWOBJ, NEWOBJ_EX at every protocol, inside containers, in a bare pickle
and in a torch zip. BUILD is aimed at classes, handlers, shared records and
built objects with states that would install hooks; EXT1/2/4 at the
extension registry (which the child fills with os.system); PERSID / BINPERSID
at persistent ids made of payloads; APPEND(S) / SETITEM(S) / ADDITEMS at every
kind of value that is not a container the pickle built.
"""

from __future__ import annotations

from fuzzkit import framed, op, pglobal, pstr, ptuple, torch_zip

from safeload.danger import danger_of

from . import Case, register
from .payloads import STORAGES, storage, val


def targets(canary: str) -> list[tuple[str, str, list]]:
    """(module, name, args): each would create a file in ``canary`` if called."""
    touch = f"touch {canary}/CANARY"
    py = f"open({canary + '/CANARY'!r}, 'w').close()"
    path = f"{canary}/CANARY"
    inner = (b"\x80\x02cos\nsystem\nX" + len(touch).to_bytes(4, "little") + touch.encode()
             + b"\x85R.")
    return [
        ("os", "system", [touch]),
        ("posix", "system", [touch]),
        ("nt", "system", [touch]),
        ("os", "popen", [touch]),
        ("os", "execv", ["/bin/touch", ["touch", path]]),
        ("os", "mkdir", [path]),
        ("posix", "mkdir", [path]),
        ("subprocess", "Popen", [["touch", path]]),
        ("subprocess", "check_output", [["touch", path]]),
        ("subprocess", "run", [["touch", path]]),
        ("subprocess", "call", [touch]),
        ("subprocess", "getoutput", [touch]),
        ("commands", "getoutput", [touch]),
        ("builtins", "exec", [py]),
        ("builtins", "eval", [py]),
        ("__builtin__", "eval", [py]),
        ("builtins", "open", [path, "w"]),
        ("__builtin__", "open", [path, "w"]),
        ("builtins", "__import__", ["antigravity"]),
        ("builtins", "compile", [py, "x", "exec"]),
        ("io", "open", [path, "w"]),
        ("_io", "open", [path, "w"]),
        ("_io", "FileIO", [path, "w"]),
        ("io", "FileIO", [path, "w"]),
        ("codecs", "open", [path, "w"]),
        ("logging", "FileHandler", [path]),
        ("tempfile", "mkstemp", ["", "CANARY", canary]),
        ("shutil", "copyfile", ["/etc/hostname", path]),
        ("pathlib", "Path.touch", [path]),
        ("numpy", "savetxt", [path, [1.0]]),
        ("numpy", "save", [path, [1.0]]),
        ("numpy.lib.npyio", "savetxt", [path, [1.0]]),
        ("numpy.testing._private.utils", "runstring", [py, {}]),
        ("pickle", "loads", [inner]),
        ("_pickle", "loads", [inner]),
        ("torch", "load", [path]),
        ("torch.serialization", "load", [path]),
        ("runpy", "_run_code", [py, {}]),
        ("importlib", "import_module", ["this"]),
        ("ctypes", "CDLL", ["libc.so.6"]),
        ("pty", "spawn", [touch]),
        ("code", "InteractiveInterpreter.runsource", [py]),
        ("collections", "defaultdict", []),  # harmless, yet outside the allowlist
        ("operator", "attrgetter", ["system"]),
        ("functools", "partial", [REFUSED_GLOBAL, touch]),
        ("copyreg", "_reconstructor", [None, None, None]),
    ]


#: stands for ``os.system`` passed as an argument (a refused global as a value)
REFUSED_GLOBAL = object()


def _args(args, proto):
    parts = []
    for a in args:
        if a is REFUSED_GLOBAL:
            parts.append(pglobal("os", "system", proto))
        else:
            parts.append(val(a, proto))
    return parts


def _forms(module: str, name: str, args: list, proto: int) -> dict[str, bytes]:
    """The ways a pickle can call module.name(*args) at this protocol."""
    parts = _args(args, proto)
    forms = {"REDUCE": pglobal(module, name, proto) + ptuple(parts, proto) + op("REDUCE")}
    if "\n" not in module + name:
        forms["INST"] = op("MARK") + b"".join(parts) + op("INST", (module, name))
    if proto >= 1:
        forms["OBJ"] = op("MARK") + pglobal(module, name, proto) + b"".join(parts) + op("OBJ")
    if proto >= 2:
        forms["NEWOBJ"] = pglobal(module, name, proto) + ptuple(parts, proto) + op("NEWOBJ")
    if proto >= 4:
        forms["NEWOBJ_EX"] = (pglobal(module, name, proto) + ptuple(parts, proto)
                              + val({"shell": True}, proto) + op("NEWOBJ_EX"))
    if proto >= 4:
        forms["STACK_GLOBAL+memo"] = (pstr(module, proto) + op("MEMOIZE") + pstr(name, proto)
                                      + op("STACK_GLOBAL") + op("MEMOIZE") + op("POP")
                                      + op("BINGET", 1) + ptuple(parts, proto) + op("REDUCE"))
    return forms


def _wrappers(body: bytes, proto: int) -> dict[str, bytes]:
    """The payload alone, as a dict value, after benign items, as a tensor's hook."""
    return {
        "top": body,
        "dict": op("MARK") + val("key", proto) + body + op("DICT"),
        "list": op("MARK") + val(1, proto) + val("x", proto) + body + op("LIST"),
    }


@register("calls")
def generate(canary: str) -> list[Case]:
    cases: list[Case] = []
    for module, name, args in targets(canary):
        # the records policy refuses what safeload knows to be dangerous; other
        # names may come back as inert records (the canary shows nothing ran)
        dangerous = danger_of(module, name) is not None
        for proto in range(6):
            for form, body in _forms(module, name, args, proto).items():
                wrappers = _wrappers(body, proto)
                for wrapper in ("top", "dict") if form == "REDUCE" else ("top",):
                    data = framed(wrappers[wrapper], proto)
                    label = f"{module}.{name}/{form}/p{proto}/{wrapper}"
                    cases.append(Case(label, data, "refuse:unsafe-global",
                                      dangerous=dangerous, unsafe=True))
                if form in ("REDUCE", "NEWOBJ") and proto in (2, 5):
                    zipped = torch_zip(framed(wrappers["list"], proto), STORAGES)
                    cases.append(Case(f"{module}.{name}/{form}/p{proto}/zip", zipped,
                                      "refuse:unsafe-global", dangerous=dangerous,
                                      unsafe=True))
    cases += _build_cases(canary)
    cases += _ext_cases()
    cases += _persistent_cases(canary)
    cases += _mutation_cases()
    return cases


def _build_cases(canary: str) -> list[Case]:
    """BUILD on everything a pickle can reach, with hook-installing states."""
    touch = f"touch {canary}/CANARY"
    hook = pglobal("os", "system") + op("MEMOIZE")  # BUILD on a refused global
    states = {
        "setstate-hook": op("MARK") + val("__setstate__") + pglobal("os", "system") + op("DICT"),
        "reduce-hook": op("MARK") + val("__reduce__") + pglobal("os", "system") + op("DICT"),
        "class": op("MARK") + val("__class__") + pglobal("collections", "Counter") + op("DICT"),
        "dict-attr": op("MARK") + val("__dict__") + val({"a": 1}) + op("DICT"),
        "metadata+extra": val({"_metadata": {}, "__getitem__": 1}),
        "slotstate": ptuple([val({}), val({"__setstate__": touch})]),
        "slotstate-meta": ptuple([op("NONE"), val({"_metadata": {}})]),
        "str": val(touch),
        "list": val([touch]),
        "numpy-state": ptuple([val(1), val((2,)), pglobal("numpy", "dtype") + val(("f4",))
                               + op("REDUCE"), op("NEWFALSE"), val(b"\0" * 8)]),
    }
    targets = {
        "handler-OrderedDict": pglobal("collections", "OrderedDict"),
        "handler-set": pglobal("builtins", "set"),
        "handler-rebuild": pglobal("torch._utils", "_rebuild_tensor_v2"),
        "handler-ndarray": pglobal("numpy", "ndarray"),
        "handler-dtype": pglobal("numpy", "dtype"),
        "shared-dtype-record": pglobal("torch", "float32"),
        "shared-storage-type": pglobal("torch", "FloatStorage"),
        "shared-tensor-type": pglobal("torch", "Tensor"),
        "Counter": pglobal("collections", "Counter") + op("EMPTY_TUPLE") + op("REDUCE"),
        "dict": op("EMPTY_DICT"),
        "list": op("EMPTY_LIST"),
        "set": op("EMPTY_SET"),
        "int": val(5),
        "str": val("s"),
        "tuple": val((1,)),
        "none": op("NONE"),
        "Size": pglobal("torch", "Size") + val(((2,),)) + op("REDUCE"),
        "device": pglobal("torch", "device") + val(("cpu",)) + op("REDUCE"),
        "numpy-scalar-dtype": pglobal("numpy", "dtype") + val(("f4", False, True))
        + op("REDUCE") + op("MEMOIZE") + op("POP") + op("BINGET", 0),
        "bytearray": pglobal("builtins", "bytearray") + val((b"ab",)) + op("REDUCE"),
        "complex": pglobal("builtins", "complex") + val((1, 2)) + op("REDUCE"),
        "refused-global": hook,
    }
    cases = []
    for tname, target in targets.items():
        for sname, state in states.items():
            body = target + state + op("BUILD")
            hostile = b"system" in state or tname == "refused-global"
            cases.append(Case(f"BUILD/{tname}/{sname}", framed(body, 4), "refuse",
                              dangerous=hostile, unsafe=hostile))
    # OrderedDict: only _metadata may be set, and only on an OrderedDict
    od = pglobal("collections", "OrderedDict") + op("EMPTY_TUPLE") + op("REDUCE")
    for sname, state in states.items():
        hostile = b"system" in state
        cases.append(Case(f"BUILD/OrderedDict/{sname}", framed(od + state + op("BUILD"), 4),
                          "refuse", dangerous=hostile, unsafe=hostile))
    cases.append(Case("BUILD/OrderedDict/metadata-only",
                      framed(od + val({"_metadata": {"": {"version": 1}}}) + op("BUILD"), 4),
                      "value"))
    # numpy: BUILD twice on one array, BUILD on a dtype twice
    array = pglobal("numpy.core.multiarray", "_reconstruct") + ptuple([
        pglobal("numpy", "ndarray"), val((0,)), val(b"b")]) + op("REDUCE")
    dtype = pglobal("numpy", "dtype") + val(("f4", False, True)) + op("REDUCE")
    state = ptuple([val(1), val((2,)), dtype, op("NEWFALSE"), val(b"\0" * 8)])
    cases.append(Case("BUILD/ndarray/once", framed(array + state + op("BUILD"), 3), "value"))
    cases.append(Case("BUILD/ndarray/twice",
                      framed(array + state + op("BUILD") + state + op("BUILD"), 3), "refuse"))
    dstate = ptuple([val(3), val(">"), op("NONE"), op("NONE"), op("NONE"), val(-1), val(-1),
                     val(0)])
    cases.append(Case("BUILD/dtype/twice",
                      framed(dtype + dstate + op("BUILD") + dstate + op("BUILD"), 3), "refuse"))
    cases.append(Case("BUILD/dtype/swap-then-use",
                      framed(dtype + dstate + op("BUILD") + op("POP") + dtype, 3), "value"))
    return cases


def _ext_cases() -> list[Case]:
    cases = []
    for code in (1, 2, 3, 4, 5, 6, 0x1234, 0x7FFFFFF0, 0, 255, 65535, -1, 2**31 - 1):
        forms = []
        if 0 <= code < 256:
            forms.append(("EXT1", op("EXT1", code)))
        if 0 <= code < 65536:
            forms.append(("EXT2", op("EXT2", code)))
        forms.append(("EXT4", op("EXT4", code)))
        for name, ext in forms:
            body = ext + val(("touch CANARY",)) + op("REDUCE")
            cases.append(Case(f"{name}/{code}", framed(body, 2), "refuse:unsafe-global",
                              unsafe=True))
            cases.append(Case(f"{name}/{code}/value", framed(ext, 2), "refuse:unsafe-global",
                              unsafe=True))
    return cases


def _persistent_cases(canary: str) -> list[Case]:
    touch = f"touch {canary}/CANARY"
    pids = {
        "text-command": op("PERSID", touch),
        "text-key": op("PERSID", "0"),
        "global": pglobal("os", "system") + op("BINPERSID"),
        "call": pglobal("os", "system") + val((touch,)) + op("REDUCE") + op("BINPERSID"),
        "tuple-with-global": ptuple([val("storage"), pglobal("os", "system"), val("0"),
                                     val("cpu"), val(4)]) + op("BINPERSID"),
        "module-kind": ptuple([val("module"), pglobal("torch", "FloatStorage"), val("0"),
                               val("cpu"), val(4)]) + op("BINPERSID"),
        "nested": storage() + op("BINPERSID"),
        "list": val(["storage", "FloatStorage", "0", "cpu", 4]) + op("BINPERSID"),
    }
    cases = []
    for name, body in pids.items():
        hostile = b"system" in body
        cases.append(Case(f"PERSID/{name}/bare", framed(body, 2), "refuse", dangerous=hostile,
                          unsafe=hostile))
        cases.append(Case(f"PERSID/{name}/zip", torch_zip(framed(body, 2), STORAGES), "refuse",
                          dangerous=hostile, unsafe=hostile))
    return cases


def _mutation_cases() -> list[Case]:
    """Container opcodes aimed at values that are not containers the pickle built."""
    targets = {
        "handler": pglobal("collections", "OrderedDict"),
        "handler-set": pglobal("builtins", "set"),
        "dtype-record": pglobal("torch", "float32"),
        "storage-type": pglobal("torch", "FloatStorage"),
        "str": val("abc"),
        "bytes": val(b"abc", 3),
        "bytearray": pglobal("builtins", "bytearray") + val((b"ab",)) + op("REDUCE"),
        "tuple": val((1, 2)),
        "frozenset": op("MARK") + val(1) + op("FROZENSET"),
        "int": val(3),
        "none": op("NONE"),
        "Size": pglobal("torch", "Size") + val(((2,),)) + op("REDUCE"),
        "device": pglobal("torch", "device") + val(("cpu",)) + op("REDUCE"),
        "complex": pglobal("builtins", "complex") + val((1, 2)) + op("REDUCE"),
        "storage": storage(),
        "numpy-dtype": pglobal("numpy", "dtype") + val(("f4",)) + op("REDUCE"),
    }
    mutations = {
        "APPEND": val("x") + op("APPEND"),
        "APPENDS": op("MARK") + val("x") + op("APPENDS"),
        "SETITEM": val("k") + val("v") + op("SETITEM"),
        "SETITEMS": op("MARK") + val("k") + val("v") + op("SETITEMS"),
        "ADDITEMS": op("MARK") + val("x") + op("ADDITEMS"),
        "SETITEM-hook": val("__setstate__") + pglobal("os", "system") + op("SETITEM"),
    }
    cases = []
    for tname, target in targets.items():
        for mname, mutation in mutations.items():
            body = target + mutation
            data = torch_zip(framed(body, 4), STORAGES) if tname == "storage" else framed(body, 4)
            hostile = b"system" in mutation
            cases.append(Case(f"{mname}/{tname}", data, "refuse", dangerous=hostile,
                              unsafe=hostile))
    return cases
