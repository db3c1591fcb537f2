"""``safeload scan --explain``: what a rejected pickle would have run.

Strategy: the scanner's analysis run already executes the pickle symbolically:
every refused global becomes an ``Opaque`` placeholder and every call or BUILD
on one is recorded with its arguments (``scan._AnalysisPolicy``). This module
only *renders* that trace as Python-like pseudo-code::

    _1 = os.system('echo pwned')          # REDUCE at byte 42
    result = _1

Each call result gets a variable; values print through a bounded renderer
(depth, items, string length and total size are capped), so a hostile pickle
cannot make the listing large; every line then passes ``errors.printable``
(names and keys are the file's text). When fickling is installed (the optional
``scan`` extra), its decompiler gives a second, independent listing; it runs in
a child process with a time, memory and input-size bound, and is never imported
into the scanning process. Finally ``allow_snippet`` prints the
``[tool.safeload]`` table that admits the globals that are merely unknown.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import OrderedDict

from .allowlist import Handler, LoadedStorage
from .dtypes import DType
from .errors import printable
from .records import Device, Size, StorageRef, StorageType, TensorRecord
from .unpickler import Opaque

__all__ = ["allow_snippet", "decompile_with_fickling", "explain_pickle"]

MAX_LINES = 200
MAX_CHARS = 20_000
_MAX_DEPTH = 3
_MAX_ITEMS = 8
_MAX_STRING = 80

FICKLING_MAX_INPUT = 1 << 20  # bytes of pickle handed to fickling
FICKLING_TIMEOUT = 10.0  # seconds
FICKLING_MEMORY = 1 << 31  # address-space limit of the child, bytes

_FICKLING_CHILD = """
import ast, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
except Exception:
    pass
