"""Module tree + rules -> an ordered list of writes, in MMEngine's priority order.

The planner walks the model exactly as MMEngine's ``init_weights`` would,
but instead of writing it emits events:

* :class:`Write` — "this rule writes this tensor";
* :class:`Call` — "run this user code here" (a user-defined ``init_weights``
  or an initializer that only defines ``__call__``); its effect cannot be
  known in advance, so writes before it that it could see are flushed first.

Everything is validated while planning (config entries, override names and
patterns, tensor shapes, checkpoint files and keys), so a bad config raises
before a single tensor is touched. The engine then keeps only the last write
of each tensor between calls: each tensor is written once.

:func:`plan` exposes the result without executing it; it reads no tensor
values, so it works on a model whose parameters live on the ``meta`` device.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .checkpoint.loader import LoadReport, load_pretrained_state
from .config import Rule, module_label, parse_init_cfg
from .errors import (
    CheckpointMismatchError,
    InitError,
    InitTypeError,
    OverrideTargetError,
    ShapeError,
)
from .registry import is_model_wrapper
from .rules import BaseInit, PretrainedInit, layer_matches

logger = logging.getLogger("weightinit")

ROLES = ("weight", "bias")


@dataclass(frozen=True)
class Writer:
    """Who writes a tensor: a rule (weight or bias role) or a checkpoint entry."""

    init: Any
    role: str
    where: str
    key: str | None = None
    source: Any = None  # a CheckpointState, for checkpoint writes
    module: nn.Module | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return "pretrained" if isinstance(self.init, PretrainedInit) else "rule"

    @property
    def info(self) -> str:
        return self.init._get_init_info()

    @property
    def declared_in(self) -> str:
        if self.kind == "pretrained":
            return f"checkpoint {self.init.checkpoint} key {self.key} ({self.where})"
        return self.where

    @property
    def group(self) -> int | None:
        return None if self.source is not None else self.init.group(self.module)

    def elementwise(self, shape: tuple[int, ...]) -> Any:
        """The rule's per-element distribution for this tensor, or ``None`` (see BaseInit)."""
        if self.source is not None or not hasattr(self.init, "elementwise"):
            return None
        return self.init.elementwise(self.role, shape, self.module)

    def value(self) -> Tensor:
        """The checkpoint tensor this writer copies (read from the file on first use)."""
        return self.source.get(self.key)

    def write(self, tensor: Tensor) -> None:
        if self.source is not None:
            value = self.value()
            if value.data_ptr() != tensor.data_ptr():  # adopted storage is already in place
                tensor.copy_(value)
        elif self.role == "bias":
            self.init.init_bias(tensor)
        else:
            self.init.fill_weight(tensor, self.module)


@dataclass(frozen=True)
class Write:
    tensor: Tensor
    writer: Writer


@dataclass(frozen=True)
class Call:
    """User code run at this point: ``init_weights`` of ``module``, or an initializer."""

    module: nn.Module
    path: str
    init: Any = None
    whole: bool = False
    where: str = ""

    @property
    def info(self) -> str:
        if self.init is None:
            return f"user-defined init_weights in {type(self.module).__name__}"
        get = getattr(self.init, "_get_init_info", None)
        return get() if callable(get) else repr(self.init)


def is_plain_base_module(module: nn.Module) -> bool:
    """A BaseModule whose ``init_weights`` is ours, so its effect can be planned."""
    from .module import BaseModule

    return (isinstance(module, BaseModule)
            and type(module).init_weights is BaseModule.init_weights
            and "init_weights" not in vars(module))


def _post_order(module: nn.Module) -> list[nn.Module]:
    # The order of ``nn.Module.apply``: children first, then the module itself.
    out: list[nn.Module] = []
    seen: set[int] = set()

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if id(child) not in seen:
                seen.add(id(child))
                visit(child)
        out.append(m)

    visit(module)
    return out


def _state_tensors(module: nn.Module) -> dict[str, Tensor]:
    """What ``load_state_dict`` can write: parameters and persistent buffers, all aliases."""
    out: dict[str, Tensor] = {}
    for prefix, m in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, p in m._parameters.items():
            if p is not None:
                out[dot + name] = p
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent_buffers_set:
                out[dot + name] = b
    return out


