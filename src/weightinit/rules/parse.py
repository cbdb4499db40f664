"""``init_cfg`` -> validated :class:`Rule` values, each knowing where it was declared.

Everything about the *shape* of a config is checked here (types, ``type``
names, constructor arguments, ``override`` entries), with MMEngine's
exception classes and messages that say which entry of which module is wrong
and how to fix it. Whether a rule fits the model (override names, tensor
shapes, checkpoint keys) is checked by the planner.

Before any of that, the config's nesting is checked without recursion
(:func:`check_nesting`): one that contains itself, or nests deeper than
:data:`MAX_DEPTH`, is refused with the path of the entry, so the recursive
copies, ``repr`` and seed keys after it can not exhaust Python's stack.
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
    ConfigNestingError,
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


#: How deeply the containers (dicts, lists, tuples) of one ``init_cfg`` may nest. A real one
#: uses a handful of levels (rule list, rule, override list, override, argument list); the
#: bound keeps every recursive walk of it (copies, ``repr``, seed keys) far from Python's
#: recursion limit, even when it is parsed deep inside a model's ``init_weights``.
MAX_DEPTH = 64
#: How many entries one ``init_cfg`` may hold once shared sub-containers are counted at each
#: place they appear (the copies made while parsing duplicate them): a few dozen levels
#: of ``[x, x]`` would otherwise expand to more entries than memory holds.
MAX_ENTRIES = 1_000_000

#: path components shown at each end of a long entry path in an error
_SHOWN = 4

_CONTAINERS = (dict, list, tuple)


def _entry_path(parts: list[str]) -> str:
    """``init_cfg[0].override.a`` from its components; a long path keeps its two ends."""
    if len(parts) > 2 * _SHOWN + 1:
        parts = [*parts[:_SHOWN + 1], f"[...{len(parts) - 2 * _SHOWN - 1} more...]",
                 *parts[-_SHOWN:]]
    return "".join(parts)


def _step(key: Any) -> str:
    """One path component: ``.name`` for a plain str key, else ``[key]``."""
    if isinstance(key, str) and key.isidentifier():
        return f".{key}"
    return f"[{key}]" if isinstance(key, int) else f"[{key!r}]"


def _items(value: Any) -> Any:
    return value.items() if isinstance(value, dict) else enumerate(value)


def _too_deep(path: str, depth: int) -> ConfigNestingError:
    return ConfigNestingError(
        f"{path}: nests {depth} levels deep; an init_cfg may nest at most {MAX_DEPTH} dicts "
        "and lists. Fix: flatten it: an init_cfg is a rule dict or a list of them, each with "
        "an optional override dict or list, whose arguments are plain values.")


def check_nesting(cfg: Any, root: str) -> None:
    """Raise :class:`ConfigNestingError` if ``cfg`` contains itself, nests deeper than
    :data:`MAX_DEPTH` containers, or expands to more than :data:`MAX_ENTRIES` entries; the
    message names the entry's path from ``root`` (how errors name ``cfg`` itself, e.g.
    ``'<root> (Net) init_cfg'``).

    The walk keeps its own stack, so it can not overflow Python's, and visits each
    container once: a sub-dict shared by several entries (not a cycle) is allowed, and
    is measured once.
    """
    # (container, path components, leaving?): "leaving" comes after the container's
    # children, so ``open_`` holds exactly the containers that enclose the current one.
    stack: list[tuple[Any, list[str], bool]] = [(cfg, [root], False)]
    open_: dict[int, list[str]] = {}
    done: dict[int, tuple[int, int]] = {}  # id -> (levels it nests, entries once expanded)
    while stack:
        value, parts, leaving = stack.pop()
        if not isinstance(value, _CONTAINERS):
            continue
        if leaving:
            kids = [done[id(v)] for _, v in _items(value) if isinstance(v, _CONTAINERS)]
            levels = 1 + max((k[0] for k in kids), default=0)
            entries = 1 + len(value) + sum(k[1] for k in kids)
            if entries > MAX_ENTRIES:
                raise ConfigNestingError(
                    f"{_entry_path(parts)}: holds {entries:,} entries once its shared parts "
                    f"are counted where they appear (at most {MAX_ENTRIES:,}). Fix: refer to "
                    "a shared list or dict fewer times, or flatten the config.")
            del open_[id(value)]
            done[id(value)] = (levels, entries)
            continue
        if id(value) in done:  # shared, already measured: only its depth here can be new
            if len(parts) - 1 + done[id(value)][0] > MAX_DEPTH:
                raise _too_deep(_entry_path(parts), len(parts) - 1 + done[id(value)][0])
            continue
        if id(value) in open_:
            outer = [root.rsplit(" ", 1)[-1], *open_[id(value)][1:]]
            raise ConfigNestingError(
                f"{_entry_path(parts)}: is the {type(value).__name__} {_entry_path(outer)} "
                "itself, which contains it: the config refers to itself and nests without "
                "end. Fix: give this entry its own value (e.g. a copy) instead of a "
                "reference to one that contains it.")
        if len(parts) > MAX_DEPTH:
            raise _too_deep(_entry_path(parts), len(parts))
        open_[id(value)] = parts
        stack.append((value, parts, True))
        for key, item in _items(value):
            if isinstance(item, _CONTAINERS):
                stack.append((item, [*parts, _step(key)], False))


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
            raise ConfigStructureError(f"{where}: must be a dict, got {type(entry).__name__} "
                                       f"({entry!r})")
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
