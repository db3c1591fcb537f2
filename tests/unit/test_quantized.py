"""Quantized tensors (``torch._utils._rebuild_qtensor``) with both backends.

Real ``torch.save`` files (per-tensor and per-channel schemes, quint8 / qint8 /
qint32 / quint4x2, views, quantized module state dicts, the LeNet-5 corpus file)
must load with ``safeload.torch`` exactly as ``torch.load`` loads them, and with the
numpy backend as ``QuantizedTensor`` records holding torch's ``int_repr()`` and
quantization parameters. Malformed parameters are written by a small pickler that
emits ``_rebuild_qtensor`` calls with chosen arguments (the same opcodes torch
writes), and must be refused with a FormatError by both backends.
"""

from __future__ import annotations

import collections
import io
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safeload  # noqa: E402
import safeload.torch as st  # noqa: E402
from safeload.errors import FormatError  # noqa: E402
from safeload.records import QScheme, QuantizedTensor  # noqa: E402

try:  # tests/unit as a package, or as a plain directory on sys.path
    from .test_torch_backend import assert_same_torch
except ImportError:
    from test_torch_backend import assert_same_torch  # type: ignore[no-redef]

from corpus_paths import CORPUS_ROOT as CORPUS  # noqa: E402

LENET = CORPUS / "benign" / "lenet5_quantized_model.pth"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# --- cases ------------------------------------------------------------------------------


def _per_tensor() -> object:
    x = torch.randn(3, 4)
    q8 = torch.quantize_per_tensor(x, 0.05, 10, torch.quint8)
    return {
        "quint8": q8,
        "qint8": torch.quantize_per_tensor(x, 0.1, -3, torch.qint8),
        "qint32": torch.quantize_per_tensor(x, 1e-4, 7, torch.qint32),
        "zero_d": torch.quantize_per_tensor(torch.tensor(1.5), 0.5, 0, torch.qint8),
        "transposed": q8.t(),
        "rows_view": q8[1:],  # shares q8's storage
    }


def _per_channel() -> object:
    w = torch.randn(3, 4, 5)
    return {
        "qint8_axis0": torch.quantize_per_channel(
            w, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
            torch.tensor([0, 1, -1]), 0, torch.qint8),
        "quint8_axis1": torch.quantize_per_channel(
            w, torch.rand(4, dtype=torch.float64) + 0.01, torch.tensor([0, 5, 10, 128]), 1,
            torch.quint8),
        "qint8_axis2": torch.quantize_per_channel(
            w, torch.rand(5, dtype=torch.float64) + 0.01, torch.zeros(5, dtype=torch.long), 2,
            torch.qint8),
        "float_qparams": torch.quantize_per_channel(
            w[0], torch.rand(4) + 0.01, torch.rand(4), 0, torch.quint8),
        "quint4x2": torch.quantize_per_channel(
            w[0], torch.rand(4) + 0.01, torch.rand(4), 0, torch.quint4x2),
    }


def _dynamic_linear() -> object:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                  dtype=torch.qint8).state_dict()


def _embedding() -> object:
    from torch.ao.nn.quantized import Embedding

    emb = Embedding(6, 8, dtype=torch.quint8)
    weight = torch.quantize_per_channel(torch.randn(6, 8), torch.rand(6) + 0.01, torch.rand(6),
                                        0, torch.quint8)
    emb.set_weight(weight)
    return emb.state_dict()


def _qscheme_values() -> object:
    # observer settings: qschemes as plain values (and as keys), next to a tensor
    return {
        "schemes": [torch.per_tensor_affine, torch.per_channel_affine,
                    torch.per_channel_affine_float_qparams, torch.per_tensor_symmetric,
                    torch.per_channel_symmetric],
        "by_scheme": {torch.per_tensor_symmetric: "symmetric"},
        "dtype": torch.quint8,
        "w": torch.ones(2),
    }


