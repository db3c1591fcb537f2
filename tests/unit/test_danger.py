"""safeload.danger: which refused globals rank as dangerous, and that ranking
never changes what loads.

The pickles here only *name* numpy's file functions (protocol-0 text written
byte by byte); nothing unpickles them except safeload.
"""

from __future__ import annotations

import pytest

import safeload
from safeload.allowlist import DEFAULT_POLICY
from safeload.danger import danger_of
from safeload.scan import scan_file

#: numpy's file, pickle, native-library and subprocess entry points, under the
#: module names a pickle can reach them by (numpy 1.x and 2.x layouts)
NUMPY_IO = [
    "numpy.savetxt", "numpy.savez", "numpy.savez_compressed", "numpy.save",
    "numpy.genfromtxt", "numpy.fromregex", "numpy.loadtxt", "numpy.load", "numpy.fromfile",
    "numpy.memmap", "numpy.DataSource", "numpy.ndarray.tofile", "numpy.lookfor",
    "numpy.core.multiarray.fromfile", "numpy._core.multiarray.fromfile",
    "numpy.core.records.fromfile", "numpy.rec.fromfile", "numpy.core.memmap.memmap",
    "numpy._core.memmap.memmap", "numpy.ma.load", "numpy.ma.core.loads", "numpy.ma.dump",
    "numpy.lib.format.read_array", "numpy.lib.format.open_memmap",
    "numpy.lib._format_impl.write_array", "numpy.lib.npyio.load", "numpy.lib.npyio.NpzFile",
    "numpy.lib._npyio_impl.savez", "numpy.lib._npyio_impl.NpzFile", "numpy.lib.DataSource",
    "numpy.lib._datasource.DataSource", "numpy.lib._datasource.open",
    "numpy.ctypeslib.load_library", "numpy.ctypeslib.as_array",
    "numpy.f2py.compile", "numpy.f2py.run_main", "numpy.distutils.exec_command.exec_command",
    "numpy.testing.run_module_suite", "numpy.testing._private.utils.runstring",
    "numpy._pytesttester.PytestTester", "numpy.compat.py3k.npy_load_module",
    "numpy.core.multiarray._reconstruct_object", "numpy._core.multiarray._reconstruct_object",
    "numpy.lib.stride_tricks.as_strided", "numpy.lib._stride_tricks_impl.as_strided",
]

#: numpy names the allowlist builds, and harmless ones: never ranked dangerous
NUMPY_PLAIN = [
    "numpy.dtype", "numpy.ndarray", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
    "numpy._core.numeric._frombuffer", "numpy.float32", "numpy.random.mtrand.RandomState",
    "numpy.core.multiarray.frombuffer",
]


def _split(full: str) -> tuple[str, str]:
    """'numpy.ndarray.tofile' -> ('numpy', 'ndarray.tofile') for class attributes,
    else (module, name) at the last dot, as GLOBAL would name them."""
    if full.startswith("numpy.ndarray."):
        return "numpy", full[len("numpy."):]
    module, _, name = full.rpartition(".")
    return module, name


@pytest.mark.parametrize("full", NUMPY_IO)
def test_numpy_io_names_rank_as_dangerous(full):
    assert danger_of(*_split(full)) is not None, full


@pytest.mark.parametrize("full", NUMPY_PLAIN)
def test_plain_numpy_names_are_not_ranked_dangerous(full):
    assert danger_of(*_split(full)) is None, full


def test_ranking_never_allows_or_refuses_an_allowlisted_name():
    # the allowlist decides: every name it builds stays allowed, whatever danger says
    for name in DEFAULT_POLICY.handlers:
        module, _, attr = name.rpartition(".")
        assert DEFAULT_POLICY.lookup(module, attr) is not None, name
        assert danger_of(module, attr) is None, name


@pytest.mark.parametrize("full", ["numpy.savetxt", "numpy.lib._npyio_impl.savez",
                                  "numpy.ctypeslib.load_library"])
def test_loader_and_scanner_call_numpy_io_dangerous(full, tmp_path):
    module, name = _split(full)
    data = f"c{module}\n{name}\n(S'x'\ntR.".encode()
    with pytest.raises(safeload.UnsafeGlobalError) as info:
        safeload.load(data)
    assert info.value.global_name == full
    assert "do not load it" in str(info.value)
    path = tmp_path / "numpy_io.pkl"
    path.write_bytes(data)
    report = scan_file(path)
    assert report.verdict == "dangerous"
    assert report.findings[0].rule_name == "dangerous-global"


def test_records_policy_refuses_numpy_io_instead_of_keeping_a_record():
    # records=True keeps unknown classes as data, never a known-dangerous name
    data = b"\x80\x02cnumpy\nDataSource\nq\x00)\x81q\x01."
    with pytest.raises(safeload.UnsafeGlobalError):
        safeload.load(data, records=True)
    with pytest.raises(ValueError):
        safeload.load(b"N.", records=["numpy.lib._datasource.DataSource"])
