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

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from ..compat import dtensor_types, fsdp_param_groups, local_tensor
from ..planning.layout import flat_range, is_sharded, local_region, mesh_device
from ..planning.ops import CheckpointRead, Op
from .seeding import derive_seed, fill_elementwise, run_seeded

logger = logging.getLogger("weightinit")


def allocate_like(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A DTensor laid out like ``t`` whose local shard is fresh (uninitialized) storage."""
    local = torch.empty(local_tensor(t).shape, dtype=dtype, device=mesh_device(t))
    return dtensor_types()[0].from_local(local, t.device_mesh, t.placements, run_check=False,
                              shape=t.shape, stride=t.stride())


def refresh_fsdp(root: nn.Module) -> None:
    """Let FSDP2 take the newly allocated shards (re-pad them, as after ``to_empty``)."""
    with torch.no_grad():
        for module in root.modules():
            for group in fsdp_param_groups(module):
                for fsdp_param in group.fsdp_params:
                    fsdp_param.reset_sharded_param()


def common_seed() -> int:
    """A seed drawn on rank 0 from torch's global generator, the same on every rank."""
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
                    t.shape, dtype=t.dtype, device=local_tensor(t).device)
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


def write_shard(tensor: Tensor, op: Op, seed: int, name: str) -> list[Tensor]:
    """Write this rank's shard of ``tensor`` as ``op`` would write the whole tensor.

    Returns the sharded tensors written (more than ``tensor`` for a
    module-wide write such as ``reset_parameters``).
    """
    offset, shape = local_region(tensor, name)
    local = local_tensor(tensor)
    global_shape = tuple(tensor.shape)
    with torch.no_grad():
        if isinstance(op, CheckpointRead):
            if local.numel():
                local.copy_(op.value_slice(_index(offset, shape)))
                op.check_finite(local)
            return [tensor]
        group_module = op.module if op.group is not None else None
        if group_module is None and local.numel() == 0:
            return [tensor]  # this rank holds none of it
        tensor_seed = derive_seed(seed, name, op.seed_key)
        elem = op.elementwise(global_shape) if group_module is None else None
        start = flat_range(global_shape, offset, shape)
        if elem is not None and start is not None:
            fill_elementwise(elem, local, tensor_seed, start, math.prod(global_shape))
            return [tensor]
        full = torch.empty(global_shape, dtype=local.dtype, device=local.device)
        with _whole_tensors(group_module, tensor, full) as pairs:
            if elem is not None:
                fill_elementwise(elem, full, tensor_seed)
            else:
                run_seeded(tensor_seed, [full.device], lambda: op.write(full))
        written = []
        for sharded, temp in pairs:
            o, s = local_region(sharded, name)
            local_tensor(sharded).copy_(temp[_index(o, s)])
            written.append(sharded)
        return written
