"""weightinit.plan(model, mesh=..., layout=...): every rank of a simulated mesh, no processes.

(The simulated boxes are compared with real 4-rank layouts, and the elements
drawn with what the ranks drew, in tests/test_placements.py.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.planning.meshplan import layout_splits, parse_mesh, plan_mesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from models import llama  # noqa: E402


def small() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(10, 7), nn.LayerNorm(7))


@pytest.mark.parametrize("mesh,want", [
    ("dp=128,tp=8", (("dp", "tp"), (128, 8))),
    ({"dp": 4}, (("dp",), (4,))),
    (" r = 2 , s=3", (("r", "s"), (2, 3))),
])
def test_meshes_are_read_from_text_or_a_dict(mesh, want):
    assert parse_mesh(mesh) == want


@pytest.mark.parametrize("mesh", ["", "dp", "dp=0", "dp=-2", "dp=x", {"dp": True}, {"dp": 2.0},
                                  {}])
def test_a_bad_mesh_is_refused(mesh):
    with pytest.raises(wi.InitValueError) as err:
        parse_mesh(mesh)
    message = str(err.value)
    assert message.startswith("mesh") and "e.g. 'dp=128,tp=8'" in message


def test_a_layout_that_does_not_fit_the_mesh_is_refused():
    with pytest.raises(wi.InitValueError, match=r"layout 'fsdp_tp' needs a mesh of 2 dimension"):
        plan_mesh(small(), "dp=4", "fsdp_tp")
    with pytest.raises(wi.InitValueError, match=r"layout must be one of fsdp, hsdp, tp, fsdp_tp"):
        plan_mesh(small(), "dp=4", "zero3")


def test_a_tp_plan_naming_modules_that_do_not_exist_is_refused():
    with pytest.raises(wi.InitValueError) as err:
        plan_mesh(small(), "tp=2", "tp", {"0": "colwise", "attn.wq": "colwise"})
    assert str(err.value).startswith("tp_plan['attn.wq'] names no module of Sequential")
    with pytest.raises(wi.InitValueError) as err:
        plan_mesh(small(), "tp=2", "tp", {"0": "diagonal"})
    assert str(err.value) == ("tp_plan['0']: 'diagonal' is not 'colwise', 'rowwise' or a "
                              "parallelize_module style (ColwiseParallel(), RowwiseParallel(), "
                              "...)")
    with pytest.raises(wi.InitValueError, match=r"tp_plan must be a dict .* got list"):
        plan_mesh(small(), "tp=2", "tp", [("0", "colwise")])


def test_the_plan_given_to_parallelize_module_is_read_as_it_reads_it():
    tp = pytest.importorskip("torch.distributed.tensor.parallel")
    with torch.device("meta"):
        m = llama(size="tiny")
    strings = layout_splits(m, "fsdp_tp", (2, 4))
    styles = {"embed": tp.RowwiseParallel(), "lm_head": tp.ColwiseParallel(),
              "norm": tp.SequenceParallel(), "layers.*.input_norm": tp.SequenceParallel(),
              **{f"layers.*.{n}": tp.ColwiseParallel()
                 for n in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")},
              **{f"layers.*.{n}": tp.RowwiseParallel() for n in ("o_proj", "down_proj")}}
    assert layout_splits(m, "fsdp_tp", (2, 4), styles) == strings  # SequenceParallel: whole

    class Float8Colwise(tp.ColwiseParallel):  # subclasses are read by their base
        pass

    splits = layout_splits(m, "tp", (4,), {"layers.1.q_proj": Float8Colwise()})
    assert splits["layers.1.q_proj.weight"] == (("shard", 0),)
    assert splits["layers.0.q_proj.weight"] == (("replicate",),)
    # part by part, as parallelize_module matches: "*" is one module name, not a path
    with pytest.raises(wi.InitValueError, match=r"tp_plan\['\*\.q_proj'\] names no module"):
        layout_splits(m, "tp", (4,), {"*.q_proj": tp.ColwiseParallel()})
    with pytest.raises(wi.InitValueError) as err:
        layout_splits(m, "tp", (4,), {"layers.0": tp.ColwiseParallel()})
    assert str(err.value) == ("tp_plan['layers.0']: ColwiseParallel shards nn.Linear and "
                              "nn.Embedding only, and 'layers.0' is a DecoderLayer. Fix: name "
                              "its Linear/Embedding children instead")


def test_the_llama_plan_lays_projections_out_as_tensor_parallelism_does():
    with torch.device("meta"):
        m = llama(size="tiny")
    splits = layout_splits(m, "fsdp_tp", (2, 4))
    assert splits["layers.0.q_proj.weight"] == (("strided", 0, 4), ("shard", 0))
    assert splits["layers.0.o_proj.weight"] == (("shard", 0), ("shard", 1))
    assert splits["layers.0.down_proj.weight"] == (("shard", 0), ("shard", 1))
    assert splits["embed.weight"] == (("strided", 0, 4), ("shard", 0))
    assert splits["norm.weight"] == (("shard", 0), ("replicate",))


def test_a_mesh_that_does_not_divide_the_model_gives_uneven_classes():
    report = plan_mesh(small(), "dp=3", "fsdp")
    # 7 rows of 10 and three vectors of 7, each split 3, 3, 1: two classes
    assert [c.ranks for c in report.classes] == [[0, 1], [2]]
    assert sum(c.local_elements * len(c.ranks) for c in report.classes) == 7 * 10 + 7 + 7 + 7
    assert report.classes[0].local_elements == 3 * 10 + 3 + 3 + 3
    assert report.classes[1].local_elements == 1 * 10 + 1 + 1 + 1


def test_empty_and_one_element_tensors_and_ranks_holding_nothing():
    with torch.device("meta"):
        m = nn.Module()
        m.empty = nn.Parameter(torch.empty(0, 5))
        m.one = nn.Parameter(torch.empty(1))
        m.scalar = nn.Parameter(torch.empty(()))
    report = plan_mesh(m, "dp=4", "fsdp")
    by_rank = {r: c for c in report.classes for r in c.ranks}
    assert by_rank[0].local_elements == 1 + 1  # the one element, and the replicated scalar
    assert by_rank[3].local_elements == 1  # only the scalar
    assert by_rank[3].drawn_elements == 1


def test_a_world_of_one_and_of_65536():
    one = plan_mesh(small(), "dp=1", "fsdp")
    assert len(one.classes) == 1 and one.classes[0].local_elements == 70 + 7 + 7 + 7
    big = plan_mesh(small(), "dp=65536", "fsdp")
    assert big.world == 65536
    assert sum(len(c.ranks) for c in big.classes) == 65536
    holding = [c for c in big.classes if c.local_elements]
    assert [c.to_dict()["ranks"] for c in holding] == ["0-6"]  # one row each on ranks 0-6
    assert big.to_dict()["classes"][-1]["ranks"] == "7-65535"


def test_the_plan_of_a_model_says_which_tensors_are_drawn_whole():
    with wi.deferred():
        m = nn.Sequential(nn.Linear(600, 700), nn.Linear(700, 8))
    plan = wi.plan(m, [dict(type="Normal", layer="Linear", std=0.1),
                       dict(type="Orthogonal", override=dict(name="0"))], mesh="dp=2")
    assert plan["0.weight"].owner_info.startswith("OrthogonalInit")
    ranks = plan.ranks
    assert ranks.layout == "fsdp" and ranks.world == 2
    c0 = next(c for c in ranks.classes if 0 in c.ranks)
    # 0.weight drawn whole; 1.weight's rows 0-3 in its one tile of 8 rows; biases constant
    assert c0.drawn_elements == 700 * 600 + 8 * 700
    assert c0.local_elements == 350 * 600 + 350 + 4 * 700 + 4
    assert c0.peak_bytes == 4 * c0.local_elements + 4 * 700 * 600


def test_planning_a_405b_llama_over_1024_ranks_groups_ranks_by_their_work():
    with torch.device("meta"):
        m = llama(size="405b")
    report = plan_mesh(m, "dp=128,tp=8", "fsdp_tp")
    assert report.world == 1024 and not report.refused
    assert sum(len(c.ranks) for c in report.classes) == 1024
    assert len(report.classes) <= 16
    total = sum(p.numel() for p in m.parameters())
    assert sum(c.local_elements * len(c.ranks) for c in report.classes) >= total


LLAMA_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "llama.yaml"


def _cli(*argv: str) -> tuple[int, str, str]:
    import io

    from weightinit.cli import main

    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


def test_the_command_line_prints_the_plan_of_every_rank_as_json():
    import json

    rc, out, _ = _cli("plan", str(LLAMA_CONFIG), "--set", "model.size=tiny", "--mesh",
                      "dp=2,tp=2", "--json")
    assert rc == 0
    got = json.loads(out)
    assert got["layout"] == "fsdp_tp" and got["world"] == 4 and got["mesh"] == {"dp": 2, "tp": 2}
    assert sum(c["count"] for c in got["classes"]) == 4
    assert all(set(c["local_bytes"]) == {"bfloat16"} for c in got["classes"])  # the run's dtype
    with torch.device("meta"):
        model = llama(size="tiny")
    assert sum(c["local_elements"] * c["count"] for c in got["classes"]) >= \
        sum(p.numel() for p in model.parameters())


def test_the_command_line_table_and_a_bad_mesh():
    rc, out, _ = _cli("plan", str(LLAMA_CONFIG), "--set", "model.size=tiny", "--mesh", "dp=4",
                      "--layout", "fsdp")
    assert rc == 0
    assert "fsdp on dp=4: 4 ranks" in out and "draw s (est.)" in out
    rc, _, err = _cli("plan", str(LLAMA_CONFIG), "--mesh", "dp=2,tp=x")
    assert rc == 2
    assert "weightinit: error: mesh must name each dimension and its size" in err
    rc, _, err = _cli("plan", str(LLAMA_CONFIG), "--mesh", "dp=2", "--layout", "fsdp_tp")
    assert rc == 2 and "layout 'fsdp_tp' needs a mesh of 2 dimension(s)" in err


def test_each_rank_reads_its_part_of_the_checkpoint_files_it_needs(tmp_path):
    import json

    import safetensors.torch

    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    state = {"0.weight": torch.zeros(8, 6, dtype=torch.float16), "0.bias": torch.zeros(8),
             "1.weight": torch.zeros(4, 8, dtype=torch.float16), "1.bias": torch.zeros(4)}
    safetensors.torch.save_file({k: state[k] for k in ("0.weight", "0.bias")},
                                str(tmp_path / "a.safetensors"))
    safetensors.torch.save_file({k: state[k] for k in ("1.weight", "1.bias")},
                                str(tmp_path / "b.safetensors"))
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {
        "0.weight": "a.safetensors", "0.bias": "a.safetensors",
        "1.weight": "b.safetensors", "1.bias": "b.safetensors"}}))
    plan = wi.plan(m, dict(type="Pretrained", checkpoint=str(index)), mesh="dp=4")
    by_rank = {r: c for c in plan.ranks.classes for r in c.ranks}
    # rank 0: rows 0-1 of 0.weight (fp16 in the file), 0.bias[0:2], 1.weight row 0, 1.bias[0]
    assert by_rank[0].read_bytes == 2 * 6 * 2 + 2 * 4 + 1 * 8 * 2 + 1 * 4
    assert [Path(f).name for f in by_rank[0].files] == ["a.safetensors", "b.safetensors"]
    assert by_rank[0].drawn_elements == 0  # read, not drawn
    d = by_rank[3].to_dict()
    assert d["checkpoint_bytes_read"] == 2 * 6 * 2 + 2 * 4 + 8 * 2 + 4
    assert len(d["files"]) == 2


def test_the_command_line_plots_memory_and_reads_per_rank(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plots" / "mesh.png"
    rc, out, _ = _cli("plan", str(LLAMA_CONFIG), "--set", "model.size=tiny", "--mesh", "dp=3",
                      "--plot", str(png))
    assert rc == 0 and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rc, _, err = _cli("plan", str(LLAMA_CONFIG), "--plot", str(tmp_path / "x.png"))
    assert rc == 2 and "--plot plots the per-rank plan: it needs --mesh" in err
    rc, _, err = _cli("plan", str(LLAMA_CONFIG), "--mesh", "dp=2", "--plot", str(tmp_path / "x.jpg"))
    assert rc == 2 and "--plot" in err and ".png" in err
