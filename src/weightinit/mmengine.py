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
* every subclass's own (overriding) ``init_weights`` — those defined later
  included — stays the user code it is, but called from outside a run it
  opens the run, so ``super().init_weights()`` and the writes after it are
  one run; inside a run its writes are watched op by op: a write that
  overwrites a tensor whose planned write has not happened yet cancels it,
  and the record names the call (``trunc_normal_(std=0.02) in
  VisionTransformer.init_weights``);
* ``init_cfg`` types are looked up in weightinit's registry first, then in
  MMEngine's ``WEIGHT_INITIALIZERS`` (the users' own initializers, which run
  as user code, watched).

What MMEngine's ``init_weights`` shows the code around it stays as it was:

* during the outermost call every module holds ``_params_init_info``, one
  ``defaultdict`` shared by the whole tree, keyed by parameter, each entry
  ``{'init_info': str, 'tmp_mean_value': Tensor}``; after the run it holds the
  record's texts, ``model._dump_init_info()`` is called (MMEngine's writes the
  "Name of parameter - Initialization information" log to the file handlers of
  the current ``MMLogger``, else as INFO messages; a model may replace it), and
  the attribute is deleted again;
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
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

try:
    import mmengine.model as mm_model
    from mmengine.logging import print_log
    from mmengine.model import is_model_wrapper
    from mmengine.registry import WEIGHT_INITIALIZERS as MM_INITIALIZERS
except ImportError as err:  # pragma: no cover - exercised without mmengine installed
    raise ImportError("weightinit.mmengine needs MMEngine. Fix: pip install "
                      "'weightinit[openmmlab]' (or mmengine).") from err

from .api import RUN_CONTEXT, USER_INIT, get_init_record, run_init_weights, watched_init_weights
from .errors import InitWarning, RepeatedInitWarning, UnmatchedLayerWarning, logged_instead
from .execution import Session
from .planning import OpKind, is_planned, planned, register_node_type, unregister_node_type
from .record import InitRecord
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
class _Run:
    """What one outermost ``init_weights`` call of the bridge keeps while it runs."""

    #: the ``initialize ... with init_cfg`` walks paused at user code, innermost last: (the
    #: walk, the module whose own init_weights runs there)
    lines: list[tuple[_Walk, nn.Module]] = dataclasses.field(default_factory=list)
    #: the ``_params_init_info`` every module of ``root`` holds
    info: defaultdict[Any, dict[str, Any]] | None = None
    root: nn.Module | None = None
    #: ``info`` is keyed by ``meta`` parameters that materializing replaces: filled again
    #: when user code first runs (the model is materialized by then)
    stale: bool = False


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
                with _init_info(module, run, _options.log_record):
                    yield run
            else:
                if run.stale:
                    _refill(run)
                yield run
    finally:
        if token is not None:
            _RUN.reset(token)


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


# -- _params_init_info and _dump_init_info, as MMEngine keeps them ---------------------------


def _mean(tensor: Tensor) -> Tensor:
    value = tensor.detach()
    mean = (value if value.is_floating_point() or value.is_complex() else value.double()).mean()
    full = getattr(mean, "full_tensor", None)  # a DTensor's mean: the whole tensor's
    return full() if callable(full) else mean


def _nan() -> Tensor:
    """``tmp_mean_value`` of a parameter whose values are not known (yet): never equal."""
    return torch.tensor(float("nan"))


def _means(params: list[Tensor]) -> list[Tensor]:
    """Each parameter's mean on the CPU, MMEngine's ``tmp_mean_value`` (``nan`` for one with no
    values yet, on ``meta``): one copy per device and dtype, not one synchronization each."""
    out = [_nan() for _ in params]
    groups: dict[tuple[Any, ...], list[int]] = {}
    with torch.no_grad():
        for i, p in enumerate(params):
            if p.device.type == "meta":
                continue
            if type(p.data) is not torch.Tensor:  # a tensor subclass (DTensor): one by one
                out[i] = _mean(p).cpu()
            else:
                groups.setdefault((p.device, p.dtype), []).append(i)
        for idx in groups.values():
            for i, mean in zip(idx, torch.stack([_mean(params[i]) for i in idx]).cpu()):
                out[i] = mean
    return out


