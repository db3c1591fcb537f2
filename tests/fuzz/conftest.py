"""Hypothesis profiles for the fuzz tests.

Each property sets a moderate ``max_examples`` (so ``tests/fuzz`` stays fast);
``SAFELOAD_FUZZ_EXAMPLES=N`` gives every property N examples instead (see
``fuzzkit.examples``). ``HYPOTHESIS_PROFILE=ci`` derandomizes the run. No
deadlines: the properties bound time with Limits and subprocess timeouts.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                              HealthCheck.filter_too_much],
    "print_blob": True,
}
settings.register_profile("default", **_COMMON)
settings.register_profile("ci", **_COMMON, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
