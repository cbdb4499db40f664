"""Turn a model whose tensors live on ``meta`` into real tensors, each allocated once.

Three steps, the first two before any allocation:

1. :func:`default_events` — for every meta parameter and buffer, the write
   that gives it its PyTorch default: the replayed constructor init of a
   :func:`~weightinit.deferred` model, else the module's
   ``reset_parameters()``. These come first in the event list, so the
   scheduler drops them wherever a rule writes the tensor later.
2. :func:`check_defined` — a tensor with no default, no rule and no user
   code over it would be left as uninitialized memory: that is an error
   naming it and the fix.
3. :func:`allocate` — empty storage on the target device and dtype,
   swapped into every module slot that held the meta tensor (ties stay
   tied); real tensors are moved there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from . import sharding
from .deferred import Construction, construction_of, replay
from .errors import InitRuntimeError
from .functional import Elementwise
from .plan import Call, Write, subtree_tensors
from .rules import KaimingInit, XavierInit, reset_method_of

logger = logging.getLogger("weightinit")


class UndefinedParameterError(InitRuntimeError):
    """A deferred parameter would be left without a defined value."""


@dataclass(frozen=True)
class DefaultWriter:
    """Writes a tensor's PyTorch default: its replayed constructor init or ``reset_parameters``."""

    module: nn.Module
    root_name: str
    construction: Construction | None
    mapping: dict[int, Tensor]

    kind = "unchanged"
    init = None
    where = ""

    @property
    def group(self) -> int | None:
        # One reset_parameters() call covers all of a module's direct tensors.
        return None if self.construction is not None else id(self.module)

    @property
    def info(self) -> str:
        return f"not changed by init_weights of {self.root_name}"

    @property
    def declared_in(self) -> str:
        if self.construction is not None:
            return f"PyTorch default (constructor: {self.construction.describe()})"
        return f"PyTorch default (reset_parameters of {sharding.class_name(self.module)})"

    def elementwise(self, shape: tuple[int, ...]) -> Elementwise | None:
        """The replayed constructor init as a per-element distribution, when it is one."""
        if self.construction is None:
            return None
        return construction_elementwise(self.construction, shape)

    def write(self, tensor: Tensor) -> None:
        if self.construction is not None:
            replay(self.construction, tensor, self.mapping)
        else:
            reset_method_of(self.module)()


_TENSOR_METHODS = {
    "normal_": lambda shape, mean=0.0, std=1.0: Elementwise("normal", (mean, std)),
    "uniform_": lambda shape, a=0.0, b=1.0, **kw: Elementwise(
        "uniform", (kw.get("from", a), kw.get("to", b))),
    "fill_": lambda shape, value: Elementwise("constant", (value,)),
    "zero_": lambda shape: Elementwise("constant", (0.0,)),
}


_INIT_FUNCTIONS = {
    "normal_": lambda shape, mean=0.0, std=1.0: Elementwise("normal", (mean, std)),
    "uniform_": lambda shape, a=0.0, b=1.0: Elementwise("uniform", (a, b)),
    "trunc_normal_": lambda shape, mean=0.0, std=1.0, a=-2.0, b=2.0: Elementwise(
        "trunc_normal", (mean, std, a, b)),
    "constant_": lambda shape, val: Elementwise("constant", (val,)),
    "ones_": lambda shape: Elementwise("constant", (1.0,)),
    "zeros_": lambda shape: Elementwise("constant", (0.0,)),
    # torch's defaults for these differ from the rules' (fan_in, leaky_relu)
    "kaiming_uniform_": lambda shape, a=0.0, mode="fan_in", nonlinearity="leaky_relu": KaimingInit(
        a=a, mode=mode, nonlinearity=nonlinearity, distribution="uniform").weight_dist(shape, None),
    "kaiming_normal_": lambda shape, a=0.0, mode="fan_in", nonlinearity="leaky_relu": KaimingInit(
        a=a, mode=mode, nonlinearity=nonlinearity, distribution="normal").weight_dist(shape, None),
    "xavier_uniform_": lambda shape, gain=1.0: XavierInit(
        gain=gain, distribution="uniform").weight_dist(shape, None),
    "xavier_normal_": lambda shape, gain=1.0: XavierInit(
        gain=gain, distribution="normal").weight_dist(shape, None),
}


