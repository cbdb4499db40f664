"""SPEC B6 (second part): sharded initialization equals one process, shard by shard.

Each world size starts its ranks once (``sharded_worker.py``, CPU ``gloo``
on 127.0.0.1, bounded in time); the tests compare every rank's shards with
the same model initialized in this process.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn as nn

import sharded_worker as worker
import weightinit as wi
from gloo_ranks import run_ranks
from weightinit import compat
from weightinit import maths as F
from weightinit.execution.seeding import fill_elementwise
from weightinit.execution.tiles import TILE
from weightinit.planning.meshplan import layout_splits
from weightinit.planning.regions import compute_region

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
if not compat.has_cpu_fsdp2():
    pytest.skip(f"torch {torch.__version__}: FSDP2 on a CPU mesh needs torch >= 2.6",
                allow_module_level=True)

WORKER = Path(__file__).with_name("sharded_worker.py")
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "net.safetensors"
    safetensors.torch.save_file(worker.checkpoint_state(), str(path))
    return path


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def ranks(request, tmp_path_factory, checkpoint) -> list[dict]:
    world = request.param
    out = tmp_path_factory.mktemp(f"world{world}")
    run_ranks(WORKER, world, out, checkpoint, TIMEOUT_S)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _reference(rules=worker.RULES) -> nn.Module:
    # The ranks run with one thread each; so does the reference, because the QR
    # behind Orthogonal may differ in the last bit with the number of BLAS threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = worker.build()
        wi.initialize(model, rules, seed=worker.SEED)
    finally:
        torch.set_num_threads(threads)
    return model


def _assert_shards_equal(full: dict, shards: dict, world_label: str) -> None:
    for name, (offset, local) in shards.items():
        index = tuple(slice(o, o + n) for o, n in zip(offset, local.shape))
        assert torch.equal(full[name].detach()[index], local), f"{name} {world_label}"


def _gather(ranks: list[dict], scenario: str) -> dict[str, torch.Tensor]:
    """Reassemble whole tensors from the ranks' shards (NaN where no rank wrote)."""
    parts: dict[str, list] = {}
    for result in ranks:
        for name, (offset, local) in result[scenario].items():
            parts.setdefault(name, []).append((offset, local))
    whole = {}
    for name, pieces in parts.items():
        dims = range(pieces[0][1].dim())
        shape = [max(offset[d] + local.shape[d] for offset, local in pieces) for d in dims]
        full = torch.full(shape, float("nan"))
        for offset, local in pieces:
            full[tuple(slice(o, o + n) for o, n in zip(offset, local.shape))] = local
        whole[name] = full
    return whole


def test_fsdp2_shards_equal_single_process(ranks):
    reference = dict(_reference().named_parameters())
    for r, result in enumerate(ranks):
        _assert_shards_equal(reference, result["fsdp"], f"rank {r}/{len(ranks)}")
    gathered = _gather(ranks, "fsdp")
    assert gathered.keys() == reference.keys()
    for name, p in reference.items():
        assert torch.equal(gathered[name], p.detach()), name  # every element written once


def test_fsdp2_shards_are_really_split(ranks):
    # FSDP2 shards dim 0 with torch.chunk: 1001 rows over 3 ranks -> 334, 334, 333.
    world = len(ranks)
    rows = [r["fsdp"]["big.weight"][1].shape[0] for r in ranks]
    chunk = math.ceil(1001 / world)
    assert rows == [min(chunk, 1001 - i * chunk) for i in range(world)]
    assert [r["fsdp"]["big.weight"][0][0] for r in ranks] == [i * chunk for i in range(world)]


def test_a_rank_with_an_empty_shard_is_fine(ranks):
    rows = [r["fsdp"]["tiny.weight"][1].shape[0] for r in ranks]
    assert rows == ([1, 1] if len(ranks) == 2 else [1, 1, 0])
    reference = _reference()
    assert torch.equal(_gather(ranks, "fsdp")["tiny.weight"], reference.tiny.weight.detach())


def test_fsdp2_model_runs_forward_after_init(ranks):
    expected = _reference()(torch.tensor([1, 5, 3, 36, 0]))
    for result in ranks:
        torch.testing.assert_close(result["fsdp_forward"], expected.detach(), rtol=1e-5,
                                   atol=1e-5)


