"""safeload.load (numpy backend) against torch.load as the oracle.

Every case of ``torch_cases`` is written by real ``torch.save`` with each pickle
protocol, read back by ``torch.load(weights_only=False)`` and by ``safeload.load``
from a path, a file object, bytes and an mmap, and the two results must be the same
checkpoint (``compare.assert_same_checkpoint``). The map_location tests write a
checkpoint whose storages are tagged ``cuda:1`` and load it with every form of
map_location torch accepts.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import safeload  # noqa: E402
from safeload.dtypes import DType  # noqa: E402

try:  # tests/unit as a package, or as a plain directory on sys.path
    from . import torch_cases
    from .compare import assert_same_checkpoint
except ImportError:
    import torch_cases  # type: ignore[no-redef]
    from compare import assert_same_checkpoint  # type: ignore[no-redef]


class Checkpoints:
    """Each (case, protocol) written once per session, and torch's reading of it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._oracles: dict[tuple[str, int], object] = {}

    def path(self, case_id: str, protocol: int) -> Path:
        path = self.directory / f"{case_id}-p{protocol}.pt"
        if not path.exists():
            torch_cases.save(torch_cases.build(case_id), path, protocol)
        return path

    def oracle(self, case_id: str, protocol: int) -> object:
        key = (case_id, protocol)
        if key not in self._oracles:
            self._oracles[key] = torch.load(self.path(case_id, protocol), weights_only=False)
        return self._oracles[key]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("torch-cases"))


def _load_from(source: str, path: Path) -> object:
    if source == "path":
        return safeload.load(str(path))
    if source == "fileobj":
        return safeload.load(io.BytesIO(path.read_bytes()))
    if source == "bytes":
        return safeload.load(path.read_bytes())
    if source == "mmap":
        return safeload.load(path, mmap=True)  # a PathLike, not a str
    raise AssertionError(source)


SOURCES = ("path", "fileobj", "bytes", "mmap")

MATRIX = [
    pytest.param(case_id, protocol, source, id=f"{case_id}-p{protocol}-{source}")
    for case_id in torch_cases.CASE_IDS
    for protocol in torch_cases.PROTOCOLS
    for source in SOURCES
]


@pytest.mark.parametrize(("case_id", "protocol", "source"), MATRIX)
def test_load_matches_torch_load(
    checkpoints: Checkpoints, case_id: str, protocol: int, source: str
) -> None:
    path = checkpoints.path(case_id, protocol)
    got = _load_from(source, path)
    assert_same_checkpoint(checkpoints.oracle(case_id, protocol), got, readonly=source == "mmap")


@pytest.mark.parametrize("protocol", torch_cases.PROTOCOLS, ids=lambda p: f"p{p}")
def test_file_object_left_open_and_reusable(checkpoints: Checkpoints, protocol: int) -> None:
    # torch.load reads a file object without closing it; safeload must not close it.
    path = checkpoints.path("bare-tensor", protocol)
    with path.open("rb") as fh:
        got = safeload.load(fh)
        assert not fh.closed
    assert_same_checkpoint(checkpoints.oracle("bare-tensor", protocol), got)


@pytest.mark.parametrize("encoding", ["ascii", "ASCII", "latin1"])
@pytest.mark.parametrize("protocol", torch_cases.PROTOCOLS, ids=lambda p: f"p{p}")
def test_encoding_argument_is_accepted(
    checkpoints: Checkpoints, protocol: int, encoding: str
) -> None:
    path = checkpoints.path("python-values", protocol)
    got = safeload.load(path, encoding=encoding)
    assert_same_checkpoint(checkpoints.oracle("python-values", protocol), got)


# --- map_location -------------------------------------------------------------------

CUDA_TAG = "cuda:1"


def _gpu_checkpoint() -> object:
    return {
        "shared": torch_cases.build("shared-storage"),
        "training": torch_cases.build("training-checkpoint"),
        "bf16": torch_cases.build("dtype-bfloat16"),
    }


class GpuCheckpoint:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[int, tuple[Path, object, list[tuple[str, int]]]] = {}

    def get(self, protocol: int) -> tuple[Path, object, list[tuple[str, int]]]:
        """(path, torch's result with map_location="cpu", the (location, nbytes)
        torch passes to a map_location callable, in call order)."""
        if protocol not in self._cache:
            path = self.directory / f"cuda1-p{protocol}.pt"
            torch_cases.saved_with_location(_gpu_checkpoint(), path, protocol, CUDA_TAG)
            oracle = torch.load(path, map_location="cpu", weights_only=False)
            calls: list[tuple[str, int]] = []

            def record(storage, location):
                calls.append((location, storage.nbytes()))
                return storage

            torch.load(path, map_location=record, weights_only=False)
            self._cache[protocol] = (path, oracle, calls)
        return self._cache[protocol]


