"""Tensors user code hands out as raw memory, seen without a torch function mode.

A tensor's memory can leave through calls no ATen op shows: ``.numpy()``,
``np.asarray(t)`` (``__array__``), ``.tolist()``, DLPack. While watched user code
runs, such a tensor gets its pending write first and is copied for the transaction
(writes through the raw memory are unseen, so it is compared after the call).

A ``TorchFunctionMode`` would see those calls, but also costs a Python call on
every other torch function user code makes (thousands in a ``state_dict()``), so
the four methods are wrapped once on ``torch.Tensor`` instead; a wrapper does
anything only in a thread whose innermost watch is active (a thread-local stack),
so code outside a run pays one attribute lookup.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

#: the methods that hand a tensor's memory out (NumPy views, Python lists, DLPack)
RAW_METHODS = ("numpy", "tolist", "__array__", "__dlpack__")

_local = threading.local()
_install_lock = threading.Lock()
_installed = False


def _wrapped(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def raw(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        hooks = getattr(_local, "hooks", None)
        if hooks:
            hooks[-1](self)
        return method(self, *args, **kwargs)

    return raw


def _install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            for name in RAW_METHODS:
                setattr(Tensor, name, _wrapped(name, getattr(Tensor, name)))
            _installed = True


@contextlib.contextmanager
def raw_reads(hook: Callable[[Tensor], None]) -> Iterator[None]:
    """In this thread, ``hook(tensor)`` runs before each raw read in the block."""
    _install()
    if not hasattr(_local, "hooks"):
        _local.hooks = []
    _local.hooks.append(hook)
    try:
        yield
    finally:
        _local.hooks.pop()


__all__ = ["RAW_METHODS", "raw_reads"]
