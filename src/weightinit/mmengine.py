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
patched function back. Needs MMEngine (``pip install 'weightinit[openmmlab]'``);
``import weightinit`` never imports this module.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch.nn as nn

try:
    import mmengine.model as mm_model
    from mmengine.logging import print_log
    from mmengine.model import is_model_wrapper
    from mmengine.registry import WEIGHT_INITIALIZERS as MM_INITIALIZERS
except ImportError as err:  # pragma: no cover - exercised without mmengine installed
    raise ImportError("weightinit.mmengine needs MMEngine. Fix: pip install "
                      "'weightinit[openmmlab]' (or mmengine).") from err

from .api import RUN_CONTEXT, USER_INIT, run_init_weights, watched_init_weights
from .errors import InitWarning, RepeatedInitWarning, UnmatchedLayerWarning, logged_instead
from .execution import Session
from .initinfo import InfoHolder, init_info, refill
from .planning import is_planned, planned, register_node_type, unregister_node_type
from .rules import WEIGHT_INITIALIZERS
from .rules.matching import layer_matching

__all__ = ["install", "installed", "is_installed", "uninstall"]

_BUILTIN_MODULE = "mmengine.model.weight_init"
_ABSENT = object()
#: on the bridge's wrappers of overriding ``init_weights``: the end of the call resumes the
#: ``initialize ... with init_cfg`` lines of the walk that reached it
_BRIDGED = "__weightinit_mmengine__"


@dataclasses.dataclass(frozen=True)
class _Options:
    """How the installed bridge runs (replaced whole, so a run reads one consistent set)."""

    #: call ``_dump_init_info()`` after the outermost run (the command line reports instead)
    log_record: bool = True
    #: warn where a ``layer`` name matches nothing (MMEngine is silent; default: log it)
    warn_unmatched: bool = False


_DEFAULTS = _Options()
#: install/uninstall/installed and the wrapping of classes defined meanwhile, one at a time
_lock = threading.RLock()
#: what install() replaced: (class, attribute, original value or _ABSENT)
_saved: list[tuple[type, str, Any]] = []
_options = _DEFAULTS
#: install() was called (and not undone by uninstall())
_explicit = False
#: installed() blocks running, in any thread (the last one out uninstalls, unless explicit)
_blocks = 0

_Walk = Iterator[tuple[bool, nn.Module]]


@dataclasses.dataclass
class _Run(InfoHolder):
    """What one outermost ``init_weights`` call of the bridge keeps while it runs."""

    #: the ``initialize ... with init_cfg`` walks paused at user code, innermost last: (the
    #: walk, the module whose own init_weights runs there)
    lines: list[tuple[_Walk, nn.Module]] = dataclasses.field(default_factory=list)


_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("weightinit_mmengine_run",
                                                                  default=None)


# -- what each call of the bridge runs under ------------------------------------------------


def _logged(options: _Options) -> tuple[type[InitWarning], ...]:
    """Warnings MMEngine does not give, written to the log instead: a second init_weights()
    (MMEngine's log warning is printed instead) and, unless asked for, unmatched ``layer``s."""
    return (RepeatedInitWarning,) + (() if options.warn_unmatched else (UnmatchedLayerWarning,))


@contextlib.contextmanager
def _mmengine_rules() -> Iterator[None]:
    """MMEngine's layer matching and silence, for this call only (also what ``plan()`` of an
    installed model plans under, so a dry run plans what ``init_weights()`` does)."""
    with layer_matching("bases"), logged_instead(_logged(_options)):
        yield


@contextlib.contextmanager
def _bridged_call(module: nn.Module) -> Iterator[_Run]:
    """One ``init_weights`` call through the bridge; the outermost one also keeps
    ``_params_init_info`` for the run and dumps it after, as MMEngine does."""
    session = Session.current()
    outermost = session is None or not session.contains(module)
    run = _RUN.get()
    token = None
    if outermost or run is None:  # (nested in a run the bridge did not start: lines only)
        run = _Run()
        token = _RUN.set(run)
    try:
        with _mmengine_rules():
            if outermost:
                with init_info(module, run, _options.log_record, _dump_reads_means):
                    yield run
            else:
                if run.stale:
                    refill(run)
                yield run
    finally:
        if token is not None:
            _RUN.reset(token)


