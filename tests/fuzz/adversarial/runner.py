"""Child process of the adversarial suite: load hostile inputs, watch for effects.

Usage: ``python runner.py MANIFEST RESULTS``. MANIFEST is JSON written by
``harness.py``: the canary directory, a benign checkpoint, memory budget, and
the cases (input file, load keyword arguments, modes). RESULTS receives one
JSON line when a case starts and one when it ends, flushed, so the parent can
name the case that crashed or hung the process.

Strategy: everything the child could legitimately import is imported first
(all of safeload, ml_dtypes through a bfloat16 load, a warm-up of each format),
then a baseline is taken: ``sys.modules``, a fingerprint of every object an
attack could patch (module namespaces of builtins, collections, copyreg,
numpy and safeload; OrderedDict's class dict; numpy's dtype singletons; the
allowlist; os.environ; cwd; sys.path), and the value of a benign checkpoint.
After every hostile input the child checks: only SafeloadError escaped, no
file appeared in the canary directory (the child runs in it), no module was
imported, the fingerprint is unchanged, the benign checkpoint still loads to
the same value. RLIMIT_AS bounds memory; the parent bounds time. The
process-wide copyreg extension registry is filled with code-running entries
first, so EXT1/2/4 would find them if safeload ever consulted it.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
import traceback


def _digest(value, depth: int = 0):
    """A comparable summary of a loaded checkpoint (types, shapes, bytes)."""
    import numpy as np

    if depth > 50:
        return "<deep>"
    t = type(value)
    if t is np.ndarray:
        return ("ndarray", value.dtype.str, value.shape, value.strides,
                value.tobytes() if value.size < 100_000 else value.size)
    if t in (dict,) or hasattr(value, "items") and t.__module__ == "collections":
        return (t.__name__, [(repr(k)[:200], _digest(v, depth + 1)) for k, v in value.items()],
                _digest(getattr(value, "_metadata", None), depth + 1))
    if t in (list, tuple):
        return (t.__name__, [_digest(v, depth + 1) for v in value])
    if t in (set, frozenset):
        return (t.__name__, sorted(repr(v)[:200] for v in value))
    return (t.__name__, repr(value)[:200])


def _fingerprint() -> dict:
    import collections
    import copyreg

    import numpy as np

    import safeload.allowlist
    import safeload.dtypes

    fp: dict[str, object] = {}
    watched = ["builtins", "collections", "copyreg", "_compat_pickle", "codecs", "_codecs",
               "os", "posix", "io", "pickle", "numpy", "ml_dtypes", "zipfile", "struct"]
    watched += [m for m in sys.modules if m == "safeload" or m.startswith("safeload.")]
    for name in sorted(set(watched)):
        module = sys.modules.get(name)
        if module is not None:
            fp[f"module {name}"] = {k: id(v) for k, v in vars(module).items()
                                    if k != "__warningregistry__"}
    for cls in (collections.OrderedDict, collections.Counter, np.ndarray, np.dtype):
        fp[f"class {cls.__qualname__}"] = {k: id(v) for k, v in vars(cls).items()}
    fp["numpy dtypes"] = [(c, np.dtype(c).str, np.dtype(c).byteorder, np.dtype(c).isnative,
                           np.dtype(c).itemsize)
                          for c in ("<f4", ">f4", "=f4", "f8", "?", "b1", "i1", "u1", "<i2",
                                    "<i4", "<i8", "<u2", "<u4", "<u8", "<f2", "c8", "c16")]
    fp["copyreg"] = (
        {id(k): id(v) for k, v in copyreg.dispatch_table.items()},
        dict(copyreg._extension_registry),
        dict(copyreg._inverted_registry),
    )
    policy = safeload.allowlist.DEFAULT_POLICY
    fp["allowlist"] = (
        {k: (id(v), v.reduce, v.new, v.push) for k, v in policy.handlers.items()},
        dict(policy.trusted), getattr(policy, "records", None),
        {k: id(v) for k, v in safeload.allowlist._DEFAULT_HANDLERS.items()},
    )
    fp["dtypes"] = {k: (v.name, v.itemsize, v.numpy_name)
                    for k, v in safeload.dtypes.DTYPES.items()}
    fp["environ"] = dict(os.environ)
    fp["cwd"] = os.getcwd()
    fp["sys.path"] = list(sys.path)
    fp["limits"] = (sys.getrecursionlimit(), sys.get_int_max_str_digits())
    return fp


def _diff(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def _load(safeload, mode: str, case: dict, path: str):
    """One load; returns (value, findings)."""
    kwargs = dict(case.get("kwargs") or {})
    if "limits" in kwargs:
        kwargs["limits"] = safeload.Limits(**kwargs["limits"])
    via = case.get("via", "bytes")
    if via == "bytes":
        with open(path, "rb") as fh:
            target = fh.read()
    else:
        target = path
        if via == "mmap":
            kwargs["mmap"] = True
    if mode == "load":
        return safeload.load(target, **kwargs), 0
    if mode == "records":
        return safeload.load(target, records=True, **kwargs), 0
    if mode == "torch":  # the torch backend: real tensors from the same records
        import safeload.torch

        # map_location="cpu": without it a storage tagged for a device this
        # machine lacks raises torch's own RuntimeError, as torch.load does
        return safeload.torch.load(target, map_location="cpu", encoding="ASCII", **kwargs), 0
    if mode == "scan":  # the scanner on the file: it must never raise
        from safeload.scan import FileReport, scan_file

        report = scan_file(path, limits=kwargs.get("limits"))
        if not isinstance(report, FileReport):
            return ("skipped", report.reason), 0
        internal = [f.message for f in report.findings
                    if "internal error" in f.message]
        return ("report", report.verdict, internal), len(report.findings)
    raise ValueError(mode)


def main() -> int:
    manifest_path, results_path = sys.argv[1], sys.argv[2]
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    budget = manifest["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
    canary = manifest["canary"]
    os.chdir(canary)

    import copyreg

    # Code-running entries in the process-wide extension registry: EXT1/2/4
    # must never consult it.
    for code, (module, name) in enumerate(
        [("os", "system"), ("posix", "system"), ("builtins", "exec"), ("builtins", "eval"),
         ("subprocess", "Popen"), ("builtins", "open")], start=1
    ):
        copyreg.add_extension(module, name, code)
    copyreg.add_extension("os", "popen", 0x1234)
    copyreg.add_extension("builtins", "__import__", 0x7FFFFFF0)

    import importlib
    import pkgutil

    import numpy  # noqa: F401

    import safeload

    torch_mode = any("torch" in case["modes"] for case in manifest["cases"])
    if torch_mode:
        import torch  # noqa: F401 - the torch backend's one import, before the baseline
    for info in pkgutil.walk_packages(safeload.__path__, "safeload."):
        if info.name.split(".")[1] in ("cli", "__main__") or (
                info.name == "safeload.torch" and not torch_mode):
            continue  # click / torch: never imported by safeload.load
        importlib.import_module(info.name)
    from safeload.dtypes import numpy_dtype

    numpy_dtype("ml_dtypes.bfloat16")
    # the codecs safeload itself names (zip names without the UTF-8 flag are
    # cp437); a file never chooses a codec
    for codec in ("cp437", "utf-8", "latin-1", "ascii", "raw-unicode-escape"):
        b"x".decode(codec)

    with open(manifest["benign"], "rb") as fh:
        benign = fh.read()
    reference = _digest(safeload.load(benign))
    for warm in manifest.get("warmup", []):
        for mode in ("load", "records", "scan") + (("torch",) if torch_mode else ()):
            try:
                _load(safeload, mode, {"via": "bytes"}, warm)
            except safeload.SafeloadError:
                pass
    try:
        safeload.load(b"\x80\x02cos\nsystem\n.")
    except safeload.SafeloadError:
        pass
    gc.collect()
    modules = set(sys.modules)
    fingerprint = _fingerprint()
    fds = len(os.listdir("/proc/self/fd"))

    out = open(results_path, "a", buffering=1)
    for case in manifest["cases"]:
        for mode in case["modes"]:
            out.write(json.dumps({"start": case["id"], "mode": mode}) + "\n")
            record = {"id": case["id"], "mode": mode, "findings": 0}
            start = time.perf_counter()
            try:
                value, record["findings"] = _load(safeload, mode, case, case["path"])
                record["outcome"] = "value"
                if mode == "scan":
                    record["scan"] = list(value)
                del value
            except safeload.SafeloadError as err:
                record["outcome"] = "refused"
                record["kind"] = err.kind
                record["type"] = type(err).__name__
                text = str(err)
                record["message"] = text[:300]
                record["message_length"] = len(text)
            except BaseException as exc:  # noqa: BLE001 - what the suite looks for
                record["outcome"] = "escape"
                record["type"] = type(exc).__name__
                record["message"] = str(exc)[:300]
                record["traceback"] = traceback.format_exc()[-2000:]
            record["elapsed"] = time.perf_counter() - start
            record["new_modules"] = sorted(set(sys.modules) - modules)
            record["canary"] = sorted(os.listdir(canary))
            try:
                record["changed"] = _diff(fingerprint, _fingerprint())
                record["benign_ok"] = _digest(safeload.load(benign)) == reference
            except BaseException as exc:  # noqa: BLE001 - the hostile input broke something
                record["changed"] = [f"check failed: {type(exc).__name__}: {exc}"]
                record["benign_ok"] = False
            record["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            out.write(json.dumps(record) + "\n")
    gc.collect()
    out.write(json.dumps({"done": True, "fds_before": fds,
                          "fds_after": len(os.listdir("/proc/self/fd")) - 1}) + "\n")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
