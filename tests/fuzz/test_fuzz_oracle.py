"""CPython's own unpickler as the oracle for safeload's VM.

Strategy: hypothesis draws a Python value from the safe part of the language
(None, bools, ints, floats, str, bytes, bytearray, complex, slices, lists,
tuples, dicts, sets, frozensets, OrderedDict with ``_metadata``, Counter, with
shared references), then an encoder written here turns it into a *valid*
pickle choosing, at every step, among the equivalent opcodes the protocol
allows: every int, string, bytes and container opcode, memo PUT / BINPUT /
LONG_BINPUT / MEMOIZE with GET / BINGET / LONG_BINGET for shared objects,
FRAMEs, GLOBAL / STACK_GLOBAL, Python 2 names under protocols 0-2, and the
allowlisted constructors (builtins.set / frozenset / bytearray / bytes /
complex / slice, _codecs.encode, collections.OrderedDict / Counter).

``pickle.loads`` must accept it, and ``safeload.load`` must return the same
value (exact types, float bits, same sharing), or raise a SafeloadError only
where safeload says so: ``UnsafeGlobalError`` naming the first global outside
the allowlist (safe stdlib classes the encoder mixes in on purpose), or
``LimitError`` under tightened ``Limits``.
"""

from __future__ import annotations

import pickle
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from fuzzkit import examples, op, outcome, same_value, torch_zip
from hypothesis import find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

import safeload

# --- values -------------------------------------------------------------------------

_FLOATS = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, float("inf"), float("-inf"),
                                                 float("nan"), 1e308, 5e-324]))
_INTS = st.one_of(
    st.integers(-3, 300),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**70), 2**70),
    st.sampled_from([255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**31, 2**63, -(2**63),
                     2**2000 + 1]),
)
_TEXT = st.text(max_size=20) | st.text(st.characters(max_codepoint=255), max_size=300)
_BYTES = st.binary(max_size=20) | st.binary(min_size=250, max_size=300)


class Foreign:
    """A safe stdlib value that is *not* in safeload's allowlist."""

    def __init__(self, module: str, name: str, args: tuple) -> None:
        self.module, self.name, self.args = module, name, args


_FOREIGN = st.one_of(
    st.tuples(st.integers(-5, 5), st.integers(0, 100)).map(
        lambda a: Foreign("datetime", "timedelta", a)),
    st.tuples(st.integers(0, 9), st.integers(10, 20)).map(
        lambda a: Foreign("builtins", "range", a)),
    st.sampled_from(["1.5", "-0", "NaN"]).map(lambda s: Foreign("decimal", "Decimal", (s,))),
    st.tuples(st.integers(1, 9), st.integers(1, 9)).map(
        lambda a: Foreign("fractions", "Fraction", a)),
)

_KEYS = st.recursive(
    st.one_of(st.none(), st.booleans(), _INTS, _TEXT, _BYTES, _FLOATS.filter(lambda f: f == f)),
    lambda inner: st.one_of(st.tuples(inner, inner), st.lists(inner, max_size=3).map(tuple),
                            st.frozensets(inner, max_size=3)),
    max_leaves=4,
)


def _ordered(pairs, metadata):
    value = OrderedDict(pairs)
    if metadata is not None:
        value._metadata = metadata
    return value


