"""The run directory (``asvae_kit.rundir``): what it refuses, the lock, file modes, checkpoints as
units that survive SIGKILL at any moment, a full disk."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import TINY, train_tiny

import asvae_kit
from asvae_kit.cli import main
from asvae_kit.errors import RunDirectoryError
from asvae_kit.rundir import LOCK_FILE, RunLock, check_output_dir


def test_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json.bak").write_text("precious")
    (out / "metrics.csv").write_text("my,own\n")
    assert train_tiny(out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json.bak", "metrics.csv"]
    assert (out / "metrics.csv").read_text() == "my,own\n"
    assert train_tiny(out, "--overwrite") == 0 and (out / "model.safetensors").is_file()


def test_out_that_is_a_file_is_refused_before_building(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert train_tiny(target) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    with pytest.raises(RunDirectoryError):
        check_output_dir(target)


def test_the_lock_names_its_holder_and_is_broken_when_stale(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": "then"}))
        with pytest.raises(RunDirectoryError, match=f"process {live.pid}"):
            RunLock(run).acquire()
        trainer = asvae_kit.build("mlp-vae", steps=2, device="cpu", **{"encoder.hidden": [16], "decoder.hidden": [16]})
        with pytest.raises(RunDirectoryError, match="being written by"):
            trainer.fit(run_dir=run, progress=False)
    finally:
        live.kill()
        live.wait()
    # the holder is gone: its lock is stale and is taken over
    trainer.fit(run_dir=run, progress=False)
    assert trainer.step == 2 and not (run / LOCK_FILE).exists()


@pytest.mark.parametrize("limit", [1, 9, 20])
def test_any_data_set_of_at_least_one_image_trains_and_saves(tmp_path, limit):
    out = tmp_path / f"run{limit}"
    assert train_tiny(out, "--set", f"data.limit={limit}") == 0
    assert (out / "model.safetensors").is_file() and (out / "reconstructions.png").is_file()


def test_files_follow_the_umask_and_stale_temporaries_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".model.safetensors.abc123.tmp").write_bytes(b"half a file")
    (run / "checkpoints" / ".step-0000009.xyz.tmp").mkdir(parents=True)  # a half-written checkpoint
    old = os.umask(0o022)
    try:
        assert train_tiny(run, "--overwrite") == 0
    finally:
        os.umask(old)
    assert not list(run.glob(".*.tmp"))
    for name in ("config.json", "model.safetensors", "latest", "samples.png", "checkpoints/step-0000003/trainer_state.pt"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name
    assert (run / "checkpoints" / "step-0000003").stat().st_mode & 0o777 == 0o755


def test_time_continues_across_resumes(tmp_path):
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    assert main(["train", "--resume", "--steps", "6", "--no-progress", "--out", str(run)]) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    times = [float(r["time_s"]) for r in rows]
    assert len(times) == 2 and times[1] > times[0]


def _weights_equal(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_checkpoints_are_units_kept_two_at_a_time_and_a_torn_pair_is_refused(tmp_path):
    from asvae_kit.rundir.checkpoint import checkpoint_names

    run = tmp_path / "run"
    trainer = asvae_kit.build("mlp-vae", steps=12, checkpoint_every=3, device="cpu", **{"encoder.hidden": [16], "decoder.hidden": [16]})
    trainer.fit(run_dir=run, progress=False)
    # steps 3, 6, 9, 12 were saved, 12 twice (the checkpoint, then the final save): the last 2 remain
    assert checkpoint_names(run) == ["step-0000012", "step-0000012.1"]
    assert (run / "latest").read_text().strip() == "step-0000012.1"
    assert _weights_equal(run / "model.safetensors", run / "checkpoints" / "step-0000012.1" / "model.safetensors")
    assert asvae_kit.load(run).step == 12
    # tear one: weights of step 12, state of step 3 (as a kill between two renames left them in 0.1)
    other = tmp_path / "other"
    asvae_kit.build("mlp-vae", steps=3, device="cpu", **{"encoder.hidden": [16], "decoder.hidden": [16]}).fit(run_dir=other, progress=False)
    torn = run / "checkpoints" / "step-0000012.1" / "trainer_state.pt"
    torn.write_bytes((other / "checkpoints" / "step-0000003" / "trainer_state.pt").read_bytes())
    with pytest.raises(asvae_kit.CheckpointError, match=r"\(step 12\).*\(step 3\) are not one checkpoint"):
        asvae_kit.load(run)


def test_a_torn_pair_in_the_old_layout_is_refused_with_the_way_out(tmp_path):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    trainer = asvae_kit.build("mlp-vae", steps=4, device="cpu", **{"encoder.hidden": [16], "decoder.hidden": [16]})
    trainer.fit(run_dir=run, progress=False)
    folder = run / "checkpoints" / "step-0000004"
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    # the 0.1 layout: both files at the top, no `latest`, no run id; weights from step 4, state from step 2
    for p in (run / "latest",):
        p.unlink()
    save_file(load_file(str(folder / "model.safetensors")), str(run / "model.safetensors"), metadata={"format": "pt", "step": "4"})
    state.pop("run_id")
    torch.save({**state, "step": 2}, run / "trainer_state.pt")
    with pytest.raises(asvae_kit.CheckpointError, match="copy model.safetensors and config.json into a new folder"):
        asvae_kit.load(run)
    torch.save({**state, "step": 4}, run / "trainer_state.pt")  # a whole 0.1 pair still loads
    assert asvae_kit.load(run).step == 4


def test_sigkill_at_random_moments_always_leaves_a_run_that_resumes_bit_exact(tmp_path):
    """A run killed (SIGKILL) at 20 random moments, each time resumed, ends bit for bit where an
    unbroken run ends; after every kill the run directory loads."""
    import random

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 800  # long enough that 20 kills land before it finishes, even on a fast machine

    def command(run: Path, resume: bool) -> list[str]:
        base = [sys.executable, "-m", "asvae_kit", "train", "--steps", str(steps), "--no-progress", "--out", str(run)]
        if resume:
            return base[:4] + ["--resume"] + base[4:]
        return [*base, "--preset", "mlp-vae", "--batch-size", "8", "--checkpoint-every", "2", "--sample-every", "7",
                "--log-every", "5", *TINY]

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert subprocess.run(command(whole, False), env=env, capture_output=True).returncode == 0
    rng = random.Random(0)
    kills, started = 0, time.monotonic()
    while kills < 20 and time.monotonic() - started < 240:
        resume = (broken / "latest").is_file()
        proc = subprocess.Popen(command(broken, resume), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(1.5, 3.0))  # python and torch take ~1.5 s to start; then it trains and saves
        if proc.poll() is not None:
            break  # it finished before the kill
        proc.kill()
        proc.wait()
        kills += 1
        if (broken / "latest").is_file():
            assert 0 < asvae_kit.load(broken).step <= steps
    assert kills >= 20, f"only {kills} kills landed before the run finished"
    final = subprocess.run(command(broken, (broken / "latest").is_file()), env=env, capture_output=True, text=True)
    assert final.returncode in (0, 2), final.stderr  # 2: the last attempt had already finished it
    assert asvae_kit.load(broken).step == steps
    assert _weights_equal(whole / "model.safetensors", broken / "model.safetensors")


def test_a_full_disk_is_a_checkpoint_error_and_the_previous_checkpoint_survives(tmp_path, monkeypatch):
    import asvae_kit.rundir.checkpoint as checkpoint

    run = tmp_path / "run"
    trainer = asvae_kit.build("mlp-vae", steps=2, device="cpu", **{"encoder.hidden": [16], "decoder.hidden": [16]})
    trainer.fit(run_dir=run, progress=False)

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/3: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(asvae_kit.CheckpointError, match=r"step 4 .*step-0000002\) is intact"):
        trainer.fit(4, progress=False)
    monkeypatch.undo()
    assert not list((run / "checkpoints").glob(".*"))  # the half-written folder is gone
    assert asvae_kit.load(run).step == 2
