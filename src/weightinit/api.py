"""The entry points: ``initialize``, ``plan``, ``load_checkpoint``, and what
``BaseModule.init_weights`` and ``rule(module)`` run.

Each builds one plan with the one planner, then (except ``plan``) executes
it in a session that commits everything or, on failure, restores the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from .checkpoint.loader import LoadReport
from .errors import InitRecordError, InitTypeError, RepeatedInitWarning, warn
from .execution import Entry, Session, current_seed
from .execution.gcpause import collector_paused
from .execution.parallel import num_threads
from .planning import (
    PLANNED,
    OpKind,
    Plan,
    PlanningCache,
    Request,
    build_plan,
    is_node,
    is_planned,
)
from .planning.meshplan import checkpoint_reads, parse_mesh, plan_mesh, rank_draws
from .record import InitRecord
from .rules import PretrainedInit, Rule, install_runner, parse_init_cfg

__all__ = ["get_init_record", "initialize", "load_checkpoint", "plan", "run",
           "run_init_weights", "update_init_info", "watched_init_weights"]

#: on a wrapped (overriding) ``init_weights``: the user's own function
USER_INIT = "__weightinit_user_init__"
#: on an ``init_weights`` function: a context manager factory its runs plan under (the MMEngine
#: bridge's: MMEngine's layer matching and silence), which :func:`plan` of it applies too
RUN_CONTEXT = "__weightinit_run_context__"
_OPTIONS = ("device", "dtype", "seed", "strict")


def _check_cfg(init_cfg: Any) -> None:
    if not isinstance(init_cfg, (dict, list, tuple)):
        raise InitTypeError(f"init_cfg must be a dict or a list of dict, but got "
                            f"{type(init_cfg).__name__}. Fix: wrap the rule in dict(type=...).")


def _nested(module: nn.Module, seed: Any, device: Any, dtype: Any, what: str) -> Session | None:
    """The running session ``module`` belongs to (user code calling us again), if any."""
    session = Session.current()
    if session is None or not session.contains(module):
        return None
    if seed is not None:
        raise InitTypeError(f"{type(module).__name__}: seed can only be given to the "
                            "outermost init_weights()/initialize() call")
    if device is not None or dtype is not None:
        raise InitTypeError(f"{what}: device/dtype can only be given to the outermost "
                            "init_weights()/initialize() call")
    return session


def _strict(module: nn.Module, strict: bool) -> bool:
    """``strict``, or set by the outermost call of the running session ``module`` is in."""
    session = Session.current()
    return bool(strict) or (session is not None and session.contains(module)
                            and session.cache.strict)


def _execute(module: nn.Module, request: Request, seed: Any) -> InitRecord | None:
    """Plan ``request`` and run it: nested in the running session, or as a new one."""
    session = _nested(module, seed, request.device, request.dtype,
                      f"{type(module).__name__}.init_weights" if request.rules is None
                      else "initialize")
    if session is not None:
        with session.watch.state(False, step_off=True):  # the library runs here
            session.run_nested(build_plan(session.cache, Request(
                module, request.rules, outermost=False,
                strict=request.strict or session.cache.strict)))
        return None
    session = Session(module, current_seed(seed))
    session.cache.strict = request.strict  # nested calls from user code inherit it
    with collector_paused(), session.active():
        return session.run(build_plan(session.cache, request))


def run_init_weights(module: nn.Module, device: Any = None, dtype: Any = None,
                     seed: int | None = None, strict: bool = False) -> None:
    """``BaseModule.init_weights``: plan the subtree, validate it all, then execute.

    A second call writes nothing and warns (:class:`RepeatedInitWarning`, as
    MMEngine); under ``strict`` it raises :class:`InitRuntimeError`.
    """
    strict = _strict(module, strict)
    if module.is_init:  # nothing is written and the last record stays
        warn(RepeatedInitWarning, f"init_weights of {type(module).__name__} has been called "
             "more than once.", strict=strict)
        return
    _execute(module, Request(module, None, device, dtype, strict=strict), seed)


def watched_init_weights(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a class's own (overriding) ``init_weights`` so that, called from outside any run,
    it *is* the run: its ``super().init_weights()`` and every write it makes afterwards are
    planned, watched, recorded and undone together on failure. Inside a run it is the user
    code it always was. The wrapper takes ``device``/``dtype``/``seed``/``strict`` like
    ``BaseModule.init_weights`` (unless ``fn`` takes them itself)."""
    if getattr(fn, USER_INIT, None) is not None or getattr(fn, PLANNED, False):
        return fn
    try:
        own = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        own = set()
    ours = [o for o in _OPTIONS if o not in own]

    @functools.wraps(fn)
    def init_weights(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        options = {o: kwargs.pop(o) for o in ours if o in kwargs}
        session = Session.current()
        if session is not None and session.contains(self):
            if options:
                _nested(self, options.get("seed"), options.get("device"),
                        options.get("dtype"), f"{type(self).__name__}.init_weights")
            args, kwargs = session.call_args.pop(id(self), (args, kwargs))
            return fn(self, *args, **kwargs)
        session = Session(self, current_seed(options.get("seed")))
        strict = bool(options.get("strict", False))
        session.cache.strict = strict
        if args or kwargs:
            session.call_args[id(self)] = (args, kwargs)
        with collector_paused(), session.active():
            session.run(build_plan(session.cache, Request(
                self, None, options.get("device"), options.get("dtype"), strict=strict,
                user_root=True)))
        return None

    setattr(init_weights, USER_INIT, fn)
    try:  # the user's parameters, then the run's options (keyword-only)
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        varkw = [p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD]
        params += [inspect.Parameter(o, inspect.Parameter.KEYWORD_ONLY,
                                     default=False if o == "strict" else None) for o in ours]
        init_weights.__signature__ = sig.replace(parameters=params + varkw)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        pass
    return init_weights


def initialize(module: nn.Module, init_cfg: dict | list[dict], *, device: Any = None,
               dtype: Any = None, seed: int | None = None,
               strict: bool = False) -> InitRecord | None:
    """Apply ``init_cfg`` rules to any ``nn.Module`` (timm, torchvision, Hugging Face ...).

    Rules apply in list order, each rule's overrides right after its own
    layer pass; the last writer wins and each tensor is written once. The
    whole config is validated before anything is written; a failure later
    (in user code or a checkpoint read) leaves the model as it was.

    A model built under :func:`weightinit.deferred` (or on ``meta``) is
    materialized on ``device`` (default CPU) in ``dtype`` (default: as
    declared), each tensor written once. With ``seed`` (or inside
    :func:`weightinit.seeded`) each tensor's values depend only on the seed,
    its name and its rule.

    ``strict=True`` turns every warning (a ``layer`` name that matches
    nothing, a rule that targets nothing, skipped checkpoint keys) into its
    error, raised while planning, before anything is written.

    Returns the init record (``None`` when called from inside another
    module's ``init_weights``, whose record it joins).

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(8, 2))
        >>> record = initialize(net, [dict(type='Kaiming', layer='Conv2d'),
        ...                           dict(type='Constant', layer='Linear', val=0)])
    """
    if not isinstance(module, nn.Module):
        raise InitTypeError(f"initialize: module must be an nn.Module, got {type(module).__name__}")
    _check_cfg(init_cfg)
    session = Session.current()
    path = session.cache.path(module) if session is not None and session.contains(module) else ""
    strict = _strict(module, strict)
    rules = parse_init_cfg(init_cfg, path, type(module).__name__, strict=strict)
    return _execute(module, Request(module, rules, device, dtype, strict=strict), seed)


def apply_initializer(module: nn.Module, init: Any) -> InitRecord | None:
    """Calling a rule object on a module: plan and apply that one rule."""
    if not isinstance(module, nn.Module):
        raise InitTypeError(f"{type(init).__name__} must be called on an nn.Module, got "
                            f"{type(module).__name__}")
    rule = Rule(init=init, cfg={}, location=f"{type(init).__name__}(...)", owner="",
                owner_class=type(module).__name__)
    return _execute(module, Request(module, (rule,)), None)


install_runner(apply_initializer)


class _UserFunction:
    """``fn(*args, **kwargs)`` as the user code of one run (an initializer that only defines
    ``__call__``: planned as user code over the whole model)."""

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.name = getattr(fn, "__qualname__", None) or type(fn).__name__
        #: its canonical identity (seeds key on it, never on its text)
        self.seed_key = f"run|{getattr(fn, '__module__', '')}.{self.name}"

    def __call__(self, module: nn.Module) -> None:
        self.fn(*self.args, **self.kwargs)

    def _get_init_info(self) -> str:
        return f"{self.name}() via weightinit.run"


def run(model: nn.Module, fn: Callable[..., Any], *args: Any, seed: int | None = None,
        device: Any = None, dtype: Any = None, strict: bool = False,
        **kwargs: Any) -> InitRecord | None:
    """Run ``fn(*args, **kwargs)`` — a model's own init code — as one weightinit run.

    ``fn`` is any function that writes ``model``'s tensors: torchtitan's
    ``model.init_weights``, a Hugging Face model's ``init_weights``, code
    calling ``torch.nn.init.*`` or ``Tensor.normal_``. It runs watched,
    recorded (each tensor's entry names the call that wrote it) and
    transactional (an exception restores the model). A model built under
    :func:`weightinit.deferred` or on ``meta`` is materialized first.

    With ``seed`` (or inside :func:`weightinit.seeded`; sharded models are
    always seeded) every ``normal_``/``uniform_`` that overwrites a whole
    parameter or buffer — whatever ``nn.init`` function, tensor method or
    ``.data`` alias it comes through — is drawn from the seeded tiles under
    (seed, the tensor's name, its *n*-th fill): a DTensor shard gets exactly
    the slice one process gets, on any layout. Values user code computes in
    ways that depend on the layout (draws from an explicit generator,
    reductions) are kept, and their record entry says why
    (``layout_dependent``).

    ``seed``, ``device``, ``dtype`` and ``strict`` are this function's own
    (keyword-only); pass ``fn`` arguments of those names with
    :func:`functools.partial`.

    Example::

        >>> record = weightinit.run(model, model.init_weights, buffer_device="cpu", seed=0)
    """
    if not isinstance(model, nn.Module):
        raise InitTypeError(f"weightinit.run: model must be an nn.Module, got "
                            f"{type(model).__name__}")
    if not callable(fn):
        raise InitTypeError(f"weightinit.run: fn must be callable (the model's init code), got "
                            f"{type(fn).__name__} ({fn!r}). Fix: pass the function itself, "
                            "e.g. weightinit.run(model, model.init_weights, seed=0)")
    init = _UserFunction(fn, args, kwargs)
    rule = Rule(init=init, cfg={}, location=f"weightinit.run({init.name})", owner="",
                owner_class=type(model).__name__)
    strict = _strict(model, strict)
    return _execute(model, Request(model, (rule,), device, dtype, strict=strict), seed)


def plan(model: nn.Module, init_cfg: Any = None, *, device: Any = None, dtype: Any = None,
         allow_undefined: bool = False, strict: bool = False, mesh: Any = None,
         layout: str | None = None, tp_plan: dict[str, Any] | None = None) -> Plan:
    """Resolve which rule finally owns each tensor, without writing anything.

    With ``init_cfg=None`` the model's own ``init_cfg`` tree is planned (what
    ``model.init_weights()`` would do); otherwise what
    ``initialize(model, init_cfg)`` would do. Reads no tensor values, so it
    works on ``meta`` parameters. It is the planner the run uses, so it raises
    exactly what the run would raise before writing (``device``/``dtype`` as
    you would pass them to the run). ``allow_undefined=True`` lists deferred
    tensors that nothing gives a value in ``plan.undefined`` instead of raising.
    It warns what the run would warn; ``strict=True`` raises those as errors.

    With ``mesh`` (``{"dp": 128, "tp": 8}`` or ``"dp=128,tp=8"``) the model is also laid
    out as ``layout`` would lay it out on that mesh — ``"fsdp"``, ``"hsdp"``, ``"tp"``
    or ``"fsdp_tp"`` (default: ``"fsdp"`` on one dimension, ``"fsdp_tp"`` on two), the
    tensor-parallel ones by ``tp_plan`` (module pattern -> ``"colwise"``/``"rowwise"``, or
    the plan you give ``parallelize_module``; default: a Llama's) — without processes, and ``plan.ranks`` says what every rank
    holds and draws, ranks with identical work grouped (:mod:`~weightinit.planning.meshplan`).

    Example::

        >>> p = weightinit.plan(model)
        >>> p['head.fc.weight'].owner_info
        'NormalInit: mean=0, std=0.01, bias=0'
    """
    if not isinstance(model, nn.Module):
        raise InitTypeError(f"plan: model must be an nn.Module, got {type(model).__name__}")
    user_root = False
    context: Any = contextlib.nullcontext()
    if init_cfg is None:
        if not is_node(model):
            raise InitTypeError(f"plan: {type(model).__name__} is not a weightinit.BaseModule, so "
                                "it has no init_cfg tree. Fix: pass init_cfg=... to plan it like "
                                "initialize(model, init_cfg).")
        rules = None
        # an overriding init_weights is user code: the plan says what it leaves to it
        user_root = not is_planned(model)
        # planned as its init_weights would run (the MMEngine bridge's: MMEngine's rules)
        enter = getattr(getattr(type(model), "init_weights", None), RUN_CONTEXT, None)
        if enter is not None:
            context = enter()
    else:
        _check_cfg(init_cfg)
        rules = parse_init_cfg(init_cfg, "", type(model).__name__, strict=strict)
    with context, collector_paused():
        result = build_plan(PlanningCache(model), Request(model, rules, device, dtype,
                                                          allow_undefined=allow_undefined,
                                                          strict=strict, user_root=user_root))
    if mesh is None:
        return result
    if layout is None:
        layout = "fsdp_tp" if len(parse_mesh(mesh)[0]) == 2 else "fsdp"
    draws = {e.name: rank_draws(e.owner, e.shape) for e in result}
    return dataclasses.replace(result, ranks=plan_mesh(model, mesh, layout, tp_plan, draws,
                                                       result.dtype, checkpoint_reads(result),
                                                       num_threads()))


def load_checkpoint(model: nn.Module, source: str, *, prefix: str | None = None,
                    map_location: Any = "cpu", strict: bool = False, mismatch: str = "skip",
                    revise_keys: Any = None, allow_pickle: bool = False,
                    sha256: str | None = None, device: Any = None,
                    dtype: Any = None, seed: int | None = None,
                    timeout: float | None = None, deadline: float | None = None) -> LoadReport:
    """Load a checkpoint into ``model`` (any ``nn.Module``) and report what happened.

    ``source`` is a path, ``file://``, ``http(s)://`` (downloaded once into
    the cache), ``torchvision://NAME`` or a registered scheme;
    ``.safetensors`` is read lazily, ``.pth`` with ``weights_only=True``
    unless ``allow_pickle``. Keys: nested ``state_dict``/``model``/``module``
    unwrapped, ``revise_keys`` regexes applied (default: strip ``module.``),
    then ``prefix`` selected. Shape mismatches are skipped and reported
    (``mismatch='error'`` raises); ``strict`` makes missing or unexpected
    keys an error. Every check runs before any write, and a read that fails
    later leaves the model as it was. A model built under
    :func:`weightinit.deferred` is materialized on ``device``/``dtype``, and
    tensors that come only from the checkpoint use the loaded storage as is;
    the others get their PyTorch default (seeded by ``seed``, see
    :func:`weightinit.seeded`). A sharded model reads only each rank's slice.
    ``timeout`` (seconds per read, default 60) and ``deadline`` (seconds for the
    whole download, default 3600) bound a download; ``sha256`` is checked for
    every source, cached and local files included.

    Example::

        >>> report = load_checkpoint(model, "weights.safetensors", prefix="backbone")
        >>> report.missing, report.unexpected, report.mismatched
    """
    init = PretrainedInit(source, prefix=prefix, map_location=map_location,
                          allow_pickle=allow_pickle, revise_keys=revise_keys, strict=strict,
                          mismatch=mismatch, sha256=sha256, timeout=timeout,
                          deadline=deadline)
    rule = Rule(init=init, cfg={}, location="load_checkpoint", owner="",
                owner_class=type(model).__name__)
    session = Session.current()
    before = len(session.loads) if session is not None else 0
    record = _execute(model, Request(model, (rule,), device, dtype), seed)
    if record is not None:
        return record.loads[-1]
    return session.loads[before:][-1]


def update_init_info(module: nn.Module, init_info: str) -> None:
    """Inside a user-defined ``init_weights``: label the parameters of ``module`` it changed.

    Parameters of ``module`` whose value changed since the engine last saw
    them get ``init_info`` as their record text; others keep theirs.

    Example::

        >>> def init_weights(self):
        ...     nn.init.zeros_(self.gate.weight)
        ...     update_init_info(self, 'zero gate')
    """
    session = Session.current()
    if session is None or not session.contains(module):
        raise InitRecordError(f"Can not find an active init_weights for {type(module).__name__}: "
                              "update_init_info only works while init_weights runs. Fix: call "
                              "it from inside your module's init_weights.")
    if not isinstance(init_info, str):
        raise InitTypeError(f"init_info must be a str, got {type(init_info).__name__}")
    session.mark_changed(module, None, Entry(OpKind.USER, init_info,
                                             f"update_init_info in {type(module).__name__}"))


def get_init_record(module: nn.Module) -> InitRecord | None:
    """The record of the last outermost ``init_weights()``/``initialize()`` on ``module``."""
    return getattr(module, "_weightinit_record", None)

