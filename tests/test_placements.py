"""SPEC B6: every DTensor layout gives, gathered, exactly the tensor one process produces.

Four CPU ranks (``placements_worker.py``, ``gloo`` on 127.0.0.1, started
once, bounded in time) lay the same model out six ways — FSDP2 over tensor
parallelism on a (dp, tp) = (2, 2) mesh (``_StridedShard``), HSDP on
(replicate, shard) = (2, 2), FSDP2 on 4 ranks, a (2, 1, 2) mesh, ``Shard``
on the last dimension and a direct ``_StridedShard`` on 4 ranks — and write
it five ways: elementwise rules (Normal, TruncNormal, Uniform, Kaiming,
Xavier, Constant), Eye/Dirac/Orthogonal, replayed constructor defaults,
``reset_parameters()``, and a safetensors checkpoint each rank reads its
slices of. Every parameter's ``full_tensor()`` is compared bit for bit with
the model initialized here, in one process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

import placements_worker as worker
from gloo_ranks import run_ranks
from weightinit import compat

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
if not compat.has_cpu_fsdp2():
    pytest.skip(f"torch {torch.__version__}: FSDP2 on a CPU mesh needs torch >= 2.6",
                allow_module_level=True)
pytest.importorskip("torch.distributed.tensor.parallel")
compat.dtensor_module()
if compat.strided_shard_type() is None:
    pytest.skip("this torch has no _StridedShard", allow_module_level=True)

WORKER = Path(__file__).with_name("placements_worker.py")
WORLD = 4
TIMEOUT_S = 180
LAYOUTS = ("tp_fsdp", "hsdp", "fsdp4", "mesh3d", "shard_last", "strided")
KINDS = ("elementwise", "structured", "deferred", "meta", "checkpoint")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "net.safetensors"
    safetensors.torch.save_file(worker.checkpoint_state(), str(path))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, checkpoint) -> dict:
    out = tmp_path_factory.mktemp("placements")
    run_ranks(WORKER, WORLD, out, checkpoint, TIMEOUT_S)
    return dict(full=torch.load(out / "full.pt", weights_only=False),
                ranks=[torch.load(out / f"rank{r}.pt", weights_only=False)
                       for r in range(WORLD)])


@pytest.fixture(scope="module")
def reference(checkpoint) -> dict[str, dict[str, torch.Tensor]]:
    """Each way of writing, done in this one process (one thread: the ranks use one, and
    Orthogonal's QR may differ in the last bit with the number of BLAS threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for kind in KINDS:
            model = worker.build("meta" if kind == "meta" else "deferred")
            worker.init(model, kind, str(checkpoint))
            out[kind] = {n: p.detach() for n, p in model.named_parameters()}
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore::weightinit.CheckpointKeysWarning")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gathered_tensors_equal_one_process(run, reference, layout, kind):
    gathered = run["full"][f"{layout}/{kind}"]
    assert gathered.keys() == reference[kind].keys()
    for name, expected in reference[kind].items():
        assert torch.equal(gathered[name], expected), f"{layout}/{kind}: {name}"


def test_the_checkpoint_values_arrive_and_the_rest_gets_defaults(run, checkpoint):
    saved = safetensors.torch.load_file(str(checkpoint))
    for layout in LAYOUTS:
        gathered = run["full"][f"{layout}/checkpoint"]
        for key, value in saved.items():
            assert torch.equal(gathered[key], value), f"{layout}: {key}"
        assert set(gathered) - set(saved) == set(worker.NOT_IN_CHECKPOINT)


def test_fsdp2_over_tensor_parallel_gives_strided_shards(run):
    placements = run["ranks"][0]["placements"]["tp_fsdp"]
    strided = "(_StridedShard(dim=0, sf=2), Shard(dim=0))"
    for name in ("up.weight", "up.bias", "big.weight", "eye.weight"):  # by columns
        assert placements[name] == strided, name
    assert placements["down.weight"] == "(Shard(dim=0), Shard(dim=1))"  # by rows
    assert placements["down.bias"] == "(Shard(dim=0), Replicate())"
    assert placements["norm.weight"] == "(Shard(dim=0),)"  # not tensor parallel: FSDP2 only


def test_hsdp_and_3d_mesh_placements(run):
    placements = run["ranks"][0]["placements"]
    assert set(placements["hsdp"].values()) == {"(Replicate(), Shard(dim=0))"}
    assert placements["mesh3d"]["up.weight"] == "(Shard(dim=1), Replicate(), Shard(dim=0))"
    assert placements["mesh3d"]["up.bias"] == "(Shard(dim=0), Shard(dim=0), Shard(dim=0))"


def test_direct_strided_shards_are_several_boxes_and_some_ranks_hold_none(run):
    boxes = [r["boxes"]["strided"] for r in run["ranks"]]
    # up.weight, 10 rows, split_factor 2 over 4: halves of 5 rows cut 2, 2, 1, 0
    assert [b["up.weight"] for b in boxes] == [2, 2, 2, 0]
    # shards of uneven sizes elsewhere: Shard(1) of 3 columns over 4 ranks
    assert [r["boxes"]["shard_last"]["emb.weight"] for r in run["ranks"]] == [1, 1, 1, 0]


def test_partial_placement_is_refused_before_any_allocation(run):
    for result in run["ranks"]:
        kind, message, untouched = result["partial"]
        assert kind == "ShardingError"
        assert message.startswith("down.weight: placement Partial(sum) is not supported")
        assert "Fix:" in message
        assert untouched  # every parameter still on meta: nothing allocated or written


def test_the_record_says_which_writes_each_rank_draws_whole(run):
    for rank in run["ranks"]:
        for layout in LAYOUTS:
            info = rank["info"][layout]
            assert info["orth.weight"] == ("OrthogonalInit: gain=1.0, bias=0 "
                                           "(each rank draws it whole)"), layout
            assert info["eye.weight"] == "EyeInit: bias=0", layout  # written region by region
            assert not info["big.weight"].endswith("whole)"), layout


# -- weightinit.plan(mesh=...): the simulated layout is the real one --------------------------

SIMULATED = {"tp_fsdp": ("dp=2,tp=2", "fsdp_tp"), "hsdp": ("replicate=2,shard=2", "hsdp"),
             "fsdp4": ("dp=4", "fsdp")}
TP_PLAN = {name: "colwise" if how == "col" else "rowwise" for name, how in worker.TP_PLAN.items()}


@pytest.mark.parametrize("layout", sorted(SIMULATED))
def test_simulated_layouts_hold_the_real_boxes_and_draw_what_the_plan_says(run, layout):
    import weightinit as wi
    from weightinit.planning.meshplan import layout_splits, parse_mesh
    from weightinit.planning.regions import compute_region

    mesh, kind = SIMULATED[layout]
    model = worker.build("deferred")
    _, sizes = parse_mesh(mesh)
    splits = layout_splits(model, kind, sizes, TP_PLAN)
    coords = [(r // sizes[1], r % sizes[1]) if len(sizes) == 2 else (r,) for r in range(WORLD)]
    for rank, coord in enumerate(coords):
        real = run["ranks"][rank]["regions"][layout]
        # placement for placement; FSDP2 over TP puts a tensor TP leaves whole on the dp
        # submesh alone: (Shard(0),) there is (Shard(0), Replicate()) on the (dp, tp) mesh
        assert {n: s + (("replicate",),) if layout == "tp_fsdp" and len(s) == 1 else s
                for n, s in run["ranks"][rank]["splits"][layout].items()} == splits
        for name, p in model.named_parameters():
            region = compute_region(tuple(p.shape), sizes, coord, splits[name])
            assert [(b.offset, b.shape) for b in region.boxes] == real[name], (rank, name)
    planned = wi.plan(model, worker.ELEMENTWISE, mesh=mesh, layout=kind, tp_plan=TP_PLAN).ranks
    assert sorted(r for c in planned.classes for r in c.ranks) == list(range(WORLD))
    for c in planned.classes:  # the plan is a contract: the elements each rank drew
        for rank in c.ranks:
            assert run["ranks"][rank]["drawn"][layout] == c.drawn_elements, (layout, rank)
