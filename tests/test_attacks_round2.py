"""Round 2 of the attacker's findings: each class fixed at its root, with its nastiest variant.

1. ``convert`` of a tiny pickle holding stride-0 views (or many aliases of one storage)
   would write gigabytes: refused before anything is copied, unless ``--allow-expand``;
   every failure is one line and exit status 2.
2. Checkpoint keys are data, never rich markup, wherever ``convert`` prints them.
3. ``convert``'s refusal of a pickle names its flag ``--allow-pickle``.
4. Entries whose names match but whose values can not load (numpy arrays, complex or
   integer tensors) are described, not reported as "no key matches".
5. A self-referencing, too deep or exponentially shared ``init_cfg`` is a library error
   while parsing, never ``RecursionError`` or a hang; the model is untouched.
6. ``deferred()`` refuses ``torch.inference_mode()``.
"""

from __future__ import annotations

import io
import os

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import weightinit as wi
from weightinit.checkpoint.loader import CheckpointState
from weightinit.cli import main
from weightinit.cli.convert import EXPAND_SLACK
from weightinit.errors import ConfigNestingError
from weightinit.planning.checkpoint_checks import no_match_error
from weightinit.rules.parse import MAX_DEPTH


def run(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- 1. convert: expansion ------------------------------------------------------------------


@pytest.mark.parametrize("tensors", [
    # 4 EiB from one stored byte: a copy can not even be attempted
    {"w": torch.zeros(1, dtype=torch.uint8).expand(2**62)},
    # as_strided with a stride-0 leading dim, beside an ordinary tensor
    {"ok": torch.ones(8), "w": torch.arange(4.0).as_strided((2**22, 4), (0, 1))},
    # no view at all: a thousand keys aliasing one 64 KiB storage (tied, a thousand times)
    {f"tied{i}": t for t in [torch.ones(2**14)] for i in range(1000)},
], ids=["expand-2**62", "as_strided-stride0", "1000-aliases"])
def test_convert_refuses_an_output_far_larger_than_the_stored_bytes(tmp_path, tensors):
    path = tmp_path / "tiny.pth"
    torch.save(tensors, path)
    assert path.stat().st_size < 200_000
    out = tmp_path / "o.safetensors"
    rc, stdout, stderr = run("convert", path, out)
    assert rc == 2 and stderr.count("\n") == 1 and stdout == ""
    assert "Traceback" not in stderr and "--allow-expand" in stderr
    assert "Nothing was written" in stderr
    assert ("'w' (shape" in stderr) or ("share one storage" in stderr)
    assert sorted(os.listdir(tmp_path)) == ["tiny.pth"]  # no output, no temporary file


def test_convert_allow_expand_writes_the_values_and_fails_cleanly_when_it_cannot(tmp_path):
    n = (EXPAND_SLACK // 4) * 2  # 2 MiB of float32 from 4 stored bytes
    path = tmp_path / "e.pth"
    torch.save({"w": torch.full((1,), 3.0).expand(n), "b": torch.arange(3.0)}, path)
    out = tmp_path / "o.safetensors"
    rc, _, stderr = run("convert", path, out)
    assert rc == 2 and "--allow-expand" in stderr and not out.exists()
    rc, _, stderr = run("convert", path, out, "--allow-expand")
    assert rc == 0, stderr
    written = load_file(str(out))
    assert written["w"].shape == (n,) and bool((written["w"] == 3.0).all())
    assert torch.equal(written["b"], torch.arange(3.0))

    huge = tmp_path / "huge.pth"
    torch.save({"w": torch.zeros(1, dtype=torch.uint8).expand(2**62)}, huge)
    out2 = tmp_path / "o2.safetensors"
    rc, _, stderr = run("convert", huge, out2, "--allow-expand")  # the copy itself fails
    assert rc == 2 and stderr.count("\n") == 1 and "'w'" in stderr
    assert not out2.exists()


def test_convert_keeps_a_tied_pair_and_writes_conjugate_views_by_value(tmp_path):
    big = torch.randn(2**20)  # 4 MiB, tied: the output is exactly twice the stored bytes
    z = torch.randn(3, dtype=torch.complex64)
    path = tmp_path / "t.pth"
    torch.save({"emb": big, "head": big, "z": z.conj()}, path)
    out = tmp_path / "o.safetensors"
    rc, _, stderr = run("convert", path, out)
    assert rc == 0, stderr
    written = load_file(str(out))
    assert torch.equal(written["emb"], big) and torch.equal(written["head"], big)
    # safetensors writes storage bytes: the conjugate bit must be resolved first
    assert torch.equal(written["z"], z.conj().resolve_conj())


def test_convert_refuses_nested_tensors_with_a_library_error(tmp_path):
    path = tmp_path / "n.pth"
    with pytest.warns(UserWarning):  # torch: nested tensors are a prototype
        nt = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    torch.save({"w": nt}, path)
    rc, _, stderr = run("convert", path, tmp_path / "o.safetensors")
    assert rc == 2 and "nested tensor" in stderr and "Fix:" in stderr


# -- 2. convert: keys are plain text ----------------------------------------------------------


def test_convert_prints_keys_and_paths_verbatim_not_as_markup(tmp_path):
    keys = ["[/]", "[bold]x", "a[/bold]b", ":thumbs_up:", "[link=https://e.x]y[/link]"]
    state: dict[str, object] = {k: torch.ones(2) for k in keys}
    state.update({f"n{k}": 1 for k in keys})  # not tensors: named in the note
    path = tmp_path / "m.pth"
    torch.save(state, path)
    out = tmp_path / "[/]" / "[red]o.safetensors"
    rc, stdout, stderr = run("convert", path, out)
    assert rc == 0, stderr
    assert f"left out {len(keys)} entries that are not tensors: " + ", ".join(
        f"n{k}" for k in keys) in stdout
    assert f"wrote {out}: {len(keys)} tensors" in stdout
    assert sorted(load_file(str(out))) == sorted(keys)


# -- 3. convert: the flag, not the Python argument --------------------------------------------


class Custom:
    def __init__(self) -> None:
        self.x = 1


def test_convert_pickle_refusal_names_the_command_line_flag(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"meta": Custom(), "model": {"w": torch.ones(2)}}, path)
    rc, _, stderr = run("convert", path, tmp_path / "o.safetensors")
    assert rc == 2 and "needs arbitrary code" in stderr
    assert "--allow-pickle" in stderr
    assert "allow_pickle" not in stderr and "dict(type=" not in stderr
    assert "convert it to .safetensors" not in stderr  # that is what the user is doing


# -- 4. entries that match by name but can not load ------------------------------------------


def entries_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


@pytest.mark.parametrize("value, said", [
    (lambda t: t.numpy(), "is a numpy.ndarray, not a tensor"),
    (lambda t: t.to(torch.complex64), "is a complex64 tensor, which can not load into the "
                                      "float32 parameter"),
    (lambda t: t.long(), "is an int64 tensor"),
    (lambda t: t.tolist(), "is a list, not a tensor"),
], ids=["numpy", "complex", "int64", "list"])
def test_no_match_error_says_what_the_entries_are(value, said):
    model = nn.Linear(2, 3)
    state = CheckpointState.from_dict(
        "ck.pth", {k: value(v.detach()) for k, v in model.state_dict().items()})
    err = no_match_error("load_checkpoint", "ck.pth", "<root> (Linear)", state,
                         entries_of(model), lambda t: t.dtype)
    assert isinstance(err, wi.CheckpointMismatchError)
    text = str(err)
    assert f"checkpoint entry 'weight' {said}" in text
    assert "no key" not in text and "Fix:" in text


def test_no_match_error_still_lists_the_keys_when_no_name_matches():
    state = CheckpointState.from_dict("ck.pth", {"backbone.weight": torch.ones(3, 2)})
    err = no_match_error("w", "ck.pth", "<root> (Linear)", state, entries_of(nn.Linear(2, 3)),
                         lambda t: t.dtype)
    assert "no key of ck.pth matches" in str(err) and "backbone.weight" in str(err)


@pytest.mark.parametrize("kind", ["numpy", "complex"])
def test_loading_numpy_or_complex_entries_says_what_they_are(tmp_path, kind):
    model = nn.Linear(2, 3)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd = {k: v.numpy() if kind == "numpy" else v.to(torch.complex64) for k, v in sd.items()}
    path = tmp_path / "c.pth"
    torch.save(sd, path)
    target = nn.Linear(2, 3)
    before = snapshot(target)
    with pytest.raises(wi.CheckpointMismatchError) as info:
        wi.load_checkpoint(target, str(path))
    text = str(info.value)
    assert "no key" not in text
    assert ("'weight' is a numpy.ndarray, not a tensor" in text if kind == "numpy"
            else "'weight' is a complex64 tensor, which can not load into the float32" in text)
    assert same(snapshot(target), before)


# -- 5. init_cfg nesting ------------------------------------------------------------------------


def chain(depth: int) -> dict:
    """``{'a': {'a': ... {'a': None}}}``, ``depth`` dicts deep, built without recursion."""
    root: dict = {"a": None}
    cur = root
    for _ in range(depth - 1):
        cur["a"] = {"a": None}
        cur = cur["a"]
    return root


def self_dict() -> dict:
    cfg = dict(type="Constant", val=2.0, layer="Linear")
    cfg["override"] = cfg  # the rule is its own override
    return cfg


def self_list() -> dict:
    overrides: list = [dict(name="0")]
    overrides[0]["override"] = overrides
    return dict(type="Constant", val=2.0, override=overrides)


def deep_override() -> dict:
    return dict(type="Constant", val=1.0, layer="Linear",
                override=dict(name="0", type="Constant", val=2.0, extra=chain(3000)))


def laughs() -> dict:
    """A billion laughs: 21 levels of ``[x, x]`` are millions of entries once copied."""
    x: list = [1.0]
    for _ in range(21):
        x = [x, x]
    return dict(type="Constant", val=1.0, layer="Linear", extra=x)


@pytest.mark.parametrize("make, said", [
    (deep_override, f"nests {MAX_DEPTH + 1} levels deep"),
    (self_dict, "init_cfg.override: is the dict init_cfg itself"),
    (self_list, "init_cfg.override[0].override: is the list init_cfg.override itself"),
    (laughs, "entries once its shared parts are counted"),
], ids=["3000-deep", "self-dict", "self-list", "billion-laughs"])
def test_a_pathological_init_cfg_is_a_library_error_while_parsing(make, said):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3))
    before = snapshot(model)
    with pytest.raises(ConfigNestingError) as info:
        wi.initialize(model, make())
    assert isinstance(info.value, wi.InitError) and isinstance(info.value, ValueError)
    assert said in str(info.value) and "Fix:" in str(info.value)
    assert str(info.value).startswith("<root> (Sequential) init_cfg")
    assert same(snapshot(model), before)


