"""User code under watch: planned writes wait, user writes cancel or force them, the record
names the call that wrote, overriding roots open the run, and a failure restores everything.

Attacks: reads through aliases and views, partial writes, ``.data =`` re-pointing,
replaced parameters, copies from a tensor with a pending write, failures after
overwrites (whose old storage was set aside, not copied), seeded reruns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import weightinit as wi


def C(val, **kw):
    return dict(type="Constant", val=val, bias=0.0, **kw)


def versions(m: nn.Module) -> dict[str, int]:
    return {n: p._version for n, p in m.named_parameters()}


def written(m: nn.Module, before: dict[str, int]) -> dict[str, int]:
    return {n: p._version - before[n] for n, p in m.named_parameters()}


class Block(wi.BaseModule):
    """Overrides init_weights: rewrites fc after super(), reads/rescales proj."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.fc = nn.Linear(8, 8)
        self.proj = nn.Linear(8, 8)

    def init_weights(self):
        super().init_weights()
        nn.init.xavier_uniform_(self.fc.weight)   # overwrites a pending write: cancels it
        self.proj.weight.data.div_(2.0)            # reads a pending write: done first


class Net(wi.BaseModule):
    def __init__(self):
        super().__init__(C(4.0, layer="Linear"))
        self.block = Block()
        self.head = nn.Linear(8, 2)


def test_overwrite_cancels_the_pending_write_and_read_sees_it():
    m = Net()
    before = versions(m)
    m.init_weights()
    w = written(m, before)
    assert w["block.fc.weight"] == 1  # the rule's write never happened
    assert torch.all(m.block.proj.weight == 2.0)  # Constant 4 written first, then halved
    assert w["head.weight"] == 1 and torch.all(m.head.weight == 4.0)
    bound = (6 / 16) ** 0.5
    assert m.block.fc.weight.abs().max() <= bound and m.block.fc.weight.std() > 0.1
    rec = m.init_record
    assert rec["block.fc.weight"].info == "xavier_uniform_() in Block.init_weights"
    assert rec["block.fc.weight"].kind == "user"
    assert rec["block.proj.weight"].info == "div_(2) in Block.init_weights"
    assert rec["block.proj.bias"].info == "ConstantInit: val=4.0, bias=0.0"


def test_deferred_model_each_rule_owned_tensor_written_once():
    with wi.deferred():
        m = Net()
    m.init_weights()
    assert {n: p._version for n, p in m.named_parameters()}["block.fc.weight"] == 1
    assert m.block.fc.bias._version == 1 and torch.all(m.block.fc.bias == 0.0)
    assert torch.all(m.block.proj.weight == 2.0)


class Partial(wi.BaseModule):
    def __init__(self):
        super().__init__(C(3.0, layer="Linear"))
        self.fc = nn.Linear(4, 4)
        self.other = nn.Linear(4, 4)

    def init_weights(self):
        super().init_weights()
        with torch.no_grad():
            self.fc.weight[:, 0] = 1.0          # partial write: the pending write goes first
            self.other.weight.copy_(self.fc.weight.t())  # reads fc (done) into other (overwrite)


class Outer(wi.BaseModule):
    def __init__(self):
        super().__init__()
        self.p = Partial()


def test_partial_write_and_copy_source_force_the_pending_write():
    m = Outer()
    m.init_weights()
    w = m.p.fc.weight
    assert torch.all(w[:, 0] == 1.0) and torch.all(w[:, 1:] == 3.0)
    assert torch.equal(m.p.other.weight, w.t())
    assert m.init_record["p.fc.weight"].info.endswith("in Partial.init_weights")
    assert m.init_record["p.fc.bias"].info == "ConstantInit: val=3.0, bias=0.0"


class Repoint(wi.BaseModule):
    def __init__(self):
        super().__init__(C(5.0, layer="Linear"))
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)

    def init_weights(self):
        super().init_weights()
        self.a.weight.data = torch.full((3, 3), 7.0)           # no op shows this write
        self.b.weight = nn.Parameter(torch.full((3, 3), 9.0))  # a new parameter object


