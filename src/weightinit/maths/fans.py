"""Fans, gains and the std each classic rule promises (one fan helper for every rule)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..compat import CONV_ND
from ..errors import DistributionError, InitValueError, ShapeError

DISTRIBUTIONS = ("normal", "uniform")

FAN_MODES = ("fan_in", "fan_out")

VS_MODES = ("fan_in", "fan_out", "fan_avg")

VS_DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")

NONLINEARITIES = (
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu",
)

def check_choice(value: object, allowed: tuple[str, ...], what: str, where: str = "") -> str:
    """Raise :class:`DistributionError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise DistributionError(f"{where}{what} must be one of {', '.join(map(repr, allowed))}, "
                                f"got {value!r}")
    return value  # type: ignore[return-value]

def fan_in_and_fan_out(shape: torch.Size | tuple[int, ...],
                       module: nn.Module | None = None) -> tuple[int, int]:
    """Fans of a weight of this shape: ``fan_in = shape[1]·k``, ``fan_out = shape[0]·k``.

    ``k`` is the receptive field size (product of ``shape[2:]``, 1 for linear
    weights): with no ``module`` this is exactly ``torch.nn.init``'s rule,
    which Xavier and Kaiming keep. Given the module that owns the weight,
    the fans follow what each unit is connected to:

    * grouped conv (``groups=g``): ``fan_out = shape[0]/g·k``;
    * transposed conv, weight ``(in, out/g, *k)``: ``fan_in = shape[0]/g·k``,
      ``fan_out = shape[1]·k``;
    * embedding, weight ``(num, dim)``: each output reads one row, so
      ``fan_in = 1`` and ``fan_out = dim``.

    Example::

        >>> fan_in_and_fan_out((64, 3, 7, 7))
        (147, 3136)
    """
    if len(shape) < 2:
        raise ShapeError(f"fan in and fan out can not be computed for a tensor with fewer than "
                         f"2 dimensions (shape {tuple(shape)})")
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return 1, shape[1]
    groups = getattr(module, "groups", 1) if isinstance(module, CONV_ND) else 1
    if getattr(module, "transposed", False):
        return shape[0] // groups * receptive, shape[1] * receptive
    return shape[1] * receptive, shape[0] // groups * receptive

def variance_scaling_std(shape: tuple[int, ...], scale: float = 1.0, mode: str = "fan_in",
                         module: nn.Module | None = None) -> float:
    """The std every VarianceScaling preset promises: √(scale / n), n the fan of ``mode``.

    ``fan_avg`` is (fan_in + fan_out) / 2.
    """
    check_choice(mode, VS_MODES, "mode")
    fan_in, fan_out = fan_in_and_fan_out(shape, module)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    return math.sqrt(scale / n) if n > 0 else 0.0

def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (as ``torch.nn.init.calculate_gain``).

    ``relu``: √2; ``leaky_relu`` with slope a: √(2/(1+a²)); ``tanh``: 5/3;
    ``selu``: 3/4; linear and conv identities: 1.
    """
    check_choice(nonlinearity, NONLINEARITIES, "nonlinearity")
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise InitValueError(f"negative slope {slope!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope * slope))  # a huge slope gives 0, not OverflowError
    return nn.init.calculate_gain(nonlinearity, param)

def norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

def xavier_std(shape: tuple[int, ...], gain: float = 1.0) -> float:
    """Glorot: std = gain·√(2 / (fan_in + fan_out)) (torch's fans)."""
    return variance_scaling_std(shape, gain * gain, "fan_avg")

def kaiming_std(shape: tuple[int, ...], a: float = 0.0, mode: str = "fan_in",
                nonlinearity: str = "leaky_relu") -> float:
    """He: std = gain(nonlinearity, a) / √fan, fan chosen by ``mode`` (torch's fans)."""
    check_choice(mode, FAN_MODES, "mode")
    gain = calculate_gain(nonlinearity, a)
    return variance_scaling_std(shape, gain * gain, mode)
