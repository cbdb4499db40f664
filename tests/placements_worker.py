"""One rank of tests/test_placements.py: every DTensor layout, on meshes of 1, 2 and 3 dims.

    python placements_worker.py RANK WORLD PORT OUT_DIR CHECKPOINT

Runs on 4 CPU ranks (``gloo``). Each layout (FSDP2 over tensor parallelism,
HSDP, FSDP2 on 4 ranks, a 3-D mesh, ``Shard(last dim)`` and a direct
``_StridedShard`` on a 1-D mesh) is combined with each way of writing
(elementwise rules, structured rules, replayed constructor defaults,
``reset_parameters()``, a checkpoint read). Rank 0 saves every parameter's
``full_tensor()`` to ``OUT_DIR/full.pt``; every rank saves its placements
and how many boxes its shards are made of to ``OUT_DIR/rank{RANK}.pt``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
import torch.nn as nn

import weightinit as wi
from gloo_ranks import four_rank_meshes, join_gloo, leave, run_worker
from weightinit import compat

SEED = 4242


class Net(nn.Module):
    """Sizes 5, 7, 3, 9 and 10 shard unevenly over 2 and 4 ranks; ``big`` crosses the
    2**20-element seeding blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 10)  # tensor parallel by columns: rows split
        self.down = nn.Linear(10, 7)  # tensor parallel by rows: columns split
        self.big = nn.Linear(1030, 1022)  # by columns
        self.eye = nn.Linear(5, 7, bias=False)  # by columns
        self.orth = nn.Linear(9, 5, bias=False)  # by rows
        self.conv = nn.Conv1d(3, 5, 3)
        self.norm = nn.LayerNorm(7)
        self.emb = nn.Embedding(5, 3)
        self.pos = nn.Parameter(torch.zeros(3, 5))


#: one rule of every elementwise kind the issue names
ELEMENTWISE = [
    dict(type="Normal", layer="Linear", std=0.02, bias=0.1),
    dict(type="TruncNormal", override=dict(name="big"), std=0.5, a=-0.4, b=0.6, bias=-0.2),
    dict(type="Xavier", override=dict(name="down"), distribution="uniform"),
    dict(type="Kaiming", layer="Conv1d", mode="fan_in", distribution="uniform"),
    dict(type="Uniform", param="emb.weight", a=-0.3, b=0.2),
    dict(type="Constant", layer="LayerNorm", val=1.5, bias=-0.5),
    dict(type="Normal", param="pos", std=2.0),
]
#: whole-tensor rules (the rest: replayed constructor defaults)
STRUCTURED = [
    dict(type="Eye", override=dict(name="eye")),
    dict(type="Orthogonal", override=dict(name="orth")),
    dict(type="Dirac", layer="Conv1d"),
]
#: the rest from the constructors (deferred) or reset_parameters() (meta)
DEFAULTS = [dict(type="TruncNormal", param="pos", std=0.3)]
#: keys of Net the checkpoint leaves out (they get their defaults)
NOT_IN_CHECKPOINT = ("pos", "orth.weight")

TP_PLAN = {"up": "col", "down": "row", "big": "col", "eye": "col", "orth": "row"}


def checkpoint_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {k: torch.randn(v.shape, generator=g) for k, v in Net().state_dict().items()
            if k not in NOT_IN_CHECKPOINT}


def build(kind: str) -> nn.Module:
    """A model on meta: recorded constructors (deferred) or plain ``torch.device('meta')``."""
    if kind == "meta":
        with torch.device("meta"):
            return Net()
    with wi.deferred():
        return Net()


def init(model: nn.Module, kind: str, checkpoint: str) -> wi.InitRecord | None:
    if kind == "checkpoint":
        return wi.load_checkpoint(model, checkpoint, seed=SEED)
    rules = {"elementwise": ELEMENTWISE, "structured": STRUCTURED}.get(kind, DEFAULTS)
    return wi.initialize(model, rules, seed=SEED)


def place(model: nn.Module, mesh, placements: Callable[[nn.Parameter], list]) -> nn.Module:
    """Every parameter a DTensor laid out directly (torch splits it, no communication)."""
    distribute_tensor = compat.dtensor_module().distribute_tensor
    for module in model.modules():
        for attr, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[attr] = nn.Parameter(
                    distribute_tensor(p.data, mesh, placements(p), src_data_rank=None),
                    requires_grad=p.requires_grad)
    return model


