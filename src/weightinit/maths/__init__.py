"""The maths: fans and gains, tensor-level fills, MMEngine's module-level init functions."""

from .fans import (
    DISTRIBUTIONS,
    FAN_MODES,
    NONLINEARITIES,
    VS_DISTRIBUTIONS,
    VS_MODES,
    calculate_gain,
    check_choice,
    fan_in_and_fan_out,
    kaiming_std,
    norm_cdf,
    variance_scaling_std,
    xavier_std,
)
from .fills import (
    Elementwise,
    constant_,
    kaiming_normal_,
    kaiming_uniform_,
    normal_,
    tf_trunc_normal_,
    trunc_normal_,
    uniform_,
    variance_scaling_,
    variance_scaling_dist,
    xavier_normal_,
    xavier_uniform_,
)
from .modules import (
    bias_init_with_prob,
    caffe2_xavier_init,
    constant_init,
    kaiming_init,
    normal_init,
    trunc_normal_init,
    uniform_init,
    xavier_init,
)

__all__ = [
    "DISTRIBUTIONS", "FAN_MODES", "NONLINEARITIES", "VS_DISTRIBUTIONS", "VS_MODES",
    "Elementwise", "bias_init_with_prob", "caffe2_xavier_init", "calculate_gain", "check_choice",
    "constant_", "constant_init", "fan_in_and_fan_out", "kaiming_init", "kaiming_normal_",
    "kaiming_std", "kaiming_uniform_", "norm_cdf", "normal_", "normal_init", "tf_trunc_normal_",
    "trunc_normal_", "trunc_normal_init", "uniform_", "uniform_init", "variance_scaling_",
    "variance_scaling_dist", "variance_scaling_std", "xavier_init", "xavier_normal_",
    "xavier_std", "xavier_uniform_",
]
