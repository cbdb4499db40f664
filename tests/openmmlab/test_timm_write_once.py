"""timm models under weightinit.deferred(): each tensor written once when seeded, and eager's
values exactly when not.

timm needs torchvision, which this environment has (with the stand-ins of support.py);
the main test environment does not, so these run here. timm's ``trunc_normal_`` is five
steps on the tensor (uniform, inverse error function, scale, shift, clamp): deferred
construction records it as one whole fill of timm's own helper, so a seeded run draws it
once from the seeded tiles, and an unseeded one replays timm's helper itself.
"""

from __future__ import annotations

import pytest
import support
import torch

import weightinit as wi

support.install_standins()
timm = pytest.importorskip("timm")

MODELS = ("vit_base_patch16_224", "convnext_tiny", "resnet50")
#: tensors the model's own code writes again after its last whole fill (write 2 of 2)
RESCALED = {"convnext_tiny": {"head.fc.weight", "head.fc.bias"}}  # head_init_scale


def deferred(name: str, seed: int | None):
    with wi.deferred():
        model = timm.create_model(name)
    return model, wi.initialize(model, [], seed=seed)


@pytest.mark.parametrize("name", MODELS)
def test_unseeded_deferred_equals_eager_construction(name):
    torch.manual_seed(11)
    eager = timm.create_model(name)
    torch.manual_seed(11)
    model, _ = deferred(name, None)
    for (n, p), q in zip(eager.named_parameters(), model.parameters()):
        assert torch.equal(p, q), n
    for (n, b), c in zip(eager.named_buffers(), model.buffers()):
        assert torch.equal(b, c), n


@pytest.mark.parametrize("name", MODELS)
def test_seeded_deferred_writes_each_tensor_once(name):
    eager = timm.create_model(name)
    model, _ = deferred(name, 0)
    rewritten_eagerly = {n for n, p in eager.named_parameters() if p._version > 1}
    assert len(rewritten_eagerly) > 10  # timm's init overwrites the layers' defaults
    for n, p in model.named_parameters():
        assert p._version == (2 if n in RESCALED.get(name, ()) else 1), n


def test_the_record_names_timms_init_and_the_values_have_its_distribution():
    model, record = deferred("vit_base_patch16_224", 0)
    assert record["blocks.0.attn.qkv.weight"].declared_in == (
        "model default: _trunc_normal_(mean=0.0, std=0.02, a=-2.0, b=2.0) in "
        "init_weights_vit_timm")
    assert record["head.bias"].declared_in == "model default: zeros_() in init_weights_vit_timm"
    qkv = model.blocks[0].attn.qkv.weight.detach()
    assert qkv.std().item() == pytest.approx(0.02, rel=0.02)
    assert qkv.mean().abs().item() < 1e-3
    again, _ = deferred("vit_base_patch16_224", 0)
    other, _ = deferred("vit_base_patch16_224", 1)
    assert torch.equal(again.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert not torch.equal(other.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_a_rescale_after_the_fill_reads_the_drawn_value():
    """ConvNeXt scales its head by head_init_scale after timm's init: a read of the value."""
    model, record = deferred("convnext_tiny", 0)
    head = model.head.fc.weight.detach()
    assert head.std().item() == pytest.approx(0.02, rel=0.03)  # head_init_scale = 1.0
    assert record["head.fc.weight"].declared_in.startswith("model default: _trunc_normal_(")


def test_timms_helper_is_put_back_after_the_block():
    helper = timm.layers.weight_init._trunc_normal_
    with wi.deferred():
        assert timm.layers.weight_init._trunc_normal_ is not helper
    assert timm.layers.weight_init._trunc_normal_ is helper
    w = torch.empty(1000)
    timm.layers.trunc_normal_(w, std=0.5, a=-1.0, b=1.0)  # outside the block: timm's own
    assert w.abs().max().item() <= 1.0 and w.std().item() == pytest.approx(0.44, rel=0.1)
