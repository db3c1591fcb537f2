"""The per-tensor fast paths agree with the general ones on hostile inputs.

Strategy: the loader's persistent_load takes a shortcut for torch's plain
5-tuple pid, and ``_rebuild_tensor_v2`` one for its 6-argument form and for
whole (non-view) storages. Each hostile input runs through the shortcut and
through the general route (the reference composition of the same checks, the
7-argument form, a storage view covering the whole storage); both must give
the same array or both refuse (the same error type where the checks are the same).
"""

from __future__ import annotations

import collections
import copy
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from safeload.allowlist import (
    DEFAULT_POLICY,
    LoadedStorage,
    _ordered_dict,
    _rebuild_tensor_v2,
    storage_ref_from_pid,
)
from safeload.dtypes import DTYPES
from safeload.errors import SafeloadError
from safeload.formats.base import PickleStream
from safeload.limits import DEFAULT_LIMITS
from safeload.loader import bare_storages, run_pickle
from safeload.rebuild import HostBuilder, required_elements
from safeload.records import Size, StorageRef, StorageType, TensorRecord

F32 = StorageType("FloatStorage", DTYPES["float32"])
BYTES = bytearray(np.arange(16, dtype=np.float32).tobytes())


def _builder() -> HostBuilder:
    def fetch(key):
        if key != "0":
            raise SafeloadError("missing record")
        return memoryview(BYTES)

    return HostBuilder(fetch, file="t.pt")


def _outcome(fn):
    try:
        value = fn()
    except SafeloadError as err:
        return type(err)
    if type(value) is LoadedStorage:
        value = (value.ref, value.view, bytes(value.value.data))
    elif isinstance(value, np.ndarray):
        value = (value.dtype.str, value.shape, value.strides, value.tolist())
    return value


# -- persistent_load: the plain-tuple shortcut ---------------------------------------

HOSTILE_PIDS = [
    ("storage", F32, "0", "cpu", 16),  # the good one
    ("storage", F32, "0", "cpu", 16, None),
    ("storage", F32, "0", "cpu", 16, (0, 4)),  # a view outside a legacy file
    ("storage", F32, "0", "cpu", 15),  # record size != numel * itemsize
    ("storage", F32, "0", "cpu", -1),
    ("storage", F32, "0", "cpu", 2**64),
    ("storage", F32, "0", "cpu", True),
    ("storage", F32, "0", "cpu"),
    ("storage", F32, "0", "cpu", 16, None, None),
    ("tensor", F32, "0", "cpu", 16),
    ("storage", "FloatStorage", "0", "cpu", 16),
    ("storage", F32, "../0", "cpu", 16),
    ("storage", F32, "0" * 129, "cpu", 16),
    ("storage", F32, "0", "cpu; rm", 16),
    ("storage", F32, "0", "CPU", 16),
    ("storage", F32, 0, "cpu", 16),
    ("storage", F32, "1", "cpu", 16),  # no such record
    Size((1, 2, 3, 4, 5)),  # a tuple subclass
    ["storage", F32, "0", "cpu", 16],
]
#: the pids that load (legacy files use int keys)
GOOD_PIDS = [HOSTILE_PIDS[0], HOSTILE_PIDS[1], ("storage", F32, 0, "cpu", 16)]


def _through_loader(pid, builder):
    """persistent_load as the VM calls it (BINPERSID on ``K\\x00``)."""
    ckpt = SimpleNamespace(
        source=SimpleNamespace(name="t.pt"),
        persistent_id=lambda _: pid,
        assemble=lambda run: run(PickleStream(member="data.pkl", data=b"K\x00Q.")),
    )
    return run_pickle(ckpt, builder, policy=DEFAULT_POLICY, limits=DEFAULT_LIMITS)


def _general(pid, builder):
    ref = storage_ref_from_pid(pid)
    # a storage the pickle returns by itself: the loader hands it to the builder
    return bare_storages(LoadedStorage(ref, builder.storage(ref), None), builder)


@pytest.mark.parametrize("pid", HOSTILE_PIDS, ids=repr)
def test_persistent_load_shortcut_agrees(pid):
    fast = _outcome(lambda: _through_loader(pid, _builder()))
    general = _outcome(lambda: _general(pid, _builder()))
    assert fast == general
    if pid in GOOD_PIDS:
        assert type(fast) is tuple
    else:
        assert isinstance(fast, type) and issubclass(fast, SafeloadError)


