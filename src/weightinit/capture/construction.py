"""What a deferred tensor's constructor did, recorded to be replayed on real storage.

Inside ``weightinit.deferred()`` (:mod:`weightinit.capture.deferred`) each ``meta`` tensor
a constructor makes is marked with its :class:`Construction`, and each tensor computed
from one (an alias, a view, an expression) remembers its owner and the chain of steps that
reached it, so an in-place write to either is recorded on the owner
(:func:`record_write`) and can be replayed later, exactly, in construction order.
"""

from __future__ import annotations

import itertools
import operator
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: Per-thread state of the ``deferred()`` blocks: nesting ``depth`` (the patches act only
#: where it is > 0), ``match_eager``, and the ``block`` of the outermost one.
STATE = threading.local()
# Orders recorded writes across tensors, so defaults replay in construction order
# (and so draw from the random generator in the same order as eager construction).
_SEQUENCE = itertools.count()
# Frames a recorded write's writer is looked for above: this package, torch's own code
# (but not its modules' constructors: ``Linear.reset_parameters`` is a writer), and the
# libraries' init helpers (``transformers.initialization``, timm's ``weight_init``).
_OWN = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_TORCH_MODULES = os.path.join(_TORCH, "nn", "modules") + os.sep
_HELPERS = (os.path.join("transformers", "initialization.py"),
            os.path.join("timm", "layers", "weight_init.py"))


def writer() -> str:
    """The code that made the write being recorded: ``Class.method`` (the class of its
    ``self``) or the function's qualified name, of the first caller outside this package,
    torch's internals and the libraries' init helpers; ``""`` if there is none."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith(_OWN) or path.endswith(_HELPERS) or
                (path.startswith(_TORCH) and not path.startswith(_TORCH_MODULES))):
            break
        frame = frame.f_back
    if frame is None:
        return ""
    code = frame.f_code
    if code.co_argcount and code.co_varnames[0] == "self":
        return f"{type(frame.f_locals.get('self')).__name__}.{code.co_name}"
    return getattr(code, "co_qualname", code.co_name)


@dataclass
class Construction:
    """How the constructor left one deferred tensor, to be replayed on real storage."""

    device: torch.device
    #: (write, args, kwargs, chain): ``write(view, *args)`` where ``view`` is the
    #: tensor reached from the owner by the ``chain`` of (func, args, kwargs) steps
    ops: list[tuple[Callable[..., Any], tuple, dict, tuple]] = field(default_factory=list)
    broken: str | None = None  # why the recorded init cannot be replayed
    first: int = -1  # sequence number of the first recorded write
    #: sequence number of each op, across all tensors (eager construction's draw order)
    order: list[int] = field(default_factory=list)
    #: the code that made each op (:func:`writer`)
    writers: list[str] = field(default_factory=list)
    #: built under ``deferred(match_eager=True)``: unseeded runs draw as eager construction
    match_eager: bool = field(default_factory=lambda: getattr(STATE, "match_eager", False))
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    #: every construction of the same outermost block, in creation order (this one too)
    block: list | None = field(default_factory=lambda: getattr(STATE, "block", None),
                               repr=False)
    created: int = field(default_factory=lambda: next(_SEQUENCE))
    #: a run has replayed it (or dropped it in favour of a rule) and committed
    materialized: bool = False
    #: weak references to the tensors it describes
    refs: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.block is not None:
            self.block.append(self)

    def add(self, fn: Callable[..., Any], args: tuple, kwargs: dict, chain: tuple = ()) -> None:
        seq = next(_SEQUENCE)
        if not self.ops:
            self.first = seq
        self.ops.append((fn, args, kwargs, chain))
        self.order.append(seq)
        self.writers.append(writer())

    @property
    def defined(self) -> bool:
        """True if replaying the ops gives the tensor a value (it is not left as ``empty``)."""
        return self.broken is None and bool(self.ops)

    @property
    def alive(self) -> bool:
        """Some tensor it describes still exists (held by a model, or by anyone)."""
        return any(r() is not None for r in self.refs)

    def reads(self) -> list[Tensor]:
        """The deferred tensors the recorded ops read (``copy_(other)``), as their owners."""
        return [owner_of(a) for _, args, kwargs, _ in self.ops for a in (*args, *kwargs.values())
                if isinstance(a, Tensor) and a.device.type == "meta" and owner_of(a) is not None]

    def describe(self) -> str:
        names = []
        for fn, _, _, _ in self.ops:
            name = "value" if fn is Tensor.copy_ else getattr(fn, "__name__", "op")
            if name not in names:
                names.append(name)
        return ", ".join(names) if names else "nothing"


def construction_of(t: Tensor) -> Construction | None:
    """The recorded construction of a deferred tensor, or ``None`` for any other tensor."""
    return getattr(t, "_wi_construction", None)


def owner_of(t: Any) -> Tensor | None:
    """The deferred tensor that ``t`` is, or was derived from (alias, view, expression)."""
    if not isinstance(t, Tensor):
        return None
    if construction_of(t) is not None:
        return t
    path = getattr(t, "_wi_path", None)
    return path[0] if path is not None else None


def chain_of(t: Tensor) -> tuple:
    path = getattr(t, "_wi_path", None)
    return path[1] if path is not None and construction_of(t) is None else ()


def derive(out: Any, owner: Tensor, chain: tuple) -> None:
    # Remember how ``out`` was computed from ``owner``, so a later in-place
    # write to it (``weight[pad].zero_()``) can be replayed on the real tensor.
    if isinstance(out, Tensor):
        if out is not owner and construction_of(out) is None:
            out._wi_path = (owner, chain)  # type: ignore[attr-defined]
    elif isinstance(out, (tuple, list)):
        for i, item in enumerate(out):
            derive(item, owner, (*chain, (operator.getitem, (i,), {})))


def mark(t: Tensor, construction: Construction) -> Tensor:
    """``t`` marked as a deferred tensor that ``construction`` describes."""
    t._wi_construction = construction  # type: ignore[attr-defined]
    construction.refs.append(weakref.ref(t))
    return t


def record_write(tensor: Tensor, func: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """Record the in-place write ``func(tensor, *args[1:], **kwargs)`` on its owner."""
    target = owner_of(tensor)
    construction = construction_of(target) if target is not None else None
    if construction is None:
        return
    for a in list(args[1:]) + list(kwargs.values()):
        if isinstance(a, Tensor) and a.device.type == "meta" and owner_of(a) is None:
            construction.broken = (f"its constructor writes it with {func.__name__} from a value "
                                   "computed on the meta device")
            return
    construction.add(func, args[1:], dict(kwargs), chain_of(tensor))
