"""The safeload command line: exit codes, --fail-on, formats (text, JSON, SARIF
validated against the official 2.1.0 schema), -o, -j, configuration, colours and
the progress bar (only on a terminal, never for machine output), inspect."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from safeload import cli
from safeload.scan import RULES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SCHEMA = ROOT / "tests" / "data" / "sarif-schema-2.1.0.json"

OS_SYSTEM = b"cos\nsystem\n(S'echo pwned'\ntR."
UNKNOWN_OBJECT = b"\x80\x02cmypkg\nConfig\nq\x00)\x81q\x01}q\x02X\x01\x00\x00\x00aq\x03K\x01sb."
TRUNCATED = b"\x80\x02}q\x00(X\x01\x00\x00\x00a"  # malformed, nothing refused


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    made = {}
    for name, data in {
        "dangerous.pkl": OS_SYSTEM,
        "unsafe.pkl": UNKNOWN_OBJECT,
        "broken.pkl": TRUNCATED,
        "unsafe_broken.pkl": UNKNOWN_OBJECT[:-3] + b"h\x09.",
        "clean.pt": (EXAMPLES / "tiny_cnn.pt").read_bytes(),
        "notes.txt": b"not a model\n",
    }.items():
        made[name] = tmp_path / name
        made[name].write_bytes(data)
    return made


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- exit codes ----------------------------------------------------------------------


@pytest.mark.parametrize(("names", "fail_on", "expected"), [
    (["clean.pt"], None, 0),
    (["clean.pt", "notes.txt"], None, 0),  # skipped files never fail a scan
    (["dangerous.pkl"], None, 1),
    (["unsafe.pkl"], None, 1),
    (["unsafe.pkl"], "dangerous", 0),
    (["dangerous.pkl"], "dangerous", 1),
    (["broken.pkl"], None, 2),
    (["broken.pkl", "clean.pt"], "dangerous", 2),
    (["unsafe_broken.pkl"], "dangerous", 2),  # below the bar, but not fully scanned
    (["unsafe_broken.pkl"], "unsafe", 1),
    (["broken.pkl", "dangerous.pkl"], "dangerous", 1),  # worse wins over "not scanned"
])
def test_exit_codes_and_fail_on(files, capsys, names, fail_on, expected):
    argv = ["scan", "--no-config", *(files[n] for n in names)]
    if fail_on:
        argv += ["--fail-on", fail_on]
    code, out, _ = run(argv, capsys)
    assert code == expected
    assert f"exit code {expected}" in out


def test_usage_errors_exit_2(files, capsys):
    assert run(["scan", files["clean.pt"], "--allow", "os.system"], capsys)[0] == 2
    code, _, err = run(["scan", files["clean.pt"].parent / "missing.pt"], capsys)
    assert code == 2 and "no such file" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["scan", str(files["clean.pt"]), "--fail-on", "info"])
    assert info.value.code == 2


# --- JSON ----------------------------------------------------------------------------

TOP_KEYS = {"tool", "version", "schema_version", "fail_on", "exit_code", "summary", "files",
            "skipped"}
FILE_KEYS = {"path", "format", "verdict", "complete", "counts", "findings"}
FINDING_KEYS = {"rule", "rule_name", "severity", "message", "hint", "file", "member",
                "offset", "opcode", "global"}


def test_json_field_names_are_the_documented_ones(files, capsys):
    code, out, _ = run(["scan", "--no-config", "--format", "json", files["dangerous.pkl"],
                        files["clean.pt"], files["notes.txt"]], capsys)
    data = json.loads(out)
    assert code == 1 and set(data) == TOP_KEYS
    assert data["schema_version"] == 1 and data["exit_code"] == 1
    assert set(data["summary"]) == {"files", "skipped", "verdicts", "findings"}
    assert set(data["summary"]["verdicts"]) == {"clean", "error", "unsafe", "dangerous"}
    for entry in data["files"]:
        assert set(entry) == FILE_KEYS
        for finding in entry["findings"]:
            assert set(finding) == FINDING_KEYS
            assert finding["rule"] == RULES[finding["rule_name"]].id
    finding = data["files"][0]["findings"][0]
    assert (finding["rule_name"], finding["global"], finding["offset"], finding["opcode"]) == (
        "dangerous-global", "os.system", 0, "GLOBAL")
    assert data["skipped"] == [{"path": str(files["notes.txt"]),
                                "reason": data["skipped"][0]["reason"]}]


def test_explain_in_json_has_listing_and_snippet(files, capsys):
    _, out, _ = run(["scan", "--no-config", "--format", "json", "--explain",
                     files["unsafe.pkl"]], capsys)
    entry = json.loads(out)["files"][0]
    assert "mypkg.Config.__new__(mypkg.Config)" in entry["explanations"][0]["listing"]
    assert '"mypkg.Config"' in entry["allow_snippet"]


def test_explain_text_shows_listing_and_paste_ready_snippet(files, capsys):
    _, out, _ = run(["scan", "--no-config", "--explain", files["unsafe.pkl"]], capsys)
    assert "_1.__setstate__({'a': 1})" in out
    assert "[tool.safeload]" in out and '"mypkg.Config",' in out
    _, out, _ = run(["scan", "--no-config", "--explain", files["dangerous.pkl"]], capsys)
    assert "os.system('echo pwned')" in out and "[tool.safeload]" not in out


# --- SARIF ---------------------------------------------------------------------------


def test_sarif_validates_against_the_official_schema(files, capsys, tmp_path):
    out = tmp_path / "report.sarif"
    code, stdout, stderr = run(["scan", "--no-config", "--format", "sarif", "-o", out,
                                *files.values()], capsys)
    assert code == 1 and stdout == "" and "exit code 1" in stderr
    log = json.loads(out.read_text())
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker()).validate(log)
    run_ = log["runs"][0]
    rules = run_["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.id for r in RULES.values()]
    for rule in rules:
        assert {"id", "name", "shortDescription", "help", "defaultConfiguration"} <= set(rule)
    results = run_["results"]
    assert results and all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)
    bare = next(r for r in results if r["properties"].get("global") == "os.system")
    location = bare["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"].endswith("dangerous.pkl")
    assert location["region"] == {"byteOffset": 0}
    assert run_["invocations"][0]["exitCode"] == 1


def test_sarif_names_archive_members_as_logical_locations(capsys, tmp_path):
    out = tmp_path / "r.sarif"
    run(["scan", "--no-config", "--format", "sarif", "-o", out, EXAMPLES / "poisoned.pt"],
        capsys)
    result = json.loads(out.read_text())["runs"][0]["results"][0]
    logical = result["locations"][0]["logicalLocations"][0]
    assert logical["name"] == "poisoned/data.pkl"
    assert logical["fullyQualifiedName"] == "poisoned/data.pkl@2"
    assert "region" not in result["locations"][0]["physicalLocation"]


# --- terminals -------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_piped_output_has_no_colour_and_no_progress(files):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    result = subprocess.run(
        [sys.executable, "-m", "safeload.cli", "scan", "--no-config", *map(str, files.values())],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr
    assert "\r" not in result.stderr


def test_colours_only_on_a_terminal(files, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys, "stdout", FakeTTY())
    cli.main(["scan", "--no-config", str(files["dangerous.pkl"])])
    assert "\x1b[1;31mDANGEROUS" in sys.stdout.getvalue()
    monkeypatch.setattr(sys, "stdout", FakeTTY())
    monkeypatch.setenv("NO_COLOR", "1")
    cli.main(["scan", "--no-config", str(files["dangerous.pkl"])])
    assert "\x1b" not in sys.stdout.getvalue()


def test_progress_bar_only_on_a_terminal_and_only_when_long():
    tty = FakeTTY()
    bar = cli.Progress(tty, enabled=True, delay=0.0)
    for done in range(1, 4):
        bar(done, 3)
    bar.finish()
    assert "[" in tty.getvalue() and "3/3 files" in tty.getvalue()
    quick = FakeTTY()
    bar = cli.Progress(quick, enabled=True, delay=60.0)
    bar(1, 3)
    bar.finish()
    assert quick.getvalue() == ""  # short scans draw nothing
    piped = io.StringIO()
    bar = cli.Progress(piped, enabled=True, delay=0.0)
    bar(1, 1)
    assert piped.getvalue() == ""


def test_no_progress_for_json_even_on_a_terminal(files, monkeypatch, capsys):
    stderr = FakeTTY()
    monkeypatch.setattr(sys, "stderr", stderr)
    original = cli.Progress.__init__

    def eager(self, stream, *, enabled, delay=1.0, many=200):
        original(self, stream, enabled=enabled, delay=0.0, many=many)

    monkeypatch.setattr(cli.Progress, "__init__", eager)
    cli.main(["scan", "--no-config", "--format", "json", *map(str, files.values())])
    assert stderr.getvalue() == ""
    json.loads(capsys.readouterr().out)
    cli.main(["scan", "--no-config", *map(str, files.values())])
    assert "files" in stderr.getvalue()  # text on a terminal: the bar was drawn


# --- -j, -o, configuration -----------------------------------------------------------


def test_parallel_scan_gives_the_same_report(files, capsys):
    corpus = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "malicious"
    paths = [*map(str, files.values())]
    if corpus.is_dir():
        paths.append(str(corpus))
    outputs = []
    for jobs in ("1", "3"):
        code, out, _ = run(["scan", "--no-config", "--format", "json", "-j", jobs, *paths],
                           capsys)
        outputs.append((code, out))
    assert outputs[0] == outputs[1]


def test_output_file_gets_the_report_and_stdout_stays_empty(files, capsys, tmp_path):
    target = tmp_path / "out.txt"
    code, out, _ = run(["scan", "--no-config", "-o", target, files["dangerous.pkl"]], capsys)
    assert code == 1 and out == ""
    assert "DANGEROUS" in target.read_text() and "\x1b" not in target.read_text()


def test_pyproject_table_sets_allow_and_fail_on(files, capsys, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[tool.safeload]\nallow = ["mypkg.Config"]\nfail_on = "dangerous"\n')
    monkeypatch.chdir(project / "sub")  # found from the working directory upwards
    assert run(["scan", files["unsafe.pkl"]], capsys)[0] == 0
    assert run(["scan", files["broken.pkl"]], capsys)[0] == 2
    assert run(["scan", "--no-config", files["unsafe.pkl"]], capsys)[0] == 1
    assert run(["scan", "--fail-on", "unsafe", files["unsafe_broken.pkl"]], capsys)[0] == 2
    (project / "pyproject.toml").write_text('[tool.safeload]\nallow = ["os.system"]\n')
    code, _, err = run(["scan", files["clean.pt"]], capsys)
    assert code == 2 and "os.system" in err


def test_allow_on_the_command_line(files, capsys):
    assert run(["scan", "--no-config", files["unsafe.pkl"]], capsys)[0] == 1
    assert run(["scan", "--no-config", "--allow", "mypkg.Config", files["unsafe.pkl"]],
               capsys)[0] == 0


def _gzip_bomb(path: Path, nbytes: int) -> Path:
    import gzip

    path.write_bytes(gzip.compress(bytes(nbytes), 9))  # ~1000:1, past the 200:1 default
    return path


def test_limit_option_sets_a_bound_that_the_finding_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pyproject.toml above
    bomb = _gzip_bomb(tmp_path / "zeros.gz", 8 << 20)
    tight = ["--limit", "min_inflate_budget=1MiB"]
    code, out, _ = run(["scan", *tight, bomb], capsys)
    assert code == 2 and "limit-exceeded" in out and "--limit max_inflate_ratio=N" in out
    # the bound it names, raised: inflated to the end (zeros are no model file)
    code, out, _ = run(["scan", *tight, "--limit", "max_inflate_ratio=2_000", bomb], capsys)
    assert code == 0 and "limit-exceeded" not in out
    # and the default floor alone (64 MiB) covers these 8 MiB
    assert run(["scan", bomb], capsys)[0] == 0


@pytest.mark.parametrize(("option", "message"), [
    ("max_ops", "NAME=VALUE"),
    ("max_opps=10", "unknown limit 'max_opps'"),
    ("max_ops=-1", "whole number"),
    ("max_ops=ten", "whole number"),
    ("max_ops=3 parsecs", "whole number"),
])
def test_bad_limit_options_are_usage_errors(files, capsys, option, message):
    code, _, err = run(["scan", "--no-config", "--limit", option, files["clean.pt"]], capsys)
    assert code == 2 and message in err


def test_pyproject_limits_table_and_the_command_line_over_it(tmp_path, capsys, monkeypatch):
    bomb = _gzip_bomb(tmp_path / "zeros.gz", 8 << 20)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.safeload]\nlimits = {min_inflate_budget = "1MiB"}\n')
    monkeypatch.chdir(tmp_path)
    assert run(["scan", bomb], capsys)[0] == 2
    assert run(["scan", "--limit", "min_inflate_budget=16MiB", bomb], capsys)[0] == 0
    assert run(["scan", "--no-config", bomb], capsys)[0] == 0
    (tmp_path / "pyproject.toml").write_text('[tool.safeload]\nlimits = {max_nodes = 3}\n')
    code, _, err = run(["scan", bomb], capsys)
    assert code == 2 and "unknown limit 'max_nodes'" in err
    (tmp_path / "pyproject.toml").write_text('[tool.safeload]\nlimits = 3\n')
    code, _, err = run(["scan", bomb], capsys)
    assert code == 2 and "must be a table" in err


# --- inspect -------------------------------------------------------------------------


def test_inspect_lists_tensors_without_reading_data(capsys):
    code, out, _ = run(["inspect", "--no-config", EXAMPLES / "tiny_cnn.pt"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "dtype", "shape", "bytes", "storage", "location"]
    row = next(line for line in lines if line.startswith("fc.weight"))
    assert row.split() == ["fc.weight", "float32", "[10,", "144]", "5760", "7", "cpu"]
    assert lines[-1].startswith("9 tensor(s)")


def test_inspect_json_and_refused_files(capsys):
    code, out, _ = run(["inspect", "--no-config", "--format", "json",
                        EXAMPLES / "tiny_cnn.pt"], capsys)
    data = json.loads(out)
    assert code == 0 and data["verdict"] == "clean"
    assert data["tensors"][0] == {"name": "conv.weight", "dtype": "float32",
                                  "shape": [4, 1, 3, 3], "bytes": 144, "storage": "0",
                                  "location": "cpu", "kind": "tensor"}
    code, _, err = run(["inspect", "--no-config", EXAMPLES / "poisoned.pt"], capsys)
    assert code == 1 and "DANGEROUS" in err


def test_pre_commit_hook_runs_the_scan():
    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    assert "id: safeload-scan" in text and "entry: safeload scan" in text
