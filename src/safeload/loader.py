"""Wires the stages: source -> container -> VM -> builder.

Strategy: one function, ``load_checkpoint``, runs the data path in one
direction for every backend; a backend only supplies ``make_builder``. Errors
from every stage come out as SafeloadError with the file name filled in; an
exception raised by the caller's own code (a map_location callable) comes out
as itself, as with torch.load.
"""

from __future__ import annotations

import gc
from collections import Counter, OrderedDict
from collections.abc import Callable

from .allowlist import DEFAULT_POLICY, LoadedStorage, Policy, storage_ref_from_pid
from .errors import CallerError, FormatError, LimitError, SafeloadError
from .formats import Checkpoint, open_checkpoint
from .formats.base import PersistentObject, PersistentTensor, PersistentView, PickleStream
from .formats.source import FileLike, Source
from .limits import DEFAULT_LIMITS, Limits
from .records import Record, TensorRecord
from .unpickler import Unpickler

__all__ = ["bare_storages", "load_checkpoint", "resolve_policy", "run_pickle"]


def resolve_policy(policy: Policy | None, allow, records=None) -> Policy:
    """The policy for one call: ``policy`` (or the default) plus ``allow=`` and
    ``records=`` (None leaves the policy's records setting as it is)."""
    return (policy or DEFAULT_POLICY).allowing(allow).with_records(records)


def run_pickle(ckpt: Checkpoint, builder, *, policy: Policy, limits: Limits,
               encoding: str = "utf-8", on_finding=None, bare: bool = True) -> object:
    """Run the checkpoint's pickles through the VM with ``builder``: the main
    pickle for most containers, none or several for numpy files (``assemble``).

    ``bare=False`` leaves storages saved by themselves as the ``LoadedStorage``
    the VM pushed (no ``bare_storages`` walk): for a caller that never looks
    at the value, such as a scan without ``--explain``. The walk checks nothing."""
    tensors: dict[str, object] = {}  # pre-0.4 tensors named by id: one per key

    def storage(target) -> LoadedStorage:
        view = None
        if type(target) is PersistentView:  # legacy view: the root storage, offset
            view = (target.offset, target.numel)
            target = target.storage
        ref = storage_ref_from_pid(target)
        return LoadedStorage(ref, builder.storage(ref), view)

    # bound once: persistent_load runs once per storage (20 000 times in a big state dict)
    adapt, build_storage = ckpt.persistent_id, builder.storage
    # Checkpoint.persistent_id returns the pid unchanged (zip): skip the call
    as_is = getattr(type(ckpt), "persistent_id", None) is Checkpoint.persistent_id

    def persistent_load(pid):
        target = pid if as_is else adapt(pid)
        if type(target) is tuple:  # torch's plain pid (zip files): the common case
            ref = storage_ref_from_pid(target)  # every check; views refused there
            return LoadedStorage(ref, build_storage(ref))
        if type(target) is PersistentObject:
            return target.value
        if type(target) is not PersistentTensor:
            return storage(target)
        if target.key not in tensors:
            loaded = storage(target.storage)
            dtype = loaded.ref.dtype
            tensors[target.key] = builder.tensor(TensorRecord(
                storage=loaded.value, storage_ref=loaded.ref, dtype=dtype,
                offset=loaded.place(target.offset, target.shape, target.stride, dtype),
                shape=target.shape, stride=target.stride))
        return tensors[target.key]

    def run(stream: PickleStream) -> object:
        vm = Unpickler(
            stream.data,
            policy=policy,
            builder=builder,
            persistent_load=persistent_load,
            limits=limits,
            encoding=encoding,
            file=ckpt.source.name,
            member=stream.member,
            start=stream.start,
            on_finding=on_finding,
        )
        return vm.load(allow_trailing=stream.allow_trailing)

    result = ckpt.assemble(run)
    return bare_storages(result, builder) if bare else result


#: what the walk for bare storages descends into: every container the VM
#: builds that can hold one (sets and dict keys cannot: a storage is unhashable)
_DICTS = frozenset({dict, OrderedDict, Counter})
_WALKED = _DICTS | {list, tuple, Record}


