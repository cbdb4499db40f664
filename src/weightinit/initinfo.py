"""``_params_init_info`` and ``_dump_init_info``, kept by a bridge as MMEngine and MMCV keep them.

During the outermost ``init_weights`` call every module of the tree holds one shared
``defaultdict`` keyed by Parameter, each entry ``{'init_info', 'tmp_mean_value'}`` (what
wrote it, its mean); codebases read it from their own ``init_weights`` or replace
``_dump_init_info`` to inspect it. The bridge fills it from the run's exact record, calls
``_dump_init_info`` after the run and deletes the attribute again, on failure too — except
where the library's own call keeps it (MMCV's ``init_cfg=dict(type='Pretrained')`` returns
before its dump and leaves it on every module).

Means are read only when something reads them: each entry's ``tmp_mean_value`` is
computed on first access (:class:`LazyEntry`), as the library's entry would hold it then
(after the run's rule or checkpoint read wrote the parameter, else from the value it had
before the run, which the transaction keeps for every tensor written while user code
could still look), or after the run from the value it has then. The libraries read every
parameter's mean twice per call, a pass over all the model's memory each; code that
never looks (almost all) pays for neither. Parameters of a tensor subclass (DTensor, whose
mean is a collective every rank must join) are read up front, in the same order on
every rank, as the libraries do.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .api import get_init_record
from .execution import Session
from .planning import OpKind
from .planning.flat import shared_walks
from .record import InitRecord

__all__ = ["InfoHolder", "init_info", "refill"]


@dataclasses.dataclass
class InfoHolder:
    """The ``_params_init_info`` of one outermost bridged call, and whether it is stale."""

    #: the ``_params_init_info`` every module of ``root`` holds
    info: defaultdict[Any, dict[str, Any]] | None = None
    root: nn.Module | None = None
    #: ``info`` is keyed by ``meta`` parameters that materializing replaces: filled again
    #: when user code first runs (the model is materialized by then)
    stale: bool = False
    #: means stay on each parameter's device (MMCV's ``tmp_mean_value``; MMEngine's: CPU)
    on_device: bool = False


def _mean(tensor: Tensor) -> Tensor:
    value = tensor.detach()
    mean = (value if value.is_floating_point() or value.is_complex() else value.double()).mean()
    full = getattr(mean, "full_tensor", None)  # a DTensor's mean: the whole tensor's
    return full() if callable(full) else mean


#: parameter types whose ``.data`` is a plain tensor (no subclass whose mean is a collective)
_PLAIN = (nn.Parameter, torch.Tensor)
_MODULE_SETATTR = nn.Module.__setattr__


def _nan() -> Tensor:
    """``tmp_mean_value`` of a parameter whose values are not known (yet): never equal."""
    return torch.tensor(float("nan"))


class LazyEntry(dict):
    """One parameter's entry in ``_params_init_info``; its ``tmp_mean_value`` is read on first
    access (then kept): at the ``start`` of a run, what the library's would hold when it is read
    (:func:`_lazy_mean`); otherwise the mean of its value at that moment. Every way of reading
    the entry (``[]``, ``get``, ``in``, iteration, ``dict(entry)``, ``repr``) sees it."""

    def __init__(self, param: Tensor, on_device: bool, start: bool) -> None:
        super().__init__()
        self._lazy: tuple[Tensor, bool, bool] | None = (param, on_device, start)

    def _resolve(self) -> None:
        lazy, self._lazy = self._lazy, None
        if lazy is not None and not dict.__contains__(self, "tmp_mean_value"):
            dict.__setitem__(self, "tmp_mean_value", _lazy_mean(*lazy))

    def __missing__(self, key: Any) -> Any:
        if key == "tmp_mean_value" and self._lazy is not None:
            self._resolve()
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (key == "tmp_mean_value" and self._lazy is not None)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self) -> Iterator[Any]:
        self._resolve()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._resolve()
        return dict.__len__(self)

    def __repr__(self) -> str:
        self._resolve()
        return dict.__repr__(self)

    def __eq__(self, other: object) -> bool:
        self._resolve()
        return dict.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]  # (as dict's)

    def keys(self) -> Any:
        self._resolve()
        return dict.keys(self)

    def items(self) -> Any:
        self._resolve()
        return dict.items(self)

    def values(self) -> Any:
        self._resolve()
        return dict.values(self)

    def copy(self) -> dict[str, Any]:
        self._resolve()
        return dict(dict.items(self))


def _lazy_mean(param: Tensor, on_device: bool, start: bool) -> Tensor:
    """``param``'s mean now, or (``start``) the one the library's entry holds at this point
    of the run: after a rule or checkpoint read wrote it (the library's initializers update
    the entry as they write), else of the value it had before the run, which the running
    session's transaction keeps (``nan`` if it had none: allocated by the run). User code's
    own writes are not seen, as the library does not see them. Read with the session's
    write watch off: the read is the library's, it must not do a pending write."""
    session = Session.current()
    with contextlib.ExitStack() as stack:
        value: Tensor | None = param
        if session is not None:
            stack.enter_context(session.watch.state(False))
            if start and not session.written_by_run(param):
                value = session.txn.original(param)
        if value is None or value.device.type == "meta":
            return _nan()
        stack.enter_context(torch.no_grad())
        mean = _mean(value)
    return mean if on_device else mean.cpu()


