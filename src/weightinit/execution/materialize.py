"""Give a deferred model real storage: each tensor allocated once, on the target device.

Empty storage on the target device and dtype is swapped into every module
slot that held the meta tensor (ties stay tied); real tensors are moved
there: host tensors bound for a device together (:func:`.batched.move_all`),
and a tensor that rules fill whole before anything reads it is allocated,
not copied. A meta tensor whose only writer is a checkpoint entry that can be used
as is *adopts* that tensor as its storage: no allocation, no copy. Every slot
change goes through the run's transaction, so a failure puts the meta
tensors back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..compat import torch_allocated
from ..errors import MaterializeError
from ..planning import (
    CheckpointRead,
    DefaultFill,
    Plan,
    UserCall,
    Write,
    fills_whole,
    slots_of,
    subtree_tensors,
)
from ..planning.layout import is_sharded, mesh_device
from . import batched, memory
from .sharding import allocate_like, refresh_fsdp
from .transaction import Transaction


def adoptable(events: tuple[Any, ...], device: torch.device,
              dtype: torch.dtype | None) -> dict[int, Tensor]:
    """Meta tensors whose only value comes from a checkpoint tensor usable as is.

    Such a tensor takes the loaded tensor as its storage (same shape, dtype
    and device, contiguous, not shared with another key, memory torch allocated),
    so the file read is its one write. A value over the memory-mapped file is not
    taken: the tensor is allocated and the copy from the file is its one write, so a
    parameter never changes when the file does.
    """
    last: dict[int, Any] = {}
    meta: dict[int, Tensor] = {}
    seen_by_user: set[int] = set()
    for ev in events:
        if isinstance(ev, Write):
            last[id(ev.tensor)] = ev.op
            if ev.tensor.device.type == "meta":
                meta[id(ev.tensor)] = ev.tensor
        elif isinstance(ev, UserCall):
            seen_by_user.update(id(t) for t in subtree_tensors(ev.module))
    adopt: dict[int, Tensor] = {}
    used: set[int] = set()
    for key, op in last.items():
        if key not in meta or key in seen_by_user or not isinstance(op, CheckpointRead):
            continue
        t = meta[key]
        if is_sharded(t):
            continue  # each rank reads its own slice instead
        value = op.value()
        want = dtype if dtype is not None and t.is_floating_point() else t.dtype
        if (value.dtype != want or value.device != device or not value.is_contiguous()
                or value.untyped_storage().nbytes() != value.nbytes
                or not torch_allocated(value)  # a mapped file's pages: copied, not taken
                or value.data_ptr() in used):
            continue
        used.add(value.data_ptr())
        adopt[key] = value
    return adopt


def overwritten(events: tuple[Any, ...]) -> set[int]:
    """Real tensors whose every write fills them whole without reading them (a rule's
    elementwise fill) and that no user code can see: moving them to the target device or
    dtype need not copy their values, only allocate."""
    pure: set[int] = set()
    seen: set[int] = set()
    for ev in events:
        if isinstance(ev, UserCall):
            seen.update(id(t) for t in subtree_tensors(ev.module))
        elif fills_whole(ev.tensor, ev.op):
            pure.add(id(ev.tensor))
        else:
            seen.add(id(ev.tensor))
    return pure - seen


def materialize(plan: Plan, txn: Transaction) -> dict[int, Tensor]:
    """Allocate (or move) every tensor of ``plan.model``; return old id -> new tensor.

    The returned mapping is also what the plan's default writes replay through.
    """
    root = plan.model
    device = plan.device
    if device is None:
        sharded = next((t for t in list(root.parameters()) if is_sharded(t)), None)
        # unsharded buffers go where the shards go
        device = mesh_device(sharded) if sharded is not None else torch.device("cpu")
    slots = plan.slots or slots_of(root)
    txn.keep_slots([m for _, m, _, _, _ in slots])
    adopt = adoptable(plan.events, device, plan.dtype)
    fresh = overwritten(plan.events)
    mapping: dict[int, Tensor] = {}
    moves: list[tuple[Tensor, Tensor]] = []  # host tensors bound for the device, copied together
    try:
        for _, module, kind, attr, t in slots:
            new = mapping.get(id(t))
            if new is None:
                new = mapping[id(t)] = _allocate(t, kind, device, plan.dtype, adopt, moves,
                                                 fresh)
                if new is not t:
                    txn.allocated(new)
            if new is not t:
                (module._parameters if kind == "param" else module._buffers)[attr] = new
        batched.move_all(moves)
    except (RuntimeError, TypeError) as err:
        raise MaterializeError(
            f"cannot allocate {type(root).__name__} on device={str(device)!r} "
            f"dtype={plan.dtype!r}: {err}. Nothing was kept: the model is as it was. Fix: "
            "free memory or choose another device/dtype.") from err
    if any(is_sharded(t) for t in mapping.values()):
        refresh_fsdp(root)  # FSDP2 takes the new shards (re-padded, as after to_empty)
    updated: set[int] = set()  # default writes replay through the mapping (one, shared)
    for ev in plan.events:
        if isinstance(ev, Write) and isinstance(ev.op, DefaultFill) and \
                id(ev.op.mapping) not in updated:
            updated.add(id(ev.op.mapping))
            ev.op.mapping.update(mapping)
    return mapping


def _allocate(t: Tensor, kind: str, device: torch.device, dtype: torch.dtype | None,
              adopt: dict[int, Tensor], moves: list[tuple[Tensor, Tensor]],
              fresh: set[int]) -> Tensor:
    target_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
    if id(t) in adopt:
        data = adopt[id(t)]
    elif is_sharded(t):
        if t.device.type != "meta" and t.dtype == target_dtype:
            return t
        data = (t.detach().to(dtype=target_dtype) if t.device.type != "meta"
                else allocate_like(t, target_dtype))
    elif t.device.type == "meta":
        data = memory.empty(t.shape, dtype=target_dtype, device=device)
    elif t.device == device and t.dtype == target_dtype:
        return t
    elif id(t) in fresh or batched.move_target(t, device):
        data = memory.empty_like(t, dtype=target_dtype, device=device)
        if id(t) not in fresh:  # (fresh: a rule fills it whole before anything reads it)
            moves.append((t, data))  # its values are copied with the others
    else:
        data = t.detach().to(device=device, dtype=target_dtype)
    return nn.Parameter(data, requires_grad=t.requires_grad) if kind == "param" else data


def remap(steps: list[Any], mapping: dict[int, Tensor]) -> list[Any]:
    """The same steps, their writes pointing at the allocated tensors."""
    out: list[Any] = []
    for step in steps:
        if isinstance(step, tuple):
            out.append(tuple(Write(mapping.get(id(w.tensor), w.tensor), w.op) for w in step))
        else:
            out.append(step)
    return out