def _values(foreign: bool):
    leaves = st.one_of(
        st.none(), st.booleans(), _INTS, _FLOATS, _TEXT, _BYTES,
        _BYTES.map(bytearray),
        st.builds(complex, _FLOATS, _FLOATS),
        st.builds(slice, st.integers(-3, 3) | st.none(), st.integers(-3, 3) | st.none(),
                  st.integers(1, 3) | st.none()),
        *([_FOREIGN] if foreign else []),
    )

    def extend(inner):
        return st.one_of(
            st.lists(inner, max_size=6),
            st.lists(inner, max_size=4).map(tuple),
            st.dictionaries(_KEYS, inner, max_size=5),
            st.sets(_KEYS, max_size=5),
            st.frozensets(_KEYS, max_size=5),
            st.builds(_ordered, st.dictionaries(_TEXT, inner, max_size=4).map(
                lambda d: list(d.items())), st.none() | st.dictionaries(_TEXT, inner,
                                                                        max_size=2)),
            st.dictionaries(_KEYS, st.integers(-5, 5), max_size=4).map(Counter),
            # shared references: one object several times
            st.tuples(inner, st.integers(2, 3)).map(lambda p: [p[0]] * p[1]),
            st.tuples(st.lists(inner, max_size=3), st.integers(2, 3)).map(
                lambda p: (p[0],) * p[1]),
        )

    return st.recursive(leaves, extend, max_leaves=25)


# --- the encoder --------------------------------------------------------------------