class Planner:
    """Turns ``init_weights()`` of a module tree, or ``initialize()``, into events."""

    def __init__(self, root: nn.Module, cache: dict | None = None, validate_only: bool = False):
        self.root = root
        self.cache = cache if cache is not None else {}
        self.validate_only = validate_only
        self.events: list[Write | Call] = []
        self.visited: list[nn.Module] = []
        self.loads: list[LoadReport] = []
        self._paths: dict[int, str] | None = None
        self._orders: dict[int, list[nn.Module]] = {}

    # -- naming ---------------------------------------------------------------
    def path(self, module: nn.Module) -> str:
        if self._paths is None:
            self._paths = {id(m): n for n, m in self.root.named_modules()}
        return self._paths.get(id(module), "?")

    def label(self, module: nn.Module) -> str:
        return module_label(self.path(module), type(module).__name__)

    def rules_of(self, module: nn.Module) -> tuple[Rule, ...]:
        key = ("rules", id(module))
        if key not in self.cache:
            self.cache[key] = (module, parse_init_cfg(module.init_cfg, self.path(module),
                                                      type(module).__name__, cache=self.cache))
        return self.cache[key][1]

    # -- BaseModule.init_weights ---------------------------------------------
    def plan_init_weights(self, module: nn.Module) -> None:
        """Events of ``BaseModule.init_weights(module)``: own rules, children, Pretrained."""
        self.visited.append(module)
        rules = self.rules_of(module) if module.init_cfg else ()
        for rule in rules:
            if not rule.late:
                self.apply_rule(module, rule)
        for child in module.children():
            target = child
            if is_model_wrapper(target) and not hasattr(target, "init_weights"):
                target = target.module
            if not hasattr(target, "init_weights"):
                if not self.validate_only:
                    self._warn_unreached(target)
                continue
            if getattr(target, "is_init", False) or any(target is v for v in self.visited):
                continue
            if is_plain_base_module(target):
                self.plan_init_weights(target)
            else:
                self.events.append(Call(target, self.path(target)))
        for rule in rules:
            if rule.late:
                self.apply_rule(module, rule)

    def validate_tree(self, module: nn.Module) -> None:
        """Check the init_cfg of every BaseModule under ``module`` that planning did not reach.

        Those are modules under user code (which may call their init_weights)
        or under plain containers. Checking them now means a bad config
        anywhere in the tree fails before any write.
        """
        from .module import BaseModule

        planned = {id(m) for m in self.visited}
        checker = Planner(self.root, self.cache, validate_only=True)
        checker._paths = self._paths
        for m in module.modules():
            if isinstance(m, BaseModule) and m.init_cfg and not m.is_init and id(m) not in planned:
                for rule in checker.rules_of(m):
                    checker.apply_rule(m, rule)

    def _warn_unreached(self, container: nn.Module) -> None:
        from .module import BaseModule

        for m in container.modules():
            if isinstance(m, BaseModule) and m.init_cfg and not m.is_init:
                logger.warning(
                    "%s: its init_cfg is never applied, because %s has no init_weights. "
                    "Fix: use weightinit.Sequential/ModuleList/ModuleDict for the container, "
                    "or call init_weights of the module yourself.",
                    self.label(m), self.label(container))
                return

    # -- initialize() -----------------------------------------------------------
    def plan_rules(self, module: nn.Module, rules: tuple[Rule, ...]) -> None:
        """Events of ``initialize(module, init_cfg)``: rules in order, no reordering."""
        for rule in rules:
            self.apply_rule(module, rule)

    # -- one rule ---------------------------------------------------------------
    def apply_rule(self, module: nn.Module, rule: Rule) -> None:
        self.apply_init(module, rule.init, whole=bool(getattr(rule.init, "wholemodule", False)),
                        where=rule.where)
        for ov in rule.overrides:
            for target in self.resolve_override(module, ov.name, ov.location):
                self.apply_init(target, ov.init, whole=True, where=ov.location)

    def resolve_override(self, module: nn.Module, name: str, where: str) -> list[nn.Module]:
        """Submodules named by an override: a child, a dotted path, or a glob pattern."""
        if any(ch in name for ch in "*?["):
            parts = name.split(".")
            found = [m for n, m in module.named_modules() if n and len(n.split(".")) == len(parts)
                     and all(fnmatch.fnmatchcase(s, p) for s, p in zip(n.split("."), parts))]
            if not found:
                raise OverrideTargetError(
                    f"{where}: pattern {name!r} matches no submodule of "
                    f"{type(module).__name__}; children are: {self._children(module)}. Fix: "
                    "correct the pattern (segments are matched one by one, '*' is one name).")
            return found
        target: Any = module
        walked = []
        for part in name.split("."):
            child = target._modules.get(part) if isinstance(target, nn.Module) else None
            if child is None:
                if isinstance(target, nn.Module) and hasattr(target, part) and isinstance(
                        getattr(target, part), torch.Tensor):
                    raise OverrideTargetError(
                        f"{where}: {name!r} is a tensor, not a submodule; an override "
                        "initializes the weights and biases inside a submodule. Fix: name the "
                        "submodule that owns it.")
                base = ".".join(walked)
                owner = f"{type(module).__name__}" + (f".{base}" if base else "")
                raise OverrideTargetError(
                    f"{where}: module did not have attribute {part!r}: no submodule "
                    f"{part!r} in {owner}; children are: {self._children(target)}. Fix: use one "
                    "of those names, a dotted path, or a glob pattern.")
            walked.append(part)
            target = child
        return [target]

    @staticmethod
    def _children(module: Any) -> str:
        names = [n for n, _ in module.named_children()] if isinstance(module, nn.Module) else []
        return ", ".join(names) if names else "(none)"

    def _order(self, module: nn.Module) -> list[nn.Module]:
        order = self._orders.get(id(module))
        if order is None:
            order = self._orders[id(module)] = _post_order(module)
        return order

    def apply_init(self, target: nn.Module, init: Any, whole: bool, where: str) -> None:
        if isinstance(init, PretrainedInit):
            self.apply_pretrained(target, init, where)
            return
        if not (isinstance(init, BaseInit) and init.plannable):
            if not callable(init):
                raise InitTypeError(f"{where}: {type(init).__name__} is not callable")
            self.events.append(Call(target, self.path(target), init=init, whole=whole,
                                    where=where))
            return
        layers = init.layer
        itself = getattr(init, "targets_itself", False) and not layers
        try:
            if itself:
                for role, t in init.module_targets(target):
                    self._emit(init, role, t, target, where)
            elif layers or whole:
                for m in self._order(target):
                    if whole or layer_matches(m, layers):
                        for role, t in init.module_targets(m):
                            self._emit(init, role, t, m, where)
        except ShapeError:
            raise
        except InitError as err:
            raise type(err)(f"{where}: {err}") from err
        if init.param:
            for name, m, t in self.resolve_params(target, init.param, where):
                self._emit(init, "param", t, m, where, name)
        stage = init.stage(target)
        if stage is not None:
            self.events.append(Call(target, self.path(target), init=stage, where=where))

    def _emit(self, init: BaseInit, role: str, t: Tensor, m: nn.Module, where: str,
              name: str | None = None) -> None:
        if role != "bias":
            try:
                init.check_weight(tuple(t.shape))
            except InitError as err:
                what = f"{self.label(m)}.{name.rsplit('.', 1)[-1] if name else role}"
                raise ShapeError(f"{where}: {type(init).__name__} cannot initialize {what}: "
                                 f"{err}. Fix: restrict 'layer'/'param' to tensors it fits, or "
                                 "use another rule for this one.") from err
        if not self.validate_only:
            self.events.append(Write(t, Writer(init, role, where, module=m)))

    def resolve_params(self, module: nn.Module, patterns: list[str], where: str
                       ) -> list[tuple[str, nn.Module, Tensor]]:
        """Parameters of ``module`` whose relative name matches one of ``patterns``."""
        found = []
        owners = dict(module.named_modules())
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if any(fnmatch.fnmatchcase(name, pat) or ("." not in pat and
                                                     fnmatch.fnmatchcase(leaf, pat))
                   for pat in patterns):
                owner = owners[name.rsplit(".", 1)[0]] if "." in name else module
                found.append((name, owner, p))
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(n, pat) or ("." not in pat and fnmatch.fnmatchcase(
                    n.rsplit(".", 1)[-1], pat)) for n, _, _ in found):
                names = [n for n, _ in module.named_parameters()]
                sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise OverrideTargetError(
                    f"{where}: param pattern {pat!r} matches no parameter of "
                    f"{self.label(module)}; its parameters are: {sample or '(none)'}. Fix: "
                    "correct the pattern ('*' matches any characters, dots included).")
        return found

    def apply_pretrained(self, target: nn.Module, init: PretrainedInit, where: str) -> None:
        key = ("ckpt", init.checkpoint, init.prefix, str(init.map_location), init.allow_pickle,
               init.revise_keys, init.sha256)
        if key not in self.cache:
            self.cache[key] = load_pretrained_state(init, where)
        state = self.cache[key]
        slots = _state_tensors(target)
        report = LoadReport(init.checkpoint)
        writes = []
        for k in state.keys():
            slot = slots.get(k)
            if slot is None or not state.is_tensor(k):
                report.unexpected.append(k)
            elif tuple(slot.shape) != state.shape(k):
                report.mismatched.append((k, state.shape(k), tuple(slot.shape)))
            else:
                report.loaded.append(k)
                writes.append(Write(slot, Writer(init, "checkpoint", where, key=k,
                                                 source=state)))
        report.missing = [k for k in slots if k not in state and "num_batches_tracked" not in k]
        label = self.label(target)
        fix = ("Fix: set prefix= or revise_keys= so the checkpoint's keys match the model's, "
               "or check that this is the right checkpoint.")
        if not report.loaded:
            raise CheckpointMismatchError(
                f"{where}: no key of {init.checkpoint} matches {label}: checkpoint keys "
                f"start {', '.join(state.keys()[:5]) or '(none)'}; the module's start "
                f"{', '.join(list(slots)[:5]) or '(none)'}. {fix}")
        if init.mismatch == "error" and report.mismatched:
            raise CheckpointMismatchError(f"{where}: shape mismatch loading {init.checkpoint} "
                                          f"into {label}: {report}. Fix: use mismatch='skip' to "
                                          "leave those tensors to the other rules.")
        if init.strict and (report.missing or report.unexpected):
            raise CheckpointMismatchError(f"{where}: strict load of {init.checkpoint} into "
                                          f"{label}: {report}. {fix}")
        if self.validate_only:
            return
        self.events.extend(writes)
        self.loads.append(report)
        if report.unexpected or report.missing or report.mismatched:
            logger.warning("%s: loading into %s: %s", where, label, report)


