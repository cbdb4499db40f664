"""Deferred construction writes each tensor once: a constructor default the model's own init
overwrites whole, before anything reads it, is never drawn (seeded, order-free runs).

Unseeded runs, which must equal eager construction under the same ``torch.manual_seed``,
still draw every recorded op in eager order; that path is checked here too.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.capture.construction import construction_of
from weightinit.planning.recorded import last_whole_write


class Own(nn.Module):
    """A model whose own init overwrites its layers' constructor defaults, as Hugging Face's
    ``_init_weights`` and timm's ``init_weights`` do, with the cases write-once must keep:
    a padding row zeroed after the fill, a rescale that reads the value it scales, a
    tensor another one was copied from, and tied weights."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(512, 1024)              # kaiming_uniform_, uniform_ bias
        self.emb = nn.Embedding(1000, 256, padding_idx=0)  # normal_
        self.scaled = nn.Linear(512, 512, bias=False)
        self.src = nn.Parameter(torch.empty(256, 64))
        self.dst = nn.Parameter(torch.empty(256, 64))
        self.head = nn.Linear(256, 1000, bias=False)
        self.head.weight = self.emb.weight             # tied
        self.post_init()

    def post_init(self) -> None:
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        nn.init.normal_(self.emb.weight, std=0.02)
        with torch.no_grad():
            self.emb.weight[0].zero_()                 # the padding row, after the fill
        nn.init.trunc_normal_(self.scaled.weight, std=0.02)
        with torch.no_grad():
            self.scaled.weight.div_(2.0)               # BEiT-style: reads what it rescales
        nn.init.uniform_(self.src, -1, 1)
        with torch.no_grad():
            self.dst.copy_(self.src)                   # reads another tensor ...
        nn.init.normal_(self.dst, std=3.0)             # ... then is overwritten whole


def deferred_own(seed=0) -> Own:
    with wi.deferred():
        m = Own()
    wi.initialize(m, [], seed=seed)
    return m


def test_a_default_the_models_init_overwrites_is_never_drawn():
    m = deferred_own()
    assert m.proj.weight._version == 1 and m.proj.bias._version == 1
    assert m.proj.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert torch.count_nonzero(m.proj.bias) == 0
    # the kaiming_uniform_ bound would be 1/sqrt(512) = 0.044: a normal(0.02) has tails
    assert m.proj.weight.abs().max().item() > 0.08


def test_the_record_names_the_write_that_gave_the_value_and_its_code():
    with wi.deferred():
        m = Own()
    record = wi.initialize(m, [], seed=0)
    assert record["proj.weight"].declared_in == (
        "model default: normal_(std=0.02) in Own.post_init")
    assert record["proj.bias"].declared_in == "model default: zeros_() in Own.post_init"
    # (its dead copy read another tensor: replayed whole, and said as recorded)
    assert record["dst"].declared_in == "PyTorch default (constructor: value, normal_)"


def test_writes_after_the_last_whole_overwrite_are_replayed_on_it():
    m = deferred_own()
    emb = m.emb.weight.detach()
    assert torch.count_nonzero(emb[0]) == 0                     # the padding row
    assert emb[1:].std().item() == pytest.approx(0.02, rel=0.03)
    assert m.emb.weight._version == 2                           # the fill, then the row
    scaled = m.scaled.weight.detach()
    assert scaled.std().item() == pytest.approx(0.01, rel=0.03)
    assert m.scaled.weight._version == 2


def test_a_dead_write_that_reads_another_tensor_keeps_the_whole_replay():
    with wi.deferred():
        m = Own()
    c = construction_of(m.dst)
    assert last_whole_write(c, tuple(m.dst.shape)) is None      # copy_(src) reads: kept
    assert last_whole_write(construction_of(m.proj.weight), (1024, 512))[0] == 1
    wi.initialize(m, [], seed=0)
    assert m.dst.std().item() == pytest.approx(3.0, rel=0.05)


def test_tied_weights_stay_one_tensor_written_once():
    m = deferred_own()
    assert m.head.weight is m.emb.weight


def test_seeded_write_once_values_are_deterministic_and_depend_on_the_seed():
    a, b, c = deferred_own(0), deferred_own(0), deferred_own(1)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        if name != "proj.bias":
            assert not torch.equal(p, r), name


def test_unseeded_deferred_still_equals_eager_construction():
    """The match-eager path draws the dead defaults too (the generator moves as eagerly)."""
    torch.manual_seed(5)
    eager = Own()
    torch.manual_seed(5)
    with wi.deferred():
        deferred = Own()
    wi.initialize(deferred, [])
    for (name, p), q in zip(eager.named_parameters(), deferred.parameters()):
        assert torch.equal(p, q), name


class Temporary(nn.Module):
    """A constructor that draws into a temporary and keeps a value computed from it."""

    def __init__(self) -> None:
        super().__init__()
        t = torch.empty(48, 48)
        nn.init.orthogonal_(t)
        self.w = nn.Parameter(t * 3.0)


def test_a_constructor_that_draws_into_a_temporary():
    with wi.deferred():
        m = Temporary()
    wi.initialize(m, [], seed=2)
    w = m.w.detach()
    assert torch.allclose(w @ w.T, 9 * torch.eye(48), atol=1e-4)
    with wi.deferred():
        again = Temporary()
    wi.initialize(again, [], seed=2)
    assert torch.equal(again.w, m.w)


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tied", [False, True])
def test_a_transformers_llama_is_written_once(tied):
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=tied)
    with wi.deferred():
        m = transformers.LlamaForCausalLM(cfg)
    record = wi.initialize(m, [], seed=0)
    versions = {n: p._version for n, p in m.named_parameters()}
    assert set(versions.values()) == {1}, versions
    q = m.model.layers[0].self_attn.q_proj.weight.detach()
    assert q.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(m.model.norm.weight == 1)
    assert record["model.layers.1.mlp.down_proj.weight"].declared_in.endswith(
        "normal_(mean=0.0, std=0.02) in LlamaModel._init_weights")
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied
    assert math.isclose(m.lm_head.weight.std().item(), 0.02, rel_tol=0.05)


def test_a_temporary_drawn_unseeded_equals_eager_construction():
    torch.manual_seed(9)
    eager = Temporary()
    torch.manual_seed(9)
    with wi.deferred():
        deferred = Temporary()
    wi.initialize(deferred, [])
    assert torch.equal(eager.w, deferred.w)
