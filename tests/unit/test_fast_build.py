"""The compiled VM loop is built wherever a C compiler is: a missing build
must not silently cost users the speed (``tests/fuzz/test_fast_vm.py`` shows
it changes nothing else)."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import types

import pytest

import safeload
from safeload import unpickler


def test_the_compiled_loop_is_built_where_a_compiler_is():
    if os.environ.get("SAFELOAD_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("SAFELOAD_PURE_PYTHON is set")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) here: the pure-Python VM runs")
    assert unpickler.FAST_RUN is not None, (
        "safeload._vmfast did not build, or was built from an older _vmfast.c: "
        "reinstall with `pip install -e .` and read the build log")


def test_a_build_of_another_interface_is_not_used(monkeypatch):
    stale = types.ModuleType("safeload._vmfast")
    stale.run = lambda *args: (args[1], 0, args[2])  # the 3-tuple of API 1
    monkeypatch.setitem(sys.modules, "safeload._vmfast", stale)
    monkeypatch.setattr(safeload, "_vmfast", stale, raising=False)
    assert unpickler._fast_run() is None
    stale.API = unpickler._FAST_API
    assert unpickler._fast_run() is stale.run


def test_safeload_pure_python_turns_it_off(monkeypatch):
    monkeypatch.setenv("SAFELOAD_PURE_PYTHON", "1")
    assert unpickler._fast_run() is None
    monkeypatch.setenv("SAFELOAD_PURE_PYTHON", "0")
    assert unpickler._fast_run() is unpickler.FAST_RUN or unpickler.FAST_RUN is None
