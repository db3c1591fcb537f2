"""safeload.load over the shared corpus of real checkpoints and attack samples.

Benign zip-format weight files that ``torch.load(weights_only=True)`` accepts must
load with safeload exactly as torch loads them (which files qualify is decided here,
per file, not hard-coded). Every file under malicious/ must be refused with a
SafeloadError, and a child process that loads all of them must neither import a
module the files name nor create a file.

Files under malicious/ are never opened with pickle or torch.load, by these tests
or by anything they call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest

import safeload


def _assert_same_checkpoint(expected: object, got: object) -> None:
    # Imported here: compare needs torch, and the malicious-file tests do not.
    try:  # tests/unit as a package, or as a plain directory on sys.path
        from .compare import assert_same_checkpoint
    except ImportError:
        from compare import assert_same_checkpoint  # type: ignore[no-redef]
    assert_same_checkpoint(expected, got)


from corpus_paths import CORPUS, corpus_files, needs_corpus  # noqa: E402, F401

BENIGN = corpus_files("benign")
MALICIOUS = corpus_files("malicious")


def _params(files: list[Path]) -> list:
    if not files:  # keeps the test visible as one skip instead of vanishing
        return [pytest.param(None, id="no-files", marks=pytest.mark.skip("no corpus files"))]
    return [pytest.param(p, id=p.name) for p in files]


# --- benign ----------------------------------------------------------------------------


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith(("/constants.pkl", "/bytecode.pkl")) or "/code/" in n for n in names)


def _weights_only_oracle(path: Path) -> object:
    """torch's reading of ``path`` if it is a zip weight file that weights_only=True
    accepts; otherwise skip the test, saying why."""
    torch = pytest.importorskip("torch")
    if path.read_bytes()[:4] != b"PK\x03\x04":
        pytest.skip("not a zip-format checkpoint")
    try:
        if _is_torchscript(path):
            pytest.skip("TorchScript archive")
    except zipfile.BadZipFile:
        pytest.skip("zip that Python's zipfile cannot read")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # torch refuses it: out of scope for the differential
            pytest.skip(f"torch.load(weights_only=True) refuses it: {type(exc).__name__}")
        # weights_only=True accepted it, so weights_only=False runs no foreign code.
        return torch.load(path, weights_only=False, map_location="cpu")


@needs_corpus
@pytest.mark.parametrize("path", _params(BENIGN))
def test_benign_weight_file_loads_like_torch(path: Path) -> None:
    oracle = _weights_only_oracle(path)
    got = safeload.load(path, map_location="cpu")
    _assert_same_checkpoint(oracle, got)


@needs_corpus
@pytest.mark.parametrize("path", _params(BENIGN))
def test_benign_file_loads_or_is_refused_with_safeload_error(path: Path) -> None:
    # Whatever the format (legacy, TorchScript, truncated, encrypted zip...), only a
    # SafeloadError may escape. The result itself is checked by the test above.
    try:
        safeload.load(path, map_location="cpu")
    except safeload.SafeloadError as exc:
        assert str(exc) and exc.reason
    except Exception as exc:  # any other type escaping is the failure under test
        pytest.fail(f"{type(exc).__name__} escaped instead of SafeloadError: {exc}")


# --- malicious -------------------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize("path", _params(MALICIOUS))
def test_malicious_file_is_refused(path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # should a payload run anyway, keep its litter out of the repo
    with pytest.raises(safeload.SafeloadError) as info:
        safeload.load(path)
    err = info.value
    assert isinstance(err.reason, str) and err.reason
    location = err.location
    for field in ("file", "member", "opcode"):
        assert getattr(location, field) is None or isinstance(getattr(location, field), str)
    assert location.offset is None or (isinstance(location.offset, int) and location.offset >= 0)
    if isinstance(err, safeload.UnsafeGlobalError):
        assert isinstance(err.global_name, str) and err.global_name
    assert list(tmp_path.iterdir()) == []


# The child loads a benign checkpoint first, so that everything safeload needs for a
# normal load is already imported; then it may import only safeload's own modules
# and what the container formats need from the stdlib (measured, not guessed: see
# FORMAT_HELPERS).
CHILD_PRELUDE = """
import json, sys
import safeload
safeload.load(sys.argv[1])
baseline = set(sys.modules)
"""

FORMAT_HELPERS = [
    "zipfile",
    "tarfile",
    "zlib",
    "binascii",
    "struct",
    "mmap",
    "bz2",
    "lzma",
    "gzip",
    "codecs",
    "encodings.latin_1",
    "encodings.ascii",
    "encodings.utf_8",
]

HELPERS_CHILD = (
    CHILD_PRELUDE
    + """
for name in json.loads(sys.argv[2]):
    try:
        __import__(name)
    except ImportError:
        pass
print(json.dumps(sorted(set(sys.modules) - baseline)))
"""
)

ATTACK_CHILD = (
    CHILD_PRELUDE
    + """
outcomes = {}
for path in json.loads(sys.argv[2]):
    try:
        safeload.load(path)
        outcomes[path] = "loaded"
    except safeload.SafeloadError:
        outcomes[path] = "SafeloadError"
    except BaseException as exc:
        outcomes[path] = type(exc).__name__
new = sorted(set(sys.modules) - baseline)
print(json.dumps({"outcomes": outcomes, "new_modules": new}))
"""
)


def _run_child(code: str, args: list[str], cwd: Path) -> object:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, f"child failed ({result.returncode}):\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _allowed_import(module: str, allowed_stdlib: set[str]) -> bool:
    # Codecs are imported on first use (zip names in cp437, pickle's
    # raw-unicode-escape strings); a codec module runs no code on import.
    return (
        module in allowed_stdlib
        or module == "safeload"
        or module.startswith(("safeload.", "encodings."))
    )


def _listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture(scope="module")
def benign_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    try:
        from . import torch_cases
    except ImportError:
        import torch_cases  # type: ignore[no-redef]

    path = tmp_path_factory.mktemp("benign") / "benign.pt"
    torch_cases.save(
        {"model": torch_cases.build("cnn-state-dict"), "values": torch_cases.build("views")},
        path,
        4,
    )
    return path


@needs_corpus
@pytest.mark.skipif(not MALICIOUS, reason="no malicious files")
def test_loading_malicious_files_imports_nothing_and_writes_nothing(
    benign_checkpoint: Path, tmp_path: Path
) -> None:
    helpers_dir = tmp_path / "helpers"
    helpers_dir.mkdir()
    allowed_stdlib = set(
        _run_child(HELPERS_CHILD, [str(benign_checkpoint), json.dumps(FORMAT_HELPERS)], helpers_dir)
    )

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "canary.txt").write_text("untouched")
    before = _listing(workdir)
    report = _run_child(
        ATTACK_CHILD, [str(benign_checkpoint), json.dumps([str(p) for p in MALICIOUS])], workdir
    )
    after = _listing(workdir)

    assert after == before, f"files appeared in the working directory: {set(after) - set(before)}"
    assert (workdir / "canary.txt").read_text() == "untouched"
    unexpected = [m for m in report["new_modules"] if not _allowed_import(m, allowed_stdlib)]
    assert unexpected == [], f"loading malicious files imported {unexpected}"
    assert "torch" not in report["new_modules"]
    # Side effects are this test's subject; still, a loaded attack file is a failure.
    loaded = [Path(p).name for p, outcome in report["outcomes"].items() if outcome == "loaded"]
    assert loaded == [], f"malicious files loaded without error: {loaded}"
    assert len(report["outcomes"]) == len(MALICIOUS)
