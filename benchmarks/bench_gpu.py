"""Benchmark deferred materialization on a GPU: few kernels, no host reads (issue 16).

For each model (``examples/models.py``: the bundled Llama 1B and 7B in
bfloat16, ViT-B/16 in float32 by default) this script builds it under
``weightinit.deferred()`` once per round and times ``init_weights(device=
"cuda", dtype=...)`` (allocation included, ``torch.cuda.synchronize()``
inside the timed region), against the floor ``torch.empty(n, device="cuda")
.normal_()`` for the model's ``n`` parameter elements (float32, as in
``bench_deferred.py``). It reports, per model:

* the median time of materialization and of the floor, and their ratio
  (targets: Llama ≤ 2x, ViT-B ≤ 4x);
* the number of CUDA kernels one materialization launches (``torch.profiler``);
* GB/s: parameter bytes written per second, and that as a fraction of the
  device's memory bandwidth (from ``--bandwidth`` in GB/s, else the
  theoretical figure computed from the device's memory clock and bus width
  when torch exposes them, else a table of known devices).

It also reports the **host ms**: the time until ``init_weights`` returns,
before the synchronization. Kernels run asynchronously, so when host ms is
close to the materialization time the GPU waited for Python.

Without CUDA it prints a line saying it needs CUDA and exits with status 0
(so it can be smoke-tested anywhere).

``--host`` measures, on any machine, what bounds a GPU materialization from
below: the Python and dispatch work per materialization. Each model's
modules are built at width 32 (same layers, same tensors, same rules; the
fills cost next to nothing), under ``deferred()``, and materialized on the CPU
with the GPU's choices made for it (the batched fills of
``weightinit.execution.batched``, the truncated normal's inverse-CDF method,
no CPU threads). It reports the median host time, the time per tensor and
the ops that would each launch at least one kernel (writes: fills, copies,
generation calls, multi-tensor ops), against the same run with one write per
tensor.

Run from the repository root::

    python benchmarks/bench_gpu.py                          # all models, 5 rounds
    python benchmarks/bench_gpu.py --models llama_1b --repeats 9
    python benchmarks/bench_gpu.py --markdown
    python benchmarks/bench_gpu.py --host --markdown       # any machine: host cost only
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "src"))

#: key -> (label, builder, kwargs, dtype, target ratio to the floor)
MODELS = {
    "llama_1b": ("Llama 1B bf16", "llama", {"size": "1b"}, torch.bfloat16, 2.0),
    "llama_7b": ("Llama 7B bf16", "llama", {"size": "7b"}, torch.bfloat16, 2.0),
    "vit_b16": ("ViT-B/16 fp32", "vit_b16", {}, torch.float32, 4.0),
}

#: peak memory bandwidth (GB/s) of devices torch cannot tell us about, by name fragment
KNOWN_BANDWIDTH = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
                   "A100": 1555.0, "L4": 300.0, "A10G": 600.0, "T4": 320.0, "V100": 900.0}


def device_bandwidth(override: float | None) -> float | None:
    """The device's memory bandwidth in GB/s, or ``None`` when unknown."""
    if override:
        return override
    props = torch.cuda.get_device_properties(0)
    clock = getattr(props, "memory_clock_rate", None)  # kHz
    width = getattr(props, "memory_bus_width", None)  # bits
    if clock and width:
        return 2 * clock * 1e3 * width / 8 / 1e9
    for name, bw in KNOWN_BANDWIDTH.items():
        if name in props.name:
            return bw
    return None


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return out


