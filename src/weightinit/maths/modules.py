"""MMEngine's module-level init functions (``kaiming_init(module, ...)`` ...).

Each touches a module's ``weight`` and ``bias`` when present and not ``None``;
the bias always gets a constant.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn
from torch import Tensor

from ..errors import InitValueError
from .fans import DISTRIBUTIONS, FAN_MODES, NONLINEARITIES, check_choice
from .fills import (
    constant_,
    kaiming_normal_,
    kaiming_uniform_,
    normal_,
    trunc_normal_,
    uniform_,
    xavier_normal_,
    xavier_uniform_,
)


def _weight(module: nn.Module) -> Tensor | None:
    return getattr(module, "weight", None)

def _fill_bias(module: nn.Module, bias: float) -> None:
    b = getattr(module, "bias", None)
    if b is not None:
        constant_(b, bias)

def constant_init(module: nn.Module, val: float, bias: float = 0) -> None:
    """weight ← val, bias ← ``bias``."""
    if (w := _weight(module)) is not None:
        constant_(w, val)
    _fill_bias(module, bias)

def xavier_init(module: nn.Module, gain: float = 1, bias: float = 0,
                distribution: str = "normal") -> None:
    """weight ← Glorot normal/uniform with ``gain``; bias ← ``bias``."""
    check_choice(distribution, DISTRIBUTIONS, "distribution")
    if (w := _weight(module)) is not None:
        (xavier_uniform_ if distribution == "uniform" else xavier_normal_)(w, gain)
    _fill_bias(module, bias)

def normal_init(module: nn.Module, mean: float = 0, std: float = 1, bias: float = 0) -> None:
    """weight ← N(mean, std²); bias ← ``bias``."""
    if (w := _weight(module)) is not None:
        normal_(w, mean, std)
    _fill_bias(module, bias)

def trunc_normal_init(module: nn.Module, mean: float = 0, std: float = 1, a: float = -2,
                      b: float = 2, bias: float = 0) -> None:
    """weight ← N(mean, std²) truncated to ``[a, b]`` (absolute bounds); bias ← ``bias``."""
    if (w := _weight(module)) is not None:
        trunc_normal_(w, mean, std, a, b)
    _fill_bias(module, bias)

def uniform_init(module: nn.Module, a: float = 0, b: float = 1, bias: float = 0) -> None:
    """weight ← U(a, b); bias ← ``bias``."""
    if (w := _weight(module)) is not None:
        uniform_(w, a, b)
    _fill_bias(module, bias)

def kaiming_init(module: nn.Module, a: float = 0, mode: str = "fan_out",
                 nonlinearity: str = "relu", bias: float = 0,
                 distribution: str = "normal") -> None:
    """weight ← He normal/uniform (note: ``mode='fan_out'`` by default); bias ← ``bias``."""
    check_choice(distribution, DISTRIBUTIONS, "distribution")
    check_choice(mode, FAN_MODES, "mode")
    check_choice(nonlinearity, NONLINEARITIES, "nonlinearity")
    if (w := _weight(module)) is not None:
        fill = kaiming_uniform_ if distribution == "uniform" else kaiming_normal_
        fill(w, a=a, mode=mode, nonlinearity=nonlinearity)
    _fill_bias(module, bias)

def caffe2_xavier_init(module: nn.Module, bias: float = 0) -> None:
    """Caffe2's ``XavierFill``: He *uniform* with a=1, fan_in, leaky_relu."""
    kaiming_init(module, a=1, mode="fan_in", nonlinearity="leaky_relu", bias=bias,
                 distribution="uniform")

def bias_init_with_prob(prior_prob: float) -> float:
    """Bias giving ``sigmoid(bias) = prior_prob``: ``-log((1 - p) / p)`` (focal-loss heads).

    Example::

        >>> round(bias_init_with_prob(0.01), 4)
        -4.5951
    """
    if isinstance(prior_prob, bool) or not isinstance(prior_prob, (int, float)):
        raise InitValueError(f"prior_prob must be a number in (0, 1), got {prior_prob!r}")
    if not 0 < prior_prob < 1:
        raise InitValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
    # numpy's log, as MMEngine computes it: numpy 1.x's differs from math.log in the last bit
    # for some inputs (0.1 among them), and a bias must equal MMEngine's bit for bit
    return float(-np.log((1 - prior_prob) / prior_prob))
