"""Datasets: digits, IDX files (checksums, missing files, opt-in download), tensor files,
image folders and CIFAR-10 batches."""

from __future__ import annotations

import gzip
import pickle
import shutil

import numpy as np
import pytest
import torch

import asvae_kit
from asvae_kit.errors import ConfigError, DataError

from shared_data import SHARED_DATA as SHARED
from shared_data import needs_fashion, needs_mnist


def test_digits_is_offline_and_in_range():
    ds = asvae_kit.build_component("dataset", "digits")
    assert len(ds) == 1797 and ds.data_shape == (1, 8, 8)
    image, label = ds[0]
    assert image.shape == (1, 8, 8) and 0 <= image.min() and image.max() <= 1 and int(label) == 0
    assert len(asvae_kit.build_component("dataset", "digits", limit=10)) == 10


@needs_fashion
def test_fashion_mnist_from_the_original_files():
    ds = asvae_kit.build_component("dataset", "fashion-mnist", data_dir=str(SHARED), split="test")
    assert len(ds) == 10000 and ds.data_shape == (1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    # the directory itself works as well as its parent
    assert len(asvae_kit.build_component("dataset", "fashion-mnist", data_dir=str(SHARED / "fashion-mnist"), split="test", limit=5)) == 5


@needs_mnist
def test_mnist_test_split_and_env_var(monkeypatch):
    monkeypatch.setenv("ASVAE_KIT_DATA", str(SHARED))
    ds = asvae_kit.build_component("dataset", "mnist", split="test")
    assert len(ds) == 10000
    assert torch.bincount(ds.labels)[:3].tolist() == [980, 1135, 1032]


def test_missing_files_say_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.delenv("ASVAE_KIT_DATA", raising=False)
    with pytest.raises(DataError, match="--data-dir"):
        asvae_kit.build_component("dataset", "mnist")
    with pytest.raises(DataError) as info:
        asvae_kit.build_component("dataset", "mnist", data_dir=str(tmp_path))
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path) in message and "--download" in message


@needs_fashion
def test_corrupt_file_fails_the_checksum(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(SHARED / "fashion-mnist" / name, folder / name)
    with open(folder / "t10k-labels-idx1-ubyte.gz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DataError, match="SHA256 is .* expected 67da17c7"):
        asvae_kit.build_component("dataset", "fashion-mnist", data_dir=str(tmp_path), split="test")


@needs_fashion
def test_download_only_when_asked_from_a_mirror(tmp_path):
    dest = tmp_path / "data"
    mirror = (SHARED / "fashion-mnist").as_uri() + "/"
    from asvae_kit.plugins.datasets import load_idx_dataset

    with pytest.raises(DataError):
        load_idx_dataset("fashion-mnist", str(dest), "test", download=False, mirror=mirror)
    ds = load_idx_dataset("fashion-mnist", str(dest), "test", download=True, limit=3, mirror=mirror)
    assert len(ds) == 3
    assert (dest / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    assert not list(dest.rglob("*.tmp"))


def test_tensor_files(tmp_path):
    images = (np.random.rand(6, 8, 8) * 255).astype(np.uint8)
    np.save(tmp_path / "a.npy", images)
    ds = asvae_kit.build_component("dataset", "tensor", path=str(tmp_path / "a.npy"))
    assert ds.data_shape == (1, 8, 8)
    torch.testing.assert_close(ds.images[:, 0], torch.from_numpy(images).float() / 255)
    torch.save({"images": torch.rand(4, 32, 32, 3)}, tmp_path / "b.pt")
    assert asvae_kit.build_component("dataset", "tensor", path=str(tmp_path / "b.pt")).data_shape == (3, 32, 32)
    np.save(tmp_path / "bad.npy", np.random.rand(3, 8, 8) * 9)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        asvae_kit.build_component("dataset", "tensor", path=str(tmp_path / "bad.npy"))
    with pytest.raises(DataError, match="does not exist"):
        asvae_kit.build_component("dataset", "tensor", path=str(tmp_path / "nope.npy"))
    with pytest.raises(ConfigError, match="path="):
        asvae_kit.build_component("dataset", "tensor")


def test_image_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        sub = tmp_path / f"class{i % 2}"
        sub.mkdir(exist_ok=True)
        Image.fromarray((np.random.rand(40, 40, 3) * 255).astype(np.uint8)).save(sub / f"{i}.png")
    ds = asvae_kit.build_component("dataset", "image-folder", path=str(tmp_path), size=32)
    assert len(ds) == 3 and ds.data_shape == (3, 32, 32)
    grey = asvae_kit.build_component("dataset", "image-folder", path=str(tmp_path), size=28, channels=1)
    assert grey.data_shape == (1, 28, 28)
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(DataError, match="size=N"):
        asvae_kit.build_component("dataset", "image-folder", path=str(tmp_path))


def _write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, size=n)), b"batch_label": b"x"}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def test_cifar10_batches_read_without_running_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", 4, i)
    _write_cifar_batch(folder / "test_batch", 3, 9)
    ds = asvae_kit.build_component("dataset", "cifar10", data_dir=str(tmp_path))
    assert len(ds) == 20 and ds.data_shape == (3, 32, 32)
    assert len(asvae_kit.build_component("dataset", "cifar10", data_dir=str(tmp_path), split="test")) == 3

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="refusing to unpickle"):
        asvae_kit.build_component("dataset", "cifar10", data_dir=str(tmp_path), split="test")


