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
import reprlib
from dataclasses import dataclass, replace

__all__ = [
    "FormatError",
    "LimitError",
    "Location",
    "SafeloadError",
    "UnsafeGlobalError",
    "printable",
    "short_repr",
]

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlevel = 3


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


def short_repr(value: object) -> str:
    """A bounded repr for messages: never recursive, never huge."""
    try:
        return _repr.repr(value)
    except Exception:  # a hostile __repr__ can only come from an allowlisted type
        return f"<{type(value).__name__}>"


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
