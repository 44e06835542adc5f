"""MLXWorker: requests on their way (``expect``) hold the next batch step, so
requests sent together start in one step instead of one starting alone."""

from __future__ import annotations

import threading
import time

import pytest

from mlxhost.runtime import worker as worker_module
from mlxhost.runtime.worker import MLXWorker


def run_with_a_ticker(expecting: bool) -> list[str]:
    """A ticker runs (as a decoding batch would); job A comes, then job B a
    while later (well past the plain linger). Returns what ran, in order."""
    worker = MLXWorker()
    worker.start()
    events: list[str] = []
    ticking = threading.Event()
    a_ran = threading.Event()
    done = threading.Event()

    def tick() -> bool:
        events.append("tick")
        ticking.set()
        if "B" in events:
            done.set()
            return False
        time.sleep(0.001)
        return True

    def job_a() -> None:
        events.append("A")
        a_ran.set()

    try:
        worker._jobs.put(lambda: worker.add_ticker(tick))
        assert ticking.wait(10)
        if expecting:
            worker.expect(1)
        worker._jobs.put(job_a)
        assert a_ran.wait(10)
        if not expecting:
            # Nothing on its way: the batch steps on before B comes.
            ticks = events.count("tick")
            deadline = time.monotonic() + 10
            while events.count("tick") == ticks and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            time.sleep(0.1)
        worker._jobs.put(lambda: events.append("B"))
        if expecting:
            worker.expect(-1)  # B's request has joined
        assert done.wait(10)
    finally:
        worker.stop()
    return events[events.index("A"):]


def test_a_request_on_its_way_holds_the_next_step_until_it_joins(monkeypatch):
    monkeypatch.setattr(worker_module, "ARRIVING_HOLD_S", 10.0)
    assert run_with_a_ticker(expecting=True)[:2] == ["A", "B"]


def test_with_nothing_on_its_way_the_batch_steps_on(monkeypatch):
    monkeypatch.setattr(worker_module, "ARRIVING_HOLD_S", 10.0)
    assert run_with_a_ticker(expecting=False)[:2] == ["A", "tick"]


def test_the_hold_is_bounded(monkeypatch):
    """A request that never joins holds a step for ARRIVING_HOLD_S at most."""
    monkeypatch.setattr(worker_module, "ARRIVING_HOLD_S", 0.05)
    worker = MLXWorker()
    worker.start()
    ran = threading.Event()
    try:
        worker.expect(1)
        worker._jobs.put(lambda: worker.add_ticker(lambda: bool(ran.set())))
        assert ran.wait(10)  # the ticker ran although the expected request never came
    finally:
        worker.stop()


def test_expect_never_goes_below_zero():
    worker = MLXWorker()
    worker.expect(-1)
    assert worker.arriving == 0
    worker.expect(2)
    worker.expect(-1)
    assert worker.arriving == 1


@pytest.mark.parametrize("joins", [True, False])
def test_a_session_counts_as_arriving_until_it_joins_or_ends(joins):
    """runtime.ModelSession: +1 when it starts, -1 once (at its join, else at its end)."""
    from mlxhost.runtime.runtime import ModelSession

    class Runtime:
        _worker = MLXWorker()

    session = ModelSession(Runtime(), model=None)  # type: ignore[arg-type]
    assert Runtime._worker.arriving == 1
    if joins:
        session.arrived()
        assert Runtime._worker.arriving == 0
    session.arrived()  # the session's end
    assert Runtime._worker.arriving == 0
