"""Rules whose fill is a structure, not independent draws: Orthogonal, Dirac, Eye,
the module's own default (``reset_parameters``) and zero-init of residual branches.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .. import maths as F
from ..compat import NORM_BASE
from ..errors import InitTypeError, InitValueError, ShapeError
from .base import BaseInit, _finite, _require_drawable
from .registry import WEIGHT_INITIALIZERS


@WEIGHT_INITIALIZERS.register_module(name="Orthogonal")
class OrthogonalInit(BaseInit):
    """A (semi-)orthogonal matrix times ``gain`` (Saxe et al., 2013); trailing dims flattened.

    For a weight viewed as ``rows × cols``: W·Wᵀ = gain²·I if rows ≤ cols,
    else Wᵀ·W = gain²·I.
    """

    arg_names = ("gain",)

    def __init__(self, gain: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gain = _finite(gain, "gain", "give gain a finite value, e.g. gain=1.0")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        if len(shape) < 2:
            raise ShapeError(f"Orthogonal needs at least 2 dimensions, got shape {tuple(shape)}")

    def check_fill(self, role: str, shape: tuple[int, ...], dtype: torch.dtype,
                   module: nn.Module | None) -> None:
        super().check_fill(role, shape, dtype, module)
        if role != "bias":
            _require_drawable("orthogonal", dtype)

    def fill_values(self, role: str, shape: tuple[int, ...], module: nn.Module | None
                    ) -> list[tuple[str, float]]:
        if role == "bias":
            return super().fill_values(role, shape, module)
        return [("gain", abs(self.gain))]  # every entry of gain·Q is within ±gain

    def init_weight(self, tensor: Tensor) -> None:
        with torch.no_grad():
            if tensor.dtype in (torch.float16, torch.bfloat16):
                # QR has no half-precision kernels: decompose in float32, then round.
                work = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
                nn.init.orthogonal_(work, gain=self.gain)
                tensor.copy_(work)
            else:
                nn.init.orthogonal_(tensor, gain=self.gain)

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        rows, cols = shape[0], math.prod(shape[1:])
        return abs(self.gain) * math.sqrt(min(rows, cols) / (rows * cols))

@WEIGHT_INITIALIZERS.register_module(name="Dirac")
class DiracInit(BaseInit):
    """Identity convolution: out channel i copies in channel i (per group) at the kernel centre.

    ``groups`` defaults to the conv's own ``groups``. Needs a 3-, 4- or 5-D weight.
    """

    arg_names = ("groups",)

    def __init__(self, groups: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int)
                                   or groups < 1):
            raise InitTypeError(f"groups must be a positive int or None, got {groups!r}")
        self.groups = groups

    def check_weight(self, shape: tuple[int, ...]) -> None:
        if len(shape) not in (3, 4, 5):
            raise ShapeError(f"Dirac needs a conv weight with 3 to 5 dimensions, got shape "
                             f"{tuple(shape)}")

    def check_fill(self, role: str, shape: tuple[int, ...], dtype: torch.dtype,
                   module: nn.Module | None) -> None:
        super().check_fill(role, shape, dtype, module)
        if role != "bias":
            self._groups(tuple(shape), module)

    def _groups(self, shape: tuple[int, ...], module: nn.Module | None) -> int:
        """``groups`` (default: the module's own), checked to divide the output channels."""
        groups = self.groups or getattr(module, "groups", 1) or 1
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ShapeError(f"Dirac: the module's groups={groups!r} is not a positive int; "
                             "pass groups=<int> to the rule")
        if shape[0] % groups:
            source = "groups" if self.groups else f"the conv's groups ({groups})"
            raise ShapeError(f"Dirac: {shape[0]} output channels are not divisible by "
                             f"groups={groups}; set {source} to a divisor of {shape[0]}"
                             + (" or leave groups unset to use the conv's own" if self.groups
                                else ""))
        return groups

    def init_weight(self, tensor: Tensor) -> None:
        self.fill_weight(tensor, None)

    def fill_weight(self, tensor: Tensor, module: nn.Module | None) -> None:
        groups = self._groups(tuple(tensor.shape), module)
        with torch.no_grad():
            nn.init.dirac_(tensor, groups)

    def sparse(self, role: str, shape: tuple[int, ...], module: nn.Module | None
               ) -> list[tuple[int, ...]] | None:
        """``nn.init.dirac_``'s ones: out channel ``g·k + d`` copies in channel ``d`` at the
        kernel centre, for each group ``g`` of ``k`` out channels and ``d < min(k, in)``."""
        if role == "bias" or type(self).fill_weight is not DiracInit.fill_weight \
                or type(self).init_weight is not DiracInit.init_weight:
            return None
        per_group = shape[0] // self._groups(tuple(shape), module)
        centre = tuple(n // 2 for n in shape[2:])
        return [(g * per_group + d, d, *centre) for g in range(shape[0] // per_group)
                for d in range(min(per_group, shape[1]))]

@WEIGHT_INITIALIZERS.register_module(name="Eye")
class EyeInit(BaseInit):
    """Identity matrix (ones on the diagonal) for a 2-D weight."""

    def check_weight(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2:
            raise ShapeError(f"Eye needs a 2-D weight, got shape {tuple(shape)}")

    def init_weight(self, tensor: Tensor) -> None:
        with torch.no_grad():
            nn.init.eye_(tensor)

    def sparse(self, role: str, shape: tuple[int, ...], module: nn.Module | None
               ) -> list[tuple[int, ...]] | None:
        """``nn.init.eye_``'s ones: the main diagonal."""
        if role == "bias" or type(self).init_weight is not EyeInit.init_weight \
                or type(self).fill_weight is not BaseInit.fill_weight:
            return None
        return [(i, i) for i in range(min(shape))]

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        """√(p(1 − p)), p = min(rows, cols)/(rows·cols): the share of ones."""
        if len(shape) != 2 or not shape[0] * shape[1]:
            return None
        p = min(shape) / (shape[0] * shape[1])
        return math.sqrt(p * (1 - p))

@WEIGHT_INITIALIZERS.register_module(name="Default")
class DefaultInit(BaseInit):
    """The module's own PyTorch default: ``reset_parameters()`` of each matched module.

    Writes all of the module's direct parameters (one call per module); ``bias``
    is not used. A matched module without ``reset_parameters`` is an error.
    """

    def module_targets(self, module: nn.Module) -> list[tuple[str, Tensor]]:
        if reset_method_of(module) is None:
            raise InitTypeError(f"Default: {type(module).__name__} has no reset_parameters(), "
                                "so it has no PyTorch default. Fix: give it another rule.")
        return [("reset", p) for p in module._parameters.values() if p is not None]

    def group(self, module: nn.Module | None) -> int | None:
        return id(module)

    def init_weight(self, tensor: Tensor) -> None:
        raise InitTypeError("Default needs the module: it calls its reset_parameters()")

    def fill_weight(self, tensor: Tensor, module: nn.Module | None) -> None:
        reset = reset_method_of(module) if module is not None else None
        if reset is None:
            raise InitTypeError("Default needs a module with reset_parameters()")
        reset()

    def args(self) -> dict[str, Any]:
        return {}

    def _get_init_info(self) -> str:
        return "DefaultInit: reset_parameters()"

def reset_method_of(module: nn.Module) -> Any:
    """The module's ``reset_parameters`` (or MultiheadAttention's ``_reset_parameters``)."""
    for name in ("reset_parameters", "_reset_parameters"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None

_NORM_TYPES = (NORM_BASE, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)

def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or (
        "Norm" in type(module).__name__ and isinstance(getattr(module, "weight", None), Tensor))

@WEIGHT_INITIALIZERS.register_module(name="ZeroInitResidual")
class ZeroInitResidualInit(BaseInit):
    """Zero the scale (γ) of the last normalization layer of each residual branch.

    Each residual block then starts as the identity (Goyal et al., 2017;
    "zero-init residual"). ``layer`` names the block classes; ``norm`` is a
    glob of the norm's name inside the block (``'bn3'``, ``'*.norm2'``);
    without ``norm`` the block's last normalization layer in registration
    order is used. Without ``layer``, ``norm`` is a pattern over the whole
    module declaring the rule (``'layer*.*.bn3'``). Norm biases are left as
    they are.
    """

    arg_names = ("norm",)
    targets_itself = True

    def __init__(self, norm: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if norm is not None and not isinstance(norm, str):
            raise InitTypeError(f"norm must be a str pattern or None, got {norm!r}")
        if norm is None and not self.layer:
            raise InitValueError("ZeroInitResidual needs layer=<residual block class> or "
                                 "norm=<name pattern of the norms to zero>")
        self.norm = norm

    def _norms(self, block: nn.Module) -> list[nn.Module]:
        if self.norm is None:
            norms = [m for n, m in block.named_modules() if n and _is_norm(m)]
            return norms[-1:]
        parts = self.norm.split(".")
        return [m for n, m in block.named_modules()
                if n and len(n.split(".")) == len(parts)
                and all(fnmatch.fnmatchcase(a, b) for a, b in zip(n.split("."), parts))]

    def module_targets(self, module: nn.Module) -> list[tuple[str, Tensor]]:
        out = []
        for norm in self._norms(module):
            w = getattr(norm, "weight", None)
            if not isinstance(w, Tensor):
                raise InitTypeError(f"ZeroInitResidual: {type(norm).__name__} in "
                                    f"{type(module).__name__} has no affine weight to zero")
            out.append(("weight", w))
        if not out:
            raise InitValueError(f"ZeroInitResidual: no normalization layer "
                                 f"{'named ' + repr(self.norm) if self.norm else ''} in "
                                 f"{type(module).__name__}. Fix: set norm=<name pattern>.")
        return out

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("constant", (0.0,))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return 0.0

    def args(self) -> dict[str, Any]:
        return {"norm": self.norm}
