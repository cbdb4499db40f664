"""Stand-ins that let the OpenMMLab packages import beside the CPU build of torch.

Nothing compiled runs while these tests build and initialize models, but the
packages import compiled parts at import time:

* ``mmcv._ext`` (MMCV's compiled ops; ``mmcv-lite`` ships without them):
  a module whose every attribute is a function that raises if called;
* torchvision's wheel is a CUDA build whose ``_C`` library cannot load here,
  and its ``_meta_registrations`` then fails registering fake kernels for
  ``torchvision::nms``/``qnms``; declaring those two op schemas first (no
  kernel) lets it import. Calling them would raise.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import torch


class _MissingOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name}: compiled MMCV ops are not installed (stand-in)")

        return missing


_library = None


def install_standins() -> None:
    global _library
    sys.modules.setdefault("mmcv._ext", _MissingOps("mmcv._ext"))
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:  # not installed (the main test environment): nothing to stand in for
        return
    except RuntimeError:
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
    _library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401


def register(package: str) -> None:
    """``register_all_modules`` of an OpenMMLab package (its registries' default scope)."""
    importlib.import_module(f"{package}.utils").register_all_modules(init_default_scope=True)


def config_path(package: str, relative: str) -> str:
    """A config file shipped inside ``package`` (``.mim/configs``)."""
    root = os.path.dirname(importlib.import_module(package).__file__)
    return os.path.join(root, ".mim", "configs", relative)
