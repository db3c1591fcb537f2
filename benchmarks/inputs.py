"""Benchmark inputs, generated on demand into ``benchmarks/data/`` (git-ignored).

Strategy: every input is described by a small spec (``SPECS``); a manifest
(``data/manifest.json``) records the spec each file was made from, so a file is
only regenerated when its spec changes or it is missing. The torch checkpoints
are written by ``torch.save`` itself (the format under test); the
``.safetensors`` twins hold the same tensors. Run as a script to generate:

    python benchmarks/inputs.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MANIFEST = DATA / "manifest.json"

#: name -> how to make it. ``kind``: "many" = a state dict of many small tensors
#: (the pickle VM's workload), "big" = few large tensors (the data path's).
SPECS: dict[str, dict] = {
    # 20 000 float32 tensors of 4x4 in an OrderedDict with torch's _metadata:
    # ~6 MB, data.pkl ~ 650 000 opcodes.
    "small": {"kind": "many", "tensors": 20_000, "shape": [4, 4], "metadata": True},
    # 256 tensors of 1024x1024 float32: 1 GiB.
    "big": {"kind": "big", "tensors": 256, "shape": [1024, 1024]},
    # 256 tensors of 2048x2048 float32: 4 GiB, for the mmap flatness check.
    "huge": {"kind": "big", "tensors": 256, "shape": [2048, 2048]},
}
#: inputs that also get a .safetensors twin
SAFETENSORS = ("small", "big")


def spec_bytes(spec: dict) -> int:
    n = 1
    for d in spec["shape"]:
        n *= d
    return spec["tensors"] * n * 4


def _state_dict(spec: dict):
    import torch

    tensors = OrderedDict()
    shape = tuple(spec["shape"])
    if spec["kind"] == "many":
        g = torch.Generator().manual_seed(0)
        for i in range(spec["tensors"]):
            tensors[f"blocks.{i // 4}.layer{i % 4}.weight"] = torch.rand(shape, generator=g)
    else:
        for i in range(spec["tensors"]):
            # Distinct, cheap-to-make content (torch.rand on 4 GiB is slow).
            tensors[f"layers.{i}.weight"] = torch.full(shape, float(i) + 0.5)
    if spec.get("metadata"):
        # What nn.Module.state_dict() attaches: one entry per module.
        tensors._metadata = OrderedDict(
            (f"blocks.{i}", {"version": 1}) for i in range(spec["tensors"] // 4)
        )
    return tensors


def _pickle_span(path: Path) -> tuple[int, int]:
    """(offset, size) of data.pkl's bytes in the zip, for the read-alone baseline."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            header = fh.read(30)
        name_len = int.from_bytes(header[26:28], "little")
        extra_len = int.from_bytes(header[28:30], "little")
        return info.header_offset + 30 + name_len + extra_len, info.file_size


def _count_ops(path: Path) -> int:
    import pickletools

    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        return sum(1 for _ in pickletools.genops(z.read(name)))


def load_manifest() -> dict:
    try:
        return json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}


def generate(names: list[str], log=print) -> dict:
    """Make the named inputs that are missing or stale; return the manifest."""
    import torch
    from safetensors.torch import save_file

    DATA.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest()
    for name in names:
        spec = SPECS[name]
        pt = DATA / f"{name}.pt"
        st = DATA / f"{name}.safetensors"
        entry = manifest.get(name)
        fresh = (
            entry is not None
            and entry.get("spec") == spec
            and pt.exists()
            and pt.stat().st_size == entry.get("size")
            and (name not in SAFETENSORS or st.exists())
        )
        if fresh:
            continue
        need = spec_bytes(spec) * (2 if name in SAFETENSORS else 1) * 1.05 + (1 << 20)
        free = shutil.disk_usage(DATA).free
        if free < need:
            log(f"skipping input '{name}': needs {need / 2**30:.1f} GiB of disk, "
                f"{free / 2**30:.1f} GiB free")
            manifest.pop(name, None)
            continue
        t0 = time.perf_counter()
        state = _state_dict(spec)
        torch.save(state, pt)
        if name in SAFETENSORS:
            save_file(dict(state), st)
        del state
        offset, size = _pickle_span(pt)
        manifest[name] = {
            "spec": spec,
            "size": pt.stat().st_size,
            "safetensors_size": st.stat().st_size if name in SAFETENSORS else None,
            "tensors": spec["tensors"],
            "pickle_offset": offset,
            "pickle_size": size,
            "pickle_ops": _count_ops(pt),
        }
        MANIFEST.write_text(json.dumps(manifest, indent=1))
        log(f"made {pt.name} ({pt.stat().st_size / 2**20:.1f} MiB) in "
            f"{time.perf_counter() - t0:.1f} s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 4 GiB input")
    args = parser.parse_args(argv)
    names = [n for n in SPECS if not (args.quick and n == "huge")]
    generate(names, log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
