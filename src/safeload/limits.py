"""Resource bounds, in one object.

The defaults never refuse a real checkpoint: the largest public state dicts have
hundreds of thousands of tensors and pickles of a few hundred MB. They exist so
that a hostile file cannot make safeload use memory or time out of proportion to
its size. Override per call: ``safeload.load(f, limits=Limits(max_ops=10**9))``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True)
class Limits:
    #: opcodes executed by one pickle VM run (time bound)
    max_ops: int = 200_000_000
    #: entries in the memo
    max_memo: int = 50_000_000
    #: values on the VM stack plus values held below MARKs
    max_stack: int = 50_000_000
    #: open MARKs at once, and nesting depth of hashed keys (dict keys, set items)
    max_nesting: int = 1_000
    #: items in one list / dict / set / tuple built by one opcode
    max_container_items: int = 100_000_000
    #: length of one str / bytes / bytearray value
    max_bytes: int = 2**31
    #: bytes of one pickle stream (data.pkl)
    max_pickle_bytes: int = 2**32
    #: bytes of the two's-complement encoding of one int (LONG / LONG1 / LONG4)
    max_int_bytes: int = 1 << 16
    #: dimensions of one tensor / array
    max_ndim: int = 64
    #: records in one archive
    max_records: int = 10_000_000
    #: bytes the scanner inflates from one compressed input (a gzip / bzip2 / xz
    #: file, a deflated archive member) per compressed byte; ``min_inflate_budget``
    #: applies when that is smaller. Past it the input is reported as not fully
    #: scanned (SL303). Real checkpoints compress a few times, not hundreds
    max_inflate_ratio: int = 200
    #: bytes any compressed input may inflate to, whatever its size (so that a
    #: small, well-compressed file still scans)
    min_inflate_budget: int = 64 << 20
    #: bytes the scanner inflates in all from one file (nested archives
    #: included); within it, the whole file also keeps to ``max_inflate_ratio``
    #: and ``min_inflate_budget``. One input is also bounded by ``max_bytes``
    max_inflated_bytes: int = 2 << 30

    def check(self, what: str, value: int, bound: int, **where: object) -> None:
        if value > bound:
            from .errors import LimitError

            raise LimitError(
                f"{what} is {value}, above the limit of {bound}",
                hint="If the file is trusted, raise the bound with safeload.Limits",
                **where,
            )


DEFAULT_LIMITS = Limits()
