"""map_location and mmap, side by side with torch.load on the same files.

A CPU-only machine cannot write GPU checkpoints, so ``torch_cases.saved_with_location``
tags every storage record ``cuda:1`` at save time (torch's location tag is patched,
the bytes are the CPU tensors'). Each form of map_location torch.load accepts is
then given to both loaders: results are compared with ``assert_same_torch``, and
where torch raises (no CUDA here), safeload must raise the same exception type
with the same message. mmap is checked structurally: every storage must lie
inside the file's private mapping.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import safeload.torch as st  # noqa: E402

try:  # tests/unit as a package, or as a plain directory on sys.path
    from . import torch_cases
    from .test_torch_backend import assert_same_torch
except ImportError:
    import torch_cases  # type: ignore[no-redef]
    from test_torch_backend import assert_same_torch  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="these tests pin torch's behaviour without CUDA")


def _state() -> dict:
    torch.manual_seed(0)
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "base": base,
        "view": base.t()[1:],
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "ints": torch.arange(5, dtype=torch.int64),
        "empty": torch.empty(0, 3),
    }


@pytest.fixture(scope="module")
def cuda1_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("map-location") / "cuda1.pt"
    torch_cases.saved_with_location(_state(), path, 2, "cuda:1")
    return path


@pytest.fixture(scope="module")
def cpu_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("map-location") / "cpu.pt"
    torch_cases.save(_state(), path, 4)
    return path


def _both(path: Path, map_location) -> tuple[object, object]:
    return (torch.load(path, map_location=map_location, weights_only=False),
            st.load(path, map_location=map_location))


def _same_failure(path: Path, map_location) -> BaseException:
    """Both loaders raise; same type, same message. Returns safeload's."""
    with pytest.raises(Exception) as theirs:  # noqa: PT011 - compared below
        torch.load(path, map_location=map_location, weights_only=False)
    with pytest.raises(Exception) as ours:  # noqa: PT011
        st.load(path, map_location=map_location)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
    return ours.value


CPU_FORMS = {
    "str-cpu": "cpu",
    "device-cpu": torch.device("cpu"),
    "dict-cuda1-to-cpu": {"cuda:1": "cpu"},
    "callable-returns-storage": lambda storage, loc: storage,
    "callable-returns-cpu-copy": lambda storage, loc: storage.cpu(),
}


@pytest.mark.parametrize("form", CPU_FORMS, ids=list(CPU_FORMS))
def test_forms_that_land_on_cpu_match_torch(cuda1_file: Path, form: str) -> None:
    expected, got = _both(cuda1_file, CPU_FORMS[form])
    assert_same_torch(expected, got)
    assert got["base"].device == torch.device("cpu")


@pytest.mark.parametrize("map_location", ["meta", torch.device("meta")], ids=["str", "device"])
@pytest.mark.parametrize("which", ["cpu", "cuda1"])
def test_meta_matches_torch(cuda1_file: Path, cpu_file: Path, map_location, which: str) -> None:
    path = cpu_file if which == "cpu" else cuda1_file
    expected, got = _both(path, map_location)
    assert_same_torch(expected, got)
    assert got["base"].is_meta and got["view"].stride() == expected["view"].stride()
    assert type(got["param"]) is torch.nn.Parameter


def test_callable_receives_the_same_storages_and_tags(cuda1_file: Path) -> None:
    def recorder(calls: list):
        def record(storage, loc):
            calls.append((type(storage), storage.device.type, storage.nbytes(), loc))
            return storage
        return record

    theirs: list = []
    ours: list = []
    torch.load(cuda1_file, map_location=recorder(theirs), weights_only=False)
    st.load(cuda1_file, map_location=recorder(ours))
    assert ours == theirs
    assert {call[3] for call in ours} == {"cuda:1"}
    assert {call[0] for call in ours} == {torch.UntypedStorage}


def test_callable_may_return_none_on_a_cpu_file(cpu_file: Path) -> None:
    expected, got = _both(cpu_file, lambda storage, loc: None)
    assert_same_torch(expected, got)


FAILING_FORMS = {
    "none-keeps-cuda1": None,
    "callable-storage.cuda(1)": lambda storage, loc: storage.cuda(1),
    "callable-returns-none": lambda storage, loc: None,
    "str-cuda0": "cuda:0",
    "dict-cuda1-to-cuda0": {"cuda:1": "cuda:0"},
    "device-cuda": torch.device("cuda", 0),
}


