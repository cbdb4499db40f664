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

Relative paths in a config — ``FILE.py:NAME`` and the ``checkpoint`` of a
``Pretrained`` rule — are relative to the config's directory, wherever it is
loaded from (:mod:`weightinit.configfile.paths`).

YAML and JSON configs are data: their dotted paths may only name ``torch.nn``,
modules in the config's directory and ``allowed_modules`` (see
:mod:`weightinit.configfile.safety`); ``.py`` configs may name anything.

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
(``'float32'``, ``'bfloat16'``...), ``seed`` (int: what
:meth:`ModelConfig.initialize` and ``weightinit init`` seed the run with, else 0). In Python configs other
module-level names are helpers and ignored; YAML and JSON configs may only
hold the keys above.

Every mistake raises a :class:`ConfigError` (an ``InitError``) whose message
starts with the config file and the key: ``cfg.yaml: model.type: ...``.
"""

from ..errors import (
    ConfigBuildError,
    ConfigError,
    ConfigNotFoundError,
    UnknownModelTypeError,
)
from .building import build_object, resolve_type
from .common import KNOWN_KEYS, SUFFIXES, torch_dtype
from .model import InputSpec, ModelConfig
from .reading import load_config, parse_shape

__all__ = ["KNOWN_KEYS", "SUFFIXES", "ConfigBuildError", "ConfigError", "ConfigNotFoundError",
           "InputSpec", "ModelConfig", "UnknownModelTypeError", "build_object", "load_config",
           "parse_shape", "resolve_type", "torch_dtype"]
