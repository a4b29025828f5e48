"""The peak memory of a process tree (a worker and its pool child), sampled on a thread."""

from __future__ import annotations

import threading
import time

import psutil


class PeakRss:
    """The highest RSS of a process and its children while the `with` block runs.

    `before` is the RSS when the block starts; `peak` the highest sample, every `interval`
    seconds. RSS counts what the processes hold: their own memory and the file pages they map.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.before = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def now(self) -> int:
        total = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self.before = self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())
