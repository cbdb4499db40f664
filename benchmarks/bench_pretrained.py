"""Build a ~350 M-parameter model and load its pretrained weights: weightinit vs MMEngine vs floor.

Measured, as medians of ``--repeats`` rounds in one process, with the
checkpoint files already in the page cache (each is read once before timing):

* **weightinit** — ``with weightinit.deferred(): build()`` then
  ``weightinit.load_checkpoint(model, "model.safetensors")``: the model is
  planned on ``meta``, every key is checked, and each parameter takes the
  loaded tensor as its storage (written once, by the read itself).
* **MMEngine** — what an MMEngine user does: eager construction (allocation
  + PyTorch's default init), ``init_weights()`` with the model's random
  rules, then ``mmengine.runner.load_checkpoint(model, "model.pth")``
  (``torch.load`` + copy into the parameters).
* **floor** — ``safetensors.torch.load_file("model.safetensors")`` alone.

``load_file`` memory-maps the file: its tensors are not read until used,
and weightinit adopts them as parameter storage the same way. So each is
measured twice: as returned, and "resident" — followed by one read of every
parameter byte (a sum over each tensor), which is what the first forward
pass would pay.

The model is the bundled pre-norm transformer (``examples/models.py``), 56
blocks of width 768: 397 M parameters, 1.6 GB in float32. Run it in an
environment with MMEngine (see ``benchmarks/README.md``); without it the
MMEngine column reads n/a.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

import weightinit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_init import (  # noqa: E402
    load_mmengine,
    load_models,
    markdown_table,
    ms,
    ratio,
    rich_table,
    timed,
)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds; medians are reported")
    parser.add_argument("--depth", type=int, default=56, help="transformer blocks (default 56)")
    parser.add_argument("--dim", type=int, default=768, help="transformer width (default 768)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown")
    args = parser.parse_args(argv)

    models = load_models()
    mm, note = load_mmengine()
    console = Console(stderr=True)

    def build(kit: Any = None) -> torch.nn.Module:
        return models.transformer(kit, depth=args.depth, dim=args.dim)

    with tempfile.TemporaryDirectory() as tmp:
        source = build()
        source.init_weights()
        state = {k: v.contiguous() for k, v in source.state_dict().items()}
        n = sum(p.numel() for p in source.parameters())
        st_path, pth_path = f"{tmp}/model.safetensors", f"{tmp}/model.pth"
        save_file(state, st_path)
        torch.save(state, pth_path)
        del source, state
        for path in (st_path, pth_path):  # warm the page cache
            Path(path).read_bytes()
        console.log(f"model: {n / 1e6:.1f} M parameters, {n * 4 / 1e9:.2f} GB")

        def ours() -> torch.nn.Module:
            with weightinit.deferred():
                model = build()
            weightinit.load_checkpoint(model, st_path)
            return model

        def theirs() -> torch.nn.Module:
            from mmengine.runner import load_checkpoint as mm_load

            with contextlib.redirect_stdout(io.StringIO()):  # MMEngine prints each load
                model = build(mm.kit)
                model.init_weights()
                mm_load(model, pth_path, map_location="cpu")
            return model

        def resident(make: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                out = make()
                tensors = out.values() if isinstance(out, dict) else out.parameters()
                with torch.no_grad():
                    for t in tensors:
                        t.sum()
                return out
            return run

        check = ours()
        ref = load_file(st_path)
        for k, v in check.state_dict().items():
            if not torch.equal(v, ref[k]):
                raise SystemExit(f"weightinit loaded {k} wrongly")
        del check, ref

        results = {}
        for label, wrap in (("as returned", lambda f: f), ("resident", resident)):
            floor = median_time(wrap(lambda: load_file(st_path)), args.repeats)
            wi_time = median_time(wrap(ours), args.repeats)
            mm_time = None
            if mm is not None:
                try:
                    mm_time = median_time(wrap(theirs), args.repeats)
                except ImportError as exc:  # mmengine.runner needs optional packages
                    note = f"MMEngine's load_checkpoint is not importable ({exc})."
            console.log(f"{label}: floor {floor * 1e3:.0f} ms, weightinit {wi_time * 1e3:.0f} ms, "
                        f"MMEngine {ms(mm_time)} ms")
            results[label] = (floor, wi_time, mm_time)

    headers = ["Transformer", "params (M)", "measured", "floor ms", "weightinit ms",
               "MMEngine ms", "weightinit/floor (≤1.2x)", "MMEngine/weightinit (≥2x)"]
    rows = [[f"{args.depth}x{args.dim}", f"{n / 1e6:.1f}", label, ms(floor), ms(wi_time),
             ms(mm_time), ratio(wi_time, floor), ratio(mm_time, wi_time)]
            for label, (floor, wi_time, mm_time) in results.items()]
    notes = [f"torch {torch.__version__}, weightinit {weightinit.__version__}, "
             f"{torch.get_num_threads()} torch threads; medians of {args.repeats} rounds, page "
             "cache warm.",
             "weightinit = deferred build + load_checkpoint(model.safetensors); MMEngine = eager "
             "build + init_weights() + mmengine load_checkpoint(model.pth); floor = "
             "safetensors.torch.load_file alone."]
    if note:
        notes.append(note)
    if args.markdown:
        print(markdown_table(headers, rows))
        print()
        print("\n".join(f"- {line}" for line in notes))
    else:
        out = Console()
        out.print(rich_table("build + load pretrained", headers, rows))
        for line in notes:
            out.print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
