"""How a run writes: one strategy, chosen once per run.

* :class:`Plain` — each op writes its tensor, drawing from torch's global
  generators as MMEngine does (a large elementwise fill: pieces drawn on
  several threads from generators seeded by one draw of the global one);
* :class:`Seeded` — each tensor's values depend only on (seed, its full name,
  its writer's ``seed_key``): elementwise fills are drawn in fixed blocks from
  their own generators, other writes and user code run with torch's
  generators seeded (and restored afterwards);
* :class:`Sharded` — seeded, and a sharded (DTensor) tensor is written shard
  by shard, each rank drawing or reading only its own part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
from torch import Tensor

from ..capture.construction import construction_of
from ..capture.replay import replay_all
from ..errors import ShardingError
from ..maths import Elementwise
from ..planning import (
    DefaultFill,
    Op,
    OpKind,
    UserCall,
    fills_whole,
    has_sharded,
    is_sharded,
)
from ..planning.ops import class_name, default_seed_key
from ..planning.recorded import last_whole_write
from . import batched
from .eager_order import Prologue, scratch_items
from .parallel import draw_all, parallel_target
from .seeding import (
    UNSEEDED_MIN,
    derive_seed,
    draw_recorded,
    fill_elementwise,
    fill_unseeded,
    run_seeded,
    seeded_fill,
    seeded_section,
    unseeded_fill,
)
from .sharding import common_seed, failed_ranks, write_shard
from .tiles import RegionFill
from .userdraws import Books, Draws
from .userfills import is_user_draw
from .watch import local

logger = logging.getLogger("weightinit")

#: full name of a tensor under the run's root
NameOf = Callable[[Tensor], str]


class Plain:
    """Writes as the ops say, drawing from torch's global generators."""

    seed: int | None = None

    def write(self, tensor: Tensor, op: Op, name_of: NameOf) -> None:
        """Write ``tensor`` by ``op``; ``name_of`` gives a tensor's full name (asked only by
        strategies that need it).

        A rule's elementwise fill of a large CPU tensor is drawn in pieces on several
        threads (:func:`~.seeding.fill_unseeded`); defaults replay as constructed.
        """
        if op.kind is OpKind.RULE and op.group is None and tensor.numel() >= UNSEEDED_MIN:
            elem = op.elementwise(tuple(tensor.shape))
            if elem is not None:
                fill_unseeded(elem, tensor)
                return
        op.write(tensor)

    def write_many(self, writes: list[tuple[Tensor, Op]], name_of: NameOf) -> None:
        """:meth:`write` each ``(tensor, op)`` in order, to the same values, with the
        elementwise fills of CPU tensors drawn together: their pieces are shared out
        between the threads at once (small tensors and single-block seeded tensors
        included), one hand-off for the lot. On other devices (GPU), a rule's unseeded
        elementwise fills, and every constant fill, are drawn a group at a time, a few
        kernels per kind of distribution (:mod:`.batched`): the same distributions, other
        numbers than one fill per tensor (constants: the same values). Other writes run
        in order, after the pieces and groups before them are drawn."""
        batch: list[RegionFill] = []
        gathered = batched.Batches()  # fills off the CPU (:meth:`batched_fill`)
        for tensor, op in writes:
            if is_user_draw(op):  # user code's draw, kept pending (its key drawn then)
                if not op.dist.random:  # (or its constant)
                    op.write(tensor)
                    continue
                batch.append(op.fill(tensor))
                if op.chain:  # then its elementwise ops, on the drawn values
                    draw_all(batch)
                    batch = []
                    op.finish(tensor)
                continue
            fill = self.piece_fill(tensor, op, name_of) if tensor.numel() else None
            if fill is not None:
                batch.append(fill)
                continue
            elem = self.batched_fill(tensor, op)
            if elem is not None:
                gathered.add(tensor, elem)
                continue
            if not fills_whole(tensor, op) or id(tensor) in gathered.ids:
                # it may read what the batches write (or write a tensor queued there)
                draw_all(batch)
                batch = []
                gathered.flush()
            self.write(tensor, op, name_of)
        draw_all(batch)
        gathered.flush()

    def batched_fill(self, tensor: Tensor, op: Op) -> Elementwise | None:
        """The distribution :meth:`write_many` draws ``tensor`` from together with others
        (:mod:`.batched`), for a non-empty :func:`~.batched.batch_target` (off the CPU):
        a rule's unseeded elementwise fill, or any constant fill (seeded or not, rule or
        default: its values are the same whoever writes them); ``None`` otherwise."""
        if (op.kind not in (OpKind.RULE, OpKind.DEFAULT) or op.group is not None
                or not tensor.numel() or not batched.batch_target(tensor)):
            return None
        if isinstance(op, DefaultFill) and self.seed is None:
            elem = op.eager_dist  # (dead ops still draw: the generator moves as eagerly)
        else:
            elem = op.elementwise(tuple(tensor.shape))
        if elem is None or (elem.random and (self.seed is not None or op.kind is not OpKind.RULE)):
            return None
        return elem

    def piece_fill(self, tensor: Tensor, op: Op, name_of: NameOf) -> RegionFill | None:
        """The pieces :meth:`write` would draw for ``tensor``, when it draws it in pieces
        on the CPU (the seed of unseeded pieces is drawn now, in write order)."""
        if op.kind is not OpKind.RULE or op.group is not None or \
                tensor.numel() < UNSEEDED_MIN or not parallel_target(tensor):
            return None
        elem = op.elementwise(tuple(tensor.shape))
        return unseeded_fill(elem, tensor) if elem is not None else None

    def agree(self, root: nn.Module, error: BaseException | None) -> None:
        """Sharded runs: every rank ends the run as the others (see :class:`Sharded`)."""

    def library(self) -> contextlib.AbstractContextManager[None]:
        """The run's own writes, made while user code runs (pending writes it forced)."""
        return contextlib.nullcontext()

    def user_section(self, call: UserCall, root: nn.Module, moves: Callable[[], int]
                     ) -> contextlib.AbstractContextManager[Books | None]:
        """What user code ``call`` runs inside (entered before the run's watch): nothing
        here; seeded runs seed it and draw its fills from the tiles. ``moves()`` changes
        when the run moves a model tensor to another storage."""
        return contextlib.nullcontext()

    def replay_defaults(self, writes: list[tuple[Tensor, DefaultFill]],
                        prologue: Prologue | None = None) -> set[int]:
        """Replay recorded constructor inits together, in eager construction's global order
        (so unseeded values equal eager ones under the same ``torch.manual_seed``), with a
        run's :class:`~.eager_order.Prologue` drawing its scratch constructions among them.

        Constant defaults off the CPU (norm weights, zero biases, ``torch.ones`` values)
        draw nothing from the generators: they are filled first, a few kernels for all
        (:mod:`.batched`), and the others replay in order.

        Returns the ids of the tensors written; the others are written one by one.
        """
        items = []
        constants = batched.Batches()
        for t, op in writes:
            if op.construction is None:
                continue
            constant = self.batched_fill(t, op)  # (a default's batched fill is a constant)
            if constant is not None:
                constants.add(t, constant)
            else:
                items.append((op.construction, t))
        written = {id(t) for _, t in items} | constants.ids
        constants.flush()
        mapping = writes[0][1].mapping if writes else {}
        if prologue is not None and prologue.scratch:
            extra, mapping = scratch_items(prologue)
            items += extra
        if items:
            replay_all(items, mapping)
        return written