class Holder(wi.BaseModule):
    def __init__(self):
        super().__init__()
        self.r = Repoint()


def test_data_assignment_and_replaced_parameter_are_recorded():
    m = Holder()
    old_b = m.r.b.weight
    m.init_weights()
    assert torch.all(m.r.a.weight == 7.0) and torch.all(m.r.b.weight == 9.0)
    assert m.r.b.weight is not old_b
    rec = m.init_record
    assert rec["r.a.weight"].info == "user-defined init_weights in Repoint"
    assert rec["r.b.weight"].info == "user-defined init_weights in Repoint"
    assert rec["r.a.bias"].info == "ConstantInit: val=5.0, bias=0.0"


class Failing(wi.BaseModule):
    fail = True

    def __init__(self):
        super().__init__(C(2.0, layer="Linear"))
        self.fc = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 6)

    def init_weights(self):
        super().init_weights()
        nn.init.normal_(self.fc.weight)       # whole overwrite: old storage set aside
        self.fc2.weight.data.mul_(3.0)         # forced pending write, then modified
        self.fc2.bias.data = torch.ones(6)     # re-pointed
        if self.fail:
            raise RuntimeError("boom")


def test_failure_in_an_overriding_root_restores_everything():
    m = Failing()
    params = {n: p for n, p in m.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    with pytest.raises(RuntimeError, match="boom"):
        m.init_weights()
    for n, p in m.named_parameters():
        assert p is params[n], n  # same objects
        assert torch.equal(p, before[n]), n  # same values
    assert not m.is_init and m.init_record is None
    m.fail = False  # a retry behaves like a first run
    m.init_weights()
    assert torch.all(m.fc2.weight == 6.0) and torch.all(m.fc2.bias == 1.0)
    assert m.init_record["fc.weight"].info == "normal_() in Failing.init_weights"
    assert m.is_init


class Root(wi.BaseModule):
    """The root class itself overrides init_weights (DETR-like)."""

    def __init__(self):
        super().__init__(C(1.0, layer="Linear"))
        self.enc = nn.Linear(5, 5)
        self.dec = nn.Linear(5, 5)

    def init_weights(self):
        super().init_weights()
        for p in self.enc.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)


def test_root_override_is_inside_the_run():
    m = Root()
    before = versions(m)
    m.init_weights()
    rec = m.init_record
    assert rec["enc.weight"].info == "xavier_uniform_() in Root.init_weights"
    assert rec["dec.weight"].info == "ConstantInit: val=1.0, bias=0.0"
    assert written(m, before)["enc.weight"] == 1  # the Constant write was cancelled
    assert m.is_init
    with pytest.warns(wi.RepeatedInitWarning):
        m.init_weights()  # a second call: super() warns, user code runs again as in MMEngine


def test_plan_of_an_overriding_root_says_user_code():
    p = wi.plan(Root())
    assert p["enc.weight"].owner_info == "user-defined init_weights in Root (runs user code)"
    assert p.planned_writes == 0


def test_root_override_takes_seed_and_is_reproducible():
    a, b = Root(), Root()
    a.init_weights(seed=3)
    b.init_weights(seed=3)
    assert torch.equal(a.enc.weight, b.enc.weight)
    c = Root()
    c.init_weights(seed=4)
    assert not torch.equal(a.enc.weight, c.enc.weight)


class Labelled(wi.BaseModule):
    def __init__(self):
        super().__init__(C(2.0, layer="Linear"))
        self.gate = nn.Linear(3, 3)
        self.rest = nn.Linear(3, 3)

    def init_weights(self):
        super().init_weights()
        nn.init.zeros_(self.gate.weight)
        wi.update_init_info(self, "zero gate")


