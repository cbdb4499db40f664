"""Differential tests: weightinit against MMEngine's own weight-initialization system.

The same model structure is built twice — once on weightinit's
``BaseModule``/``Sequential``/``ModuleList``/``ModuleDict`` and once on
MMEngine's — from one factory that takes the base classes (a "kit"). Both
start from the same ``state_dict``; after ``init_weights()`` every parameter
and buffer must be bit-identical. Rules are ``Constant`` with distinct
``val``/``bias`` so the value shows which rule won.

Also covered: random rules follow the same distribution (statistical bounds),
errors raise MMEngine's exception class (and ``weightinit.InitError``) without
touching the model, and the init record matches what MMEngine logs.

Documented differences (SPEC A3) are tested as differences: layer matching
follows the whole inheritance chain, and weightinit records exact writes
where MMEngine's mean-based detection misses them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import re
import socket
import sys
import types
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn as nn

import weightinit as wi

mme = pytest.importorskip("mmengine.model")


# --------------------------------------------------------------------------- kits

WI = SimpleNamespace(name="weightinit", BaseModule=wi.BaseModule, Sequential=wi.Sequential,
                     ModuleList=wi.ModuleList, ModuleDict=wi.ModuleDict,
                     initialize=wi.initialize, ConstantInit=wi.ConstantInit,
                     update_init_info=wi.update_init_info)
MM = SimpleNamespace(name="mmengine", BaseModule=mme.BaseModule, Sequential=mme.Sequential,
                     ModuleList=mme.ModuleList, ModuleDict=mme.ModuleDict,
                     initialize=mme.initialize, ConstantInit=mme.ConstantInit,
                     update_init_info=mme.update_init_info)


class MyLinear(nn.Linear):
    """Its direct base is ``Linear``: both libraries match it with layer='Linear'."""


class MyMyLinear(MyLinear):
    """``Linear`` is only a grand-base: MMEngine does not match it, weightinit does (SPEC A3)."""


LEAVES: dict[str, Callable[[], nn.Module]] = {
    "fc": lambda: nn.Linear(4, 3),
    "fc2": lambda: nn.Linear(3, 5),
    "conv": lambda: nn.Conv2d(2, 3, 3),
    "bn": lambda: nn.BatchNorm2d(3),
    "ln": lambda: nn.LayerNorm(3),
    "my": lambda: MyLinear(3, 2),
    "mymy": lambda: MyMyLinear(3, 2),
}


class UserLeaf(nn.Module):
    """A plain ``nn.Module`` whose user-defined ``init_weights`` writes constants.

    If it holds an ``inner`` module with ``init_weights``, it calls it after
    writing its own ``fc`` (user code reaching further down).
    """

    def __init__(self, val: float, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.val = val
        self.fc = nn.Linear(3, 2)
        if inner is not None:
            self.inner = inner

    def init_weights(self) -> None:
        with torch.no_grad():
            self.fc.weight.fill_(self.val)
            self.fc.bias.fill_(self.val + 0.25)
        inner = getattr(self, "inner", None)
        if inner is not None and hasattr(inner, "init_weights"):
            inner.init_weights()


class Box(nn.Module):
    """A plain container without ``init_weights``: MMEngine never calls into it."""

    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        for name, child in children.items():
            setattr(self, name, child)


@functools.cache
def classes(kit_name: str) -> SimpleNamespace:
    kit = WI if kit_name == "weightinit" else MM

    class Node(kit.BaseModule):
        """A BaseModule with some leaf layers and any children."""

        def __init__(self, init_cfg: Any = None, leaves: tuple[str, ...] = ("fc",),
                     **children: nn.Module) -> None:
            super().__init__(init_cfg=init_cfg)
            for name in leaves:
                setattr(self, name, LEAVES[name]())
            for name, child in children.items():
                setattr(self, name, child)

    class Gate(nn.Module):
        """A plain module whose init_weights labels its own write with update_init_info."""

        def __init__(self) -> None:
            super().__init__()
            self.gate = nn.Linear(3, 3)
            self.other = nn.Linear(3, 3)

        def init_weights(self) -> None:
            with torch.no_grad():
                self.gate.weight.fill_(0.0)
            kit.update_init_info(self, "zero gate (update_init_info)")
            with torch.no_grad():
                self.other.weight.fill_(2.0)

    class Overriding(Node):
        """Overrides ``init_weights``: runs the BaseModule logic, then writes fc.weight itself."""

        def init_weights(self) -> None:
            super().init_weights()
            with torch.no_grad():
                self.fc.weight.fill_(9.0)

    return SimpleNamespace(Node=Node, Overriding=Overriding, Gate=Gate)


def kit_of(name: str) -> SimpleNamespace:
    kit = WI if name == "weightinit" else MM
    return SimpleNamespace(**vars(kit), **vars(classes(name)))


def _mm_checkpoint_modules() -> dict[str, types.ModuleType]:
    """MMEngine's PretrainedInit imports ``mmengine.runner.checkpoint``; the
    ``mmengine.runner`` package imports hooks that need OpenCV, which
    mmengine-lite does not install. Without cv2, load ``checkpoint.py`` (which
    needs no cv2) under a bare package object instead, used only during tests."""
    if importlib.util.find_spec("cv2") is not None:
        return {}
    spec = importlib.util.find_spec("mmengine.runner")
    assert spec is not None and spec.submodule_search_locations is not None
    stub = types.ModuleType("mmengine.runner")
    stub.__path__ = list(spec.submodule_search_locations)
    saved = sys.modules.get("mmengine.runner")
    sys.modules["mmengine.runner"] = stub
    try:
        checkpoint = importlib.import_module("mmengine.runner.checkpoint")
    finally:
        if saved is None:
            sys.modules.pop("mmengine.runner", None)
        else:
            sys.modules["mmengine.runner"] = saved
        sys.modules.pop("mmengine.runner.checkpoint", None)
    return {"mmengine.runner": stub, "mmengine.runner.checkpoint": checkpoint}


MM_CHECKPOINT_MODULES = _mm_checkpoint_modules()


@pytest.fixture(autouse=True)
def mm_checkpoint_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, module in MM_CHECKPOINT_MODULES.items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture(autouse=True)
def mm_record(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What MMEngine would log per parameter, captured from ``_params_init_info``."""
    captured: dict[str, str] = {}

    def dump(self: nn.Module) -> None:
        captured.clear()
        for name, param in self.named_parameters():
            captured[name] = self._params_init_info[param]["init_info"]

    monkeypatch.setattr(mme.BaseModule, "_dump_init_info", dump)
    return captured


