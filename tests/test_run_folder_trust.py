"""The run folder trusts nothing it did not write (issue 20), and requeue-safe launches.

``train --resume-if-exists`` (config ``resume: if-exists``): one command line that starts a run and
resumes it after a kill; a run is recognised by its own mark, never by file names alone; the
check of a folder and its lock are one step; ``latest`` resolves only into the run's
``checkpoints/``; pruning removes only the run's own checkpoints; no run file is written through
a link; no error message quotes a file; one checkpoint per step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import TINY, train_tiny

import asvae_kit
import asvae_kit.builder
from asvae_kit.cli import main
from asvae_kit.errors import CheckpointError, RunDirectoryError
from asvae_kit.rundir import LOCK_FILE, MARKER_FILE, RunDirectory, is_run_dir
from asvae_kit.rundir.checkpoint import checkpoint_names, checkpoint_run_id

#: ``train`` of a tiny mlp-vae, 8 steps, a checkpoint every 2; ``--resume-if-exists``.  One thread,
#: so runs in this process and in a fresh interpreter compute the same bits.
def _argv(out: Path, *extra: str, steps: int = 8) -> list[str]:
    return ["train", "--preset", "mlp-vae", "--steps", str(steps), "--batch-size", "8", "--checkpoint-every", "2",
            "--log-every", "2", "--sample-every", "0", "--threads", "1", "--no-progress", *TINY, "--resume-if-exists",
            "--out", str(out), *extra]


def _weights_equal(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every file under ``folder`` (links as their target), to compare byte for byte."""
    return {str(p.relative_to(folder)): (f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# -- --resume-if-exists ---------------------------------------------------------------------------


def test_resume_if_exists_starts_a_run_then_resumes_it_where_a_crash_left_it(tmp_path, capsys, monkeypatch):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert main(_argv(whole)) == 0
    assert "(from step 0)" in capsys.readouterr().err  # the first call starts the run

    real_step = asvae_kit.trainer.Trainer.train_step

    def crash_at_step_5(self, x):
        if self.step == 4:
            raise RuntimeError("the node went away")
        return real_step(self, x)

    monkeypatch.setattr(asvae_kit.trainer.Trainer, "train_step", crash_at_step_5)
    assert main(_argv(broken)) == 2
    monkeypatch.undo()
    assert asvae_kit.load(broken).step == 4
    # what a SIGKILL leaves besides: the dead process's lock and a half-written file
    (broken / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"}))
    (broken / ".config.json.k1lled0x.tmp").write_text("{")
    capsys.readouterr()
    assert main(_argv(broken)) == 0  # the same command line resumes
    assert "resuming" in capsys.readouterr().err
    assert asvae_kit.load(broken).step == 8 and _weights_equal(whole, broken)
    assert not (broken / LOCK_FILE).exists() and not list(broken.glob(".*.tmp"))


def test_the_config_key_resume_and_a_changed_command(tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "requeue.yaml"
    config.write_text("preset: mlp-vae\nresume: if-exists\nsteps: 4\ncheckpoint_every: 2\nbatch_size: 8\nlatent_dim: 4\n")
    command = ["train", "--config", str(config), "--no-progress", "--out", str(run)]
    assert main(command) == 0 and asvae_kit.load(run).step == 4
    assert asvae_kit.load(run).config["resume"] == "if-exists"
    capsys.readouterr()
    before = _snapshot(run)
    assert main(command) == 0  # a finished run: the same command does nothing more, and touches nothing
    assert "already at step 4 of 4: nothing to do" in capsys.readouterr().err
    assert _snapshot(run) == before
    assert main([*command, "--set", "latent_dim=3"]) == 2  # not the command that started it
    err = _one_line(capsys.readouterr().err)
    assert "configured differently from this command (latent_dim)" in err and "choose another --out" in err
    assert _snapshot(run) == before
    assert main([*command, "--resume"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert main([*command, "--steps", "6"]) == 0  # a larger total continues it
    assert asvae_kit.load(run).step == 6
    assert main(["train", "--set", "resume=if-exist", "--out", str(tmp_path / "x")]) == 2
    assert "config 'resume' must be one of 'if-exists', got 'if-exist'. Did you mean 'if-exists'?" in capsys.readouterr().err
    assert main(["train", "--preset", "mlp-vae", "--resume-if-exists", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["resume"] == "if-exists"


#: Runs ``asvae-kit train`` (argv in sys.argv[1]) and SIGKILLs itself right before the second
#: checkpoint folder is renamed into place (an audit hook, PEP 578): the first checkpoint is
#: published, the second half-written, the lock left behind.
_KILLED_TRAIN = r"""
import json, os, signal, sys
from asvae_kit.cli import main

renames = 0

def hook(event, args):
    global renames
    if event == "os.rename":
        target = os.fsdecode(args[1])
        if os.path.basename(os.path.dirname(target)) == "checkpoints" and os.path.basename(target).startswith("step-"):
            renames += 1
            if renames == 2:
                os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
sys.exit(main(json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_resume_if_exists_after_a_sigkill_ends_where_an_unbroken_run_ends(tmp_path, capsys):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", _KILLED_TRAIN, json.dumps(_argv(broken))], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "(from step 0)" in killed.stderr  # the first call started the run
    assert (broken / LOCK_FILE).is_file() and asvae_kit.load(broken).step == 2
    assert main(_argv(broken)) == 0  # the same command line, as a requeue runs it
    assert "resuming" in capsys.readouterr().err
    assert main(_argv(whole)) == 0
    assert asvae_kit.load(broken).step == 8 and _weights_equal(whole, broken)
    assert not [p for p in broken.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_FILE]


# -- a run is recognised by its own mark ----------------------------------------------------------


def test_another_tools_folder_is_refused_untouched_whatever_its_file_names(tmp_path, capsys):
    from safetensors.torch import save_file

    other = tmp_path / "hf-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 8}))
    save_file({"w": torch.ones(2)}, str(other / "model.safetensors"))
    (other / "samples.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = _snapshot(other)
    assert not is_run_dir(other)
    for extra in ([], ["--resume-if-exists"]):
        assert train_tiny(other, *extra) == 2
        err = _one_line(capsys.readouterr().err)
        assert str(other) in err and "holds no asvae-kit run" in err and "choose another --out, or pass --overwrite" in err
    assert main(["train", "--resume", "--out", str(other)]) == 2
    assert "holds no asvae-kit run to continue" in _one_line(capsys.readouterr().err)
    with pytest.raises(CheckpointError, match="is not a config asvae-kit wrote"):
        asvae_kit.load(other)
    assert _snapshot(other) == before  # byte for byte, and not even a lock file left
    assert train_tiny(other, "--overwrite") == 0 and is_run_dir(other) and asvae_kit.load(other).step == 3


def test_the_marker_names_the_run_and_older_runs_are_known_by_their_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    marker = json.loads((run / MARKER_FILE).read_text())
    assert marker["format"] == "asvae-kit run" and marker["asvae_kit_version"] == asvae_kit.__version__
    assert marker["run_id"] == asvae_kit.load(run).run_id == checkpoint_run_id(run / "checkpoints" / "step-0000003")
    (run / MARKER_FILE).unlink()  # a run from before the marker: its config.json is asvae-kit's
    assert is_run_dir(run)
    assert main(["train", "--resume", "--steps", "4", "--no-progress", "--out", str(run)]) == 0
    assert json.loads((run / MARKER_FILE).read_text())["run_id"] == marker["run_id"]  # marked again, same run


# -- checking and locking are one step ------------------------------------------------------------


@pytest.mark.parametrize("extra", [(), ("--resume-if-exists",)])
def test_a_second_train_on_a_folder_another_is_writing_is_refused_before_it_decides(tmp_path, capsys, monkeypatch, extra):
    """The first train is still running (no checkpoint yet); the second must not decide on what it
    sees and then take the lock once the first has finished: that replaced the first run."""
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    for name in ("latest", "model.safetensors"):  # the first run as it is before its first checkpoint
        (run / name).unlink()
    shutil.rmtree(run / "checkpoints")
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    built = []
    real_build = asvae_kit.builder.build_from_config

    def first_finishes_meanwhile(*args, **kwargs):  # the moment the old race lost the first run
        built.append(True)
        first.kill()
        first.wait()
        (run / LOCK_FILE).unlink()
        return real_build(*args, **kwargs)

    try:
        (run / LOCK_FILE).write_text(json.dumps({"pid": first.pid, "host": socket.gethostname(), "started": "now"}))
        before = _snapshot(run)
        monkeypatch.setattr(asvae_kit.builder, "build_from_config", first_finishes_meanwhile)
        capsys.readouterr()
        assert train_tiny(run, *extra) == 2
        err = _one_line(capsys.readouterr().err)
        assert f"is being written by process {first.pid}" in err and "wait for it to finish" in err
        assert not built and _snapshot(run) == before  # refused before building, the first's files intact
    finally:
        first.kill()
        first.wait()


# -- latest ---------------------------------------------------------------------------------------


def test_latest_resolves_only_into_the_runs_checkpoints_and_is_never_quoted(tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other-run"
    assert train_tiny(run) == 0 and train_tiny(other) == 0
    capsys.readouterr()
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET step-0000003\n")
    latest = run / "latest"
    for bad in ("../../other-run/checkpoints/step-0000003", str(other / "checkpoints" / "step-0000003"), "step-0000003/../..", "TOPSECRET"):
        latest.write_text(bad + "\n")
        with pytest.raises(CheckpointError, match="does not name a checkpoint folder of") as caught:
            asvae_kit.load(run)
        assert bad not in str(caught.value) and "available: step-0000003" in str(caught.value)
        assert main(["train", "--resume", "--steps", "5", "--out", str(run)]) == 2
        err = _one_line(capsys.readouterr().err)
        assert bad not in err and str(latest) in err
    latest.unlink()
    latest.symlink_to(secret)
    commands = [
        ["train", "--resume", "--steps", "5", "--out", str(run)],
        ["train", "--preset", "mlp-vae", *TINY, "--resume-if-exists", "--out", str(run)],
        ["train", "--preset", "mlp-vae", *TINY, "--out", str(run)],
        ["sample", str(run), "-o", str(tmp_path / "s.png")],
    ]
    for command in commands:
        assert main(command) == 2
        err = _one_line(capsys.readouterr().err)
        assert "TOPSECRET" not in err and "is a symbolic link" in err and str(latest) in err
    with pytest.raises(CheckpointError) as caught:
        asvae_kit.load(run)
    assert "TOPSECRET" not in str(caught.value)
    assert secret.read_text() == "TOPSECRET step-0000003\n"


# -- pruning --------------------------------------------------------------------------------------


def test_pruning_removes_only_this_runs_checkpoints_not_a_run_nested_under_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "mlp-vae", "--steps", "2", "--batch-size", "8", "--checkpoint-every", "1",
                 "--no-progress", *TINY, "--set", "keep_checkpoints=1", "--out", str(run)]) == 0
    nested = run / "checkpoints" / "step-0000001"  # someone trained a whole run there, after ours pruned it
    assert not nested.exists()
    assert train_tiny(nested) == 0
    before = _snapshot(nested)
    own_id = asvae_kit.load(run).run_id
    assert main(["train", "--resume", "--steps", "4", "--no-progress", "--out", str(run)]) == 0
    assert _snapshot(nested) == before and asvae_kit.load(nested).step == 3
    assert checkpoint_names(run, own_id) == ["step-0000004"]  # keep_checkpoints=1 of its own
    assert checkpoint_names(run) == ["step-0000001", "step-0000004"]


def test_the_final_save_keeps_one_state_per_step(tmp_path):
    run = tmp_path / "run"
    small = {"encoder.hidden": [16], "decoder.hidden": [16]}
    # log_every=0: the row of the last step is logged after its checkpoint, so the final save is a new
    # state of that step; it replaces the earlier one instead of keeping both
    trainer = asvae_kit.build("mlp-vae", steps=4, checkpoint_every=2, log_every=0, keep_checkpoints=3, device="cpu", **small)
    trainer.fit(run_dir=run, progress=False)
    names = checkpoint_names(run)
    assert [n.split(".")[0] for n in names] == ["step-0000002", "step-0000004"], names
    assert (run / "latest").read_text().strip() == names[-1]
    assert len(asvae_kit.load(run).history) == 1
    trainer.fit(progress=False)  # nothing left to train: nothing new is written
    assert checkpoint_names(run) == names


# -- files are never written through links; foreign and garbled files ------------------------------


@pytest.mark.parametrize("name", ["metrics.csv", "config.json", "samples.png", MARKER_FILE, "images"])
def test_run_files_are_never_written_through_a_symbolic_link(tmp_path, capsys, name):
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    target = tmp_path / "elsewhere"
    if name == "images":
        shutil.move(run / name, target)
    else:
        target.write_bytes((run / name).read_bytes())
    before = _snapshot(tmp_path / "elsewhere") if target.is_dir() else target.read_bytes()
    shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(target)
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "5", "--sample-every", "1", "--no-progress", "--out", str(run)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{run / name} is a symbolic link" in err and "remove the link" in err
    assert (_snapshot(target) if target.is_dir() else target.read_bytes()) == before
    assert asvae_kit.load(run).step == 3  # nothing was trained past the refusal


def test_a_lock_file_that_is_a_link_is_refused_and_left_alone(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    target = tmp_path / "precious"
    target.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"}))
    (run / LOCK_FILE).symlink_to(target)
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "5", "--no-progress", "--out", str(run)]) == 2
    assert f"{run / LOCK_FILE} is a symbolic link, not asvae-kit's lock file" in _one_line(capsys.readouterr().err)
    assert (run / LOCK_FILE).is_symlink() and target.is_file()


@pytest.mark.parametrize("content, phrase", [
    (b"epoch,loss\n1,0.5\n", "has a header asvae-kit did not write"),
    (b"\x00\xff\xfe\x89binary\x00\n", "cannot be read as asvae-kit's CSV"),
])
def test_a_foreign_or_garbled_metrics_file_is_refused_not_rewritten(tmp_path, capsys, content, phrase):
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    (run / "metrics.csv").write_bytes(content)
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "5", "--no-progress", "--out", str(run)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{run / 'metrics.csv'} " in err and phrase in err and "move it away" in err
    assert (run / "metrics.csv").read_bytes() == content
    fresh = tmp_path / "fresh"  # a new run in a run folder whose metrics.csv is not asvae-kit's: refused, not emptied
    fresh.mkdir()
    (fresh / MARKER_FILE).write_text(json.dumps({"format": "asvae-kit run", "run_id": "x"}))
    (fresh / "metrics.csv").write_bytes(content)
    with pytest.raises(RunDirectoryError, match="metrics.csv"):
        asvae_kit.build("mlp-vae", steps=1, device="cpu", **{"encoder.hidden": [8], "decoder.hidden": [8]}).fit(run_dir=fresh, progress=False)
    assert (fresh / "metrics.csv").read_bytes() == content
    trainer = asvae_kit.build("mlp-vae", steps=1, device="cpu", **{"encoder.hidden": [8], "decoder.hidden": [8]})
    trainer.fit(run_dir=RunDirectory(fresh, overwrite=True), progress=False)  # --overwrite: replaced
    assert (fresh / "metrics.csv").read_text().startswith("step,")


def test_a_dangling_out_link_and_a_config_that_is_a_list_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "missing")
    assert train_tiny(out) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"--out {out} is a symbolic link to {tmp_path / 'missing'}, which does not exist" in err and "create that folder" in err
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    (run / "config.json").write_text("[1, 2, 3]\n")
    with pytest.raises(CheckpointError, match=r"config.json holds a list, not the JSON object asvae-kit writes"):
        asvae_kit.load(run)
    capsys.readouterr()
    for command in (["train", "--resume", "--steps", "5", "--out", str(run)], ["evaluate", str(run)]):
        assert main(command) == 2
        err = _one_line(capsys.readouterr().err)
        assert f"{run / 'config.json'} holds a list" in err and "restore the run's config.json" in err
    (run / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="is not UTF-8 text"):
        asvae_kit.load(run)


# -- stale locks: who may take them over ------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: Path, **record) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "started": "then", **record}))


def test_a_stale_lock_judged_by_two_processes_is_taken_over_by_one(tmp_path, monkeypatch):
    """Two relaunched copies both find the dead writer's lock stale; the first breaks it and takes
    the lock; the second, acting on what it read before, must not remove the first's lock."""
    from asvae_kit.rundir import RunLock

    run = tmp_path / "run"
    _write_lock(run, pid=_dead_pid())
    second = RunLock(run)
    stale = second._raw()  # what the second copy read and judged stale
    assert stale and second._stale(second._holder(), {"pid": os.getpid(), "host": socket.gethostname(), "job": None, "attempt": 0})
    first = RunLock(run).acquire()  # the first copy breaks the stale lock and takes it
    assert first.held
    taken = (run / LOCK_FILE).read_bytes()
    assert second._break(stale) is False  # the second finds another lock there now and leaves it
    assert (run / LOCK_FILE).read_bytes() == taken
    first.release()


def test_a_lock_of_an_earlier_attempt_of_the_same_job_is_stale_on_any_host(tmp_path, monkeypatch):
    from asvae_kit.rundir import RunLock

    run = tmp_path / "run"
    _write_lock(run, pid=1, host="node-that-died", job="TORCHELASTIC_RUN_ID=abc", attempt=0)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with RunLock(run) as lock:  # the relaunched attempt takes it over
        assert lock.held and json.loads((run / LOCK_FILE).read_text())["attempt"] == 1
    _write_lock(run, pid=1, host="node-that-lives", job="TORCHELASTIC_RUN_ID=other", attempt=0)
    with pytest.raises(RunDirectoryError, match="being written by process 1 on node-that-lives"):
        RunLock(run).acquire()  # another job's lock on another host: never taken over


def test_a_reused_pid_does_not_keep_a_dead_writers_lock(tmp_path):
    from asvae_kit.rundir import RunLock

    run = tmp_path / "run"
    _write_lock(run, pid=os.getpid(), process_start="1")  # this pid, but a process that started at tick 1
    with RunLock(run) as lock:
        assert lock.held  # taken over (and released afterwards), not mistaken for this process's own
    assert not (run / LOCK_FILE).exists()


def test_a_users_own_hidden_tmp_files_are_neither_ignored_nor_deleted(tmp_path, capsys):
    folder = tmp_path / "notes"
    (folder / ".draft.tmp").mkdir(parents=True)
    (folder / ".draft.tmp" / "notes.txt").write_text("mine")
    (folder / ".old.tmp").write_text("mine too")
    (folder / ".my.backup1.tmp").write_text("and this")
    before = _snapshot(folder)
    assert train_tiny(folder) == 2  # not an empty folder: refused, untouched
    err = capsys.readouterr().err
    assert str(folder) in err and "--overwrite" in err
    assert _snapshot(folder) == before


def test_the_python_api_refuses_another_tools_folder_too(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "hf-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    save_file({"w": torch.ones(2)}, str(other / "model.safetensors"))
    before = _snapshot(other)
    trainer = asvae_kit.build("mlp-vae", steps=1, batch_size=8, latent_dim=4, **{"encoder.hidden": [8], "decoder.hidden": [8]})
    with pytest.raises(RunDirectoryError, match="holds no asvae-kit run"):
        trainer.fit(run_dir=other, progress=False)
    with pytest.raises(RunDirectoryError, match="holds no asvae-kit run"):
        trainer.save(other)
    assert _snapshot(other) == before
    trainer.save(tmp_path / "fresh")  # a new folder is fine
    assert is_run_dir(tmp_path / "fresh")
