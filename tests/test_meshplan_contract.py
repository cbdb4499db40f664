"""The plan is a contract: what ``weightinit.plan(mesh=...)`` says each rank does, a real run does.

Four gloo ranks (``meshplan_worker.py``) lay the bundled Llama out as FSDP2
over tensor parallelism on a (dp, tp) = (2, 2) mesh with a real
``parallelize_module`` plan, and initialize it from rules and a safetensors
checkpoint that holds part of it. The same plan object goes to
``weightinit.plan``, in this one process, without ranks. Elements drawn,
checkpoint bytes read and bytes held must agree exactly; the peak of the
init's tensor memory within 10 % (the plan counts the largest temporary; the
ranks measure it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

import meshplan_worker as worker
import weightinit as wi
from gloo_ranks import run_ranks
from weightinit import compat
from weightinit.planning.meshplan import RankClass

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
if not compat.has_cpu_fsdp2():
    pytest.skip(f"torch {torch.__version__}: FSDP2 on a CPU mesh needs torch >= 2.6",
                allow_module_level=True)
pytest.importorskip("torch.distributed.tensor.parallel")
if not Path("/proc/self/status").exists():
    pytest.skip("measuring the ranks needs Linux", allow_module_level=True)

WORKER = Path(__file__).with_name("meshplan_worker.py")
WORLD = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "part.safetensors"
    safetensors.torch.save_file(worker.checkpoint_state(), str(path))
    return path


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, checkpoint) -> list[dict]:
    out = tmp_path_factory.mktemp("contract")
    run_ranks(WORKER, WORLD, out, checkpoint, 180)
    full = torch.load(out / "full.pt", weights_only=True)
    return [dict(torch.load(out / f"rank{r}.pt", weights_only=True), full=full)
            for r in range(WORLD)]


@pytest.fixture(scope="module")
def planned(checkpoint) -> dict[int, RankClass]:
    """Rank -> its class in the plan (ranks run one fill thread each: OMP_NUM_THREADS=1)."""
    with pytest.MonkeyPatch.context() as mp, pytest.warns(wi.CheckpointKeysWarning):
        mp.setenv("WEIGHTINIT_NUM_THREADS", "1")
        plan = wi.plan(worker.build(), worker.init_cfg(str(checkpoint)), mesh=worker.MESH,
                       tp_plan=worker.tp_plan())
    return {r: c for c in plan.ranks.classes for r in c.ranks}


def test_every_rank_is_in_the_plan_once(planned):
    assert sorted(planned) == list(range(WORLD))


@pytest.mark.parametrize("rank", range(WORLD))
def test_elements_drawn_bytes_read_and_held_are_what_the_plan_says(ranks, planned, rank):
    measured, plan = ranks[rank], planned[rank]
    assert measured["drawn"] == plan.drawn_elements
    assert measured["read"] == plan.read_bytes
    assert measured["held"] == sum(plan.local_bytes.values())
    assert plan.read_bytes > 0 and plan.drawn_elements > 0  # both kinds of write took place


@pytest.mark.parametrize("rank", range(WORLD))
def test_the_peak_of_the_init_is_within_ten_percent_of_the_plan(ranks, planned, rank):
    measured, plan = ranks[rank]["peak"], planned[rank].peak_bytes
    assert planned[rank].temp_bytes > 0
    assert abs(measured - plan) <= 0.1 * plan, (measured, plan)
    assert measured >= ranks[rank]["held"]  # it did hold its shards


def test_the_measured_run_wrote_what_one_process_writes(ranks, checkpoint):
    with pytest.warns(wi.CheckpointKeysWarning):
        one = worker.build()
        wi.initialize(one, worker.init_cfg(str(checkpoint)), seed=worker.SEED)
    full = ranks[0]["full"]
    assert sorted(full) == sorted(n for n, _ in one.named_parameters())
    for name, p in one.named_parameters():
        assert torch.equal(full[name], p.detach()), name
