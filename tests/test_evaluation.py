"""Train / val / test splits (asvae_kit/splits.py) and running metrics on them (asvae_kit/evaluation.py)."""

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
from asvae_kit.registry import ComponentEntry
from asvae_kit.splits import SPLITS, holdout_indices, split_indices
from shared_data import SHARED_DATA, needs_fashion, needs_mnist


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
    validation = _ids(trainer.split_data("val").dataset.images)
    assert len(held_out) == 5 and not trained_on & held_out
    assert len(validation) == 5 and not trained_on & validation and not validation & held_out  # 10% of the 45 left
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
    assert len(seen["train"]) == 40 and not seen["train"] & held_out and not seen["train"] & validation
    out = trainer.evaluate(["recon"], split="val")
    assert out.split == "val" and seen["val"] == validation and out.n_images == 5
    assert "validation slice" in out.source and "5 of 50 images" in out.source and "never trained on" in out.source


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
    # the validation slice (10% of the 300 training images) comes out of the training split
    assert trainer.dataset.name == "fashion-mnist-train[train]" and len(trainer.dataset) == 270
    val = trainer.split_data("val")
    assert val.dataset.name == "fashion-mnist-train[val]" and len(val.dataset) == 30 and "training split of fashion-mnist" in val.source


def test_no_held_out_images_is_a_clear_error():
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", holdout=0)
    assert len(trainer.dataset) == 1797 - 180  # no test slice; the validation slice is still carved
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


def test_a_misspelt_metric_option_fails_when_the_config_is_built_not_after_training():
    with pytest.raises(asvae_kit.ConfigError, match=r"metric 'nll' has no option 'kk'\. Did you mean 'k'"):
        asvae_kit.build("mlp-vae", metrics=["recon", "nll:kk=100"])
    with pytest.raises(asvae_kit.ConfigError, match="has no option 'sede'.*Did you mean 'seed'"):
        asvae_kit.build("mlp-vae", metrics=[{"name": "fd", "sede": 1}])
    with pytest.raises(asvae_kit.ConfigError, match=r"metric 'skl': seed must be a non-negative integer, got -1"):
        asvae_kit.build("mlp-vae", metrics=["skl:seed=-1"])
    from asvae_kit.config import resolve_config

    with pytest.raises(asvae_kit.ConfigError, match="Did you mean 'k'"):  # a run's config file is checked the same way
        resolve_config({"metrics": ["nll:kk=3"]})
    # evaluate() checks every metric before running any: a typo in the last one costs nothing
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", **{"data.limit": 40})
    ran = []
    entry = get_registry().get("metric", "recon")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(get_registry()._entries["metric"], "recon", dataclasses.replace(entry, factory=lambda t, d: ran.append(1) or {}))
        with pytest.raises(asvae_kit.ConfigError, match="Did you mean 'k'"):
            trainer.evaluate(["recon", "nll:kk=3"])
    assert ran == []


def test_describe_lists_metric_options():
    info = asvae_kit.describe("nll", "metric")
    assert info["config"] == {"k": 1000, "n": 256, "batch": 4096, "seed": 0}
    assert info["weights"] == "average" and asvae_kit.describe("skl", "metric")["weights"] == "raw"


def test_a_run_from_before_held_out_splits_is_not_scored_on_its_training_images(tmp_path):
    run = tmp_path / "old"
    asvae_kit.build("mlp-vae", steps=1, device="cpu", **{"encoder.hidden": [8], "decoder.hidden": [8]}).fit(run_dir=run, progress=False)
    config = json.loads((run / "config.json").read_text())
    for key in ("holdout", "val_fraction", "val_max"):
        del config[key]  # as asvae-kit 0.1 wrote it: it trained on every digit
    (run / "config.json").write_text(json.dumps(config))
    trainer = asvae_kit.load(run)
    assert len(trainer.dataset) == 1797
    with pytest.raises(asvae_kit.DataError, match="--split train"):
        trainer.evaluate(["recon"])
    with pytest.raises(asvae_kit.DataError, match="no validation slice"):
        trainer.evaluate(["recon"], split="val")


