"""safeload.torch.load against torch.load as the oracle.

Every case of ``torch_cases`` is written by real ``torch.save`` with each pickle
protocol and read back by ``torch.load(weights_only=False)`` (our own files, so
trusted) and by ``safeload.torch.load``; ``assert_same_torch`` walks both results
and requires the same containers, the same object identities, and tensors of the
same class (Tensor / Parameter), dtype, shape, stride, storage offset,
requires_grad, conj / neg bits, whole-storage bytes, and the same aliasing (which
tensors share an ``UntypedStorage``). The real-world corpus (every benign file
``torch.load(weights_only=True)`` accepts: zip, legacy and tar) is compared the same
way, with ``weights_only=True`` as the oracle. The other files of this family import
``assert_same_torch`` from here.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safeload  # noqa: E402
import safeload.torch as st  # noqa: E402
from safeload.errors import FormatError, SafeloadError  # noqa: E402

try:  # tests/unit as a package, or as a plain directory on sys.path
    from . import torch_cases
except ImportError:
    import torch_cases  # type: ignore[no-redef]

from corpus_paths import CORPUS_ROOT as CORPUS  # noqa: E402

# --- the comparison -------------------------------------------------------------------

_IDENTITY_TYPES = (list, dict, set, bytearray)
_SCALARS = (type(None), bool, int, str, bytes, bytearray)


def _fail(path: str, message: str) -> None:
    raise AssertionError(f"at {path}: {message}")


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def storage_bytes(t: torch.Tensor) -> bytes:
    """Every byte of ``t``'s storage (not only the ones ``t`` covers)."""
    storage = t.untyped_storage()
    if storage.device.type == "meta" or storage.nbytes() == 0:
        return b""
    return torch.empty(0, dtype=torch.uint8).set_(storage).numpy().tobytes()


