"""What the two OpenMMLab bridges share: :mod:`weightinit.mmengine` and :mod:`weightinit.mmcv`.

A :class:`Bridge` routes one library's ``BaseModule.init_weights`` through weightinit; a
:class:`Dialect` says where that library differs from the other. The bridge itself:

* installs the planned ``init_weights`` on the library's ``BaseModule`` and wraps every
  subclass's own ``init_weights`` (those defined later too, through ``__init_subclass__``)
  so that, called outside a run, it opens one: ``super().init_weights()`` and the writes after
  it are one run, watched op by op;
* runs each call under the library's rules (:meth:`Bridge.rules`: its layer matching, the
  warnings it does not give, logged instead) — context variables, never process-wide
  switches, so other runs in this thread or any other keep weightinit's own;
* keeps ``_params_init_info`` for the outermost call and dumps it after
  (:mod:`weightinit.initinfo`), and writes the library's ``initialize X with init_cfg ...``
  lines in the library's order: the walk pauses where user code runs and resumes when that
  code returns;
* makes :meth:`~Bridge.install`, :meth:`~Bridge.uninstall` and :meth:`~Bridge.installed`
  atomic under threads. Uninstalling puts back every function it replaced that still holds
  the bridge's, and a reference to a bridge function kept past :meth:`~Bridge.uninstall`
  (a codebase that wrapped ``BaseModule.init_weights`` while it was installed) runs the
  library's own code again. A ``BaseModule.init_weights`` a codebase replaced before
  :meth:`~Bridge.install` is kept and run as user code, watched.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch.nn as nn

from .api import RUN_CONTEXT, USER_INIT, run_init_weights, watched_init_weights
from .errors import InitRuntimeError, InitWarning, UnmatchedLayerWarning, logged_instead
from .execution import Session
from .initinfo import InfoHolder, init_info, refill
from .planning import register_node_type, unregister_node_type
from .rules import WEIGHT_INITIALIZERS
from .rules.matching import layer_matching

__all__ = ["WALK", "Bridge", "Dialect", "Options", "Walk"]

_ABSENT = object()
#: on a bridge's ``init_weights`` functions: the planner's walk of one module in the library's
#: order (``Walker.plan_init_weights`` calls it instead of its own; MMCV's, not MMEngine's)
WALK = "__weightinit_walk__"
#: what a dialect's log walk yields: ``(True, m)`` where ``m`` logs its ``init_cfg``,
#: ``(False, c)`` where ``c``'s own ``init_weights`` (user code) runs
Walk = Iterator[tuple[bool, nn.Module]]


@dataclasses.dataclass(frozen=True)
class Options:
    """How the installed bridge runs (replaced whole, so a run reads one consistent set)."""

    #: call ``_dump_init_info`` after the outermost run (the command line reports instead)
    log_record: bool = True
    #: warn where a ``layer`` name matches nothing (both libraries are silent: logged)
    warn_unmatched: bool = False


class Dialect:
    """Where one library's ``init_weights`` differs from the other's (the bridge asks)."""

    #: the library's ``BaseModule``
    base: type
    #: warnings the library does not give, logged instead (``layer`` names: per the options)
    logged: tuple[type[InitWarning], ...] = ()
    #: ``tmp_mean_value`` stays on the parameter's device (MMEngine moves it to the CPU)
    means_on_device = False
    #: the planner's walk of one module, ``plan(walker, module)``, where the library's order
    #: is not weightinit's own (MMEngine's); None: weightinit's
    plan: Callable[[Any, nn.Module], None] | None = None

    def lookup(self, type_value: Any) -> Any:
        """A rule type weightinit's registry takes from the library's (``None``: its own)."""
        return None

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """What else holds during one call (beyond layer matching and logged warnings)."""
        return contextlib.nullcontext()

    def walk(self, module: nn.Module) -> Walk:
        """The library's ``init_weights`` recursion from ``module``, as far as it logs."""
        raise NotImplementedError

    def log_init(self, module: nn.Module) -> None:
        """The line the library logs where ``module``'s ``init_weights`` applies its init_cfg."""
        raise NotImplementedError

    def after_repeat(self, module: nn.Module) -> None:
        """What the library does on a second ``init_weights()`` besides writing nothing."""

    def dump(self, module: nn.Module) -> None:
        """Call ``module._dump_init_info`` as the library's ``init_weights`` calls it."""
        raise NotImplementedError

    def keeps_info(self, module: nn.Module) -> bool:
        """The call ends without its dump, ``_params_init_info`` left on the modules."""
        return False