# --------------------------------------------------------------------------- helpers

Build = Callable[[SimpleNamespace], nn.Module]


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, by name (non-persistent buffers included)."""
    out = dict(model.named_parameters())
    out.update(model.named_buffers())
    return out


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in tensors(model).items()}


def assert_identical(a: nn.Module, b: nn.Module | dict[str, torch.Tensor]) -> None:
    ta = tensors(a)
    tb = b if isinstance(b, dict) else tensors(b)
    assert list(ta) == list(tb)
    diff = [n for n in ta if not torch.equal(ta[n], tb[n])]
    assert not diff, f"tensors differ: {diff}"


def randomize(model: nn.Module, seed: int, params: bool = True) -> None:
    """Distinct random values everywhere, so no rule writes a tensor's current mean."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if params:
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        for name, buf in model.named_buffers():
            if buf.is_floating_point():
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
            elif "num_batches_tracked" in name:
                buf.fill_(seed % 97 + 3)


def build_pair(build: Build, seed: int = 0,
               params: bool = True) -> tuple[nn.Module, nn.Module]:
    """The same structure on both kits, with identical starting values."""
    torch.manual_seed(seed)
    wm = build(kit_of("weightinit"))
    randomize(wm, seed, params)
    mm = build(kit_of("mmengine"))
    mm.load_state_dict(wm.state_dict())
    assert_identical(wm, mm)
    return wm, mm


MM_UNCHANGED = re.compile(r"The value is the same before and after calling `init_weights` of "
                          r"(\w+) ")
MM_USER = re.compile(r"Initialized by user-defined `init_weights` in (\w+) ")
WI_USER_CALL = re.compile(r"\w+\(.*\) in (\w+)\.init_weights")


def norm_mm(text: str) -> tuple[str, str]:
    """MMEngine's text -> ('unchanged'|'user', class) or ('text', exact rule/user text)."""
    if m := MM_UNCHANGED.fullmatch(text):
        return "unchanged", m.group(1)
    if m := MM_USER.fullmatch(text):
        return "user", m.group(1)
    return "text", text


def norm_wi(rec: wi.ParamRecord) -> tuple[str, str]:
    """weightinit's record, in the same terms (its wording differs on purpose)."""
    if rec.kind == "unchanged":
        assert rec.info.startswith("not changed by init_weights of "), rec.info
        return "unchanged", rec.info.removeprefix("not changed by init_weights of ")
    if rec.kind == "user" and rec.info.startswith("user-defined init_weights in "):
        return "user", rec.info.removeprefix("user-defined init_weights in ")
    if rec.kind == "user" and (m := WI_USER_CALL.fullmatch(rec.info)):
        return "user", m.group(1)  # weightinit names the call that wrote, MMEngine the class
    assert rec.kind in ("rule", "pretrained", "initializer", "user"), rec.kind
    return "text", rec.info


def assert_same_record(wm: nn.Module, mm_record: dict[str, str]) -> None:
    record = wm.init_record
    assert record is not None
    assert set(record.params) == set(mm_record)
    ours = {n: norm_wi(record[n]) for n in mm_record}
    theirs = {n: norm_mm(t) for n, t in mm_record.items()}
    diff = {n: (ours[n], theirs[n]) for n in theirs if ours[n] != theirs[n]}
    assert not diff, f"records differ (weightinit, mmengine): {diff}"


