"""Wires the stages: source -> container -> VM -> builder.

Strategy: one function, ``load_checkpoint``, runs the data path in one
direction for every backend; a backend only supplies ``make_builder``. Errors
from every stage come out as SafeloadError with the file name filled in; an
exception raised by the caller's own code (a map_location callable) comes out
as itself, as with torch.load.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from .allowlist import DEFAULT_POLICY, LoadedStorage, Policy, storage_ref_from_pid
from .errors import CallerError, FormatError, LimitError, SafeloadError
from .formats import Checkpoint, open_checkpoint
from .formats.base import PersistentObject, PersistentTensor, PersistentView, PickleStream
from .formats.source import FileLike, Source
from .limits import DEFAULT_LIMITS, Limits
from .records import TensorRecord
from .unpickler import Unpickler

__all__ = ["load_checkpoint", "resolve_policy", "run_pickle"]


def resolve_policy(policy: Policy | None, allow, records=None) -> Policy:
    """The policy for one call: ``policy`` (or the default) plus ``allow=`` and
    ``records=`` (None leaves the policy's records setting as it is)."""
    return (policy or DEFAULT_POLICY).allowing(allow).with_records(records)


def run_pickle(ckpt: Checkpoint, builder, *, policy: Policy, limits: Limits,
               encoding: str = "utf-8", on_finding=None) -> object:
    """Run the checkpoint's pickles through the VM with ``builder``: the main
    pickle for most containers, none or several for numpy files (``assemble``)."""
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

    return ckpt.assemble(run)


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
