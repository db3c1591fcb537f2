"""The benchmark scripts that patch safeload's internals still find them, and
leave nothing patched behind (they run in the caller's process)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def scan_parts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setitem(sys.modules, "picklescan", None)  # no yardstick: faster, offline
    import scan_parts

    return scan_parts


def _save(obj, path: Path) -> Path:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def test_scan_parts_times_every_row_and_restores_what_it_stubbed(scan_parts, tmp_path,
                                                                 capsys):
    import safeload.loader as loader
    from safeload import allowlist
    from safeload.scan import ScanBuilder

    before = _stubbed_names(loader, allowlist, ScanBuilder)
    good = _save({f"w{i}": torch.ones(3) for i in range(4)}, tmp_path / "good.pt")
    assert scan_parts.main([str(good), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("safeload scan", "builder checks", "persistent-id checks",
                "tensor handler", "OrderedDict handler", "zip validation alone"):
        assert row in out
    assert _stubbed_names(loader, allowlist, ScanBuilder) == before


def _stubbed_names(loader, allowlist, builder) -> list:
    handlers = allowlist.DEFAULT_POLICY.handlers
    found = [loader.storage_ref_from_pid, builder.storage, builder.tensor,
             handlers["torch._utils._rebuild_tensor_v2"].reduce,
             handlers["collections.OrderedDict"].reduce]
    assert found[0] is allowlist.storage_ref_from_pid
    assert found[3] is allowlist._rebuild_tensor_v2
    return found


def test_scan_parts_stops_when_a_stubbed_scan_is_not_clean(scan_parts, tmp_path, capsys):
    poisoned = tmp_path / "poisoned.pkl"
    poisoned.write_bytes(b"cos\nsystem\n(S'echo'\ntR.")
    assert scan_parts.main([str(poisoned), "--repeat", "1"]) == 1
    assert "is the input benign?" in capsys.readouterr().out
