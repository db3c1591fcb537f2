"""The ``safeload`` command: ``scan`` (the CI gate), ``inspect`` and ``convert``.

Strategy: argparse subcommands, each a function from parsed arguments to an
exit code; ``COMMANDS`` is the table. ``scan`` builds the policy from
``[tool.safeload]`` (``safeload.config``) plus ``--allow``, calls
``safeload.scan`` and renders the ``Report`` with one of ``FORMATTERS`` (text,
json, sarif). Machine formats go to stdout or ``-o`` untouched: colours only
for text on a terminal, the progress bar only on a terminal's stderr and only
for text output. No third-party dependency.

Output never fails on an encoding: what the file chose is escaped
(``errors.printable``) before it gets here, and stdout / stderr write with
``backslashreplace``, so a file name an ASCII terminal cannot show comes out
escaped rather than as a traceback.

Exit codes of ``scan``: 0 all clean, 1 something at or above ``--fail-on``
(unsafe by default), 2 a file could not be scanned completely and nothing
reached the bar (also: usage and configuration errors).

Example::

    safeload scan models/ --format sarif -o safeload.sarif
    safeload scan model.ckpt --explain
    safeload inspect model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

from .errors import printable
from .scan import FAIL_ON, FileReport, Report

__all__ = ["main"]

USAGE_ERROR = 2


# --- colours and progress ------------------------------------------------------------

_STYLES = {
    "dangerous": "\x1b[1;31m",
    "unsafe": "\x1b[33m",
    "malformed": "\x1b[35m",
    "error": "\x1b[35m",
    "info": "\x1b[2m",
    "clean": "\x1b[32m",
    "skipped": "\x1b[2m",
    "bold": "\x1b[1m",
}
_RESET = "\x1b[0m"


def _use_colour(stream) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _Paint:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, style: str, text: str) -> str:
        if not self.enabled or style not in _STYLES:
            return text
        return f"{_STYLES[style]}{text}{_RESET}"


class Progress:
    """A one-line progress bar on a terminal's stderr, shown only once a scan
    has taken more than ``delay`` seconds or has many files; nothing otherwise."""

    def __init__(self, stream, *, enabled: bool, delay: float = 1.0, many: int = 200) -> None:
        self.stream = stream
        self.enabled = enabled and bool(getattr(stream, "isatty", lambda: False)())
        self.delay = delay
        self.many = many
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.shown and now - self.start < self.delay and total < self.many:
            return
        if self.shown and now - self.last < 0.1 and done < total:
            return
        width = 30
        filled = width * done // max(total, 1)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} files")
        self.stream.flush()
        self.shown, self.last = True, now

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# --- text output ---------------------------------------------------------------------

_MAX_TEXT_FINDINGS = 100
_MAX_FICKLING_LINES = 60


def _snippet_names(file: FileReport) -> list[str]:
    """Unknown globals worth an allow snippet: none when the file is dangerous
    anyway (allowing names would not make it pass, and should not)."""
    return [] if file.verdict == "dangerous" else file.unknown_globals()


def format_text(report: Report, fail_on: str, *, colour: bool = False,
                quiet: bool = False) -> str:
    """Findings grouped per file, then a summary line."""
    paint = _Paint(colour)
    out: list[str] = []
    for file in report.files:
        verdict = file.verdict
        if quiet and verdict == "clean":
            continue
        label = paint(verdict, f"{verdict.upper():<9}")
        out.append(f"{label}  {printable(file.path)}"
                   + (f"  ({file.format})" if file.format else ""))
        for finding in file.findings[:_MAX_TEXT_FINDINGS]:
            where = f"  {finding.where}" if finding.where else ""
            sev = paint(finding.severity, f"[{finding.severity}]")
            out.append(f"  {sev} {finding.rule_id} {finding.rule_name}{where}")
            out.append(f"      {finding.message}")
            if finding.hint:
                out.append(f"      hint: {finding.hint}")
        extra = len(file.findings) - _MAX_TEXT_FINDINGS
        if extra > 0:
            out.append(f"  ... and {extra} more findings (see --format json)")
        out.extend(_explanations_text(file, paint))
    if not quiet:
        for skipped in report.skipped:
            out.append(f"{paint('skipped', 'skipped  ')}  {printable(skipped.path)}: "
                       f"{printable(skipped.reason)}")
    out.append(_summary_line(report, fail_on, paint))
    return "\n".join(out) + "\n"


def _explanations_text(file: FileReport, paint) -> list[str]:
    if not file.explanations:
        return []
    from .config import snippet_for

    lines = []
    for explanation in file.explanations:
        lines.append("")
        lines.extend("    " + line for line in explanation.listing.splitlines())
        if explanation.decompiled:
            lines.append(f"    # fickling's decompilation of {explanation.member or 'the file'}:")
            decompiled = explanation.decompiled.splitlines()
            lines.extend("    " + line for line in decompiled[:_MAX_FICKLING_LINES])
            if len(decompiled) > _MAX_FICKLING_LINES:
                lines.append(f"    # ... {len(decompiled) - _MAX_FICKLING_LINES} more lines "
                             "(--format json has them all)")
        elif explanation.note:
            lines.append(f"    # ({explanation.note})")
    unknown = _snippet_names(file)
    if unknown:
        lines.append("")
        lines.append("    # If you trust this file, these globals are unknown but not known to be")
        lines.append("    # dangerous; this pyproject.toml table accepts them in safeload scan:")
        lines.extend("    " + line for line in snippet_for(unknown).rstrip("\n").splitlines())
    lines.append("")
    return lines


def _summary_line(report: Report, fail_on: str, paint) -> str:
    summary = report.summary()
    verdicts = summary["verdicts"]
    parts = [paint(v, f"{verdicts[v]} {v}") for v in ("dangerous", "unsafe", "error", "clean")
             if verdicts[v]]
    text = f"safeload scan: {summary['files']} file(s) scanned"
    if parts:
        text += ": " + ", ".join(parts)
    if summary["skipped"]:
        text += f"; {summary['skipped']} skipped (not model files)"
    text += f"; exit code {report.exit_code(fail_on)} (--fail-on {fail_on})"
    return text


def format_json(report: Report, fail_on: str, **_) -> str:
    data = report.to_dict(fail_on)
    for entry, file in zip(data["files"], report.files, strict=True):
        if file.explanations:
            from .config import snippet_for

            entry["explanations"] = [
                {"member": e.member, "listing": e.listing, "decompiled": e.decompiled,
                 "note": e.note} for e in file.explanations
            ]
            unknown = _snippet_names(file)
            entry["allow_snippet"] = snippet_for(unknown) if unknown else None
    return json.dumps(data, indent=2) + "\n"


def format_sarif(report: Report, fail_on: str, **_) -> str:
    from .sarif import to_sarif

    return json.dumps(to_sarif(report, fail_on), indent=2) + "\n"


FORMATTERS: dict[str, Callable[..., str]] = {
    "text": format_text,
    "json": format_json,
    "sarif": format_sarif,
}


# --- commands ------------------------------------------------------------------------


def _error(message: str) -> int:
    print(f"safeload: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _configuration(args) -> tuple[dict, list[str]] | int:
    """(config, allow names) from [tool.safeload] and --allow; an exit code on error."""
    from .config import DEFAULTS, ConfigError, load_config

    try:
        config = dict(DEFAULTS) if args.no_config else load_config(os.getcwd())
    except ConfigError as exc:
        return _error(str(exc))
    allow = list(config.get("allow") or []) + list(args.allow or [])
    return config, allow


def _limits(config: dict, options: list[str]):
    """safeload's default Limits with [tool.safeload] limits, then --limit
    NAME=VALUE, applied; None when nothing changes; an exit code on error."""
    from dataclasses import replace

    from .config import parse_limit
    from .limits import DEFAULT_LIMITS

    changes = dict(config.get("limits") or {})
    for option in options:
        name, sep, value = option.partition("=")
        if not sep:
            return _error(f"--limit takes NAME=VALUE, got {option!r}")
        try:
            changes[name.strip()] = parse_limit(name.strip(), value)
        except ValueError as exc:
            return _error(f"--limit: {exc}")
    return replace(DEFAULT_LIMITS, **changes) if changes else None


def cmd_scan(args) -> int:
    from .scan import scan

    configured = _configuration(args)
    if isinstance(configured, int):
        return configured
    config, allow = configured
    fail_on = args.fail_on or config.get("fail_on") or "unsafe"
    if fail_on not in FAIL_ON:
        return _error(f"--fail-on must be one of {', '.join(FAIL_ON)}")
    limits = _limits(config, args.limit or [])
    if isinstance(limits, int):
        return limits
    missing = [p for p in args.paths if not os.path.lexists(p)]
    if missing:
        return _error(f"no such file or directory: {', '.join(missing)}")
    # Never with JSON or SARIF, even on a terminal: machine output stays clean.
    progress = Progress(sys.stderr, enabled=args.format == "text")
    try:
        report = scan(args.paths, allow=allow or None, records=config.get("records") or None,
                      limits=limits, explain=args.explain, jobs=max(1, args.jobs),
                      progress=progress)
    except ValueError as exc:  # a name that may never be allowed
        progress.finish()
        return _error(str(exc))
    progress.finish()
    to_file = args.output is not None
    colour = args.format == "text" and not to_file and _use_colour(sys.stdout)
    text = FORMATTERS[args.format](report, fail_on, colour=colour, quiet=args.quiet)
    if to_file:
        with open(args.output, "w", encoding="utf-8", errors="backslashreplace") as out:
            out.write(text)
        if args.format != "text":  # the file has the report; a line for the CI log
            print(_summary_line(report, fail_on, _Paint(False)), file=sys.stderr)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return report.exit_code(fail_on)


def cmd_inspect(args) -> int:
    from .scan import inspect_file

    configured = _configuration(args)
    if isinstance(configured, int):
        return configured
    config, allow = configured
    if not os.path.isfile(args.path):
        return _error(f"no such file: {args.path}")
    try:
        rows, file_report = inspect_file(args.path, allow=allow or None,
                                         records=config.get("records") or None)
    except ValueError as exc:
        return _error(str(exc))
    if args.format == "json":
        data = {"path": args.path, "verdict": file_report.verdict,
                "tensors": [row.to_dict() for row in rows],
                "findings": [f.to_dict() for f in file_report.findings]}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(format_tensor_table(rows))
        if file_report.findings:
            paint = _Paint(_use_colour(sys.stderr))
            print(f"\n{paint(file_report.verdict, file_report.verdict.upper())}: "
                  f"{len(file_report.findings)} finding(s); run `safeload scan "
                  f"{args.path}` for details", file=sys.stderr)
    report = Report(files=[file_report])
    return report.exit_code("unsafe")


def format_tensor_table(rows) -> str:
    headers = ("name", "dtype", "shape", "bytes", "storage", "location")
    table = [headers] + [row.cells() for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) if i not in (3,) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = sum(row.nbytes for row in rows)
    storages = {row.storage for row in rows}
    lines.append(f"{len(rows)} tensor(s), {total} bytes in views of {len(storages)} storage(s)")
    return "\n".join(lines) + "\n"


def cmd_convert(args) -> int:
    from .convert import main as convert_main

    return convert_main(args.rest)


def _add_policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow", action="append", metavar="MODULE.NAME",
                        help="accept this global by name (repeatable; never imported); "
                             "added to [tool.safeload] allow")
    parser.add_argument("--no-config", action="store_true",
                        help="ignore [tool.safeload] in pyproject.toml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safeload",
        description="Scan and inspect PyTorch checkpoints without running their code.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"safeload {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    scan = commands.add_parser(
        "scan", help="scan model files (the CI gate)",
        description="Scan files and directories (recursively, content-sniffed) with the "
                    "loader's own allowlist VM. Exit code: 0 all clean, 1 a finding at or "
                    "above --fail-on, 2 a file could not be scanned completely.")
    scan.add_argument("paths", nargs="+", metavar="PATH")
    scan.add_argument("--format", choices=list(FORMATTERS), default="text")
    scan.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE")
    scan.add_argument("--fail-on", choices=FAIL_ON, default=None,
                      help="the lowest severity that fails the scan (default: unsafe, or "
                           "fail_on in [tool.safeload])")
    scan.add_argument("--explain", action="store_true",
                      help="show what each rejected pickle would run, and the allow "
                           "snippet for its unknown globals")
    scan.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                      help="scan with N worker processes")
    scan.add_argument("-q", "--quiet", action="store_true",
                      help="text output: leave out clean and skipped files")
    scan.add_argument("--limit", action="append", metavar="NAME=VALUE",
                      help="set one safeload.Limits bound, e.g. max_inflate_ratio=1000 or "
                           "min_inflate_budget=256MiB (repeatable; overrides limits in "
                           "[tool.safeload]); a limit-exceeded finding names the one to set")
    _add_policy_options(scan)
    scan.set_defaults(func=cmd_scan)

    inspect = commands.add_parser(
        "inspect", help="list a checkpoint's tensors without reading their data",
        description="The tensors of a checkpoint: name, dtype, shape, bytes, storage "
                    "record and location, read from the pickle alone.")
    inspect.add_argument("path", metavar="FILE")
    inspect.add_argument("--format", choices=["text", "json"], default="text")
    _add_policy_options(inspect)
    inspect.set_defaults(func=cmd_inspect)

    convert = commands.add_parser(
        "convert", help="convert a checkpoint to safetensors (see safeload convert -h)",
        add_help=False)
    convert.add_argument("rest", nargs=argparse.REMAINDER)
    convert.set_defaults(func=cmd_convert)
    return parser


COMMANDS = ("scan", "inspect", "convert")


def _never_fail_on_encoding() -> None:
    """Characters stdout / stderr cannot encode (an ASCII locale, a file name
    with undecodable bytes) are written as escapes instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # closed or detached: nothing to protect
                pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``safeload`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _never_fail_on_encoding()
    if argv[:1] == ["convert"]:
        # convert parses its own options: argparse's REMAINDER would refuse a
        # leading one (`safeload convert --records a.ckpt b.safetensors`, `-h`)
        from .convert import main as convert_main

        return convert_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `safeload scan ... | head`
        try:
            sys.stdout.close()
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
