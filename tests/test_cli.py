"""The asvae-kit command line, in process and as a real subprocess."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import train_tiny

import asvae_kit
from asvae_kit.cli import main


def test_list_and_json(capsys):
    assert main(["list", "encoders"]) == 0
    out = capsys.readouterr().out
    assert "mlp-implicit" in out and "resnet" in out and "joint-mlp" not in out
    assert main(["list", "preset", "--filter", "*-asvae", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["dcgan-asvae", "mlp-asvae", "resnet-asvae"]


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
    with pytest.raises(asvae_kit.UnknownComponentError):  # --debug lets the real exception through
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
    assert set(result["metrics"]) == {"recon_mse", "mean_image_mse"}
    assert result["split"] == "test" and "held-out" in result["source"] and result["notes"] == {}
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


@pytest.mark.slow
def test_evaluate_reports_the_five_metrics_on_the_test_split(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "mlp-asvae", "--steps", "3", "--batch-size", "8", "--set", "encoder.hidden=[16]",
                 "--set", "latent_dim=3", "--set", "eval_size=64", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--metrics", "recon,nll:k=4:n=8,fd,skl,probe"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert {"recon_mse", "recon_bce", "nll", "fd", "fd_train", "skl", "probe_acc"} <= set(result["metrics"])
    assert result["n_images"] == 64 and result["metrics"]["nll_k"] == 4
    assert "training the project classifier" in captured.err  # the first fd trains (then caches) it
    assert main(["evaluate", str(run), "--metrics", "recon", "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("split: train:") and "recon_mse" in out


def test_evaluate_and_reconstruct_on_the_validation_split(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(run, "--set", "eval_size=100") == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "val", "--json", "--metrics", "recon,nll:k=2:n=4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["n_images"] == 100
    assert result["source"] == ("a validation slice of digits (162 of 1797 images, never trained on; for tuning, not for final numbers); "
                                "the first 100 of them evaluated (eval_size=100)")
    assert main(["evaluate", str(run), "--split", "val", "--metrics", "recon"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("split: val: a validation slice of digits") and "100 images evaluated" in captured.out
    assert "on the val split" in captured.err
    assert main(["sample", str(run), "--reconstruct", "--split", "val", "-n", "8", "-o", str(tmp_path / "r.png")]) == 0
    assert "reconstructing the first 8 images of the val split: a validation slice of digits" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--metrics", "nll:kk=2"]) == 2  # a misspelt option: one line, did-you-mean
    assert "Did you mean 'k'" in capsys.readouterr().err
    from asvae_kit.cli import SPLIT_CHOICES
    from asvae_kit.splits import SPLITS

    assert sorted(SPLIT_CHOICES) == sorted(SPLITS)


def test_evaluate_explains_a_metric_that_does_not_apply(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "mlp-vae", "--steps", "2", "--batch-size", "8", "--set", "encoder.hidden=[16]",
                 "--set", "metrics=[\"recon\", \"skl\"]", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0  # the run's own metric list: skl becomes a note
    out = capsys.readouterr().out
    assert "recon_mse" in out and "skl" in out and "n/a: divergence 'elbo' has no symmetric-KL estimate" in out
    assert main(["evaluate", str(run), "--metrics", "skl"]) == 2  # asked for by name: an error
    assert "symmetric-KL" in capsys.readouterr().err


def test_sample_interpolate_and_reconstruct(tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "run"
    assert main(["train", "--preset", "mlp-vae", "--steps", "2", "--batch-size", "8", "--set", "encoder.hidden=[16]",
                 "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--interpolate", "-n", "3", "--steps", "5", "-o", str(tmp_path / "i.png")]) == 0
    width, height = Image.open(tmp_path / "i.png").size
    assert width > height and round(width / height) == 2  # 3 rows of 5 cells (plus padding)
    assert main(["sample", str(run), "--reconstruct", "-n", "12", "-o", str(tmp_path / "r.png")]) == 0
    assert "held-out" in capsys.readouterr().err
    width, height = Image.open(tmp_path / "r.png").size
    assert width / height == pytest.approx(2.0, rel=0.1)  # 8 columns, 4 rows: 8 + 4 padded, each above its reconstruction
    with pytest.raises(SystemExit) as exited:  # argparse refuses the pair
        main(["sample", str(run), "--interpolate", "--reconstruct", "-o", str(tmp_path / "x.png")])
    assert exited.value.code == 2


@pytest.mark.parametrize("preset", ["mlp-vae", "mlp-avb", "mlp-ali", "mlp-asvae", "resnet-vae", "resnet-avb", "resnet-ali", "resnet-asvae"])
def test_cli_trains_preset(preset, tmp_path, capsys):
    out = tmp_path / preset
    rc = main(["train", "--preset", preset, "--steps", "2", "--batch-size", "8", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    for name in ("config.json", "model.safetensors", "latest", "metrics.csv", "samples.png"):
        assert (out / name).is_file(), name
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and rows[-1]["step"] == "2"
    losses = {k: float(v) for k, v in rows[-1].items() if k.endswith("loss")}
    assert "g_loss" in losses and all(math.isfinite(v) for v in losses.values()), rows[-1]


def test_resume_of_a_finished_run_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--no-progress", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already finished" in err and "pass --steps N with N > 3" in err


# ------------------------------------------------------------------------------------------------
# the small frictions


def test_version_and_one_line_argument_errors_with_did_you_mean(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith(f"asvae-kit {asvae_kit.__version__} (torch ")
    for argv, hint in [(["trian"], "Did you mean 'train'?"), (["train", "--presett", "x"], "Did you mean '--preset'?"),
                       (["evaluate", "run", "--split", "tset"], "Did you mean 'test'?")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and hint in err and len(err.strip().splitlines()) == 1, err


def test_train_needs_out_unless_printing_the_config(capsys):
    assert main(["train", "--preset", "mlp-vae"]) == 2
    assert "train needs --out DIR" in capsys.readouterr().err


def test_config_files_print_and_reproduce_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(run, "--seed", "3") == 0
    capsys.readouterr()
    assert main(["train", "--config", str(run / "config.json"), "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((run / "config.json").read_text())
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "-q", "--out", str(again)]) == 0
    a, b = asvae_kit.load(run).state_tensors(), asvae_kit.load(again).state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name, text", [
    ("c.yaml", "preset: mlp-vae\nsteps: 7\nencoder:\n  hidden: [16]\n"),
    ("c.toml", 'preset = "mlp-vae"\nsteps = 7\n[encoder]\nhidden = [16]\n'),
    ("c.json", '{"preset": "mlp-vae", "steps": 7, "encoder": {"hidden": [16]}}'),
])
def test_config_file_formats_and_flags_over_them(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--config", str(path), "--batch-size", "5", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["steps"] == 7 and config["encoder"] == {"name": "mlp", "hidden": [16]} and config["batch_size"] == 5
    assert config["divergence"]["name"] == "elbo"


@pytest.mark.parametrize("name, text, phrase", [
    ("c.ini", "x", "the extension must be one of '.json', '.yaml', '.yml', '.toml', got '.ini'"),
    ("c.json", "{not json", "is not valid JSON"),
    ("c.json", "[1, 2]", "must hold a mapping"),
    ("c.json", '{"stpes": 3}', "Did you mean 'steps'"),
])
def test_bad_config_files_name_the_file(tmp_path, capsys, name, text, phrase):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert phrase in err and len(err.strip().splitlines()) == 1, err


def test_set_name_points_to_the_form_that_works(capsys):
    assert main(["train", "--preset", "mlp-vae", "--set", "encoder.name=resnet", "--print-config"]) == 2
    assert "--set encoder=NAME" in capsys.readouterr().err
    assert main(["train", "--preset", "mlp-vae", "--set", "encoder=resnet", "--print-config"]) == 0


@pytest.mark.parametrize("suffix, check", [
    (".png", lambda p: p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"),
    (".jpg", lambda p: p.read_bytes()[:3] == b"\xff\xd8\xff"),
    (".npy", lambda p: np.load(p).shape == (4, 1, 8, 8)),
    (".pt", lambda p: torch.load(p).shape == (4, 1, 8, 8)),
])
def test_sample_writes_the_format_its_extension_names(tmp_path, capsys, suffix, check):
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    out = tmp_path / f"s{suffix}"
    assert main(["sample", str(run), "-n", "4", "-o", str(out)]) == 0
    assert check(out)


def test_sample_refuses_an_unknown_extension_before_loading(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "no-run"), "-o", str(tmp_path / "s.gif")]) == 2
    assert "its extension must be one of '.png', '.jpg', '.jpeg', '.pt', '.npy', got '.gif'" in capsys.readouterr().err


def test_plot_writes_the_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    assert main(["train", "--preset", "mlp-asvae", "--steps", "6", "--log-every", "2", "--batch-size", "8", "-q",
                 "--set", "encoder.hidden=[16]", "--set", "decoder.hidden=[16]", "--set", "discriminator.hidden=[16]", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    png = run / "curves.png"
    assert capsys.readouterr().out.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    assert Image.open(png).size[0] >= 600
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.csv not found" in capsys.readouterr().err


def test_progress_lines_off_a_terminal_and_quiet(tmp_path, capsys):
    assert main(["train", "--preset", "mlp-vae", "--steps", "4", "--log-every", "2", "--batch-size", "8", "--out", str(tmp_path / "a")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and "ETA" in lines[0]
    assert main(["train", "--preset", "mlp-vae", "--steps", "4", "--log-every", "2", "--batch-size", "8", "-q", "--out", str(tmp_path / "b")]) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]


def test_did_you_mean_reads_quoted_and_bare_choice_lists(capsys):
    from asvae_kit.cli import make_parser

    parser = make_parser()
    for message in ("argument COMMAND: invalid choice: 'trian' (choose from 'train', 'sample')",
                    "argument COMMAND: invalid choice: 'trian' (choose from train, sample)"):
        with pytest.raises(SystemExit):
            parser.error(message)
        assert "Did you mean 'train'?" in capsys.readouterr().err


def test_yaml_numbers_and_a_preset_key_in_python(tmp_path):
    from asvae_kit.config import load_config_file

    path = tmp_path / "c.yaml"
    path.write_text("preset: mlp-vae\noptim:\n  lr: 1e-4\n")
    trainer = asvae_kit.build(load_config_file(path), device="cpu")
    assert trainer.config["optim"]["lr"] == 1e-4 and trainer.config["divergence"]["name"] == "elbo"


def test_print_config_of_a_resumed_run_is_the_runs(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(run) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", "9", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["divergence"]["name"] == "elbo" and config["steps"] == 9 and config["encoder"]["hidden"] == [32]
