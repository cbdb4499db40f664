"""One rank of tests/torchtitan/test_llama3.py: torchtitan's Llama 3 ``debugmodel``, laid out
by torchtitan's own ``parallelize_llama``, initialized by its own ``init_weights`` through
``weightinit.run``.

    python llama3_worker.py RANK WORLD PORT OUT_DIR CASES

Runs on 4 CPU ranks (``gloo``). ``CASES`` is a comma-separated list of ``LAYOUT:START``
(:data:`LAYOUTS`, :data:`STARTS`). For each case the model is built on ``meta`` as
torchtitan's trainer builds it, laid out on the layout's (data parallel, tensor parallel)
mesh, and initialized with ``weightinit.run(model, model.init_weights,
buffer_device=cpu, seed=SEED)``. Rank 0 saves every parameter's and buffer's full tensor
(DTensors gathered) to ``OUT_DIR/full.pt``; every rank saves, per case, its record's
``layout_dependent`` notes and kinds, or the error the run raised, to ``OUT_DIR/rank{RANK}.pt``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

import weightinit as wi
from gloo_ranks import join_gloo, leave, run_worker

SEED = 0
FLAVOR = "debugmodel"
#: layout -> (data-parallel shard degree, tensor-parallel degree) over the 4 ranks (torchtitan
#: applies fully_shard in every layout, on a one-rank data-parallel mesh for "tp")
LAYOUTS = {"tp_fsdp": (2, 2), "tp": (1, 4), "fsdp": (4, 1)}
#: how the run starts: ``to_empty`` as torchtitan's trainer does (the parallelized model
#: moved to the CPU uninitialized, then ``init_weights``), or ``meta`` (the parallelized
#: model still on meta, materialized by weightinit.run)
STARTS = ("to_empty", "meta")


def trainer_config(dp: int = 1, tp: int = 1):
    """torchtitan's trainer config with the given degrees; every other feature off.

    ``spmd_backend="partial_dtensor"``: DTensor for the tensor-parallel dimension, FSDP2 for
    the data-parallel one. torchtitan 0.3's other two backends do not lay the model out
    with this torch (``fully_shard`` rejects their parameters).
    """
    from torchtitan.config import ParallelismConfig
    from torchtitan.trainer import Trainer

    parallelism = ParallelismConfig(data_parallel_shard_degree=dp, tensor_parallel_degree=tp,
                                    spmd_backend="partial_dtensor")
    return Trainer.Config(parallelism=parallelism)


def build(config=None) -> tuple[nn.Module, object]:
    """The debugmodel on ``meta`` as torchtitan's trainer builds it: its registered config,
    updated from the trainer config (sharding declarations, RoPE cache length), then built
    under ``torch.device("meta")``. Returns the model and its ``ModelSpec``."""
    from torchtitan.models.llama3 import model_registry

    spec = model_registry(FLAVOR)
    spec.model.update_from_config(config=config if config is not None else trainer_config())
    with torch.device("meta"):
        model = spec.model.build()
    model.verify_module_protocol()
    return model, spec


def initialize(model: nn.Module, start: str) -> wi.InitRecord:
    """The model's own init code, in one weightinit run (after ``to_empty`` for that start)."""
    if start == "to_empty":
        model.to_empty(device="cpu")
    return wi.run(model, model.init_weights, buffer_device=torch.device("cpu"), seed=SEED)


def parallelize(layout: str, world: int) -> nn.Module:
    """The debugmodel laid out by torchtitan's ``parallelize_llama`` on the layout's mesh:
    its tensor-parallel plan (attention and feed-forward projections by columns then rows,
    embeddings and output by rows, sequence parallel as by default), then ``fully_shard`` on
    the data-parallel dimension; no compile, no float8, no activation checkpointing."""
    import torchtitan.distributed.parallel_dims as parallel_dims_module
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed import utils as dist_utils

    # without an accelerator torchtitan still names "cuda" as its device type
    parallel_dims_module.device_type = "cpu"
    dp, tp = LAYOUTS[layout]
    config = trainer_config(dp, tp)
    dist_utils.set_spmd_backend(config.parallelism.spmd_backend)
    parallel_dims = ParallelDims.from_config(config.parallelism, world)
    model, spec = build(config)
    return spec.parallelize_fn(model, parallel_dims=parallel_dims, training=config.training,
                               parallelism=config.parallelism, compile_config=config.compile,
                               ac_config=None, dump_folder="")


def gathered(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as one full tensor (DTensors gathered)."""
    from torch.distributed.tensor import DTensor

    return {name: (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu()
            for name, t in [*model.named_parameters(), *model.named_buffers()]}


def summary(record: wi.InitRecord) -> dict[str, dict[str, str | None]]:
    return dict(layout_dependent={r.name: r.layout_dependent for r in record},
                kind={r.name: r.kind for r in record})


def main() -> None:
    rank, world, port, out_dir, cases = sys.argv[1:6]
    join_gloo(rank, world, port)
    full: dict[str, dict[str, torch.Tensor]] = {}
    results: dict[str, dict] = {}
    for case in cases.split(","):
        layout, start = case.split(":")
        model = parallelize(layout, int(world))
        try:  # a sharded run fails on every rank together (and restores the model)
            record = initialize(model, start)
        except Exception as err:
            results[case] = dict(error=f"{type(err).__name__}: {err}")
            continue
        results[case] = dict(error=None, **summary(record))
        tensors = gathered(model)
        if rank == "0":
            full[case] = tensors
    leave(out_dir, rank, results, full)


if __name__ == "__main__":
    run_worker(main)
