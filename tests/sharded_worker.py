"""One rank of the sharded-initialization tests (run as a script by tests/test_sharded.py).

    python sharded_worker.py RANK WORLD PORT OUT_DIR CHECKPOINT

Builds the test models deferred, shards them over a CPU ``gloo`` mesh
(FSDP2 ``fully_shard``, and DTensor placements set directly), initializes
them, and saves each rank's shards with their global offsets to
``OUT_DIR/rank{RANK}.pt`` for the test to compare with one process.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

import weightinit as wi
from gloo_ranks import join_gloo, leave, run_worker
from weightinit import compat
from weightinit.planning.layout import local_region, placement_splits

SEED = 2024

# Rules covering the random fills the issue names, plus constants and defaults.
RULES = [
    dict(type="Normal", layer="Linear", std=0.02, bias=0.1),
    dict(type="Kaiming", layer="Conv1d", mode="fan_in", distribution="uniform"),
    dict(type="TruncNormal", param="pos", std=0.5, a=-0.4, b=0.6),
    dict(type="Uniform", param="table.weight", a=-0.3, b=0.2),
    dict(type="Xavier", param="wide.weight", distribution="normal"),
    dict(type="Orthogonal", override=dict(name="square")),
    dict(type="Kaiming", override=dict(name="big"), distribution="normal", mode="fan_out"),
]


class Net(nn.Module):
    """Shapes chosen so shards are uneven and cross the 2**20-element seeding blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(37, 24)
        self.wide = nn.Linear(24, 101)
        self.big = nn.Linear(1500, 1001)  # 1.5 M elements: two seeding blocks
        self.square = nn.Linear(48, 48, bias=False)
        self.conv = nn.Conv1d(6, 9, 3)
        self.norm = nn.LayerNorm(24)
        self.plain = nn.Linear(16, 10)  # no rule: its constructor default, replayed
        self.pad = nn.Embedding(11, 8, padding_idx=3)  # default with a row zeroed
        self.pos = nn.Parameter(torch.zeros(7, 24))
        self.tiny = nn.Linear(3, 2)  # 2 rows over 3 ranks: one rank holds an empty shard

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.table(ids) + self.pos[: ids.shape[0]])
        return self.wide(h).sum()


class UserGate(wi.BaseModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(6, 4))

    def init_weights(self) -> None:
        nn.init.normal_(self.w)  # user code: torch's global generator


class WithUserCode(wi.BaseModule):
    def __init__(self) -> None:
        super().__init__(dict(type="Normal", layer="Linear", std=0.1))
        self.fc = nn.Linear(4, 6)
        self.gate = UserGate()


def build() -> Net:
    with wi.deferred():
        return Net()


def checkpoint_state() -> dict[str, torch.Tensor]:
    """What the pretrained test saves: every tensor of Net except ``pos`` and ``square``."""
    g = torch.Generator().manual_seed(7)
    net = Net()
    return {k: torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()
            if k not in ("pos", "square.weight")}


def shards(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.Tensor]]:
    from weightinit.planning.layout import is_sharded, local_region

    out = {}
    for name, p in model.named_parameters():
        if is_sharded(p):
            boxes = local_region(p, name).boxes  # one box: Shard and Replicate layouts
            offset = boxes[0].offset if boxes else tuple(0 for _ in p.shape)
            out[name] = (offset, p._local_tensor.detach().clone())
        else:
            out[name] = (tuple(0 for _ in p.shape), p.detach().clone())
    return out


def fsdp(model: nn.Module, mesh) -> nn.Module:
    fully_shard = compat.fully_shard_function()

    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def place(model: nn.Module, mesh, placement) -> nn.Module:
    """Every parameter as a DTensor laid out without FSDP: ``placement(dims)``."""
    distribute_tensor = compat.dtensor_module().distribute_tensor

    for module in model.modules():
        for attr, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[attr] = nn.Parameter(
                    distribute_tensor(p.data, mesh, [placement(p.dim())]),
                    requires_grad=p.requires_grad)
    return model


