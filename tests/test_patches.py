"""Process-wide stand-ins (``torch.load``, ``nn.Module._load_from_state_dict``): put in
place once per run with user code, not per user call; torch's own back after the run, or
after a failure; a replacement someone made meanwhile stays; holders count across threads.
"""

from __future__ import annotations

import threading
import types

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.execution import records, statedicts
from weightinit.execution.patches import SharedPatch

TORCH_LOAD = vars(torch)["load"]
TORCH_LOADS_STATE = vars(nn.Module)["_load_from_state_dict"]


class Leaf(wi.BaseModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def init_weights(self) -> None:
        nn.init.constant_(self.fc.weight, 0.5)
        assert vars(nn.Module)["_load_from_state_dict"] is not TORCH_LOADS_STATE
        assert torch.load is not TORCH_LOAD


class Failing(Leaf):
    def init_weights(self) -> None:
        super().init_weights()
        raise RuntimeError("user code failed")


class Tree(wi.BaseModule):
    """Three user calls one after the other (the root's init_weights is the library's)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.c = Leaf(), Leaf(), Failing() if fail else Leaf()


@pytest.fixture
def made(monkeypatch):
    """How many times each stand-in was made (put in place)."""
    counts = {"load": 0, "state": 0}
    for key, patch in (("load", records.TORCH_LOAD), ("state", statedicts.STATE_DICT_LOAD)):
        make = patch.make

        def counted(original, make=make, key=key):
            counts[key] += 1
            return make(original)

        monkeypatch.setattr(patch, "make", counted)
    return counts


def test_put_in_place_once_per_run_and_taken_out_after(made):
    model = Tree()
    model.init_weights()  # three user calls, one after the other
    assert made == {"load": 1, "state": 1}
    assert vars(nn.Module)["_load_from_state_dict"] is TORCH_LOADS_STATE
    assert torch.load is TORCH_LOAD
    assert torch.all(model.c.fc.weight == 0.5)


def test_taken_out_after_a_failed_run(made):
    model = Tree(fail=True)
    before = model.a.fc.weight.detach().clone()
    with pytest.raises(RuntimeError, match="user code failed"):
        model.init_weights()
    assert made == {"load": 1, "state": 1}
    assert vars(nn.Module)["_load_from_state_dict"] is TORCH_LOADS_STATE
    assert torch.load is TORCH_LOAD
    assert torch.equal(model.a.fc.weight, before)


def test_a_run_without_user_code_puts_nothing_in_place(made):
    model = wi.BaseModule(init_cfg=dict(type="Constant", val=1.0, layer="Linear"))
    model.fc = nn.Linear(2, 2)
    model.init_weights()
    assert made == {"load": 0, "state": 0}
    assert torch.all(model.fc.weight == 1.0)


def test_a_replacement_made_while_held_stays():
    owner = types.SimpleNamespace(f=lambda: "own")
    patch = SharedPatch(owner, "f", lambda original: lambda: "stand-in")
    with patch.held():
        assert owner.f() == "stand-in"
        assert patch.original() == "own"
        owner.f = lambda: "theirs"
    assert owner.f() == "theirs"
    assert patch.original is None


def test_holders_count_across_threads_and_the_last_puts_it_back():
    owner = types.SimpleNamespace(f=lambda: "own")
    made = []
    patch = SharedPatch(owner, "f", lambda original: made.append(1) or (lambda: "stand-in"))
    inside = threading.Barrier(5)
    leave = threading.Event()
    seen = []

    def hold() -> None:
        with patch.held():
            inside.wait(timeout=10)
            seen.append(owner.f())
            leave.wait(timeout=10)

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    inside.wait(timeout=10)
    assert owner.f() == "stand-in"
    leave.set()
    for t in threads:
        t.join(timeout=10)
    assert seen == ["stand-in"] * 4
    assert len(made) == 1
    assert owner.f() == "own"


def test_an_error_inside_puts_it_back_and_a_later_hold_makes_it_again():
    owner = types.SimpleNamespace(f=lambda: "own")
    made = []
    patch = SharedPatch(owner, "f", lambda original: made.append(1) or (lambda: "stand-in"))
    with pytest.raises(KeyError):
        with patch.held():
            raise KeyError("inside")
    assert owner.f() == "own"
    with patch.held():
        assert owner.f() == "stand-in"
    assert len(made) == 2 and owner.f() == "own"