def layouts(meshes: dict) -> dict[str, Callable[[nn.Module], nn.Module]]:
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )
    from torch.distributed.tensor.placement_types import _StridedShard

    dt = compat.dtensor_module()
    Shard, Replicate = dt.Shard, dt.Replicate
    fully_shard = compat.fully_shard_function()

    def tp_fsdp(model: nn.Module) -> nn.Module:  # torchtitan's 2-D layout
        mesh = meshes["dp_tp"]
        plan = {k: ColwiseParallel() if v == "col" else RowwiseParallel()
                for k, v in TP_PLAN.items()}
        parallelize_module(model, mesh["tp"], plan)
        fully_shard(model, mesh=mesh["dp"])
        return model

    def hsdp(model: nn.Module) -> nn.Module:  # replicate x shard
        fully_shard(model, mesh=meshes["hsdp"])
        return model

    def fsdp4(model: nn.Module) -> nn.Module:
        fully_shard(model, mesh=meshes["flat"])
        return model

    def mesh3d(model: nn.Module) -> nn.Module:  # (2, 1, 2): a 2x2 tiling, or 4 rows deep
        return place(model, meshes["3d"], lambda p: [Shard(1), Replicate(), Shard(0)]
                     if p.dim() > 1 else [Shard(0), Shard(0), Shard(0)])

    def shard_last(model: nn.Module) -> nn.Module:
        return place(model, meshes["flat"], lambda p: [Shard(p.dim() - 1)])

    def strided(model: nn.Module) -> nn.Module:  # several boxes per rank
        return place(model, meshes["flat"], lambda p: [
            _StridedShard(2 if p.dim() == 3 else 0, split_factor=2)])

    return dict(tp_fsdp=tp_fsdp, hsdp=hsdp, fsdp4=fsdp4, mesh3d=mesh3d, shard_last=shard_last,
                strided=strided)


def partial_error(meshes: dict) -> tuple[str, str, bool]:
    """A Partial placement: refused while planning, nothing allocated."""
    dt = compat.dtensor_module()
    model = build("deferred")
    mesh = meshes["dp_tp"]
    local = torch.empty(4 if mesh.get_coordinate()[0] == 0 else 3, 10, device="meta")
    model.down._parameters["weight"] = nn.Parameter(dt.DTensor.from_local(
        local, mesh, [dt.Shard(0), dt.Partial()], run_check=False, shape=(7, 10),
        stride=(10, 1)))
    try:
        wi.initialize(model, ELEMENTWISE, seed=SEED)
    except wi.InitError as err:
        untouched = all(p.device.type == "meta" for p in model.parameters())
        return type(err).__name__, str(err), untouched
    return "none", "", False


def main() -> None:
    rank, world, port, out_dir, checkpoint = sys.argv[1:6]
    from weightinit.execution import tiles
    from weightinit.planning.layout import local_region, placement_splits

    join_gloo(rank, world, port)
    meshes = four_rank_meshes()
    full: dict[str, dict[str, torch.Tensor]] = {}
    mine: dict[str, dict] = {"placements": {}, "boxes": {}}
    drawn = [0]  # elements of random tiles drawn since the last model (weightinit.plan's count)
    draw = tiles.RegionFill.draw

    def counting(self, index, first, end, scratch=None):
        if self.dist.random:
            drawn[0] += math.prod(e - f for f, e in zip(first, end))
        return draw(self, index, first, end, scratch)

    tiles.RegionFill.draw = counting
    for layout, apply in layouts(meshes).items():
        for kind in ("elementwise", "structured", "deferred", "meta", "checkpoint"):
            model = apply(build("meta" if kind == "meta" else "deferred"))
            record = init(model, kind, checkpoint)
            if kind == "structured" and record is not None:
                mine.setdefault("info", {})[layout] = {r.name: r.info for r in record}
            if kind == "elementwise":
                mine.setdefault("regions", {})[layout] = {
                    n: [(b.offset, b.shape) for b in local_region(p, n).boxes]
                    for n, p in model.named_parameters()}
                mine.setdefault("drawn", {})[layout] = drawn[0]
                mine.setdefault("splits", {})[layout] = {
                    n: placement_splits(p, n) for n, p in model.named_parameters()}
            drawn[0] = 0
            gathered = {name: p.full_tensor().detach() for name, p in model.named_parameters()}
            if rank == "0":
                full[f"{layout}/{kind}"] = gathered
            if kind == "elementwise":
                mine["placements"][layout] = {n: str(p.placements)
                                              for n, p in model.named_parameters()}
                mine["boxes"][layout] = {n: len(local_region(p, n).boxes)
                                         for n, p in model.named_parameters()}
    mine["partial"] = partial_error(meshes)
    leave(out_dir, rank, mine, full)


if __name__ == "__main__":
    run_worker(main)
