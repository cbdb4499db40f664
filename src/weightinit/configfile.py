"""Config files: a whole model and its init, as plain data, in Python, YAML or JSON.

A config defines ``model`` — ``dict(type=..., **constructor arguments)`` —
and optionally a top-level ``init_cfg`` and settings for the command line::

    # resnet50.py (MMEngine style: module-level variables)
    model = dict(type="../models.py:resnet50", num_classes=1000)
    input = dict(shape=[8, 3, 224, 224])     # for `weightinit check`
    seed = 0

``type`` is one of

* a name registered in :data:`weightinit.MODELS`;
* a dotted import path to any callable: ``'torch.nn.Linear'``,
  ``'mypackage.models.Net'`` (the config's own directory is importable);
* ``'FILE.py:NAME'``: ``NAME`` in a Python file, relative to the config's
  directory (``'../models.py:resnet50'``), imported once;
* in Python configs, the class or function itself.

Dicts with a ``type`` inside the arguments are built first, depth first —
when their ``type`` resolves; a dict whose ``type`` is a bare name that is
not registered (MMEngine's ``norm_cfg=dict(type='BN')``) is passed on as
data for the model to interpret. An argument named like the callable's
``*args`` parameter (``args`` of ``torch.nn.Sequential``) is passed
positionally. ``init_cfg`` inside ``model`` is passed to the constructor if
it takes one; otherwise it is the model's top-level ``init_cfg``.

The top-level ``init_cfg`` initializes models that never heard of
weightinit: it is applied like ``weightinit.initialize(model, init_cfg)``.
For a :class:`~weightinit.BaseModule` it becomes the root's ``init_cfg``
(replacing the one its constructor set), as passing ``init_cfg=`` would.

Optional keys: ``input`` (``dict(shape=[...], dtype='float'|'long',
high=N)``, or ``input_shape=[...]``; ``long`` input draws token ids in
[0, high), high defaulting to the model's first embedding), ``device``, ``dtype``
(``'float32'``, ``'bfloat16'``...), ``seed`` (int). In Python configs other
module-level names are helpers and ignored; YAML and JSON configs may only
hold the keys above.

Every mistake raises a :class:`ConfigError` (an ``InitError``) whose message
starts with the config file and the key: ``cfg.yaml: model.type: ...``.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import runpy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

from .api import get_init_record, initialize, plan
from .capture.deferred import deferred as deferred_ctx
from .errors import (
    ConfigBuildError,
    ConfigError,
    ConfigNotFoundError,
    InitError,
    InitValueError,
    UnknownModelTypeError,
)
from .module import BaseModule
from .record import InitRecord
from .rules import MODELS

#: Top-level keys a config may hold (Python configs may hold helper names too).
KNOWN_KEYS = ("model", "init_cfg", "input", "input_shape", "device", "dtype", "seed")
SUFFIXES = (".py", ".yaml", ".yml", ".json")
_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "double": torch.float64}


@dataclass(frozen=True)
class InputSpec:
    """Random input for the health check: shape, ``float`` (N(0,1)) or ``long`` ids in [0, high).

    ``high`` defaults to the size of the model's first ``nn.Embedding``.
    """

    shape: tuple[int, ...]
    dtype: str = "float"
    high: int | None = None


@dataclass
class ModelConfig:
    """A loaded config: the model spec and the settings around it."""

    path: Path
    model: dict[str, Any]
    init_cfg: Any = None
    input: InputSpec | None = None
    device: str | None = None
    dtype: str | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return None if self.dtype is None else _DTYPES[self.dtype]

    def where(self, key: str) -> str:
        return f"{self.path.name}: {key}"

    def build(self, deferred: bool = True) -> nn.Module:
        """Build the model; under :func:`weightinit.deferred` (no storage) by default.

        Applies the top-level ``init_cfg`` rule of a BaseModule root (see the
        module docstring). Raises :class:`ConfigError` on any mistake.
        """

        ctx = deferred_ctx() if deferred else contextlib.nullcontext()
        with _importable(self.path.parent), ctx:
            model = build_object(self.model, self, "model")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{self.where('model')}: building it gave a "
                              f"{type(model).__name__}, not a torch.nn.Module")
        if self.init_cfg is not None and isinstance(model, BaseModule):
            model.init_cfg = copy.deepcopy(self.init_cfg)
        return model

    def plan(self, model: nn.Module) -> Any:
        """The plan of this config's initialization of ``model`` (nothing written).

        Tensors nothing would give a value are listed in ``plan.undefined``
        rather than raised, so a dry run can show the whole table.
        """
        if isinstance(model, BaseModule):
            return plan(model, allow_undefined=True)
        return plan(model, self.init_cfg if self.init_cfg is not None else [],
                    allow_undefined=True)

    def initialize(self, model: nn.Module, device: Any = None,
                   dtype: torch.dtype | None = None) -> InitRecord:
        """Initialize (and materialize) ``model`` as the config says; returns the record."""

        if isinstance(model, BaseModule):
            sig = _signature(model.init_weights)
            params = sig.parameters if sig is not None else {}
            if sig is None or "device" in params or any(p.kind is p.VAR_KEYWORD
                                                        for p in params.values()):
                model.init_weights(device=device, dtype=dtype)
            else:
                # A user-defined init_weights() that takes no device/dtype: give every tensor
                # real storage first (PyTorch defaults), then let it run as written.
                initialize(model, [], device=device, dtype=dtype)
                model.init_weights()
            record = get_init_record(model)
        else:
            record = initialize(model, self.init_cfg if self.init_cfg is not None else [],
                                device=device, dtype=dtype)
        if record is None:  # pragma: no cover - only when nested in another init
            raise InitValueError(f"{self.name}: initialization produced no record")
        return record


# ------------------------------------------------------------------ loading


def load_config(path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """Load a ``.py``, ``.yaml``/``.yml`` or ``.json`` config file.

    ``overrides`` are ``'dotted.key=value'`` strings applied after loading
    (values are Python literals, else strings): ``['model.size="tiny"']``,
    ``['input.shape=[2, 16]']``.

    Example::

        >>> cfg = load_config("examples/configs/llama.yaml", ["model.size=tiny"])
        >>> model = cfg.build(); record = cfg.initialize(model)
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{path.name}: unsupported config type {path.suffix or '(none)'!r}. "
                          "Fix: use a .py, .yaml, .yml or .json file.")
    if not path.is_file():
        what = "is a directory" if path.exists() else "no such file"
        raise ConfigNotFoundError(f"{path}: {what}. Fix: give the path of a config file.")
    data = _read(path)
    for item in overrides or []:
        _apply_override(data, item, path)
    return _parse(data, path.resolve())


