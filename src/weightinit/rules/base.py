"""The rule base class, the one layer matcher, and argument validation shared by all rules.

A rule is a small value: its arguments, a ``layer``/``param`` filter, and
two fills, ``init_weight(tensor)`` and ``init_bias(tensor)`` (always a
constant). The module walking lives in :mod:`weightinit.planning`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .. import maths as F
from ..errors import InitTypeError, InitValueError, ShapeError
from .keys import canonical
from .matching import class_names, layer_matches  # noqa: F401 - re-exported
from .registry import registered_name

#: Attributes that say where a rule applies, not what it writes.
_NOT_IDENTITY = frozenset({"layer", "param", "wholemodule"})

#: How calling a rule on a module runs it. :mod:`weightinit.api` installs the planned,
#: write-once runner when the package is imported, so this layer imports nothing above it.
_RUNNER: dict[str, Callable[[nn.Module, Any], Any]] = {}


def install_runner(run: Callable[[nn.Module, Any], Any]) -> None:
    """Set what ``rule(module)`` does (called once, by :mod:`weightinit.api`)."""
    _RUNNER["run"] = run


def apply_rule(module: nn.Module, init: Any) -> Any:
    """Run ``init`` on ``module`` as a planned initialization: ``init(module)``."""
    return _RUNNER["run"](module, init)


#: instance attributes that target or bookkeep, never shown by :meth:`BaseInit.args`
_NOT_ARGS = frozenset({"layer", "param", "wholemodule", "bias_prob", "bias"})


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

    #: argument names shown in ``repr`` and the record, in order (optional: without it,
    #: the attributes the constructor sets are shown; see :meth:`args`)
    arg_names: tuple[str, ...] = ()
    #: applied after the declaring module's children, like ``Pretrained``
    late = False
    #: without ``layer``, the rule targets the declaring module itself (ZeroInitResidual)
    targets_itself = False

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
        if bias_prob is not None:
            bias = F.bias_init_with_prob(bias_prob)
            if not _is_finite(bias):
                raise InitValueError(f"bias_prob={bias_prob!r} gives a bias of {bias}, which is "
                                     "not finite. Fix: use a probability further from 0 and 1, "
                                     "e.g. bias_prob=0.01.")
        elif not _is_finite(bias):
            raise InitValueError(f"bias must be a finite number, got {bias!r}. Fix: give bias a "
                                 "finite constant, e.g. bias=0.")
        self.bias = bias
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

    def sparse(self, role: str, shape: tuple[int, ...], module: nn.Module | None
               ) -> list[tuple[int, ...]] | None:
        """The positions of the ones when the fill of ``role`` is zeros and ones at positions
        known from the shape alone (identity, Dirac), so any region of it is written
        directly; ``None`` for other fills (the default)."""
        return None

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

    def check_fill(self, role: str, shape: tuple[int, ...], dtype: torch.dtype,
                   module: nn.Module | None) -> None:
        """Raise an :class:`InitError` if writing a tensor of this shape and dtype in ``role``
        could fail or give non-finite values (called while planning, before any write).

        Checks the shape (:meth:`check_weight`), that a random fill has a dtype it
        can draw in, and that every value of :meth:`fill_values` is finite and,
        for a floating dtype, within ``torch.finfo(dtype).max``.
        """
        shape = tuple(shape)
        if role != "bias":
            self.check_weight(shape)
        if role != "reset" and dtype is not None and not dtype.is_floating_point:
            dist = self.elementwise(role, shape, module)
            if dist is not None and dist.random:
                _require_drawable(dist.kind, dtype)
        check_representable(self.fill_values(role, shape, module), dtype)

    def fill_values(self, role: str, shape: tuple[int, ...], module: nn.Module | None
                    ) -> list[tuple[str, float]]:
        """What a fill of this tensor writes, or is centred on or bounded by: (name, value) pairs.

        The planner checks each value is finite and representable in the tensor's
        dtype. The bias role gives the bias constant; a weight fill drawn from
        :meth:`weight_dist` gives its constant, its mean and ``|mean| + 10·std``
        (no draw reaches further in practice), or its bounds and their distance.
        Rules with another fill (orthogonal with a gain, ...) override this.
        """
        if role == "reset":
            return []
        dist = self.elementwise(role, shape, module)
        if dist is None:
            return []
        if role == "bias":
            return [("bias", dist.args[0])]
        return dist_values(dist)

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
        """The rule's arguments, as shown in ``repr`` and the init record; ``bias`` last.

        A class that sets ``arg_names`` (itself or a base other than
        :class:`BaseInit`) shows exactly those attributes, in that order. Otherwise
        the rule's own constructor arguments are shown: every public instance
        attribute (no leading underscore) in the order it was first set,
        except the targeting and bookkeeping ones (``layer``, ``param``,
        ``wholemodule``, ``bias_prob``) — so ``self.std = std`` in a custom
        rule's ``__init__`` shows as ``std=...`` with nothing to declare.
        """
        if any("arg_names" in vars(cls) for cls in type(self).__mro__ if cls is not BaseInit):
            out = {name: getattr(self, name) for name in self.arg_names}
        else:
            out = {name: value for name, value in vars(self).items()
                   if not name.startswith("_") and name not in _NOT_ARGS}
        out.pop("bias", None)
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
    def seed_key(self) -> str:
        """Canonical identity: registered name and fill arguments (targets and display excluded).

        Seeded values key on this, so rewording :meth:`_get_init_info` changes no value.
        """
        args = {k: v for k, v in vars(self).items()
                if not k.startswith("_") and k not in _NOT_IDENTITY}
        return canonical(registered_name(type(self)), args)

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
        apply_rule(module, self)

def _require_fans(shape: tuple[int, ...], rule: str) -> None:
    if len(shape) < 2:
        raise ShapeError(f"{rule} needs fan in/out, which a weight of shape {tuple(shape)} "
                         "(fewer than 2 dimensions) does not have")

def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InitTypeError(f"{what} must be a number, got {type(value).__name__} ({value!r})")
    return value

def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False

def _finite(value: object, what: str, fix: str | None = None) -> float:
    """``value`` if it is a finite number; else :class:`InitTypeError` (not a number) or
    :class:`InitValueError` (nan, ±inf, an int beyond the float range), naming ``what``."""
    number = _number(value, what)
    if not _is_finite(number):
        raise InitValueError(f"{what} must be a finite number, got {value!r}. Fix: "
                             f"{fix or f'give {what} a finite value'}.")
    return number

def dist_values(dist: F.Elementwise, label: str = "") -> list[tuple[str, float]]:
    """The values bounding what an elementwise fill writes (see :meth:`BaseInit.fill_values`).

    ``label`` is appended to every name (e.g. ``" computed from gain=2 and the fans"``).
    """
    args = dist.args
    if dist.kind == "constant":
        out = [("val", args[0])]
    elif dist.kind == "normal":
        mean, std = args
        out = [("mean", mean), ("|mean| + 10*std", abs(mean) + 10 * std)]
    elif dist.kind == "uniform":
        a, b = args
        out = [("a", a), ("b", b), ("b - a", b - a)]
    else:
        mean, std, a, b = args
        out = [("mean", mean), ("a", a), ("b", b), ("|mean| + 10*std", abs(mean) + 10 * std)]
    return [(name + label, value) for name, value in out]

@functools.cache
def _finfo_max(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).max

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")

def check_representable(values: list[tuple[str, float]], dtype: torch.dtype | None) -> None:
    """Raise :class:`InitValueError` unless every value is finite and, for a floating
    ``dtype``, at most ``torch.finfo(dtype).max`` in magnitude (else it becomes inf)."""
    if not values:
        return
    limit = _finfo_max(dtype) if dtype is not None and dtype.is_floating_point else None
    for name, value in values:
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            number = math.inf if value > 0 else -math.inf
        if not math.isfinite(number):
            raise InitValueError(f"{name} = {value!r} is not a finite number, so the fill would "
                                 "write inf or nan: use finite, moderate arguments")
        if (dtype is not None and not dtype.is_floating_point and not dtype.is_complex
                and dtype is not torch.bool):
            info = torch.iinfo(dtype)
            if not info.min <= number <= info.max:
                raise InitValueError(
                    f"{name} = {number:g} does not fit a {_dtype_name(dtype)} tensor (range "
                    f"{info.min} to {info.max}): use a value within that range")
        if limit is not None and abs(number) > limit:
            raise InitValueError(
                f"{name} = {number:g} is beyond the largest finite {_dtype_name(dtype)} value "
                f"({limit:g}), so the fill would overflow to inf: use values within "
                f"±{limit:g}, or a wider dtype (float32 or float64)")

def _require_drawable(kind: str, dtype: torch.dtype | None) -> None:
    """Random draws need a floating tensor (normal and uniform also draw complex ones)."""
    if dtype is None or dtype.is_floating_point or (dtype.is_complex and kind != "trunc_normal"):
        return
    raise InitValueError(f"a random {kind.replace('_', ' ')} fill needs a floating-point "
                         f"tensor, got {_dtype_name(dtype)}: a constant rule (Constant, Zeros, "
                         "Ones) can fill it")
