"""Sharded initialization: each rank writes only its shard, to the single-process values.

A model whose parameters are DTensors — sharded with FSDP2's
``fully_shard`` or laid out with DTensor directly — is initialized in place,
shard by shard. Every write on a sharded tensor goes through
:func:`write_shard`:

* a checkpoint entry: the rank reads only its slice (``safetensors``
  ``get_slice``; a memory-mapped ``.pth`` is indexed);
* an elementwise rule (normal, truncated normal, uniform, Glorot/He/LeCun,
  constants): the rank draws only the seeded blocks its shard overlaps (see
  :func:`weightinit.seeding.fill_elementwise`) — for ``Shard(0)``, FSDP2's
  layout, that is its shard plus at most two partial blocks;
* anything else (orthogonal, identity, ``reset_parameters``, a replayed
  constructor init, elementwise fills of shards that are not a contiguous
  range of the flattened tensor): the rank fills the whole tensor in a
  temporary with the same seeded generator and keeps its slice. Exact, but
  each rank pays the whole tensor's time and transient memory.

Sharded writes are always seeded (a seed chosen on rank 0 and broadcast
when none is given), so all ranks agree and the gathered tensor equals what
one process produces with the same seed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .errors import InitRuntimeError, InitValueError
from .seeding import derive_seed, fill_elementwise, run_seeded

logger = logging.getLogger("weightinit")

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - older torch or no distributed support
    try:
        from torch.distributed._tensor import DTensor, Replicate, Shard  # type: ignore
    except ImportError:
        DTensor = Replicate = Shard = None  # type: ignore[assignment,misc]


class ShardingError(InitRuntimeError):
    """A sharded tensor's layout cannot be initialized (e.g. a ``Partial`` placement)."""


def is_sharded(t: Any) -> bool:
    """True for a DTensor (sharded or replicated over a device mesh)."""
    return DTensor is not None and isinstance(t, DTensor)


def has_sharded(root: nn.Module) -> bool:
    return any(is_sharded(t) for t in list(root.parameters()) + list(root.buffers()))


def class_name(module: nn.Module) -> str:
    """The module's own class name, also once ``fully_shard`` made it ``FSDP<Class>``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return type(module).__name__
    for cls in type(module).__mro__:
        if not issubclass(cls, FSDPModule):
            return cls.__name__
    return type(module).__name__  # pragma: no cover


def local_region(t: Tensor, name: str = "") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(global offset, shape) of this rank's shard of the DTensor ``t``.

    Shards follow ``torch.chunk`` along each sharded dimension, mesh
    dimension by mesh dimension, as DTensor and FSDP2 lay them out.
    """
    shape = list(t.shape)
    offset = [0] * len(shape)
    mesh = t.device_mesh
    coord = mesh.get_coordinate()
    if coord is None:  # this rank holds no part of the mesh
        return tuple(offset), tuple(0 for _ in shape)
    for mesh_dim, placement in enumerate(t.placements):
        if isinstance(placement, Replicate):
            continue
        if type(placement) is not Shard:
            raise ShardingError(
                f"{name or 'tensor'}: placement {placement!r} is not supported for initialization "
                "(only Shard(dim) and Replicate). Fix: initialize before applying this layout, "
                "or redistribute to Shard/Replicate.")
        dim = placement.dim % len(shape)
        parts = mesh.size(mesh_dim)
        chunk = math.ceil(shape[dim] / parts) if shape[dim] else 0
        lo = min(coord[mesh_dim] * chunk, shape[dim])
        hi = min(lo + chunk, shape[dim])
        offset[dim] += lo
        shape[dim] = hi - lo
    local = tuple(t._local_tensor.shape)
    if tuple(shape) != local:
        raise ShardingError(
            f"{name or 'tensor'}: its local shard has shape {local}, but its placements "
            f"{tuple(t.placements)} give {tuple(shape)}; this layout (uneven custom sharding?) "
            "is not supported. Fix: initialize the model before sharding it this way.")
    return tuple(offset), tuple(shape)


def _flat_range(global_shape: tuple[int, ...], offset: tuple[int, ...],
                shape: tuple[int, ...]) -> int | None:
    """Start of the region in the flattened tensor if it is one contiguous range, else None."""
    dims = len(global_shape)
    i = 0
    while i < dims - 1 and shape[i] == 1:
        i += 1
    if any(shape[j] != global_shape[j] for j in range(i + 1, dims)):
        return None
    start, stride = 0, 1
    for j in reversed(range(dims)):
        start += offset[j] * stride
        stride *= global_shape[j]
    return start


