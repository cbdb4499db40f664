"""weightinit.run: users' own init code, layout-invariant, watched, recorded, transactional.

In one process: fills through every path (``nn.init`` functions, tensor
methods, ``.data``, functions imported by name) are drawn from the seeded
tiles under (seed, name, n-th fill) — equal to :func:`fill_elementwise` of
that key —, values that depend on the layout are marked with the reason,
a failure restores the model. On four gloo ranks (``userdraws_worker.py``):
the same functions over six layouts, gathered, equal one process bit for bit.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.init import normal_ as imported_normal_

import userdraws_worker as worker
import weightinit as wi
from gloo_ranks import run_ranks
from weightinit import compat
from weightinit.execution.seeding import derive_seed, fill_elementwise
from weightinit.maths import Elementwise


def net() -> nn.Module:
    return nn.Sequential(OrderedDict(a=nn.Linear(600, 700), norm=nn.LayerNorm(700),
                                     b=nn.Linear(700, 30)))


def tiled(name: str, n: int, dist: Elementwise, shape, seed: int = 5) -> torch.Tensor:
    out = torch.empty(shape)
    fill_elementwise(dist, out, derive_seed(seed, name, f"fill|{n}"))
    return out


@pytest.mark.parametrize("how", ["nn.init", "method", ".data", "imported", "no_grad"])
def test_a_whole_fill_is_the_tiled_fill_of_its_name_and_rank(how):
    m = net()
    w = m.a.weight

    def init():
        if how == "nn.init":
            nn.init.normal_(w, std=0.3)
        elif how == "method":
            w.detach().normal_(0, 0.3)
        elif how == ".data":
            w.data.normal_(0, 0.3)
        elif how == "imported":
            imported_normal_(w, std=0.3)
        else:
            with torch.no_grad():
                w.normal_(0, 0.3)

    record = wi.run(m, init, seed=5)
    assert torch.equal(w.detach(), tiled("a.weight", 0, Elementwise("normal", (0.0, 0.3)),
                                         (700, 600)))
    assert record["a.weight"].kind == "initializer"
    assert record["a.weight"].layout_dependent is None
    assert record["b.weight"].kind == "unchanged"


def test_the_nth_fill_of_a_tensor_has_its_own_key():
    m = net()

    def init():
        nn.init.uniform_(m.b.weight, -1, 1)
        first = m.b.weight.detach().clone()
        nn.init.uniform_(m.b.weight, -1, 1)
        assert not torch.equal(first, m.b.weight)

    wi.run(m, init, seed=5)
    assert torch.equal(m.b.weight.detach(), tiled("b.weight", 1,
                                                  Elementwise("uniform", (-1.0, 1.0)), (30, 700)))


def test_kaiming_trunc_normal_and_constants_follow_the_seed_alone():
    def init(m):
        nn.init.kaiming_uniform_(m.a.weight, a=math.sqrt(5))
        nn.init.trunc_normal_(m.b.weight, std=1.0, a=-1.0, b=1.0)  # redraws: temporaries
        nn.init.zeros_(m.a.bias)
        nn.init.ones_(m.norm.weight)

    a, b = net(), net()
    torch.manual_seed(0)
    wi.run(a, init, a, seed=9)
    torch.manual_seed(1)  # the global generator does not matter
    wi.run(b, init, b, seed=9)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        if name not in ("norm.bias", "b.bias"):  # left at construction
            assert torch.equal(x, y), name
    bound = 1 / math.sqrt(600)
    assert a.a.weight.abs().max() <= bound and a.a.weight.abs().max() > 0.99 * bound
    assert a.b.weight.abs().max() <= 1.0
    c = net()
    wi.run(c, init, c, seed=10)
    assert not torch.equal(a.a.weight, c.a.weight)


def test_the_global_generator_is_left_as_it_was():
    m = net()
    torch.manual_seed(3)
    state = torch.get_rng_state()
    wi.run(m, lambda: nn.init.normal_(m.a.weight), seed=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_layout_dependent_values_are_marked_with_the_reason():
    m = net()

    def init():
        nn.init.normal_(m.a.weight)
        with torch.no_grad():
            m.a.weight.div_(m.a.weight.norm())  # a reduction read back
        nn.init.normal_(m.b.weight, generator=torch.Generator().manual_seed(0))
        nn.init.ones_(m.norm.weight)
        with torch.no_grad():
            m.norm.weight.mul_(torch.randn(700))  # a temporary drawn by torch's generator

    record = wi.run(m, init, seed=2)
    assert record["a.weight"].layout_dependent == (
        "computed by aten.linalg_vector_norm, whose result depends on the layout")
    assert record["b.weight"].layout_dependent.startswith("aten.normal_ with its own generator")
    assert record["norm.weight"].layout_dependent == (
        "drawn by aten.randn from torch's generator, not from the seeded tiles")
    assert record["a.weight"].to_dict()["layout_dependent"].startswith("computed by")
    assert "layout_dependent" not in record["a.bias"].to_dict()


def test_a_fill_of_part_of_a_tensor_runs_as_written_and_is_marked():
    m = net()

    def init():
        nn.init.zeros_(m.a.weight)
        with torch.no_grad():
            m.a.weight[:10].normal_()  # a view of part of it: drawn by torch's generator
            m.b.weight.t().normal_()  # a whole view in another order: also its own draw

    record = wi.run(m, init, seed=2)
    assert record["a.weight"].layout_dependent.startswith(
        "aten.normal_ with its own generator, or of part of a tensor")
    assert (m.a.weight[10:] == 0).all() and (m.a.weight[:10] != 0).all()
    assert record["b.weight"].layout_dependent is not None


def test_an_overwrite_after_a_dependent_value_clears_the_mark():
    m = net()

    def init():
        with torch.no_grad():
            m.a.weight.copy_(torch.randn(700, 600))
        nn.init.normal_(m.a.weight)

    record = wi.run(m, init, seed=2)
    assert record["a.weight"].layout_dependent is None


def test_a_failure_restores_the_model_and_the_error_passes_through():
    m = net()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}

    def init():
        nn.init.normal_(m.a.weight)
        nn.init.zeros_(m.b.bias)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        wi.run(m, init, seed=2)
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n


def test_fills_from_threads_the_code_starts_are_drawn_from_the_tiles():
    m = net()

    def init():
        ts = [threading.Thread(target=nn.init.normal_, args=(p,)) for p in (m.a.weight,
                                                                             m.b.weight)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    wi.run(m, init, seed=5)
    normal = Elementwise("normal", (0.0, 1.0))
    assert torch.equal(m.a.weight.detach(), tiled("a.weight", 0, normal, (700, 600)))
    assert torch.equal(m.b.weight.detach(), tiled("b.weight", 0, normal, (30, 700)))


def test_a_deferred_model_is_materialized_and_untouched_tensors_get_their_defaults():
    with wi.deferred():
        m = net()
    record = wi.run(m, lambda: nn.init.zeros_(m.a.weight), seed=4)
    assert all(p.device.type == "cpu" for p in m.parameters())
    assert torch.equal(m.a.weight, torch.zeros(700, 600))
    assert record["b.weight"].kind == "unchanged"
    bound = 1 / math.sqrt(700)
    assert 0 < m.b.weight.abs().max() <= bound


def test_keyword_arguments_reach_the_function_and_options_stay_the_runs():
    got = {}

    def init(x, *, buffer_device=None):
        got.update(x=x, buffer_device=buffer_device)

    wi.run(net(), init, 3, buffer_device="cpu", seed=1)
    assert got == {"x": 3, "buffer_device": "cpu"}


@pytest.mark.parametrize("model,fn,message", [
    ("not a module", print, "weightinit.run: model must be an nn.Module, got str"),
    (nn.Linear(2, 2), "init_weights", "weightinit.run: fn must be callable"),
])
def test_bad_arguments(model, fn, message):
    with pytest.raises(wi.InitTypeError) as err:
        wi.run(model, fn, seed=1)
    assert str(err.value).startswith(message)


def test_unseeded_runs_draw_from_the_global_generator():
    m = net()
    torch.manual_seed(7)
    wi.run(m, lambda: nn.init.normal_(m.norm.weight))  # small: torch's own normal_
    torch.manual_seed(7)
    assert torch.equal(m.norm.weight.detach(), torch.empty(700).normal_())
    runs = []
    for seed in (7, 7, 8):  # large: drawn on every core, still decided by manual_seed
        torch.manual_seed(seed)
        wi.run(m, lambda: nn.init.normal_(m.a.weight))
        runs.append(m.a.weight.detach().clone())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# -- four ranks ------------------------------------------------------------------------------

dist = pytest.importorskip("torch.distributed")
multi = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or not compat.has_cpu_fsdp2()
    or compat.strided_shard_type() is None,
    reason=f"torch {torch.__version__}: needs gloo, FSDP2 on a CPU mesh and _StridedShard")

WORKER = Path(__file__).with_name("userdraws_worker.py")
LAYOUTS = ("tp_fsdp", "hsdp", "fsdp4", "mesh3d", "shard_last", "strided")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("userdraws")
    run_ranks(WORKER, 4, out, out, 240)
    return dict(full=torch.load(out / "full.pt", weights_only=False),
                notes=[torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(4)])


def one_process(function: str, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    model = worker.build(kind)
    record = worker.run_one(model, function)
    return ({n: p.detach() for n, p in model.named_parameters()},
            {r.name: r.layout_dependent for r in record})


@multi
@pytest.mark.parametrize("function,kind", worker.CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gathers_to_one_process(ranks, layout, function, kind):
    want, notes = one_process(function, kind)
    got = ranks["full"][f"{layout}/{function}/{kind}"]
    assert got.keys() == want.keys()
    if function == "dependent":  # marked on every rank, with the same reasons as one process
        for rank_notes in ranks["notes"]:
            assert rank_notes[f"{layout}/{function}/{kind}"] == notes
        assert notes["up.weight"].startswith("computed by aten.linalg_vector_norm")
        assert notes["big.weight"].startswith("aten.normal_ with its own generator")
        return
    for name in want:
        assert torch.equal(got[name], want[name]), (layout, function, kind, name)
    for rank_notes in ranks["notes"]:
        assert all(v is None for v in rank_notes[f"{layout}/{function}/{kind}"].values())


@multi
def test_a_transformers_llama_under_fsdp2_and_tp_gathers_to_one_process(ranks):
    model = worker.hf_llama()
    if model is None:
        pytest.skip("transformers is not installed")
    record = worker.run_one(model, "own_init_weights")
    got = ranks["full"]["hf/own_init_weights"]
    assert got.keys() == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert torch.equal(got[name], p.detach()), name
    assert record["model.layers.0.mlp.up_proj.weight"].declared_in == (
        "model default (_init_weights of LlamaPreTrainedModel): normal_(mean=0.0, std=0.02) "
        "in LlamaModel._init_weights")
    for rank_notes in ranks["notes"]:
        assert all(v is None for v in rank_notes["hf/own_init_weights"].values())


@multi
def test_a_rank_that_fails_half_way_rolls_every_rank_back(ranks):
    got = [notes["failure"] for notes in ranks["notes"]]
    assert got[1]["error"] == ("RuntimeError", "rank 1 gives up")
    for rank in (0, 2, 3):
        kind, message = got[rank]["error"]
        assert kind == "ShardingError"
        assert message.startswith("Net: initialization failed on rank(s) 1 of the model's "
                                  "device mesh, so this rank's run was rolled back too")
    assert all(g["restored"] for g in got), got


class _Layer(wi.BaseModule):
    def __init__(self):
        super().__init__(init_cfg=dict(type="TruncNormal", layer="Linear", std=0.02))
        self.ffn = nn.Linear(384, 1536)

    def init_weights(self):
        super().init_weights()
        nn.init.xavier_uniform_(self.ffn.weight)  # over the planned rule's fill


class _Net(wi.BaseModule):
    def __init__(self):
        super().__init__()
        self.layers = wi.ModuleList([_Layer(), _Layer()])

    def init_weights(self):
        super().init_weights()  # runs the layers' own init_weights: nested user calls


@pytest.mark.parametrize("deferred", [False, True])
def test_nested_user_calls_draw_from_the_tiles_on_every_thread(deferred, monkeypatch):
    monkeypatch.setenv("WEIGHTINIT_NUM_THREADS", "2")  # (the tiles shared out between threads)
    bound = math.sqrt(6 / (384 + 1536))
    results = []
    for _ in range(2):
        if deferred:
            with wi.deferred():
                net = _Net()
        else:
            net = _Net()
        net.init_weights(seed=3)
        results.append({n: p.detach().clone() for n, p in net.named_parameters()})
        for i in range(2):
            want = tiled(f"layers.{i}.ffn.weight", 0, Elementwise("uniform", (-bound, bound)),
                         (1536, 384), seed=3)
            assert torch.equal(net.layers[i].ffn.weight.detach(), want), i
        record = net.init_record
        assert record["layers.0.ffn.weight"].info == "xavier_uniform_() in _Layer.init_weights"
        assert record["layers.0.ffn.weight"].layout_dependent is None
        assert record["layers.0.ffn.bias"].kind == "rule"
        assert record["layers.0.ffn.bias"].layout_dependent is None
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


def test_wrappers_that_rename_parameters_do_not_change_the_values():
    wrap = pytest.importorskip("torch.distributed.algorithms._checkpoint.checkpoint_wrapper")

    def init(m):
        for p in m.parameters():
            nn.init.normal_(p, std=0.1)

    plain = net()
    wrapped = net()
    wrapped.a = wrap.checkpoint_wrapper(wrapped.a)  # activation checkpointing's renaming
    assert "a._checkpoint_wrapped_module.weight" in dict(wrapped.named_parameters())
    wi.run(plain, init, plain, seed=4)
    wi.run(wrapped, init, wrapped, seed=4)
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        assert torch.equal(p, q), name
    rules = dict(type="Normal", layer="Linear", std=0.3)
    wi.initialize(plain, rules, seed=4)
    wi.initialize(wrapped, rules, seed=4)
    assert torch.equal(plain.a.weight, wrapped.a._checkpoint_wrapped_module.weight)
