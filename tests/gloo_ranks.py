"""Start a worker script as N gloo ranks on 127.0.0.1 (for the multi-process tests), and what
every worker does: join the others, make the meshes, save its results and leave."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Path, world: int, out: Path, checkpoint: Path, timeout_s: float) -> None:
    """Run ``worker RANK WORLD PORT OUT CHECKPOINT`` for every rank and wait (bounded); a new
    port if another process took the free one meanwhile. Fails with the failing rank's log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    for _attempt in range(3):
        port = str(free_port())
        procs = [subprocess.Popen([sys.executable, str(worker), str(r), str(world), port,
                                   str(out), str(checkpoint)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r in range(world)]
        logs = []
        try:
            for p in procs:
                logs.append(p.communicate(timeout=timeout_s)[0])
        finally:
            for p in procs:
                p.kill()
        if not any("EADDRINUSE" in log or "address already in use" in log.lower()
                   for log in logs):
            break
    failed = [r for r, p in enumerate(procs) if p.returncode != 0]
    # every failed rank's log: the first one in rank order may only report a peer's crash
    assert not failed, "\n".join(f"rank {r} failed (exit {procs[r].returncode}):\n"
                                  f"{logs[r][-3000:]}" for r in failed)


def join_gloo(rank: str, world: str, port: str, timeout_s: float = 90) -> None:
    """In a worker: join the other ranks on 127.0.0.1 with gloo. A rank that fails ends the
    others' collectives after ``timeout_s``, not after gloo's 30 minutes."""
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank, WORLD_SIZE=world)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))


def four_rank_meshes() -> dict:
    """The meshes the 4-rank layout tests use: (dp, tp) and (replicate, shard) of 2 x 2, a flat
    mesh of 4 and a (2, 1, 2) one."""
    from torch.distributed.device_mesh import init_device_mesh

    return dict(dp_tp=init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp")),
                hsdp=init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard")),
                flat=init_device_mesh("cpu", (4,)),
                **{"3d": init_device_mesh("cpu", (2, 1, 2))})


def leave(out_dir: str, rank: str, mine: object, full: object = None) -> None:
    """Save this rank's results (``rank{R}.pt``) and rank 0's gathered tensors (``full.pt``),
    then wait for the others and leave the group."""
    import torch
    import torch.distributed as dist

    torch.save(mine, os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == "0" and full is not None:
        torch.save(full, os.path.join(out_dir, "full.pt"))
    dist.barrier()
    dist.destroy_process_group()


def run_worker(main) -> None:
    """Run a worker's ``main`` and exit without interpreter teardown (gloo's threads may abort
    it after the work is done)."""
    main()
    sys.stdout.flush()
    os._exit(0)
