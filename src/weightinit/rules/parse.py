"""``init_cfg`` -> validated :class:`Rule` values, each knowing where it was declared.

Everything about the *shape* of a config is checked here (types, ``type``
names, constructor arguments, ``override`` entries), with MMEngine's
exception classes and messages that say which entry of which module is wrong
and how to fix it. Whether a rule fits the model (override names, tensor
shapes, checkpoint keys) is checked by the planner.

Before any of that, the config's nesting is checked without recursion
(:func:`~weightinit.rules.nesting.check_nesting`), so the recursive copies,
``repr`` and seed keys after it can not exhaust Python's stack.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ..errors import (
    ConfigEntryTypeError,
    ConfigStructureError,
    EmptyRuleWarning,
    InitError,
    InitKeyError,
    InitTypeError,
    OverrideError,
    warn,
)
from .base import BaseInit
from .keys import canonical
from .nesting import MAX_DEPTH as MAX_DEPTH  # re-exported: tests import it from here
from .nesting import check_nesting
from .pretrained import PretrainedInit
from .registry import WEIGHT_INITIALIZERS, registered_name


def module_label(path: str, cls_name: str) -> str:
    """How errors and records name a module: ``'backbone.layer1 (ResLayer)'``."""
    return f"{path or '<root>'} ({cls_name})"


@dataclass(frozen=True)
class Override:
    """One ``override`` entry: a submodule name/path/glob and the rule applied to all of it."""

    name: str
    init: Any
    location: str
    #: the arguments the rule was built from
    args: dict = field(default_factory=dict)

    @property
    def seed_key(self) -> str:
        """Canonical identity of the rule (seeds key on it, never on display text)."""
        return cfg_seed_key(self.init, self.args)


@dataclass(frozen=True)
class Rule:
    """One validated ``init_cfg`` entry of one module."""

    init: Any
    cfg: dict
    location: str
    owner: str
    owner_class: str
    overrides: tuple[Override, ...] = ()

    @property
    def seed_key(self) -> str:
        """Canonical identity of the rule (seeds key on it, never on display text); computed
        only when a seeded run or user code needs it."""
        return cfg_seed_key(self.init, self.cfg)

    @property
    def pretrained(self) -> bool:
        return isinstance(self.init, PretrainedInit)

    @property
    def late(self) -> bool:
        """Applied after the declaring module's children: Pretrained and data-driven rules."""
        return self.pretrained or bool(getattr(self.init, "late", False))

    @property
    def where(self) -> str:
        return f"{module_label(self.owner, self.owner_class)} {self.location}"


def _plain_copy(value: Any) -> Any:
    """Deep copy of config data; scalars, strings and classes are shared (they are immutable)."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool, type, tuple)):
        return value
    return copy.deepcopy(value)


@functools.cache
def _accepted_args(cls: type) -> frozenset[str] | None:
    """Keyword arguments a class accepts, following ``**kwargs`` up the MRO (None: any)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        except (TypeError, ValueError):
            return None
        more = False
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                more = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                names.add(p.name)
        if not more:
            return frozenset(names)
    return None


def build_initializer(cfg: dict, where: str, cache: dict | None = None) -> Any:
    """Build a rule object from one config dict; errors say ``where`` it came from.

    With ``cache``, equal configs share one rule object (rules are values).
    """
    check_nesting(cfg, where)  # repr and the copies below recurse
    key = None
    if cache is not None:
        try:
            key = ("init", repr(cfg))
        except Exception:  # an argument whose repr fails: just do not share
            key = None
        if key is not None and key in cache:
            return cache[key]
    init = _build_initializer(cfg, where)
    if key is not None and getattr(init, "plannable", False):
        cache[key] = init  # only planned rules: user initializers get mutated when called
    return init


