"""The typed write operations a plan is made of.

Every tensor's writers are a sequence of these small frozen values, each with
an :class:`OpKind`:

* :class:`RuleFill` — a rule writes one tensor (its weight, bias, a
  ``param``-targeted tensor, or a module's ``reset_parameters``);
* :class:`CheckpointRead` — one checkpoint entry is copied into one tensor;
* :class:`DefaultFill` — a deferred tensor gets its PyTorch default (its
  replayed constructor init, or its module's ``reset_parameters``);
* :class:`UserCall` — user code runs over a subtree (a user-defined
  ``init_weights``, an initializer that only defines ``__call__``, or a
  data-driven step such as LSUV's): what it writes is only known afterwards.

Each op knows its record text (``info``, ``declared_in``), its canonical
``seed_key`` (identity, never display text: seeds key on it), and how to
write a tensor. Execution strategies (plain, seeded, sharded) decide *how*
to run that write; the ops never look at the strategy.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..capture.construction import Construction
from ..capture.replay import replay
from ..checkpoint.loader import CheckpointState, LoadReport
from ..maths import Elementwise
from ..rules import BaseInit, PretrainedInit, reset_method_of
from ..rules.keys import canonical, construction_key
from .checkpoint_checks import is_finite
from .recorded import construction_elementwise, describe_op, last_whole_write


def model_init_owner(root: nn.Module) -> str | None:
    """The model family whose ``_init_weights`` a Hugging Face model runs at construction
    (``LlamaPreTrainedModel``), or ``None`` for other models."""
    mro = [c for c in type(root).__mro__ if c.__module__.startswith("transformers.")]
    if not any("_init_weights" in vars(c) for c in mro):
        return None
    family = next((c for c in mro if c.__name__.endswith("PreTrainedModel")), None)
    return (family or next(c for c in mro if "_init_weights" in vars(c))).__name__


class OpKind(enum.Enum):
    """What kind of writer an op is; its value is the record's ``kind``."""

    RULE = "rule"
    CHECKPOINT = "pretrained"
    DEFAULT = "unchanged"
    USER = "user"
    INITIALIZER = "initializer"


class Role(enum.Enum):
    """Which tensor of a matched module a rule writes."""

    WEIGHT = "weight"
    BIAS = "bias"
    PARAM = "param"  # a tensor targeted by a ``param`` pattern: gets the weight fill
    RESET = "reset"  # every direct parameter of the module, by ``reset_parameters()``


def class_name(module: nn.Module) -> str:
    """The module's own class name, also once FSDP2's ``fully_shard`` made it ``FSDP<Class>``."""
    for cls in type(module).__mro__:
        if not cls.__module__.startswith("torch.distributed.fsdp"):
            return cls.__name__
    return type(module).__name__


@dataclass(frozen=True, eq=False)
class RuleFill:
    """A rule writes one tensor of ``module`` in ``role``."""

    rule: BaseInit
    role: Role
    module: nn.Module = field(repr=False)
    where: str

    kind = OpKind.RULE

    @property
    def seed_key(self) -> str:
        """The rule's canonical identity and the role (computed only for seeded runs)."""
        return f"{self.rule.seed_key}|{self.role.value}"

    @property
    def info(self) -> str:
        return self.rule._get_init_info()

    @property
    def declared_in(self) -> str:
        return self.where

    @property
    def user_defined(self) -> bool:
        """A rule class of the user's: its fill is user code, which may fail while writing."""
        return not type(self.rule).__module__.startswith("weightinit.")

    @property
    def group(self) -> int | None:
        """Writes sharing a group are done by one call (one ``reset_parameters`` per module)."""
        return id(self.module) if self.role is Role.RESET else None

    def elementwise(self, shape: tuple[int, ...]) -> Elementwise | None:
        if self.role is Role.RESET:
            return None
        return self.rule.elementwise("bias" if self.role is Role.BIAS else "weight", shape,
                                     self.module)

    def sparse(self, shape: tuple[int, ...]) -> list[tuple[int, ...]] | None:
        """Where the ones are, when the fill is zeros and ones known from the shape
        (identity, Dirac): written region by region on sharded tensors."""
        if self.role is Role.RESET:
            return None
        return self.rule.sparse(self.role.value if self.role is Role.BIAS else "weight",
                                shape, self.module)

    def write(self, tensor: Tensor) -> None:
        if self.role is Role.BIAS:
            self.rule.init_bias(tensor)
        else:
            self.rule.fill_weight(tensor, self.module)


