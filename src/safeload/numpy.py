"""The numpy backend: checkpoints as numpy arrays, without torch.

Example::

    import safeload
    state = safeload.load("model.pt")            # {"fc.weight": ndarray, ...}
    state = safeload.load("model.pt", mmap=True) # read-only views of the file
"""

from __future__ import annotations

from .allowlist import Policy
from .formats import Checkpoint
from .formats.source import FileLike
from .limits import Limits
from .loader import load_checkpoint
from .rebuild import HostBuilder

__all__ = ["load"]


def load(
    f: FileLike,
    map_location=None,
    *,
    mmap: bool = False,
    encoding: str = "utf-8",
    limits: Limits | None = None,
    policy: Policy | None = None,
    allow=None,
    records=None,
) -> object:
    """Load a checkpoint with numpy arrays where it holds tensors.

    ``f`` is a path, a binary file object or bytes. ``map_location`` follows
    torch.load (str, device, dict of location tags, or
    ``callable(storage, location)``); with numpy, data stays in host memory and
    only the location tags move. ``mmap=True`` maps the file and returns
    read-only views of it. ``allow`` names globals the caller trusts for this
    call only (``allow={"module.Name": obj}`` or a list of objects).

    ``records=True`` keeps instances of classes outside the allowlist (an
    ``argparse.Namespace`` in a Lightning checkpoint's hyper-parameters, a
    pickled dataclass) as inert ``safeload.Record`` values, and classes and
    functions it merely names as ``GlobalRef``; nothing is imported or called.
    ``records=["pkg.mod.Enum", "pkg.*"]`` also keeps objects the pickle makes
    by calling those classes (enums, defaultdict). Known-dangerous names are
    refused whatever you pass.

    Raises ``SafeloadError`` (a ``pickle.UnpicklingError``) for any file it
    refuses, with the file, member, byte offset and opcode of the problem.

    >>> import io, safeload
    >>> safeload.load(io.BytesIO(b"\\x80\\x02}q\\x00X\\x01\\x00\\x00\\x00aK\\x01s."))
    {'a': 1}
    """

    def make_builder(ckpt: Checkpoint) -> HostBuilder:
        return HostBuilder(ckpt.storage, byteorder=ckpt.byteorder, map_location=map_location,
                           file=ckpt.source.name)

    return load_checkpoint(f, make_builder, mmap=mmap, encoding=encoding, limits=limits,
                           policy=policy, allow=allow, records=records)