def _unchanged(module: nn.Module) -> str:
    return f"not changed by init_weights of {type(module).__name__}"  # the record's wording


#: record kinds whose writers may label their own writes with MMEngine's ``update_init_info``
_LABELLED = (OpKind.USER.value, OpKind.INITIALIZER.value)


def _fill_info(info: dict[Any, dict[str, Any]], module: nn.Module, record: InitRecord | None,
               read: bool = True) -> bool:
    """``info`` for ``module``'s parameters now: the record's text (or unchanged) and mean
    (``nan`` without ``read``). A label user code gave a parameter it wrote, with MMEngine's
    ``update_init_info`` during the run, is kept, as MMEngine's log would show it. Returns
    whether some parameters are still on ``meta`` (a deferred model, not materialized yet)."""
    named = list(module.named_parameters())
    means = _means([p for _, p in named]) if read else [_nan() for _ in named]
    unchanged = _unchanged(module)
    labels = {p: e["init_info"] for p, e in info.items()
              if e.get("init_info", unchanged) != unchanged}
    info.clear()  # (a deferred model's parameters were replaced when materialized)
    for (name, p), mean in zip(named, means):
        entry = record.params.get(name) if record is not None else None
        text = entry.info if entry is not None else unchanged
        if entry is not None and entry.kind in _LABELLED and p in labels:
            text = labels[p]
        info[p]["init_info"] = text
        info[p]["tmp_mean_value"] = mean
    return any(p.device.type == "meta" for _, p in named)


def _refill(run: _Run) -> None:
    """Key ``_params_init_info`` by the parameters materializing made (before user code).
    Reads no values: a read while the run goes on would write the planned values early
    (and out of the eager order); ``nan`` makes MMEngine's ``update_init_info`` see any
    value as new."""
    if run.info is not None and run.root is not None:
        run.stale = _fill_info(run.info, run.root, None, read=False)


def _update_info(info: dict[Any, dict[str, Any]], module: nn.Module, record: InitRecord | None,
                 before: InitRecord | None) -> None:
    """The entries of ``module``'s parameters in an ``info`` MMEngine keeps: the record's
    texts and means, so MMEngine's checks after the call see them as written."""
    if record is None or record is before:
        return
    named = [(n, p) for n, p in module.named_parameters() if p in info and n in record.params]
    for (name, p), mean in zip(named, _means([p for _, p in named])):
        info[p]["init_info"] = record.params[name].info
        info[p]["tmp_mean_value"] = mean


@contextlib.contextmanager
def _init_info(module: nn.Module, run: _Run, dump: bool) -> Iterator[None]:
    """MMEngine's ``_params_init_info`` on every module of the tree for the run; after it,
    the record's texts, ``_dump_init_info()``; the attribute is deleted again either way."""
    before = get_init_record(module)
    mine = module.__dict__.get("_params_init_info")
    if mine is not None:  # inside MMEngine's own init_weights (not the bridge's): it dumps
        yield
        _update_info(mine, module, get_init_record(module), before)
        return
    info: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
    run.info, run.root = info, module
    run.stale = _fill_info(info, module, None)
    holders = list(module.modules())
    for m in holders:
        m._params_init_info = info
    try:
        yield
        record = get_init_record(module)
        _fill_info(info, module, record if record is not before else None)
        dump_info = getattr(module, "_dump_init_info", None)
        if dump and callable(dump_info):
            dump_info()  # MMEngine calls it without arguments (it finds the logger itself)
    finally:
        for m in holders:
            m.__dict__.pop("_params_init_info", None)


# -- install / uninstall -------------------------------------------------------------------


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
    cls.init_weights = _bridged_override(fn)


def _on_subclass(cls: type, **kwargs: Any) -> None:
    super(mm_model.BaseModule, cls).__init_subclass__(**kwargs)
    with _lock:  # (a class defined while another thread uninstalls stays unwrapped)
        if is_installed():
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