from fickling.fickle import Pickled
text = ast.unparse(Pickled.load(sys.stdin.buffer.read()).ast)
sys.stdout.write(text[:{limit}])
"""


class _Renderer:
    """Bounded, cycle-safe rendering of VM values as Python-like expressions."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.keep: list[object] = []  # keeps named objects alive: ids stay unique

    def name(self, value: object) -> str:
        label = f"_{len(self.names) + 1}"
        self.names[id(value)] = label
        self.keep.append(value)
        return label

    def render(self, value: object, depth: int = 0) -> str:
        named = self.names.get(id(value))
        if named is not None:
            return named
        if isinstance(value, Opaque):
            return value.what
        if isinstance(value, Handler):
            return value.name
        if isinstance(value, TensorRecord):
            shape = ", ".join(map(str, value.shape))
            kind = "Parameter" if value.is_parameter else "tensor"
            return f"{kind}({value.dtype.name}[{shape}], storage={value.storage_ref.key!r})"
        if isinstance(value, LoadedStorage):
            return f"storage({value.ref.key!r})"
        if isinstance(value, StorageRef):
            return f"storage({value.key!r})"
        if isinstance(value, (DType, StorageType)):
            return f"torch.{value.name}"
        if isinstance(value, (Size, Device)):
            return repr(value)
        if isinstance(value, str):
            text = value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + "..."
            return repr(text) if len(value) <= _MAX_STRING else f"{text!r}[{len(value)} chars]"
        if isinstance(value, (bytes, bytearray)):
            head = bytes(value[:_MAX_STRING // 2])
            more = f"+{len(value) - len(head)} bytes" if len(value) > len(head) else ""
            return f"{head!r}{more}"
        if value is None or isinstance(value, (bool, int, float, complex)):
            text = repr(value)
            return text if len(text) <= _MAX_STRING else text[:_MAX_STRING] + "..."
        if depth >= _MAX_DEPTH:
            return "..."
        if isinstance(value, (dict, OrderedDict)):
            items = list(value.items())
            body = ", ".join(f"{self.render(k, depth + 1)}: {self.render(v, depth + 1)}"
                             for k, v in items[:_MAX_ITEMS])
            body += ", ..." if len(items) > _MAX_ITEMS else ""
            text = "{" + body + "}"
            return f"OrderedDict({text})" if type(value) is OrderedDict else text
        if isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)[:_MAX_ITEMS]
            body = ", ".join(self.render(v, depth + 1) for v in items)
            body += ", ..." if len(value) > _MAX_ITEMS else ""
            if isinstance(value, list):
                return f"[{body}]"
            if isinstance(value, tuple):
                return f"({body}{',' if len(value) == 1 else ''})"
            return f"{type(value).__name__}({{{body}}})"
        if type(value).__module__ == "numpy":
            return f"numpy.{type(value).__name__}(shape={getattr(value, 'shape', '?')})"
        if hasattr(type(value), "global_name"):  # scan.AllowedByName
            return f"{type(value).global_name}(...)"
        return f"<{type(value).__name__}>"


def explain_pickle(events: list[tuple], data: bytes, member: str | None, result: object,
                   start: int = 0, *, fickling: bool = True):
    """Render the trace of one analysis run; ``events`` come from
    ``scan._AnalysisPolicy``. Returns a ``scan.Explanation``."""
    from .scan import Explanation

    renderer = _Renderer()
    member = printable(member) if member is not None else None
    where = member or "the file"
    lines = [f"# {where}: what unpickling would run (symbolic: nothing was run)"]
    for event in events:
        if len(lines) >= MAX_LINES:
            lines.append(f"# ... {len(events)} calls in all; listing cut at {MAX_LINES} lines")
            break
        lines.append(printable(_line(renderer, event)))
    if result is None:
        lines.append("# the pickle did not reach STOP: see the malformed-pickle finding")
    else:
        lines.append(printable(f"result = {renderer.render(result)}"))
    listing = _cap("\n".join(lines))
    decompiled = note = None
    if fickling:
        decompiled, note = decompile_with_fickling(data[start:])
    if decompiled is not None:  # fickling prints names as the pickle spells them
        decompiled = "\n".join(printable(line) for line in decompiled.splitlines())
    return Explanation(member, listing, decompiled,
                       printable(note) if note is not None else None)


def _line(renderer: _Renderer, event: tuple) -> str:
    if event[0] == "call":
        _, offset, opname, func, args, kwargs, result = event
        callee = renderer.render(func)
        rendered = [renderer.render(a, 1) for a in args]
        if kwargs:
            rendered += [f"{k}={renderer.render(v, 1)}" for k, v in list(kwargs.items())[:8]]
        if opname in ("NEWOBJ", "NEWOBJ_EX"):
            text = f"{callee}.__new__({', '.join([callee, *rendered])})"
        else:
            text = f"{callee}({', '.join(rendered)})"
        target = renderer.name(result) if isinstance(result, Opaque) else None
        text = f"{target} = {text}" if target else text
    else:
        _, offset, opname, target, state = event
        name = renderer.render(target)
        body = renderer.render(state, 1)
        if target.what.endswith("(...)") or id(target) in renderer.names:
            text = f"{name}.__setstate__({body})"
        else:  # BUILD on a class or module: rewrites it
            text = f"{name}.__dict__.update({body})"
    text = text if len(text) <= 400 else text[:400] + " ..."
    return f"{text:<48}  # {opname} at byte {offset}"


def _cap(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    return text[:MAX_CHARS] + f"\n# ... listing cut at {MAX_CHARS} characters"


def fickling_available() -> bool:
    return importlib.util.find_spec("fickling") is not None


def decompile_with_fickling(data: bytes) -> tuple[str | None, str | None]:
    """fickling's decompiled listing of one pickle, as (text, None), or
    (None, why not). Runs in a child process, bounded in input size, time and
    memory; fickling is never imported here."""
    if not fickling_available():
        return None, "fickling is not installed (pip install 'safeload[scan]') for a second listing"
    if len(data) > FICKLING_MAX_INPUT:
        return None, (f"pickle of {len(data)} bytes is larger than {FICKLING_MAX_INPUT}: "
                      "not handed to fickling")
    code = _FICKLING_CHILD.format(memory=FICKLING_MEMORY, limit=MAX_CHARS)
    try:
        done = subprocess.run([sys.executable, "-I", "-c", code], input=bytes(data),
                              capture_output=True, timeout=FICKLING_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"fickling took longer than {FICKLING_TIMEOUT:g} s: stopped"
    except OSError as exc:
        return None, f"fickling could not be started: {exc}"
    if done.returncode != 0:
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        return None, f"fickling could not decompile it: {last[0][:200]}"
    return done.stdout.decode("utf-8", "replace"), None


def allow_snippet(names: list[str]) -> str:
    """The paste-ready pyproject table that allows ``names`` (unknown, not
    dangerous globals) for ``safeload scan``.

    >>> print(allow_snippet(["mypkg.Config"]))
    [tool.safeload]
    allow = [
        "mypkg.Config",
    ]
    """
    body = "".join(f'    "{name}",\n' for name in sorted(set(names)))
    return f"[tool.safeload]\nallow = [\n{body}]"