Step = list[tuple[Tensor, Writer]] | Call


def subtree_tensors(module: nn.Module) -> list[Tensor]:
    """Parameters and buffers a user call on ``module`` can see."""
    return list(module.parameters()) + list(module.buffers())


def schedule(events: list[Write | Call]) -> list[Step]:
    """Keep only the last write of each tensor between the user calls that can see it.

    Returns batches of writes (each tensor at most once per batch) and calls,
    in execution order: before a call, the pending writes inside its subtree
    are flushed so the user code sees them; everything else waits to the end.
    """
    pending: dict[int, tuple[Tensor, Writer]] = {}
    steps: list[Step] = []
    for ev in events:
        if isinstance(ev, Write):
            key = id(ev.tensor)
            pending.pop(key, None)
            pending[key] = (ev.tensor, ev.writer)
            continue
        batch = [pending.pop(id(t)) for t in subtree_tensors(ev.module) if id(t) in pending]
        if batch:
            steps.append(batch)
        steps.append(ev)
    if pending:
        steps.append(list(pending.values()))
    return steps


# ------------------------------------------------------------------ public plan


@dataclass(frozen=True)
class PlanEntry:
    """Who writes one tensor, in order; the last one owns it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    writers: tuple[Writer | Call, ...] = ()

    @property
    def owner(self) -> Writer | Call | None:
        return self.writers[-1] if self.writers else None

    @property
    def owner_info(self) -> str:
        owner = self.owner
        if owner is None:
            return "not changed (keeps its value from construction)"
        if getattr(owner, "kind", None) == "unchanged":
            return owner.declared_in
        if isinstance(owner, Call):
            before = [w for w in self.writers[:-1] if isinstance(w, Writer)]
            prior = f"; before it: {before[-1].info}" if before else ""
            return f"{owner.info} (runs user code{prior})"
        return owner.info

    @property
    def declared_in(self) -> str:
        owner = self.owner
        if owner is None:
            return "PyTorch default"
        return owner.where if isinstance(owner, Call) and owner.where else (
            owner.info if isinstance(owner, Call) else owner.declared_in)


@dataclass
class Plan:
    """The resolved plan: every parameter's writers and final owner, nothing written."""

    root: str
    entries: dict[str, PlanEntry]
    buffers: dict[str, PlanEntry] = field(default_factory=dict)
    events: list[Write | Call] = field(default_factory=list, repr=False)
    #: meta tensors with no default value, and why (materializing raises unless covered)
    undefined: list[tuple[str, str]] = field(default_factory=list)

    def __getitem__(self, name: str) -> PlanEntry:
        return self.entries[name]

    def __iter__(self) -> Iterator[PlanEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def owners(self) -> dict[str, str]:
        """Parameter name -> text of the rule that finally owns it."""
        return {n: e.owner_info for n, e in self.entries.items()}

    @property
    def naive_writes(self) -> int:
        """Tensor writes an eager, write-every-rule execution would make."""
        return sum(isinstance(e, Write) for e in self.events)

    @property
    def planned_writes(self) -> int:
        """Tensor writes the engine will make (each tensor once between user calls)."""
        return sum(len(step) for step in schedule(self.events) if isinstance(step, list))

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "parameters": [
            {"name": e.name, "shape": list(e.shape), "dtype": e.dtype, "owner": e.owner_info,
             "declared_in": e.declared_in, "writers": len(e.writers)}
            for e in self.entries.values()]}

    def __str__(self) -> str:
        lines = [f"Plan for {self.root}: {len(self.entries)} parameters, "
                 f"{self.planned_writes} writes (an eager run makes {self.naive_writes})"]
        for e in self.entries.values():
            lines.append(f"  {e.name} {tuple(e.shape)}: {e.owner_info}  [{e.declared_in}]")
        return "\n".join(lines)


