"""User code that writes the model from other threads: watched in the threads it starts,
refused (and rolled back) from threads it did not start.

A dispatch mode sees one thread; a run extends its watch to every thread the watched
call starts (``threading.Thread``, a ``ThreadPoolExecutor`` made inside the call, and the
threads those start), so their writes are recorded and undone on failure like the calling
thread's. Writes from a thread that existed before the call are found after it (version
counters) and end the run with :class:`weightinit.CrossThreadWriteError`.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.errors import CrossThreadWriteError


class Model(wi.BaseModule):
    def __init__(self, fn, fail: bool = False) -> None:
        super().__init__(dict(type="Constant", val=1.0, bias=0.0, layer="Linear"))
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.fn = fn
        self.fail = fail

    def init_weights(self) -> None:
        super().init_weights()
        self.fn(self)
        if self.fail:
            raise RuntimeError("after the threads")


def _fill_in_thread(model: nn.Module) -> None:
    def work():
        with torch.no_grad():
            model.a.weight.fill_(7.0)

    t = threading.Thread(target=work)
    t.start()
    t.join()


def _fill_in_pool(model: nn.Module) -> None:
    def work(p):
        with torch.no_grad():
            p.normal_(0.0, 0.5)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(work, [model.a.weight, model.b.weight]))


def _fill_in_nested_thread(model: nn.Module) -> None:
    def inner():
        with torch.no_grad():
            model.b.bias.fill_(3.0)

    def outer():
        t = threading.Thread(target=inner)
        t.start()
        t.join()

    t = threading.Thread(target=outer)
    t.start()
    t.join()


@pytest.mark.parametrize("fn", [_fill_in_thread, _fill_in_pool, _fill_in_nested_thread])
def test_a_failing_init_restores_writes_made_from_threads_it_started(fn):
    torch.manual_seed(0)
    model = Model(fn, fail=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    objects = dict(model.named_parameters())
    with pytest.raises(RuntimeError, match="after the threads"):
        model.init_weights()
    for n, p in model.named_parameters():
        assert p is objects[n], n
        assert torch.equal(p, before[n]), n


def test_writes_from_a_started_thread_are_recorded_and_kept():
    model = Model(_fill_in_thread)
    model.init_weights()
    assert torch.equal(model.a.weight, torch.full((4, 4), 7.0))
    assert torch.equal(model.b.weight, torch.ones(4, 4))  # the rule's
    record = wi.get_init_record(model)
    # the thread's frames do not lead back to the call: the record names the call itself
    assert record["a.weight"].kind == "user"
    assert record["a.weight"].info == "user-defined init_weights in Model"
    assert record["b.weight"].info.startswith("Constant")


def test_pool_threads_each_write_once_and_are_recorded():
    model = Model(_fill_in_pool)
    model.init_weights()
    for name in ("a.weight", "b.weight"):
        p = model.get_parameter(name)
        assert 0.2 < p.std().item() < 1.0, name  # drawn, not the rule's constant
        assert wi.get_init_record(model)[name].kind == "user", name


def test_a_write_from_a_thread_that_existed_before_is_refused():
    pool = ThreadPoolExecutor(max_workers=1)  # created outside the run: not watched
    pool.submit(lambda: None).result()  # its thread exists now

    def fn(model):
        def work():
            with torch.no_grad():
                model.a.bias.fill_(5.0)
        pool.submit(work).result()
        with torch.no_grad():
            model.b.bias.fill_(2.0)  # the calling thread's write: undone

    torch.manual_seed(0)
    model = Model(fn)
    b_bias = model.b.bias.detach().clone()
    try:
        with pytest.raises(CrossThreadWriteError, match=r"wrote a\.bias from a thread this run "
                           r"does not watch.*rolled back"):
            model.init_weights()
    finally:
        pool.shutdown()
    assert torch.equal(model.b.bias, b_bias)
    assert not model.is_init
    assert isinstance(CrossThreadWriteError("x"), RuntimeError)


def test_threads_started_outside_any_run_are_not_touched():
    seen = []

    def work():
        seen.append(torch.ones(2).add_(1).sum().item())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [4.0]
    assert type(t).run is threading.Thread.run  # nothing replaced on the class


def test_the_librarys_own_fill_threads_made_during_user_code_stay_unwatched(monkeypatch):
    # user code's large draw is filled in pieces on the library's pool; a pool thread
    # first made then must not keep that run's watch for the rest of its life
    from weightinit.execution import parallel

    monkeypatch.setattr(parallel, "_POOL", None)
    monkeypatch.setattr(parallel, "_POOL_SIZE", 0)
    monkeypatch.setenv(parallel.ENV_THREADS, "2")

    def draw(model):
        big = torch.empty(1 << 21)
        with torch.no_grad():
            model.a.weight.normal_()
        big.normal_()

    Model(draw).init_weights()
    pool = parallel._POOL
    assert pool is not None
    seen = pool.submit(lambda: type(threading.current_thread()).run is threading.Thread.run
                       and "run" not in vars(threading.current_thread())).result()
    assert seen