def test_reset_parameters_defaults_shard_like_single_process(ranks):
    # A model put on meta by torch.device("meta"): defaults are module-wide
    # reset_parameters() calls, run on whole temporaries and sliced.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.device("meta"):
            model = worker.Net()
        wi.initialize(model, worker.RULES, seed=worker.SEED)
    finally:
        torch.set_num_threads(threads)
    full = dict(model.named_parameters())
    for r, result in enumerate(ranks):
        _assert_shards_equal(full, result["meta_reset"], f"rank {r}/{len(ranks)}")


def test_materialized_sharded_model_is_initialized_again_in_place(ranks):
    reference = _reference()
    wi.initialize(reference, [dict(type="Constant", layer="Linear", val=0.5, bias=-1),
                              dict(type="Normal", param="pos", std=3.0)], seed=worker.SEED + 1)
    full = dict(reference.named_parameters())
    assert torch.all(full["big.weight"] == 0.5) and torch.all(full["big.bias"] == -1)
    for r, result in enumerate(ranks):
        _assert_shards_equal(full, result["again"], f"rank {r}/{len(ranks)}")
    assert not torch.equal(_gather(ranks, "again")["pos"], _gather(ranks, "fsdp")["pos"])


def test_dtensor_shard_on_dim1_equals_single_process(ranks):
    reference = dict(_reference().named_parameters())
    for r, result in enumerate(ranks):
        _assert_shards_equal(reference, result["shard1"], f"rank {r}/{len(ranks)}")
    assert ranks[0]["shard1"]["big.weight"][1].shape[1] == math.ceil(1500 / len(ranks))


def test_sharded_pretrained_load_equals_single_process(ranks, checkpoint):
    reference = worker.build()
    report = wi.load_checkpoint(reference, str(checkpoint), seed=worker.SEED)
    wi.initialize(reference, [dict(type="Constant", param="pos", val=0.25)], seed=worker.SEED)
    full = dict(reference.named_parameters())
    saved = safetensors.torch.load_file(str(checkpoint))
    for r, result in enumerate(ranks):
        _assert_shards_equal(full, result["pretrained"], f"rank {r}")
        assert result["pretrained_loaded"] == sorted(report.loaded)
    gathered = _gather(ranks, "pretrained")
    for key, value in saved.items():
        assert torch.equal(gathered[key], value), key
    assert torch.equal(gathered["pos"], torch.full((7, 24), 0.25))


def test_without_seed_ranks_agree(ranks):
    first = ranks[0]["replicated"]
    for result in ranks[1:]:
        for name, (_, local) in result["replicated"].items():
            assert torch.equal(local, first[name][1]), name
    # and it is a real draw, not the seeded reference
    assert not torch.equal(first["big.weight"][1], _reference().big.weight.detach())


def test_user_code_on_replicated_tensors_agrees_across_ranks(ranks):
    first = ranks[0]["user_replicated"]
    assert set(first) == {"fc.weight", "fc.bias", "gate.w"}
    for result in ranks[1:]:
        for name, (_, local) in result["user_replicated"].items():
            assert torch.equal(local, first[name][1]), name
    assert abs(float(first["gate.w"][1].std()) - 1) < 0.5  # it really ran normal_


def test_sharded_mistakes_raise_before_any_allocation(ranks):
    errors = ranks[0]["errors"]
    kind, message, device = errors["lsuv"]
    assert kind == "ShardingError" and device == "meta"
    assert "sharded" in message and "Fix: initialize with this rule before sharding" in message
    kind, message, device = errors["device"]
    assert kind == "InitValueError" and device == "meta"
    assert "sharded over a 'cpu' device mesh" in message and "Fix: pass device='cpu'" in message
    kind, message, device = errors["partial"]
    assert kind == "ShardingError" and device == "meta"
    assert message.startswith("square.weight: placement Partial(sum) is not supported")


# -- single process: the tiled seeding sharding relies on ------------------------------------

@pytest.mark.parametrize("dist_", [F.Elementwise("normal", (0.5, 2.0)),
                                   F.Elementwise("uniform", (-1.0, 3.0)),
                                   F.Elementwise("trunc_normal", (0.0, 1.0, -0.5, 1.5))])
