"""The scanner and the loader never disagree: a file ``safeload.scan`` calls clean
loads with ``safeload.load``, and a file ``safeload.load`` refuses is not clean.

Checked over the shared corpus (every file, benign and malicious: they are only
handed to safeload), over hand-broken checkpoints (missing, short and shared
storage records, out-of-range views), and over deterministic mutations of a
checkpoint's pickle (with valid CRCs, so the mutations reach the VM) and of bare
pickles.
"""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import safeload
from safeload.scan import FileReport, scan_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


from corpus_paths import CORPUS  # noqa: E402

CORPUS_FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md") \
    if CORPUS else []


def scan_is_clean(path, **policy) -> bool:
    result = scan_file(path, **policy)
    return isinstance(result, FileReport) and result.verdict == "clean"


def loads(path, **policy) -> bool:
    try:
        safeload.load(path, **policy)
    except safeload.SafeloadError:
        return False
    return True


def assert_agree(path, **policy) -> None:
    clean, loaded = scan_is_clean(path, **policy), loads(path, **policy)
    assert clean == loaded, f"scan says {'clean' if clean else 'not clean'}, load " \
        f"{'succeeds' if loaded else 'refuses'}: {path}"


@pytest.mark.skipif(CORPUS is None, reason="corpus not found (set SAFELOAD_CORPUS)")
@pytest.mark.parametrize("path", CORPUS_FILES or [None],
                         ids=[f"{p.parent.name}/{p.name}" for p in CORPUS_FILES] or ["none"])
def test_scanner_and_loader_agree_on_the_corpus(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_agree(path)
    assert_agree(path, records=True)  # the same policy object on both sides


# --- hand-broken checkpoints --------------------------------------------------------


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


BASE = _members(EXAMPLES / "tiny_cnn.pt")


def _without(name):
    return {k: v for k, v in BASE.items() if k != name}


def _replace(name, data):
    return {**BASE, name: data}


def _pickle_bytes_replaced(old: bytes, new: bytes):
    data = BASE["tiny_cnn/data.pkl"]
    assert old in data
    return _replace("tiny_cnn/data.pkl", data.replace(old, new, 1))


BROKEN = {
    "unchanged": BASE,
    "storage-missing": _without("tiny_cnn/data/7"),
    "storage-short": _replace("tiny_cnn/data/7", BASE["tiny_cnn/data/7"][:-4]),
    "storage-long": _replace("tiny_cnn/data/7", BASE["tiny_cnn/data/7"] + b"\0" * 4),
    "byteorder-big": _replace("tiny_cnn/byteorder", b"big"),
    "byteorder-bad": _replace("tiny_cnn/byteorder", b"middle"),
    "no-data-pkl": _without("tiny_cnn/data.pkl"),
    "extra-record": {**BASE, "tiny_cnn/extra.pkl": b"cos\nsystem\n(S'x'\ntR."},
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_scanner_and_loader_agree_on_broken_checkpoints(case, tmp_path):
    path = tmp_path / f"{case}.pt"
    path.write_bytes(_zip(BROKEN[case]))
    assert_agree(path)


def test_out_of_range_views_and_shared_storages_agree(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(10, dtype=torch.float32)
    state = {"a": base[2:5], "b": base, "c": base.view(2, 5)[:, 1]}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    members = _members_of(buffer.getvalue())
    name = next(n for n in members if n.endswith("data.pkl"))
    good = tmp_path / "good.pt"
    good.write_bytes(_zip(members))
    assert_agree(good) and scan_is_clean(good)
    data = members[name]
    # every single-byte change of the pickle's small integers (offsets, sizes,
    # strides, numel): some stay valid, some reach outside the storage
    positions = [i for i in range(len(data) - 1) if data[i] == ord("K")][:40]
    for i in positions:
        for value in (0, 1, 9, 11, 200):
            mutated = data[: i + 1] + bytes([value]) + data[i + 2:]
            path = tmp_path / f"k{i}_{value}.pt"
            path.write_bytes(_zip({**members, name: mutated}))
            assert_agree(path)


def _members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


# --- mutations --------------------------------------------------------------------


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        at = rng.randrange(len(data))
        if choice < 0.6:
            data[at] = rng.randrange(256)
        elif choice < 0.8:
            del data[at]
        else:
            data.insert(at, rng.randrange(256))
    return bytes(data)


def test_mutated_checkpoint_pickles_agree(tmp_path):
    rng = random.Random(1234)
    name = "tiny_cnn/data.pkl"
    for i in range(150):
        path = tmp_path / f"m{i}.pt"
        path.write_bytes(_zip(_replace(name, _mutate(BASE[name], rng))))
        assert_agree(path)


def test_mutated_bare_pickles_agree(tmp_path):
    rng = random.Random(99)
    values = {
        "ints": [1, -2, 3 << 70], "floats": (1.5, float("inf")), "text": "héllo",
        "bytes": b"\x00\x01", "set": {1, 2}, "frozen": frozenset({"a"}),
        "ordered": OrderedDict(a=1), "nested": {"x": [[], {}, ()]},
        "array": np.arange(6, dtype=np.int16).reshape(2, 3), "complex": 1 + 2j,
    }
    for protocol in (0, 2, 4, 5):
        data = pickle.dumps(values, protocol=protocol)
        for i in range(60):
            path = tmp_path / f"p{protocol}_{i}.pkl"
            path.write_bytes(_mutate(data, rng))
            assert_agree(path)
