"""Rules: what one ``init_cfg`` entry writes, the registry that names them, and parsing.

Importing this package registers every built-in rule in
:data:`WEIGHT_INITIALIZERS` under MMEngine's names (``Constant``, ``Xavier``,
``Normal``, ``TruncNormal``, ``Uniform``, ``Kaiming``, ``Caffe2Xavier``,
``Pretrained``) and ours (``VarianceScaling``, ``Orthogonal``, ``LSUV`` ...).

Writing your own rule is one decorator and one method::

    >>> @WEIGHT_INITIALIZERS.register_module(name='Scaled')
    ... class ScaledInit(BaseInit):
    ...     def __init__(self, scale=1.0, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.scale = scale
    ...     def init_weight(self, tensor):
    ...         tensor.normal_(0, self.scale / tensor.shape[-1] ** 0.5)
"""

from .base import BaseInit, apply_rule, class_names, install_runner, layer_matches
from .builtin import (
    Caffe2XavierInit,
    ConstantInit,
    KaimingInit,
    LeCunNormalInit,
    LeCunUniformInit,
    NormalInit,
    OnesInit,
    TFTruncNormalInit,
    TruncNormalInit,
    UniformInit,
    VarianceScalingInit,
    XavierInit,
    ZerosInit,
)
from .lsuv import LSUVInit
from .parse import (
    Override,
    Rule,
    build_initializer,
    is_pretrained_cfg,
    module_label,
    parse_init_cfg,
)
from .pretrained import PretrainedInit
from .registry import (
    MODEL_WRAPPERS,
    MODELS,
    WEIGHT_INITIALIZERS,
    Registry,
    build_from_cfg,
    is_model_wrapper,
    model_wrapper_classes,
)
from .structured import (
    DefaultInit,
    DiracInit,
    EyeInit,
    OrthogonalInit,
    ZeroInitResidualInit,
    reset_method_of,
)

__all__ = [
    "BaseInit", "Caffe2XavierInit", "ConstantInit", "DefaultInit", "DiracInit", "EyeInit",
    "KaimingInit", "LSUVInit", "LeCunNormalInit", "LeCunUniformInit", "MODELS", "MODEL_WRAPPERS",
    "NormalInit", "OnesInit", "OrthogonalInit", "Override", "PretrainedInit", "Registry", "Rule",
    "TFTruncNormalInit", "TruncNormalInit", "UniformInit", "VarianceScalingInit",
    "WEIGHT_INITIALIZERS", "XavierInit", "ZeroInitResidualInit", "ZerosInit", "apply_rule",
    "build_from_cfg", "build_initializer", "class_names", "install_runner", "is_model_wrapper",
    "model_wrapper_classes",
    "is_pretrained_cfg", "layer_matches", "module_label", "parse_init_cfg", "reset_method_of",
]
