"""Rules whose weight fill is independent draws or a constant.

Registered names are MMEngine's (``Constant``, ``Xavier``, ``Normal``,
``TruncNormal``, ``Uniform``, ``Kaiming``, ``Caffe2Xavier``) plus
``VarianceScaling`` (the one primitive behind Glorot/He/LeCun), ``LeCunNormal``,
``LeCunUniform``, ``TFTruncNormal``, ``Zeros`` and ``Ones``.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn as nn

from .. import maths as F
from ..errors import InitValueError
from .base import BaseInit, _finite, _is_finite, _require_fans, dist_values
from .registry import WEIGHT_INITIALIZERS


@WEIGHT_INITIALIZERS.register_module(name="Constant")
class ConstantInit(BaseInit):
    """weight ← ``val``; bias ← ``bias``.

    Example::

        >>> dict(type='Constant', layer='BatchNorm2d', val=1, bias=0)
    """

    arg_names = ("val",)

    def __init__(self, val: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val = _finite(val, "val", "give val a finite constant, e.g. val=1")

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("constant", (float(self.val),))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return 0.0

@WEIGHT_INITIALIZERS.register_module(name="Xavier")
class XavierInit(BaseInit):
    """Glorot & Bengio (2010): std = gain·√(2/(fan_in+fan_out)).

    ``distribution='normal'`` draws N(0, std²); ``'uniform'`` draws U(-√3·std, √3·std).
    """

    arg_names = ("gain", "distribution")

    def __init__(self, gain: float = 1, distribution: str = "normal", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gain = _finite_gain(gain)
        self.distribution = F.check_choice(distribution, F.DISTRIBUTIONS, "distribution")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        _require_fans(shape, "Xavier")

    def fill_values(self, role: str, shape: tuple[int, ...], module: nn.Module | None
                    ) -> list[tuple[str, float]]:
        if role == "bias":
            return super().fill_values(role, shape, module)
        return dist_values(self.weight_dist(shape, module),
                           f" (computed from gain={self.gain} and the fans)")

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.variance_scaling_dist(shape, self.gain * self.gain, "fan_avg",
                                       self.distribution)

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return F.xavier_std(shape, self.gain)

@WEIGHT_INITIALIZERS.register_module(name="Normal")
class NormalInit(BaseInit):
    """weight ← N(mean, std²)."""

    arg_names = ("mean", "std")

    def __init__(self, mean: float = 0, std: float = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mean = _finite(mean, "mean", "give mean a finite value, e.g. mean=0")
        self.std = _finite(std, "std", "give std a finite value >= 0, e.g. std=0.02")
        if self.std < 0:
            raise InitValueError(f"std must be >= 0, got {std}")

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("normal", (self.mean, self.std))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return float(self.std)

def _truncated_std(std: float, alpha: float, beta: float) -> float | None:
    # Std of a normal of this std truncated to [alpha, beta] in units of std.
    pdf = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    mass = F.norm_cdf(beta) - F.norm_cdf(alpha)
    if mass <= 0:
        return None
    tail = (alpha * pdf(alpha) - beta * pdf(beta)) / mass
    shift = (pdf(alpha) - pdf(beta)) / mass
    return std * math.sqrt(max(0.0, 1 + tail - shift * shift))

@WEIGHT_INITIALIZERS.register_module(name="TruncNormal")
class TruncNormalInit(BaseInit):
    """weight ← N(mean, std²) truncated to the absolute bounds [a, b]."""

    arg_names = ("a", "b", "mean", "std")

    def __init__(self, mean: float = 0, std: float = 1, a: float = -2, b: float = 2,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mean = _finite(mean, "mean", "give mean a finite value, e.g. mean=0")
        self.std = _finite(std, "std", "give std a finite value > 0, e.g. std=0.02")
        self.a = _finite(a, "a", "give a finite lower bound, e.g. a=-2")
        self.b = _finite(b, "b", "give a finite upper bound, e.g. b=2")
        if not self.std > 0:
            raise InitValueError(f"std must be > 0, got {std}")
        if not self.a < self.b:
            raise InitValueError(f"need a < b, got a={a}, b={b}")

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("trunc_normal", (self.mean, self.std, self.a, self.b))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        """Std of N(mean, std²) truncated to [a, b]: std·√(1 + (αφ(α) − βφ(β))/Z − ((φ(α) − φ(β))/Z)²).

        α = (a − mean)/std, β = (b − mean)/std, Z = Φ(β) − Φ(α). With the
        usual std=0.02, a=-2, b=2 the bounds are 100 std away: the std is 0.02.
        """
        return _truncated_std(self.std, (self.a - self.mean) / self.std,
                              (self.b - self.mean) / self.std)

@WEIGHT_INITIALIZERS.register_module(name="Uniform")
class UniformInit(BaseInit):
    """weight ← U(a, b)."""

    arg_names = ("a", "b")

    def __init__(self, a: float = 0, b: float = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.a = _finite(a, "a", "give a finite lower bound, e.g. a=-0.1")
        self.b = _finite(b, "b", "give a finite upper bound, e.g. b=0.1")
        if not self.a < self.b:
            raise InitValueError(f"Uniform needs a < b, got a={a}, b={b}. Fix: give the lower "
                                 "bound as a and the upper bound as b, e.g. a=-0.1, b=0.1.")
        if not math.isfinite(float(self.b) - float(self.a)):
            raise InitValueError(f"Uniform: the width b - a of [a={a}, b={b}] is not a finite "
                                 "number. Fix: use narrower bounds.")

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("uniform", (self.a, self.b))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return abs(self.b - self.a) / 12**0.5

@WEIGHT_INITIALIZERS.register_module(name="Kaiming")
class KaimingInit(BaseInit):
    """He et al. (2015): std = gain(nonlinearity, a)/√fan, fan by ``mode`` (default fan_out).

    ``distribution='normal'`` draws N(0, std²); ``'uniform'`` draws U(-√3·std, √3·std).
    """

    arg_names = ("a", "mode", "nonlinearity", "distribution")

    def __init__(self, a: float = 0, mode: str = "fan_out", nonlinearity: str = "relu",
                 distribution: str = "normal", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.a = _finite(a, "a", "give the negative slope a a finite value, e.g. a=0")
        self.mode = F.check_choice(mode, F.FAN_MODES, "mode")
        self.nonlinearity = F.check_choice(nonlinearity, F.NONLINEARITIES, "nonlinearity")
        self.distribution = F.check_choice(distribution, F.DISTRIBUTIONS, "distribution")
        gain = F.calculate_gain(self.nonlinearity, self.a)
        if not (math.isfinite(gain) and gain > 0):
            raise InitValueError(
                f"a={a} gives a {self.nonlinearity} gain of {gain}, so every weight would be "
                f"{'0' if gain == 0 else 'non-finite'}. Fix: use a moderate negative slope, "
                "e.g. a=0.01 (or a=0 with nonlinearity='relu').")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        _require_fans(shape, type(self).__name__[:-4])

    def fill_values(self, role: str, shape: tuple[int, ...], module: nn.Module | None
                    ) -> list[tuple[str, float]]:
        if role == "bias":
            return super().fill_values(role, shape, module)
        return dist_values(self.weight_dist(shape, module),
                           f" (computed from a={self.a}, {self.nonlinearity} and the {self.mode})")

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        gain = F.calculate_gain(self.nonlinearity, self.a)
        return F.variance_scaling_dist(shape, gain * gain, self.mode, self.distribution)

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return F.kaiming_std(shape, self.a, self.mode, self.nonlinearity)

@WEIGHT_INITIALIZERS.register_module(name="Caffe2Xavier")
class Caffe2XavierInit(KaimingInit):
    """Caffe2's ``XavierFill``: He uniform with a=1, fan_in, leaky_relu."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(a=1, mode="fan_in", nonlinearity="leaky_relu", distribution="uniform",
                         **kwargs)

