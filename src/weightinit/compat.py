"""Every private or version-dependent API of torch and numpy that weightinit uses, in one place.

weightinit supports the torch and numpy releases in the README's "Supported
versions" table. Where those releases differ, or where the package has to reach
into an underscore name, the difference is settled here, by feature detection
(never by comparing version strings), and nowhere else. ``tests/test_compat.py``
checks each entry on the installed versions, so a release that moves or changes
one of them fails that test by name instead of breaking a feature quietly.

Nothing here imports ``torch.distributed.tensor`` (half a second at import): the
DTensor helpers look it up only once whoever made a DTensor has imported it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import mmap as mmap_module
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

__all__ = [
    "CONV_ND",
    "NORM_BASE",
    "TRUNC_NORMAL_HELPER",
    "TorchDispatchMode",
    "bump_version",
    "default_device",
    "dtensor_module",
    "dtensor_types",
    "fsdp_param_groups",
    "fully_shard_function",
    "has_cpu_fsdp2",
    "loads_weights_only_by_default",
    "local_tensor",
    "numpy_multiarray",
    "op_written_args",
    "pickle_storage_names",
    "read_zip_checkpoint",
    "safe_globals",
    "storage_use_count",
    "top_dispatch_mode",
    "strided_shard_type",
    "torch_allocated",
]

# --- numpy ----------------------------------------------------------------------------------


def numpy_multiarray() -> Any:
    """numpy's ``multiarray`` module: ``numpy._core.multiarray`` (numpy 2) or
    ``numpy.core.multiarray`` (numpy 1.x).

    torch imports ``numpy._core._multiarray_umath`` under numpy 1.x too, which
    leaves a partial ``numpy._core`` package without ``multiarray``: probing the
    attribute is not enough, so the submodule is imported by name.
    """
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            module = importlib.import_module(name)
            if hasattr(module, "_reconstruct") and hasattr(module, "scalar"):
                return module
    raise ImportError(f"numpy {np.__version__} has neither numpy._core.multiarray nor "
                      "numpy.core.multiarray with _reconstruct and scalar")


# --- torch: modules and helpers behind underscore names ---------------------------------------

#: the base class of BatchNorm / InstanceNorm layers (``running_mean``, ``affine``, ...)
NORM_BASE: type = nn.modules.batchnorm._NormBase
#: the base class of ``Conv{1,2,3}d`` and their transposed forms (``groups``, ``transposed``)
CONV_ND: type = nn.modules.conv._ConvNd
#: the helper ``nn.init.trunc_normal_`` calls, so a recorder can see that call too
TRUNC_NORMAL_HELPER = "_no_grad_trunc_normal_"


def default_device() -> torch.device:
    """The device factory functions allocate on (``torch.set_default_device``; cpu before 2.3)."""
    getter = getattr(torch, "get_default_device", None)
    return getter() if getter is not None else torch.device("cpu")


def top_dispatch_mode() -> TorchDispatchMode | None:
    """The dispatch mode an ATen op would reach first in this thread (None: no mode)."""
    return _get_current_dispatch_mode()


def op_written_args(func: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Positions and keyword names of the arguments an ATen op writes, from its schema."""
    pos: list[int] = []
    kw: list[str] = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            if arg.kwarg_only:
                kw.append(arg.name)
            else:
                pos.append(i)
    return tuple(pos), tuple(kw)


def _raw_use_count(tensor: Tensor) -> int | None:
    counter = getattr(torch._C, "_storage_Use_Count", None)
    if counter is None:
        return None
    try:
        return int(counter(tensor.untyped_storage()._cdata))
    except (AttributeError, RuntimeError):
        return None


def _probe_offset() -> int | None:
    """What asking adds to the count: 1 where the temporary storage object asking makes holds
    a reference (torch >= 2.5 or so), 0 where it does not (2.4)."""
    raw = _raw_use_count(torch.empty(1))
    return None if raw is None else raw - 1


_PROBE_OFFSET = _probe_offset()


