"""Where a scan of the 20 000-tensor file goes, and what moving parts of it
to C could reach at best.

    python benchmarks/scan_parts.py                  # benchmarks/data/small.pt
    python benchmarks/scan_parts.py PATH --repeat 15

Strategy: every row times ``safeload.scan.scan`` on the same file in this
process (median of ``--repeat`` calls, after one warm-up), with more of its
per-tensor Python replaced by stubs that check nothing; each row keeps the
stubs of the rows above it. A row's time is what the scan would take if the
parts stubbed so far cost nothing: the ceiling for moving them into C, which
is not free either. The last scan row is the floor set by what no stub
touches (zip validation, the compiled opcode loop, the report); the rows
after it time parts of that floor alone. picklescan on the same file, when
installed, is the yardstick of issue 6 (a scan >= 10x faster than it).

The stubs are this script's monkeypatches, undone after each row; they exist
only to measure. Each stubbed scan must still say "clean" on the benign
input (the script stops otherwise), and the input must be benign: a stub
that checks nothing would let anything through.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _median(fn, repeat: int) -> float:
    fn()  # warm-up: page cache, lazy imports, first-use caches
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def _patched(obj, name: str, value):
    """``obj.name = value`` for the block; frozen dataclasses too."""
    old = getattr(obj, name)
    assign = setattr if isinstance(obj, type) else object.__setattr__
    assign(obj, name, value)
    try:
        yield
    finally:
        assign(obj, name, old)


def _stubs():
    """(label, what the stub skips, context manager factory), cumulative."""
    import safeload.loader as loader
    from safeload.allowlist import DEFAULT_POLICY
    from safeload.dtypes import DTYPES
    from safeload.records import StorageRef, TensorRecord
    from safeload.scan import ScanBuilder

    handlers = DEFAULT_POLICY.handlers
    v2 = handlers["torch._utils._rebuild_tensor_v2"]
    ordered = handlers["collections.OrderedDict"]
    one_ref = StorageRef("0", DTYPES["float32"], "cpu", 1)
    one_tensor = TensorRecord(one_ref, one_ref, one_ref.dtype, 0, (1,), (1,))

    return [
        ("builder checks", "ScanBuilder: record size per storage, extent per tensor",
         lambda: [_patched(ScanBuilder, "storage", lambda self, ref: ref),
                  _patched(ScanBuilder, "tensor", lambda self, rec: rec)]),
        ("persistent-id checks", "storage_ref_from_pid: one prebuilt StorageRef",
         lambda: [_patched(loader, "storage_ref_from_pid", lambda pid: one_ref)]),
        ("tensor handler", "_rebuild_tensor_v2: one prebuilt TensorRecord",
         lambda: [_patched(v2, "reduce", lambda vm, args: one_tensor)]),
        ("OrderedDict handler", "OrderedDict(): no arity check",
         lambda: [_patched(ordered, "reduce", lambda vm, args: OrderedDict())]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default=str(HERE / "data" / "small.pt"))
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args(argv)
    path = args.path
    if not Path(path).exists():
        print(f"{path} is missing: python benchmarks/inputs.py --quick makes it")
        return 2

    from safeload.formats.source import Source
    from safeload.limits import DEFAULT_LIMITS
    from safeload.loader import open_container
    from safeload.scan import scan

    rows: list[tuple[str, str, float]] = []
    try:
        from picklescan.scanner import scan_file_path
    except ImportError:
        scan_file_path = None
    if scan_file_path is not None:
        rows.append(("picklescan", "", _median(lambda: scan_file_path(path),
                                               max(3, args.repeat // 3))))
    rows.append(("safeload scan", "everything", _median(lambda: scan(path), args.repeat)))
    with ExitStack() as stack:
        for label, what, make in _stubs():
            for patch in make():
                stack.enter_context(patch)
            verdict = scan(path).files[0].verdict
            if verdict != "clean":
                print(f"with '{label}' stubbed the scan says {verdict!r}: "
                      "is the input benign?")
                return 1
            rows.append((f"  - {label}", what, _median(lambda: scan(path), args.repeat)))

    with Source.open(path, mmap=True) as source:
        rows.append(("zip validation alone", "open_container",
                     _median(lambda: open_container(source, DEFAULT_LIMITS), args.repeat)))

    base = rows[0][2] if scan_file_path is not None else None
    width = max(len(r[0]) for r in rows)
    print(f"{path}: median of {args.repeat}, ms; rows with '-' keep the stubs above them")
    for label, what, seconds in rows:
        ratio = f"{base / seconds:6.1f}x picklescan" if base and label != "picklescan" else ""
        print(f"{label:<{width}}  {seconds * 1000:8.1f}  {ratio:<18}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
