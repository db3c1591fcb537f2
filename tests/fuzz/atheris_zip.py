"""Coverage-guided fuzzing of the containers and the whole load (atheris).

Usage: ``python tests/fuzz/atheris_zip.py CORPUS_DIR [libFuzzer flags]``; seeds
from ``python tests/fuzz/make_seed_corpus.py OUT`` (``OUT/zip``: torch-saved
checkpoints and the benign corpus, every format).

Each input is a whole file: ``safeload.load`` sniffs it (zip, legacy stream,
tar, .npy / .npz, bare pickle), validates the container and runs the pickle;
zip-looking inputs also go through ``open_torch_zip`` alone, with every record
read. Only SafeloadError may leave.
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401 - imported before instrumentation: fuzz safeload, not numpy

with atheris.instrument_imports(include=["safeload"]):
    import safeload
    from safeload.formats.source import Source
    from safeload.formats.zip import open_torch_zip

from atheris_common import LIMIT_KWARGS

LIMITS = safeload.Limits(**LIMIT_KWARGS)


def test_one_input(data: bytes) -> None:
    try:
        safeload.load(data, limits=LIMITS)
    except safeload.SafeloadError:
        pass
    if data[:2] == b"PK":
        try:
            archive = open_torch_zip(Source(data, "fuzz"), limits=LIMITS)
            for name in archive.records:
                archive.read(name, verify_crc=True)
        except safeload.SafeloadError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
