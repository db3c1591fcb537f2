"""safeload.convert: checkpoints to safetensors, read back bit-identical.

The output is checked with safetensors' own loaders (numpy and torch) against
torch.load of the source, byte for byte; the refusals list what does not fit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import safeload
from safeload.convert import ALIASES_KEY, ConvertError, verify
from safeload.lazy import flatten

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")
st_numpy = pytest.importorskip("safetensors.numpy")


def _raw(t) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _state_dict(ml_dtypes: bool = True) -> dict:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=g)
    emb = torch.randn(5, 3, generator=g)
    sd = {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(2, generator=g).double(),
        "f16": torch.randn(3, generator=g).half(),
        "i64": torch.arange(5),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "u8": torch.tensor([200, 1], dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "c64": torch.randn(2, generator=g, dtype=torch.complex64),
        "base": base,
        "t": base.t(),  # non-contiguous
        "row": base[1],  # offset view of the same storage
        "emb": emb,
        "head": emb,  # tied: the same tensor under two names
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "p": torch.nn.Parameter(torch.ones(2)),
        "nan": torch.tensor([math.nan, math.inf, -0.0]),
    }
    if ml_dtypes:
        sd["bf16"] = torch.randn(7, generator=g).to(torch.bfloat16)
        sd["f8"] = torch.randn(4, generator=g).to(torch.float8_e4m3fn)
        sd["f8b"] = torch.randn(4, generator=g).to(torch.float8_e5m2)
    return sd


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("convert") / "ckpt.pt"
    torch.save({"state_dict": _state_dict(), "epoch": 3, "lr": 0.1, "name": "run",
                "betas": (0.9, 0.999), "best": float("nan"), "flag": True, "none": None,
                "layers": [torch.ones(2), torch.zeros(1)],
                "sizes": {"hidden": torch.Size([4, 6]), "dtype": torch.float16}}, path)
    return path


def test_converted_file_loads_in_safetensors_torch_bit_identical(source, tmp_path):
    dst = tmp_path / "out.safetensors"
    result = safeload.convert(source, dst)
    assert result.path == dst and dst.is_file()
    expected = torch.load(source, weights_only=True)
    got = st_torch.load_file(dst)
    want = {".".join(map(str, path)): t for path, t in flatten(expected, torch.Tensor)}
    assert result.aliases == {"state_dict.head": "state_dict.emb"}
    assert set(got) == set(want) - {"state_dict.head"}
    for name, tensor in got.items():
        assert tensor.dtype == want[name].dtype, name
        assert tensor.shape == want[name].shape, name
        assert _raw(tensor) == _raw(want[name]), name
    assert got["state_dict.t"].is_contiguous()


def test_converted_file_loads_in_safetensors_numpy_bit_identical(tmp_path):
    src = tmp_path / "plain.pt"
    sd = _state_dict(ml_dtypes=False)
    torch.save(sd, src)
    dst = tmp_path / "plain.safetensors"
    safeload.convert(src, dst, shared="clone")
    got = st_numpy.load_file(dst)
    assert set(got) == set(sd)  # clone: the tied name too
    for name, tensor in sd.items():
        assert got[name].dtype.name == str(tensor.dtype).removeprefix("torch."), name
        assert got[name].tobytes() == _raw(tensor), name


def test_bfloat16_and_float8_keep_their_bits_and_dtypes(source, tmp_path):
    dst = tmp_path / "ml.safetensors"
    result = safeload.convert(source, dst, select="state_dict")
    assert result.tensors["bf16"][0] == "BF16"
    assert result.tensors["f8"][0] == "F8_E4M3" and result.tensors["f8b"][0] == "F8_E5M2"
    expected = torch.load(source, weights_only=True)["state_dict"]
    got = st_torch.load_file(dst)
    for name in ("bf16", "f8", "f8b"):
        assert got[name].dtype == expected[name].dtype
        assert _raw(got[name]) == _raw(expected[name])
    from safetensors import safe_open

    with safe_open(dst, framework="np") as reader:  # safetensors' numpy side parses it too
        assert reader.get_slice("bf16").get_dtype() == "BF16"


def test_values_go_to_the_metadata_as_text_or_json(source, tmp_path):
    dst = tmp_path / "meta.safetensors"
    meta = safeload.convert(source, dst).metadata
    from safetensors import safe_open

    with safe_open(dst, framework="pt") as reader:
        assert reader.metadata() == meta
    assert meta["name"] == "run" and meta["format"] == "pt"
    assert json.loads(meta["epoch"]) == 3 and json.loads(meta["lr"]) == 0.1
    assert json.loads(meta["betas"]) == [0.9, 0.999]
    assert math.isnan(json.loads(meta["best"]))
    assert json.loads(meta["flag"]) is True and json.loads(meta["none"]) is None
    assert json.loads(meta["sizes"]) == {"hidden": [4, 6], "dtype": "torch.float16"}
    assert json.loads(meta[ALIASES_KEY]) == {"state_dict.head": "state_dict.emb"}


def test_records_become_json_metadata(tmp_path):
    src = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1,
                "hyper_parameters": {"args": argparse.Namespace(lr=0.1, dims=[4, 4])}}, src)
    with pytest.raises(safeload.UnsafeGlobalError, match="records=True"):
        safeload.convert(src, tmp_path / "no.safetensors")
    result = safeload.convert(src, tmp_path / "out.safetensors", records=True)
    assert json.loads(result.metadata["hyper_parameters"]) == {
        "args": {"__class__": "argparse.Namespace", "lr": 0.1, "dims": [4, 4]}}
    assert set(st_torch.load_file(tmp_path / "out.safetensors")) == {"state_dict.w"}


def _refused(src: Path, dst: Path, **kwargs) -> ConvertError:
    dst.write_text("previous content")
    with pytest.raises(ConvertError) as info:
        safeload.convert(src, dst, **kwargs)
    assert dst.read_text() == "previous content"  # never replaced by a refused conversion
    assert [p.name for p in dst.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert info.value.file == str(src)
    return info.value


def test_dtypes_safetensors_lacks_are_refused_by_name(tmp_path):
    src = tmp_path / "c128.pt"
    torch.save({"ok": torch.ones(1), "z": torch.ones(2, dtype=torch.complex128)}, src)
    err = _refused(src, tmp_path / "out.safetensors")
    assert err.keys == ["z (complex128)"] and "'z (complex128)'" in str(err)


def test_values_that_do_not_fit_are_listed(tmp_path):
    src = tmp_path / "odd.pt"
    torch.save({"w": torch.ones(1), "obj": argparse.Namespace(t=torch.ones(1)),
                "big": "x" * 70_000, "blob": b"bytes", "nested": {1.5: "float key"}}, src)
    err = _refused(src, tmp_path / "out.safetensors", records=True)
    assert [k.split(" ")[0] for k in err.keys] == ["obj", "big", "blob", "nested"]
    assert "holds a tensor" in err.keys[0] and "drop=" in err.hint
    result = safeload.convert(src, tmp_path / "out.safetensors", records=True,
                              drop=["obj", "big", "blob", "nested"])
    assert list(result.tensors) == ["w"]


def test_dotted_name_collisions_are_refused(tmp_path):
    src = tmp_path / "clash.pt"
    torch.save({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, src)
    err = _refused(src, tmp_path / "out.safetensors")
    assert err.keys == ["a.b"]


def test_select_converts_one_part(source, tmp_path):
    result = safeload.convert(source, tmp_path / "sd.safetensors", select="state_dict")
    assert "bf16" in result.tensors and "epoch" not in result.metadata
    result = safeload.convert(source, tmp_path / "l.safetensors", select="layers")
    assert list(result.tensors) == ["0", "1"]
    with pytest.raises(ConvertError, match="no 'nope'"):
        safeload.convert(source, tmp_path / "x.safetensors", select="state_dict.nope")


def test_verify_detects_a_changed_byte(source, tmp_path):
    dst = tmp_path / "v.safetensors"
    safeload.convert(source, dst, select="state_dict")
    from safetensors import safe_open

    with safe_open(dst, framework="pt") as reader:
        tensors = {k: reader.get_tensor(k) for k in reader.keys()}
        metadata = reader.metadata()
    as_numpy = {k: np.frombuffer(_raw(t), np.uint8).view(_np_dtype(t)).reshape(t.shape)
                for k, t in tensors.items()}
    verify(dst, as_numpy, metadata)  # as written: passes
    data = bytearray(dst.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor's data
    dst.write_bytes(bytes(data))
    with pytest.raises(ConvertError, match="differs"):
        verify(dst, as_numpy, metadata)


def _np_dtype(t):
    import ml_dtypes

    name = str(t.dtype).removeprefix("torch.")
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) and \
        name.startswith(("bfloat", "float8")) else np.dtype(name)


def test_command_line(source, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    dst = tmp_path / "cli.safetensors"
    out = subprocess.run([sys.executable, "-m", "safeload.convert", str(source), str(dst),
                          "--select", "state_dict"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "wrote 19 tensors" in out.stdout and "1 tied names" in out.stdout
    assert set(st_torch.load_file(dst)) >= {"f32", "bf16"}
    bad = tmp_path / "bad.pt"
    torch.save({"z": torch.ones(1, dtype=torch.complex128)}, bad)
    out = subprocess.run([sys.executable, "-m", "safeload.convert", str(bad),
                          str(tmp_path / "bad.safetensors")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 1 and "complex128" in out.stderr
    assert not (tmp_path / "bad.safetensors").exists()


def test_a_bare_tensor_is_named_tensor(tmp_path):
    src = tmp_path / "bare.pt"
    torch.save(torch.arange(4, dtype=torch.int32).reshape(2, 2).t(), src)
    result = safeload.convert(src, tmp_path / "bare.safetensors")
    assert result.tensors == {"tensor": ("I32", (2, 2))}
    assert st_numpy.load_file(tmp_path / "bare.safetensors")["tensor"].tolist() == [[0, 2],
                                                                                   [1, 3]]


def test_pickled_numpy_arrays_are_written_little_endian(tmp_path):
    import pickle

    src = tmp_path / "np.pkl"
    src.write_bytes(pickle.dumps({"big": np.arange(4, dtype=">f4").reshape(2, 2),
                                  "scalar": np.float64(2.5)}, protocol=4))
    result = safeload.convert(src, tmp_path / "np.safetensors")
    assert result.tensors == {"big": ("F32", (2, 2))}
    assert json.loads(result.metadata["scalar"]) == 2.5
    assert st_numpy.load_file(tmp_path / "np.safetensors")["big"].tolist() == [[0, 1], [2, 3]]


def test_safeload_convert_subcommand_takes_leading_options(tmp_path, capsys):
    from safeload.cli import main

    src = tmp_path / "hp.ckpt"
    torch.save({"w": torch.ones(1), "hp": argparse.Namespace(lr=0.1)}, src)
    assert main(["convert", "--records", str(src), str(tmp_path / "hp.safetensors")]) == 0
    assert "wrote 1 tensors" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "no.safetensors")]) == 1
    assert "records=True" in capsys.readouterr().err


def test_safeload_convert_is_callable_after_importing_the_submodule(source, tmp_path):
    import safeload.convert as module

    assert callable(module) and callable(safeload.convert)
    assert safeload.convert(source, tmp_path / "a.safetensors", select="layers").tensors


def test_poisoned_checkpoint_is_refused_before_anything_is_written(tmp_path):
    examples = Path(__file__).resolve().parents[2] / "examples"
    dst = tmp_path / "p.safetensors"
    with pytest.raises(safeload.UnsafeGlobalError):
        safeload.convert(examples / "poisoned.pt", dst)
    assert list(tmp_path.iterdir()) == []


# --- the corpus --------------------------------------------------------------------------


from corpus_paths import CORPUS  # noqa: E402

LIGHTNING = ["aegnn_last.ckpt", "deeponet_burgers.ckpt", "eyetrack_read_features_last.ckpt",
             "long-short-lstm_last.ckpt", "mafat_last.ckpt", "burn_bfloat16.pt",
             "burn_example_mnist.pt", "candle_fortran_tensor_3d.pth", "max78000_best.pth.tar"]


@pytest.mark.skipif(CORPUS is None, reason="corpus not found (set SAFELOAD_CORPUS)")
@pytest.mark.parametrize("name", LIGHTNING)
def test_corpus_checkpoint_converts_bit_identical(name, tmp_path):
    src = CORPUS / "benign" / name
    if not src.is_file():
        pytest.skip(f"{name} not in the corpus")
    dst = tmp_path / "out.safetensors"
    result = safeload.convert(src, dst, records=True)
    loaded = safeload.load(src, records=True)
    want = {".".join(str(k) for k in path): a for path, a in flatten(loaded, np.ndarray)}
    got = st_torch.load_file(dst)
    assert set(got) | set(result.aliases) == set(want)
    for alias, kept in result.aliases.items():
        assert np.array_equal(want[alias], want[kept], equal_nan=True)
    for key, tensor in got.items():
        assert tuple(tensor.shape) == want[key].shape, key
        assert _raw(tensor) == np.ascontiguousarray(want[key]).reshape(-1).view(np.uint8) \
            .tobytes(), key