CASES = {
    "per-tensor": _per_tensor,
    "per-channel": _per_channel,
    "dynamic-linear-state-dict": _dynamic_linear,
    "embedding-state-dict": _embedding,
    "qscheme-values": _qscheme_values,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("quantized")
    paths = {}
    for case_id, factory in CASES.items():
        torch.manual_seed(0)
        paths[case_id] = directory / f"{case_id}.pt"
        _quiet(lambda f=factory, p=paths[case_id]: torch.save(f(), p))
    return paths


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_matches_torch_load(saved: dict[str, Path], case_id: str, mmap: bool) -> None:
    expected = _quiet(lambda: torch.load(saved[case_id], weights_only=True))
    got = _quiet(lambda: st.load(saved[case_id], mmap=mmap))
    assert_same_torch(expected, got)


def test_views_of_a_quantized_tensor_share_its_storage(saved: dict[str, Path]) -> None:
    got = _quiet(lambda: st.load(saved["per-tensor"]))
    assert got["rows_view"].untyped_storage().data_ptr() == \
        got["quint8"].untyped_storage().data_ptr()
    assert got["rows_view"].storage_offset() == 4


def test_qscheme_values_come_back_as_torch_qschemes(saved: dict[str, Path]) -> None:
    got = st.load(saved["qscheme-values"])
    assert got["schemes"][3] is torch.per_tensor_symmetric
    assert got["by_scheme"] == {torch.per_tensor_symmetric: "symmetric"}
    plain = safeload.load(saved["qscheme-values"])
    assert plain["schemes"][0] == QScheme("per_tensor_affine")
    assert plain["by_scheme"] == {QScheme("per_tensor_symmetric"): "symmetric"}


def test_meta_fails_like_torch(saved: dict[str, Path]) -> None:
    """torch has no quantized meta tensors; the error is torch's, not a FormatError."""
    with pytest.raises(NotImplementedError):
        _quiet(lambda: torch.load(saved["per-tensor"], map_location="meta", weights_only=True))
    with pytest.raises(NotImplementedError):
        _quiet(lambda: st.load(saved["per-tensor"], map_location="meta"))


# --- the numpy backend ------------------------------------------------------------------


def _assert_record_matches(e: torch.Tensor, g: object) -> None:
    assert isinstance(g, QuantizedTensor)
    assert g.scheme == str(e.qscheme()).removeprefix("torch.")
    assert g.dtype.name == str(e.dtype).removeprefix("torch.")
    want = e.int_repr()
    assert isinstance(g.int_repr, np.ndarray)
    assert g.int_repr.shape == tuple(want.shape)
    assert g.int_repr.tobytes() == want.contiguous().numpy().tobytes()
    if e.qscheme() == torch.per_tensor_affine:
        assert (g.scale, g.zero_point) == (e.q_scale(), e.q_zero_point())
    else:
        assert g.axis == e.q_per_channel_axis()
        assert np.array_equal(g.scales, e.q_per_channel_scales().numpy())
        assert g.scales.dtype == e.q_per_channel_scales().numpy().dtype
        assert np.array_equal(g.zero_points, e.q_per_channel_zero_points().numpy())


@pytest.mark.parametrize("case_id", ["per-tensor", "per-channel"])
def test_numpy_backend_returns_quantized_records(saved: dict[str, Path], case_id: str) -> None:
    expected = _quiet(lambda: torch.load(saved[case_id], weights_only=True))
    got = safeload.load(saved[case_id])
    assert list(got) == list(expected)
    for key, e in expected.items():
        _assert_record_matches(e, got[key])
    if case_id == "per-tensor":  # a view of the same storage stays a view
        assert np.shares_memory(got["rows_view"].int_repr, got["quint8"].int_repr)


# --- the LeNet-5 corpus file ------------------------------------------------------------


@pytest.mark.skipif(not LENET.exists(), reason="corpus not present")
def test_lenet5_quantized_corpus_file() -> None:
    expected = _quiet(lambda: torch.load(LENET, weights_only=True))
    assert_same_torch(expected, _quiet(lambda: st.load(LENET)))
    plain = safeload.load(LENET)
    found = 0
    for key, value in expected.items():
        if key.endswith("._packed_params._packed_params"):  # (weight, bias)
            _assert_record_matches(value[0], plain[key][0])
            found += 1
    assert found == 2


# --- malformed quantizer parameters -----------------------------------------------------


class _Storage:
    def __init__(self, key: str, storage_type, numel: int) -> None:
        self.key, self.storage_type, self.numel = key, storage_type, numel


class _QTensor:
    def __init__(self, args: tuple) -> None:
        self.args = args


class _Tensor(_QTensor):
    """A plain tensor: ``_rebuild_tensor_v2`` over a storage."""


class _Pickler(pickle.Pickler):
    """Writes ``_rebuild_qtensor`` calls and storage ids as torch.save does."""

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, _Tensor):
            return (torch._utils._rebuild_tensor_v2, obj.args)
        if isinstance(obj, _QTensor):
            return (torch._utils._rebuild_qtensor, obj.args)
        return NotImplemented


def _checkpoint(obj: object, records: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    _Pickler(data, protocol=2).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data.getvalue())
        archive.writestr("archive/byteorder", "little")
        for key, raw in records.items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


_INT8 = _Storage("0", torch.QInt8Storage, 12)
_RECORDS = {"0": bytes(range(12))}


def _qtensor(params: tuple, storage=_INT8, size=(3, 4), stride=(4, 1)) -> _QTensor:
    return _QTensor((storage, 0, size, stride, params, False, collections.OrderedDict()))


def _float64_tensor(n: int) -> _Tensor:
    """A float64 tensor of n elements over storage record "s"."""
    return _Tensor((_Storage("s", torch.DoubleStorage, n), 0, (n,), (1,), False,
                    collections.OrderedDict()))


def _float64_record(n: int) -> bytes:
    return (np.arange(1, n + 1, dtype="<f8") / 10).tobytes()


