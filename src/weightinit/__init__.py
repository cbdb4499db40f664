"""weightinit: exact, planned, write-once weight initialization for PyTorch.

A drop-in for MMEngine's ``init_cfg`` system: same names, config format and
priority rules, with the whole configuration validated and planned before
any tensor is written, and nothing committed unless the whole run succeeds.

The package is layered; every import points down::

    errors
    capture     deferred construction: record constructor inits on meta tensors
    maths       fans, gains, tensor-level fills, MMEngine's module-level functions
    checkpoint  sources (paths, URLs, schemes, cache) and formats
    rules       rule values, the registry, init_cfg parsing
    planning    tree walk in MMEngine's order -> an immutable Plan of typed ops
    execution   materialize, strategies (plain / seeded / sharded), transactions
    api         initialize, run, plan, load_checkpoint
    module      BaseModule and its containers
    record, report, health, configfile, cli   tools on top
"""

import logging

from .api import get_init_record, initialize, load_checkpoint, plan, run, update_init_info
from .capture.deferred import deferred
from .checkpoint import LoadReport, cache_dir, register_scheme
from .configfile import ModelConfig, load_config
from .errors import (
    CheckpointCacheError,
    CheckpointDownloadError,
    CheckpointError,
    CheckpointHashError,
    CheckpointKeyError,
    CheckpointKeysWarning,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ConfigEntryTypeError,
    ConfigError,
    ConfigNotFoundError,
    ConfigStructureError,
    DistributionError,
    EmptyRuleWarning,
    HealthCheckError,
    InitCfgError,
    InitError,
    InitKeyError,
    InitRecordError,
    InitRuntimeError,
    InitTypeError,
    InitValueError,
    InitWarning,
    LSUVError,
    MaterializeError,
    NonFiniteCheckpointWarning,
    OverrideError,
    OverrideTargetError,
    RepeatedInitWarning,
    ShapeError,
    ShardingError,
    UnappliedConfigError,
    UnappliedConfigWarning,
    UndefinedParameterError,
    UnknownTypeError,
    UnmatchedLayerWarning,
    UnsafeCheckpointError,
)
from .execution import seeded
from .health import HealthResult, check_health, plot_health
from .maths import (
    Elementwise,
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
from .module import BaseModule, ModuleDict, ModuleList, Sequential
from .planning import OpKind, Plan, PlanEntry
from .record import InitRecord, ParamRecord
from .report import ParamReport, Report, build_report, plan_report
from .rules import (
    MODELS,
    WEIGHT_INITIALIZERS,
    BaseInit,
    Caffe2XavierInit,
    ConstantInit,
    DefaultInit,
    DiracInit,
    EyeInit,
    KaimingInit,
    LeCunNormalInit,
    LeCunUniformInit,
    LSUVInit,
    NormalInit,
    OnesInit,
    OrthogonalInit,
    PretrainedInit,
    Registry,
    TFTruncNormalInit,
    TruncNormalInit,
    UniformInit,
    VarianceScalingInit,
    XavierInit,
    ZeroInitResidualInit,
    ZerosInit,
    build_from_cfg,
    is_model_wrapper,
)
from .version import __version__  # noqa: F401 - the package version

logging.getLogger("weightinit").addHandler(logging.NullHandler())


__all__ = [
    # modules with an init_cfg, and running it
    "BaseModule", "ModuleDict", "ModuleList", "Sequential",
    "initialize", "run", "plan", "load_checkpoint", "deferred", "seeded",
    # what happened
    "InitRecord", "ParamRecord", "get_init_record", "update_init_info", "LoadReport",
    "Plan", "PlanEntry", "OpKind",
    # rules and the registries
    "BaseInit", "Caffe2XavierInit", "ConstantInit", "DefaultInit", "DiracInit", "EyeInit",
    "KaimingInit", "LeCunNormalInit", "LeCunUniformInit", "LSUVInit", "NormalInit", "OnesInit",
    "OrthogonalInit", "PretrainedInit", "TFTruncNormalInit", "TruncNormalInit", "UniformInit",
    "VarianceScalingInit", "XavierInit", "ZeroInitResidualInit", "ZerosInit",
    "Registry", "MODELS", "WEIGHT_INITIALIZERS", "build_from_cfg", "is_model_wrapper",
    # writing a custom (shardable) rule: its per-element distribution and fans
    "Elementwise", "fan_in_and_fan_out",
    # MMEngine's functions and tensor fills
    "bias_init_with_prob", "caffe2_xavier_init", "constant_init", "kaiming_init",
    "normal_init", "trunc_normal_", "trunc_normal_init", "uniform_init", "xavier_init",
    "tf_trunc_normal_", "variance_scaling_",
    # checkpoints
    "cache_dir", "register_scheme",
    # tools: config files, reports, health check
    "ModelConfig", "load_config", "ParamReport", "Report", "build_report", "plan_report",
    "HealthResult", "check_health", "plot_health",
    # errors, by domain
    "InitError", "InitTypeError", "InitValueError", "InitRuntimeError", "InitKeyError",
    "InitCfgError", "ConfigStructureError", "ConfigEntryTypeError", "UnknownTypeError",
    "DistributionError",
    "OverrideError", "OverrideTargetError", "ShapeError", "InitRecordError", "LSUVError",
    "CheckpointError", "CheckpointNotFoundError", "CheckpointKeyError",
    "CheckpointMismatchError", "UnsafeCheckpointError", "CheckpointDownloadError",
    "CheckpointHashError", "CheckpointCacheError",
    "MaterializeError", "UndefinedParameterError", "ShardingError",
    "ConfigError", "ConfigNotFoundError", "HealthCheckError", "UnappliedConfigError",
    # warnings (strict=True raises the matching error instead)
    "InitWarning", "UnappliedConfigWarning", "UnmatchedLayerWarning", "EmptyRuleWarning",
    "CheckpointKeysWarning", "NonFiniteCheckpointWarning", "RepeatedInitWarning",
]
