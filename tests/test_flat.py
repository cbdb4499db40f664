"""A run walks its model's tree once (:mod:`weightinit.planning.flat`): the walk answers
as torch's own ``named_modules``/``named_parameters``/``named_buffers`` do on every tree
shape, and a run whose user code changes the tree walks it again, so the record, the
watch and the checks see the tree as it is."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import weightinit as wi
from weightinit.planning import flat as flat_mod
from weightinit.planning.flat import Flat


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def _trees() -> dict[str, nn.Module]:
    shared = nn.Linear(3, 3)
    tied = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    tied[1].weight = tied[0].weight  # one parameter in two modules
    holes = nn.Sequential(nn.Linear(2, 2), nn.Identity())
    holes.add_module("empty", None)  # a None child
    holes[0].register_buffer("scale", torch.ones(2), persistent=False)
    holes[0].register_buffer("missing", None)
    param = nn.Linear(4, 4)
    parametrize.register_parametrization(param, "weight", _Double())
    deep: nn.Module = nn.Linear(2, 2)
    for i in range(30):
        deep = nn.Sequential(nn.BatchNorm1d(2), deep) if i % 3 else nn.ModuleDict({"x": deep})
    return {
        "shared module": nn.Sequential(shared, nn.ReLU(), shared, nn.Sequential(shared)),
        "tied parameter": tied,
        "None child, None buffer, non-persistent buffer": holes,
        "parametrized": param,
        "deep": deep,
        "one leaf": nn.Linear(2, 2),
    }


@pytest.mark.parametrize("name", list(_trees()))
def test_flat_walk_equals_torch_walks(name: str) -> None:
    root = _trees()[name]
    flat = Flat(root)
    assert flat.named_modules == list(root.named_modules())
    assert flat.named_parameters == list(root.named_parameters())
    assert flat.named_buffers == list(root.named_buffers())
    assert flat.modules == list(root.modules())
    assert flat.tensors == list(root.parameters()) + list(root.buffers())
    for m in root.modules():  # each subtree, shared modules included, as torch lists it
        assert flat.subtree(m) == list(m.modules())
        assert flat.contains(m)
    assert not flat.contains(nn.Linear(1, 1))
    names = {id(t): n for n, t in (*root.named_buffers(), *root.named_parameters())}
    for t in (*root.parameters(), *root.buffers()):
        assert flat.name_of(t) == names[id(t)]
    assert flat.name_of(torch.zeros(1)) is None


def test_flat_paths_name_the_first_place_a_shared_module_is_reached() -> None:
    shared = nn.Linear(3, 3)
    root = nn.Sequential(nn.Sequential(shared), shared)
    flat = Flat(root)
    assert flat.path(shared) == "0.0" == dict((id(m), n) for n, m in reversed(
        list(root.named_modules())))[id(shared)]
    assert flat.path(root) == ""
    assert flat.path(nn.ReLU()) == "?"


class _Renamed(nn.Module):
    """Shows torch's walks another tree (as FSDP1's wrapper strips its own prefix)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)

    def named_parameters(self, *args, **kwargs):  # type: ignore[override]
        for n, p in super().named_parameters(*args, **kwargs):
            yield n.replace("inner.", ""), p


def test_a_module_that_overrides_the_walks_is_asked_itself() -> None:
    root = nn.Sequential(_Renamed())
    flat = Flat(root)
    assert flat.named_parameters == list(root.named_parameters())
    top = _Renamed()
    assert [n for n, _ in Flat(top).named_parameters] == ["weight", "bias"]


def _count_walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the walks of a whole tree (a :class:`Flat` made)."""
    count = [0]
    real = flat_mod.Flat.__init__

    def counted(self: Flat, root: nn.Module) -> None:
        count[0] += 1
        real(self, root)

    monkeypatch.setattr(flat_mod.Flat, "__init__", counted)
    return count


class Block(wi.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=0.5, bias=0.0))
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class Net(wi.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="LayerNorm", val=2.0, bias=0.0))
        self.blocks = wi.ModuleList([Block() for _ in range(3)])


def test_a_run_walks_the_tree_once(monkeypatch: pytest.MonkeyPatch) -> None:
    count = _count_walks(monkeypatch)
    net = Net()
    net.init_weights()
    assert count[0] == 1
    assert set(wi.get_init_record(net).params) == {n for n, _ in net.named_parameters()}


class Grows(Net):
    """User code adds a head after its rules ran, and writes it."""

    def init_weights(self) -> None:
        super().init_weights()
        self.head = nn.Linear(4, 2)
        nn.init.constant_(self.head.weight, 3.0)


class Shrinks(Net):
    def init_weights(self) -> None:
        super().init_weights()
        del self.blocks[2]


class Moves(Net):
    """User code moves a block out of the list (same parameters, another path)."""

    def init_weights(self) -> None:
        super().init_weights()
        self.last = self.blocks[2]
        del self.blocks[2]
        nn.init.constant_(self.last.fc.weight, 7.0)


@pytest.mark.parametrize("cls", [Grows, Shrinks, Moves])
def test_user_code_that_changes_the_tree_is_seen_by_the_record(
        cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    count = _count_walks(monkeypatch)
    net = cls()
    net.init_weights()
    record = wi.get_init_record(net)
    assert list(record.params) == [n for n, _ in net.named_parameters()]
    assert count[0] == 2  # walked again after the user call, not once per question
    if cls is Grows:
        assert torch.equal(net.head.weight, torch.full((2, 4), 3.0))
        assert "init_weights" in record.params["head.weight"].info
    if cls is Moves:
        assert torch.equal(net.last.fc.weight, torch.full((4, 4), 7.0))
        assert torch.equal(net.last.fc.bias, torch.zeros(4))  # the rule's write, kept
        assert "last.fc.weight" in record.params and "blocks.2.fc.weight" not in record.params
    for m in net.modules():  # the run's leftovers are gone from every module, moved ones too
        assert "_wi_constructions" not in m.__dict__


class Replaces(Net):
    """User code gives a module a new parameter object, then a second user call (a child's
    own init_weights through its parent) must find it in the watch's index."""

    def init_weights(self) -> None:
        super().init_weights()
        self.blocks[0].fc.weight = nn.Parameter(torch.zeros(4, 4))
        self.blocks[0].fc.weight.data.add_(1.5)


def test_a_replaced_parameter_is_named_and_watched() -> None:
    net = Replaces()
    net.init_weights()
    record = wi.get_init_record(net)
    assert torch.equal(net.blocks[0].fc.weight, torch.full((4, 4), 1.5))
    assert "Replaces.init_weights" in record.params["blocks.0.fc.weight"].declared_in \
        or "init_weights" in record.params["blocks.0.fc.weight"].info
    assert record.params["blocks.1.fc.weight"].kind == "rule"