def build_plan(root: nn.Module, events: list[Write | Call],
               undefined: list[tuple[str, str]] | None = None) -> Plan:
    """Fold events into per-tensor writer lists (a Call reaches its whole subtree)."""
    writers: dict[int, list[Writer | Call]] = {}
    for ev in events:
        if isinstance(ev, Write):
            writers.setdefault(id(ev.tensor), []).append(ev.writer)
        else:
            for t in subtree_tensors(ev.module):
                writers.setdefault(id(t), []).append(ev)

    def entry(name: str, t: Tensor) -> PlanEntry:
        return PlanEntry(name, tuple(t.shape), str(t.dtype).replace("torch.", ""),
                         tuple(writers.get(id(t), ())))

    params = {n: entry(n, p) for n, p in root.named_parameters()}
    buffers = {n: entry(n, b) for n, b in root.named_buffers() if id(b) in writers}
    return Plan(type(root).__name__, params, buffers, list(events), list(undefined or []))


def plan(model: nn.Module, init_cfg: Any = None) -> Plan:
    """Resolve which rule finally owns each parameter, without writing anything.

    With ``init_cfg=None`` the model's own ``init_cfg`` tree is planned (what
    ``model.init_weights()`` would do); otherwise what
    ``initialize(model, init_cfg)`` would do. Reads no tensor values, so it
    works on ``meta`` parameters. Raises the same errors the real run would.

    Example::

        >>> p = weightinit.plan(model)
        >>> p['head.fc.weight'].owner_info
        'NormalInit: mean=0, std=0.01, bias=0'
    """
    from .module import BaseModule

    if not isinstance(model, nn.Module):
        raise InitTypeError(f"plan: model must be an nn.Module, got {type(model).__name__}")
    planner = Planner(model)
    if init_cfg is None:
        if not isinstance(model, BaseModule):
            raise InitTypeError(f"plan: {type(model).__name__} is not a weightinit.BaseModule, so "
                                "it has no init_cfg tree. Fix: pass init_cfg=... to plan it like "
                                "initialize(model, init_cfg).")
        if not model.is_init:
            planner.plan_init_weights(model)
    else:
        if not isinstance(init_cfg, (dict, list, tuple)):
            raise InitTypeError(f"init_cfg must be a dict or a list of dict, but got "
                                f"{type(init_cfg).__name__}")
        planner.plan_rules(model, parse_init_cfg(init_cfg, "", type(model).__name__))
    from .materialize import default_events, needs_materialization

    events: list[Write | Call] = list(planner.events)
    undefined: list[tuple[str, str]] = []
    if needs_materialization(model):
        defaults, undefined = default_events(model, {})
        events = list(defaults) + events
        covered = {id(ev.tensor) for ev in planner.events if isinstance(ev, Write)}
        tensors = dict(model.named_parameters())
        tensors.update(model.named_buffers())
        undefined = [(n, why) for n, why in undefined if id(tensors.get(n)) not in covered]
    return build_plan(model, events, undefined)
