"""Every way safeload refuses a file.

Strategy: an error is a value with a location, not a string built at the raise
site. Each stage raises one of three kinds (what is wrong), and fills in as much
of ``Location`` as it knows (where it is wrong); the message is formatted in one
place, here. ``SafeloadError`` subclasses ``pickle.UnpicklingError`` so that
``except pickle.UnpicklingError`` clauses written for ``torch.load`` keep working.

Text the file chose (global names, archive member names, dict keys) reaches
messages and reports through one rule, ``printable``: a control character would
rewrite a terminal or CI log, a lone surrogate (pickle strings decode with
``surrogatepass``) makes printing fail. Errors apply it to their reason, hint and
global name; the scanner's findings and the CLI's output apply it too.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from itertools import islice

__all__ = [
    "FormatError",
    "LimitError",
    "Location",
    "SafeloadError",
    "UnsafeGlobalError",
    "printable",
    "short_repr",
]

#: characters kept of a reason or hint (of a global name: MAX_NAME); what the
#: file controls in a message is cut, so every message stays bounded
MAX_MESSAGE = 2000
MAX_NAME = 300


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every character that is not printable (control and format
    characters, lone surrogates, separators other than the space) written as
    its Python escape, cut to ``limit`` characters. Printable text, backslashes
    included, is left alone, so applying it twice changes nothing.

    >>> print(printable("evil\\x1b[2J\\udc80.x"))
    evil\\x1b[2J\\udc80.x
    >>> printable("a" * 50, 8)
    'aaaaaaaa...[50 chars]'
    """
    if type(text) is not str:
        text = str(text)
    size = len(text)
    if limit is not None and size > limit:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if limit is None or size <= limit else f"{text}...[{size} chars]"


#: short_repr: characters of the whole text, items shown per container,
#: container levels entered, characters (or bytes) shown of one str / bytes
MAX_REPR = 160
_ITEMS = 4
_DEPTH = 3
_HEAD = 40


def short_repr(value: object) -> str:
    """A bounded description of a value for messages. It never asks a value for
    its full repr (a list of a million references to one big list costs the
    pickle a few bytes, its repr terabytes), so time and memory are bounded too:
    str and bytes show their first bytes and their length, big ints their size,
    containers their first items, other objects their type (and name).

    >>> short_repr(b"x" * 10_000_000)
    "b'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'...[10000000 bytes]"
    >>> short_repr({"a": [1, 2, 3, 4, 5], "b": 2 ** 1000})
    "{'a': [1, 2, 3, 4, ...], 'b': <int of 1001 bits>}"
    """
    try:
        text = _short(value, _DEPTH)
    except Exception:  # a broken value (a bad __len__): its type is enough
        text = f"<{type(value).__name__}>"
    return printable(text, MAX_REPR)


def _short(value: object, depth: int) -> str:
    for types, render in _SHORT:
        if isinstance(value, types):
            return render(value, depth)
    # anything else: never its own repr (records and arrays repr their contents)
    kind = type(value).__name__
    name = next((getattr(value, a) for a in ("global_name", "name", "what", "dtype")
                 if isinstance(getattr(value, a, None), str)), None)
    shape = getattr(value, "shape", None)
    if type(shape) is tuple and len(shape) <= 8:
        name = f"{getattr(getattr(value, 'dtype', None), 'name', '?')} {shape}"
    return f"<{kind} {name[:_HEAD]}>" if name else f"<{kind}>"


def _short_scalar(value, depth: int) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = int(value)
        if value.bit_length() > 128:  # never the digits: int-to-str is quadratic
            return f"<int of {value.bit_length()} bits>"
    return repr(value) if type(value) in (bool, int, float, complex, type(None)) else \
        f"<{type(value).__name__}>"


def _short_text(value, depth: int) -> str:
    head = str(value[:_HEAD]) if isinstance(value, str) else bytes(value[:_HEAD])
    text = repr(head)
    if type(value) is not type(head):
        text = f"{type(value).__name__}({text})"
    if len(value) > _HEAD:
        text += f"...[{len(value)} {'chars' if isinstance(value, str) else 'bytes'}]"
    return text


