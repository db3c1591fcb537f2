"""Parent side of the adversarial suite: run cases in child processes, judge them.

Strategy: cases are written to a temporary directory and split into batches;
each batch runs in a fresh ``runner.py`` child (two at a time) under an
address-space limit and a timeout. The child reports each case as it starts
and ends, so when a batch dies (a crash, a memory kill, a hang) the case at
fault is known; it is recorded as a violation and the rest of the batch runs
in a new child. ``judge`` turns every result into a list of violations of the
invariants; the suite asserts that list is empty and reports the counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import Case

RUNNER = Path(__file__).resolve().parent / "runner.py"
MEMORY_BYTES = 2 << 30  # RLIMIT_AS of the child: 2 GiB
CASE_SECONDS = 10.0  # time budget of one load
BATCH_SECONDS = 600.0


@dataclass
class Report:
    """Outcome of one attack class."""

    name: str
    cases: int = 0
    runs: int = 0
    outcomes: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    max_elapsed: float = 0.0
    max_rss_mb: int = 0
    slowest: list[tuple[float, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"class": self.name, "cases": self.cases, "runs": self.runs,
                "outcomes": dict(self.outcomes), "violations": self.violations,
                "max_elapsed_s": round(self.max_elapsed, 3), "max_rss_mb": self.max_rss_mb,
                "slowest": [(round(t, 3), name) for t, name in self.slowest]}


def judge(case: Case, result: dict, load: dict | None = None) -> list[str]:
    """Every invariant the result breaks, as text; ``load`` is the same case's
    ``safeload.load`` result, which the scanner's verdict must agree with."""
    where = f"{case.name} [{result['mode']}]"
    problems = []
    outcome = result.get("outcome")
    if outcome == "escape":
        problems.append(f"{where}: {result['type']} escaped: {result['message']}\n"
                        f"{result.get('traceback', '')}")
    if result["canary"]:
        problems.append(f"{where}: files appeared: {result['canary']}")
    if result["new_modules"]:
        problems.append(f"{where}: modules imported: {result['new_modules'][:10]}")
    if result["changed"]:
        problems.append(f"{where}: process state changed: {result['changed']}")
    if not result["benign_ok"]:
        problems.append(f"{where}: the benign checkpoint no longer loads the same")
    if result["elapsed"] > CASE_SECONDS:
        problems.append(f"{where}: took {result['elapsed']:.1f}s (budget {CASE_SECONDS}s)")
    if result.get("message_length", 0) > 50_000:
        problems.append(f"{where}: a {result['message_length']}-character error message")
    mode = result["mode"]
    if mode in ("load", "torch") and outcome in ("value", "refused"):
        expect = case.expect
        if expect.startswith("refuse") and outcome != "refused":
            problems.append(f"{where}: expected a refusal, got a value")
        if expect.startswith("refuse:") and outcome == "refused" and \
                result["kind"] != expect.partition(":")[2]:
            problems.append(f"{where}: expected a {expect} error, got {result['kind']}: "
                            f"{result['message']}")
        if expect == "value" and outcome != "value":
            problems.append(f"{where}: expected a value, got {result['type']}: "
                            f"{result['message']}")
    if case.dangerous and mode == "records" and outcome == "value":
        problems.append(f"{where}: a dangerous payload loaded under records=True")
    if mode == "scan" and outcome == "value":
        problems.extend(_judge_scan(case, result, where, load))
    return problems


def _judge_scan(case: Case, result: dict, where: str, load: dict | None) -> list[str]:
    """The scanner (``safeload.scan_file``) on the same file: it never raises,
    never hides an internal error, calls nothing clean that the loader refuses,
    and ranks a refused global as unsafe or dangerous."""
    scan = result["scan"]
    if scan[0] == "skipped":
        if load is not None and load.get("outcome") == "value":
            return [f"{where}: the scanner skipped a file the loader loads ({scan[1]})"]
        return []
    _, verdict, internal = scan
    problems = [f"{where}: scanner internal error: {m[:300]}" for m in internal]
    refused = load is not None and load.get("outcome") == "refused"
    if refused and verdict == "clean":
        problems.append(f"{where}: the loader refuses the file ({load.get('message')}) "
                        "but the scanner calls it clean")
    if (case.unsafe or case.dangerous or refused and load.get("kind") == "unsafe-global") \
            and verdict not in ("unsafe", "dangerous"):
        problems.append(f"{where}: a refused global scanned as {verdict!r}")
    if case.dangerous and verdict != "dangerous":
        problems.append(f"{where}: a known-dangerous global scanned as {verdict!r}")
    return problems


