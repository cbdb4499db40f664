"""What last wrote each tensor of a run (:class:`Entry`), and the record made of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..planning import OpKind
from ..planning.ops import model_init_owner
from ..record import InitRecord, ParamRecord


@dataclass(frozen=True)
class Entry:
    """What last wrote a tensor, as the record shows it."""

    kind: OpKind
    info: str
    declared_in: str
    rule: Any = None
    #: why the values depend on the parallel layout (user code's own draws), or None
    layout: str | None = None


def build_record(root: nn.Module, entries: dict[int, tuple[Tensor, Entry]],
                 loads: list[Any], named: list[tuple[str, Tensor]] | None = None) -> InitRecord:
    """The init record of ``root``: each parameter's last writer (``entries``, by tensor id),
    or "not changed" for those nothing wrote (``named``: ``root``'s named parameters, when
    known)."""
    root_name = type(root).__name__
    model_init = model_init_owner(root)
    kept = (f"model default (_init_weights of {model_init}, kept from construction)"
            if model_init else "PyTorch default (kept its value from construction)")
    untouched = Entry(OpKind.DEFAULT, f"not changed by init_weights of {root_name}", kept)
    params = {}
    texts: dict[Any, str] = {}  # dtype and device names, made once each
    for name, p in (root.named_parameters() if named is None else named):
        _, e = entries.get(id(p), (None, untouched))
        dtype = texts.get(p.dtype) or texts.setdefault(p.dtype, str(p.dtype)[6:])
        device = texts.get(p.device) or texts.setdefault(p.device, str(p.device))
        params[name] = ParamRecord(
            name=name, shape=tuple(p.shape), dtype=dtype, device=device,
            kind=e.kind.value, info=e.info, declared_in=e.declared_in, rule=e.rule,
            layout_dependent=e.layout)
    return InitRecord(root_name, params, tuple(loads))


__all__ = ["Entry", "build_record"]
