"""Scan model files without loading them: every finding, located.

Strategy: the scanner drives the loader's own stages in analysis mode, so the
two can never disagree on what is clean. For each file it

1. sniffs the content (``MODEL_FORMATS``: zip, numpy, tar, pickle; never the
   file name). Files that are none of these are skipped and counted;
2. opens the container with the loader's ``open_container`` and runs the main
   pickle with ``loader.run_pickle`` and the loader's ``Policy``, through
   ``ScanBuilder`` (the inert builder plus the loader's size and extent checks:
   it looks at record sizes, never at tensor bytes). The VM's ``on_finding``
   hook turns every refused global, call and BUILD into a ``Finding`` and lets
   the run go on; a structural error ends that pickle, and what was found
   before it is kept;
3. when the loader refuses the container or the pickle, *salvages* what it can
   (``_SALVAGE``): chained pickles after the first, the members of a zip that
   is not a torch checkpoint, TorchScript archives, the payload of an object
   ``.npy``, tar members, pickles embedded in archives safeload cannot open.
   Salvage only ever adds findings: a file the loader refuses is never clean.

A verdict is the worst severity found: ``dangerous`` > ``unsafe`` > ``error``
(a ``malformed`` finding: the file, or part of it, could not be scanned) >
``clean``. ``info`` findings never change a verdict. The allowlist decides what
is clean; ``danger.danger_of`` only ranks a refusal as dangerous or unsafe.

Example::

    import safeload
    report = safeload.scan("models/")
    for file in report.files:
        print(file.path, file.verdict, [f.rule_name for f in file.findings])
    exit_code = report.exit_code(fail_on="unsafe")
"""

from __future__ import annotations

import bz2
import lzma
import os
import stat
import struct
import sys
import types
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .allowlist import LoadedStorage, Policy, storage_ref_from_pid
from .danger import danger_of
from .errors import (
    MAX_MESSAGE,
    MAX_NAME,
    FormatError,
    LimitError,
    SafeloadError,
    UnsafeGlobalError,
    printable,
)
from .formats.source import Source
from .formats.zip import TorchScriptArchive
from .limits import DEFAULT_LIMITS, Limits
from .loader import open_container, resolve_policy, run_pickle
from .opcodes import BY_CODE, CALLING, Truncated
from .rebuild import Builder, HostBuilder, check_same_storage, raise_size_mismatch
from .records import StorageRef, TensorRecord
from .unpickler import Opaque, Unpickler

__all__ = [
    "RULES",
    "TensorRow",
    "inspect_file",
    "Finding",
    "FileReport",
    "Report",
    "Rule",
    "ScanBuilder",
    "Skipped",
    "allow_by_name",
    "looks_like_pickle",
    "scan",
    "scan_file",
    "sniff_model",
]

SEVERITIES = ("dangerous", "unsafe", "malformed", "info")
#: verdicts from best to worst; ``error`` ranks below ``unsafe``: exit code 2
#: means "could not be scanned, and nothing worse was found"
VERDICTS = ("clean", "error", "unsafe", "dangerous")
_VERDICT_OF = {"dangerous": "dangerous", "unsafe": "unsafe", "malformed": "error"}


# --- rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One kind of finding: a stable id (SARIF ``ruleId``), a readable name,
    its severity and the text a report shows about it."""

    id: str
    name: str
    severity: str
    short: str
    help: str


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("SL101", "dangerous-global", "dangerous",
             "The pickle names a callable known to run code, touch files or the network.",
             "The file names a global that safeload knows can run commands, evaluate code, "
             "open files or connections, import modules or unpickle a nested payload. "
             "Loading it with torch.load(weights_only=False) or pickle runs it. Do not load "
             "the file; find out where it came from."),
        Rule("SL102", "dangerous-call", "dangerous",
             "The pickle calls a callable known to run code, touch files or the network.",
             "REDUCE / NEWOBJ / INST / OBJ would call a known-dangerous global with the "
             "arguments the file chose. Run `safeload scan --explain` to see the call."),
        Rule("SL103", "call-on-result", "dangerous",
             "The pickle calls the result of another call it made.",
             "Calling what a call returned (getattr(...)(...), attrgetter chains) is how "
             "payloads reach functions that no global names. No real checkpoint does this."),
        Rule("SL104", "build-on-global", "dangerous",
             "BUILD sets attributes on a class or module.",
             "BUILD applied to a global itself (not to an instance) rewrites a class or a "
             "module in the loading process, so that later names resolve to other "
             "callables. No real checkpoint does this."),
        Rule("SL105", "copyreg-extension", "dangerous",
             "The pickle names a global through the copyreg extension registry.",
             "EXT1/EXT2/EXT4 hide the global's name behind a process-wide registry. torch "
             "never writes them; scanners that read names cannot see what they refer to."),
        Rule("SL106", "dangerous-object-state", "dangerous",
             "BUILD sets the state of an object of a known-dangerous class.",
             "Unpickling would run the class's __setstate__ or fill its attributes."),
        Rule("SL201", "unknown-global", "unsafe",
             "The pickle names a global outside safeload's allowlist.",
             "The global is not known to be dangerous, but it is not a tensor, storage or "
             "primitive type either: loading the file imports and runs code from that "
             "module. If you trust the file and the module, allow the name with "
             "`--allow module.name` or `[tool.safeload] allow = [...]` (see --explain)."),
        Rule("SL202", "unknown-call", "unsafe",
             "The pickle calls a global outside safeload's allowlist.",
             "REDUCE / NEWOBJ / INST / OBJ would call the global with the arguments the file "
             "chose. Whole pickled models (torch.save(model)) do this for every layer class."),
        Rule("SL203", "object-state", "unsafe",
             "BUILD sets the state of an object of a class outside the allowlist.",
             "Unpickling would run the class's __setstate__ or set its attributes."),
        Rule("SL204", "torchscript-code", "unsafe",
             "The file is a TorchScript archive: it carries code.",
             "torch.jit.save archives hold TorchScript code (code/ records) that runs when "
             "the module is used. safeload never runs it; load the file with torch.jit.load "
             "only if you trust its source, or ship a state_dict instead."),
        Rule("SL205", "torchscript-global", "unsafe",
             "A TorchScript pickle names a TorchScript type or helper.",
             "TorchScript pickles name __torch__ classes and torch.jit helpers that only "
             "torch.jit.load resolves; they come with the archive's code."),
        Rule("SL206", "polyglot", "unsafe",
             "The file is two formats at once.",
             "A file that different readers see as different formats (a pickle with a zip "
             "appended, a pickle inside another archive's bytes) is built to show a scanner "
             "one thing and a loader another. Every part found was scanned."),
        Rule("SL207", "opaque-archive", "unsafe",
             "An archive safeload does not open holds a pickle.",
             "safeload found pickle data inside an archive format it does not unpack "
             "(7-Zip, RAR, zstd). Unpack it and scan the contents."),
        Rule("SL301", "malformed-container", "malformed",
             "The container (zip, tar, numpy, legacy stream) is not valid.",
             "safeload.load refuses the file. A damaged or hand-made container is also how "
             "files hide content from one reader and show it to another."),
        Rule("SL302", "malformed-pickle", "malformed",
             "The pickle stream is not valid; analysis of that pickle stopped here.",
             "Whatever follows this point was not analysed: the file is never reported "
             "clean. Findings before it are kept."),
        Rule("SL303", "limit-exceeded", "malformed",
             "The file exceeds a safeload.Limits bound.",
             "The loader refuses it; scan it with larger limits only if you trust it. "
             "Compressed data that inflates past its budget (Limits.max_inflate_ratio, "
             "min_inflate_budget, max_inflated_bytes) was scanned only up to it."),
        Rule("SL304", "unreadable", "malformed",
             "The file or an archive member could not be read.",
             "I/O error, an unsupported compression method, an encrypted member, or a "
             "truncated or corrupt compressed stream (what inflated before it is scanned)."),
        Rule("SL401", "container-note", "info",
             "The container holds something the loader notes but never reads.",
             "For example a record torch.load and safeload never read. It does not change "
             "how the checkpoint loads."),
        Rule("SL402", "skipped-members", "info",
             "Archive members that are not model files were not scanned.",
             "Content-sniffed: not zip, pickle, numpy or tar."),
    )
}
RULE_ORDER = list(RULES)


#: Finding fields that carry the file's text, and how much of each is kept
_FINDING_TEXT = (("message", MAX_MESSAGE), ("hint", MAX_MESSAGE), ("member", None),
                 ("opcode", MAX_NAME), ("global_name", MAX_NAME))


@dataclass(frozen=True)
class Finding:
    """One problem, located: ``file``, archive ``member`` (nested archives joined
    with ``!``), byte ``offset`` inside the member (or the file, when there is no
    member), pickle ``opcode`` and the ``global_name`` involved.

    The text fields hold what the file chose (names, members): they pass
    ``errors.printable`` here, once, so every output format shows them escaped
    and bounded. ``file`` is the path as given (outputs escape it where they
    show it: it names a real file)."""

    rule_name: str
    message: str
    file: str
    member: str | None = None
    offset: int | None = None
    opcode: str | None = None
    global_name: str | None = None
    hint: str | None = None
    severity: str = ""

    def __post_init__(self) -> None:
        if not self.severity:
            object.__setattr__(self, "severity", RULES[self.rule_name].severity)
        for name, limit in _FINDING_TEXT:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, printable(value, limit))

    @property
    def rule(self) -> Rule:
        return RULES[self.rule_name]

    @property
    def rule_id(self) -> str:
        return RULES[self.rule_name].id

    @property
    def where(self) -> str:
        """``member @ byte N (OPCODE)``, for text output."""
        parts = []
        if self.member:
            parts.append(self.member)
        if self.offset is not None:
            parts.append(f"byte {self.offset}")
        text = " @ ".join(parts)
        if self.opcode:
            text = f"{text} ({self.opcode})" if text else self.opcode
        return text

    def to_dict(self) -> dict:
        """The stable JSON form (field names documented in the README)."""
        return {
            "rule": self.rule_id,
            "rule_name": self.rule_name,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
            "file": printable(self.file),
            "member": self.member,
            "offset": self.offset,
            "opcode": self.opcode,
            "global": self.global_name,
        }


@dataclass
class Explanation:
    """``--explain`` output for one rejected pickle."""

    member: str | None
    listing: str  # safeload's symbolic listing
    decompiled: str | None = None  # fickling's, when it is installed
    note: str | None = None  # why there is no decompiled listing


@dataclass
class FileReport:
    path: str
    format: str | None = None
    findings: list[Finding] = field(default_factory=list)
    explanations: list[Explanation] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        worst = "clean"
        for finding in self.findings:
            verdict = _VERDICT_OF.get(finding.severity)
            if verdict and VERDICTS.index(verdict) > VERDICTS.index(worst):
                worst = verdict
        return worst

    @property
    def complete(self) -> bool:
        """False when part of the file could not be analysed (a malformed finding)."""
        return not any(f.severity == "malformed" for f in self.findings)

    def unknown_globals(self) -> list[str]:
        """Globals refused only because they are unknown (not dangerous): what an
        ``allow`` list could admit if the user trusts them."""
        names = {f.global_name for f in self.findings
                 if f.rule_name == "unknown-global" and f.global_name}
        return sorted(names)

    def to_dict(self) -> dict:
        counts = {s: 0 for s in SEVERITIES}
        for finding in self.findings:
            counts[finding.severity] += 1
        return {
            "path": printable(self.path),
            "format": self.format,
            "verdict": self.verdict,
            "complete": self.complete,
            "counts": counts,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True)
class Skipped:
    """A file that is not a model file (or not a regular file), with the reason."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": printable(self.path), "reason": printable(self.reason)}