def run_cases(name: str, cases: list[Case], canary: Path, benign: Path,
              warmup: list[Path] = (), batch_size: int | None = None, jobs: int = 2) -> Report:
    """Run ``cases`` in child processes; returns the class report. A child
    starts in about a second (numpy, safeload, warm-up), so by default the
    cases are split into one batch per job."""
    if batch_size is None:
        batch_size = min(2_000, max(50, -(-len(cases) // jobs)))
    report = Report(name, cases=len(cases))
    by_id = {case.id: case for case in cases}
    with tempfile.TemporaryDirectory(prefix="safeload-adv-") as tmp:
        work = Path(tmp)
        entries = []
        for case in cases:
            path = work / f"{case.id}.bin"
            path.write_bytes(case.data)
            entries.append({"id": case.id, "path": str(path), "kwargs": case.kwargs,
                            "via": case.via, "modes": list(case.modes)})
        batches = [entries[i:i + batch_size] for i in range(0, len(entries), batch_size)]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(
                lambda pair: _run_batch(work, pair[0], pair[1], canary, benign, list(warmup)),
                enumerate(batches)))
    loads = {r["id"]: r for batch_results, _ in results for r in batch_results
             if r["mode"] == "load"}
    for batch_results, crashes in results:
        for result in batch_results:
            case = by_id[result["id"]]
            report.runs += 1
            report.outcomes[f"{result['mode']}:{result.get('outcome')}"] += 1
            report.max_elapsed = max(report.max_elapsed, result["elapsed"])
            report.slowest = sorted(report.slowest + [(result["elapsed"],
                                                       f"{case.name} [{result['mode']}]")])[-5:]
            report.max_rss_mb = max(report.max_rss_mb, result["rss_mb"])
            report.violations.extend(judge(case, result, loads.get(result["id"])))
        report.violations.extend(crashes)
    return report


def _run_batch(work: Path, index: int, entries: list[dict], canary: Path, benign: Path,
               warmup: list[Path]) -> tuple[list[dict], list[str]]:
    results: list[dict] = []
    crashes: list[str] = []
    pending = list(entries)
    attempt = 0
    while pending:
        attempt += 1
        manifest = work / f"batch{index}-{attempt}.json"
        output = work / f"batch{index}-{attempt}.jsonl"
        # one canary directory per child, so two children never see each other
        child_canary = canary / f"batch{index}-{attempt}"
        child_canary.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({
            "canary": str(child_canary), "benign": str(benign),
            "warmup": [str(p) for p in warmup], "memory_bytes": MEMORY_BYTES,
            "cases": pending,
        }))
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        timeout = min(BATCH_SECONDS, 30 + CASE_SECONDS * 3 * len(pending))
        try:
            proc = subprocess.run([sys.executable, str(RUNNER), str(manifest), str(output)],
                                  cwd=child_canary, env=env, capture_output=True,
                                  timeout=timeout)
            status = f"exit status {proc.returncode}: {proc.stderr.decode()[-1500:]}"
        except subprocess.TimeoutExpired:
            proc = None
            status = f"timeout after {timeout:.0f}s"
        lines = output.read_text().splitlines() if output.exists() else []
        started = None
        done = False
        finished = set()
        for line in lines:
            item = json.loads(line)
            if "start" in item:
                started = (item["start"], item["mode"])
            elif "done" in item:
                done = True
                if item["fds_after"] > item["fds_before"]:
                    crashes.append(f"batch {index}: {item['fds_after'] - item['fds_before']} "
                                   "file descriptors left open")
            else:
                results.append(item)
                finished.add(item["id"])
                if started == (item["id"], item["mode"]):
                    started = None
        if done and proc is not None and proc.returncode == 0:
            break
        if started is None:
            crashes.append(f"batch {index}: the runner failed before any case: {status}")
            break
        crashes.append(f"case {started[0]} [{started[1]}]: the child died: {status}")
        # resume after the culprit (its other modes included)
        culprit = next(i for i, e in enumerate(pending) if e["id"] == started[0])
        pending = pending[culprit + 1:]
    return results, crashes


def write_report(reports: list[Report], path: Path) -> None:
    path.write_text(json.dumps([r.as_dict() for r in reports], indent=2))
