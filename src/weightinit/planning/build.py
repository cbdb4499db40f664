"""The one planner: (model, configs or checkpoint, options) -> an immutable :class:`Plan`.

``plan()``, ``init_weights()``, ``initialize()`` and ``load_checkpoint()``
all call :func:`build_plan`, so a dry run raises exactly what the run would
raise, before any write. Planning opens checkpoint headers but writes and
allocates nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import InitTypeError, InitValueError, ShardingError, UndefinedParameterError
from ..rules import Rule
from .defaults import default_events, needs_materialization, slots_of, split_undefined
from .layout import check_layout, has_sharded, is_sharded
from .ops import UserCall
from .plan import Plan
from .tree import PlanningCache, Walker

logger = logging.getLogger("weightinit")


@dataclass(frozen=True)
class Request:
    """What to plan: ``init_weights()`` of ``target`` (``rules is None``) or ``rules`` on it."""

    target: nn.Module
    rules: tuple[Rule, ...] | None = None
    device: Any = None
    dtype: Any = None
    #: the outermost call of a run (nested ones come from user code inside it)
    outermost: bool = True
    #: list tensors nothing gives a value in the plan instead of raising (dry runs that report)
    allow_undefined: bool = False
    #: turn every :class:`~weightinit.errors.InitWarning` found while planning into its error
    strict: bool = False
    #: ``target``'s own ``init_weights`` is user code (an override) called from outside any
    #: run: the run is that one call (its ``super().init_weights()`` is planned when it runs)
    user_root: bool = False


def check_target(model: nn.Module, device: Any, dtype: Any) -> tuple[torch.device | None,
                                                                       torch.dtype | None]:
    """Validate ``device``/``dtype`` for materializing (or moving) ``model``."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InitTypeError(f"dtype must be a floating torch.dtype, got {dtype!r}. Fix: pass "
                            "e.g. dtype=torch.bfloat16, or leave it unset.")
    if device is None:
        return None, dtype
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InitValueError(f"device={device!r} is not a device: {err}. Fix: pass e.g. "
                             "'cpu' or 'cuda'.") from err
    if dev.type == "meta":
        real = any(t.device.type != "meta" for t in list(model.parameters())
                   + list(model.buffers()))
        what = "would throw away the values its tensors hold" if real else "holds no values"
        raise InitValueError(
            f"{type(model).__name__}: device='meta' {what}, so no rule could write anything. "
            "Fix: use plan() for a dry run on meta, or materialize on a real device.")
    return dev, dtype


def refuse_sharded_stages(events: list[Any]) -> None:
    """Data-driven steps (LSUV) need the whole model: refuse them before any write."""
    for ev in events:
        if isinstance(ev, UserCall) and ev.whole_model and has_sharded(ev.module):
            raise ShardingError(
                f"{ev.info} ({ev.where or ev.path or type(ev.module).__name__}) runs forward "
                f"passes over {type(ev.module).__name__}, whose parameters are sharded; it "
                "cannot run shard by shard. Nothing was written. Fix: initialize with this "
                "rule before sharding the model, or use a rule that is not data-driven.")


def build_plan(cache: PlanningCache, request: Request) -> Plan:
    """Plan ``request`` on ``cache.root``: validate everything, write nothing.

    Raises the library error the run would raise, before any allocation or write.
    """
    root, target = cache.root, request.target
    device, dtype = check_target(root, request.device, request.dtype)
    materialize = request.outermost and (device is not None or dtype is not None
                                         or needs_materialization(root, cache.flat().tensors))

    def dtype_of(t: Tensor) -> torch.dtype:
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    walker = Walker(cache, dtype_of, strict=request.strict or cache.strict)
    if request.user_root:  # what it plans is known when it calls super().init_weights()
        walker.events.append(UserCall(target, cache.path(target)))
    elif request.rules is None:
        if not target.is_init:
            walker.plan_init_weights(target)
            if request.outermost:
                walker.validate_tree(target)
    else:
        walker.plan_rules(target, request.rules)
    events: list[Any] = list(walker.events)
    undefined: list[tuple[str, str]] = []
    slots: list = []
    if request.outermost:
        refuse_sharded_stages(events)
    if materialize:
        slots = slots_of(root)
        for name, _, _, _, t in slots:
            if is_sharded(t):
                check_layout(t, device, name)
        defaults, missing = default_events(root, {}, slots)
        events = list(defaults) + events
        bad, left_to_user = split_undefined(missing, events, slots)
        if bad and not request.allow_undefined:
            raise UndefinedParameterError(
                f"{type(root).__name__}: {len(bad)} tensor(s) would be left without a defined "
                f"value: {'; '.join(f'{n} ({why})' for n, why in bad)}. Nothing was allocated. "
                "Fix: add an init_cfg rule that covers them (e.g. layer=<their module class>), "
                "give the module an init_weights method, or initialize them in the "
                "constructor.")
        if left_to_user:
            logger.warning("%s: %s have no default value; the user-defined init_weights over "
                           "them must write them.", type(root).__name__, ", ".join(left_to_user))
        reasons = dict(missing)
        undefined = bad + [(n, reasons[n]) for n in left_to_user]
    return Plan(type(root).__name__, root, tuple(events), tuple(walker.visited),
                tuple(walker.loads), tuple(undefined), materialize, device, dtype, tuple(slots))
