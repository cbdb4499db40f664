# The same 20-layer ReLU MLP as mlp_kaiming.py, deliberately badly initialized:
# N(0, 1) weights multiply the signal by about sqrt(256 / 2) = 11 per layer.
# `weightinit check` flags it (exploding activations and gradients).
depth, width = 20, 256
layers = []
for _ in range(depth):
    layers += [dict(type="torch.nn.Linear", in_features=width, out_features=width),
               dict(type="torch.nn.ReLU")]

model = dict(type="torch.nn.Sequential", args=layers)
init_cfg = dict(type="Normal", layer="Linear", std=1.0)

input = dict(shape=[64, width])
seed = 0
