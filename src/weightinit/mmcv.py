"""Run every ``init_weights()`` of an MMCV 1.x codebase through weightinit, unforked.

One line at the top of a training script of MMDetection 2.x, MMClassification 0.x,
MMSegmentation 0.x, or any project built on ``mmcv.runner.BaseModule``::

    import weightinit.mmcv; weightinit.mmcv.install()

or, for a block of code, ``with weightinit.mmcv.installed(): ...``. From then on every
``model.init_weights()`` is a weightinit run: planned and validated first, each tensor
written once, an exact record, undone on failure, seeded with ``seed=`` (or inside
:func:`weightinit.seeded`), and a model built under :func:`weightinit.deferred` is
materialized once. It is :mod:`weightinit.mmengine`'s bridge (the same code,
:mod:`weightinit._bridge`) with MMCV 1.7's rules where they differ from MMEngine's:

* **order**: a module's ``init_cfg`` entries apply in list order, ``Pretrained`` wherever
  it stands, then every child that has an ``init_weights`` (a plain ``nn.Module`` such as
  ``ConvModule`` too: its own is user code, watched); a later writer wins, and each tensor
  is written once, by it;
* **a dict** ``init_cfg`` **of type** ``Pretrained`` **returns early**: the checkpoint is
  loaded and nothing else — the children are not initialized, ``is_init`` stays False (a
  second call loads again), and at the top level ``_params_init_info`` is never dumped and
  stays on every module, as MMCV leaves it;
* ``Pretrained`` loads what MMCV's ``mmcv.runner`` loaders would load, with MMCV's key
  handling and model-zoo schemes (``torchvision://``, ``open-mmlab://`` with its deprecated
  names, ``mmcls://``, ``http(s)://`` through torch.hub's cache, schemes a codebase
  registered): :mod:`weightinit._bridge_mmcv`;
* ``_params_init_info``: one dict keyed by Parameter, shared by every module, its
  ``tmp_mean_value`` on the parameter's device (MMCV's ``update_init_info``, called by user
  code, finds it); ``_dump_init_info(logger_name)`` after the outermost call;
* **log lines**: ``initialize X with init_cfg ...`` and the per-parameter dump at INFO, through
  ``print_log`` to the first logger ``mmcv.utils.get_logger`` created (``mmcv`` if none), in
  MMCV's order; a load's ``load model from: ...`` and ``load checkpoint from ... path: ...``
  after it, and MMCV's ``The model and loaded state dict do not match exactly`` report
  (logged once the run has planned the load) instead of weightinit's
  :class:`~weightinit.CheckpointKeysWarning`;
* a second ``init_weights()``, and an initialized child reached again, warn as MMCV does
  (``init_weights of X has been called more than once.``, a ``UserWarning``:
  :class:`~weightinit.RepeatedInitWarning`);
* ``layer`` names match a module's class and its direct bases only; ``Uniform`` defaults are
  MMCV's floats; initializers registered in MMCV's ``INITIALIZERS`` (users' own) are found
  and run as user code, watched.

What changes: a mistake (an unknown initializer, a bad argument, an override name that is not
there, a checkpoint that cannot be found or read) raises weightinit's error — also the
exception class MMCV raises — before anything is written; a failure later (user code, a
read) leaves the model as it was; an ``init_weights`` a child already ran is not run again
(MMCV runs an already-initialized child's own ``init_weights`` again; its ``super()`` part
only warns). Needs MMCV 1.x; ``import weightinit`` never imports this module.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch.nn as nn

try:
    import mmcv.cnn.utils.weight_init as mmcv_weight_init
    import mmcv.runner as mmcv_runner
    from mmcv.cnn import INITIALIZERS as MMCV_INITIALIZERS
    from mmcv.utils import print_log
    from mmcv.utils.logging import logger_initialized
except ImportError as err:  # pragma: no cover - exercised without mmcv installed
    raise ImportError("weightinit.mmcv needs MMCV 1.x (mmcv.runner.BaseModule). Fix: pip "
                      "install 'weightinit[mmcv]' (or mmcv<2).") from err

from ._bridge import Bridge, Dialect, Walk
from ._bridge_mmcv import PretrainedInit, log_load, log_mismatch
from .errors import CheckpointKeysWarning, RepeatedInitWarning, warn
from .execution.patches import SharedPatch
from .execution.userchains import trunc_normal_stand_in
from .planning import is_planned, planned
from .planning.tree import Walker
from .rules import WEIGHT_INITIALIZERS, UniformInit

__all__ = ["install", "installed", "is_installed", "uninstall"]

_BUILTIN_MODULE = "mmcv.cnn.utils.weight_init"
#: a call of this bridge runs here: MMCV's ``Pretrained`` and ``Uniform`` replace weightinit's
_IN_MMCV: contextvars.ContextVar[bool] = contextvars.ContextVar("weightinit_mmcv_rules",
                                                                default=False)


def _uniform(a: float = 0.0, b: float = 1.0, **kwargs: Any) -> UniformInit:
    """MMCV's ``Uniform``: float defaults (its record reads ``a=0.0, b=1.0``)."""
    return UniformInit(a=a, b=b, **kwargs)


