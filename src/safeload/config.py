"""``[tool.safeload]`` in pyproject.toml: the policy the command line applies.

Strategy: the nearest ``pyproject.toml`` at or above the start directory that
has a ``[tool.safeload]`` table is the configuration (as ruff finds its own);
without one, the defaults. The table is validated whole, with the file named
in every error: unknown keys, wrong types and names that no policy may admit
(known-dangerous globals) are errors, never silently ignored. The library
itself never reads configuration: ``safeload.load`` takes its policy per call;
only the CLI turns this file into one.

::

    [tool.safeload]
    allow = ["mypkg.config.Config"]    # globals you trust (scan: not a finding)
    records = true                     # or ["transformers.trainer_utils.*", ...]
    fail_on = "unsafe"                 # or "dangerous": the scan's exit-code bar

``snippet_for(names)`` writes the table that would admit a file's unknown
globals (``safeload scan --explain``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from .allowlist import Policy, RecordTypes
from .danger import danger_of

__all__ = ["DEFAULTS", "ConfigError", "find_config", "load_config", "policy_from_config",
           "snippet_for"]

#: what load_config returns when no file configures safeload
DEFAULTS: dict = {"allow": [], "records": False, "fail_on": "unsafe", "limits": {},
                  "path": None}
FAIL_ON = ("dangerous", "unsafe")
_GLOBAL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")


class ConfigError(ValueError):
    """A ``[tool.safeload]`` table that safeload cannot use; names the file."""


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("reading pyproject.toml needs Python 3.11 or the tomli "
                              "package") from None
    return tomllib.loads(text)


def _read_table(path: Path) -> dict | None:
    try:
        doc = _toml_loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    tool = doc.get("tool")
    table = tool.get("safeload") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{path}: tool.safeload must be a table")
    return table


def find_config(start_dir: str | os.PathLike = ".") -> Path | None:
    """The nearest pyproject.toml at or above ``start_dir`` with a
    ``[tool.safeload]`` table, or None."""
    here = Path(start_dir).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file() and _read_table(candidate) is not None:
            return candidate
    return None


def _names(value, key: str, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: tool.safeload.{key} must be a list of strings")
    return list(value)


def load_config(start_dir: str | os.PathLike = ".") -> dict:
    """The validated ``[tool.safeload]`` table as a dict with the keys ``allow``
    (list of "module.Name"), ``records`` (False, True or a list of record type
    names: what ``Policy(records=...)`` takes), ``fail_on`` ("unsafe" or
    "dangerous") and ``path`` (the file, or None for the defaults).

    >>> load_config("/nonexistent/dir")["fail_on"]
    'unsafe'
    """
    path = find_config(start_dir)
    if path is None:
        return {**DEFAULTS, "allow": []}
    table = _read_table(path) or {}
    unknown = sorted(set(table) - {"allow", "records", "fail_on", "limits"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in tool.safeload: {', '.join(unknown)} "
                          "(known: allow, records, fail_on, limits)")
    allow = _names(table.get("allow", []), "allow", path)
    for name in allow:
        if not _GLOBAL.match(name):
            raise ConfigError(f"{path}: tool.safeload.allow: {name!r} is not 'module.Name'")
        module, _, attr = name.rpartition(".")
        why = danger_of(module, attr)
        if why is not None:
            raise ConfigError(f"{path}: tool.safeload.allow: {name!r} is never allowed: "
                              f"it {why}")
    records = table.get("records", False)
    if not isinstance(records, bool):
        records = _names(records, "records", path)
        try:
            RecordTypes(records)
        except ValueError as exc:
            raise ConfigError(f"{path}: tool.safeload.records: {exc}") from None
    fail_on = table.get("fail_on", "unsafe")
    if fail_on not in FAIL_ON:
        raise ConfigError(f"{path}: tool.safeload.fail_on must be one of "
                          f"{', '.join(FAIL_ON)}, got {fail_on!r}")
    limits = table.get("limits", {})
    if not isinstance(limits, dict):
        raise ConfigError(f"{path}: tool.safeload.limits must be a table of bounds, "
                          "e.g. limits = {max_inflate_ratio = 1000}")
    try:
        limits = {name: parse_limit(name, value) for name, value in limits.items()}
    except ValueError as exc:
        raise ConfigError(f"{path}: tool.safeload.limits: {exc}") from None
    return {"allow": allow, "records": records, "fail_on": fail_on, "limits": limits,
            "path": str(path)}


_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30}


def parse_limit(name: str, value) -> int:
    """One ``Limits`` bound from configuration or ``--limit NAME=VALUE``: a
    non-negative int, or a string of one with an optional binary unit
    ("64MiB", "2G"). ValueError names what is wrong.

    >>> parse_limit("max_inflate_ratio", "1000"), parse_limit("max_bytes", "3GiB")
    (1000, 3221225472)
    """
    from dataclasses import fields

    from .limits import Limits

    known = [f.name for f in fields(Limits)]
    if name not in known:
        raise ValueError(f"unknown limit {name!r} (known: {', '.join(known)})")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, str):
        match = _LIMIT_VALUE.fullmatch(value.strip().replace("_", ""))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{name} must be a whole number, optionally with a unit "
                             f"(KiB, MiB, GiB), got {value!r}")
        value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


_LIMIT_VALUE = re.compile(r"([0-9]+)\s*([A-Za-z]*)")


def policy_from_config(config: dict) -> Policy:
    """The loader policy a configuration describes: its records setting. (The
    ``allow`` names stay names: only code that imports them can pass objects.)"""
    return Policy(records=config.get("records") or None)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def snippet_for(names: Iterable[str], *, key: str = "allow") -> str:
    """A paste-ready ``[tool.safeload]`` table admitting ``names`` (a scan's
    unknown globals) under ``key`` ("allow" or "records"). Known-dangerous
    names are left out, in a comment saying why: no configuration admits them.

    >>> print(snippet_for(["argparse.Namespace", "os.system"]))
    [tool.safeload]
    # never admitted: os.system (runs commands or touches files)
    allow = [
        "argparse.Namespace",
    ]
    <BLANKLINE>
    """
    if key not in ("allow", "records"):
        raise ValueError("key must be 'allow' or 'records'")
    keep: list[str] = []
    refused: list[str] = []
    for name in dict.fromkeys(names):
        module, _, attr = name.rpartition(".")
        why = danger_of(module, attr) if module else "is not 'module.Name'"
        if why is None and key == "records":
            try:
                RecordTypes([name])
            except ValueError:
                why = "cannot be a record type"
        if why is not None:
            refused.append(f"{name} ({why})")
        elif name not in keep:
            keep.append(name)
    lines = ["[tool.safeload]"]
    lines += [f"# never admitted: {r}" for r in refused]
    if keep:
        lines.append(f"{key} = [")
        lines += [f"    {_toml_string(n)}," for n in sorted(keep)]
        lines.append("]")
    return "\n".join(lines) + "\n"
