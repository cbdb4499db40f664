"""Match a checkpoint's keys to a module's tensors, before anything is read or written.

Planning opens the checkpoint (for ``.safetensors`` only its header), checks
every entry that would be loaded (a tensor, dense, readable, of the model's
shape and dtype kind, with finite values: :mod:`.checkpoint_checks`) and
applies the ``strict``/``mismatch`` policies; each entry is read once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

from ..checkpoint.loader import CheckpointState, LoadReport, load_pretrained_state
from ..errors import (
    CheckpointKeysWarning,
    CheckpointMismatchError,
    warn,
)
from ..rules import PretrainedInit
from .checkpoint_checks import kinds_mismatch, short
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


def open_checkpoint(init: PretrainedInit, where: str,
                    opened: dict[tuple, CheckpointState]) -> CheckpointState:
    """The checkpoint's ``key -> tensor`` view, opened once per run for equal selections."""
    key = (init.checkpoint, init.prefix, str(init.map_location), init.allow_pickle,
           init.revise_keys, init.sha256)
    state = opened.get(key)
    if state is None:
        state = opened[key] = load_pretrained_state(init, where)
    return state


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
        raise CheckpointMismatchError(
            f"{where}: no key of {init.checkpoint} matches {label}: checkpoint keys "
            f"start {', '.join(state.keys()[:5]) or '(none)'}; the module's start "
            f"{', '.join(list(slots)[:5]) or '(none)'}. {fix}")
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


def warn_load(where: str, label: str, report: LoadReport, strict: bool = False) -> None:
    """Warn about skipped keys (:class:`CheckpointKeysWarning`); raise under ``strict``."""
    if report.unexpected or report.missing or report.mismatched or report.dtype_mismatched:
        warn(CheckpointKeysWarning, f"{where}: loading into {label}: {report}", strict=strict)
