"""How a sharded (DTensor) tensor is laid out: which part of it this rank holds.

Planning checks layouts before anything is allocated; execution uses the
same regions to write each rank's shard. The arithmetic of placements lives
in :mod:`.regions`; this module reads a DTensor's mesh and placements into
it and checks the result against the rank's local tensor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..compat import dtensor_types, local_tensor, strided_shard_type
from ..errors import InitValueError, ShardingError
from .regions import Region, Split, compute_region, empty_region, strided_conflict


def is_sharded(t: Any) -> bool:
    """True for a DTensor (sharded or replicated over a device mesh)."""
    types = dtensor_types()
    return types is not None and isinstance(t, types[0])


def has_sharded(root: nn.Module, tensors: list[Tensor] | None = None) -> bool:
    """Some tensor of ``root`` (``tensors``: its parameters and buffers, when known) is a
    DTensor."""
    types = dtensor_types()
    if types is None:  # no DTensor can exist yet: nothing to walk
        return False
    if tensors is None:
        tensors = [*root.parameters(), *root.buffers()]
    return any(isinstance(t, types[0]) for t in tensors)


def placement_splits(t: Tensor, name: str) -> tuple[Split, ...]:
    """``t``'s placements as :mod:`.regions` reads them; anything else is a ShardingError."""
    _, Replicate, Shard = dtensor_types()  # t is a DTensor: the module is loaded
    strided = strided_shard_type()
    ndim = t.dim()
    out: list[Split] = []
    for placement in t.placements:
        # _StridedShard first: on torch < 2.8 it is a subclass of Shard
        if strided is not None and isinstance(placement, strided):
            out.append(("strided", placement.dim % ndim, int(placement.split_factor)))
        elif type(placement) is Shard:
            out.append(("shard", placement.dim % ndim))
        elif isinstance(placement, Replicate):
            out.append(("replicate",))
        else:
            raise ShardingError(
                f"{name or 'tensor'}: placement {placement!r} is not supported for "
                "initialization (only Shard(dim), _StridedShard and Replicate: a Partial "
                "tensor holds no values of its own to initialize). Fix: initialize before "
                "applying this layout, or redistribute to Shard/Replicate.")
    return tuple(out)


def local_region(t: Tensor, name: str = "") -> Region:
    """Which elements of the DTensor ``t`` this rank holds, as boxes placed in its local tensor.

    Placements are read left to right, as DTensor does (see :mod:`.regions`);
    the result is checked against the local tensor's shape, and a
    ``_StridedShard`` layout against what FSDP2 put on every rank, so a layout
    torch reads two ways is refused by all ranks alike (:class:`ShardingError`).
    """
    splits = placement_splits(t, name)
    mesh = t.device_mesh
    coord = mesh.get_coordinate()
    if coord is None:  # this rank holds no part of the mesh
        return empty_region(tuple(t.shape))
    mesh_shape = tuple(mesh.size(i) for i in range(mesh.ndim))
    shape = tuple(t.shape)
    for dim in sorted({s[1] for s in splits if s[0] == "strided"}):
        conflict = strided_conflict(shape[dim], mesh_shape, splits, dim)
        if conflict is not None:
            where, read, held = conflict
            raise ShardingError(
                f"{name or 'tensor'}: placements {tuple(t.placements)} over a mesh of shape "
                f"{mesh_shape} are read two ways by torch: dimension {dim} (size {shape[dim]}) "
                f"is split unevenly, and at mesh coordinate {where} FSDP2 holds index ranges "
                f"{list(held)} where DTensor's full_tensor() reads {list(read)}. Its shards "
                "cannot equal one process's tensor. Fix: make that dimension divisible by "
                "the number of shards, or initialize the model before sharding it.")
    region = compute_region(shape, mesh_shape, coord, splits)
    local = tuple(local_tensor(t).shape)
    if region.local_shape != local:
        raise ShardingError(
            f"{name or 'tensor'}: its local shard has shape {local}, but its placements "
            f"{tuple(t.placements)} give {region.local_shape}; this layout (uneven custom "
            "sharding?) is not supported. Fix: initialize the model before sharding it this "
            "way.")
    return region


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