#: MMCV's own initializers whose behaviour differs from weightinit's of the same name
_MMCV_OWN: dict[str, Any] = {"Pretrained": PretrainedInit, "Uniform": _uniform}


def _logger_name() -> str:
    """The logger MMCV's ``BaseModule`` writes to: the first ``get_logger`` created, or mmcv."""
    return next(iter(logger_initialized), "mmcv")


def _returns_early(module: nn.Module) -> bool:
    """MMCV's ``init_weights`` returns right after applying this ``init_cfg``."""
    cfg = getattr(module, "init_cfg", None)
    return isinstance(cfg, dict) and bool(cfg) and cfg.get("type") == "Pretrained"


def _is_pretrained(cfg: Any) -> bool:
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    return kind == "Pretrained" or (isinstance(kind, type)
                                    and kind is MMCV_INITIALIZERS.get("Pretrained"))


def _loads(init_cfg: Any) -> Iterator[dict]:
    """The ``Pretrained`` entries of an ``init_cfg`` in the order MMCV applies them
    (an ``override`` with only a name reuses its entry's type and arguments)."""
    for entry in init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]:
        if not isinstance(entry, dict):
            continue
        if _is_pretrained(entry):
            yield entry
        override = entry.get("override")
        for item in override if isinstance(override, (list, tuple)) else [override]:
            if isinstance(item, dict) and set(item) == {"name"} and _is_pretrained(entry):
                yield entry
            elif _is_pretrained(item):
                yield item


def _plan(walker: Walker, module: nn.Module) -> None:
    """MMCV's ``init_weights`` of ``module``, planned: its ``init_cfg`` in list order, then
    each child's (none after a dict ``Pretrained``, which leaves ``is_init`` False)."""
    early = _returns_early(module)
    if early:  # the children's configs are never looked at (nor validated) by MMCV
        walker._visited.update(id(m) for m in module.modules())
    else:
        walker.visited.append(module)
        walker._visited.add(id(module))
    run = _BRIDGE.current() if not walker.validate_only else None
    for rule in walker.rules_of(module) if module.init_cfg else ():
        loads = len(walker.loads)
        walker.apply_rule(module, rule)
        for i, report in enumerate(walker.loads[loads:] if run is not None else ()):
            # (the rule's own load is into module; an override's into a submodule)
            run.found.setdefault(id(module), []).append(
                (report, module if i == 0 and rule.pretrained else None))
    if not early:
        walker.plan_children(module, unwrap=False)
    _BRIDGE.planned_walk(module)


#: MMCV's ``_no_grad_trunc_normal_`` (looked up by ``trunc_normal_`` at each call), the
#: stand-in while one of this bridge's calls runs
_TRUNC_NORMAL = SharedPatch(mmcv_weight_init, "_no_grad_trunc_normal_", trunc_normal_stand_in)