@dataclasses.dataclass
class Run(InfoHolder):
    """What one outermost ``init_weights`` call of the bridge keeps while it runs."""

    #: the log walks paused at user code, innermost last: (the walk, the module whose own
    #: init_weights runs there)
    lines: list[tuple[Walk, nn.Module]] = dataclasses.field(default_factory=list)
    #: log walks that start once the planner has walked their module (a dialect with its own
    #: planner walk logs what planning found, such as MMCV's key-mismatch report, in place)
    waiting: list[tuple[nn.Module, Walk]] = dataclasses.field(default_factory=list)
    #: what planning found that a dialect's log lines report, by module id
    found: dict[int, list[Any]] = dataclasses.field(default_factory=dict)


def _subclasses(cls: type) -> list[type]:
    found: dict[type, None] = {}  # every subclass however deep, each once, in order
    todo = [cls]
    while todo:
        todo += [s for s in todo.pop().__subclasses__() if s not in found and not found.setdefault(s)]
    return list(found)


class Bridge:
    """One library's ``BaseModule.init_weights``, routed through weightinit (see the module)."""

    def __init__(self, dialect: Dialect, planned: Callable[..., Any], name: str) -> None:
        self.dialect = dialect
        #: the planned ``init_weights`` the library module defines (installed on ``base``)
        self.planned = planned
        setattr(planned, RUN_CONTEXT, self.rules)
        if dialect.plan is not None:
            setattr(planned, WALK, dialect.plan)
        self._lookup = dialect.lookup  # (one object: registered and removed as itself)
        self._marker = f"__weightinit_{name}__"  # on the wrappers of overriding init_weights
        self._run: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
            f"weightinit_{name}_run", default=None)
        #: install/uninstall/installed and the wrapping of classes defined meanwhile
        self._lock = threading.RLock()
        #: what install() replaced: (class, attribute, original or _ABSENT, the bridge's value)
        self._saved: list[tuple[type, str, Any, Any]] = []
        current = dialect.base.__dict__.get("init_weights")
        #: the library's own ``init_weights`` (what a bridge function kept past uninstall() runs)
        self._original: Any = current if self._is_library_code(current) else None
        self._options = Options()
        self._patched = False
        self._explicit = False  # install() was called (and not undone by uninstall())
        self._blocks = 0  # installed() blocks running, in any thread

    # -- one call ------------------------------------------------------------------------------
    def current(self) -> Run | None:
        """The run of the call of this bridge running in this thread or task, if any."""
        return self._run.get()

    def planned_walk(self, module: nn.Module) -> None:
        """The planner has walked ``module``: a log walk waiting for that starts."""
        run = self._run.get()
        if run is not None and run.waiting and run.waiting[-1][0] is module:
            self._advance(run.waiting.pop()[1], run.lines)

    @contextlib.contextmanager
    def rules(self) -> Iterator[None]:
        """The library's layer matching and silence, for this call only (also what ``plan()``
        of an installed model plans under, so a dry run plans what ``init_weights()`` does)."""
        logged = self.dialect.logged + (() if self._options.warn_unmatched
                                        else (UnmatchedLayerWarning,))
        with layer_matching("bases"), logged_instead(logged), self.dialect.context():
            yield

    @contextlib.contextmanager
    def call(self, module: nn.Module) -> Iterator[Run]:
        """One ``init_weights`` call through the bridge; the outermost one also keeps
        ``_params_init_info`` for the run and dumps it after, as the library does."""
        session = Session.current()
        outermost = session is None or not session.contains(module)
        run = self._run.get()
        token = None
        if outermost or run is None:  # (nested in a run the bridge did not start: lines only)
            run = Run()
            token = self._run.set(run)
        try:
            with self.rules():
                if outermost:
                    keep = self.dialect.keeps_info(module)
                    dump = None if keep or not self._options.log_record else self.dialect.dump
                    with init_info(module, run, dump, keep=keep,
                                   on_device=self.dialect.means_on_device):
                        yield run
                else:
                    if run.stale:
                        refill(run)
                    yield run
        finally:
            if token is not None:
                self._run.reset(token)

    def init_weights(self, module: nn.Module, device: Any, dtype: Any, seed: int | None,
                     strict: bool) -> None:
        """The body of the planned ``init_weights``: log walk, the run, the repeat notice."""
        if not self._patched:  # a reference kept past uninstall(): the library's own code
            if self._original is None:
                raise InitRuntimeError(
                    f"{type(module).__name__}.init_weights: the bridge is not installed and the "
                    f"library's own init_weights is unknown ({self.dialect.base.__name__}."
                    "init_weights was replaced before weightinit saw it). Fix: call install() "
                    "first, or call the replacement itself.")
            given = {k: v for k, v in (("device", device), ("dtype", dtype), ("seed", seed))
                     if v is not None}
            return self._original(module, **given, **({"strict": True} if strict else {}))
        with self.call(module) as run:
            again = module.is_init
            stack = run.lines
            height, waiting = len(stack), len(run.waiting)
            if not again and self.dialect.plan is None:
                self._advance(self.dialect.walk(module), stack)
            elif not again:  # logged once planned, with what planning found (planned_walk)
                run.waiting.append((module, self.dialect.walk(module)))
            try:
                run_init_weights(module, device, dtype, seed, strict)
            except BaseException:
                del stack[height:]  # the library logs nothing after the failure
                del run.waiting[waiting:]
                raise
            del run.waiting[waiting:]  # (a call that planned nothing logs nothing)
            self._unwind(stack, height)
            if again:  # (under strict, run_init_weights raised instead)
                self.dialect.after_repeat(module)
        return None

    def override(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A class's own ``init_weights`` (user code), watched by weightinit, called as the
        bridge's: under the library's rules, and the outermost call keeps ``_params_init_info``."""
        watched = watched_init_weights(fn)

        @functools.wraps(fn)
        def init_weights(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
            if not self._patched:  # kept past uninstall(): the user's code as it was
                return fn(module, *args, **kwargs)
            with self.call(module) as run:
                out = watched(module, *args, **kwargs)
                stack = run.lines
                if stack and stack[-1][1] is module:  # the walk that reached this call goes on
                    self._advance(stack.pop()[0], stack)
            return out

        setattr(init_weights, USER_INIT, fn)
        setattr(init_weights, self._marker, True)
        setattr(init_weights, RUN_CONTEXT, self.rules)
        if self.dialect.plan is not None:  # its super().init_weights() plans the library's order
            setattr(init_weights, WALK, self.dialect.plan)
        init_weights.__signature__ = inspect.signature(watched)  # type: ignore[attr-defined]
        return init_weights

    # -- the library's log lines, in its order -------------------------------------------------
    def _resumes(self, module: nn.Module) -> bool:
        """The end of ``module``'s own ``init_weights`` is seen (the bridge wraps it)."""
        fn = getattr(type(module), "init_weights", None)
        return bool(getattr(fn, self._marker, False)) and "init_weights" not in vars(module)

    def _advance(self, walk: Walk, stack: list[tuple[Walk, nn.Module]] | None) -> None:
        """Log the walk's lines up to the next user code whose end is seen (there it waits on
        ``stack``); user code whose end is not seen (a plain ``nn.Module``'s) is passed."""
        for logs, module in walk:
            if logs:
                self.dialect.log_init(module)
            elif stack is not None and self._resumes(module):
                stack.append((walk, module))
                return

    def _unwind(self, stack: list[tuple[Walk, nn.Module]], height: int) -> None:
        """The walks a call left waiting (at user code the run skipped): log what they hold."""
        while len(stack) > height:
            self._advance(stack.pop()[0], None)

    # -- install / uninstall -------------------------------------------------------------------
    def _set(self, cls: type, attr: str, value: Any) -> None:
        self._saved.append((cls, attr, cls.__dict__.get(attr, _ABSENT), value))
        setattr(cls, attr, value)

    def _wrap(self, cls: type) -> None:
        """Make ``cls``'s own ``init_weights`` (an override) open the run when called outside one."""
        fn = cls.__dict__.get("init_weights")
        if not callable(fn) or getattr(fn, USER_INIT, None) is not None or fn is self.planned:
            return
        self._set(cls, "init_weights", self.override(fn))

    def _on_subclass(self, cls: type, **kwargs: Any) -> None:
        super(self.dialect.base, cls).__init_subclass__(**kwargs)
        with self._lock:  # (a class defined while another thread uninstalls stays unwrapped)
            if self._patched:
                self._wrap(cls)

    def _is_library_code(self, fn: Any) -> bool:
        """``fn`` is the library's own ``BaseModule.init_weights`` (not a codebase's patch)."""
        code = getattr(fn, "__code__", None)
        home = inspect.getsourcefile(self.dialect.base)
        return (code is not None and home is not None and code.co_name == "init_weights"
                and os.path.realpath(code.co_filename) == os.path.realpath(home))

    def _patch(self) -> None:
        base = self.dialect.base
        current = base.__dict__.get("init_weights")
        ours = self._is_library_code(current)
        if ours:
            self._original = current
        # a BaseModule.init_weights a codebase replaced before: kept, run as user code
        self._set(base, "init_weights", self.planned if ours else self.override(current))
        bridge = self

        def init_subclass(cls: type, **kwargs: Any) -> None:
            bridge._on_subclass(cls, **kwargs)

        self._set(base, "__init_subclass__", classmethod(init_subclass))
        for cls in _subclasses(base):
            self._wrap(cls)
        register_node_type(base)
        WEIGHT_INITIALIZERS.add_lookup(self._lookup)
        self._patched = True

    def _unpatch(self) -> None:
        self._patched = False
        while self._saved:
            cls, attr, value, ours = self._saved.pop()
            if cls.__dict__.get(attr, _ABSENT) is not ours:
                continue  # replaced since by someone else: theirs stays (and ours runs the library's)
            if value is _ABSENT:
                delattr(cls, attr)
            else:
                setattr(cls, attr, value)
        unregister_node_type(self.dialect.base)
        WEIGHT_INITIALIZERS.remove_lookup(self._lookup)

    def _set_options(self, log_record: bool | None, warn_unmatched: bool | None) -> None:
        given = {k: bool(v) for k, v in (("log_record", log_record),
                                         ("warn_unmatched", warn_unmatched)) if v is not None}
        if given:
            self._options = dataclasses.replace(self._options, **given)

    def install(self, log_record: bool | None = None, warn_unmatched: bool | None = None) -> None:
        with self._lock:
            self._explicit = True
            self._set_options(log_record, warn_unmatched)
            if not self._patched:
                self._patch()

    def uninstall(self) -> None:
        with self._lock:
            self._explicit = False
            self._options = Options()
            if self._patched:
                self._unpatch()

    def is_installed(self) -> bool:
        return self._patched

    @contextlib.contextmanager
    def installed(self, log_record: bool | None = None,
                  warn_unmatched: bool | None = None) -> Iterator[None]:
        with self._lock:
            self._blocks += 1
            before = self._options
            self._set_options(log_record, warn_unmatched)
            if not self._patched:
                self._patch()
        try:
            yield
        finally:
            with self._lock:
                self._blocks -= 1
                if self._blocks == 0 and not self._explicit and self._patched:
                    self._unpatch()
                    self._options = Options()
                elif self._patched:
                    self._options = before
