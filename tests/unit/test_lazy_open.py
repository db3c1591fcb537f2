"""safeload.open: the structure with tensor handles first, one tensor's bytes on demand.

Checked against torch.load (values, sharing, Parameters) and against safeload.load
(the same verdict and the same tensors on every corpus file).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

import safeload
from safeload import FormatError, SafeloadError, UnsafeGlobalError
from safeload.dtypes import DTYPES
from safeload.lazy import HandleBuilder, LazyCheckpoint, TensorHandle, flatten
from safeload.records import QuantizedTensor, Record, StorageRef, TensorRecord

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _checkpoint(torch):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    emb = torch.randn(5, 3, generator=g)
    return {
        "state_dict": collections.OrderedDict([
            ("emb.weight", emb),
            ("head.weight", emb),  # tied
            ("fc.weight", base),
            ("fc.t", base.t()),  # non-contiguous view of the same storage
            ("fc.row", base[1]),  # offset view
            ("half", torch.randn(3, generator=g).to(torch.bfloat16)),
            ("p", torch.nn.Parameter(torch.ones(2))),
        ]),
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
        "layers": [torch.arange(3), (torch.ones(1, dtype=torch.int8),)],
        "epoch": 3,
        "a.b": torch.zeros(1),
        "a": {"b": torch.ones(1)},  # "a.b" twice: ambiguous as a dotted name
    }


KEYS = [
    "state_dict.emb.weight", "state_dict.head.weight", "state_dict.fc.weight",
    "state_dict.fc.t", "state_dict.fc.row", "state_dict.half", "state_dict.p",
    "optimizer.state.0.exp_avg", "layers.0", "layers.1.0", "a.b",
]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def saved(torch, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lazy") / "ckpt.pt"
    torch.save(_checkpoint(torch), path)
    return path


def _raw(t) -> bytes:
    return t.detach().contiguous().reshape(-1).view(__import__("torch").uint8).numpy().tobytes()


def _bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).tobytes()


def test_keys_are_dotted_names_in_checkpoint_order(saved):
    with safeload.open(saved) as ckpt:
        assert ckpt.keys() == KEYS
        assert list(ckpt) == KEYS and len(ckpt) == len(KEYS)
        assert "state_dict.fc.t" in ckpt and "epoch" not in ckpt
        assert ckpt.structure["epoch"] == 3
        assert isinstance(ckpt.structure["state_dict"]["fc.t"], TensorHandle)


def test_handles_describe_tensors_without_reading_them(saved):
    with safeload.open(saved) as ckpt:
        t = ckpt.handle("state_dict.fc.t")
        assert (t.name, t.dtype.name, t.shape, t.stride, t.offset) == (
            "state_dict.fc.t", "float32", (6, 4), (1, 6), 0)
        assert (t.nbytes, t.numel, t.location) == (96, 24, "cpu")
        row = ckpt.handle("state_dict.fc.row")
        assert row.storage_key == t.storage_key and row.offset == 6
        assert ckpt.handle("state_dict.p").is_parameter
        assert ckpt.handle("state_dict.half").dtype.name == "bfloat16"
        assert "float32[6, 4]" in repr(t)
        assert ckpt.storages_read == []  # nothing read yet
        ckpt["state_dict.fc.row"]
        assert ckpt.storages_read == [row.storage_key]  # only that tensor's storage


def test_values_match_torch_load(saved, torch):
    expected = dict(flatten(torch.load(saved, weights_only=True), torch.Tensor))
    with safeload.open(saved) as ckpt:
        handles = dict(flatten(ckpt.structure))
        assert set(handles) == set(expected)
        for path, handle in handles.items():
            got, want = ckpt.read(handle), expected[path]
            assert got.shape == tuple(want.shape), path
            assert got.dtype == handle.dtype.numpy, path
            assert _bytes(got) == _raw(want), path


def test_tensors_that_shared_a_storage_share_memory(saved):
    with safeload.open(saved) as ckpt:
        weight, t, row = ckpt["state_dict.fc.weight"], ckpt["state_dict.fc.t"], \
            ckpt["state_dict.fc.row"]
        assert np.shares_memory(weight, t) and np.shares_memory(weight, row)
        assert np.array_equal(weight.T, t)


def test_torch_framework_gives_torch_tensors(saved, torch):
    expected = torch.load(saved, weights_only=True)
    with safeload.open(saved, framework="torch") as ckpt:
        p = ckpt["state_dict.p"]
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad
        t, w = ckpt["state_dict.fc.t"], ckpt["state_dict.fc.weight"]
        assert t.stride() == (1, 6) and t.untyped_storage().data_ptr() == \
            w.untyped_storage().data_ptr()
        assert torch.equal(t, expected["state_dict"]["fc.t"])
        assert ckpt["state_dict.half"].dtype == torch.bfloat16


def test_ambiguous_and_missing_names(saved):
    with safeload.open(saved) as ckpt:
        with pytest.raises(KeyError, match="more than one tensor"):
            ckpt["a.b"]
        assert float(ckpt[("a.b",)][0]) == 0.0 and float(ckpt[("a", "b")][0]) == 1.0
        with pytest.raises(KeyError, match="did you mean 'state_dict.fc.weight'"):
            ckpt["state_dict.fc.weigth"]
        with pytest.raises(KeyError, match="not a tensor"):
            ckpt[("epoch",)]
        with pytest.raises(KeyError, match="no tensor at path"):
            ckpt[("nope", 1)]


def test_reads_after_close_fail_and_earlier_arrays_stay_valid(saved):
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    with safeload.open(saved) as ckpt:
        weight = ckpt["state_dict.fc.weight"]
    with pytest.raises(ValueError, match="closed"):
        ckpt["state_dict.fc.weight"]
    assert ckpt.storages_read == []
    assert weight.flags.writeable  # private copy-on-write mapping
    weight[0, 0] = 1234.0
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest  # the file never changes
    assert "closed" in repr(ckpt)


@pytest.mark.parametrize("kind", ["bytes", "file", "str"])
def test_every_input_kind_opens(saved, kind):
    arg = {"bytes": saved.read_bytes(), "file": io.BytesIO(saved.read_bytes()),
           "str": str(saved)}[kind]
    with safeload.open(arg) as ckpt:
        assert ckpt.keys() == KEYS
        assert ckpt["layers.0"].tolist() == [0, 1, 2]


def test_numpy_only_example_opens_without_torch():
    with safeload.open(EXAMPLES / "tiny_cnn.pt") as ckpt:
        assert "fc.weight" in ckpt.keys()
        loaded = safeload.load(EXAMPLES / "tiny_cnn.pt")
        assert np.array_equal(ckpt["fc.weight"], loaded["fc.weight"])


def test_open_refuses_what_load_refuses():
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.open(EXAMPLES / "poisoned.pt")
    assert info.value.global_name == "os.system"
    with pytest.raises(ValueError, match="framework"):
        safeload.open(EXAMPLES / "tiny_cnn.pt", framework="jax")


def test_records_policy_applies_to_open(torch, tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)},
                "hyper_parameters": {"args": argparse.Namespace(lr=0.1)}}, path)
    with pytest.raises(UnsafeGlobalError, match="argparse.Namespace") as info:
        safeload.open(path)
    assert "records=True" in info.value.hint
    with safeload.open(path, records=True) as ckpt:
        assert ckpt.keys() == ["state_dict.w"]
        hp = ckpt.structure["hyper_parameters"]["args"]
        assert type(hp) is Record and hp.attributes == {"lr": 0.1}


def _fake_checkpoint(record_bytes: int):
    class Fake:
        byteorder = "little"

        class source:
            name = "fake.pt"

        def storage(self, key):
            return memoryview(bytes(record_bytes))

    return Fake()


def test_handle_builder_checks_record_sizes_and_extents():
    builder = HandleBuilder(_fake_checkpoint(16))
    ref = StorageRef("0", DTYPES["float32"], "cpu", 4)
    assert builder.storage(ref) is ref
    with pytest.raises(FormatError, match="referenced as"):
        builder.storage(StorageRef("0", DTYPES["float64"], "cpu", 4))
    with pytest.raises(FormatError, match="its record holds 16 bytes"):
        HandleBuilder(_fake_checkpoint(16)).storage(StorageRef("1", DTYPES["float32"], "cpu", 5))
    inside = TensorRecord(ref, ref, DTYPES["float32"], 1, (3,), (1,))
    assert isinstance(builder.tensor(inside), TensorHandle)
    with pytest.raises(FormatError, match="needs 20 bytes"):
        builder.tensor(TensorRecord(ref, ref, DTYPES["float32"], 2, (3,), (1,)))


def test_flatten_walks_each_container_once():
    shared = {"w": np.zeros(1)}
    cyclic: list = [shared]
    cyclic.append(cyclic)
    found = flatten({"x": shared, "y": cyclic}, np.ndarray)
    assert [path for path, _ in found] == [("x", "w")]


# --- the corpus: lazy open agrees with load, file by file ------------------------------------


from corpus_paths import CORPUS  # noqa: E402

BENIGN = sorted((CORPUS / "benign").iterdir()) if CORPUS and (CORPUS / "benign").is_dir() else []


def _leaf_bytes(value) -> bytes:
    if isinstance(value, QuantizedTensor):
        value = value.int_repr
    return _bytes(value)


@pytest.mark.skipif(not BENIGN, reason="corpus not found (set SAFELOAD_CORPUS)")
@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in BENIGN])
def test_corpus_file_opens_lazily_exactly_when_it_loads(path):
    try:
        loaded = safeload.load(path, records=True)
    except SafeloadError as err:
        with pytest.raises(SafeloadError) as info:
            safeload.open(path, records=True)
        assert type(info.value) is type(err)
        return
    with safeload.open(path, records=True) as ckpt:
        assert isinstance(ckpt, LazyCheckpoint)
        want = dict(flatten(loaded, (np.ndarray, QuantizedTensor)))
        # numpy arrays pickled as values (not tensors) sit in the structure as they are
        got = dict(flatten(ckpt.structure, (TensorHandle, np.ndarray)))
        assert set(got) == set(want)
        for key, handle in got.items():
            value = ckpt.read(handle) if type(handle) is TensorHandle else handle
            assert type(value) is type(want[key])
            assert _leaf_bytes(value) == _leaf_bytes(want[key]), key
