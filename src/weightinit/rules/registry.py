"""Name -> class registries and building objects from config dicts.

A config is plain data: ``dict(type='Kaiming', layer='Conv2d')``. ``type`` is a
registered name (or a class); the other keys are constructor arguments.

Example::

    >>> MODELS = Registry('model')
    >>> @MODELS.register_module()
    ... class Net(torch.nn.Module): ...
    >>> net = MODELS.build(dict(type='Net'))
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..errors import InitKeyError, InitTypeError, UnknownTypeError


class Registry:
    """A mapping from names to classes (or functions) that builds objects from configs.

    Args:
        name: what the registry holds, used in messages (``'weight initializer'``).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._module_dict: dict[str, Any] = {}
        self._lookups: list[Callable[[Any], Any]] = []

    def add_lookup(self, lookup: Callable[[Any], Any]) -> None:
        """Consult ``lookup(type_value)`` before this registry; a non-``None`` answer wins.

        How another registry takes part (the MMEngine bridge finds users' initializers
        registered with MMEngine); :meth:`remove_lookup` undoes it.
        """
        if lookup not in self._lookups:
            self._lookups.append(lookup)

    def from_lookups(self, obj_type: Any) -> Any:
        """What the added lookups answer for ``obj_type`` (``None``: nothing)."""
        for lookup in self._lookups:
            found = lookup(obj_type)
            if found is not None:
                return found
        return None

    def remove_lookup(self, lookup: Callable[[Any], Any]) -> None:
        if lookup in self._lookups:
            self._lookups.remove(lookup)

    @property
    def module_dict(self) -> dict[str, Any]:
        return self._module_dict

    def __len__(self) -> int:
        return len(self._module_dict)

    def __contains__(self, name: object) -> bool:
        return name in self._module_dict

    def __repr__(self) -> str:
        return f"Registry(name={self.name!r}, items={sorted(self._module_dict)})"

    def get(self, name: str) -> Any:
        """Return the object registered under ``name``, or ``None``."""
        return self._module_dict.get(name)

    def close_matches(self, name: str) -> list[str]:
        """Registered names that look like ``name`` (for "did you mean" messages)."""
        names = list(self._module_dict)
        lowered = {n.lower(): n for n in names}
        hits = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        for n in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6):
            if lowered[n] not in hits:
                hits.append(lowered[n])
        return hits

    def _register(self, obj: Any, name: str | list[str] | None, force: bool) -> None:
        if not callable(obj):
            raise InitTypeError(f"{self.name} registry: only classes or functions can be "
                                f"registered, got {type(obj).__name__}")
        names = [obj.__name__] if name is None else [name] if isinstance(name, str) else name
        for n in names:
            if not isinstance(n, str):
                raise InitTypeError(f"{self.name} registry: a name must be a str, got {n!r}")
            if not force and n in self._module_dict and self._module_dict[n] is not obj:
                raise InitKeyError(f"{n} is already registered in the {self.name} registry "
                                   f"(by {self._module_dict[n]!r}). Fix: choose another name "
                                   "or pass force=True to replace it.")
            self._module_dict[n] = obj

    def register_module(self, name: str | list[str] | None = None, force: bool = False,
                        module: Any = None) -> Any:
        """Register a class or function, directly or as a decorator.

        Example::

            >>> @WEIGHT_INITIALIZERS.register_module(name='MyInit')
            ... class MyInit(BaseInit): ...
        """
        if not isinstance(force, bool):
            raise InitTypeError(f"force must be a bool, got {type(force).__name__}")
        if module is not None:
            self._register(module, name, force)
            return module

        def decorator(obj: Any) -> Any:
            self._register(obj, name, force)
            return obj

        return decorator

    def resolve(self, obj_type: Any, where: str = "") -> Callable[..., Any]:
        """Turn a ``type`` value (registered name or class) into the class."""
        found = self.from_lookups(obj_type)
        if found is not None:
            return found
        if isinstance(obj_type, str):
            obj_cls = self._module_dict.get(obj_type)
            if obj_cls is None:
                hint = self.close_matches(obj_type)
                did_you_mean = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
                raise UnknownTypeError(
                    f"{where}{obj_type!r} is not in the {self.name} registry.{did_you_mean} "
                    f"Registered: {', '.join(sorted(self._module_dict)) or '(none)'}. Fix: use a "
                    "registered name or register your class with @register_module().")
            return obj_cls
        if inspect.isclass(obj_type) or inspect.isfunction(obj_type):
            return obj_type
        raise InitTypeError(f"{where}type must be a str or a class, got "
                            f"{type(obj_type).__name__} ({obj_type!r})")

    def build(self, cfg: dict, **default_args: Any) -> Any:
        """Build an object from ``cfg`` (see :func:`build_from_cfg`)."""
        return build_from_cfg(cfg, self, default_args or None)


def build_from_cfg(cfg: dict, registry: Registry, default_args: dict | None = None) -> Any:
    """Build an object from a config dict.

    ``cfg['type']`` is a name registered in ``registry`` or a class; every other
    key is passed to its constructor, after ``default_args``.

    Example::

        >>> build_from_cfg(dict(type='Constant', val=1), WEIGHT_INITIALIZERS)
        ConstantInit(val=1, bias=0)
    """
    if not isinstance(cfg, dict):
        raise InitTypeError(f"cfg must be a dict, got {type(cfg).__name__}")
    if not isinstance(registry, Registry):
        raise InitTypeError(f"registry must be a Registry, got {type(registry).__name__}")
    if default_args is not None and not isinstance(default_args, dict):
        raise InitTypeError(f"default_args must be a dict or None, got {type(default_args).__name__}")
    args = dict(default_args or {})
    args.update(cfg)
    if "type" not in args:
        raise InitKeyError(f'`cfg` or `default_args` must contain the key "type", but got {cfg}. '
                           "Fix: add type=<registered name>.")
    obj_cls = registry.resolve(args.pop("type"))
    try:
        return obj_cls(**args)
    except InitTypeError:
        raise
    except TypeError as err:
        raise InitTypeError(f"cannot build {getattr(obj_cls, '__name__', obj_cls)} from {cfg}: "
                            f"{err}") from err


WEIGHT_INITIALIZERS = Registry("weight initializer")
"""Rule types for ``init_cfg`` (``Constant``, ``Kaiming``, ``Pretrained``, ...)."""
MODELS = Registry("model")
"""Users' models, for building from config files."""
MODEL_WRAPPERS = Registry("model wrapper")
"""Wrappers (``DataParallel``-like) that ``init_weights`` looks through via ``.module``."""
MODEL_WRAPPERS.register_module(module=nn.DataParallel)
MODEL_WRAPPERS.register_module(module=nn.parallel.DistributedDataParallel)


def registered_name(cls: type) -> str:
    """The name ``cls`` is registered under in :data:`WEIGHT_INITIALIZERS`, else its import path."""
    for name, obj in WEIGHT_INITIALIZERS.module_dict.items():
        if obj is cls:
            return name
    return f"{cls.__module__}.{cls.__qualname__}"


def model_wrapper_classes() -> tuple[type, ...]:
    """The registered model wrapper classes, as they are now."""
    return tuple(c for c in MODEL_WRAPPERS.module_dict.values() if inspect.isclass(c))


def is_model_wrapper(module: nn.Module) -> bool:
    """True if ``module`` is an instance of a registered model wrapper class."""
    return isinstance(module, model_wrapper_classes())