# ------------------------------------------------------------------------------------------------
# three splits: train, val, test never share an image


def test_split_indices_partition_the_data_into_three_fixed_slices():
    parts = split_indices(1797, 0.1, 0.1, 5000)
    assert [len(parts[s]) for s in SPLITS] == [1455, 162, 180]  # test: 10% of all; val: 10% of the 1617 left
    assert sorted(torch.cat([parts[s] for s in SPLITS]).tolist()) == list(range(1797))
    assert torch.equal(parts["test"], holdout_indices(1797, 0.1)[1])  # the test slice is the one holdout always held out
    again = split_indices(1797, 0.1, 0.1, 5000)
    assert all(torch.equal(parts[s], again[s]) for s in SPLITS)  # a function of the size alone
    big = split_indices(60000, 0.0, 0.1, 5000)  # mnist's training split: 10% would be 6000, capped at 5000
    assert (len(big["train"]), len(big["val"]), len(big["test"])) == (55000, 5000, 0)
    assert len(split_indices(60000, 0.0, 0.1, None)["val"]) == 6000
    assert [len(split_indices(3, 0.1, 0.1)[s]) for s in SPLITS] == [1, 1, 1]  # each slice takes one, training keeps one
    assert [len(split_indices(2, 0.1, 0.1)[s]) for s in SPLITS] == [1, 0, 1]
    assert [len(split_indices(40, 0.1, 0.0)[s]) for s in SPLITS] == [36, 0, 4]


def _three_splits(trainer) -> dict[str, set[int]]:
    return {s: _ids(trainer.split_data(s).dataset.images) for s in SPLITS}


def test_digits_splits_share_no_image_whatever_the_run_seed():
    splits = {}
    for seed in (0, 7):
        trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", seed=seed)
        splits[seed] = {s: trainer.split_data(s) for s in SPLITS}
    parts = split_indices(1797, 0.1, 0.1, 5000)
    from asvae_kit.plugins.datasets import load_digits

    everything = load_digits().images
    for name in SPLITS:
        one, other = splits[0][name].dataset, splits[7][name].dataset
        assert torch.equal(one.images, other.images)  # the run's seed does not move a slice
        assert torch.equal(one.images, everything[parts[name]])
        assert splits[0][name].split == name
    assert "1455 of 1797" in splits[0]["train"].source and "162 of 1797" in splits[0]["val"].source
    assert "180 of 1797" in splits[0]["test"].source
    assert not set(parts["val"].tolist()) & set(parts["train"].tolist())


def test_tensor_and_image_folder_sets_have_three_disjoint_splits(numbered_images, tmp_path):
    from PIL import Image

    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", data={"name": "tensor", "path": str(numbered_images)})
    ids = _three_splits(trainer)
    assert [len(ids[s]) for s in SPLITS] == [40, 5, 5]
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(50))

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(30):  # grey levels 4 * i: every image recognisable
        Image.fromarray(np.full((8, 8), 4 * i, dtype=np.uint8)).save(folder / f"{i:02d}.png")
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", data={"name": "image-folder", "path": str(folder), "channels": 1})
    grey = {s: {round(float(v) * 255 / 4) for v in trainer.split_data(s).dataset.images.flatten(1)[:, 0]} for s in SPLITS}
    assert sum(len(grey[s]) for s in SPLITS) == 30 and grey["train"] | grey["val"] | grey["test"] == set(range(30))
    assert not grey["train"] & grey["val"] and not grey["train"] & grey["test"] and not grey["val"] & grey["test"]


@pytest.fixture
def numbered_with_test_split(monkeypatch):
    """A registered data set ``numbered`` with its own test split, like mnist: 60 training images
    numbered 0..59 and 20 test images numbered 100..119 (pixel value = number / 128)."""

    from asvae_kit.data import ImageDataset

    def numbered(split: str = "train"):
        numbers = torch.arange(60) if split == "train" else torch.arange(100, 120)
        images = (numbers.float() / 128).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
        return ImageDataset(images, numbers % 10, name=f"numbered-{split}")

    entry = ComponentEntry("dataset", "numbered", numbered, "", (), "test", None, None)
    monkeypatch.setitem(get_registry()._entries["dataset"], "numbered", entry)
    return numbered


