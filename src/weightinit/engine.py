"""Execute a plan: write each tensor once, run user code where it must run, record.

A :class:`Session` lives for one outermost ``init_weights()`` /
``initialize()`` call. Writes are held as *pending* (later writers replace
earlier ones without touching the tensor) and flushed only when user code is
about to run over those tensors, and at the end.

Bookkeeping is exact and cheap: built-in rules say what they wrote. For
user code (a user-defined ``init_weights`` or an initializer that only
defines ``__call__``) the engine compares, for the parameters of that
module's subtree only, the parameter object, its storage pointer and its
version counter before and after; values are read (a bit-pattern digest)
only to catch writes through ``.data``, which the version counter misses.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from . import materialize
from .checkpoint.loader import LoadReport
from .config import Rule, module_label, parse_init_cfg
from .errors import InitRecordError, InitRuntimeError, InitTypeError
from .plan import Call, Planner, Write, Writer, schedule
from .record import InitRecord, ParamRecord
from .seeding import (
    current_seed,
    derive_seed,
    fill_elementwise,
    run_seeded,
)
from .sharding import (
    ShardingError,
    check_layout,
    common_seed,
    has_sharded,
    is_sharded,
    mesh_device,
    refresh_fsdp,
    write_shard,
)

logger = logging.getLogger("weightinit")

_ACTIVE: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "weightinit_session", default=None)

_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_DIGEST_CHUNK = 1 << 22
_ODD = 0x9E3779B97F4A7C15 - (1 << 64)  # odd 64-bit constant: spreads the weights


def _digest(t: Tensor) -> tuple[int, int] | None:
    """Two wrapping integer sums over the bit patterns, one weighted by position.

    Any change of values, including a permutation, changes the digest except
    with negligible probability; reading it costs one pass over the tensor.
    """
    if t.device.type == "meta" or t.numel() == 0:
        return None
    int_dtype = _INT_OF_SIZE.get(t.element_size())
    if int_dtype is None:
        return None
    bits = t.detach().reshape(-1).view(int_dtype)
    s1 = s2 = 0
    for start in range(0, bits.numel(), _DIGEST_CHUNK):
        chunk = bits[start:start + _DIGEST_CHUNK].to(torch.int64)
        weights = torch.arange(start + 1, start + 1 + chunk.numel(), dtype=torch.int64,
                               device=chunk.device).mul_(_ODD)
        s1 += int(chunk.sum())
        s2 += int((chunk * weights).sum())
    return s1, s2


@dataclass
class _State:
    tensor: Tensor
    version: int
    ptr: int
    digest: tuple[int, int] | None

    @classmethod
    def of(cls, t: Tensor) -> _State:
        data = _local(t)
        return cls(t, t._version, data.data_ptr() if data.device.type != "meta" else 0,
                   _digest(data))

    def changed(self, t: Tensor) -> bool:
        if t is not self.tensor or t._version != self.version:
            return True
        data = _local(t)
        if data.device.type != "meta" and data.data_ptr() != self.ptr:
            return True
        return _digest(data) != self.digest


def _local(t: Tensor) -> Tensor:
    """The rank's own storage of a sharded tensor (reading it needs no communication)."""
    return t._local_tensor if is_sharded(t) else t


@dataclass(frozen=True)
class _Entry:
    kind: str
    info: str
    declared_in: str
    init: Any = None