class _MMCV(Dialect):
    """Where MMCV 1.7's ``init_weights`` differs from MMEngine's (see :mod:`weightinit._bridge`)."""

    base = mmcv_runner.BaseModule
    #: MMCV logs its own report of a load's unmatched keys (:func:`log_mismatch`)
    logged = (CheckpointKeysWarning,)
    means_on_device = True
    plan = staticmethod(_plan)

    def lookup(self, type_value: Any) -> Any:
        """A rule type weightinit's registry takes from MMCV's: a name only MMCV knows (a
        user's initializer, or one registered over a built-in name) is MMCV's class; MMCV's
        built-in names stay weightinit's, except, in this bridge's calls, ``Pretrained`` and
        ``Uniform`` (MMCV's loading and defaults); its built-in classes as ``type=`` likewise."""
        if isinstance(type_value, str):
            try:
                found = MMCV_INITIALIZERS.get(type_value)
            except (KeyError, ImportError):
                return None
            if found is None or getattr(found, "__module__", "") != _BUILTIN_MODULE:
                return found
            return _MMCV_OWN.get(type_value) if _IN_MMCV.get() else None
        if isinstance(type_value, type) and getattr(type_value, "__module__", "") == _BUILTIN_MODULE:
            for name, cls in MMCV_INITIALIZERS.module_dict.items():
                if cls is type_value:
                    own = _MMCV_OWN.get(name) if _IN_MMCV.get() else None
                    return own or WEIGHT_INITIALIZERS.get(name)
        return None

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        token = _IN_MMCV.set(True)
        try:
            with _TRUNC_NORMAL.held():
                yield
        finally:
            _IN_MMCV.reset(token)

    def walk(self, module: nn.Module) -> Walk:
        """MMCV's ``init_weights`` recursion: every child with an ``init_weights`` is called
        (an initialized planned one only warns; user code runs again), none after a dict ``Pretrained``."""
        if isinstance(module, mmcv_runner.BaseModule) and module.init_cfg:
            yield True, module
            if _returns_early(module):
                return
        for child in module.children():
            if not hasattr(child, "init_weights"):
                continue
            if not is_planned(child):
                yield False, child  # (user code: called again even if initialized)
            elif getattr(child, "is_init", False):
                warn(RepeatedInitWarning,
                     f"init_weights of {type(child).__name__} has been called more than once.")
            else:
                yield from self.walk(child)

    def log_init(self, module: nn.Module) -> None:
        """MMCV's line, then each load's: what it loads, and how the keys matched."""
        print_log(f"initialize {type(module).__name__} with init_cfg {module.init_cfg}",
                  logger=_logger_name())
        run = _BRIDGE.current()
        found = run.found.pop(id(module), []) if run is not None else []
        loads = list(_loads(module.init_cfg))
        for i in range(max(len(loads), len(found))):
            if i < len(loads):
                log_load(loads[i])
            if i < len(found):
                log_mismatch(*found[i])

    def dump(self, module: nn.Module) -> None:
        module._dump_init_info(_logger_name())  # master only, as MMCV's decorator says

    def keeps_info(self, module: nn.Module) -> bool:
        return not getattr(module, "is_init", False) and _returns_early(module)


@planned
def init_weights(self: nn.Module, device: Any = None, dtype: Any = None, seed: int | None = None,
                 strict: bool = False) -> None:
    """MMCV 1.7's ``BaseModule.init_weights``, planned: ``init_cfg`` in list order, children.

    ``device``/``dtype`` materialize a model built under :func:`weightinit.deferred`,
    ``seed`` makes the values depend only on the seed, names and rules, and ``strict``
    turns every :class:`weightinit.InitWarning` into its error.
    """
    _BRIDGE.init_weights(self, device, dtype, seed, strict)


_BRIDGE = Bridge(_MMCV(), init_weights, "mmcv")


def install(log_record: bool | None = None, warn_unmatched: bool | None = None) -> None:
    """Route every MMCV 1.x ``init_weights()`` through weightinit (idempotent).

    ``log_record=False`` skips ``_dump_init_info``; ``warn_unmatched=True`` warns
    (:class:`weightinit.UnmatchedLayerWarning`) where a ``layer`` name matches nothing,
    which MMCV accepts silently (by default it goes to the ``weightinit`` logger). Left
    out, each keeps its current setting (a fresh install: ``log_record=True``,
    ``warn_unmatched=False``).
    """
    _BRIDGE.install(log_record, warn_unmatched)


def uninstall() -> None:
    """Put MMCV back exactly as it was (every patched function, in every class).

    A function a codebase put over the bridge's meanwhile stays; the bridge's own, if kept
    and called, runs MMCV's code again. Without :func:`install` it does nothing.
    """
    _BRIDGE.uninstall()


def is_installed() -> bool:
    """Whether :func:`install` (or an :func:`installed` block) routes MMCV through weightinit."""
    return _BRIDGE.is_installed()


def installed(log_record: bool | None = None,
              warn_unmatched: bool | None = None) -> contextlib.AbstractContextManager[None]:
    """:func:`install` for a block (options as there, restored after it). It stays installed
    after the block if it was installed by :func:`install`, or while another thread's block
    still runs."""
    return _BRIDGE.installed(log_record, warn_unmatched)