def check_parity(build: Build, mm_record: dict[str, str] | None,
                 seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Build on both kits, init_weights() both, assert bit-identical tensors (and records)."""
    wm, mm = build_pair(build, seed)
    before = snapshot(wm)
    wm.init_weights()
    mm.init_weights()
    assert_identical(wm, mm)
    assert any(not torch.equal(before[n], t) for n, t in tensors(wm).items()), "nothing written"
    if mm_record is not None:
        assert_same_record(wm, mm_record)
    return wm, mm


def const(val: float, bias: float | None = None, **more: Any) -> dict:
    cfg = dict(type="Constant", val=val, **more)
    if bias is not None:
        cfg["bias"] = bias
    return cfg


def assert_filled(model: nn.Module, expected: dict[str, float]) -> None:
    """Each named tensor is filled with exactly this value."""
    t = tensors(model)
    for name, val in expected.items():
        assert torch.all(t[name] == torch.tensor(val, dtype=t[name].dtype)), (name, t[name], val)


def make_checkpoint(build: Build, path, seed: int, *, keys: Callable[[str], bool] | None = None,
                    rename: Callable[[str], str] = lambda k: k, nest: bool = False) -> dict:
    """Save a state_dict of the same structure with fresh random values; return it."""
    torch.manual_seed(1000 + seed)
    src = build(kit_of("weightinit"))
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(mean=seed, std=1.0)
    randomize(src, 1000 + seed, params=False)
    state = {rename(k): v for k, v in src.state_dict().items() if keys is None or keys(k)}
    torch.save({"state_dict": state, "meta": {"epoch": 3}} if nest else state, path)
    return {k: v.clone() for k, v in src.state_dict().items() if keys is None or keys(k)}


def assert_from(model: nn.Module, ckpt: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Every checkpoint entry landed in ``model`` under ``prefix``."""
    t = tensors(model)
    assert ckpt
    for k, v in ckpt.items():
        assert torch.equal(t[prefix + k], v), prefix + k


# ===================================================================== 1. priority


def test_deeper_init_cfg_wins(mm_record):
    def build(k):
        great = k.Node(const(4, 0.125, layer="Linear"), leaves=("fc", "conv"))
        grand = k.Node(None, leaves=("fc", "conv"), great=great)
        child = k.Node(const(2, 0.5, layer=["Linear", "Conv2d"]), leaves=("fc", "conv"),
                       grand=grand)
        return k.Node(const(1, 0.25, layer=["Linear", "Conv2d"]), leaves=("fc", "conv", "bn"),
                      child=child)

    wm, mm = check_parity(build, mm_record)
    assert_filled(wm, {"fc.weight": 1, "conv.bias": 0.25, "child.fc.weight": 2,
                       "child.grand.conv.weight": 2, "child.grand.great.fc.bias": 0.125,
                       "child.grand.great.conv.weight": 2})
    # A second call only warns, in both.
    after = snapshot(wm)
    wm.init_weights()
    mm.init_weights()
    assert_identical(wm, after)
    assert_identical(mm, after)


def test_last_rule_in_list_wins(mm_record):
    def build(k):
        return k.Node([const(1, 0.5, layer="Linear"),
                       const(2, 0.75, layer=["Linear", "Conv2d", "Nothing"]),
                       const(3, bias_prob=0.01, layer="Conv2d"),
                       const(5, -1.5, layer="BatchNorm2d")],
                      leaves=("fc", "conv", "bn", "ln"))

    wm, _ = check_parity(build, mm_record)
    assert_filled(wm, {"fc.weight": 2, "fc.bias": 0.75, "conv.weight": 3,
                       "conv.bias": wi.bias_init_with_prob(0.01), "bn.weight": 5})


def test_override_name_only_reuses_type_and_args(mm_record):
    def build(k):
        head = k.Node(None, leaves=("conv", "bn", "fc", "ln"))
        return k.Node(const(1, 0.5, layer="Linear", override=dict(name="head")),
                      leaves=("fc", "conv"), head=head)

    wm, _ = check_parity(build, mm_record)
    # The override ignores `layer`: every weight/bias inside head gets the rule.
    assert_filled(wm, {"fc.weight": 1, "head.conv.weight": 1, "head.conv.bias": 0.5,
                       "head.bn.weight": 1, "head.ln.bias": 0.5, "head.fc.weight": 1})
    assert not torch.all(wm.conv.weight == 1)


def test_override_with_full_args_and_list(mm_record):
    def build(k):
        return k.Node(const(1, 0.5, layer="Linear", override=[
            dict(name="fc2"),
            dict(name="conv", type="Constant", val=7, bias=0.875),
            dict(name="bn", type="Constant", val=6, bias_prob=0.1),
        ]), leaves=("fc", "fc2", "conv", "bn", "ln"))

    wm, _ = check_parity(build, mm_record)
    assert_filled(wm, {"fc.weight": 1, "fc2.weight": 1, "fc2.bias": 0.5, "conv.weight": 7,
                       "conv.bias": 0.875, "bn.weight": 6,
                       "bn.bias": wi.bias_init_with_prob(0.1)})


def test_override_on_child_with_own_init_cfg_loses_to_child(mm_record):
    def build(k):
        head = k.Node(const(3, 0.375, layer="Conv2d"), leaves=("conv", "fc"))
        return k.Node(const(1, 0.5, layer="Linear",
                            override=dict(name="head", type="Constant", val=2, bias=0.625)),
                      head=head)

    wm, _ = check_parity(build, mm_record)
    assert_filled(wm, {"head.conv.weight": 3, "head.fc.weight": 2, "head.fc.bias": 0.625})


def test_layer_matches_direct_base_class(mm_record):
    def build(k):
        inner = k.Node(const(3, 0.375, layer="MyLinear"), leaves=("my", "mymy", "fc"))
        return k.Node(const(2, 0.5, layer="Linear"), leaves=("my", "fc"), inner=inner)

    wm, _ = check_parity(build, mm_record)
    # MyLinear's direct base is Linear; MyMyLinear's direct base is MyLinear.
    assert_filled(wm, {"my.weight": 2, "inner.my.weight": 3, "inner.mymy.weight": 3,
                       "inner.fc.weight": 2})


def test_layer_grand_base_class_is_a_documented_difference():
    """SPEC A3: weightinit follows the whole inheritance chain; MMEngine only direct bases."""
    def build(k):
        return k.Node(const(2, 0.5, layer="Linear"), leaves=("mymy", "fc"))

    wm, mm = build_pair(build)
    before = snapshot(mm)
    wm.init_weights()
    mm.init_weights()
    assert torch.equal(mm.mymy.weight, before["mymy.weight"])  # MMEngine: not matched
    assert_filled(wm, {"mymy.weight": 2, "mymy.bias": 0.5})  # weightinit: matched
    assert_filled(mm, {"fc.weight": 2})
    assert torch.equal(wm.fc.weight, mm.fc.weight)


def test_user_defined_init_weights_nested(mm_record):
    def build(k):
        deep = k.Node(const(3, 0.375, layer="Linear"), leaves=("fc",),
                      user=UserLeaf(8.0))
        return k.Node(const(1, 0.5, layer="Linear"), leaves=("fc",),
                      u=UserLeaf(4.0, inner=UserLeaf(5.0)),
                      box=Box(hidden=UserLeaf(6.0)),
                      w=k.Node(const(2, 0.625, layer="Linear"),
                               v=UserLeaf(7.0, inner=deep)))

    wm, _ = check_parity(build, mm_record)
    assert_filled(wm, {
        "fc.weight": 1, "u.fc.weight": 4, "u.fc.bias": 4.25, "u.inner.fc.weight": 5,
        "box.fc.weight": 1, "box.hidden.fc.weight": 1,  # a plain container is not entered
        "w.fc.weight": 2, "w.v.fc.weight": 7, "w.v.inner.fc.weight": 3,
        "w.v.inner.user.fc.weight": 8, "w.v.inner.user.fc.bias": 8.25})


def test_child_with_is_init_true_is_skipped(mm_record):
    def build(k):
        done = k.Node(const(2, 0.625, layer=["Linear", "Conv2d"]), leaves=("fc", "conv"),
                      sub=k.Node(const(3, 0.375, layer="Linear")))
        done.is_init = True
        return k.Node(const(1, 0.5, layer="Linear"), leaves=("fc",), done=done,
                      fresh=k.Node(const(4, 0.75, layer="Linear")))

    wm, mm = check_parity(build, mm_record)
    # The parent's rule still covers the skipped child's subtree; its own cfg is not run.
    assert_filled(wm, {"done.fc.weight": 1, "done.sub.fc.weight": 1, "fresh.fc.weight": 4})
    assert not torch.all(wm.done.conv.weight == 2)
    assert not wm.done.sub.is_init and not mm.done.sub.is_init
    assert wm.fresh.is_init and mm.fresh.is_init


def test_containers_and_plain_sequential(mm_record):
    def build(k):
        return k.Node(
            const(1, 0.5, layer="Linear"), leaves=("fc",),
            plain=nn.Sequential(k.Node(const(2, 0.625, layer="Linear"))),  # never reached
            seq=k.Sequential(k.Node(const(3, 0.375, layer="Linear")), nn.Linear(2, 2),
                             init_cfg=const(4, 0.75, layer="Linear")),
            lst=k.ModuleList([k.Node(None), k.Node(const(5, 0.875, layer="Linear")),
                              UserLeaf(6.0)], init_cfg=const(7, -0.5, layer="Linear")),
            dct=k.ModuleDict({"a": k.Node(const(8, -0.25, layer="Conv2d"),
                                          leaves=("fc", "conv")), "b": nn.Linear(2, 2)}),
        )

    wm, _ = check_parity(build, mm_record)
    assert_filled(wm, {"plain.0.fc.weight": 1, "seq.0.fc.weight": 3, "seq.1.weight": 4,
                       "lst.0.fc.weight": 7, "lst.1.fc.weight": 5, "lst.2.fc.weight": 6,
                       "dct.a.fc.weight": 1, "dct.a.conv.weight": 8, "dct.b.weight": 1})


def test_data_parallel_wrapper_is_looked_through(mm_record):
    def build(k):
        inner = k.Node(const(2, 0.625, layer=["Linear", "Conv2d"]), leaves=("fc", "conv"))
        return k.Node(const(1, 0.5, layer="Linear"), leaves=("fc",),
                      wrapped=nn.DataParallel(inner),
                      wrapped_user=nn.DataParallel(UserLeaf(3.0)))

    wm, _ = check_parity(build, mm_record)
    assert_filled(wm, {"wrapped.module.fc.weight": 2, "wrapped.module.conv.bias": 0.625,
                       "wrapped_user.module.fc.weight": 3})
    assert wm.wrapped.module.is_init


def test_subclass_overriding_init_weights(mm_record):
    def build(k):
        over = k.Overriding(const(2, 0.625, layer=["Linear", "Conv2d"]), leaves=("fc", "conv"),
                            sub=k.Node(const(3, 0.375, layer="Linear")))
        return k.Node(const(1, 0.5, layer="Linear"), over=over)

    wm, _ = check_parity(build, mm_record)
    assert_filled(wm, {"over.fc.weight": 9, "over.fc.bias": 0.625, "over.conv.weight": 2,
                       "over.sub.fc.weight": 3})
    assert wm.init_record["over.fc.weight"].kind == "user"
    assert wm.init_record["over.fc.bias"].info == "ConstantInit: val=2, bias=0.625"


def _pretrained_tree(k: SimpleNamespace, root_cfg: Any = None, a_cfg: Any = None,
                     b_cfg: Any = None) -> nn.Module:
    a = k.Node(a_cfg if a_cfg is not None else const(2, 0.625, layer="Linear"),
               leaves=("fc", "conv", "bn"), g=k.Node(const(3, 0.375, layer="Linear")),
               u=UserLeaf(4.0))
    b = k.Overriding(b_cfg if b_cfg is not None else const(5, 0.875, layer="Conv2d"),
                     leaves=("fc", "conv", "bn"))
    return k.Node(root_cfg, leaves=("fc", "bn"), a=a, b=b)


def test_pretrained_wins_in_its_subtree_over_rules_in_same_list(tmp_path, mm_record):
    path = tmp_path / "full.pth"
    ckpt = make_checkpoint(_pretrained_tree, path, seed=1)
    root_cfg = [const(1, 0.5, layer="Linear"),
                dict(type="Pretrained", checkpoint=str(path)),
                const(6, 0.125, layer=["Conv2d", "BatchNorm2d"])]

    wm, _ = check_parity(lambda k: _pretrained_tree(k, root_cfg), mm_record)
    assert_from(wm, ckpt)  # parameters, BatchNorm running stats and num_batches_tracked
    assert wm.init_record["b.fc.weight"].kind == "pretrained"


def test_pretrained_partial_checkpoint_leaves_rules_elsewhere(tmp_path, mm_record):
    path = tmp_path / "partial.pth"
    ckpt = make_checkpoint(_pretrained_tree, path, seed=2,
                           keys=lambda k: k.startswith("a.") and ".g." not in k)
    root_cfg = [dict(type="Pretrained", checkpoint=str(path)), const(1, 0.5, layer="Linear")]

    wm, _ = check_parity(lambda k: _pretrained_tree(k, root_cfg), mm_record)
    assert_from(wm, ckpt)
    assert_filled(wm, {"fc.weight": 1, "a.g.fc.weight": 3, "b.fc.weight": 9})


@pytest.mark.parametrize("nest", [False, True], ids=["flat", "nested_state_dict"])
@pytest.mark.parametrize("module_prefix", [False, True], ids=["plain_keys", "module_keys"])
def test_pretrained_at_several_levels(tmp_path, mm_record, nest, module_prefix):
    rename = (lambda k: "module." + k) if module_prefix else (lambda k: k)
    full = tmp_path / "full.pth"
    only_a_fc = tmp_path / "a_fc.pth"
    sub = tmp_path / "g.pth"
    ckpt_full = make_checkpoint(_pretrained_tree, full, seed=3, nest=nest)
    # Root-level: only a.fc.* keys (MMEngine strips `module.` when there is no prefix).
    ckpt_a_fc = make_checkpoint(_pretrained_tree, only_a_fc, seed=4, rename=rename, nest=nest,
                                keys=lambda k: k.startswith("a.fc."))
    # Grand-child level: a checkpoint of a Node(fc) on its own.
    ckpt_g = make_checkpoint(lambda k: k.Node(None), sub, seed=5, rename=rename, nest=nest)

    def build(k):
        return _pretrained_tree(
            k,
            root_cfg=[dict(type="Pretrained", checkpoint=str(only_a_fc)),
                      const(1, 0.5, layer="Linear")],
            a_cfg=[const(2, 0.625, layer="Linear"),
                   dict(type="Pretrained", checkpoint=str(full), prefix="a")],
            b_cfg=[dict(type="Pretrained", checkpoint=str(full), prefix="b."),
                   const(5, 0.875, layer="Conv2d")],
        )

    def build_with_g(k):
        model = build(k)
        model.a.g.init_cfg = dict(type="Pretrained", checkpoint=str(sub))
        return model

    wm, _ = check_parity(build_with_g, mm_record)
    full_a = {k[2:]: v for k, v in ckpt_full.items() if k.startswith("a.")}
    full_b = {k[2:]: v for k, v in ckpt_full.items() if k.startswith("b.")}
    # a's Pretrained (prefix 'a') loads into a's subtree ... except a.fc, which the root's
    # Pretrained loads last; a.g's own Pretrained loses to a's.
    assert_from(wm, {k: v for k, v in full_a.items() if not k.startswith("fc.")}, "a.")
    assert_from(wm, ckpt_a_fc)
    # b's Pretrained beats b's own Conv2d rule; b's user code runs after it (fc.weight = 9).
    assert_from(wm, {k: v for k, v in full_b.items() if k != "fc.weight"}, "b.")
    assert_filled(wm, {"fc.weight": 1, "fc.bias": 0.5, "b.fc.weight": 9})
    assert not torch.equal(wm.a.g.fc.weight, ckpt_g["fc.weight"])


def test_pretrained_only_in_child_loses_nothing_outside(tmp_path, mm_record):
    path = tmp_path / "g.safe.pth"
    ckpt_g = make_checkpoint(lambda k: k.Node(None, leaves=("fc", "bn")), path, seed=6)

    def build(k):
        g = k.Node([const(7, -0.5, layer="Linear"),
                    dict(type="Pretrained", checkpoint=str(path))], leaves=("fc", "bn"),
                   user=UserLeaf(8.0))
        return k.Node(const(1, 0.5, layer=["Linear", "BatchNorm2d"]), leaves=("fc", "bn"), g=g)

    wm, _ = check_parity(build, mm_record)
    assert_from(wm, ckpt_g, "g.")
    assert_filled(wm, {"fc.weight": 1, "bn.weight": 1, "g.user.fc.weight": 8})


def _plain_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Sequential(MyLinear(3, 4), nn.Linear(4, 2)), nn.LayerNorm(2))


