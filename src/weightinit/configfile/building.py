"""Building objects from config dicts: resolving ``type``, then calling it with the arguments.

``type`` is a registered name, a dotted import path, ``'FILE.py:NAME'`` or
(in Python configs) the callable itself; see :mod:`weightinit.configfile`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch.nn as nn

from ..errors import (
    ConfigBuildError,
    ConfigError,
    ConfigNotFoundError,
    InitError,
    UnknownModelTypeError,
)
from ..rules import MODELS
from .common import did_you_mean, importable
from .safety import TypePolicy


class BuildContext(Protocol):
    """The config being built: a :class:`~weightinit.configfile.ModelConfig`.

    Building reads its path (``FILE.py:NAME`` is relative to the config's
    directory) and moves an ``init_cfg`` given inside ``model`` to the top level.
    """

    path: Path
    init_cfg: Any

    def where(self, key: str) -> str: ...

    @property
    def type_policy(self) -> TypePolicy | None:
        """The dotted paths a YAML/JSON config may name; None for a .py config."""
        ...


_FILE_MODULES: dict[Path, ModuleType] = {}


def _load_file(file: Path, where: str) -> ModuleType:
    """Import a Python file by path, once per resolved path."""
    file = file.resolve()
    module = _FILE_MODULES.get(file)
    if module is not None:
        return module
    if not file.is_file():
        raise ConfigNotFoundError(f"{where}: no such file {file}. Fix: paths in FILE.py:NAME are "
                                  "relative to the config's directory.")
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    name = f"_weightinit_file_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:  # pragma: no cover - .py files always have one
        raise ConfigError(f"{where}: cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with importable(file.parent):
            spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise ConfigError(f"{where}: importing {file.name} raised {type(err).__name__}: "
                          f"{err}") from err
    _FILE_MODULES[file] = module
    return module


def resolve_type(value: Any, cfg: BuildContext | None, key: str,
                 strict: bool = True) -> Callable[..., Any] | None:
    """The callable a ``type`` names (see the module docstring); None if not ``strict``
    and ``value`` is a bare unregistered name (a sub-config the model interprets)."""
    where = cfg.where(key) if cfg is not None else key
    if callable(value) and not isinstance(value, str):
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: type must be a non-empty string or a callable, got "
                          f"{value!r}")
    if ":" in value:
        file, _, attr = value.rpartition(":")
        if not file.endswith(".py") or not attr:
            raise ConfigError(f"{where}: {value!r}: expected FILE.py:NAME")
        base = cfg.path.parent if cfg is not None else Path.cwd()
        module = _load_file(base / Path(file).expanduser(), where)
        obj = getattr(module, attr, None)
        if obj is None:
            names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
            raise UnknownModelTypeError(f"{where}: {file} has no {attr!r}."
                                        f"{did_you_mean(attr, names, 3)}")
        return _callable(obj, value, where)
    registered = MODELS.get(value)
    if registered is not None:
        return registered
    if "." not in value:
        if not strict:
            return None
        hints = MODELS.close_matches(value)
        if hasattr(nn, value):
            hints.insert(0, f"torch.nn.{value}")
        hint = f" Did you mean {', '.join(repr(h) for h in hints)}?" if hints else ""
        raise UnknownModelTypeError(
            f"{where}: {value!r} is not a registered model and not an import path.{hint} Fix: "
            "use a dotted import path (torch.nn.Linear, mypkg.models.Net), FILE.py:NAME, or a "
            "name registered with @weightinit.MODELS.register_module().")
    policy = cfg.type_policy if cfg is not None else None
    if policy is not None:
        policy.check_path(value, where)  # before anything is imported: importing runs code
    return _callable(_import_dotted(value, where, policy), value, where)


def _import_dotted(value: str, where: str, policy: TypePolicy | None = None) -> Any:
    parts = value.split(".")
    module = None
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        if policy is not None and not policy.module_allowed(name):
            continue  # never import a module a data config may not name
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and not name.startswith(err.name) and err.name != name:
                raise ConfigError(f"{where}: importing {name} failed: {err}") from err
            continue
        except Exception as err:
            raise ConfigError(f"{where}: importing {name} raised {type(err).__name__}: "
                              f"{err}") from err
        obj: Any = module
        for j, attr in enumerate(parts[i:]):
            nxt = getattr(obj, attr, None)
            if nxt is None:
                names = [n for n in dir(obj) if not n.startswith("_")]
                owner = ".".join(parts[:i + j])
                close = difflib.get_close_matches(attr, names, n=3, cutoff=0.6)
                hint = (f" Did you mean {', '.join(repr(f'{owner}.{c}') for c in close)}?"
                        if close else "")
                raise UnknownModelTypeError(f"{where}: {owner} has no attribute {attr!r}.{hint}")
            obj = nxt
            if policy is not None:  # an allowed module must not lead on to another one
                policy.check_reached(obj, value, where)
        return obj
    raise UnknownModelTypeError(f"{where}: cannot import {value!r}: no module named "
                                f"{parts[0]!r}. Fix: install it, or use a path relative to "
                                "the config (FILE.py:NAME).")


def _callable(obj: Any, value: str, where: str) -> Callable[..., Any]:
    if not callable(obj):
        raise ConfigError(f"{where}: {value!r} is a {type(obj).__name__}, not a class or "
                          "function")
    return obj


def signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _is_spec(value: Any, cfg: BuildContext | None, key: str) -> bool:
    return (isinstance(value, dict) and "type" in value
            and resolve_type(value["type"], cfg, f"{key}.type", strict=False) is not None)


def _build_args(value: Any, cfg: BuildContext | None, key: str) -> Any:
    if _is_spec(value, cfg, key):
        return build_object(value, cfg, key)
    if isinstance(value, dict):
        return {k: _build_args(v, cfg, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_build_args(v, cfg, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_build_args(v, cfg, f"{key}[{i}]") for i, v in enumerate(value))
    return value


def build_object(spec: dict[str, Any], cfg: BuildContext | None = None, key: str = "model") -> Any:
    """Build ``spec['type'](**args)``, building nested specs in the arguments first."""
    where = cfg.where(key) if cfg is not None else key
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: must be a dict with a 'type' key, got {spec!r}")
    fn = resolve_type(spec["type"], cfg, f"{key}.type")
    if fn is None:  # pragma: no cover - strict resolution raises instead
        raise ConfigError(f"{where}: cannot resolve type {spec['type']!r}")
    args = {k: v for k, v in spec.items() if k != "type"}
    sig = signature(fn)
    params = sig.parameters if sig is not None else {}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if "init_cfg" in args and sig is not None and "init_cfg" not in params and not takes_kwargs:
        if key != "model":
            raise ConfigError(f"{where}: {_name(fn)} takes no init_cfg. Fix: move the rules to "
                              "the top-level init_cfg (with override=dict(name=...)).")
        if cfg is not None:
            inner = args.pop("init_cfg")
            if cfg.init_cfg is not None and cfg.init_cfg != inner:
                raise ConfigError(f"{where}: init_cfg is given both inside model and at the "
                                  "top level. Fix: keep one.")
            cfg.init_cfg = copy.deepcopy(inner)
    init_cfg = args.pop("init_cfg", None)
    positional: list[Any] = []
    var_pos = next((p.name for p in params.values() if p.kind is p.VAR_POSITIONAL), None)
    if var_pos is not None and var_pos in args:
        items = args.pop(var_pos)
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}.{var_pos}: must be a list (the positional arguments of "
                              f"{_name(fn)}), got {type(items).__name__}")
        positional = list(_build_args(list(items), cfg, f"{key}.{var_pos}"))
    kwargs = {k: _build_args(v, cfg, f"{key}.{k}") for k, v in args.items()}
    if init_cfg is not None:
        kwargs["init_cfg"] = init_cfg  # rules are data: never built as objects here
    if sig is not None:
        try:
            sig.bind(*positional, **kwargs)
        except TypeError as err:
            accepted = [n for n, p in params.items()
                        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            bad = next((k for k in kwargs if k not in params), None)
            hint = did_you_mean(bad, accepted) if bad is not None and not takes_kwargs else ""
            raise ConfigBuildError(f"{where}: bad arguments for {_name(fn)}: {err}.{hint} "
                                   f"Accepted: {', '.join(accepted) or '(none)'}.") from err
    try:
        return fn(*positional, **kwargs)
    except InitError as err:
        raise type(err)(f"{where}: {err}") from err
    except Exception as err:
        raise ConfigBuildError(f"{where}: building {_name(fn)} raised {type(err).__name__}: "
                               f"{_one_line(err)}") from err


def _name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    if mod.startswith("_weightinit_file_"):
        return qual
    return f"{mod}.{qual}" if mod and mod != "builtins" else qual


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else repr(err)