def main_cuda(rank: str, world: str, port: str, out_dir: str) -> None:
    """One rank per GPU (NCCL): FSDP2 over a CUDA mesh, shards saved to the CPU."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank, WORLD_SIZE=world)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.cuda.set_device(int(rank))
    dist.init_process_group("nccl")
    mesh = init_device_mesh("cuda", (int(world),))
    model = fsdp(build(), mesh)
    wi.initialize(model, RULES, seed=SEED)
    devices = {p._local_tensor.device.type for p in model.parameters()}
    results = {"fsdp": {k: (o, t.cpu()) for k, (o, t) in shards(model).items()},
               "devices": sorted(devices)}
    leave(out_dir, rank, results)


def main() -> None:
    if sys.argv[-1] == "cuda":
        return main_cuda(*sys.argv[1:5])
    rank, world, port, out_dir, checkpoint = sys.argv[1:6]
    from torch.distributed.device_mesh import init_device_mesh
    dt = compat.dtensor_module()
    Replicate, Shard = dt.Replicate, dt.Shard

    join_gloo(rank, world, port)
    mesh = init_device_mesh("cpu", (int(world),))
    results = {}

    model = fsdp(build(), mesh)
    wi.initialize(model, RULES, seed=SEED)
    results["fsdp"] = shards(model)
    results["fsdp_layout"] = {n: (placement_splits(p, n), [(b.offset, b.shape) for b in
                                                         local_region(p, n).boxes])
                              for n, p in model.named_parameters()}
    ids = torch.tensor([1, 5, 3, 36, 0])
    results["fsdp_forward"] = model(ids).detach()
    # Initializing an already materialized sharded model again writes its shards in place.
    wi.initialize(model, [dict(type="Constant", layer="Linear", val=0.5, bias=-1),
                          dict(type="Normal", param="pos", std=3.0)], seed=SEED + 1)
    results["again"] = shards(model)

    with torch.device("meta"):  # not deferred: defaults come from reset_parameters()
        model = fsdp(Net(), mesh)
    wi.initialize(model, RULES, seed=SEED)
    results["meta_reset"] = shards(model)

    model = place(build(), mesh, lambda dims: Shard(1) if dims > 1 else Replicate())
    wi.initialize(model, RULES, seed=SEED)
    results["shard1"] = shards(model)

    model = fsdp(build(), mesh)
    model.requires_grad_(True)
    report = wi.load_checkpoint(model, checkpoint, seed=SEED)
    wi.initialize(model, [dict(type="Constant", param="pos", val=0.25)], seed=SEED)
    results["pretrained"] = shards(model)
    results["pretrained_loaded"] = sorted(report.loaded)

    torch.manual_seed(100 + int(rank))  # ranks' global generators differ on purpose
    model = place(build(), mesh, lambda dims: Replicate())
    wi.initialize(model, RULES)  # no seed: rank 0 picks one for all
    results["replicated"] = shards(model)

    torch.manual_seed(200 + int(rank))
    with wi.deferred():
        model = WithUserCode()
    model = place(model, mesh, lambda dims: Replicate())
    model.init_weights()  # user code on replicated tensors, no seed: replicas must agree
    results["user_replicated"] = shards(model)

    # Mistakes: an error naming the tensor and the fix, and the model left on meta.
    dt = compat.dtensor_module()
    DTensor, Partial = dt.DTensor, dt.Partial

    errors = {}
    model = fsdp(build(), mesh)
    try:
        wi.initialize(model, [dict(type="LSUV", layer="Linear", input_shape=[2, 24])], seed=1)
    except wi.InitError as err:
        errors["lsuv"] = (type(err).__name__, str(err), model.wide.weight.device.type)
    model = fsdp(build(), mesh)
    try:
        wi.initialize(model, RULES, seed=1, device="cuda")
    except wi.InitError as err:
        errors["device"] = (type(err).__name__, str(err), model.wide.weight.device.type)
    model = build()
    model.square._parameters["weight"] = nn.Parameter(DTensor.from_local(
        torch.empty(48, 48, device="meta"), mesh, [Partial()], run_check=False))
    try:
        wi.initialize(model, RULES, seed=1)
    except wi.InitError as err:
        errors["partial"] = (type(err).__name__, str(err), model.wide.weight.device.type)
    results["errors"] = errors

    leave(out_dir, rank, results)


if __name__ == "__main__":
    run_worker(main)
