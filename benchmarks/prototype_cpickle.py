"""Prototype, NOT shipped: safeload's allowlist driven by CPython's C unpickler.

What it measures: how fast a load could be if the opcode loop ran in C
(``_pickle.Unpickler``) while every decision stayed in safeload's Python code:
``find_class`` resolves names in safeload's ``Policy`` (never an import),
REDUCE reaches only safeload's handlers (wrapped as ``_Call`` objects),
persistent ids go through ``storage_ref_from_pid`` and the same ``HostBuilder``.
The container is safeload's validated zip reader.

It prints the time of ``safeload.load`` and of this prototype on the same file,
and checks that both return the same arrays. It is a measurement for the
proposal in the README's Performance section, not a loader: the C unpickler
lacks safeload's bounds (memo size, ops, nesting, stack), and BUILD / APPEND /
SETITEM would reach methods of the objects handlers return; see the README for
what a shippable version must add before its first byte of C pickle runs.

    python benchmarks/prototype_cpickle.py [benchmarks/data/small.pt]
"""

from __future__ import annotations

import _pickle
import gc
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from safeload.allowlist import DEFAULT_POLICY, Handler, LoadedStorage, storage_ref_from_pid
from safeload.formats import open_checkpoint
from safeload.formats.source import Source
from safeload.limits import DEFAULT_LIMITS
from safeload.rebuild import HostBuilder
from safeload.unpickler import Unpickler


class _Call:
    """What find_class returns for a callable handler: REDUCE calls it."""

    __slots__ = ("handler", "vm")

    def __init__(self, handler: Handler, vm) -> None:
        self.handler, self.vm = handler, vm

    def __call__(self, *args):
        if self.handler.reduce is None:
            raise _pickle.UnpicklingError(f"{self.handler.name} may not be called")
        return self.handler.reduce(self.vm, args)


def prototype_load(path: str):
    source = Source.open(path)
    ckpt = open_checkpoint(source, limits=DEFAULT_LIMITS)
    stream = ckpt.main_pickle()
    builder = HostBuilder(ckpt.storage, byteorder=ckpt.byteorder, file=source.name)
    policy = DEFAULT_POLICY
    # The handlers' helpers (builder, limits, charge, check_key) live on a VM
    # object; this one never runs, it only lends them.
    vm = Unpickler(b".", policy=policy, builder=builder, limits=DEFAULT_LIMITS)
    calls: dict[str, object] = {}

    class Restricted(_pickle.Unpickler):
        def find_class(self, module, name):
            key = f"{module}.{name}"
            found = calls.get(key)
            if found is None:
                handler = policy.lookup(module, name)
                if handler is None:
                    raise _pickle.UnpicklingError(f"global {key!r} refused")
                found = _Call(handler, vm) if handler.push is None else handler.value(vm)
                calls[key] = found
            return found

        def persistent_load(self, pid):
            ref = storage_ref_from_pid(ckpt.persistent_id(pid))
            return LoadedStorage(ref, builder.storage(ref))

    gc.disable()  # as safeload's VM does while it runs
    try:
        return Restricted(io.BytesIO(stream.data)).load()
    finally:
        gc.enable()


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return type(a) is type(b) and list(a) == list(b) and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


def main(argv: list[str]) -> int:
    import safeload

    path = argv[0] if argv else str(Path(__file__).resolve().parent / "data" / "small.pt")
    assert _same(safeload.load(path), prototype_load(path)), "results differ"
    timings = {"safeload.load": [], "C _pickle + safeload allowlist": []}
    for _ in range(7):
        for name, fn in (("safeload.load", safeload.load),
                         ("C _pickle + safeload allowlist", prototype_load)):
            gc.collect()
            t = time.process_time()  # CPU: the machine may be shared
            result = fn(path)
            timings[name].append(time.process_time() - t)
            del result
    for name, ts in timings.items():
        print(f"{name:<32} CPU median {statistics.median(ts) * 1e3:8.1f} ms   "
              f"min {min(ts) * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
