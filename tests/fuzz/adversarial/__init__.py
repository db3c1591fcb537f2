"""Adversarial inputs, one generator per attack class.

Strategy: each module of this package generates many variants of one class of
attack (deterministically: the same list every run), as ``Case`` values: the
bytes, what safeload must do with them (``expect``), whether they name a global
outside the allowlist (``unsafe``: the scanner must report it) or one
safeload knows to run code (``dangerous``: the records policy must refuse it
too), and how to hand them over (bytes, path, mmap).
``harness.run_cases`` runs them in child processes that check the invariants
after every load. Nothing here ever unpickles a generated input with pickle
or torch.

``CLASSES`` maps each attack class to its generator ``(canary_dir) -> cases``;
the canary directory is where a payload that ran would leave a file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CLASSES", "Case", "register"]

#: how each case is loaded: safeload.load, under records=True, by the scanner,
#: and by safeload.torch.load when torch is installed
MODES = ("load", "records", "scan") + (
    ("torch",) if __import__("importlib.util").util.find_spec("torch") else ())


@dataclass
class Case:
    name: str
    data: bytes
    #: "value", "any", "refuse", or "refuse:<kind>" (format / unsafe-global / limit)
    expect: str = "refuse"
    #: names a global safeload knows to be dangerous: refused under records=True too
    dangerous: bool = False
    #: names a global outside the allowlist: the scanner must report a finding
    unsafe: bool = False
    via: str = "bytes"  # "bytes", "path" or "mmap"
    kwargs: dict = field(default_factory=dict)  # load keyword arguments (limits as a dict)
    modes: tuple[str, ...] = MODES
    id: str = ""


CLASSES: dict[str, Callable[[str], list[Case]]] = {}


def register(name: str):
    def wrap(fn):
        CLASSES[name] = fn
        return fn

    return wrap


def generate(name: str, canary: str) -> list[Case]:
    """The cases of one class, with unique ids."""
    cases = CLASSES[name](canary)
    seen: dict[str, int] = {}
    for index, case in enumerate(cases):
        case.id = f"{name}-{index:05d}"
        count = seen[case.name] = seen.get(case.name, 0) + 1
        if count > 1:  # labels are truncated reprs: keep them unique
            case.name = f"{case.name}#{count}"
    return cases


def load_all() -> None:
    """Import every generator module (they register themselves)."""
    from . import (  # noqa: F401
        bombs,
        calls,
        formats,
        globals_,
        hostile_args,
        vm_state,
        zip_container,
    )