def _build_initializer(cfg: dict, where: str) -> Any:
    args = _plain_copy(cfg)
    if "type" not in args:
        raise InitKeyError(f"{where}: no 'type' key in {cfg}. Fix: add type=<initializer name>, "
                           f"one of {', '.join(sorted(WEIGHT_INITIALIZERS.module_dict))}.")
    given = args.pop("type")
    cls = WEIGHT_INITIALIZERS.resolve(given, where=f"{where}: ")
    _check_initializer_type(cls, given, where)
    accepted = _accepted_args(cls) if inspect.isclass(cls) else None
    if accepted is not None:
        for key in args:
            if key not in accepted:
                close = difflib.get_close_matches(key, sorted(accepted), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise InitTypeError(
                    f"{where}: {getattr(cls, '__name__', cls)} got an unexpected argument "
                    f"{key!r}.{hint} Accepted: {', '.join(sorted(accepted))}.")
    try:
        init = cls(**args)
    except InitError as err:
        raise type(err)(f"{where}: {err}") from err
    except (TypeError, ValueError, KeyError) as err:
        raise InitTypeError(f"{where}: cannot build {getattr(cls, '__name__', cls)} from "
                            f"{cfg}: {err}") from err
    if isinstance(init, nn.Module) or not callable(init):
        what = "an nn.Module" if isinstance(init, nn.Module) else "not callable"
        raise InitTypeError(
            f"{where}: type={_type_text(given)} built a {type(init).__name__}, which is {what}: "
            f"not a weight initializer. {_TYPE_FIX}")
    return init


_TYPE_FIX = ("Fix: use a registered rule name (e.g. 'Kaiming', 'Normal', 'Constant'), or "
             "register your own with @WEIGHT_INITIALIZERS.register_module(): a class deriving "
             "from BaseInit that implements init_weight (or weight_dist).")


def _type_text(given: Any) -> str:
    return repr(given) if isinstance(given, str) else getattr(given, "__qualname__", repr(given))


def _defines_call(cls: type) -> bool:
    """True if instances of ``cls`` are callable (a ``__call__`` somewhere in its MRO)."""
    return any("__call__" in vars(klass) for klass in cls.__mro__ if klass is not object)


def _is_registered(obj: Any, given: Any = None) -> bool:
    """Registered with us, or found for ``given`` through a registry lookup (MMEngine's)."""
    return (any(v is obj for v in WEIGHT_INITIALIZERS.module_dict.values())
            or (given is not None and WEIGHT_INITIALIZERS.from_lookups(given) is obj))


def _check_initializer_type(cls: Any, given: Any, where: str) -> None:
    """Raise :class:`InitTypeError` unless ``cls`` builds a weight initializer.

    Accepted: a :class:`BaseInit` subclass (not ``BaseInit`` itself) that implements a
    fill (``init_weight``/``weight_dist``) or its own ``__call__``; :class:`PretrainedInit`;
    any other class or function registered in :data:`WEIGHT_INITIALIZERS` whose instances
    are callable. Never an ``nn.Module`` subclass.
    """
    def reject(why: str) -> None:
        raise InitTypeError(f"{where}: type={_type_text(given)} is not a weight initializer: "
                            f"{why}. {_TYPE_FIX}")

    if inspect.isclass(cls):
        if issubclass(cls, nn.Module):
            reject(f"{cls.__name__} is an nn.Module (a layer to initialize, not a rule)")
        if issubclass(cls, PretrainedInit):
            return
        if issubclass(cls, BaseInit):
            if cls is BaseInit:
                reject("BaseInit is the abstract base class of the rules")
            fills = (cls.init_weight is not BaseInit.init_weight
                     or cls.weight_dist is not BaseInit.weight_dist)
            if not fills and cls.__call__ is BaseInit.__call__:
                reject(f"{cls.__name__} derives from BaseInit but implements neither "
                       "init_weight nor weight_dist (nor its own __call__)")
            return
        if not _is_registered(cls, given):
            reject(f"{cls.__name__} neither derives from BaseInit nor is registered in "
                   "WEIGHT_INITIALIZERS")
        if not _defines_call(cls):
            reject(f"instances of {cls.__name__} are not callable (no __call__(module))")
        return
    if not _is_registered(cls, given):
        reject(f"{getattr(cls, '__qualname__', cls)!s} is a function that is not registered in "
               "WEIGHT_INITIALIZERS")


def cfg_seed_key(init: Any, cfg: dict) -> str:
    """The canonical identity of a built rule: for our rules their own ``seed_key``; for an
    initializer that only defines ``__call__``, its registered name and config arguments."""
    if isinstance(init, BaseInit):
        return init.seed_key
    kind = cfg.get("type")
    name = kind if isinstance(kind, str) else registered_name(kind) if isinstance(
        kind, type) else registered_name(type(init))
    args = {k: v for k, v in cfg.items() if k not in ("type", "layer", "param", "override")}
    return canonical(name, args)


def is_pretrained_cfg(cfg: dict) -> bool:
    t = cfg.get("type")
    return t == "Pretrained" or (inspect.isclass(t) and issubclass(t, PretrainedInit))


def _parse_overrides(override: Any, base: dict, where: str,
                     cache: dict | None) -> tuple[Override, ...]:
    if not isinstance(override, (dict, list, tuple)):
        raise InitTypeError(f"{where}.override: must be a dict or a list of dict, but got "
                            f"{type(override).__name__}")
    items = [override] if isinstance(override, dict) else list(override)
    out = []
    for j, item in enumerate(items):
        loc = f"{where}.override" + ("" if isinstance(override, dict) else f"[{j}]")
        if not isinstance(item, dict):
            raise InitTypeError(f"{loc}: must be a dict, got {type(item).__name__} ({item!r})")
        args = _plain_copy(item)
        name = args.pop("name", None)
        if name is None:
            raise OverrideError(f'{loc}: `override` must contain the key "name", but got {item}. '
                                "Fix: add name='<submodule>'.")
        if not isinstance(name, str):
            raise InitTypeError(f"{loc}: name must be a str, got {type(name).__name__}")
        if not args:
            args = dict(base)  # only a name: reuse the enclosing rule's type and arguments
        elif "type" not in args:
            raise OverrideError(f'{loc}: `override` need "type" key, but got {args}. Fix: add '
                                "type=..., or give only name to reuse the enclosing rule.")
        init = build_initializer(args, loc, cache)
        out.append(Override(name=name, init=init, location=loc, args=args))
    return tuple(out)


def parse_init_cfg(init_cfg: Any, owner: str = "", owner_class: str = "",
                   *, field: str = "init_cfg", cache: dict | None = None,
                   strict: bool = False) -> tuple[Rule, ...]:
    """Validate an ``init_cfg`` (dict or list of dicts) into rules, in declaration order.

    Raises an :class:`InitError` subclass naming ``owner``'s entry on any mistake. A rule
    that targets nothing warns (:class:`EmptyRuleWarning`), or raises under ``strict``.
    """
    label = module_label(owner, owner_class)
    if init_cfg is None:
        return ()
    check_nesting(init_cfg, f"{label} {field}")
    if isinstance(init_cfg, dict):
        entries, single = [init_cfg], True
    elif isinstance(init_cfg, (list, tuple)):
        entries, single = list(init_cfg), False
    else:
        raise ConfigStructureError(f"{label} {field}: must be a dict or a list of dict, but got "
                                   f"{type(init_cfg).__name__} ({init_cfg!r})")
    rules = []
    for i, entry in enumerate(entries):
        loc = field if single else f"{field}[{i}]"
        where = f"{label} {loc}"
        if not isinstance(entry, dict):
            raise ConfigEntryTypeError(f"{where}: must be a dict, got {type(entry).__name__} "
                                       f"({entry!r}). Fix: write it as dict(type=...)")
        args = _plain_copy(entry)
        override = args.pop("override", None)
        init = build_initializer(args, where, cache)
        overrides: tuple[Override, ...] = ()
        if override is not None:
            base = {k: v for k, v in args.items() if k != "layer"}
            overrides = _parse_overrides(override, base, where, cache)
        elif (isinstance(init, BaseInit) and not init.layer and not init.param
              and init.plannable and not init.targets_itself):
            warn(EmptyRuleWarning, f"{where}: {type(init).__name__} has neither 'layer' nor "
                 "'override', so it initializes nothing. Fix: add layer=<class name>, "
                 "param=<name pattern> or override=dict(name=...).", strict=strict)
        rules.append(Rule(init=init, cfg=_plain_copy(entry), location=loc, owner=owner,
                          owner_class=owner_class, overrides=overrides))
    return tuple(rules)