def construction_elementwise(construction: Construction, shape: tuple[int, ...]
                             ) -> Elementwise | None:
    """One recorded whole-tensor fill from ``torch.nn.init`` (or ``normal_``, ``fill_`` ...)
    with plain arguments, as an :class:`~weightinit.functional.Elementwise`; else ``None``.

    Multi-step inits (``Embedding``'s padding row), writes through views,
    computed values and explicit generators are replayed as recorded.
    """
    if len(construction.ops) != 1:
        return None
    fn, args, kwargs, chain = construction.ops[0]
    if chain or "generator" in kwargs or any(
            not isinstance(a, (int, float, str)) or isinstance(a, bool)
            for a in (*args, *kwargs.values())):
        return None
    name = getattr(fn, "__name__", "")
    module = getattr(fn, "__module__", None) or ""
    if module in ("torch.nn.init", "weightinit.functional"):
        table = _INIT_FUNCTIONS
    elif getattr(Tensor, name, None) is fn:
        table = _TENSOR_METHODS
    else:
        return None
    make = table.get(name)
    if make is None:
        return None
    try:
        dist = make(tuple(shape), *args, **kwargs)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if any(not math.isfinite(float(v)) for v in dist.args):
        return None
    return dist


def slots_of(root: nn.Module) -> list[tuple[str, nn.Module, str, str, Tensor]]:
    """(full name, module, 'param'|'buffer', attr, tensor) for every slot, aliases included."""
    out = []
    for prefix, m in root.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, p in m._parameters.items():
            if p is not None:
                out.append((dot + name, m, "param", name, p))
        for name, b in m._buffers.items():
            if b is not None:
                out.append((dot + name, m, "buffer", name, b))
    return out


def needs_materialization(root: nn.Module) -> bool:
    return any(t.device.type == "meta" for t in list(root.parameters()) + list(root.buffers()))


Slots = list[tuple[str, nn.Module, str, str, Tensor]]


def default_events(root: nn.Module, mapping: dict[int, Tensor], slots: Slots | None = None
                   ) -> tuple[list[Write], list[tuple[str, str]]]:
    """Default writes for meta tensors, and the (name, reason) of tensors that have none."""
    events: list[Write] = []
    undefined: list[tuple[str, str]] = []
    seen: set[int] = set()
    root_name = type(root).__name__
    for name, module, _, attr, t in slots if slots is not None else slots_of(root):
        if t.device.type != "meta" or id(t) in seen:
            continue
        seen.add(id(t))
        construction = construction_of(t)
        if construction is None and sharding.is_sharded(t):
            # Sharding (fully_shard, distribute_module) replaced the parameter object;
            # deferred() also noted the construction on the module under its name.
            construction = getattr(module, "_wi_constructions", {}).get(attr)
        if construction is not None and construction.defined:
            events.append(Write(t, DefaultWriter(module, root_name, construction, mapping)))
        elif construction is None and reset_method_of(module) is not None:
            events.append(Write(t, DefaultWriter(module, root_name, None, mapping)))
        elif construction is not None and construction.broken:
            undefined.append((name, construction.broken))
        elif construction is not None:
            undefined.append((name, "its constructor creates it with torch.empty and never "
                                    "writes it"))
        else:
            undefined.append((name, f"it is on the meta device and {type(module).__name__} has "
                                    "no reset_parameters()"))
    # Replay in construction order: the random generator is then drawn in eager order.
    events.sort(key=lambda ev: ev.writer.construction.first if ev.writer.construction else -1)
    return events, undefined


