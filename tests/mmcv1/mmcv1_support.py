"""Stand-ins that let MMCV 1.7.2 and the 1.x-era OpenMMLab codebases (MMDetection 2.x,
MMClassification 0.x, MMSegmentation 0.x) import beside the CPU build of torch, and a helper
that builds their real models from the packages' own config files without downloads.

Runs in the MMCV 1.x test environment (``.venv-mmcv1``: requirements-mmcv1.txt and
requirements-mmcv1-nodeps.txt). Nothing compiled runs while models are built and
initialized, but the packages import compiled parts at import time:

* ``mmcv._ext``: mmcv 1.7.2 is installed as a pure-Python build (``MMCV_WITH_OPS=0``), and
  ``mmcv.ops`` (imported by ``mmdet.models``, ``mmseg.models``) loads its compiled ops through
  ``mmcv.utils.ext_loader.load_ext``, which only checks ``hasattr(mmcv._ext, name)``. The
  stand-in is a module whose every attribute is a function that raises if called.
* torchvision: ``mmcv.runner.checkpoint`` imports it at import time. Its wheel is a CUDA build
  whose ``_C`` library cannot load here, and its ``_meta_registrations`` then fails registering
  fake kernels for ``torchvision::nms``/``qnms``; declaring those two op schemas first (no
  kernel) lets it import. Calling them would raise.

Call :func:`prepare` (idempotent) before importing mmcv; :func:`build` calls it. Imported as
``mmcv1_support`` (pytest puts ``tests/mmcv1`` on ``sys.path`` for the test modules here): the
main suite collects every directory of ``tests/`` in one process (and skips what it cannot
import), so this directory's module names differ from ``tests/openmmlab``'s (no
``__init__.py``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
import warnings
from typing import Any

import torch

#: the package each config family lives in, as :func:`build` accepts it
PACKAGES = ("mmdet", "mmcls", "mmseg")

_library = None
_prepared = False
# the notice ``import mmcv`` 1.7 always gives (set on import, so that a test module can import
# this one first and then ``pytest.importorskip("mmcv")``)
warnings.filterwarnings(
    "ignore", message=r"On January 1, 2023, MMCV will release v2\.0\.0", category=UserWarning)


class _MissingOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name}: compiled MMCV ops are not installed (stand-in)")

        return missing


def _standin_torchvision() -> None:
    global _library
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:  # not installed: nothing to stand in for (mmcv.runner will not import)
        return
    except RuntimeError:  # "operator torchvision::nms does not exist"
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
    _library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401


def prepare() -> None:
    """Install the stand-ins (``mmcv._ext``, torchvision's two op schemas); idempotent."""
    global _prepared
    if _prepared:
        return
    sys.modules.setdefault("mmcv._ext", _MissingOps("mmcv._ext"))
    _standin_torchvision()
    _prepared = True


def quiet_logs(level: int = logging.WARNING) -> logging.Logger:
    """Create MMCV's ``mmcv`` logger now, at ``level`` (default WARNING).

    ``BaseModule.init_weights`` logs through the first logger ``mmcv.utils.get_logger`` ever
    created (``'mmcv'`` when none was), at INFO: one line per module with an ``init_cfg`` and
    one per parameter at the end; ``get_logger`` attaches a StreamHandler to stderr. Creating
    ``mmcv`` first at WARNING makes every one of those a no-op record. Only takes effect if no
    other MMCV logger (``mmdet``, ``mmcls``, ``mmseg``, ...) was created before.
    """
    prepare()
    from mmcv.utils import get_logger

    return get_logger("mmcv", log_level=level)


def config_path(config_relpath: str) -> str:
    """``'<package>/<path>'`` -> the file ``<package>/.mim/configs/<path>`` shipped inside the
    installed package (``mmdet``, ``mmcls`` or ``mmseg``)."""
    package, _, relative = config_relpath.partition("/")
    if package not in PACKAGES or not relative:
        raise ValueError(f"expected '<{'|'.join(PACKAGES)}>/<config path>', got {config_relpath!r}")
    root = os.path.dirname(importlib.import_module(package).__file__)
    return os.path.join(root, ".mim", "configs", relative)


def _is_pretrained(cfg: Any) -> bool:
    """An ``init_cfg`` entry that loads weights: ``type='Pretrained'``, or any entry with a
    ``checkpoint`` (mmdet's PVT backbones read ``init_cfg=dict(checkpoint=...)`` with no type
    in their own ``init_weights``)."""
    return isinstance(cfg, dict) and (cfg.get("type") == "Pretrained" or "checkpoint" in cfg)


def drop_pretrained(node: Any, path: str = "") -> list[str]:
    """Point every pretrained-weights setting in a config tree away from the download, in place.

    * ``pretrained=<str>`` (mmdet/mmseg detectors, segmentors and backbones, checkpoint paths or
      ``torchvision://``, ``open-mmlab://``, ``mmcls://`` names, URLs) -> ``None``;
      ``pretrained=True`` (timm-style backbones) -> ``False``;
    * ``init_cfg=dict(type='Pretrained', ...)`` (or any ``init_cfg`` dict with a ``checkpoint``
      key) -> ``None``, so that the module falls back to its own default
      ``init_cfg``/``init_weights`` (mmdet's ResNet, for example, then sets Kaiming for convs
      and Constant 1 for norms; Swin, PVT and the ViTs their trunc-normal/constant init);
    * an ``init_cfg`` list: its ``Pretrained`` entries are removed (``None`` if none is left);
      an ``override`` (dict or list) of an ``init_cfg`` entry loses its ``Pretrained`` entries
      the same way.

    Returns the dotted paths changed, with the old values.
    """
    changes: list[str] = []
    if isinstance(node, dict):
        for key in list(node.keys()):
            value = node[key]
            here = f"{path}.{key}" if path else str(key)
            if key == "pretrained" and (isinstance(value, str) or value is True):
                node[key] = None if isinstance(value, str) else False
                changes.append(f"{here}: {value!r} -> {node[key]!r}")
            elif key in ("init_cfg", "override") and _is_pretrained(value):
                node[key] = None
                changes.append(f"{here}: {dict(value)!r} -> None")
            elif key in ("init_cfg", "override") and isinstance(value, list) and any(
                    _is_pretrained(v) for v in value):
                kept = [v for v in value if not _is_pretrained(v)]
                node[key] = kept or None
                changes.append(f"{here}: dropped "
                               f"{[dict(v) for v in value if _is_pretrained(v)]!r}")
                changes.extend(drop_pretrained(kept, here))
            else:
                changes.extend(drop_pretrained(value, here))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            changes.extend(drop_pretrained(value, f"{path}[{i}]"))
    return changes


def load_config(config_relpath: str, pretrained: bool = False):
    """``mmcv.Config`` of a shipped config (see :func:`config_path`), with every pretrained
    setting in ``cfg.model`` dropped (:func:`drop_pretrained`; top-level variables such as
    ``pretrained = '...'`` that the model dict already copied are left alone) unless
    ``pretrained``. Returns ``(cfg, changes)``."""
    prepare()
    from mmcv import Config

    cfg = Config.fromfile(config_path(config_relpath))
    changes = [] if pretrained else drop_pretrained(cfg.model, "model")
    return cfg, changes


def build(config_relpath: str, pretrained: bool = False) -> torch.nn.Module:
    """Build the model of a shipped config on CPU.

    ``config_relpath`` is ``'<package>/<path under the package's .mim/configs>'``, e.g.
    ``'mmdet/retinanet/retinanet_r18_fpn_1x_coco.py'``. Unless ``pretrained``, the config's
    pretrained settings are dropped first, so ``init_weights()`` downloads nothing
    (:func:`drop_pretrained`; the list of changes is left on the model as
    ``model._mmcv1_dropped``). Built with the package's own builder: mmdet's
    ``build_detector``, mmcls's ``build_classifier``, mmseg's ``build_segmentor``, each given
    the config's top-level ``train_cfg``/``test_cfg`` when the model dict has none (older
    configs). ``init_weights()`` is not called.
    """
    cfg, changes = load_config(config_relpath, pretrained)
    package = config_relpath.partition("/")[0]
    model_cfg = cfg.model
    extra = {}
    if package in ("mmdet", "mmseg"):
        for key in ("train_cfg", "test_cfg"):
            if key not in model_cfg and cfg.get(key) is not None:
                extra[key] = cfg.get(key)
    if package == "mmdet":
        from mmdet.models import build_detector

        model = build_detector(model_cfg, **extra)
    elif package == "mmcls":
        from mmcls.models import build_classifier

        model = build_classifier(model_cfg)
    else:
        from mmseg.models import build_segmentor

        model = build_segmentor(model_cfg, **extra)
    model._mmcv1_dropped = changes
    return model
