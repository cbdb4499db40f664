"""Pretrained rules inside init_cfg trees: loaded last, written once, never random first."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import weightinit as wi


def C(val, **kw):
    return dict(type="Constant", val=val, **kw)


class Backbone(wi.BaseModule):
    def __init__(self, init_cfg=None, extra=False):
        super().__init__(init_cfg)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 4)
        if extra:  # a block added after the checkpoint was saved
            self.adapter = nn.Linear(4, 4)


class Detector(wi.BaseModule):
    def __init__(self, backbone_cfg=None, init_cfg=None, extra=False):
        super().__init__(init_cfg)
        self.backbone = Backbone(backbone_cfg, extra=extra)
        self.head = nn.Linear(4, 2)


@pytest.fixture
def source():
    torch.manual_seed(0)
    b = Backbone()
    with torch.no_grad():
        b.bn.running_mean.uniform_()
        b.bn.running_var.uniform_(1, 2)
        b.bn.num_batches_tracked.fill_(7)
    return b


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def _versions(model):
    return {k: v._version for k, v in model.state_dict(keep_vars=True).items()}


def test_pretrained_wins_in_its_subtree_and_new_modules_get_their_rule(tmp_path, source):
    ckpt = _save(source.state_dict(), tmp_path / "bb.pth")
    det = Detector(backbone_cfg=[dict(type="Pretrained", checkpoint=ckpt),
                                 C(3, layer="Linear")],
                   init_cfg=C(1, layer=["Linear", "Conv2d"]), extra=True)
    before = _versions(det)
    det.init_weights()
    for k, v in source.state_dict().items():
        assert torch.equal(det.backbone.state_dict()[k], v), k
    # The block the checkpoint does not cover gets the deepest rule that covers it.
    assert torch.all(det.backbone.adapter.weight == 3)
    assert torch.all(det.head.weight == 1)
    # Every covered tensor was written once, from the checkpoint, never drawn first.
    after = _versions(det)
    for k in source.state_dict():
        assert after[f"backbone.{k}"] - before[f"backbone.{k}"] == 1, k
    rec = det.init_record
    assert rec["backbone.fc.weight"].kind == "pretrained"
    assert rec["backbone.fc.weight"].info == f"PretrainedInit: load from {ckpt}"
    assert rec["backbone.fc.weight"].declared_in.startswith(f"checkpoint {ckpt} key fc.weight")
    assert rec["backbone.adapter.weight"].info == "ConstantInit: val=3, bias=0"


def test_prefix_loads_a_sub_part(tmp_path, source):
    full = Detector()
    full.backbone.load_state_dict(source.state_dict())
    ckpt = _save({"state_dict": full.state_dict(), "meta": {"epoch": 3}}, tmp_path / "det.pth")
    det = Detector(backbone_cfg=dict(type="Pretrained", checkpoint=ckpt, prefix="backbone"))
    det.init_weights()
    assert torch.equal(det.backbone.fc.weight, source.fc.weight)


def test_module_prefix_is_stripped_and_state_dict_unwrapped(tmp_path, source):
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    ckpt = _save({"state_dict": wrapped}, tmp_path / "ddp.pth")
    b = Backbone(dict(type="Pretrained", checkpoint=ckpt))
    b.init_weights()
    assert torch.equal(b.conv.weight, source.conv.weight)
    assert torch.equal(b.bn.running_var, source.bn.running_var)


def test_tilde_and_file_url(tmp_path, source, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _save(source.state_dict(), tmp_path / "w.pth")
    for ref in ("~/w.pth", f"file://{tmp_path}/w.pth"):
        b = Backbone(dict(type="Pretrained", checkpoint=ref))
        b.init_weights()
        assert torch.equal(b.fc.weight, source.fc.weight)


def test_safetensors_checkpoint(tmp_path, source):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    b = Backbone(dict(type="Pretrained", checkpoint=str(path)))
    b.init_weights()
    assert torch.equal(b.conv.bias, source.conv.bias)


def test_shape_mismatch_is_skipped_reported_and_keeps_rule(tmp_path, source):
    state = source.state_dict()
    state["fc.weight"] = torch.zeros(5, 4)
    ckpt = _save(state, tmp_path / "bad.pth")
    b = Backbone([C(2, layer="Linear"), dict(type="Pretrained", checkpoint=ckpt)])
    with pytest.warns(wi.CheckpointKeysWarning) as caught:
        b.init_weights()
    assert torch.all(b.fc.weight == 2)
    assert torch.equal(b.fc.bias, source.fc.bias)
    assert "8 loaded; shape mismatch: fc.weight (checkpoint (5, 4), model (4, 4))" \
        in str(caught[0].message)


def test_missing_and_unexpected_keys_are_logged(tmp_path, source):
    state = source.state_dict()
    del state["conv.bias"]
    state["extra.weight"] = torch.zeros(1)
    ckpt = _save(state, tmp_path / "w.pth")
    b = Backbone(dict(type="Pretrained", checkpoint=ckpt))
    with pytest.warns(wi.CheckpointKeysWarning) as caught:
        b.init_weights()
    assert "missing in checkpoint: conv.bias; unexpected in checkpoint: extra.weight" \
        in str(caught[0].message)


class Evil:
    def __reduce__(self):
        return (print, ("this runs on load",))


def test_pickle_needing_code_is_refused(tmp_path):
    ckpt = _save({"fc.weight": torch.zeros(4, 4), "evil": Evil()}, tmp_path / "evil.pth")
    b = Backbone(dict(type="Pretrained", checkpoint=ckpt))
    before = b.fc.weight.clone()
    with pytest.raises(wi.UnsafeCheckpointError, match="allow_pickle=True") as err:
        b.init_weights()
    assert "needs arbitrary code" in str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert torch.equal(b.fc.weight, before)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(wi.CheckpointError, match="not a readable PyTorch checkpoint"):
        Backbone(dict(type="Pretrained", checkpoint=str(bad))).init_weights()
    with pytest.raises(FileNotFoundError, match="can not be found"):
        Backbone(dict(type="Pretrained", checkpoint=str(tmp_path / "no.pth"))).init_weights()
    notdict = _save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(wi.CheckpointError, match="no state_dict found"):
        Backbone(dict(type="Pretrained", checkpoint=notdict)).init_weights()


def test_pretrained_at_two_levels_the_declaring_module_wins_its_subtree(tmp_path, source):
    other = Backbone()
    with torch.no_grad():
        for p in other.parameters():
            p.fill_(9)
    full = Detector()
    full.backbone.load_state_dict(other.state_dict())
    outer_ckpt = _save(full.state_dict(), tmp_path / "outer.pth")
    inner_ckpt = _save(source.state_dict(), tmp_path / "inner.pth")
    det = Detector(backbone_cfg=dict(type="Pretrained", checkpoint=inner_ckpt),
                   init_cfg=dict(type="Pretrained", checkpoint=outer_ckpt))
    det.init_weights()
    # The outer Pretrained runs last (after the children), so it wins everywhere it covers.
    assert torch.all(det.backbone.fc.weight == 9)
    assert torch.equal(det.head.weight, full.head.weight)


class Meta:
    """A harmless custom object, which weights_only loading still refuses."""

    def __init__(self, epoch):
        self.epoch = epoch


def test_allow_pickle_opts_in(tmp_path, source):
    ckpt = _save({"state_dict": source.state_dict(), "meta": Meta(3)}, tmp_path / "m.pth")
    with pytest.raises(wi.UnsafeCheckpointError, match="wants to import"):
        Backbone(dict(type="Pretrained", checkpoint=ckpt)).init_weights()
    b = Backbone(dict(type="Pretrained", checkpoint=ckpt, allow_pickle=True))
    b.init_weights()
    assert torch.equal(b.fc.weight, source.fc.weight)
