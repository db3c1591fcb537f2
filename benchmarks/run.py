"""safeload's benchmark: one command, side by side with torch, safetensors and
the scanners.

    python benchmarks/run.py                 # everything (makes ~6.2 GB of inputs once)
    python benchmarks/run.py --quick         # no 4 GiB input, 3 runs per case
    python benchmarks/run.py --only safeload.load --only "torch.load wo=True"
    python benchmarks/run.py --repeat 9 --out results.json

Strategy: inputs are generated once into ``benchmarks/data/`` (``inputs.py``).
Every measurement is a fresh child interpreter (``cases.py``) that imports what
it needs, notes its peak RSS, times a first call, then 5 more calls in the same
process (the issue's "median of ≥ 5 runs, same process"), and reports their
median, the first call's time and the peak RSS above that baseline; one
unrecorded warm-up child per case puts the file in the page cache first, so all
numbers are warm-cache. Ratios use the in-process medians; the first-call
column shows what a one-shot script pays (lazy imports, first-use caches). The
driver prints medians, ratios (against ``torch.load(weights_only=True)`` on the
same input, and against the natural reference of each row: torch's mmap load
for mmap rows, picklescan for scans), peak RSS, the ``import safeload`` time,
and the issue's targets with met / not met; it writes all runs as JSON and the
table as Markdown.
No BLAS work happens in any case, so OPENBLAS/OMP thread settings do not matter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cases  # noqa: E402
import inputs  # noqa: E402

MODELSCAN_VENV = HERE / ".venv-modelscan"
MODELSCAN_PYTHON = MODELSCAN_VENV / "bin" / "python"

LOADS = ["safeload.load", "safeload.torch.load", "torch.load wo=True", "torch.load wo=False",
         "safetensors.numpy", "safetensors.torch"]
MMAPS = ["safeload.load mmap", "safeload.torch.load mmap", "torch.load wo=True mmap"]
SCANS = ["safeload.scan", "picklescan", "modelscan"]
BASELINES = ["C _pickle (stubs)", "read data.pkl"]

#: input -> cases run on it, in table order
PLAN: dict[str, list[str]] = {
    "small": LOADS[:4] + MMAPS + LOADS[4:] + SCANS + BASELINES,
    "big": LOADS[:4] + MMAPS + LOADS[4:] + SCANS + BASELINES,
    "huge": MMAPS,
}


def reference(case: str) -> str:
    if case in MMAPS:
        return "torch.load wo=True mmap"
    if case in SCANS:
        return "picklescan"
    return "torch.load wo=True"


# -- machine ------------------------------------------------------------------------


def machine() -> dict:
    info = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
        info["ram_gib"] = round(kib / 2**20, 1)
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        info["cpu"] = cpu.group(1).strip() if cpu else platform.processor()
    except (OSError, AttributeError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    for package in ("torch", "numpy", "safetensors", "picklescan", "ml_dtypes", "safeload"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    if MODELSCAN_PYTHON.exists():
        out = subprocess.run(
            [str(MODELSCAN_PYTHON), "-c",
             "from importlib.metadata import version; print(version('modelscan'))"],
            capture_output=True, text=True,
        )
        info["modelscan"] = out.stdout.strip() or None
    return info


# -- running --------------------------------------------------------------------------


def _python_for(case: str) -> str | None:
    if case == "modelscan":
        return str(MODELSCAN_PYTHON) if MODELSCAN_PYTHON.exists() else None
    return sys.executable


def _prepare(case: str, name: str, manifest: dict) -> dict:
    entry = manifest[name]
    suffix = cases.CASES[case][2]
    why_not = cases.available(case)
    python = _python_for(case)
    if why_not is None and python is None:
        why_not = (f"modelscan is not installed: python -m venv --system-site-packages "
                   f"{MODELSCAN_VENV.relative_to(HERE.parent)} && "
                   f"{MODELSCAN_VENV.relative_to(HERE.parent)}/bin/pip install modelscan")
    return {
        "case": case, "input": name, "why_not": why_not, "python": python,
        "path": str(inputs.DATA / f"{name}.{suffix}"), "entry": entry,
        "file_bytes": entry["safetensors_size"] if suffix == "safetensors" else entry["size"],
        "runs": [], "error": None, "calls": 5,
    }


def _run_once(job: dict, tries: int = 2) -> dict | None:
    """One measurement. A failed child is retried once: the working tree may be
    mid-edit when several people share it; a second failure is reported."""
    for attempt in range(tries):
        proc = subprocess.run(
            [job["python"], str(HERE / "cases.py"), job["case"], job["path"],
             json.dumps(job["entry"]), str(job["calls"])],
            capture_output=True, text=True, timeout=1800,
        )
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        if attempt + 1 < tries:
            time.sleep(5)
    job["error"] = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return None


def run_input(names: list[str], name: str, manifest: dict, repeat: int, log) -> list[dict]:
    """Run every case on one input, round-robin: round 0 warms the page cache
    and is not recorded; each later round runs each case once, so a burst of
    load on the machine hits all cases alike instead of one case's runs."""
    jobs = [_prepare(case, name, manifest) for case in names]
    live = [j for j in jobs if not j["why_not"]]
    for round_ in range(repeat + 1):
        for job in live:
            if job["error"]:
                continue
            run = _run_once(job)
            if run is not None and round_:
                job["runs"].append(run)
        log(f"  {name}: round {round_}/{repeat} done")
    results = []
    for job in jobs:
        base = {"case": job["case"], "input": name}
        if job["why_not"]:
            results.append({**base, "skipped": job["why_not"]})
            continue
        if job["error"] or not job["runs"]:
            log(f"  {job['case']} on {name}: FAILED: {job['error']}")
            results.append({**base, "error": job["error"]})
            continue
        runs = job["runs"]
        seconds = [r["seconds"] for r in runs]
        result = {
            **base,
            "runs": runs,
            "median_s": statistics.median(seconds),
            "min_s": min(seconds),
            "first_s": statistics.median(r.get("first_seconds", r["seconds"]) for r in runs),
            "rss_delta_bytes": statistics.median(r["rss_delta_bytes"] for r in runs),
            "file_bytes": job["file_bytes"],
            "tensors": runs[-1]["tensors"],
        }
        case, entry = job["case"], job["entry"]
        if case not in SCANS and case not in BASELINES and result["tensors"] != entry["tensors"]:
            result["warning"] = (f"returned {result['tensors']} tensors, "
                                 f"expected {entry['tensors']}")
        log(f"  {case:<26} {name:<6} {result['median_s'] * 1e3:10.1f} ms"
            f"  {result['rss_delta_bytes'] / 2**20:9.1f} MB"
            + (f"  WARNING {result['warning']}" if "warning" in result else ""))
        results.append(result)
    return results


