"""Real MMCV 1.x models for the tests and the benchmark: which configs, how their checkpoints
are put where MMCV looks for them (no download), and how two initializations are compared.

Every model is built from a config shipped inside its package (MMDetection 2.28, MMClassification
0.25, MMSegmentation 0.30) with its pretrained settings kept: each checkpoint it names
(``torchvision://``, ``open-mmlab://``, ``mmcls://``, ``https://``, a local path) is written,
with random values, where MMCV's own loaders find it — torch.hub's cache under ``$TORCH_HOME``
for URLs and model-zoo names, ``$MMCV_HOME`` for a model-zoo file, a temporary directory for a
local path (the config's entry is pointed there) — so MMCV and the bridge read the same file.
"""

from __future__ import annotations

import hashlib
import math
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import mmcv1_support as support
import torch
import torch.nn as nn

#: name -> config (``support.build`` argument), and whether its checkpoints are written (a
#: model too large to write one for has its pretrained settings dropped instead)
CASES: dict[str, tuple[str, bool]] = {
    "retinanet-r18": ("mmdet/retinanet/retinanet_r18_fpn_1x_coco.py", True),
    "faster-rcnn": ("mmdet/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py", True),
    "detr": ("mmdet/detr/detr_r50_8x2_150e_coco.py", True),
    "deformable-detr": ("mmdet/deformable_detr/deformable_detr_r50_16x2_50e_coco.py", True),
    "fcos-caffe": ("mmdet/fcos/fcos_r50_caffe_fpn_gn-head_1x_coco.py", True),
    "retinanet-regnetx": ("mmdet/regnet/retinanet_regnetx-800MF_fpn_1x_coco.py", True),
    "yolov3-mobilenetv2": ("mmdet/yolo/yolov3_mobilenetv2_320_300e_coco.py", True),
    "retinanet-swin-t": ("mmdet/swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py", True),
    "retinanet-pvtv2-b0": ("mmdet/pvt/retinanet_pvtv2-b0_fpn_1x_coco.py", True),
    "yolox-tiny": ("mmdet/yolox/yolox_tiny_8x8_300e_coco.py", True),
    "resnet50": ("mmcls/resnet/resnet50_8xb32_in1k.py", True),
    "resnext50": ("mmcls/resnext/resnext50-32x4d_8xb32_in1k.py", True),
    "regnetx-400mf": ("mmcls/regnet/regnetx-400mf_8xb128_in1k.py", True),
    "mobilenet-v2": ("mmcls/mobilenet_v2/mobilenet-v2_8xb32_in1k.py", True),
    "vit-b": ("mmcls/vision_transformer/vit-base-p16_pt-64xb64_in1k-224.py", True),
    "deit-t": ("mmcls/deit/deit-tiny_pt-4xb256_in1k.py", True),
    "swin-t": ("mmcls/swin_transformer/swin-tiny_16xb64_in1k.py", True),
    "pspnet-r18": ("mmseg/pspnet/pspnet_r18-d8_512x1024_80k_cityscapes.py", True),
    "deeplabv3-r18": ("mmseg/deeplabv3/deeplabv3_r18-d8_512x1024_80k_cityscapes.py", True),
    "upernet-r18": ("mmseg/upernet/upernet_r18_512x512_80k_ade20k.py", True),
    "segmenter-vit-t": ("mmseg/segmenter/segmenter_vit-t_mask_8x1_512x512_160k_ade20k.py", True),
    "setr-vit-l": ("mmseg/setr/setr_naive_512x512_160k_b16_ade20k.py", False),
    "segformer-b0": ("mmseg/segformer/segformer_mit-b0_512x512_160k_ade20k.py", True),
    "upernet-swin-t": ("mmseg/swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_"
                       "pretrain_224x224_1K.py", True),
    "deeplabv3-mobilenetv2": ("mmseg/mobilenet_v2/deeplabv3_m-v2-d8_512x1024_80k_cityscapes.py",
                              True),
}


