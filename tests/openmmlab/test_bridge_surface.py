"""What the code around ``init_weights()`` sees under ``weightinit.mmengine``, against MMEngine
itself: ``_params_init_info`` and ``_dump_init_info``, the exceptions a failed download or a
missing checkpoint raise, MMEngine's silence about ``layer`` names that match nothing, the
MMLogger lines, and install/uninstall from many threads at once."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path
from types import MethodType

import pytest
import torch
import torch.nn as nn

pytest.importorskip("mmengine.model")
from support import install_standins  # noqa: E402

install_standins()
pytest.importorskip("mmpretrain")

import mmengine.model as mm_model  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from test_bridge import _own_init_weights  # noqa: E402
from test_real_models import build  # noqa: E402

import weightinit as wi  # noqa: E402
import weightinit.mmengine as wim  # noqa: E402
from weightinit.planning import is_node  # noqa: E402
from weightinit.rules import WEIGHT_INITIALIZERS  # noqa: E402
from weightinit.rules.matching import current_layer_matching  # noqa: E402


@pytest.fixture(autouse=True)
def _uninstalled():
    yield
    wim.uninstall()


@pytest.fixture(autouse=True)
def _private_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads (none succeeds here) never touch the user's caches."""
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(tmp_path / "wi-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def bridged(model: nn.Module) -> None:
    """``model.init_weights()`` with the bridge installed (the method looked up then)."""
    with wim.installed():
        model.init_weights()


# ===================================================================== _params_init_info


class Inner(mm_model.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Conv2d", val=2.0, bias=0.25))
        self.conv = nn.Conv2d(2, 3, 1)


class Overriding(mm_model.BaseModule):
    """User code that only calls ``super().init_weights()``: its rules' texts in both."""

    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=3.0, bias=0.5))
        self.fc = nn.Linear(3, 3)
        self.inner = Inner()

    def init_weights(self) -> None:
        super().init_weights()


class Net(mm_model.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=[dict(type="Constant", layer="Linear", val=1.0, bias=0.125),
                                   dict(type="Constant", layer="LayerNorm", val=4.0, bias=1.0)])
        self.a = Inner()
        self.u = Overriding()
        self.fc = nn.Linear(2, 2)
        self.shared = self.fc  # one parameter under two names: one entry, as in MMEngine
        self.seq = mm_model.Sequential(nn.Linear(2, 2), nn.LayerNorm(2),
                                       init_cfg=dict(type="Constant", layer="Linear", val=5.0))


def capture_info(model: nn.Module) -> dict:
    """Replace ``_dump_init_info`` on the instance (as MMPretrain's tests do) and keep what
    it sees: the shared dict, the modules that hold it, the parameters in order."""
    seen: dict = {}

    def dump(self, *args):
        seen["args"] = args
        seen["info"] = self._params_init_info
        seen["holders"] = [m for m in self.modules()
                           if m.__dict__.get("_params_init_info") is self._params_init_info]
        seen["entries"] = {name: dict(self._params_init_info[p])
                           for name, p in self.named_parameters()}
        seen["keys"] = list(self._params_init_info)

    model._dump_init_info = MethodType(dump, model)
    return seen


def test_replaced_dump_init_info_sees_mmengines_params_init_info():
    torch.manual_seed(0)
    mm = Net()
    theirs = capture_info(mm)
    mm.init_weights()
    torch.manual_seed(0)
    ours_model = Net()
    ours = capture_info(ours_model)
    bridged(ours_model)

    for seen, model in ((theirs, mm), (ours, ours_model)):
        assert seen["args"] == ()  # called as MMEngine calls it
        assert type(seen["info"]) is defaultdict and seen["info"].default_factory is dict
        assert seen["holders"] == list(model.modules())  # one dict, shared by every module
        assert seen["keys"] == [p for _, p in model.named_parameters()]  # keyed by Parameter
        for name, entry in seen["entries"].items():
            assert set(entry) == {"init_info", "tmp_mean_value"}, name
            mean = entry["tmp_mean_value"]
            assert mean.device.type == "cpu" and mean.dim() == 0, name
            assert torch.equal(mean, dict(model.named_parameters())[name].detach().mean()), name
        # and it is gone from every module after the call
        assert not any("_params_init_info" in vars(m) for m in model.modules())

    assert list(ours["entries"]) == list(theirs["entries"])
    for name in theirs["entries"]:  # every parameter here is written by a rule: same texts
        assert ours["entries"][name]["init_info"] == theirs["entries"][name]["init_info"], name
        assert torch.equal(ours["entries"][name]["tmp_mean_value"],
                           theirs["entries"][name]["tmp_mean_value"]), name
    assert ours["entries"]["u.fc.weight"]["init_info"] == "ConstantInit: val=3.0, bias=0.5"
    assert ours["entries"]["seq.1.weight"]["init_info"] == "ConstantInit: val=4.0, bias=1.0"
    record = wi.get_init_record(ours_model)
    assert {n: e["init_info"] for n, e in ours["entries"].items()} == {
        n: r.info for n, r in record.params.items()}


