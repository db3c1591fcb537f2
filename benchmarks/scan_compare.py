"""The corpus through three scanners: safeload scan, picklescan and modelscan.

    python benchmarks/scan_compare.py                       # table on stdout
    python benchmarks/scan_compare.py --write-readme        # and into README.md
    python benchmarks/scan_compare.py --picklescan /venv/bin/picklescan \\
        --modelscan /venv/bin/modelscan

Strategy: every file of ``shared/corpus`` (benign/ and malicious/) is scanned
once by each tool, each in a scratch working directory. safeload runs in this
process (``safeload.scan.scan_file``); picklescan and modelscan run as their
command-line tools (install them anywhere, e.g. ``python -m venv /tmp/scanners
&& /tmp/scanners/bin/pip install picklescan modelscan``; a missing tool is shown
as "not run"). Each cell is the tool's verdict on the file; the summary rows
count, per tool, the attack samples it flags (finds something: safeload exits 1,
picklescan exits non-zero, modelscan reports an issue) and the benign files on
which it exits 0. The table goes between the ``scan-table`` markers of README.md
with ``--write-readme``. The attack samples are read by static scanners only:
nothing here unpickles them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- scan-table:start -->", "<!-- scan-table:end -->"


def corpus_dir() -> Path:
    configured = os.environ.get("SAFELOAD_CORPUS")
    return Path(configured) if configured else ROOT.parent / "shared" / "corpus"


def safeload_verdict(path: Path) -> tuple[str, bool, bool]:
    """(cell text, flags the file, exit code 0)."""
    from safeload.scan import Skipped, scan_file

    result = scan_file(path)
    if isinstance(result, Skipped):
        return "skipped", False, True
    # the rules behind the verdict first: worst severity, then order of appearance
    rank = ("dangerous", "unsafe", "malformed", "info")
    ordered = sorted(enumerate(result.findings),
                     key=lambda item: (rank.index(item[1].severity), item[0]))
    top = list(dict.fromkeys(f.rule_name for _, f in ordered
                             if f.severity != "info"))[:2]
    detail = f" ({', '.join(top)})" if top and result.verdict != "clean" else ""
    return (f"{result.verdict}{detail}", result.verdict in ("dangerous", "unsafe"),
            result.verdict == "clean")


def picklescan_verdict(tool: str, path: Path, cwd: str) -> tuple[str, bool, bool]:
    done = subprocess.run([tool, "-p", str(path)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)
    out = done.stdout + done.stderr
    infected = int(_number(out, r"Infected files: (\d+)"))
    suspicious = int(_number(out, r"Suspicious globals: (\d+)"))
    scanned = int(_number(out, r"Scanned files: (\d+)"))
    if infected:
        return "dangerous", done.returncode != 0, done.returncode == 0
    if "could not parse" in out or "ERROR" in out or done.returncode == 2:
        verdict = "parse error"
    elif suspicious:
        verdict = "suspicious"
    elif not scanned:
        verdict = "not scanned"
    else:
        verdict = "clean"
    return verdict, done.returncode != 0, done.returncode == 0


def modelscan_verdict(tool: str, path: Path, cwd: str) -> tuple[str, bool, bool]:
    report = Path(cwd) / "modelscan.json"
    report.unlink(missing_ok=True)
    done = subprocess.run([tool, "-p", str(path), "-r", "json", "-o", str(report)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return f"error (exit {done.returncode})", done.returncode == 1, done.returncode in (0, 3)
    by_severity = data.get("summary", {}).get("total_issues_by_severity", {})
    worst = next((s for s in ("CRITICAL", "HIGH", "MEDIUM", "LOW") if by_severity.get(s)), None)
    if worst:
        verdict = worst.lower()
    elif data.get("errors"):
        verdict = "error"
    elif not data.get("summary", {}).get("scanned", {}).get("total_scanned"):
        verdict = "not scanned"
    else:
        verdict = "clean"
    # modelscan exits 1 for issues, 2 for errors, 3 when it scanned nothing
    return verdict, done.returncode == 1, done.returncode in (0, 3)


def _number(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else "0"


def find_tool(name: str, given: str | None) -> str | None:
    for candidate in (given, shutil.which(name), f"/tmp/scanners-venv/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def build_table(corpus: Path, picklescan: str | None, modelscan: str | None) -> str:
    rows = []
    caught = {"safeload": 0, "picklescan": 0, "modelscan": 0}
    passed = {"safeload": 0, "picklescan": 0, "modelscan": 0}
    counts = {"malicious": 0, "benign": 0}
    with tempfile.TemporaryDirectory() as scratch:
        for category in ("malicious", "benign"):
            for path in sorted((corpus / category).iterdir()):
                if not path.is_file():
                    continue
                counts[category] += 1
                cells = {"safeload": safeload_verdict(path)}
                cells["picklescan"] = (picklescan_verdict(picklescan, path, scratch)
                                       if picklescan else ("not run", False, False))
                cells["modelscan"] = (modelscan_verdict(modelscan, path, scratch)
                                      if modelscan else ("not run", False, False))
                for tool, (_, flagged, exit_zero) in cells.items():
                    if category == "malicious" and flagged:
                        caught[tool] += 1
                    if category == "benign" and exit_zero:
                        passed[tool] += 1
                rows.append(f"| {category} | `{path.name}` | "
                            + " | ".join(cells[t][0] for t in ("safeload", "picklescan",
                                                               "modelscan")) + " |")
    lines = [
        "| corpus | file | safeload scan | picklescan | modelscan |",
        "|---|---|---|---|---|",
        f"| **malicious: flagged** | {counts['malicious']} files | "
        + " | ".join(f"**{caught[t]}**" for t in ("safeload", "picklescan", "modelscan")) + " |",
        f"| **benign: exit code 0** | {counts['benign']} files | "
        + " | ".join(f"**{passed[t]}**" for t in ("safeload", "picklescan", "modelscan")) + " |",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def write_readme(table: str) -> None:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{START}\n{table}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--picklescan", help="the picklescan command (default: on PATH)")
    parser.add_argument("--modelscan", help="the modelscan command (default: on PATH)")
    parser.add_argument("--write-readme", action="store_true",
                        help="replace the table between the scan-table markers of README.md")
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"no corpus at {args.corpus} (set SAFELOAD_CORPUS)", file=sys.stderr)
        return 2
    table = build_table(args.corpus, find_tool("picklescan", args.picklescan),
                        find_tool("modelscan", args.modelscan))
    sys.stdout.write(table)
    if args.write_readme:
        write_readme(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
