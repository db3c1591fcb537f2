"""Load a checkpoint with safeload, then watch it refuse a poisoned one.

Run from the repository root:  python examples/quickstart.py
"""

from pathlib import Path

import safeload

here = Path(__file__).parent

state = safeload.load(here / "tiny_cnn.pt")
print(f"{'tensor':<22} {'dtype':<8} {'shape':<16} bytes")
for name, array in state.items():
    print(f"{name:<22} {str(array.dtype):<8} {str(array.shape):<16} {array.nbytes}")
print(f"_metadata kept for {len(state._metadata)} modules")

try:
    safeload.load(here / "poisoned.pt")
except safeload.UnsafeGlobalError as err:
    print(f"\npoisoned.pt refused, nothing was run:\n  {err}")
else:
    raise SystemExit("poisoned.pt loaded: this must never happen")
