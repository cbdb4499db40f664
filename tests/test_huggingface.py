"""Hugging Face models under ``deferred()`` keep their own initialization.

transformers' ``_init_weights`` writes through ``torch.nn.init`` functions that
dispatch with the tensor as a keyword; those writes must be recorded and
replayed like any constructor init, so a deferred model's parameters have
the distributions eager construction gives them (std 0.02, not PyTorch's
defaults). Small configs, no downloads.
"""

from __future__ import annotations

import pytest
import torch

import weightinit as wi

transformers = pytest.importorskip("transformers")


def small(name: str):
    if name == "llama":
        cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2)
        return transformers.LlamaForCausalLM, cfg
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      max_position_embeddings=64)
        return transformers.BertModel, cfg
    if name == "vit":
        cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64,
                                     intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4)
        return transformers.ViTModel, cfg
    if name == "t5":  # builds its token embeddings, draws them, then ties them to `shared`
        cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                    num_heads=4, decoder_start_token_id=0)
        return transformers.T5ForConditionalGeneration, cfg
    cfg = transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel, cfg


@pytest.mark.parametrize("name", ["llama", "bert", "gpt2", "vit"])
@pytest.mark.parametrize("seed", [None, 3])
def test_deferred_model_keeps_the_models_own_init(name, seed):
    cls, cfg = small(name)
    torch.manual_seed(0)
    eager = cls(cfg)
    with wi.deferred():
        deferred = cls(cfg)
    assert all(p.is_meta for p in deferred.parameters())
    record = wi.initialize(deferred, [], seed=seed)
    for n, p in eager.named_parameters():
        q = deferred.get_parameter(n)
        if p.numel() < 1000 or p.std() == 0:  # constants (norms, biases): exactly equal
            if p.std() == 0:
                assert torch.equal(p, q), n
            continue
        # std 0.02 draws of >= 1000 elements: within 10 % of each other
        assert q.std().item() == pytest.approx(p.std().item(), rel=0.1), n
        assert record[n].declared_in.startswith("model default (_init_weights of "), n


@pytest.mark.parametrize("name", ["llama", "bert", "gpt2", "vit", "t5"])
def test_deferred_without_rules_equals_eager_under_the_same_torch_seed(name):
    cls, cfg = small(name)
    torch.manual_seed(0)
    eager = cls(cfg)
    torch.manual_seed(0)
    with wi.deferred():
        deferred = cls(cfg)
    wi.initialize(deferred, [])  # constructor and _init_weights writes replayed in eager order
    for n, p in eager.named_parameters():
        assert torch.equal(p, deferred.get_parameter(n)), n


PARTIAL_RULES = [dict(type="Normal", layer="Linear", std=0.05),
                 dict(type="Constant", layer="LayerNorm", val=1.5, bias=0.25)]


@pytest.mark.parametrize("name", ["llama", "bert", "gpt2", "vit", "t5"])
def test_deferred_with_partial_rules_equals_eager_with_the_same_rules(name):
    # deferred(match_eager=True) draws the inits the rules overwrite into scratch, so
    # what is drawn after them (the model's own init of the rest, the rules) matches
    cls, cfg = small(name)
    torch.manual_seed(0)
    eager = cls(cfg)
    wi.initialize(eager, PARTIAL_RULES)
    after_eager = torch.rand(4)
    torch.manual_seed(0)
    with wi.deferred(match_eager=True):
        deferred = cls(cfg)
    record = wi.initialize(deferred, PARTIAL_RULES)
    assert torch.equal(after_eager, torch.rand(4))
    assert {r.kind for r in record.params.values()} == {"rule", "unchanged"}  # partial
    for n, p in eager.named_parameters():
        q = deferred.get_parameter(n)
        assert torch.equal(p, q), n
        if record[n].kind == "rule":  # the overwritten inits went to scratch
            assert q._version == 1, n


def test_a_rule_still_wins_over_the_models_init():
    cls, cfg = small("llama")
    with wi.deferred():
        m = cls(cfg)
    wi.initialize(m, dict(type="Constant", layer="Linear", val=0.5), seed=1)
    assert torch.all(m.lm_head.weight == 0.5)
    assert m.model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_the_record_names_the_models_own_init_eager_and_deferred():
    cls, cfg = small("llama")
    with wi.deferred():
        deferred = cls(cfg)
    record = wi.initialize(deferred, dict(type="Constant", layer="LlamaRMSNorm", val=1))
    owner = "LlamaPreTrainedModel"
    # deferred: the record names the write that gave the value, and the code that made it
    assert record["lm_head.weight"].declared_in == (
        f"model default (_init_weights of {owner}): normal_(mean=0.0, std=0.02) in "
        "LlamaForCausalLM._init_weights")
    assert record["model.norm.weight"].info.startswith("ConstantInit")
    eager = cls(cfg)
    record = wi.initialize(eager, dict(type="Constant", layer="LlamaRMSNorm", val=1))
    assert record["lm_head.weight"].declared_in == (
        f"model default (_init_weights of {owner}, kept from construction)")
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with wi.deferred():
        plain_deferred = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert wi.initialize(plain, [])["0.weight"].declared_in == (
        "PyTorch default (kept its value from construction)")
    assert wi.initialize(plain_deferred, [])["0.weight"].declared_in == (
        "PyTorch default (constructor: kaiming_uniform_)")
