"""The adversarial suite: every attack class, each variant in a watched child.

For each class of ``adversarial.CLASSES`` the generator's cases (hundreds per
class, the same every run) run in child processes under RLIMIT_AS and a
timeout, in three modes: ``safeload.load``, ``safeload.load(records=True)``
and the scanner's analysis mode. ``harness.judge`` lists every broken
invariant (another exception type escaped, a canary file appeared, a module
was imported, a patched object, a benign checkpoint that loads differently,
time over budget, the expected refusal missing); the test asserts there is
none. ``SAFELOAD_ADVERSARIAL_REPORT=path.json`` saves the counts per class
(the numbers in SECURITY.md).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from adversarial import CLASSES, generate, load_all
from adversarial.harness import Report, run_cases
from adversarial.payloads import STORAGES, in_zip, tensor, val
from fuzzkit import benign_files, op, pglobal

load_all()
_REPORTS: list[Report] = []


def _benign_checkpoint() -> bytes:
    """A small checkpoint every child loads before and after each case."""
    try:
        import torch
    except ImportError:
        od = pglobal("collections", "OrderedDict") + op("EMPTY_TUPLE") + op("REDUCE")
        body = (op("MARK") + val("w") + tensor() + val("od") + od + val({"_metadata": {}})
                + op("BUILD") + op("DICT"))
        return in_zip(body, 2, STORAGES)
    from collections import OrderedDict

    state = OrderedDict(w=torch.arange(6, dtype=torch.float32).reshape(2, 3),
                        b=torch.ones(3, dtype=torch.bfloat16), n=torch.tensor([1, 2]))
    state._metadata = OrderedDict({"": {"version": 1}})
    buffer = io.BytesIO()
    torch.save({"state": state, "step": 3, "t": state["w"].t()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adversarial")
    benign = root / "benign.pt"
    benign.write_bytes(_benign_checkpoint())
    canary = root / "canary"
    canary.mkdir()
    return {"root": root, "benign": benign, "canary": canary,
            "warmup": [p for p in benign_files(50_000)][:12]}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_attack_class_breaks_no_invariant(name, workdir):
    cases = generate(name, str(workdir["canary"]))
    assert len(cases) >= 40, "each class generates many variants"
    report = run_cases(name, cases, workdir["canary"], workdir["benign"],
                       warmup=workdir["warmup"])
    _REPORTS.append(report)
    _save_reports()
    assert report.runs == sum(len(c.modes) for c in cases) or report.violations
    assert not report.violations, "\n".join(report.violations[:20])


def _save_reports() -> None:
    path = os.environ.get("SAFELOAD_ADVERSARIAL_REPORT")
    if path:
        Path(path).write_text(json.dumps([r.as_dict() for r in _REPORTS], indent=2))
