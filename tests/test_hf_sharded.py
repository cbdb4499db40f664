"""Hugging Face sharded safetensors checkpoints: ``model.safetensors.index.json`` + shards.

Loaded through the index file, its directory, ``load_checkpoint`` and a
``Pretrained`` rule, eagerly and under ``deferred()``; each shard is opened once
and each tensor read once; a bad index is refused before any write.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import weightinit as wi
from weightinit.checkpoint import loader
from weightinit.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
)

INDEX = "model.safetensors.index.json"


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))


def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_same(m: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = m.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert not got[k].is_meta, k
        assert torch.equal(got[k], v), k


def save_by_hand(folder: Path, state: dict[str, torch.Tensor], per_shard: int = 1,
                 metadata: bool = True) -> Path:
    """Shards of ``per_shard`` tensors each and their index, as transformers writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    groups = [names[i:i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map = {}
    for i, group in enumerate(groups, 1):
        shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: state[k].contiguous() for k in group}, str(folder / shard),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, shard))
    index: dict = {"weight_map": weight_map}
    if metadata:
        index["metadata"] = {"total_size": sum(t.numel() * t.element_size()
                                               for t in state.values())}
    (folder / INDEX).write_text(json.dumps(index))
    return folder / INDEX


def write_index(folder: Path, weight_map: object) -> Path:
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder / INDEX