@dataclass(frozen=True, eq=False)
class CheckpointRead:
    """Checkpoint entry ``key`` is copied into one tensor."""

    rule: PretrainedInit
    state: CheckpointState = field(repr=False)
    key: str
    where: str
    #: the load's report: entries found to hold NaN/inf once written are added to it
    report: LoadReport | None = field(default=None, repr=False)
    #: the entry, read already (and checked): see :func:`weightinit.execution.inplace.check_reads`
    read: Tensor | None = field(default=None, repr=False)

    kind = OpKind.CHECKPOINT
    group = None
    seed_key = ""

    @property
    def info(self) -> str:
        return self.rule._get_init_info()

    @property
    def declared_in(self) -> str:
        return f"checkpoint {self.rule.checkpoint} key {self.key} ({self.where})"

    def elementwise(self, shape: tuple[int, ...]) -> None:
        return None

    def sparse(self, shape: tuple[int, ...]) -> None:
        return None

    def value(self) -> Tensor:
        """The checkpoint tensor (read from the file on first use)."""
        return self.read if self.read is not None else self.state.get(self.key)

    def value_slice(self, index: tuple[slice, ...]) -> Tensor:
        return self.state.get_slice(self.key, index) if index else self.value()

    def write(self, tensor: Tensor) -> None:
        value = self.value()
        if value.data_ptr() != tensor.data_ptr():  # adopted storage is already in place
            tensor.copy_(value)
        self.check_finite(tensor)

    def check_finite(self, written: Tensor) -> None:
        """Note this entry in the report if what was written holds NaN or infinity."""
        if self.report is not None and not is_finite(written):
            self.report.nonfinite.append(self.key)


def default_seed_key(construction: Construction) -> str:
    """The seed key of a tensor's replayed constructor init (seeded runs draw it by this)."""
    return "default|" + construction_key(construction)


@dataclass(frozen=True, eq=False)
class DefaultFill:
    """A deferred tensor's PyTorch default: its replayed constructor init, or
    ``reset_parameters()`` of its module when nothing was recorded."""

    module: nn.Module = field(repr=False)
    root_name: str
    construction: Construction | None = field(repr=False)
    #: old tensor id -> allocated tensor, filled in by materialization (replay follows it)
    mapping: dict[int, Tensor] = field(repr=False)
    #: the tensor's shape (the fans of a recorded ``kaiming_uniform_``)
    shape: tuple[int, ...] = ()
    #: the model class whose own init (Hugging Face ``_init_weights``) the record names
    model_init: str | None = None
    #: constructions of tensors that no longer exist (replaced, dropped, never attached):
    #: an unseeded replay draws them into scratch, as eager construction drew them
    orphans: tuple[Construction, ...] = ()

    kind = OpKind.DEFAULT
    rule = None
    where = ""

    @property
    def group(self) -> int | None:
        # One reset_parameters() call covers all of a module's direct tensors.
        return None if self.construction is not None else id(self.module)

    @property
    def seed_key(self) -> str:
        if self.construction is None:
            return "default|reset_parameters"
        return default_seed_key(self.construction)

    @property
    def info(self) -> str:
        return f"not changed by init_weights of {self.root_name}"

    @property
    def declared_in(self) -> str:
        if self.construction is not None:
            last = self.last_write
            at = self.construction.writers[last[0]] if last is not None else ""
            said = f"{describe_op(self.construction.ops[last[0]])} in {at}" if at else ""
            if self.model_init is not None:  # what the model's constructor and init left
                return f"model default (_init_weights of {self.model_init})" + (
                    f": {said}" if said else "")
            if said and last[0] > 0:  # the model's own code overwrote the constructor's
                return f"model default: {said}"
            return f"PyTorch default (constructor: {self.construction.describe()})"
        return f"PyTorch default (reset_parameters of {class_name(self.module)})"

    @functools.cached_property
    def last_write(self) -> tuple[int, Elementwise] | None:
        """The last recorded op that overwrites the tensor whole (the ops before it are
        dead: :func:`~.recorded.last_whole_write`)."""
        if self.construction is None:
            return None
        return last_whole_write(self.construction, self.shape)

    @functools.cached_property
    def dist(self) -> Elementwise | None:
        """The per-element distribution of the recorded init, when its last op overwrites
        the tensor whole and the ops before it are dead (worked out when first asked: most
        defaults are dropped for a rule's write). Order-free: runs that must draw as eager
        construction does use :attr:`eager_dist`."""
        last = self.last_write
        if last is None or last[0] != len(self.construction.ops) - 1:
            return None
        return last[1]

    @functools.cached_property
    def eager_dist(self) -> Elementwise | None:
        """The distribution of a one-step recorded init (replaying it draws just that)."""
        if self.construction is None:
            return None
        return construction_elementwise(self.construction, self.shape)

    def elementwise(self, shape: tuple[int, ...]) -> Elementwise | None:
        return self.dist

    def sparse(self, shape: tuple[int, ...]) -> None:
        return None

    def write(self, tensor: Tensor, start: int = 0) -> None:
        """Replay the recorded init (from its ``start``-th op), or ``reset_parameters()``."""
        if self.construction is not None:
            replay(self.construction, tensor, self.mapping, start)
        else:
            reset_method_of(self.module)()


