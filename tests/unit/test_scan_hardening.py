"""safeload scan against hostile text and hostile sizes.

- Every string a file controls (global names, archive member names, dict keys,
  file names) reaches the text, JSON, SARIF and ``--explain`` output, and the
  loader's error messages, only through ``errors.printable``: no control
  character rewrites a terminal or CI log, no lone surrogate makes printing
  fail, and the CLI never dies on an encoding (``PYTHONIOENCODING=ascii``).
- ``errors.short_repr`` stays short and cheap for any value.
- Compressed inputs inflate within a budget proportional to their compressed
  size (``Limits.max_inflate_ratio``, ``Limits.min_inflate_budget``); past it
  the member is reported as not scanned (exit code 2), and memory stays bounded.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest

import safeload
from safeload import cli
from safeload.errors import FormatError, UnsafeGlobalError, printable
from safeload.scan import FileReport, scan_file

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "data" / "sarif-schema-2.1.0.json"

OS_SYSTEM = b"cos\nsystem\n(S'echo pwned'\ntR."
#: 31 bytes: STACK_GLOBAL on lone surrogates (SHORT_BINUNICODE decodes them with
#: surrogatepass); the VM stops at the first, the salvage sweep reads the second
SURROGATES = (b"\x80\x04\x8c\x03\xed\xa0\x80\x8c\x01x\x93)R\x8c\x03\xed\xb0\x80\x8c\x01y"
              b"\x93)\x81N\x86b.")
#: a global whose module name would clear the terminal, after a structural
#: error (a memo key never stored), so that only the salvage sweep reads it
_MODULE = b"\x1b[2J\x07evil\n"
ESCAPES = b"\x80\x02}h\x07\x8c" + bytes([len(_MODULE)]) + _MODULE + b"\x8c\x01x\x93)R."


def _strings(value):
    """Every str inside a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def assert_clean_text(text: str) -> None:
    """Encodable as strict UTF-8, and no character but newline that a terminal
    would interpret."""
    text.encode("utf-8")
    assert all(line.isprintable() for line in text.split("\n")), [
        line for line in text.split("\n") if not line.isprintable()]


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def hostile(tmp_path) -> Path:
    path = tmp_path / "surrogates.pkl"
    path.write_bytes(SURROGATES)
    return path


# --- the one rule ----------------------------------------------------------------------


def test_printable_escapes_controls_and_surrogates_and_keeps_the_rest():
    assert printable("torch._utils._rebuild_tensor_v2") == "torch._utils._rebuild_tensor_v2"
    assert printable("é 中 \\ 'q'") == "é 中 \\ 'q'"  # printable text is left alone
    assert printable("\x1b[2J\n\udc80\u202e\x00") == "\\x1b[2J\\n\\udc80\\u202e\\x00"
    assert printable(printable("\ud800")) == "\\ud800"  # idempotent
    assert printable("a" * 1000, 10) == "a" * 10 + "...[1000 chars]"


def test_safeload_errors_escape_what_the_file_chose():
    err = FormatError("record '\x1b]0;pwned\x07' \udcff is bad", hint="x\ny",
                      member="a\x1bb")
    text = str(err)
    assert text.isprintable() and "\\x1b]0;pwned\\x07" in text and "\\udcff" in text
    assert err.reason.isprintable() and err.hint == "x\\ny"
    err = UnsafeGlobalError("global refused", global_name="m\udc00." + "n" * 1000)
    assert err.global_name.isprintable() and len(err.global_name) < 400


# --- the 31-byte file ----------------------------------------------------------------


def test_lone_surrogates_do_not_crash_text_output(hostile, capsys):
    code, out, err = run(["scan", "--no-config", hostile], capsys)
    assert code == 1 and "exit code 1" in out  # the sweep's unknown global: unsafe
    assert "\\udc00.y" in out and "\\ud800" in out
    assert_clean_text(out)


