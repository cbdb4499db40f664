"""A loaded config: the model spec and the settings around it, and how to build and init it."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..api import get_init_record, initialize, plan
from ..capture.deferred import deferred as deferred_ctx
from ..errors import ConfigError, InitValueError, InitWarning, strict_error
from ..execution import current_seed, seeded
from ..module import BaseModule
from ..planning import is_node
from ..planning.checkpoints import without_downloads
from ..record import InitRecord
from .building import build_object, signature
from .common import DTYPES, importable
from .safety import TypePolicy, policy_for


@dataclass(frozen=True)
class InputSpec:
    """Random input for the health check: shape, ``float`` (N(0,1)) or ``long`` ids in [0, high).

    ``high`` defaults to the size of the model's first ``nn.Embedding``.
    """

    shape: tuple[int, ...]
    dtype: str = "float"
    high: int | None = None


@dataclass
class ModelConfig:
    """A loaded config: the model spec and the settings around it."""

    path: Path
    model: dict[str, Any]
    init_cfg: Any = None
    input: InputSpec | None = None
    device: str | None = None
    dtype: str | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: modules (with their submodules) a YAML/JSON config may name as ``type`` besides
    #: ``torch.nn``, registered names and the config's own directory
    allowed_modules: tuple[str, ...] = ()

    @property
    def type_policy(self) -> TypePolicy | None:
        """What a dotted ``type`` may name: decided by the file type (None: a .py config)."""
        return policy_for(self.path, self.allowed_modules)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return None if self.dtype is None else DTYPES[self.dtype]

    def where(self, key: str) -> str:
        return f"{self.path.name}: {key}"

    def build(self, deferred: bool = True) -> nn.Module:
        """Build the model; under :func:`weightinit.deferred` (no storage) by default.

        Applies the top-level ``init_cfg`` rule of a BaseModule root (see the
        module docstring). Raises :class:`ConfigError` on any mistake.
        """

        ctx = deferred_ctx() if deferred else contextlib.nullcontext()
        with importable(self.path.parent), ctx:
            model = build_object(self.model, self, "model")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{self.where('model')}: building it gave a "
                              f"{type(model).__name__}, not a torch.nn.Module")
        if self.init_cfg is not None and isinstance(model, BaseModule):
            model.init_cfg = copy.deepcopy(self.init_cfg)
        return model

    def plan(self, model: nn.Module, strict: bool = False, timeout: float | None = None) -> Any:
        """The plan of this config's initialization of ``model`` (nothing written or downloaded).

        Tensors nothing would give a value are listed in ``plan.undefined``
        rather than raised, so a dry run can show the whole table. ``strict``
        raises the error of any :class:`~weightinit.errors.InitWarning`. A
        checkpoint URL is planned from its cached copy, else as a pending
        download (see :func:`~weightinit.planning.checkpoints.without_downloads`;
        ``timeout``: seconds the HEAD request that asks its size may take).
        """
        with _strict_warnings(strict), without_downloads(timeout):
            if is_node(model):
                return plan(model, allow_undefined=True, strict=strict)
            return plan(model, self.init_cfg if self.init_cfg is not None else [],
                        allow_undefined=True, strict=strict)

    def initialize(self, model: nn.Module, device: Any = None,
                   dtype: torch.dtype | None = None, strict: bool = False,
                   seed: int | None = None) -> InitRecord:
        """Initialize (and materialize) ``model`` as the config says; returns the record.

        Seeded, as ``weightinit init`` on the same file is, so the values are
        the same in every process: by ``seed``, else the enclosing
        :func:`weightinit.seeded` block, else the config's ``seed``, else 0.
        ``strict`` raises the error of any :class:`~weightinit.errors.InitWarning`
        (also from a user-defined ``init_weights`` that takes no ``strict``).
        """
        with _strict_warnings(strict), seeded(self.run_seed(seed)):
            record = self._initialize(model, device, dtype, strict)
        if record is None:  # pragma: no cover - only when nested in another init
            raise InitValueError(f"{self.name}: initialization produced no record")
        return record

    def run_seed(self, seed: int | None = None) -> int:
        """The seed a run uses: ``seed``, else the enclosing :func:`weightinit.seeded` block's,
        else the config's ``seed``, else 0."""
        for candidate in (seed, current_seed(), self.seed):
            if candidate is not None:
                return candidate
        return 0

    def _initialize(self, model: nn.Module, device: Any, dtype: torch.dtype | None,
                    strict: bool) -> InitRecord | None:
        if is_node(model):
            sig = signature(model.init_weights)
            params = sig.parameters if sig is not None else {}
            more = any(p.kind is p.VAR_KEYWORD for p in params.values())
            extra = {"strict": True} if strict and ("strict" in params or more) else {}
            if sig is None or "device" in params or more:
                model.init_weights(device=device, dtype=dtype, **extra)
            else:
                # A user-defined init_weights() that takes no device/dtype: give every tensor
                # real storage first (PyTorch defaults), then let it run as written.
                initialize(model, [], device=device, dtype=dtype, strict=strict)
                model.init_weights(**extra)
            return get_init_record(model)
        return initialize(model, self.init_cfg if self.init_cfg is not None else [],
                          device=device, dtype=dtype, strict=strict)


@contextlib.contextmanager
def _strict_warnings(strict: bool) -> Iterator[None]:
    """Under ``strict``, a library warning raised anywhere (even through user code that
    takes no ``strict``) becomes its error; planning raises it before any write."""
    if not strict:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", InitWarning)
        try:
            yield
        except InitWarning as w:
            raise strict_error(w) from None
