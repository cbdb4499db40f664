"""The maths: tensor-level fills and MMEngine's module-level init functions.

Tensor functions end in ``_``, fill in place under ``torch.no_grad()`` and
return the tensor. Module functions (``kaiming_init`` ...) touch a module's
``weight`` and ``bias`` when present and not ``None``; the bias always gets
a constant.

Every rule that depends on fans calls :func:`fan_in_and_fan_out`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from .errors import DistributionError, InitValueError, ShapeError

DISTRIBUTIONS = ("normal", "uniform")
FAN_MODES = ("fan_in", "fan_out")
VS_MODES = ("fan_in", "fan_out", "fan_avg")
VS_DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")
# std of a standard normal truncated to [-2, 2]: dividing by it keeps the variance.
_TRUNC2_STD = 0.87962566103423978
NONLINEARITIES = (
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu",
)

# Below this probability mass inside [a, b], rejection sampling would redraw
# most elements several times; the inverse-CDF method is cheaper there.
_MIN_ACCEPT_MASS = 0.3


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
    groups = getattr(module, "groups", 1) if isinstance(module, nn.modules.conv._ConvNd) else 1
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


def variance_scaling_(tensor: Tensor, scale: float = 1.0, mode: str = "fan_in",
                      distribution: str = "truncated_normal",
                      module: nn.Module | None = None) -> Tensor:
    """Fill so that Var(w) = scale / n, n = fan_in, fan_out or their mean (``mode``).

    One primitive for the classic rules (as in JAX): Glorot is
    (scale=gain², fan_avg), He is (gain², fan_in or fan_out), LeCun is
    (1, fan_in). ``distribution``:

    * ``truncated_normal``: N(0, σ²) truncated to ±2σ, σ = √(scale/n)/0.8796
      so the truncated variance is scale/n;
    * ``normal``: N(0, scale/n);
    * ``uniform``: U(-b, b), b = √(3·scale/n).

    Example::

        >>> variance_scaling_(torch.empty(256, 128), 2.0, "fan_in", "normal")  # He normal
    """
    return variance_scaling_dist(tuple(tensor.shape), scale, mode, distribution,
                                 module).fill_(tensor)


def variance_scaling_dist(shape: tuple[int, ...], scale: float = 1.0, mode: str = "fan_in",
                          distribution: str = "truncated_normal",
                          module: nn.Module | None = None) -> Elementwise:
    """The per-element distribution :func:`variance_scaling_` draws for this shape."""
    check_choice(distribution, VS_DISTRIBUTIONS, "distribution")
    std = variance_scaling_std(shape, scale, mode, module)
    if distribution == "uniform":
        bound = math.sqrt(3.0) * std
        return Elementwise("uniform", (-bound, bound))
    if distribution == "normal" or std == 0:
        return Elementwise("normal", (0.0, std))
    sigma = std / _TRUNC2_STD
    return Elementwise("trunc_normal", (0.0, sigma, -2 * sigma, 2 * sigma))


@dataclass(frozen=True)
class Elementwise:
    """A fill whose elements are independent draws of one distribution (or one constant).

    Such a fill can be generated piece by piece: any slice of the tensor
    can be drawn without drawing the rest, which is what seeded and sharded
    initialization build on. ``kind`` and ``args``:

    * ``constant``: ``(val,)``
    * ``normal``: ``(mean, std)``
    * ``uniform``: ``(low, high)``
    * ``trunc_normal``: ``(mean, std, a, b)``, absolute bounds
    """

    kind: str
    args: tuple[float, ...]

    @property
    def random(self) -> bool:
        return self.kind != "constant"

    def fill_(self, tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Fill ``tensor`` with this distribution, drawing from ``generator`` (default: global)."""
        if self.kind == "constant":
            return constant_(tensor, *self.args)
        if self.kind == "normal":
            return normal_(tensor, *self.args, generator=generator)
        if self.kind == "uniform":
            return uniform_(tensor, *self.args, generator=generator)
        return trunc_normal_(tensor, *self.args, generator=generator)


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
        return math.sqrt(2.0 / (1 + slope**2))
    return nn.init.calculate_gain(nonlinearity, param)


