"""Divergence: the guard's yardstick (``asvae_kit.guard``), and a run that explodes stops before
it saves and resumes with a lower learning rate."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import TINY

import asvae_kit
from asvae_kit.cli import main
from asvae_kit.errors import TrainingDivergedError
from asvae_kit.guard import DivergenceGuard


def test_divergence_guard_yardstick():
    guard = DivergenceGuard(1000)
    assert guard.check("g_loss", 45.0) is None
    for v in (40.0, 38.0, 37.0):
        assert guard.check("g_loss", v) is None
    assert "over 1000 times" in guard.check("g_loss", 5e13)
    assert "nan" in guard.check("g_loss", float("nan"))
    assert DivergenceGuard(0).check("g_loss", 1e30) is None  # off
    assert DivergenceGuard(0).check("g_loss", float("inf")) is not None  # but never for inf


def test_an_exploding_run_stops_before_saving_and_resumes_with_a_lower_lr(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "mlp-vae", "--steps", "60", "--batch-size", "8", "--checkpoint-every", "10", "--no-progress", *TINY]
    assert main([*args, "--out", str(run)]) == 0
    before = load_file(str(run / "model.safetensors"))
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "200", "--lr", "1.0", "--no-progress", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "TrainingDivergedError" in err and re.search(r"at step 6[1-9] ", err) and "(step 60) is intact" in err and "--resume" in err
    after = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the good checkpoint was not replaced
    assert main(["train", "--resume", "--steps", "70", "--lr", "1e-4", "--no-progress", "--out", str(run)]) == 0
    trainer = asvae_kit.load(run)
    assert trainer.step == 70 and trainer.gen_optimizer.param_groups[0]["lr"] == 1e-4


def test_divergence_without_a_checkpoint_says_so():
    trainer = asvae_kit.build("mlp-vae", steps=50, device="cpu", **{"optim.lr": 1.0})
    with pytest.raises(TrainingDivergedError, match="no checkpoint of this run was written"):
        trainer.fit(progress=False)
