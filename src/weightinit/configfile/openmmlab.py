"""OpenMMLab config files (``_base_`` inheritance, registry types), read by MMEngine itself.

A ``.py`` config that inherits (``_base_ = [...]``, or ``with read_base():``) or
names a ``default_scope`` is an OpenMMLab config: weightinit reads it with
MMEngine's own ``Config.fromfile`` (inheritance, ``{{_base_.x}}`` references),
registers the scope's modules (``register_all_modules`` of ``mmdet``,
``mmpretrain``, ``mmseg``, ...), builds ``model`` with MMEngine's ``MODELS``
registry and initializes it through :mod:`weightinit.mmengine` — the same
code path a training script using the bridge takes. Needs the extra
``weightinit[openmmlab]`` and the model's package; nothing of MMEngine is
imported unless such a config is loaded.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..capture.deferred import deferred as deferred_ctx
from ..errors import ConfigError
from .model import ModelConfig

#: the bridge, imported only when an OpenMMLab config is loaded (it imports MMEngine)
BRIDGE = "weightinit.mmengine"


def is_openmmlab_config(path: Path) -> bool:
    """A Python config that inherits (``_base_``, ``read_base()``) or sets ``default_scope``.

    Decided from the file's syntax tree, without running it.
    """
    if path.suffix.lower() != ".py":
        return False
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False  # the ordinary reader reports it
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [
            node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(t, ast.Name) and t.id in ("_base_", "default_scope") for t in targets):
            return True
        if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call)
                and getattr(item.context_expr.func, "id", None) == "read_base"
                for item in node.items):
            return True
    return False


def _bridge(path: Path) -> Any:
    try:
        return importlib.import_module(BRIDGE)
    except ImportError as err:
        raise ConfigError(f"{path.name}: an OpenMMLab config (it inherits with _base_ or sets "
                          "default_scope) is read by MMEngine, which is not installed. Fix: pip "
                          "install 'weightinit[openmmlab]' and the model's package (mmdet, "
                          "mmpretrain, mmseg, ...).") from err


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_openmmlab_config(path: Path, overrides: list[str] | None = None) -> OpenMMLabConfig:
    """Read an OpenMMLab config with MMEngine; ``overrides`` are ``key=value`` (dotted keys,
    Python literal values) merged as MMEngine's ``--cfg-options`` are."""
    _bridge(path)
    from mmengine.config import Config  # optional: only with the extra

    try:
        cfg = Config.fromfile(str(path))
    except Exception as err:  # MMEngine raises many kinds for a broken config
        raise ConfigError(f"{path.name}: MMEngine cannot read it: {err}") from err
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path.name}: --set {item!r} is not KEY=VALUE. Fix: e.g. --set "
                              "model.head.num_classes=10.")
        cfg.merge_from_dict({key.strip(): _literal(value.strip())})
    if "model" not in cfg or not isinstance(cfg.model, dict) or "type" not in cfg.model:
        raise ConfigError(f"{path.name}: no model = dict(type=...) after inheritance. Fix: "
                          "give the config a model.")
    return OpenMMLabConfig(path=path.resolve(), model=cfg.model.to_dict(),
                           scope=cfg.get("default_scope"), mmengine_config=cfg)


def _import_fix(err: BaseException) -> str:
    if "torchvision::" in str(err):  # its compiled ops were built for another torch
        return (f"install the torchvision release built for this torch ({torch.__version__}), "
                "e.g. pip install torch==X torchvision==Y as a matching pair.")
    return "install it (and what it needs)."


class OpenMMLabConfig(ModelConfig):
    """A config read by MMEngine; its model is built by MMEngine's registries."""

    def __init__(self, path: Path, model: dict[str, Any], scope: str | None,
                 mmengine_config: Any) -> None:
        super().__init__(path=path, model=model)
        self.scope = scope
        self.mmengine_config = mmengine_config

    def _registry(self) -> Any:
        from mmengine.registry import MODELS, init_default_scope

        if self.scope:
            try:
                utils = importlib.import_module(f"{self.scope}.utils")
            except Exception as err:  # a package's import can raise anything (compiled ops)
                raise ConfigError(f"{self.path.name}: default_scope={self.scope!r}, but the "
                                  f"package {self.scope!r} cannot be imported: "
                                  f"{type(err).__name__}: {err}. Fix: {_import_fix(err)}") from err
            register = getattr(utils, "register_all_modules", None)
            try:  # (registering imports the whole package: its compiled ops too)
                if register is not None:
                    register(init_default_scope=True)
                else:
                    init_default_scope(self.scope)
            except Exception as err:
                raise ConfigError(f"{self.path.name}: default_scope={self.scope!r}: registering "
                                  f"{self.scope!r}'s modules failed: {type(err).__name__}: "
                                  f"{err}. Fix: {_import_fix(err)}") from err
        return MODELS

    def build(self, deferred: bool = True) -> nn.Module:
        """Build the model with MMEngine's ``MODELS`` (under :func:`weightinit.deferred` by
        default), with the bridge installed so ``init_weights()`` is weightinit's."""
        _bridge(self.path).install(log_record=False)  # the command line reports it
        registry = self._registry()
        ctx = deferred_ctx() if deferred else contextlib.nullcontext()
        try:
            with ctx:
                model = registry.build(self.mmengine_config.model)
        except ConfigError:
            raise
        except Exception as err:  # what the model's own constructor raises
            raise ConfigError(f"{self.path.name}: model: MMEngine could not build "
                              f"{self.model.get('type')!r}: {err}") from err
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{self.path.name}: model: building it gave a "
                              f"{type(model).__name__}, not a torch.nn.Module")
        return model


__all__ = ["OpenMMLabConfig", "is_openmmlab_config", "load_openmmlab_config"]
