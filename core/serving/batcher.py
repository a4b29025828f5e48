"""Gather concurrent requests for one model into one forward pass.

A request that finds no pass running runs at once, alone. Requests that arrive while a pass runs
wait; when it ends, the thread that ran it hands the waiting requests (up to `max_rows` rows, in
arrival order) to one of the waiting threads, which runs them as one batch. So a lone request
never waits for company, and under load each pass carries everything that queued up behind the
previous one. A request that has waited `max_latency` seconds without being picked up runs its
queue itself, beside the pass in progress, so one slow pass cannot hold the queue for long.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

Forward = Callable[[Sequence[np.ndarray]], dict[str, np.ndarray]]


class _Request:
    __slots__ = ("done", "error", "group", "inputs", "result", "rows")

    def __init__(self, inputs: Sequence[np.ndarray]) -> None:
        self.inputs = inputs
        self.rows = len(inputs[0])
        self.done = threading.Event()
        self.group: list[_Request] | None = None
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class Batcher:
    """Runs `forward` on batches of concurrent requests; `submit` is safe from any thread.

    Args:
        forward: the model's forward function: arrays in input order -> {output name: array}.
        max_rows: the most rows one batched pass takes (a larger request still runs, alone).
        max_latency: seconds a waiting request waits before it runs the queue itself.

    Example:
        `Batcher(loaded.forward, 256, 0.02).submit([np.zeros((1, 784), "float32")])`
    """

    def __init__(self, forward: Forward, max_rows: int, max_latency: float) -> None:
        self._forward = forward
        self._max_rows = max_rows
        self._max_latency = max_latency
        self._lock = threading.Lock()
        self._waiting: list[_Request] = []
        self._running = 0

    def submit(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Run `inputs` (one array per model input, same rows) and return this request's outputs."""
        request = _Request(inputs)
        with self._lock:
            if self._running == 0:
                self._running += 1
                request.group = [request]
            else:
                self._waiting.append(request)
        if request.group is None:
            self._wait_for_turn(request)
        if request.group is not None:
            self._run_and_hand_off(request.group)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None  # a finished pass set its result or its error
        return request.result

    def _wait_for_turn(self, request: _Request) -> None:
        if request.done.wait(self._max_latency):
            return
        with self._lock:
            if request.done.is_set() or request not in self._waiting:
                claimed = False
            else:
                request.group = self._take_group()
                self._running += 1
                claimed = True
        if not claimed:
            request.done.wait()

    def _run_and_hand_off(self, group: list[_Request]) -> None:
        """Run `group`, then make the first of the next group its runner (or stop running)."""
        self._run(group)
        handoff = self._next_group()
        if handoff is not None:
            handoff[0].group = handoff
            handoff[0].done.set()

    def _next_group(self) -> list[_Request] | None:
        """After a pass: the next group to run (its runner keeps the running count), or None."""
        with self._lock:
            if self._waiting:
                return self._take_group()
            self._running -= 1
            return None

    def _take_group(self) -> list[_Request]:
        """The oldest waiting requests of the first one's row shape, up to max_rows rows.

        It stops at the first request that would overflow, so requests run in arrival order;
        requests of another row shape (variable-length inputs) wait for a group of their own.
        """
        shapes = [array.shape[1:] for array in self._waiting[0].inputs]
        group: list[_Request] = []
        rest: list[_Request] = []
        rows = 0
        for index, waiting in enumerate(self._waiting):
            if [array.shape[1:] for array in waiting.inputs] != shapes:
                rest.append(waiting)
            elif group and rows + waiting.rows > self._max_rows:
                rest.extend(self._waiting[index:])
                break
            else:
                group.append(waiting)
                rows += waiting.rows
        self._waiting = rest
        return group

    def _run(self, group: list[_Request]) -> None:
        try:
            if len(group) == 1:
                group[0].result = self._forward(group[0].inputs)
            else:
                self._run_batched(group)
        except Exception as error:
            if len(group) == 1:
                group[0].error = error
            else:
                # One request's values can fail a whole pass (a shape a layer cannot take):
                # alone, each request gets its own answer or its own error.
                for request in group:
                    self._run([request])
                return
        for request in group:
            request.done.set()

    def _run_batched(self, group: list[_Request]) -> None:
        inputs = [
            np.concatenate([request.inputs[i] for request in group])
            for i in range(len(group[0].inputs))
        ]
        outputs = self._forward(inputs)
        start = 0
        for request in group:
            stop = start + request.rows
            request.result = {name: array[start:stop] for name, array in outputs.items()}
            start = stop
