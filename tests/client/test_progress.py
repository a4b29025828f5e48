"""The progress line: epoch, bar, metrics and ETA; rewritten on a terminal, logged elsewhere."""

from __future__ import annotations

import io

from client.progress import ProgressDisplay, format_duration, render_job


def running(epoch: int, loss: float) -> dict:
    return {
        "id": "j1",
        "status": "running",
        "progress": {
            "epoch": epoch,
            "epochs": 4,
            "fraction": epoch / 4,
            "eta_seconds": 75,
        },
        "metrics": {"last": {"val_loss": 0.5, "accuracy": 0.75, "loss": loss}, "best": None},
    }


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_render_shows_epoch_bar_metrics_loss_first_and_eta():
    line = render_job(running(1, 0.25))
    assert line.startswith("running ")
    assert "epoch 1/4" in line
    assert "[" + "#" * 6 + "." * 18 + "]  25%" in line
    assert "loss=0.25 accuracy=0.75 val_loss=0.5" in line
    assert line.endswith("ETA 1m15s")


def test_render_of_a_failed_job_names_the_reason():
    error = {"reason": "nan_loss", "message": "loss became NaN"}
    line = render_job({"status": "failed", "error": error})
    assert line.startswith("failed")
    assert line.endswith("nan_loss: loss became NaN")


def test_durations():
    assert [format_duration(s) for s in (None, 5, 185, 3720)] == ["?", "5s", "3m05s", "1h02m"]


def test_off_a_terminal_one_line_per_epoch_or_status_change():
    stream = io.StringIO()
    display = ProgressDisplay(stream)
    for job in (running(1, 0.9), running(1, 0.8), running(2, 0.7), {"status": "succeeded"}):
        display.update(job)
    display.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert "epoch 2/4" in lines[1]
    assert lines[2].startswith("succeeded")


def test_on_a_terminal_the_line_is_rewritten_in_place():
    stream = Terminal()
    display = ProgressDisplay(stream)
    display.update(running(1, 0.123456))
    display.update({"status": "succeeded"})
    display.close()
    text = stream.getvalue()
    assert text.count("\r") == 2
    assert text.endswith("\n")
    assert text.count("\n") == 1
    # The shorter last line is padded over the longer one before it.
    first, second = text.split("\r")[1:]
    assert len(second.rstrip("\n")) == len(first)