def test_storage_reuse_with_another_layout_is_refused_on_both_paths():
    for load in (_through_loader, _general):
        builder = _builder()
        load(("storage", F32, "0", "cpu", 16), builder)
        again = _outcome(lambda b=builder, f=load: f(
            ("storage", StorageType("DoubleStorage", DTYPES["float64"]), "0", "cpu", 16), b))
        assert isinstance(again, type) and issubclass(again, SafeloadError)
        same = _outcome(lambda b=builder, f=load: f(("storage", F32, "0", "cpu", 16), b))
        assert type(same) is tuple


# -- _rebuild_tensor_v2: 6 arguments, whole storages ----------------------------------

HOOKS = collections.OrderedDict
HOSTILE_TENSORS = [
    (0, (4, 4), (4, 1), False, HOOKS()),  # the good one
    (4, (3,), (2,), True, None),
    (0, (0, 5), (5, 1), False, HOOKS()),
    (0, Size((2, 2)), Size((2, 1)), False, HOOKS()),  # torch.Size: the general path
    (0, (1,) * 64, (0,) * 64, False, HOOKS()),  # exactly max_ndim
    (0, (), (), False, HOOKS()),  # a scalar
    (100, (0,), (1,), False, HOOKS()),  # empty: offset may lie past the end
    (1, (4, 4), (4, 1), False, HOOKS()),  # one element past the end
    (16, (1,), (1,), False, HOOKS()),
    (-1, (4,), (1,), False, HOOKS()),
    (2**63, (1,), (1,), False, HOOKS()),
    (1.0, (1,), (1,), False, HOOKS()),
    (0, (-1,), (1,), False, HOOKS()),
    (0, (2**63,), (1,), False, HOOKS()),
    (0, (2**62, 2**62), (0, 0), False, HOOKS()),  # overflows int64 bytes
    (0, (4,), (2**62,), False, HOOKS()),
    (0, (4, 4), (4,), False, HOOKS()),  # ndim mismatch
    (0, (1,) * 65, (1,) * 65, False, HOOKS()),  # beyond max_ndim
    (0, [4], [1], False, HOOKS()),
    (0, (4,), (True,), False, HOOKS()),  # a bool is not a dimension
    (0, (4, 2**63), (1, 1), False, HOOKS()),  # the bad item after a good one
    (0, (4,), (1, 1), False, HOOKS()),
    (0, (4,), (1,), 1, HOOKS()),  # requires_grad not a bool
    (0, (4,), (1,), False, {"hook": 1}),  # non-empty hooks
    (0, (4,), (1,), False, 0),
]


def _vm():
    return SimpleNamespace(limits=DEFAULT_LIMITS, builder=_builder(), charge=lambda n: None)


def _tensor(args, extra=(), view=False):
    vm = _vm()
    ref = storage_ref_from_pid(("storage", F32, "0", "cpu", 16))
    storage = LoadedStorage(ref, vm.builder.storage(ref), (0, 16) if view else None)
    return _rebuild_tensor_v2(vm, (storage, *args, *extra))


@pytest.mark.parametrize("args", HOSTILE_TENSORS, ids=lambda a: repr(a)[:60])
def test_rebuild_tensor_v2_shortcuts_agree(args):
    fast = _outcome(lambda: _tensor(args))
    assert fast == _outcome(lambda: _tensor(args, (None,)))  # 7 arguments, no metadata
    assert fast == _outcome(lambda: _tensor(args, ({},)))  # 7 arguments, empty metadata
    through_view = _outcome(lambda: _tensor(args, view=True))  # place() runs
    if type(fast) is tuple:
        assert through_view == fast
    else:
        assert isinstance(through_view, type) and issubclass(through_view, SafeloadError)
    if args is HOSTILE_TENSORS[0]:
        assert fast[3] == np.arange(16, dtype=np.float32).reshape(4, 4).tolist()
    elif args in HOSTILE_TENSORS[7:]:
        assert isinstance(fast, type) and issubclass(fast, SafeloadError)


def test_rebuild_tensor_v2_arity_and_storage_type():
    vm = _vm()
    for args in [(), (1,) * 5, (1,) * 8]:
        with pytest.raises(SafeloadError):
            _rebuild_tensor_v2(vm, args)
    with pytest.raises(SafeloadError):  # a storage that did not come from a persistent id
        _rebuild_tensor_v2(vm, (("storage", F32, "0", "cpu", 16), 0, (1,), (1,), False, None))
    with pytest.raises(SafeloadError):  # metadata that is not a conj / neg flag
        _tensor((0, (4,), (1,), False, None), ({"x": True},))


