"""safeload.scan: findings, verdicts, formats, salvage, explain, allow-by-name.

Hostile inputs are written byte by byte here (protocol-0 pickles are text), so no
test ever pickles a dangerous object. Files under the corpus's malicious/ folder
are only ever handed to safeload.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest

import safeload
from safeload.scan import (
    RULES,
    FileReport,
    Skipped,
    allow_by_name,
    looks_like_pickle,
    scan_file,
    sniff_model,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

OS_SYSTEM = b"cos\nsystem\n(S'echo pwned'\ntR."
EVAL_V4 = (b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval"
           b"\x94\x93\x94\x8c\x02{}\x94\x85\x94R\x94.")
#: an instance of a class outside the allowlist, pickled the usual way
UNKNOWN_OBJECT = (b"\x80\x02cmypkg\nConfig\nq\x00)\x81q\x01}q\x02X\x01\x00\x00\x00aq\x03K\x01sb.")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def report_of(path) -> FileReport:
    report = scan_file(path)
    assert isinstance(report, FileReport), report
    return report


def rules(report: FileReport) -> list[str]:
    return [f.rule_name for f in report.findings]


# --- verdicts and locations ------------------------------------------------------------


def test_clean_checkpoint_has_no_findings():
    report = report_of(EXAMPLES / "tiny_cnn.pt")
    assert report.verdict == "clean" and report.findings == [] and report.complete
    assert report.format == "zip"


def test_poisoned_checkpoint_findings_are_located():
    report = report_of(EXAMPLES / "poisoned.pt")
    assert report.verdict == "dangerous"
    first = report.findings[0]
    assert (first.rule_name, first.severity, first.global_name) == (
        "dangerous-global", "dangerous", "os.system")
    assert first.member == "poisoned/data.pkl" and first.opcode == "GLOBAL"
    assert first.offset == 2 and first.file == str(EXAMPLES / "poisoned.pt")
    assert first.rule_id == RULES["dangerous-global"].id
    assert "dangerous-call" in rules(report)


def test_every_finding_of_a_bare_pickle_is_reported_not_just_the_first(tmp_path):
    # two dangerous calls and an unknown class: the loader stops at the first
    data = (b"(cos\nsystem\n(S'a'\ntRcsubprocess\ncall\n(S'b'\ntRcmypkg\nThing\n(tRl.")
    report = report_of(write(tmp_path, "many.pkl", data))
    names = {f.global_name for f in report.findings}
    assert {"os.system", "subprocess.call", "mypkg.Thing"} <= names
    assert report.verdict == "dangerous"


def test_unknown_class_is_unsafe_not_dangerous(tmp_path):
    report = report_of(write(tmp_path, "obj.pkl", UNKNOWN_OBJECT))
    assert report.verdict == "unsafe"
    assert rules(report) == ["unknown-global", "unknown-call", "object-state"]
    assert report.unknown_globals() == ["mypkg.Config"]


def test_build_on_a_module_is_dangerous(tmp_path):
    # GLOBAL a module, then BUILD on it: rewrites the module's attributes
    data = b"\x80\x02ctorch\n_utils\n}X\x01\x00\x00\x00xK\x01sb."
    report = report_of(write(tmp_path, "override.pkl", data))
    assert "build-on-global" in rules(report)
    assert report.verdict == "dangerous"


def test_calling_the_result_of_a_call_is_dangerous(tmp_path):
    # getattr(mypkg.Thing, 'run')('x'): mypkg.Thing alone would be only unknown
    data = b"cbuiltins\ngetattr\n(cmypkg\nThing\nS'run'\ntR(S'x'\ntR."
    report = report_of(write(tmp_path, "chain.pkl", data))
    assert "call-on-result" in rules(report)


def test_extension_codes_are_dangerous(tmp_path):
    report = report_of(write(tmp_path, "ext.pkl", b"\x80\x02\x82\x01)R."))
    assert rules(report)[0] == "copyreg-extension"
    assert report.verdict == "dangerous"


def test_findings_before_a_parse_error_are_kept_and_the_file_is_not_complete(tmp_path):
    data = OS_SYSTEM[:-1] + b"h\x07."  # BINGET of a memo key never stored
    report = report_of(write(tmp_path, "broken.pkl", data))
    assert rules(report)[:2] == ["dangerous-global", "dangerous-call"]
    assert "malformed-pickle" in rules(report)
    assert report.verdict == "dangerous" and not report.complete


def test_malformed_only_is_an_error_verdict(tmp_path):
    report = report_of(write(tmp_path, "truncated.pkl", b"\x80\x02}q\x00(X\x01\x00\x00\x00a"))
    assert report.verdict == "error" and not report.complete


def test_names_after_the_point_where_analysis_stopped_are_still_reported(tmp_path):
    # the VM stops at the bad memo key; the sweep still sees os.system after it
    data = b"\x80\x02}h\x07cos\nsystem\n(S'x'\ntR."
    report = report_of(write(tmp_path, "after.pkl", data))
    names = [f.global_name for f in report.findings if f.severity == "dangerous"]
    assert names == ["os.system"]
    assert "comes after the point where analysis stopped" in report.findings[-1].message


# --- formats -------------------------------------------------------------------------


def test_chained_pickles_are_all_analysed(tmp_path):
    first = pickle.dumps([1, 2, 3], protocol=4)
    report = report_of(write(tmp_path, "two.pkl", first + EVAL_V4))
    assert report.verdict == "dangerous"
    evals = [f for f in report.findings if f.global_name == "builtins.eval"]
    assert evals and evals[0].offset >= len(first)


def test_pickle_with_a_zip_appended_is_a_polyglot(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x/data.pkl", OS_SYSTEM)
    data = pickle.dumps({"a": 1}, protocol=2) + buffer.getvalue()
    report = report_of(write(tmp_path, "poly.pt", data))
    assert "polyglot" in rules(report)
    assert "dangerous-global" in rules(report)  # the zip's member was scanned too


def test_zip_with_a_pickle_appended_is_a_polyglot(tmp_path):
    data = (EXAMPLES / "tiny_cnn.pt").read_bytes() + OS_SYSTEM
    report = report_of(write(tmp_path, "poly.pt", data))
    assert "polyglot" in rules(report) and "dangerous-global" in rules(report)
    assert report.verdict == "dangerous"


def test_zip_that_is_not_a_torch_checkpoint_has_its_members_scanned(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.pkl", OS_SYSTEM)  # at the root: not torch's layout
        archive.writestr("README.txt", "hello")
        archive.writestr("nested.zip", _zip_bytes({"inner/evil.pkl": EVAL_V4}))
    report = report_of(write(tmp_path, "archive.zip", buffer.getvalue()))
    members = {f.member for f in report.findings if f.severity == "dangerous"}
    assert "data.pkl" in members and "nested.zip!inner/evil.pkl" in members
    assert "malformed-container" in rules(report)  # the loader's refusal is kept
    assert "skipped-members" in rules(report)  # README.txt, counted


def _zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_deflated_and_flagged_members_are_read(tmp_path):
    data = bytearray(_zip_bytes({"m/data.pkl": OS_SYSTEM}, zipfile.ZIP_DEFLATED))
    report = report_of(write(tmp_path, "deflated.zip", bytes(data)))
    assert "dangerous-global" in rules(report)
    # set the "encrypted" flag on a stored member that is not encrypted at all
    stored = bytearray(_zip_bytes({"m/data.pkl": OS_SYSTEM}))
    stored[6] |= 1
    central = stored.rfind(b"PK\x01\x02")
    stored[central + 8] |= 1
    report = report_of(write(tmp_path, "flagged.zip", bytes(stored)))
    assert "dangerous-global" in rules(report)


def test_object_npy_payload_is_analysed(tmp_path):
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (118 - len(header)) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + OS_SYSTEM
    report = report_of(write(tmp_path, "obj.npy", data))
    assert report.verdict == "dangerous"
    assert any(f.global_name == "os.system" for f in report.findings)


def test_compressed_pickle_is_unpacked_and_scanned(tmp_path):
    report = report_of(write(tmp_path, "model.pkl.gz", gzip.compress(OS_SYSTEM)))
    assert report.verdict == "dangerous"
    assert report.findings[0].member == "<gzip>"
    assert report.format == "gzip+pickle"


def test_compressed_text_is_skipped(tmp_path):
    assert isinstance(scan_file(write(tmp_path, "notes.gz", gzip.compress(b"hello"))), Skipped)


def test_opaque_archive_holding_a_pickle_is_unsafe_at_least(tmp_path):
    data = b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 24 + EVAL_V4 + b"\x00" * 16
    report = report_of(write(tmp_path, "model.7z", data))
    assert {"opaque-archive", "dangerous-global"} <= set(rules(report))


def test_opaque_archive_without_a_pickle_is_skipped(tmp_path):
    data = b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(range(256)) * 4
    assert isinstance(scan_file(write(tmp_path, "other.7z", data)), Skipped)


@pytest.mark.parametrize("content", [
    b"hello world\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b'{"a": 1}', b"abc",
    b"cmod\n\xf8\n", b"# title\n\nsome text",
])
def test_non_model_files_are_skipped_with_a_reason(tmp_path, content):
    result = scan_file(write(tmp_path, "file.bin", content))
    assert isinstance(result, Skipped) and "not a model file" in result.reason


def test_empty_file_is_skipped(tmp_path):
    result = scan_file(write(tmp_path, "empty.pt", b""))
    assert isinstance(result, Skipped) and result.reason == "empty file"


@pytest.mark.parametrize(("data", "expected"), [
    (b"\x80\x02}q\x00.", True),  # PROTO
    (b"(dp0\n.", True),  # protocol 0 dict
    (b"(0N.", True),  # POP on an empty stack drops the MARK, as pickle does
    (b"cos\nsystem\n(S'ls'\ntR\xff", True),  # junk only after a call
    (b"(lp0\nI1\na", False),  # ends before any call: pickle could run nothing
    (b"X" + (10**5).to_bytes(4, "little") + b"a" * 10**5, True),  # past the window
    (b"Hello, world", False),
    (b"\x89PNG\r\n\x1a\n", False),
    (b"a", False),  # APPEND on nothing
    (b"K\x01R", False),  # REDUCE with one value on the stack
])
def test_looks_like_pickle(data, expected):
    assert looks_like_pickle(data) is expected


def test_sniff_is_by_content_not_name():
    assert sniff_model(b"PK\x03\x04rest") == "zip"
    assert sniff_model(b"\x93NUMPY\x01\x00") == "npy"
    assert sniff_model(b"\x1f\x8b\x08") == "gzip"
    assert sniff_model(b"plain text") is None


# --- allow by name, and the policy ---------------------------------------------------


def test_allowed_name_is_accepted_by_name_and_never_imported(tmp_path):
    path = write(tmp_path, "obj.pkl", UNKNOWN_OBJECT)
    assert report_of(path).verdict == "unsafe"
    report = scan_file(path, allow=["mypkg.Config"])
    assert report.verdict == "clean", report.findings


def test_known_dangerous_names_can_never_be_allowed():
    for name in ("os.system", "builtins.eval", "torch.load", "mypkg.Thing.__reduce__"):
        with pytest.raises(ValueError, match="refusing to allow"):
            allow_by_name([name])
    with pytest.raises(ValueError):
        allow_by_name(["nodot"])


def test_allowed_objects_are_what_the_loader_takes(tmp_path):
    class Config:
        def __setstate__(self, state):
            self.state = state

    Config.__module__, Config.__qualname__ = "mypkg", "Config"
    path = write(tmp_path, "obj.pkl", UNKNOWN_OBJECT)
    assert scan_file(path, allow={"mypkg.Config": Config}).verdict == "clean"
    assert safeload.load(path, allow={"mypkg.Config": Config}).state == {"a": 1}


# --- explain -------------------------------------------------------------------------


def test_explain_lists_what_the_pickle_would_run(tmp_path):
    report = scan_file(write(tmp_path, "evil.pkl", OS_SYSTEM), explain=True)
    listing = report.explanations[0].listing
    assert "_1 = os.system('echo pwned')" in listing
    assert "result = _1" in listing


def test_explain_listing_is_bounded(tmp_path):
    huge = b"X" + (10**6).to_bytes(4, "little") + b"a" * 10**6
    call = b"cos\nsystem\n(" + b"X" + (1000).to_bytes(4, "little") + b"b" * 1000 + b"tR"
    data = b"(cos\nsystem\n(" + huge + b"tR" + call * 400 + b"l."
    report = scan_file(write(tmp_path, "big.pkl", data), explain=True)
    listing = report.explanations[0].listing
    assert len(listing) <= 21_000 and listing.count("\n") <= 205
    assert "[1000000 chars]" in listing


def test_fickling_listing_when_installed(tmp_path):
    pytest.importorskip("fickling")
    report = scan_file(write(tmp_path, "evil.pkl", OS_SYSTEM), explain=True)
    assert "system" in (report.explanations[0].decompiled or "")


# --- TorchScript and whole modules ---------------------------------------------------


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory):
    torch = pytest.importorskip("torch")
    directory = tmp_path_factory.mktemp("torch")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    torch.jit.save(torch.jit.script(model), directory / "scripted.pt")
    torch.save(model, directory / "whole.pt")
    torch.save(model.state_dict(), directory / "state.pt")
    return directory


def test_torchscript_archive_is_unsafe_and_says_it_carries_code(torch_files):
    report = report_of(torch_files / "scripted.pt")
    assert report.format == "torchscript" and report.verdict == "unsafe"
    code = [f for f in report.findings if f.rule_name == "torchscript-code"]
    assert code and "code/" in code[0].message
    members = {f.member for f in report.findings if f.member}
    assert any(m.endswith("data.pkl") for m in members)


def test_whole_pickled_module_is_unsafe_with_its_classes(torch_files):
    report = report_of(torch_files / "whole.pt")
    assert report.verdict == "unsafe"
    assert "torch.nn.modules.linear.Linear" in report.unknown_globals()
    assert {"unknown-call", "object-state"} <= set(rules(report))
    assert report_of(torch_files / "state.pt").verdict == "clean"


def test_scanning_reads_no_tensor_bytes(torch_files, monkeypatch):
    # the storage records are only measured: numpy never sees them
    import numpy as np

    calls = []
    real = np.frombuffer
    monkeypatch.setattr(np, "frombuffer", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert report_of(torch_files / "state.pt").verdict == "clean"
    assert calls == []


def test_scan_of_a_directory_orders_files_and_counts_skipped(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "b.pkl", OS_SYSTEM)
    write(tmp_path, "a.pkl", pickle.dumps(OrderedDict(a=1), protocol=2))
    write(tmp_path, "notes.txt", b"nothing to see")
    (tmp_path / ".git").mkdir()
    write(tmp_path / ".git", "evil.pkl", OS_SYSTEM)  # VCS metadata is not entered
    report = safeload.scan(tmp_path)
    assert [Path(f.path).name for f in report.files] == ["a.pkl", "b.pkl"]
    assert [Path(s.path).name for s in report.skipped] == ["notes.txt"]
    assert report.exit_code() == 1 and report.exit_code("dangerous") == 1


def test_hostile_containers_never_crash_the_scanner(tmp_path):
    # Mutations of every container the salvage readers handle: whatever the
    # bytes, the result is a report or a skip, never an exception.
    import random
    import tarfile

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("pickle")
        info.size = len(OS_SYSTEM)
        archive.addfile(info, io.BytesIO(OS_SYSTEM))
    seeds = {
        "zip": _zip_bytes({"a.pkl": OS_SYSTEM, "b/c.npy": b"\x93NUMPY\x01\x00"}),
        "deflated": _zip_bytes({"x/data.pkl": EVAL_V4}, zipfile.ZIP_DEFLATED),
        "tar": tar.getvalue(),
        "gzip": gzip.compress(OS_SYSTEM),
        "torch": (EXAMPLES / "tiny_cnn.pt").read_bytes(),
    }
    rng = random.Random(7)
    for name, seed in seeds.items():
        for i in range(60):
            data = bytearray(seed)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[: rng.randrange(1, len(data))]
            result = scan_file(write(tmp_path, f"{name}{i}", bytes(data)))
            assert isinstance(result, (FileReport, Skipped))
            if isinstance(result, FileReport):
                assert all(f.rule_name != "malformed-container" or "internal error"
                           not in f.message for f in result.findings), result.findings
