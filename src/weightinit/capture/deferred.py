"""Deferred construction: build a model without storage, materialize it once, later.

Inside ``with deferred():``

* ``torch.empty``-family calls return ``meta`` tensors (no storage), so
  parameters declared the usual way (``Parameter(torch.empty(...))``) cost
  nothing;
* in-place writes to those tensors — the constructors' default init
  (``kaiming_uniform_``, ``normal_``, ``fill_``, ``.data.zero_()``, ...) —
  are not run but *recorded*, so they can be replayed later, exactly, for the
  parameters no rule covers;
* parameters built from computed values (``Parameter(torch.zeros(d))``)
  keep that value to copy in later, and every other tensor (buffers such as
  BatchNorm statistics or rotary frequencies) is computed for real as usual.

``init_weights(device=..., dtype=...)`` / ``initialize(..., device=...)``
then allocate each tensor once on the target device and write it once: by
its final rule, else by its replayed constructor init (order and random
numbers: :mod:`weightinit.execution.eager_order`).

``deferred()`` nests and affects only the thread that entered it. The
process-wide hooks it needs (``nn.Parameter.__new__``, the ``torch.nn.init``
functions, a parameter-registration hook) are installed while any thread is
inside a block, and behave exactly like the originals in other threads.

``deferred()`` refuses to run under ``torch.inference_mode()`` (at entry, and
when a block's constructor enters it): tensors made there are inference
tensors for good. Buffers and computed values built in the block would be
inference tensors that training can not update in place, and a model
materialized inside it gets inference parameters that never take a gradient.
Refusing at entry names the cause where it is, before any model exists; the
fix is to build (and initialize) under ``torch.no_grad()`` instead.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ..compat import TRUNC_NORMAL_HELPER, default_device
from ..errors import MaterializeError
from .construction import (
    STATE,
    Construction,
    chain_of,
    construction_of,
    derive,
    mark,
    owner_of,
    record_write,
)

_EMPTY_FACTORIES = {torch.empty, torch.empty_like, torch.empty_strided, Tensor.new_empty}
_INPLACE_DUNDERS = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__",
                    "__idiv__", "__ifloordiv__", "__ipow__"}
_ALIAS_ATTRS = {"data"}
_ALIAS_FUNCS = {"detach", "detach_", "requires_grad_"}
# Guards installing/removing the process-wide patches; never held across a block's body.
_INSTALL_LOCK = threading.Lock()
_INSTALLED: dict[str, Any] = {"users": 0}  # threads inside deferred(), and what was patched


def _is_inplace(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    if name in _INPLACE_DUNDERS:
        return True
    return name.endswith("_") and not name.startswith("_") and name not in _ALIAS_FUNCS


def check_not_inference_mode(where: str) -> None:
    """Raise :class:`MaterializeError` if ``torch.inference_mode()`` is on (``where``: what
    was about to happen, for the message)."""
    if not torch.is_inference_mode_enabled():
        return
    raise MaterializeError(
        f"{where} inside torch.inference_mode(): every tensor made there is an inference "
        "tensor for good, so the model's parameters could never take a gradient and its "
        "buffers (e.g. BatchNorm statistics) could not be updated, or weights loaded into "
        "them, once inference_mode is left. Nothing was built. Fix: build the model under "
        "weightinit.deferred() outside inference_mode (use torch.no_grad() there if you only "
        "want no autograd), initialize it, then run it under torch.inference_mode().")


class _DeferredMode(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func in _EMPTY_FACTORIES:
            out_kwargs = dict(kwargs)
            device = out_kwargs.pop("device", None)
            if device is None:
                src = args[0] if func in (torch.empty_like, Tensor.new_empty) else None
                device = src.device if isinstance(src, Tensor) and src.device.type != "meta" \
                    else default_device()
            out = func(*args, device="meta", **out_kwargs)
            return mark(out, Construction(torch.device(device), shape=tuple(out.shape),
                                          dtype=out.dtype))
        if not args and isinstance(kwargs.get("tensor"), Tensor):
            # torch.nn.init functions dispatch here with the tensor as a keyword
            kwargs = dict(kwargs)
            args = (kwargs.pop("tensor"),)
        target = owner_of(args[0]) if args else None
        if target is None:
            return func(*args, **kwargs)
        module = getattr(func, "__module__", "") or ""
        if module == "torch.nn.init" or _is_inplace(func):
            record_write(args[0], func, args, kwargs)
            return args[0]
        name = getattr(func, "__name__", "")
        attr = getattr(getattr(func, "__self__", None), "__name__", None)
        if name == "__set__" and attr in _ALIAS_ATTRS and len(args) == 2 and \
                isinstance(args[1], Tensor) and args[1].device.type != "meta":
            _set_data(args[0], args[1].detach())  # ``param.data = value``
            return None
        out = func(*args, **kwargs)
        if (name == "__get__" and attr in _ALIAS_ATTRS) or name in _ALIAS_FUNCS:
            derive(out, target, chain_of(args[0]))
        elif name != "__get__":
            derive(out, target, (*chain_of(args[0]), (func, args[1:], kwargs)))
        return out


def _set_data(tensor: Tensor, value: Tensor) -> None:
    """``tensor.data = value`` on a deferred tensor: a whole overwrite, recorded."""
    construction = construction_of(owner_of(tensor))
    if tuple(value.shape) == tuple(tensor.shape) and value.dtype == tensor.dtype:
        record_write(tensor, Tensor.copy_, (tensor, value), {})
    elif construction is not None:
        construction.broken = ("its constructor assigns .data a tensor of shape "
                               f"{tuple(value.shape)} and dtype {value.dtype}")


_INIT_FUNCS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
               "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
               "kaiming_normal_", "orthogonal_", "sparse_")


def _active() -> bool:
    """True if the calling thread is inside a ``deferred()`` block."""
    return getattr(STATE, "depth", 0) > 0


def _recording(fn: Callable[..., Any]) -> Callable[..., Any]:
    # Some torch.nn.init functions (trunc_normal_) do not dispatch through
    # __torch_function__; wrap them so a call on a deferred tensor is recorded.
    @functools.wraps(fn)
    def wrapper(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active() or owner_of(tensor) is None:
            return fn(tensor, *args, **kwargs)
        record_write(tensor, fn, (tensor, *args), kwargs)
        return tensor

    return wrapper


def _recording_inner(inner: Callable[..., Any], outer: Callable[..., Any]) -> Callable[..., Any]:
    # torch.nn.init.trunc_normal_ returns at once for meta tensors. Libraries that kept a
    # reference to it (transformers does) bypass the wrapper on nn.init, but torch's function
    # looks up its helper at call time: wrap the helper, recording the public function.
    @functools.wraps(inner)
    def wrapper(tensor: Any, mean: float, std: float, a: float, b: float,
                generator: Any = None) -> Any:
        if not _active() or owner_of(tensor) is None:
            return inner(tensor, mean, std, a, b, generator=generator)
        record_write(tensor, outer, (tensor,), dict(mean=mean, std=std, a=a, b=b,
                                                     generator=generator))
        return tensor

    return wrapper


#: (helper in torch.nn.init, the public function its calls are recorded as)
_INNER_FUNCS = ((TRUNC_NORMAL_HELPER, "trunc_normal_"),)
#: libraries' truncated-normal helpers, which their public functions look up at call time
#: (timm's ``trunc_normal_`` calls ``_trunc_normal_(tensor, mean, std, a, b)``: uniform,
#: inverse error function, scale, shift, clamp): where the library is imported, a call is
#: recorded as one call of the helper — one whole fill, replayed as itself — not as its
#: five steps
_LIBRARY_HELPERS = (("timm.layers.weight_init", "_trunc_normal_"),)


def _recording_library(helper: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(helper)
    def wrapper(tensor: Any, mean: float, std: float, a: float, b: float) -> Any:
        if not _active() or owner_of(tensor) is None:
            return helper(tensor, mean, std, a, b)
        record_write(tensor, helper, (tensor,), dict(mean=mean, std=std, a=a, b=b))
        return tensor

    return wrapper


def _deferred_parameter_new(original: Callable[..., Any]) -> Callable[..., Any]:
    def new(cls: type, *args: Any, **kwargs: Any) -> Tensor:
        if not _active():
            return original(cls, *args, **kwargs)
        # inference_mode entered inside the block (a builder decorated with it)
        check_not_inference_mode("weightinit.deferred(): a constructor creates a Parameter")
        return deferred_new(cls, *args, **kwargs)

    def deferred_new(cls: type, data: Tensor | None = None, requires_grad: bool = True) -> Tensor:
        if data is None or not isinstance(data, Tensor) or type(data) not in (Tensor, nn.Parameter):
            return original(cls, data, requires_grad)
        construction = construction_of(data)
        if construction is None and not chain_of(data):
            owner = owner_of(data)
            construction = construction_of(owner) if owner is not None else None
        source = owner_of(data)
        if construction is None and source is not None and data.device.type == "meta":
            # computed from a deferred temporary (``Parameter(t * 3)`` after drawing ``t``):
            # its value is that computation, replayed on the temporary's value
            made = construction_of(source)
            construction = Construction(made.device, shape=tuple(data.shape), dtype=data.dtype)
            construction.add(Tensor.copy_, (data,), {})
            data = torch.empty_like(data, device="meta")
        elif construction is None and data.device.type == "meta":
            return original(cls, data, requires_grad)  # a plain meta tensor: nothing known
        if construction is None:
            # Built from a computed value: keep it, to copy in if no rule covers it.
            value = data.detach()
            construction = Construction(value.device, shape=tuple(value.shape),
                                        dtype=value.dtype)
            construction.add(Tensor.copy_, (value,), {})
            data = torch.empty_like(value, device="meta")
        param = original(cls, data, requires_grad)
        return mark(param, construction)

    return new


def _note_on_module(module: nn.Module, name: str, param: Any) -> None:
    # Parameter registration hook: keep each parameter's construction on its
    # module too, so it survives sharding, which replaces the parameter object.
    if not _active():
        return
    construction = construction_of(param) if isinstance(param, Tensor) else None
    if construction is not None:
        module.__dict__.setdefault("_wi_constructions", {})[name] = construction


def _install() -> None:
    """Install the process-wide patches, remembering what was there (lock held)."""
    saved_new = nn.Parameter.__dict__["__new__"]
    saved_init = {name: getattr(nn.init, name) for name in _INIT_FUNCS if hasattr(nn.init, name)}
    patched_new = _deferred_parameter_new(
        saved_new.__func__ if isinstance(saved_new, staticmethod) else saved_new)
    nn.Parameter.__new__ = patched_new  # type: ignore[method-assign]
    patched_init = {name: _recording(fn) for name, fn in saved_init.items()}
    for inner, outer in _INNER_FUNCS:
        if hasattr(nn.init, inner) and outer in saved_init:
            saved_init[inner] = getattr(nn.init, inner)
            patched_init[inner] = _recording_inner(saved_init[inner], saved_init[outer])
    for name, fn in patched_init.items():
        setattr(nn.init, name, fn)
    libraries = []
    for module_name, attr in _LIBRARY_HELPERS:
        module = sys.modules.get(module_name)
        helper = getattr(module, attr, None)
        if callable(helper):
            patched = _recording_library(helper)
            setattr(module, attr, patched)
            libraries.append((module, attr, helper, patched))
    register = getattr(nn.modules.module, "register_module_parameter_registration_hook", None)
    _INSTALLED.update(new=(saved_new, patched_new), init=(saved_init, patched_init),
                      libraries=libraries,
                      handle=register(_note_on_module) if register is not None else None)


def _uninstall() -> None:
    """Put back what :func:`_install` replaced (lock held); a patch made since is kept."""
    handle = _INSTALLED.pop("handle")
    if handle is not None:
        handle.remove()
    saved_new, patched_new = _INSTALLED.pop("new")
    if nn.Parameter.__dict__.get("__new__") is patched_new:
        nn.Parameter.__new__ = saved_new  # type: ignore[method-assign]
    saved_init, patched_init = _INSTALLED.pop("init")
    for name, fn in saved_init.items():
        if getattr(nn.init, name, None) is patched_init[name]:
            setattr(nn.init, name, fn)
    for module, attr, helper, patched in _INSTALLED.pop("libraries"):
        if getattr(module, attr, None) is patched:
            setattr(module, attr, helper)


@contextlib.contextmanager
def deferred(match_eager: bool = False) -> Iterator[None]:
    """Build models inside this block without parameter storage or default init.

    Any ``nn.Module`` works, BaseModule-based or not. Materialize with
    ``model.init_weights(device=..., dtype=...)`` or
    ``weightinit.initialize(model, init_cfg, device=..., dtype=...)``.

    Unseeded, the constructor inits replay in eager construction's order, so
    with no rules and no user ``init_weights`` code a deferred model equals
    the eager one under the same ``torch.manual_seed``. Inits that a rule or
    user code overwrites are not drawn, so later draws differ;
    ``match_eager=True`` draws them too (rule-covered ones into scratch), and
    then every value and the generator's state equal eager + the same init.

    Blocks nest, and only the calling thread is affected: other threads keep
    building real tensors with the usual default init.

    Raises :class:`~weightinit.errors.MaterializeError` under
    ``torch.inference_mode()`` (see the module docstring); use ``torch.no_grad()``.
    """
    check_not_inference_mode("weightinit.deferred() was entered")
    outer = getattr(STATE, "match_eager", False)
    depth = getattr(STATE, "depth", 0)
    if depth:  # nested: the outermost entry of this thread already set everything up
        STATE.depth = depth + 1
        STATE.match_eager = outer or match_eager
        try:
            yield
        finally:
            STATE.depth = depth
            STATE.match_eager = outer
        return
    with _INSTALL_LOCK:
        if _INSTALLED["users"] == 0:
            _install()
        _INSTALLED["users"] += 1
    try:
        STATE.depth = 1
        STATE.match_eager = match_eager
        STATE.block = []
        # TorchFunctionMode stacks are per thread, so the mode only sees this thread.
        with _DeferredMode():
            yield
    finally:
        STATE.depth = 0
        STATE.match_eager = False
        STATE.block = None
        with _INSTALL_LOCK:
            _INSTALLED["users"] -= 1
            if _INSTALLED["users"] == 0:
                _uninstall()


def note_call(func: Callable[..., Any], tensor: Tensor, *args: Any, **kwargs: Any) -> bool:
    """Record ``func(tensor, ...)`` if ``tensor`` is deferred; True if it was recorded."""
    if owner_of(tensor) is None:
        return False
    record_write(tensor, func, (tensor, *args), kwargs)
    return True
