"""A short coverage-guided run of each atheris harness (skipped without atheris).

Each harness runs in a subprocess for ``SAFELOAD_ATHERIS_SECONDS`` (default
15) from a seed corpus written into a temporary directory; the run must end on
its time limit with no crash, leak, timeout or out-of-memory artifact. The
long run and its numbers are in SECURITY.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

HERE = Path(__file__).resolve().parent
SECONDS = int(os.environ.get("SAFELOAD_ATHERIS_SECONDS", "15"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    sys.path.insert(0, str(HERE))
    from make_seed_corpus import build

    out = tmp_path_factory.mktemp("atheris-seeds")
    build(out)
    return out


@pytest.mark.parametrize("harness, corpus", [("atheris_vm.py", "vm"), ("atheris_zip.py", "zip")])
def test_harness_runs_without_findings(harness, corpus, seeds, tmp_path):
    work = tmp_path / "corpus"
    shutil.copytree(seeds / corpus, work)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(HERE / harness), str(work), f"-max_total_time={SECONDS}",
         "-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1",
         f"-artifact_prefix={artifacts}/"],
        capture_output=True, text=True, timeout=SECONDS + 240, env=env, cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    found = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not found, f"findings {found}:\n{log[-4000:]}"
    runs = re.search(r"Done (\d+) runs", log)
    assert runs and int(runs.group(1)) > 0, log[-2000:]
