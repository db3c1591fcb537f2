"""What the atheris harnesses share: the storage records a fuzzed pickle may
name, a checkpoint that serves them, and the one property every input must
satisfy (a value or a SafeloadError; anything else propagates, and atheris
reports it as a crash with the input saved)."""

from __future__ import annotations

import struct

#: storage records the VM harness serves (keys a fuzzed persistent id can name)
STORAGES = {
    "0": struct.pack("<4f", 1.0, 2.0, 3.0, 4.0),
    "1": bytes(range(64)),
    "2": bytes(16),
    "3": b"",
}

#: tighter than the defaults, so one input never takes more than a moment
LIMIT_KWARGS = {"max_ops": 2_000_000, "max_memo": 1_000_000, "max_bytes": 1 << 24}
