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

Without CUDA it prints a line saying it needs CUDA and exits with status 0
(so it can be smoke-tested anywhere).

Run from the repository root::

    python benchmarks/bench_gpu.py                          # all models, 5 rounds
    python benchmarks/bench_gpu.py --models llama_1b --repeats 9
    python benchmarks/bench_gpu.py --markdown
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

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
        torch.cuda.synchronize()
        holder["dt"] = time.perf_counter() - holder["t0"]
        holder["model"] = m

    materialize()  # warm-up (and the parameter count)
    model = holder["model"]
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    nbytes = sum(p.numel() * p.element_size()
                 for p in {id(p): p for p in model.parameters()}.values())
    times = []
    for _ in range(repeats):
        materialize()
        times.append(holder["dt"])
    kernels = kernel_count(materialize)
    holder.pop("model", None)
    torch.cuda.empty_cache()
    floor = timed(lambda: torch.empty(n, device="cuda").normal_(), repeats + 1)[1:]
    t, f = statistics.median(times), statistics.median(floor)
    gbs = nbytes / t / 1e9
    return {"model": label, "params": n, "time_ms": t * 1e3, "floor_ms": f * 1e3,
            "ratio": t / f, "target": target, "kernels": kernels, "gb_s": gbs,
            "of_bandwidth": gbs / bandwidth if bandwidth else None}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bandwidth", type=float, default=None,
                   help="the device's memory bandwidth in GB/s (default: asked of torch)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
    head = ("model", "params", "materialize ms", "floor ms", "ratio (target)", "kernels",
            "GB/s", "of bandwidth")
    lines = []
    for r in rows:
        if "error" in r:
            lines.append((r["model"], "-", "failed: " + r["error"], "", "", "", "", ""))
            continue
        ok = "yes" if r["ratio"] <= r["target"] else "no"
        share = f"{r['of_bandwidth']:.0%}" if r["of_bandwidth"] is not None else "?"
        lines.append((r["model"], f"{r['params'] / 1e6:.0f} M", f"{r['time_ms']:.2f}",
                      f"{r['floor_ms']:.2f}", f"{r['ratio']:.2f} (<= {r['target']:g}: {ok})",
                      str(r["kernels"]), f"{r['gb_s']:.0f}", share))
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for line in lines:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