def kernel_count(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def bench(key: str, repeats: int, bandwidth: float | None) -> dict[str, object]:
    import models

    import weightinit as wi

    label, builder, kwargs, dtype, target = MODELS[key]
    build = getattr(models, builder)
    holder: dict[str, object] = {}

    def materialize() -> None:
        holder.pop("model", None)
        torch.cuda.empty_cache()
        with wi.deferred():
            m = build(**kwargs)
        torch.cuda.synchronize()
        holder["t0"] = time.perf_counter()
        m.init_weights(device="cuda", dtype=dtype)
        holder["host"] = time.perf_counter() - holder["t0"]
        torch.cuda.synchronize()
        holder["dt"] = time.perf_counter() - holder["t0"]
        holder["model"] = m

    materialize()  # warm-up (and the parameter count)
    model = holder["model"]
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    nbytes = sum(p.numel() * p.element_size()
                 for p in {id(p): p for p in model.parameters()}.values())
    times, hosts = [], []
    for _ in range(repeats):
        materialize()
        times.append(holder["dt"])
        hosts.append(holder["host"])
    kernels = kernel_count(materialize)
    holder.pop("model", None)
    torch.cuda.empty_cache()
    floor = timed(lambda: torch.empty(n, device="cuda").normal_(), repeats + 1)[1:]
    t, f = statistics.median(times), statistics.median(floor)
    gbs = nbytes / t / 1e9
    return {"model": label, "params": n, "time_ms": t * 1e3, "floor_ms": f * 1e3,
            "host_ms": statistics.median(hosts) * 1e3,
            "ratio": t / f, "target": target, "kernels": kernels, "gb_s": gbs,
            "of_bandwidth": gbs / bandwidth if bandwidth else None}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bandwidth", type=float, default=None,
                   help="the device's memory bandwidth in GB/s (default: asked of torch)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--host", action="store_true",
                   help="measure the host's share on any machine (see the module's docstring)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.host:
        return host_main(args)
    if not torch.cuda.is_available():
        print("bench_gpu.py needs CUDA: no CUDA device is available here, nothing measured.")
        return 0
    bandwidth = device_bandwidth(args.bandwidth)
    rows = []
    for key in args.models:
        try:
            rows.append(bench(key, args.repeats, bandwidth))
        except (RuntimeError, MemoryError) as err:  # e.g. out of memory: report, go on
            rows.append({"model": MODELS[key][0], "error": str(err).splitlines()[0]})
    name = torch.cuda.get_device_name(0)
    bw = f"{bandwidth:.0f} GB/s" if bandwidth else "unknown bandwidth"
    print(f"device: {name} ({bw}); torch {torch.__version__}; medians of {args.repeats}")
    head = ("model", "params", "materialize ms", "host ms", "floor ms", "ratio (target)",
            "kernels", "GB/s", "of bandwidth")
    lines = []
    for r in rows:
        if "error" in r:
            lines.append((r["model"], "-", "failed: " + r["error"], *[""] * 6))
            continue
        ok = "yes" if r["ratio"] <= r["target"] else "no"
        share = f"{r['of_bandwidth']:.0%}" if r["of_bandwidth"] is not None else "?"
        lines.append((r["model"], f"{r['params'] / 1e6:.0f} M", f"{r['time_ms']:.2f}",
                      f"{r['host_ms']:.2f}", f"{r['floor_ms']:.2f}",
                      f"{r['ratio']:.2f} (<= {r['target']:g}: {ok})",
                      str(r["kernels"]), f"{r['gb_s']:.0f}", share))
    show(head, lines, args.markdown)
    return 0


def show(head: Sequence[str], lines: list[Sequence[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for line in lines:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


# -- --host: the host's share, on any machine ------------------------------------------------

#: the width of ``--host``'s models: their fills cost next to nothing (Llama 7B: 32 heads)
WIDTH = 32


class WriteOps(TorchDispatchMode):
    """Counts the aten ops run inside it that write device memory: in-place ops (fills,
    generation calls, copies, multi-tensor ops) and conversions (``_to_copy``). Views,
    allocations and the host's reads of recorded CPU values launch no kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name.endswith("_") or name == "_to_copy":
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def gpu_choices(batched_fills: bool) -> Iterator[None]:
    """Run the CPU as a GPU run would: no fill drawn in pieces on CPU threads, and (with
    ``batched_fills``) the batched fills, host tensors converted to the target dtype as
    if moved to a device (together), and the inverse-CDF truncated normal."""
    from weightinit.execution import batched, strategies
    from weightinit.maths import fills

    saved = (batched.batch_target, batched.move_target, fills.sync_free_trunc,
             strategies.parallel_target)
    strategies.parallel_target = lambda t: False
    if batched_fills:
        batched.batch_target = lambda t: (t.is_floating_point()
                                          and type(t) in (torch.Tensor, torch.nn.Parameter))
        batched.move_target = lambda t, device: type(t) in (torch.Tensor, torch.nn.Parameter)
        fills.sync_free_trunc = lambda device: True
    try:
        yield
    finally:
        (batched.batch_target, batched.move_target, fills.sync_free_trunc,
         strategies.parallel_target) = saved


def host_bench(key: str, repeats: int) -> dict[str, object]:
    import models

    import weightinit as wi

    label, builder, kwargs, dtype, _ = MODELS[key]
    build = getattr(models, builder)
    out: dict[str, object] = {"model": label + f" modules, width {WIDTH}"}
    for batched_fills in (True, False):
        with gpu_choices(batched_fills):
            times = []
            for _ in range(repeats + 1):
                with wi.deferred():
                    m = build(width=WIDTH, **kwargs)
                gc.collect()
                start = time.perf_counter()
                m.init_weights(device="cpu", dtype=dtype)
                times.append(time.perf_counter() - start)
            with wi.deferred():
                m = build(width=WIDTH, **kwargs)
            with WriteOps() as ops:
                m.init_weights(device="cpu", dtype=dtype)
        tag = "batched" if batched_fills else "per_tensor"
        out[f"{tag}_ms"] = statistics.median(times[1:]) * 1e3
        out[f"{tag}_kernels"] = sum(ops.calls.values())
        out[f"{tag}_ops"] = ops.calls
    out["tensors"] = len({id(t) for t in [*m.parameters(), *m.buffers()]})
    out["modules"] = len(list(m.modules()))
    return out


def host_main(args: argparse.Namespace) -> int:
    rows = [host_bench(key, args.repeats) for key in args.models]
    print(f"host cost of a materialization, GPU choices made on the CPU; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats}")
    head = ("model", "modules", "tensors", "host ms", "µs/tensor", "kernels",
            "one write per tensor: host ms", "kernels")
    lines = [(r["model"], str(r["modules"]), str(r["tensors"]), f"{r['batched_ms']:.2f}",
              f"{r['batched_ms'] * 1e3 / r['tensors']:.1f}", str(r["batched_kernels"]),
              f"{r['per_tensor_ms']:.2f}", str(r["per_tensor_kernels"])) for r in rows]
    show(head, lines, args.markdown)
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["batched_ops"].items()))
        print(f"- {r['model']}: {ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
