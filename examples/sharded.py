"""Initialize a sharded (FSDP2) Llama-style decoder shard by shard, and check it.

Run it as is (it starts two CPU ranks with torchrun itself), or under your
own launcher::

    python examples/sharded.py                      # 2 ranks, gloo, CPU
    python examples/sharded.py --ranks 3 --size tiny
    torchrun --nproc-per-node 2 examples/sharded.py

Each rank builds the model on ``meta`` (no storage), shards it with
``fully_shard``, and ``init_weights(seed=...)`` allocates and writes only
that rank's shards. Rank 0 then gathers every parameter and compares it
with the same model initialized whole in one process: they are identical.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="ranks to start (default 2)")
    parser.add_argument("--size", default="tiny", help="llama size (tiny, 1b, 7b, 70b)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if "RANK" not in os.environ:  # not under a launcher: start the ranks
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={args.ranks}", __file__, *sys.argv[1:]]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        return subprocess.call(cmd, env=env)

    import torch.distributed as dist
    from models import llama
    from torch.distributed.device_mesh import init_device_mesh

    import weightinit as wi
    from weightinit.compat import fully_shard_function

    fully_shard = fully_shard_function()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))

    with wi.deferred():
        model = llama(size=args.size)  # parameters on meta: nothing allocated yet
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.init_weights(seed=args.seed)  # each rank allocates and writes its shards only

    mine = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    held: list = [None] * world
    dist.all_gather_object(held, mine)
    if rank == 0:
        for r, n in enumerate(held):
            print(f"rank {r}/{world}: holds {n:,} of {total:,} parameter elements")

    full = {name: p.full_tensor() for name, p in model.named_parameters()}  # all-gather
    differ = []
    if rank == 0:
        with wi.deferred():
            reference = llama(size=args.size)
        reference.init_weights(seed=args.seed)  # the same model, whole, in one process
        differ = [name for name, p in reference.named_parameters()
                  if not torch.equal(p.detach(), full[name])]
        if differ:
            print(f"MISMATCH in {len(differ)} parameters: {', '.join(differ[:5])}")
        else:
            print(f"all {len(full)} parameters identical to a single-process init "
                  f"(seed={args.seed})")
    dist.barrier()
    dist.destroy_process_group()
    return 0 if rank or not differ else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown: gloo's threads may abort it after the work
