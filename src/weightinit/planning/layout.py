"""How a sharded (DTensor) tensor is laid out: which part of it this rank holds.

Planning checks layouts before anything is allocated; execution uses the
same regions to write each rank's shard. Shards follow ``torch.chunk`` along
each sharded dimension, mesh dimension by mesh dimension, as DTensor and
FSDP2 lay them out.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..compat import dtensor_types, local_tensor
from ..errors import InitValueError, ShardingError


def is_sharded(t: Any) -> bool:
    """True for a DTensor (sharded or replicated over a device mesh)."""
    types = dtensor_types()
    return types is not None and isinstance(t, types[0])


def has_sharded(root: nn.Module) -> bool:
    types = dtensor_types()
    if types is None:  # no DTensor can exist yet: nothing to walk
        return False
    return any(isinstance(t, types[0]) for t in (*root.parameters(), *root.buffers()))


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
    _, Replicate, Shard = dtensor_types()  # t is a DTensor: the module is loaded
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
    local = tuple(local_tensor(t).shape)
    if tuple(shape) != local:
        raise ShardingError(
            f"{name or 'tensor'}: its local shard has shape {local}, but its placements "
            f"{tuple(t.placements)} give {tuple(shape)}; this layout (uneven custom sharding?) "
            "is not supported. Fix: initialize the model before sharding it this way.")
    return tuple(offset), tuple(shape)


def flat_range(global_shape: tuple[int, ...], offset: tuple[int, ...],
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
