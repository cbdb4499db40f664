"""Measuring what tensors hold for the report: mean and std, exactly or on a sample.

Exact: each tensor is read once, a slab of :data:`SLAB` elements at a time
converted to float32 (a copy that stays in cache, not one the size of the
model), each slab's mean and variance combined exactly (Chan et al.) in
float64; one host sync per device.

Sampled (``sample=k``): a tensor of more than ``k`` elements is measured on
``k`` elements, in runs of :data:`RUN` consecutive ones starting at positions
drawn uniformly (a generator of its own, seed 0: the same positions every
run, the global random state untouched). For an
elementwise fill — each element an independent draw, or one constant — the
sample's mean and std estimate the tensor's without bias, and the std check
uses the sample's standard error (σ/√(2k) instead of σ/√(2n)). Tensors whose
fill has structure (Eye, Dirac, Orthogonal, a user's rule) are measured in
full: a few sampled elements of an identity matrix say little about it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: elements converted to float32 at a time by an exact measurement
SLAB = 1 << 20
#: elements per tensor that ``weightinit init --summary`` measures: the sample std's
#: standard error σ/√(2k) is 0.28 % of σ, and a 1B model is measured in a fraction of a second
SUMMARY_SAMPLE = 1 << 16
#: a sample is read in runs of this many consecutive elements
RUN = 1 << 10

Stats = tuple[float | None, float | None, int | None]


def measure(tensors: Sequence[Tensor], sample: int | None = None,
            sampleable: Sequence[bool] | None = None,
            progress: Callable[[int], None] | None = None) -> list[Stats]:
    """(mean, population std, elements measured) of each tensor; None for meta or empty ones.

    With ``sample``, a tensor of more elements whose ``sampleable`` flag is set
    (default: all) is measured on ``sample`` random elements. ``progress(1)``
    is called after each tensor.
    """
    out: list[Stats] = [(None, None, None)] * len(tensors)
    pending: dict[torch.device, list[tuple[int, Tensor, int]]] = {}
    with torch.no_grad():
        for i, t in enumerate(tensors):
            if t.device.type != "meta" and t.numel() and t.is_floating_point():
                n = t.numel()
                if sample is not None and n > sample and (sampleable is None or sampleable[i]):
                    stats, n = _sampled(t.detach(), sample), sample
                else:
                    stats = _exact(t.detach())
                pending.setdefault(t.device, []).append((i, stats, n))
            if progress is not None:
                progress(1)
        for items in pending.values():  # one host sync per device
            values = torch.stack([s for _, s, _ in items]).tolist()
            for (i, _, n), (mean, std) in zip(items, values):
                out[i] = (mean, std, n)
    return out


def _wide(device: torch.device) -> torch.dtype:
    # float64 to combine slabs, where the device has it (MPS does not)
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def _exact(t: Tensor) -> Tensor:
    """``[mean, std]`` of all of ``t`` (a 2-element tensor on its device)."""
    flat = t.reshape(-1)
    wide = _wide(t.device)
    if flat.numel() <= SLAB:
        var, mean = torch.var_mean(flat.float(), correction=0)
        return torch.stack([mean.to(wide), var.to(wide).sqrt()])
    means, variances, counts = [], [], []
    for start in range(0, flat.numel(), SLAB):
        part = flat[start:start + SLAB]
        var, mean = torch.var_mean(part.float(), correction=0)
        means.append(mean)
        variances.append(var)
        counts.append(part.numel())
    m = torch.stack(means).to(wide)
    v = torch.stack(variances).to(wide)
    w = torch.tensor(counts, dtype=wide, device=m.device) / flat.numel()
    mean = (w * m).sum()
    # the variance of the whole: the slabs' own variances plus the spread of their means
    return torch.stack([mean, (w * (v + (m - mean) ** 2)).sum().clamp_min(0).sqrt()])


def _sampled(t: Tensor, k: int) -> Tensor:
    """``[mean, std]`` of ``k`` elements of ``t``: runs of :data:`RUN` at uniformly drawn
    starts (as good as single elements for an elementwise fill, and read from memory
    far faster)."""
    gen = torch.Generator(device=t.device)
    gen.manual_seed(0)
    flat = t.reshape(-1)
    run = min(RUN, k)
    starts = torch.randint(flat.numel() - run + 1, (k // run, 1), generator=gen,
                           device=t.device)
    picks = flat[(starts + torch.arange(run, device=t.device)).reshape(-1)]
    var, mean = torch.var_mean(picks.float(), correction=0)
    wide = _wide(t.device)
    return torch.stack([mean.to(wide), var.to(wide).sqrt()])


__all__ = ["RUN", "SLAB", "SUMMARY_SAMPLE", "measure"]
