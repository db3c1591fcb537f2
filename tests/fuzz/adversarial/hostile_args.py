"""Allowlisted callables with hostile arguments.

The tensor rebuild functions get offsets, sizes and strides that overflow,
go negative, have the wrong type or reach outside the storage; persistent ids
get keys that traverse paths or alias one record under two dtypes, declared
sizes that disagree with the record, odd location strings, and the wrong
shape altogether. Every other handler (torch.Size / device, the builtins,
OrderedDict / Counter, _codecs.encode, the numpy reconstructors, quantized
tensors) gets arguments outside what it accepts: codecs that would import
modules, sizes that would allocate, object dtypes, byte counts that lie.
Inputs the handler accepts must load ("any": the invariants still hold);
the rest are refused.
"""

from __future__ import annotations

import struct

from fuzzkit import framed, op, pglobal, ptuple, torch_zip

from . import Case, register
from .payloads import STORAGES, Raw, in_zip, pid, storage, tensor, val

BIG = Raw(op("LONG4", 2**(8 * 60000)))  # a 60000-byte int


def _t(label: str, expect: str, **kwargs) -> Case:
    proto = kwargs.pop("proto", 2)
    return Case(f"tensor/{label}/p{proto}", in_zip(tensor(proto=proto, **kwargs), proto),
                expect)


@register("hostile_args")
def generate(canary: str) -> list[Case]:
    cases: list[Case] = []
    for proto in (2, 4):
        cases.append(_t("valid", "value", proto=proto))
        for offset in (-1, -(2**63), 2**63, 2**64, 2**1000, BIG, 4, 1.5, "0", None, True,
                       (0,), [0]):
            cases.append(_t(f"offset={offset!r:.30}", "refuse", offset=offset, size=(1,),
                            proto=proto))
        cases.append(_t("offset=3-last", "value", offset=3, size=(1,), proto=proto))
        cases.append(_t("offset=huge-empty", "value", offset=2**62, size=(0,), proto=proto))
        sizes = [((-1,), (1,)), ((2**62,), (1,)), ((2**32, 2**32), (2**32, 1)),
                 ((2**63,), (1,)), ((2**64,), (1,)), ((5,), (1,)), ((2, 3), (3, 1)),
                 ((1,) * 65, (1,) * 65), (("4",), (1,)), ((4.0,), (1,)), ([4], [1]),
                 ((True,), (1,)), ((BIG,), (1,)), ((4,), (BIG,)), ((4,), (-1,)),
                 ((4,), (2**62,)), ((4,), (2**63,)), ((4,), (1, 1)), ((4,), ()),
                 ((2, 2), (1, 2**63 - 1)), ((3,), (2**63 - 1,)), ((2**62, 2), (2**62, 1)),
                 ((2,), (4,)), ((2**31, 2**31, 4), (0, 0, 1)), ((0, 2**63), (1, 1)),
                 (None, (1,)), ((4,), None)]
        for size, stride in sizes:
            cases.append(_t(f"size={size!r:.30}/stride={stride!r:.30}", "refuse", size=size,
                            stride=stride, proto=proto))
        for size, stride in [((1,) * 64, (1,) * 64), ((0,), (1,)), ((2, 2), (2, 1)),
                             ((2, 2), (1, 2)), ((4,), (0,)), ((2**40,), (0,)),
                             ((2**15,) * 4, (0,) * 4), ((), ())]:
            cases.append(_t(f"ok-size={size!r:.30}/stride={stride!r:.30}", "value", size=size,
                            stride=stride, proto=proto))
        # empty, but numpy cannot describe it: a LimitError from loader and scanner alike
        cases.append(_t("empty-too-big-for-numpy", "refuse:limit", size=(0, 2**62),
                        stride=(1, 1), proto=proto))
        cases.append(_t("empty-just-fits-numpy", "value", size=(0, 2**61 - 1),
                        stride=(1, 1), proto=proto))
        cases.append(_t("huge-logical-over-limit", "refuse", size=(2**31, 2**31),
                        stride=(0, 0), proto=proto))
        cases.append(_t("requires_grad=1", "refuse", requires_grad=1, proto=proto))
        cases.append(_t("requires_grad=None", "refuse", requires_grad=None, proto=proto))
        for hooks in ({1: 2}, [None], "x", Raw(pglobal("collections", "OrderedDict", proto)
                                                + op("EMPTY_TUPLE") + op("REDUCE"))):
            expect = "value" if isinstance(hooks, Raw) else "refuse"
            cases.append(_t(f"hooks={hooks!r:.30}", expect, hooks=hooks, proto=proto))
        cases.append(_t("hooks=None", "value", hooks=None, proto=proto))
        for metadata in ([1], 5, "x"):
            cases.append(_t(f"metadata={metadata!r}", "refuse", metadata=metadata, proto=proto))
        cases.append(_t("metadata=dict", "any", metadata={"a": 1}, proto=proto))
        cases.append(_t("metadata=empty", "value", metadata={}, proto=proto))
        cases.append(_t("v1-arity", "refuse", fn="_rebuild_tensor", extra_args=(False,),
                        proto=proto))
        cases.append(_t("v1", "value", fn="_rebuild_tensor", proto=proto))
        cases.append(_t("v2-arity", "refuse", metadata={}, extra_args=(1,), proto=proto))
        cases.append(_t("v3-not-a-dtype", "refuse", fn="_rebuild_tensor_v3",
                        extra_args=("float32",), proto=proto))
        cases += _pid_cases(proto)
    cases += _alias_cases()
    cases += _handler_cases()
    cases += _numpy_cases()
    cases += _quantized_cases()
    _ = canary
    return cases


