"""Execute plans: write each tensor once, run user code where it must run, record, commit.

A :class:`Session` lives for one outermost ``init_weights()`` / ``initialize()`` /
``load_checkpoint()`` call; user code inside it that calls ``init_weights()`` again plans
and executes its subtree in the same session. The session owns the run's strategy (plain,
seeded or sharded, chosen once) and its transaction: :meth:`Session.run` either commits
everything — values, ``is_init`` flags, the record — or, on any failure, rolls everything
back and re-raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..checkpoint.loader import LoadReport
from ..planning import CheckpointRead, DefaultFill, OpKind, Plan, PlanningCache, UserCall, Write
from ..planning.checkpoint_checks import report_nonfinite
from ..planning.flat import named_subtree
from ..planning.layout import is_sharded
from ..planning.ops import fills_whole, whole_on_every_rank
from ..record import InitRecord
from . import eager_order
from .checks import check_unwatched, check_user_defined
from .eager_order import Prologue
from .entries import Entry, build_record
from .inplace import check_reads, interrupts_held, split_last
from .materialize import materialize, remap
from .nninit import patches_held
from .pending import Pending, stop_at
from .statedicts import user_loads
from .strategies import Plain, Sharded, choose
from .threads import watching_threads
from .transaction import Transaction
from .userdraws import thread_section, thread_section_of
from .userfills import is_user_draw
from .watch import TensorState, other_modules, replaced, slot_state, tensors_of
from .writewatch import WriteWatch

logger = logging.getLogger("weightinit")

_ACTIVE: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "weightinit_session", default=None)


#: record kinds of the run's own writes (not user code's, not left as constructed)
_RUN_WRITES = (OpKind.RULE, OpKind.CHECKPOINT)


class Session:
    """State of one outermost initialization: strategy, transaction, what wrote what."""

    def __init__(self, root: nn.Module, seed: int | None) -> None:
        self.root = root
        self.seed = seed
        self.cache = PlanningCache(root)
        self.strategy: Plain = Plain()
        self.txn = Transaction(keep_values=False)
        self.entries: dict[int, tuple[Tensor, Entry]] = {}
        #: planned writes not done yet (user code may make them unnecessary; undo: self.txn)
        self.pending = Pending(root, self.flush, self._observed,
                               lambda t: self.txn.before_write(t),
                               lambda t, source: self.txn.before_overwrite(t, source))
        self.pending.tensors = lambda: self.cache.flat().tensors
        self.watch = WriteWatch(self.pending)
        #: running user calls, innermost last: (its record entry, ids of tensors it wrote)
        self.calls: list[tuple[Entry, set[int]]] = []
        #: tensors written while user code ran, by it (seen by a watch) or by the run itself
        self.seen_writes: set[int] = set()
        #: call text -> (the running call's entry, its entry under that text), made once
        self._named: dict[str, tuple[Entry, Entry]] = {}
        #: sharded runs: values seen before each running user call (writes are compared)
        self.snapshots: list[dict[int, TensorState]] = []
        self.loads: list[LoadReport] = []
        self._undefined: tuple[str, ...] = ()
        self._load_policies: dict[int, tuple[LoadReport, bool]] = {}
        #: arguments of the outermost overriding init_weights call, for when the run calls it
        self.call_args: dict[int, tuple[tuple, dict]] = {}

    @staticmethod
    def current() -> Session | None:
        return _ACTIVE.get()

    def contains(self, module: nn.Module) -> bool:
        return self.cache.flat().contains(module)

    def name_of(self, tensor: Tensor) -> str:
        """Full name of a parameter or buffer under the session's root."""
        name = self.cache.flat().name_of(tensor)
        return name if name is not None else f"<tensor {tuple(tensor.shape)}>"

    # -- the outermost run: plan -> begin -> execute -> commit, or roll back ---------------------
    @contextlib.contextmanager
    def active(self) -> Iterator[Session]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def run(self, plan: Plan) -> InitRecord:
        """Execute the outermost plan; commit and return the record, or roll back and raise."""
        keep = plan.has_user_code or plan.reads_checkpoints
        self.txn = Transaction(keep_values=keep)
        p, txn = self.pending, self.txn  # (bound methods, not a lambda per op)
        p.adopted = txn.adopted  # storages copy_ sources give (see there)
        p.release_source, p.before_write = txn.release_source, txn.before_write
        p.before_overwrite, p.overwrite_done, p.overwrite_failed = (
            txn.before_overwrite, txn.overwrite_done, txn.overwrite_failed)
        with interrupts_held() as held, patches_held(plan.has_user_code):
            self._run(plan, held)
            return self.commit(plan)

    def _run(self, plan: Plan, held: Any) -> None:
        try:
            self.strategy = choose(self.root, self.seed, self.cache.flat().tensors)
            self.watch.pieces = self.strategy.seed is None
            steps = plan.steps
            if plan.materialize:
                steps = remap(steps, materialize(plan, self.txn))
                self.cache.restructured()
                self.pending.reindex()
                if self.strategy.seed is None:  # constructor inits first, as eager draws them
                    prologue = eager_order.split(plan, steps)
                    steps = prologue.steps
                    if prologue.writes or prologue.scratch:
                        self.flush(prologue.writes, prologue)
            self._undefined = tuple(n for n, _ in plan.undefined)
            self.execute(steps, plan)
            kept, last = split_last(self.pending.take())  # (see .inplace)
            self.flush(kept)
            last = check_reads(last)
            check_user_defined(self.root, self._undefined, self.entries,
                               {id(w.tensor) for w in last})
            report_nonfinite(list(self._load_policies.values()), self.cache.strict)
            self.strategy.agree(self.root, None)  # a sharded model's ranks end together
            held.hold()  # Ctrl-C waits for the commit from here
            self.flush(last, keep=False)
        except BaseException as err:
            self.txn.rollback()
            self.strategy.agree(self.root, err)
            raise

    def commit(self, plan: Plan) -> InitRecord:
        self.txn.release_sources()  # copy_ sources still alive stop sharing their storage
        for m in plan.visited:
            m._is_init = True
        for m in self.cache.flat().modules:  # computed values must not outlive the run
            m.__dict__.pop("_wi_constructions", None)
        blocks = {}
        for ev in plan.events:  # replayed or superseded: no later run draws them as orphans
            if isinstance(ev, Write) and isinstance(ev.op, DefaultFill):
                for c in [ev.op.construction, *ev.op.orphans]:
                    if c is not None:
                        c.materialized = True
                        if c.block is not None:
                            blocks[id(c.block)] = c.block
        for block in blocks.values():  # and their recorded values are not kept alive
            block[:] = [c for c in block if not c.materialized and (c.defined or c.alive)]
        self.txn.release()
        (record := self.record()).log(logger)
        object.__setattr__(self.root, "_weightinit_record", record)
        return record

    def run_nested(self, plan: Plan) -> None:
        """A plan made while user code runs (its ``super().init_weights()``): its writes join
        the pending ones, its user calls run now."""
        self.execute(plan.steps, plan)
        for m in plan.visited:
            self.txn.set_flag(m, True)

    @property
    def lazy(self) -> bool:
        """Writes wait and user code is watched op by op (sharded runs: written before it)."""
        return not isinstance(self.strategy, Sharded)

    # -- execution ------------------------------------------------------------------------------
    def execute(self, steps: list[Any], plan: Plan) -> None:
        self.loads.extend(plan.loads)
        for ev in plan.events:  # each load's report, with its rule's strict
            if isinstance(ev, Write) and isinstance(ev.op, CheckpointRead) and ev.op.report:
                self._load_policies[id(ev.op.report)] = (ev.op.report, ev.op.rule.strict)
        for step in steps:
            if isinstance(step, UserCall):
                self.run_call(step)
            elif self.lazy:
                self.pending.add(step)
            else:
                self.flush(step)

    def flush(self, writes: tuple[Write, ...], prologue: Prologue | None = None,
              keep: bool = True) -> None:
        """Do ``writes`` (and a materialized model's ``prologue``), keeping what undoes them
        (without ``keep``: the run's last fills, written in place, see :mod:`.inplace`)."""
        done_groups: set[int] = set()
        infos: dict[tuple, Entry] = {}  # record texts are built once per rule and place
        if self.calls:  # the run's own writes while user code runs (see checks.check_unwatched)
            for w in writes:
                self.seen_writes.add(id(w.tensor))
                if w.op.group is not None:  # one call writes the module's tensors
                    self.seen_writes.update(id(t) for t in tensors_of(w.op.module, False))
        txn, strategy = self.txn, self.strategy
        defaults = [(w.tensor, w.op) for w in writes if isinstance(w.op, DefaultFill)
                    and w.tensor.device.type != "meta"]
        if keep:
            for tensor, _ in defaults:
                txn.before_write(tensor)
        elif txn.adopted:  # a storage a copy_ source gave: the source takes its own copy first
            for w in writes:
                txn.release_source(w.tensor.untyped_storage().data_ptr())
        replayed = (strategy.replay_defaults(defaults, prologue) if defaults or prologue
                    else set())
        todo: list[tuple[Tensor, Any]] = []  # written together: fills share the threads
        with torch.no_grad(), strategy.library():  # (not user code, to its draws)
            for w in writes:
                tensor, op = w.tensor, w.op
                group = op.group
                if id(tensor) in replayed:
                    pass
                elif tensor.device.type != "meta" and (group is None
                                                       or group not in done_groups):
                    if group is not None:
                        done_groups.add(group)
                        for t in list(op.module._parameters.values()) + list(
                                op.module._buffers.values()):
                            if t is not None:
                                txn.before_write(t)
                    elif keep:
                        self._keep(tensor, op)
                    todo.append((tensor, op))
                if is_user_draw(op):
                    continue  # (its entry is the op's, made when user code ran it)
                key = (id(op.rule), op.where) if op.kind is OpKind.RULE else None
                entry = infos.get(key) if key is not None else None
                if entry is None:
                    entry = Entry(op.kind, op.info, op.declared_in, op.rule)
                    if key is not None:
                        infos[key] = entry
                if is_sharded(tensor) and whole_on_every_rank(op, tuple(tensor.shape)):
                    entry = replace(entry, info=f"{entry.info} (each rank draws it whole)")
                self.entries[id(tensor)] = (tensor, entry)
            if todo:
                strategy.write_many(todo, self.name_of)
        if self.snapshots:
            for w in writes:
                self._refresh(w.tensor)

    def _keep(self, tensor: Tensor, op: Any) -> None:
        """Keep what undoes the write of ``tensor``: for a write that replaces it whole and
        reads nothing (a fill, a checkpoint read) its storage is set aside and a fresh one
        given (no copy); otherwise its values are copied."""
        if (isinstance(op, CheckpointRead) or fills_whole(tensor, op)) and not is_sharded(tensor):
            old = tensor.untyped_storage().data_ptr()
            if self.txn.before_overwrite(tensor) is not None:
                self.pending.moved_by_run(tensor, old)
            return
        self.txn.before_write(tensor)

    def _refresh(self, tensor: Tensor) -> None:
        state = None
        for snap in self.snapshots:
            if id(tensor) in snap:
                state = state or TensorState.of(tensor)
                snap[id(tensor)] = state

    @stop_at
    def run_call(self, call: UserCall) -> None:
        module = call.module
        if call.init is None and module is not self.root and not call.again \
                and getattr(module, "is_init", False):
            return  # (the root's own override is what was called: it runs, as in MMEngine)
        named = self.cache.flat().named_subtree(module)  # (one walk for what follows)
        modules = [m for _, m in named]
        entry = Entry(call.record_kind, call.info, call.declared_in,
                      call.rule if call.rule is not None else call.init)
        if not self.lazy:
            self.txn.before_user_code(modules)
            self.run_call_compared(call, entry, named)
            return
        # one call writes these several tensors: not cancellable one by one, done first
        self.flush(self.pending.take(lambda w: w.op.group is not None))
        before = self.txn.before_user_code(modules, watched=True)  # (and the slots' state)
        written: set[int] = set()
        self.calls.append((entry, written))
        try:
            with self.strategy.user_section(call, self.root, self.pending.count_moves) as books, \
                    self.watch.state(True), \
                    user_loads(self.txn.trust_loaded, self.watch), \
                    watching_threads(partial(thread_section, books, self.watch)):
                call.run()
        finally:
            self.calls.pop()
        if books is not None:
            books.annotate(self.entries)
        check_unwatched(call, before, self.seen_writes, self.name_of)
        raw, self.pending.raw = self.pending.raw, {}
        for state in raw.values():  # handed out as raw memory: written if its bits changed
            if id(state.tensor) not in written and state.changed(state.tensor):
                self.entries[id(state.tensor)] = (state.tensor, entry)
        changed = self._replaced_slots(module, named, before)
        if changed:  # replaced slots or `.data =`: written whole, without an op to see
            self.pending.reindex()
            for old, new in changed:
                for t in (old, new):
                    if t is not None:
                        self.pending.writes.pop(id(t), None)
                self.entries[id(new)] = (new, entry)

    def _replaced_slots(self, module: nn.Module, named: list[tuple[str, nn.Module]],
                        before: dict) -> list[tuple[Tensor | None, Tensor]]:
        """(old, new) for the slots of ``module``'s subtree (``named`` before the call) user
        code replaced; the tree's walk is dropped if the call changed the tree."""
        after = named_subtree(module, named[0][0])
        changed, removed = replaced([m for _, m in after], before, self.pending.moved)
        if changed or removed or other_modules(after, named):
            self.cache.restructured()
        return changed

    def written_by_run(self, tensor: Tensor) -> bool:
        """A rule or checkpoint read of the run wrote ``tensor`` so far (its pending write,
        logically done already, is done now: what the libraries' initializers had written)."""
        pending = self.pending.writes.get(id(tensor))
        if pending is not None:
            if pending.op.kind not in _RUN_WRITES:
                return False
            self.pending.force(tensor)
            return True
        entry = self.entries.get(id(tensor))
        return entry is not None and entry[1].kind in _RUN_WRITES

    def _observed(self, tensor: Tensor, text: str | None) -> None:
        """User code wrote ``tensor`` (``text``: the call that did, when found)."""
        entry, written = self.calls[-1]
        self.seen_writes.add(id(tensor))
        if text is not None:
            hit = self._named.get(text)
            if hit is None or hit[0] is not entry:
                hit = self._named[text] = (entry, Entry(entry.kind, text, entry.declared_in,
                                                        entry.rule))
            entry = hit[1]
        self.entries[id(tensor)] = (tensor, entry)
        written.add(id(tensor))

    def run_call_compared(self, call: UserCall, entry: Entry,
                          named: list[tuple[str, nn.Module]]) -> None:
        """Sharded runs: pending writes are done first, then tensors compared after the call."""
        self.flush(self.pending.take())
        module = call.module
        snap = {id(t): TensorState.of(t) for t in (*module.parameters(), *module.buffers())}
        self.snapshots.append(snap)
        before = slot_state([m for _, m in named])
        try:
            with self.strategy.user_section(call, self.root, self.pending.count_moves) as books, \
                    watching_threads(thread_section_of(books)):
                call.run()
        finally:
            self.snapshots.pop()
        self.mark_changed(module, snap, entry)
        for _, new in self._replaced_slots(module, named, before):  # slots given new tensors
            self.entries[id(new)] = (new, entry)
        if books is not None:
            books.annotate(self.entries, entry)

    def mark_changed(self, module: nn.Module, snap: dict[int, TensorState] | None,
                     entry: Entry) -> None:
        """Give ``entry`` to the parameters of ``module`` user code changed.

        With ``snap=None`` (``update_init_info``): the parameters the innermost running call
        wrote so far; parameters no call tracks are left alone.
        """
        if snap is None and self.calls:
            written = self.calls[-1][1]
            for p in module.parameters():
                if id(p) in written:
                    self.entries[id(p)] = (p, entry)
            return
        for p in (*module.parameters(), *module.buffers()):
            if snap is not None:
                state = snap.get(id(p))
            else:
                state = next((s[id(p)] for s in reversed(self.snapshots) if id(p) in s), None)
                if state is None:
                    continue
            if state is None or state.changed(p):
                self.entries[id(p)] = (p, entry)
                self._refresh(p)

    # -- the record ------------------------------------------------------------------------------
    def record(self) -> InitRecord:
        return build_record(self.root, self.entries, self.loads,
                            self.cache.flat().named_parameters)
