"""``weightinit.mmcv.install()``/``uninstall()``/``installed()`` against what codebases do:
install twice, uninstall without install, MMCV restored exactly, a codebase that patches
``BaseModule.init_weights`` itself (before or after install), an MMCV config naming an
initializer nobody registered, and threads."""

from __future__ import annotations

import threading
import time

import mmcv1_support as support
import pytest
import torch
import torch.nn as nn

pytest.importorskip("mmcv")

support.prepare()
support.quiet_logs()
# in the MMCV 1.x environment these import: a broken install fails there, never skips
import mmcls  # noqa: E402,F401
import mmcv.runner  # noqa: E402,F401
import mmcv.runner as mmcv_runner  # noqa: E402
from mmcv.runner import BaseModule  # noqa: E402

import weightinit as wi  # noqa: E402
import weightinit.mmcv as wimc  # noqa: E402
from weightinit.planning import is_node  # noqa: E402
from weightinit.rules import WEIGHT_INITIALIZERS  # noqa: E402
from weightinit.rules.matching import current_layer_matching  # noqa: E402

ORIGINAL = BaseModule.__dict__["init_weights"]


@pytest.fixture(autouse=True)
def _uninstalled():
    yield
    wimc.uninstall()
    BaseModule.init_weights = ORIGINAL  # (tests that patch it as a codebase would)


def _own_init_weights() -> dict[type, object]:
    """Every class's own init_weights, for MMCV's BaseModule and all its subclasses."""
    out, todo = {}, [BaseModule]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "init_weights" in cls.__dict__:
            out[cls] = cls.__dict__["init_weights"]
    return out


def _state() -> tuple:
    return (dict(BaseModule.__dict__), _own_init_weights(), is_node(BaseModule()),
            list(WEIGHT_INITIALIZERS._lookups))


class Net(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=[dict(type="Constant", layer="Linear", val=1.0, bias=0.5),
                                   dict(type="Constant", layer="Conv2d", val=2.0)])
        self.fc = nn.Linear(2, 2)
        self.conv = nn.Conv2d(2, 2, 1)


def test_install_twice_uninstall_twice_restores_mmcv_exactly():
    support.build("mmdet/detr/detr_r50_8x2_150e_coco.py")  # many overriding init_weights
    before = _state()
    wimc.uninstall()  # without install: nothing to undo, nothing raised
    assert _state() == before and not wimc.is_installed()
    wimc.install()
    wimc.install()
    assert wimc.is_installed() and BaseModule.__dict__["init_weights"] is wimc.init_weights
    overridden = [c for c in before[1] if c is not BaseModule]
    assert overridden and all(_own_init_weights()[c] is not before[1][c] for c in overridden)

    class Late(BaseModule):  # defined while installed: wrapped, and unwrapped after
        def init_weights(self):
            super().init_weights()

    original_late = Late.__dict__["init_weights"].__wrapped__
    wimc.uninstall()
    wimc.uninstall()
    assert not wimc.is_installed()
    after = _state()
    assert after[0] == before[0] and after[2:] == before[2:]
    assert after[1] == {**before[1], Late: original_late}
    assert "__init_subclass__" not in BaseModule.__dict__
    m = Net()  # MMCV's own code again: its texts, no weightinit record
    m.init_weights()
    assert wi.get_init_record(m) is None and not hasattr(m, "_params_init_info")


def test_installed_blocks_nest_and_leave_it_as_it_was():
    with wimc.installed():
        with wimc.installed():
            assert wimc.is_installed()
        assert wimc.is_installed()
    assert not wimc.is_installed()
    wimc.install()
    with wimc.installed():
        pass
    assert wimc.is_installed()  # install() holds past a block