def _pid_cases(proto: int) -> list[Case]:
    cases = []
    keys = ["../0", "..", ".", "/0", "0/../0", "data/0", "0\x00", "", "a" * 129, "a" * 128,
            "\u00e9", -1, 2**70, b"0", None, ("0",), "0 ", " 0", "0\n", "C:0", "~", "-",
            "$HOME", "%2e%2e", "0/", "\\0", "..\\0", "CON", "0" * 128, 1.0]
    for key in keys:
        body = tensor(storage(key=key, proto=proto), proto=proto)
        cases.append(Case(f"pid/key={key!r:.40}/p{proto}", in_zip(body, proto), "refuse"))
    cases.append(Case(f"pid/key=int/p{proto}", in_zip(tensor(storage(key=0, proto=proto),
                                                             proto=proto), proto), "value"))
    for numel in (3, 5, 0, 2**62, 2**64, -1, BIG, "4", None, 4.0):
        body = tensor(storage(numel=numel, proto=proto), proto=proto)
        cases.append(Case(f"pid/numel={numel!r:.30}/p{proto}", in_zip(body, proto), "refuse"))
    good = ["cpu", "cuda:1", "cuda:0", "meta", "mps", "xla:3", "cuda:9999"]
    bad = ["", "cuda:", "cuda:-1", "cuda:99999", "../etc", "cpu\n", "os.system", "CPU",
           "cuda:1:2", "a" * 33, "cpu;touch x", 1, None, b"cpu", "cu da", "\u0441pu"]
    for location in good + bad:
        body = tensor(storage(location=location, proto=proto), proto=proto)
        expect = "value" if location in good else "refuse"
        cases.append(Case(f"pid/location={location!r:.40}/p{proto}", in_zip(body, proto),
                          expect))
    shapes = {
        "list": val(["storage", "x", "0", "cpu", 4], proto),
        "dict": val({"storage": "0"}, proto),
        "str": val("0", proto),
        "int": val(0, proto),
        "none": op("NONE"),
        "4-tuple": val(("storage", "0", "cpu", 4), proto),
        "7-tuple": pid(proto=proto, extra=(1, 2)),
        "1-tuple": val(("storage",), proto),
        "Storage-kind": pid(kind="Storage", proto=proto),
        "bytes-kind": pid(kind=b"storage", proto=proto),
        "str-type": pid(storage=Raw(val("FloatStorage", proto)), proto=proto),
        "dtype-type": pid(storage=Raw(pglobal("torch", "float32", proto)), proto=proto),
        "handler-type": pid(storage=Raw(pglobal("builtins", "set", proto)), proto=proto),
        "nested": pid(storage=Raw(storage(proto=proto)), proto=proto),
        "empty": val((), proto),
    }
    for name, pid_body in shapes.items():
        body = tensor(pid_body + op("BINPERSID"), proto=proto)
        cases.append(Case(f"pid/shape={name}/p{proto}", in_zip(body, proto), "refuse"))
    body = tensor(pid(proto=proto, extra=(None,)) + op("BINPERSID"), proto=proto)
    cases.append(Case(f"pid/6-tuple/p{proto}", in_zip(body, proto), "any"))
    cases.append(Case(f"pid/PERSID-text/p{proto}", in_zip(op("PERSID", "0"), proto), "refuse"))
    return cases


