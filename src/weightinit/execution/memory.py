"""Fresh CPU memory for tensors a run fills whole, in huge pages when asked for.

A run gives new memory to the tensors it fills whole: a model built under ``deferred()``
is allocated, and a tensor that user code overwrites whole gets a fresh storage while its
old one is kept to undo the run (:mod:`.transaction`). New memory costs more than its
values: the system maps it in page by page at first touch, 4 KiB at a time, zeroing each.
In 2 MiB pages the same memory maps in about ten times faster.

With ``WEIGHTINIT_HUGE_PAGES=1`` on Linux, :func:`empty_like` therefore asks for
transparent huge pages (``madvise(MADV_HUGEPAGE)``) over the whole 2 MiB blocks of each
new storage of at least :data:`MIN_BYTES`, before anything touches it. It is off by
default: in a process that initializes large models again and again (a benchmark, a
test suite, a search), memory marked that way made later runs slower, not faster
(SETR-ViT-L under MMCV 1.x: 1.0 s, then 2.0, 2.8 and 3.0 s, with twice the system time;
without the hint 1.0 s, then 1.3-1.4 s), where the system compacts memory for such
regions at fault time (``/sys/kernel/mm/transparent_hugepage/defrag`` set to
``madvise``, a common default). It is a hint: where the system keeps huge pages off
(``enabled`` is ``never``), on other systems, or when the call fails, memory is as torch
allocates it, and values never differ.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any

import torch
from torch import Tensor

__all__ = ["MIN_BYTES", "advise_huge_pages", "empty", "empty_like", "huge_pages_available"]

#: the size of a transparent huge page on x86-64 and most arm64 kernels
HUGE_PAGE = 2 << 20
#: storages smaller than this are left as torch allocates them (at most one huge page fits)
MIN_BYTES = 4 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h


@functools.lru_cache(maxsize=1)
def _madvise() -> Any:
    """libc's ``madvise``, or None where huge pages can not be asked for."""
    if not sys.platform.startswith("linux") or os.environ.get("WEIGHTINIT_HUGE_PAGES") != "1":
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def huge_pages_available() -> bool:
    """This system can be asked for transparent huge pages, and ``WEIGHTINIT_HUGE_PAGES=1``
    asks to."""
    return _madvise() is not None


def advise_huge_pages(tensor: Tensor) -> bool:
    """Ask for huge pages over the whole 2 MiB blocks of ``tensor``'s storage (a CPU tensor
    of at least :data:`MIN_BYTES` nothing has touched yet). Returns whether it was asked."""
    fn = _madvise()
    if fn is None or tensor.device.type != "cpu":
        return False
    storage = tensor.untyped_storage()
    size = storage.nbytes()
    if size < MIN_BYTES:
        return False
    start = storage.data_ptr()
    lo = -(-start // HUGE_PAGE) * HUGE_PAGE
    hi = (start + size) // HUGE_PAGE * HUGE_PAGE
    return hi > lo and fn(lo, hi - lo, _MADV_HUGEPAGE) == 0


def empty_like(tensor: Tensor, **kwargs: Any) -> Tensor:
    """``torch.empty_like(tensor, **kwargs)``, in huge pages where the system gives them."""
    out = torch.empty_like(tensor, **kwargs)
    advise_huge_pages(out)
    return out


def empty(shape: Any, **kwargs: Any) -> Tensor:
    """``torch.empty(shape, **kwargs)``, in huge pages where the system gives them."""
    out = torch.empty(shape, **kwargs)
    advise_huge_pages(out)
    return out
