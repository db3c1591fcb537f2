"""safeload scan over the shared corpus of real checkpoints and attack samples.

Every attack sample must fail the scan (exit code != 0) with at least one
dangerous or unsafe finding; every benign file that safeload.load reads must
pass it (exit code 0); TorchScript archives and whole pickled modules must be
unsafe with findings that say why. A child process scans every attack sample
and must import nothing the samples name and write nothing.

Files under malicious/ are only ever handed to safeload.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from corpus_paths import (  # noqa: E402
    CORPUS,  # noqa: E402
    corpus_files,
    needs_corpus,
)

import safeload
from safeload import cli
from safeload.scan import FileReport, scan_file

MALICIOUS = corpus_files("malicious")
BENIGN = corpus_files("benign")


def _params(files):
    if not files:
        return [pytest.param(None, id="no-files", marks=pytest.mark.skip("no corpus files"))]
    return [pytest.param(p, id=p.name) for p in files]


def _loads(path: Path) -> bool:
    try:
        safeload.load(path)
    except safeload.SafeloadError:
        return False
    return True


@needs_corpus
@pytest.mark.parametrize("path", _params(MALICIOUS))
def test_malicious_file_fails_the_scan_with_a_finding(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = scan_file(path)
    assert isinstance(report, FileReport), f"skipped: {report}"
    assert report.verdict in ("dangerous", "unsafe")
    assert any(f.severity in ("dangerous", "unsafe") for f in report.findings)
    for finding in report.findings:
        assert finding.file == str(path) and finding.message
        assert finding.offset is None or finding.offset >= 0
    assert list(tmp_path.iterdir()) == []


@needs_corpus
@pytest.mark.skipif(not MALICIOUS, reason="no malicious files")
def test_scan_of_the_malicious_folder_exits_1_and_flags_every_file(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = cli.main(["scan", str(CORPUS / "malicious"), "--format", "json", "-o", str(out)])
    assert code == 1
    data = json.loads(out.read_text())
    assert data["skipped"] == []
    assert len(data["files"]) == len(MALICIOUS)
    assert all(f["verdict"] in ("dangerous", "unsafe") for f in data["files"])


@needs_corpus
def test_benign_weight_files_pass_the_scan():
    weights = [p for p in BENIGN if _loads(p)]
    assert len(weights) >= 20  # the corpus has that many loadable weight files
    assert cli.main(["scan", "-q", *map(str, weights)]) == 0


TORCHSCRIPT = ["iris_model_scripted.pt", "nn_adder_model_scripted.pt", "tchrs_foo.pt",
               "tchrs_foo8.pt", "cody_knn_model.ptl", "suvrat_quantized_torchscript.pth"]


@needs_corpus
@pytest.mark.parametrize("name", TORCHSCRIPT)
def test_torchscript_in_the_corpus_is_unsafe_because_it_carries_code(name):
    path = CORPUS / "benign" / name
    if not path.exists():
        pytest.skip(f"{name} not in the corpus")
    report = scan_file(path)
    assert report.format == "torchscript" and report.verdict == "unsafe"
    code = next(f for f in report.findings if f.rule_name == "torchscript-code")
    assert "carries code" in code.message
    assert any(f.rule_name == "torchscript-global" for f in report.findings)


@needs_corpus
def test_whole_pickled_module_is_unsafe_and_names_its_classes():
    path = CORPUS / "benign" / "herbsek_full_model.pth"
    if not path.exists():
        pytest.skip("herbsek_full_model.pth not in the corpus")
    report = scan_file(path)
    assert report.verdict == "unsafe" and report.complete
    assert "__main__.cnn" in report.unknown_globals()
    assert "torch.nn.modules.conv.Conv2d" in report.unknown_globals()
    first = report.findings[0]
    assert (first.member, first.offset, first.opcode) == ("full_model/data.pkl", 2, "GLOBAL")


SCAN_CHILD = """
import json, sys
import safeload
from safeload import cli
cli.main(["scan", "-q", sys.argv[1]])           # a benign scan imports what scanning needs
baseline = set(sys.modules)
code = cli.main(["scan", "-q", "--explain", *json.loads(sys.argv[2])])
print(json.dumps({"code": code, "new": sorted(set(sys.modules) - baseline)}))
"""


@needs_corpus
@pytest.mark.skipif(not MALICIOUS, reason="no malicious files")
def test_scanning_attack_files_imports_nothing_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "canary.txt").write_text("untouched")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCAN_CHILD),
         str(Path(__file__).resolve().parents[2] / "examples" / "tiny_cnn.pt"),
         json.dumps([str(p) for p in MALICIOUS])],
        capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 1
    # What may appear: safeload's own modules, codecs, and the stdlib pieces
    # that --explain and the salvage readers use. Never what a file names.
    allowed_prefixes = ("safeload.", "encodings.", "concurrent.", "importlib.")
    allowed = {"subprocess", "selectors", "signal", "threading", "_posixsubprocess",
               "fcntl", "select", "errno", "contextlib", "_compat_pickle", "ast",
               "safeload.explain", "safeload.config", "tomllib", "tomllib._parser",
               "tomllib._re", "tomllib._types", "_bz2", "_lzma", "lzma", "bz2", "gzip"}
    unexpected = [m for m in report["new"]
                  if m not in allowed and not m.startswith(allowed_prefixes)]
    assert unexpected == [], unexpected
    assert sorted(p.name for p in work.iterdir()) == ["canary.txt"]
    assert (work / "canary.txt").read_text() == "untouched"