def mesh_device(t: Tensor) -> torch.device:
    kind = t.device_mesh.device_type
    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


def check_layout(t: Tensor, device: Any, name: str = "") -> None:
    """Raise :class:`ShardingError` / ``InitValueError`` if ``t`` cannot be allocated here."""
    local_region(t, name)
    target = mesh_device(t)
    if device is not None and torch.device(device).type != target.type:
        raise InitValueError(
            f"{name or 'tensor'} is sharded over a {target.type!r} device mesh; it cannot be "
            f"materialized on device={str(device)!r}. Nothing was allocated. Fix: pass "
            f"device={target.type!r} or leave device unset.")


def allocate_like(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A DTensor laid out like ``t`` whose local shard is fresh (uninitialized) storage."""
    local = torch.empty(t._local_tensor.shape, dtype=dtype, device=mesh_device(t))
    return DTensor.from_local(local, t.device_mesh, t.placements, run_check=False,
                              shape=t.shape, stride=t.stride())


def refresh_fsdp(root: nn.Module) -> None:
    """Let FSDP2 take the newly allocated shards (re-pad them, as after ``to_empty``)."""
    with torch.no_grad():
        for module in root.modules():
            get_state = getattr(module, "_get_fsdp_state", None)
            if get_state is None:
                continue
            state = get_state()
            groups = getattr(state, "_fsdp_param_groups", None)
            if groups is None:
                group = getattr(state, "_fsdp_param_group", None)
                groups = [group] if group is not None else []
            for group in groups:
                for fsdp_param in group.fsdp_params:
                    fsdp_param.reset_sharded_param()


def common_seed() -> int:
    """A seed drawn on rank 0 from torch's global generator, the same on every rank."""
    import torch.distributed as dist

    seed = [int(torch.randint(0, 2**62, (1,)).item())]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(seed, src=0)
    return seed[0]


@contextlib.contextmanager
def _whole_tensors(module: nn.Module | None, tensor: Tensor, full: Tensor
                   ) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Swap full-size temporaries into ``module``'s sharded slots while a module-wide write runs.

    Yields (sharded tensor, temporary) pairs: ``tensor`` with ``full``, plus
    the module's other direct sharded tensors when the write is module-wide
    (``reset_parameters``).
    """
    pairs = [(tensor, full)]
    saved: list[tuple[dict, str, Tensor]] = []
    if module is not None:
        for store in (module._parameters, module._buffers):
            for attr, t in store.items():
                if not is_sharded(t):
                    continue
                temp = full if t is tensor else torch.empty(
                    t.shape, dtype=t.dtype, device=t._local_tensor.device)
                if t is not tensor:
                    pairs.append((t, temp))
                saved.append((store, attr, t))
                store[attr] = nn.Parameter(temp, requires_grad=t.requires_grad) \
                    if isinstance(t, nn.Parameter) else temp
    try:
        yield pairs
    finally:
        for store, attr, t in saved:
            store[attr] = t


def _index(offset: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(offset, shape))


def write_shard(tensor: Tensor, writer: Any, seed: int, name: str, rule: str) -> list[Tensor]:
    """Write this rank's shard of ``tensor`` as ``writer`` would write the whole tensor.

    Returns the sharded tensors written (more than ``tensor`` for a
    module-wide write such as ``reset_parameters``).
    """
    offset, shape = local_region(tensor, name)
    local = tensor._local_tensor
    global_shape = tuple(tensor.shape)
    with torch.no_grad():
        if getattr(writer, "source", None) is not None:
            if local.numel():
                index = _index(offset, shape)
                value = writer.source.get_slice(writer.key, index) if index else \
                    writer.value()
                local.copy_(value)
            return [tensor]
        group_module = getattr(writer, "module", None) if writer.group is not None else None
        if group_module is None and local.numel() == 0:
            return [tensor]  # this rank holds none of it
        tensor_seed = derive_seed(seed, name, rule)
        dist = writer.elementwise(global_shape) if group_module is None else None
        start = _flat_range(global_shape, offset, shape)
        if dist is not None and start is not None:
            fill_elementwise(dist, local, tensor_seed, start, math.prod(global_shape))
            return [tensor]
        full = torch.empty(global_shape, dtype=local.dtype, device=local.device)
        with _whole_tensors(group_module, tensor, full) as pairs:
            if dist is not None:
                fill_elementwise(dist, full, tensor_seed)
            else:
                run_seeded(tensor_seed, [full.device], lambda: writer.write(full))
        written = []
        for sharded, temp in pairs:
            o, s = local_region(sharded, name)
            sharded._local_tensor.copy_(temp[_index(o, s)])
            written.append(sharded)
        return written