def test_update_init_info_labels_what_the_call_wrote():
    m = Labelled()
    m.init_weights()
    rec = m.init_record
    assert rec["gate.weight"].info == "zero gate"
    assert rec["rest.weight"].info == "ConstantInit: val=2.0, bias=0.0"


class Shared(wi.BaseModule):
    """Two parameters on one storage: an overwrite of one must not lose the other."""

    def __init__(self):
        super().__init__(C(6.0, layer="Linear"))
        self.fc = nn.Linear(4, 4)
        self.alias = self.fc.weight.view(16)

    def init_weights(self):
        super().init_weights()
        nn.init.ones_(self.fc.weight)


def test_tensor_with_a_live_view_is_copied_not_re_pointed():
    m = Shared()
    m.init_weights()
    assert torch.all(m.alias == 1.0)  # the outside view still sees the parameter's storage


class BigUser(wi.BaseModule):
    """User code drawing a large tensor: drawn in pieces on every core, same distribution."""

    def __init__(self):
        super().__init__(C(1.0, layer="Linear"))
        self.fc = nn.Linear(1024, 512)  # 2**19 elements: the piecewise path

    def init_weights(self):
        super().init_weights()
        nn.init.normal_(self.fc.weight, mean=0.25, std=0.5)


@pytest.mark.parametrize("threads", [1, 2])
def test_large_user_draws_are_reproducible_and_distributed_right(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = BigUser(), BigUser()
        before = a.fc.weight._version
        torch.manual_seed(7)
        a.init_weights()
        torch.manual_seed(7)
        b.init_weights()
        seeded = BigUser()
        seeded.init_weights(seed=11)
    finally:
        torch.set_num_threads(old)
    w = a.fc.weight
    assert torch.equal(w, b.fc.weight)
    assert w._version == before + 1
    assert abs(float(w.mean()) - 0.25) < 0.01 and abs(float(w.std()) - 0.5) < 0.01
    assert a.init_record["fc.weight"].info == "normal_(mean=0.25, std=0.5) in BigUser.init_weights"
    again = BigUser()
    again.init_weights(seed=11)
    assert torch.equal(seeded.fc.weight, again.fc.weight)
    assert not torch.equal(seeded.fc.weight, w)


def test_large_user_draws_match_across_thread_counts():
    old = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            m = BigUser()
            torch.manual_seed(3)
            m.init_weights()
            out.append(m.fc.weight.detach().clone())
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out[0], out[1])


class NumpyUser(wi.BaseModule):
    """User code that leaves torch: reads and writes through NumPy views."""

    fail = False

    def __init__(self):
        super().__init__(C(4.0, layer="Linear"))
        self.src = nn.Linear(3, 3)
        self.dst = nn.Linear(3, 3)

    def init_weights(self):
        super().init_weights()
        seen = self.src.weight.detach().numpy().copy()  # must see the planned 4.0
        view = self.dst.weight.detach().numpy()
        view[:] = seen * 0.5                             # a write no ATen op shows
        if self.fail:
            raise RuntimeError("late failure")


def test_numpy_views_see_planned_values_and_their_writes_are_recorded_and_undone():
    m = NumpyUser()
    m.init_weights()
    assert torch.all(m.dst.weight == 2.0)
    assert m.init_record["dst.weight"].info == "user-defined init_weights in NumpyUser"
    assert m.init_record["src.weight"].info == "ConstantInit: val=4.0, bias=0.0"
    bad = NumpyUser()
    bad.fail = True
    before = {n: p.detach().clone() for n, p in bad.named_parameters()}
    with pytest.raises(RuntimeError, match="late failure"):
        bad.init_weights()
    for n, p in bad.named_parameters():
        assert torch.equal(p, before[n]), n