class Spy:
    """Wraps ``safe_open`` in the loader: counts shards opened and tensors read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: Counter[str] = Counter()
        self.read: Counter[str] = Counter()
        real = loader.safe_open

        def spy_open(path, *args, **kwargs):
            self.opened[os.path.basename(path)] += 1
            return Handle(real(path, *args, **kwargs), self.read)

        monkeypatch.setattr(loader, "safe_open", spy_open)


class Handle:
    def __init__(self, handle, read: Counter[str]) -> None:
        self._handle = handle
        self._count = read

    def keys(self):
        return self._handle.keys()

    def get_slice(self, name):  # header (shape, dtype) or a part of the tensor
        return self._handle.get_slice(name)

    def get_tensor(self, name):
        self._count[name] += 1
        return self._handle.get_tensor(name)


# -- by hand -----------------------------------------------------------------------------


@pytest.fixture
def sharded(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = snapshot(net())
    return save_by_hand(tmp_path / "ckpt", state), state


@pytest.mark.parametrize("via", ["index", "directory", "file_url"])
def test_load_checkpoint_reads_a_sharded_checkpoint(sharded, via):
    index, state = sharded
    source = {"index": str(index), "directory": str(index.parent),
              "file_url": f"file://{index}"}[via]
    torch.manual_seed(1)
    model = net()
    report = wi.load_checkpoint(model, source)
    assert sorted(report.loaded) == sorted(state)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert_same(model, state)


@pytest.mark.parametrize("via", ["index", "directory"])
def test_pretrained_rule_reads_a_sharded_checkpoint(sharded, via):
    index, state = sharded
    source = str(index) if via == "index" else str(index.parent)
    torch.manual_seed(1)
    model = net()
    wi.initialize(model, dict(type="Pretrained", checkpoint=source))
    assert_same(model, state)


def test_pretrained_prefix_and_revise_keys_work_on_shards(tmp_path):
    torch.manual_seed(0)
    state = {f"module.backbone.{k}": v for k, v in snapshot(net()).items()}
    index = save_by_hand(tmp_path / "ckpt", state, per_shard=2)
    model = net()
    wi.initialize(model, dict(type="Pretrained", checkpoint=str(index), prefix="backbone"))
    assert_same(model, {k[len("module.backbone."):]: v for k, v in state.items()})


def test_deferred_model_is_materialized_from_the_shards(sharded):
    index, state = sharded
    with wi.deferred():
        model = net()
    assert all(p.is_meta for p in model.parameters())
    wi.load_checkpoint(model, str(index.parent))
    assert_same(model, state)


def test_each_shard_opened_once_and_each_tensor_read_once(sharded, monkeypatch):
    index, state = sharded
    spy = Spy(monkeypatch)
    model = net()
    wi.initialize(model, [dict(type="Pretrained", checkpoint=str(index))])
    assert_same(model, state)
    shards = {f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)}
    assert spy.opened == Counter(dict.fromkeys(shards, 1))
    assert spy.read == Counter(dict.fromkeys(state, 1))


def test_planning_reads_only_headers(sharded, monkeypatch):
    index, _ = sharded
    spy = Spy(monkeypatch)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 5))  # last layer: shape mismatch
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError):
        wi.load_checkpoint(model, str(index), mismatch="error")
    assert not spy.read  # refused while planning: no tensor was read
    assert_same(model, before)


def test_directory_with_a_single_model_safetensors(tmp_path):
    torch.manual_seed(0)
    state = snapshot(net())
    save_file(state, str(tmp_path / "model.safetensors"))
    model = net()
    wi.load_checkpoint(model, str(tmp_path))
    assert_same(model, state)


def test_metadata_is_optional_and_shards_may_hold_several_tensors(tmp_path):
    torch.manual_seed(0)
    state = snapshot(net())
    index = save_by_hand(tmp_path, state, per_shard=3, metadata=False)
    model = net()
    wi.load_checkpoint(model, str(index))
    assert_same(model, state)


# -- with transformers -------------------------------------------------------------------


def save_pretrained_sharded(model: nn.Module, folder: Path) -> Path:
    try:
        model.save_pretrained(folder, max_shard_size="1KB", safe_serialization=True)
    except TypeError:  # transformers releases without the safe_serialization argument
        model.save_pretrained(folder, max_shard_size="1KB")
    index = folder / INDEX
    assert index.is_file()
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert {p.name for p in shards} == set(json.loads(index.read_text())["weight_map"].values())
    return index


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    source = transformers.LlamaForCausalLM(cfg)
    folder = tmp_path_factory.mktemp("llama")
    index = save_pretrained_sharded(source, folder)
    return transformers.LlamaForCausalLM, cfg, index, snapshot(source)


@pytest.mark.parametrize("via", ["index", "directory", "pretrained"])
def test_llama_from_save_pretrained_shards(llama, via):
    cls, cfg, index, state = llama
    torch.manual_seed(1)
    model = cls(cfg)
    if via == "pretrained":
        wi.initialize(model, dict(type="Pretrained", checkpoint=str(index.parent)))
    else:
        report = wi.load_checkpoint(model, str(index if via == "index" else index.parent))
        assert not report.missing and not report.unexpected
    assert_same(model, state)


def test_deferred_llama_from_save_pretrained_shards(llama, monkeypatch):
    cls, cfg, index, state = llama
    spy = Spy(monkeypatch)
    with wi.deferred():
        model = cls(cfg)
    assert all(p.is_meta for p in model.parameters())
    wi.load_checkpoint(model, str(index.parent))
    assert_same(model, state)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert spy.opened == Counter(dict.fromkeys(set(weight_map.values()), 1))
    assert spy.read == Counter(dict.fromkeys(weight_map, 1))


# -- refused, model untouched ------------------------------------------------------------


def refused(source: str, error: type[Exception], *names: str, **kwargs) -> Exception:
    torch.manual_seed(2)
    model = net()
    before = snapshot(model)
    with pytest.raises(error) as info:
        wi.load_checkpoint(model, source, **kwargs)
    assert_same(model, before)
    text = str(info.value)
    assert str(source) in text
    for name in names:
        assert name in text, (name, text)
    assert "Fix:" in text
    with wi.deferred():  # a deferred model is left on meta
        deferred = net()
    with pytest.raises(error):
        wi.initialize(deferred, dict(type="Pretrained", checkpoint=source, **kwargs))
    assert all(p.is_meta for p in deferred.parameters())
    return info.value


def test_index_that_is_not_json(sharded):
    index, _ = sharded
    index.write_text("{not json")
    refused(str(index), CheckpointError, str(index), "not readable JSON")


@pytest.mark.parametrize("content", [{}, {"metadata": {}}, {"weight_map": []},
                                     {"weight_map": {}}, [1, 2]])
def test_index_without_a_weight_map(sharded, content):
    index, _ = sharded
    index.write_text(json.dumps(content))
    refused(str(index), CheckpointError, str(index), "weight_map")


def test_missing_shard_names_the_shard_and_the_index(sharded):
    index, _ = sharded
    shard = index.parent / "model-00003-of-00004.safetensors"
    shard.unlink()
    err = refused(str(index.parent), CheckpointNotFoundError, str(index), shard.name)
    assert isinstance(err, FileNotFoundError)


def test_tensor_listed_but_absent_from_its_shard(sharded):
    index, _ = sharded
    data = json.loads(index.read_text())
    data["weight_map"]["1.bias"] = "model-00001-of-00004.safetensors"  # lives in shard 4
    index.write_text(json.dumps(data))
    refused(str(index), CheckpointError, str(index), "model-00001-of-00004.safetensors",
            "'1.bias'")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors",
                                   "ABSOLUTE", "..\\outside.safetensors", ""])
def test_shard_outside_the_index_directory_is_refused(tmp_path, shard):
    torch.manual_seed(0)
    state = snapshot(net())
    outside = tmp_path / "outside.safetensors"
    save_file(state, str(outside))  # present: refused for where it is, not for missing
    folder = tmp_path / "ckpt"
    folder.mkdir()
    if shard == "ABSOLUTE":
        shard = str(outside)
    index = write_index(folder, dict.fromkeys(state, shard))
    err = refused(str(index), CheckpointError, str(index))
    assert type(err) is CheckpointError  # refused for where it points, not as missing
    if shard:
        assert "outside the index's directory" in str(err)


def test_pickled_shards_are_refused(tmp_path):
    torch.manual_seed(0)
    state = snapshot(net())
    torch.save(state, tmp_path / "pytorch_model-00001-of-00001.bin")
    index = write_index(tmp_path, dict.fromkeys(state, "pytorch_model-00001-of-00001.bin"))
    refused(str(index), CheckpointError, str(index), "not a .safetensors file")


def test_corrupt_shard_names_the_shard(sharded):
    index, _ = sharded
    shard = index.parent / "model-00002-of-00004.safetensors"
    shard.write_bytes(b"\x00" * 5)
    refused(str(index), CheckpointError, str(shard), str(index))


def test_sha256_with_an_index_is_refused(sharded):
    index, _ = sharded
    refused(str(index), CheckpointError, str(index), "sha256", sha256="0" * 64)
    refused(str(index.parent), CheckpointError, "sha256", sha256="0" * 64)


def test_sha256_with_a_directory_holding_model_safetensors_checks_that_file(tmp_path):
    torch.manual_seed(0)
    state = snapshot(net())
    save_file(state, str(tmp_path / "model.safetensors"))
    digest = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    model = net()
    wi.load_checkpoint(model, str(tmp_path), sha256=digest)
    assert_same(model, state)
    refused(str(tmp_path), CheckpointError, "sha256", sha256="0" * 64)


def test_directory_without_a_checkpoint(tmp_path):
    refused(str(tmp_path), CheckpointNotFoundError, str(tmp_path), INDEX)


def test_directory_with_both_layouts_is_ambiguous(sharded):
    index, state = sharded
    save_file(state, str(index.parent / "model.safetensors"))
    refused(str(index.parent), CheckpointError, "model.safetensors", INDEX)


def test_shard_truncated_after_planning_is_an_error(sharded, monkeypatch):
    index, _ = sharded
    shard = index.parent / "model-00004-of-00004.safetensors"
    real_get = loader.CheckpointState.get
    calls = []

    def get(self, key):
        calls.append(key)
        if len(calls) == 2:
            os.truncate(shard, shard.stat().st_size // 2)
        return real_get(self, key)

    monkeypatch.setattr(loader.CheckpointState, "get", get)
    refused(str(index), CheckpointError, str(shard), "truncated")