class SetsGate(mm_model.BaseModule):
    """User code that reads ``_params_init_info`` while the run goes on: MMEngine's own
    ``update_init_info`` asserts it is there and keyed by each parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(2, 2)

    def init_weights(self) -> None:
        super().init_weights()
        self.seen_during_run = self._params_init_info
        with torch.no_grad():
            self.gate.weight.fill_(0.75)
        mm_model.update_init_info(self, init_info="gate set by hand")


class Holder(mm_model.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=1.0, bias=0.5))
        self.child = SetsGate()


def test_user_code_reads_params_init_info_during_the_run():
    mm = Holder()
    capture_info(mm)
    mm.init_weights()
    assert mm.child.seen_during_run[mm.child.gate.weight]["init_info"] == "gate set by hand"
    ours = Holder()
    seen = capture_info(ours)
    bridged(ours)  # used to fail: AssertionError: Can not find `_params_init_info`
    info = ours.child.seen_during_run
    assert info is seen["info"] and list(info) == list(ours.parameters())
    # after the run: the user's own label on what its code wrote, as in MMEngine; the
    # record's texts elsewhere (MMEngine's update_init_info also labels the bias, whose
    # planned write it sees as new: a rule wrote that one, the record says, not user code)
    assert info[ours.child.gate.weight]["init_info"] == "gate set by hand"
    assert info[ours.child.gate.bias]["init_info"] == "ConstantInit: val=1.0, bias=0.5"
    record = wi.get_init_record(ours)
    assert record["child.gate.weight"].info == "fill_(0.75) in SetsGate.init_weights"
    assert mm.child.seen_during_run[mm.child.gate.bias]["init_info"] == (
        "ConstantInit: val=1.0, bias=0.5")
    assert torch.all(ours.child.gate.weight == 0.75) and torch.all(ours.child.gate.bias == 0.5)
    assert not any("_params_init_info" in vars(m) for m in ours.modules())


class ReadsMeans(mm_model.BaseModule):
    """User code that reads every parameter's ``tmp_mean_value`` after a rule wrote it and
    after it wrote one itself: MMEngine's are the means after its initializers' writes (they
    update the entry), else before the run (user code's own writes are not seen)."""

    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=2.0, bias=-1.0))
        self.fc = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)

    def init_weights(self) -> None:
        super().init_weights()
        info = self._params_init_info
        self.after_rules = {n: info[p]["tmp_mean_value"] for n, p in self.named_parameters()}
        with torch.no_grad():
            self.norm.weight.uniform_(3.0, 4.0)  # written whole by user code
        self.after_user = {n: info[p].get("tmp_mean_value")
                           for n, p in self.named_parameters()}
        self.views = {n: (sorted(info[p]), len(info[p]), "tmp_mean_value" in info[p])
                      for n, p in self.named_parameters()}


class HoldsReader(mm_model.BaseModule):
    def __init__(self) -> None:
        super().__init__()
        self.reader = ReadsMeans()