def _alias_cases() -> list[Case]:
    """One storage record under two names, two dtypes or two sizes."""
    def two(first: bytes, second: bytes) -> bytes:
        return in_zip(op("MARK") + tensor(first) + tensor(second, size=(1,)) + op("TUPLE"))

    float4 = storage()
    return [
        Case("alias/float-int", two(float4, storage(storage="IntStorage")), "refuse"),
        Case("alias/float4-float2", two(float4, storage(numel=2)), "refuse"),
        Case("alias/float-byte16", two(float4, storage(storage="ByteStorage", numel=16)),
             "refuse"),
        Case("alias/float-double2", two(float4, storage(storage="DoubleStorage", numel=2)),
             "refuse"),
        Case("alias/same-twice", two(float4, float4), "value"),
        Case("alias/two-locations", two(float4, storage(location="cuda:1")), "value"),
        Case("alias/untyped-v3-views", in_zip(
            op("MARK")
            + tensor(storage(storage="UntypedStorage", numel=16), fn="_rebuild_tensor_v3",
                     extra_args=(Raw(pglobal("torch", "float32")),))
            + tensor(storage(storage="UntypedStorage", numel=16), fn="_rebuild_tensor_v3",
                     size=(2,), stride=(1,), extra_args=(Raw(pglobal("torch", "int64")),))
            + op("TUPLE")), "value"),
        Case("alias/untyped-v3-too-wide", in_zip(
            tensor(storage(storage="UntypedStorage", numel=16), fn="_rebuild_tensor_v3",
                   size=(3,), stride=(1,), extra_args=(Raw(pglobal("torch", "int64")),))),
             "refuse"),
        Case("alias/v3-typed-storage", in_zip(
            tensor(storage(), fn="_rebuild_tensor_v3",
                   extra_args=(Raw(pglobal("torch", "float32")),))), "refuse"),
        Case("alias/record-is-byteorder", in_zip(tensor(storage(key="byteorder"))), "refuse"),
        Case("alias/record-is-data.pkl", in_zip(tensor(storage(key="data.pkl"))), "refuse"),
        Case("alias/record-is-version", in_zip(tensor(storage(key="version"))), "refuse"),
        Case("alias/unaligned-v3", torch_zip(framed(
            tensor(storage(storage="UntypedStorage", numel=17), fn="_rebuild_tensor_v3",
                   size=(2,), stride=(1,),
                   extra_args=(Raw(pglobal("torch", "float64")),)), 2),
            {"0": bytes(range(17))}), "value"),
    ]


def _call(module: str, name: str, args) -> bytes:
    return pglobal(module, name) + (args if isinstance(args, bytes) else val(args)) + \
        op("REDUCE")


