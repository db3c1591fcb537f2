"""Coverage-guided fuzzing of the pickle VM on raw bytes (atheris / libFuzzer).

Usage: ``python tests/fuzz/atheris_vm.py CORPUS_DIR [libFuzzer flags]``, e.g.
``-max_total_time=600 -rss_limit_mb=2048 -timeout=10``; seeds come from
``python tests/fuzz/make_seed_corpus.py OUT`` (``OUT/vm``).

The first input byte picks the mode (load with the numpy builder, load under
the records policy, analysis mode with the inert builder as the scanner runs
it); the rest is the pickle, run as a zip checkpoint's data.pkl would be, with
persistent ids resolved against ``atheris_common.STORAGES``. Only
SafeloadError may leave; any other exception is a finding.
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401 - imported before instrumentation: fuzz safeload, not numpy

with atheris.instrument_imports(include=["safeload"]):
    import safeload
    from safeload.formats.base import Checkpoint, PickleStream
    from safeload.formats.source import Source
    from safeload.loader import resolve_policy, run_pickle
    from safeload.rebuild import Builder, HostBuilder

from atheris_common import LIMIT_KWARGS, STORAGES

LIMITS = safeload.Limits(**LIMIT_KWARGS)
POLICIES = [resolve_policy(None, None), resolve_policy(None, None, True)]


class FuzzCheckpoint(Checkpoint):
    """A zip-like checkpoint: the fuzzed pickle plus fixed storage records."""

    def __init__(self, data: bytes) -> None:
        super().__init__(kind="zip", source=Source(b"", "fuzz"))
        self.data = data

    def main_pickle(self) -> PickleStream:
        return PickleStream(member="archive/data.pkl", data=self.data)

    def storage(self, key: str) -> memoryview:
        if key not in STORAGES:
            raise safeload.FormatError(f"no storage {key!r}")
        return memoryview(STORAGES[key])


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    ckpt = FuzzCheckpoint(body)
    try:
        if mode == 2:
            run_pickle(ckpt, Builder(), policy=POLICIES[0], limits=LIMITS,
                       on_finding=lambda err: None)
        else:
            run_pickle(ckpt, HostBuilder(ckpt.storage), policy=POLICIES[mode], limits=LIMITS)
    except safeload.SafeloadError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
