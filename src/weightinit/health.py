"""Health check of an initialization: does signal survive a forward and a backward pass?

:func:`check_health` runs one forward pass of random input through the
model (in training mode) and one backward pass of a random unit-normal
gradient from the output, and records, for every module that owns
parameters, in the order they run:

* the **activation std** — std of the module's output;
* the **gradient std** — std of the gradient reaching that output.

A floating-point input is row 0 (``<input>``: its std and the std of the
gradient reaching it); with integer input (token ids) the first row is the
first layer (the embedding).

The flagging rule (``limit`` = 100 by default). The gains are the growth of
the std over the depth of the network, fitted over all rows (see
:func:`trend_gain`: exp(b·span), b the Theil–Sen slope of ln std against the
row's position — the median of the slopes between every pair of rows)::

    activation gain = trend of act_std, from the first row to the last
    gradient gain   = trend of grad_std, from the last row back to the first

A model is flagged when either gain lies outside ``[1/limit, limit]``
(exploding above, vanishing below), when any activation or gradient is not
finite, or when every output (or every gradient) is zero. A trend rather
than last/first, and a robust one rather than a least-squares fit, because
single layers legitimately have another scale — a classifier head with std
0.01 behind a global average pooling (the per-element gradient drops by
0.01·√classes/(H·W) in that one step), an embedding with std 0.02, a
zero-initialized residual norm — while exploding or vanishing signal
compounds layer after layer. A least-squares fit extrapolates one such step
into a trend when the network is shallow (a 5-layer conv net with a small
head read as ×0.003 "vanishing gradients"); the median pairwise slope
ignores a minority of odd steps at any depth and still sees a per-layer
change that repeats, as well as periodic patterns (norm, projection,
norm, ...) as flat. The gradient gain also catches growth hidden by
normalization layers (the activations after them look healthy, the
gradients through them do not). With a good init (He for ReLU, LeCun for
SELU/tanh) both gains stay within a few units over tens of layers; std=1
on a 20-layer, 256-wide ReLU MLP grows the signal by about √128 per layer,
~10²⁰ in all, and std=0.01 on a 20-layer, 256-wide tanh MLP shrinks it by
about 0.16 per layer, ~10⁻¹⁶ in all.

:func:`plot_health` draws one or more results into one PNG (needs
matplotlib: ``pip install 'weightinit[plot]'``).

Example::

    >>> res = check_health(model, torch.randn(8, 3, 224, 224), label="resnet50")
    >>> res.flagged, res.problems
    (False, [])
    >>> plot_health([res, other], "check.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from rich.table import Table
from torch import Tensor

from .errors import (
    HealthCheckError,
    InitTypeError,
    InitValueError,
    PlotError,
)

#: Default bound on the activation and gradient gains over the layers.
DEFAULT_LIMIT = 100.0


@dataclass(frozen=True)
class LayerStats:
    """Signal statistics of one module call: output std and std of the gradient reaching it."""

    name: str
    type: str
    act_std: float
    grad_std: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "act_std": _num(self.act_std),
                "grad_std": _num(self.grad_std)}


@dataclass
class HealthResult:
    """Per-layer statistics of one model, the end-to-end gains, and what was flagged."""

    label: str
    layers: list[LayerStats]
    act_gain: float | None
    grad_gain: float | None
    limit: float = DEFAULT_LIMIT
    problems: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.problems)

    def verdict(self) -> str:
        """One line: ``ok`` with the gains, or the problems found."""
        gains = (f"activation gain {_fmt(self.act_gain)}, gradient gain {_fmt(self.grad_gain)} "
                 f"(limit ×{self.limit:g})")
        if not self.problems:
            return f"{self.label}: ok — {gains}"
        return f"{self.label}: FLAGGED — " + "; ".join(self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "flagged": self.flagged, "problems": list(self.problems),
                "act_gain": _num(self.act_gain), "grad_gain": _num(self.grad_gain),
                "limit": self.limit, "layers": [s.to_dict() for s in self.layers]}

    def rich_table(self) -> Table:
        """A ``rich.table.Table`` of the per-layer statistics."""
        table = Table(title=f"{self.label}: signal per layer (forward order)",
                      title_justify="left", header_style="bold")
        table.add_column("#", justify="right")
        table.add_column("layer", overflow="fold")
        table.add_column("type")
        table.add_column("activation std", justify="right")
        table.add_column("gradient std", justify="right")
        for i, s in enumerate(self.layers):
            table.add_row(str(i), s.name, s.type, _fmt(s.act_std), _fmt(s.grad_std))
        return table


def random_input(shape: Sequence[int], dtype: str = "float", high: int | None = None,
                 device: Any = None, seed: int = 0,
                 float_dtype: torch.dtype | None = None) -> Tensor:
    """Random input for a health check: N(0, 1) floats, or integers in [0, high) (token ids).

    ``dtype`` is ``'float'`` or ``'long'``; drawn on the CPU with ``seed``,
    so the batch does not depend on the device.
    """
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise InitTypeError(f"input shape must be a list of positive ints, got {list(shape)!r}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if dtype in ("long", "int", "int64"):
        if high is None or high < 1:
            raise InitValueError("integer input needs high=<number of token ids> (>= 1)")
        x = torch.randint(0, high, tuple(shape), generator=gen)
        return x.to(device) if device is not None else x
    if dtype not in ("float", "float32"):
        raise InitValueError(f"input dtype must be 'float' or 'long', got {dtype!r}")
    x = torch.randn(tuple(shape), generator=gen)
    return x.to(device=device, dtype=float_dtype or torch.float32)


def _std(t: Tensor) -> Tensor:
    # Exploding signal reaches 1e20 and more, whose squares overflow float32: scale by the
    # largest magnitude first (float64 would do too, but not on every device).
    a = t.detach().float()
    scale = a.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    return (a / scale).std() * scale


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _watched(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # Modules owning parameters directly; the root only if it is the whole model.
    mods = [(n, m) for n, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False))]
    if len(mods) > 1:
        mods = [(n, m) for n, m in mods if m is not model]
    return mods


def check_health(model: nn.Module, example_input: Any, *, label: str | None = None,
                 limit: float = DEFAULT_LIMIT, seed: int = 0) -> HealthResult:
    """Run a forward and backward pass and record per-layer activation and gradient std.

    ``example_input`` is a tensor, or a tuple/list of positional inputs.
    The model runs in training mode; afterwards its mode, buffers (BatchNorm
    statistics) and parameter gradients are restored. The backward pass
    starts from a N(0, 1) gradient on the first output tensor, drawn with
    ``seed``. See the module docstring for the flagging rule.
    """
    if not isinstance(model, nn.Module):
        raise InitTypeError(f"check_health: model must be an nn.Module, got "
                            f"{type(model).__name__}")
    if not (isinstance(limit, (int, float)) and limit > 1):
        raise InitValueError(f"limit must be a number > 1, got {limit!r}")
    label = label or type(model).__name__
    watched = _watched(model)
    acts: list[tuple[str, str, Tensor]] = []
    grads: dict[int, Tensor] = {}
    calls: dict[str, int] = {}

    def hook(name: str, m: nn.Module, out: Any) -> None:
        t = _first_tensor(out)
        if t is None or not t.is_floating_point():
            return
        calls[name] = calls.get(name, 0) + 1
        shown = name if calls[name] == 1 else f"{name}[{calls[name]}]"
        index = len(acts)
        acts.append((shown, type(m).__name__, _std(t)))
        if t.requires_grad:
            t.register_hook(lambda g, i=index: grads.__setitem__(i, _std(g)))

    handles = [m.register_forward_hook(lambda m, i, o, n=name or "<root>": hook(n, m, o))
               for name, m in watched]
    was_training = model.training
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    saved_grads = {id(p): p.grad for p in model.parameters()}
    inputs = list(example_input) if isinstance(example_input, (tuple, list)) else [example_input]
    x0 = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
    if x0 is not None and x0.is_floating_point():
        # The input is row 0: gains are then measured end to end, from the data itself.
        x0 = inputs[0] = x0.detach().requires_grad_(True)
        acts.append(("<input>", "input", _std(x0)))
        x0.register_hook(lambda g: grads.__setitem__(0, _std(g)))
    try:
        model.train()
        try:
            out = model(*inputs)
        except Exception as err:  # the model's own code: report it as a bad input, in one line
            shapes = ", ".join(str(tuple(x.shape)) for x in inputs if isinstance(x, Tensor))
            raise HealthCheckError(f"health check: {type(model).__name__} failed on random input "
                                   f"of shape {shapes}: {err}. Fix: give the input shape the "
                                   "model expects (config 'input' or --input-shape).") from err
        y = _first_tensor(out)
        if y is None or not y.is_floating_point():
            raise HealthCheckError(f"health check: {type(model).__name__} returned no floating "
                                   "tensor to backpropagate from")
        if y.requires_grad:
            gen = torch.Generator(device="cpu").manual_seed(seed + 1)
            y.backward(torch.randn(tuple(y.shape), generator=gen).to(y.device, y.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved_buffers:
                    b.copy_(saved_buffers[n])
        for p in model.parameters():
            p.grad = saved_grads.get(id(p))
    act_values = torch.stack([a for _, _, a in acts]).tolist() if acts else []
    grad_values = (dict(zip(grads, torch.stack(list(grads.values())).tolist()))
                   if grads else {})
    layers = [LayerStats(name, kind, act_values[i], grad_values.get(i))
              for i, (name, kind, _) in enumerate(acts)]
    return _judge(label, layers, float(limit))


def trend_gain(values: Sequence[float | None]) -> float | None:
    """Growth of a std over the layers: exp(b·span), b the Theil–Sen slope of ln(std).

    Positions are the layers' indices in forward order; layers whose std is
    missing, zero or not finite are left out, and ``span`` runs from the
    first to the last layer used. ``b`` is the median of the slopes
    (ln v_j − ln v_i) / (j − i) over every pair of layers i < j: it measures
    how the signal compounds with depth, while a minority of layers with a
    deliberately different scale (a small-std head, a pooling, an embedding)
    does not move it, however shallow the network. ``None`` with fewer than
    two usable layers.
    """
    pts = [(i, math.log(v)) for i, v in enumerate(values)
           if v is not None and math.isfinite(v) and v > 0]
    if len(pts) < 2:
        return None
    step = max(1, len(pts) // _MAX_FIT_POINTS)  # bound the pairs: O(n²) in the layers used
    sample = pts[::step] if (len(pts) - 1) % step == 0 else pts[::step] + [pts[-1]]
    slopes = sorted((yj - yi) / (xj - xi) for k, (xi, yi) in enumerate(sample)
                    for xj, yj in sample[k + 1:])
    mid = len(slopes) // 2
    slope = slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2
    return math.exp(max(-700.0, min(700.0, slope * (pts[-1][0] - pts[0][0]))))


#: At most this many layers enter the pairwise fit (evenly spaced, first and last kept).
_MAX_FIT_POINTS = 600


def _judge(label: str, layers: list[LayerStats], limit: float) -> HealthResult:
    """Compute the gains and apply the flagging rule (module docstring)."""
    problems: list[str] = []
    act_gain = grad_gain = None
    bad_act = next((s for s in layers if not math.isfinite(s.act_std)), None)
    if bad_act is not None:
        problems.append(f"non-finite activations from {bad_act.name!r} on")
    bad_grad = next((s for s in reversed(layers)
                     if s.grad_std is not None and not math.isfinite(s.grad_std)), None)
    if bad_grad is not None:
        problems.append(f"non-finite gradients from {bad_grad.name!r} back")
    if layers and bad_act is None:
        act_gain = trend_gain([s.act_std for s in layers])
        if act_gain is None and len(layers) >= 2 and all(s.act_std == 0 for s in layers):
            problems.append("no signal: every layer's output is constant")
        elif act_gain is not None:
            problems += _gain_problems("activations", act_gain, limit, layers, "act_std")
    grads = [s.grad_std for s in layers]
    if any(g is not None for g in grads) and bad_grad is None:
        trend = trend_gain(grads)
        if trend is None and sum(g is not None for g in grads) >= 2 and not any(grads):
            problems.append("no gradient: every layer's gradient is zero")
        elif trend is not None:
            grad_gain = 1.0 / trend  # gradients flow from the last layer back to the first
            problems += _gain_problems("gradients", grad_gain, limit, layers, "grad_std")
    return HealthResult(label, layers, act_gain, grad_gain, limit, problems)


def _gain_problems(what: str, gain: float, limit: float, layers: list[LayerStats],
                   attr: str) -> list[str]:
    used = [s.name for s in layers if (v := getattr(s, attr)) is not None and v > 0]
    span = (f"from {used[0]!r} to {used[-1]!r}" if what == "activations"
            else f"from {used[-1]!r} back to {used[0]!r}")
    over = f"over {len(used)} layers, {span}"
    if gain > limit:
        return [f"exploding {what}: std grows ×{gain:.3g} {over} (limit ×{limit:g})"]
    if gain < 1 / limit:
        return [f"vanishing {what}: std shrinks ×{gain:.3g} {over} (limit ×{1 / limit:g})"]
    return []


def plot_health(results: Sequence[HealthResult], path: str, title: str | None = None,
                dpi: int = 100) -> None:
    """Plot activation and gradient std per layer of each result into one PNG at ``path``.

    Two panels (activations, gradients), log scale, one line per result;
    flagged results are dashed and marked in the legend.
    """
    try:  # optional (weightinit[plot]) and slow to import: only when plotting
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as err:
        raise PlotError("plotting needs matplotlib, which is not installed. Fix: pip install "
                        "'weightinit[plot]' (or pip install matplotlib).") from err
    if not results:
        raise InitValueError("plot_health: no results to plot")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = (("activation std (forward)", "act_std"), ("gradient std (backward)", "grad_std"))
    for ax, (name, attr) in zip(axes, panels):
        for res in results:
            xs = [i for i, s in enumerate(res.layers) if _plottable(getattr(s, attr))]
            ys = [getattr(res.layers[i], attr) for i in xs]
            if not xs:
                continue
            tag = " (flagged)" if res.flagged else ""
            ax.plot(xs, ys, linestyle="--" if res.flagged else "-", marker=".",
                    markersize=4, label=f"{res.label}{tag}")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("layer (forward order; 0 is the input when it is floating point)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "weightinit check: signal per layer")
    fig.savefig(path, dpi=dpi)


def _plottable(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return "0" if x == 0 else f"{x:.3g}"


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x