class _TorchWalker:
    def __init__(self) -> None:
        self.expected_seen: dict[int, object] = {}
        self.got_seen: dict[int, object] = {}
        self.keepalive: list[object] = []
        self.tensors: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def compare(self, e: object, g: object, path: str) -> None:
        if isinstance(e, _IDENTITY_TYPES):
            if id(e) in self.expected_seen:
                if self.expected_seen[id(e)] is not g:
                    _fail(path, "torch returned one object here and earlier; safeload two")
                return
            if id(g) in self.got_seen:
                _fail(path, "safeload returned an object seen earlier, torch a new one")
            self.expected_seen[id(e)] = g
            self.got_seen[id(g)] = e
            self.keepalive += [e, g]
        if isinstance(e, torch.Tensor):
            self.compare_tensor(e, g, path)
        elif isinstance(e, (torch.Size, torch.dtype, torch.device, torch.qscheme)):
            if type(g) is not type(e) or g != e:
                _fail(path, f"expected {type(e).__name__} {e!r}, got {type(g).__name__} {g!r}")
        elif isinstance(e, np.ndarray):
            if type(g) is not np.ndarray or g.dtype != e.dtype or g.shape != e.shape:
                _fail(path, f"expected array {e.dtype}{e.shape}, got {g!r:.80}")
            if e.size and g.strides != e.strides or g.tobytes() != e.tobytes():
                _fail(path, "array strides or bytes differ")
        elif isinstance(e, np.generic):
            if type(g) is not type(e) or g.tobytes() != e.tobytes():
                _fail(path, f"expected numpy {type(e).__name__} {e!r}, got {g!r}")
        elif isinstance(e, dict):
            self.compare_dict(e, g, path)
        elif isinstance(e, (list, tuple)):
            if type(g) is not type(e) or len(g) != len(e):
                _fail(path, f"expected {type(e).__name__} of {len(e)}, got {g!r:.80}")
            for i, (ei, gi) in enumerate(zip(e, g, strict=True)):
                self.compare(ei, gi, f"{path}[{i}]")
        elif isinstance(e, (set, frozenset)):
            if type(g) is not type(e) or {(type(x), x) for x in e} != {(type(x), x) for x in g}:
                _fail(path, f"expected {e!r:.80}, got {g!r:.80}")
        elif isinstance(e, float):
            if type(g) is not float or _bits(e) != _bits(g):
                _fail(path, f"expected {e!r}, got {g!r}")
        elif isinstance(e, complex):
            if type(g) is not complex or (_bits(e.real), _bits(e.imag)) != (
                _bits(g.real), _bits(g.imag)
            ):
                _fail(path, f"expected {e!r}, got {g!r}")
        elif isinstance(e, _SCALARS):
            if type(g) is not type(e) or g != e:
                _fail(path, f"expected {type(e).__name__} {e!r:.80}, got {g!r:.80}")
        else:
            _fail(path, f"the oracle holds a {type(e)}; teach the walker about it")

    def compare_dict(self, e: dict, g: object, path: str) -> None:
        if type(g) is not type(e):
            _fail(path, f"expected {type(e).__name__}, got {type(g).__name__}")
        assert isinstance(g, dict)
        if len(g) != len(e):
            _fail(path, f"expected {len(e)} keys, got {len(g)}")
        for i, (ek, gk) in enumerate(zip(e, g, strict=True)):
            self.compare(ek, gk, f"{path}.keys()[{i}]")
        for key in e:
            self.compare(e[key], g[key], f"{path}[{key!r}]")
        e_meta, g_meta = getattr(e, "_metadata", None), getattr(g, "_metadata", None)
        if (e_meta is None) != (g_meta is None):
            _fail(path, f"_metadata: expected {e_meta is not None}, got {g_meta is not None}")
        if e_meta is not None:
            self.compare(e_meta, g_meta, f"{path}._metadata")

    def compare_tensor(self, e: torch.Tensor, g: object, path: str) -> None:
        if type(g) is not type(e):
            _fail(path, f"expected {type(e).__name__}, got {type(g).__name__}")
        assert isinstance(g, torch.Tensor)
        for what in ("dtype", "shape", "device", "requires_grad", "is_quantized"):
            if getattr(g, what) != getattr(e, what):
                _fail(path, f"{what}: expected {getattr(e, what)}, got {getattr(g, what)}")
        for what in ("stride", "storage_offset", "is_conj", "is_neg"):
            if getattr(g, what)() != getattr(e, what)():
                _fail(path, f"{what}: expected {getattr(e, what)()}, got {getattr(g, what)()}")
        if g.untyped_storage().nbytes() != e.untyped_storage().nbytes():
            _fail(path, "storage sizes differ")
        if storage_bytes(g) != storage_bytes(e):
            _fail(path, "storage bytes differ")
        if e.is_quantized:
            scheme = e.qscheme()
            if g.qscheme() != scheme:
                _fail(path, f"qscheme {scheme} expected, got {g.qscheme()}")
            if scheme == torch.per_tensor_affine:
                if (_bits(g.q_scale()), g.q_zero_point()) != (_bits(e.q_scale()),
                                                              e.q_zero_point()):
                    _fail(path, "scale / zero point differ")
            else:
                self.compare_tensor(e.q_per_channel_scales(), g.q_per_channel_scales(),
                                    f"{path}.scales")
                self.compare_tensor(e.q_per_channel_zero_points(),
                                    g.q_per_channel_zero_points(), f"{path}.zero_points")
                if g.q_per_channel_axis() != e.q_per_channel_axis():
                    _fail(path, "axis differs")
        self.tensors.append((path, e, g))
        self.keepalive += [e, g]

    def check_aliasing(self) -> None:
        """Tensors share a storage in safeload exactly when they do in torch."""
        def groups(side: int) -> set[frozenset[str]]:
            by_ptr: dict[int, set[str]] = collections.defaultdict(set)
            for entry in self.tensors:
                t = entry[side]
                if t.untyped_storage().nbytes():  # empty storages all have address 0
                    by_ptr[t.untyped_storage().data_ptr()].add(entry[0])
            return {frozenset(paths) for paths in by_ptr.values()}

        if self.tensors and self.tensors[0][1].device.type == "meta":
            return  # meta storages have no addresses
        expected, got = groups(1), groups(2)
        if expected != got:
            _fail("aliasing", f"torch shares storages as {sorted(map(sorted, expected))}, "
                  f"safeload as {sorted(map(sorted, got))}")


