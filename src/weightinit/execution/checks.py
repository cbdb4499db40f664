"""Checks a session makes after a user call and before its last writes: each raises, and
the session rolls the run back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..errors import CrossThreadWriteError, UndefinedParameterError
from ..planning import UserCall


def check_unwatched(call: UserCall, before: dict[Any, tuple[Tensor, int, int]],
                    seen_writes: set[int], name_of: Callable[[Tensor], str]) -> None:
    """Writes no watch saw (the version counter of a tensor with values moved since
    ``before``, the call's :func:`~.watch.slot_state`, but neither user code in a watched
    thread nor the run wrote it: not in ``seen_writes``) came from a thread the run does
    not watch."""
    unseen = list({id(t): t for t, _, v in before.values() if t._version != v
                   and id(t) not in seen_writes and not t.is_meta}.values())
    if not unseen:
        return
    names = ", ".join(sorted(name_of(t) for t in unseen))
    raise CrossThreadWriteError(
        f"{call.info}: wrote {names} from a thread this run does not watch (one that "
        "existed before the call, e.g. a thread pool created outside init_weights); "
        "writes from such threads are not supported: they can be neither recorded nor "
        "undone. The run was rolled back; values those threads wrote can not be restored "
        "(a model built under deferred() returns to meta). Fix: write the model's tensors "
        "from the calling thread, or from threads (or a ThreadPoolExecutor) created "
        "inside init_weights, which are watched.")


def check_user_defined(root: nn.Module, undefined: tuple[str, ...], written: dict[int, object],
                       to_write: set[int]) -> None:
    """Tensors without a default that user code was trusted to write (``undefined``, names
    under ``root``) must have been (ids in ``written``) or be among the ids ``to_write``
    (the run's last fills, not done yet)."""
    if not undefined:
        return
    tensors = dict(root.named_parameters())
    tensors.update(root.named_buffers())
    missed = [n for n in undefined
              if id(tensors.get(n)) not in written and id(tensors.get(n)) not in to_write]
    if missed:
        raise UndefinedParameterError(
            f"{type(root).__name__}: {', '.join(missed)} have no defined value: they "
            "have no default, no rule covers them, and the user-defined init_weights over "
            "them did not write them. The model was restored. Fix: write them in that "
            "init_weights or add a rule.")
