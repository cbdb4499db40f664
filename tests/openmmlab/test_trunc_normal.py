"""MMEngine's ``trunc_normal_`` (``trunc_normal_init``) in user code through
``weightinit.mmengine``: its five ops taken in one step, with what watching them one by one
gives (values, generator state, record entries, version counts), MMEngine's own function
back after the call. The stand-in on and off (off: MMEngine's function, watched op by op).
Far out in the tails (``std=0.02`` between -2 and 2) the one step is one draw of the
truncated normal under the same key, in place of the five ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

pytest.importorskip("mmengine.model")

import mmengine.model.weight_init as mm_weight_init  # noqa: E402
from mmengine.model import BaseModule  # noqa: E402
from mmengine.model.weight_init import trunc_normal_, trunc_normal_init  # noqa: E402

import weightinit as wi  # noqa: E402
import weightinit.mmengine as wim  # noqa: E402
from weightinit.execution import userchains  # noqa: E402
from weightinit.execution.parallel import draw_all  # noqa: E402
from weightinit.execution.tiles import RegionFill  # noqa: E402
from weightinit.maths import Elementwise  # noqa: E402

MMENGINES = mm_weight_init._no_grad_trunc_normal_


@pytest.fixture(autouse=True)
def _uninstalled():
    yield
    wim.uninstall()


class Head(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", val=0.5, layer="Linear"))
        self.proj = nn.Linear(192, 150)  # pending
        self.small = nn.Linear(8, 4)  # drawn at once
        self.versions: dict[str, int] = {}

    def init_weights(self) -> None:
        super().init_weights()
        before = {n: p._version for n, p in self.named_parameters()}
        trunc_normal_init(self.proj, std=0.02, bias=0.1)
        trunc_normal_(self.small.weight, mean=0.1, std=0.3, a=-0.4, b=0.9)
        self.versions = {n: p._version - before[n] for n, p in self.named_parameters()}


def _run(stand_in: bool, monkeypatch) -> tuple:
    torch.manual_seed(0)
    model = Head()
    wim.install()
    if not stand_in:
        monkeypatch.setattr(wim._TRUNC_NORMAL, "make", lambda original: original)
    taken: list[bool] = []
    real = userchains.take_draw_chain
    monkeypatch.setattr(userchains, "take_draw_chain",
                        lambda *a, **k: taken.append(real(*a, **k)) or taken[-1])
    torch.manual_seed(1)
    model.init_weights()
    state = torch.get_rng_state()
    wim.uninstall()
    monkeypatch.undo()
    texts = {n: r.info for n, r in wi.get_init_record(model).params.items()}
    return model, taken, state, texts


def test_one_step_is_the_ops_watched_one_by_one(monkeypatch):
    on = _run(True, monkeypatch)
    off = _run(False, monkeypatch)
    for (n, p), (_, q) in zip(on[0].named_parameters(), off[0].named_parameters()):
        if n != "proj.weight":
            assert torch.equal(p, q), n
    # proj.weight: one truncated normal under the key the five ops' uniform_ would take
    torch.manual_seed(1)
    key = int(torch.randint(0, 1 << 62, (), dtype=torch.int64))
    want = torch.empty(150, 192)
    draw_all([RegionFill(Elementwise("trunc_normal", (0.0, 0.02, -2.0, 2.0)), want, key)])
    got = on[0].proj.weight.detach()
    assert torch.equal(got, want)
    assert not torch.equal(got, off[0].proj.weight)
    assert got.std().item() == pytest.approx(0.02, rel=0.03)
    assert on[1] == [True, False] and off[1] == []
    assert torch.equal(on[2], off[2])
    assert on[3] == off[3]
    assert on[3]["proj.weight"] == "trunc_normal_init(std=0.02, bias=0.1) in Head.init_weights"
    assert on[0].versions == off[0].versions
    assert mm_weight_init._no_grad_trunc_normal_ is MMENGINES