def _read(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix == ".py":
        with _importable(path.parent):
            try:
                ns = runpy.run_path(str(path), run_name="__weightinit_config__")
            except SyntaxError as err:
                raise ConfigError(f"{path.name}: line {err.lineno}: syntax error: {err.msg}") \
                    from err
            except Exception as err:
                line = _line_in(err, path)
                raise ConfigError(f"{path.name}:{line} running the config raised "
                                  f"{type(err).__name__}: {err}") from err
        return {k: v for k, v in ns.items() if not k.startswith("_")
                and not isinstance(v, ModuleType)}
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path.name}: line {err.lineno}: invalid JSON: {err.msg}") from err
    else:
        try:
            import yaml
        except ImportError as err:
            raise ConfigError(f"{path.name}: reading YAML needs PyYAML, which is not "
                              "installed. Fix: pip install 'weightinit[yaml]' (or pyyaml).") \
                from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}:" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path.name}:{where} invalid YAML: {problem}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: the file must hold a mapping with a 'model' key, got "
                          f"{type(data).__name__}")
    unknown = [k for k in data if k not in KNOWN_KEYS]
    if unknown:
        raise ConfigError(f"{path.name}: unknown key {unknown[0]!r}.{_did_you_mean(unknown[0], KNOWN_KEYS)}"
                          f" Known keys: {', '.join(KNOWN_KEYS)}.")
    return data


def _line_in(err: BaseException, path: Path) -> str:
    tb = err.__traceback__
    line = ""
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == path.resolve():
            line = f" line {tb.tb_lineno}:"
        tb = tb.tb_next
    return line


def _apply_override(data: dict[str, Any], item: str, path: Path) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{path.name}: bad override {item!r}. Fix: write KEY=VALUE, e.g. "
                          "model.size=tiny.")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    parts = key.split(".")
    target: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = target.get(part) if isinstance(target, dict) else None
        if nxt is None and isinstance(target, dict):
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{path.name}: override {key!r}: "
                              f"{'.'.join(parts[:i + 1])} is not a mapping")
        target = nxt
    target[parts[-1]] = value


def _did_you_mean(name: str, options: Any, n: int = 1) -> str:
    close = difflib.get_close_matches(name, list(options), n=n, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _parse(data: dict[str, Any], path: Path) -> ModelConfig:
    name = path.name
    for key in list(data):
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.8)
            if close:  # a helper name in a .py config that looks like a misspelt key
                raise ConfigError(f"{name}: unknown key {key!r}. Did you mean {close[0]!r}?")
    if "model" not in data:
        raise ConfigError(f"{name}: no 'model' key. Fix: define model = dict(type=..., ...).")
    model = data["model"]
    if not isinstance(model, dict):
        raise ConfigError(f"{name}: model: must be a dict with a 'type' key, got "
                          f"{type(model).__name__}")
    if "type" not in model:
        raise ConfigError(f"{name}: model: no 'type' key. Fix: add type=<registered name, dotted "
                          "import path or FILE.py:NAME>.")
    init_cfg = data.get("init_cfg")
    if init_cfg is not None and not isinstance(init_cfg, (dict, list)):
        raise ConfigError(f"{name}: init_cfg: must be a dict or a list of dicts, got "
                          f"{type(init_cfg).__name__}")
    cfg = ModelConfig(path=path, model=dict(model), init_cfg=copy.deepcopy(init_cfg),
                      extra={k: v for k, v in data.items() if k not in KNOWN_KEYS})
    cfg.input = _parse_input(data, name)
    for key in ("device", "dtype"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name}: {key}: must be a string, got {value!r}")
        setattr(cfg, key, value)
    if cfg.dtype is not None and cfg.dtype not in _DTYPES:
        raise ConfigError(f"{name}: dtype: unknown dtype {cfg.dtype!r}.{_did_you_mean(cfg.dtype, _DTYPES)} "
                          f"Known: {', '.join(_DTYPES)}.")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{name}: seed: must be an int, got {seed!r}")
    cfg.seed = seed
    return cfg