def test_codebase_that_patched_init_weights_before_install_keeps_its_patch():
    calls = []

    def patched(self):
        calls.append(type(self).__name__)
        ORIGINAL(self)

    BaseModule.init_weights = patched
    theirs = Net()
    theirs.init_weights()
    wimc.install()
    ours = Net()
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    ours.init_weights()
    assert calls == ["Net", "Net"]  # the codebase's patch ran, through the bridge
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(p, q), n
    record = wi.get_init_record(ours)  # one weightinit run: recorded, watched
    assert record is not None and record["fc.weight"].kind == "user"
    assert not torch.equal(ours.fc.weight, before["fc.weight"])
    wimc.uninstall()
    assert BaseModule.__dict__["init_weights"] is patched  # theirs, put back


def test_codebase_that_patches_init_weights_after_install_stays_patched():
    calls = []
    wimc.install()
    previous = BaseModule.init_weights

    def patched(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return previous(self, *args, **kwargs)

    BaseModule.init_weights = patched
    model = Net()
    model.init_weights()
    assert calls == ["Net"] and torch.all(model.fc.weight == 1) and torch.all(model.fc.bias == 0.5)
    assert wi.get_init_record(model) is not None  # the bridge ran under their patch
    wimc.uninstall()
    assert BaseModule.__dict__["init_weights"] is patched  # not clobbered
    again = Net()
    again.init_weights()  # theirs -> the bridge's function, which runs MMCV's code again
    assert calls == ["Net", "Net"] and torch.all(again.conv.weight == 2)
    assert wi.get_init_record(again) is None


def test_config_with_an_unknown_initializer_is_a_library_error_and_nothing_is_written():
    cfg, _ = support.load_config("mmcls/resnet/resnet18_8xb32_in1k.py")
    cfg.model.head.init_cfg = dict(type="KaimingUniform", layer="Linear")  # not registered
    from mmcls.models import build_classifier

    with pytest.raises(KeyError, match="KaimingUniform is not in the initializer registry"):
        build_classifier(cfg.model).init_weights()
    model = build_classifier(cfg.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with wimc.installed(), pytest.raises(wi.UnknownTypeError) as err:
        model.init_weights()
    assert isinstance(err.value, KeyError)
    text = str(err.value)
    assert "head (LinearClsHead) init_cfg: 'KaimingUniform' is not in the weight initializer " \
           "registry" in text and "'Kaiming'" in text.split("Registered")[0]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any(getattr(m, "is_init", False) for m in model.modules())
    assert not any("_params_init_info" in vars(m) for m in model.modules())


def test_install_uninstall_from_many_threads_leaves_mmcv_as_it_was():
    support.build("mmdet/detr/detr_r50_8x2_150e_coco.py")
    before = _state()
    failures: list[str] = []

    def worker(k: int) -> None:
        for i in range(30):
            if (i + k) % 3 == 0:
                with wimc.installed():
                    if current_layer_matching() != "mro":
                        failures.append("matching mode leaked into a thread")
            else:
                wimc.install()
                wimc.uninstall()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for _ in range(100):  # weightinit's own rules hold here all along
        if not any(t.is_alive() for t in threads):
            break
        net = nn.Sequential(nn.Linear(2, 2))
        wi.initialize(net, dict(type="Uniform", layer="Linear"))
        if wi.get_init_record(net)["0.weight"].info != "UniformInit: a=0, b=1, bias=0":
            failures.append("MMCV's Uniform leaked into weightinit's own run")
        time.sleep(0.005)
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "install/uninstall threads hang"
    wimc.uninstall()
    assert not failures, failures[:3]
    assert _state() == before and not wimc.is_installed()


def test_models_initialized_in_threads_at_once():
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            model = Net()
            model.init_weights(seed=k % 2)
            results[k] = (model, wi.get_init_record(model))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    with wimc.installed():
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors[:1]
    assert sorted(results) == list(range(8))
    for model, record in results.values():
        assert torch.all(model.fc.weight == 1) and torch.all(model.conv.weight == 2)
        assert record["fc.bias"].info == "ConstantInit: val=1.0, bias=0.5"
        assert model.is_init and not hasattr(model, "_params_init_info")
    assert mmcv_runner.BaseModule.__dict__["init_weights"] is ORIGINAL
