"""Users' own init code, layout-invariant: its random fills drawn from the seeded tiles.

In a seeded run, user code — a module's own ``init_weights``, an
initializer's ``__call__``, any function given to :func:`weightinit.run` —
runs under :class:`TiledDraws`, a ``TorchDispatchMode`` that sees every ATen
op it makes (``nn.init.*``, tensor methods, ``.data``, functions imported by
name all end in the same ops):

* a ``normal_`` or ``uniform_`` that overwrites a whole parameter or buffer
  of the model is not drawn from torch's generator: the tensor's region on
  this rank (all of it in one process, its shard on a DTensor) is drawn from
  the seeded tiles (:mod:`.tiles`) under the key (seed, the tensor's name,
  its *n*-th such fill in the run). A shard thus holds exactly the slice one
  process draws, whatever the layout;
* a ``normal_``/``uniform_`` of any other tensor (a temporary, as
  ``nn.init.trunc_normal_``'s redraws or ``orthogonal_``'s matrix) is drawn
  the same way under (seed, the call, its *n*-th temporary draw): the same
  on every layout as long as the code draws the same temporaries in the
  same order;
* everything else runs as written, and the values' provenance is followed
  storage by storage: elementwise ops, copies and constant fills keep a
  result layout-invariant; a random op not drawn from tiles (an explicit
  ``generator=``, ``bernoulli_``, ``randperm`` ...) or an op whose result
  depends on how values are summed or laid out (reductions, matrix
  products, decompositions) makes it layout-dependent. A model tensor
  written from such values is reported (:attr:`TiledDraws.dependent`) with
  the reason, and the record says so: never silently.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..compat import TorchDispatchMode, local_tensor, op_written_args
from ..maths.fills import Elementwise
from ..planning.layout import is_sharded, local_region
from .drawbooks import Books, covers, storage
from .parallel import draw_all
from .seeding import derive_seed
from .tiles import RegionFill

_DRAWS = {torch.ops.aten.normal_.default: ("normal", ("mean", "std"), (0.0, 1.0)),
          torch.ops.aten.uniform_.default: ("uniform", ("from", "to"), (0.0, 1.0))}

#: random ops that are not drawn from tiles: what they write depends on torch's generator
_OTHER_RANDOM = frozenset({
    "bernoulli", "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_",
    "random_", "randperm", "rand", "randn", "randint", "rand_like", "randn_like",
    "randint_like", "multinomial", "poisson", "normal", "native_dropout", "dropout"})

#: ops that move, cast, select or fill values without combining several of them: a result
#: made only from layout-invariant values is layout-invariant
_MOVES = frozenset({
    "copy_", "clone", "_to_copy", "to", "fill_", "zero_", "lift_fresh", "lift_fresh_copy",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros",
    "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like",
    "new_full", "scalar_tensor", "arange", "eye", "cat", "stack", "where", "masked_fill",
    "masked_fill_", "index_select", "gather", "flip", "roll", "repeat", "tile", "tril", "triu",
    "tril_", "triu_", "contiguous", "_local_scalar_dense", "detach", "alias"})


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _is_pointwise(func: Any) -> bool:
    return torch.Tag.pointwise in getattr(func, "tags", ())


class TiledDraws(TorchDispatchMode):
    """Random fills of user code drawn from seeded tiles; layout-dependence followed."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self, books: Books, owner: Draws | None = None) -> None:
        super().__init__()
        #: the books of the running user calls, innermost last (nested calls push theirs)
        self.stack = [books]
        self.owner = owner

    @property
    def books(self) -> Books:
        return self.stack[-1]

    def for_thread(self) -> TiledDraws:
        """The mode for a thread the user code starts (modes are per thread): same books."""
        return TiledDraws(self.books)

    # -- the ops ------------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if self.owner is not None and self.owner.depth:
            return func(*args, **kwargs)  # the run's own write
        if func.is_view:
            out = func(*args, **kwargs)
            if args:
                with self.books.lock:
                    self.books.saw_view(args[0], out)
            return out
        if func in _DRAWS:
            with self.books.lock:  # (a fill's number and its draw together)
                if self._draw(func, args, kwargs):
                    return args[0]
        out = func(*args, **kwargs)  # not under the lock: threads' own ops run side by side
        with self.books.lock:
            self._follow(func, args, kwargs, out)
        return out

    def _draw(self, func: Any, args: tuple, kwargs: dict) -> bool:
        """Draw a ``normal_``/``uniform_`` from the tiles; False where it runs as written."""
        target = args[0]
        if self.books.explicit(kwargs.get("generator")) or not target.is_floating_point() \
                or target.device.type == "meta":
            return False
        kind, names, defaults = _DRAWS[func]
        given = list(args[1:3]) + [None] * (3 - len(args))
        a, b = (kwargs.get(n, given[i] if given[i] is not None else defaults[i])
                for i, n in enumerate(names))
        if not all(isinstance(v, (int, float)) for v in (a, b)) or (
                kind == "normal" and not b >= 0) or (kind == "uniform" and not a <= b):
            return False  # torch raises its own error
        dist = Elementwise(kind, (float(a), float(b)))
        books = self.books
        if target.numel() == 0:  # (the whole tensor: the same on every layout)
            return True
        owner = books.model_tensor(target)
        if owner is not None:
            name, tensor = owner
            books.written[id(tensor)] = tensor
            n = books.fills.get(name, 0)
            books.fills[name] = n + 1
            key = derive_seed(books.seed, name, f"fill|{n}")
            books.dependent.pop(id(tensor), None)
        else:
            if books.owners(target):  # part of a model tensor: a view drawn on its own
                return False
            key = derive_seed(books.seed, books.call_key, f"temp|{books.temps}")
            books.temps += 1
            tensor = target
        books.tainted.pop(storage(target), None)
        self._fill(dist, tensor, key, owner[0] if owner else "")
        return True

    @staticmethod
    def _fill(dist: Elementwise, tensor: Tensor, key: int, name: str) -> None:
        if not is_sharded(tensor):
            fill = RegionFill(dist, tensor, key)
            fill.count_write = False  # the in-place op counts it
            draw_all([fill])
            return
        region = local_region(tensor, name)
        local = local_tensor(tensor)
        draw_all([RegionFill(dist, local[box.local_index], key, region.global_shape, box.offset)
                  for box in region.boxes])

    def _follow(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Carry layout-dependence from the op's inputs (or the op itself) to what it writes."""
        books = self.books
        name = func.overloadpacket.__name__
        pos, kw = op_written_args(func)
        written = [args[i] for i in pos if i < len(args) and isinstance(args[i], Tensor)]
        written += [kwargs[k] for k in kw if isinstance(kwargs.get(k), Tensor)]
        inputs = [t for t in _tensors((args, kwargs)) if not any(t is w for w in written)]
        reason = None
        if name in _OTHER_RANDOM:
            reason = f"drawn by aten.{name} from torch's generator, not from the seeded tiles"
        elif func in _DRAWS:  # (one _draw left as written)
            reason = (f"aten.{name} with its own generator, or of part of a tensor: drawn "
                      "from torch's generator, not from the seeded tiles")
        elif inputs and not (_is_pointwise(func) or name in _MOVES):
            reason = f"computed by aten.{name}, whose result depends on the layout"
        if reason is None:
            for t in inputs:
                reason = books.tainted.get(storage(t))
                if reason is not None:
                    break
        overwrite = name in _OVERWRITES
        for t in written:  # in place: an overwrite takes its sources' status, others add theirs
            ptr = storage(t)
            if ptr and reason is not None:
                books.tainted[ptr] = reason
            elif ptr and overwrite:
                books.tainted.pop(ptr, None)
            for owner_name, tensor in books.owners(t):  # (by identity: a shard may be empty)
                books.written[id(tensor)] = tensor
                if reason is not None:
                    books.dependent[id(tensor)] = (tensor, owner_name, reason)
                elif overwrite and covers(t, tensor):
                    books.dependent.pop(id(tensor), None)
        for o in _tensors(out):  # new tensors (a reused storage forgets what it held)
            if any(o is w for w in written) or not storage(o):
                continue
            if reason is not None and name not in _FRESH:
                books.tainted[storage(o)] = reason
            else:
                books.tainted.pop(storage(o), None)


#: ops whose result does not depend on what the written tensor held
_OVERWRITES = frozenset({"copy_", "fill_", "zero_"})
#: ops that make a tensor whose values come from no tensor
_FRESH = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                    "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full",
                    "full_like", "new_full", "scalar_tensor", "arange", "eye"})