@dataclass
class Encoder:
    """Writes one value as a pickle, drawing every opcode choice."""

    draw: object
    proto: int
    encoding: str
    memo: dict[int, int] = field(default_factory=dict)
    keep: list = field(default_factory=list)  # keeps memoized ids alive
    chunks: list[bytes] = field(default_factory=list)
    globals_seen: dict[tuple[str, str], int] = field(default_factory=dict)
    foreign: list[str] = field(default_factory=list)
    puts: int = 0

    def choose(self, options: list):
        return self.draw(st.sampled_from(options))

    def emit(self, data: bytes) -> None:
        self.chunks.append(data)

    # memo -------------------------------------------------------------------------
    def put(self, obj) -> None:
        # the pickle's memo grows by one per PUT, even when one object (an
        # interned str) is put twice: count PUTs, not objects
        index = self.puts
        self.puts += 1
        self.memo[id(obj)] = index
        self.keep.append(obj)
        forms = ["PUT"] if self.proto == 0 else ["LONG_BINPUT"] + (
            ["BINPUT"] if index < 256 else [])
        if self.proto >= 4:
            forms.append("MEMOIZE")
        form = self.choose(forms)
        self.emit(op(form) if form == "MEMOIZE" else op(form, index))

    def maybe_put(self, obj) -> None:
        if self.draw(st.booleans()):
            self.put(obj)

    def get(self, index: int) -> None:
        forms = ["GET"] if self.proto == 0 else ["LONG_BINGET"] + (
            ["BINGET"] if index < 256 else [])
        form = self.choose(forms)
        self.emit(op(form, index))

    # globals ------------------------------------------------------------------------
    def global_(self, module: str, name: str) -> None:
        if self.proto < 3 and module == "builtins" and self.draw(st.booleans()):
            module = "__builtin__"  # what Python 2 wrote; fix_imports maps it back
        seen = self.globals_seen.get((module, name))
        if seen is not None and self.draw(st.booleans()):
            self.get(seen)
            return
        if self.proto >= 4 and self.draw(st.booleans()):
            self.str_(module, memo=False)
            self.str_(name, memo=False)
            self.emit(op("STACK_GLOBAL"))
        else:
            self.emit(op("GLOBAL", (module, name)))
        if self.draw(st.booleans()):
            self.globals_seen[(module, name)] = self.puts
            self.put(object())  # the index stands for the global

    def call(self, module: str, name: str, args: list, newobj: bool = False) -> None:
        """module.name(*args): REDUCE, or INST / OBJ (which call the class the
        same way); ``newobj`` when ``cls.__new__(cls, *args)`` is the same value
        (complex, frozenset, bytes), also NEWOBJ / NEWOBJ_EX."""
        forms = ["REDUCE", "INST"] + (["OBJ"] if self.proto >= 1 else [])
        if newobj:
            forms += (["NEWOBJ"] if self.proto >= 2 else []) + (
                ["NEWOBJ_EX"] if self.proto >= 4 else [])
        form = self.choose(forms)
        if form == "INST":
            if self.proto < 3 and module == "builtins" and self.draw(st.booleans()):
                module = "__builtin__"
            self.emit(op("MARK"))
            for arg in args:
                self.value(arg)
            self.emit(op("INST", (module, name)))
        elif form == "OBJ":
            self.emit(op("MARK"))
            self.global_(module, name)
            for arg in args:
                self.value(arg)
            self.emit(op("OBJ"))
        else:
            self.global_(module, name)
            self.tuple_(tuple(args), memo=False)
            if form == "NEWOBJ_EX":
                self.emit(op("EMPTY_DICT"))
            self.emit(op(form))

    def noise(self) -> None:
        """Stack traffic that leaves the stack as it was: POP, POP_MARK, DUP."""
        form = self.choose(["none", "pop", "pop_mark", "dup"])
        if form == "pop":
            self.emit(op("NONE") + op("POP"))
        elif form == "pop_mark":
            self.emit(op("MARK") + op("NONE") + op("NEWTRUE" if self.proto >= 2 else "NONE")
                      + op("POP_MARK" if self.proto >= 1 else "POP") + (
                          b"" if self.proto >= 1 else op("POP") + op("POP")))
        elif form == "dup":
            self.emit(op("NONE") + op("DUP") + op("POP") + op("POP"))

    # values ------------------------------------------------------------------------
    def value(self, v) -> None:
        if self.draw(st.integers(0, 7)) == 0:
            self.noise()
        if id(v) in self.memo and type(v) in (list, dict, set, bytearray, tuple, OrderedDict,
                                              Counter, frozenset):
            self.get(self.memo[id(v)])
            return
        t = type(v)
        if v is None:
            self.emit(op("NONE"))
        elif t is bool:
            forms = ["INT"] + (["NEW"] if self.proto >= 2 else [])
            if self.choose(forms) == "INT":
                self.emit(op("INT", v))
            else:
                self.emit(op("NEWTRUE" if v else "NEWFALSE"))
        elif t is int:
            self.int_(v)
        elif t is float:
            forms = ["FLOAT"] + (["BINFLOAT"] if self.proto >= 1 else [])
            form = self.choose(forms)
            self.emit(op("BINFLOAT", v) if form == "BINFLOAT" else
                      b"F" + repr(v).encode() + b"\n")
        elif t is str:
            self.str_(v)
        elif t is bytes:
            self.bytes_(v)
        elif t is bytearray:
            self.bytearray_(v)
        elif t is complex:
            self.call("builtins", "complex", [v.real, v.imag], newobj=True)
            self.maybe_put(v)
        elif t is slice:
            self.call("builtins", "slice", [v.start, v.stop, v.step])
        elif t is list:
            self.list_(v)
        elif t is tuple:
            self.tuple_(v)
        elif t is dict:
            self.dict_(v)
        elif t is set:
            self.set_(v)
        elif t is frozenset:
            self.frozenset_(v)
        elif t is OrderedDict:
            self.ordered_(v)
        elif t is Counter:
            self.call("collections", "Counter", [dict(v)])
            self.maybe_put(v)
        elif t is Foreign:
            self.foreign.append(f"{v.module}.{v.name}")
            self.call(v.module, v.name, list(v.args))
        else:  # pragma: no cover - the strategies make nothing else
            raise AssertionError(t)

    def int_(self, v: int) -> None:
        forms = ["INT", "LONG"]
        if self.proto >= 1:
            if 0 <= v < 256:
                forms.append("BININT1")
            if 0 <= v < 65536:
                forms.append("BININT2")
            if -(2**31) <= v < 2**31:
                forms.append("BININT")
        if self.proto >= 2:
            forms += ["LONG1", "LONG4"] if (v.bit_length() + 8) // 8 < 256 else ["LONG4"]
        form = self.choose(forms)
        if form in ("INT", "LONG") and abs(v) >= 10**4000:
            form = "LONG4" if self.proto >= 2 else form  # past int's str-digit limit
        if form == "INT" and v in (0, 1):
            self.emit(b"I" + str(v).encode() + b"\n")  # "00"/"01" would be bools
        elif form == "INT":
            self.emit(b"I" + (hex(v) if self.draw(st.booleans()) else str(v)).encode() + b"\n")
        else:
            self.emit(op(form, v))

    def str_(self, v: str, memo: bool = True) -> None:
        raw = v.encode("utf-8", "surrogatepass")
        forms = ["UNICODE"]
        if self.proto >= 1:
            forms.append("BINUNICODE")
        if self.proto >= 4:
            forms.append("BINUNICODE8")
            if len(raw) < 256:
                forms.append("SHORT_BINUNICODE")
        if self.encoding == "latin1" and all(ord(c) < 256 for c in v):
            forms += ["STRING"] + (["BINSTRING", "SHORT_BINSTRING"] if self.proto >= 1 else [])
        form = self.choose(forms)
        if form == "UNICODE":
            text = (v.replace("\\", "\\u005c").replace("\0", "\\u0000")
                    .replace("\n", "\\u000a").replace("\r", "\\u000d")
                    .replace("\x1a", "\\u001a"))
            self.emit(b"V" + text.encode("raw-unicode-escape") + b"\n")
        elif form in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            self.py2_string(form, v.encode("latin-1"))
        elif form == "SHORT_BINSTRING" and len(raw) >= 256:
            self.emit(op("BINUNICODE", v))
        else:
            self.emit(op(form, v))
        if memo:
            self.maybe_put(v)

    def py2_string(self, form: str, raw: bytes) -> None:
        if form == "SHORT_BINSTRING" and len(raw) >= 256:
            form = "BINSTRING"
        self.emit(op(form, raw))

    def bytes_(self, v: bytes) -> None:
        forms = ["codecs"]
        if self.proto >= 3:
            forms += ["BINBYTES", "builtins.bytes"] + (["SHORT_BINBYTES"] if len(v) < 256 else [])
        if self.proto >= 4:
            forms.append("BINBYTES8")
        if self.encoding == "bytes":
            forms += ["STRING"] + (["BINSTRING", "SHORT_BINSTRING"] if self.proto >= 1 else [])
        form = self.choose(forms)
        if form == "codecs":  # how protocols 0-2 pickle bytes
            self.call("_codecs", "encode", [v.decode("latin-1"), "latin1"])
        elif form == "builtins.bytes":
            self.call("builtins", "bytes", [v], newobj=True)
        elif form in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            self.py2_string(form, v)
        else:
            self.emit(op(form, v))
        self.maybe_put(v)

    def bytearray_(self, v: bytearray) -> None:
        forms = ["bytes", "latin"] + (["BYTEARRAY8"] if self.proto >= 5 else [])
        form = self.choose(forms)
        if form == "BYTEARRAY8":
            self.emit(op("BYTEARRAY8", bytes(v)))
        elif form == "bytes":
            self.call("builtins", "bytearray", [bytes(v)])
        else:
            self.call("builtins", "bytearray", [v.decode("latin-1"), "latin-1"])
        self.maybe_put(v)

    def items(self, values, single: str | None, batch: str, pairs: bool = False) -> None:
        """Items in batches: ``single`` after each item, or MARK items ``batch``
        (always for sets: ADDITEMS has no single form)."""
        values = list(values)
        while values:
            n = self.draw(st.integers(1, max(1, len(values))))
            part, values = values[:n], values[n:]
            if single is None or self.proto >= 1 and (len(part) > 1 or self.draw(st.booleans())):
                self.emit(op("MARK"))
                for item in part:
                    self.pair(item) if pairs else self.value(item)
                self.emit(op(batch))
            else:
                for item in part:
                    self.pair(item) if pairs else self.value(item)
                    self.emit(op(single))

    def pair(self, kv) -> None:
        self.value(kv[0])
        self.value(kv[1])

    def list_(self, v: list) -> None:
        if self.proto >= 1 and self.draw(st.booleans()):
            self.emit(op("EMPTY_LIST"))
        else:
            self.emit(op("MARK") + op("LIST"))
        self.put(v)
        self.items(v, "APPEND", "APPENDS")

    def tuple_(self, v: tuple, memo: bool = True) -> None:
        if self.proto >= 2 and 1 <= len(v) <= 3 and self.draw(st.booleans()):
            for item in v:
                self.value(item)
            self.emit(op(("TUPLE1", "TUPLE2", "TUPLE3")[len(v) - 1]))
        elif self.proto >= 1 and not v and self.draw(st.booleans()):
            self.emit(op("EMPTY_TUPLE"))
        else:
            self.emit(op("MARK"))
            for item in v:
                self.value(item)
            self.emit(op("TUPLE"))
        if memo and id(v) not in self.memo:
            self.maybe_put(v)

    def dict_(self, v: dict) -> None:
        if self.proto >= 1 and self.draw(st.booleans()):
            self.emit(op("EMPTY_DICT"))
            self.put(v)
            self.items(v.items(), "SETITEM", "SETITEMS", pairs=True)
        elif self.draw(st.booleans()):
            self.emit(op("MARK"))
            for kv in v.items():
                self.pair(kv)
            self.emit(op("DICT"))
            self.put(v)
        else:
            self.emit(op("MARK") + op("DICT"))
            self.put(v)
            self.items(v.items(), "SETITEM", "SETITEMS", pairs=True)

    def set_(self, v: set) -> None:
        form = self.choose(["reduce"] + (["EMPTY_SET"] if self.proto >= 4 else []))
        if form == "EMPTY_SET":
            self.emit(op("EMPTY_SET"))
            self.put(v)
            self.items(v, None, "ADDITEMS")
        else:
            self.call("builtins", "set", [list(v)])
            self.put(v)

    def frozenset_(self, v: frozenset) -> None:
        form = self.choose(["reduce"] + (["FROZENSET"] if self.proto >= 4 else []))
        if form == "FROZENSET":
            self.emit(op("MARK"))
            for item in v:
                self.value(item)
            self.emit(op("FROZENSET"))
        else:
            self.call("builtins", "frozenset", [list(v) if self.draw(st.booleans())
                                                else tuple(v)], newobj=True)
        self.maybe_put(v)

    def ordered_(self, v: OrderedDict) -> None:
        metadata = getattr(v, "_metadata", None)
        if self.draw(st.booleans()):
            self.call("collections", "OrderedDict", [])
            self.put(v)
            self.items(v.items(), "SETITEM", "SETITEMS", pairs=True)
        else:
            self.call("collections", "OrderedDict", [[list(kv) if self.draw(st.booleans())
                                                      else kv for kv in v.items()]])
            self.put(v)
        if metadata is not None:
            self.dict_({"_metadata": metadata})
            self.emit(op("BUILD"))

    # framing ----------------------------------------------------------------------
    def finish(self) -> bytes:
        head = op("PROTO", self.proto) if self.proto >= 2 else b""
        chunks = self.chunks + [op("STOP")]
        if self.proto < 4 or not self.draw(st.booleans()):
            return head + b"".join(chunks)
        out = [head]
        while chunks:
            n = self.draw(st.integers(1, len(chunks)))
            body = b"".join(chunks[:n])
            chunks = chunks[n:]
            out.append(op("FRAME", len(body)) + body)
        return b"".join(out)


