"""``_params_init_info`` and ``_dump_init_info``, kept by a bridge as MMEngine and MMCV keep them.

During the outermost ``init_weights`` call every module of the tree holds one shared
``defaultdict`` keyed by Parameter, each entry ``{'init_info', 'tmp_mean_value'}`` (what
wrote it, its mean); codebases read it from their own ``init_weights`` or replace
``_dump_init_info`` to inspect it. The bridge fills it from the run's exact record
(means read once per device and dtype, not once per parameter), calls
``_dump_init_info`` after the run and deletes the attribute again, on failure too — except
where the library's own call keeps it (MMCV's ``init_cfg=dict(type='Pretrained')`` returns
before its dump and leaves it on every module).
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
from .planning import OpKind
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


def _nan() -> Tensor:
    """``tmp_mean_value`` of a parameter whose values are not known (yet): never equal."""
    return torch.tensor(float("nan"))


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
               read: bool = True, on_device: bool = False) -> bool:
    """``info`` for ``module``'s parameters now: the record's text (or unchanged) and mean
    (``nan`` without ``read``). A label user code gave a parameter it wrote, with MMEngine's
    ``update_init_info`` during the run, is kept, as MMEngine's log would show it. Returns
    whether some parameters are still on ``meta`` (a deferred model, not materialized yet)."""
    named = list(module.named_parameters())
    means = _means([p for _, p in named], on_device) if read else [_nan() for _ in named]
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


def refill(run: InfoHolder) -> None:
    """Key ``_params_init_info`` by the parameters materializing made (before user code).
    Reads no values: a read while the run goes on would write the planned values early
    (and out of the eager order); ``nan`` makes MMEngine's ``update_init_info`` see any
    value as new."""
    if run.info is not None and run.root is not None:
        run.stale = _fill_info(run.info, run.root, None, read=False)


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
              means_read: Callable[[nn.Module], bool] = lambda m: True, *, keep: bool = False,
              on_device: bool = False) -> Iterator[None]:
    """The library's ``_params_init_info`` on every module of the tree for the run; after it,
    the record's texts, then ``dump(module)`` (the library's ``_dump_init_info`` call; None:
    no dump). The attribute is deleted again on failure, and after success unless ``keep``
    (MMCV's early return leaves it on every module, so later calls find it).

    Means are read at the start (the library's ``update_init_info``, called by user code,
    compares with them to see what it changed) and at the end only if
    ``means_read(module)`` (a ``_dump_init_info`` the model replaced may read them; the
    libraries' own print the texts only) or ``keep``. ``on_device``: see :class:`InfoHolder`.
    """
    before = get_init_record(module)
    mine = module.__dict__.get("_params_init_info")
    if mine is not None:  # inside the library's own init_weights (not the bridge's): it dumps
        yield
        _update_info(mine, module, get_init_record(module), before, on_device)
        return
    info: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
    run.info, run.root, run.on_device = info, module, on_device
    run.stale = _fill_info(info, module, None, on_device=on_device)
    holders = list(module.modules())
    for m in holders:
        m._params_init_info = info
    kept = False
    try:
        yield
        record = get_init_record(module)
        _fill_info(info, module, record if record is not before else None,
                   read=keep or means_read(module), on_device=on_device)
        kept = keep
        if dump is not None and callable(getattr(module, "_dump_init_info", None)):
            dump(module)
    finally:
        if not kept:
            for m in holders:
                m.__dict__.pop("_params_init_info", None)
