# ViT-B/16 at 224x224 (86.6 M parameters), built by examples/models.py.
#
# Truncated-normal(0.02) linears and unit LayerNorms (in the model's init_cfg);
# the class token and position embedding are not covered by any rule there, so
# this config adds a rule for them by parameter name.
model = dict(
    type="../models.py:vit_b16",
    num_classes=1000,
)
init_cfg = [
    dict(type="Kaiming", layer="Conv2d", mode="fan_in", nonlinearity="linear"),
    dict(type="TruncNormal", layer="Linear", std=0.02, bias=0),
    dict(type="Constant", layer="LayerNorm", val=1, bias=0),
    dict(type="TruncNormal", param=["cls_token", "pos_embed"], std=0.02),
]

input = dict(shape=[1, 3, 224, 224])
seed = 0
