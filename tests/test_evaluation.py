"""Held-out splits (asvae_kit/splits.py) and running metrics on them (asvae_kit/evaluation.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import asvae_kit
from asvae_kit.config import parse_metric
from asvae_kit.evaluation import Evaluation
from asvae_kit.plugin_manager import get_registry
from asvae_kit.splits import holdout_indices
from shared_data import SHARED_DATA, needs_fashion


def test_holdout_indices_partition_the_data_whatever_the_seed():
    train, held = holdout_indices(100, 0.1)
    assert len(held) == 10 and len(train) == 90
    assert sorted(torch.cat([train, held]).tolist()) == list(range(100))
    again_train, again_held = holdout_indices(100, 0.1)
    assert torch.equal(held, again_held)
    assert len(holdout_indices(2, 0.1)[1]) == 1 and len(holdout_indices(2, 0.1)[0]) == 1  # training keeps one
    assert len(holdout_indices(1, 0.5)[1]) == 0
    assert len(holdout_indices(50, 0.0)[1]) == 0


@pytest.fixture
def numbered_images(tmp_path):
    """50 constant 8x8 images whose pixel value is their index / 64: every image is recognisable."""
    values = np.arange(50, dtype=np.float32) / 64
    path = tmp_path / "numbered.npy"
    np.save(path, np.broadcast_to(values[:, None, None], (50, 8, 8)).copy())
    return path


def _ids(images: torch.Tensor) -> set[int]:
    return {round(float(v) * 64) for v in images.flatten(1)[:, 0]}


def test_evaluation_never_touches_training_images(numbered_images, monkeypatch):
    trainer = asvae_kit.build("mlp-vae", steps=12, batch_size=8, device="cpu", seed=3, data={"name": "tensor", "path": str(numbered_images)})
    trained_on: set[int] = set()
    step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda x: (trained_on.update(_ids(x)), step(x))[1])
    trainer.fit()
    held_out = _ids(trainer.split_data("test").dataset.images)
    assert len(held_out) == 5 and not trained_on & held_out
    assert trained_on <= _ids(trainer.split_data("train").dataset.images)

    seen: dict[str, set[int]] = {}
    entry = get_registry().get("metric", "recon")

    def recording(trainer, data, *, split):
        seen[split] = _ids(data)
        return {"n": len(data)}

    monkeypatch.setitem(get_registry()._entries["metric"], "recon", dataclasses.replace(entry, factory=recording))
    out = trainer.evaluate(["recon"])
    assert out.split == "test" and seen["test"] == held_out and out["n"] == 5
    assert "held-out" in out.source and "never trained on" in out.source
    trainer.evaluate(["recon"], split="train")
    assert len(seen["train"]) == 45 and not seen["train"] & held_out


def test_a_data_set_with_a_test_split_is_evaluated_on_it(monkeypatch):
    from asvae_kit.splits import has_test_split

    def test_split(entry):
        return has_test_split(entry, get_registry().get("dataset", entry["name"]).factory)

    assert test_split({"name": "fashion-mnist"}) and test_split({"name": "mnist", "split": "train"})
    assert not test_split({"name": "mnist", "split": "test"})  # then a slice of it is held out
    assert not test_split({"name": "digits"})


@needs_fashion
def test_fashion_mnist_uses_its_test_split():
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", data={"name": "fashion-mnist", "data_dir": str(SHARED_DATA), "limit": 300})
    test = trainer.split_data("test")
    assert test.dataset.name == "fashion-mnist-test" and "test split" in test.source
    assert trainer.dataset.name == "fashion-mnist-train" and len(trainer.dataset) == 300


def test_no_held_out_images_is_a_clear_error():
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", holdout=0)
    assert len(trainer.dataset) == 1797
    with pytest.raises(asvae_kit.DataError, match="split='train'"):
        trainer.evaluate(["recon"])
    assert "recon_mse" in trainer.evaluate(["recon"], split="train")


@pytest.mark.parametrize("bad", [1.0, -0.1, "a", True])
def test_holdout_is_validated(bad):
    with pytest.raises(asvae_kit.ConfigError, match="holdout"):
        asvae_kit.build("mlp-vae", holdout=bad)


def test_evaluation_reports_what_it_ran_on():
    trainer = asvae_kit.build("mlp-asvae", steps=0, device="cpu", eval_size=50)
    out = trainer.evaluate(["recon", "skl"])
    assert isinstance(out, Evaluation) and out.n_images == 50 and out.notes == {}
    record = out.as_dict()
    assert record["split"] == "test" and set(record["metrics"]) == {"recon_mse", "recon_bce", "mean_image_mse", "skl"}


def test_parse_metric():
    assert parse_metric("fd") == {"name": "fd"}
    assert parse_metric("nll:k=100:n=8") == {"name": "nll", "k": 100, "n": 8}
    assert parse_metric({"name": "nll", "k": 3}) == {"name": "nll", "k": 3}
    with pytest.raises(asvae_kit.ConfigError, match="KEY=VALUE"):
        parse_metric("nll:k")
    with pytest.raises(asvae_kit.UnknownComponentError, match="Did you mean 'nll'"):
        asvae_kit.build("mlp-vae", metrics=["nlll"])


def test_describe_lists_metric_options():
    info = asvae_kit.describe("nll", "metric")
    assert info["config"] == {"k": 1000, "n": 256, "batch": 4096}


def test_a_run_from_before_held_out_splits_is_not_scored_on_its_training_images(tmp_path):
    run = tmp_path / "old"
    asvae_kit.build("mlp-vae", steps=1, device="cpu", **{"encoder.hidden": [8], "decoder.hidden": [8]}).fit(run_dir=run, progress=False)
    config = json.loads((run / "config.json").read_text())
    del config["holdout"]  # as asvae-kit 0.1 wrote it: it trained on every digit
    (run / "config.json").write_text(json.dumps(config))
    trainer = asvae_kit.load(run)
    assert len(trainer.dataset) == 1797
    with pytest.raises(asvae_kit.DataError, match="--split train"):
        trainer.evaluate(["recon"])
