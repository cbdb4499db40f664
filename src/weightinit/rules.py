"""Rule types: what one ``init_cfg`` entry writes into a weight or a bias.

A rule is a small value: its arguments, a ``layer`` filter, and two fills,
``init_weight(tensor)`` and ``init_bias(tensor)`` (always a constant). The
module walking lives elsewhere (``plan.py``); the one layer matcher is
:func:`layer_matches`.

Registered names are MMEngine's: ``Constant``, ``Xavier``, ``Normal``,
``TruncNormal``, ``Uniform``, ``Kaiming``, ``Caffe2Xavier``, ``Pretrained``.

Writing your own rule is one decorator and one method::

    >>> @WEIGHT_INITIALIZERS.register_module(name='Scaled')
    ... class ScaledInit(BaseInit):
    ...     def __init__(self, scale=1.0, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.scale = scale
    ...     def init_weight(self, tensor):
    ...         tensor.normal_(0, self.scale / tensor.shape[-1] ** 0.5)
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from . import functional as F
from .errors import InitTypeError, InitValueError, ShapeError
from .registry import WEIGHT_INITIALIZERS


@functools.cache
def class_names(cls: type) -> frozenset[str]:
    """Names of ``cls`` and of every class it inherits from."""
    return frozenset(c.__name__ for c in cls.__mro__)


def layer_matches(module: nn.Module, layers: tuple[str, ...] | list[str]) -> bool:
    """True if the module's class, or any class it inherits from, is named in ``layers``.

    MMEngine looks at the class and its direct bases only; following the
    whole inheritance chain also matches ``class MyConv(BaseConv(nn.Conv2d))``
    against ``layer='Conv2d'``.
    """
    return not class_names(type(module)).isdisjoint(layers)


class BaseInit:
    """Base of the rule initializers.

    Args:
        bias: constant written into every matched bias (default 0).
        bias_prob: if given, bias = ``bias_init_with_prob(bias_prob)``.
        layer: class name(s) whose modules this rule initializes.

    Subclasses implement :meth:`init_weight`. Calling an instance on a module
    plans and applies it like ``initialize(module, rule)``.
    """

    #: argument names shown in ``repr`` and the record, in order
    arg_names: tuple[str, ...] = ()

    def __init__(self, *, bias: float = 0, bias_prob: float | None = None,
                 layer: str | list[str] | None = None) -> None:
        self.wholemodule = False
        if not isinstance(bias, (int, float)):
            raise InitTypeError(f"bias must be a number, but got a {type(bias).__name__} "
                                f"({bias!r})")
        if bias_prob is not None and not isinstance(bias_prob, float):
            raise InitTypeError(f"bias_prob type must be float, but got "
                                f"{type(bias_prob).__name__} ({bias_prob!r})")
        if layer is None:
            layer = []
        elif not isinstance(layer, (str, list)):
            raise InitTypeError(f"layer must be a str or a list of str, but got a "
                                f"{type(layer).__name__} ({layer!r})")
        layers = [layer] if isinstance(layer, str) else list(layer)
        for name in layers:
            if not isinstance(name, str):
                raise InitTypeError(f"layer must be a str or a list of str, but the list "
                                    f"holds {name!r}")
        self.bias = F.bias_init_with_prob(bias_prob) if bias_prob is not None else bias
        self.bias_prob = bias_prob
        self.layer = layers

    # -- what a rule writes -------------------------------------------------
    def init_weight(self, tensor: Tensor) -> None:
        """Fill a matched ``weight``. Subclasses implement this."""
        raise NotImplementedError

    def init_bias(self, tensor: Tensor) -> None:
        """Fill a matched ``bias`` with the constant ``self.bias``."""
        F.constant_(tensor, self.bias)

    def check_weight(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`ShapeError` if :meth:`init_weight` cannot fill this shape."""

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        """The std this rule promises for a weight of this shape, if it has one."""
        return None

    # -- planning hooks -----------------------------------------------------
    @property
    def plannable(self) -> bool:
        """False for MMEngine-style subclasses that only define ``__call__``."""
        return type(self).init_weight is not BaseInit.init_weight

    def args(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.arg_names}
        out["bias"] = self.bias
        return out

    @property
    def type_name(self) -> str:
        name = type(self).__name__
        return name[:-4] if name.endswith("Init") and len(name) > 4 else name

    def _get_init_info(self) -> str:
        """One line saying what this rule writes (the text of the init record)."""
        args = ", ".join(f"{k}={v}" for k, v in self.args().items())
        return f"{type(self).__name__}: {args}"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args().items())
        layer = f", layer={self.layer!r}" if self.layer else ""
        return f"{type(self).__name__}({args}{layer})"

    def __call__(self, module: nn.Module) -> None:
        from .engine import apply_initializer

        apply_initializer(module, self)


def _require_fans(shape: tuple[int, ...], rule: str) -> None:
    if len(shape) < 2:
        raise ShapeError(f"{rule} needs fan in/out, which a weight of shape {tuple(shape)} "
                         "(fewer than 2 dimensions) does not have")


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InitTypeError(f"{what} must be a number, got {type(value).__name__} ({value!r})")
    return value


