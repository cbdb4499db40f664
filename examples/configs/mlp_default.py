# The same 20-layer ReLU MLP as mlp_kaiming.py with no init_cfg at all: every
# parameter keeps PyTorch's default (weights U(-1/sqrt(256), 1/sqrt(256))), which
# scales the signal by about sqrt(1/6) per layer. `weightinit init` warns that
# all parameters are at the default; `weightinit check` flags vanishing gradients.
from mlp_kaiming import input, model, seed  # noqa: F401  (the same model and input)