def _means(params: list[Tensor], on_device: bool = False) -> list[Tensor]:
    """Each parameter's mean, the library's ``tmp_mean_value`` (``nan`` for one with no values
    yet, on ``meta``): on the CPU (MMEngine's), one copy per device and dtype rather than one
    synchronization each, or ``on_device`` (MMCV's: where the parameter is)."""
    out = [_nan() for _ in params]
    groups: dict[tuple[Any, ...], list[int]] = {}
    with torch.no_grad():
        for i, p in enumerate(params):
            if p.device.type == "meta":
                continue
            if type(p.data) is not torch.Tensor:  # a tensor subclass (DTensor): one by one
                out[i] = _mean(p) if on_device else _mean(p).cpu()
            else:
                groups.setdefault((p.device, p.dtype), []).append(i)
        for idx in groups.values():
            stacked = torch.stack([_mean(params[i]) for i in idx])
            for i, mean in zip(idx, stacked if on_device else stacked.cpu()):
                out[i] = mean
    return out


def _unchanged(module: nn.Module) -> str:
    return f"not changed by init_weights of {type(module).__name__}"  # the record's wording


#: record kinds whose writers may label their own writes with MMEngine's ``update_init_info``
_LABELLED = (OpKind.USER.value, OpKind.INITIALIZER.value)


def _fill_info(info: dict[Any, dict[str, Any]], module: nn.Module, record: InitRecord | None,
               read: str = "now", on_device: bool = False,
               named: list[tuple[str, Tensor]] | None = None) -> bool:
    """``info`` for ``module``'s parameters now: the record's text (or unchanged) and mean
    (``read``: ``"start"``/``"now"`` are read when first asked for, as the library's entry
    holds it during / after the run, see :class:`LazyEntry`; ``"eager"``: read now). A label
    user code gave a parameter it wrote, with MMEngine's ``update_init_info`` during the run, is kept, as MMEngine's log would show it. Returns
    whether some parameters are still on ``meta`` (a deferred model, not materialized yet).
    ``named``: ``module``'s named parameters, when known."""
    if named is None:
        named = list(module.named_parameters())
    # a subclass's mean may be a collective: read now, in order, on every rank
    now = [p for _, p in named if read == "eager" or (
        type(p) not in _PLAIN and type(p.data) is not torch.Tensor)]
    found = dict(zip(map(id, now), _means(now, on_device)))
    unchanged = _unchanged(module)
    labels = {p: text for p, e in info.items()  # (a dict: the label, never lazy)
              if (text := dict.get(e, "init_info", unchanged)) != unchanged}
    info.clear()  # (a deferred model's parameters were replaced when materialized)
    for name, p in named:
        wrote = record.params.get(name) if record is not None else None
        text = wrote.info if wrote is not None else unchanged
        if wrote is not None and wrote.kind in _LABELLED and p in labels:
            text = labels[p]
        mean = found.get(id(p))
        item = info[p] = LazyEntry(p, on_device, read == "start") if mean is None else {}
        item["init_info"] = text  # (first, as the library's entries hold it)
        if mean is not None:
            item["tmp_mean_value"] = mean
    return any(p.is_meta for _, p in named)


def refill(run: InfoHolder) -> None:
    """Key ``_params_init_info`` by the parameters materializing made (before user code).
    Their means before the run are ``nan`` (they had no values), so MMEngine's
    ``update_init_info`` sees any value as new."""
    if run.info is not None and run.root is not None:
        run.stale = _fill_info(run.info, run.root, None, read="start")


def _update_info(info: dict[Any, dict[str, Any]], module: nn.Module, record: InitRecord | None,
                 before: InitRecord | None, on_device: bool) -> None:
    """The entries of ``module``'s parameters in an ``info`` the library keeps: the record's
    texts and means, so the library's checks after the call see them as written."""
    if record is None or record is before:
        return
    named = [(n, p) for n, p in module.named_parameters() if p in info and n in record.params]
    for (name, p), mean in zip(named, _means([p for _, p in named], on_device)):
        info[p]["init_info"] = record.params[name].info
        info[p]["tmp_mean_value"] = mean


@contextlib.contextmanager
def init_info(module: nn.Module, run: InfoHolder, dump: Callable[[nn.Module], None] | None,
              *, keep: bool = False, on_device: bool = False) -> Iterator[None]:
    """The library's ``_params_init_info`` on every module of the tree for the run; after it,
    the record's texts, then ``dump(module)`` (the library's ``_dump_init_info`` call; None:
    no dump). The attribute is deleted again on failure, and after success unless ``keep``
    (MMCV's early return leaves it on every module, so later calls find it).

    Means are those before the run (the library's ``update_init_info``, called by user
    code, compares with them to see what it changed) and, after it, those at the end
    (a ``_dump_init_info`` the model replaced may read them; the libraries' own print the
    texts only); both are read when first asked for (:class:`LazyEntry`), except for the
    info ``keep`` leaves behind, read at the end. ``on_device``: see :class:`InfoHolder`.
    """
    before = get_init_record(module)
    mine = module.__dict__.get("_params_init_info")
    if mine is not None:  # inside the library's own init_weights (not the bridge's): it dumps
        yield
        _update_info(mine, module, get_init_record(module), before, on_device)
        return
    with shared_walks(module) as walks:  # (the run walks the tree once for both)
        flat = walks.flat()
        info: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        run.info, run.root, run.on_device = info, module, on_device
        run.stale = _fill_info(info, module, None, read="start", on_device=on_device,
                               named=flat.named_parameters)
        holders = flat.modules
        for m in holders:
            if type(m).__setattr__ is _MODULE_SETATTR:  # (what torch's would do, directly)
                m.__dict__["_params_init_info"] = info
            else:
                m._params_init_info = info
        kept = False
        try:
            yield
            record = get_init_record(module)
            _fill_info(info, module, record if record is not before else None,
                       read="eager" if keep else "now", on_device=on_device,
                       named=walks.flat().named_parameters)
            kept = keep
            if dump is not None and callable(getattr(module, "_dump_init_info", None)):
                dump(module)
        finally:
            if not kept:
                for m in holders:
                    m.__dict__.pop("_params_init_info", None)