class Session:
    """State of one outermost initialization: pending writes, what wrote what."""

    def __init__(self, root: nn.Module, seed: int | None = None) -> None:
        self.root = root
        self.seed = seed
        self._names: dict[int, str] | None = None
        self.cache: dict = {}
        self.entries: dict[int, tuple[Tensor, _Entry]] = {}
        self.snapshots: list[dict[int, _State]] = []
        self._members: set[int] | None = None
        self._replaced: list[Tensor] = []
        self.left_to_user: list[str] = []
        self.loads: list[LoadReport] = []

    def prepare(self, events: list[Write | Call], device: Any, dtype: Any) -> list[Write | Call]:
        """Materialize meta tensors (or move real ones) before executing ``events``.

        Checks first that every tensor will get a defined value, then
        allocates each once and returns the events re-pointed at the new
        tensors, with the PyTorch-default writes in front.
        """
        root = self.root
        if device is None and dtype is None and not materialize.needs_materialization(root):
            return events
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InitTypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        mapping: dict[int, Tensor] = {}
        slots = materialize.slots_of(root)
        defaults, undefined = materialize.default_events(root, mapping, slots)
        events = defaults + events
        self.left_to_user = materialize.check_defined(root, undefined, events, slots)
        sharded = [(name, t) for name, _, _, _, t in slots if is_sharded(t)]
        for name, t in sharded:
            check_layout(t, device, name)
        if device is None and sharded:
            device = mesh_device(sharded[0][1])  # unsharded buffers go where the shards go
        adopt = materialize.adoptable(events, device, dtype)
        try:
            self._replaced = materialize.allocate(root, mapping, device, dtype, slots, adopt)
        except (RuntimeError, TypeError) as err:
            raise InitRuntimeError(f"cannot allocate {type(root).__name__} on device={device!r} "
                                   f"dtype={dtype!r}: {err}") from err
        self._members = None
        self._names = None
        for m in root.modules():  # the events hold what is still needed
            m.__dict__.pop("_wi_constructions", None)
        if has_sharded(root):
            refresh_fsdp(root)
        return materialize.remap(events, mapping)

    def refuse_sharded_stages(self, events: list[Write | Call]) -> None:
        """Data-driven steps (LSUV) need the whole model: refuse them before any write."""
        for ev in events:
            if (isinstance(ev, Call) and getattr(ev.init, "whole_model", False)
                    and has_sharded(ev.module)):
                raise ShardingError(
                    f"{ev.info} ({ev.where or ev.path or type(ev.module).__name__}) runs forward "
                    f"passes over {type(ev.module).__name__}, whose parameters are sharded; it "
                    "cannot run shard by shard. Nothing was written. Fix: initialize with this "
                    "rule before sharding the model, or use a rule that is not data-driven.")

    def agree_on_seed(self) -> None:
        """Sharded models are always written seeded, with one seed on every rank."""
        if self.seed is None and has_sharded(self.root):
            self.seed = common_seed()
            logger.info("%s is sharded and no seed was given: using seed %d (drawn on rank 0)",
                        type(self.root).__name__, self.seed)

    def contains(self, module: nn.Module) -> bool:
        if self._members is None:
            self._members = {id(m) for m in self.root.modules()}
        return id(module) in self._members

    # -- execution -------------------------------------------------------------
    def execute(self, events: list[Write | Call]) -> None:
        for step in schedule(events):
            if isinstance(step, Call):
                self.run_call(step)
            else:
                self.flush(step)

    def flush(self, items: list[tuple[Tensor, Writer]]) -> None:
        if not items:
            return
        done_groups: set[int] = set()
        infos: dict[tuple[int, str], _Entry] = {}  # rule texts are built once per writer
        with torch.no_grad():
            for tensor, writer in items:
                group = getattr(writer, "group", None)
                if tensor.device.type != "meta" and (group is None or group not in done_groups):
                    self.write(tensor, writer)
                    if group is not None:
                        done_groups.add(group)
                key = (id(writer.init) if writer.init is not None else id(writer), writer.where)
                entry = infos.get(key) if writer.kind == "rule" else None
                if entry is None:
                    entry = _Entry(writer.kind, writer.info, writer.declared_in, writer.init)
                    if writer.kind == "rule":
                        infos[key] = entry
                self.entries[id(tensor)] = (tensor, entry)
                if self.snapshots:
                    self._refresh(tensor)

    def write(self, tensor: Tensor, writer: Writer) -> None:
        """One write: plain, seeded (blockwise for elementwise rules), or one rank's shard."""
        if self.seed is None or (getattr(writer, "source", None) is not None
                                 and not is_sharded(tensor)):
            writer.write(tensor)
            return
        # The rule's content, not where it was declared: defaults by their ops.
        text = writer.declared_in if writer.kind == "unchanged" else writer.info
        rule = f"{text}|{getattr(writer, 'role', 'default')}"
        name = self.name_of(tensor)
        if is_sharded(tensor):
            write_shard(tensor, writer, self.seed, name, rule)
            return
        seed = derive_seed(self.seed, name, rule)
        dist = writer.elementwise(tuple(tensor.shape)) if writer.group is None else None
        if dist is not None:
            fill_elementwise(dist, tensor, seed)
        else:
            run_seeded(seed, [tensor.device], lambda: writer.write(tensor))

    def name_of(self, tensor: Tensor) -> str:
        """Full name of a parameter or buffer under the session's root."""
        if self._names is None:
            self._names = {}
            for name, t in list(self.root.named_buffers()) + list(self.root.named_parameters()):
                self._names[id(t)] = name
        return self._names.get(id(tensor), f"<tensor {tuple(tensor.shape)}>")

    def _refresh(self, tensor: Tensor) -> None:
        state = None
        for snap in self.snapshots:
            if id(tensor) in snap:
                state = state or _State.of(tensor)
                snap[id(tensor)] = state

    def check_user_defined(self) -> None:
        """Tensors without a default that user code was trusted to write must have been."""
        if not self.left_to_user:
            return
        tensors = dict(self.root.named_parameters())
        tensors.update(self.root.named_buffers())
        missed = [n for n in self.left_to_user if id(tensors.get(n)) not in self.entries]
        if missed:
            raise materialize.UndefinedParameterError(
                f"{type(self.root).__name__}: {', '.join(missed)} have no defined value: they "
                "have no default, no rule covers them, and the user-defined init_weights over "
                "them did not write them. Fix: write them in that init_weights or add a rule.")

    def run_call(self, call: Call) -> None:
        module = call.module
        if call.init is None and getattr(module, "is_init", False):
            return
        snap = {id(p): _State.of(p) for p in module.parameters()}

        def invoke() -> None:
            if call.init is None:
                module.init_weights()
            else:
                if hasattr(call.init, "wholemodule"):
                    call.init.wholemodule = call.whole
                call.init(module)

        self.snapshots.append(snap)
        try:
            if self.seed is None:
                invoke()
            else:
                # User code draws from torch's global generators: seed them from the
                # module's path and what runs, so its values are order-free (and the
                # same on every rank of a sharded model).
                what = "init_weights" if call.init is None else call.info
                run_seeded(derive_seed(self.seed, call.path, f"user|{what}"),
                           {_local(p).device for p in module.parameters()}, invoke)
        finally:
            self.snapshots.pop()
        kind = "user" if call.init is None else getattr(call.init, "record_kind", "initializer")
        entry = _Entry(kind, call.info, call.where or call.info,
                       getattr(call.init, "rule", call.init))
        self.mark_changed(module, snap, entry)

    def mark_changed(self, module: nn.Module, snap: dict[int, _State] | None,
                     entry: _Entry) -> None:
        """Give ``entry`` to the parameters of ``module`` user code changed since ``snap``.

        With ``snap=None`` each parameter is compared with the innermost
        running call's snapshot (``update_init_info``); parameters no call
        tracks are left alone.
        """
        for p in module.parameters():
            if snap is not None:
                state = snap.get(id(p))
            else:
                state = next((s[id(p)] for s in reversed(self.snapshots) if id(p) in s), None)
                if state is None:
                    continue
            if state is None or state.changed(p):
                self.entries[id(p)] = (p, entry)
                self._refresh(p)

    # -- the record ----------------------------------------------------------------
    def record(self) -> InitRecord:
        root_name = type(self.root).__name__
        untouched = _Entry("unchanged", f"not changed by init_weights of {root_name}",
                           "PyTorch default (kept its value from construction)")
        params = {}
        for name, p in self.root.named_parameters():
            _, e = self.entries.get(id(p), (None, untouched))
            params[name] = ParamRecord(
                name=name, shape=tuple(p.shape), dtype=str(p.dtype).replace("torch.", ""),
                device=str(p.device), kind=e.kind, info=e.info, declared_in=e.declared_in,
                rule=e.init)
        return InitRecord(root_name, params, tuple(self.loads))


