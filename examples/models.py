"""Bundled example models, described with ``init_cfg`` at several levels.

* :func:`resnet50` — ResNet-50 (He et al., 2016): Kaiming convs, constant
  norms, zero-init of each bottleneck's last norm through ``override``, a
  Normal(0.01) head.
* :func:`vit_b16` — ViT-B/16: truncated-normal linears, unit LayerNorms.
* :func:`transformer` — a pre-norm transformer stack (48 blocks of dim 512 by
  default) whose blocks override their residual projections with a
  depth-scaled normal (GPT-2 style).
* :func:`llama` — a Llama-style decoder (RMSNorm, rotary attention with
  grouped KV heads, SwiGLU MLP): Normal(0.02) linears and embeddings,
  depth-scaled output projections; sizes from 1B to 70B configurations.

Each builder takes an optional ``kit`` — the ``BaseModule``/``Sequential``/
``ModuleList`` classes to build on — so the same models can be built on
another implementation of the same API (the benchmarks build them on
MMEngine too). By default they use weightinit's.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def weightinit_kit() -> SimpleNamespace:
    import weightinit

    return SimpleNamespace(BaseModule=weightinit.BaseModule, Sequential=weightinit.Sequential,
                           ModuleList=weightinit.ModuleList)


@functools.cache
def _classes(base: type, sequential: type, module_list: type) -> SimpleNamespace:
    class Bottleneck(base):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int = 1,
                     downsample: nn.Module | None = None) -> None:
            # The last norm of each residual branch starts at zero, so every
            # block starts as the identity (Goyal et al., 2017).
            super().__init__(init_cfg=dict(type="Constant", val=0, override=dict(name="bn3")))
            width = planes
            self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * self.expansion)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet(base):
        def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
            super().__init__(init_cfg=[
                dict(type="Kaiming", layer="Conv2d", mode="fan_out", nonlinearity="relu"),
                dict(type="Constant", layer=["BatchNorm2d", "GroupNorm"], val=1, bias=0),
            ])
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            stages = []
            for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
                stages.append(self._make_layer(planes, blocks, stride=1 if i == 0 else 2))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.out_channels = 512 * Bottleneck.expansion

        def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Module:
            downsample = None
            if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
                downsample = sequential(
                    nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * Bottleneck.expansion))
            layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * Bottleneck.expansion
            layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
            return sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    class LinearHead(base):
        def __init__(self, in_channels: int, num_classes: int) -> None:
            super().__init__(init_cfg=dict(type="Normal", layer="Linear", std=0.01, bias=0))
            self.fc = nn.Linear(in_channels, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1) if x.dim() == 4 else x)

    class ImageClassifier(base):
        def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x))

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, d = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).unbind(2)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                 v.transpose(1, 2))
            return self.proj(out.transpose(1, 2).reshape(b, n, d))

    class Mlp(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class ViTBlock(nn.Module):
        def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim)
            self.attn = Attention(dim, heads)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, dim * mlp_ratio)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class VisionTransformer(base):
        def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 768,
                     depth: int = 12, heads: int = 12, num_classes: int = 1000) -> None:
            super().__init__(init_cfg=[
                dict(type="Kaiming", layer="Conv2d", mode="fan_in", nonlinearity="linear"),
                dict(type="TruncNormal", layer="Linear", std=0.02, bias=0),
                dict(type="Constant", layer="LayerNorm", val=1, bias=0),
            ])
            self.patch_embed = nn.Conv2d(3, dim, patch, patch)
            n = (img_size // patch) ** 2
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
            self.blocks = sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
            return self.head(self.norm(self.blocks(x))[:, 0])

    class ResidualBlock(base):
        def __init__(self, dim: int, heads: int, depth: int) -> None:
            # Residual output projections scaled by 1/sqrt(2·depth) (GPT-2).
            super().__init__(init_cfg=dict(type="Normal", std=0.02 / math.sqrt(2 * depth),
                                           bias=0, override=[dict(name="attn_proj"),
                                                             dict(name="mlp_fc2")]))
            self.heads = heads
            self.norm1 = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.attn_proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp_fc1 = nn.Linear(dim, 4 * dim)
            self.mlp_fc2 = nn.Linear(4 * dim, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
            x = x + self.attn_proj(a.transpose(1, 2).reshape(b, n, d))
            return x + self.mlp_fc2(F.gelu(self.mlp_fc1(self.norm2(x))))

    class Transformer(base):
        def __init__(self, depth: int = 48, dim: int = 512, heads: int = 8) -> None:
            super().__init__(init_cfg=[
                dict(type="TruncNormal", layer="Linear", std=0.02, bias=0),
                dict(type="Constant", layer="LayerNorm", val=1, bias=0),
            ])
            self.blocks = module_list([ResidualBlock(dim, heads, depth) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return self.norm(x)

    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float = 1e-6) -> None:
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) \
                * self.weight

    class Rotary(nn.Module):
        def __init__(self, head_dim: int, base: float = 10000.0) -> None:
            super().__init__()
            inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
            self.register_buffer("inv_freq", inv_freq, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[-2]
            angles = torch.outer(torch.arange(n, device=x.device, dtype=torch.float32),
                                 self.inv_freq)
            cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)

    class DecoderLayer(base):
        def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int,
                     depth: int) -> None:
            super().__init__(init_cfg=dict(type="Normal", std=0.02 / math.sqrt(2 * depth),
                                           override=[dict(name="o_proj"), dict(name="down_proj")]))
            self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
            self.input_norm = RMSNorm(dim)
            self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
            self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
            self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)
            self.rotary = Rotary(self.head_dim)
            self.post_norm = RMSNorm(dim)
            self.gate_proj = nn.Linear(dim, hidden, bias=False)
            self.up_proj = nn.Linear(dim, hidden, bias=False)
            self.down_proj = nn.Linear(hidden, dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            h = self.input_norm(x)
            q = self.q_proj(h).view(b, n, self.heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self.rotary(q), self.rotary(k)
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o_proj(a.transpose(1, 2).reshape(b, n, -1))
            h = self.post_norm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    class LlamaDecoder(base):
        def __init__(self, vocab: int, dim: int, layers: int, heads: int, kv_heads: int,
                     hidden: int, tie_embeddings: bool = False) -> None:
            super().__init__(init_cfg=dict(type="Normal", std=0.02,
                                           layer=["Linear", "Embedding"]))
            self.embed = nn.Embedding(vocab, dim)
            self.layers = module_list([DecoderLayer(dim, heads, kv_heads, hidden, layers)
                                       for _ in range(layers)])
            self.norm = RMSNorm(dim)
            self.lm_head = nn.Linear(dim, vocab, bias=False)
            if tie_embeddings:
                self.lm_head.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens)
            for layer in self.layers:
                x = layer(x)
            return self.lm_head(self.norm(x))

    return SimpleNamespace(**{k: v for k, v in locals().items() if isinstance(v, type)})


def _kit_classes(kit: Any) -> SimpleNamespace:
    kit = kit or weightinit_kit()
    return _classes(kit.BaseModule, kit.Sequential, kit.ModuleList)


def resnet50(kit: Any = None, num_classes: int = 1000) -> nn.Module:
    """ResNet-50 image classifier (25.6 M parameters)."""
    c = _kit_classes(kit)
    backbone = c.ResNet((3, 4, 6, 3))
    return c.ImageClassifier(backbone, c.LinearHead(backbone.out_channels, num_classes))


def vit_b16(kit: Any = None, num_classes: int = 1000, depth: int = 12,
            width: int | None = None) -> nn.Module:
    """ViT-B/16 at 224x224 (86.6 M parameters); ``width`` builds the same modules at that
    width (4 heads, 32x32 images, 10 classes), for measuring per-tensor costs."""
    if width is not None:
        return _kit_classes(kit).VisionTransformer(img_size=32, dim=width, depth=depth,
                                                   heads=4, num_classes=10)
    return _kit_classes(kit).VisionTransformer(depth=depth, num_classes=num_classes)


def transformer(kit: Any = None, depth: int = 48, dim: int = 512) -> nn.Module:
    """A pre-norm transformer stack (48 blocks of dim 512: 151 M parameters)."""
    return _kit_classes(kit).Transformer(depth=depth, dim=dim, heads=max(1, dim // 64))


#: Llama-style configurations: (vocab, dim, layers, heads, kv_heads, MLP hidden).
LLAMA_SIZES = {
    "tiny": (1000, 64, 2, 4, 2, 176),
    "1b": (32000, 2048, 24, 16, 8, 8192),
    "7b": (32000, 4096, 32, 32, 32, 11008),
    "70b": (32000, 8192, 80, 64, 8, 28672),
    "405b": (128256, 16384, 126, 128, 8, 53248),
}


def llama(kit: Any = None, size: str = "1b", tie_embeddings: bool = False,
          width: int | None = None) -> nn.Module:
    """A Llama-style decoder; ``size`` is a key of :data:`LLAMA_SIZES` (1b: 1.2 B parameters).

    ``width`` builds the same modules with that vocabulary, model and MLP width (a
    multiple of the heads), for measuring per-tensor costs."""
    vocab, dim, layers, heads, kv_heads, hidden = LLAMA_SIZES[size]
    if width is not None:
        vocab = dim = hidden = width
    return _kit_classes(kit).LlamaDecoder(vocab, dim, layers, heads, kv_heads, hidden,
                                          tie_embeddings)