@st.composite
def pickles(draw, foreign: bool = False):
    value = draw(_values(foreign))
    proto = draw(st.integers(0, 5))
    encoding = draw(st.sampled_from(["ASCII", "latin1", "bytes"]))
    encoder = Encoder(draw, proto, encoding)
    encoder.value(value)
    return encoder.finish(), encoding, encoder.foreign


def _oracle(data: bytes, encoding: str):
    return pickle.loads(data, encoding=encoding)


@settings(max_examples=examples(250))
@given(pickles())
def test_safe_pickles_load_exactly_as_cpython_loads_them(case):
    data, encoding, _ = case
    expected = _oracle(data, encoding)
    kind, got = outcome(data, encoding=encoding)
    assert kind == "value", f"safeload refused a safe pickle: {got}"
    assert same_value(expected, got), f"{expected!r:.300} != {got!r:.300}"


@settings(max_examples=examples(80))
@given(pickles())
def test_safe_pickles_load_the_same_from_a_torch_zip(case):
    data, encoding, _ = case
    expected = _oracle(data, encoding)
    kind, got = outcome(torch_zip(data), encoding=encoding)
    assert kind == "value", f"safeload refused a safe pickle in a zip: {got}"
    assert same_value(expected, got)


@settings(max_examples=examples(150))
@given(pickles(foreign=True))
def test_globals_outside_the_allowlist_are_refused_by_name(case):
    data, encoding, foreign = case
    expected = _oracle(data, encoding)  # CPython loads it: the globals are harmless
    kind, got = outcome(data, encoding=encoding)
    if not foreign:
        assert kind == "value" and same_value(expected, got)
        return
    assert kind == "refused" and isinstance(got, safeload.UnsafeGlobalError), got
    assert got.global_name == foreign[0]


