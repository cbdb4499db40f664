"""One rank of the plan-contract test (tests/test_meshplan_contract.py).

    python meshplan_worker.py RANK WORLD PORT OUT_DIR CHECKPOINT

Four CPU ranks (``gloo``) lay the bundled Llama (examples/models.py) out as
FSDP2 over tensor parallelism on a (dp, tp) = (2, 2) mesh — the
tensor-parallel plan is a real ``parallelize_module`` plan of
``ColwiseParallel``/``RowwiseParallel`` objects, the one the test hands to
``weightinit.plan`` — and initialize it with :data:`INIT_CFG` (rules, and a
safetensors checkpoint holding part of the model). Each rank measures, during
``initialize`` only: the elements of random tiles it drew, the checkpoint bytes
it read (every tensor the checkpoint reader returned), and the peak growth of
the bytes of tensors allocated on the CPU (torch's profiler's allocation
events: the CPU's ``torch.cuda.max_memory_allocated``). Not the process's
resident set: that also counts the checkpoint's mapped pages (the kernel maps
pages around each one read) and the library code first run, neither of which
is memory the init holds.
"""

from __future__ import annotations

import gc
import math
import os
import sys
from pathlib import Path

import torch

import weightinit as wi

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from models import llama  # noqa: E402

from gloo_ranks import join_gloo, leave, run_worker  # noqa: E402

#: the bundled Llama's modules at one width: 2 decoder layers, vocabulary = model = MLP width
WIDTH = 1536
SEED = 3
MESH = "dp=2,tp=2"


def init_cfg(checkpoint: str) -> list[dict]:
    return [dict(type="Normal", std=0.02, layer=["Linear", "Embedding"]),
            dict(type="Ones", param="*norm.weight"),
            dict(type="Pretrained", checkpoint=checkpoint)]


def build() -> torch.nn.Module:
    with wi.deferred():
        return llama(size="tiny", width=WIDTH)


def checkpoint_state() -> dict[str, torch.Tensor]:
    """Part of the model: the embedding and the first decoder layer's attention (bf16, so a
    read converts)."""
    g = torch.Generator().manual_seed(1)
    return {name: torch.randn(p.shape, generator=g).to(torch.bfloat16)
            for name, p in llama(size="tiny", width=WIDTH).named_parameters()
            if name == "embed.weight" or name.startswith("layers.0.") and "_proj" in name
            and name.split(".")[2][0] in "qkvo"}


def tp_plan() -> dict:
    """A parallelize_module plan for the bundled Llama, as a user writes it."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan: dict = {"embed": RowwiseParallel(), "lm_head": ColwiseParallel()}
    for name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
        plan[f"layers.*.{name}"] = ColwiseParallel()
    for name in ("o_proj", "down_proj"):
        plan[f"layers.*.{name}"] = RowwiseParallel()
    return plan


def _events(events):
    for e in events:
        yield e
        yield from _events(e.children)


def tensor_peak(prof) -> int:
    """Peak growth of the bytes of tensors allocated on the CPU while profiling (the CPU's
    ``torch.cuda.max_memory_allocated``), from the profiler's allocation events."""
    from torch._C._profiler import _EventType

    allocs = sorted((e.start_time_ns, e.typed[1].total_allocated)
                    for e in _events(prof.profiler.kineto_results.experimental_event_tree())
                    if e.typed[0] == _EventType.Allocation and e.typed[1].device.type == "cpu")
    return max((total for _, total in allocs), default=0)


def main() -> None:
    rank, world, port, out_dir, checkpoint = sys.argv[1:6]
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module
    from torch.profiler import ProfilerActivity, profile

    from weightinit.checkpoint.loader import CheckpointState
    from weightinit.compat import fully_shard_function
    from weightinit.execution import tiles

    join_gloo(rank, world, port)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    fully_shard = fully_shard_function()
    counts = dict(drawn=0, read=0)
    draw, get, get_slice = tiles.RegionFill.draw, CheckpointState.get, CheckpointState.get_slice

    def counting_draw(self, index, first, end, scratch=None):
        if self.dist.random:
            counts["drawn"] += math.prod(e - f for f, e in zip(first, end))
        return draw(self, index, first, end, scratch)

    def counting_get(self, key):
        out = get(self, key)
        counts["read"] += out.numel() * out.element_size()
        return out

    def counting_slice(self, key, index):
        out = get_slice(self, key, index)
        counts["read"] += out.numel() * out.element_size()
        return out

    model = build()
    parallelize_module(model, mesh["tp"], tp_plan())
    for layer in model.layers:
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    tiles.RegionFill.draw = counting_draw
    CheckpointState.get, CheckpointState.get_slice = counting_get, counting_slice
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        wi.initialize(model, init_cfg(checkpoint), seed=SEED)
    peak = tensor_peak(prof)
    held = sum(p.to_local().numel() * p.to_local().element_size() for p in model.parameters())
    mine = dict(counts, peak=peak, held=held)
    full = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
    leave(out_dir, rank, mine, full)


if __name__ == "__main__":
    run_worker(main)
