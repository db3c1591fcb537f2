"""The public surface of safeload.load: inputs, errors, limits, allow=."""

from __future__ import annotations

import collections
import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import safeload
from safeload import FormatError, LimitError, Limits, SafeloadError, UnsafeGlobalError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_import_safeload_does_not_import_torch_or_cli_libraries():
    code = (
        "import sys, safeload; "
        "print(sorted(m for m in ('torch', 'fickling', 'rich', 'click', 'hypothesis') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_are_unpickling_errors():
    for cls in (UnsafeGlobalError, FormatError, LimitError):
        assert issubclass(cls, SafeloadError)
        assert issubclass(cls, pickle.UnpicklingError)


@pytest.mark.parametrize("kind", ["path", "str", "file", "bytes", "bytearray"])
def test_load_accepts_every_input_kind(kind):
    path = EXAMPLES / "tiny_cnn.pt"
    arg = {
        "path": path,
        "str": str(path),
        "file": io.BytesIO(path.read_bytes()),
        "bytes": path.read_bytes(),
        "bytearray": bytearray(path.read_bytes()),
    }[kind]
    state = safeload.load(arg)
    assert isinstance(state, collections.OrderedDict)
    assert state["fc.weight"].shape == (10, 144)
    assert state["fc.weight"].dtype == np.float32
    assert state._metadata[""]["version"] == 1


def test_file_object_is_read_from_its_current_position():
    data = (EXAMPLES / "tiny_cnn.pt").read_bytes()
    f = io.BytesIO(b"junk" + data)
    f.seek(4)
    assert set(safeload.load(f)) >= {"conv.weight", "fc.bias"}


def test_mmap_gives_read_only_views_of_the_file():
    state = safeload.load(EXAMPLES / "tiny_cnn.pt", mmap=True)
    weight = state["conv.weight"]
    assert not weight.flags.writeable
    assert np.array_equal(weight, safeload.load(EXAMPLES / "tiny_cnn.pt")["conv.weight"])


def test_mmap_of_bytes_is_a_usage_error():
    with pytest.raises(ValueError, match="mmap=True needs"):
        safeload.load((EXAMPLES / "tiny_cnn.pt").read_bytes(), mmap=True)


def test_poisoned_checkpoint_is_refused_with_location():
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.load(EXAMPLES / "poisoned.pt")
    err = info.value
    assert err.global_name == "os.system"
    assert err.location.member == "poisoned/data.pkl"
    assert err.location.offset == 2
    assert err.location.opcode == "GLOBAL"
    assert err.location.file.endswith("poisoned.pt")
    assert "do not load it" in str(err)


def test_unknown_global_hint_says_how_to_allow_it_for_one_call():
    data = pickle.dumps(collections.namedtuple, protocol=2)  # a function: unknown, not known-bad
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.load(data)
    assert "collections.namedtuple" in str(info.value)
    assert "allow=" in info.value.hint


class Trusted:
    def __init__(self, x=0):
        self.x = x


def test_allow_admits_a_trusted_object_for_that_call_only():
    data = pickle.dumps(Trusted(5), protocol=4)
    obj = safeload.load(data, allow=[Trusted])
    assert isinstance(obj, Trusted) and obj.x == 5
    with pytest.raises(UnsafeGlobalError):
        safeload.load(data)


def test_limits_are_per_call():
    data = pickle.dumps(list(range(1000)), protocol=4)
    with pytest.raises(LimitError):
        safeload.load(data, limits=Limits(max_ops=100))
    assert safeload.load(data) == list(range(1000))


def _many_values(count: int) -> bytes:
    """A protocol-4 pickle pushing ``count`` ints inside one MARK, then a list."""
    return b"\x80\x04(" + b"K\x01" * count + b"l."


def test_max_stack_bounds_the_values_a_run_holds():
    data = _many_values(5000)
    with pytest.raises(LimitError, match="stack holds more than 1000 values"):
        safeload.load(data, limits=Limits(max_stack=1000))
    # the check runs every 1024 opcodes: a bound above the run's peak passes
    assert safeload.load(data, limits=Limits(max_stack=6000)) == [1] * 5000


def test_max_container_items_bounds_one_opcode():
    data = _many_values(50)
    with pytest.raises(LimitError, match="items in one container is 50"):
        safeload.load(data, limits=Limits(max_container_items=49))
    tuple_data = b"\x80\x04(" + b"K\x01" * 50 + b"t."
    with pytest.raises(LimitError, match="items in one container is 50"):
        safeload.load(tuple_data, limits=Limits(max_container_items=49))
    assert safeload.load(data, limits=Limits(max_container_items=50)) == [1] * 50


def test_encoding_applies_to_python2_strings():
    data = b"U\x04caf\xe9."  # SHORT_BINSTRING of 4 bytes, one of them latin-1, then STOP
    assert safeload.load(data, encoding="latin1") == "café"
    assert safeload.load(data, encoding="bytes") == b"caf\xe9"
    with pytest.raises(FormatError):
        safeload.load(data, encoding="ascii")


def test_empty_file_is_a_format_error():
    with pytest.raises(FormatError, match="empty"):
        safeload.load(b"")