class RawUser(wi.BaseModule):
    """User code that reads planned values through each way memory leaves torch, and writes
    through a NumPy view (numpy 1.x's DLPack arrays are read-only)."""

    def __init__(self, how: str, fail: bool = False):
        super().__init__(C(4.0, layer="Linear"))
        self.src = nn.Linear(2, 2)
        self.dst = nn.Linear(2, 2)
        self.how, self.fail = how, fail

    def init_weights(self):
        super().init_weights()
        w = self.src.weight.detach()
        seen = {"tolist": lambda: np.array(w.tolist(), dtype=np.float32),
                "asarray": lambda: np.asarray(w).copy(),
                "dlpack": lambda: np.from_dlpack(w).copy()}[self.how]()
        self.dst.weight.detach().numpy()[:] = seen + 1.0  # a write no ATen op shows
        if self.fail:
            raise RuntimeError("late failure")


@pytest.mark.parametrize("how", ["tolist", "asarray", "dlpack"])
def test_every_raw_read_sees_planned_values_and_raw_writes_are_undone(how):
    m = RawUser(how)
    m.init_weights()
    assert torch.all(m.dst.weight == 5.0)  # read the planned 4.0, not the constructor's
    bad = RawUser(how, fail=True)
    before = {n: p.detach().clone() for n, p in bad.named_parameters()}
    with pytest.raises(RuntimeError, match="late failure"):
        bad.init_weights()
    for n, p in bad.named_parameters():
        assert torch.equal(p, before[n]), n


class Loader(wi.BaseModule):
    """Loads a 'checkpoint' itself, as MMSegmentation's backbones do (load_state_dict)."""

    fail = False

    def __init__(self):
        super().__init__(C(1.0, layer="Linear"))
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.state = None

    def init_weights(self):
        super().init_weights()
        self.load_state_dict(self.state)
        if self.fail:
            raise RuntimeError("after the load")


def _file_like_state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.randn(v.shape) for k, v in m.state_dict().items()}


def test_whole_copy_from_a_fresh_source_and_rollback():
    m = Loader()
    m.state = _file_like_state(m)
    expected = {k: v.clone() for k, v in m.state.items()}
    before = versions(m)
    m.init_weights()
    for k, v in m.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert all(n == 1 for n in written(m, before).values())
    assert m.init_record["a.weight"].info.startswith("load_state_dict(")
    bad = Loader()
    bad.fail = True
    bad.state = _file_like_state(bad)
    params = dict(bad.named_parameters())
    old = {n: p.detach().clone() for n, p in params.items()}
    with pytest.raises(RuntimeError, match="after the load"):
        bad.init_weights()
    for n, p in bad.named_parameters():
        assert p is params[n] and torch.equal(p, old[n]), n


def test_copy_sources_that_are_shared_are_copied_not_taken():
    m = Loader()
    shared = torch.randn(8, 8)
    m.state = {**_file_like_state(m), "a.weight": shared, "b.weight": shared}
    other = Loader()  # another model's tensors: state_dict() hands out aliases of them
    m.init_weights()
    m.a.weight.data.add_(1.0)  # a and b got the same source: they must not share memory
    assert torch.equal(m.b.weight, shared) and torch.equal(m.a.weight, shared + 1.0)
    n = Loader()
    n.state = other.state_dict()
    n.init_weights()
    with torch.no_grad():
        n.a.weight.add_(1.0)
    assert not torch.equal(n.a.weight, other.a.weight)  # no memory shared with `other`
    view = torch.randn(8, 8)
    alias = view.view(64)  # the source has a live view: copied, not taken
    k = Loader()
    k.state = {**_file_like_state(k), "a.weight": view}
    k.init_weights()
    alias.zero_()
    assert not torch.all(k.a.weight == 0.0)


