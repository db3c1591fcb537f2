"""Format detection: by content only, and polyglots refused.

Every format is recognised from its bytes whatever the file is called; a file
whose bytes are two formats at once (a legacy stream with a zip appended, a zip
with a pickle in front of it, an .npy or tar with an archive behind it) is
refused with a FormatError naming both, because torch, numpy, zip readers and
scanners would each see a different file. The shared corpus is sniffed as
expected, and the legacy / tar / npy files under malicious/ are refused (they
are never opened with pickle or torch.load here).
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import safeload
from safeload.formats import FORMAT_NAMES, SNIFFERS, sniff
from safeload.formats.legacy import MAGIC_NUMBER
from safeload.formats.source import Source


def kind(data: bytes) -> str:
    return sniff(Source(data, None))


def _zip(name: str = "archive/data.pkl", data: bytes = b"\x80\x02}q\x00.") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr(name, data)
    return buf.getvalue()


def _legacy() -> bytes:
    # the header pickles and a main pickle without storages: a complete stream
    out = b"".join(pickle.dumps(v, protocol=2) for v in (
        MAGIC_NUMBER, 1001,
        {"protocol_version": 1001, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 8}},
        {"a": 1}, []))
    return out


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(3, dtype="<i4"))
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(3))
    return buf.getvalue()


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("sys_info")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"N."))
    return buf.getvalue()


SAMPLES = {
    "zip": _zip,
    "legacy": _legacy,
    "npy": _npy,
    "npz": _npz,
    "tar": _tar,
    "pickle": lambda: pickle.dumps({"a": 1}, protocol=4),
}


@pytest.mark.parametrize("expected", sorted(SAMPLES))
def test_each_format_is_sniffed_from_its_content(expected: str) -> None:
    assert kind(SAMPLES[expected]()) == expected


def test_the_file_name_plays_no_part(tmp_path: Path) -> None:
    for expected, make in SAMPLES.items():
        for name in ("model.pt", "weights.npy", "x.tar", "a.zip", "noext"):
            path = tmp_path / name
            path.write_bytes(make())
            assert sniff(Source.open(path)) == expected, (expected, name)


@pytest.mark.parametrize("protocol", range(0, 6))
def test_legacy_magic_is_recognised_in_every_protocol(protocol: int) -> None:
    data = pickle.dumps(MAGIC_NUMBER, protocol=protocol) + pickle.dumps(1001, protocol=protocol)
    assert kind(data) == "legacy"
    assert kind(pickle.dumps(MAGIC_NUMBER + 1, protocol=protocol)) == "pickle"
    assert kind(pickle.dumps(str(MAGIC_NUMBER), protocol=protocol)) == "pickle"


def test_every_sniffer_has_a_name_and_an_opener() -> None:
    from safeload.formats import OPENERS

    names = [name for name, _ in SNIFFERS]
    assert len(set(names)) == len(names)
    assert set(FORMAT_NAMES) == set(OPENERS) == set(names) | {"npz", "pickle"}


def test_empty_file_is_refused() -> None:
    with pytest.raises(safeload.FormatError, match="empty"):
        safeload.load(b"")


# --- polyglots ---------------------------------------------------------------------------


POLYGLOTS = [
    pytest.param(_legacy() + _zip(), ("legacy", "zip"), id="legacy+zip"),
    pytest.param(pickle.dumps({"a": 1}) + _zip(), ("pickle", "zip"), id="pickle+zip"),
    pytest.param(b"junk before the archive" + _zip(), ("pickle", "zip"), id="junk+zip"),
    pytest.param(_npy() + _zip(), ("npy", "zip"), id="npy+zip"),
    pytest.param(_tar() + _zip(), ("tar", "zip"), id="tar+zip"),
    pytest.param(pickle.dumps(1) + _npz(), ("pickle", "zip"), id="pickle+npz"),
]


@pytest.mark.parametrize(("data", "names"), POLYGLOTS)
def test_polyglots_are_refused_naming_both_formats(data: bytes, names) -> None:
    with pytest.raises(safeload.FormatError, match="polyglot") as err:
        safeload.load(data)
    for name in names:
        assert FORMAT_NAMES[name] in str(err.value)


def test_zip_appended_to_a_torch_legacy_file_is_refused() -> None:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()
    assert kind(legacy) == "legacy"
    zipped = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, zipped)
    with pytest.raises(safeload.FormatError, match="polyglot: legacy \\+ zip"):
        safeload.load(legacy + zipped.getvalue())


def test_zip64_end_records_count_as_a_zip() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as archive:
        with archive.open("big", "w", force_zip64=True) as fh:
            fh.write(b"x")
    data = pickle.dumps(1) + buf.getvalue()
    with pytest.raises(safeload.FormatError, match="polyglot"):
        safeload.load(data)


def test_zip_signatures_inside_data_are_not_an_archive() -> None:
    # the end-record signature alone, or with a comment length that does not reach
    # the end of the file, or without a central directory before it: no zip
    for tail in (b"PK\x05\x06", b"PK\x05\x06" + bytes(18), b"PK\x05\x06" + bytes(16) + b"\x05\x00",
                 b"PK\x05\x06\0\0\0\0\x01\0\x01\0\x10\0\0\0\0\0\0\0\0\0"):
        assert kind(pickle.dumps([1, 2]) + tail) == "pickle", tail
    assert kind(_legacy() + b"PK\x01\x02" + bytes(12)) == "legacy"


def test_a_zip_at_byte_zero_is_not_a_polyglot() -> None:
    assert kind(_zip()) == "zip"
    assert kind(b"PK\x05\x06" + bytes(18)) == "zip"  # empty archive


# --- the shared corpus ----------------------------------------------------------------------


from corpus_paths import CORPUS, needs_corpus  # noqa: E402

#: what the non-zip benign files are, by content
BENIGN_KINDS = {
    "burn_legacy_shared_storage.pt": "legacy",
    "burn_legacy_uncloned_views.pt": "legacy",
    "burn_legacy_with_offsets.pt": "legacy",
    "burn_simple_legacy.pt": "legacy",
    "burn_tar_multi_dtype.tar": "tar",
    "burn_tar_weight_bias.tar": "tar",
    "cgcnn_band-gap.pth.tar": "legacy",  # named .tar, a legacy stream inside
    "cgcnn_semi-metal-classification.pth.tar": "legacy",
    "cgcnn_fork_model_best.pth.tar": "zip",
    "gopickle_tensor_float16_proto3.pt": "legacy",
    "gopickle_tensor_float32_proto1.pt": "legacy",
    "gopickle_tensor_int64_proto5.pt": "legacy",
    "gopickle_tensor_uint8_proto5_zip.pt": "zip",
    "picklescan_pytorch_model.bin": "legacy",
    "skorch_optimizer.pt": "legacy",
    "skorch_params.pt": "legacy",
    "edge__picklescan_object_array.npy": "npy",
    "edge__picklescan_object_arrays.npz": "npz",
    "edge__picklescan_benign0_v0.pkl": "pickle",
    "edge__picklescan_not_a_pickle.bin": "pickle",
}


@needs_corpus
@pytest.mark.parametrize("name", sorted(BENIGN_KINDS))
def test_benign_corpus_files_sniff_by_content(name: str) -> None:
    path = CORPUS / "benign" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this corpus")
    assert sniff(Source.open(path)) == BENIGN_KINDS[name]


def _malicious() -> list:
    if CORPUS is None or not (CORPUS / "malicious").is_dir():
        return [pytest.param(None, id="no-corpus", marks=pytest.mark.skip("no corpus"))]
    picked = []
    for path in sorted((CORPUS / "malicious").iterdir()):
        if not path.is_file():
            continue
        with path.open("rb") as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"
        # legacy-looking names (.pt/.pth/.npy/.npz/.tar) that are not zip archives,
        # and whatever sniffs as a legacy, tar or numpy file
        if (path.suffix in (".pt", ".pth", ".npy", ".npz", ".tar") and not is_zip) or \
                sniff(Source.open(path)) in ("legacy", "tar", "npy", "npz"):
            picked.append(pytest.param(path, id=path.name))
    return picked


@pytest.mark.parametrize("path", _malicious())
def test_malicious_legacy_tar_and_numpy_files_are_refused(path: Path) -> None:
    with pytest.raises(safeload.SafeloadError):
        safeload.load(path)
    with pytest.raises(safeload.SafeloadError):
        safeload.load(path, map_location="cpu", mmap=True)


@needs_corpus
def test_the_dns_exfiltration_npy_is_refused_inside_its_pickle() -> None:
    path = CORPUS / "malicious" / "picklescan_dns_exfiltration.npy"
    if not path.is_file():
        pytest.skip("not in this corpus")
    assert sniff(Source.open(path)) == "npy"
    with pytest.raises(safeload.SafeloadError) as err:
        safeload.load(path)
    assert err.value.opcode is not None  # refused by the VM, at an opcode
