"""Walk a module tree in MMEngine's priority order and emit typed write events.

``init_weights()`` of a module that carries an ``init_cfg``:

1. its own non-late rules over its whole subtree;
2. ``init_weights()`` of each direct child that has one, skipping children
   whose ``is_init`` is set, looking through model wrappers' ``.module``; a
   plain BaseModule child is walked in place, user code becomes a
   :class:`~weightinit.planning.ops.UserCall`;
3. its late rules (``Pretrained``, data-driven rules).

Everything is validated while walking (config entries, override names and
patterns, tensor shapes and dtypes, checkpoint files and keys): a bad config
raises before any tensor is touched. What MMEngine accepts but is likely a mistake
(an ``init_cfg`` never applied or never checked, a ``layer`` name matching nothing,
skipped checkpoint keys) warns (``InitWarning``); ``strict`` raises. Linear in the tree size.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..checkpoint.loader import CheckpointState, LoadReport
from ..errors import (
    InitError,
    OverrideTargetError,
    ShapeError,
    UnappliedConfigWarning,
    UnmatchedLayerWarning,
    warn,
)
from ..rules import (
    BaseInit,
    Override,
    PretrainedInit,
    Rule,
    class_names,
    model_wrapper_classes,
    module_label,
)
from ..rules.parse import parse_init_cfg
from .checkpoints import match_checkpoint, warn_load
from .flat import Flat, Walks, walks_of
from .nodes import is_node, is_planned, post_order
from .ops import OpKind, Role, RuleFill, UserCall, user_call_key
from .plan import Event, Write


@dataclass
class PlanningCache:
    """What one initialization (outermost call and the nested ones) computes only once."""

    root: nn.Module
    #: module id -> (module, its parsed init_cfg)
    rules: dict[int, tuple[nn.Module, tuple[Rule, ...]]] = field(default_factory=dict)
    #: equal config entries share one initializer object (rules are values)
    initializers: dict = field(default_factory=dict)
    #: opened checkpoints, by what selects their keys
    checkpoints: dict[tuple, CheckpointState] = field(default_factory=dict)
    orders: dict[int, list[nn.Module]] = field(default_factory=dict)
    #: warnings raise their error (set for the whole session by its outermost call)
    strict: bool = False

    #: the tree under the root, walked once (:meth:`flat`)
    walks: Walks = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.walks = walks_of(self.root)

    def flat(self) -> Flat:
        """The root's modules, parameters and buffers, walked once until :meth:`restructured`."""
        return self.walks.flat()

    def restructured(self) -> None:
        """The tree changed (a slot was given another tensor, a module was added or removed,
        the model was materialized): the next question walks it again."""
        self.walks.restructured()

    def path(self, module: nn.Module) -> str:
        return self.flat().path(module)

    def label(self, module: nn.Module) -> str:
        return module_label(self.path(module), type(module).__name__)

    def order(self, module: nn.Module) -> list[nn.Module]:
        order = self.orders.get(id(module))
        if order is None:
            order = self.orders[id(module)] = post_order(module)
        return order