FAIL_ON = ("dangerous", "unsafe")


@dataclass
class Report:
    """Everything one scan found. ``exit_code(fail_on)`` is the CLI's."""

    files: list[FileReport] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self) -> dict:
        verdicts = {v: 0 for v in VERDICTS}
        findings = {s: 0 for s in SEVERITIES}
        for report in self.files:
            verdicts[report.verdict] += 1
            for finding in report.findings:
                findings[finding.severity] += 1
        return {"files": len(self.files), "skipped": len(self.skipped),
                "verdicts": verdicts, "findings": findings}

    def exit_code(self, fail_on: str = "unsafe") -> int:
        """0 all clean; 1 something at or above ``fail_on``; 2 a file could not
        be scanned completely and nothing reached ``fail_on``."""
        if fail_on not in FAIL_ON:
            raise ValueError(f"fail_on must be one of {FAIL_ON}, got {fail_on!r}")
        bar = VERDICTS.index(fail_on)
        if any(VERDICTS.index(r.verdict) >= bar for r in self.files):
            return 1
        if any(not r.complete for r in self.files):
            return 2
        return 0

    def to_dict(self, fail_on: str = "unsafe") -> dict:
        from . import __version__

        return {
            "tool": "safeload",
            "version": __version__,
            "schema_version": 1,
            "fail_on": fail_on,
            "exit_code": self.exit_code(fail_on),
            "summary": self.summary(),
            "files": [r.to_dict() for r in self.files],
            "skipped": [s.to_dict() for s in self.skipped],
        }


# --- content sniffing ----------------------------------------------------------------

_SNIFF_OPS = 4096  # opcodes looked at by looks_like_pickle
_SNIFF_BYTES = 1 << 16
_ARITY = {}  # opcode code -> (pops to MARK?, pops, pushes), from the opcode table
for _op in BY_CODE.values():
    _before = _op.stack_before.split()
    _ARITY[_op.code] = (
        "mark" in _before,
        0 if "mark" in _before else len(_before),
        len(_op.stack_after.split()),
        _before.index("mark") if "mark" in _before else 0,
    )


def looks_like_pickle(data, pos: int = 0) -> bool:
    """Does ``data[pos:]`` look like a pickle? The rule, generous on purpose:

    - it starts with PROTO 2..5 (every pickle torch has written since 2017), or
    - its opcodes, walked with the opcode table's arguments and stack effects,
      reach STOP (or 4096 opcodes, or the end of a 64 KiB window) without an
      unknown opcode, a bad argument or a stack underflow, or
    - they go wrong only *after* a GLOBAL, call or BUILD: pickle would already
      have run something, so the scanner must look.

    Text, images and other binary files fail within their first bytes.

    >>> looks_like_pickle(b"cos\\nsystem\\n(S'ls'\\ntR\\xff")  # junk after a call
    True
    >>> looks_like_pickle(b"Hello, world"), looks_like_pickle(b"\\x89PNG\\r\\n\\x1a\\n")
    (False, False)
    """
    view = memoryview(data)[pos:]
    if len(view) >= 2 and view[0] == 0x80 and 2 <= view[1] <= 5:
        return True
    window = bytes(view[:_SNIFF_BYTES])
    cut = len(view) > len(window)  # running out of the window is not the end
    position, depth, marks, calls = 0, 0, [], False
    for _ in range(_SNIFF_OPS):
        if position >= len(window):
            return calls or cut
        op = BY_CODE.get(window[position])
        if op is None:
            return calls
        try:
            end = op.arg(window, position + 1)[1] if op.arg is not None else position + 1
        except Truncated:
            return calls or cut
        except Exception:  # noqa: BLE001 - a malformed argument: not a pickle here
            return calls
        to_mark, pops, pushes, below_mark = _ARITY[op.code]
        if to_mark:
            if not marks:
                return calls
            depth = marks.pop() - below_mark
        elif op.name == "MARK":
            marks.append(depth)
            depth, pushes = 0, 0
        elif op.name == "POP" and depth == 0 and marks:
            depth = marks.pop()  # POP on an empty stack discards the MARK (as pickle does)
        else:
            depth -= pops
        if depth < 0:
            return calls
        depth += pushes
        if op.name == "STOP":
            return True
        calls = calls or op.name in _CALLING_SNIFF
        position = end
    return True


_CALLING_SNIFF = CALLING | {"GLOBAL", "STACK_GLOBAL"}


def _is_zip(head: bytes) -> bool:
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _is_npy(head: bytes) -> bool:
    return head.startswith(b"\x93NUMPY")


def _is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar" or (len(head) >= 512 and _tar_checksum_ok(head))