def import_time(repeat: int = 10) -> dict:
    code = ("import time; t = time.perf_counter(); import safeload; "
            "print(time.perf_counter() - t)")
    times = []
    for _ in range(repeat + 1):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        times.append(float(out.stdout))
    times = times[1:]  # the first may compile .pyc files
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import safeload"],
                          capture_output=True, text=True, check=True)
    # -X importtime prints each module after the ones it imported; a depth-0
    # line closes a block. Keep only the block that "import safeload" opened
    # (startup's own imports, like site, are not safeload's cost).
    rows, block = [], []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            block.append({"self_us": int(m.group(1)), "cumulative_us": int(m.group(2)),
                          "depth": len(m.group(3)) // 2, "module": m.group(4)})
            if block[-1]["depth"] == 0:
                if block[-1]["module"] == "safeload":
                    rows = block
                block = []
    top = sorted(rows, key=lambda r: -r["cumulative_us"])[:12]
    return {"median_s": statistics.median(times), "runs": times, "top": top}


# -- reporting ------------------------------------------------------------------------


def _index(results: list[dict]) -> dict:
    return {(r["case"], r["input"]): r for r in results if "median_s" in r}


def table_rows(results: list[dict]) -> list[list[str]]:
    by = _index(results)
    rows = []
    for r in results:
        name, case = r["input"], r["case"]
        if "median_s" not in r:
            rows.append([name, case, "skipped" if "skipped" in r else "failed",
                         "", "", "", "", ""])
            continue
        torch_ref = by.get(("torch.load wo=True", name))
        ref_case = reference(case)
        ref = by.get((ref_case, name))
        vs_torch = f"{r['median_s'] / torch_ref['median_s']:.2f}×" \
            if torch_ref and case not in SCANS else ""
        vs_ref = ""
        if ref and ref_case != "torch.load wo=True" and case != ref_case:
            short = {"torch.load wo=True mmap": "torch mmap"}.get(ref_case, ref_case)
            vs_ref = f"{r['median_s'] / ref['median_s']:.3g}× {short}"
        rss = r["rss_delta_bytes"]
        rows.append([
            name, case, _ms(r['median_s']), _ms(r.get("first_s", r["median_s"])), vs_torch,
            vs_ref,
            f"{rss / 2**20:,.1f}", f"{rss / r['file_bytes']:.2f}×",
        ])
    return rows


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 0.1 else f"{ms:.3f}"


HEADER = ["input", "case", "median ms", "first call ms", "× torch wo=True", "× reference",
          "peak RSS MB", "RSS × file"]


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(HEADER))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in rows]
    return "\n".join(lines)


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows, strict=False)]
    fmt = lambda row: "  ".join(  # noqa: E731
        str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in
        enumerate(zip(row, widths, strict=True)))
    return "\n".join([fmt(HEADER), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def targets(results: list[dict], imports: dict | None) -> list[dict]:
    """The issue's targets, each with its measured value (None if not measured)."""
    by = _index(results)

    def ratio(a, b, name, num="median_s"):
        x, y = by.get((a, name)), by.get((b, name))
        return x[num] / y[num] if x and y else None

    def rss_multiple(case, name):
        r = by.get((case, name))
        return r["rss_delta_bytes"] / r["file_bytes"] if r else None

    def flat(case):
        big, huge = by.get((case, "big")), by.get((case, "huge"))
        return huge["median_s"] / big["median_s"] if big and huge else None

    def scan_vs_read(name):
        return ratio("safeload.scan", "read data.pkl", name)

    rows = [
        ("20k tensors: safeload.load / torch.load(wo=True)", 0.25,
         ratio("safeload.load", "torch.load wo=True", "small"), "≤", "aim 0.1"),
        ("20k tensors: safeload.torch.load / torch.load(wo=True)", 0.3,
         ratio("safeload.torch.load", "torch.load wo=True", "small"), "≤", ""),
        ("1 GiB copy: safeload.load / torch.load(wo=True)", 1.0,
         ratio("safeload.load", "torch.load wo=True", "big"), "≤", ""),
        ("1 GiB copy: safeload.load peak RSS / file size", 1.15,
         rss_multiple("safeload.load", "big"), "≤", ""),
        ("1 GiB copy: safeload.torch.load / torch.load(wo=True)", 1.0,
         ratio("safeload.torch.load", "torch.load wo=True", "big"), "≤", ""),
        ("1 GiB copy: safeload.torch.load peak RSS / file size", 1.15,
         rss_multiple("safeload.torch.load", "big"), "≤", ""),
        ("1 GiB mmap: safeload.load / torch.load(mmap)", 2.0,
         ratio("safeload.load mmap", "torch.load wo=True mmap", "big"), "≤", ""),
        ("1 GiB mmap: safeload.torch.load / torch.load(mmap)", 2.0,
         ratio("safeload.torch.load mmap", "torch.load wo=True mmap", "big"), "≤", ""),
        ("mmap flat: safeload.load 4 GiB / 1 GiB", 1.5, flat("safeload.load mmap"), "≤", ""),
        ("mmap flat: safeload.torch.load 4 GiB / 1 GiB", 1.5,
         flat("safeload.torch.load mmap"), "≤", ""),
        ("scan 20k: picklescan / safeload.scan", 10.0,
         ratio("picklescan", "safeload.scan", "small"), "≥", ""),
        ("scan 1 GiB: safeload.scan / read data.pkl", None, scan_vs_read("big"), "≈", ""),
        ("import safeload (s)", 0.150, imports["median_s"] if imports else None, "≤", ""),
    ]
    out = []
    for what, bound, value, sense, note in rows:
        if value is None:
            met = None
        elif bound is None:
            met = None
        else:
            met = value <= bound if sense == "≤" else value >= bound
        out.append({"target": what, "bound": bound, "sense": sense, "value": value,
                     "met": met, "note": note})
    return out


def targets_text(rows: list[dict]) -> str:
    lines = []
    for t in rows:
        value = "not measured" if t["value"] is None else f"{t['value']:.3g}"
        bound = "" if t["bound"] is None else f"{t['sense']} {t['bound']:g}"
        verdict = {True: "met", False: "NOT MET", None: ""}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"- {t['target']}: {value} (target {bound or 'report'}){note} {verdict}")
    return "\n".join(lines)


def machine_text(m: dict) -> str:
    return (f"{m.get('cpu', '?')}, {m['cores']} cores, {m.get('ram_gib', '?')} GiB RAM, "
            f"{m['platform']}; Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, "
            f"safetensors {m['safetensors']}, picklescan {m['picklescan']}, "
            f"modelscan {m.get('modelscan')}")


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="safeload benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="skip the 4 GiB input; 3 runs per case unless --repeat")
    parser.add_argument("--repeat", type=int, default=None,
                        help="recorded runs per case (default 5, or 3 with --quick)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only this case (repeatable; a substring of the case name)")
    parser.add_argument("--input", action="append", default=[], choices=list(inputs.SPECS),
                        help="run only on this input (repeatable)")
    parser.add_argument("--out", default=str(inputs.DATA / "results.json"),
                        help="JSON results (a .md table is written next to it)")
    parser.add_argument("--no-import-time", action="store_true")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    names = [n for n in inputs.SPECS if not (args.quick and n == "huge")]
    if args.input:
        names = [n for n in names if n in args.input]
    # Generate in a child: torch and the 4 GiB of tensors never live in this process.
    subprocess.run([sys.executable, str(HERE / "inputs.py")] + (["--quick"] if args.quick
                   else []), check=True)
    manifest = inputs.load_manifest()
    for name in names:
        if name not in manifest:
            log(f"input '{name}' is not available (see above); its cases are skipped")
    m = machine()
    log(machine_text(m))
    for name in names:
        if name in manifest:
            e = manifest[name]
            log(f"input {name}: {e['size'] / 2**20:,.1f} MiB, {e['tensors']} tensors, "
                f"data.pkl {e['pickle_size']:,} bytes / {e['pickle_ops']:,} opcodes")

    results = []
    started = time.perf_counter()
    for name in names:
        if name not in manifest:
            continue
        chosen = [case for case in PLAN[name]
                  if not args.only or any(o == case or o in case for o in args.only)]
        results += run_input(chosen, name, manifest, repeat, log)
    imports = None if args.no_import_time or args.only else import_time()

    rows = table_rows(results)
    target_rows = targets(results, imports)
    print()
    print(f"Machine: {machine_text(m)}")
    print(f"Medians of {repeat} fresh interpreters x 5 calls in the same process after "
          "a first call (warm page cache); peak RSS is the first call's, above the child's "
          "baseline after imports.")
    print()
    print(text_table(rows))
    for r in results:
        if "skipped" in r:
            print(f"skipped {r['case']} on {r['input']}: {r['skipped']}")
        elif "error" in r:
            print(f"failed {r['case']} on {r['input']}: {r['error']}")
        elif "warning" in r:
            print(f"warning {r['case']} on {r['input']}: {r['warning']}")
    if imports:
        print()
        print(f"import safeload: {imports['median_s'] * 1e3:.1f} ms (median of "
              f"{len(imports['runs'])} fresh interpreters); -X importtime, top cumulative:")
        for t in imports["top"]:
            print(f"  {t['cumulative_us'] / 1e3:8.1f} ms  (self {t['self_us'] / 1e3:6.1f})  "
                  f"{'  ' * t['depth']}{t['module']}")
    print()
    print("Targets (issue 6):")
    print(targets_text(target_rows))
    print(f"\n({time.perf_counter() - started:.0f} s)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": m, "repeat": repeat, "inputs": {
        n: manifest.get(n) for n in names}, "results": results, "import": imports,
        "targets": target_rows}, indent=1))
    md = [f"Machine: {machine_text(m)}.", "",
          f"Medians of {repeat} fresh interpreters × 5 calls in the same process after a "
          "first call (the issue's measure; the first call is shown apart), warm page cache; "
          "peak RSS is the first call's, above the child's baseline after its imports.", "",
          markdown_table(rows)]
    if imports:
        md += ["", f"`import safeload`: {imports['median_s'] * 1e3:.0f} ms "
               f"(median of {len(imports['runs'])} fresh interpreters)."]
    md += ["", "Targets (issue 6):", "", targets_text(target_rows)]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