def test_idx_parser_rejects_truncated_files(tmp_path):
    from asvae_kit.plugins.datasets import _read_idx

    header = bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big")
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(header + bytes(7))
    with pytest.raises(DataError, match="truncated"):
        _read_idx(tmp_path / "x.gz")


@pytest.mark.parametrize("name, content, expected", [
    ("empty.npy", b"", "is not a readable .npy array"),
    ("garbage.npy", b"\x93NUMPY garbage", "is not a readable .npy array"),
    ("text.pt", b"just some text\n", "is not a tensor file saved by torch.save"),
])
def test_unreadable_tensor_files_are_named_with_the_fix(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as info:
        asvae_kit.build_component("dataset", "tensor", path=str(path))
    assert str(path) in str(info.value)


def test_a_corrupt_png_is_named(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8), 128).save(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="bad.png cannot be read as an image"):
        asvae_kit.build_component("dataset", "image-folder", path=str(tmp_path))


def test_a_data_dir_that_is_a_file_says_so(tmp_path):
    path = tmp_path / "not-a-folder"
    path.write_text("x")
    with pytest.raises(DataError, match="is a file, not a directory"):
        asvae_kit.build_component("dataset", "mnist", data_dir=str(path))


def test_an_offline_download_names_the_url_and_the_folder(tmp_path):
    from asvae_kit.plugins.datasets import load_idx_dataset

    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:9/train-images-idx3-ubyte\.gz .*put it in .*mnist"):
        load_idx_dataset("mnist", data_dir=str(tmp_path), download=True, mirror="http://127.0.0.1:9/")


def test_cifar10_train_val_and_test_share_no_image(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", 4, i)
    _write_cifar_batch(folder / "test_batch", 3, 9)
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", data={"name": "cifar10", "data_dir": str(tmp_path)})
    train, val, test = (trainer.split_data(s).dataset for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (18, 2, 3)  # val: 10% of the 20 training images; test: the test batch
    full = asvae_kit.build_component("dataset", "cifar10", data_dir=str(tmp_path)).images.flatten(1)
    rows = {tuple(r.tolist()): i for i, r in enumerate(full)}
    train_ids = {rows[tuple(r.tolist())] for r in train.images.flatten(1)}
    val_ids = {rows[tuple(r.tolist())] for r in val.images.flatten(1)}
    assert len(train_ids) == 18 and len(val_ids) == 2 and not train_ids & val_ids
    assert not any(tuple(r.tolist()) in rows for r in test.images.flatten(1))  # the test batch is none of the training images