def _numbers(images: torch.Tensor) -> set[int]:
    return {round(float(v) * 128) for v in images.flatten(1)[:, 0]}


def test_a_run_never_draws_a_validation_or_test_image(numbered_with_test_split, numbered_images, monkeypatch):
    for data in ({"name": "numbered"}, {"name": "tensor", "path": str(numbered_images)}):
        trainer = asvae_kit.build("mlp-vae", steps=40, batch_size=8, device="cpu", log_every=0, data=data)
        read = _numbers if data["name"] == "numbered" else _ids
        drawn: set[int] = set()
        step = trainer.train_step
        monkeypatch.setattr(trainer, "train_step", lambda x: (drawn.update(read(x)), step(x))[1])
        trainer.fit(progress=False)
        ids = {s: read(trainer.split_data(s).dataset.images) for s in SPLITS}
        assert drawn == ids["train"]  # 40 steps of 8 see every training image...
        assert not drawn & ids["val"] and not drawn & ids["test"]  # ...and nothing else
        assert not ids["val"] & ids["test"]
    # the data set's own test split is the test split; the validation slice comes out of its training split
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", data="numbered")
    ids = {s: _numbers(trainer.split_data(s).dataset.images) for s in SPLITS}
    assert ids["test"] == set(range(100, 120)) and len(ids["val"]) == 6 and ids["train"] | ids["val"] == set(range(60))
    assert "the test split of numbered (20 images" in trainer.split_data("test").source
    assert "validation slice of the training split of numbered (6 of 60 images" in trainer.split_data("val").source


@needs_mnist
def test_mnist_splits_share_no_image():
    # ../shared/data/mnist holds the test-split files only: train on them, so both slices are carved
    data = {"name": "mnist", "data_dir": str(SHARED_DATA), "split": "test", "limit": 500}
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", data=data)
    train, val, test = (trainer.split_data(s) for s in SPLITS)
    assert (len(train.dataset), len(val.dataset), len(test.dataset)) == (405, 45, 50)
    full = asvae_kit.build_component("dataset", "mnist", data_dir=str(SHARED_DATA), split="test", limit=500).images
    parts = split_indices(500, 0.1, 0.1, 5000)
    for name, chosen in zip(SPLITS, (train, val, test)):
        assert torch.equal(chosen.dataset.images, full[parts[name]])
    assert sum(len(set(parts[s].tolist())) for s in SPLITS) == len(set(torch.cat(list(parts.values())).tolist())) == 500
    assert "training uses mnist's test split" in test.source


@needs_fashion
def test_fashion_mnist_splits_share_no_image():
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", data={"name": "fashion-mnist", "data_dir": str(SHARED_DATA), "limit": 500})
    train, val, test = (trainer.split_data(s) for s in SPLITS)
    assert (len(train.dataset), len(val.dataset), len(test.dataset)) == (450, 50, 500)  # limit applies to each file
    assert test.dataset.name == "fashion-mnist-test" and train.dataset.name == "fashion-mnist-train[train]"
    full = asvae_kit.build_component("dataset", "fashion-mnist", data_dir=str(SHARED_DATA), limit=500).images
    parts = split_indices(500, 0.0, 0.1, 5000)
    assert torch.equal(train.dataset.images, full[parts["train"]]) and torch.equal(val.dataset.images, full[parts["val"]])
    assert not set(parts["train"].tolist()) & set(parts["val"].tolist())  # and the test split is another file
    assert test.source == "the test split of fashion-mnist (500 images, never trained on)"


