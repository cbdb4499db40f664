"""Sharded initialization: each rank writes only its shard, to the single-process values.

A model whose parameters are DTensors — sharded with FSDP2's
``fully_shard`` or laid out with DTensor directly — is initialized in place,
shard by shard. Every write on a sharded tensor goes through
:func:`write_shard`:

A rank's shard is a set of rectangular boxes of the global tensor
(:func:`weightinit.planning.layout.local_region`: one box for ``Shard`` and
``Replicate`` on any mesh, several for a ``_StridedShard`` that DTensor reads
as separate ranges), each placed in the rank's local tensor.

* a checkpoint entry: the rank reads only its boxes (``safetensors``
  ``get_slice``; a memory-mapped ``.pth`` is indexed), each into its place;
* an elementwise rule or default (normal, truncated normal, uniform,
  Glorot/He/LeCun, constants), on any placement: the rank draws only the
  seeded tiles its boxes overlap (:mod:`.tiles`) — its elements plus at most
  one tile's thickness along each shard boundary;
* identity and Dirac: the rank writes its boxes directly (zeros and the ones
  that fall inside);
* anything else (orthogonal, ``reset_parameters``, a replayed constructor
  init that is not one distribution): the rank fills the whole tensor in a
  temporary with the same seeded generator and copies its boxes. Exact, but
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
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from ..compat import dtensor_types, fsdp_param_groups, local_tensor
from ..planning.layout import is_sharded, local_region, mesh_device
from ..planning.ops import CheckpointRead, DefaultFill, Op
from ..planning.regions import Region
from .parallel import draw_all
from .seeding import derive_seed, draw_recorded, fill_elementwise, run_seeded, seeded_fill

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


def model_mesh(root: nn.Module) -> Any:
    """The device mesh of the model's sharded tensors (the largest, if there are several)."""
    meshes = [t.device_mesh for t in (*root.parameters(), *root.buffers()) if is_sharded(t)]
    return max(meshes, key=lambda m: m.size(), default=None)


def failed_ranks(root: nn.Module, ok: bool) -> list[int]:
    """Every rank of the model's mesh says whether its run succeeded: the global ranks that
    failed (bounded by the process group's timeout). One sum over each mesh dimension's
    group adds up a flag per mesh position, so no rank outside the mesh takes part."""
    mesh = model_mesh(root)
    if mesh is None or not (dist.is_available() and dist.is_initialized()):
        return []
    coord = mesh.get_coordinate()
    if coord is None:
        return []
    shape = tuple(mesh.shape)
    flags = torch.zeros(math.prod(shape), dtype=torch.int32, device=mesh.device_type)
    flat = 0
    for c, n in zip(coord, shape):
        flat = flat * n + c
    flags[flat] = 0 if ok else 1
    for dim in range(len(shape)):
        dist.all_reduce(flags, group=mesh.get_group(dim))
    ranks = mesh.mesh.flatten().tolist()
    return [ranks[i] for i in flags.nonzero().flatten().tolist()]


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


def _copy_boxes(local: Tensor, region: Region, source: Tensor) -> None:
    """Copy this rank's boxes of the whole tensor ``source`` into its local tensor."""
    for box in region.boxes:
        local[box.local_index].copy_(source[box.index])


def _fill_boxes(elem: Any, local: Tensor, region: Region, seed: int) -> None:
    """Draw each box of the region alone: only the tiles it overlaps (:mod:`.tiles`)."""
    if not elem.random:
        for box in region.boxes:
            elem.fill_(local[box.local_index])
        return
    # one draw_all for every box: their tiles share the fill threads
    draw_all([seeded_fill(elem, local[box.local_index], seed, region.global_shape, box.offset)
              for box in region.boxes])


def _write_sparse(ones: list[tuple[int, ...]], local: Tensor, region: Region) -> None:
    """A structured fill (identity, Dirac) of the region: zeros, and a one at each of the
    global positions ``ones`` the rank holds."""
    local.zero_()
    for box in region.boxes:
        for at in ones:
            if all(o <= i < o + n for i, o, n in zip(at, box.offset, box.shape)):
                local[tuple(i - o + lo for i, o, lo in zip(at, box.offset, box.local))] = 1


def write_shard(tensor: Tensor, op: Op, seed: int, name: str) -> list[Tensor]:
    """Write this rank's shard of ``tensor`` as ``op`` would write the whole tensor.

    Returns the sharded tensors written (more than ``tensor`` for a
    module-wide write such as ``reset_parameters``).
    """
    region = local_region(tensor, name)
    local = local_tensor(tensor)
    global_shape = tuple(tensor.shape)
    with torch.no_grad():
        if isinstance(op, CheckpointRead):
            for box in region.boxes:  # only the rank's own slices are read
                local[box.local_index].copy_(op.value_slice(box.index))
            if local.numel():
                op.check_finite(local)
            return [tensor]
        group_module = op.module if op.group is not None else None
        if group_module is None and local.numel() == 0:
            return [tensor]  # this rank holds none of it
        tensor_seed = derive_seed(seed, name, op.seed_key)
        elem = op.elementwise(global_shape) if group_module is None else None
        if elem is not None:
            _fill_boxes(elem, local, region, tensor_seed)
            return [tensor]
        ones = op.sparse(global_shape) if group_module is None else None
        if ones is not None:
            _write_sparse(ones, local, region)
            return [tensor]
        # Exact for any write and any layout, but the rank pays the whole tensor.
        full = torch.empty(global_shape, dtype=local.dtype, device=local.device)
        with _whole_tensors(group_module, tensor, full) as pairs:
            if elem is not None:
                fill_elementwise(elem, full, tensor_seed)
            elif isinstance(op, DefaultFill) and op.construction is not None:
                draw_recorded(op.construction, full, tensor_seed, op.mapping, op.last_write)
            else:
                run_seeded(tensor_seed, [full.device], lambda: op.write(full))
        written = []
        for sharded, temp in pairs:
            own = region if sharded is tensor else local_region(sharded, name)
            _copy_boxes(local_tensor(sharded), own, temp)
            written.append(sharded)
        return written