@pytest.mark.parametrize("cfg", [
    const(2, 0.5, layer="Linear"),
    [const(1, 0.25, layer=["Conv2d", "Linear"]), const(3, 0.75, layer="BatchNorm2d")],
    const(1, 0.5, layer="Conv2d", override=[dict(name="3"),
                                            dict(name="4", type="Constant", val=4, bias=0.125)]),
    [const(2, bias_prob=0.01, layer="Linear"), const(5, -1, layer="Linear")],
], ids=["single", "list", "override", "bias_prob_then_later"])
def test_initialize_on_plain_module(cfg):
    torch.manual_seed(0)
    a = _plain_net()
    b = _plain_net()
    b.load_state_dict(a.state_dict())
    before = snapshot(a)
    record = wi.initialize(a, cfg)
    mme.initialize(b, cfg)
    assert_identical(a, b)
    assert not all(torch.equal(before[n], t) for n, t in tensors(a).items())
    assert isinstance(record, wi.InitRecord)
    assert set(record.params) == {n for n, _ in a.named_parameters()}


def test_initialize_pretrained_on_plain_module(tmp_path):
    torch.manual_seed(3)
    src = _plain_net()
    randomize(src, 3)
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}},
               tmp_path / "plain.pth")
    cfg = [dict(type="Pretrained", checkpoint=str(tmp_path / "plain.pth")),
           const(2, 0.5, layer="Linear")]  # in initialize(), list order rules: Linear wins
    torch.manual_seed(0)
    a, b = _plain_net(), _plain_net()
    b.load_state_dict(a.state_dict())
    wi.initialize(a, cfg)
    mme.initialize(b, cfg)
    assert_identical(a, b)
    assert torch.equal(a[1].running_var, src[1].running_var)
    assert_filled(a, {"3.1.weight": 2, "3.0.weight": 2})