@WEIGHT_INITIALIZERS.register_module(name="VarianceScaling")
class VarianceScalingInit(BaseInit):
    """Var(w) = scale / n, n = fan_in, fan_out or fan_avg of the weight's module.

    The one primitive behind Glorot/He/LeCun. Fans know the module: grouped
    convs, transposed convs and embeddings are counted by what each unit is
    connected to (see :func:`weightinit.fan_in_and_fan_out`).
    ``distribution``: ``truncated_normal`` (±2σ, variance corrected),
    ``normal`` or ``uniform``.

    Example::

        >>> dict(type='VarianceScaling', layer='Linear', scale=2.0, mode='fan_in',
        ...      distribution='normal')
    """

    arg_names = ("scale", "mode", "distribution")

    def __init__(self, scale: float = 1.0, mode: str = "fan_in",
                 distribution: str = "truncated_normal", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = _finite(scale, "scale", "give scale a finite value > 0, e.g. scale=1.0")
        if self.scale <= 0:
            raise InitValueError(f"scale must be > 0, got {scale}")
        self.mode = F.check_choice(mode, F.VS_MODES, "mode")
        self.distribution = F.check_choice(distribution, F.VS_DISTRIBUTIONS, "distribution")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        _require_fans(shape, type(self).__name__[:-4])

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.variance_scaling_dist(shape, self.scale, self.mode, self.distribution, module)

    def fill_values(self, role: str, shape: tuple[int, ...], module: nn.Module | None
                    ) -> list[tuple[str, float]]:
        if role == "bias":
            return super().fill_values(role, shape, module)
        return dist_values(self.weight_dist(shape, module),
                           f" (computed from scale={self.scale} and the {self.mode})")

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return F.variance_scaling_std(shape, self.scale, self.mode)

@WEIGHT_INITIALIZERS.register_module(name="LeCunNormal")
class LeCunNormalInit(VarianceScalingInit):
    """LeCun normal (LeCun et al., 1998; Klambauer et al., 2017 for SELU): truncated N, Var = 1/fan_in."""

    arg_names = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(scale=1.0, mode="fan_in", distribution="truncated_normal", **kwargs)

@WEIGHT_INITIALIZERS.register_module(name="LeCunUniform")
class LeCunUniformInit(VarianceScalingInit):
    """LeCun uniform: U(-b, b), b = √(3 / fan_in)."""

    arg_names = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(scale=1.0, mode="fan_in", distribution="uniform", **kwargs)

@WEIGHT_INITIALIZERS.register_module(name="Zeros")
class ZerosInit(BaseInit):
    """weight ← 0; bias ← ``bias``."""

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("constant", (0.0,))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return 0.0

@WEIGHT_INITIALIZERS.register_module(name="Ones")
class OnesInit(BaseInit):
    """weight ← 1; bias ← ``bias``."""

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("constant", (1.0,))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return 0.0

@WEIGHT_INITIALIZERS.register_module(name="TFTruncNormal")
class TFTruncNormalInit(TruncNormalInit):
    """TensorFlow-style truncated normal: bounds ``a``, ``b`` in units of ``std`` (default ±2σ)."""

    def __init__(self, mean: float = 0, std: float = 1, a: float = -2, b: float = 2,
                 **kwargs: Any) -> None:
        super().__init__(mean=mean, std=std, a=a, b=b, **kwargs)
        for name, bound in (("a", self.a), ("b", self.b)):
            if not _is_finite(self.mean + bound * self.std):
                raise InitValueError(f"TFTruncNormal: the bound mean + {name}*std = "
                                     f"{self.mean} + {bound}*{self.std} is not finite. Fix: use "
                                     f"a smaller {name} or std.")

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("trunc_normal", (self.mean, self.std, self.mean + self.a * self.std,
                                              self.mean + self.b * self.std))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        """Std of N(mean, std²) truncated to mean + [a, b]·std (a, b in units of std)."""
        return _truncated_std(self.std, self.a, self.b)

def _finite_gain(gain: object) -> float:
    """A finite gain whose square (the variance factor) is finite too."""
    value = _finite(gain, "gain", "give gain a finite value, e.g. gain=1")
    if not math.isfinite(float(value) * float(value)):
        raise InitValueError(f"gain={gain} is too large: gain² (the variance factor) is not "
                             "finite. Fix: use a moderate gain, e.g. gain=1.")
    return value