def _handler_cases() -> list[Case]:
    calls = {
        # (module, name, args, expect)
        "Size/neg": ("torch", "Size", ((-1,),), "refuse"),
        "Size/str": ("torch", "Size", (("a",),), "refuse"),
        "Size/huge": ("torch", "Size", ((2**64,),), "refuse"),
        "Size/65": ("torch", "Size", ((1,) * 65,), "refuse"),
        "Size/ok": ("torch", "Size", ((1, 2),), "value"),
        "Size/two-args": ("torch", "Size", ((1,), (2,)), "refuse"),
        "device/ok": ("torch", "device", ("cuda:1",), "value"),
        "device/index": ("torch", "device", ("cuda", 1), "value"),
        "device/neg": ("torch", "device", ("cuda", -1), "refuse"),
        "device/path": ("torch", "device", ("../x",), "refuse"),
        "device/newline": ("torch", "device", ("cpu\n",), "refuse"),
        "device/int": ("torch", "device", (1,), "refuse"),
        "device/huge-str": ("torch", "device", ("c" * 100_000,), "refuse"),
        "encode/rot13": ("_codecs", "encode", ("x", "rot13"), "refuse"),
        "encode/zlib": ("_codecs", "encode", ("x", "zlib"), "refuse"),
        "encode/base64": ("_codecs", "encode", ("x", "base64"), "refuse"),
        "encode/hex": ("_codecs", "encode", ("x", "hex"), "refuse"),
        "encode/utf-16": ("_codecs", "encode", ("x", "utf-16"), "refuse"),
        "encode/idna": ("_codecs", "encode", ("x", "idna"), "refuse"),
        "encode/punycode": ("_codecs", "encode", ("x", "punycode"), "refuse"),
        "encode/unicode_escape": ("_codecs", "encode", ("x", "unicode_escape"), "refuse"),
        "encode/bytes-input": ("_codecs", "encode", (b"x", "latin1"), "refuse"),
        "encode/latin1": ("_codecs", "encode", ("x\xff", "latin1"), "value"),
        "encode/ascii-fail": ("_codecs", "encode", ("\xff", "ascii"), "refuse"),
        "bytearray/size": ("builtins", "bytearray", (10**12,), "refuse"),
        "bytearray/2**63": ("builtins", "bytearray", (2**63,), "refuse"),
        "bytearray/utf-16": ("builtins", "bytearray", ("x", "utf-16"), "refuse"),
        "bytearray/zlib": ("builtins", "bytearray", ("x", "zlib_codec"), "refuse"),
        "bytearray/list": ("builtins", "bytearray", ([1, 2],), "refuse"),
        "bytes/size": ("builtins", "bytes", (10**12,), "refuse"),
        "bytes/str": ("builtins", "bytes", ("x", "utf-8"), "refuse"),
        "complex/str": ("builtins", "complex", ("1+2j",), "refuse"),
        "complex/huge": ("builtins", "complex", (2**10000, 1), "refuse"),
        "complex/three": ("builtins", "complex", (1, 2, 3), "refuse"),
        "slice/float": ("builtins", "slice", (1.5,), "refuse"),
        "slice/zero": ("builtins", "slice", (), "refuse"),
        "set/int": ("builtins", "set", (5,), "refuse"),
        "set/str": ("builtins", "set", ("abc",), "refuse"),
        "set/unhashable": ("builtins", "set", ([[1]],), "refuse"),
        "set/dict": ("builtins", "set", ({1: 2},), "refuse"),
        "frozenset/unhashable": ("builtins", "frozenset", ([{}],), "refuse"),
        "OrderedDict/flat": ("collections", "OrderedDict", ([1, 2],), "refuse"),
        "OrderedDict/dict": ("collections", "OrderedDict", ({1: 2},), "refuse"),
        "OrderedDict/triples": ("collections", "OrderedDict", ([(1, 2, 3)],), "refuse"),
        "OrderedDict/unhashable": ("collections", "OrderedDict", ([([1], 2)],), "refuse"),
        "OrderedDict/two": ("collections", "OrderedDict", ([], []), "refuse"),
        "Counter/list": ("collections", "Counter", ([1, 2],), "refuse"),
        "Counter/str": ("collections", "Counter", ("abc",), "refuse"),
        "Counter/ok": ("collections", "Counter", ({1: 2},), "value"),
        "Parameter/int": ("torch._utils", "_rebuild_parameter", (1, False, {}), "refuse"),
        "Parameter/list": ("torch._utils", "_rebuild_parameter", ([1], False, {}), "refuse"),
        "Parameter/state": ("torch._utils", "_rebuild_parameter_with_state",
                            (1, False, {}, {"x": 1}), "refuse"),
        "from_type/set": ("torch._tensor", "_rebuild_from_type_v2",
                          (Raw(pglobal("builtins", "set")), Raw(pglobal("torch", "Tensor")),
                           (), None), "refuse"),
        "from_type/parameter": ("torch._tensor", "_rebuild_from_type_v2",
                                (Raw(pglobal("torch._utils", "_rebuild_tensor_v2")),
                                 Raw(pglobal("torch.nn.parameter", "Parameter")), (), None),
                                "refuse"),
        "from_type/state": ("torch._tensor", "_rebuild_from_type_v2",
                            (Raw(pglobal("torch._utils", "_rebuild_tensor_v2")),
                             Raw(pglobal("torch", "Tensor")), (), {"a": 1}), "refuse"),
        "from_type/args-list": ("torch._tensor", "_rebuild_from_type_v2",
                                (Raw(pglobal("torch._utils", "_rebuild_tensor_v2")),
                                 Raw(pglobal("torch", "Tensor")), [], None), "refuse"),
        "storage-type/call": ("torch", "FloatStorage", (4,), "refuse"),
        "dtype/call": ("torch", "float32", (), "refuse"),
        "Tensor/call": ("torch", "Tensor", ([1.0],), "refuse"),
    }
    cases = []
    for label, (module, name, args, expect) in calls.items():
        body = pglobal(module, name) + ptuple([val(a) for a in args]) + op("REDUCE")
        cases.append(Case(f"handler/{label}", in_zip(body), expect))
        if module in ("builtins", "collections"):
            newobj = pglobal(module, name) + ptuple([val(a) for a in args]) + op("NEWOBJ")
            cases.append(Case(f"handler/{label}/NEWOBJ", in_zip(newobj), "any"))
    return cases