def test_initializer_instance_called_directly():
    torch.manual_seed(0)
    a, b = _plain_net(), _plain_net()
    b.load_state_dict(a.state_dict())
    wi.ConstantInit(val=2, layer="Linear", bias_prob=0.3)(a)
    mme.ConstantInit(val=2, layer="Linear", bias_prob=0.3)(b)
    wi.ConstantInit(val=3, bias=0.5, layer=["BatchNorm2d", "LayerNorm"])(a)
    mme.ConstantInit(val=3, bias=0.5, layer=["BatchNorm2d", "LayerNorm"])(b)
    assert_identical(a, b)
    assert_filled(a, {"3.0.weight": 2, "3.1.bias": wi.bias_init_with_prob(0.3),
                      "1.weight": 3, "4.bias": 0.5})


# ============================================================ 2. random distributions


def _theory(cfg: dict, shape: tuple[int, ...]) -> tuple[float, float, str]:
    """(mean, std, family) of the distribution a rule promises for a weight of this shape."""
    fan_in = shape[1] * math.prod(shape[2:])
    fan_out = shape[0] * math.prod(shape[2:])
    t = cfg["type"]
    if t == "Normal":
        return cfg.get("mean", 0), cfg.get("std", 1), "normal"
    if t == "Uniform":
        a, b = cfg.get("a", 0), cfg.get("b", 1)
        return (a + b) / 2, (b - a) / math.sqrt(12), "uniform"
    if t == "TruncNormal":
        mu, s = cfg.get("mean", 0), cfg.get("std", 1)
        al, be = (cfg.get("a", -2) - mu) / s, (cfg.get("b", 2) - mu) / s
        pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
        z = cdf(be) - cdf(al)
        d = (pdf(al) - pdf(be)) / z
        var = 1 + (al * pdf(al) - be * pdf(be)) / z - d * d
        return mu + s * d, s * math.sqrt(var), "truncnormal"
    if t == "Xavier":
        std = cfg.get("gain", 1) * math.sqrt(2 / (fan_in + fan_out))
        return 0.0, std, cfg.get("distribution", "normal")
    if t in ("Kaiming", "Caffe2Xavier"):
        if t == "Caffe2Xavier":
            a, mode, nl, dist = 1, "fan_in", "leaky_relu", "uniform"
        else:
            a, mode = cfg.get("a", 0), cfg.get("mode", "fan_out")
            nl, dist = cfg.get("nonlinearity", "relu"), cfg.get("distribution", "normal")
        gain = nn.init.calculate_gain(nl, a)
        return 0.0, gain / math.sqrt(fan_in if mode == "fan_in" else fan_out), dist
    raise AssertionError(t)