@pytest.mark.parametrize("form", FAILING_FORMS, ids=list(FAILING_FORMS))
def test_absent_cuda_fails_like_torch(cuda1_file: Path, form: str) -> None:
    error = _same_failure(cuda1_file, FAILING_FORMS[form])
    if form != "callable-storage.cuda(1)":
        assert str(error).startswith(
            "Attempting to deserialize object on a CUDA device but "
            "torch.cuda.is_available() is False"
        )


def test_unknown_device_fails_like_torch(cpu_file: Path) -> None:
    _same_failure(cpu_file, "nosuchdevice")


def test_exceptions_from_the_callable_pass_through_unchanged(cpu_file: Path) -> None:
    class Mine(Exception):
        pass

    raised = Mine("from the callable")

    def boom(storage, loc):
        raise raised

    with pytest.raises(Mine) as info:
        st.load(cpu_file, map_location=boom)
    assert info.value is raised


def test_callable_returning_a_non_storage_is_a_type_error(cpu_file: Path) -> None:
    with pytest.raises(TypeError):
        torch.load(cpu_file, map_location=lambda storage, loc: 42, weights_only=False)
    with pytest.raises(TypeError, match="UntypedStorage"):
        st.load(cpu_file, map_location=lambda storage, loc: 42)


def test_storages_stay_shared_through_the_callable(cuda1_file: Path) -> None:
    got = st.load(cuda1_file, map_location=lambda storage, loc: storage)
    assert got["base"].untyped_storage().data_ptr() == got["view"].untyped_storage().data_ptr()
    got["base"][0, 1] = 100.0
    assert got["view"][0, 0].item() == 100.0


# --- mmap -------------------------------------------------------------------------------


def _mappings_of(path: Path) -> list[tuple[int, int]]:
    """Address ranges of ``path`` in this process's memory map (Linux)."""
    target = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == target:
                low, high = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((low, high))
    return ranges


def _big_state() -> dict:
    torch.manual_seed(0)
    shared = torch.randn(64, 64)
    return {"a": shared, "a_t": shared.t(), "b": torch.randn(1000, dtype=torch.float64),
            "c": torch.arange(100, dtype=torch.int16), "p": torch.nn.Parameter(torch.ones(7))}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_mmap_storages_lie_inside_the_private_mapping(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    torch.save(_big_state(), path)
    before = path.read_bytes()
    state = st.load(path, mmap=True)
    assert_same_torch(torch.load(path, weights_only=False), state)

    ranges = _mappings_of(path)
    assert ranges, "the file is not mapped"
    for name, t in state.items():
        start = t.untyped_storage().data_ptr()
        end = start + t.untyped_storage().nbytes()
        assert any(low <= start and end <= high for low, high in ranges), name
    # private copy-on-write: writes reach the tensors, never the file
    state["b"].fill_(3.0)
    assert state["b"].sum().item() == 3000.0
    assert path.read_bytes() == before


def test_mmap_from_an_open_file_object(tmp_path: Path) -> None:
    path = tmp_path / "f.pt"
    torch.save(_big_state(), path)
    with open(path, "rb") as fh:
        got = st.load(fh, mmap=True)
    assert_same_torch(torch.load(path, weights_only=False), got)


def test_mmap_needs_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "f.pt"
    torch.save({"x": torch.ones(1)}, path)
    with pytest.raises(ValueError, match="mmap"):
        st.load(io.BytesIO(path.read_bytes()), mmap=True)


def _record_offsets(path: Path) -> dict[str, int]:
    """File offset of each stored data/<key> record's bytes."""
    raw = path.read_bytes()
    offsets = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            head = info.header_offset
            name_len = int.from_bytes(raw[head + 26 : head + 28], "little")
            extra_len = int.from_bytes(raw[head + 28 : head + 30], "little")
            offsets[info.filename] = head + 30 + name_len + extra_len
    return offsets


def test_copy_mode_builds_storages_over_one_read_buffer(tmp_path: Path) -> None:
    """Without mmap the file is read once; storages are views of that buffer, so
    the distance between two storages equals the distance of their records."""
    path = tmp_path / "one-buffer.pt"
    torch.save({"a": torch.randn(64, 64), "b": torch.randn(1000, dtype=torch.float64)}, path)
    state = st.load(path)
    offsets = {name.rsplit("/", 1)[-1]: off for name, off in _record_offsets(path).items()
               if "/data/" in name}
    pointers = {}
    for key, t in zip(("0", "1"), (state["a"], state["b"]), strict=True):
        pointers[key] = t.untyped_storage().data_ptr()
    assert pointers["1"] - pointers["0"] == offsets["1"] - offsets["0"]