class Seeded(Plain):
    """Every random write is a function of (seed, tensor name, writer's seed key)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        #: name -> whole fills user code drew of it so far in this run (see :mod:`.userdraws`)
        self.fills: dict[str, int] = {}
        self.draws = Draws()

    def write(self, tensor: Tensor, op: Op, name_of: NameOf) -> None:
        if not op.seed_key:  # a checkpoint copy draws nothing
            op.write(tensor)
            return
        seed = derive_seed(self.seed, name_of(tensor), op.seed_key)
        if isinstance(op, DefaultFill) and op.construction is not None:
            if op.construction.reads():
                op = dataclasses.replace(op, mapping=self._sources(op, name_of, tensor))
            draw_recorded(op.construction, tensor, seed, op.mapping, op.last_write)
            return
        elem = op.elementwise(tuple(tensor.shape)) if op.group is None else None
        if elem is not None:
            fill_elementwise(elem, tensor, seed)
        else:
            run_seeded(seed, [tensor.device], lambda: op.write(tensor))

    def _sources(self, op: DefaultFill, name_of: NameOf, tensor: Tensor) -> dict[int, Tensor]:
        """The mapping a default's recorded reads of other deferred tensors (``b.copy_(a)``)
        follow: to each such tensor's own seeded default, drawn into scratch (a rule may
        own the tensor itself, and it may not be written yet). A temporary the model does
        not hold (``Parameter(t * 3)``) is drawn under the reader's name."""
        mapping = dict(op.mapping)
        for i, owner in enumerate(op.construction.reads()):
            source, real = construction_of(owner), op.mapping.get(id(owner))
            if source is None or not source.defined:
                continue
            if real is None:
                scratch = torch.empty(source.shape, dtype=source.dtype, device=tensor.device)
                name = f"{name_of(tensor)}|temporary {i}"
            else:
                scratch, name = torch.empty_like(real), name_of(real)
            seed = derive_seed(self.seed, name, default_seed_key(source))
            draw_recorded(source, scratch, seed, op.mapping,
                          last_whole_write(source, tuple(scratch.shape)))
            mapping[id(owner)] = scratch
        return mapping

    def piece_fill(self, tensor: Tensor, op: Op, name_of: NameOf) -> RegionFill | None:
        if not op.seed_key or op.group is not None or not parallel_target(tensor):
            return None
        elem = op.elementwise(tuple(tensor.shape))
        if elem is None:
            return None
        return seeded_fill(elem, tensor, derive_seed(self.seed, name_of(tensor), op.seed_key))

    def replay_defaults(self, writes: list[tuple[Tensor, DefaultFill]],
                        prologue: Prologue | None = None) -> set[int]:
        return set()  # seeded: each tensor is drawn from its own generator

    def library(self) -> contextlib.AbstractContextManager[None]:
        return self.draws.library()

    @contextlib.contextmanager
    def user_section(self, call: UserCall, root: nn.Module, moves: Callable[[], int]
                     ) -> Iterator[Books]:
        # Whole-tensor normal_/uniform_ fills are drawn from the tiles under (seed, name,
        # n-th fill) (:mod:`.userdraws`); other draws come from torch's global generators,
        # seeded from the module's path and what runs, so values are order-free.
        devices = {local(p).device for p in call.module.parameters()}
        books = Books(self.seed, f"{call.path}|{call.seed_key}", root, self.fills, moves)
        books.section_seed = derive_seed(self.seed, call.path, call.seed_key)
        with seeded_section(books.section_seed, devices), self.draws.section(books):
            yield books