def test_means_before_the_run_are_what_user_code_reads():
    """Means are read lazily (only when something asks), yet what user code reads during
    the run is the mean before the run, as MMEngine's, also for tensors the run or user
    code wrote already."""
    torch.manual_seed(3)
    mm = HoldsReader()
    torch.manual_seed(3)
    ours = HoldsReader()
    expected = {n: p.detach().mean() for n, p in ours.reader.named_parameters()}
    expected.update({"fc.weight": torch.tensor(2.0), "fc.bias": torch.tensor(-1.0)})
    mm.init_weights()
    bridged(ours)
    mm, ours = mm.reader, ours.reader
    assert torch.equal(ours.fc.weight, mm.fc.weight) and torch.all(ours.fc.weight == 2.0)
    assert torch.all(ours.norm.weight >= 3.0)
    for seen in (mm.after_rules, mm.after_user, ours.after_rules, ours.after_user):
        assert list(seen) == list(expected)
        for name, mean in seen.items():
            assert mean.device.type == "cpu" and torch.equal(mean, expected[name]), name
    shape = (["init_info", "tmp_mean_value"], 2, True)
    assert ours.views == mm.views == {n: shape for n in expected}


class _CountMeans(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.means = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ("mean", "sum"):
            self.means += 1
        return func(*args, **(kwargs or {}))


def test_means_nobody_reads_are_never_computed():
    """MMEngine reads every parameter's mean before and after the call (two passes over all
    the model's memory); under the bridge no mean is taken unless code asks for one."""
    with _CountMeans() as mm_count:
        build("resnet50", 0).init_weights()
    assert mm_count.means >= 2 * 161  # (MMEngine's own: before and after, every parameter)
    model = build("resnet50", 0)
    with wim.installed(), _CountMeans() as ours:
        model.init_weights()
    assert ours.means == 0
    assert all(p.is_init for p in [model]) and wi.get_init_record(model) is not None


def test_inception_v3_test_of_mmpretrain_passes_under_the_bridge():
    """MMPretrain's ``test_inception_v3::test_init_weights``, run through the bridge."""
    from mmpretrain.models import InceptionV3

    def texts(model: nn.Module) -> dict[str, str]:
        init_info: dict[str, str] = {}

        def get_init_info(self, *args):
            for name, param in self.named_parameters():
                init_info[name] = "".join(self._params_init_info[param]["init_info"])

        model._dump_init_info = MethodType(get_init_info, model)
        model.init_weights()
        return init_info

    torch.manual_seed(0)
    theirs = texts(InceptionV3(num_classes=10, aux_logits=True, dropout=0.0))
    with wim.installed():
        torch.manual_seed(0)
        model = InceptionV3(num_classes=10, aux_logits=True, dropout=0.0)
        ours = texts(model)
    assert list(ours) == list(theirs) == [n for n, _ in model.named_parameters()]
    for info in (ours, theirs):
        assert "TruncNormalInit: a=-2, b=2, mean=0, std=0.1, bias=0" in info[
            "Conv2d_1a_3x3.conv.weight"]
        assert "TruncNormalInit: a=-2, b=2, mean=0, std=0.01, bias=0" in info[
            "AuxLogits.conv0.conv.weight"]
        assert "TruncNormalInit: a=-2, b=2, mean=0, std=0.001, bias=0" in info[
            "AuxLogits.fc.weight"]
    # MMEngine's texts wherever its mean check sees the last write; it misses writes that
    # keep the value: BatchNorm's 1/0 written as 1/0, and AuxLogits.fc's own rule writing
    # the bias 0 the root's rule wrote before it
    differ = {n: (theirs[n], ours[n]) for n in ours if ours[n] != theirs[n]}
    norms = {n for n, (t, _) in differ.items() if t.startswith("The value is the same before")}
    assert len(norms) == 192 and all(n.endswith((".bn.weight", ".bn.bias")) for n in norms)
    assert all(differ[n][1] == "ConstantInit: val=1, bias=0" for n in norms)
    assert {n: differ[n] for n in set(differ) - norms} == {"AuxLogits.fc.bias": (
        "TruncNormalInit: a=-2, b=2, mean=0, std=0.1, bias=0",
        "TruncNormalInit: a=-2, b=2, mean=0, std=0.001, bias=0")}


def test_deferred_model_gets_its_materialized_parameters():
    """Materializing replaces each parameter: ``_params_init_info`` is keyed by the new ones
    by the time user code runs (MMEngine's ``update_init_info`` finds them) and after."""
    with wim.installed():
        with wi.deferred():
            model = Holder()
        assert all(p.device.type == "meta" for p in model.parameters())
        seen = capture_info(model)
        model.init_weights()
    assert seen["keys"] == list(model.parameters()) == list(model.child.seen_during_run)
    assert all(p.device.type == "cpu" for p in seen["keys"])
    for name, p in model.named_parameters():
        assert torch.equal(seen["entries"][name]["tmp_mean_value"], p.detach().mean()), name
    assert seen["entries"]["child.gate.weight"]["init_info"] == "gate set by hand"
    assert seen["entries"]["child.gate.bias"]["init_info"] == "ConstantInit: val=1.0, bias=0.5"


class Broken(mm_model.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=3.0))
        self.fc = nn.Linear(2, 2)

    def init_weights(self) -> None:
        super().init_weights()
        raise ValueError("user code failed")


