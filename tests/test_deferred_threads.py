"""deferred(): nesting, exceptions, and thread isolation of the process-wide patches."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn

import weightinit as wi

TIMEOUT = 10


def run_in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging) if it does not finish in time."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # reported in the calling thread
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout=TIMEOUT)
    assert not t.is_alive(), "thread did not finish (deadlock?)"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def join_all(*threads: threading.Thread) -> None:
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert not any(t.is_alive() for t in threads), "thread did not finish (deadlock?)"


ORIGINAL_NEW = nn.Parameter.__dict__["__new__"]
ORIGINAL_KAIMING = nn.init.kaiming_uniform_


def assert_unpatched() -> None:
    assert nn.Parameter.__dict__["__new__"] is ORIGINAL_NEW
    assert nn.init.kaiming_uniform_ is ORIGINAL_KAIMING
    assert not nn.Linear(4, 4).weight.is_meta


def assert_materializes(m: nn.Linear) -> None:
    assert all(p.is_meta for p in m.parameters())
    wi.initialize(m, [])
    w = m.weight
    assert not w.is_meta
    bound = 1 / math.sqrt(m.in_features)
    assert w.abs().max().item() <= bound + 1e-6
    assert not torch.all(w == w.flatten()[0])


def test_nested_blocks_do_not_deadlock_and_materialize():
    def build() -> nn.Linear:
        with wi.deferred():
            with wi.deferred():
                m = nn.Linear(4, 4)
            inner_left = nn.Linear(4, 4)  # still inside the outer block
        assert inner_left.weight.is_meta
        return m

    m = run_in_thread(build)
    assert_materializes(m)
    assert_unpatched()


def test_other_thread_builds_eagerly_while_one_is_deferred():
    torch.manual_seed(0)
    expected = nn.Linear(8, 8).weight.detach().clone()

    entered, b_done = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    def thread_a() -> None:
        with wi.deferred():
            entered.set()
            assert b_done.wait(TIMEOUT)
            out["a"] = nn.Linear(8, 8)

    def thread_b() -> None:
        assert entered.wait(TIMEOUT)
        torch.manual_seed(0)
        out["b"] = nn.Linear(8, 8)
        b_done.set()

    ta, tb = threading.Thread(target=thread_a, daemon=True), threading.Thread(target=thread_b,
                                                                              daemon=True)
    ta.start()
    tb.start()
    join_all(ta, tb)
    assert not out["b"].weight.is_meta
    assert torch.equal(out["b"].weight.detach(), expected)
    assert_materializes(out["a"])
    assert_unpatched()


def test_two_threads_deferred_at_once():
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    out: dict[int, nn.Linear] = {}

    def worker(i: int) -> None:
        with wi.deferred():
            barrier.wait()  # both inside at the same time
            out[i] = nn.Linear(6, 6)
            barrier.wait()  # neither leaves before the other has built its model

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    join_all(*threads)
    assert sorted(out) == [0, 1]
    for m in out.values():
        assert_materializes(m)
    assert_unpatched()


def test_exception_in_nested_block_unwinds():
    def raise_inside() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            with wi.deferred():
                with wi.deferred():
                    raise RuntimeError("boom")
        assert_unpatched()
        with wi.deferred():
            m = nn.Linear(4, 4)
        assert_materializes(m)

    run_in_thread(raise_inside)
    assert_unpatched()


def test_user_patches_are_kept():
    def my_new(cls, data=None, requires_grad=True):
        return ORIGINAL_NEW.__func__(cls, data, requires_grad)

    def my_normal(tensor, *args, **kwargs):
        return ORIGINAL_NORMAL(tensor, *args, **kwargs)

    ORIGINAL_NORMAL = nn.init.normal_
    nn.Parameter.__new__ = my_new
    nn.init.normal_ = my_normal
    try:
        with wi.deferred():
            m = nn.Linear(4, 4)
        assert m.weight.is_meta
        assert nn.Parameter.__dict__["__new__"] is my_new
        assert nn.init.normal_ is my_normal
    finally:
        nn.Parameter.__new__ = ORIGINAL_NEW
        nn.init.normal_ = ORIGINAL_NORMAL
    assert_unpatched()
