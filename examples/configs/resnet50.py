# ResNet-50 image classifier (25.6 M parameters), built by examples/models.py.
#
#   weightinit plan  examples/configs/resnet50.py
#   weightinit init  examples/configs/resnet50.py --out out/resnet50.safetensors
#   weightinit check examples/configs/resnet50.py
#
# Its init_cfg lives in the model's modules: Kaiming convs and unit norms in the
# backbone, zero-init of each bottleneck's last norm (override bn3), Normal(0.01) head.
model = dict(type="../models.py:resnet50", num_classes=1000)

input = dict(shape=[2, 3, 224, 224])  # random N(0, 1) images for `weightinit check`
seed = 0