class Sharded(Seeded):
    """Seeded, and sharded tensors are written shard by shard."""

    _agreed = False

    def agree(self, root: nn.Module, error: BaseException | None) -> None:
        """The ranks of the model's mesh end the run together: each says whether it
        succeeded, and a rank whose run succeeded raises (and is rolled back) when another's
        failed — every rank's model is restored, none is left half-initialized."""
        if self._agreed:  # once per run (not again after this very check failed)
            return
        self._agreed = True
        try:
            failed = failed_ranks(root, error is None)
        except Exception:
            if error is None:
                raise
            logger.warning("could not tell the other ranks that this one failed", exc_info=True)
            return
        if error is None and failed:
            raise ShardingError(
                f"{class_name(root)}: initialization failed on rank(s) "
                f"{', '.join(map(str, failed))} of the model's device mesh, so this rank's "
                "run was rolled back too: every rank's model is as it was before the call. "
                "Fix: see the error those ranks raised.")

    def write(self, tensor: Tensor, op: Op, name_of: NameOf) -> None:
        if is_sharded(tensor):
            write_shard(tensor, op, self.seed, name_of(tensor))
        else:
            super().write(tensor, op, name_of)

    def piece_fill(self, tensor: Tensor, op: Op, name_of: NameOf) -> RegionFill | None:
        return None if is_sharded(tensor) else super().piece_fill(tensor, op, name_of)


def choose(root: nn.Module, seed: int | None, tensors: list[Tensor] | None = None) -> Plain:
    """The strategy of a run on ``root`` (``tensors``: its parameters and buffers, when
    known): sharded models are always written seeded."""
    if has_sharded(root, tensors):
        if seed is None:
            seed = common_seed()
            logger.info("%s is sharded and no seed was given: using seed %d (drawn on rank 0)",
                        type(root).__name__, seed)
        return Sharded(seed)
    return Seeded(seed) if seed is not None else Plain()


__all__ = ["Plain", "Seeded", "Sharded", "choose"]
