# The same 20-layer ReLU MLP as mlp_kaiming.py, deliberately badly initialized:
# N(0, 1) weights multiply the signal by about sqrt(256 / 2) = 11 per layer.
# `weightinit check` flags it (exploding activations and gradients).
from mlp_kaiming import input, model, seed  # noqa: F401  (the same model and input)

init_cfg = dict(type="Normal", layer="Linear", std=1.0)