def test_lone_surrogates_give_valid_json(hostile, capsys):
    code, out, _ = run(["scan", "--no-config", "--format", "json", "--explain", hostile],
                       capsys)
    data = json.loads(out)
    assert code == 1 and data["exit_code"] == 1
    for text in _strings(data):
        text.encode("utf-8")  # no lone surrogate survives json.loads
        assert text.replace("\n", "").isprintable(), text
    globals_ = [f["global"] for f in data["files"][0]["findings"] if f["global"]]
    assert globals_ == ["\\udc00.y"]


def test_lone_surrogates_give_valid_sarif(hostile, capsys, tmp_path):
    target = tmp_path / "r.sarif"
    code, _, err = run(["scan", "--no-config", "--format", "sarif", "-o", target, hostile],
                       capsys)
    assert code == 1 and "exit code 1" in err
    log = json.loads(target.read_text(encoding="utf-8"))
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker()).validate(log)
    for text in _strings(log):
        text.encode("utf-8")


@pytest.mark.parametrize("fmt", ["text", "json", "sarif"])
def test_cli_on_an_ascii_stdout_never_crashes(hostile, tmp_path, fmt):
    # a non-ASCII (but printable) file name too: ASCII stdout cannot encode it
    named = tmp_path / "modèle_中.pkl"
    named.write_bytes(SURROGATES)
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "NO_COLOR": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                      env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "safeload.cli", "scan", "--no-config", "--format", fmt,
         str(hostile), str(named)], capture_output=True, env=env, timeout=120)
    assert result.returncode == 1, result.stderr.decode("ascii", "replace")
    assert b"Traceback" not in result.stderr
    out = result.stdout.decode("ascii")  # nothing but ASCII reached the stream
    if fmt == "text":
        assert "exit code 1" in out and "mod\\xe8le_\\u4e2d.pkl" in out
    else:
        json.loads(out)


# --- other file-controlled text --------------------------------------------------------


def test_control_characters_in_swept_global_names_are_escaped(tmp_path, capsys):
    path = tmp_path / "esc.pkl"
    path.write_bytes(ESCAPES)
    code, out, _ = run(["scan", "--no-config", path], capsys)
    assert code == 1 and "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x07evil\\n.x" in out
    assert_clean_text(out)


def test_control_characters_in_zip_member_names_are_escaped(tmp_path, capsys):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x\x1b[31m\r\nfake finding\u202e.pkl", OS_SYSTEM)
    path = tmp_path / "names.zip"
    path.write_bytes(buffer.getvalue())
    report = scan_file(path)
    assert isinstance(report, FileReport) and report.verdict == "dangerous"
    for finding in report.findings:
        for text in (finding.message, finding.member, finding.hint, finding.global_name):
            assert text is None or text.isprintable(), finding
    for fmt in ("text", "json", "sarif"):
        code, out, _ = run(["scan", "--no-config", "--format", fmt, path], capsys)
        assert code == 1
        assert_clean_text(out)
        texts = [out] if fmt == "text" else list(_strings(json.loads(out)))
        assert any("x\\x1b[31m\\r\\nfake finding\\u202e.pkl" in t for t in texts)


def test_huge_global_names_give_bounded_messages(tmp_path):
    # a 1 MB module name: the refusal, the call on it and its explanation all
    # name it; every message stays short
    module = b"m" * 1_000_000
    data = b"\x80\x04\x8d" + len(module).to_bytes(8, "little") + module + \
        b"\x8c\x01x\x93)R."
    path = tmp_path / "long.pkl"
    path.write_bytes(data)
    report = scan_file(path, explain=True)
    assert {"unknown-global", "unknown-call"} <= {f.rule_name for f in report.findings}
    for finding in report.findings:
        assert len(finding.message) < 3000 and len(finding.global_name or "") < 400
    with pytest.raises(safeload.SafeloadError) as info:
        safeload.load(path)
    assert len(str(info.value)) < 3000


def test_file_names_that_are_not_text_are_escaped_everywhere(tmp_path, capsys):
    if sys.platform == "win32":
        pytest.skip("POSIX file names are bytes")
    raw = os.fsencode(str(tmp_path)) + b"/evil\xff\x1b[2J.pkl"
    try:
        with open(raw, "wb") as fh:
            fh.write(OS_SYSTEM)
    except OSError:
        pytest.skip("the file system refuses non-UTF-8 names")
    code, out, _ = run(["scan", "--no-config", tmp_path], capsys)
    assert code == 1 and "evil\\udcff\\x1b[2J.pkl" in out
    assert_clean_text(out)
    code, out, _ = run(["scan", "--no-config", "--format", "json", tmp_path], capsys)
    assert code == 1 and json.loads(out)["files"][0]["path"].endswith("evil\\udcff\\x1b[2J.pkl")
    target = tmp_path / "r.sarif"
    code, _, _ = run(["scan", "--no-config", "--format", "sarif", "-o", target, raw.decode(
        sys.getfilesystemencoding(), "surrogateescape")], capsys)
    log = json.loads(target.read_text(encoding="utf-8"))
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(log)
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"][
        "artifactLocation"]["uri"]
    assert uri.endswith("evil%FF%1B%5B2J.pkl")  # the exact bytes, percent-encoded


