# The same 20-layer ReLU MLP as mlp_kaiming.py with no init_cfg at all: every
# parameter keeps PyTorch's default (weights U(-1/sqrt(256), 1/sqrt(256))), which
# scales the signal by about sqrt(1/6) per layer. `weightinit init` warns that
# all parameters are at the default; `weightinit check` flags vanishing gradients.
depth, width = 20, 256
layers = []
for _ in range(depth):
    layers += [dict(type="torch.nn.Linear", in_features=width, out_features=width),
               dict(type="torch.nn.ReLU")]

model = dict(type="torch.nn.Sequential", args=layers)

input = dict(shape=[64, width])
seed = 0