def _enter(module: nn.Module, seed: int | None = None) -> tuple[Session, bool]:
    session = _ACTIVE.get()
    if session is not None and session.contains(module):
        if seed is not None:
            raise InitTypeError(f"{type(module).__name__}: seed can only be given to the "
                                "outermost init_weights()/initialize() call")
        return session, False
    return Session(module, current_seed(seed)), True


def _finish(session: Session, module: nn.Module) -> InitRecord:
    record = session.record()
    record.log(logger)
    object.__setattr__(module, "_weightinit_record", record)
    return record


def run_init_weights(module: nn.Module, device: Any = None, dtype: Any = None,
                     seed: int | None = None) -> None:
    """``BaseModule.init_weights``: plan the subtree, validate it all, then execute."""
    session, outermost = _enter(module, seed)
    if not outermost and (device is not None or dtype is not None):
        raise InitTypeError(f"{type(module).__name__}.init_weights: device/dtype can only be "
                            "given to the outermost init_weights() call")
    token = _ACTIVE.set(session)
    try:
        if module.is_init:
            logger.warning("init_weights of %s has been called more than once.",
                           type(module).__name__)
        else:
            planner = Planner(session.root, session.cache)
            planner.plan_init_weights(module)
            events = planner.events
            if outermost:
                planner.validate_tree(module)
                session.refuse_sharded_stages(events)
                events = session.prepare(events, device, dtype)
                session.agree_on_seed()
            if module.init_cfg:
                logger.debug("initialize %s with init_cfg %s", type(module).__name__,
                             module.init_cfg)
            session.execute(events)
            session.loads.extend(planner.loads)
            for m in planner.visited:
                m._is_init = True
            if outermost:
                session.check_user_defined()
        if outermost:
            _finish(session, module)
    finally:
        _ACTIVE.reset(token)