def _numpy_cases() -> list[Case]:
    def dtype(code, *flags) -> bytes:
        return pglobal("numpy", "dtype") + val((code, *flags)) + op("REDUCE")

    reconstruct = pglobal("numpy.core.multiarray", "_reconstruct") + ptuple([
        pglobal("numpy", "ndarray"), val((0,)), val(b"b", 3)]) + op("REDUCE")

    def array(state_parts: list[bytes]) -> bytes:
        return reconstruct + ptuple(state_parts) + op("BUILD")

    f4 = dtype("f4", False, True)
    cases = []
    for code in ("O", "<U4", "S3", "V8", "M8", "m8", "f4,f4", "(2)f4", "O8", "object",
                 "float32", "|O", "<f4 ", "g", "e", "f16"):
        cases.append(Case(f"numpy/dtype={code!r}", framed(dtype(code, False, True), 3),
                          "refuse"))
    cases.append(Case("numpy/dtype-flags", framed(dtype("f4", 1, 1), 3), "any"))
    cases.append(Case("numpy/dtype-flags-str", framed(dtype("f4", "x", "y"), 3), "refuse"))
    cases.append(Case("numpy/dtype-ok", framed(dtype("<f4", False, True), 3), "value"))
    states = {
        "ok": ([val(1), val((2,)), f4, op("NEWFALSE"), val(b"\0" * 8, 3)], "value"),
        "short": ([val(1), val((2,)), f4, op("NEWFALSE"), val(b"\0" * 7, 3)], "refuse"),
        "long": ([val(1), val((2,)), f4, op("NEWFALSE"), val(b"\0" * 9, 3)], "refuse"),
        "huge-shape": ([val(1), val((2**40,)), f4, op("NEWFALSE"), val(b"\0" * 4, 3)],
                       "refuse"),
        "neg-shape": ([val(1), val((-2,)), f4, op("NEWFALSE"), val(b"\0" * 8, 3)], "refuse"),
        "fortran-int": ([val(1), val((2,)), f4, val(0), val(b"\0" * 8, 3)], "refuse"),
        "version-str": ([val("1"), val((2,)), f4, op("NEWFALSE"), val(b"\0" * 8, 3)],
                        "refuse"),
        "raw-list": ([val(1), val((2,)), f4, op("NEWFALSE"), val([0] * 8)], "refuse"),
        "raw-str": ([val(1), val((2,)), f4, op("NEWFALSE"), val("\0" * 8)], "value"),
        "object-dtype": ([val(1), val((2,)), dtype("O", False, True), op("NEWFALSE"),
                          val([1, 2])], "refuse"),
        "six": ([val(1), val((2,)), f4, op("NEWFALSE"), val(b"\0" * 8, 3), val(1)], "refuse"),
        "dtype-not-dtype": ([val(1), val((2,)), val("f4"), op("NEWFALSE"), val(b"\0" * 8, 3)],
                            "refuse"),
    }
    for label, (parts, expect) in states.items():
        cases.append(Case(f"numpy/ndarray-state={label}", framed(array(parts), 3), expect))
    subclass = pglobal("numpy.core.multiarray", "_reconstruct") + ptuple([
        pglobal("numpy", "matrix"), val((0,)), val(b"b", 3)]) + op("REDUCE")
    cases.append(Case("numpy/reconstruct-subclass", framed(subclass, 3), "refuse"))
    wrong = pglobal("numpy.core.multiarray", "_reconstruct") + ptuple([
        pglobal("numpy", "ndarray"), val((10**9,)), val(b"b", 3)]) + op("REDUCE")
    cases.append(Case("numpy/reconstruct-shape", framed(wrong, 3), "refuse"))
    dstates = {
        "fields": (val(3), val("|"), op("NONE"), val(("a",)), val({"a": 1}), val(-1),
                   val(-1), val(0)),
        "subarray": (val(3), val("<"), val(("f4", (2,))), op("NONE"), op("NONE"), val(-1),
                     val(-1), val(0)),
        "order-x": (val(3), val("x"), op("NONE"), op("NONE"), op("NONE"), val(-1), val(-1),
                    val(0)),
        "flags": (val(3), val("<"), op("NONE"), op("NONE"), op("NONE"), val(-1), val(-1),
                  val(63)),
        "metadata": (val(4), val("<"), op("NONE"), op("NONE"), op("NONE"), val(-1), val(-1),
                     val(0), val({"x": 1})),
        "itemsize": (val(3), val("<"), op("NONE"), op("NONE"), op("NONE"), val(1000),
                     val(-1), val(0)),
    }
    for label, parts in dstates.items():
        body = f4 + ptuple(list(parts)) + op("BUILD")
        cases.append(Case(f"numpy/dtype-state={label}", framed(body, 3), "refuse"))
    scalar = [("numpy/scalar-short", ptuple([f4, val(b"\0\0\0", 3)]), "refuse"),
              ("numpy/scalar-long", ptuple([f4, val(b"\0" * 5, 3)]), "refuse"),
              ("numpy/scalar-object", ptuple([dtype("O", False, True), val(b"", 3)]), "refuse"),
              ("numpy/scalar-str", ptuple([f4, val("\0\0\0\0")]), "value"),
              ("numpy/scalar-huge-str", ptuple([f4, val("\0" * 100_000)]), "refuse"),
              ("numpy/scalar-ok", ptuple([f4, val(b"\0\0\x80?", 3)]), "value")]
    for label, args, expect in scalar:
        body = pglobal("numpy.core.multiarray", "scalar") + args + op("REDUCE")
        cases.append(Case(label, framed(body, 3), expect))
    frombuffer = [("ok", [val(b"\0" * 8, 3), f4, val((2,)), val("C")], "value"),
                  ("count", [val(b"\0" * 4, 3), f4, val((2,)), val("C")], "refuse"),
                  ("order", [val(b"\0" * 8, 3), f4, val((2,)), val("K")], "refuse"),
                  ("str-buffer", [val("\0" * 8), f4, val((2,)), val("C")], "refuse"),
                  ("object", [val(b"\0" * 8, 3), dtype("O", False, True), val((1,)),
                              val("C")], "refuse"),
                  ("huge", [val(b"\0" * 8, 3), f4, val((2**62, 4)), val("C")], "refuse")]
    for label, args, expect in frombuffer:
        body = pglobal("numpy._core.numeric", "_frombuffer") + ptuple(args) + op("REDUCE")
        cases.append(Case(f"numpy/frombuffer-{label}", framed(body, 5), expect))
    return cases