def _tar_checksum_ok(head: bytes) -> bool:
    # Pre-POSIX tar headers (torch < 0.4 wrote them) carry no "ustar" magic;
    # their header checksum still identifies them.
    raw = head[148:156].split(b"\0", 1)[0].strip()
    if not raw or not all(48 <= c <= 55 for c in raw):
        return False
    expected = int(raw, 8)
    actual = sum(head[:148]) + 8 * 32 + sum(head[156:512])
    return expected == actual and head[0] != 0


#: content sniffers for model files, tried in order (never the file name)
MODEL_FORMATS: list[tuple[str, Callable[[bytes], bool]]] = [
    ("zip", _is_zip),
    ("npy", _is_npy),
    ("tar", _is_tar),
    ("pickle", looks_like_pickle),
]

class _ZlibStream:
    """zlib's decompressor with the interface of bz2's and lzma's (``needs_input``,
    ``eof``, ``unused_data``), so that one loop drives all three."""

    def __init__(self, wbits: int) -> None:
        self._obj = zlib.decompressobj(wbits)
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self._obj.eof

    @property
    def unused_data(self) -> bytes:
        return self._obj.unused_data

    def decompress(self, data, max_length: int) -> bytes:
        # zlib hands back the input it did not get to instead of keeping it
        out = self._obj.decompress(self._obj.unconsumed_tail or data, max_length)
        # a full output buffer may leave output pending inside zlib: ask again
        self.needs_input = not self._obj.unconsumed_tail and len(out) < max_length
        return out


_XZ_MEMLIMIT = 256 << 20

#: compressed files: (name, magic, a decompressor for one stream). They are
#: inflated within a budget (``_inflate``), every concatenated stream, and the
#: content sniffed again
COMPRESSED: list[tuple[str, bytes, Callable]] = [
    ("gzip", b"\x1f\x8b", lambda: _ZlibStream(16 + zlib.MAX_WBITS)),
    ("bzip2", b"BZh", bz2.BZ2Decompressor),
    # xz headers declare the dictionary the decoder reserves: 256 MiB is 4x the
    # largest preset's; a stream asking for more is unreadable, not inflated
    ("xz", b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(memlimit=_XZ_MEMLIMIT)),
]