def _ks_statistic(x: torch.Tensor, y: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: max distance between empirical CDFs."""
    x, y = x.flatten().double().sort().values, y.flatten().double().sort().values
    grid = torch.cat([x, y])
    cx = torch.searchsorted(x, grid, right=True).double() / x.numel()
    cy = torch.searchsorted(y, grid, right=True).double() / y.numel()
    return float((cx - cy).abs().max())


RANDOM_CFGS = {
    "normal": dict(type="Normal", mean=0.5, std=0.02),
    "trunc_normal_wide": dict(type="TruncNormal", mean=0, std=0.02, a=-0.04, b=0.04),
    "trunc_normal_asym": dict(type="TruncNormal", mean=0.1, std=1, a=-1.5, b=0.5),
    "trunc_normal_narrow": dict(type="TruncNormal", mean=0, std=1, a=0.5, b=1.0),
    "uniform": dict(type="Uniform", a=-0.3, b=0.1),
    "xavier_normal": dict(type="Xavier", gain=2, distribution="normal"),
    "xavier_uniform": dict(type="Xavier", gain=0.5, distribution="uniform"),
    "kaiming_normal_fan_in": dict(type="Kaiming", mode="fan_in", distribution="normal"),
    "kaiming_normal_fan_out": dict(type="Kaiming", mode="fan_out", nonlinearity="relu"),
    "kaiming_uniform_fan_in": dict(type="Kaiming", mode="fan_in", a=0.2,
                                   nonlinearity="leaky_relu", distribution="uniform"),
    "kaiming_uniform_fan_out": dict(type="Kaiming", mode="fan_out", distribution="uniform",
                                    nonlinearity="tanh"),
    "caffe2_xavier": dict(type="Caffe2Xavier"),
}


def _big_net() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 1024), nn.Conv2d(64, 128, 3))


@pytest.mark.parametrize("name", list(RANDOM_CFGS))
def test_random_rules_follow_the_same_distribution(name):
    cfg = dict(RANDOM_CFGS[name], layer=["Linear", "Conv2d"], bias=0.125)
    torch.manual_seed(11)
    ours = _big_net()
    wi.initialize(ours, cfg)
    torch.manual_seed(22)  # different streams: the comparison is statistical
    theirs = _big_net()
    mme.initialize(theirs, cfg)

    for idx in ("0", "1"):
        w_ours = getattr(ours, idx).weight.detach()
        w_theirs = getattr(theirs, idx).weight.detach()
        n = w_ours.numel()
        mean, std, family = _theory(cfg, tuple(w_ours.shape))
        se = std / math.sqrt(n)
        for w in (w_ours, w_theirs):
            assert torch.isfinite(w).all()
            assert abs(w.mean().item() - mean) < 6 * se, (idx, w.mean().item(), mean)
            # SE of the sample std is <= std/sqrt(2n) for these (kurtosis <= 3) families.
            assert abs(w.std().item() - std) < 6 * se / math.sqrt(2), (idx, w.std().item(), std)
        assert abs(w_ours.mean().item() - w_theirs.mean().item()) < 6 * se * math.sqrt(2)
        assert abs(w_ours.std().item() - w_theirs.std().item()) < 6 * se
        # Same shape of distribution (normal vs uniform of equal std differ by ~0.05 here).
        assert _ks_statistic(w_ours, w_theirs) < 2.7 * math.sqrt(2 / n)
        if family == "truncnormal":
            a, b = cfg["a"], cfg["b"]
            assert w_ours.min().item() >= a and w_ours.max().item() <= b
            assert w_theirs.min().item() >= a and w_theirs.max().item() <= b
        if family == "uniform":
            half = math.sqrt(3) * std
            assert w_ours.min().item() >= mean - half and w_ours.max().item() <= mean + half
        b_ours, b_theirs = getattr(ours, idx).bias, getattr(theirs, idx).bias
        assert torch.equal(b_ours, b_theirs) and torch.all(b_ours == 0.125)


def test_normal_and_uniform_of_equal_std_are_told_apart():
    """The KS check above can fail: a uniform rule is not a normal one of the same std."""
    torch.manual_seed(0)
    a, b = nn.Linear(512, 1024), nn.Linear(512, 1024)
    wi.initialize(a, dict(type="Xavier", distribution="normal", layer="Linear"))
    mme.initialize(b, dict(type="Xavier", distribution="uniform", layer="Linear"))
    assert abs(a.weight.std().item() - b.weight.std().item()) < 1e-3
    assert _ks_statistic(a.weight.detach(), b.weight.detach()) > 5 * 2.7 * math.sqrt(2 / 2**19)


# ===================================================================== 3. errors


def _error_cfg(case: str, tmp_path) -> Any:
    ckpt = tmp_path / "node.pth"
    if not ckpt.exists():
        torch.save(nn.Linear(4, 3).state_dict(), ckpt)
    return {
        "unknown_type": dict(type="Constnt", val=1, layer="Linear"),
        "missing_type": dict(val=1, layer="Linear"),
        "override_not_dict": const(1, layer="Linear", override="fc"),
        "override_without_name": const(1, layer="Linear",
                                       override=dict(type="Constant", val=2)),
        "override_args_without_type": const(1, layer="Linear", override=dict(name="fc", val=2)),
        "override_unknown_name": const(1, layer="Linear", override=dict(name="nope")),
        "bias_not_number": const(1, "0", layer="Linear"),
        "bias_prob_int": const(1, bias_prob=1, layer="Linear"),
        "layer_int": const(1, layer=3),
        "unexpected_argument": const(1, layer="Linear", std=0.1),
        "xavier_bad_distribution": dict(type="Xavier", distribution="gaussian", layer="Linear"),
        "kaiming_bad_distribution": dict(type="Kaiming", distribution="gaussian",
                                         layer="Linear"),
        "kaiming_bad_mode": dict(type="Kaiming", mode="fan_avg", layer="Linear"),
        "entry_not_dict": [const(1, layer="Linear"), "Kaiming"],
        "pretrained_missing_file": dict(type="Pretrained", checkpoint=str(tmp_path / "no.pth")),
        "pretrained_bad_prefix": dict(type="Pretrained", checkpoint=str(ckpt), prefix="head."),
    }[case]


# What MMEngine raises (derived below by running it; listed to pin the test's meaning).
ERROR_CASES = {
    "unknown_type": KeyError,
    "missing_type": KeyError,
    "override_not_dict": TypeError,
    "override_without_name": ValueError,
    "override_args_without_type": ValueError,
    "override_unknown_name": RuntimeError,
    "bias_not_number": TypeError,
    "bias_prob_int": TypeError,
    "layer_int": TypeError,
    "unexpected_argument": TypeError,
    "xavier_bad_distribution": AssertionError,
    "kaiming_bad_distribution": AssertionError,
    "kaiming_bad_mode": ValueError,
    "entry_not_dict": AssertionError,
    "pretrained_missing_file": FileNotFoundError,
    "pretrained_bad_prefix": AssertionError,
}


def _error_tree(k: SimpleNamespace, bad: Any, placement: str) -> nn.Module:
    if placement == "root":
        return k.Node(bad, leaves=("fc", "conv", "bn"))
    good = [const(1, 0.5, layer="Linear"), const(2, 0.25, layer=["Conv2d", "BatchNorm2d"])]
    target = k.Node(bad, leaves=("fc", "conv", "bn"))
    if placement == "deep":
        holder = k.Node(None, c=k.Node(const(4, 0.125, layer="Linear")), d=target)
    else:  # "under_override": below a BaseModule whose init_weights is user-defined
        holder = k.Overriding(const(5, 0.375, layer="Linear"), d=target)
    return k.Node(good, leaves=("fc", "conv", "bn"),
                  a=k.Node(const(3, 0.625, layer="Linear"), u=UserLeaf(6.0)),
                  b=holder)


@pytest.mark.parametrize("placement", ["root", "deep", "under_override"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_match_mmengine_and_leave_model_untouched(tmp_path, case, placement):
    bad = _error_cfg(case, tmp_path)
    wm, mm = build_pair(lambda k: _error_tree(k, bad, placement))

    with pytest.raises(Exception) as e_mm:  # noqa: B017 - the class is what we derive
        mm.init_weights()
    assert isinstance(e_mm.value, ERROR_CASES[case]), repr(e_mm.value)

    before = snapshot(wm)
    with pytest.raises(Exception) as e_wi:  # noqa: B017
        wm.init_weights()
    assert isinstance(e_wi.value, type(e_mm.value)), (repr(e_wi.value), repr(e_mm.value))
    assert isinstance(e_wi.value, wi.InitError), repr(e_wi.value)

    # Atomic: nothing was written, nothing was marked initialized.
    assert_identical(wm, before)
    assert not any(getattr(m, "is_init", False) for m in wm.modules())
    assert wm.init_record is None

    if case == "override_unknown_name":
        msg = str(e_wi.value)
        assert "nope" in msg
        for child in ("fc", "conv", "bn"):
            assert child in msg
    if case == "unknown_type":
        assert "Constant" in str(e_wi.value)  # did you mean ...


@pytest.mark.parametrize("cfg", ["Constant", 3, None], ids=["str", "int", "none"])
def test_initialize_rejects_non_dict_config_like_mmengine(cfg):
    m = nn.Linear(2, 2)
    with pytest.raises(Exception) as e_mm:  # noqa: B017
        mme.initialize(m, cfg)
    before = snapshot(m)
    with pytest.raises(Exception) as e_wi:  # noqa: B017
        wi.initialize(m, cfg)
    assert isinstance(e_wi.value, type(e_mm.value)) and isinstance(e_wi.value, wi.InitError)
    assert_identical(m, before)


# ===================================================================== 4. the record


RECORD_CFGS = {
    "constant": const(3, 0.5, layer=["Linear", "Conv2d"]),
    "constant_bias_prob": const(3, bias_prob=0.01, layer=["Linear", "Conv2d"]),
    "normal": dict(type="Normal", std=0.01, layer=["Linear", "Conv2d"]),
    "normal_mean": dict(type="Normal", mean=0.5, std=2, bias=1.5, layer=["Linear", "Conv2d"]),
    "trunc_normal": dict(type="TruncNormal", std=0.02, a=-0.04, b=0.04,
                         layer=["Linear", "Conv2d"]),
    "uniform": dict(type="Uniform", a=-1, b=0.5, layer=["Linear", "Conv2d"]),
    "xavier": dict(type="Xavier", gain=2, distribution="uniform", layer=["Linear", "Conv2d"]),
    "kaiming": dict(type="Kaiming", mode="fan_in", layer=["Linear", "Conv2d"]),
    "caffe2_xavier": dict(type="Caffe2Xavier", bias=0.25, layer=["Linear", "Conv2d"]),
    "override_full": const(3, 0.5, layer="Linear",
                           override=dict(name="conv", type="Normal", std=3, bias=2)),
}


def mm_text(text: str) -> str:
    """MMEngine's Kaiming text has a stray space ('distribution =normal'); ours does not."""
    return text.replace("distribution =", "distribution=")


@pytest.mark.parametrize("name", list(RECORD_CFGS))
def test_record_rule_text_matches_mmengine_exactly(name, mm_record):
    cfg = RECORD_CFGS[name]
    wm, mm = build_pair(lambda k: k.Node(cfg, leaves=("fc", "conv", "bn")))
    wm.init_weights()
    mm.init_weights()
    rec = wm.init_record
    for pname in ("fc.weight", "fc.bias", "conv.weight", "conv.bias"):
        assert rec[pname].kind == "rule"
        assert rec[pname].info == mm_text(mm_record[pname]), (pname, rec[pname].info,
                                                               mm_record[pname])
    for pname in ("bn.weight", "bn.bias"):
        assert rec[pname].kind == "unchanged"
        assert norm_mm(mm_record[pname]) == ("unchanged", "Node")


def test_record_pretrained_text_matches_mmengine(tmp_path, mm_record):
    path = tmp_path / "full.pth"
    make_checkpoint(lambda k: k.Node(None, leaves=("fc", "conv")), path, seed=9,
                    keys=lambda k: k.startswith("fc."))
    cfg = [const(2, 0.5, layer="Conv2d"), dict(type="Pretrained", checkpoint=str(path))]
    wm, _ = check_parity(lambda k: k.Node(cfg, leaves=("fc", "conv")), mm_record)
    assert wm.init_record["fc.weight"].info == f"PretrainedInit: load from {path}"
    assert wm.init_record["fc.weight"].kind == "pretrained"
    assert wm.init_record["conv.weight"].info == "ConstantInit: val=2, bias=0.5"


def test_record_user_and_unchanged_kinds(mm_record):
    def build(k):
        return k.Node(const(1, 0.5, layer="Conv2d"), leaves=("fc", "conv"),
                      u=UserLeaf(3.0), plain=nn.Linear(2, 2))

    wm, _ = check_parity(build, mm_record)
    rec = wm.init_record
    assert (rec["u.fc.weight"].kind, rec["u.fc.weight"].info) == (
        "user", "fill_(3) in UserLeaf.init_weights")  # the call that wrote it
    assert (rec["fc.weight"].kind, rec["fc.weight"].info) == (
        "unchanged", "not changed by init_weights of Node")
    assert (rec["conv.bias"].kind, rec["conv.bias"].info) == ("rule", "ConstantInit: val=1, bias=0.5")


def test_record_update_init_info_text(mm_record):
    def build(k):
        return k.Node(const(1, 0.5, layer="Linear"), leaves=("fc",), g=k.Gate())

    wm, _ = check_parity(build, mm_record)
    rec = wm.init_record
    assert (rec["g.gate.weight"].kind, rec["g.gate.weight"].info) == (
        "user", "zero gate (update_init_info)")
    assert rec["g.other.weight"].info == "fill_(2) in Gate.init_weights"
    assert rec["g.gate.bias"].info == "ConstantInit: val=1, bias=0.5"


def test_update_init_info_outside_init_weights_errors_like_mmengine():
    m = nn.Linear(2, 2)
    with pytest.raises(Exception) as e_mm:  # noqa: B017
        mme.update_init_info(m, "x")
    with pytest.raises(Exception) as e_wi:  # noqa: B017
        wi.update_init_info(m, "x")
    assert isinstance(e_wi.value, type(e_mm.value)) and isinstance(e_wi.value, wi.InitError)


def test_record_exact_where_mmengine_mean_detection_misses(mm_record):
    """B1: a write that keeps the mean (BatchNorm's 1/0 written as 1/0) is still recorded."""
    def build(k):
        return k.Node(const(1, 0, layer="BatchNorm2d"), leaves=("bn", "fc"))

    wm, mm = build_pair(build, params=False)  # BatchNorm keeps its default weight 1, bias 0
    wm.init_weights()
    mm.init_weights()
    assert_identical(wm, mm)
    assert norm_mm(mm_record["bn.weight"]) == ("unchanged", "Node")  # MMEngine misses it
    assert wm.init_record["bn.weight"].info == "ConstantInit: val=1, bias=0"
    assert wm.init_record["bn.weight"].kind == "rule"


# ============================================================ 5. the bridge (weightinit.mmengine)


def norm_text(text: str) -> tuple[str, str]:
    """A text the bridge hands ``_dump_init_info``, in :func:`norm_mm`'s terms."""
    if text.startswith("not changed by init_weights of "):
        return "unchanged", text.removeprefix("not changed by init_weights of ")
    if m := WI_USER_CALL.fullmatch(text):
        return "user", m.group(1)
    return "text", text


def _bridge_tree(k: SimpleNamespace) -> nn.Module:
    return k.Node([const(1, 0.5, layer="Conv2d"), const(2, 0.25, layer="BatchNorm2d")],
                  leaves=("fc", "conv", "bn"), g=k.Gate(), u=UserLeaf(3.0),
                  o=k.Overriding(const(4, 0.125, layer="Linear"), leaves=("fc", "ln")))


def test_bridge_gives_dump_init_info_what_mmengine_gives(mm_record):
    """Under ``weightinit.mmengine``, MMEngine's ``_dump_init_info`` (the fixture's, here)
    is called after the run with ``_params_init_info`` for every parameter, and user code
    calling MMEngine's ``update_init_info`` during the run (``Gate``) finds it."""
    wim = pytest.importorskip("weightinit.mmengine")
    torch.manual_seed(0)
    mm = _bridge_tree(kit_of("mmengine"))
    randomize(mm, 0)
    start = snapshot(mm)
    mm.init_weights()
    theirs = dict(mm_record)
    mm_record.clear()
    with wim.installed():
        ours = _bridge_tree(kit_of("mmengine"))
        ours.load_state_dict(start)
        ours.init_weights()
    assert_identical(ours, mm)
    record = wi.get_init_record(ours)
    assert list(mm_record) == list(theirs) == list(record.params)
    assert {n: norm_text(t) for n, t in mm_record.items()} == {
        n: norm_mm(t) for n, t in theirs.items()}
    # MMEngine's update_init_info label on what Gate's own code wrote; the record's elsewhere
    assert mm_record["g.gate.weight"] == theirs["g.gate.weight"] == "zero gate (update_init_info)"
    assert record["g.gate.weight"].info == "fill_(0) in Gate.init_weights"
    assert {n: t for n, t in mm_record.items() if n != "g.gate.weight"} == {
        n: r.info for n, r in record.params.items() if n != "g.gate.weight"}
    assert not any("_params_init_info" in vars(m) for m in ours.modules())


def test_bridge_keeps_mmengines_silence_on_unmatched_layers(caplog, recwarn):
    wim = pytest.importorskip("weightinit.mmengine")

    def build(k: SimpleNamespace) -> nn.Module:
        return k.Node(const(2, layer=["Linear", "LayerNorm"]), leaves=("conv",))

    build(kit_of("mmengine")).init_weights()  # its layer names match nothing: MMEngine is silent
    assert [w for w in recwarn if issubclass(w.category, wi.InitWarning)] == []
    with wim.installed(), caplog.at_level("INFO", logger="weightinit"):
        ours = build(kit_of("mmengine"))
        before = snapshot(ours)
        ours.init_weights()
        strict = build(kit_of("mmengine"))
        with pytest.raises(wi.OverrideTargetError, match="'Linear'"):
            strict.init_weights(strict=True)
        with pytest.warns(wi.UnmatchedLayerWarning, match="'Linear'"):
            wi.initialize(build(kit_of("weightinit")), const(2, layer="Linear"))
    assert [w for w in recwarn if issubclass(w.category, wi.UnmatchedLayerWarning)] == []
    logged = [r.getMessage() for r in caplog.records if r.name == "weightinit"
              and r.getMessage().startswith("UnmatchedLayerWarning: ")]
    assert len(logged) == 1 and "ConstantInit layer 'Linear', 'LayerNorm' match no module" in \
        logged[0]
    assert_identical(ours, before)
    assert ours.is_init and not strict.is_init


def test_download_error_is_an_oserror_like_mmengines(tmp_path, monkeypatch):
    """MMEngine's failed download is urllib's ``URLError``, an ``OSError``; ours is too."""
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/weights.pth"  # nothing listens there
    wm, mm = build_pair(lambda k: k.Node(dict(type="Pretrained", checkpoint=url)))
    with pytest.raises(OSError) as e_mm:
        mm.init_weights()
    before = snapshot(wm)
    with pytest.raises(OSError) as e_wi:
        wm.init_weights()
    assert not isinstance(e_mm.value, wi.InitError)
    assert isinstance(e_wi.value, wi.CheckpointDownloadError)
    assert isinstance(e_wi.value, RuntimeError)  # what it was before, still caught as such
    assert url in str(e_wi.value)
    assert_identical(wm, before)