def _quantized_cases() -> list[Case]:
    def qtensor(qparams: bytes, storage_type: str = "QInt8Storage", size=(4,), stride=(1,),
                numel: int = 16) -> bytes:
        args = [storage(storage=storage_type, numel=numel), val(0), val(size), val(stride),
                qparams, op("NEWFALSE"), op("EMPTY_DICT")]
        return pglobal("torch._utils", "_rebuild_qtensor") + op("MARK") + b"".join(args) + \
            op("TUPLE") + op("REDUCE")

    def scheme(name: str) -> bytes:
        return pglobal("torch", name)

    storages = {"0": bytes(16), "1": bytes(64)}
    variants = {
        "ok": (ptuple([scheme("per_tensor_affine"), val(0.5), val(0)]), "value"),
        "nan-scale": (ptuple([scheme("per_tensor_affine"), val(float("nan")), val(0)]),
                      "refuse"),
        "inf-scale": (ptuple([scheme("per_tensor_affine"), val(float("inf")), val(0)]),
                      "refuse"),
        "float-zero-point": (ptuple([scheme("per_tensor_affine"), val(0.5), val(0.5)]),
                             "refuse"),
        "symmetric": (ptuple([scheme("per_tensor_symmetric"), val(0.5), val(0)]), "refuse"),
        "axis-out": (op("MARK") + scheme("per_channel_affine") + val([1.0] * 4)
                     + val([0] * 4) + val(5) + op("TUPLE"), "refuse"),
        "axis-str": (op("MARK") + scheme("per_channel_affine") + val([1.0] * 4)
                     + val([0] * 4) + val("0") + op("TUPLE"), "refuse"),
        "scales-short": (op("MARK") + scheme("per_channel_affine") + val([1.0] * 3)
                         + val([0] * 4) + val(0) + op("TUPLE"), "refuse"),
        "per-channel-ok": (op("MARK") + scheme("per_channel_affine") + val([1.0] * 4)
                           + val([0] * 4) + val(0) + op("TUPLE"), "value"),
        "not-a-scheme": (ptuple([val("per_tensor_affine"), val(0.5), val(0)]), "refuse"),
        "empty": (op("EMPTY_TUPLE"), "refuse"),
        "huge-axis": (op("MARK") + scheme("per_channel_affine") + val([1.0] * 4)
                      + val([0] * 4) + val(2**80) + op("TUPLE"), "refuse"),
    }
    cases = []
    for label, (qparams, expect) in variants.items():
        data = torch_zip(framed(qtensor(qparams), 2), storages)
        cases.append(Case(f"qtensor/{label}", data, expect))
    data = torch_zip(framed(qtensor(ptuple([scheme("per_tensor_affine"), val(0.5), val(0)]),
                                    storage_type="FloatStorage", numel=4), 2), storages)
    cases.append(Case("qtensor/float-storage", data, "refuse"))
    data = torch_zip(framed(qtensor(ptuple([scheme("per_tensor_affine"), val(0.5), val(0)]),
                                    storage_type="QUInt4x2Storage", size=(8,), stride=(2,)),
                            2), storages)
    cases.append(Case("qtensor/packed-strided", data, "refuse"))
    _ = struct, STORAGES
    return cases
