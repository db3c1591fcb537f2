"""The restricted pickle VM.

Strategy: a loop reads one opcode byte, looks its handler up in a 256-entry
table built from ``opcodes.OPCODES`` (one ``_op_<NAME>`` method per opcode) and
lets it read its argument and change the stack. Nothing the file names is ever
imported or looked up as an attribute: GLOBAL resolves "module.name" in the
``Policy`` (a dict of safeload handlers), and REDUCE / NEWOBJ / BUILD / INST /
OBJ only reach those handlers. Container opcodes only touch the exact builtin
types the VM itself created. Every bound lives in ``Limits``; every failure is
a ``SafeloadError`` located by file, member, byte offset and opcode.

The VM never builds a tensor: tensor and storage handlers return records that
a ``Builder`` (rebuild stage) turns into arrays, tensors or keeps inert.

Where it is built, ``_vmfast.run`` (C) runs stretches of the hot pure-data
opcodes (memo, MARK, TUPLE*, ints, floats, strings, empty and exact builtin
containers) on this VM's own stack, metastack and memo, calls persistent_load
and allowlist entries' reduce for BINPERSID and REDUCE itself, and returns at
the first opcode it is not sure of, unrun: everything that decides, refuses or
raises stays in the handlers (``FAST_RUN``; SECURITY.md).

In analysis mode (``on_finding`` given), the VM does not stop at a global or
call outside the allowlist: it reports it, pushes an ``Opaque`` placeholder and
goes on, so a scanner sees every finding. Structural errors still stop it.
"""

from __future__ import annotations

import _compat_pickle
import gc
import os
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable

from .errors import (
    CallerError,
    FormatError,
    LimitError,
    SafeloadError,
    UnsafeGlobalError,
    short_repr,
)
from .limits import DEFAULT_LIMITS, Limits
from .opcodes import (
    BY_CODE,
    OPCODES,
    Truncated,
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

__all__ = ["Opaque", "Unpickler"]

_UINT4 = struct.Struct("<I").unpack_from  # LONG_BINPUT's index, read inline


#: the version of ``_vmfast.run``'s interface this loop calls (``API`` there)
_FAST_API = 3


def _fast_run():
    """The compiled loop of the hot pure-data opcodes (``_vmfast.c``), or None:
    not built on this machine, built from another version of the file (an
    editable install not rebuilt), or SAFELOAD_PURE_PYTHON=1 is set."""
    if os.environ.get("SAFELOAD_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _vmfast
    except ImportError:
        return None
    if getattr(_vmfast, "API", None) != _FAST_API:
        return None
    return _vmfast.run


def _direct_reduce_type(policy) -> type | None:
    """The type of the allowlist entries whose REDUCE the compiled loop may
    run by calling ``entry.reduce(vm, args)`` itself, or None. That is only
    right where ``policy.call`` is a method that does exactly this for them:
    its class says so with ``direct_reduce_type`` (looked up on the class, so
    a wrapper that forwards attributes to a policy does not inherit it)."""
    call = getattr(policy, "call", None)
    owner = getattr(call, "__self__", None)
    declare = getattr(type(owner), "direct_reduce_type", None)
    if declare is None or getattr(call, "__func__", None) is not getattr(type(owner), "call", None):
        return None
    return declare(owner)


def _too_many_ops(max_ops: int) -> LimitError:
    return LimitError(f"pickle runs more than {max_ops} opcodes",
                      hint="raise Limits.max_ops if the file is trusted")


def _stack_too_deep(max_stack: int) -> LimitError:
    return LimitError(f"the stack holds more than {max_stack} values",
                      hint="raise Limits.max_stack if the file is trusted")


#: read at every run, so tests can switch it: ``monkeypatch.setattr(unpickler,
#: "FAST_RUN", None)`` runs the pure-Python VM
FAST_RUN = _fast_run()
_HIGHEST_PROTOCOL = 5
_COLLIDING_KEYS = 16  # distinct non-str keys of one container sharing one hash


class _Mark:
    """Placeholder type for ``MARK`` in messages; marks live on the metastack."""


class _Stop(Exception):
    pass


class Opaque:
    """Analysis mode's stand-in for a value the VM refused to make.

    ``what`` is the global name, or a description of the call that produced it.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<opaque {self.what}>"


class Unpickler:
    """Run one pickle through the restricted VM.

    ``policy`` resolves globals and applies BUILD; ``persistent_load`` turns a
    persistent id into a value (it is the container's job: zip, legacy, tar).
    """

    def __init__(
        self,
        data: bytes,
        *,
        policy,
        builder,
        persistent_load: Callable[[object], object] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        encoding: str = "ASCII",
        errors: str = "strict",
        file: str | None = None,
        member: str | None = None,
        start: int = 0,
        on_finding: Callable[[SafeloadError], None] | None = None,
    ) -> None:
        self.data = bytes(data) if not isinstance(data, bytes) else data
        self.policy = policy
        self.builder = builder
        self.persistent_load_fn = persistent_load
        self.limits = limits
        self.encoding = encoding
        self.errors = errors
        self.file = file
        self.member = member
        self.pos = start
        self.on_finding = on_finding
        self.proto = 0
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: dict[int, object] = {}
        self.copied = 0  # elements / bytes copied by handlers, bounded by budget
        self.copy_budget = 16 * len(self.data) + (1 << 20)
        self._key_hashes: dict[tuple[int, int], int] = {}
        self._counted: dict[int, object] = {}
        self.op_offset = start
        self.unbuilt: set[int] = set()  # ids of objects a handler made for BUILD
        self.keepalive: list = []  # objects whose ids are in unbuilt
        # bounds the hot opcodes test, read once (Limits is frozen)
        self._max_memo = limits.max_memo
        self._max_nesting = limits.max_nesting
        self._max_bytes = limits.max_bytes
        self._max_items = limits.max_container_items
        # for the compiled loop: the type of allowlist entries whose REDUCE
        # it may call itself (see _direct_reduce_type), and persistent_load
        self._direct_type = _direct_reduce_type(policy)
        self._dispatch: list = [self._op_unknown] * 256
        for op in OPCODES:
            self._dispatch[op.code] = getattr(self, "_op_" + op.name)

    # -- the loop -------------------------------------------------------------

    def load(self, *, allow_trailing: bool = False) -> object:
        """Run to STOP. ``self.pos`` is then just past STOP. Trailing bytes are
        a FormatError unless ``allow_trailing`` (the legacy format chains
        pickles)."""
        # The cyclic GC is paused for the run: the VM allocates a few tracked
        # objects per opcode, and collections triggered by them rescan every
        # object built so far (a third of the time on a 20 000-tensor state
        # dict). The memory a run can hold is bounded by Limits either way.
        if not gc.isenabled():
            return self._run(allow_trailing)
        gc.disable()
        try:
            return self._run(allow_trailing)
        finally:
            gc.enable()

    def _run(self, allow_trailing: bool) -> object:
        data = self.data
        dispatch = self._dispatch
        pos = self.pos
        start = pos
        ops = 0
        max_ops = self.limits.max_ops
        fast = FAST_RUN
        bounds = (self._max_memo, self._max_nesting, self._max_items, self._max_bytes)
        # Limits does not check its fields: a bound that is not an int (a float,
        # a numpy int, inf) or is negative (which refuses even an empty value)
        # runs the Python loop only, which compares it as it is
        if fast is not None and not all(type(b) is int and b >= 0
                                        for b in (*bounds, max_ops)):
            fast = None
        try:
            try:
                if fast is not None:
                    # The compiled loop runs the pure-data opcodes it is sure
                    # of and stops, without running it, at any other opcode (or
                    # one that would fail or reach a bound); the handler here
                    # runs that one. It runs at most `budget` opcodes a call,
                    # so the bounds below are checked as in the loop after.
                    max_stack = self.limits.max_stack
                    metastack = self.metastack
                    memo = self.memo
                    max_memo, max_nesting, max_items, max_bytes = bounds
                    persist, direct_type = self.persistent_load_fn, self._direct_type
                    next_check = 1024  # as below: the stack after every 1024th opcode
                    until = min(next_check - 1, max_ops)  # the compiled loop runs up to it
                    while True:
                        start = pos
                        pos, done, self.stack, failed = fast(
                            data, pos, self.stack, metastack, memo, until - ops,
                            max_memo, max_nesting, max_items, max_bytes,
                            self, persist, direct_type,
                        )
                        ops += done
                        start = pos
                        if failed is not None:
                            # an opcode it ran failed (out of memory, or a
                            # handler it called raised): located at that
                            # opcode, as its handler's error would be
                            raise failed
                        pos = dispatch[data[pos]](pos + 1)
                        ops += 1
                        if ops > max_ops:
                            raise _too_many_ops(max_ops)
                        if ops == next_check:
                            next_check += 1024
                            until = min(next_check - 1, max_ops)
                            if self._held() > max_stack:
                                raise _stack_too_deep(max_stack)
                if len(data) - pos <= min(max_ops, self.limits.max_stack):
                    # Every opcode consumes at least its own byte and leaves
                    # at most one more value on the stack (or one more MARK),
                    # so this pickle can neither run more than max_ops opcodes
                    # nor hold more than max_stack values: no counting.
                    # On an exception, pos is still the failing opcode's offset.
                    try:
                        while True:
                            pos = dispatch[data[pos]](pos + 1)
                    except BaseException:
                        start = pos
                        raise
                max_stack = self.limits.max_stack
                while True:
                    start = pos
                    pos = dispatch[data[pos]](pos + 1)
                    ops += 1
                    if ops > max_ops:
                        raise _too_many_ops(max_ops)
                    if not ops & 1023 and self._held() > max_stack:
                        # checked every 1024 opcodes: the stack can overshoot
                        # the bound by at most that many values
                        raise _stack_too_deep(max_stack)
            except _Stop:
                pos = start + 1
        except SafeloadError as err:
            raise self._locate(err, start) from None
        except CallerError:
            raise
        except IndexError:
            if start >= len(data):
                err = FormatError("pickle ends without STOP (truncated)")
                raise self._locate(err, len(data)) from None
            if start + 1 >= len(data) and BY_CODE.get(data[start]) is not None \
                    and BY_CODE[data[start]].arg is not None:
                err = FormatError("truncated pickle: the last opcode's argument is missing")
                raise self._locate(err, start) from None
            err = FormatError("stack underflow: the opcode needs more values than the stack has")
            raise self._locate(err, start) from None
        except Truncated as exc:
            raise self._locate(FormatError(f"truncated pickle: {exc}"), start) from None
        except RecursionError:
            err = LimitError("value nested too deeply")
            raise self._locate(err, start) from None
        except MemoryError:
            err = LimitError("out of memory while unpickling")
            raise self._locate(err, start) from None
        except Exception as exc:  # noqa: BLE001 - no other exception type may escape
            err = FormatError(f"malformed pickle: {type(exc).__name__}: {short_repr(str(exc))}")
            raise self._locate(err, start) from None
        if self.metastack:
            raise self._locate(FormatError("STOP with an unclosed MARK"), start)
        if len(self.stack) != 1:
            raise self._locate(
                FormatError(f"STOP with {len(self.stack)} values on the stack, expected 1"),
                start,
            )
        self.pos = pos
        if not allow_trailing and pos != len(data):
            raise self._locate(
                FormatError(f"{len(data) - pos} bytes of trailing data after STOP"), pos
            )
        value = self.stack.pop()
        self.memo.clear()
        return value

    def _held(self) -> int:
        """Values on the stack and under every open MARK."""
        return len(self.stack) + sum(map(len, self.metastack)) + len(self.metastack)

    def _check_items(self, count: int) -> None:
        self.limits.check("items in one container", count, self.limits.max_container_items)

    def _locate(self, err: SafeloadError, offset: int) -> SafeloadError:
        code = self.data[offset] if offset < len(self.data) else None
        op = BY_CODE.get(code) if code is not None else None
        return err.at(
            file=self.file,
            member=self.member,
            offset=offset,
            opcode=op.name if op else (f"0x{code:02x}" if code is not None else None),
        )

    # -- helpers used by opcodes and handlers ---------------------------------

    def refuse(self, err: UnsafeGlobalError, stand_in: str) -> Opaque:
        """An unsafe construct: raise, or in analysis mode report and go on."""
        if self.on_finding is None:
            raise err
        self.on_finding(self._locate(err, self._current_offset()))
        return Opaque(stand_in)

    def _current_offset(self) -> int:
        # The loop keeps the opcode's offset in a local for speed; handlers
        # that can report a finding record it in op_offset first.
        return self.op_offset

    def charge(self, n: int) -> None:
        """Account for n elements / bytes a handler copies (set(x), bytearray(b)
        ...). Memo references make such copies cheap in input bytes; the budget
        keeps their total in proportion to the pickle."""
        self.copied += n
        if self.copied > self.copy_budget:
            raise LimitError(
                f"handlers copied {self.copied} items from a {len(self.data)}-byte pickle"
            )

    def check_key(self, key: object, container: object) -> None:
        """Refuse dict keys / set items that would make hashing slow or deep.

        str and bytes hashes are randomized per process; other hashes are
        predictable, so count distinct keys sharing one hash in one container
        (a collision flood makes dict insertion quadratic)."""
        t = type(key)
        if t is str or t is bytes:
            return
        if t is int and -_HASH_MODULUS < key < _HASH_MODULUS or t is bool or key is None:
            # hash(n) is n for these ints (only -1 and -2 share one): no flood is
            # possible, and the bookkeeping below costs ~150 bytes per key
            return
        if t is tuple or t is frozenset:
            self._check_nested_key(key)
        elif t not in _SCALAR_KEYS and not self.policy.is_hashable_record(key):
            if t is Opaque and self.on_finding is not None:
                return  # analysis mode: already reported; hashed by identity
            raise FormatError(f"unhashable or unsupported key of type {t.__name__}")
        slot = (id(container), hash(key))
        count = self._key_hashes.get(slot, 0) + 1
        self._key_hashes[slot] = count
        if count == 1:
            # keep the container alive so its id is never reused for another
            self._counted[id(container)] = container
        if count > _COLLIDING_KEYS:
            raise LimitError(f"more than {_COLLIDING_KEYS} keys of one container share a hash")

    def _check_nested_key(self, key) -> None:
        budget = 10_000
        todo = [(key, 1)]
        max_depth = self.limits.max_nesting
        while todo:
            item, depth = todo.pop()
            t = type(item)
            if t is tuple or t is frozenset:
                if depth > max_depth:
                    raise LimitError(f"key nested deeper than {max_depth}")
                budget -= len(item)
                if budget < 0:
                    raise LimitError("key has more than 10000 parts")
                todo.extend((x, depth + 1) for x in item)
            elif t not in _SCALAR_KEYS and t is not str and t is not bytes \
                    and not self.policy.is_hashable_record(item):
                raise FormatError(f"unhashable or unsupported key part of type {t.__name__}")
        # one big tuple shared by many keys (via the memo) is walked and hashed
        # once per key: the walk is paid from the copy budget
        self.charge(10_000 - budget)

    def _push(self, value) -> None:
        self.stack.append(value)

    def _pop_mark(self) -> list:
        items = self.stack
        try:
            self.stack = self.metastack.pop()
        except IndexError:
            raise FormatError("opcode needs a MARK, and there is none") from None
        if len(items) > self._max_items:
            self._check_items(len(items))
        return items

    def _decode_py2_string(self, raw: bytes):
        if self.encoding == "bytes":
            return raw
        return raw.decode(self.encoding, self.errors)

    def _resolve(self, module: str, name: str):
        if type(module) is not str or type(name) is not str:
            raise FormatError(
                "STACK_GLOBAL operands must be strings, got "
                f"{type(module).__name__} and {type(name).__name__}"
            )
        if not (module.isprintable() and name.isprintable()):
            # no Python name holds control characters or lone surrogates; in a
            # message they would rewrite a terminal or CI log, or fail to print
            raise FormatError(f"global name {repr(module)[:80]}.{repr(name)[:80]} is not "
                              "printable text")
        if self.proto < 3:  # pickle's fix_imports: Python 2 names
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        handler = self.policy.lookup(module, name)
        if handler is None:
            return self.refuse(self.policy.unsafe_global(module, name), f"{module}.{name}")
        return handler.value(self)

    def _call(self, func, args: tuple, opname: str):
        if type(args) is not tuple:
            raise FormatError(f"{opname} arguments must be a tuple, got {type(args).__name__}")
        return self.policy.call(self, func, args, None, opname)

    # -- opcodes ----------------------------------------------------------------
    # Each handler takes the position after the opcode byte and returns the
    # position after its argument.

    def _op_unknown(self, pos):
        raise FormatError(f"unknown opcode byte 0x{self.data[pos - 1]:02x}")

    def _op_PROTO(self, pos):
        proto, pos = read_uint1(self.data, pos)
        if proto > _HIGHEST_PROTOCOL:
            raise FormatError(f"unsupported pickle protocol {proto}")
        self.proto = proto
        return pos

    def _op_FRAME(self, pos):
        size, pos = read_uint8(self.data, pos)
        if pos + size > len(self.data):
            raise FormatError(f"frame of {size} bytes runs past the end of the pickle")
        return pos

    def _op_STOP(self, pos):
        raise _Stop

    # integers
    def _op_INT(self, pos):
        line_end = self.data.find(b"\n", pos)  # int(x, 0) reads hex of any length
        self.limits.check("INT digits", line_end - pos, 2 * self.limits.max_int_bytes)
        value, pos = read_decimal_int(self.data, pos)
        self.stack.append(value)
        return pos

    def _op_BININT(self, pos):
        value, pos = read_int4(self.data, pos)
        self.stack.append(value)
        return pos

    def _op_BININT1(self, pos):
        self.stack.append(self.data[pos])
        return pos + 1

    def _op_BININT2(self, pos):
        value, pos = read_uint2(self.data, pos)
        self.stack.append(value)
        return pos

    def _op_LONG(self, pos):
        line_end = self.data.find(b"\n", pos)
        self.limits.check("LONG digits", line_end - pos, 2 * self.limits.max_int_bytes)
        value, pos = read_decimal_long(self.data, pos)
        self.stack.append(value)
        return pos

    def _op_LONG1(self, pos):
        value, pos = read_long1(self.data, pos)
        self.stack.append(value)
        return pos

    def _op_LONG4(self, pos):
        n, _ = read_int4(self.data, pos)
        self.limits.check("LONG4 length", n, self.limits.max_int_bytes)
        value, pos = read_long4(self.data, pos)
        self.stack.append(value)
        return pos

    # strings
    def _op_STRING(self, pos):
        raw, pos = read_stringnl(self.data, pos)
        self.stack.append(self._decode_py2_string(raw))
        return pos

    def _op_BINSTRING(self, pos):
        raw, pos = read_string4(self.data, pos)
        self.stack.append(self._decode_py2_string(raw))
        return pos

    def _op_SHORT_BINSTRING(self, pos):
        raw, pos = read_bytes1(self.data, pos)
        self.stack.append(self._decode_py2_string(raw))
        return pos

    def _bytes_op(reader):  # noqa: N805 - builds methods
        def op(self, pos):
            value, pos = reader(self.data, pos)
            if len(value) > self._max_bytes:  # limits.check only on the way to failing
                self.limits.check("bytes length", len(value), self.limits.max_bytes)
            self.stack.append(value)
            return pos

        return op

    _op_BINBYTES = _bytes_op(read_bytes4)
    _op_SHORT_BINBYTES = _bytes_op(read_bytes1)
    _op_BINBYTES8 = _bytes_op(read_bytes8)

    # Every state-dict key is a BINUNICODE (or SHORT_BINUNICODE): _bytes_op
    # written out, one call less each.
    def _op_SHORT_BINUNICODE(self, pos):
        value, pos = read_unicode1(self.data, pos)
        if len(value) > self._max_bytes:
            self.limits.check("bytes length", len(value), self.limits.max_bytes)
        self.stack.append(value)
        return pos

    def _op_BINUNICODE(self, pos):
        value, pos = read_unicode4(self.data, pos)
        if len(value) > self._max_bytes:
            self.limits.check("bytes length", len(value), self.limits.max_bytes)
        self.stack.append(value)
        return pos

    _op_BINUNICODE8 = _bytes_op(read_unicode8)
    _op_UNICODE = _bytes_op(read_unicodenl)

    def _op_BYTEARRAY8(self, pos):
        value, pos = read_bytes8(self.data, pos)
        self.limits.check("bytearray length", len(value), self.limits.max_bytes)
        self.stack.append(bytearray(value))
        return pos

    def _op_NEXT_BUFFER(self, pos):
        raise FormatError("out-of-band buffers (NEXT_BUFFER) are not supported")

    def _op_READONLY_BUFFER(self, pos):
        raise FormatError("out-of-band buffers (READONLY_BUFFER) are not supported")

    def _op_NONE(self, pos):
        self.stack.append(None)
        return pos

    def _op_NEWTRUE(self, pos):
        self.stack.append(True)
        return pos

    def _op_NEWFALSE(self, pos):
        self.stack.append(False)
        return pos

    def _op_FLOAT(self, pos):
        value, pos = read_float_line(self.data, pos)
        self.stack.append(value)
        return pos

    def _op_BINFLOAT(self, pos):
        value, pos = read_float8(self.data, pos)
        self.stack.append(value)
        return pos

    # containers
    def _op_EMPTY_LIST(self, pos):
        self.stack.append([])
        return pos

    def _op_EMPTY_TUPLE(self, pos):
        self.stack.append(())
        return pos

    def _op_EMPTY_DICT(self, pos):
        self.stack.append({})
        return pos

    def _op_EMPTY_SET(self, pos):
        self.stack.append(set())
        return pos

    def _op_APPEND(self, pos):
        stack = self.stack
        value = stack.pop()
        target = stack[-1]
        if type(target) is not list:
            self._refuse_mutation("APPEND", target, [value])
        else:
            target.append(value)
        return pos

    def _op_APPENDS(self, pos):
        items = self._pop_mark()
        target = self.stack[-1]
        if type(target) is not list:
            self._refuse_mutation("APPENDS", target, items)
        else:
            target.extend(items)
        return pos

    def _op_LIST(self, pos):
        items = self._pop_mark()
        self.stack.append(items)
        return pos

    def _op_TUPLE(self, pos):
        items = self.stack  # _pop_mark, inlined: two TUPLEs per tensor
        try:
            stack = self.stack = self.metastack.pop()
        except IndexError:
            raise FormatError("opcode needs a MARK, and there is none") from None
        if len(items) > self._max_items:
            self._check_items(len(items))
        stack.append(tuple(items))
        return pos

    def _op_TUPLE1(self, pos):
        self.stack[-1] = (self.stack[-1],)
        return pos

    def _op_TUPLE2(self, pos):
        stack = self.stack
        b = stack.pop()
        stack[-1] = (stack[-1], b)
        return pos

    def _op_TUPLE3(self, pos):
        stack = self.stack
        c = stack.pop()
        b = stack.pop()
        stack[-1] = (stack[-1], b, c)
        return pos

    def _op_DICT(self, pos):
        items = self._pop_mark()
        if len(items) % 2:
            raise FormatError("DICT with an odd number of items")
        d = {}
        self._set_items(d, items)
        self.stack.append(d)
        return pos

    def _set_items(self, target, items) -> None:
        check_key = self.check_key
        for i in range(0, len(items), 2):
            key = items[i]
            if type(key) is not str:
                check_key(key, target)
            target[key] = items[i + 1]

    def _op_SETITEM(self, pos):
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        target = stack[-1]
        if type(target) not in _DICT_TYPES:
            self._refuse_mutation("SETITEM", target, [key, value])
            return pos
        if type(key) is not str:
            self.check_key(key, target)
        target[key] = value
        return pos

    def _op_SETITEMS(self, pos):
        items = self._pop_mark()
        target = self.stack[-1]
        if len(items) % 2:
            raise FormatError("SETITEMS with an odd number of items")
        if type(target) not in _DICT_TYPES:
            self._refuse_mutation("SETITEMS", target, items)
            return pos
        self._set_items(target, items)
        return pos

    def _op_ADDITEMS(self, pos):
        items = self._pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            self._refuse_mutation("ADDITEMS", target, items)
            return pos
        for item in items:
            self.check_key(item, target)
            target.add(item)
        return pos

    def _op_FROZENSET(self, pos):
        items = self._pop_mark()
        marker = set()  # stands for the frozenset while its items are checked
        for item in items:
            self.check_key(item, marker)
        self.stack.append(frozenset(items))
        return pos

    def _refuse_mutation(self, opname: str, target, items: list) -> None:
        if isinstance(target, Opaque):  # analysis mode: already reported
            return
        if self.policy.container_items(self, opname, target, items):
            return  # the policy took them (a Record's items, under the records policy)
        raise FormatError(
            f"{opname} on a {type(target).__name__} value: container opcodes only "
            "apply to the list / dict / set values the pickle itself built"
        )

    # stack
    def _op_POP(self, pos):
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()
        return pos

    def _op_DUP(self, pos):
        self.stack.append(self.stack[-1])
        return pos

    def _op_MARK(self, pos):
        metastack = self.metastack
        metastack.append(self.stack)
        self.stack = []
        if len(metastack) > self._max_nesting:
            raise LimitError(f"more than {self.limits.max_nesting} open MARKs")
        return pos

    def _op_POP_MARK(self, pos):
        self._pop_mark()
        return pos

    # memo
    def _get(self, index):
        try:
            self.stack.append(self.memo[index])
        except KeyError:
            raise FormatError(f"memo key {index} was never stored") from None

    def _put(self, index):
        if index < 0:
            raise FormatError(f"negative memo key {index}")
        memo = self.memo
        # len() first: the bound is far away for every real pickle
        if len(memo) >= self._max_memo and index not in memo:
            raise LimitError(f"memo holds more than {self.limits.max_memo} entries")
        memo[index] = self.stack[-1]

    def _op_GET(self, pos):
        index, pos = read_decimal_index(self.data, pos)
        self._get(index)
        return pos

    def _op_BINGET(self, pos):
        try:
            self.stack.append(self.memo[self.data[pos]])
        except KeyError:
            raise FormatError(f"memo key {self.data[pos]} was never stored") from None
        return pos + 1

    def _op_LONG_BINGET(self, pos):
        index, pos = read_uint4(self.data, pos)
        try:  # _get, inlined: memo opcodes are a third of a state dict's
            self.stack.append(self.memo[index])
        except KeyError:
            raise FormatError(f"memo key {index} was never stored") from None
        return pos

    def _op_PUT(self, pos):
        index, pos = read_decimal_index(self.data, pos)
        self._put(index)
        return pos

    # BINPUT / LONG_BINPUT inline _put (their keys are unsigned: never negative)
    def _op_BINPUT(self, pos):
        index = self.data[pos]
        memo = self.memo
        if len(memo) >= self._max_memo and index not in memo:
            raise LimitError(f"memo holds more than {self.limits.max_memo} entries")
        memo[index] = self.stack[-1]
        return pos + 1

    def _op_LONG_BINPUT(self, pos):
        # the commonest opcode of a large state dict: read_uint4, inlined too
        data = self.data
        if pos + 4 > len(data):
            read_uint4(data, pos)  # raises Truncated, with the reader's message
        index = _UINT4(data, pos)[0]
        memo = self.memo
        if len(memo) >= self._max_memo and index not in memo:
            raise LimitError(f"memo holds more than {self.limits.max_memo} entries")
        memo[index] = self.stack[-1]
        return pos + 4

    def _op_MEMOIZE(self, pos):
        self._put(len(self.memo))
        return pos

    # extension registry: process-wide state, never consulted
    def _ext(self, code: int):
        err = UnsafeGlobalError(
            f"extension code {code} refers to the process-wide copyreg registry, "
            "which safeload never consults",
            global_name=f"<copyreg extension {code}>",
        )
        self.stack.append(self.refuse(err, f"<copyreg extension {code}>"))

    def _op_EXT1(self, pos):
        self.op_offset = pos - 1
        code, pos = read_uint1(self.data, pos)
        self._ext(code)
        return pos

    def _op_EXT2(self, pos):
        self.op_offset = pos - 1
        code, pos = read_uint2(self.data, pos)
        self._ext(code)
        return pos

    def _op_EXT4(self, pos):
        self.op_offset = pos - 1
        code, pos = read_int4(self.data, pos)
        self._ext(code)
        return pos

    # globals and calls
    def _op_GLOBAL(self, pos):
        self.op_offset = pos - 1
        (module, name), pos = read_global(self.data, pos)
        self.stack.append(self._resolve(module, name))
        return pos

    def _op_STACK_GLOBAL(self, pos):
        self.op_offset = pos - 1
        stack = self.stack
        name = stack.pop()
        module = stack.pop()
        stack.append(self._resolve(module, name))
        return pos

    def _op_REDUCE(self, pos):
        self.op_offset = pos - 1
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if type(args) is not tuple:  # _call, inlined: one REDUCE or two per tensor
            raise FormatError(f"REDUCE arguments must be a tuple, got {type(args).__name__}")
        stack[-1] = self.policy.call(self, func, args, None, "REDUCE")
        return pos

    def _op_NEWOBJ(self, pos):
        self.op_offset = pos - 1
        stack = self.stack
        args = stack.pop()
        cls = stack[-1]
        if type(args) is not tuple:
            raise FormatError("NEWOBJ arguments must be a tuple")
        stack[-1] = self.policy.call(self, cls, args, None, "NEWOBJ")
        return pos

    def _op_NEWOBJ_EX(self, pos):
        self.op_offset = pos - 1
        stack = self.stack
        kwargs = stack.pop()
        args = stack.pop()
        cls = stack[-1]
        if type(args) is not tuple or type(kwargs) is not dict:
            raise FormatError("NEWOBJ_EX needs a tuple and a dict")
        for key in kwargs:
            if type(key) is not str:
                raise FormatError("NEWOBJ_EX keyword names must be strings")
        stack[-1] = self.policy.call(self, cls, args, kwargs, "NEWOBJ_EX")
        return pos

    def _op_INST(self, pos):
        self.op_offset = pos - 1
        (module, name), pos = read_global(self.data, pos)
        args = tuple(self._pop_mark())
        cls = self._resolve(module, name)
        self.stack.append(self._call(cls, args, "INST"))
        return pos

    def _op_OBJ(self, pos):
        self.op_offset = pos - 1
        items = self._pop_mark()
        if not items:
            raise FormatError("OBJ needs a class after MARK")
        cls = items[0]
        self.stack.append(self._call(cls, tuple(items[1:]), "OBJ"))
        return pos

    def _op_BUILD(self, pos):
        self.op_offset = pos - 1
        stack = self.stack
        state = stack.pop()
        target = stack[-1]
        self.policy.build(self, target, state)
        return pos

    # persistent ids
    def _persistent(self, pid):
        if self.persistent_load_fn is None:
            raise FormatError("persistent id in a pickle that has no storage records")
        return self.persistent_load_fn(pid)

    def _op_PERSID(self, pos):
        self.op_offset = pos - 1
        pid, pos = read_name(self.data, pos)
        self.stack.append(self._persistent(pid))
        return pos

    def _op_BINPERSID(self, pos):
        self.op_offset = pos - 1
        stack = self.stack
        stack[-1] = self._persistent(stack[-1])
        return pos


_DICT_TYPES = (dict, OrderedDict, __import__("collections").Counter)
_DICT_TYPES = frozenset(_DICT_TYPES)
_HASH_MODULUS = sys.hash_info.modulus  # int hashes are n mod this
_SCALAR_KEYS = frozenset({int, bool, float, complex, type(None), str, bytes})