@pytest.fixture(scope="session")
def gpu_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> GpuCheckpoint:
    return GpuCheckpoint(tmp_path_factory.mktemp("cuda-tagged"))


def test_gpu_checkpoint_really_carries_the_cuda_tag(gpu_checkpoint: GpuCheckpoint) -> None:
    # Guards the fixture: without the tag every map_location test would pass vacuously.
    _, _, calls = gpu_checkpoint.get(2)
    assert calls and {location for location, _ in calls} == {CUDA_TAG}


class _Recorder:
    def __init__(self, result: str) -> None:
        self.result = result
        self.calls: list[tuple[str, int]] = []

    def __call__(self, storage: safeload.Storage, location: str) -> safeload.Storage | None:
        assert isinstance(storage, safeload.Storage)
        assert storage.location == location
        self.calls.append((location, storage.nbytes()))
        return None if self.result == "none" else storage.cpu()


STATIC_FORMS = {
    "str-cpu": lambda: "cpu",
    "torch-device-cpu": lambda: torch.device("cpu"),
    "dict-cuda1-to-cpu": lambda: {CUDA_TAG: "cpu"},
    "none": lambda: None,  # numpy backend: data is host memory whatever the tag
}


@pytest.mark.parametrize("protocol", torch_cases.PROTOCOLS, ids=lambda p: f"p{p}")
@pytest.mark.parametrize("form", list(STATIC_FORMS))
def test_map_location_static_forms(gpu_checkpoint: GpuCheckpoint, form: str, protocol: int) -> None:
    path, oracle, _ = gpu_checkpoint.get(protocol)
    got = safeload.load(path, map_location=STATIC_FORMS[form]())
    assert_same_checkpoint(oracle, got)


@pytest.mark.parametrize("protocol", torch_cases.PROTOCOLS, ids=lambda p: f"p{p}")
@pytest.mark.parametrize("returns", ["none", "storage.cpu()"])
def test_map_location_callable_sees_each_storage_with_its_tag(
    gpu_checkpoint: GpuCheckpoint, returns: str, protocol: int
) -> None:
    path, oracle, torch_calls = gpu_checkpoint.get(protocol)
    recorder = _Recorder("none" if returns == "none" else "cpu")
    got = safeload.load(path, map_location=recorder)
    assert [location for location, _ in recorder.calls] == [CUDA_TAG] * len(torch_calls)
    # One call per storage, as torch makes; the order storages are visited in is free.
    assert sorted(recorder.calls) == sorted(torch_calls)
    assert_same_checkpoint(oracle, got)


@pytest.mark.parametrize("protocol", torch_cases.PROTOCOLS, ids=lambda p: f"p{p}")
def test_map_location_callable_storage_api(gpu_checkpoint: GpuCheckpoint, protocol: int) -> None:
    path, oracle, torch_calls = gpu_checkpoint.get(protocol)
    seen: list[tuple[str, str, str, int, int]] = []

    def move(storage, location):
        # The parts of torch.UntypedStorage that map_location callables use:
        # nbytes() is a method, as in torch, so callables written for torch work.
        assert isinstance(storage.dtype, DType)
        on_cpu = storage.cpu()
        on_cuda2 = storage.cuda(2)
        assert isinstance(on_cpu, safeload.Storage) and isinstance(on_cuda2, safeload.Storage)
        seen.append(
            (
                on_cpu.location,
                on_cuda2.location,
                storage.location,
                storage.nbytes(),
                on_cpu.nbytes(),
            )
        )
        return storage.cuda(0)

    got = safeload.load(path, map_location=move)
    assert sorted(seen) == sorted(("cpu", "cuda:2", CUDA_TAG, n, n) for _, n in torch_calls)
    assert_same_checkpoint(oracle, got)


# --- import hygiene -----------------------------------------------------------------


def test_numpy_backend_never_imports_torch(checkpoints: Checkpoints, tmp_path: Path) -> None:
    path = checkpoints.path("training-checkpoint", 4)
    child = textwrap.dedent(
        f"""
        import json, sys
        import safeload
        after_import = "torch" in sys.modules
        safeload.load({str(path)!r})
        print(json.dumps([after_import, sorted(m for m in sys.modules
                                             if m == "torch" or m.startswith("torch."))]))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    after_import, torch_modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert not after_import, "import safeload imported torch"
    assert torch_modules == [], f"safeload.load imported {torch_modules}"