class Draws:
    """One run's :class:`TiledDraws` in the thread that runs it: entered by the first user
    call, below the run's watch (so the watch sees each op first, and nothing the draws do
    is seen as user code); a nested user call pushes its books on the same mode instead of
    entering another above the watch."""

    def __init__(self) -> None:
        self.mode: TiledDraws | None = None
        self.thread: int | None = None
        #: > 0 while the run itself writes (a pending write user code forced): its draws
        #: pass through untouched and unfollowed
        self.depth = 0

    @contextlib.contextmanager
    def library(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    @contextlib.contextmanager
    def section(self, books: Books) -> Iterator[None]:
        depth, self.depth = self.depth, 0  # user code again (a nested run's user call)
        try:
            if self.mode is not None and self.thread == threading.get_ident():
                self.mode.stack.append(books)
                try:
                    yield
                finally:
                    self.mode.stack.pop()
                return
            outer = self.mode, self.thread
            self.mode, self.thread = TiledDraws(books, self), threading.get_ident()
            try:
                with self.mode:
                    yield
            finally:
                self.mode, self.thread = outer
        finally:
            self.depth = depth


@contextlib.contextmanager
def thread_section(books: Books | None, watch: Any) -> Iterator[None]:
    """What a thread the user code starts runs inside: the call's draws (seeded runs) under
    the run's watch, as in the calling thread."""
    with TiledDraws(books) if books is not None else contextlib.nullcontext(), \
            watch.for_thread().state(True):
        yield


def thread_section_of(books: Books | None) -> Callable[[], Any] | None:
    """The same without a watch (sharded runs compare values instead)."""
    return (lambda: TiledDraws(books)) if books is not None else None


__all__ = ["Books", "Draws", "TiledDraws", "thread_section", "thread_section_of"]