# ---------------------------------------------------------------- tensor fills


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill with ``val``."""
    with torch.no_grad():
        return tensor.fill_(val)


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0,
            generator: torch.Generator | None = None) -> Tensor:
    """Fill with draws from N(mean, std²)."""
    with torch.no_grad():
        return tensor.normal_(mean, std, generator=generator)


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0,
             generator: torch.Generator | None = None) -> Tensor:
    """Fill with draws from U(a, b)."""
    with torch.no_grad():
        return tensor.uniform_(a, b, generator=generator)


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _trunc_normal_inverse_cdf(tensor: Tensor, mean: float, std: float, a: float, b: float,
                              generator: torch.Generator | None = None) -> None:
    # Map U(Φ(α), Φ(β)) through Φ⁻¹; exact in distribution but five passes.
    lower, upper = _norm_cdf((a - mean) / std), _norm_cdf((b - mean) / std)
    work = tensor if tensor.dtype in (torch.float32, torch.float64) else torch.empty_like(
        tensor, dtype=torch.float32)
    work.uniform_(2 * lower - 1, 2 * upper - 1, generator=generator)
    work.erfinv_()
    work.mul_(std * math.sqrt(2.0))
    work.add_(mean)
    work.clamp_(min=a, max=b)
    if work is not tensor:
        tensor.copy_(work)


def _trunc_normal_rejection(tensor: Tensor, mean: float, std: float, a: float, b: float,
                            generator: torch.Generator | None = None) -> None:
    # Draw N(mean, std²) once; redraw only the out-of-range elements until all
    # are inside [a, b]. Each element ends up distributed exactly as the
    # truncated normal, and one extra read pass (aminmax) is the usual cost.
    flat = tensor.view(-1) if tensor.is_contiguous() else torch.empty(
        tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    flat.normal_(mean, std, generator=generator)
    lo, hi = torch.aminmax(flat)
    if bool(((lo < a) | (hi > b)).item()):  # one device sync
        idx = torch.nonzero((flat < a) | (flat > b)).squeeze(1)
        while idx.numel():
            draw = torch.empty(idx.numel(), dtype=flat.dtype, device=flat.device).normal_(
                mean, std, generator=generator)
            flat[idx] = draw
            idx = idx[(draw < a) | (draw > b)]
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view_as(tensor))


def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill with N(mean, std²) truncated to the absolute bounds ``[a, b]``.

    Exact: draws outside ``[a, b]`` are redrawn until inside (rejection
    sampling), which costs one normal draw plus a min/max read for the usual
    case of bounds a few std away; when less than 30 % of the mass lies in
    ``[a, b]`` it switches to the inverse-CDF method.

    Example::

        >>> w = torch.empty(768, 768)
        >>> trunc_normal_(w, std=0.02)  # bounds ±2 are 100 std away: one pass
    """
    if not std > 0:
        raise InitValueError(f"trunc_normal_: std must be > 0, got {std}")
    if not a < b:
        raise InitValueError(f"trunc_normal_: need a < b, got a={a}, b={b}")
    if mean < a - 2 * std or mean > b + 2 * std:
        warnings.warn("mean is more than 2 std from [a, b] in trunc_normal_. "
                      "The distribution of values may be incorrect.", stacklevel=2)
    if tensor.device.type == "meta":
        from .deferred import note_call

        note_call(trunc_normal_, tensor, mean, std, a, b)
        return tensor
    if tensor.numel() == 0:
        return tensor
    with torch.no_grad():
        mass = _norm_cdf((b - mean) / std) - _norm_cdf((a - mean) / std)
        if mass < _MIN_ACCEPT_MASS or not tensor.is_floating_point():
            _trunc_normal_inverse_cdf(tensor, mean, std, a, b, generator)
        else:
            _trunc_normal_rejection(tensor, mean, std, a, b, generator)
    return tensor


def xavier_std(shape: tuple[int, ...], gain: float = 1.0) -> float:
    """Glorot: std = gain·√(2 / (fan_in + fan_out)) (torch's fans)."""
    return variance_scaling_std(shape, gain * gain, "fan_avg")


def kaiming_std(shape: tuple[int, ...], a: float = 0.0, mode: str = "fan_in",
                nonlinearity: str = "leaky_relu") -> float:
    """He: std = gain(nonlinearity, a) / √fan, fan chosen by ``mode`` (torch's fans)."""
    check_choice(mode, FAN_MODES, "mode")
    gain = calculate_gain(nonlinearity, a)
    return variance_scaling_std(shape, gain * gain, mode)


def xavier_normal_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """Fill with N(0, std²), std = gain·√(2/(fan_in+fan_out)) (Glorot & Bengio, 2010)."""
    return variance_scaling_(tensor, gain * gain, "fan_avg", "normal")


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """Fill with U(-b, b), b = gain·√(6/(fan_in+fan_out)) (Glorot & Bengio, 2010)."""
    return variance_scaling_(tensor, gain * gain, "fan_avg", "uniform")


def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu") -> Tensor:
    """Fill with N(0, std²), std = gain/√fan (He et al., 2015)."""
    check_choice(mode, FAN_MODES, "mode")
    gain = calculate_gain(nonlinearity, a)
    return variance_scaling_(tensor, gain * gain, mode, "normal")


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> Tensor:
    """Fill with U(-b, b), b = gain·√(3/fan) (He et al., 2015)."""
    check_choice(mode, FAN_MODES, "mode")
    gain = calculate_gain(nonlinearity, a)
    return variance_scaling_(tensor, gain * gain, mode, "uniform")


def tf_trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                     b: float = 2.0) -> Tensor:
    """TensorFlow-style truncated normal: bounds ``a``, ``b`` in units of ``std`` around ``mean``.

    Same as ``trunc_normal_(tensor, mean, std, mean + a·std, mean + b·std)``.
    """
    return trunc_normal_(tensor, mean, std, mean + a * std, mean + b * std)


# ---------------------------------------------------------------- module level


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
    return float(-math.log((1 - prior_prob) / prior_prob))
