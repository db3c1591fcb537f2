"""Sharded checkpoints: the Hugging Face index, validated, and its shards as one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import safeload
from safeload import FormatError, UnsafeGlobalError
from safeload.sharded import ShardedCheckpoint, load_sharded, read_index, shard_paths

torch = pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _write(directory: Path, shards: dict[str, dict], weight_map: dict | None = None,
           index_name: str = "pytorch_model.bin.index.json") -> Path:
    for name, tensors in shards.items():
        torch.save(tensors, directory / name)
    if weight_map is None:
        weight_map = {k: name for name, tensors in shards.items() for k in tensors}
    index = directory / index_name
    index.write_text(json.dumps({"metadata": {"total_size": 123}, "weight_map": weight_map}))
    return index


def _model() -> dict[str, dict]:
    g = torch.Generator().manual_seed(2)
    return {
        "pytorch_model-00001-of-00002.bin": {
            "embed.weight": torch.randn(4, 3, generator=g),
            "layers.0.weight": torch.randn(3, 3, generator=g),
        },
        "pytorch_model-00002-of-00002.bin": {
            "layers.1.weight": torch.randn(3, 3, generator=g).to(torch.bfloat16),
            "lm_head.weight": torch.randn(4, 3, generator=g),
        },
    }


@pytest.fixture
def index(tmp_path) -> Path:
    return _write(tmp_path, _model())


def test_index_is_read_and_validated(index):
    idx = read_index(index)
    assert idx.shards == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert idx.metadata == {"total_size": 123}
    assert shard_paths(index) == [index.parent / s for s in idx.shards]


def test_shards_load_as_one_state_dict(index):
    state = safeload.load_sharded(index)
    assert list(state) == ["embed.weight", "layers.0.weight", "layers.1.weight", "lm_head.weight"]
    for name, tensors in _model().items():
        for key, tensor in tensors.items():
            raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            assert state[key].reshape(-1).view(np.uint8).tobytes() == raw, (name, key)
    as_torch = load_sharded(index, framework="torch")
    assert as_torch["layers.1.weight"].dtype == torch.bfloat16


def test_open_of_an_index_opens_shards_lazily(index):
    with safeload.open(index) as ckpt:
        assert isinstance(ckpt, ShardedCheckpoint)
        assert ckpt.keys() == list(read_index(index).weight_map)
        assert ckpt.handle("lm_head.weight").shape == (4, 3)
        assert list(ckpt._open) == ["pytorch_model-00002-of-00002.bin"]  # one shard so far
        assert ckpt["embed.weight"].shape == (4, 3)
        with pytest.raises(KeyError, match="no weight named"):
            ckpt["nope"]
    with pytest.raises(ValueError, match="closed"):
        ckpt["embed.weight"]


@pytest.mark.parametrize("bad", ["../outside.bin", "/etc/passwd", "sub/shard.bin", "..",
                                 "C:shard.bin", "shard\\x.bin", "", "a\0b"])
def test_shard_names_must_be_plain_file_names(tmp_path, bad):
    index = _write(tmp_path, {"s.bin": {"w": torch.ones(1)}}, {"w": bad})
    with pytest.raises(FormatError, match="plain file names") as info:
        read_index(index)
    assert info.value.file == str(index)


def test_missing_shard_file_is_named(tmp_path):
    index = _write(tmp_path, {"s.bin": {"w": torch.ones(1)}}, {"w": "s.bin", "v": "gone.bin"})
    with pytest.raises(FormatError, match="missing: 'gone.bin'"):
        read_index(index)


def test_weight_missing_from_its_shard(tmp_path):
    index = _write(tmp_path, {"s.bin": {"w": torch.ones(1)}}, {"w": "s.bin", "v": "s.bin"})
    with pytest.raises(FormatError, match="lacks them: 'v'") as info:
        load_sharded(index)
    assert info.value.file == str(tmp_path / "s.bin")
    with pytest.raises(FormatError, match="lacks them"), safeload.open(index) as ckpt:
        ckpt["w"]


def test_weight_in_two_shards_is_a_duplicate(tmp_path):
    shards = {"a.bin": {"w": torch.ones(1)}, "b.bin": {"w": torch.zeros(1), "v": torch.ones(1)}}
    index = _write(tmp_path, shards, {"w": "a.bin", "v": "b.bin"})
    with pytest.raises(FormatError, match="duplicates"):
        load_sharded(index)


def test_weight_the_index_does_not_list(tmp_path):
    index = _write(tmp_path, {"a.bin": {"w": torch.ones(1), "x": torch.ones(1)}}, {"w": "a.bin"})
    with pytest.raises(FormatError, match="not listed in the index: 'x'"):
        load_sharded(index)


@pytest.mark.parametrize("text, message", [
    ('{"weight_map": {"w": "a.bin", "w": "b.bin"}}', "duplicate key 'w'"),
    ('{"weight_map": []}', "'weight_map' object"),
    ('{"weight_map": {}}', "empty"),
    ('{"weight_map": {"w": 3}}', "not a file name"),
    ('{"weight_map": {"w": "a.bin"}, "metadata": 3}', "'metadata'"),
    ("not json", "not valid JSON"),
    ("[" * 100_000, "not valid JSON"),
])
def test_malformed_index_is_refused(tmp_path, text, message):
    index = tmp_path / "model.bin.index.json"
    index.write_text(text)
    with pytest.raises(FormatError, match=message):
        read_index(index)


def test_a_poisoned_shard_is_refused_with_its_location(tmp_path):
    (tmp_path / "evil.bin").write_bytes((EXAMPLES / "poisoned.pt").read_bytes())
    torch.save({"w": torch.ones(1)}, tmp_path / "good.bin")
    index = tmp_path / "idx.json"
    index.write_text(json.dumps({"weight_map": {"w": "good.bin", "x": "evil.bin"}}))
    with pytest.raises(UnsafeGlobalError) as info:
        load_sharded(index)
    assert info.value.global_name == "os.system"
    assert info.value.file == str(tmp_path / "evil.bin")


def test_shard_options_apply_to_every_shard(tmp_path):
    import argparse

    shards = {"a.bin": {"w": torch.ones(1), "cfg": argparse.Namespace(x=1)}}
    index = _write(tmp_path, shards)
    with pytest.raises(UnsafeGlobalError):
        load_sharded(index)
    assert load_sharded(index, records=True)["cfg"].attributes == {"x": 1}