class HoldsBroken(mm_model.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=2.0))
        self.broken = Broken()


def test_failed_run_removes_params_init_info():
    """MMEngine leaves it behind after a failure (so its next call is never the top level and
    never dumps); the bridge restores the model, this attribute included."""
    mm = HoldsBroken()
    with pytest.raises(ValueError, match="user code failed"):
        mm.init_weights()
    assert all("_params_init_info" in vars(m) for m in mm.modules())
    ours = HoldsBroken()
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    with pytest.raises(ValueError, match="user code failed"), wim.installed():
        ours.init_weights()
    assert not any("_params_init_info" in vars(m) for m in ours.modules())
    assert all(torch.equal(p, before[n]) for n, p in ours.named_parameters())


# ===================================================================== exceptions


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loads(mm_model.BaseModule):
    def __init__(self, checkpoint: str) -> None:
        super().__init__(init_cfg=dict(type="Pretrained", checkpoint=checkpoint))
        self.fc = nn.Linear(2, 2)


def _raised(fn) -> BaseException:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the class is what is compared
        return err
    raise AssertionError("nothing raised")


def test_unreachable_download_is_an_oserror_under_both():
    url = f"http://127.0.0.1:{_closed_port()}/weights.pth"
    theirs = _raised(Loads(url).init_weights)
    model = Loads(url)
    before = model.fc.weight.detach().clone()
    ours = _raised(lambda: bridged(model))
    assert isinstance(theirs, OSError)  # urllib's URLError
    assert isinstance(ours, OSError) and isinstance(ours, wi.CheckpointDownloadError)
    assert isinstance(ours, RuntimeError) and isinstance(ours, wi.CheckpointError)  # as before
    assert "Connection refused" in str(ours) and url in str(ours)
    assert torch.equal(model.fc.weight, before) and not model.is_init
    # weightinit's own entry point too
    ours = _raised(lambda: wi.load_checkpoint(nn.Linear(2, 2), url))
    assert isinstance(ours, OSError) and isinstance(ours, wi.CheckpointDownloadError)


def test_missing_checkpoint_file_is_a_file_not_found_error_under_both(tmp_path: Path):
    path = str(tmp_path / "missing.pth")
    theirs = _raised(Loads(path).init_weights)
    ours = _raised(lambda: bridged(Loads(path)))
    assert type(theirs) is FileNotFoundError
    assert isinstance(ours, FileNotFoundError) and isinstance(ours, wi.CheckpointNotFoundError)
    assert f"{path} can not be found" in str(ours)


# ===================================================================== unmatched layer names


class Unmatched(mm_model.BaseModule):
    """A config the user did not write: ``layer`` names that match nothing in this subtree."""

    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer=["Conv2d", "BatchNorm2d"],
                                       val=2.0))
        self.fc = nn.Linear(2, 2)


def _init_and_collect(model: nn.Module, **kwargs) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.init_weights(**kwargs)
    return caught


def test_unmatched_layer_is_silent_as_in_mmengine_and_logged(caplog: pytest.LogCaptureFixture):
    assert _init_and_collect(Unmatched()) == []  # MMEngine
    model = Unmatched()
    before = model.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="weightinit"), wim.installed():
        assert _init_and_collect(model) == []
    found = [r for r in caplog.records if r.name == "weightinit"
             and r.getMessage().startswith("UnmatchedLayerWarning: ")]
    assert len(found) == 1 and found[0].levelno == logging.INFO
    assert "ConstantInit layer 'Conv2d', 'BatchNorm2d' match no module of <root> (Unmatched)" \
        in found[0].getMessage()
    assert torch.equal(model.fc.weight, before) and model.is_init