def storage_use_count(tensor: Tensor) -> int | None:
    """How many tensors (views, aliases, ``.data``) hold ``tensor``'s storage, itself
    included: 1 for a tensor nothing else views; None when torch does not say."""
    raw = _raw_use_count(tensor)
    if raw is None or _PROBE_OFFSET is None:
        return None
    return raw - _PROBE_OFFSET


def torch_allocated(tensor: Tensor) -> bool:
    """Whether ``tensor``'s memory was allocated by torch for this process and nothing outside
    torch can reach it: not a numpy array's or a DLPack producer's buffer, not a file mapping
    (``torch.load(mmap=True)``, ``UntypedStorage.from_file``), not shared memory.

    torch marks storages over memory it was handed (``from_numpy``, ``frombuffer``,
    DLPack, mapped files, and the buffers ``torch.load`` reads records into) as not
    resizable; only its own allocations are. So this is conservative: a storage it
    cannot vouch for counts as foreign.
    """
    storage = tensor.untyped_storage()
    if not storage.resizable():
        return False
    with contextlib.suppress(AttributeError, RuntimeError):
        if storage.is_shared() or storage.filename is not None:
            return False
    return True


def bump_version(tensor: Tensor) -> None:
    """Advance ``tensor``'s version counter, as an in-place op would."""
    from torch.autograd.graph import increment_version

    increment_version(tensor)


# --- torch.serialization --------------------------------------------------------------------


@functools.cache
def _under_name(target: Any, full_name: str) -> Any:
    """``target`` as an object whose ``__module__`` and ``__name__`` spell ``full_name``: a
    function calling it, or for a class a subclass of it (so ``issubclass`` still holds).

    Older torch keys its allow-list on ``f"{f.__module__}.{f.__name__}"`` only (no
    ``(callable, name)`` pairs), so a stand-in for another global carries that global's
    name itself; every torch accepts it so. Cached: one object per pair, every load.
    """
    module, _, name = full_name.rpartition(".")
    if isinstance(target, type):
        if f"{target.__module__}.{target.__qualname__}" == full_name:
            return target
        return type(name, (target,), {"__module__": module, "__qualname__": name})

    def named(*args: Any, **kwargs: Any) -> Any:
        return target(*args, **kwargs)

    named.__module__, named.__name__, named.__qualname__ = module, name, name
    return named


@contextlib.contextmanager
def safe_globals(globals_: list[Any]) -> Iterator[None]:
    """Allow ``globals_`` in ``torch.load(weights_only=True)`` for the ``with`` block.

    Entries are classes or functions, or ``(stand_in, "module.name")`` pairs for a
    class or function that stands in for the global ``module.name``. torch >= 2.5 has a
    context manager for it; 2.4 has only the process-wide ``add_safe_globals``, so
    the list is added and the previous one put back.
    """
    entries = [_under_name(*g) if isinstance(g, tuple) else g for g in globals_]
    ser = torch.serialization
    manager: Callable[..., Any] | None = getattr(ser, "safe_globals", None)
    if manager is not None:
        with manager(entries):
            yield
        return
    add = getattr(ser, "add_safe_globals", None)
    if add is None:
        raise RuntimeError(f"torch {torch.__version__} has no allow-list for weights_only "
                           "loading (torch.serialization.add_safe_globals, torch >= 2.4)")
    before = list(ser.get_safe_globals())
    add(entries)
    try:
        yield
    finally:
        ser.clear_safe_globals()
        add(before)


def pickle_storage_names() -> frozenset[str]:
    """The storage class names (``FloatStorage``, ...) torch's zip reader turns into storage
    descriptions, quantized ones left out."""
    names = torch.storage._storage_type_to_dtype_map()
    return frozenset(n for n in names if not n.startswith("Q"))


def loads_weights_only_by_default() -> bool:
    """``torch.load`` called without ``weights_only`` (and no environment variable forcing
    either way) reads as ``weights_only=True``: torch >= 2.6."""
    if any(os.environ.get(v, "0").lower() in ("1", "y", "yes", "true") for v in (
            "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")):
        return False
    decide = getattr(torch.serialization, "_default_to_weights_only", None)
    try:
        return decide is not None and decide(None) is True
    except Exception:  # noqa: BLE001 (changed signature: say no, torch.load decides)
        return False


