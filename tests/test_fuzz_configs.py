"""Property: on any config, a run either succeeds with finite values or raises a library
error and leaves the model bit-identical (a deferred model: still on meta).

Hypothesis draws configs from every built-in rule with arguments that are
valid, out of range, non-finite, huge, of the wrong type or misspelled, with
``layer``/``param``/``override`` targets that exist or not, on eager and
deferred models in float32, float16 or bfloat16. Seeded (derandomized) and
bounded in examples, so it runs the same in CI every time.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import weightinit as wi

NUMBERS = st.one_of(
    st.sampled_from([0, 1, -1, 0.02, 2.5, -3.0, 1e-8, 1e5, 1e300, -1e300,
                     math.inf, -math.inf, math.nan]),
    st.floats(min_value=-10, max_value=10, allow_nan=False),
    st.sampled_from(["1", None, True, [1.0]]),  # wrong types
)

ARGS = {
    "Constant": ["val", "bias"],
    "Normal": ["mean", "std", "bias"],
    "TruncNormal": ["mean", "std", "a", "b", "bias"],
    "TFTruncNormal": ["mean", "std", "a", "b"],
    "Uniform": ["a", "b", "bias"],
    "Xavier": ["gain", "bias"],
    "Kaiming": ["a", "bias"],
    "Caffe2Xavier": ["bias"],
    "VarianceScaling": ["scale"],
    "LeCunNormal": [],
    "LeCunUniform": [],
    "Orthogonal": ["gain"],
    "Dirac": ["groups"],
    "Eye": [],
    "Zeros": ["bias"],
    "Ones": ["bias"],
    "Default": [],
    "Nonexistent": ["val"],
}
CHOICES = {"distribution": ["normal", "uniform", "truncated_normal", "bogus"],
           "mode": ["fan_in", "fan_out", "fan_avg", "bogus"],
           "nonlinearity": ["relu", "leaky_relu", "tanh", "bogus"]}
LAYERS = ["Linear", "Conv2d", "LayerNorm", "Conv1d", "Linnear", "Module"]


@st.composite
def rule(draw: st.DrawFn) -> dict:
    name = draw(st.sampled_from(sorted(ARGS)))
    cfg: dict = {"type": name}
    for arg in ARGS[name]:
        if draw(st.booleans()):
            cfg[arg] = draw(st.integers(1, 4)) if arg == "groups" else draw(NUMBERS)
    for arg, values in CHOICES.items():
        if name in ("Xavier", "Kaiming", "VarianceScaling") and draw(st.booleans()):
            cfg[arg] = draw(st.sampled_from(values))
    target = draw(st.sampled_from(["layer", "param", "override", "none"]))
    if target == "layer":
        cfg["layer"] = draw(st.sampled_from(LAYERS))
    elif target == "param":
        cfg["param"] = draw(st.sampled_from(["*.weight", "0.bias", "missing*"]))
    elif target == "override":
        cfg["override"] = dict(name=draw(st.sampled_from(["0", "1", "2", "nope"])))
    return cfg


def build(deferred: bool) -> nn.Module:
    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 6), nn.Conv2d(4, 4, 3), nn.LayerNorm(6))

    if deferred:
        with wi.deferred():
            return make()
    torch.manual_seed(0)
    return make()


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cfgs=st.lists(rule(), min_size=1, max_size=3), deferred=st.booleans(),
       dtype=st.sampled_from([None, torch.float16, torch.bfloat16]), seed=st.sampled_from(
           [None, 0, 7]))
def test_any_config_raises_a_library_error_and_changes_nothing_or_succeeds(cfgs, deferred,
                                                                           dtype, seed):
    m = build(deferred)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    kwargs = {"dtype": dtype} if deferred and dtype is not None else {}
    try:
        record = wi.initialize(m, cfgs, seed=seed, **kwargs)
    except wi.InitError as err:
        event(f"raised {type(err).__name__}")
        after = m.state_dict()
        if deferred:
            assert all(t.is_meta for t in after.values())
        else:
            for k, v in before.items():
                assert torch.equal(after[k], v), k
        assert wi.get_init_record(m) is None
        return
    event("succeeded")
    assert record is not None
    for name, p in m.named_parameters():
        assert not p.is_meta and torch.isfinite(p).all(), (name, cfgs)
