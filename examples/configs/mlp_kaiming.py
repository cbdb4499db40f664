# A model that has never heard of weightinit: a plain torch.nn.Sequential, built by
# dotted path from a list of layers, initialized by a top-level init_cfg.
# 20 Linear+ReLU layers of width 256 with He (Kaiming) init: the signal keeps its scale.
depth, width = 20, 256
layers = []
for _ in range(depth):
    layers += [dict(type="torch.nn.Linear", in_features=width, out_features=width),
               dict(type="torch.nn.ReLU")]

model = dict(type="torch.nn.Sequential", args=layers)
init_cfg = dict(type="Kaiming", layer="Linear", mode="fan_in", nonlinearity="relu")

input = dict(shape=[64, width])
seed = 0