def test_any_slice_of_a_seeded_fill_is_drawn_alone(dist_):
    total = 2 * TILE + 12345
    whole = torch.empty(total)
    fill_elementwise(dist_, whole, seed=11)
    for start, stop in [(0, 10), (TILE - 5, TILE + 5), (TILE, 2 * TILE),
                        (123, total), (total - 7, total)]:
        part = torch.empty(stop - start)
        fill_elementwise(dist_, part, seed=11, shape=(total,), offset=(start,))
        assert torch.equal(part, whole[start:stop]), (start, stop)
    assert torch.isfinite(whole).all()


def test_tiled_fill_has_the_rule_distribution():
    w = torch.empty(1200, 1000)  # 1.2 M elements: bands of 262 rows
    fill_elementwise(F.Elementwise("trunc_normal", (0.0, 1.0, -0.5, 1.5)), w, seed=3)
    assert w.min() >= -0.5 and w.max() <= 1.5
    first, second = w[:262].reshape(-1), w[262:524].reshape(-1)
    # tiles are independent draws: different values, same distribution
    assert not torch.equal(first[:1000], second[:1000])
    assert abs(first.mean() - second.mean()) < 0.01
    w = torch.empty(1200, 1000)
    fill_elementwise(F.Elementwise("normal", (0.0, 0.02)), w, seed=3)
    se = 0.02 / math.sqrt(w.numel())
    assert abs(float(w.mean())) < 6 * se
    assert abs(float(w.std()) - 0.02) < 6 * 0.02 / math.sqrt(2 * w.numel())


def test_subclass_that_changes_the_fill_is_not_drawn_tilewise():
    class Doubled(wi.rules.NormalInit):
        def init_weight(self, tensor):
            super().init_weight(tensor)
            tensor.mul_(2)

    assert wi.rules.NormalInit(std=1).elementwise("weight", (4, 4), None) is not None
    assert Doubled(std=1).elementwise("weight", (4, 4), None) is None
    assert Doubled(std=1, bias=0.5).elementwise("bias", (4,), None) == \
        F.Elementwise("constant", (0.5,))
    assert wi.rules.OrthogonalInit().elementwise("weight", (4, 4), None) is None


def test_single_call_constructor_defaults_are_elementwise():
    from weightinit.capture.construction import construction_of
    from weightinit.planning.recorded import construction_elementwise

    with wi.deferred():
        net = nn.ModuleDict(dict(fc=nn.Linear(8, 4), conv=nn.Conv2d(2, 4, 3),
                                 emb=nn.Embedding(5, 3), pad=nn.Embedding(5, 3, padding_idx=1),
                                 ln=nn.LayerNorm(3)))

    def dist_of(module, attr):
        return construction_elementwise(construction_of(getattr(module, attr)),
                                        tuple(getattr(module, attr).shape))

    # kaiming_uniform_(a=sqrt(5)) and the bias bound are both 1/sqrt(fan_in)
    kind, (low, high) = dist_of(net.fc, "weight").kind, dist_of(net.fc, "weight").args
    assert kind == "uniform" and math.isclose(high, 1 / math.sqrt(8)) and low == -high
    assert math.isclose(dist_of(net.fc, "bias").args[1], 1 / math.sqrt(8))
    assert math.isclose(dist_of(net.conv, "weight").args[1], 1 / math.sqrt(18))
    assert dist_of(net.emb, "weight") == F.Elementwise("normal", (0.0, 1.0))
    assert dist_of(net.pad, "weight") is None  # normal_ then a zeroed row: replayed whole
    assert dist_of(net.ln, "weight") == F.Elementwise("constant", (1.0,))
    assert dist_of(net.ln, "bias") == F.Elementwise("constant", (0.0,))


def test_the_simulated_fsdp_layout_is_the_real_one_placement_for_placement(ranks):
    """weightinit.plan(mesh=...) on 2 and 3 ranks: FSDP2's placements and each rank's boxes."""
    world = len(ranks)
    model = worker.build()
    splits = layout_splits(model, "fsdp", (world,))
    planned = wi.plan(model, worker.RULES, mesh={"dp": world}).ranks
    held = {r: c.local_elements for c in planned.classes for r in c.ranks}
    for rank, got in enumerate(ranks):
        real = got["fsdp_layout"]
        assert sorted(real) == sorted(splits)
        for name, p in model.named_parameters():
            region = compute_region(tuple(p.shape), (world,), (rank,), splits[name])
            assert real[name] == (splits[name], [(b.offset, b.shape) for b in region.boxes])
        assert held[rank] == sum(got["fsdp"][n][1].numel() for n in real)
