"""One-line progress displays: a job's (epoch, a bar, the last metrics and the ETA) and an
upload's (bytes sent, a bar, the rate and the ETA).

On a terminal the line is rewritten in place; elsewhere (a log file, CI) a line is printed each
time the epoch or the status changes, so logs stay readable. No dependency beyond the stdlib.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

BAR_WIDTH = 24
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def format_duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`; `?` when unknown."""
    if seconds is None or seconds < 0:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_metrics(metrics: dict[str, Any] | None, limit: int = 4) -> str:
    """`loss=0.3012 accuracy=0.9120`: the first few numeric metrics, loss first."""
    if not metrics:
        return ""
    names = sorted(metrics, key=lambda name: (name != "loss", name.startswith("val_"), name))
    parts = [
        f"{name}={metrics[name]:.4g}"
        for name in names
        if isinstance(metrics[name], int | float) and not isinstance(metrics[name], bool)
    ]
    return " ".join(parts[:limit])


def job_fraction(job: dict[str, Any]) -> float | None:
    """How much of the job's work is done, 0..1, as the server measured it."""
    fraction = (job.get("progress") or {}).get("fraction")
    if isinstance(fraction, int | float):
        return min(max(float(fraction), 0.0), 1.0)
    return 1.0 if job.get("status") == "succeeded" else None


def job_metrics(job: dict[str, Any]) -> dict[str, Any] | None:
    """The last ended epoch's metrics: the progress record's, else `metrics.last`."""
    progress_metrics = (job.get("progress") or {}).get("metrics")
    if isinstance(progress_metrics, dict):
        return progress_metrics
    metrics = job.get("metrics") or {}
    return metrics.get("last") if isinstance(metrics.get("last"), dict) else None


def epochs_done(job: dict[str, Any]) -> str | None:
    """`5/10 epochs`: the epochs ended of all asked for; None before training started."""
    progress = job.get("progress") or {}
    completed, epochs = progress.get("completed"), progress.get("epochs")
    if not isinstance(completed, int) or not epochs:
        return None
    return f"{completed}/{epochs} epochs"


def describe_stop(stop: dict[str, Any] | None) -> str | None:
    """Why training ended, in words: `stopped early at epoch 5: val_loss did not improve for 2
    epochs; best epoch 3`."""
    if not stop:
        return None
    reason, epoch = stop.get("reason"), stop.get("epoch")
    best, monitor = stop.get("best_epoch"), stop.get("monitor")
    best_part = f"; best epoch {best}" + (f" by {monitor}" if monitor else "") if best else ""
    if reason == "early_stopping":
        if best is None or monitor is None:
            return f"stopped early at epoch {epoch}"
        waited = epoch - best
        return (
            f"stopped early at epoch {epoch}: {monitor} did not improve for {waited} "
            f"epoch{'s' if waited != 1 else ''}; best epoch {best}"
        )
    described = {
        "completed": f"ran all {epoch} epochs",
        "cancelled": f"cancelled at epoch {epoch}",
        "pruned": f"pruned at epoch {epoch}",
        "time_limit": f"stopped at epoch {epoch}: the job's time limit was reached",
    }.get(str(reason), f"stopped at epoch {epoch} ({reason})")
    return described + best_part


def render_job(job: dict[str, Any]) -> str:
    """One line describing the job: `running  3/10 epochs [#####...]  34%  loss=... ETA 12s`.

    Every figure is the server's: the epochs ended, the fraction of the work done, the last ended
    epoch's metrics, and an ETA measured from the epochs run (none before one ended).
    """
    status = str(job.get("status", "?"))
    progress = job.get("progress") or {}
    parts = [f"{status:<10}"]
    done = epochs_done(job)
    if done:
        parts.append(done)
    fraction = job_fraction(job)
    if fraction is not None:
        filled = int(fraction * BAR_WIDTH)
        parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + f"] {fraction:4.0%}")
    metrics = format_metrics(job_metrics(job))
    if metrics:
        parts.append(metrics)
    if status not in TERMINAL and progress.get("eta_seconds") is not None:
        parts.append(f"ETA {format_duration(progress['eta_seconds'])}")
    error = job.get("error") or {}
    if error.get("reason") or error.get("message"):
        parts.append(f"{error.get('reason') or ''}: {error.get('message') or ''}".strip(": "))
    return "  ".join(parts)


class ProgressDisplay:
    """Shows a job's progress on a stream (stderr by default) as updates come in.

    On a terminal the line is rewritten in place and erased by `close`, so the caller prints the
    outcome once; elsewhere a line is printed each time an epoch ends or the status changes.

    Example:
        display = ProgressDisplay()
        for job in client.follow(job_id):
            display.update(job)
        display.close()
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_line = ""
        self._last_key: tuple[Any, ...] | None = None

    def update(self, job: dict[str, Any]) -> None:
        """Show the job's current state."""
        line = render_job(job)
        if self.live:
            padding = " " * max(len(self._last_line) - len(line), 0)
            self.stream.write("\r" + line + padding)
            self.stream.flush()
            self._last_line = line
            return
        # Off a terminal, print only when something a reader cares about changed.
        key = (job.get("status"), (job.get("progress") or {}).get("completed"))
        if key != self._last_key:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_key = key

    def close(self) -> None:
        """Erase the live line so later output starts on a clean one."""
        if self.live and self._last_line:
            self.stream.write("\r" + " " * len(self._last_line) + "\r")
            self.stream.flush()
            self._last_line = ""


def format_bytes(count: float) -> str:
    """`512 B`, `3.2 MB`, `1.3 GB` (decimal units, as a person reads them)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def render_transfer(done: int, total: int, sent: int, seconds: float) -> str:
    """`uploading [######..........]  40%  520.0 MB/1.3 GB  85.2 MB/s  ETA 9s`: `done` of
    `total` bytes are on the server, `sent` of them in the last `seconds`."""
    fraction = done / total if total else 1.0
    filled = int(fraction * BAR_WIDTH)
    rate = sent / seconds if seconds > 0 else 0.0
    parts = [
        "uploading",
        "[" + "#" * filled + "." * (BAR_WIDTH - filled) + f"] {fraction:4.0%}",
        f"{format_bytes(done)}/{format_bytes(total)}",
    ]
    if rate > 0:
        parts.append(f"{format_bytes(rate)}/s")
        if done < total:
            parts.append(f"ETA {format_duration((total - done) / rate)}")
    return "  ".join(parts)


class TransferDisplay:
    """Shows an upload's progress: called with (bytes on the server, total) after each chunk.

    The rate counts only what this run sent, so a resumed upload does not claim the bytes an
    earlier run sent. On a terminal the line is rewritten; elsewhere a line per tenth.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.first: int | None = None
        self._last_tenth = -1
        self._last_line = ""

    def __call__(self, done: int, total: int) -> None:
        if self.first is None:
            self.first = done
            if done:
                self.stream.write(f"resuming at {format_bytes(done)} of {format_bytes(total)}\n")
        line = render_transfer(done, total, done - self.first, time.monotonic() - self.started)
        if self.live:
            padding = " " * max(len(self._last_line) - len(line), 0)
            self.stream.write("\r" + line + padding)
            self._last_line = line
        else:
            tenth = int(10 * done / total) if total else 10
            if tenth != self._last_tenth:
                self.stream.write(line + "\n")
                self._last_tenth = tenth
        self.stream.flush()

    def close(self) -> None:
        """End the live line so later output starts on a fresh one."""
        if self.live and self._last_line:
            self.stream.write("\n")
            self.stream.flush()
            self._last_line = ""
