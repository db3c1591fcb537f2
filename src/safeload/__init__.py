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
]

__version__ = "0.1.0"
