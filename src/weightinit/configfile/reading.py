"""Reading config files: the formats (Python, YAML, JSON), overrides, and checking the keys."""

from __future__ import annotations

import ast
import copy
import difflib
import json
import runpy
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigError, ConfigNotFoundError
from .common import DTYPES, KNOWN_KEYS, SUFFIXES, did_you_mean, importable
from .model import InputSpec, ModelConfig
from .openmmlab import is_openmmlab_config, load_openmmlab_config
from .paths import resolve_paths
from .safety import normalize_allowed


def load_config(path: str | Path, overrides: list[str] | None = None,
                allowed_modules: Iterable[str] | None = None) -> ModelConfig:
    """Load a ``.py``, ``.yaml``/``.yml`` or ``.json`` config file.

    A YAML or JSON config is data: its dotted ``type`` paths may only name
    ``torch.nn``, modules in the config's directory and ``allowed_modules``
    (each with its submodules); see :mod:`weightinit.configfile.safety`.
    A ``.py`` config may name anything. An OpenMMLab config (``_base_``
    inheritance, ``default_scope``) is read, built and initialized by MMEngine
    through :mod:`weightinit.mmengine` (see :mod:`weightinit.configfile.openmmlab`).

    ``overrides`` are ``'dotted.key=value'`` strings applied after loading
    (values are Python literals, else strings): ``['model.size="tiny"']``,
    ``['input.shape=[2, 16]']``.

    Relative paths in the file — ``FILE.py:NAME`` types and the ``checkpoint``
    of ``Pretrained`` rules — are resolved next to the config, wherever it is
    loaded from (see :mod:`weightinit.configfile.paths`).

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
    if is_openmmlab_config(path):  # _base_ inheritance, registries: MMEngine reads it
        return load_openmmlab_config(path, overrides)
    allowed = normalize_allowed(allowed_modules, path.name)
    # Paths written in the file are relative to it; --set values to the working directory.
    data = resolve_paths(_read(path), path)
    for item in overrides or []:
        _apply_override(data, item, path)
    cfg = _parse(data, path.resolve())
    cfg.allowed_modules = allowed
    return cfg


def _read(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix == ".py":
        with importable(path.parent):
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
            import yaml  # optional (weightinit[yaml]): imported only for YAML
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
        raise ConfigError(f"{path.name}: unknown key {unknown[0]!r}.{did_you_mean(unknown[0], KNOWN_KEYS)}"
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
    for i, part in enumerate(parts):
        here = ".".join(parts[:i + 1])
        last = i == len(parts) - 1
        if isinstance(target, list):  # an integer segment indexes a list: init_cfg.0.type
            index = _list_index(target, part, key, here, path)
            if last:
                target[index] = value
                return
            nxt = target[index]
            if isinstance(nxt, tuple):  # a .py config's tuple: made a list to be edited
                nxt = target[index] = list(nxt)
        else:
            if last:
                target[part] = value
                return
            nxt = target.get(part)
            if nxt is None:
                nxt = target[part] = {}
            elif isinstance(nxt, tuple):
                nxt = target[part] = list(nxt)
        if not isinstance(nxt, (dict, list)):
            raise ConfigError(f"{path.name}: override {key!r}: {here} is not a mapping or a "
                              f"list (it is {type(nxt).__name__})")
        target = nxt


def _list_index(items: list[Any], part: str, key: str, here: str, path: Path) -> int:
    """The index ``part`` names in ``items`` (the list at ``here`` minus its last segment)."""
    parent = here.rpartition(".")[0]
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"{path.name}: override {key!r}: {parent} is a list; index it with "
                          f"an integer, e.g. {parent}.0, not {part!r}") from None
    if not -len(items) <= index < len(items):
        raise ConfigError(f"{path.name}: override {key!r}: index {index} is out of range for "
                          f"{parent}, a list of length {len(items)} (valid: 0 to "
                          f"{len(items) - 1})" if items else
                          f"{path.name}: override {key!r}: index {index} is out of range for "
                          f"{parent}, an empty list")
    return index


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
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise ConfigError(f"{name}: dtype: unknown dtype {cfg.dtype!r}.{did_you_mean(cfg.dtype, DTYPES)} "
                          f"Known: {', '.join(DTYPES)}.")
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
