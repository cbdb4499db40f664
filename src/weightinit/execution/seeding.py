"""Seeded, order-free initialization: each tensor's values depend on (seed, name, rule) only.

With a seed — ``init_weights(seed=...)``, ``initialize(..., seed=...)`` or
``with weightinit.seeded(seed):`` — every random write runs on a random
generator seeded from the seed, the tensor's full name and the canonical
identity of the rule writing it (``sha256`` of the three), and the global
random state is left as it was. So a parameter's values do not depend on construction
order, on which other modules exist, or on whether the model was built
eagerly or deferred.

Fills made of independent draws (normal, truncated normal, uniform, the
Glorot/He/LeCun presets, constants) are drawn in fixed N-dimensional tiles,
each from its own generator seeded by (tensor seed, tile index)
(:mod:`.tiles`). Any rectangular region of the tensor can then be drawn on
its own, to the same values: this is how a sharded model's ranks each draw
only their shard, on any placement (see :mod:`.sharding`). Other
fills (orthogonal, identity, ``reset_parameters``, user code) draw the whole
tensor from one generator seeded by the tensor seed: a thread-local torch
function mode hands that generator to every random op called without one
(``normal_``, ``uniform_``, ``randn``, ``randperm`` ...), so these draws do
not touch, or depend on, torch's process-wide generators, whatever other
threads do. Draws it cannot reach (compiled code using the default
generator) come from the global generators, seeded the same way and
restored afterwards, one seeded section at a time.

Example::

    >>> with weightinit.seeded(1234):
    ...     model.init_weights()
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ..capture.construction import Construction
from ..capture.replay import replay
from ..errors import InitTypeError
from ..maths import Elementwise
from .parallel import draw_all, parallel_target
from .tiles import RegionFill, generator

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


#: name segments that wrappers insert without changing what a tensor is (activation
#: checkpointing, ``torch.compile``, FSDP1): a tensor's seed ignores them
WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def derive_seed(seed: int, name: str, rule: str) -> int:
    """The generator seed of one tensor: the first 63 bits of sha256(seed | name | rule), the
    name without the segments wrappers insert (:data:`WRAPPER_SEGMENTS`)."""
    for segment in WRAPPER_SEGMENTS:
        if segment in name:
            name = name.replace(segment, "")
    digest = hashlib.sha256(f"{seed}|{name}|{rule}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def fill_elementwise(dist: Any, out: Tensor, seed: int, shape: Sequence[int] | None = None,
                     offset: Sequence[int] | None = None) -> None:
    """Write the region ``[offset, offset + out.shape)`` of a seeded elementwise fill of a
    tensor of ``shape`` (default: ``out`` is the whole tensor) into ``out``.

    ``dist`` is a :class:`~weightinit.maths.Elementwise`. Only the tiles
    overlapping the region are drawn (:mod:`.tiles`), so the values do not
    depend on the region or on how the tensor is split; on the CPU the tiles
    are shared out between threads, each from its own generator, so the
    thread count changes nothing.
    """
    if out.numel() == 0:
        return
    if not dist.random:
        dist.fill_(out)
        return
    draw_all([seeded_fill(dist, out, seed, shape, offset)])


def seeded_fill(dist: Any, out: Tensor, seed: int, shape: Sequence[int] | None = None,
                offset: Sequence[int] | None = None) -> RegionFill:
    """:func:`fill_elementwise` of a non-empty ``out`` by a random ``dist``, as tiles to draw
    (:func:`~.parallel.draw_all`)."""
    dist.check()
    return RegionFill(dist, out, seed, shape, offset)


#: unseeded elementwise fills of at least this many elements are drawn in tiles on several
#: threads (measured on a 2-core CPU: the pool's hand-off costs ~0.1 ms, a 2**18-element
#: normal_ ~1 ms)
UNSEEDED_MIN = 1 << 18


def fill_unseeded(dist: Any, out: Tensor) -> None:
    """Fill ``out`` with ``dist`` drawing from torch's global generator, as ``dist.fill_(out)``.

    A CPU tensor of at least :data:`UNSEEDED_MIN` elements is drawn in tiles
    on several threads (:mod:`.tiles`) under a key that is one 63-bit draw
    of the global generator: ``torch.manual_seed`` still decides the values
    (whatever the thread count) and the global generator advances. Smaller
    tensors and other devices are drawn by ``dist.fill_(out)``, as always.
    """
    fill = unseeded_fill(dist, out)
    if fill is None:
        dist.fill_(out)
    else:
        draw_all([fill])


def unseeded_fill(dist: Any, out: Tensor) -> RegionFill | None:
    """:func:`fill_unseeded`'s tiles (drawing their key now), or ``None`` where it draws
    ``dist.fill_(out)`` instead."""
    if not dist.random or out.numel() < UNSEEDED_MIN or not parallel_target(out):
        return None
    return RegionFill(dist, out, unseeded_key(dist))


def unseeded_key(dist: Any) -> int:
    """The key of an unseeded tile fill of ``dist``: one draw from the global generator (or
    the seeded section's, via its mode)."""
    dist.check()
    return int(torch.randint(0, 1 << 62, (), dtype=torch.int64))


_GLOBAL_RNG = threading.RLock()

_RANDOM_METHODS = frozenset({
    Tensor.normal_, Tensor.uniform_, Tensor.random_, Tensor.bernoulli_, Tensor.exponential_,
    Tensor.geometric_, Tensor.log_normal_, Tensor.cauchy_})
_RANDOM_FUNCTIONS = frozenset({
    torch.randn, torch.rand, torch.randint, torch.randperm, torch.normal, torch.bernoulli,
    torch.multinomial, torch.poisson, torch.randn_like, torch.rand_like, torch.randint_like})


def _takes_generator(fn: Any) -> bool:
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# torch.nn.init functions run their own draws with this mode switched off (a mode is
# not re-entered while it handles a call), so they get the generator as an argument.
_INIT_FUNCTIONS = frozenset(fn for name in dir(nn.init) if not name.startswith("_")
                            and callable(fn := getattr(nn.init, name)) and _takes_generator(fn))


class _OwnGenerators(TorchFunctionMode):
    """Give random ops called without a ``generator`` this section's seeded generators.

    Torch function modes are per thread, so other threads keep drawing from
    torch's global generators, and this section never does.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: Any) -> torch.Generator:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gen = self.generators.get(device)
        if gen is None:
            gen = self.generators[device] = generator(device, self.seed)
        return gen

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = dict(kwargs or {})
        if kwargs.get("generator") is None and (func in _RANDOM_METHODS
                                                or func in _RANDOM_FUNCTIONS
                                                or func in _INIT_FUNCTIONS):
            if (func in _RANDOM_METHODS or func in _INIT_FUNCTIONS
                    or func.__name__.endswith("_like")):
                first = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
                device = first.device if isinstance(first, Tensor) else "cpu"
            else:
                device = kwargs.get("device") or (
                    args[0].device if args and isinstance(args[0], Tensor) else "cpu")
            if torch.device(device).type in ("cpu", "cuda"):
                try:
                    return func(*args, **{**kwargs, "generator": self._generator(device)})
                except TypeError as err:  # an older torch without generator= for this op
                    if "generator" not in str(err):
                        raise
        return func(*args, **kwargs)


@contextlib.contextmanager
def seeded_section(seed: int, devices: set[torch.device] | list[torch.device]) -> Iterator[None]:
    """Inside the block, the CPU generator and those of ``devices`` are seeded with ``seed``
    and random ops called without a generator draw from this section's own (seeded with
    ``seed`` too); restored after."""
    cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                   for d in devices if d.type == "cuda"})
    # torch's global generators are process-wide: one seeded section at a time, so
    # seeded results do not depend on other threads (same-thread nesting is fine).
    with _GLOBAL_RNG, torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        with _OwnGenerators(seed):
            yield


def run_seeded(seed: int, devices: set[torch.device] | list[torch.device],
               call: Callable[[], None]) -> None:
    """Run ``call`` in a :func:`seeded_section`."""
    with seeded_section(seed, devices):
        call()


def draw_recorded(construction: Construction, tensor: Tensor, seed: int,
                  mapping: dict[int, Tensor], last: tuple[int, Elementwise] | None) -> None:
    """A recorded constructor init, seeded and order-free: its last whole overwrite ``last``
    (:func:`~weightinit.planning.recorded.last_whole_write`) drawn from the seeded tiles,
    the dead ops before it never run, the ops after it replayed; with none, every op
    replayed from a generator seeded with ``seed``."""
    if last is None:
        run_seeded(seed, [tensor.device], lambda: replay(construction, tensor, mapping))
        return
    fill_elementwise(last[1], tensor, seed)
    if last[0] + 1 < len(construction.ops):
        run_seeded(seed, [tensor.device],
                   lambda: replay(construction, tensor, mapping, last[0] + 1))