def parse_shape(value: Any, where: str) -> tuple[int, ...]:
    """A shape from a list/tuple of ints or a ``'8,3,224,224'`` string."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError as err:
            raise ConfigError(f"{where}: shape {value!r} is not a list of ints, e.g. "
                              "8,3,224,224") from err
    if (not isinstance(value, (list, tuple)) or not value
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in value)):
        raise ConfigError(f"{where}: shape must be a list of positive ints, got {value!r}")
    return tuple(value)


def _parse_input(data: dict[str, Any], name: str) -> InputSpec | None:
    spec = data.get("input")
    if spec is None and data.get("input_shape") is not None:
        spec = {"shape": data["input_shape"]}
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        spec = {"shape": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{name}: input: must be dict(shape=[...], dtype=..., high=...), got "
                          f"{spec!r}")
    unknown = [k for k in spec if k not in ("shape", "dtype", "high")]
    if unknown:
        raise ConfigError(f"{name}: input: unknown key {unknown[0]!r}; known: shape, dtype, high")
    shape = parse_shape(spec.get("shape"), f"{name}: input.shape")
    dtype = spec.get("dtype", "float")
    if dtype not in ("float", "long"):
        raise ConfigError(f"{name}: input.dtype: must be 'float' or 'long', got {dtype!r}")
    high = spec.get("high")
    if high is not None and (isinstance(high, bool) or not isinstance(high, int) or high < 1):
        raise ConfigError(f"{name}: input.high: must be a positive int (token ids are drawn from "
                          f"[0, high)), got {high!r}")
    return InputSpec(shape, dtype, high)


# ------------------------------------------------------------------ building


@contextlib.contextmanager
def _importable(directory: Path) -> Iterator[None]:
    """Make ``directory`` importable for the duration (configs import their neighbours)."""
    entry = str(directory.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


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
        with _importable(file.parent):
            spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise ConfigError(f"{where}: importing {file.name} raised {type(err).__name__}: "
                          f"{err}") from err
    _FILE_MODULES[file] = module
    return module


def resolve_type(value: Any, cfg: ModelConfig | None, key: str,
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
                                        f"{_did_you_mean(attr, names, 3)}")
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
    return _callable(_import_dotted(value, where), value, where)


def _import_dotted(value: str, where: str) -> Any:
    parts = value.split(".")
    module = None
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
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
        return obj
    raise UnknownModelTypeError(f"{where}: cannot import {value!r}: no module named "
                                f"{parts[0]!r}. Fix: install it, or use a path relative to "
                                "the config (FILE.py:NAME).")


def _callable(obj: Any, value: str, where: str) -> Callable[..., Any]:
    if not callable(obj):
        raise ConfigError(f"{where}: {value!r} is a {type(obj).__name__}, not a class or "
                          "function")
    return obj


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _is_spec(value: Any, cfg: ModelConfig | None, key: str) -> bool:
    return (isinstance(value, dict) and "type" in value
            and resolve_type(value["type"], cfg, f"{key}.type", strict=False) is not None)


def _build_args(value: Any, cfg: ModelConfig | None, key: str) -> Any:
    if _is_spec(value, cfg, key):
        return build_object(value, cfg, key)
    if isinstance(value, dict):
        return {k: _build_args(v, cfg, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_build_args(v, cfg, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_build_args(v, cfg, f"{key}[{i}]") for i, v in enumerate(value))
    return value


def build_object(spec: dict[str, Any], cfg: ModelConfig | None = None, key: str = "model") -> Any:
    """Build ``spec['type'](**args)``, building nested specs in the arguments first."""
    where = cfg.where(key) if cfg is not None else key
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: must be a dict with a 'type' key, got {spec!r}")
    fn = resolve_type(spec["type"], cfg, f"{key}.type")
    if fn is None:  # pragma: no cover - strict resolution raises instead
        raise ConfigError(f"{where}: cannot resolve type {spec['type']!r}")
    args = {k: v for k, v in spec.items() if k != "type"}
    sig = _signature(fn)
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
            hint = _did_you_mean(bad, accepted) if bad is not None and not takes_kwargs else ""
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


def torch_dtype(name: str, where: str = "dtype") -> torch.dtype:
    """``'bfloat16'`` -> ``torch.bfloat16`` (floating dtypes only)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown dtype {name!r}.{_did_you_mean(name, _DTYPES)} "
                          f"Known: {', '.join(_DTYPES)}.") from None


__all__ = ["ConfigBuildError", "ConfigError", "ConfigNotFoundError", "InputSpec",
           "ModelConfig", "UnknownModelTypeError", "build_object", "load_config",
           "parse_shape", "resolve_type", "torch_dtype"]
