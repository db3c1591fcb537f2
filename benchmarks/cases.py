"""What the benchmark measures: one case per entry of ``CASES``, run in a child.

Strategy: ``python benchmarks/cases.py CASE PATH`` runs exactly one measurement
in a fresh interpreter. ``setup`` does the imports (and anything the case
should not pay for, like reading data.pkl for the VM-only baseline) and returns
the operation; the child then records its peak RSS so far as the baseline,
times a first call, then the median of ``calls`` more in the same process, and
prints one JSON line: both times, peak RSS above the baseline (the first
call's), and how many tensors came back (a sanity check: a fast path that
drops tensors must not look fast). The driver (``run.py``) runs each case
several times and takes medians.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# -- loads ----------------------------------------------------------------------------


def safeload_load(path, mmap=False):
    import numpy  # noqa: F401 - imported before the baseline, like torch for torch.load

    import safeload

    return lambda: safeload.load(path, mmap=mmap)


def safeload_torch_load(path, mmap=False):
    import torch  # noqa: F401

    import safeload.torch

    return lambda: safeload.torch.load(path, mmap=mmap)


def torch_load(path, weights_only=True, mmap=False):
    import torch

    return lambda: torch.load(path, weights_only=weights_only, mmap=mmap)


def safetensors_numpy(path):
    from safetensors.numpy import load_file

    return lambda: load_file(path)


def safetensors_torch(path):
    from safetensors.torch import load_file

    return lambda: load_file(path)


# -- scans ----------------------------------------------------------------------------


def safeload_scan(path):
    import importlib

    scan = importlib.import_module("safeload.scan").scan
    return lambda: scan(path)


def picklescan_scan(path):
    from picklescan.scanner import scan_file_path

    return lambda: scan_file_path(path)


def modelscan_scan(path):
    # Runs under benchmarks/.venv-modelscan's python (see run.py).
    from modelscan.modelscan import ModelScan

    return lambda: ModelScan().scan(path)


# -- baselines ------------------------------------------------------------------------


def _pickle_bytes(path, manifest_entry) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(manifest_entry["pickle_offset"])
        return fh.read(manifest_entry["pickle_size"])


def c_pickle(path, entry):
    """CPython's C unpickler on data.pkl, every global a stub: the VM's speed of light."""
    import _pickle
    import io
    from collections import OrderedDict

    class Stub:
        def __init__(self, *args, **kwargs):
            self.args = args

        def __setitem__(self, key, value):
            pass

        def __setstate__(self, state):
            pass

    class StubUnpickler(_pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("collections", "OrderedDict"):
                return OrderedDict
            return Stub

        def persistent_load(self, pid):
            return pid

    data = _pickle_bytes(path, entry)
    return lambda: StubUnpickler(io.BytesIO(data)).load()


def read_pickle(path, entry):
    """Open the file and read data.pkl's bytes: the floor for any scanner."""
    return lambda: _pickle_bytes(path, entry)


#: name -> (setup(path, **kw), keyword arguments, which file it reads)
CASES: dict[str, tuple] = {
    "safeload.load": (safeload_load, {}, "pt"),
    "safeload.load mmap": (safeload_load, {"mmap": True}, "pt"),
    "safeload.torch.load": (safeload_torch_load, {}, "pt"),
    "safeload.torch.load mmap": (safeload_torch_load, {"mmap": True}, "pt"),
    "torch.load wo=True": (torch_load, {}, "pt"),
    "torch.load wo=True mmap": (torch_load, {"mmap": True}, "pt"),
    "torch.load wo=False": (torch_load, {"weights_only": False}, "pt"),
    "safetensors.numpy": (safetensors_numpy, {}, "safetensors"),
    "safetensors.torch": (safetensors_torch, {}, "safetensors"),
    "safeload.scan": (safeload_scan, {}, "pt"),
    "picklescan": (picklescan_scan, {}, "pt"),
    "modelscan": (modelscan_scan, {}, "pt"),
    "C _pickle (stubs)": (c_pickle, {"entry": None}, "pt"),
    "read data.pkl": (read_pickle, {"entry": None}, "pt"),
}


def available(name: str) -> str | None:
    """None if the case can run here, else why not. (The safeload modules are
    looked for where the children will import them from: PYTHONPATH may point
    at another checkout, e.g. a snapshot to compare against.)"""
    module = {"safeload.torch": "safeload.torch", "safeload.scan": "safeload.scan"}.get(
        name.removesuffix(" mmap").removesuffix(".load"))
    if module is None:
        return None
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except Exception as exc:  # noqa: BLE001 - a half-edited package: report, go on
        return f"cannot import {module}: {type(exc).__name__}: {exc}"
    return None if found else f"{module} does not exist (yet)"


def count_tensors(value) -> int:
    """Arrays / tensors in a loaded state dict (outside the timed region)."""
    if isinstance(value, dict):
        return sum(count_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(count_tensors(v) for v in value)
    return 1 if hasattr(value, "shape") and hasattr(value, "dtype") else 0


def main(argv: list[str]) -> int:
    name, path, entry_json = argv[0], argv[1], argv[2]
    setup, kwargs, _ = CASES[name]
    kwargs = dict(kwargs)
    if "entry" in kwargs:
        kwargs["entry"] = json.loads(entry_json)
    calls = int(argv[3]) if len(argv) > 3 else 5
    op = setup(path, **kwargs)
    baseline = _rss_kib()
    t0 = time.perf_counter()
    result = op()
    first = time.perf_counter() - t0
    peak = _rss_kib()
    tensors = count_tensors(result)
    # The measure: the median of several calls in one process, after
    # the first (which also pays for lazy imports and first-use caches on
    # both sides; it is reported separately). Each result is dropped before
    # the next call, so peak RSS stays the first call's.
    warm = []
    for _ in range(calls):
        del result
        gc.collect()
        t0 = time.perf_counter()
        result = op()  # noqa: F841 - held until the next call, like the first
        warm.append(time.perf_counter() - t0)
    print(json.dumps({
        "seconds": statistics.median(warm) if warm else first,
        "warm_seconds": warm,
        "first_seconds": first,
        "rss_delta_bytes": (peak - baseline) * 1024,
        "baseline_bytes": baseline * 1024,
        "tensors": tensors,
    }))
    sys.stdout.flush()
    os._exit(0)  # skip teardown of huge results; nothing is left to write


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