def read_zip_checkpoint(path: str, map_location: Any, mmap: bool,
                        pickle_module: Any) -> tuple[bool, Any]:
    """``torch.load``'s reading of a ``torch.save`` zip file, with ``pickle_module``'s
    ``Unpickler`` deciding every global; ``(False, None)`` for a legacy (non-zip) file or a
    TorchScript archive, which it never reads (``torch.load`` would hand those to
    ``torch.jit.load``)."""
    ser = torch.serialization
    with open(path, "rb") as f:
        if not ser._is_zipfile(f):
            return False, None
    with ser._open_zipfile_reader(path) as reader:
        if ser._is_torchscript_zip(reader):
            return False, None
        storage = None
        if mmap:
            shared = ser.get_default_mmap_options() == mmap_module.MAP_SHARED
            storage = torch.UntypedStorage.from_file(os.fspath(path), shared,
                                                     os.path.getsize(path))
        return True, ser._load(reader, map_location, pickle_module, overall_storage=storage,
                               encoding="utf-8")


# --- DTensor and FSDP2 ----------------------------------------------------------------------

#: where DTensor lives (torch >= 2.4 public, then the older private module)
_DTENSOR_MODULES = ("torch.distributed.tensor", "torch.distributed._tensor")


def dtensor_types() -> tuple[Any, Any, Any] | None:
    """(DTensor, Replicate, Shard) if DTensor is loaded, else ``None``.

    A tensor can only be a DTensor once whoever made it imported DTensor's module,
    so this never imports it.
    """
    for name in _DTENSOR_MODULES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "DTensor"):
            return module.DTensor, module.Replicate, module.Shard
    return None


def strided_shard_type() -> type | None:
    """DTensor's ``_StridedShard`` placement (FSDP2 over tensor parallelism), if loaded."""
    for name in ("torch.distributed.tensor.placement_types",
                 "torch.distributed._tensor.placement_types"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "_StridedShard"):
            return module._StridedShard
    return None


def local_tensor(t: Tensor) -> Tensor:
    """The rank's own storage of a DTensor, without communication."""
    return t._local_tensor


def fsdp_param_groups(module: nn.Module) -> list[Any]:
    """FSDP2's parameter groups of ``module`` (empty when it is not ``fully_shard``-ed)."""
    get_state = getattr(module, "_get_fsdp_state", None)
    if get_state is None:
        return []
    state = get_state()
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:  # torch < 2.7: one group per state
        group = getattr(state, "_fsdp_param_group", None)
        groups = [group] if group is not None else []
    return list(groups)


def dtensor_module() -> Any:
    """The module holding DTensor and its placements, imported (``torch.distributed.tensor``,
    or ``torch.distributed._tensor`` before torch 2.5). Costs about half a second the first
    time: only for code that is about to make DTensors (examples, tests, benchmarks)."""
    public = importlib.import_module("torch.distributed.tensor")
    if hasattr(public, "DTensor"):
        return public
    return importlib.import_module("torch.distributed._tensor")


def fully_shard_function() -> Callable[..., Any]:
    """FSDP2's ``fully_shard`` (``torch.distributed.fsdp``, or its composable module before
    torch 2.6), imported."""
    fsdp = importlib.import_module("torch.distributed.fsdp")
    if hasattr(fsdp, "fully_shard"):
        return fsdp.fully_shard
    return importlib.import_module("torch.distributed._composable.fsdp").fully_shard


def has_cpu_fsdp2() -> bool:
    """Whether FSDP2 is public (``torch.distributed.fsdp.fully_shard``, torch >= 2.6).

    Earlier releases keep it under ``_composable`` and their forward pass calls into CUDA
    even on a CPU mesh, so sharded initialization is only offered (and tested) from there.
    """
    try:
        fsdp = importlib.import_module("torch.distributed.fsdp")
    except ImportError:
        return False
    return hasattr(fsdp, "fully_shard")