@WEIGHT_INITIALIZERS.register_module(name="Constant")
class ConstantInit(BaseInit):
    """weight ← ``val``; bias ← ``bias``.

    Example::

        >>> dict(type='Constant', layer='BatchNorm2d', val=1, bias=0)
    """

    arg_names = ("val",)

    def __init__(self, val: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val = _number(val, "val")

    def init_weight(self, tensor: Tensor) -> None:
        F.constant_(tensor, self.val)

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
        self.gain = _number(gain, "gain")
        self.distribution = F.check_choice(distribution, F.DISTRIBUTIONS, "distribution")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        _require_fans(shape, "Xavier")

    def init_weight(self, tensor: Tensor) -> None:
        fill = F.xavier_uniform_ if self.distribution == "uniform" else F.xavier_normal_
        fill(tensor, self.gain)

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return F.xavier_std(shape, self.gain)


@WEIGHT_INITIALIZERS.register_module(name="Normal")
class NormalInit(BaseInit):
    """weight ← N(mean, std²)."""

    arg_names = ("mean", "std")

    def __init__(self, mean: float = 0, std: float = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mean = _number(mean, "mean")
        self.std = _number(std, "std")
        if self.std < 0:
            raise InitValueError(f"std must be >= 0, got {std}")

    def init_weight(self, tensor: Tensor) -> None:
        F.normal_(tensor, self.mean, self.std)

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return float(self.std)


@WEIGHT_INITIALIZERS.register_module(name="TruncNormal")
class TruncNormalInit(BaseInit):
    """weight ← N(mean, std²) truncated to the absolute bounds [a, b]."""

    arg_names = ("a", "b", "mean", "std")

    def __init__(self, mean: float = 0, std: float = 1, a: float = -2, b: float = 2,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mean = _number(mean, "mean")
        self.std = _number(std, "std")
        self.a = _number(a, "a")
        self.b = _number(b, "b")
        if not self.std > 0:
            raise InitValueError(f"std must be > 0, got {std}")
        if not self.a < self.b:
            raise InitValueError(f"need a < b, got a={a}, b={b}")

    def init_weight(self, tensor: Tensor) -> None:
        F.trunc_normal_(tensor, self.mean, self.std, self.a, self.b)


@WEIGHT_INITIALIZERS.register_module(name="Uniform")
class UniformInit(BaseInit):
    """weight ← U(a, b)."""

    arg_names = ("a", "b")

    def __init__(self, a: float = 0, b: float = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.a = _number(a, "a")
        self.b = _number(b, "b")

    def init_weight(self, tensor: Tensor) -> None:
        F.uniform_(tensor, self.a, self.b)

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
        self.a = _number(a, "a")
        self.mode = F.check_choice(mode, F.FAN_MODES, "mode")
        self.nonlinearity = F.check_choice(nonlinearity, F.NONLINEARITIES, "nonlinearity")
        self.distribution = F.check_choice(distribution, F.DISTRIBUTIONS, "distribution")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        _require_fans(shape, type(self).__name__[:-4])

    def init_weight(self, tensor: Tensor) -> None:
        fill = F.kaiming_uniform_ if self.distribution == "uniform" else F.kaiming_normal_
        fill(tensor, a=self.a, mode=self.mode, nonlinearity=self.nonlinearity)

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return F.kaiming_std(shape, self.a, self.mode, self.nonlinearity)


@WEIGHT_INITIALIZERS.register_module(name="Caffe2Xavier")
class Caffe2XavierInit(KaimingInit):
    """Caffe2's ``XavierFill``: He uniform with a=1, fan_in, leaky_relu."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(a=1, mode="fan_in", nonlinearity="leaky_relu", distribution="uniform",
                         **kwargs)


@WEIGHT_INITIALIZERS.register_module(name="Pretrained")
class PretrainedInit:
    """Load a module's weights from a checkpoint; applied after every other rule.

    Args:
        checkpoint: path of the checkpoint (``~`` expanded; ``file://`` accepted).
        prefix: load only the keys under this prefix (``'backbone.'``), stripped.
        map_location: where tensors are read to (default ``'cpu'``).
        allow_pickle: read a ``.pth`` that needs arbitrary code to unpickle.
            Off by default: such a file could run anything while loading.

    Keys the checkpoint covers are written once, from the checkpoint; keys it
    does not cover keep whatever rule (or default) owns them.
    """

    def __init__(self, checkpoint: str, prefix: str | None = None,
                 map_location: str | torch.device | None = "cpu",
                 allow_pickle: bool = False) -> None:
        if not isinstance(checkpoint, str) and not hasattr(checkpoint, "__fspath__"):
            raise InitTypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
        if prefix is not None and not isinstance(prefix, str):
            raise InitTypeError(f"prefix must be a str or None, got {type(prefix).__name__}")
        self.checkpoint = str(checkpoint)
        self.prefix = prefix
        self.map_location = map_location
        if not isinstance(allow_pickle, bool):
            raise InitTypeError(f"allow_pickle must be a bool, got {type(allow_pickle).__name__}")
        self.allow_pickle = allow_pickle
        self.wholemodule = False

    plannable = True
    type_name = "Pretrained"

    def args(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "prefix": self.prefix}

    def _get_init_info(self) -> str:
        return f"{type(self).__name__}: load from {self.checkpoint}"

    def __repr__(self) -> str:
        return f"PretrainedInit(checkpoint={self.checkpoint!r}, prefix={self.prefix!r})"

    def __call__(self, module: nn.Module) -> None:
        from .engine import apply_initializer

        apply_initializer(module, self)