class Walker:
    """Emits the events of ``init_weights()`` or ``initialize()`` over one subtree."""

    def __init__(self, cache: PlanningCache, dtype_of: Callable[[Tensor], torch.dtype],
                 validate_only: bool = False, strict: bool = False) -> None:
        self.cache = cache
        self.dtype_of = dtype_of
        self.validate_only = validate_only
        self.strict = strict
        self.events: list[Event] = []
        self.visited: list[nn.Module] = []
        self._visited: set[int] = set()
        self.loads: list[LoadReport] = []
        self._wrappers = model_wrapper_classes()  # (a planning pass runs no registration)

    def rules_of(self, module: nn.Module) -> tuple[Rule, ...]:
        hit = self.cache.rules.get(id(module))
        if hit is None:
            hit = self.cache.rules[id(module)] = (module, parse_init_cfg(
                module.init_cfg, self.cache.path(module), type(module).__name__,
                cache=self.cache.initializers, strict=self.strict))
        return hit[1]

    # -- BaseModule.init_weights ---------------------------------------------------
    def plan_init_weights(self, module: nn.Module) -> None:
        """Events of ``init_weights()`` of ``module``: own rules, children, late rules."""
        if (walk := getattr(type(module).init_weights, "__weightinit_walk__", None)) is not None:
            return walk(self, module)  # another library's order (weightinit.mmcv: MMCV 1.x's)
        self.visited.append(module)
        self._visited.add(id(module))
        rules = self.rules_of(module) if module.init_cfg else ()
        for rule in rules:
            if not rule.late:
                self.apply_rule(module, rule)
        self.plan_children(module)
        for rule in rules:
            if rule.late:
                self.apply_rule(module, rule)

    def plan_children(self, module: nn.Module, unwrap: bool = True) -> None:
        """Each child's ``init_weights()`` as ``BaseModule`` calls it: a planned one walked,
        an overriding one run as user code, an initialized or visited one skipped, one without
        ``init_weights`` noted as unreached (``unwrap``: MMEngine's way — its model wrappers
        are looked through, an initialized child is skipped; without it, MMCV 1.x's: an
        initialized child's own ``init_weights`` runs again, a planned one only warns)."""
        for child in module.children():
            target = child
            if unwrap and not hasattr(target, "init_weights") and \
                    isinstance(target, self._wrappers):
                target = target.module
            if not hasattr(target, "init_weights"):
                if not self.validate_only:
                    self._warn_unreached(target)
                continue
            initialized = getattr(target, "is_init", False)
            if id(target) in self._visited or (initialized and (unwrap or is_planned(target))):
                continue
            if is_planned(target):
                self.plan_init_weights(target)
            else:
                self._visited.add(id(target))
                self.events.append(UserCall(target, self.cache.path(target), again=initialized))

    def validate_tree(self, module: nn.Module) -> None:
        """Check the init_cfg of every node under ``module`` the walk did not reach.

        Those are under user code (which may call their init_weights, which then plans and
        raises) or plain containers, where MMEngine never looks: a bad config warns (strict: raises).
        """
        checker = Walker(self.cache, self.dtype_of, validate_only=True, strict=self.strict)
        for m in self.cache.flat().subtree(module):
            if (is_node(m) and m.init_cfg and not m.is_init and id(m) not in self._visited
                    and is_planned(m)):  # an overriding init_weights owns its own init_cfg
                try:
                    for rule in checker.rules_of(m):
                        checker.apply_rule(m, rule)
                except InitError as err:
                    if self.strict:
                        raise
                    warn(UnappliedConfigWarning,
                         f"{err} (not raised yet: {self.cache.label(m)} sits under a plain "
                         "container or a user-defined init_weights, so this init_cfg is only "
                         "applied, and then raises, if user code calls its init_weights; "
                         "strict=True raises it now)")

    def _warn_unreached(self, container: nn.Module) -> None:
        if not container._modules and not is_node(container):  # a leaf (Linear, ...)
            return
        for m in self.cache.flat().subtree(container):
            if is_node(m) and m.init_cfg and not m.is_init:
                if self.strict:  # a bad config there raises its own, more precise error first
                    self.validate_tree(container)
                warn(UnappliedConfigWarning,
                     f"{self.cache.label(m)}: its init_cfg is never applied, because "
                     f"{self.cache.label(container)} has no init_weights. Fix: use "
                     "weightinit.Sequential/ModuleList/ModuleDict for the container, or call "
                     "init_weights of the module yourself.", strict=self.strict)
                return

    # -- initialize() ------------------------------------------------------------------
    def plan_rules(self, module: nn.Module, rules: tuple[Rule, ...]) -> None:
        """Events of ``initialize(module, init_cfg)``: rules in order, no reordering."""
        for rule in rules:
            self.apply_rule(module, rule)

    # -- one rule --------------------------------------------------------------------------
    def apply_rule(self, module: nn.Module, rule: Rule) -> None:
        self.apply_init(module, rule, rule.init,
                        whole=bool(getattr(rule.init, "wholemodule", False)), where=rule.where)
        for ov in rule.overrides:
            for target in self.resolve_override(module, ov.name, ov.location):
                self.apply_init(target, ov, ov.init, whole=True, where=ov.location)

    def resolve_override(self, module: nn.Module, name: str, where: str) -> list[nn.Module]:
        """Submodules named by an override: a child, a dotted path, or a per-segment glob."""
        if any(ch in name for ch in "*?["):
            parts = name.split(".")
            found = [m for n, m in module.named_modules() if n and len(n.split(".")) == len(parts)
                     and all(fnmatch.fnmatchcase(s, p) for s, p in zip(n.split("."), parts))]
            if not found:
                raise OverrideTargetError(
                    f"{where}: pattern {name!r} matches no submodule of "
                    f"{type(module).__name__}; children are: {_children(module)}. Fix: "
                    "correct the pattern (override names match segment by segment: '*' is "
                    "one name, never a dot, e.g. 'blocks.*.attn').")
            return found
        target: Any = module
        walked = []
        for part in name.split("."):
            child = target._modules.get(part) if isinstance(target, nn.Module) else None
            if child is None and isinstance(target, nn.Module):
                # as MMEngine: any attribute holding a module (MMDetection's ResNet blocks name
                # their norms by properties, ``norm3`` -> ``bn3``)
                attr = getattr(target, part, None)
                child = attr if isinstance(attr, nn.Module) else None
            if child is None:
                if isinstance(target, nn.Module) and isinstance(getattr(target, part, None),
                                                                Tensor):
                    raise OverrideTargetError(
                        f"{where}: {name!r} is a tensor, not a submodule; an override "
                        "initializes the weights and biases inside a submodule. Fix: name the "
                        "submodule that owns it.")
                base = ".".join(walked)
                owner = f"{type(module).__name__}" + (f".{base}" if base else "")
                raise OverrideTargetError(
                    f"{where}: module did not have attribute {part!r}: no submodule "
                    f"{part!r} in {owner}; children are: {_children(target)}. Fix: use one "
                    "of those names, a dotted path, or a glob pattern ('*' is one name).")
            walked.append(part)
            target = child
        return [target]

    def apply_init(self, target: nn.Module, rule: Rule | Override, init: Any, whole: bool,
                   where: str) -> None:
        if isinstance(init, PretrainedInit):
            self.apply_pretrained(target, init, where)
            return
        if not (isinstance(init, BaseInit) and init.plannable):
            if not self.validate_only:
                self.events.append(UserCall(
                    target, self.cache.path(target), init=init, whole=whole, where=where,
                    seed_key=user_call_key(init, rule.seed_key), record_kind=_record_kind(init)))
            return
        layers = init.layer
        itself = init.targets_itself and not layers
        try:
            if itself:
                for role, t in init.module_targets(target):
                    self._emit(init, role, t, target, where)
            elif layers or whole:
                hits: dict[type, bool] = {}  # per class: does it match ``layers``
                matched: set[str] = set()
                for m in self.cache.order(target):
                    hit = hits.get(type(m))
                    if hit is None and not whole:
                        found = class_names(type(m)).intersection(layers)
                        matched |= found
                        hit = hits[type(m)] = bool(found)
                    if whole or hit:
                        for role, t in init.module_targets(m):
                            self._emit(init, role, t, m, where)
        except ShapeError:
            raise
        except InitError as err:
            raise type(err)(f"{where}: {err}") from err
        if layers and not whole and not itself and not self.validate_only:
            self._warn_unmatched(target, init, layers, matched, hits, where)
        if init.param:
            for name, m, t in self.resolve_params(target, init.param, where):
                self._emit(init, "param", t, m, where, name)
        stage = init.stage(target)
        if stage is not None and not self.validate_only:
            self.events.append(UserCall(
                target, self.cache.path(target), init=stage, where=where,
                seed_key=f"user|{init.seed_key}|stage", rule=init, record_kind=_record_kind(init),
                whole_model=True))

    def _warn_unmatched(self, target: nn.Module, init: BaseInit, layers: Any, matched: set[str],
                        classes: dict[type, bool], where: str) -> None:
        """Warn about ``layer`` names matching no module (nor base class) under ``target``.

        If no name matches, each warns; if some do (``layer=['_BatchNorm', 'GroupNorm']`` is a
        common catch-all), only one that differs from a class there in case alone. ``classes``
        are the subtree's classes, collected by the rule's own walk.
        """
        lower = {n.lower(): n for n in sorted(set().union(*map(class_names, classes)),
                                              reverse=True) if n != "object"}
        wanted = [n for n in dict.fromkeys(layers) if n not in matched
                  and (not matched or n.lower() in lower)]
        if not wanted:
            return
        parts = []
        for name in wanted:
            close = [lower[name.lower()]] if name.lower() in lower else [
                lower[c] for c in difflib.get_close_matches(name.lower(), list(lower), n=3)]
            hint = (f"did you mean {close[0]!r}?" if len(close) == 1 else
                    f"did you mean one of {', '.join(map(repr, close))}?" if close else "")
            parts.append(f"{name!r}" + (f" ({hint})" if hint else ""))
        own = sorted({cls.__name__ for cls in classes})
        warn(UnmatchedLayerWarning,
             f"{where}: {type(init).__name__} layer {', '.join(parts)} "
             f"{'matches' if len(parts) == 1 else 'match'} no module of "
             f"{self.cache.label(target)} (classes there: {', '.join(own[:10])}"
             f"{', ...' if len(own) > 10 else ''}), so the rule initializes nothing by that name "
             "(MMEngine accepts this silently). Fix: spell the class name exactly (case "
             "matters; a base class name also matches), or remove it.", strict=self.strict)

    def _emit(self, init: BaseInit, role: str, t: Tensor, m: nn.Module, where: str,
              name: str | None = None) -> None:
        try:
            init.check_fill(role, tuple(t.shape), self.dtype_of(t), m)
        except InitError as err:
            what = f"{self.cache.label(m)}.{name.rsplit('.', 1)[-1] if name else role}"
            raise ShapeError(f"{where}: {type(init).__name__} cannot initialize {what}: "
                             f"{err}. Fix: restrict 'layer'/'param' to tensors it fits, or "
                             "use another rule for this one.") from err
        if not self.validate_only:
            r = Role(role)
            self.events.append(Write(t, RuleFill(init, r, m, where)))

    def resolve_params(self, module: nn.Module, patterns: list[str], where: str
                       ) -> list[tuple[str, nn.Module, Tensor]]:
        """Parameters whose relative name matches a pattern (fnmatch, ``*`` crosses dots)."""
        def hit(name: str, pat: str) -> bool:
            return fnmatch.fnmatchcase(name, pat) or (
                "." not in pat and fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], pat))

        found = []
        owners = dict(module.named_modules())
        for name, p in module.named_parameters():
            if any(hit(name, pat) for pat in patterns):
                owner = owners[name.rsplit(".", 1)[0]] if "." in name else module
                found.append((name, owner, p))
        for pat in patterns:
            if not any(hit(n, pat) for n, _, _ in found):
                names = [n for n, _ in module.named_parameters()]
                sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise OverrideTargetError(
                    f"{where}: param pattern {pat!r} matches no parameter of "
                    f"{self.cache.label(module)}; its parameters are: {sample or '(none)'}. "
                    "Fix: correct the pattern (param patterns match the whole dotted name: "
                    "'*' matches any characters, dots included).")
        return found

    def apply_pretrained(self, target: nn.Module, init: PretrainedInit, where: str) -> None:
        if self.validate_only:  # not reached: its file is opened only if user code calls it
            return
        writes, report = match_checkpoint(target, init, where, self.cache.checkpoints,
                                          self.cache.label(target), self.dtype_of)
        warn_load(where, self.cache.label(target), report, self.strict)
        self.events.extend(writes)
        self.loads.append(report)


def _record_kind(init: Any) -> OpKind:
    return OpKind.RULE if isinstance(init, BaseInit) and init.plannable else OpKind.INITIALIZER


def _children(module: Any) -> str:
    names = [n for n, _ in module.named_children()] if isinstance(module, nn.Module) else []
    return ", ".join(names) if names else "(none)"


__all__ = ["PlanningCache", "Walker"]
