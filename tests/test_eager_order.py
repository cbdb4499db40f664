"""Unseeded deferred runs draw as eager construction does (``execution/eager_order.py``).

Eager construction draws every constructor init before any ``init_weights``
code runs. A deferred model replays those inits first, in the recorded global
order; under ``deferred(match_eager=True)`` it also draws the inits of the
tensors a rule then overwrites (into scratch), so every value and the
generator's state afterwards equal eager construction + the same init.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import weightinit as wi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import models  # noqa: E402


class Head(wi.BaseModule):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def init_weights(self):
        super().init_weights()
        nn.init.normal_(self.fc.weight, std=0.5)  # draws after every constructor init


class Net(wi.BaseModule):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.a = nn.Linear(8, 8)
        self.head = Head()
        self.b = nn.Linear(8, 8)


def eager_then_deferred(build, init, match_eager=False):
    """(eager model, deferred model, next draw after each) under torch seed 0."""
    torch.manual_seed(0)
    eager = build()
    init(eager)
    after_eager = torch.rand(8)
    torch.manual_seed(0)
    with wi.deferred(match_eager=match_eager):
        lazy = build()
    init(lazy)
    return eager, lazy, after_eager, torch.rand(8)


def differing(a: nn.Module, b: nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def test_user_code_draws_after_the_replayed_defaults_it_cannot_reach():
    # before: `a` was replayed after user code had drawn, so it differed too
    eager, lazy, _, _ = eager_then_deferred(Net, lambda m: m.init_weights())
    # head.fc.weight's init is not drawn (user code overwrites it whole: written once),
    # so the draws after it (head.fc.bias, b) get other numbers
    assert differing(eager, lazy) == ["head.fc.weight", "head.fc.bias", "b.weight", "b.bias"]
    assert lazy.head.fc.weight._version == 1


def test_match_eager_with_user_code_equals_eager():
    eager, lazy, after_eager, after_lazy = eager_then_deferred(
        Net, lambda m: m.init_weights(), match_eager=True)
    assert differing(eager, lazy) == []
    assert torch.equal(after_eager, after_lazy)
    assert lazy.head.fc.weight._version == 2  # its init, then user code, as eagerly


@pytest.mark.parametrize("build", [models.resnet50, models.vit_b16,
                                   lambda: models.transformer(depth=3, dim=64),
                                   lambda: models.llama(size="tiny", tie_embeddings=True)],
                         ids=["resnet50", "vit_b16", "transformer", "llama"])
def test_match_eager_equals_eager_construction_and_the_same_rules(build):
    eager, lazy, after_eager, after_lazy = eager_then_deferred(
        build, lambda m: m.init_weights(), match_eager=True)
    assert differing(eager, lazy) == []
    assert torch.equal(after_eager, after_lazy)  # the generator is where eager left it
    for name, p in lazy.named_parameters():
        assert p._version == 1, name  # rule-covered inits went to scratch, not the tensor


def test_without_match_eager_rule_covered_inits_are_not_drawn():
    rule = dict(type="Constant", layer="Linear", val=0.25, bias=0.0)
    # Linear(8, 8) then Embedding: eager draws the Linear's kaiming init before the
    # embedding's normal_; deferred skips it, so the embedding gets other numbers
    build = lambda: nn.Sequential(nn.Linear(8, 8), nn.Embedding(16, 8))  # noqa: E731
    init = lambda m: wi.initialize(m, rule)  # noqa: E731
    eager, lazy, after_eager, after_lazy = eager_then_deferred(build, init)
    assert differing(eager, lazy) == ["1.weight"]
    torch.manual_seed(0)
    assert torch.equal(lazy[1].weight, torch.empty(16, 8).normal_())  # first draw of the seed
    eager, lazy, after_eager, after_lazy = eager_then_deferred(build, init, match_eager=True)
    assert differing(eager, lazy) == []
    assert torch.equal(after_eager, after_lazy)
    assert lazy[0].weight._version == 1


class Copies(nn.Module):
    """A constructor that initializes one parameter from another."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.empty(32, 32))
        nn.init.normal_(self.a)
        self.b = nn.Parameter(torch.empty(32, 32))
        self.b.data.copy_(self.a)
        self.c = nn.Parameter(torch.empty(32))
        nn.init.uniform_(self.c)


RULE_ON_A = dict(type="Constant", val=0.5, param="a")


@pytest.mark.parametrize("match_eager", [False, True])
def test_a_default_that_reads_a_rule_covered_tensor_reads_its_constructed_value(match_eager):
    # before: `a` was not drawn (a rule owns it), so `b` copied uninitialized memory
    eager, lazy, _, _ = eager_then_deferred(Copies, lambda m: wi.initialize(m, RULE_ON_A),
                                            match_eager=match_eager)
    assert torch.all(lazy.a == 0.5)
    assert torch.equal(lazy.b, eager.b)
    assert torch.equal(lazy.c, eager.c)
    assert lazy.b._version == 1


def test_seeded_default_that_reads_a_rule_covered_tensor_reads_its_seeded_default():
    with wi.deferred():
        plain = Copies()
    wi.initialize(plain, [], seed=5)
    with wi.deferred():
        covered = Copies()
    wi.initialize(covered, RULE_ON_A, seed=5)
    assert torch.all(covered.a == 0.5)
    assert torch.equal(covered.b, plain.a)  # what `a` is under seed 5 when nothing covers it
    assert torch.equal(covered.c, plain.c)