def test_hand_written_checkpoints_load_like_torch() -> None:
    """The pickler above writes what torch reads; list parameters included."""
    good = {
        "per_tensor": _qtensor((torch.per_tensor_affine, 0.5, 2)),
        "per_channel_lists": _qtensor((torch.per_channel_affine, [0.1, 0.2, 0.3], [0, 1, 2], 0)),
        "float_qparams_lists": _qtensor(
            (torch.per_channel_affine_float_qparams, [0.5] * 4, [0.25] * 4, 1),
            storage=_Storage("1", torch.QUInt8Storage, 12)),
    }
    zero_points = _Tensor((_Storage("z", torch.LongStorage, 3), 0, (3,), (1,), False,
                           collections.OrderedDict()))
    good["per_channel_tensors"] = _qtensor((torch.per_channel_affine, _float64_tensor(3),
                                            zero_points, 0))
    raw = _checkpoint(good, {**_RECORDS, "1": bytes(range(100, 112)), "s": _float64_record(3),
                             "z": np.array([-1, 0, 1], "<i8").tobytes()})
    expected = _quiet(lambda: torch.load(io.BytesIO(raw), weights_only=True))
    assert_same_torch(expected, _quiet(lambda: st.load(raw)))
    plain = safeload.load(raw)
    for key, e in expected.items():
        _assert_record_matches(e, plain[key])


BAD = {
    "axis-out-of-range": ((torch.per_channel_affine, [0.1] * 3, [0] * 3, 2), "axis"),
    "negative-axis": ((torch.per_channel_affine, [0.1] * 3, [0] * 3, -1), "axis"),
    "scales-length": ((torch.per_channel_affine, [0.1] * 4, [0] * 3, 0), "scales"),
    "zero-points-length": ((torch.per_channel_affine, [0.1] * 3, [0] * 4, 0), "zero points"),
    "scales-against-axis": ((torch.per_channel_affine, [0.1] * 3, [0] * 3, 1), "channels"),
    "scales-not-numbers": ((torch.per_channel_affine, ["a"] * 3, [0] * 3, 0), "scales"),
    "scales-not-a-tensor": ((torch.per_channel_affine, "abc", [0] * 3, 0), "scales"),
    "zero-points-floats": ((torch.per_channel_affine, [0.1] * 3, [0.5] * 3, 0), "zero points"),
    "infinite-scale": ((torch.per_tensor_affine, float("inf"), 0), "finite"),
    "float-zero-point": ((torch.per_tensor_affine, 0.1, 0.5), "zero point"),
    "symmetric-scheme": ((torch.per_tensor_symmetric, 0.1, 0), "per_tensor_symmetric"),
    "no-qscheme": (("per_tensor_affine", 0.1, 0), "qscheme"),
    "short-params": ((torch.per_channel_affine, [0.1] * 3, [0] * 3), "parameters"),
    "params-not-a-tuple": ([torch.per_tensor_affine, 0.1, 0], "tuple"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_quantizer_parameters_are_format_errors(case: str) -> None:
    params, reason = BAD[case]
    raw = _checkpoint({"q": _qtensor(params)}, _RECORDS)
    for load in (st.load, safeload.load):
        with pytest.raises(FormatError, match=reason) as info:
            _quiet(lambda load=load: load(raw))
        assert info.value.opcode == "REDUCE"


def test_scales_tensor_of_the_wrong_length_is_a_format_error() -> None:
    raw = _checkpoint({"q": _qtensor((torch.per_channel_affine, _float64_tensor(4), [0] * 4, 0))},
                      {**_RECORDS, "s": _float64_record(4)})
    for load in (st.load, safeload.load):
        with pytest.raises(FormatError, match="scales has shape"):
            _quiet(lambda load=load: load(raw))


def test_quantized_scales_are_refused() -> None:
    scales = _qtensor((torch.per_tensor_affine, 0.1, 0), _Storage("s", torch.QInt8Storage, 3),
                      (3,), (1,))
    raw = _checkpoint({"q": _qtensor((torch.per_channel_affine, scales, [0] * 3, 0))},
                      {**_RECORDS, "s": bytes(3)})
    for load in (st.load, safeload.load):
        with pytest.raises(FormatError, match="scales"):
            _quiet(lambda load=load: load(raw))


@pytest.mark.parametrize(("storage", "size", "stride", "reason"), [
    (_Storage("0", torch.FloatStorage, 3), (3,), (1,), "quantized storage"),
    (_INT8, (4, 4), (4, 1), "needs 16 bytes"),
    (_Storage("0", torch.QUInt4x2Storage, 12), (4, 6), (1, 4), "contiguous"),
    (_Storage("0", torch.QUInt4x2Storage, 12), (5, 6), (6, 1), "needs 15 bytes"),
], ids=["float-storage", "past-the-storage", "sub-byte-strided", "sub-byte-too-big"])
def test_malformed_quantized_layout_is_a_format_error(storage, size, stride, reason) -> None:
    raw = _checkpoint({"q": _qtensor((torch.per_tensor_affine, 0.1, 0), storage, size, stride)},
                      _RECORDS)
    for load in (st.load, safeload.load):
        with pytest.raises(FormatError, match=reason):
            _quiet(lambda load=load: load(raw))