def check_defined(root: nn.Module, undefined: list[tuple[str, str]],
                  events: list[Write | Call], slots: Slots | None = None) -> list[str]:
    """Raise for undefined tensors no rule writes; return those left to user code."""
    written = {id(ev.tensor) for ev in events if isinstance(ev, Write)}
    user = {id(t) for ev in events if isinstance(ev, Call) for t in subtree_tensors(ev.module)}
    if not undefined:
        return []
    by_name = {n: t for n, _, _, _, t in (slots if slots is not None else slots_of(root))}
    bad, left_to_user = [], []
    for name, reason in undefined:
        t = by_name[name]
        if id(t) in written:
            continue
        if id(t) in user:
            left_to_user.append(name)
            continue
        bad.append(f"{name} ({reason})")
    if bad:
        raise UndefinedParameterError(
            f"{type(root).__name__}: {len(bad)} tensor(s) would be left without a defined value: "
            f"{'; '.join(bad)}. Nothing was allocated. Fix: add an init_cfg rule that covers "
            "them (e.g. layer=<their module class>), give the module an init_weights method, "
            "or initialize them in the constructor.")
    if left_to_user:
        logger.warning("%s: %s have no default value; the user-defined init_weights over them "
                       "must write them.", type(root).__name__, ", ".join(left_to_user))
    return left_to_user


def adoptable(events: list[Write | Call], device: torch.device | str | None,
              dtype: torch.dtype | None) -> dict[int, Tensor]:
    """Meta tensors whose only value comes from a checkpoint tensor that can be used as is.

    Such a tensor is not allocated and copied into: the loaded tensor becomes
    its storage (same shape, dtype and device, contiguous, not shared with
    another key), so the file read is its one write.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    last: dict[int, Any] = {}
    meta: dict[int, Tensor] = {}
    seen_by_user: set[int] = set()
    for ev in events:
        if isinstance(ev, Write):
            last[id(ev.tensor)] = ev.writer
            if ev.tensor.device.type == "meta":
                meta[id(ev.tensor)] = ev.tensor
        else:
            seen_by_user.update(id(t) for t in subtree_tensors(ev.module))
    adopt: dict[int, Tensor] = {}
    used: set[int] = set()
    for key, writer in last.items():
        if key not in meta or key in seen_by_user or getattr(writer, "source", None) is None:
            continue
        t = meta[key]
        if sharding.is_sharded(t):
            continue  # each rank reads its own slice instead
        value = writer.value()
        want = dtype if dtype is not None and t.is_floating_point() else t.dtype
        if (value.dtype != want or value.device != device or not value.is_contiguous()
                or value.untyped_storage().nbytes() != value.nbytes
                or value.data_ptr() in used):
            continue
        used.add(value.data_ptr())
        adopt[key] = value
    return adopt


def allocate(root: nn.Module, mapping: dict[int, Tensor], device: torch.device | str | None,
             dtype: torch.dtype | None, slots: Slots | None = None,
             adopt: dict[int, Tensor] | None = None) -> list[Tensor]:
    """Give every tensor real storage on ``device``/``dtype``; fill ``mapping`` old id -> new.

    Tensors in ``adopt`` take the given tensor as their storage instead.
    Returns the replaced tensors, which must outlive ``mapping`` (it is keyed by ``id``).
    """
    adopt = adopt or {}
    device = torch.device("cpu") if device is None else torch.device(device)
    replaced: list[Tensor] = []
    for _, module, kind, attr, t in slots if slots is not None else slots_of(root):
        new = mapping.get(id(t))
        if new is None:
            target_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
            if id(t) in adopt:
                data = adopt[id(t)]
            elif sharding.is_sharded(t):
                if t.device.type != "meta" and t.dtype == target_dtype:
                    mapping[id(t)] = t
                    continue
                if t.device.type != "meta":
                    data = t.detach().to(dtype=target_dtype)
                else:
                    data = sharding.allocate_like(t, target_dtype)
            elif t.device.type == "meta":
                data = torch.empty(t.shape, dtype=target_dtype, device=device)
            elif t.device != device or t.dtype != target_dtype:
                data = t.detach().to(device=device, dtype=target_dtype)
            else:
                mapping[id(t)] = t
                continue
            if kind == "param":
                new = nn.Parameter(data, requires_grad=t.requires_grad)
            else:
                new = data
            mapping[id(t)] = new
            replaced.append(t)
        if kind == "param":
            module._parameters[attr] = new
        else:
            module._buffers[attr] = new
    return replaced


def remap(events: list[Write | Call], mapping: dict[int, Tensor]) -> list[Write | Call]:
    """The same events, pointing at the allocated tensors."""
    out: list[Write | Call] = []
    for ev in events:
        if isinstance(ev, Write):
            out.append(Write(mapping.get(id(ev.tensor), ev.tensor), ev.writer))
        else:
            out.append(ev)
    return out
