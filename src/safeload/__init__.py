"""safeload: open PyTorch checkpoints nobody vetted, without running their code.

>>> import safeload
>>> state = safeload.load("model.pt")          # doctest: +SKIP
>>> import safeload.torch                       # doctest: +SKIP
>>> state = safeload.torch.load("model.pt", map_location="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

from .allowlist import Policy
from .errors import FormatError, LimitError, SafeloadError, UnsafeGlobalError
from .limits import Limits
from .numpy import load
from .rebuild import Storage

__all__ = [
    "FormatError",
    "LimitError",
    "Limits",
    "Policy",
    "SafeloadError",
    "Storage",
    "UnsafeGlobalError",
    "load",
    # lazily imported (see __getattr__); ``open`` is left out of __all__ so that a
    # star import never shadows the builtin
    "GlobalRef",
    "Record",
    "convert",
    "load_sharded",
    "scan",
    "to_plain",
]

__version__ = "0.1.0"

#: names imported on first use, so that ``import safeload`` stays light
_LAZY = {
    "open": ("lazy", "open"),
    "convert": ("convert", "convert"),
    "load_sharded": ("sharded", "load_sharded"),
    "scan": ("scan", "scan"),
    "Record": ("records", "Record"),
    "GlobalRef": ("records", "GlobalRef"),
    "to_plain": ("records", "to_plain"),
}


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'safeload' has no attribute {name!r}") from None
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), attr)
    # Importing safeload.convert set the package attribute to the module; the
    # function is what ``safeload.convert`` names.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
