"""What the code around ``init_weights()`` sees under ``weightinit.mmcv``, against MMCV 1.7 itself:
its log lines (``initialize X with init_cfg``, the loads, the key-mismatch report, the dump,
in MMCV's order), ``_params_init_info`` as MMCV's ``update_init_info`` uses it, and
``Pretrained`` through MMCV's schemes and tables — ``torchvision://`` (and the deprecated
``modelzoo://``), ``open-mmlab://`` with its deprecated names and ``$MMCV_HOME``,
``mmcls://``, URLs through torch.hub's cache, a scheme a codebase registers — with MMCV's
exception classes where a load fails."""

from __future__ import annotations

import logging
import socket
import warnings
from argparse import Namespace
from collections import defaultdict
from pathlib import Path
from types import MethodType

import mmcv1_support as support
import pytest
import torch
import torch.nn as nn

pytest.importorskip("mmcv")

support.prepare()
support.quiet_logs()
# in the MMCV 1.x environment these import: a broken install fails there, never skips
import mmcv.runner  # noqa: E402,F401
from mmcv.cnn import ConvModule  # noqa: E402
from mmcv.cnn.utils.weight_init import update_init_info  # noqa: E402
from mmcv.runner import BaseModule, CheckpointLoader  # noqa: E402
from mmcv.runner.checkpoint import get_mmcls_models, get_torchvision_models  # noqa: E402
from mmcv.utils import get_logger  # noqa: E402

import weightinit as wi  # noqa: E402
import weightinit.mmcv as wimc  # noqa: E402


@pytest.fixture(autouse=True)
def _homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Private torch.hub cache and MMCV home: nothing is downloaded, no user cache touched."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MMCV_HOME", str(tmp_path / "mmcv"))
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(tmp_path / "wi-cache"))
    yield
    wimc.uninstall()


def bridged(model: nn.Module) -> None:
    with wimc.installed():
        model.init_weights()


def _raised(fn) -> BaseException:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the class is what is compared
        return err
    raise AssertionError("nothing raised")


# ===================================================================== the log


class Inner(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Conv2d", val=2.0, bias=0.25))
        self.conv = nn.Conv2d(2, 3, 1)


class Overriding(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=3.0, bias=0.5))
        self.fc = nn.Linear(3, 3)
        self.inner = Inner()

    def init_weights(self) -> None:
        super().init_weights()


class Loaded(BaseModule):
    def __init__(self, checkpoint: str, prefix: str | None = None) -> None:
        super().__init__(init_cfg=dict(type="Pretrained", checkpoint=checkpoint, prefix=prefix))
        self.fc = nn.Linear(2, 2)
        self.inner = Inner()
        self.ln = nn.LayerNorm(3)


class Net(BaseModule):
    def __init__(self, checkpoint: str) -> None:
        super().__init__(init_cfg=[dict(type="Constant", layer="Linear", val=1.0, bias=0.125),
                                   dict(type="Constant", layer="LayerNorm", val=4.0, bias=1.0)])
        self.a = Inner()
        self.u = Overriding()
        self.cm = ConvModule(2, 2, 1, norm_cfg=dict(type="BN"))
        self.loaded = Loaded(checkpoint)
        self.b = Inner()
        self.prefixed = Loaded(checkpoint.replace(".pth", "-prefixed.pth"), prefix="part")


def mismatched_checkpoint(directory: Path) -> str:
    """A checkpoint for ``Loaded`` with a key too many, one missing, one of another shape."""
    state = Loaded("x").state_dict()
    del state["ln.bias"]
    state["extra.weight"] = torch.ones(1)
    state["fc.weight"] = torch.ones(3, 2)
    path = directory / "loaded.pth"
    torch.save({"state_dict": state}, path)
    torch.save({"state_dict": {f"part.{k}": v for k, v in state.items()}},
               directory / "loaded-prefixed.pth")
    return str(path)


def _log(path: Path, bridge: bool, make) -> tuple[list[str], list[str]]:
    """Two init_weights() calls, logged through MMCV's logger to a file (its dump writes to
    the file handler's stream): the lines, and the warnings."""
    logger = get_logger("mmcv")
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(levelname)s - %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    torch.manual_seed(0)
    model = make()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with wimc.installed() if bridge else _nothing():
                model.init_weights()
                model.init_weights()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.WARNING)
        handler.close()
    return (path.read_text().splitlines(),
            [str(w.message) for w in caught if w.category is not DeprecationWarning])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_SAME = "The value is the same before and after calling `init_weights` of Net "