@pytest.mark.parametrize("key, bad, phrase", [
    ("val_fraction", 1.0, "config 'val_fraction' must be the fraction of the training split"),
    ("val_fraction", -0.1, "got -0.1"),
    ("val_fraction", "10%", "got '10%'"),
    ("val_max", 0, "config 'val_max' must be a positive integer, got 0 (the most images"),
    ("val_max", 2.5, "or null for no cap"),
])
def test_val_keys_are_validated(key, bad, phrase):
    with pytest.raises(asvae_kit.ConfigError, match=phrase.replace("(", r"\(").replace("%", "%")):
        asvae_kit.build("mlp-vae", **{key: bad})


def test_no_validation_slice_is_a_clear_error():
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", val_fraction=0)
    assert len(trainer.dataset) == 1617 and "held-out test slice" in trainer.split_data("train").source
    with pytest.raises(asvae_kit.DataError, match=r"no validation slice \(val_fraction is 0.*--set val_fraction=0.1"):
        trainer.evaluate(["recon"], split="val")
    with pytest.raises(asvae_kit.ConfigError, match="split must be one of 'train', 'val', 'test', got 'valid'.*Did you mean 'val'"):
        trainer.evaluate(["recon"], split="valid")


def test_a_run_from_before_validation_slices_keeps_its_training_images_out_of_val(tmp_path):
    run = tmp_path / "before-val"
    asvae_kit.build("mlp-vae", steps=1, device="cpu", **{"encoder.hidden": [8], "decoder.hidden": [8]}).fit(run_dir=run, progress=False)
    config = json.loads((run / "config.json").read_text())
    del config["val_fraction"], config["val_max"]  # as written before validation slices: holdout only
    (run / "config.json").write_text(json.dumps(config))
    trainer = asvae_kit.load(run)
    assert trainer.config["val_fraction"] == 0 and trainer.config["val_max"] is None
    assert len(trainer.dataset) == 1617  # what it trained on: everything but the test slice
    with pytest.raises(asvae_kit.DataError, match="a run saved before validation slices existed loads with val_fraction 0"):
        trainer.evaluate(["recon"], split="val")
    assert trainer.evaluate(["recon"]).n_images == 180  # its test slice is as it was


# ------------------------------------------------------------------------------------------------
# evaluate after fit(data=...)


def test_evaluate_after_fit_on_other_data_refuses_the_configured_held_out_splits(tmp_path):
    trainer = asvae_kit.build("mlp-vae", steps=2, batch_size=8, device="cpu", **{"encoder.hidden": [8], "decoder.hidden": [8]})
    images = trainer.split_data("train").dataset.images[:64]
    trainer.fit(data=images, progress=False)
    for split in ("test", "val"):
        with pytest.raises(asvae_kit.NotHeldOutError, match=rf"trained on data passed to fit\(data=...\), so the configured data set's '{split}' split.*evaluate\(data=held_out_images\)"):
            trainer.evaluate(["recon"], split=split)
    out = trainer.evaluate(["recon"], data=trainer.data.split("test").dataset.images)
    assert out.source == "the data passed to evaluate() (180 images)" and out.n_images == 180
    assert "recon_mse" in trainer.evaluate(["recon"], split="train")
    trainer.save(tmp_path / "run")
    loaded = asvae_kit.load(tmp_path / "run")
    with pytest.raises(asvae_kit.NotHeldOutError, match="trained on data passed to fit"):
        loaded.evaluate(["recon"])
    assert isinstance(asvae_kit.NotHeldOutError("x"), asvae_kit.DataError)
    # a run trained on its configured data evaluates as before
    plain = asvae_kit.build("mlp-vae", steps=1, batch_size=8, device="cpu", **{"encoder.hidden": [8], "decoder.hidden": [8]})
    assert plain.fit(progress=False).evaluate(["recon"]).split == "test"


def test_evaluation_says_which_images_and_how_many():
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", eval_size=50)
    out = trainer.evaluate(["recon"], split="val")
    assert out.n_images == 50 and out.source.endswith("; the first 50 of them evaluated (eval_size=50)")
    assert out.source.startswith("a validation slice of digits (162 of 1797 images")