def bare_storages(result: object, builder) -> object:
    """``result`` with every storage the file saved by itself (not through a
    tensor) replaced by ``builder.bare_storage(...)``: the VM pushes a
    ``LoadedStorage`` for each persistent id, and tensor rebuilds consume it,
    but ``torch.save(storage)`` or ``{"s": storage, "t": tensor}`` leave one in
    the result. References to one storage record become one object.

    Lists, dicts and records are fixed in place (their identity and sharing
    stay); tuples that hold a storage, directly or through tuples, are
    rebuilt. Iterative: containers nest as deep as ``Limits.max_nesting``."""
    convert = getattr(builder, "bare_storage", None)
    if convert is None:
        return result
    if type(result) is LoadedStorage:
        return convert(result.ref, result.value, result.view)
    if type(result) not in _WALKED:
        return result
    # 1. find the containers that hold a storage or a tuple (which may need
    #    rebuilding); most values of a state dict are tensors: one type test each
    seen: set[int] = set()
    holders: list = []
    tuples: list[tuple] = []
    found = False
    todo = [result]
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        t = type(x)
        if t is Record:
            children = [x.args, x.kwargs, x.state, x.items, x.listitems]
        elif t in _DICTS:
            children = x.values()
            if t is OrderedDict and hasattr(x, "_metadata"):  # set by BUILD
                children = [*children, x._metadata]
        else:
            children = x
        holds = t is Record
        for child in children:
            ct = type(child)
            if ct in _WALKED:
                todo.append(child)
                holds = holds or ct is tuple
            elif ct is LoadedStorage:
                found = holds = True
        if t is tuple:
            tuples.append(x)
        elif holds:
            holders.append(x)
    if not found:
        return result

    made: dict[tuple, object] = {}  # one object per storage record (and view)

    def bare(storage: LoadedStorage) -> object:
        key = (storage.ref.key, storage.view)
        value = made.get(key)
        if value is None:
            value = made[key] = convert(storage.ref, storage.value, storage.view)
        return value

    rebuilt: dict[int, tuple] = {}  # id(old tuple) -> new, for tuples that change

    def fixed(value):
        t = type(value)
        if t is LoadedStorage:
            return bare(value)
        if t is tuple:
            return rebuilt.get(id(value), value)
        return value

    # 2. tuples, children first (a cycle always passes through a list or dict)
    done: set[int] = set()
    for root in tuples:
        stack = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in done:
                continue
            if not ready:
                stack.append((node, True))
                stack.extend((c, False) for c in node if type(c) is tuple)
                continue
            done.add(id(node))
            if any(type(c) is LoadedStorage or id(c) in rebuilt for c in node):
                rebuilt[id(node)] = tuple(fixed(c) for c in node)
    # 3. the mutable holders, in place
    for x in holders:
        t = type(x)
        if t is list:
            for i, value in enumerate(x):
                x[i] = fixed(value)
        elif t is Record:  # its kwargs, items and listitems are holders themselves
            x.args, x.state = fixed(x.args), fixed(x.state)
        else:
            for key, value in x.items():
                if type(value) is LoadedStorage or type(value) is tuple:
                    x[key] = fixed(value)
            if t is OrderedDict and hasattr(x, "_metadata"):
                x._metadata = fixed(x._metadata)
    return fixed(result)


def open_container(source: Source, limits: Limits) -> Checkpoint:
    """open_checkpoint, with the guarantee that only SafeloadError escapes."""
    # The cyclic GC is paused while the container is read, as the VM pauses it
    # for its run: a zip's 20 000 record spans are tracked tuples, and in a
    # process that imported torch the collections they trigger rescan torch's
    # objects (~65 ms of a 100 ms read). Reading builds no cycles, so nothing
    # the GC could free waits; the memory held is bounded by Limits either way.
    if not gc.isenabled():
        return _open_container(source, limits)
    gc.disable()
    try:
        return _open_container(source, limits)
    finally:
        gc.enable()


def _open_container(source: Source, limits: Limits) -> Checkpoint:
    try:
        return open_checkpoint(source, limits=limits)
    except SafeloadError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise LimitError(f"container too large or deep to read: {type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - a container bug must still fail closed
        raise FormatError(f"malformed container: {type(exc).__name__}: {exc}") from None


def load_checkpoint(
    f: FileLike,
    make_builder: Callable[[Checkpoint], object],
    *,
    mmap: bool = False,
    writable_map: bool = False,
    encoding: str = "utf-8",
    limits: Limits | None = None,
    policy: Policy | None = None,
    allow=None,
    records=None,
) -> object:
    limits = limits or DEFAULT_LIMITS
    policy = resolve_policy(policy, allow, records)
    source = Source.open(f, mmap=mmap, writable_map=writable_map)
    try:
        ckpt = open_container(source, limits)
        return run_pickle(ckpt, make_builder(ckpt), policy=policy, limits=limits,
                          encoding=encoding)
    except SafeloadError as err:
        raise err.at(file=source.name) from None
    except CallerError as err:
        raise err.original from None
