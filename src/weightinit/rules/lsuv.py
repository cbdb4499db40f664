"""LSUV: layer-sequential unit variance (Mishkin & Matas, 2016), a data-driven rule."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import (
    InitTypeError,
    InitValueError,
    LSUVError,
    ShapeError,
    StopForward,
)
from .base import BaseInit, _finite, _require_drawable, layer_matches
from .registry import WEIGHT_INITIALIZERS


@WEIGHT_INITIALIZERS.register_module(name="LSUV")
class LSUVInit(BaseInit):
    """Layer-sequential unit variance (Mishkin & Matas, 2016), data-driven.

    Matched layers (``layer``, default every Linear and Conv) get an
    orthogonal weight and a constant bias; then, layer by layer in forward
    order, the weight is rescaled by ``target_std / std(output)`` until the
    layer's output std on the batch is within ``tol`` (relative) of
    ``target_std``, at most ``max_iters`` times. Runs after the declaring
    module's children (like Pretrained), on the whole module, since it
    measures the signal that flows through it.

    The batch: ``data`` (a tensor, or a callable returning one) or random
    normal data of ``input_shape`` drawn with ``seed``. Buffers changed by
    the forward passes (BatchNorm statistics) are restored afterwards.

    Example::

        >>> dict(type='LSUV', input_shape=(64, 3, 32, 32), tol=0.05)
    """

    arg_names = ("input_shape", "tol", "max_iters", "target_std")
    late = True

    def __init__(self, input_shape: list[int] | tuple[int, ...] | None = None, data: Any = None,
                 tol: float = 0.05, max_iters: int = 10, target_std: float = 1.0,
                 seed: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("layer", ["Linear", "Conv1d", "Conv2d", "Conv3d"])
        super().__init__(**kwargs)
        if (input_shape is None) == (data is None):
            raise InitValueError("LSUV needs exactly one of input_shape=(batch, ...) or data=<a "
                                 "tensor or a callable returning one>")
        if input_shape is not None and (
                not isinstance(input_shape, (list, tuple)) or not input_shape
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                       for d in input_shape)):
            raise InitTypeError(f"input_shape must be a list of positive ints, got "
                                f"{input_shape!r}")
        if data is not None and not (isinstance(data, Tensor) or callable(data)):
            raise InitTypeError(f"data must be a tensor or a callable, got {type(data).__name__}")
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.data = data
        self.tol = _finite(tol, "tol", "give tol a finite value > 0, e.g. tol=0.05")
        self.target_std = _finite(target_std, "target_std",
                                  "give target_std a finite value > 0, e.g. target_std=1.0")
        if self.tol <= 0 or self.target_std <= 0:
            raise InitValueError(f"tol and target_std must be > 0, got {tol}, {target_std}")
        if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
            raise InitTypeError(f"max_iters must be an int >= 1, got {max_iters!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InitTypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
        self.max_iters = max_iters
        self.seed = seed

    def check_weight(self, shape: tuple[int, ...]) -> None:
        if len(shape) < 2:
            raise ShapeError(f"LSUV needs weights with at least 2 dimensions, got {tuple(shape)}")

    def check_fill(self, role: str, shape: tuple[int, ...], dtype: torch.dtype,
                   module: nn.Module | None) -> None:
        super().check_fill(role, shape, dtype, module)
        if role != "bias":
            _require_drawable("orthogonal", dtype)

    def init_weight(self, tensor: Tensor) -> None:
        with torch.no_grad():
            nn.init.orthogonal_(tensor)

    def stage(self, module: nn.Module) -> Any:
        return _LSUVStage(self)

class _LSUVStage:
    """The data-driven half of LSUV, run as a step after the orthogonal writes."""

    record_kind = "rule"
    #: runs forward passes over the whole module: impossible on a sharded model
    whole_model = True

    def __init__(self, rule: LSUVInit) -> None:
        self.rule = rule

    def _get_init_info(self) -> str:
        return self.rule._get_init_info()

    def _batch(self, module: nn.Module) -> Tensor:
        rule = self.rule
        if rule.data is not None:
            if not callable(rule.data):
                return rule.data
            try:
                batch = rule.data()
            except Exception as err:
                raise LSUVError(f"LSUV: data() raised {type(err).__name__}: {err}. Fix: make "
                                "data a tensor, or a callable returning one.") from err
            if not isinstance(batch, Tensor):
                raise LSUVError(f"LSUV: data() returned a {type(batch).__name__}, not a tensor. "
                                "Fix: make data return the input batch as a torch.Tensor.")
            return batch
        ref = next((p for p in module.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        gen = torch.Generator(device="cpu").manual_seed(rule.seed)
        return torch.randn(rule.input_shape, generator=gen).to(device=device, dtype=dtype)

    def __call__(self, module: nn.Module) -> None:
        rule = self.rule
        names = {id(m): n or type(m).__name__ for n, m in module.named_modules()}
        layers = {id(m): m for m in module.modules() if layer_matches(m, rule.layer)}
        batch = self._batch(module)
        saved = {n: b.detach().clone() for n, b in module.named_buffers()}
        order: list[nn.Module] = []
        hooks = [m.register_forward_hook(lambda m, i, o: order.append(m) if m not in order
                                         else None) for m in layers.values()]
        try:
            with torch.no_grad():
                self._forward(module, batch)
                for h in hooks:
                    h.remove()
                hooks = []
                for layer in order:
                    if isinstance(getattr(layer, "weight", None), Tensor):  # else: nothing to scale
                        self._normalize(module, layer, names[id(layer)], batch)
        finally:
            for h in hooks:
                h.remove()
            with torch.no_grad():
                for n, b in module.named_buffers():
                    if n in saved:
                        b.copy_(saved[n])

    def _forward(self, module: nn.Module, batch: Tensor) -> None:
        """One forward pass on the batch; a failure of the model's code becomes an LSUVError."""
        try:
            module(batch)
        except StopForward:
            raise
        except Exception as err:
            rule = self.rule
            given = (f"input_shape={rule.input_shape}" if rule.input_shape is not None
                     else "data")
            raise LSUVError(
                f"LSUV: the forward pass of {type(module).__name__} on the batch "
                f"(shape {tuple(batch.shape)}, {str(batch.dtype).replace('torch.', '')}, from "
                f"{given}) raised {type(err).__name__}: {err}. Fix: give input_shape/data "
                "that the model's forward accepts (shape, dtype and device).") from err

    def _normalize(self, module: nn.Module, layer: nn.Module, name: str, batch: Tensor) -> None:
        rule = self.rule
        seen: dict[str, Any] = {}

        def grab(m: nn.Module, inputs: Any, output: Any) -> None:
            seen["out"] = output[0] if isinstance(output, tuple) else output
            raise StopForward

        handle = layer.register_forward_hook(grab)
        try:
            std = float("nan")
            for _ in range(rule.max_iters):
                seen.clear()
                try:
                    self._forward(module, batch)
                except StopForward:
                    pass
                out = seen.get("out")
                if not isinstance(out, Tensor):
                    what = ("did not run in this forward pass" if "out" not in seen
                            else f"returned a {type(out).__name__}, not a tensor")
                    raise LSUVError(
                        f"LSUV: {name} ({type(layer).__name__}) {what}, so its output std "
                        "cannot be measured. Fix: exclude it from 'layer'.")
                std = out.float().std().item()
                if not math.isfinite(std) or std == 0:
                    raise LSUVError(
                        f"LSUV: the output of {name} ({type(layer).__name__}) has std {std} on "
                        "the batch, so it cannot be scaled to unit variance. Fix: check the "
                        "batch (constant or all-zero data?) and the layers before it (dead "
                        "activations?), or exclude it from 'layer'.")
                if abs(std - rule.target_std) <= rule.tol * rule.target_std:
                    return
                layer.weight.mul_(rule.target_std / std)
            raise LSUVError(
                f"LSUV: {name} ({type(layer).__name__}) did not reach output std "
                f"{rule.target_std}±{rule.tol * rule.target_std:g} within {rule.max_iters} "
                f"iterations (last std {std:.4g}). Fix: raise max_iters or tol.")
        finally:
            handle.remove()