_TIGHT = st.builds(
    safeload.Limits,
    max_ops=st.integers(1, 400),
    max_memo=st.integers(0, 20),
    max_nesting=st.integers(1, 6),
    max_bytes=st.integers(0, 64),
    max_int_bytes=st.integers(1, 16),
    max_stack=st.integers(0, 40),
    max_container_items=st.integers(0, 12),
)


@settings(max_examples=examples(150))
@given(pickles(), _TIGHT)
def test_under_tight_limits_the_value_is_the_same_or_a_limit_error(case, limits):
    data, encoding, _ = case
    expected = _oracle(data, encoding)
    kind, got = outcome(data, encoding=encoding, limits=limits)
    if kind == "value":
        assert same_value(expected, got)
    else:
        assert isinstance(got, safeload.LimitError), f"expected a LimitError, got {got!r}"


def _opcode_names(data: bytes) -> set[str]:
    """Opcodes in a pickle, by safeload's own table (pickletools is stricter
    than the unpickler about INT's hex form)."""
    from safeload.opcodes import BY_CODE

    names, pos = set(), 0
    while pos < len(data):
        opcode = BY_CODE[data[pos]]
        names.add(opcode.name)
        pos = pos + 1 if opcode.arg is None else opcode.arg(data, pos + 1)[1]
    return names


def test_the_encoder_writes_every_safe_opcode():
    """The oracle covers the opcode table: a fixed number of drawn pickles
    together write every opcode except those that need state outside the
    pickle (buffers, the extension registry, persistent ids)."""
    from safeload.opcodes import OPCODES

    outside = {"NEXT_BUFFER", "READONLY_BUFFER", "EXT1", "EXT2", "EXT4", "PERSID",
               "BINPERSID"}
    wanted = {o.name for o in OPCODES} - outside
    seen: set[str] = set()

    @settings(max_examples=500, database=None, derandomize=True)
    @given(pickles())
    def collect(case):
        seen.update(_opcode_names(case[0]))

    collect()
    # The sample above is fixed per hypothesis version and hash seed, not
    # across them, so an opcode the sample happened to miss is searched for
    # directly: the assertion is about what the encoder *can* write.
    for name in sorted(wanted - seen):
        try:
            case = find(pickles(), lambda c, name=name: name in _opcode_names(c[0]),
                        settings=settings(max_examples=5000, database=None))
        except NoSuchExample:
            continue
        seen.update(_opcode_names(case[0]))
    assert wanted - seen == set()
