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

import fnmatch
import functools
import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from . import functional as F
from .errors import InitRuntimeError, InitTypeError, InitValueError, ShapeError
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
        param: glob pattern(s) of parameter names, relative to the module
            that declares the rule (``'pos_embed'``, ``'blocks.*.gamma'``):
            those parameters get this rule's weight fill, whatever their name
            or module. A pattern without a dot also matches that name at any
            depth.

    Subclasses implement :meth:`init_weight`. Calling an instance on a module
    plans and applies it like ``initialize(module, rule)``.
    """

    #: argument names shown in ``repr`` and the record, in order
    arg_names: tuple[str, ...] = ()
    #: applied after the declaring module's children, like ``Pretrained``
    late = False

    def __init__(self, *, bias: float = 0, bias_prob: float | None = None,
                 layer: str | list[str] | None = None,
                 param: str | list[str] | None = None) -> None:
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
        if param is not None and not isinstance(param, (str, list)):
            raise InitTypeError(f"param must be a str or a list of str, but got a "
                                f"{type(param).__name__} ({param!r})")
        params = [] if param is None else [param] if isinstance(param, str) else list(param)
        for pattern in params:
            if not isinstance(pattern, str) or not pattern:
                raise InitTypeError(f"param must hold non-empty str patterns, got {pattern!r}")
        self.param = params

    # -- what a rule writes -------------------------------------------------
    def init_weight(self, tensor: Tensor) -> None:
        """Fill a matched ``weight``: subclasses implement this or :meth:`weight_dist`."""
        dist = self.weight_dist(tuple(tensor.shape), None)
        if dist is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither init_weight "
                                      "nor weight_dist")
        dist.fill_(tensor)

    def init_bias(self, tensor: Tensor) -> None:
        """Fill a matched ``bias`` with the constant ``self.bias``."""
        F.constant_(tensor, self.bias)

    def fill_weight(self, tensor: Tensor, module: nn.Module | None) -> None:
        """Fill a weight (or a ``param``-targeted tensor) knowing the module that owns it.

        Rules whose maths depends on the module (fans of grouped convs,
        ``reset_parameters``) override this or take ``module`` in
        :meth:`weight_dist`; the default draws :meth:`weight_dist` for the
        module, else calls :meth:`init_weight`.
        """
        dist = self.elementwise("weight", tuple(tensor.shape), module)
        if dist is not None:
            dist.fill_(tensor)
        else:
            self.init_weight(tensor)

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None
                    ) -> F.Elementwise | None:
        """The per-element distribution of the weight fill for this shape, if it is one.

        Rules whose weight fill is independent draws (or a constant) define
        only this; the fill is drawn from it, and seeded and sharded
        initialization draw any slice of the tensor on its own. ``None``
        (orthogonal, identity, ...) means the rule implements
        :meth:`init_weight` and the whole tensor is filled at once.
        """
        return None

    def elementwise(self, role: str, shape: tuple[int, ...], module: nn.Module | None
                    ) -> F.Elementwise | None:
        """:meth:`weight_dist` or the bias constant, unless a subclass changed the fill."""
        cls = type(self)
        if role == "bias":
            if cls.init_bias is BaseInit.init_bias:
                return F.Elementwise("constant", (float(self.bias),))
            return None
        # A subclass that overrides the fill changes what is drawn: not elementwise.
        if cls.init_weight is not BaseInit.init_weight or \
                cls.fill_weight is not BaseInit.fill_weight:
            return None
        return self.weight_dist(tuple(shape), module)

    def module_targets(self, module: nn.Module) -> list[tuple[str, Tensor]]:
        """The (role, tensor) pairs this rule writes in a matched module: weight and bias."""
        out = []
        for role in ("weight", "bias"):
            t = getattr(module, role, None)
            if isinstance(t, Tensor):
                out.append((role, t))
        return out

    def group(self, module: nn.Module | None) -> int | None:
        """Writes sharing a group are done by one call (e.g. one ``reset_parameters``)."""
        return None

    def stage(self, module: nn.Module) -> Any:
        """A data-driven step to run on ``module`` after this rule's writes, or ``None``."""
        return None

    def check_weight(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`ShapeError` if :meth:`init_weight` cannot fill this shape."""

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        """The std this rule promises for a weight of this shape, if it has one."""
        return None

    # -- planning hooks -----------------------------------------------------
    @property
    def plannable(self) -> bool:
        """False for MMEngine-style subclasses that only define ``__call__``."""
        cls = type(self)
        return (cls.init_weight is not BaseInit.init_weight
                or cls.weight_dist is not BaseInit.weight_dist)

    def args(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.arg_names}
        out["bias"] = self.bias
        return out

    def targets_text(self) -> str:
        parts = []
        if self.layer:
            parts.append(f"layer={self.layer!r}")
        if self.param:
            parts.append(f"param={self.param!r}")
        return ", ".join(parts)

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
        targets = self.targets_text()
        return f"{type(self).__name__}({args}{', ' + targets if targets else ''})"

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
        self.gain = _number(gain, "gain")
        self.distribution = F.check_choice(distribution, F.DISTRIBUTIONS, "distribution")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        _require_fans(shape, "Xavier")

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
        self.mean = _number(mean, "mean")
        self.std = _number(std, "std")
        if self.std < 0:
            raise InitValueError(f"std must be >= 0, got {std}")

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("normal", (self.mean, self.std))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        return float(self.std)


def _truncated_std(std: float, alpha: float, beta: float) -> float | None:
    # Std of a normal of this std truncated to [alpha, beta] in units of std.
    pdf = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    mass = F._norm_cdf(beta) - F._norm_cdf(alpha)
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
        self.mean = _number(mean, "mean")
        self.std = _number(std, "std")
        self.a = _number(a, "a")
        self.b = _number(b, "b")
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
        self.a = _number(a, "a")
        self.b = _number(b, "b")

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
        self.a = _number(a, "a")
        self.mode = F.check_choice(mode, F.FAN_MODES, "mode")
        self.nonlinearity = F.check_choice(nonlinearity, F.NONLINEARITIES, "nonlinearity")
        self.distribution = F.check_choice(distribution, F.DISTRIBUTIONS, "distribution")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        _require_fans(shape, type(self).__name__[:-4])

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


@WEIGHT_INITIALIZERS.register_module(name="Pretrained")
class PretrainedInit:
    """Load a module's weights from a checkpoint; applied after the module's children.

    Args:
        checkpoint: a path (``~`` expanded), ``file://``, ``http(s)://`` (cached),
            ``torchvision://NAME``, or any scheme registered with
            :func:`weightinit.register_scheme`.
        prefix: load only the keys under this prefix (``'backbone.'``), stripped.
        map_location: where tensors are read to (default ``'cpu'``).
        allow_pickle: read a ``.pth`` that needs arbitrary code to unpickle.
            Off by default: such a file could run anything while loading.
        revise_keys: ``(regex, replacement)`` pairs applied to every key
            before ``prefix`` (default: strip DDP's ``module.``).
        strict: missing or unexpected keys are an error (raised before any write).
        mismatch: ``'skip'`` (default, as MMEngine: keys whose shape differs
            are left to the other rules and reported) or ``'error'``.
        sha256: expected sha256 of the file (checked on download, or on read
            for a local file).

    Keys the checkpoint covers are written once, from the checkpoint; keys it
    does not cover keep whatever rule (or default) owns them.
    """

    def __init__(self, checkpoint: str, prefix: str | None = None,
                 map_location: str | torch.device | None = "cpu",
                 allow_pickle: bool = False, revise_keys: Any = None, strict: bool = False,
                 mismatch: str = "skip", sha256: str | None = None) -> None:
        from .checkpoint.loader import check_revise_keys

        if not isinstance(checkpoint, str) and not hasattr(checkpoint, "__fspath__"):
            raise InitTypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
        if prefix is not None and not isinstance(prefix, str):
            raise InitTypeError(f"prefix must be a str or None, got {type(prefix).__name__}")
        for name, flag in (("allow_pickle", allow_pickle), ("strict", strict)):
            if not isinstance(flag, bool):
                raise InitTypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if mismatch not in ("skip", "error"):
            raise InitValueError(f"mismatch must be 'skip' or 'error', got {mismatch!r}")
        if sha256 is not None and not (isinstance(sha256, str) and len(sha256) == 64):
            raise InitTypeError(f"sha256 must be a 64-character hex string, got {sha256!r}")
        self.checkpoint = str(checkpoint)
        self.prefix = prefix
        self.map_location = map_location
        self.allow_pickle = allow_pickle
        self.revise_keys = check_revise_keys(revise_keys)
        self.strict = strict
        self.mismatch = mismatch
        self.sha256 = sha256
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


# ---------------------------------------------------------------- beyond MMEngine


@WEIGHT_INITIALIZERS.register_module(name="VarianceScaling")
class VarianceScalingInit(BaseInit):
    """Var(w) = scale / n, n = fan_in, fan_out or fan_avg of the weight's module.

    The one primitive behind Glorot/He/LeCun. Fans know the module: grouped
    convs, transposed convs and embeddings are counted by what each unit is
    connected to (see :func:`weightinit.functional.fan_in_and_fan_out`).
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
        self.scale = _number(scale, "scale")
        if self.scale <= 0:
            raise InitValueError(f"scale must be > 0, got {scale}")
        self.mode = F.check_choice(mode, F.VS_MODES, "mode")
        self.distribution = F.check_choice(distribution, F.VS_DISTRIBUTIONS, "distribution")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        _require_fans(shape, type(self).__name__[:-4])

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.variance_scaling_dist(shape, self.scale, self.mode, self.distribution, module)

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


@WEIGHT_INITIALIZERS.register_module(name="Orthogonal")
class OrthogonalInit(BaseInit):
    """A (semi-)orthogonal matrix times ``gain`` (Saxe et al., 2013); trailing dims flattened.

    For a weight viewed as ``rows × cols``: W·Wᵀ = gain²·I if rows ≤ cols,
    else Wᵀ·W = gain²·I.
    """

    arg_names = ("gain",)

    def __init__(self, gain: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gain = _number(gain, "gain")

    def check_weight(self, shape: tuple[int, ...]) -> None:
        if len(shape) < 2:
            raise ShapeError(f"Orthogonal needs at least 2 dimensions, got shape {tuple(shape)}")

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

    def init_weight(self, tensor: Tensor) -> None:
        self.fill_weight(tensor, None)

    def fill_weight(self, tensor: Tensor, module: nn.Module | None) -> None:
        groups = self.groups or getattr(module, "groups", 1) or 1
        if tensor.shape[0] % groups:
            raise ShapeError(f"Dirac: {tensor.shape[0]} output channels are not divisible by "
                             f"groups={groups}")
        with torch.no_grad():
            nn.init.dirac_(tensor, groups)


@WEIGHT_INITIALIZERS.register_module(name="Eye")
class EyeInit(BaseInit):
    """Identity matrix (ones on the diagonal) for a 2-D weight."""

    def check_weight(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2:
            raise ShapeError(f"Eye needs a 2-D weight, got shape {tuple(shape)}")

    def init_weight(self, tensor: Tensor) -> None:
        with torch.no_grad():
            nn.init.eye_(tensor)

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        """√(p(1 − p)), p = min(rows, cols)/(rows·cols): the share of ones."""
        if len(shape) != 2 or not shape[0] * shape[1]:
            return None
        p = min(shape) / (shape[0] * shape[1])
        return math.sqrt(p * (1 - p))


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

    def weight_dist(self, shape: tuple[int, ...], module: nn.Module | None) -> F.Elementwise:
        return F.Elementwise("trunc_normal", (self.mean, self.std, self.mean + self.a * self.std,
                                              self.mean + self.b * self.std))

    def weight_std(self, shape: tuple[int, ...]) -> float | None:
        """Std of N(mean, std²) truncated to mean + [a, b]·std (a, b in units of std)."""
        return _truncated_std(self.std, self.a, self.b)


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


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


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


class LSUVError(InitRuntimeError):
    """LSUV could not bring a layer's output to unit variance."""


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the watched layer has run."""


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
        self.tol = _number(tol, "tol")
        self.target_std = _number(target_std, "target_std")
        if self.tol <= 0 or self.target_std <= 0:
            raise InitValueError(f"tol and target_std must be > 0, got {tol}, {target_std}")
        if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
            raise InitTypeError(f"max_iters must be an int >= 1, got {max_iters!r}")
        self.max_iters = max_iters
        self.seed = seed

    def check_weight(self, shape: tuple[int, ...]) -> None:
        if len(shape) < 2:
            raise ShapeError(f"LSUV needs weights with at least 2 dimensions, got {tuple(shape)}")

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
            return rule.data() if callable(rule.data) else rule.data
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
                module(batch)
                for h in hooks:
                    h.remove()
                hooks = []
                for layer in order:
                    self._normalize(module, layer, names[id(layer)], batch)
        finally:
            for h in hooks:
                h.remove()
            with torch.no_grad():
                for n, b in module.named_buffers():
                    if n in saved:
                        b.copy_(saved[n])

    def _normalize(self, module: nn.Module, layer: nn.Module, name: str, batch: Tensor) -> None:
        rule = self.rule
        seen: dict[str, Tensor] = {}

        def grab(m: nn.Module, inputs: Any, output: Any) -> None:
            seen["out"] = output[0] if isinstance(output, tuple) else output
            raise _StopForward

        handle = layer.register_forward_hook(grab)
        try:
            std = float("nan")
            for _ in range(rule.max_iters):
                try:
                    module(batch)
                except _StopForward:
                    pass
                std = seen["out"].float().std().item()
                if not math.isfinite(std) or std == 0:
                    raise LSUVError(
                        f"LSUV: the output of {name} ({type(layer).__name__}) has std {std} on "
                        "the batch, so it cannot be scaled to unit variance. Fix: check the "
                        "layers before it (dead activations?) or exclude it from 'layer'.")
                if abs(std - rule.target_std) <= rule.tol * rule.target_std:
                    return
                layer.weight.mul_(rule.target_std / std)
            raise LSUVError(
                f"LSUV: {name} ({type(layer).__name__}) did not reach output std "
                f"{rule.target_std}±{rule.tol * rule.target_std:g} within {rule.max_iters} "
                f"iterations (last std {std:.4g}). Fix: raise max_iters or tol.")
        finally:
            handle.remove()
