"""Write the atheris seed corpus: ``python tests/fuzz/make_seed_corpus.py OUT``.

``OUT/zip``: checkpoints written with torch (every pickle protocol, views,
Parameters, optimizer state, nested values) and the benign corpus files up to
300 kB (zip, legacy, tar, .npy / .npz). ``OUT/vm``: the pickles inside them
(data.pkl of each zip), each behind the three mode bytes of atheris_vm.py, plus
small hand-written pickles. The corpus is generated, not committed.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzkit import framed, op, seed_checkpoints, zip_seeds  # noqa: E402


def _write(directory: Path, data: bytes) -> None:
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def build(out: Path) -> tuple[int, int]:
    """Write both corpora; returns (zip seeds, vm seeds)."""
    zip_dir, vm_dir = out / "zip", out / "vm"
    zip_dir.mkdir(parents=True, exist_ok=True)
    vm_dir.mkdir(parents=True, exist_ok=True)
    seeds = seed_checkpoints()
    for data in seeds.values():
        _write(zip_dir, data)
    pickles = [records["data.pkl"] for _, records in zip_seeds().values()]
    pickles += [framed(op("EMPTY_DICT"), 2), framed(op("NONE"), 0),
                b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idq\x00\x85R."]
    for data in pickles:
        for mode in (0, 1, 2):
            _write(vm_dir, bytes([mode]) + data)
    return len(list(zip_dir.iterdir())), len(list(vm_dir.iterdir()))


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
