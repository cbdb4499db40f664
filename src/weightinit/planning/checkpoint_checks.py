"""Checks of checkpoint entries against the model.

* dtype kind: an entry of another kind than the model tensor (complex into
  real, integer or bool into floating, floating into integer or bool) is a
  mismatch, like a shape mismatch; a cast inside a kind (float32 into
  bfloat16, int64 into int32) and real into complex are allowed;
  (while planning, from the header: nothing is read);
* no entry loads: when checkpoint keys name model tensors but none can be
  loaded, :func:`no_match_error` says what each such entry is (a numpy
  array, a complex tensor, another shape) instead of claiming that no key
  matches while both sides list the same names;
* values: an entry that was loaded and holds NaN or infinity is reported. The
  check reads the tensor just written (one pass over memory), not the file
  again: reading every entry twice would cost several times the load itself.
  Under ``strict`` the run raises, and its transaction restores the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

from ..checkpoint.loader import CheckpointState, LoadReport
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


def finite_each(tensors: list[Tensor]) -> list[bool]:
    """:func:`is_finite` of each tensor, the first reduction's results read back together
    (one synchronization for the lot, not one per tensor)."""
    out = [True] * len(tensors)
    checked = [i for i, t in enumerate(tensors)
               if (t.is_floating_point() or t.is_complex()) and t.numel()]
    if not checked:
        return out
    sums = torch.isfinite(torch.stack([tensors[i].sum().cpu() for i in checked])).tolist()
    for i, finite in zip(checked, sums):
        if not finite:  # NaN/inf, or an overflowing sum of finite values: the exact check
            out[i] = is_finite(tensors[i])
    return out


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


def type_name(value: object) -> str:
    """``numpy.ndarray``, ``list``: what a checkpoint entry that is not a tensor holds."""
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _a(word: str) -> str:
    """``word`` with its indefinite article: ``an int64``, ``a uint8``, ``a numpy.ndarray``."""
    return f"{'an' if word[:1].lower() in 'aeio' else 'a'} {word}"


def why_not_loaded(state: CheckpointState, key: str, slot: Tensor,
                   dtype: torch.dtype, where: str = "") -> str | None:
    """Why checkpoint entry ``key`` can not load into the model tensor ``slot`` (materialized
    as ``dtype``), as a phrase naming both; None when it can."""
    what = "parameter" if isinstance(slot, nn.Parameter) else "buffer"
    if not state.is_tensor(key):
        return (f"checkpoint entry {key!r} is {_a(type_name(state.get(key)))}, not a tensor "
                f"(the model's {what} is {_a(short(dtype))} tensor)")
    shape = state.shape(key)
    if tuple(slot.shape) != shape:
        return (f"checkpoint entry {key!r} has shape {list(shape)}, the model's {what} "
                f"{list(slot.shape)}")
    src = state.dtype(key, where)
    if kinds_mismatch(src, dtype):
        return (f"checkpoint entry {key!r} is {_a(short(src))} tensor, which can not load "
                f"into the {short(dtype)} {what}")
    return None


def no_match_error(where: str, source: str, label: str, state: CheckpointState,
                   slots: dict[str, Tensor],
                   dtype_of: Callable[[Tensor], torch.dtype]) -> CheckpointMismatchError:
    """The error when no entry of checkpoint ``source`` loads into ``label``'s tensors
    (``slots``: name -> tensor; ``dtype_of``: the dtype each is materialized as).

    Keys that name a model tensor are explained entry by entry (not a tensor, another
    shape, another dtype kind); only when no key names one are the two key lists shown.
    """
    reasons = [why for k in state.keys() if k in slots
               for why in [why_not_loaded(state, k, slots[k], dtype_of(slots[k]), where)]
               if why is not None]
    if reasons:
        more = f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""
        return CheckpointMismatchError(
            f"{where}: no entry of {source} can be loaded into {label}: the keys match, but "
            f"{'; '.join(reasons[:5])}{more}. Fix: save the entries as tensors of the model's "
            "shapes and dtype kind (torch.from_numpy(a) for a numpy array; t.real or t.float() "
            "for a complex or integer tensor), or check that this is the right checkpoint.")
    keys = state.keys()
    return CheckpointMismatchError(
        f"{where}: no key of {source} matches {label}: checkpoint keys start "
        f"{', '.join(keys[:5]) or '(none)'}; the module's start "
        f"{', '.join(list(slots)[:5]) or '(none)'}. Fix: set prefix= or revise_keys= so the "
        "checkpoint's keys match the model's, or check that this is the right checkpoint.")
