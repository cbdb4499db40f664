"""Real MMCV 1.x models, built from their packages' own configs, initialized by MMCV 1.7 and
through ``weightinit.mmcv``: the same tensors change, deterministic values (constants,
checkpoint values, values computed in ``init_weights``) are identical, random ones come from
the same distributions, rule-owned and checkpoint-owned tensors are written once, and user code
writes no tensor more often than under MMCV.

Runs in the MMCV 1.x test environment (``.venv-mmcv1``, set up by ``make test``). Each model's
pretrained checkpoints (``torchvision://``, ``open-mmlab://``, ``mmcls://``, URLs) are written
where MMCV's loaders look for them (:mod:`mmcv1_models`), so both read the same files and
nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import mmcv1_support as support
import pytest
import torch

pytest.importorskip("mmcv")

support.prepare()
# in the MMCV 1.x environment these import: a broken install fails there, never skips
import mmcls  # noqa: E402,F401
import mmcv.runner  # noqa: E402,F401
import mmdet  # noqa: E402,F401
import mmseg  # noqa: E402,F401
from mmcv1_models import CASES, build, close_in_distribution, localize_checkpoints  # noqa: E402

import weightinit as wi  # noqa: E402
import weightinit.mmcv as wimc  # noqa: E402


@pytest.fixture(autouse=True)
def _homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints live in this test's own torch.hub cache and MMCV home; logs stay quiet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MMCV_HOME", str(tmp_path / "mmcv"))
    support.quiet_logs()


def init(model: torch.nn.Module, seed: int, bridged: bool) -> dict[str, int]:
    """init_weights() by MMCV or through the bridge; returns each tensor's write count."""
    versions = {n: p._version for n, p in model.named_parameters()}
    torch.manual_seed(seed)
    if bridged:
        with wimc.installed():
            model.init_weights()
    else:
        model.init_weights()
    return {n: p._version - versions[n] for n, p in model.named_parameters()}


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_same_result_as_mmcv(name: str, tmp_path: Path) -> None:
    models = [build(name, seed=0) for _ in range(3)]
    covered = {frozenset(localize_checkpoints(m, tmp_path)) for m in models}.pop()
    before = {n: p.detach().clone() for n, p in models[0].named_parameters()}
    writes_mm = init(models[0], seed=1, bridged=False)
    init(models[1], seed=2, bridged=False)  # a second MMCV run: what does not depend on it
    writes_wi = init(models[2], seed=3, bridged=True)
    mm, mm2, ours = (dict(m.named_parameters()) for m in models)

    changed_mm = {n for n, p in mm.items() if not torch.equal(p, before[n])}
    changed_wi = {n for n, p in ours.items() if not torch.equal(p, before[n])}
    assert changed_wi == changed_mm
    record = wi.get_init_record(models[2])
    assert record is not None and set(record.params) == set(mm)
    for n in sorted(changed_mm):
        if torch.equal(mm[n], mm2[n]):  # constants, checkpoint values, computed values
            assert torch.equal(ours[n], mm[n]), (n, record[n].info)
        elif mm[n].numel() >= 64:
            assert close_in_distribution(ours[n], mm[n]), (n, record[n].info)
        kind = record[n].kind
        if kind in ("rule", "pretrained"):  # weightinit's own writes: exactly once
            assert writes_wi[n] == 1, (n, writes_wi[n], record[n].info)
        else:  # user code writes as it does under MMCV, never more
            assert kind in ("user", "initializer"), (n, kind, record[n].info)
            assert writes_wi[n] <= writes_mm[n], (n, writes_wi[n], writes_mm[n])
    for n in set(mm) - changed_mm:
        assert writes_wi[n] == 0 or record[n].kind != "unchanged", n
    for n in covered & changed_mm:  # what a checkpoint wrote last is the checkpoint's
        if torch.equal(mm[n], mm2[n]):
            assert torch.equal(ours[n], mm[n]), n
    for m in models:  # MMCV's is_init flags, its early returns included
        for (path, a), (_, b) in zip(models[0].named_modules(), m.named_modules()):
            assert getattr(a, "is_init", None) == getattr(b, "is_init", None), path


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["retinanet-r18", "deit-t", "segformer-b0"])
def test_deferred_real_model_is_materialized_once(name: str, tmp_path: Path) -> None:
    """Built under ``wi.deferred()``: ``init_weights()`` allocates each tensor and writes it
    once; the values are MMCV's (checkpoint values and constants identical, draws alike)."""
    eager = build(name, seed=0)
    localize_checkpoints(eager, tmp_path)
    torch.manual_seed(1)
    eager.init_weights()  # MMCV's own
    with wimc.installed():
        with wi.deferred():
            lazy = build(name, seed=0)
        localize_checkpoints(lazy, tmp_path)
        assert all(p.device.type == "meta" for p in lazy.parameters())
        torch.manual_seed(2)
        lazy.init_weights()
    a, b = dict(eager.named_parameters()), dict(lazy.named_parameters())
    record = wi.get_init_record(lazy)
    for n, p in b.items():
        assert p.device.type == "cpu", n
        if record[n].kind in ("rule", "pretrained"):
            assert p._version == 1, (n, p._version)
            if record[n].kind == "pretrained" or a[n].min() == a[n].max():
                assert torch.equal(p, a[n]), (n, record[n].info)
        if a[n].numel() >= 64 and not torch.equal(p, a[n]):
            assert close_in_distribution(p, a[n]), (n, record[n].info)