def test_log_lines_equal_mmcvs(tmp_path: Path, capsys: pytest.CaptureFixture):
    ck = mismatched_checkpoint(tmp_path)
    theirs, warned_mm = _log(tmp_path / "mmcv.log", False, lambda: Net(ck))
    printed_mm = capsys.readouterr().out
    ours, warned_wi = _log(tmp_path / "bridge.log", True, lambda: Net(ck))
    printed_wi = capsys.readouterr().out
    dump = theirs.index("Name of parameter - Initialization information")
    assert ours[:dump] == theirs[:dump]  # every line before the dump, in MMCV's order
    assert [line for line in ours[:dump] if line.startswith(("INFO", "WARNING"))] == [
        "INFO - initialize Net with init_cfg [{'type': 'Constant', 'layer': 'Linear', "
        "'val': 1.0, 'bias': 0.125}, {'type': 'Constant', 'layer': 'LayerNorm', 'val': 4.0, "
        "'bias': 1.0}]",
        "INFO - initialize Inner with init_cfg {'type': 'Constant', 'layer': 'Conv2d', "
        "'val': 2.0, 'bias': 0.25}",
        # Overriding's comes when its own init_weights calls super(), as in MMCV
        "INFO - initialize Overriding with init_cfg {'type': 'Constant', 'layer': 'Linear', "
        "'val': 3.0, 'bias': 0.5}",
        "INFO - initialize Inner with init_cfg {'type': 'Constant', 'layer': 'Conv2d', "
        "'val': 2.0, 'bias': 0.25}",
        f"INFO - initialize Loaded with init_cfg {{'type': 'Pretrained', 'checkpoint': "
        f"'{ck}', 'prefix': None}}",
        f"INFO - load model from: {ck}",
        f"INFO - load checkpoint from local path: {ck}",
        "WARNING - The model and loaded state dict do not match exactly",
        "INFO - initialize Inner with init_cfg {'type': 'Constant', 'layer': 'Conv2d', "
        "'val': 2.0, 'bias': 0.25}",
        f"INFO - initialize Loaded with init_cfg {{'type': 'Pretrained', 'checkpoint': "
        f"'{ck[:-4]}-prefixed.pth', 'prefix': 'part'}}",
        f"INFO - load part in model from: {ck[:-4]}-prefixed.pth",
        "WARNING - The model and loaded state dict do not match exactly",
    ]
    report = theirs.index("WARNING - The model and loaded state dict do not match exactly")
    assert theirs[report + 1:report + 7] == [
        "", "size mismatch for fc.weight: copying a param with shape torch.Size([3, 2]) from "
        "checkpoint, the shape in current model is torch.Size([2, 2]).",
        "unexpected key in source state_dict: extra.weight", "",
        "missing keys in source state_dict: ln.bias", ""]
    # MMCV's loader prints this one (a prefixed load gives it no logger)
    assert printed_wi == printed_mm == f"load checkpoint from local path: {ck[:-4]}-prefixed.pth\n"
    # the dumps: the record's texts where MMCV's mean check guesses
    assert ours.count("Name of parameter - Initialization information") == 2
    assert "u.fc.weight - torch.Size([3, 3]): " in ours
    second = [i for i, line in enumerate(theirs) if line.startswith("Name of parameter")][1]
    assert ours[second:] == [line.replace(_SAME, "not changed by init_weights of Net")
                             for line in theirs[second:]]
    assert warned_wi == warned_mm == ["init_weights of Net has been called more than once."]


# ===================================================================== _params_init_info


