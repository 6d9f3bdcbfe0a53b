"""The asvae-kit command line, in process and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asvae_kit.cli import main


def test_list_and_json(capsys):
    assert main(["list", "encoders"]) == 0
    out = capsys.readouterr().out
    assert "mlp-implicit" in out and "resnet" in out and "joint-mlp" not in out
    assert main(["list", "preset", "--filter", "*-asvae", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["mlp-asvae", "resnet-asvae"]


def test_describe(capsys):
    assert main(["describe", "asvae"]) == 0
    out = capsys.readouterr().out
    assert "divergence" in out and "lambda_x = 1.0" in out
    assert main(["describe", "mlp", "--json"]) == 0
    assert {d["kind"] for d in json.loads(capsys.readouterr().out)} == {"encoder", "decoder"}


def test_errors_are_one_line_without_traceback(capsys):
    assert main(["describe", "asvea"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'asvae'" in err and "Traceback" not in err
    with pytest.raises(Exception):
        main(["--debug", "describe", "asvea"])


def test_train_sample_evaluate_resume(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "mlp-asvae", "--steps", "4", "--batch-size", "8", "--log-every", "2", "--sample-every", "2",
            "--set", "encoder.hidden=[16]", "--set", "latent_dim=3", "--no-progress", "--out", str(run)]
    assert main(args) == 0
    assert "samples.png" in capsys.readouterr().out
    assert (run / "images" / "samples_0000002.png").is_file()
    assert main(args) == 2  # an existing run without --resume is refused
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", "--steps", "6", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "9", "-o", str(tmp_path / "s.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "s.png")
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size[0] > 3 * 8
    assert main(["evaluate", str(run), "--json", "--metrics", "reconstruction-mse"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"recon_mse", "mean_image_mse"}
    import asvae_kit

    assert asvae_kit.load(run).step == 6


def test_missing_run_dir(capsys, tmp_path):
    assert main(["sample", str(tmp_path / "none"), "-o", str(tmp_path / "x.png")]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_console_script_and_module_entry():
    exe = Path(sys.executable).with_name("asvae-kit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "asvae_kit"]
    out = subprocess.run([*cmd, "list", "divergence"], capture_output=True, text=True, check=True).stdout
    assert out.split()[0::1][0] == "ali" and "asvae" in out
    out = subprocess.run([sys.executable, "-m", "asvae_kit", "plugins", "--json"], capture_output=True, text=True, check=True).stdout
    assert all(r["status"] == "ok" for r in json.loads(out))


def test_data_dir_without_a_file_dataset_is_named(capsys, tmp_path):
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "add --data NAME" in capsys.readouterr().err


def test_resume_rejects_model_changes(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--preset", "mlp-vae", "--steps", "2", "--batch-size", "8", "--no-progress", "--out", str(run)]
    assert main(base) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--set", "latent_dim=3", "--out", str(run)]) == 2
    assert "keeps the run's model" in capsys.readouterr().err
    assert main(["train", "--resume", "--set", "log_every=-5", "--out", str(run)]) == 2
    assert "log_every" in capsys.readouterr().err
    import asvae_kit

    assert asvae_kit.load(run).config["log_every"] == 50  # nothing was written by the refused resumes