class LoadThenTouch(wi.BaseModule):
    """Writes after the load, to the source and to the parameter (through .data)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.state = None

    def init_weights(self):
        self.load_state_dict(self.state)
        self.state["a.bias"].zero_()        # the source changes after the load
        self.a.weight.data.mul_(2.0)        # the parameter changes after the load


def test_writes_after_a_load_never_show_through_the_other_side():
    m = LoadThenTouch()
    m.state = {k: torch.randn(v.shape) + 5.0 for k, v in m.state_dict().items()}
    loaded = {k: v.clone() for k, v in m.state.items()}
    m.init_weights()
    assert torch.equal(m.a.bias, loaded["a.bias"])          # not zeroed with its source
    assert torch.equal(m.a.weight, loaded["a.weight"] * 2)
    assert torch.equal(m.state["a.weight"], loaded["a.weight"])  # the source kept its values
    assert torch.all(m.state["a.bias"] == 0.0)


def test_user_code_inside_the_library_inside_user_code_is_watched(monkeypatch):
    """The watch steps off while the library runs inside user code (a nested
    ``wi.initialize``) and comes back for user code the library calls there (an
    initializer that only defines ``__call__``): its write is recorded under its name, and
    undone when the outer user code fails afterwards."""
    @wi.WEIGHT_INITIALIZERS.register_module(name="_NestedSevens", force=True)
    class Sevens:
        def __call__(self, module):
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    sub.weight.data.fill_(7.0)  # through .data: only the watch sees it

    class Outer(wi.BaseModule):
        def __init__(self, fail: bool) -> None:
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(3, 3))
            self.head = nn.Linear(3, 1)
            self.fail = fail

        def init_weights(self) -> None:
            wi.initialize(self.inner, dict(type="_NestedSevens"))
            self.head.weight.data.fill_(2.0)  # user code again after the nested library
            if self.fail:
                raise RuntimeError("outer user code fails")

    from weightinit.execution.writewatch import WriteWatch
    stepped = []
    original = WriteWatch.__exit__

    def exit_(self, *exc):
        stepped.append(self.active[-1] if self.active else None)
        return original(self, *exc)

    monkeypatch.setattr(WriteWatch, "__exit__", exit_)
    model = Outer(fail=False)
    model.init_weights()
    assert False in stepped  # it did step off for the nested library run
    assert torch.equal(model.inner[0].weight, torch.full((3, 3), 7.0))
    assert torch.equal(model.head.weight, torch.full((1, 3), 2.0))
    record = wi.get_init_record(model)
    assert "Sevens" in record["inner.0.weight"].info, record["inner.0.weight"].info
    assert "Outer.init_weights" in record["head.weight"].info

    failing = Outer(fail=True)
    before = {k: v.detach().clone() for k, v in failing.state_dict().items()}
    with pytest.raises(RuntimeError, match="outer user code fails"):
        failing.init_weights()
    for k, v in failing.state_dict().items():
        assert torch.equal(v, before[k]), k


#: a helper library of its own file (calls into it are named by their arguments)
_LIB = type(wi)("fill_helpers")
_LIB.torch = torch
exec(compile("def scaled_fill(t, val, scratch):\n    with torch.no_grad():\n"
             "        t.fill_(val)\n        t.mul_(1.0)\n", "fill_helpers.py", "exec"),
     _LIB.__dict__)


def test_each_library_call_is_named_by_its_own_arguments_and_let_go_after():
    """Attribution reuses the name of the library call a write came from while that same
    call runs: calls in a loop (each a new frame) keep their own arguments, two ops of one
    call share its name, and the run holds none of the call's locals once it returns."""
    import weakref

    class Many(wi.BaseModule):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def init_weights(self):
            scratch = torch.empty(1 << 16)
            self.scratch_ref = weakref.ref(scratch)
            for i, lin in enumerate((self.a, self.b, self.c)):
                _LIB.scaled_fill(lin.weight, float(i + 1), scratch)
            del scratch

    m = Many()
    m.init_weights()
    rec = m.init_record
    for i, name in enumerate("abc"):
        assert rec[f"{name}.weight"].info == f"scaled_fill(val={i + 1:g}) in Many.init_weights"
        assert torch.equal(getattr(m, name).weight, torch.full((4, 4), float(i + 1)))
        assert getattr(m, name).weight._version >= 2
    assert m.scratch_ref() is None  # the last helper frame (and its scratch) was let go
