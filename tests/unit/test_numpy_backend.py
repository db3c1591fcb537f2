"""numpy-backend behaviour that has no direct torch counterpart."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

import safeload

torch = pytest.importorskip("torch")


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return safeload.load(buf.getvalue()), torch.load(io.BytesIO(buf.getvalue()))


def test_conjugate_and_negative_views_are_materialized():
    x = torch.tensor([1 + 2j, 3 - 1j])
    got, want = _roundtrip({"c": x.conj(), "n": torch._neg_view(torch.arange(3.0))})
    assert np.array_equal(got["c"], want["c"].resolve_conj().numpy())
    assert np.array_equal(got["n"], want["n"].resolve_neg().numpy())
    assert np.signbit(got["n"][0])  # -0.0, exactly as torch resolves it


def _rewrite_pickle(data: bytes, old: bytes, new: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            body = src.read(name)
            if name.endswith("/data.pkl"):
                assert old in body
                body = body.replace(old, new)
            dst.writestr(name, body)
    return out.getvalue()


def test_unknown_tensor_metadata_is_refused():
    buf = io.BytesIO()
    torch.save(torch.tensor([1 + 1j]).conj(), buf)
    data = _rewrite_pickle(buf.getvalue(), b"X\x04\x00\x00\x00conj", b"X\x04\x00\x00\x00evil")
    with pytest.raises(safeload.FormatError, match="conj / neg"):
        safeload.load(data)


def test_python2_strings_default_to_utf8_like_torch_load():
    assert safeload.load(b"U\x02\xc3\xa9.") == "é"
