"""The batcher: a lone request runs at once; concurrent ones share forward passes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.serving.batcher import Batcher
from tests.support.processes import wait_for


class Recorder:
    """A forward function that doubles its input, recording each pass's rows, optionally slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.rows: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, inputs):
        self.gate.wait(10)
        self.rows.append(len(inputs[0]))
        time.sleep(self.delay)
        return {"out": inputs[0] * 2}


def test_a_lone_request_runs_at_once():
    forward = Recorder()
    batcher = Batcher(forward, max_rows=64, max_latency=5.0)
    started = time.monotonic()
    out = batcher.submit([np.ones((2, 3), "float32")])
    assert time.monotonic() - started < 1.0
    assert np.array_equal(out["out"], np.full((2, 3), 2, "float32"))
    assert forward.rows == [2]


def test_requests_that_arrive_during_a_pass_share_the_next():
    forward = Recorder()
    batcher = Batcher(forward, max_rows=64, max_latency=5.0)
    forward.gate.clear()  # hold the first pass until the others queue up behind it
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(batcher.submit, [np.full((1, 2), 100.0)])
        wait_for(lambda: batcher._running, 10, "the first pass to start", interval=0.001)
        rest = [pool.submit(batcher.submit, [np.full((1, 2), float(i))]) for i in range(8)]
        wait_for(lambda: len(batcher._waiting) >= 8, 10, "8 requests queued", interval=0.001)
        forward.gate.set()
        assert np.array_equal(first.result(10)["out"], [[200.0, 200.0]])
        for i, future in enumerate(rest):
            assert np.array_equal(future.result(10)["out"], [[2.0 * i, 2.0 * i]])
    assert forward.rows == [1, 8]


def test_batches_stop_at_max_rows_in_arrival_order():
    forward = Recorder()
    batcher = Batcher(forward, max_rows=4, max_latency=5.0)
    forward.gate.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, [np.zeros((1, 1))])
        wait_for(lambda: batcher._running, 10, "the first pass to start", interval=0.001)
        rest = []
        for rows in (3, 2, 1, 2):
            rest.append(pool.submit(batcher.submit, [np.zeros((rows, 1))]))
            wait_for(lambda: len(batcher._waiting) >= len(rest), 10, "queued", interval=0.001)
        forward.gate.set()
        for future in [first, *rest]:
            future.result(10)
    assert forward.rows == [1, 3, 3, 2]


def test_a_waiting_request_runs_itself_after_max_latency():
    release = threading.Event()

    def forward(inputs):
        if not inputs[0].any():  # the zeros request's pass hangs until released
            release.wait(10)
        return {"out": inputs[0] * 2}

    batcher = Batcher(forward, max_rows=64, max_latency=0.05)
    with ThreadPoolExecutor(2) as pool:
        try:
            stuck = pool.submit(batcher.submit, [np.zeros((1, 1))])
            wait_for(lambda: batcher._running, 10, "the first pass to start", interval=0.001)
            late = pool.submit(batcher.submit, [np.ones((1, 1))])
            # Answered while the first pass still hangs: the late request ran its own pass.
            assert np.array_equal(late.result(5)["out"], [[2.0]])
            assert not stuck.done()
        finally:
            release.set()
        assert np.array_equal(stuck.result(10)["out"], [[0.0]])


def test_an_error_reaches_every_request_of_its_pass():
    def broken(inputs):
        raise RuntimeError("boom")

    batcher = Batcher(broken, max_rows=64, max_latency=1.0)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit([np.zeros((1, 1))])
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher.submit, [np.zeros((1, 1))]) for _ in range(8)]
        for future in futures:
            with pytest.raises(RuntimeError, match="boom"):
                future.result(10)
    assert batcher._running == 0


def test_many_threads_get_their_own_rows_back():
    forward = Recorder(delay=0.002)
    batcher = Batcher(forward, max_rows=16, max_latency=1.0)
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(batcher.submit, [np.full((1, 2), float(i))]) for i in range(200)]
        for i, future in enumerate(futures):
            assert np.array_equal(future.result(10)["out"], [[2.0 * i, 2.0 * i]])
    assert sum(forward.rows) == 200
    assert len(forward.rows) < 200
    assert max(forward.rows) <= 16
    assert batcher._running == 0


class Picky(Recorder):
    """A Recorder whose pass fails when any row is negative, as a layer refusing a value does."""

    def __call__(self, inputs):
        if (inputs[0] < 0).any():
            self.rows.append(len(inputs[0]))
            raise ValueError("a negative row")
        return super().__call__(inputs)


def test_a_request_that_fails_a_shared_pass_fails_alone():
    forward = Picky()
    batcher = Batcher(forward, max_rows=64, max_latency=5.0)
    forward.gate.clear()
    values = [1.0, -1.0, 2.0, 3.0]
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(batcher.submit, [np.full((1, 2), 100.0)])
        wait_for(lambda: batcher._running, 10, "the first pass to start", interval=0.001)
        rest = [pool.submit(batcher.submit, [np.full((1, 2), value)]) for value in values]
        wait_for(lambda: len(batcher._waiting) >= 4, 10, "4 requests queued", interval=0.001)
        forward.gate.set()
        assert first.result(10)["out"].tolist() == [[200.0, 200.0]]
        with pytest.raises(ValueError, match="negative"):
            rest[1].result(10)
        for value, future in zip(values, rest, strict=True):
            if value > 0:
                assert future.result(10)["out"].tolist() == [[2 * value] * 2]
    assert forward.rows[:2] == [1, 4]  # the shared pass failed, then each ran alone
    assert sorted(forward.rows[2:]) == [1, 1, 1, 1]
