"""Materializing and initializing directly on a GPU (skipped without CUDA)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import weightinit as wi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_deferred_model_materializes_on_cuda_in_bf16():
    with wi.deferred():
        m = models.llama(size="tiny", tie_embeddings=True)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()  # e.g. cuBLAS workspace from earlier tests
    m.init_weights(device="cuda", dtype=torch.bfloat16)
    params = list(m.parameters())
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in params)
    assert m.lm_head.weight is m.embed.weight
    assert all(b.device.type == "cuda" for b in m.buffers())
    assert torch.all(m.norm.weight == 1)
    w = m.layers[0].q_proj.weight.float()
    assert abs(w.std().item() - 0.02) < 0.002
    assert m.init_record["layers.0.q_proj.weight"].device.startswith("cuda")
    param_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in params}.values())
    assert torch.cuda.max_memory_allocated() - base <= 1.15 * param_bytes + (1 << 20)
    out = m(torch.randint(0, 1000, (2, 16), device="cuda"))
    assert out.shape == (2, 16, 1000) and torch.isfinite(out.float()).all()


def test_rules_and_trunc_normal_on_cuda():
    torch.manual_seed(0)
    t = torch.empty(1_000_000, device="cuda")
    wi.trunc_normal_(t, std=1.0, a=-2.0, b=2.0)
    assert t.min() >= -2 and t.max() <= 2
    with wi.deferred():
        m = models.resnet50()
    m.init_weights(device="cuda")
    bn3 = m.backbone.layer1[0].bn3
    assert bn3.weight.is_cuda and torch.all(bn3.weight == 0)
    assert torch.all(m.backbone.bn1.running_var == 1)


def test_pretrained_into_cuda(tmp_path):
    src = models.llama(size="tiny")
    src.init_weights()
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    with wi.deferred():
        m = models.llama(size="tiny")
    wi.initialize(m, dict(type="Pretrained", checkpoint=str(path)), device="cuda")
    assert torch.equal(m.layers[1].up_proj.weight.cpu(), src.layers[1].up_proj.weight)


def test_fsdp2_on_a_cuda_mesh_equals_one_process_on_cuda(tmp_path):
    import socket
    import subprocess

    import sharded_worker as worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = Path(__file__).with_name("sharded_worker.py")
    done = subprocess.run([sys.executable, str(script), "0", "1", port, str(tmp_path), "cuda"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert result["devices"] == ["cuda"]
    reference = worker.build()
    wi.initialize(reference, worker.RULES, seed=worker.SEED, device="cuda")
    for name, p in reference.named_parameters():
        offset, local = result["fsdp"][name]
        assert offset == tuple(0 for _ in p.shape)
        assert torch.equal(p.detach().cpu(), local), name


def test_any_slice_of_a_seeded_cuda_fill_is_drawn_alone():
    from weightinit.execution.seeding import fill_elementwise
    from weightinit.execution.tiles import TILE
    from weightinit.maths import Elementwise

    for dist in (Elementwise("normal", (0.0, 1.0)), Elementwise("uniform", (-1.0, 1.0)),
                 Elementwise("trunc_normal", (0.0, 1.0, -1.0, 1.0))):
        whole = torch.empty(1300, 1100, device="cuda")  # bands of 238 rows
        fill_elementwise(dist, whole, seed=5)
        part = torch.empty(600, 700, device="cuda")
        fill_elementwise(dist, part, seed=5, shape=(1300, 1100), offset=(400, 300))
        assert torch.equal(part, whole[400:1000, 300:1000]), dist.kind
        flat = torch.empty(TILE + 4321, device="cuda")
        fill_elementwise(dist, flat, seed=5)
        part = torch.empty(2000, device="cuda")
        fill_elementwise(dist, part, seed=5, shape=(TILE + 4321,), offset=(TILE - 1000,))
        assert torch.equal(part, flat[TILE - 1000:TILE + 1000]), dist.kind
