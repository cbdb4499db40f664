"""The rule base class, the one layer matcher, and argument validation shared by all rules.

A rule is a small value: its arguments, a ``layer``/``param`` filter, and
two fills, ``init_weight(tensor)`` and ``init_bias(tensor)`` (always a
constant). The module walking lives in :mod:`weightinit.planning`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .. import maths as F
from ..errors import InitTypeError, ShapeError
from .keys import canonical
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

    def check_fill(self, role: str, shape: tuple[int, ...], dtype: torch.dtype,
                   module: nn.Module | None) -> None:
        """Raise an :class:`InitError` if writing a tensor of this shape and dtype in ``role``
        could fail or give non-finite values (called while planning, before any write)."""
        if role != "bias":
            self.check_weight(tuple(shape))

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
