"""Tensor-level fills, ``torch.nn.init`` style.

Each fills in place under ``torch.no_grad()`` and returns the tensor. The
per-element distributions (:class:`Elementwise`) are what seeded and sharded
initialization draw piece by piece.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..capture.deferred import note_call
from ..errors import InitValueError
from .fans import (
    FAN_MODES,
    VS_DISTRIBUTIONS,
    calculate_gain,
    check_choice,
    norm_cdf,
    variance_scaling_std,
)

# std of a standard normal truncated to [-2, 2]: dividing by it keeps the variance.
_TRUNC2_STD = 0.87962566103423978

# Below this probability mass inside [a, b], rejection sampling would redraw
# most elements several times; the inverse-CDF method is cheaper there.
_MIN_ACCEPT_MASS = 0.3

# the float32 spacing just below 1: the uniform draw of the inverse-CDF method off the GPU
# stays this far inside (-1, 1)
_ERFINV_EDGE = 2.0 ** -24

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

    def check(self) -> None:
        """Validate the arguments (and warn) as :meth:`fill_` does, without drawing: what a
        piecewise fill does once before calling :meth:`draw_` on each piece."""
        if self.kind == "trunc_normal":
            _check_trunc(*self.args, stacklevel=2)

    def draw_(self, tensor: Tensor, generator: torch.Generator | None = None) -> None:
        """:meth:`fill_` of a real (not meta), non-empty tensor after :meth:`check`: the same
        values from the same generator, without the checks."""
        with torch.no_grad():
            if self.kind == "constant":
                tensor.fill_(self.args[0])
            elif self.kind == "normal":
                tensor.normal_(*self.args, generator=generator)
            elif self.kind == "uniform":
                tensor.uniform_(*self.args, generator=generator)
            else:
                _trunc_draw(tensor, *self.args, generator=generator)

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

def sync_free_trunc(device: torch.device) -> bool:
    """Whether :func:`trunc_normal_` on ``device`` draws by the inverse-CDF method, which
    reads nothing back to the host: on every device but the CPU (where the rejection
    method's one host read is cheap, and its values are the library's reference)."""
    return device.type != "cpu"

def erfinv_range(mean: float, std: float, a: float, b: float, sync_free: bool
                 ) -> tuple[float, float]:
    """The range ``(low, high)`` whose uniform draws ``erfinv`` maps onto N(mean, std²)
    truncated to ``[a, b]`` (times std·√2, plus mean); kept inside ±(1 - 2⁻²⁴) off the CPU."""
    low = 2 * norm_cdf((a - mean) / std) - 1
    high = 2 * norm_cdf((b - mean) / std) - 1
    if sync_free:
        # keep erfinv finite: a draw of exactly -1 (a bound 10 std away and U's closed
        # end) would clamp to that far bound; ±(1 - 2⁻²⁴) is already ±5.3 std
        low = min(max(low, _ERFINV_EDGE - 1), 1 - _ERFINV_EDGE)
        high = max(min(high, 1 - _ERFINV_EDGE), low)
    return low, high

def _trunc_normal_inverse_cdf(tensor: Tensor, mean: float, std: float, a: float, b: float,
                              generator: torch.Generator | None = None) -> None:
    # Map U(Φ(α), Φ(β)) through Φ⁻¹; exact in distribution but five passes.
    work = tensor if tensor.dtype in (torch.float32, torch.float64) else torch.empty_like(
        tensor, dtype=torch.float32)
    sync_free = sync_free_trunc(work.device)  # off the CPU (the CPU's values stay as they were)
    low, high = erfinv_range(mean, std, a, b, sync_free)
    work.uniform_(low, high, generator=generator)
    work.erfinv_()
    work.mul_(std * math.sqrt(2.0))
    if mean != 0.0 or not sync_free:
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

    Exact in distribution, by one of two methods:

    * on the CPU, draws outside ``[a, b]`` are redrawn until inside
      (rejection sampling), which costs one normal draw plus a min/max read
      for the usual case of bounds a few std away; when less than 30 % of the
      mass lies in ``[a, b]`` (or the tensor is not floating point) it
      switches to the inverse-CDF method;
    * on any other device (CUDA ...), always the inverse-CDF method: draw
      U(2Φ(α)-1, 2Φ(β)-1), apply ``erfinv``, scale by std·√2, shift by
      ``mean`` (skipped when it is 0), clamp to ``[a, b]`` (float32 work
      buffer for lower precisions, then copied). One pass of a few
      elementwise kernels and no host synchronization (no ``.item()``, no
      ``nonzero``), so it can be queued with other work.

    Values under the same seed therefore differ between CPU and CUDA, as
    every random fill's values already do (torch's CPU and CUDA generators
    are different algorithms): CUDA values are the inverse-CDF transform of
    the CUDA generator's uniform draws (with ``seed=`` too: each block of a
    seeded fill is drawn this way from its own CUDA generator, so any slice
    still draws alone to the same values, but they are not the CPU's
    rejection-sampled ones). The CPU's values are unchanged.

    Example::

        >>> w = torch.empty(768, 768)
        >>> trunc_normal_(w, std=0.02)  # bounds ±2 are 100 std away: one pass
    """
    _check_trunc(mean, std, a, b, stacklevel=2)
    if tensor.device.type == "meta":
        note_call(trunc_normal_, tensor, mean, std, a, b)
        return tensor
    if tensor.numel() == 0:
        return tensor
    with torch.no_grad():
        _trunc_draw(tensor, mean, std, a, b, generator)
    return tensor

def _check_trunc(mean: float, std: float, a: float, b: float, stacklevel: int = 2) -> None:
    if not std > 0:
        raise InitValueError(f"trunc_normal_: std must be > 0, got {std}")
    if not a < b:
        raise InitValueError(f"trunc_normal_: need a < b, got a={a}, b={b}")
    if mean < a - 2 * std or mean > b + 2 * std:
        warnings.warn("mean is more than 2 std from [a, b] in trunc_normal_. "
                      "The distribution of values may be incorrect.", stacklevel=stacklevel + 1)

def _trunc_draw(tensor: Tensor, mean: float, std: float, a: float, b: float,
                generator: torch.Generator | None = None) -> None:
    mass = norm_cdf((b - mean) / std) - norm_cdf((a - mean) / std)
    if mass < _MIN_ACCEPT_MASS or not tensor.is_floating_point() or sync_free_trunc(
            tensor.device):
        _trunc_normal_inverse_cdf(tensor, mean, std, a, b, generator)
    else:
        _trunc_normal_rejection(tensor, mean, std, a, b, generator)

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
