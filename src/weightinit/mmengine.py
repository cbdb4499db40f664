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
  matches a module's class and its direct bases only, while installed) and
  record texts;
* every subclass's own (overriding) ``init_weights`` — those defined later
  included — stays the user code it is, but called from outside a run it
  opens the run, so ``super().init_weights()`` and the writes after it are
  one run; inside a run its writes are watched op by op: a write that
  overwrites a tensor whose planned write has not happened yet cancels it,
  and the record names the call (``trunc_normal_(std=0.02) in
  VisionTransformer.init_weights``);
* ``init_cfg`` types are looked up in weightinit's registry first, then in
  MMEngine's ``WEIGHT_INITIALIZERS`` (the users' own initializers, which run
  as user code, watched);
* after each run, the record is written to MMEngine's current logger as
  MMEngine writes its initialization log.

:func:`uninstall` puts every patched function back. Needs MMEngine
(``pip install 'weightinit[openmmlab]'``); ``import weightinit`` never imports
this module.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch.nn as nn

try:
    import mmengine.model as mm_model
    from mmengine.dist import is_main_process
    from mmengine.logging import MMLogger
    from mmengine.registry import WEIGHT_INITIALIZERS as MM_INITIALIZERS
except ImportError as err:  # pragma: no cover - exercised without mmengine installed
    raise ImportError("weightinit.mmengine needs MMEngine. Fix: pip install "
                      "'weightinit[openmmlab]' (or mmengine).") from err

from .api import USER_INIT, run_init_weights, watched_init_weights
from .execution.session import ON_COMMIT
from .planning import planned, register_node_type, unregister_node_type
from .record import InitRecord
from .rules import WEIGHT_INITIALIZERS
from .rules.matching import LAYER_MATCHING

__all__ = ["install", "installed", "is_installed", "uninstall"]

_BUILTIN_MODULE = "mmengine.model.weight_init"
#: what install() replaced: (class, attribute, original value or _ABSENT)
_saved: list[tuple[type, str, Any]] = []
_ABSENT = object()


#: the layer-matching mode before install() (restored by uninstall())
_matching_before: list[str] = []


@planned
def init_weights(self: nn.Module, device: Any = None, dtype: Any = None, seed: int | None = None,
                 strict: bool = False) -> None:
    """MMEngine's ``BaseModule.init_weights``, planned: own rules, children, Pretrained last.

    ``device``/``dtype`` materialize a model built under :func:`weightinit.deferred`,
    ``seed`` makes the values depend only on the seed, names and rules, and ``strict``
    turns every :class:`weightinit.InitWarning` into its error.
    """
    run_init_weights(self, device, dtype, seed, strict)


def _subclasses(cls: type) -> list[type]:
    out, todo, seen = [], [cls], {cls}
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                out.append(sub)
                todo.append(sub)
    return out


def _wrap(cls: type) -> None:
    """Make ``cls``'s own ``init_weights`` (an override) open the run when called outside one."""
    fn = cls.__dict__.get("init_weights")
    if not callable(fn) or getattr(fn, USER_INIT, None) is not None or fn is init_weights:
        return
    _saved.append((cls, "init_weights", fn))
    cls.init_weights = watched_init_weights(fn)


def _on_subclass(cls: type, **kwargs: Any) -> None:
    super(mm_model.BaseModule, cls).__init_subclass__(**kwargs)
    _wrap(cls)


def _is_builtin(cls: Any) -> bool:
    return getattr(cls, "__module__", "") == _BUILTIN_MODULE


def _lookup(type_value: Any) -> Any:
    """A rule type weightinit's registry should take from MMEngine's.

    Names of MMEngine's own initializers stay weightinit's (same names, same
    arguments); a name only MMEngine knows (a user's initializer, or one the
    user registered over a built-in name) is MMEngine's class. MMEngine's
    built-in classes given as ``type=`` map to weightinit's of the same name.
    """
    if isinstance(type_value, str):
        try:
            found = MM_INITIALIZERS.get(type_value)
        except (KeyError, ImportError):
            return None
        return None if found is None or _is_builtin(found) else found
    if isinstance(type_value, type) and _is_builtin(type_value):
        for name, cls in MM_INITIALIZERS.module_dict.items():
            if cls is type_value:
                return WEIGHT_INITIALIZERS.get(name)
    return None


def _log_record(root: nn.Module, record: InitRecord) -> None:
    """Write the record of a run on an MMEngine model where MMEngine writes its own: to the
    file handlers of the current MMLogger, else as INFO messages (main process only)."""
    if not isinstance(root, mm_model.BaseModule):
        return
    if not is_main_process():
        return
    logger = MMLogger.get_current_instance()
    lines = [f"{name} - {tuple(p.shape)}: {p.info}" for name, p in record.params.items()]
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.stream.write("Name of parameter - Initialization information\n")
        handler.stream.write("".join(f"\n{line}\n" for line in lines))
        handler.stream.flush()
    if not files:
        for line in lines:
            logger.info(line)


def install(log_record: bool = True) -> None:
    """Route every MMEngine ``init_weights()`` through weightinit (idempotent).

    ``log_record=False`` keeps the record out of MMEngine's logger (the command
    line prints its own report).
    """
    if not log_record and _log_record in ON_COMMIT:
        ON_COMMIT.remove(_log_record)
    if is_installed():
        return
    base = mm_model.BaseModule
    for attr, value in (("init_weights", init_weights),
                        ("__init_subclass__", classmethod(_on_subclass))):
        _saved.append((base, attr, base.__dict__.get(attr, _ABSENT)))
        setattr(base, attr, value)
    for cls in _subclasses(base):
        _wrap(cls)
    register_node_type(base)
    _matching_before[:] = [LAYER_MATCHING[0]]
    LAYER_MATCHING[0] = "bases"  # MMEngine's layer matching: the class and its direct bases
    WEIGHT_INITIALIZERS.add_lookup(_lookup)
    if log_record:
        ON_COMMIT.append(_log_record)


def uninstall() -> None:
    """Put MMEngine back exactly as it was (every patched function, in every class)."""
    if not is_installed():
        return
    while _saved:
        cls, attr, value = _saved.pop()
        if value is _ABSENT:
            delattr(cls, attr)
        else:
            setattr(cls, attr, value)
    if _matching_before:
        LAYER_MATCHING[0] = _matching_before.pop()
    unregister_node_type(mm_model.BaseModule)
    WEIGHT_INITIALIZERS.remove_lookup(_lookup)
    if _log_record in ON_COMMIT:
        ON_COMMIT.remove(_log_record)


def is_installed() -> bool:
    return mm_model.BaseModule.__dict__.get("init_weights") is init_weights


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """``install()`` for a block; leaves it installed if it already was."""
    was = is_installed()
    install()
    try:
        yield
    finally:
        if not was:
            uninstall()

