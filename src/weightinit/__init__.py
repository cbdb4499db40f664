"""weightinit: exact, planned, write-once weight initialization for PyTorch.

A drop-in for MMEngine's ``init_cfg`` system: same names, config format and
priority rules, with the whole configuration validated and planned before
any tensor is written.
"""

import logging

from .checkpoint import (
    CheckpointDownloadError,
    CheckpointHashError,
    LoadReport,
    cache_dir,
    register_scheme,
)
from .configfile import ConfigError, ConfigNotFoundError, ModelConfig, load_config
from .deferred import deferred
from .engine import get_init_record, initialize, load_checkpoint, update_init_info
from .errors import (
    CheckpointError,
    CheckpointKeyError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ConfigStructureError,
    DistributionError,
    InitError,
    InitKeyError,
    InitRecordError,
    InitRuntimeError,
    InitTypeError,
    InitValueError,
    OverrideError,
    OverrideTargetError,
    ShapeError,
    UnknownTypeError,
    UnsafeCheckpointError,
)
from .functional import (
    bias_init_with_prob,
    caffe2_xavier_init,
    constant_init,
    fan_in_and_fan_out,
    kaiming_init,
    normal_init,
    tf_trunc_normal_,
    trunc_normal_,
    trunc_normal_init,
    uniform_init,
    variance_scaling_,
    xavier_init,
)
from .health import HealthCheckError, HealthResult, check_health, plot_health
from .materialize import UndefinedParameterError
from .module import BaseModule, ModuleDict, ModuleList, Sequential
from .plan import Plan, PlanEntry, plan
from .record import InitRecord, ParamRecord
from .registry import (
    MODEL_WRAPPERS,
    MODELS,
    WEIGHT_INITIALIZERS,
    Registry,
    build_from_cfg,
    is_model_wrapper,
)
from .report import ParamReport, Report, build_report, plan_report
from .rules import (
    BaseInit,
    Caffe2XavierInit,
    ConstantInit,
    DefaultInit,
    DiracInit,
    EyeInit,
    KaimingInit,
    LeCunNormalInit,
    LeCunUniformInit,
    LSUVError,
    LSUVInit,
    NormalInit,
    OnesInit,
    OrthogonalInit,
    PretrainedInit,
    TFTruncNormalInit,
    TruncNormalInit,
    UniformInit,
    VarianceScalingInit,
    XavierInit,
    ZeroInitResidualInit,
    ZerosInit,
)
from .seeding import derive_seed, seeded
from .sharding import ShardingError

logging.getLogger("weightinit").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "derive_seed", "seeded", "ShardingError",
    "ConfigError", "ConfigNotFoundError", "HealthCheckError", "HealthResult",
    "ModelConfig", "ParamReport", "Report", "build_report", "check_health",
    "load_config", "plan_report", "plot_health",
    "CheckpointDownloadError", "CheckpointHashError", "CheckpointMismatchError", "LoadReport",
    "cache_dir", "load_checkpoint", "register_scheme",
    "DefaultInit", "DiracInit", "EyeInit", "LeCunNormalInit", "LeCunUniformInit", "LSUVError",
    "LSUVInit", "OnesInit", "OrthogonalInit", "TFTruncNormalInit", "VarianceScalingInit",
    "ZeroInitResidualInit", "ZerosInit", "fan_in_and_fan_out", "tf_trunc_normal_",
    "variance_scaling_",
    "BaseInit", "BaseModule", "Caffe2XavierInit", "CheckpointError", "CheckpointKeyError",
    "CheckpointNotFoundError", "ConfigStructureError", "ConstantInit", "DistributionError",
    "InitError", "InitKeyError", "InitRecord", "InitRecordError", "InitRuntimeError",
    "InitTypeError", "InitValueError", "KaimingInit", "MODELS", "MODEL_WRAPPERS", "ModuleDict",
    "ModuleList", "NormalInit", "OverrideError", "OverrideTargetError", "ParamRecord", "Plan",
    "PlanEntry", "PretrainedInit", "Registry", "Sequential", "ShapeError", "TruncNormalInit",
    "UndefinedParameterError", "UniformInit", "UnknownTypeError", "UnsafeCheckpointError", "WEIGHT_INITIALIZERS",
    "XavierInit", "bias_init_with_prob", "build_from_cfg", "caffe2_xavier_init",
    "constant_init", "deferred", "get_init_record", "initialize", "is_model_wrapper", "kaiming_init",
    "normal_init", "plan", "trunc_normal_", "trunc_normal_init", "uniform_init",
    "update_init_info", "xavier_init",
]