def build(name: str, seed: int) -> nn.Module:
    config, pretrained = CASES[name]
    torch.manual_seed(seed)
    return support.build(config, pretrained=pretrained)


def _loads(model: nn.Module) -> Iterator[tuple[str, nn.Module, dict]]:
    """``(path, module, entry)`` of every init_cfg entry that names a checkpoint: ``Pretrained``
    rules, and the configs backbones read themselves (MMDetection's PVT has no ``type``)."""
    for path, m in model.named_modules():
        cfg = getattr(m, "init_cfg", None)
        for entry in cfg if isinstance(cfg, list) else [cfg] if cfg else []:
            if isinstance(entry, dict) and (entry.get("type") == "Pretrained"
                                            or "checkpoint" in entry):
                yield path, m, entry


def _where_mmcv_looks(reference: str, directory: Path) -> tuple[Path, str, str]:
    """The file MMCV's loader reads for ``reference``, the reference to use (a local path is
    moved into ``directory``), and the key prefix its loader strips (``mmcls://``)."""
    from mmcv.runner.checkpoint import (
        CheckpointLoader,
        _get_mmcv_home,
        get_deprecated_model_names,
        get_external_models,
        get_mmcls_models,
        get_torchvision_models,
    )

    loader = CheckpointLoader._get_checkpoint_loader(reference).__name__
    scheme, _, name = reference.partition("://")
    url, strip = None, ""
    if loader == "load_from_local":
        local = directory / reference.replace("/", "_")
        return local, str(local), ""
    if loader == "load_from_http":
        url = reference
    elif loader == "load_from_torchvision":
        url = get_torchvision_models()[name.lower().replace("_weights", "")]
    elif loader == "load_from_openmmlab":
        name = get_deprecated_model_names().get(name, name)
        url = get_external_models()[name]
        if not url.startswith(("http://", "https://")):
            return Path(_get_mmcv_home()) / url, reference, ""
    elif loader == "load_from_mmcls":
        url, strip = get_mmcls_models()[name], "backbone."
    else:
        raise ValueError(f"{reference}: no file for loader {loader}")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return hub / os.path.basename(urllib.parse.urlparse(url).path), reference, strip


def localize_checkpoints(model: nn.Module, directory: Path) -> set[str]:
    """Write each checkpoint the model names where MMCV looks for it (random values, keys as
    its loader expects them; a local path is pointed into ``directory``). Set ``TORCH_HOME``
    and ``MMCV_HOME`` first. Returns the full names of the parameters the files cover."""
    covered = set()
    for path, m, entry in _loads(model):
        file, reference, strip = _where_mmcv_looks(entry["checkpoint"], directory)
        entry["checkpoint"] = reference
        prefix = entry.get("prefix")
        prefix = strip + ("" if not prefix else prefix if prefix.endswith(".") else prefix + ".")
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            state = {}
            for key, t in m.state_dict().items():
                seed = int(hashlib.sha256(f"{path}.{key}".encode()).hexdigest()[:8], 16)
                g = torch.Generator().manual_seed(seed)
                state[prefix + key] = (torch.randn(t.shape, generator=g).to(t.dtype)
                                       if t.is_floating_point() else t.clone())
            torch.save({"state_dict": state}, file)
        covered |= {f"{path}.{n}" if path else n for n, _ in m.named_parameters()}
    return covered


def close_in_distribution(a: torch.Tensor, b: torch.Tensor, sample: int = 20000) -> bool:
    """Two-sample Kolmogorov-Smirnov test on (fixed-seed) subsamples, at a level of about 1e-5."""
    g = torch.Generator().manual_seed(0)
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    if a.numel() > sample:
        a = a[torch.randperm(a.numel(), generator=g)[:sample]]
        b = b[torch.randperm(b.numel(), generator=g)[:sample]]
    both = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, both, right=True) / a.numel()
    cdf_b = torch.searchsorted(b.sort().values, both, right=True) / b.numel()
    n, m = a.numel(), b.numel()
    return float((cdf_a - cdf_b).abs().max()) <= 2.5 * math.sqrt((n + m) / (n * m))