def test_a_self_referencing_init_cfg_of_a_base_module_fails_in_init_weights():
    class Net(wi.BaseModule):
        def __init__(self) -> None:
            super().__init__(init_cfg=self_dict())  # deep-copied: the cycle is kept
            self.fc = nn.Linear(3, 3)

    net = Net()
    before = snapshot(net)
    with pytest.raises(ConfigNestingError, match="refers to itself"):
        net.init_weights()
    assert same(snapshot(net), before)


def test_shared_but_acyclic_config_parts_are_allowed():
    rule = dict(type="Constant", val=5.0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    names = [dict(name="0", **rule), dict(name="1", **rule)]
    wi.initialize(model, dict(type="Constant", val=1.0, override=names))
    wi.initialize(model, [rule | {"layer": "Linear"}, rule | {"layer": "Linear"}])
    assert bool((model[1].weight == 5.0).all())


# -- 6. deferred() under inference_mode -------------------------------------------------------


def test_deferred_refuses_inference_mode_at_entry():
    with torch.inference_mode(), pytest.raises(wi.MaterializeError) as info:
        with wi.deferred():
            pytest.fail("the block must not run")
    text = str(info.value)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, wi.InitError)
    assert "inference_mode" in text and "torch.no_grad()" in text and "Fix:" in text


def test_deferred_refuses_a_builder_that_enters_inference_mode_and_recovers():
    @torch.inference_mode()
    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    original_new = nn.Parameter.__dict__["__new__"]
    with pytest.raises(wi.MaterializeError, match="inference_mode"), wi.deferred():
        build()
    assert nn.Parameter.__dict__["__new__"] is original_new  # the block's patches are gone
    # the documented fix: no_grad while building, then a trainable, initialized model
    with torch.no_grad(), wi.deferred():
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    wi.initialize(model, dict(type="Constant", val=0.5, layer="Linear"), device="cpu")
    assert not any(t.is_inference() for t in model.state_dict().values())
    model.train()
    model(torch.randn(5, 3)).sum().backward()
    assert model[0].weight.grad is not None