def test_match_eager_is_ignored_when_seeded():
    rule = dict(type="Normal", layer="Linear", std=0.1)
    values = []
    for torch_seed, flag in [(0, True), (1, False)]:
        torch.manual_seed(torch_seed)
        with wi.deferred(match_eager=flag):
            m = nn.Sequential(nn.Linear(8, 8), nn.Embedding(16, 8))
        wi.initialize(m, rule, seed=3)
        values.append(m.state_dict())
    assert all(torch.equal(values[0][k], values[1][k]) for k in values[0])


def test_nested_block_marks_only_what_it_builds():
    with wi.deferred():
        outer = nn.Linear(4, 4)
        with wi.deferred(match_eager=True):
            inner = nn.Linear(4, 4)
        after = nn.Linear(4, 4)
    flags = [m.weight._wi_construction.match_eager for m in (outer, inner, after)]
    assert flags == [False, True, False]


def test_match_eager_retry_after_a_failure_equals_eager():
    class Fails(wi.BaseModule):
        calls = 0

        def __init__(self):
            super().__init__(init_cfg=dict(type="Normal", layer="Linear", std=0.1))
            self.a = nn.Linear(8, 8)
            self.e = nn.Embedding(16, 8)

        def init_weights(self):
            super().init_weights()
            Fails.calls += 1
            if Fails.calls == 2:
                raise RuntimeError("user code fails once")

    torch.manual_seed(0)
    eager = Fails()
    eager.init_weights()
    torch.manual_seed(0)
    with wi.deferred(match_eager=True):
        lazy = Fails()
    with pytest.raises(RuntimeError, match="fails once"):
        lazy.init_weights()
    assert all(p.is_meta for p in lazy.parameters())
    torch.manual_seed(0)
    lazy.init_weights()
    assert differing(eager, lazy) == []


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(8, 24)  # drawn, then replaced by the subclass
        self.extra = nn.Linear(8, 8)  # drawn, then dropped
        self.out = nn.Linear(8, 8)


class Rebuilt(Base):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(8, 16, bias=False)
        self.extra = None


@pytest.mark.parametrize("match_eager", [False, True])
def test_children_built_then_replaced_or_dropped_are_drawn_as_eagerly(match_eager):
    # before: the replaced child's draws were skipped, so `attn` and `out` differed
    eager, lazy, after_eager, after_lazy = eager_then_deferred(
        Rebuilt, lambda m: wi.initialize(m, []), match_eager=match_eager)
    assert differing(eager, lazy) == []
    assert torch.equal(after_eager, after_lazy)


class Throwaway(nn.Module):
    """Builds a layer it never attaches (mmseg's FCNHead with num_convs=0 does)."""

    def __init__(self):
        super().__init__()
        self.seg = nn.Conv2d(8, 4, 1)
        layers = [nn.Conv2d(8, 8, 1)]
        nn.init.normal_(layers[0].weight, std=0.01)
        self.convs = nn.Identity()
        self.out = nn.Linear(8, 8)


class AssignsData(nn.Module):
    """Assigns ``.data`` in its constructor (mmcv's deformable attention does)."""

    def __init__(self):
        super().__init__()
        self.offsets = nn.Linear(8, 8)
        nn.init.constant_(self.offsets.weight, 0.0)
        self.offsets.bias.data = torch.arange(8.0)
        self.offsets.bias.data.mul_(2)
        self.out = nn.Linear(8, 8)


@pytest.mark.parametrize("build", [Throwaway, AssignsData])
@pytest.mark.parametrize("match_eager", [False, True])
def test_layers_never_attached_and_data_assignments_replay_as_eagerly(build, match_eager):
    # before: the never-attached conv's draws were skipped (`out` differed), and assigning
    # `.data` of a deferred parameter raised "incompatible tensor type"
    eager, lazy, after_eager, after_lazy = eager_then_deferred(
        build, lambda m: wi.initialize(m, []), match_eager=match_eager)
    assert differing(eager, lazy) == []
    assert torch.equal(after_eager, after_lazy)


def test_data_of_another_shape_leaves_the_parameter_undefined():
    class Reshapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.empty(4))
            self.w.data = torch.zeros(2, 2)

    with wi.deferred():
        m = Reshapes()
    with pytest.raises(wi.UndefinedParameterError,
                       match=r"w .*assigns \.data a tensor of shape \(2, 2\)"):
        wi.initialize(m, [])
    assert m.w.is_meta


def test_a_model_dropped_earlier_in_the_block_was_drawn_first_as_eagerly():
    torch.manual_seed(0)
    nn.Linear(8, 8)  # built and dropped
    eager = nn.Linear(8, 8)
    torch.manual_seed(0)
    with wi.deferred():
        nn.Linear(8, 8)
        lazy = nn.Linear(8, 8)
        kept = nn.Linear(8, 8)  # alive, not materialized: not ours to draw
    wi.initialize(lazy, [])
    assert differing(eager, lazy) == []
    assert kept.weight.is_meta
    torch.manual_seed(5)
    wi.initialize(kept, [])  # the dropped one was drawn by `lazy`'s run: not again
    torch.manual_seed(5)
    assert differing(nn.Linear(8, 8), kept) == []


def test_materialized_constructions_do_not_outlive_the_run():
    import gc
    import weakref

    with wi.deferred():
        m = nn.Linear(8, 8)
        m.extra = nn.Parameter(torch.full((1000,), 2.0))  # a computed value kept to copy in
        other = nn.Linear(4, 4)  # same block, still deferred: keeps the block alive
    value = weakref.ref(m.extra._wi_construction.ops[0][1][0])
    wi.initialize(m, [])
    gc.collect()
    assert value() is None
    assert other.weight.is_meta and len(other.weight._wi_construction.block) == 2