def _run_rules(module: nn.Module, rules: tuple[Rule, ...], device: Any = None,
               dtype: Any = None, loads: list[LoadReport] | None = None,
               seed: int | None = None) -> InitRecord | None:
    session, outermost = _enter(module, seed)
    if not outermost and (device is not None or dtype is not None):
        raise InitTypeError("initialize: device/dtype can only be given outside init_weights")
    token = _ACTIVE.set(session)
    try:
        planner = Planner(session.root, session.cache)
        planner.plan_rules(module, rules)
        events = planner.events
        if outermost:
            session.refuse_sharded_stages(events)
            events = session.prepare(events, device, dtype)
            session.agree_on_seed()
        session.execute(events)
        session.loads.extend(planner.loads)
        if loads is not None:
            loads.extend(planner.loads)
        return _finish(session, module) if outermost else None
    finally:
        _ACTIVE.reset(token)


def initialize(module: nn.Module, init_cfg: dict | list[dict], *, device: Any = None,
               dtype: Any = None, seed: int | None = None) -> InitRecord | None:
    """Apply ``init_cfg`` rules to any ``nn.Module`` (timm, torchvision, Hugging Face ...).

    Rules apply in list order, each rule's overrides right after its own
    layer pass; the last writer wins and each tensor is written once. The
    whole config is validated before anything is written.

    A model built under :func:`weightinit.deferred` (or on ``meta``) is
    materialized on ``device`` (default CPU) in ``dtype`` (default: as
    declared), each tensor written once. With ``seed`` (or inside
    :func:`weightinit.seeded`) each tensor's values depend only on the seed,
    its name and its rule.

    Returns the init record (``None`` when called from inside another
    module's ``init_weights``, whose record it joins).

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(8, 2))
        >>> record = initialize(net, [dict(type='Kaiming', layer='Conv2d'),
        ...                           dict(type='Constant', layer='Linear', val=0)])
    """
    if not isinstance(module, nn.Module):
        raise InitTypeError(f"initialize: module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(init_cfg, (dict, list, tuple)):
        raise InitTypeError(f"init_cfg must be a dict or a list of dict, but got "
                            f"{type(init_cfg).__name__}. Fix: wrap the rule in dict(type=...).")
    session = _ACTIVE.get()
    path = ""
    if session is not None and session.contains(module):
        path = next((n for n, m in session.root.named_modules() if m is module), "")
    return _run_rules(module, parse_init_cfg(init_cfg, path, type(module).__name__), device, dtype,
                      seed=seed)


def apply_initializer(module: nn.Module, init: Any) -> InitRecord | None:
    """Calling a rule object on a module: plan and apply that one rule."""
    if not isinstance(module, nn.Module):
        raise InitTypeError(f"{type(init).__name__} must be called on an nn.Module, got "
                            f"{type(module).__name__}")
    rule = Rule(init=init, cfg={}, location=f"{type(init).__name__}(...)", owner="",
                owner_class=type(module).__name__)
    return _run_rules(module, (rule,))


def load_checkpoint(model: nn.Module, source: str, *, prefix: str | None = None,
                    map_location: Any = "cpu", strict: bool = False, mismatch: str = "skip",
                    revise_keys: Any = None, allow_pickle: bool = False,
                    sha256: str | None = None, device: Any = None,
                    dtype: Any = None, seed: int | None = None) -> LoadReport:
    """Load a checkpoint into ``model`` (any ``nn.Module``) and report what happened.

    ``source`` is a path, ``file://``, ``http(s)://`` (downloaded once into
    the cache), ``torchvision://NAME`` or a registered scheme;
    ``.safetensors`` is read lazily, ``.pth`` with ``weights_only=True``
    unless ``allow_pickle``. Keys: nested ``state_dict``/``model``/``module``
    unwrapped, ``revise_keys`` regexes applied (default: strip ``module.``),
    then ``prefix`` selected. Shape mismatches are skipped and reported
    (``mismatch='error'`` raises); ``strict`` makes missing or unexpected
    keys an error. Every check runs before any write. A model built under
    :func:`weightinit.deferred` is materialized on ``device``/``dtype``, and
    tensors that come only from the checkpoint use the loaded storage as is;
    the others get their PyTorch default (seeded by ``seed``, see
    :func:`weightinit.seeded`). A sharded model reads only each rank's slice.

    Example::

        >>> report = load_checkpoint(model, "weights.safetensors", prefix="backbone")
        >>> report.missing, report.unexpected, report.mismatched
    """
    from .rules import PretrainedInit

    init = PretrainedInit(source, prefix=prefix, map_location=map_location,
                          allow_pickle=allow_pickle, revise_keys=revise_keys, strict=strict,
                          mismatch=mismatch, sha256=sha256)
    rule = Rule(init=init, cfg={}, location="load_checkpoint", owner="",
                owner_class=type(model).__name__)
    loads: list[LoadReport] = []
    _run_rules(model, (rule,), device, dtype, loads, seed)
    return loads[-1]


def update_init_info(module: nn.Module, init_info: str) -> None:
    """Inside a user-defined ``init_weights``: label the parameters of ``module`` it changed.

    Parameters of ``module`` whose value changed since the engine last saw
    them get ``init_info`` as their record text; others keep theirs.

    Example::

        >>> def init_weights(self):
        ...     nn.init.zeros_(self.gate.weight)
        ...     update_init_info(self, 'zero gate')
    """
    session = _ACTIVE.get()
    if session is None or not session.contains(module):
        raise InitRecordError(f"Can not find an active init_weights for {type(module).__name__}: "
                              "update_init_info only works while init_weights runs. Fix: call "
                              "it from inside your module's init_weights.")
    if not isinstance(init_info, str):
        raise InitTypeError(f"init_info must be a str, got {type(init_info).__name__}")
    session.mark_changed(module, None,
                         _Entry("user", init_info, f"update_init_info in {type(module).__name__}"))


def get_init_record(module: nn.Module) -> InitRecord | None:
    """The record of the last outermost ``init_weights()``/``initialize()`` on ``module``."""
    return getattr(module, "_weightinit_record", None)


__all__ = ["initialize", "load_checkpoint", "update_init_info", "get_init_record",
           "module_label"]
