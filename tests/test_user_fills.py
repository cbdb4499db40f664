"""User code's unseeded draws (of DEFER_MIN elements or more) kept pending (``weightinit.execution.userfills``): the key
is drawn when the op runs, the tiles when the run needs them — at the end, in the tensor's own
memory; earlier if user code reads the tensor. Values, generator, record and undo are those of
drawing at once."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.execution.seeding import UNSEEDED_MIN
from weightinit.execution.userfills import DEFER_MIN

WIDTH = 1024  # 1 M elements: drawn in tiles (UNSEEDED_MIN is 256 K)
assert WIDTH * WIDTH >= UNSEEDED_MIN


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class Draws(wi.BaseModule):
    """``init_weights`` draws ``fc.weight`` whole, then does ``after`` (user code) with it."""

    def __init__(self, after=None, fail: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.after, self.fail = after, fail
        self.seen: dict[str, object] = {}

    def init_weights(self) -> None:
        nn.init.normal_(self.fc.weight, std=0.02)
        if self.after is not None:
            self.after(self)
        if self.fail:
            raise RuntimeError("user code failed after its draw")


def _run(after=None, seed: int = 3) -> tuple[Draws, torch.Tensor]:
    torch.manual_seed(0)
    model = Draws(after)
    torch.manual_seed(seed)
    model.init_weights()
    return model, torch.rand(4)  # where the global generator stands after the run


def _read(m: Draws) -> None:
    m.fc.weight.data.add_(0.0)  # reads the tensor: its draw is done first


def test_a_pending_draw_is_written_in_place_with_its_record_entry():
    torch.manual_seed(0)
    model = Draws()
    ptr, version = _ptr(model.fc.weight), model.fc.weight._version
    model.init_weights()
    w = model.fc.weight.detach()
    assert _ptr(model.fc.weight) == ptr  # its own memory: no fresh storage, nothing kept
    assert model.fc.weight._version == version + 1  # one write, the op's
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 2e-4
    text = wi.get_init_record(model)["fc.weight"].info
    assert text == "normal_(std=0.02) in Draws.init_weights"
    drawn_at_once, _ = _run(lambda m: m.fc.weight.sum())  # read: the draw done at once
    assert wi.get_init_record(drawn_at_once)["fc.weight"].info == text


class Mid(wi.BaseModule):
    """A draw between DEFER_MIN and UNSEEDED_MIN elements (kept pending as well), or below."""

    def __init__(self, width: int, after=None) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.after = after

    def init_weights(self) -> None:
        nn.init.uniform_(self.fc.weight, -0.5, 0.5)
        if self.after is not None:
            self.after(self)


def test_a_mid_sized_draw_is_kept_pending_too_and_a_small_one_is_torchs_own():
    width = 96
    assert DEFER_MIN <= width * width < UNSEEDED_MIN
    runs = []
    for seed, after in ((5, None), (5, _read), (6, None)):
        torch.manual_seed(0)
        model = Mid(width, after)
        ptr, version = _ptr(model.fc.weight), model.fc.weight._version
        torch.manual_seed(seed)
        model.init_weights()
        runs.append((model.fc.weight.detach().clone(), torch.rand(3)))
        if after is None:  # drawn at the end: in its own memory, one write
            assert _ptr(model.fc.weight) == ptr and model.fc.weight._version == version + 1
        w = model.fc.weight.detach()
        assert -0.5 <= w.min().item() < -0.49 and 0.49 < w.max().item() <= 0.5
        assert abs(w.mean().item()) < 0.02
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])  # the seed decides the values
    small = 32
    assert small * small < DEFER_MIN
    torch.manual_seed(0)
    model = Mid(small)
    torch.manual_seed(5)
    model.init_weights()
    torch.manual_seed(5)
    assert torch.equal(model.fc.weight.detach(), torch.empty(small, small).uniform_(-0.5, 0.5))


def test_values_and_generator_equal_drawing_at_once():
    """Drawn at the end, or at once because user code read it: the same values, and the
    global generator ends where it ends."""
    late, late_next = _run()
    early, early_next = _run(_read)
    assert torch.equal(late.fc.weight, early.fc.weight)
    assert torch.equal(late_next, early_next)
    other, _ = _run(seed=4)
    assert not torch.equal(other.fc.weight, late.fc.weight)  # the seed decides them


def test_user_code_reading_the_tensor_sees_the_drawn_values():
    def look(m: Draws) -> None:
        m.seen["sum"] = m.fc.weight.sum().item()
        m.seen["row"] = m.fc.weight[3].clone()

    model, _ = _run(look)
    assert model.seen["sum"] == pytest.approx(model.fc.weight.sum().item())
    assert torch.equal(model.seen["row"], model.fc.weight[3])


def test_an_overwrite_cancels_the_draw_and_the_generator_moves_as_before():
    def zero(m: Draws) -> None:
        m.fc.weight.data.zero_()

    def read_then_zero(m: Draws) -> None:
        _read(m)
        zero(m)

    cancelled, after_cancel = _run(zero)
    drawn, after_drawn = _run(read_then_zero)
    assert torch.count_nonzero(cancelled.fc.weight) == 0
    assert torch.equal(after_cancel, after_drawn)


def test_a_partial_write_after_the_draw_lands_on_the_drawn_values():
    def first_row(m: Draws) -> None:
        m.fc.weight.data[0].fill_(1.0)

    def read_then_first_row(m: Draws) -> None:
        _read(m)
        first_row(m)

    a, _ = _run(first_row)
    b, _ = _run(read_then_first_row)
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert torch.all(a.fc.weight[0] == 1.0) and a.fc.weight[1].std() > 0.01


@pytest.mark.parametrize("after", [None, _read])
def test_a_failure_after_the_draw_leaves_the_model_untouched(after):
    torch.manual_seed(0)
    model = Draws(after, fail=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ptr = _ptr(model.fc.weight)
    with pytest.raises(RuntimeError, match="user code failed after its draw"):
        model.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert _ptr(model.fc.weight) == ptr
    assert wi.get_init_record(model) is None


def test_a_parent_reading_a_childs_pending_draw_sees_it():
    """The child's user code draws (kept pending); the parent's, running after it, reads the
    child's weight: drawn for it, and the same values as a run that draws at once."""
    class Parent(wi.BaseModule):
        def __init__(self, child_after=None) -> None:
            super().__init__()
            self.child = Draws(child_after)

        def init_weights(self) -> None:
            super().init_weights()  # the child's init_weights: its draw
            self.total = self.child.fc.weight.sum().item()

    results = []
    for child_after in (None, _read):
        torch.manual_seed(0)
        p = Parent(child_after)
        torch.manual_seed(9)
        p.init_weights()
        assert p.total == pytest.approx(p.child.fc.weight.sum().item())
        results.append(p.child.fc.weight.detach().clone())
    assert torch.equal(*results)