def assert_same_torch(expected: object, got: object) -> None:
    """Fail unless ``got`` (safeload.torch) is the checkpoint ``expected`` (torch)."""
    walker = _TorchWalker()
    walker.compare(expected, got, "obj")
    walker.check_aliasing()


def test_the_comparison_can_fail() -> None:
    base = torch.arange(6.0)
    with pytest.raises(AssertionError, match="stride"):
        assert_same_torch(base.reshape(2, 3), base.reshape(3, 2).t())
    with pytest.raises(AssertionError, match="Parameter"):
        assert_same_torch(torch.nn.Parameter(base), base)
    with pytest.raises(AssertionError, match="aliasing"):
        assert_same_torch([base[:3], base[3:]], [base[:3], torch.arange(6.0)[3:]])
    with pytest.raises(AssertionError, match="bytes"):
        assert_same_torch(base, base + 1)
    with pytest.raises(AssertionError, match="_metadata"):
        assert_same_torch(collections.OrderedDict(), _with_metadata(collections.OrderedDict()))


def _with_metadata(d: collections.OrderedDict) -> collections.OrderedDict:
    d._metadata = {}  # type: ignore[attr-defined]
    return d


# --- the torch_cases matrix -------------------------------------------------------------


class Checkpoints:
    """Each (case, protocol) written once per session, and torch's reading of it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, case_id: str, protocol: int) -> Path:
        path = self.directory / f"{case_id}-p{protocol}.pt"
        if not path.exists():
            torch_cases.save(torch_cases.build(case_id), path, protocol)
        return path

    def oracle(self, case_id: str, protocol: int) -> object:
        # loaded afresh each time: a test may not see storages another test touched
        return torch.load(self.path(case_id, protocol), weights_only=False)


@pytest.fixture(scope="session")
def torch_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("torch-backend-cases"))


def _load_from(source: str, path: Path) -> object:
    if source == "path":
        return st.load(str(path))
    if source == "fileobj":
        with open(path, "rb") as fh:
            return st.load(fh)
    if source == "bytesio":
        return st.load(io.BytesIO(path.read_bytes()))
    if source == "bytes":  # read-only memory: storages are copied out
        return st.load(path.read_bytes())
    if source == "mmap":
        return st.load(path, mmap=True)
    raise AssertionError(source)


SOURCES = ("fileobj", "bytesio", "bytes", "mmap")

MATRIX = [
    pytest.param(case_id, protocol, "path", id=f"{case_id}-p{protocol}")
    for case_id in torch_cases.CASE_IDS
    for protocol in torch_cases.PROTOCOLS
] + [
    # every way of passing the file, once per case (rotating the protocol)
    pytest.param(case_id, torch_cases.PROTOCOLS[i % len(torch_cases.PROTOCOLS)], source,
                 id=f"{case_id}-{source}")
    for i, case_id in enumerate(torch_cases.CASE_IDS)
    for source in SOURCES
]


@pytest.mark.parametrize(("case_id", "protocol", "source"), MATRIX)
def test_matches_torch_load(torch_checkpoints: Checkpoints, case_id: str, protocol: int,
                            source: str) -> None:
    path = torch_checkpoints.path(case_id, protocol)
    assert_same_torch(torch_checkpoints.oracle(case_id, protocol), _load_from(source, path))


def test_results_are_writable_and_independent_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(4), "b": torch.ones(2)}, path)
    before = path.read_bytes()
    for mmap in (False, True):
        state = st.load(path, mmap=mmap)
        state["a"] += 5  # torch storages are writable; the file stays as it was
        assert state["a"].tolist() == [5.0] * 4 and state["b"].tolist() == [1.0, 1.0]
    assert path.read_bytes() == before
    assert st.load(path)["a"].tolist() == [0.0] * 4


def test_conj_and_neg_views_keep_their_bits(tmp_path: Path) -> None:
    z = torch.tensor([1 + 2j, -3 - 4j], dtype=torch.complex64)
    obj = {"conj": z.conj(), "neg": torch._neg_view(torch.tensor([1.0, -2.0])),
           "conj_imag": z.clone().conj().imag}
    path = tmp_path / "views.pt"
    torch.save(obj, path)
    got = st.load(path)
    assert_same_torch(torch.load(path, weights_only=False), got)
    assert got["conj"].is_conj() and got["conj"].tolist() == [1 - 2j, -3 + 4j]
    assert got["neg"].tolist() == [-1.0, 2.0]


def test_big_endian_file_matches_torch() -> None:
    """torch.save only writes the machine's byte order: rewrite a little-endian
    file as a big-endian one (byteorder record + every element swapped)."""
    obj = {"f32": torch.randn(3, 2), "i16": torch.arange(-3, 3, dtype=torch.int16),
           "c64": torch.tensor([1 + 2j, -0.5j]), "u8": torch.arange(4, dtype=torch.uint8)}
    units = {"0": 4, "1": 2, "2": 4, "3": 1}  # storage key -> element unit (complex: halves)
    buf = io.BytesIO()
    torch.save(obj, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            folder, _, key = info.filename.rpartition("/")
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif folder.endswith("/data") and units[key] > 1:
                data = np.frombuffer(data, f"<u{units[key]}").astype(f">u{units[key]}").tobytes()
            dst.writestr(info.filename, data)
    expected = torch.load(io.BytesIO(out.getvalue()), weights_only=True)
    assert_same_torch(expected, st.load(out.getvalue()))
    assert_same_torch(obj, st.load(out.getvalue()))


def test_unknown_tensor_metadata_is_a_format_error(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"c": torch.tensor([1 + 2j]).conj()}, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert data.count(b"conj") == 1
                data = data.replace(b"conj", b"evil")  # {'evil': True}
            dst.writestr(info.filename, data)
    with pytest.raises(FormatError, match="metadata 'evil'"):
        st.load(out.getvalue())


def test_dtype_lookup_covers_every_safeload_dtype() -> None:
    from safeload.dtypes import DTYPES

    builder = st.TorchBuilder(lambda key: memoryview(b""))
    for name, dt in DTYPES.items():
        assert builder.dtype(dt) is getattr(torch, name)
        assert builder.as_dtype(getattr(torch, name)) is dt


# --- files torch.load(weights_only=True) refuses but that only hold weights --------------


def _numpy_weights() -> dict:
    return {
        "w": torch.randn(3, 2),
        "step": np.int64(3),
        "lr": np.float32(0.5),
        "flag": np.bool_(True),
        "mask": np.array([[1, 0], [0, 1]], dtype=np.uint8),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">i4"),
    }


@pytest.mark.parametrize("protocol", torch_cases.PROTOCOLS)
def test_loads_plain_weights_torch_weights_only_refuses(tmp_path: Path, protocol: int) -> None:
    torch.manual_seed(0)
    path = tmp_path / f"numpy-p{protocol}.pt"
    torch_cases.save(_numpy_weights(), path, protocol)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    got = st.load(path)
    assert_same_torch(torch.load(path, weights_only=False), got)
    assert type(got["step"]) is np.int64 and got["step"] == 3


# --- models and optimizers ---------------------------------------------------------------


class _CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


def test_model_load_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _CNN()
    x = torch.randn(2, 1, 8, 8)
    model(x)  # BatchNorm running statistics
    model.eval()
    path = tmp_path / "cnn.pt"
    torch.save(model.state_dict(), path)

    fresh = _CNN().eval()
    result = fresh.load_state_dict(st.load(path, map_location="cpu"))
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(fresh.bn.num_batches_tracked, model.bn.num_batches_tracked)


def test_adam_load_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _CNN()
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(2, 1, 8, 8)
    model(x).square().sum().backward()
    adam.step()
    path = tmp_path / "adam.pt"
    torch.save({"model": model.state_dict(), "optimizer": adam.state_dict()}, path)
    assert_same_torch(torch.load(path, weights_only=False), st.load(path))

    state = st.load(path)
    twin = _CNN()
    twin.load_state_dict(state["model"])
    twin_adam = torch.optim.Adam(twin.parameters(), lr=1e-2)
    twin_adam.load_state_dict(state["optimizer"])
    for m, opt in ((model, adam), (twin, twin_adam)):  # one more identical step
        opt.zero_grad()
        m(x).square().sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


# --- the API -----------------------------------------------------------------------------


def _small_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.pt"
    torch.save({"w": torch.ones(2)}, path)
    return path


def test_weights_only_false_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never runs code"):
        st.load(_small_file(tmp_path), weights_only=False)
    assert st.load(_small_file(tmp_path), weights_only=None)["w"].tolist() == [1.0, 1.0]


def test_pickle_module_is_refused_like_torch(tmp_path: Path) -> None:
    path = _small_file(tmp_path)
    with pytest.raises(RuntimeError) as theirs:
        torch.load(path, pickle_module=pickle, weights_only=True)
    with pytest.raises(RuntimeError) as ours:
        st.load(path, pickle_module=pickle)
    assert str(ours.value) == str(theirs.value)


def test_unknown_pickle_load_args_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="errors"):
        st.load(_small_file(tmp_path), errors="strict")


def test_bad_map_location_type_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        st.load(_small_file(tmp_path), map_location=42)


def test_refusals_are_safeload_errors(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(SafeloadError, match="posix.system|os.system"):
        st.load(path)


def test_records_policy_passes_through(tmp_path: Path) -> None:
    import argparse

    from safeload.records import Record

    path = tmp_path / "hparams.pt"
    torch.save({"hparams": argparse.Namespace(lr=0.1), "w": torch.ones(1)}, path)
    with pytest.raises(SafeloadError, match="argparse.Namespace"):
        st.load(path)
    got = st.load(path, records=True)
    assert type(got["hparams"]) is Record and type(got["w"]) is torch.Tensor


def test_importing_safeload_does_not_import_torch() -> None:
    code = "import safeload, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the real-world corpus ---------------------------------------------------------------


def _corpus_files() -> list[Path]:
    """Every benign file: zip, legacy and tar formats alike."""
    benign = CORPUS / "benign"
    if not benign.is_dir():
        return []
    return sorted(p for p in benign.iterdir() if p.is_file())


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith(("/constants.pkl", "/bytecode.pkl")) or "/code/" in n
                   for n in archive.namelist())


@pytest.mark.skipif(not _corpus_files(), reason="corpus not present")
@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_corpus_matches_torch_weights_only(path: Path) -> None:
    if _is_torchscript(path):  # torch.load would hand it to torch.jit.load
        with pytest.raises(SafeloadError, match="TorchScript"):
            st.load(path, map_location="cpu")
        return
    try:  # benign files only; torch's own restricted unpickler is the oracle
        expected = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"torch.load(weights_only=True) refuses it: {type(exc).__name__}")
    assert_same_torch(expected, st.load(path, map_location="cpu"))
    assert_same_torch(expected, st.load(path, map_location="cpu", mmap=True))


@pytest.mark.skipif(not (CORPUS / "benign").is_dir(), reason="corpus not present")
def test_corpus_loads_or_refuses_with_a_safeload_error() -> None:
    loaded = 0
    for path in sorted((CORPUS / "benign").iterdir()):
        try:
            st.load(path, map_location="cpu")
            loaded += 1
        except SafeloadError:
            pass
    assert loaded >= 20


def test_float_special_values_survive(tmp_path: Path) -> None:
    path = tmp_path / "f.pt"
    values = torch.tensor([math.nan, -0.0, math.inf, 5e-324], dtype=torch.float64)
    torch.save(values, path)
    got = st.load(path)
    assert got.numpy().tobytes() == values.numpy().tobytes()


def test_numpy_backend_still_returns_arrays(tmp_path: Path) -> None:
    got = safeload.load(_small_file(tmp_path))
    assert type(got["w"]) is np.ndarray