def test_explain_listing_escapes_keyword_names(tmp_path):
    # mypkg.Thing.__new__(mypkg.Thing, **{'\x1b[2J': 1}) through NEWOBJ_EX
    data = (b"\x80\x04\x8c\x05mypkg\x8c\x05Thing\x93)}\x8c\x04\x1b[2JK\x01s\x92.")
    path = tmp_path / "kw.pkl"
    path.write_bytes(data)
    report = scan_file(path, explain=True)
    listing = report.explanations[0].listing
    assert "\\x1b[2J=1" in listing
    assert all(line.isprintable() for line in listing.splitlines())


def test_inspect_table_escapes_tensor_names(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    path = tmp_path / "keys.pt"
    torch.save({"w\x1b[2J\udc00": torch.zeros(2)}, path)
    code, out, _ = run(["inspect", "--no-config", path], capsys)
    assert code == 0 and "w\\x1b[2J\\udc00" in out
    assert_clean_text(out)
    code, out, _ = run(["inspect", "--no-config", "--format", "json", path], capsys)
    assert json.loads(out)["tensors"][0]["name"] == "w\\x1b[2J\\udc00"


# --- short_repr --------------------------------------------------------------------------

_BIG = b"x" * 10_000_000


class _Loud:
    """A value whose repr would be huge: short_repr must not ask for it."""

    def __repr__(self) -> str:
        return "L" * 10_000_000


@pytest.mark.parametrize("value", [
    _BIG, bytearray(_BIG), memoryview(_BIG), _BIG.decode(), 2 ** 80_000, -(2 ** 80_000),
    [_BIG] * 1000, {"k": (_BIG, [_BIG, {_BIG: _BIG}])}, {i: _BIG for i in range(1000)},
    set(range(100_000)), frozenset([_BIG]), (((((_BIG,),),),),),
    __import__("collections").OrderedDict(a=[_BIG] * 10), _Loud(), [_Loud()] * 10,
    "\udc80\x1b" * 1_000_000, type("S", (str,), {})("s" * 1_000_000),
], ids=lambda v: type(v).__name__)
def test_short_repr_is_short_and_cheap_for_any_value(value):
    import tracemalloc

    from safeload.errors import MAX_REPR, short_repr

    tracemalloc.start()
    try:
        text = short_repr(value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(text) <= MAX_REPR + 20 and text.isprintable(), text
    assert peak < 1 << 20  # never the full repr (10 MB and more)


def test_short_repr_still_says_what_the_value_is():
    from safeload.errors import short_repr

    assert short_repr(b"abc") == "b'abc'"
    assert short_repr(_BIG).startswith("b'xxxx") and "10000000 bytes" in short_repr(_BIG)
    assert short_repr([1, "a", None]) == "[1, 'a', None]"
    assert short_repr(2 ** 80_000) == "<int of 80001 bits>"
    assert short_repr({"a": 1}) == "{'a': 1}"


def test_a_10_mb_bytes_value_gives_a_short_message():
    from safeload.errors import short_repr

    err = FormatError(f"unsupported legacy protocol version {short_repr(_BIG)}")
    assert len(str(err)) < 300