def _dump_reads_means(module: nn.Module) -> bool:
    """A ``_dump_init_info`` the model replaced may read means; MMEngine's prints texts only."""
    own = mm_model.BaseModule.__dict__.get("_dump_init_info")
    return getattr(type(module), "_dump_init_info", None) is not own \
        or "_dump_init_info" in vars(module)


@planned
def init_weights(self: nn.Module, device: Any = None, dtype: Any = None, seed: int | None = None,
                 strict: bool = False) -> None:
    """MMEngine's ``BaseModule.init_weights``, planned: own rules, children, Pretrained last.

    ``device``/``dtype`` materialize a model built under :func:`weightinit.deferred`,
    ``seed`` makes the values depend only on the seed, names and rules, and ``strict``
    turns every :class:`weightinit.InitWarning` into its error.
    """
    with _bridged_call(self) as run:
        again = self.is_init
        stack = run.lines
        height = len(stack)
        if not again:
            _advance(_walk(self), stack)
        try:
            run_init_weights(self, device, dtype, seed, strict)
        except BaseException:
            del stack[height:]  # MMEngine logs nothing after the failure
            raise
        _unwind(stack, height)
        if again:  # (under strict, run_init_weights raised instead)
            print_log(f"init_weights of {type(self).__name__} has been called more than once.",
                      logger="current", level=logging.WARNING)


setattr(init_weights, RUN_CONTEXT, _mmengine_rules)


def _bridged_override(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A class's own ``init_weights`` (user code), watched by weightinit, called as the
    bridge's: under MMEngine's rules, and the outermost call keeps ``_params_init_info``."""
    watched = watched_init_weights(fn)

    @functools.wraps(fn)
    def init_weights(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with _bridged_call(self) as run:
            out = watched(self, *args, **kwargs)
            stack = run.lines
            if stack and stack[-1][1] is self:  # the walk that reached this call goes on
                _advance(stack.pop()[0], stack)
        return out

    setattr(init_weights, USER_INIT, fn)
    setattr(init_weights, _BRIDGED, True)
    setattr(init_weights, RUN_CONTEXT, _mmengine_rules)
    init_weights.__signature__ = inspect.signature(watched)  # type: ignore[attr-defined]
    return init_weights


# -- MMEngine's log lines: "initialize X with init_cfg ..." in MMEngine's order ----------------


def _walk(module: nn.Module) -> _Walk:
    """MMEngine's ``init_weights`` recursion from ``module``, as far as it logs: ``(True, m)``
    where ``m`` logs its ``init_cfg``, ``(False, c)`` where ``c``'s own ``init_weights`` (user
    code) runs; what that logs (through ``super().init_weights()``) is logged when it runs."""
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
            yield from _walk(child)
        else:
            yield False, child


def _resumes(module: nn.Module) -> bool:
    """The end of ``module``'s own ``init_weights`` is seen (the bridge wraps it)."""
    fn = getattr(type(module), "init_weights", None)
    return bool(getattr(fn, _BRIDGED, False)) and "init_weights" not in vars(module)


def _advance(walk: _Walk, stack: list[tuple[_Walk, nn.Module]] | None) -> None:
    """Log the walk's lines up to the next user code whose end is seen (there it waits on
    ``stack``); user code whose end is not seen (a plain ``nn.Module``'s) is passed."""
    for logs, module in walk:
        if logs:
            print_log(f"initialize {type(module).__name__} with init_cfg {module.init_cfg}",
                      logger="current", level=logging.DEBUG)
        elif stack is not None and _resumes(module):
            stack.append((walk, module))
            return


def _unwind(stack: list[tuple[_Walk, nn.Module]], height: int) -> None:
    """The walks a call left waiting (at user code the run skipped): log what they hold."""
    while len(stack) > height:
        _advance(stack.pop()[0], None)


# -- install / uninstall -------------------------------------------------------------------