class SetsGate(BaseModule):
    """User code reading ``_params_init_info`` while the run goes on, through MMCV's own
    ``update_init_info`` (which asserts it is there, keyed by each parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(2, 2)

    def init_weights(self) -> None:
        super().init_weights()
        self.seen = self._params_init_info
        with torch.no_grad():
            self.gate.weight.fill_(0.75)
        update_init_info(self, init_info="gate set by hand")


class Holder(BaseModule):
    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type="Constant", layer="Linear", val=1.0, bias=0.5))
        self.child = SetsGate()
        self.shared = self.child.gate  # one parameter under two names: one entry


def capture_info(model: nn.Module) -> dict:
    """Replace ``_dump_init_info`` on the instance and keep what it sees."""
    seen: dict = {}

    def dump(self, *args):
        seen["args"] = args
        seen["info"] = self._params_init_info
        seen["holders"] = [m for m in self.modules()
                           if m.__dict__.get("_params_init_info") is self._params_init_info]
        seen["entries"] = {n: dict(self._params_init_info[p]) for n, p in self.named_parameters()}
        seen["keys"] = list(self._params_init_info)

    model._dump_init_info = MethodType(dump, model)
    return seen


def test_params_init_info_is_mmcvs():
    mm, ours = Holder(), Holder()
    theirs, seen = capture_info(mm), capture_info(ours)
    mm.init_weights()
    bridged(ours)
    for got, model in ((theirs, mm), (seen, ours)):
        assert got["args"] == ("mmcv",)  # MMCV passes the logger's name
        assert type(got["info"]) is defaultdict and got["info"].default_factory is dict
        assert got["holders"] == list(model.modules())
        assert got["keys"] == list(model.parameters())
        assert model.child.seen is got["info"]
        for name, p in model.named_parameters():
            entry = got["entries"][name]
            assert set(entry) == {"init_info", "tmp_mean_value"}
            assert entry["tmp_mean_value"].device == p.device  # MMCV keeps it where p is
            assert torch.equal(entry["tmp_mean_value"], p.detach().mean())
        assert not any("_params_init_info" in vars(m) for m in model.modules())
    assert seen["entries"]["child.gate.weight"]["init_info"] == "gate set by hand"
    assert theirs["entries"]["child.gate.weight"]["init_info"] == "gate set by hand"
    assert seen["entries"]["child.gate.bias"]["init_info"] == "ConstantInit: val=1.0, bias=0.5"
    assert torch.all(ours.child.gate.weight == 0.75) and torch.all(ours.child.gate.bias == 0.5)
    assert wi.get_init_record(ours)["child.gate.weight"].info == (
        "fill_(0.75) in SetsGate.init_weights")


# ===================================================================== checkpoints


class Small(BaseModule):
    def __init__(self, init_cfg) -> None:
        super().__init__(init_cfg=init_cfg)
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)


def _state(prefix: str = "", value: float = 7.0) -> dict[str, torch.Tensor]:
    return {prefix + k: torch.full_like(v, value) for k, v in Small(None).state_dict().items()}


def _hub(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


def _both(cfg: dict) -> tuple[nn.Module, nn.Module, list[str], list[str]]:
    """MMCV's and the bridge's init_weights of ``Small(cfg)``, and the warnings each gave."""
    out = []
    for bridge in (False, True):
        torch.manual_seed(0)
        model = Small(cfg)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bridged(model) if bridge else model.init_weights()
        out += [model, [str(w.message) for w in caught if w.category is DeprecationWarning]]
    theirs, warned_mm, ours, warned_wi = out
    return theirs, ours, warned_mm, warned_wi


@pytest.mark.parametrize("reference, warning", [
    ("torchvision://resnet18", None),
    ("torchvision://ResNet18_Weights.IMAGENET1K_V1", None),  # MMCV's name normalization
    ("modelzoo://resnet18", 'The URL scheme of "modelzoo://" is deprecated, please use '
                            '"torchvision://" instead'),
])
def test_torchvision_names_read_torch_hubs_cache(reference: str, warning: str | None):
    url = get_torchvision_models()["resnet18"]
    _hub(url).parent.mkdir(parents=True)
    torch.save(_state(), _hub(url))
    theirs, ours, warned_mm, warned_wi = _both(dict(type="Pretrained", checkpoint=reference))
    assert torch.all(ours.conv1.weight == 7) and torch.equal(ours.fc.bias, theirs.fc.bias)
    assert warned_wi == warned_mm == ([warning] if warning else [])
    assert wi.get_init_record(ours)["fc.weight"].info == f"PretrainedInit: load from {reference}"


def test_open_mmlab_deprecated_names_and_mmcv_home(tmp_path: Path):
    url = "https://download.openmmlab.com/pretrain/third_party/resnet50_caffe-788b5fa3.pth"
    _hub(url).parent.mkdir(parents=True)
    torch.save({"state_dict": _state(value=3.0)}, _hub(url))
    theirs, ours, warned_mm, warned_wi = _both(
        dict(type="Pretrained", checkpoint="open-mmlab://resnet50_caffe"))
    assert warned_wi == warned_mm == [
        "open-mmlab://resnet50_caffe is deprecated in favor of "
        "open-mmlab://detectron/resnet50_caffe"]
    assert torch.all(ours.conv1.weight == 3) and torch.all(theirs.conv1.weight == 3)
    # a name $MMCV_HOME/open_mmlab.json adds, whose value is a file under MMCV's home
    home = tmp_path / "mmcv"
    home.mkdir(exist_ok=True)
    (home / "open_mmlab.json").write_text('{"mine": "weights/mine.pth"}')
    (home / "weights").mkdir()
    torch.save(_state(value=5.0), home / "weights" / "mine.pth")
    theirs, ours, _, _ = _both(dict(type="Pretrained", checkpoint="openmmlab://mine"))
    assert torch.all(ours.fc.weight == 5) and torch.all(theirs.fc.weight == 5)


def test_mmcls_names_keep_the_backbone_keys_and_prefixes_select():
    url = get_mmcls_models()["mobilenet_v2"]
    _hub(url).parent.mkdir(parents=True)
    state = {**_state("backbone.", 2.0), **_state("head.", 9.0), **_state("module.", 1.0)}
    torch.save({"state_dict": state}, _hub(url))
    theirs, ours, _, _ = _both(dict(type="Pretrained", checkpoint="mmcls://mobilenet_v2"))
    assert torch.all(ours.conv1.weight == 2) and torch.all(theirs.conv1.weight == 2)
    # prefix: the keys under 'head.' (stripped), nothing else revised
    file = str(_hub(url))
    theirs, ours, _, _ = _both(dict(type="Pretrained", checkpoint=file, prefix="head"))
    assert torch.all(ours.conv1.weight == 9) and torch.equal(ours.fc.bias, theirs.fc.bias)
    # no prefix: a leading 'module.' is stripped (and 'head.'/'backbone.' keys are unexpected)
    theirs, ours, _, _ = _both(dict(type="Pretrained", checkpoint=file))
    assert torch.all(ours.conv1.weight == 1) and torch.all(theirs.conv1.weight == 1)


def test_scheme_registered_with_mmcvs_checkpoint_loader():
    calls = []

    @CheckpointLoader.register_scheme(prefixes="memory://", force=True)
    def load_from_memory(filename, map_location=None):
        calls.append(filename)
        return {"state_dict": _state(value=4.0), "meta": {"epoch": 3}}

    theirs, ours, _, _ = _both(dict(type="Pretrained", checkpoint="memory://weights"))
    assert calls == ["memory://weights"] * 2  # its own code, once each
    assert torch.all(ours.conv1.weight == 4) and torch.equal(ours.fc.weight, theirs.fc.weight)


@pytest.mark.parametrize("reference, mmcv_class, ours_class, text", [
    ("{tmp}/missing.pth", FileNotFoundError, wi.CheckpointNotFoundError,
     "{tmp}/missing.pth can not be found"),
    ("open-mmlab://no_such_model", KeyError, wi.CheckpointKeyError,
     "'no_such_model' is not a name in MMCV's model zoo table"),
    ("torchvision://resnet181", KeyError, wi.CheckpointKeyError, "Did you mean 'resnet18'"),
    ("http://127.0.0.1:{port}/weights.pth", OSError, wi.CheckpointDownloadError,
     "Connection refused"),
])
def test_failed_loads_raise_mmcvs_exception_class(reference, mmcv_class, ours_class, text,
                                                  tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    reference = reference.format(tmp=tmp_path, port=port)
    cfg = dict(type="Pretrained", checkpoint=reference)
    theirs = _raised(Small(cfg).init_weights)
    assert isinstance(theirs, mmcv_class)
    model = Small(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ours = _raised(lambda: bridged(model))
    assert isinstance(ours, ours_class) and isinstance(ours, mmcv_class)
    assert text.format(tmp=tmp_path) in str(ours)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not model.is_init and not any("_params_init_info" in vars(m) for m in model.modules())


def test_download_that_needs_arbitrary_code_is_refused_unless_allowed():
    """MMCV unpickles a download fully (torch.hub); weightinit reads weights only, and an
    ``allow_pickle=True`` in the entry (the bridge's, beyond MMCV's arguments) opts in."""
    url = "https://download.example.org/weights/unsafe.pth"
    _hub(url).parent.mkdir(parents=True)
    torch.save({"state_dict": _state(value=6.0), "meta": {"args": Namespace(lr=0.1)}}, _hub(url))
    theirs = Small(dict(type="Pretrained", checkpoint=url))
    theirs.init_weights()
    assert torch.all(theirs.fc.weight == 6)
    model = Small(dict(type="Pretrained", checkpoint=url))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(wi.UnsafeCheckpointError, match="allow_pickle=True"):
        bridged(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    allowed = Small(dict(type="Pretrained", checkpoint=url, allow_pickle=True))
    bridged(allowed)
    assert torch.equal(allowed.fc.weight, theirs.fc.weight)
