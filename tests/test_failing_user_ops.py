"""An op of user code that raises, caught by user code: the model is left as eager torch
leaves it (the op wrote nothing), and the run goes on from there.

A whole overwrite (``copy_``, ``fill_``, ...) of a model tensor moves the tensor to a fresh
storage before the op runs (the old one is kept to undo the run) and cancels the tensor's
pending write. If the op raises (a ``meta`` source, a shape that does not broadcast) and
user code catches the error, as MMCV's ``load_state_dict(strict=False)`` does for the
errors torch collects, the tensor must be back on its storage with its values, its pending
write still due and its record entry unchanged. An op that reads the tensor it overwrites
(``t.copy_(t)``, ``t.copy_(t.view(...))``) is not an overwrite at all: what it writes is
what the tensor holds, pending write included.

Each case runs the same user code eagerly on a plain copy of the model (the rule's values
written first, as MMEngine/MMCV write them) and compares every tensor bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import weightinit as wi

RULE = dict(type="Constant", val=3.0, bias=0.25, layer="Linear")


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _meta_source(w: torch.Tensor) -> None:
    w.copy_(torch.empty(w.shape, device="meta"))


def _bad_shape(w: torch.Tensor) -> None:
    w.copy_(torch.ones(3, 3))


def _bad_fill(w: torch.Tensor) -> None:
    w.fill_(torch.ones(2))  # (a tensor value must have no dimensions)


FAILING = {"meta source": _meta_source, "shape": _bad_shape, "fill with a vector": _bad_fill}

SELF_READS = {
    "copy_ of itself": lambda w: w.copy_(w),
    "copy_ of a view of itself": lambda w: w.copy_(w.view(4, 4)),
    "copy_ of its transpose twice": lambda w: w.copy_(w.t().t()),
    "copy_ of its .data": lambda w: w.copy_(w.data),
}


class Net(wi.BaseModule):
    def __init__(self, body, cfg=None, then=None, catch=True) -> None:
        super().__init__(init_cfg=cfg)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)
        self.body, self.then, self.catch = body, then, catch
        self.caught: list[BaseException] = []

    def init_weights(self) -> None:
        super().init_weights()
        with torch.no_grad():
            if self.catch:
                try:
                    self.body(self.a.weight)
                except Exception as err:  # noqa: BLE001 - what user code does
                    self.caught.append(err)
            else:
                self.body(self.a.weight)
            if self.then is not None:
                self.then(self)


def _eager(net: Net, cfg) -> Net:
    """The same model and user code run eagerly: the rule's values first, then the body."""
    twin = copy.deepcopy(net)
    with torch.no_grad():
        if cfg is not None:
            for lin in (twin.a, twin.b):
                lin.weight.fill_(cfg["val"])
                lin.bias.fill_(cfg["bias"])
        _body_only(twin)
    return twin


