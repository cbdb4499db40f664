"""Checks of checkpoint entries made while planning: dtype kinds, non-finite values, key
collisions after revise_keys. Every error leaves the model bit-identical."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import weightinit as wi


class Net(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.fc = nn.Linear(4, 4, dtype=dtype)
        self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))


def save(state: dict, tmp_path, suffix: str, name: str = "w") -> str:
    path = str(tmp_path / f"{name}{suffix}")
    state = {k: v.contiguous() for k, v in state.items()}
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, path)
    return path


def both(path: str, **kw):
    return [lambda m: wi.load_checkpoint(m, path, **kw),
            lambda m: wi.initialize(m, dict(type="Pretrained", checkpoint=path, **kw))]


def snapshot(m: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_same(m: nn.Module, before: dict) -> None:
    for k, v in m.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def refused(load, err: type, *fragments: str) -> None:
    m = Net()
    before = snapshot(m)
    with pytest.raises(err) as info:
        load(m)
    assert type(info.value) is err
    for f in fragments:
        assert f in str(info.value), (f, str(info.value))
    assert_same(m, before)


def good_state() -> dict:
    torch.manual_seed(0)
    return {"fc.weight": torch.randn(4, 4), "fc.bias": torch.randn(4),
            "steps": torch.arange(3)}


SUFFIXES = [".pth", ".safetensors"]
BAD_KINDS = [("fc.weight", torch.int32), ("fc.bias", torch.bool),
             ("steps", torch.float32), ("fc.weight", torch.complex64)]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(("key", "dtype"), BAD_KINDS)
def test_dtype_kind_mismatch_error(tmp_path, suffix, key, dtype):
    state = good_state()
    state[key] = state[key].to(dtype)
    path = save(state, tmp_path, suffix)
    for load in both(path, mismatch="error"):
        refused(load, wi.CheckpointMismatchError, repr(key), str(dtype).split(".")[1],
                "dtype mismatch", "Fix:")


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(("key", "dtype"), BAD_KINDS)
def test_dtype_kind_mismatch_skip_reports_and_warns(tmp_path, suffix, key, dtype):
    state = good_state()
    state[key] = state[key].to(dtype)
    path = save(state, tmp_path, suffix)
    m = Net()
    before = snapshot(m)
    with pytest.warns(wi.InitWarning, match="dtype mismatch"):
        report = wi.load_checkpoint(m, path)
    model_dtype = before[key].dtype
    assert report.dtype_mismatched == [(key, dtype, model_dtype)]
    assert key not in report.loaded and "dtype mismatch" in str(report)
    assert torch.equal(m.state_dict()[key], before[key])  # left to the other rules
    m = Net()
    with pytest.warns(wi.CheckpointKeysWarning):
        wi.initialize(m, dict(type="Pretrained", checkpoint=path))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_float32_into_bfloat16_still_loads(tmp_path, suffix):
    state = good_state()
    path = save(state, tmp_path, suffix)
    m = Net(torch.bfloat16)
    report = wi.load_checkpoint(m, path, strict=True)
    assert not report.dtype_mismatched and not report.nonfinite
    assert torch.equal(m.fc.weight.detach(), state["fc.weight"].to(torch.bfloat16))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_nonfinite_values_warn_then_strict_refuses(tmp_path, suffix):
    state = good_state()
    state["fc.weight"][0, 0] = float("nan")
    state["fc.bias"][1] = float("inf")
    path = save(state, tmp_path, suffix)
    for load in both(path, strict=True):
        refused(load, wi.CheckpointMismatchError, "NaN or infinity", "fc.weight", "fc.bias",
                "Fix:")
    m = Net()
    with pytest.warns(wi.NonFiniteCheckpointWarning, match="fc.weight"):
        report = wi.load_checkpoint(m, path)
    assert sorted(report.nonfinite) == ["fc.bias", "fc.weight"]
    assert torch.isnan(m.fc.weight[0, 0])
    with pytest.warns(wi.InitWarning):
        wi.initialize(Net(), dict(type="Pretrained", checkpoint=path))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_nonfinite_skipped_entry_is_not_reported(tmp_path, suffix):
    state = good_state()
    state["fc.weight"] = torch.full((5, 4), float("nan"))  # shape mismatch: not loaded
    path = save(state, tmp_path, suffix)
    with pytest.warns(wi.CheckpointKeysWarning):
        report = wi.load_checkpoint(Net(), path)
    assert report.nonfinite == []


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_keys_colliding_after_revise_keys_are_refused(tmp_path, suffix):
    state = good_state()
    state["module.fc.weight"] = torch.zeros(4, 4)
    path = save(state, tmp_path, suffix)
    for load in both(path):
        refused(load, wi.CheckpointKeyError, "'module.fc.weight'", "'fc.weight'",
                "revise_keys", "Fix:")
    m = Net()
    with pytest.warns(wi.CheckpointKeysWarning):  # keeping the keys as saved: no collision
        report = wi.load_checkpoint(m, path, revise_keys=[])
    assert report.unexpected == ["module.fc.weight"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_deferred_model_stays_on_meta_after_an_error(tmp_path, suffix):
    state = good_state()
    state["fc.weight"] = state["fc.weight"].to(torch.int32)
    path = save(state, tmp_path, suffix)
    nan_state = good_state()
    nan_state["fc.bias"][0] = float("nan")
    nan_path = save(nan_state, tmp_path, suffix, name="nan")
    for p, kw in ((path, dict(mismatch="error")), (nan_path, dict(strict=True))):
        with wi.deferred():
            m = Net()
        with pytest.raises(wi.CheckpointMismatchError):
            wi.load_checkpoint(m, p, **kw)
        assert all(t.is_meta for t in m.parameters())


def test_finiteness_check_is_exact_when_the_quick_sum_overflows():
    from weightinit.planning.checkpoint_checks import is_finite

    assert is_finite(torch.full((10,), 3e38))  # the sum overflows; every value is finite
    assert is_finite(torch.full((100_000,), 60000.0, dtype=torch.float16))
    assert not is_finite(torch.tensor([1.0, float("nan")]))
    assert not is_finite(torch.tensor([float("inf"), -float("inf")]))  # the sum is NaN
    big = torch.full((10,), 3e38)
    big[7] = float("inf")
    assert not is_finite(big)
    assert is_finite(torch.arange(10))  # integers are always finite


def test_finiteness_of_many_tensors_read_together_equals_one_by_one():
    """The batched check (one read-back for the lot) answers as the exact one per tensor:
    overflowing sums of finite values, NaN, infinity, mixed dtypes, complex, empty, integer."""
    from weightinit.planning.checkpoint_checks import finite_each, is_finite

    big = torch.full((10,), 3e38)
    big_inf = big.clone()
    big_inf[7] = float("inf")
    tensors = [
        torch.full((70_000,), 60000.0, dtype=torch.float16),  # the sum overflows: finite
        torch.tensor([1.0, float("nan")]),
        torch.tensor([float("-inf")], dtype=torch.bfloat16),
        torch.zeros(0),
        torch.arange(5),
        torch.tensor([1 + 1j, complex(float("nan"), 0)]),
        torch.randn(3, dtype=torch.float64),
        big, big_inf,
        torch.tensor([True]),
    ]
    assert finite_each(tensors) == [True, False, False, True, True, False, True, True, False,
                                    True]
    assert finite_each(tensors) == [is_finite(t) for t in tensors]
    assert finite_each([]) == [] and finite_each([torch.arange(3)]) == [True]
