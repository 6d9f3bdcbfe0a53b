"""What a person sees while a run trains (``asvae_kit.progress``) and the averaged loss rows behind
it (``asvae_kit.loss_history``)."""

from __future__ import annotations

import io
import math

import pytest
import torch

import asvae_kit
from asvae_kit.loss_history import LossHistory
from asvae_kit.progress import Progress, format_duration, progress_mode


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_a_bar_on_a_terminal_lines_elsewhere():
    assert progress_mode(None, _Stream(True)) == "bar" and progress_mode(None, _Stream(False)) == "lines"
    assert progress_mode(True) == "bar" and progress_mode(False) == "off" and progress_mode("lines") == "lines"
    with pytest.raises(ValueError, match="progress='loud'"):
        progress_mode("loud")


def test_a_line_per_row_with_rate_and_eta():
    out = _Stream(False)
    shown = Progress("lines", total=100, initial=0, stream=out)
    shown.row({"step": 50, "d_loss": 1.25, "g_loss": 3.5, "time_s": 5.0, "steps_per_s": 10.0})
    shown.close()
    line = out.getvalue().strip()
    assert line == "step  50/100 d_loss=1.25 g_loss=3.5  10 steps/s  ETA 5s", line
    assert format_duration(187) == "3m07s" and format_duration(3725) == "1h02m"


def test_off_prints_nothing():
    out = _Stream(False)
    shown = Progress("off", total=10, initial=0, stream=out)
    shown.advance()
    shown.row({"step": 1, "g_loss": 1.0, "steps_per_s": 1.0})
    assert out.getvalue() == ""


def test_fit_off_a_terminal_prints_lines(capsys):
    asvae_kit.build("mlp-vae", steps=4, log_every=2, batch_size=8, device="cpu").fit()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"] and all("ETA" in line for line in lines)


def test_loss_rows_average_the_steps_since_the_last_row():
    log = LossHistory()
    log.start(0)
    for v in (1.0, 2.0, 6.0):
        log.add({"g_loss": torch.tensor(v)})
    assert log.pending
    row = log.row(3)
    assert row["step"] == 3 and row["g_loss"] == pytest.approx(3.0) and not log.pending
    assert row["time_s"] >= 0 and (row["steps_per_s"] > 0 or math.isnan(row["steps_per_s"]))
    log.start(3)  # a later fit call: time continues from the last row
    log.add({"g_loss": torch.tensor(1.0)})
    assert log.row(4)["time_s"] >= row["time_s"] and len(log.history) == 2