def test_unmatched_layer_raises_under_strict_and_warns_when_asked():
    model = Unmatched()
    before = model.fc.weight.detach().clone()
    with wim.installed(), pytest.raises(wi.OverrideTargetError, match="'Conv2d'"):
        model.init_weights(strict=True)
    assert torch.equal(model.fc.weight, before) and not model.is_init
    with wim.installed(warn_unmatched=True):
        caught = _init_and_collect(model)
    assert [type(w.message) for w in caught] == [wi.UnmatchedLayerWarning]
    # the option lasts for the block only
    wim.install()
    assert _init_and_collect(Unmatched()) == []
    wim.install(warn_unmatched=True)
    assert [type(w.message) for w in _init_and_collect(Unmatched())] == [
        wi.UnmatchedLayerWarning]


def test_plain_weightinit_keeps_warning_while_the_bridge_is_installed():
    with wim.installed(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wi.initialize(nn.Sequential(nn.Linear(2, 2)), dict(type="Constant", layer="Conv2d",
                                                           val=1.0))
    assert [type(w.message) for w in caught] == [wi.UnmatchedLayerWarning]


def test_real_model_with_unmatched_layer_names_builds_silently():
    """MobileNetV3's own config names layers some of its subtrees do not have."""
    for warn_unmatched in (False, True):
        with wim.installed(warn_unmatched=warn_unmatched), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = build("mobilenet-v3-l", 0)
            model.init_weights()
        found = [w.category for w in caught if issubclass(w.category, wi.InitWarning)]
        assert wi.get_init_record(model) is not None
        if warn_unmatched:
            assert found and set(found) == {wi.UnmatchedLayerWarning}
        else:
            assert found == []


class ConvBase(nn.Conv2d):
    pass


class DeepConv(ConvBase):  # Conv2d is only a grand-base: MMEngine's layer='Conv2d' skips it
    pass


class Layers(mm_model.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Conv2d", val=2.0))
        self.near = ConvBase(2, 2, 1)
        self.deep = DeepConv(2, 2, 1)


def test_dry_run_of_an_installed_model_plans_what_init_weights_does():
    with wim.installed():
        model = Layers()
        p = wi.plan(model)
        assert p["near.weight"].owner_info == "ConstantInit: val=2.0, bias=0"
        assert p["deep.weight"].owner_info != "ConstantInit: val=2.0, bias=0"
        model.init_weights()
    assert torch.all(model.near.weight == 2.0) and not torch.all(model.deep.weight == 2.0)


# ===================================================================== the MMLogger lines


_STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d - \S+ - ", re.M)
#: MMEngine's registry logs these while it builds initializers (not base_module's lines)
_REGISTRY = ("Get class `", "is built from registry, and its implementation can be found",
             "registry have been automatically imported from")


def _log_of(tmp_path: Path, name: str, bridge: bool, model_class: type) -> list[str]:
    file = tmp_path / f"{name}.log"
    logger = MMLogger.get_instance(f"weightinit-test-{name}-{id(tmp_path)}", log_file=str(file),
                                   log_level="DEBUG")
    assert MMLogger.get_current_instance() is logger
    torch.manual_seed(0)
    model = model_class()
    with wim.installed() if bridge else contextlib.nullcontext():
        model.init_weights()
        model.init_weights()
    for handler in logger.handlers:
        handler.flush()
    lines = _STAMP.sub("", file.read_text()).splitlines()
    return [line for line in lines if not any(r in line for r in _REGISTRY)]


def test_mmlogger_lines_equal_mmengines(tmp_path: Path):
    theirs = _log_of(tmp_path, "mmengine", False, Net)
    ours = _log_of(tmp_path, "bridge", True, Net)
    first = theirs.index("WARNING - init_weights of Net has been called more than once.")
    assert ours[:first + 1] == theirs[:first + 1]  # the first call, and the warning
    assert [line for line in ours[:first] if line.startswith("DEBUG")] == [
        "DEBUG - initialize Net with init_cfg [{'type': 'Constant', 'layer': 'Linear', "
        "'val': 1.0, 'bias': 0.125}, {'type': 'Constant', 'layer': 'LayerNorm', 'val': 4.0, "
        "'bias': 1.0}]",
        "DEBUG - initialize Inner with init_cfg {'type': 'Constant', 'layer': 'Conv2d', "
        "'val': 2.0, 'bias': 0.25}",
        # Overriding's line comes when its own init_weights calls super(), as in MMEngine
        "DEBUG - initialize Overriding with init_cfg {'type': 'Constant', 'layer': 'Linear', "
        "'val': 3.0, 'bias': 0.5}",
        "DEBUG - initialize Inner with init_cfg {'type': 'Constant', 'layer': 'Conv2d', "
        "'val': 2.0, 'bias': 0.25}",
        "DEBUG - initialize Sequential with init_cfg {'type': 'Constant', 'layer': 'Linear', "
        "'val': 5.0}",
    ]
    assert ours.count("Name of parameter - Initialization information") == 2
    assert "u.fc.weight - torch.Size([3, 3]): " in ours
    # the second call writes nothing: the record's wording for that, where MMEngine has its own
    unchanged = "The value is the same before and after calling `init_weights` of Net "
    assert ours[first + 1:] == [line.replace(unchanged, "not changed by init_weights of Net")
                                for line in theirs[first + 1:]]
    assert theirs[first + 1:].count(unchanged + " ") == len(list(Net().parameters())) == 12


def test_no_dump_with_log_record_false(tmp_path: Path):
    file = tmp_path / "quiet.log"
    MMLogger.get_instance(f"weightinit-test-quiet-{id(tmp_path)}", log_file=str(file),
                          log_level="DEBUG")
    with wim.installed(log_record=False):
        Net().init_weights()
    text = file.read_text()
    assert "Name of parameter" not in text and "initialize Net with init_cfg" in text


# ===================================================================== threads


def _mmengine_state() -> tuple:
    base = mm_model.BaseModule
    return (dict(base.__dict__), _own_init_weights(), is_node(base()),
            list(WEIGHT_INITIALIZERS._lookups))


def test_install_uninstall_from_many_threads_leaves_mmengine_as_it_was():
    build("deit-s", 0)  # its classes imported: many overriding init_weights to wrap
    before = _mmengine_state()
    failures: list[str] = []

    def worker(k: int) -> None:
        for i in range(40):
            if (i + k) % 3 == 0:
                with wim.installed():
                    if current_layer_matching() != "mro":
                        failures.append("matching mode leaked into a thread")
            else:
                wim.install()
                wim.uninstall()

    for _ in range(4):
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        # weightinit's own matching holds here all along, whatever the threads do (a bounded
        # number of checks, with pauses: a main thread that spins until the workers end
        # starves them of the interpreter lock)
        for _ in range(100):
            if not any(t.is_alive() for t in threads):
                break
            net = nn.Sequential(DeepConv(2, 2, 1))
            wi.initialize(net, dict(type="Constant", layer="Conv2d", val=3.0))
            if not torch.all(net[0].weight == 3.0):
                failures.append("weightinit's layer matching switched by another thread")
            time.sleep(0.005)
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "install/uninstall threads hang"
        wim.uninstall()  # (the workers' last calls were uninstall or the end of a block)
        assert not failures, failures[:3]
        assert _mmengine_state() == before
        assert current_layer_matching() == "mro" and not wim.is_installed()


def test_installed_blocks_in_two_threads_overlap():
    """A block that ends while another thread's block runs leaves it installed for that one."""
    inside, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        with wim.installed():
            inside.set()
            release.wait(10)
            seen.append(wim.is_installed())

    t = threading.Thread(target=other)
    with wim.installed():  # this block installs it, the other thread's starts inside it
        t.start()
        assert inside.wait(10)
    assert wim.is_installed()  # the other block still runs
    release.set()
    t.join()
    assert seen == [True] and not wim.is_installed()


class ListsAString(mm_model.BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=[dict(type="Constant", layer="Linear", val=1.0), "Xavier"])
        self.fc = nn.Linear(2, 2)


def test_non_dict_list_entry_is_mmengines_assertion_error_and_changes_nothing():
    """MMEngine asserts each entry is a dict (MMCV 1.x fails on ``.pop``: an
    ``AttributeError``). The bridge raises its own error, which is both, before anything is
    written."""
    with pytest.raises(AssertionError):
        ListsAString().init_weights()
    model = ListsAString()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with wim.installed(), pytest.raises(wi.ConfigEntryTypeError) as caught:
        model.init_weights()
    assert isinstance(caught.value, AssertionError) and isinstance(caught.value, AttributeError)
    assert "init_cfg[1]: must be a dict, got str ('Xavier')" in str(caught.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not model.is_init
