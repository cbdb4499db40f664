"""Run every ``init_weights()`` of an MMEngine-based project through weightinit.

One line at the top of a training script (MMPretrain, MMDetection,
MMSegmentation or a project built on MMEngine)::

    import weightinit.mmengine; weightinit.mmengine.install()

or, for a block of code, ``with weightinit.mmengine.installed(): ...``. From
then on every ``model.init_weights()`` — the Runner's included — is a
weightinit run: planned and validated first, each tensor written once, an
exact record, undone on failure, seeded with ``seed=`` (or inside
:func:`weightinit.seeded`), and a model built under :func:`weightinit.deferred`
is materialized once. What it changes, class by class:

* ``mmengine.model.BaseModule.init_weights`` becomes the planned one:
  MMEngine's order and priority rules, its layer matching (a ``layer`` name
  matches a module's class and its direct bases only) and record texts;
* every subclass's own ``init_weights`` (those defined later too) stays the user
  code it is, but called outside a run it opens the run, so ``super().init_weights()``
  and the writes after it are one run, watched op by op: a whole overwrite cancels
  the planned write, and the record names the call (``trunc_normal_(std=0.02) in
  VisionTransformer.init_weights``);
* ``init_cfg`` types are looked up in weightinit's registry first, then in
  MMEngine's ``WEIGHT_INITIALIZERS`` (the users' own initializers, which run
  as user code, watched).

What MMEngine's ``init_weights`` shows the code around it stays as it was:

* ``_params_init_info`` during the outermost call and ``model._dump_init_info()``
  after it, as MMEngine keeps and calls them (:mod:`weightinit.initinfo`);
* the current ``MMLogger`` gets MMEngine's lines: ``initialize X with init_cfg
  ...`` (DEBUG, in MMEngine's order) and ``init_weights of X has been called
  more than once.`` (WARNING);
* MMEngine's silence is kept: a ``layer`` name that matches nothing is written
  to the ``weightinit`` logger (INFO), not warned (``install(warn_unmatched=True)``
  warns, ``init_weights(strict=True)`` raises); a second ``init_weights()`` is
  MMEngine's log warning only.

These rules travel with each call (context variables), never as process-wide
switches: :func:`weightinit.initialize` and other runs, in this thread or any
other, keep weightinit's own. :func:`install`, :func:`uninstall` and
:func:`installed` are atomic under threads; :func:`uninstall` puts every
patched function back. The machinery is shared with :mod:`weightinit.mmcv` (MMCV 1.x); this
module holds what MMEngine does differently. Needs MMEngine (``pip install
'weightinit[openmmlab]'``); ``import weightinit`` never imports this module.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch.nn as nn

try:
    import mmengine.model as mm_model
    import mmengine.model.weight_init as mm_weight_init
    from mmengine.logging import print_log
    from mmengine.model import is_model_wrapper
    from mmengine.registry import WEIGHT_INITIALIZERS as MM_INITIALIZERS
except ImportError as err:  # pragma: no cover - exercised without mmengine installed
    raise ImportError("weightinit.mmengine needs MMEngine. Fix: pip install "
                      "'weightinit[openmmlab]' (or mmengine).") from err

from ._bridge import Bridge, Dialect, Walk
from .errors import RepeatedInitWarning
from .execution.patches import SharedPatch
from .execution.userchains import trunc_normal_stand_in
from .planning import is_planned, planned
from .rules import WEIGHT_INITIALIZERS

__all__ = ["install", "installed", "is_installed", "uninstall"]

_BUILTIN_MODULE = "mmengine.model.weight_init"
#: MMEngine's ``_no_grad_trunc_normal_`` (looked up by ``trunc_normal_`` at each call), the
#: stand-in while one of this bridge's calls runs
_TRUNC_NORMAL = SharedPatch(mm_weight_init, "_no_grad_trunc_normal_", trunc_normal_stand_in)


class _MMEngine(Dialect):
    """Where MMEngine's ``init_weights`` differs from MMCV's (see :mod:`weightinit._bridge`)."""

    base = mm_model.BaseModule
    #: a second init_weights(): MMEngine's log warning is printed instead
    logged = (RepeatedInitWarning,)

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return _TRUNC_NORMAL.held()

    def lookup(self, type_value: Any) -> Any:
        """A rule type weightinit's registry should take from MMEngine's: names of MMEngine's own
        initializers stay weightinit's (same names, same arguments); a name only MMEngine knows
        (a user's initializer, or one registered over a built-in name) is MMEngine's class; its
        built-in classes given as ``type=`` map to weightinit's of the same name."""
        if isinstance(type_value, str):
            try:
                found = MM_INITIALIZERS.get(type_value)
            except (KeyError, ImportError):
                return None
            builtin = getattr(found, "__module__", "") == _BUILTIN_MODULE
            return None if found is None or builtin else found
        if isinstance(type_value, type) and getattr(type_value, "__module__", "") == _BUILTIN_MODULE:
            for name, cls in MM_INITIALIZERS.module_dict.items():
                if cls is type_value:
                    return WEIGHT_INITIALIZERS.get(name)
        return None

    def walk(self, module: nn.Module) -> Walk:
        """MMEngine's ``init_weights`` recursion: already initialized children are skipped,
        model wrappers without ``init_weights`` looked through."""
        if getattr(module, "is_init", False):
            return
        if isinstance(module, mm_model.BaseModule) and module.init_cfg:
            yield True, module
        for child in module.children():
            if is_model_wrapper(child) and not hasattr(child, "init_weights"):
                child = child.module
            if not hasattr(child, "init_weights") or getattr(child, "is_init", False):
                continue
            if is_planned(child):
                yield from self.walk(child)
            else:
                yield False, child

    def log_init(self, module: nn.Module) -> None:
        print_log(f"initialize {type(module).__name__} with init_cfg {module.init_cfg}",
                  logger="current", level=logging.DEBUG)

    def after_repeat(self, module: nn.Module) -> None:
        print_log(f"init_weights of {type(module).__name__} has been called more than once.",
                  logger="current", level=logging.WARNING)

    def dump(self, module: nn.Module) -> None:
        module._dump_init_info()  # MMEngine calls it without arguments (it finds the logger)


@planned
def init_weights(self: nn.Module, device: Any = None, dtype: Any = None, seed: int | None = None,
                 strict: bool = False) -> None:
    """MMEngine's ``BaseModule.init_weights``, planned: own rules, children, Pretrained last.

    ``device``/``dtype`` materialize a model built under :func:`weightinit.deferred`,
    ``seed`` makes the values depend only on the seed, names and rules, and ``strict``
    turns every :class:`weightinit.InitWarning` into its error.
    """
    _BRIDGE.init_weights(self, device, dtype, seed, strict)


_BRIDGE = Bridge(_MMEngine(), init_weights, "mmengine")


def install(log_record: bool | None = None, warn_unmatched: bool | None = None) -> None:
    """Route every MMEngine ``init_weights()`` through weightinit (idempotent).

    ``log_record=False`` skips ``_dump_init_info()`` (the command line prints its own
    report); ``warn_unmatched=True`` warns (:class:`weightinit.UnmatchedLayerWarning`) where
    a ``layer`` name matches nothing, which MMEngine accepts silently (by default it goes
    to the ``weightinit`` logger). Left out, each keeps its current setting (a fresh install:
    ``log_record=True``, ``warn_unmatched=False``).
    """
    _BRIDGE.install(log_record, warn_unmatched)


def uninstall() -> None:
    """Put MMEngine back exactly as it was (every patched function, in every class).

    A function a codebase put over the bridge's meanwhile stays; the bridge's own, if kept
    and called, runs MMEngine's code again. Without :func:`install` it does nothing.
    """
    _BRIDGE.uninstall()


def is_installed() -> bool:
    """Whether :func:`install` (or an :func:`installed` block) routes MMEngine through weightinit."""
    return _BRIDGE.is_installed()


def installed(log_record: bool | None = None,
              warn_unmatched: bool | None = None) -> contextlib.AbstractContextManager[None]:
    """:func:`install` for a block (options as there, restored after it). It stays installed
    after the block if it was installed by :func:`install`, or while another thread's block
    still runs."""
    return _BRIDGE.installed(log_record, warn_unmatched)
