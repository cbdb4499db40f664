"""Hugging Face and timm models: their own eager construction against weightinit's deferred
construction, seeded (each tensor written once) and unseeded (equal to eager).

What is measured
----------------
For each model and each of ``--repeats`` rounds (the kinds in a rotating order), in a fresh
Python process each, timed from before construction to after initialization:

* **eager**: the library's own path, ``LlamaForCausalLM(config)`` /
  ``timm.create_model(name)``: every layer's PyTorch default is drawn, then the model's own
  init (``_init_weights``, timm's ``init_weights``) overwrites most of them;
* **seeded**: ``with weightinit.deferred(): model = ...`` then
  ``weightinit.initialize(model, [], seed=0)``: a default the model's own init overwrites
  whole is never drawn; each tensor is drawn once, from the seeded tiles, on every thread;
* **unseeded**: the same without a seed: values equal eager construction under the same
  ``torch.manual_seed``, so every recorded write runs in eager order;
* **floor**: ``torch.empty(n).normal_()`` on one thread for the model's ``n`` parameter
  elements, allocation included (the physical floor of writing them once).

Each worker first builds a tiny model of the same family the same way (imports and
first-call costs outside the timed region). The table gives medians and their ratios to
the floor and to eager, and the writes per tensor (each parameter's version counter after
the run: how many tensors were written more than once). Threads: ``torch``'s default
(``--threads`` to set it); the floor always uses one.

    .venv/bin/python benchmarks/bench_deferred_hf.py --markdown
    .venv/bin/python benchmarks/bench_deferred_hf.py --models llama-0.4b gpt2 --repeats 5

timm models are measured where timm imports (it needs torchvision: the OpenMMLab test
environment has both, ``.venv-openmmlab/bin/python benchmarks/bench_deferred_hf.py --models
vit-b16 convnext-t resnet50``); others are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
TAG = "BENCH_HF_RESULT "
KINDS = ("eager", "seeded", "unseeded", "floor")
#: name -> (library, builder arguments, tiny builder arguments for the warm-up)
LLAMA = dict(num_attention_heads=16, num_key_value_heads=4)
MODELS: dict[str, tuple[str, dict, dict]] = {
    "llama-0.4b": ("transformers", dict(cls="LlamaForCausalLM", config="LlamaConfig",
                   kw=dict(vocab_size=32000, hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, **LLAMA)),
                   dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)),
    "llama-1.1b": ("transformers", dict(cls="LlamaForCausalLM", config="LlamaConfig",
                   kw=dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                           num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4)),
                   dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)),
    "bert-base": ("transformers", dict(cls="BertForMaskedLM", config="BertConfig", kw={}),
                  dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=1, num_attention_heads=4)),
    "gpt2": ("transformers", dict(cls="GPT2LMHeadModel", config="GPT2Config", kw={}),
             dict(vocab_size=256, n_embd=64, n_layer=1, n_head=4)),
    "t5-small": ("transformers", dict(cls="T5ForConditionalGeneration", config="T5Config",
                 kw=dict(d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_heads=8,
                         vocab_size=32128)),
                 dict(d_model=64, d_ff=128, d_kv=16, num_layers=1, num_heads=4,
                      vocab_size=256)),
    "vit-b16": ("timm", dict(name="vit_base_patch16_224"), dict(name="vit_tiny_patch16_224")),
    "convnext-t": ("timm", dict(name="convnext_tiny"), dict(name="convnext_atto")),
    "resnet50": ("timm", dict(name="resnet50"), dict(name="resnet18")),
}


def builder(library: str, spec: dict, tiny: dict | None = None):
    if library == "transformers":
        import transformers

        cls, config = getattr(transformers, spec["cls"]), getattr(transformers, spec["config"])
        kw = spec["kw"] if tiny is None else tiny
        return lambda: cls(config(**kw))
    import timm

    name = spec["name"] if tiny is None else tiny["name"]
    return lambda: timm.create_model(name)


def measure(kind: str, build, n: int | None = None) -> tuple[float, Any]:
    import torch

    import weightinit as wi

    if kind == "floor":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        torch.empty(n).normal_()
        elapsed = time.perf_counter() - t0
        torch.set_num_threads(threads)
        return elapsed, None
    t0 = time.perf_counter()
    if kind == "eager":
        model = build()
    else:
        with wi.deferred():
            model = build()
        wi.initialize(model, [], seed=0 if kind == "seeded" else None)
    return time.perf_counter() - t0, model


def worker(raw: str) -> int:
    import gc

    import torch

    spec = json.loads(raw)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    library, args, tiny = MODELS[spec["model"]]
    kind = spec["kind"]
    if kind == "floor":
        measure("floor", None, 1 << 16)
        gc.collect()
        elapsed, _ = measure("floor", None, spec["params"])
        print(TAG + json.dumps(dict(time=elapsed)))
        return 0
    available(library)
    torch.manual_seed(0)
    measure(kind, builder(library, args, tiny))  # warm-up: imports, first calls
    build = builder(library, args)
    gc.collect()
    elapsed, model = measure(kind, build)
    versions = [p._version for p in model.parameters()]
    print(TAG + json.dumps(dict(time=elapsed, params=sum(p.numel() for p in model.parameters()),
                                tensors=len(versions), rewritten=sum(v > 1 for v in versions),
                                writes=sum(versions))))
    return 0


def spawn(spec: dict, timeout: float) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), "--worker", json.dumps(spec)],
                         capture_output=True, text=True, timeout=timeout)
    for line in out.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-2000:]}")


def torchvision_standin() -> None:
    """Let timm import torchvision where its wheel is a CUDA build beside a CPU torch: its
    compiled ops do not load, and its fake-kernel registrations need the two op schemas
    declared (no kernel: nothing here calls them)."""
    import torch

    try:
        import torchvision  # noqa: F401
    except ImportError:
        return
    except RuntimeError:
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(library)


_KEEP: list = []


def available(library: str) -> bool:
    if library == "timm":
        torchvision_standin()
    try:
        __import__(library)
    except Exception:  # (timm without torchvision raises at import)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: its own)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    import torch

    threads = args.threads or torch.get_num_threads()
    rows = []
    for key in args.models:
        library = MODELS[key][0]
        if not available(library):
            print(f"{key}: skipped ({library} does not import here)", file=sys.stderr)
            continue
        results: dict[str, list[dict]] = {k: [] for k in KINDS}
        params = None
        for r in range(args.repeats):
            order = [k for k in KINDS if k != "floor"]
            order = order[r % len(order):] + order[:r % len(order)] + ["floor"]
            for kind in order:
                spec = dict(model=key, kind=kind, threads=args.threads, params=params)
                res = spawn(spec, args.timeout)
                params = res.get("params", params)
                results[kind].append(res)
                print(f"{key} round {r + 1} {kind}: {res['time']:.2f} s", file=sys.stderr)
        med = {k: statistics.median(x["time"] for x in v) for k, v in results.items()}
        rows.append((key, params, med, results))
    print(f"Hugging Face / timm models, {threads} threads, medians of {args.repeats} "
          "interleaved rounds (floor: one-thread normal_ over the parameter elements)")
    head = ["model", "params", "eager s", "seeded s", "unseeded s", "floor s",
            "seeded / floor", "seeded / eager", "unseeded / eager",
            "rewritten tensors: eager", "seeded", "unseeded"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, params, med, results in rows:
        def rewritten(kind: str, results: dict = results) -> str:
            last = results[kind][-1]
            return f"{last['rewritten']}/{last['tensors']}"

        cells = [key, f"{params / 1e6:.0f} M", *(f"{med[k]:.2f}" for k in KINDS),
                 f"{med['seeded'] / med['floor']:.2f}", f"{med['seeded'] / med['eager']:.2f}",
                 f"{med['unseeded'] / med['eager']:.2f}", rewritten("eager"),
                 rewritten("seeded"), rewritten("unseeded")]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