@dataclass(frozen=True, eq=False)
class UserCall:
    """User code runs over ``module``'s subtree: its ``init_weights`` (``init is None``),
    an initializer that only defines ``__call__``, or a data-driven rule's step."""

    module: nn.Module = field(repr=False)
    path: str
    init: Any = None
    whole: bool = False
    where: str = ""
    seed_key: str = "user|init_weights"
    #: the rule this step belongs to (LSUV's data-driven half), for the record
    rule: Any = None
    #: the record kind of what it writes
    record_kind: OpKind = OpKind.USER
    #: runs forward passes over the whole module (cannot run shard by shard)
    whole_model: bool = False
    #: the module's ``init_weights`` runs although it is initialized (MMCV 1.x calls it)
    again: bool = False

    kind = OpKind.USER
    group = None

    @property
    def info(self) -> str:
        if self.init is None:
            return f"user-defined init_weights in {class_name(self.module)}"
        if self.rule is not None:
            return self.rule._get_init_info()
        get = getattr(self.init, "_get_init_info", None)
        return get() if callable(get) else type(self.init).__name__

    @property
    def declared_in(self) -> str:
        return self.where or self.info

    def run(self) -> None:
        if self.init is None:
            self.module.init_weights()
            return
        if hasattr(self.init, "wholemodule"):  # MMEngine initializers read it while called
            self.init.wholemodule = self.whole
        self.init(self.module)


Op = RuleFill | CheckpointRead | DefaultFill
Writer = RuleFill | CheckpointRead | DefaultFill | UserCall


def user_call_key(init: Any, cfg_key: str | None) -> str:
    """Seed key of user code: its initializer's canonical identity, never its ``repr``."""
    if init is None:
        return "user|init_weights"
    if cfg_key:
        return f"user|{cfg_key}"
    key = getattr(init, "seed_key", None)
    if isinstance(key, str):
        return f"user|{key}"
    cls = type(init)
    return f"user|{canonical(f'{cls.__module__}.{cls.__qualname__}', {})}"

def fills_whole(tensor: Tensor, op: Any) -> bool:
    """``op`` writes ``tensor`` whole, alone, and reads nothing: a rule's or a default's
    elementwise fill, or an op that says so itself (``writes_whole``: user code's draw kept
    pending, see :mod:`weightinit.execution.userfills`)."""
    if getattr(op, "writes_whole", False):
        return True
    return (op.kind in (OpKind.RULE, OpKind.DEFAULT) and op.group is None
            and op.elementwise(tuple(tensor.shape)) is not None)


def whole_on_every_rank(op: Any, shape: tuple[int, ...]) -> bool:
    """``op`` writes a sharded tensor by filling the whole tensor on every rank (orthogonal,
    ``reset_parameters``, a multi-step constructor init): exact, at the whole tensor's cost."""
    if isinstance(op, CheckpointRead):
        return False
    return op.group is not None or (op.elementwise(shape) is None and op.sparse(shape) is None)