def test_tied_weights_are_drawn_at_once_and_seen_by_both():
    class Tied(wi.BaseModule):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(WIDTH, WIDTH, bias=False)
            self.b = nn.Linear(WIDTH, WIDTH, bias=False)
            self.b.weight = self.a.weight

        def init_weights(self) -> None:
            nn.init.normal_(self.a.weight, std=0.5)

    torch.manual_seed(0)
    model = Tied()
    model.init_weights()
    assert model.b.weight is model.a.weight
    assert abs(model.a.weight.std().item() - 0.5) < 5e-3


def test_a_seeded_run_draws_user_code_from_its_tiles_as_before():
    """With a seed the watch keeps nothing pending: user draws come from the seeded tiles,
    whatever the global generator holds."""
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(0)
        model = Draws()
        torch.manual_seed(global_seed)
        ptr = _ptr(model.fc.weight)
        with wi.seeded(5):
            model.init_weights()
        results.append(model.fc.weight.detach().clone())
        assert _ptr(model.fc.weight) != ptr  # drawn at once (a fresh storage, the old kept)
    assert torch.equal(*results)


def _mmcv_trunc_normal(t: torch.Tensor, std: float) -> None:
    """MMCV 1.x's ``trunc_normal_`` (in ``mmcv.cnn.utils.weight_init``): five in-place ops."""
    import math
    with torch.no_grad():
        lo, hi = (1 + math.erf(-2.0 / std / math.sqrt(2))) / 2, \
            (1 + math.erf(2.0 / std / math.sqrt(2))) / 2
        t.uniform_(2 * lo - 1, 2 * hi - 1)
        t.erfinv_()
        t.mul_(std * math.sqrt(2.0))
        t.add_(0.0)
        t.clamp_(min=-2.0, max=2.0)


class Truncated(wi.BaseModule):
    def __init__(self, after=None, fail: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.after, self.fail = after, fail

    def init_weights(self) -> None:
        _mmcv_trunc_normal(self.fc.weight, 0.02)
        if self.after is not None:
            self.after(self)
        if self.fail:
            raise RuntimeError("failed after trunc_normal_")


def _truncated(after=None) -> Truncated:
    torch.manual_seed(0)
    model = Truncated(after)
    torch.manual_seed(11)
    model.init_weights()
    return model


def test_elementwise_ops_on_a_pending_draw_join_it_and_give_the_same_values():
    """MMCV's trunc_normal_ (uniform_, erfinv_, mul_, add_, clamp_ with numbers): all kept
    pending and done at the end in the tensor's own memory, bit for bit what drawing and
    applying them at once gives; each op counted as a write, as eagerly."""
    torch.manual_seed(0)
    model = Truncated()
    ptr, version = _ptr(model.fc.weight), model.fc.weight._version
    torch.manual_seed(11)
    model.init_weights()
    assert _ptr(model.fc.weight) == ptr and model.fc.weight._version == version + 5
    at_once = _truncated(lambda m: m.fc.weight.sum())  # read: done at once
    assert torch.equal(model.fc.weight, at_once.fc.weight)
    w = model.fc.weight.detach()
    assert abs(w.std().item() - 0.02) < 3e-4 and w.abs().max() <= 2.0
    assert wi.get_init_record(model)["fc.weight"].info == \
        wi.get_init_record(at_once)["fc.weight"].info


def test_an_op_reading_another_tensor_does_not_join_the_draw():
    scale = torch.full((WIDTH, WIDTH), 3.0)

    def times(m):
        m.fc.weight.data.mul_(scale)  # a tensor argument: the draw is done first

    def read_then_times(m):
        m.fc.weight.sum()
        times(m)

    assert torch.equal(_truncated(times).fc.weight, _truncated(read_then_times).fc.weight)


def test_a_clamp_without_bounds_fails_at_the_op_as_torch_does():
    def bad(m):
        m.fc.weight.data.clamp_()

    with pytest.raises(RuntimeError, match="At least one of 'min' or 'max' must not be None"):
        _truncated(bad)


def test_a_failure_after_a_chained_draw_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = Truncated(fail=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="failed after trunc_normal_"):
        model.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