#: archives safeload does not unpack: searched for embedded pickles instead
OPAQUE_ARCHIVES: list[tuple[str, bytes]] = [
    ("7z", b"7z\xbc\xaf\x27\x1c"),
    ("rar", b"Rar!\x1a\x07"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
]


def sniff_model(data) -> str | None:
    """The model format ``data`` (a file's bytes, or its first KiB) starts like,
    from ``COMPRESSED``, ``OPAQUE_ARCHIVES`` and ``MODEL_FORMATS``; None when it
    is not a model file.

    >>> sniff_model(b"\\x80\\x02}q\\x00.")
    'pickle'
    >>> sniff_model(b"hello world") is None
    True
    """
    head = bytes(memoryview(data)[:1024])
    for name, magic, _ in COMPRESSED:
        if head.startswith(magic):
            return name
    for name, magic in OPAQUE_ARCHIVES:
        if head.startswith(magic):
            return name
    for name, test in MODEL_FORMATS:
        if test(data if name == "pickle" else head):
            return name
    return None


# --- analysis-mode builder and policy ------------------------------------------------


class ScanBuilder(Builder):
    """The inert builder (records, not arrays), plus the checks the loader's
    ``HostBuilder`` makes on storage records: the record exists, its size
    matches the declared element count, one key is not used with two layouts,
    tensor extents stay inside the storage. It looks at record *sizes* only,
    never at tensor bytes: ``size_of(key)`` is the size of record ``key``. With
    ``size_of=None`` (salvage, TorchScript) there are no records to check against."""

    # The loader's own extent checks, shared rather than rewritten.
    check_extent = HostBuilder.check_extent
    check_qextent = HostBuilder.check_qextent

    def __init__(self, size_of: Callable[[str], int] | None = None, *,
                 file: str | None = None) -> None:
        self.size_of = size_of
        self.file = file
        self.refs: dict[str, StorageRef] = {}

    def storage(self, ref: StorageRef) -> object:
        first = self.refs.get(ref.key)
        if first is not None:
            check_same_storage(first, ref)
            return first
        if self.size_of is not None:
            size = self.size_of(ref.key)  # the record's size: no tensor byte is read
            if size != ref.nbytes:
                raise_size_mismatch(ref, size, self.file)
        self.refs[ref.key] = ref
        return ref

    def tensor(self, rec: TensorRecord) -> object:
        if self.size_of is not None:
            self.check_extent(rec, rec.storage_ref.nbytes)
        return rec

    def qtensor(self, rec: TensorRecord, scheme: str, **params) -> object:
        if self.size_of is not None:
            self.check_qextent(rec, rec.storage_ref.nbytes)
        return super().qtensor(rec, scheme, **params)

    def parameter(self, data, requires_grad: bool) -> object:
        if isinstance(data, Opaque):  # a refused rebuild function: already reported
            return data
        return super().parameter(data, requires_grad)


class _AnalysisPolicy:
    """Wraps the loader's ``Policy`` without changing a decision: it remembers how
    each refused global splits into module and name (to rank it with
    ``danger_of``) and, for ``--explain``, the calls and BUILDs on refused
    values with their arguments."""

    def __init__(self, base, *, trace: bool) -> None:
        self.base = base
        # The VM's hot path calls lookup: bind it, no delegation cost.
        self.lookup = base.lookup
        self.splits: dict[str, tuple[str, str]] = {}
        self.events: list[tuple] | None = [] if trace else None
        if not trace:  # nothing to record: no wrapper on the call path
            self.call = base.call
            self.build = base.build

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def is_hashable_record(self, obj) -> bool:
        # A refused value used as a dict key: the loader stops at the refusal,
        # analysis goes on (an Opaque hashes by identity).
        return type(obj) is Opaque or self.base.is_hashable_record(obj)

    def unsafe_global(self, module: str, name: str) -> UnsafeGlobalError:
        if type(module) is str and type(name) is str:
            self.splits.setdefault(f"{module}.{name}", (module, name))
        return self.base.unsafe_global(module, name)

    def call(self, vm, func, args, kwargs, opname):
        result = self.base.call(vm, func, args, kwargs, opname)
        if self.events is not None and (isinstance(func, Opaque) or isinstance(result, Opaque)):
            self.events.append(("call", vm.op_offset, opname, func, args, kwargs, result))
        return result

    def build(self, vm, target, state) -> None:
        self.base.build(vm, target, state)
        if self.events is not None and isinstance(target, Opaque):
            self.events.append(("build", vm.op_offset, "BUILD", target, state))


def _inert_persistent_load(pid):
    """Persistent ids where no record can be checked (salvage, TorchScript)."""
    ref = storage_ref_from_pid(pid)
    return LoadedStorage(ref, ref)


# --- allow by name -------------------------------------------------------------------


class AllowedByName:
    """Stands for a global the user allowed by name in scan mode. It is inert:
    "calling" it records the arguments, BUILD records the state, nothing else
    happens. ``allow_by_name`` makes one subclass per name."""

    __slots__ = ("args", "state")
    global_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<allowed {self.global_name}>"


def allow_by_name(names: Iterable[str]) -> dict[str, type]:
    """``{name: stand-in}`` for ``Policy.allowing``: the scan-mode meaning of
    ``--allow module.name``. Known-dangerous names are never accepted.

    >>> sorted(allow_by_name(["mypkg.Config"]))
    ['mypkg.Config']
    """
    result: dict[str, type] = {}
    for name in names:
        if not isinstance(name, str) or "." not in name.strip(".") or name != name.strip():
            raise ValueError(f"allow entries are 'module.name' strings, got {name!r}")
        why = _danger_of_full(name, None)
        if why is not None:
            raise ValueError(f"refusing to allow '{name}': it {why}. safeload scan never "
                             "accepts a known-dangerous global")
        short = name.rpartition(".")[2]
        cls = type(short if short.isidentifier() else "Allowed", (AllowedByName,),
                   {"__slots__": (), "global_name": name})
        result[name] = cls
    return result


def _danger_of_full(full: str, split: tuple[str, str] | None) -> str | None:
    """danger_of for a dotted name whose module/name split may be unknown: then
    the most lenient split that still names a module is used for ranking
    (attribute paths after it are what danger_of calls a trick)."""
    if split is not None:
        return danger_of(*split)
    module, _, name = full.rpartition(".")
    return danger_of(module, name) if module else danger_of(full, "")


# --- the scanner ---------------------------------------------------------------------

_MAX_DEPTH = 4  # nested archives
_MAX_CHAIN = 64  # pickles chained in one stream
_MAX_EMBEDDED = 32  # candidate pickles searched in an opaque archive
_EMBEDDED_WINDOW = 64 << 20
_TORCHSCRIPT_PICKLES = (".pkl", ".debug_pkl")
_CALL_OPS = frozenset({"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ"})


def _is_torchscript_name(name: str) -> bool:
    return name.startswith(("__torch__.", "torch.jit._pickle.", "torch.classes."))


@dataclass(frozen=True)
class ScanOptions:
    """What a scan needs besides the paths; small and picklable (workers get it)."""

    allow: tuple[str, ...] = ()
    limits: Limits = DEFAULT_LIMITS
    explain: bool = False
    records: bool | tuple[str, ...] | None = None


class _FileScanner:
    """Scans one file (and what is nested in it); collects its findings."""

    def __init__(self, path: str, policy: Policy, limits: Limits, explain: bool,
                 size: int | None = None) -> None:
        self.path = path
        self.policy = policy
        self.limits = limits
        self.explain = explain
        self.report = FileReport(path)
        self._seen: set[tuple] = set()
        self._inflated = 0  # bytes inflated so far, nested archives included
        # all a file may inflate to: in proportion to its size, like each input
        self._file_budget = (limits.max_inflated_bytes, "max_inflated_bytes")
        if size is not None:
            self._file_budget = min(_proportional_budget(limits, size), self._file_budget)

    # -- findings ----------------------------------------------------------------------

    def add(self, rule: str, message: str, *, member=None, offset=None, opcode=None,
            global_name=None, hint=None) -> None:
        key = (rule, member, offset, opcode, global_name)
        if key in self._seen:  # salvage re-runs pickles the main run already saw
            return
        self._seen.add(key)
        self.report.findings.append(Finding(rule, message, self.path, member, offset,
                                            opcode, global_name, hint))

    def add_error(self, err: BaseException, prefix: str | None) -> None:
        if isinstance(err, UnsafeGlobalError):  # a refusal outside analysis mode
            self._refusal(err, prefix, None, False)
            return
        if isinstance(err, SafeloadError):
            loc = err.location
            rule = "limit-exceeded" if isinstance(err, LimitError) else (
                "malformed-pickle" if loc.opcode is not None else "malformed-container")
            self.add(rule, err.reason, member=_join(prefix, loc.member), offset=loc.offset,
                     opcode=loc.opcode, hint=err.hint)
            return
        # Not reached for the loader's stages (they raise SafeloadError only);
        # kept so that a scanner bug still fails closed.
        self.add("malformed-container", f"internal error: {type(err).__name__}: {err}",
                 member=prefix)

    def _refusal(self, err: UnsafeGlobalError, prefix, analysis, torchscript: bool) -> None:
        loc = err.location
        name = err.global_name or "?"
        splits = analysis.splits if analysis is not None else {}
        opcode = loc.opcode or ""
        is_call = opcode in _CALL_OPS or (opcode == "INST" and err.reason.startswith("INST calls"))
        base = name[:-5] if name.endswith("(...)") else name

        def danger(full: str) -> str | None:
            if torchscript and _is_torchscript_name(full):
                return None
            return _danger_of_full(full, splits.get(full))

        if opcode.startswith("EXT") or base.startswith("<copyreg"):
            rule = "copyreg-extension"
        elif opcode == "BUILD":
            if name.endswith("(...)"):
                rule = "dangerous-object-state" if danger(base) else "object-state"
            else:
                rule = "build-on-global"
        elif is_call:
            if name.endswith("(...)"):
                rule = "call-on-result"
            else:
                rule = "dangerous-call" if danger(name) else "unknown-call"
        elif danger(name):
            rule = "dangerous-global"
        elif torchscript and _is_torchscript_name(name):
            rule = "torchscript-global"
        else:
            rule = "unknown-global"
        message, hint = err.reason, err.hint
        if rule == "unknown-global":
            hint = (f"If you trust this file and {base}, accept it by name: --allow {base} "
                    "(or [tool.safeload] allow); safeload never imports it")
        why = danger(base) if rule != "build-on-global" else None
        if rule in ("dangerous-call", "dangerous-object-state") and why:
            message = f"{message}: it {why}"
        self.add(rule, message, member=_join(prefix, loc.member), offset=loc.offset,
                 opcode=loc.opcode, global_name=base, hint=hint)

    # -- dispatch ----------------------------------------------------------------------

    def scan_source(self, source: Source, prefix: str | None = None, depth: int = 0) -> str | None:
        """Scan one buffer (the file, or an archive member); returns its format,
        or None when it is not a model file."""
        kind = sniff_model(source.view(0, source.size))
        if kind is None:
            return None
        if kind in _COMPRESSED_MAGIC:
            return self._compressed(kind, source, prefix, depth)
        if kind in _OPAQUE_NAMES:
            return kind if self._opaque(kind, source, prefix) else None
        try:
            ckpt = open_container(source, self.limits)
        except TorchScriptArchive:
            self._torchscript(source, prefix)
            return "torchscript"
        except SafeloadError as err:
            self.add_error(err, prefix)
            self._salvage(kind, source, prefix, depth)
            return kind
        for note in ckpt.notes:
            self.add("container-note", f"{note}", member=prefix)
        failure = self._run_checkpoint(ckpt, prefix)
        if failure is not None:
            # What the loader read up to the failure was analysed; look further.
            if ckpt.kind == "npz":  # several pickles: each member on its own
                self._salvage_zip(source, prefix, depth)
            elif kind == "pickle":  # bare or legacy: chained pickles
                self._salvage_pickle(source, prefix, depth)
            else:
                self._sweep_checkpoint(ckpt, prefix, failure)
        return ckpt.kind

    def _analysis(self) -> _AnalysisPolicy:
        return _AnalysisPolicy(self.policy, trace=self.explain)

    def _on_refusal(self, analysis, prefix, torchscript=False) -> Callable:
        def on_finding(err: SafeloadError) -> None:
            if isinstance(err, UnsafeGlobalError):
                self._refusal(err, prefix, analysis, torchscript)
            else:  # not sent by the VM today; kept so nothing is ever dropped
                self.add_error(err, prefix)
        return on_finding

    def _run_checkpoint(self, ckpt, prefix) -> SafeloadError | None:
        """The loader's own run of the checkpoint's pickles, in analysis mode;
        the error that stopped it, or None when it got to the end."""
        analysis = self._analysis()
        builder = ScanBuilder(ckpt.storage_size, file=ckpt.source.name)
        before = len(self.report.findings)
        failure = result = None
        try:
            # the value is only shown by --explain: without it, no walk for bare storages
            result = run_pickle(ckpt, builder, policy=analysis, limits=self.limits,
                                on_finding=self._on_refusal(analysis, prefix),
                                bare=self.explain)
        except SafeloadError as err:
            self.add_error(err, prefix)
            failure = err
        except Exception as err:  # noqa: BLE001 - fail closed on a scanner bug
            self.add_error(err, prefix)
            failure = FormatError(f"internal error: {type(err).__name__}")
        if self.explain and self._refused_since(before):
            stream = self._main_stream(ckpt)
            self._explain(analysis, stream.data if stream else b"",
                          _join(prefix, stream.member if stream else None), result,
                          stream.start if stream else 0, fickling=stream is not None)
        return failure

    @staticmethod
    def _main_stream(ckpt):
        try:
            return ckpt.main_pickle()
        except Exception:  # noqa: BLE001 - containers without one main pickle (npz)
            return None

    def _sweep_checkpoint(self, ckpt, prefix, failure: SafeloadError) -> None:
        stream = self._main_stream(ckpt)
        loc = failure.location
        if stream is None or loc.offset is None or loc.opcode is None:
            return  # the container failed, not the pickle: nothing more to read
        if loc.member != stream.member:
            return
        self._sweep(stream.data, stream.start, loc.offset, _join(prefix, stream.member))

    def _refused_since(self, index: int) -> bool:
        return any(f.severity in ("dangerous", "unsafe") for f in self.report.findings[index:])

    def run_chain(self, data, start: int, member: str | None, *, torchscript=False,
                  refusals_only=False) -> int:
        """Analyse the pickles that start at ``start`` one after the other (legacy
        streams and hand-made files chain them); returns where the last one ended.
        ``refusals_only`` drops structural errors (for guessed offsets)."""
        data = bytes(data)
        pos = start
        for _ in range(_MAX_CHAIN):
            if pos >= len(data) or not looks_like_pickle(data, pos):
                break
            analysis = self._analysis()
            before = len(self.report.findings)
            vm = Unpickler(data, policy=analysis, builder=ScanBuilder(file=self.path),
                           persistent_load=_inert_persistent_load, limits=self.limits,
                           file=self.path, member=member, start=pos,
                           on_finding=self._on_refusal(analysis, None, torchscript))
            result = failure = None
            try:
                result = vm.load(allow_trailing=True)
            except SafeloadError as err:
                failure = err
            except Exception as err:  # noqa: BLE001 - fail closed on a scanner bug
                failure = FormatError(f"internal error: {type(err).__name__}: {err}",
                                      member=member, offset=pos)
            if failure is not None and not refusals_only:
                self.add_error(failure, None)
                if failure.location.offset is not None:
                    self._sweep(data, pos, failure.location.offset, member, torchscript)
            if self.explain and self._refused_since(before):
                self._explain(analysis, data, member, result, pos)
            if failure is not None or vm.pos <= pos:
                return pos
            pos = vm.pos
        return pos

    def _sweep(self, data, start: int, after: int, member, torchscript=False) -> None:
        """Report the globals a pickle names *after* the point where the VM
        stopped (a structural error ends a run; the names behind it still
        count). A linear read with the opcode table, as a denylist scanner does:
        it cannot see through tricks, which is why it only supplements the VM."""
        for offset, opname, module, name in _sweep_globals(bytes(data), start):
            if offset <= after or self.policy.lookup(module, name) is not None:
                continue
            # read straight from the bytes: not checked by the VM, escape it here
            full = printable(f"{module}.{name}", MAX_NAME)
            if torchscript and _is_torchscript_name(full):
                rule, why = "torchscript-global", None
            else:
                why = danger_of(module, name)
                rule = "dangerous-global" if why else "unknown-global"
            message = (f"global '{full}' comes after the point where analysis stopped "
                       "(found by reading the rest of the pickle)")
            self.add(rule, f"{message}: it {why}" if why else message, member=member,
                     offset=offset, opcode=opname, global_name=full)

    # -- salvage -----------------------------------------------------------------------

    def _salvage(self, kind: str, source: Source, prefix, depth: int) -> None:
        handler = _SALVAGE.get(kind)
        if handler is not None:
            handler(self, source, prefix, depth)

    def _salvage_pickle(self, source: Source, prefix, depth: int) -> None:
        data = bytes(source.view(0, source.size))
        end = self.run_chain(data, 0, prefix)
        self._trailing(data, end, prefix, depth)

    def _trailing(self, data, end: int, prefix, depth: int, after: str = "pickle") -> None:
        """Bytes after the last pickle (or zip): another format means a polyglot."""
        if end >= len(data) or end == 0:
            return
        kind = sniff_model(memoryview(data)[end:])
        if kind is None or (kind == "pickle" and after == "pickle"):
            return
        self.add("polyglot", f"a {kind} file starts at byte {end}, after the {after} data: "
                 "the file is two formats at once", member=prefix, offset=end)
        if depth < _MAX_DEPTH:
            self.scan_source(Source(memoryview(data)[end:], self.path), _join(prefix, f"@{end}"),
                             depth + 1)

    def _salvage_zip(self, source: Source, prefix, depth: int) -> None:
        skipped = 0
        for entry in _zip_entries(source.view(0, source.size), self.limits):
            member = _join(prefix, entry.name)
            data = self._entry_data(entry, member)
            if data is None:
                continue
            if depth >= _MAX_DEPTH:
                self.add("unreadable", "archive nested too deeply: not scanned", member=member)
                continue
            if self.scan_source(Source(data, self.path), member, depth + 1) is None:
                skipped += 1
        if skipped:
            self.add("skipped-members", f"{skipped} archive member(s) are not model files",
                     member=prefix)
        end = _zip_archive_end(source.view(0, source.size))
        if end is not None and end < source.size:  # something appended to the archive
            self._trailing(source.view(0, source.size), end, prefix, depth, after="zip")

    def _entry_data(self, entry: _ZipEntry, member: str):
        if entry.problem:
            self.add("unreadable", entry.problem, member=member, offset=entry.header_offset)
            return None
        if entry.method == 0:
            return entry.raw()
        return self._inflate("deflate", entry.raw(), member, entry.header_offset).data

    def _inflate_budget(self, compressed: int) -> tuple[int, str, str]:
        """How many bytes ``compressed`` bytes may inflate to, the ``Limits`` field
        that sets it, and what the bound applies to."""
        own = min(_proportional_budget(self.limits, compressed),
                  (self.limits.max_bytes, "max_bytes"))
        total, field_name = self._file_budget
        left = max(0, total - self._inflated)
        if left < own[0]:
            return left, field_name, f"what is left of the file's budget of {total} bytes"
        return *own, f"the budget for {compressed} compressed bytes"

    def _inflate(self, kind: str, view, member, offset: int | None,
                 magic: bytes | None = None) -> _Inflated:
        """Inflate within the budget; whatever stops it early (the budget, a
        truncated or corrupt stream) is a finding: what was inflated is still
        scanned by the caller, but the input is never reported clean. ``offset``
        locates the finding (None: the compressed byte where inflation stopped)."""
        budget, bound, what = self._inflate_budget(len(view))
        result = _inflate_streams(_DECOMPRESSORS[kind], view, budget, magic)
        inflated = len(result.data)
        self._inflated += inflated
        if offset is None:  # where in the compressed data inflation stopped
            offset = result.consumed
        if result.problem == "budget":
            self.add("limit-exceeded",
                     f"{kind} data inflates to more than {budget} bytes ({what}): "
                     f"inflation stopped after {inflated} bytes, at compressed byte "
                     f"{result.consumed} of {len(view)}; the rest was not scanned",
                     member=member, offset=offset,
                     hint=f"The budget is set by Limits.{bound} ({_BUDGET_RULE}). If the "
                     f"file is trusted, scan it with a larger {bound} (safeload scan "
                     f"--limit {bound}=N, or limits in [tool.safeload])")
        elif result.problem == "truncated":
            self.add("unreadable",
                     f"{kind} data ends before the end of its stream (stream "
                     f"{result.streams}, after {inflated} inflated bytes): the file is "
                     "truncated; what was inflated is scanned, the rest is missing",
                     member=member, offset=offset)
        elif result.problem is not None:
            self.add("unreadable",
                     f"{kind} data could not be inflated past compressed byte "
                     f"{result.consumed} (stream {result.streams}, after {inflated} "
                     f"inflated bytes): {result.problem}; the rest was not scanned",
                     member=member, offset=offset)
        return result

    def _torchscript(self, source: Source, prefix) -> None:
        entries = _zip_entries(source.view(0, source.size), self.limits)
        code = [e.name for e in entries if "/code/" in f"/{e.name}" and
                not e.name.endswith(_TORCHSCRIPT_PICKLES)]
        shown = ", ".join(code[:5]) + (f" and {len(code) - 5} more" if len(code) > 5 else "")
        self.add("torchscript-code",
                 "TorchScript archive (torch.jit.save): it carries code that runs when the "
                 f"module is used ({len(code)} code record(s): {shown or 'none listed'})",
                 member=prefix, hint="load it with torch.jit.load only if you trust its "
                 "source; ask for a state_dict instead")
        for entry in entries:
            if not entry.name.endswith(_TORCHSCRIPT_PICKLES):
                continue
            member = _join(prefix, entry.name)
            data = self._entry_data(entry, member)
            if data is not None:
                self.run_chain(data, 0, member, torchscript=True)

    def _salvage_npy(self, source: Source, prefix, depth: int) -> None:
        data = source.view(0, source.size)
        start = _npy_payload(data)
        if start is not None:
            self.run_chain(data, start, prefix)

    def _salvage_tar(self, source: Source, prefix, depth: int) -> None:
        for name, start, size in _tar_members(source.view(0, source.size), self.limits):
            member = _join(prefix, name)
            view = source.view(start, size)
            if looks_like_pickle(view):
                self.run_chain(view, 0, member)
            elif sniff_model(view) not in (None, "pickle"):
                if depth >= _MAX_DEPTH:  # never skip a model member silently
                    self.add("unreadable", "archive nested too deeply: not scanned",
                             member=member)
                else:
                    self.scan_source(Source(view, self.path), member, depth + 1)

    def _compressed(self, kind: str, source: Source, prefix, depth: int) -> str | None:
        if depth >= _MAX_DEPTH:  # inflating it would be for nothing: never skip it silently
            self.add("unreadable", f"{kind} data nested too deeply: not scanned", member=prefix)
            return kind
        before = len(self.report.findings)
        view = source.view(0, source.size)
        inflated = self._inflate(kind, view, prefix, None, _COMPRESSED_MAGIC[kind])
        inner = None
        if inflated.data:
            inner = self.scan_source(Source(inflated.data, self.path),
                                     _join(prefix, f"<{kind}>"), depth + 1)
        if inflated.problem is None:
            self._trailing(view, inflated.end, prefix, depth, after=kind)
        if inner is not None:
            return f"{kind}+{inner}"
        # not a model file inside, unless something was found on the way
        return kind if len(self.report.findings) > before else None

    def _opaque(self, kind: str, source: Source, prefix) -> bool:
        """Search an archive safeload cannot open for pickles (stored members show
        up verbatim). Returns whether one was found."""
        data = bytes(source.view(0, min(source.size, _EMBEDDED_WINDOW)))
        found = False
        start = 0
        for _ in range(_MAX_EMBEDDED):
            candidates = [data.find(bytes((0x80, p)), start) for p in (2, 3, 4, 5)]
            candidates = [c for c in candidates if c >= 0]
            if not candidates:
                break
            at = min(candidates)
            before = len(self.report.findings)
            end = self.run_chain(data, at, prefix, refusals_only=True)
            if len(self.report.findings) > before:
                if not found:
                    self.add("opaque-archive",
                             f"a {kind} archive (not unpacked by safeload) holds pickle data "
                             f"at byte {at}", member=prefix, offset=at)
                found = True
            start = max(end, at + 2)
        return found

    def _explain(self, analysis, data, member, result, start, *, fickling=True) -> None:
        from .explain import explain_pickle

        self.report.explanations.append(
            explain_pickle(analysis.events or [], bytes(data), member, result, start,
                           fickling=fickling))


_COMPRESSED_MAGIC = {name: magic for name, magic, _ in COMPRESSED}
#: a decompressor for one stream, by format ("deflate": zip members)
_DECOMPRESSORS: dict[str, Callable] = {name: new for name, _, new in COMPRESSED}
_DECOMPRESSORS["deflate"] = lambda: _ZlibStream(-zlib.MAX_WBITS)
_BUDGET_RULE = ("min(max(max_inflate_ratio x compressed size, min_inflate_budget), "
                "max_bytes, what is left of the file's max_inflated_bytes)")
_OPAQUE_NAMES = {name for name, _ in OPAQUE_ARCHIVES}

#: what to salvage when the loader refuses a format (findings only get added)
_SALVAGE: dict[str, Callable] = {
    "pickle": _FileScanner._salvage_pickle,
    "zip": _FileScanner._salvage_zip,
    "npy": _FileScanner._salvage_npy,
    "tar": _FileScanner._salvage_tar,
}


def _join(prefix: str | None, member: str | None) -> str | None:
    if prefix is None:
        return member
    if member is None:
        return prefix
    return f"{prefix}!{member}"


def _proportional_budget(limits: Limits, size: int) -> tuple[int, str]:
    """max(ratio x ``size``, floor), and which of the two it is."""
    scaled = limits.max_inflate_ratio * size
    if scaled >= limits.min_inflate_budget:
        return scaled, "max_inflate_ratio"
    return limits.min_inflate_budget, "min_inflate_budget"


_INFLATE_CHUNK = 1 << 20  # compressed bytes fed, and inflated bytes asked for, at once
#: what a decompressor raises on bytes that are not a valid stream
_INFLATE_ERRORS = (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError)


@dataclass
class _Inflated:
    """What ``_inflate_streams`` made of a compressed input: the bytes inflated
    (all of them only when ``problem`` is None), where the last stream ended in
    the input, and how many streams there were."""

    data: bytearray
    end: int  # after the last stream and its zero padding: trailing data starts here
    streams: int
    problem: str | None = None  # "budget", "truncated" or the decompressor's error
    consumed: int = 0  # input bytes read when inflation stopped


def _inflate_streams(new: Callable, view, budget: int, magic: bytes | None) -> _Inflated:
    """Inflate ``view`` with decompressors from ``new``, fed and drained one chunk
    at a time, so that memory is the output so far plus a chunk, and stop as
    soon as the output passes ``budget``. With ``magic``, a stream may be
    followed by more streams (after zero padding), as gzip, bzip2 and xz allow."""
    view = memoryview(view)
    size = len(view)
    out = bytearray()
    pos = streams = 0
    while True:
        obj = new()
        streams += 1
        try:
            while not obj.eof:
                if obj.needs_input:
                    if pos >= size:
                        return _Inflated(out, pos, streams, "truncated", pos)
                    feed = view[pos : pos + _INFLATE_CHUNK]
                    pos += len(feed)
                else:  # output is pending: drain it before more input
                    feed = b""
                out += obj.decompress(feed, min(_INFLATE_CHUNK, budget + 1 - len(out)))
                if len(out) > budget:
                    del out[budget:]
                    return _Inflated(out, pos, streams, "budget", pos)
        except _INFLATE_ERRORS as exc:
            return _Inflated(out, pos, streams, f"{type(exc).__name__}: {exc}", pos)
        end = pos - len(obj.unused_data)  # where this stream ended
        if magic is None:
            return _Inflated(out, end, streams, None, pos)
        following = _skip_zeros(view, end)
        if bytes(view[following : following + len(magic)]) != magic:
            return _Inflated(out, following, streams, None, pos)
        pos = following


def _skip_zeros(view: memoryview, pos: int) -> int:
    """The first offset at or after ``pos`` that is not a zero byte (stream padding)."""
    while pos < len(view):
        chunk = bytes(view[pos : pos + _INFLATE_CHUNK])
        rest = chunk.lstrip(b"\0")
        if rest:
            return pos + len(chunk) - len(rest)
        pos += len(chunk)
    return pos


# --- containers the loader refuses: read leniently, for findings only ----------------


@dataclass
class _ZipEntry:
    name: str
    header_offset: int
    data_offset: int
    method: int
    flags: int
    compressed_size: int | None
    buffer: memoryview
    problem: str | None = None

    def raw(self) -> memoryview:
        """The member's bytes as stored (compressed, for a deflated member)."""
        end = len(self.buffer) if self.compressed_size is None else \
            min(len(self.buffer), self.data_offset + self.compressed_size)
        return self.buffer[self.data_offset : end]


_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<IHHHHIIH")


def _zip_entries(buffer: memoryview, limits: Limits) -> list[_ZipEntry]:
    """Every member a reader could see: those of the central directory *and*
    those found by walking local headers from byte 0 (a zip that disagrees with
    itself shows different members to different readers). Lenient on purpose:
    the loader has already refused the archive; this only feeds findings."""
    entries: dict[int, _ZipEntry] = {}
    size = len(buffer)

    def local_entry(header: int, fallback_name: str | None = None, csize=None):
        if header < 0 or header + 30 > size or len(entries) >= limits.max_records:
            return None
        sig, _, flags, method, _, _, _, local_csize, _, n, e = _LOCAL.unpack_from(buffer, header)
        if sig != 0x04034B50:
            return None
        data = header + 30 + n + e
        name = _decode_name(bytes(buffer[header + 30 : header + 30 + n]), flags) or fallback_name
        if csize is None and not (flags & 0x08 and local_csize == 0):
            csize = local_csize
        problem = None
        if method not in (0, 8):
            problem = f"compression method {method} is not supported: member not scanned"
        elif flags & 0x41 and method == 8:
            problem = "member is encrypted: not scanned"
        return _ZipEntry(name or f"<member at {header}>", header, data, method, flags,
                         csize, buffer, problem)

    # The central directory, wherever the last end record says it is.
    tail_start = max(0, size - (1 << 16) - 22)
    tail = bytes(buffer[tail_start:])
    end = tail.rfind(b"PK\x05\x06")
    if end >= 0 and end + 22 <= len(tail):
        _, _, _, _, count, _, cd_offset, _ = _EOCD.unpack_from(tail, end)
        pos = cd_offset
        for _ in range(min(count, limits.max_records)):
            if pos + 46 > size:
                break
            fields = _CENTRAL.unpack_from(buffer, pos)
            if fields[0] != 0x02014B50:
                break
            flags, csize = fields[3], fields[8]
            n, e, c, header = fields[10], fields[11], fields[12], fields[16]
            name = _decode_name(bytes(buffer[pos + 46 : pos + 46 + n]), flags)
            if csize == 0xFFFFFFFF or header == 0xFFFFFFFF:
                csize, header = _zip64(bytes(buffer[pos + 46 + n : pos + 46 + n + e]),
                                       fields[9], csize, header)
            entry = local_entry(header, name, csize)
            if entry is not None:
                entry.name = name or entry.name  # the directory's name is what torch reads
                entries.setdefault(entry.data_offset, entry)
            pos += 46 + n + e + c
    # The local headers, one after the other from byte 0.
    pos = 0
    while pos + 30 <= size and len(entries) < limits.max_records:
        entry = local_entry(pos)
        if entry is None:
            break
        entries.setdefault(entry.data_offset, entry)
        if entry.compressed_size is None:
            break  # a streamed member of unknown size: the directory is the only guide
        pos = entry.data_offset + entry.compressed_size
        if entry.flags & 0x08:  # skip the data descriptor
            pos += 16 if bytes(buffer[pos : pos + 4]) == b"PK\x07\x08" else 12
    return [entries[k] for k in sorted(entries)]


def _zip_archive_end(buffer: memoryview) -> int | None:
    """Where the last end-of-central-directory record (and its comment) ends."""
    tail_start = max(0, len(buffer) - (1 << 16) - 22)
    tail = bytes(buffer[tail_start:])
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or end + 22 > len(tail):
        return None
    comment = struct.unpack_from("<H", tail, end + 20)[0]
    return min(len(buffer), tail_start + end + 22 + comment)


def _zip64(extra: bytes, usize: int, csize: int, header: int) -> tuple[int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if tag == 1:
            values = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
            it = iter(values)
            if usize == 0xFFFFFFFF:
                next(it, None)
            if csize == 0xFFFFFFFF:
                csize = next(it, csize)
            if header == 0xFFFFFFFF:
                header = next(it, header)
            break
        pos += 4 + length
    return csize, header


def _decode_name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")


def _npy_payload(data) -> int | None:
    """Offset of the pickle in an object-dtype ``.npy``, else None."""
    head = bytes(data[:12])
    if len(head) < 10 or not head.startswith(b"\x93NUMPY"):
        return None
    if head[6] == 1:
        length, start = struct.unpack_from("<H", head, 8)[0], 10
    elif len(head) >= 12:
        length, start = struct.unpack_from("<I", head, 8)[0], 12
    else:
        return None
    header = bytes(data[start : start + min(length, 1 << 16)])
    if b"O" not in header.split(b"descr", 1)[-1][:32]:
        return None
    return start + length


def _tar_members(buffer: memoryview, limits: Limits) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular member: header parsing only,
    nothing is extracted."""
    pos, count = 0, 0
    while pos + 512 <= len(buffer) and count < limits.max_records:
        header = bytes(buffer[pos : pos + 512])
        if header == b"\0" * 512:
            break
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        raw_size = header[124:136].split(b"\0", 1)[0].strip() or b"0"
        try:
            size = int(raw_size, 8)
        except ValueError:
            return
        kind = header[156:157]
        start = pos + 512
        if start + size > len(buffer):
            size = len(buffer) - start
        if kind in (b"0", b"\0"):
            yield name, start, size
        count += 1
        pos = start + (size + 511) // 512 * 512


_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE",
                         "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_SWEEP_OPS = 10_000_000


def _sweep_globals(data: bytes, start: int) -> Iterator[tuple[int, str, str, str]]:
    """(offset, opcode, module, name) of each GLOBAL / INST / STACK_GLOBAL in the
    pickle at ``start``, read linearly: strings are tracked on an approximate
    stack and through the memo, so the usual STACK_GLOBAL operands resolve."""
    import _compat_pickle

    recent: list[object] = []
    memo: dict[int, object] = {}
    pos, proto = start, 0
    for _ in range(_SWEEP_OPS):
        if pos >= len(data):
            return
        op = BY_CODE.get(data[pos])
        if op is None:
            return
        try:
            arg, end = op.arg(data, pos + 1) if op.arg is not None else (None, pos + 1)
        except Exception:  # noqa: BLE001 - a bad argument ends the read
            return
        name = op.name
        found = None
        if name in ("GLOBAL", "INST"):
            found = arg
        elif name == "STACK_GLOBAL":
            found = (recent[-2], recent[-1]) if len(recent) >= 2 else None
            del recent[-2:]
        elif name in _STRING_OPS:
            recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name in _PUT_OPS:
            memo[arg] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in _GET_OPS:
            recent.append(memo.get(arg))
        elif name == "PROTO":
            proto = arg
        elif name == "STOP":
            return
        elif op.stack_after:
            recent.append(None)
        if found is not None and all(isinstance(x, str) for x in found):
            module, attr = found
            if proto < 3:  # pickle's fix_imports, as the VM applies it
                if (module, attr) in _compat_pickle.NAME_MAPPING:
                    module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
                elif module in _compat_pickle.IMPORT_MAPPING:
                    module = _compat_pickle.IMPORT_MAPPING[module]
            yield pos, name, module, attr
        if name in ("GLOBAL", "INST", "STACK_GLOBAL"):
            recent.append(None)
        del recent[:-64]
        pos = end


# --- inspect ------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRow:
    """One tensor of a checkpoint, from its records alone (no data read)."""

    name: str  # path in the structure: dict keys and list indices joined by "/"
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    storage: str
    location: str
    kind: str = "tensor"  # "tensor", "parameter", "quantized" or "storage"

    def __post_init__(self) -> None:
        for name in ("name", "dtype", "storage", "location"):  # the file's text
            object.__setattr__(self, name, printable(getattr(self, name)))

    def cells(self) -> tuple[str, ...]:
        dtype = self.dtype if self.kind == "tensor" else f"{self.dtype} ({self.kind})"
        return (self.name, dtype, "[" + ", ".join(map(str, self.shape)) + "]",
                str(self.nbytes), self.storage, self.location)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "bytes": self.nbytes, "storage": self.storage, "location": self.location,
                "kind": self.kind}


def inspect_file(path, *, policy: Policy | None = None, allow=None, records=None,
                 limits: Limits | None = None) -> tuple[list[TensorRow], FileReport]:
    """The tensors of a checkpoint (name, dtype, shape, bytes, storage record,
    location) from the inert builder, and the file's scan report.

    >>> rows, report = inspect_file("examples/tiny_cnn.pt")   # doctest: +SKIP
    >>> rows[0].name, rows[0].dtype, rows[0].shape             # doctest: +SKIP
    ('conv.weight', 'float32', (4, 1, 3, 3))
    """
    path = os.fspath(path)
    limits = limits or DEFAULT_LIMITS
    scanner = _FileScanner(path, _policy_for(policy, allow, records), limits, False)
    rows: list[TensorRow] = []
    with Source.open(path, mmap=True) as source:
        try:
            ckpt = open_container(source, limits)
        except TorchScriptArchive:
            scanner._torchscript(source, None)
            return rows, scanner.report
        except SafeloadError as err:
            scanner.add_error(err, None)
            return rows, scanner.report
        scanner.report.format = ckpt.kind
        analysis = scanner._analysis()
        try:
            value = run_pickle(ckpt, ScanBuilder(ckpt.storage_size, file=path), policy=analysis,
                               limits=limits, on_finding=scanner._on_refusal(analysis, None))
        except SafeloadError as err:
            scanner.add_error(err, None)
            return rows, scanner.report
    _collect_tensors(value, rows)
    return rows, scanner.report


def _collect_tensors(value: object, rows: list[TensorRow]) -> None:
    from .records import QuantizedTensor, StorageView

    seen: set[int] = set()
    todo: list[tuple[str, object]] = [("", value)]
    while todo:
        name, item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        kind = "tensor"
        if isinstance(item, QuantizedTensor) and isinstance(item.int_repr, TensorRecord):
            item, kind = item.int_repr, "quantized"
        if isinstance(item, TensorRecord):
            ref = item.storage_ref
            rows.append(TensorRow(name or "<root>", item.dtype.name, tuple(item.shape),
                                  item.nbytes, ref.key, ref.location,
                                  "parameter" if item.is_parameter else kind))
            continue
        if isinstance(item, (StorageRef, StorageView)):  # saved by itself, not as a tensor
            ref = item if isinstance(item, StorageRef) else item.storage
            rows.append(TensorRow(name or "<root>", ref.dtype.name, (item.numel,),
                                  item.nbytes, ref.key, ref.location, "storage"))
            continue
        if type(item).__name__ == "ndarray" and type(item).__module__ == "numpy":
            # numpy values (an .npy, arrays inside a pickle): data in place
            rows.append(TensorRow(name or "<root>", str(item.dtype), tuple(item.shape),
                                  int(item.nbytes), "-", "-", "array"))
            continue
        if isinstance(item, dict):
            children = [(str(k) if isinstance(k, (str, int)) else repr(k), v)
                        for k, v in item.items()]
        elif isinstance(item, (list, tuple)):
            children = [(str(i), v) for i, v in enumerate(item)]
        else:
            children = []
        for key, child in reversed(children):
            todo.append((f"{name}/{key}" if name else key, child))


# --- entry points --------------------------------------------------------------------


def _policy_for(policy: Policy | None, allow, records=None) -> Policy:
    """The loader's ``resolve_policy``, where ``allow`` may also hold names
    (accepted by name in scan mode, never imported)."""
    if isinstance(allow, Mapping) or allow is None:
        names, objects = [], allow
    else:
        allow = list(allow)
        names = [a for a in allow if isinstance(a, str)]
        objects = [a for a in allow if not isinstance(a, str)] or None
    base = resolve_policy(policy, objects, records)
    return base.allowing(allow_by_name(names)) if names else base


def scan_file(path, *, policy: Policy | None = None, allow=None, records=None,
              limits: Limits | None = None, explain: bool = False) -> FileReport | Skipped:
    """Scan one file. Returns a ``FileReport``, or ``Skipped`` for a file that is
    not a model file (content-sniffed) or not a regular file.

    ``policy``, ``allow`` and ``records`` are what ``safeload.load`` takes, and
    mean the same (``allow`` may also hold names, ``"mypkg.Config"``: accepted
    by name, never imported). ``explain=True`` adds ``--explain`` listings.

    >>> import safeload, tempfile, os
    >>> with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
    ...     _ = f.write(b"cos\\nsystem\\n(S'echo pwned'\\ntR.")
    >>> safeload.scan_file(f.name).verdict
    'dangerous'
    >>> os.unlink(f.name)
    """
    path = os.fspath(path)
    limits = limits or DEFAULT_LIMITS
    resolved = _policy_for(policy, allow, records)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _unreadable(path, exc)
    if not stat.S_ISREG(mode):
        return Skipped(path, "not a regular file")
    try:
        source = Source.open(path, mmap=True)
    except (OSError, ValueError) as exc:
        try:  # files that cannot be mapped (some pseudo file systems): read them
            source = Source.open(path)
        except OSError:
            return _unreadable(path, exc)
    scanner = _FileScanner(path, resolved, limits, explain, source.size)
    try:
        if source.size == 0:
            return Skipped(path, "empty file")
        try:
            kind = scanner.scan_source(source)
        except (MemoryError, RecursionError) as exc:
            scanner.add("limit-exceeded", f"the file is too large or deep to scan: "
                        f"{type(exc).__name__}")
            kind = "unknown"
        except Exception as exc:  # noqa: BLE001 - a scanner bug must still fail closed
            scanner.add("malformed-container",
                        f"internal error while scanning: {type(exc).__name__}: {exc}")
            kind = "unknown"
        if kind is None:
            return Skipped(path, "not a model file (content is not zip, pickle, numpy, tar "
                           "or a compressed or archived model file)")
        scanner.report.format = kind
        return scanner.report
    finally:
        source.close()


def _unreadable(path: str, exc: BaseException) -> FileReport:
    report = FileReport(path)
    report.findings.append(Finding("unreadable", f"cannot read the file: {exc}", path))
    return report


_SKIP_DIRS = frozenset({".git", ".hg", ".svn"})


def iter_paths(paths: Sequence) -> Iterator[str]:
    """Files to scan, in a stable order: each argument in turn, directories
    walked recursively (sorted; symlinked directories are not followed; VCS
    metadata directories .git, .hg, .svn are not entered)."""
    seen: set[str] = set()
    for arg in paths:
        arg = os.fspath(arg)
        if os.path.isdir(arg):
            for root, dirs, files in os.walk(arg):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
                for name in sorted(files):
                    full = os.path.join(root, name)
                    real = os.path.realpath(full)
                    if real not in seen:
                        seen.add(real)
                        yield full
        else:
            real = os.path.realpath(arg)
            if real not in seen:
                seen.add(real)
                yield arg


def _scan_worker(path: str, options: ScanOptions) -> FileReport | Skipped:
    records = list(options.records) if isinstance(options.records, tuple) else options.records
    return scan_file(path, allow=list(options.allow) or None, records=records,
                     limits=options.limits, explain=options.explain)


def scan(paths, *, policy: Policy | None = None, allow=None, records=None,
         limits: Limits | None = None, explain: bool = False, jobs: int = 1,
         progress: Callable[[int, int], None] | None = None) -> Report:
    """Scan files and directories (recursively, content-sniffed) and return a
    ``Report``. ``jobs > 1`` scans in worker processes (names in ``allow`` only;
    a custom ``policy`` object or allowed objects scan in this process).
    ``progress(done, total)`` is called after each file.

    >>> import safeload
    >>> report = safeload.scan("examples/")                  # doctest: +SKIP
    >>> report.exit_code(), [(f.path, f.verdict) for f in report.files]  # doctest: +SKIP
    (1, [('examples/poisoned.pt', 'dangerous'), ('examples/tiny_cnn.pt', 'clean')])
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = list(iter_paths(paths))
    results: list[FileReport | Skipped | None] = [None] * len(files)
    names_only = allow is None or (not isinstance(allow, Mapping)
                                   and all(isinstance(a, str) for a in allow))
    if jobs > 1 and len(files) > 1 and policy is None and names_only:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if records is not None and not isinstance(records, bool):
            records = tuple(records)
        options = ScanOptions(tuple(allow or ()), limits or DEFAULT_LIMITS, explain, records)
        _policy_for(None, options.allow, records)  # bad settings fail here, not per worker
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_scan_worker, path, options): i
                       for i, path in enumerate(files)}
            for done, future in enumerate(as_completed(futures), 1):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(done, len(files))
    else:
        resolved = _policy_for(policy, allow, records)
        for i, path in enumerate(files):
            results[i] = scan_file(path, policy=resolved, limits=limits, explain=explain)
            if progress is not None:
                progress(i + 1, len(files))
    report = Report()
    for result in results:
        if isinstance(result, Skipped):
            report.skipped.append(result)
        else:
            report.files.append(result)
    return report



class _CallableModule(types.ModuleType):
    """``safeload.scan`` names the function; importing this submodule makes the
    package attribute the module instead. So the module calls through too."""

    def __call__(self, *args, **kwargs) -> Report:
        return scan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
