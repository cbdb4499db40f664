"""torchtitan's Llama 3 ``debugmodel`` under its own tensor parallelism and FSDP2 on four gloo
ranks, initialized by its own ``init_weights`` through ``weightinit.run(..., seed=0)``: every
parameter and buffer gathers to exactly the values of the same run in one process, and no
record entry is marked ``layout_dependent``.

Runs in the torchtitan test environment (``.venv-torchtitan``, set up by ``make test``;
``TORCHTITAN=0`` skips it); skipped where torchtitan is not installed.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import torch

# the installed distribution, not `import torchtitan`: with tests/ on sys.path, this folder
# imports as a namespace package of that name
try:
    TORCHTITAN = version("torchtitan")
except PackageNotFoundError:
    pytest.skip("torchtitan is not installed", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the gloo launcher
import llama3_worker as worker  # noqa: E402

from gloo_ranks import run_ranks  # noqa: E402
from weightinit import compat  # noqa: E402

dist = pytest.importorskip("torch.distributed")
multi = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or not compat.has_cpu_fsdp2(),
    reason=f"torch {torch.__version__}: needs gloo and FSDP2 on a CPU mesh")

WORKER = Path(__file__).with_name("llama3_worker.py")
CASES = [(layout, start) for layout in worker.LAYOUTS for start in worker.STARTS]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("torchtitan")
    run_ranks(WORKER, 4, out, ",".join(f"{lay}:{start}" for lay, start in CASES), 300)
    return dict(full=torch.load(out / "full.pt", weights_only=False),
                results=[torch.load(out / f"rank{r}.pt", weights_only=False)
                         for r in range(4)])


@pytest.fixture(scope="module")
def one_process() -> dict:
    """The same model and run in one process: built on meta, materialized by the run."""
    model, _ = worker.build()
    record = worker.initialize(model, "meta")
    return dict(tensors=worker.gathered(model), **worker.summary(record))


def test_the_debugmodel_builds_on_meta_as_torchtitan_declares_it():
    model, spec = worker.build()
    assert spec.name == "llama3" and spec.flavor == "debugmodel", TORCHTITAN
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    assert "layers.0.attention.qkv_linear.wqkv.weight" in dict(model.named_parameters())


def test_one_process_the_trainer_order_gives_the_same_values(one_process):
    """``to_empty`` then the run (torchtitan's trainer order) equals the run materializing."""
    model, _ = worker.build()
    record = worker.initialize(model, "to_empty")
    got = worker.gathered(model)
    assert got.keys() == one_process["tensors"].keys()
    for name, want in one_process["tensors"].items():
        assert torch.equal(got[name], want), name
    assert worker.summary(record) == {k: one_process[k] for k in ("layout_dependent", "kind")}


def marked(results: dict) -> dict[str, str]:
    return {name: why for name, why in results["layout_dependent"].items() if why is not None}


@multi
@pytest.mark.parametrize("layout,start", CASES)
def test_every_layout_gathers_to_one_process(ranks, one_process, layout, start):
    case = f"{layout}:{start}"
    errors = {r: res[case]["error"] for r, res in enumerate(ranks["results"])
              if res[case]["error"] is not None}
    # (on meta, torchtitan's init replaces its RoPE cache buffers: seen as written too)
    assert not errors, f"{case}: the run raised on ranks {sorted(errors)}: {errors}"
    for r, res in enumerate(ranks["results"]):
        assert not marked(res[case]), f"rank {r} marked layout-dependent: {marked(res[case])}"
        assert res[case]["kind"] == one_process["kind"], f"rank {r}"
    got, want = ranks["full"][case], one_process["tensors"]
    assert got.keys() == want.keys()
    differ = [name for name in want if got[name].shape != want[name].shape
              or got[name].dtype != want[name].dtype or not torch.equal(got[name], want[name])]
    assert not differ, f"{case}: differ from one process: {differ}"


def test_one_process_marks_nothing_layout_dependent(one_process):
    assert not marked(one_process), marked(one_process)
