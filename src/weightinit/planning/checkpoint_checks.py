"""Checks of checkpoint entries against the model.

* dtype kind: an entry of another kind than the model tensor (complex into
  real, integer or bool into floating, floating into integer or bool) is a
  mismatch, like a shape mismatch; a cast inside a kind (float32 into
  bfloat16, int64 into int32) and real into complex are allowed;
  (while planning, from the header: nothing is read);
* values: an entry that was loaded and holds NaN or infinity is reported. The
  check reads the tensor just written (one pass over memory), not the file
  again: reading every entry twice would cost several times the load itself.
  Under ``strict`` the run raises, and its transaction restores the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checkpoint.loader import LoadReport
from ..errors import CheckpointMismatchError, NonFiniteCheckpointWarning, warn

#: elements checked at a time (bounds the temporary ``isfinite`` mask)
CHUNK = 1 << 24


def dtype_kind(dtype: torch.dtype) -> str:
    """``complex``, ``floating`` or ``integer`` (bool included)."""
    if dtype.is_complex:
        return "complex"
    return "floating" if dtype.is_floating_point else "integer"


def kinds_mismatch(ckpt: torch.dtype, model: torch.dtype) -> bool:
    """Whether copying a ``ckpt`` entry into a ``model`` tensor changes its kind of values
    (real into complex is exact and allowed)."""
    src, dst = dtype_kind(ckpt), dtype_kind(model)
    return src != dst and not (src == "floating" and dst == "complex")


def is_finite(t: Tensor) -> bool:
    """Whether every value of ``t`` is finite (integer tensors always are)."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return True
    # One reduction first: NaN or infinity anywhere makes the sum non-finite, so a finite
    # sum proves the tensor finite without a mask pass; only an overflowing sum of finite
    # values (or a real NaN/inf) takes the exact check.
    if bool(torch.isfinite(t.sum())):
        return True
    flat = t.reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        if not bool(torch.isfinite(flat[start:start + CHUNK]).all()):
            return False
    return True


def report_nonfinite(loads: list[tuple[LoadReport, bool]], strict: bool) -> None:
    """After the writes: warn about checkpoint entries that held NaN or infinity (found on
    the loaded tensors, so the file is read once). ``loads`` pairs each report with its
    rule's ``strict``; a strict rule raises, a ``strict`` run turns the warning into an
    error (the run then restores the model)."""
    for report, rule_strict in loads:
        if not report.nonfinite:
            continue
        text = (f"{report.source}: entries hold NaN or infinity: {listed(report.nonfinite)}. "
                "Fix: repair or re-save the checkpoint, or leave those keys out with "
                "prefix=/revise_keys=")
        if rule_strict:
            raise CheckpointMismatchError(f"strict load of {text}. The model was restored.")
        warn(NonFiniteCheckpointWarning, f"{text}; pass strict=True to refuse it.",
             strict=strict)


def listed(keys: list[str], limit: int = 5) -> str:
    """The first ``limit`` keys, and how many there are in all."""
    head = ", ".join(keys[:limit])
    return f"{head} ({len(keys)} in all)" if len(keys) > limit else head


def short(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