def _body_only(twin: Net) -> None:
    if twin.catch:
        try:
            twin.body(twin.a.weight)
        except Exception as err:  # noqa: BLE001
            twin.caught.append(err)
    else:
        twin.body(twin.a.weight)
    if twin.then is not None:
        twin.then(twin)


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("cfg", [None, RULE], ids=["no rule", "rule pending"])
@pytest.mark.parametrize("case", FAILING)
def test_a_caught_failing_overwrite_leaves_the_tensor_as_it_was(case, cfg):
    torch.manual_seed(0)
    net = Net(FAILING[case], cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ptr = _ptr(net.a.weight)
    twin = _eager(net, cfg)
    assert len(twin.caught) == 1  # (eager torch raises too)
    net.init_weights()
    assert [type(e) for e in net.caught] == [type(e) for e in twin.caught]
    assert str(net.caught[0]) == str(twin.caught[0])
    _same(net, twin)
    if cfg is None:  # nothing was written: every tensor bit-identical, on its own memory
        assert torch.equal(net.a.weight, before["a.weight"])
        assert _ptr(net.a.weight) == ptr
    else:
        assert torch.all(net.a.weight == 3.0)
    info = wi.get_init_record(net).params["a.weight"].info
    # the failed op wrote nothing: the entry is the rule's (or none)
    assert info == ("ConstantInit: val=3.0, bias=0.25" if cfg else
                    "not changed by init_weights of Net")


@pytest.mark.parametrize("cfg", [None, RULE], ids=["no rule", "rule pending"])
@pytest.mark.parametrize("case", SELF_READS)
def test_an_op_that_reads_the_tensor_it_writes_is_not_an_overwrite(case, cfg):
    torch.manual_seed(1)
    net = Net(SELF_READS[case], cfg, catch=False)
    twin = _eager(net, cfg)
    net.init_weights()
    _same(net, twin)
    if cfg is not None:
        assert torch.all(net.a.weight == 3.0)  # (the rule's values, read by the copy)
    assert wi.get_init_record(net).params["a.weight"].info == "copy_() in Net.init_weights"


def test_after_a_caught_failure_the_next_overwrite_and_an_undo_are_exact():
    """The tensor is usable after the failed op: a later whole copy is the user's write;
    a failure that ends the run then puts back every tensor bit for bit."""
    torch.manual_seed(2)
    source = torch.randn(4, 4)

    def then(net: Net) -> None:
        net.a.weight.copy_(source)

    net = Net(_meta_source, RULE, then=then)
    net.init_weights()
    assert torch.equal(net.a.weight, source)
    assert torch.all(net.a.bias == 0.25)
    assert wi.get_init_record(net).params["a.weight"].info == "copy_() in Net.init_weights"

    def fail(net: Net) -> None:
        then(net)
        raise ValueError("user code fails after the caught error")

    net = Net(_bad_shape, RULE, then=fail)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ptrs = {k: _ptr(v) for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="user code fails after the caught error"):
        net.init_weights()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert _ptr(v) == ptrs[k], k
    assert not net.is_init


def test_errors_a_load_collects_leave_the_parameter_and_its_rule_write():
    """torch's ``_load_from_state_dict`` catches a failing ``copy_`` and reports it (MMCV's
    ``load_state_dict(strict=False)`` logs the report and goes on): the parameter keeps
    its pending rule write; the other entries are loaded."""
    torch.manual_seed(3)
    bias = torch.randn(4)

    def load(w: torch.Tensor) -> None:
        raise RuntimeError("(not used)")

    class Loader(Net):
        def init_weights(self) -> None:
            wi.BaseModule.init_weights(self)
            errors: list[str] = []
            state = {"weight": torch.empty(4, 4, device="meta"), "bias": bias}
            self.a._load_from_state_dict(state, "", {}, True, [], [], errors)
            self.caught.extend(errors)

    net = Loader(load, RULE)
    net.init_weights()
    assert len(net.caught) == 1 and "While copying the parameter named" in net.caught[0]
    assert torch.all(net.a.weight == 3.0)
    assert torch.equal(net.a.bias, bias)
    record = wi.get_init_record(net).params
    assert record["a.weight"].info == "ConstantInit: val=3.0, bias=0.25"
    assert record["a.bias"].info.startswith("_load_from_state_dict(")


def _index_put_out_of_range(w: torch.Tensor) -> None:
    w.index_put_((torch.tensor([0, 10]),), torch.full((2, 4), 7.0))


def _scatter_out_of_range(w: torch.Tensor) -> None:
    w.view(-1).scatter_(0, torch.tensor([0, 1, 20]), torch.full((3,), 7.0))


@pytest.mark.parametrize("body, written", [
    (_index_put_out_of_range, "index_put_() in Net.init_weights"),
    (_scatter_out_of_range, "scatter_(0) in Net.init_weights")], ids=["index_put_", "scatter_"])
def test_an_op_that_writes_part_then_raises_is_recorded_as_a_write(body, written):
    """torch's index ops write the rows before a bad index, then raise (and count no
    write): the values are eager torch's, and the record names the op."""
    torch.manual_seed(4)
    net = Net(body, RULE)
    twin = _eager(net, RULE)
    assert len(twin.caught) == 1
    assert not torch.all(twin.a.weight == 3.0)  # (eager torch did write part of it)
    net.init_weights()
    assert [str(e) for e in net.caught] == [str(e) for e in twin.caught]
    _same(net, twin)
    assert wi.get_init_record(net).params["a.weight"].info == written


def test_a_custom_op_that_writes_part_then_raises_is_recorded_as_a_write():
    if not hasattr(torch.library, "custom_op"):
        pytest.skip("torch.library.custom_op is newer than this torch")

    def half_then_raise(t):
        t.view(-1)[: t.numel() // 2] = 7.0
        raise RuntimeError("failed half way")

    # (real types: this file's annotations are strings, which older torch can not read)
    half_then_raise.__annotations__ = {"t": torch.Tensor, "return": None}
    half_then_raise = torch.library.custom_op(
        "weightinit_tests::half_then_raise", mutates_args=("t",))(half_then_raise)

    net = Net(lambda w: half_then_raise(w), RULE)
    net.init_weights()
    assert [str(e) for e in net.caught] == ["failed half way"]
    flat = net.a.weight.view(-1)
    assert torch.all(flat[:8] == 7.0) and torch.all(flat[8:] == 3.0)  # as eager leaves it
    info = wi.get_init_record(net).params["a.weight"].info
    assert info == "half_then_raise() in Net.init_weights"
