"""SARIF 2.1.0 output for ``safeload scan --format sarif``.

Strategy: one run, one result per finding. The rules table is ``scan.RULES``
(every rule is listed, so result ``ruleIndex`` values are stable across scans).
A finding's location is its file (``artifactLocation.uri``, relative to the
working directory when the file is under it, so code-scanning services can map
it to the repository), a ``region.byteOffset`` when the offset counts from the
start of the file, and a logical location naming the archive member and the
offset inside it otherwise. Text comes from findings, which already hold the
file's names escaped (``errors.printable``); paths are escaped the same way in
messages, and percent-encoded byte for byte in URIs. Levels: dangerous ->
error, unsafe and malformed -> warning, info -> note; ``security-severity``
ranks them for GitHub code scanning. Validated against the official schema
in the tests.

Example::

    import json, safeload
    from safeload.sarif import to_sarif
    print(json.dumps(to_sarif(safeload.scan("models/")), indent=2))
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

from .errors import printable
from .scan import RULE_ORDER, RULES, Finding, Report

__all__ = ["SCHEMA_URI", "to_sarif"]

SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)

#: severity -> (SARIF level, GitHub security-severity)
LEVELS = {
    "dangerous": ("error", "9.8"),
    "unsafe": ("warning", "7.5"),
    "malformed": ("warning", "5.0"),
    "info": ("note", "0.0"),
}


def _rule(rule) -> dict:
    level, security = LEVELS[rule.severity]
    return {
        "id": rule.id,
        "name": "".join(part.capitalize() for part in rule.name.split("-")),
        "shortDescription": {"text": rule.short},
        "fullDescription": {"text": rule.help},
        "help": {"text": rule.help,
                 "markdown": f"**{rule.name}** ({rule.severity}): {rule.help}"},
        "defaultConfiguration": {"level": level},
        "properties": {
            "tags": ["security", "pickle", rule.severity],
            "precision": "very-high" if rule.severity != "info" else "high",
            "security-severity": security,
            "safeload-severity": rule.severity,
        },
    }


def artifact_uri(path: str, base: str | None = None) -> str:
    """A relative URI reference for files under ``base`` (default: the working
    directory), a ``file:`` URI otherwise. The file name's bytes are
    percent-encoded as they are (a POSIX name need not be UTF-8).

    >>> artifact_uri("models/my model.pt", base=".")
    'models/my%20model.pt'
    """
    base_path = Path(base or os.getcwd()).resolve()
    full = Path(path).resolve()
    try:
        relative = full.relative_to(base_path)
    except ValueError:
        return full.as_uri()
    return quote(os.fsencode(relative.as_posix()), safe="/")


def _result(finding: Finding, base: str | None) -> dict:
    rule = RULES[finding.rule_name]
    level, _ = LEVELS[finding.severity]
    physical: dict = {"artifactLocation": {"uri": artifact_uri(finding.file, base)}}
    if finding.member is None and finding.offset is not None:
        physical["region"] = {"byteOffset": finding.offset}
    location: dict = {"physicalLocation": physical}
    if finding.member is not None:
        where = finding.member if finding.offset is None else \
            f"{finding.member}@{finding.offset}"
        location["logicalLocations"] = [
            {"name": finding.member, "fullyQualifiedName": where, "kind": "resource"}
        ]
    text = finding.message
    if finding.where:
        text = f"{text} ({finding.where})"
    if finding.hint:
        text = f"{text}. {finding.hint}"
    identity = "|".join(str(x) for x in (finding.file, finding.member, finding.rule_name,
                                         finding.global_name, finding.offset))
    properties = {"severity": finding.severity}
    for key, value in (("member", finding.member), ("offset", finding.offset),
                       ("opcode", finding.opcode), ("global", finding.global_name)):
        if value is not None:
            properties[key] = value
    return {
        "ruleId": rule.id,
        "ruleIndex": RULE_ORDER.index(finding.rule_name),
        "level": level,
        "message": {"text": text},
        "locations": [location],
        "partialFingerprints": {
            "safeloadFinding/v1": hashlib.sha256(identity.encode("utf-8", "replace")).hexdigest()
        },
        "properties": properties,
    }


def to_sarif(report: Report, fail_on: str = "unsafe", *, base: str | None = None) -> dict:
    """The SARIF 2.1.0 log of ``report`` (a dict, ready for ``json.dump``)."""
    from . import __version__

    results = [_result(f, base) for file in report.files for f in file.findings]
    exit_code = report.exit_code(fail_on)
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "safeload",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [_rule(RULES[name]) for name in RULE_ORDER],
            }},
            "invocations": [{
                "executionSuccessful": exit_code != 2,
                "exitCode": exit_code,
                "exitCodeDescription": {0: "all clean", 1: f"findings at or above {fail_on}",
                                        2: "a file could not be scanned completely"}[exit_code],
                "toolExecutionNotifications": [
                    {"level": "note",
                     "message": {"text": f"skipped {printable(s.path)}: "
                                         f"{printable(s.reason)}"},
                     "locations": [{"physicalLocation": {
                         "artifactLocation": {"uri": artifact_uri(s.path, base)}}}]}
                    for s in report.skipped
                ],
            }],
            "results": results,
            "properties": {"summary": report.summary(), "fail_on": fail_on},
        }],
    }