def _subclasses(cls: type) -> list[type]:
    found: dict[type, None] = {}  # every subclass however deep, each once, in order
    todo = [cls]
    while todo:
        todo += [s for s in todo.pop().__subclasses__() if s not in found and not found.setdefault(s)]
    return list(found)


def _wrap(cls: type) -> None:
    """Make ``cls``'s own ``init_weights`` (an override) open the run when called outside one."""
    fn = cls.__dict__.get("init_weights")
    if not callable(fn) or getattr(fn, USER_INIT, None) is not None or fn is init_weights:
        return
    _saved.append((cls, "init_weights", fn))
    cls.init_weights = _bridged_override(fn)


def _on_subclass(cls: type, **kwargs: Any) -> None:
    super(mm_model.BaseModule, cls).__init_subclass__(**kwargs)
    with _lock:  # (a class defined while another thread uninstalls stays unwrapped)
        if is_installed():
            _wrap(cls)


def _lookup(type_value: Any) -> Any:
    """A rule type weightinit's registry should take from MMEngine's: names of MMEngine's own
    initializers stay weightinit's (same names, same arguments); a name only MMEngine knows (a
    user's initializer, or one registered over a built-in name) is MMEngine's class; its
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


def _patch() -> None:
    base = mm_model.BaseModule
    for attr, value in (("init_weights", init_weights),
                        ("__init_subclass__", classmethod(_on_subclass))):
        _saved.append((base, attr, base.__dict__.get(attr, _ABSENT)))
        setattr(base, attr, value)
    for cls in _subclasses(base):
        _wrap(cls)
    register_node_type(base)
    WEIGHT_INITIALIZERS.add_lookup(_lookup)


def _unpatch() -> None:
    while _saved:
        cls, attr, value = _saved.pop()
        if value is _ABSENT:
            delattr(cls, attr)
        else:
            setattr(cls, attr, value)
    unregister_node_type(mm_model.BaseModule)
    WEIGHT_INITIALIZERS.remove_lookup(_lookup)


def _set_options(log_record: bool | None, warn_unmatched: bool | None) -> None:
    global _options
    given = {k: v for k, v in (("log_record", log_record), ("warn_unmatched", warn_unmatched))
             if v is not None}
    if given:
        _options = dataclasses.replace(_options, **{k: bool(v) for k, v in given.items()})


def install(log_record: bool | None = None, warn_unmatched: bool | None = None) -> None:
    """Route every MMEngine ``init_weights()`` through weightinit (idempotent).

    ``log_record=False`` skips ``_dump_init_info()`` (the command line prints its own
    report); ``warn_unmatched=True`` warns (:class:`weightinit.UnmatchedLayerWarning`) where
    a ``layer`` name matches nothing, which MMEngine accepts silently (by default it goes
    to the ``weightinit`` logger). Left out, each keeps its current setting (a fresh install:
    ``log_record=True``, ``warn_unmatched=False``).
    """
    global _explicit
    with _lock:
        _explicit = True
        _set_options(log_record, warn_unmatched)
        if not is_installed():
            _patch()


def uninstall() -> None:
    """Put MMEngine back exactly as it was (every patched function, in every class)."""
    global _explicit, _options
    with _lock:
        _explicit = False
        _options = _DEFAULTS
        if is_installed():
            _unpatch()


def is_installed() -> bool:
    """Whether MMEngine's ``BaseModule.init_weights`` is the bridge's now."""
    return mm_model.BaseModule.__dict__.get("init_weights") is init_weights


@contextlib.contextmanager
def installed(log_record: bool | None = None,
              warn_unmatched: bool | None = None) -> Iterator[None]:
    """:func:`install` for a block (options as there, restored after it). It stays installed
    after the block if it was installed by :func:`install`, or while another thread's block
    still runs."""
    global _blocks, _options
    with _lock:
        _blocks += 1
        before = _options
        _set_options(log_record, warn_unmatched)
        if not is_installed():
            _patch()
    try:
        yield
    finally:
        with _lock:
            _blocks -= 1
            if _blocks == 0 and not _explicit and is_installed():
                _unpatch()
                _options = _DEFAULTS
            elif is_installed():
                _options = before
