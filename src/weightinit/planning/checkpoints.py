"""Match a checkpoint's keys to a module's tensors, before anything is read or written.

Planning opens the checkpoint (for ``.safetensors`` only its header), checks
every entry that would be loaded (a tensor, dense, readable, of the model's
shape and dtype kind, with finite values: :mod:`.checkpoint_checks`) and
applies the ``strict``/``mismatch`` policies; each entry is read once.

Dry runs plan :func:`without_downloads`: a checkpoint that would have to be
downloaded is planned from its copy in the cache, or else as *pending*
(:class:`PendingCheckpoint`): assumed to hold every tensor of the module it
loads into, its keys unchecked, and its load report says so with the size a
HEAD request reported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..checkpoint.loader import CheckpointState, LoadReport, load_pretrained_state
from ..checkpoint.sources import PROBE_TIMEOUT, Probe, probe
from ..errors import (
    CheckpointError,
    CheckpointKeysWarning,
    CheckpointMismatchError,
    warn,
)
from ..rules import PretrainedInit
from .checkpoint_checks import kinds_mismatch, no_match_error, short
from .ops import CheckpointRead
from .plan import Write


def state_tensors(module: nn.Module) -> dict[str, Tensor]:
    """What ``load_state_dict`` can write: parameters and persistent buffers, all aliases."""
    out: dict[str, Tensor] = {}
    for prefix, m in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, p in m._parameters.items():
            if p is not None:
                out[dot + name] = p
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent_buffers_set:
                out[dot + name] = b
    return out


#: the HEAD timeout while planning must not download (None: downloads allowed)
_NO_DOWNLOADS: ContextVar[float | None] = ContextVar("weightinit_no_downloads", default=None)


@contextmanager
def without_downloads(timeout: float | None = None) -> Iterator[None]:
    """Within the block, planning downloads no checkpoint (dry runs: ``weightinit plan``).

    A ``Pretrained`` URL (or ``torchvision://`` name) is planned from its copy
    in the cache when there is one; otherwise it is pending
    (:class:`PendingCheckpoint`), with the size a HEAD request reports within
    ``timeout`` seconds (default :data:`~weightinit.checkpoint.sources.PROBE_TIMEOUT`).
    Local files are read as always (a ``.safetensors`` file: its header only).
    """
    token = _NO_DOWNLOADS.set(PROBE_TIMEOUT if timeout is None else float(timeout))
    try:
        yield
    finally:
        _NO_DOWNLOADS.reset(token)


class PendingCheckpoint(CheckpointState):
    """A checkpoint a dry run did not download: assumed to hold every tensor of the module it
    loads into, with that tensor's shape and dtype. It has no values to read."""

    def __init__(self, found: Probe, tensors: dict[str, Tensor] | None = None) -> None:
        super().__init__(found.source)
        self.probe = found
        self._dense = dict(tensors or {})

    def covering(self, tensors: dict[str, Tensor]) -> PendingCheckpoint:
        """The same checkpoint, assumed to hold exactly ``tensors``."""
        return PendingCheckpoint(self.probe, tensors)

    def check_entry(self, key: str, dtype: torch.dtype, where: str = "") -> None:
        return None  # nothing to check before it is downloaded: the run checks every entry

    def get(self, key: str) -> Tensor:
        raise CheckpointError(
            f"{self.source}: entry {key!r} has no value: the checkpoint was planned without "
            f"downloading it ({self.probe.describe()}). Fix: initialize the model (weightinit "
            "init, initialize(), init_weights()) to download and load it.")

    def get_slice(self, key: str, index: tuple[slice, ...]) -> Tensor:
        return self.get(key)


@dataclass
class PendingLoad(LoadReport):
    """The load report of a :class:`PendingCheckpoint`: what is known before the download."""

    probe: Probe | None = None
    label: str = ""

    def __str__(self) -> str:
        what = self.probe.describe() if self.probe is not None else "download pending"
        return (f"{self.source}: {what}; its keys are not checked: assumed to load all "
                f"{len(self.loaded)} tensors of {self.label}")


def open_checkpoint(init: PretrainedInit, where: str,
                    opened: dict[tuple, CheckpointState]) -> CheckpointState:
    """The checkpoint's ``key -> tensor`` view, opened once per run for equal selections."""
    key = (init.checkpoint, init.prefix, str(init.map_location), init.allow_pickle,
           init.revise_keys, init.sha256)
    state = opened.get(key)
    if state is None:
        state = opened[key] = _open(init, where)
    return state


def _open(init: PretrainedInit, where: str) -> CheckpointState:
    timeout = _NO_DOWNLOADS.get()
    if timeout is None:
        return load_pretrained_state(init, where)
    found = probe(init.checkpoint, timeout)
    if found.pending:
        return PendingCheckpoint(found)
    if found.url is None:  # a local file
        return load_pretrained_state(init, where)
    # The cached copy of a URL, read as it is: the run checks its hash (sha256=) and
    # downloads it again if it differs, which a dry run must not do.
    cached: Any = copy.copy(init)
    cached.checkpoint, cached.sha256 = found.path, None
    return load_pretrained_state(cached, where)


def match_checkpoint(target: nn.Module, init: PretrainedInit, where: str,
                     opened: dict[tuple, CheckpointState], label: str,
                     dtype_of: Callable[[Tensor], torch.dtype]) -> tuple[list[Write], LoadReport]:
    """The writes of ``init`` into ``target``'s tensors, and the load report.

    Raises :class:`CheckpointMismatchError` when no key matches, and under
    ``strict`` or ``mismatch='error'``; a bad entry raises a ``CheckpointError``
    naming its key.
    """
    state = open_checkpoint(init, where, opened)
    slots = state_tensors(target)
    if isinstance(state, PendingCheckpoint):
        return _pending_writes(init, state.covering(slots), slots, where, label)
    report = LoadReport(init.checkpoint)
    writes = []
    for k in state.keys():
        slot = slots.get(k)
        if slot is None or not state.is_tensor(k):
            report.unexpected.append(k)
        elif tuple(slot.shape) != state.shape(k):
            report.mismatched.append((k, state.shape(k), tuple(slot.shape)))
        else:
            state.check_entry(k, dtype_of(slot), where)  # dense, readable, copyable
            if kinds_mismatch(state.dtype(k, where), dtype_of(slot)):
                report.dtype_mismatched.append((k, state.dtype(k, where), dtype_of(slot)))
                continue
            report.loaded.append(k)
            writes.append(Write(slot, CheckpointRead(init, state, k, where, report)))
    report.missing = [k for k in slots if k not in state and "num_batches_tracked" not in k]
    fix = ("Fix: set prefix= or revise_keys= so the checkpoint's keys match the model's, "
           "or check that this is the right checkpoint.")
    if not report.loaded:
        raise no_match_error(where, init.checkpoint, label, state, slots, dtype_of)
    if init.mismatch == "error" and report.mismatched:
        raise CheckpointMismatchError(f"{where}: shape mismatch loading {init.checkpoint} "
                                      f"into {label}: {report}. Fix: use mismatch='skip' to "
                                      "leave those tensors to the other rules.")
    if init.mismatch == "error" and report.dtype_mismatched:
        kinds = ", ".join(f"{k!r} (checkpoint {short(s)}, model {short(m)})"
                          for k, s, m in report.dtype_mismatched)
        raise CheckpointMismatchError(
            f"{where}: dtype mismatch loading {init.checkpoint} into {label}: {kinds}: the "
            "values would change kind (complex, floating, integer/bool) when copied. Fix: "
            "convert the checkpoint entries to the model's dtype kind (e.g. t.float()), or "
            "use mismatch='skip' to leave those tensors to the other rules.")
    if init.strict and (report.missing or report.unexpected):
        raise CheckpointMismatchError(f"{where}: strict load of {init.checkpoint} into "
                                      f"{label}: {report}. {fix}")
    return writes, report


def _pending_writes(init: PretrainedInit, state: PendingCheckpoint, slots: dict[str, Tensor],
                    where: str, label: str) -> tuple[list[Write], LoadReport]:
    """A pending checkpoint writes every tensor in ``slots`` (its keys are not known yet)."""
    report = PendingLoad(init.checkpoint, probe=state.probe, label=label)
    report.loaded = list(slots)
    pending = f"{where}; download pending"  # the load's report note says more
    return [Write(slot, CheckpointRead(init, state, k, pending, report))
            for k, slot in slots.items()], report


def warn_load(where: str, label: str, report: LoadReport, strict: bool = False) -> None:
    """Warn about skipped keys (:class:`CheckpointKeysWarning`); raise under ``strict``."""
    if report.unexpected or report.missing or report.mismatched or report.dtype_mismatched:
        warn(CheckpointKeysWarning, f"{where}: loading into {label}: {report}", strict=strict)
