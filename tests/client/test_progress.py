"""The progress line: epochs ended, bar, metrics and ETA as the server measured them; rewritten on
a terminal, logged elsewhere; why training stopped, in words."""

from __future__ import annotations

import io

from client.progress import ProgressDisplay, describe_stop, format_duration, render_job


def running(completed: int, loss: float, *, step: int = 4, eta: float | None = 75) -> dict:
    return {
        "id": "j1",
        "status": "running",
        "progress": {
            "epoch": completed if step == 4 else completed + 1,
            "epochs": 4,
            "completed": completed,
            "step": step,
            "steps": 4,
            "fraction": (completed + (0 if step == 4 else step / 4)) / 4,
            "eta_seconds": eta,
            "metrics": {"val_loss": 0.5, "accuracy": 0.75, "loss": loss} if completed else None,
        },
        "metrics": {"last": None, "best": None},
    }


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_render_shows_epochs_ended_bar_metrics_loss_first_and_eta():
    line = render_job(running(1, 0.25))
    assert line.startswith("running ")
    assert "1/4 epochs" in line
    assert "[" + "#" * 6 + "." * 18 + "]  25%" in line
    assert "loss=0.25 accuracy=0.75 val_loss=0.5" in line
    assert line.endswith("ETA 1m15s")


def test_mid_epoch_the_line_counts_epochs_ended_beside_the_work_done():
    line = render_job(running(2, 0.25, step=2))
    assert "2/4 epochs" in line
    assert "62%" in line


def test_no_eta_before_an_epoch_ended():
    line = render_job(running(0, 0.9, step=1, eta=None))
    assert "0/4 epochs" in line
    assert "ETA" not in line


def test_render_of_a_failed_job_names_the_reason():
    error = {"reason": "nan_loss", "message": "loss became NaN"}
    line = render_job({"status": "failed", "error": error})
    assert line.startswith("failed")
    assert line.endswith("nan_loss: loss became NaN")


def test_durations():
    assert [format_duration(s) for s in (None, 5, 185, 3720)] == ["?", "5s", "3m05s", "1h02m"]


def test_stop_reasons_in_words():
    early = {"reason": "early_stopping", "epoch": 5, "best_epoch": 3, "monitor": "val_loss"}
    assert describe_stop(early) == (
        "stopped early at epoch 5: val_loss did not improve for 2 epochs; best epoch 3"
    )
    completed = {"reason": "completed", "epoch": 10, "best_epoch": 9, "monitor": "val_loss"}
    assert describe_stop(completed) == "ran all 10 epochs; best epoch 9 by val_loss"
    cancelled = {"reason": "cancelled", "epoch": 2, "best_epoch": None, "monitor": None}
    assert describe_stop(cancelled) == "cancelled at epoch 2"
    assert describe_stop(None) is None


def test_off_a_terminal_one_line_per_epoch_ended_or_status_change():
    stream = io.StringIO()
    display = ProgressDisplay(stream)
    frames = (running(1, 0.9), running(1, 0.9, step=2), running(2, 0.7), running(2, 0.7, step=1))
    for job in frames:
        display.update(job)
    display.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "1/4 epochs" in lines[0]
    assert "2/4 epochs" in lines[1]


def test_on_a_terminal_the_line_is_rewritten_and_erased_at_close():
    stream = Terminal()
    display = ProgressDisplay(stream)
    display.update(running(1, 0.9))
    display.update(running(2, 0.7))
    display.close()
    shown = stream.getvalue()
    assert shown.count("\r") == 4
    assert shown.endswith("\r")
    assert "\n" not in shown
