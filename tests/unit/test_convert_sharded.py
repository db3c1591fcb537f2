"""safeload.convert of a sharded checkpoint's index: safetensors shards plus an index.

The sharded checkpoints are written by real ``torch.save`` with a Hugging Face
``pytorch_model.bin.index.json``; the output is read back with ``safetensors``
(its torch loader and ``safe_open``) and compared bit for bit with what
``torch.load`` reads from the original shards. Hostile shards are only ever
handed to safeload.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import safeload
from safeload.convert import ALIASES_KEY, ConvertError, ShardedConversion

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")
safetensors = pytest.importorskip("safetensors")

SHARDS = ["pytorch_model-00001-of-00003.bin", "pytorch_model-00002-of-00003.bin",
          "pytorch_model-00003-of-00003.bin"]
OS_SYSTEM = b"cos\nsystem\n(S'echo pwned'\ntR."


def _raw(t) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _model() -> dict[str, dict]:
    g = torch.Generator().manual_seed(3)
    embed = torch.randn(6, 4, generator=g)
    qkv = torch.randn(12, 4, generator=g)
    return {
        SHARDS[0]: {
            "model.embed_tokens.weight": embed,
            "lm_head.weight": embed,  # tied: one storage, one view
            "model.layers.0.q.weight": qkv[:4],  # views of one storage
            "model.layers.0.k.weight": qkv[4:8],
            "model.layers.0.v.weight": qkv[8:].t(),  # non-contiguous
        },
        SHARDS[1]: {
            "model.layers.1.weight": torch.randn(4, 4, generator=g).to(torch.bfloat16),
            "model.layers.1.bias": torch.randn(4, generator=g).half(),
            "model.layers.1.steps": torch.arange(3),
        },
        SHARDS[2]: {
            "model.norm.weight": torch.ones(4),
            "model.norm.mask": torch.tensor([True, False, True, True]),
        },
    }


def _write(directory: Path, shards: dict[str, dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, tensors in shards.items():
        torch.save(tensors, directory / name)
    weight_map = {k: name for name, tensors in shards.items() for k in tensors}
    index = directory / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1, "format": "pt-test"},
                                 "weight_map": weight_map}))
    return index


@pytest.fixture
def index(tmp_path) -> Path:
    return _write(tmp_path / "src", _model())


def _snapshot(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_sharded_index_converts_to_safetensors_shards_and_an_index(index, tmp_path):
    out = tmp_path / "out"
    result = safeload.convert(index, out)
    assert isinstance(result, ShardedConversion)
    assert result.path == out / "model.safetensors.index.json"
    new_names = [s.replace("pytorch_model", "model").replace(".bin", ".safetensors")
                 for s in SHARDS]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*new_names, "model.safetensors.index.json"])

    written = json.loads(result.path.read_text())
    assert written == {"metadata": result.metadata, "weight_map": result.weight_map}
    # the same split, the new file names, the old index's order; the tied name is an alias
    original = _model()
    expected_map = {w: new for old, new in zip(SHARDS, new_names, strict=True)
                    for w in original[old] if w != "lm_head.weight"}
    assert written["weight_map"] == expected_map
    assert list(written["weight_map"]) == list(expected_map)
    assert result.aliases == {"lm_head.weight": "model.embed_tokens.weight"}

    total = 0
    for old, new in zip(SHARDS, new_names, strict=True):
        reference = torch.load(index.parent / old, weights_only=True)
        got = st_torch.load_file(out / new)
        assert set(got) == {w for w, f in expected_map.items() if f == new}
        for name, tensor in got.items():
            assert tensor.dtype == reference[name].dtype, name
            assert tensor.shape == reference[name].shape, name
            assert _raw(tensor) == _raw(reference[name]), name
            total += tensor.numel() * tensor.element_size()
        with safetensors.safe_open(out / new, framework="pt") as reader:
            metadata = reader.metadata()
        assert metadata["format"] == "pt"
        if new == new_names[0]:
            assert json.loads(metadata[ALIASES_KEY]) == result.aliases
    # transformers' total_size: the bytes of tensor data in the shards
    assert written["metadata"] == {"total_size": total, "format": "pt-test"}


def test_clone_writes_tied_weights_and_lists_them_in_the_index(index, tmp_path):
    result = safeload.convert(index, tmp_path / "out", shared="clone")
    assert result.aliases == {}
    assert result.weight_map["lm_head.weight"] == "model-00001-of-00003.safetensors"
    tensors = st_torch.load_file(tmp_path / "out" / "model-00001-of-00003.safetensors")
    assert torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])


def test_dst_may_name_the_index_to_write(index, tmp_path):
    target = tmp_path / "out" / "custom.safetensors.index.json"
    target.parent.mkdir()
    result = safeload.convert(index, target)
    assert result.path == target and target.is_file()
    assert (target.parent / "model-00003-of-00003.safetensors").is_file()


def test_converting_next_to_the_bin_shards_leaves_them_alone(index):
    before = _snapshot(index.parent)
    safeload.convert(index, index.parent)
    after = _snapshot(index.parent)
    assert {k: v for k, v in after.items() if k in before} == before
    assert "model.safetensors.index.json" in after


def test_drop_leaves_weights_out_of_shards_and_index(index, tmp_path):
    result = safeload.convert(index, tmp_path / "out", drop=["model.layers.1"])
    assert not any(w.startswith("model.layers.1.") for w in result.weight_map)
    assert "model-00002-of-00003.safetensors" not in result.shards  # nothing left in it
    assert not (tmp_path / "out" / "model-00002-of-00003.safetensors").exists()


def _break(index: Path, how: str) -> None:
    target = index.parent / SHARDS[1]
    if how == "unsafe-global":
        target.write_bytes(OS_SYSTEM)
    elif how == "truncated":
        target.write_bytes(target.read_bytes()[:200])
    elif how == "missing-weight":
        shard = _model()[SHARDS[1]]
        del shard["model.layers.1.bias"]
        torch.save(shard, target)
    elif how == "extra-weight":
        torch.save({**_model()[SHARDS[1]], "stray": torch.ones(1)}, target)
    elif how == "complex128":
        torch.save({**_model()[SHARDS[1]],
                    "model.layers.1.bias": torch.ones(4, dtype=torch.complex128)}, target)
    elif how == "not-a-tensor":
        torch.save({**_model()[SHARDS[1]], "model.layers.1.bias": 3}, target)
    elif how == "list":
        torch.save(list(_model()[SHARDS[1]].values()), target)


_BAD = {
    "unsafe-global": safeload.UnsafeGlobalError,
    "truncated": safeload.FormatError,
    "missing-weight": safeload.FormatError,
    "extra-weight": safeload.FormatError,
    "complex128": ConvertError,
    "not-a-tensor": ConvertError,
    "list": ConvertError,
}


@pytest.mark.parametrize("how", list(_BAD))
@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "existing-dir"])
def test_a_bad_shard_is_refused_and_nothing_is_left_behind(index, tmp_path, how, existing):
    _break(index, how)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "model.safetensors.index.json").write_text("previous index")
        (out / "model-00001-of-00003.safetensors").write_bytes(b"previous shard")
    before = _snapshot(out)
    with pytest.raises(safeload.SafeloadError) as info:
        safeload.convert(index, out)
    assert type(info.value) is _BAD[how] or isinstance(info.value, _BAD[how])
    assert info.value.file == str(index.parent / SHARDS[1])  # names the bad shard
    assert _snapshot(out) == before  # nothing written, nothing replaced, no .tmp
    assert out.exists() == existing


def test_a_bad_index_is_refused_before_anything_is_written(index, tmp_path):
    doc = json.loads(index.read_text())
    doc["weight_map"]["model.norm.weight"] = "../escape.bin"
    index.write_text(json.dumps(doc))
    with pytest.raises(safeload.FormatError, match="plain file names"):
        safeload.convert(index, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sharded_conversion_refuses_select_and_a_single_file_target(index, tmp_path):
    with pytest.raises(ValueError, match="select"):
        safeload.convert(index, tmp_path / "out", select="model")
    with pytest.raises(ValueError, match="directory"):
        safeload.convert(index, tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == [index.parent]


def test_command_line_converts_an_index(index, tmp_path, capsys):
    from safeload.cli import main

    assert main(["convert", str(index), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote 9 tensors in 3 shards" in out and "1 tied names" in out
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    _break(index, "unsafe-global")
    assert main(["convert", str(index), str(tmp_path / "again")]) == 1
    assert "os.system" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