# -- OrderedDict(): no arguments, as torch's empty backward hooks ----------------------


def test_ordered_dict_without_arguments_is_a_fresh_empty_one_and_with_them_checked():
    vm = _vm()
    vm.check_key = lambda key, container: None
    first, second = _ordered_dict(vm, ()), _ordered_dict(vm, ())
    assert type(first) is collections.OrderedDict and first == {} and first is not second
    assert _ordered_dict(vm, ([("a", 1), ("b", 2)],)) == {"a": 1, "b": 2}
    for args in [(1, 2), ("ab",), ([("a",)],), ([1, 2],)]:
        with pytest.raises(SafeloadError):
            _ordered_dict(vm, args)


# -- records: StorageRef's own __init__, TensorRecord's slots --------------------------


def test_storage_ref_is_a_frozen_value_with_its_own_init():
    ref = storage_ref_from_pid(("storage", F32, "7", "cuda:1", 16))
    assert (ref.key, ref.dtype, ref.location, ref.numel, ref.nbytes) == (
        "7", DTYPES["float32"], "cuda:1", 16, 64)
    twin = StorageRef("7", DTYPES["float32"], "cuda:1", 16)
    assert ref == twin and hash(ref) == hash(twin) and len({ref, twin}) == 1
    assert ref != StorageRef("7", DTYPES["float32"], "cuda:1", 15)
    assert repr(ref).startswith("StorageRef(key='7', dtype=")
    for field in ("key", "numel", "other"):  # no field changes, no attribute is added
        with pytest.raises(AttributeError):
            setattr(ref, field, 0)
        with pytest.raises(AttributeError):
            delattr(ref, field)
    assert (ref.key, ref.numel) == ("7", 16)
    with pytest.raises(TypeError):  # every field is required, as with the generated one
        StorageRef("7", DTYPES["float32"], "cpu")
    # copies and pickles as the plain frozen dataclass did (slots alone would
    # restore the fields through the refusing __setattr__)
    rec = TensorRecord(ref, ref, ref.dtype, 0, (4,), (1,))
    for copier in (copy.copy, copy.deepcopy, lambda x: pickle.loads(pickle.dumps(x))):
        assert copier(ref) == ref and type(copier(ref)) is StorageRef
        assert copier(rec) == rec


def test_tensor_record_takes_no_stray_attributes_and_has_no_metadata_by_default():
    ref = StorageRef("0", DTYPES["float32"], "cpu", 16)
    rec = TensorRecord(ref, ref, ref.dtype, 0, (4,), (1,))
    assert rec.metadata is None and rec.requires_grad is False
    with pytest.raises(AttributeError):
        rec.shap = (5,)  # a typo is an error, not a new attribute


def test_check_extent_refuses_a_record_whose_size_and_stride_differ_in_length():
    # The handlers never build one; check_extent's zip (no strict=True, for
    # speed) would stop at the shorter and size a (4, 1000) tensor as (4,).
    ref = StorageRef("0", DTYPES["float32"], "cpu", 16)
    builder = _builder()
    builder.check_extent(TensorRecord(ref, ref, ref.dtype, 0, (4, 4), (4, 1)), 64)
    with pytest.raises(SafeloadError, match="2 dimensions but stride has 1"):
        builder.check_extent(TensorRecord(ref, ref, ref.dtype, 0, (4, 1000), (4,)), 64)


@pytest.mark.parametrize("seed", range(4))
def test_required_elements_is_one_past_the_last_element_a_view_reads(seed):
    # The rule a legacy storage view is checked with (LoadedStorage.place), and
    # check_extent's fused loop: against every element's index, enumerated.
    rng = np.random.default_rng(seed)
    for _ in range(300):
        ndim = int(rng.integers(0, 4))
        shape = tuple(int(n) for n in rng.integers(0, 4, ndim))
        stride = tuple(int(s) for s in rng.integers(0, 6, ndim))
        offset = int(rng.integers(0, 5))
        indices = [offset + sum(i * s for i, s in zip(index, stride, strict=True))
                   for index in np.ndindex(*shape)]
        want = max(indices) + 1 if indices else 0
        assert required_elements(offset, shape, stride) == want
        ref = StorageRef("0", DTYPES["float32"], "cpu", 16)
        rec = TensorRecord(ref, ref, ref.dtype, offset, shape, stride)
        _builder().check_extent(rec, want * 4)  # exactly enough: accepted
        if want:
            with pytest.raises(SafeloadError, match="needs"):
                _builder().check_extent(rec, want * 4 - 1)