def _short_container(value, depth: int) -> str:
    if isinstance(value, dict):
        body = [f"{_short(k, depth - 1)}: {_short(v, depth - 1)}"
                for k, v in islice(value.items(), _ITEMS)] if depth > 0 else []
        open_, close = "{", "}"
    else:
        body = [_short(v, depth - 1) for v in islice(value, _ITEMS)] if depth > 0 else []
        open_, close = {list: "[]", tuple: "()"}.get(type(value), "{}") \
            if isinstance(value, (list, tuple)) else "{}"
    if len(value) > len(body):
        body.append("...")
    if type(value) is tuple and len(value) == 1 and body:
        body[0] += ","
    text = f"{open_}{', '.join(body)}{close}"
    if type(value) in (dict, list, tuple) or (type(value) is set and body):
        return text
    return f"{type(value).__name__}({text if body else ''})"


def _short_view(value, depth: int) -> str:
    return f"<memoryview of {value.nbytes} bytes>"


#: how short_repr renders each kind of value, tried in order
_SHORT = (
    ((bool, int, float, complex, type(None)), _short_scalar),
    ((str, bytes, bytearray), _short_text),
    (memoryview, _short_view),
    ((dict, list, tuple, set, frozenset), _short_container),
)


@dataclass(frozen=True)
class Location:
    """Where in the input a problem sits. Every field is optional."""

    file: str | None = None
    member: str | None = None  # archive member, e.g. "archive/data.pkl"
    offset: int | None = None  # byte offset inside the member (or file)
    opcode: str | None = None  # pickle opcode name, e.g. "REDUCE"

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(f"file '{printable(self.file)}'")
        if self.member is not None:
            parts.append(f"member '{printable(self.member)}'")
        if self.offset is not None:
            parts.append(f"byte {self.offset}")
        if self.opcode is not None:
            parts.append(f"opcode {self.opcode}")
        return ", ".join(parts)


class SafeloadError(pickle.UnpicklingError):
    """Base of every refusal. Carries ``reason`` (why), ``location`` (where) and
    an optional ``hint`` (what the user can do about it)."""

    kind = "error"

    def __init__(
        self,
        reason: str,
        *,
        location: Location | None = None,
        hint: str | None = None,
        **where: object,
    ) -> None:
        self.reason = printable(reason, MAX_MESSAGE)
        self.location = replace(location or Location(), **where) if where else (
            location or Location()
        )
        self.hint = printable(hint, MAX_MESSAGE) if hint is not None else None
        super().__init__(self._format())

    def _format(self) -> str:
        text = self.reason
        where = str(self.location)
        if where:
            text = f"{text} ({where})"
        if self.hint:
            text = f"{text}. {self.hint}"
        return text

    def at(self, **where: object) -> SafeloadError:
        """Fill in location fields that are still unknown; returns self."""
        known = {k: v for k, v in where.items() if getattr(self.location, k) is None}
        if known:
            self.location = replace(self.location, **known)
            self.args = (self._format(),)
        return self

    def __str__(self) -> str:
        return self._format()

    # Location fields as attributes, for callers that prefer them flat.
    @property
    def file(self) -> str | None:
        return self.location.file

    @property
    def member(self) -> str | None:
        return self.location.member

    @property
    def offset(self) -> int | None:
        return self.location.offset

    @property
    def opcode(self) -> str | None:
        return self.location.opcode


class CallerError(Exception):
    """Carries an exception raised by the caller's own code (a map_location
    callable, a backend that cannot reach a device) through the VM, which turns
    every other exception into a FormatError. The loader re-raises
    ``original``: such errors are the caller's, not the file's."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class UnsafeGlobalError(SafeloadError):
    """The pickle names a global (or asks for a call) outside the allowlist."""

    kind = "unsafe-global"

    def __init__(self, reason: str, *, global_name: str | None = None, **kwargs) -> None:
        self.global_name = printable(global_name, MAX_NAME) if global_name is not None \
            else None
        super().__init__(reason, **kwargs)


class FormatError(SafeloadError):
    """The bytes do not form a valid checkpoint (container, pickle or records)."""

    kind = "format"


class LimitError(SafeloadError):
    """The input asks for more than a ``Limits`` bound allows."""

    kind = "limit"
