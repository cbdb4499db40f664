"""One rank of tests/test_user_draws.py: users' own init code on every DTensor layout.

    python userdraws_worker.py RANK WORLD PORT OUT_DIR UNUSED

Runs on 4 CPU ranks (``gloo``). For each layout of tests/placements_worker.py
and each user init function of :data:`FUNCTIONS`, builds the model (deferred, or
on ``meta`` as torchtitan does), lays it out, and runs the function with
``weightinit.run(..., seed=SEED)``. Rank 0 saves every parameter's
``full_tensor()`` to ``OUT_DIR/full.pt``; every rank saves the record's
``layout_dependent`` notes to ``OUT_DIR/rank{RANK}.pt``.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import torch
import torch.nn as nn

import weightinit as wi

sys.path.insert(0, os.path.dirname(__file__))
from gloo_ranks import four_rank_meshes, join_gloo, leave, run_worker  # noqa: E402
from placements_worker import build, layouts  # noqa: E402

SEED = 77


def titan_like(model: nn.Module) -> None:
    """torchtitan's way: trunc_normal_ (tight bounds on one: redraws through temporaries),
    zeros_, ones_, normal_ on the embedding, a uniform fill through .data."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            std = 0.02 if name != "big" else 0.5
            bound = 3 * std if name == "big" else 2.0
            nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-bound, b=bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight)
        elif isinstance(m, nn.Conv1d):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            m.bias.data.uniform_(-0.1, 0.1)
    nn.init.xavier_normal_(model.pos)


def hf_like(model: nn.Module) -> None:
    """Hugging Face's _init_weights: .data.normal_, .data.zero_, fill_, two fills of one."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            m.weight.data.normal_(mean=0.0, std=0.02)
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.Embedding):
            m.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            m.bias.data.zero_()
            m.weight.data.fill_(1.0)
    model.up.weight.data.uniform_(-1, 1)  # a second fill of one parameter
    with torch.no_grad():
        model.down.weight.mul_(0.5)  # elementwise on a drawn fill: still layout-invariant
        model.pos.normal_(0, 1)


def threaded(model: nn.Module) -> None:
    """Fills from threads the user code starts."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    workers = [threading.Thread(target=nn.init.normal_, args=(m.weight,), kwargs=dict(std=0.1))
               for m in linears]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def dependent(model: nn.Module) -> None:
    """Values that depend on the layout: a reduction read back, an explicit generator."""
    nn.init.normal_(model.up.weight)
    with torch.no_grad():
        model.up.weight.div_(model.up.weight.norm())
    g = torch.Generator().manual_seed(0)
    nn.init.normal_(model.big.weight, generator=g)


def relayout(model: nn.Module) -> None:
    """The layout changes between planning and writing: user code replaces a parameter with
    one laid out otherwise (replicated; a plain tensor in one process), then fills it."""
    w = model.down.weight
    if hasattr(w, "device_mesh"):
        from weightinit import compat

        dt = compat.dtensor_module()
        value = dt.distribute_tensor(torch.zeros(w.shape), w.device_mesh,
                                     [dt.Replicate()] * w.device_mesh.ndim)
    else:
        value = torch.zeros(w.shape)
    model.down.weight = nn.Parameter(value)
    nn.init.normal_(model.down.weight, std=0.5)
    nn.init.uniform_(model.up.weight)


FUNCTIONS = {"titan_like": titan_like, "hf_like": hf_like, "threaded": threaded,
             "dependent": dependent, "relayout": relayout}
#: (function, how the model is built) pairs each layout runs
CASES = [("titan_like", "meta"), ("titan_like", "deferred"), ("hf_like", "deferred"),
         ("threaded", "deferred"), ("dependent", "deferred"), ("relayout", "deferred")]


def fails_on_rank_1(model: nn.Module) -> None:
    """Writes, then raises on rank 1 only (no collective in between)."""
    nn.init.normal_(model.up.weight)
    nn.init.zeros_(model.down.bias)
    if int(os.environ["RANK"]) == 1:
        raise RuntimeError("rank 1 gives up")


def failure(apply) -> dict:
    """One rank's user code fails half-way: what each rank raised, and whether its model is
    back where it was (deferred: on meta)."""
    model = apply(build("deferred"))
    try:
        wi.run(model, fails_on_rank_1, model, seed=SEED)
    except Exception as err:  # (each rank reports what it got)
        error = (type(err).__name__, str(err))
    else:
        error = ("none", "")
    return dict(error=error, restored=all(p.device.type == "meta" for p in model.parameters()))


def run_one(model: nn.Module, function: str) -> wi.InitRecord:
    if function == "own_init_weights":  # the model's own init code, called by its name
        return wi.run(model, model.init_weights, seed=SEED)
    return wi.run(model, FUNCTIONS[function], model, seed=SEED)


def hf_llama() -> nn.Module | None:
    """A small transformers Llama built under deferred(), or None without transformers."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    cfg = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=130,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=False)
    with wi.deferred():
        return LlamaForCausalLM(cfg)


def hf_tp_fsdp(model: nn.Module, mesh) -> nn.Module:
    """torchtitan's layout on a transformers Llama: attention and MLP projections tensor
    parallel (q/k/v, gate/up by columns; o, down by rows), the embedding by rows, then
    FSDP2 on the data-parallel dimension."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    from weightinit import compat

    plan = {"model.embed_tokens": RowwiseParallel(), "lm_head": ColwiseParallel()}
    for i in range(len(model.model.layers)):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "mlp.gate_proj", "mlp.up_proj"):
            plan[f"model.layers.{i}.{name}"] = ColwiseParallel()
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            plan[f"model.layers.{i}.{name}"] = RowwiseParallel()
    parallelize_module(model, mesh["tp"], plan)
    fully_shard = compat.fully_shard_function()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model


def main() -> None:
    rank, world, port, out_dir = sys.argv[1:5]
    join_gloo(rank, world, port)
    meshes = four_rank_meshes()
    full: dict[str, dict[str, torch.Tensor]] = {}
    notes: dict[str, dict[str, str | None]] = {}
    for layout, apply in layouts(meshes).items():
        for function, kind in CASES:
            model = apply(build(kind))
            record = run_one(model, function)
            notes[f"{layout}/{function}/{kind}"] = {r.name: r.layout_dependent for r in record}
            gathered = {name: p.full_tensor().detach() for name, p in model.named_parameters()}
            if rank == "0":
                full[f"{layout}/{function}/{kind}"] = gathered
    notes["failure"] = failure(layouts(meshes)["tp_fsdp"])  # type: ignore[assignment]
    model = hf_llama()
    if model is not None:
        record = run_one(hf_tp_fsdp(model, meshes["dp_tp"]), "own_init_weights")
        notes["hf/own_init_weights"] = {r.name: r.layout_dependent for r in record}
        gathered = {name: p.full_tensor().detach() for name, p in model.named_parameters()}
        if rank == "0":
            full["hf/own_init_weights"] = gathered
    leave(out_dir, rank, notes, full)


if __name__ == "__main__":
    run_worker(main)
