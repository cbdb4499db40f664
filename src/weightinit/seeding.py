"""Seeded, order-free initialization: each tensor's values depend on (seed, name, rule) only.

With a seed — ``init_weights(seed=...)``, ``initialize(..., seed=...)`` or
``with weightinit.seeded(seed):`` — every random write runs on a random
generator seeded from the seed, the tensor's full name and the text of the
rule writing it (``sha256`` of the three), and the global random state is
left as it was. So a parameter's values do not depend on construction
order, on which other modules exist, or on whether the model was built
eagerly or deferred.

Example::

    >>> with weightinit.seeded(1234):
    ...     model.init_weights()
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .errors import InitTypeError

_SEED: contextvars.ContextVar[int | None] = contextvars.ContextVar("weightinit_seed",
                                                                   default=None)


def check_seed(seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InitTypeError(f"seed must be an int or None, got {type(seed).__name__} ({seed!r})")
    return seed


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed every initialization run inside this block (an explicit ``seed=`` still wins)."""
    token = _SEED.set(check_seed(seed))
    try:
        yield
    finally:
        _SEED.reset(token)


def current_seed(explicit: int | None = None) -> int | None:
    """The seed in force: the explicit argument, else the innermost :func:`seeded` block."""
    return check_seed(explicit) if explicit is not None else _SEED.get()


def derive_seed(seed: int, name: str, rule: str) -> int:
    """The generator seed of one tensor: the first 63 bits of sha256(seed | name | rule)."""
    digest = hashlib.sha256(f"{seed}|{name}|{rule}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def run_seeded(seed: int, device: torch.device, write: Callable[[], None]) -> None:
    """Run ``write`` with the generator of ``device`` seeded by ``seed``, then restore it."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            torch.cuda.manual_seed(seed)
            write()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            write()


def seeded_write(seed: int, name: str, rule: str, tensor: Tensor,
                 write: Callable[[], None]) -> None:
    """Write ``tensor`` with a generator that depends only on (seed, name, rule)."""
    run_seeded(derive_seed(seed, name, rule), tensor.device, write)
