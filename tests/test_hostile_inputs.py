"""Hostile inputs (issue 20): each is refused at once, in one line naming the file or value and
the fix, before anything large is allocated, and nothing is lost.

Config files (a YAML "billion laughs", non-UTF-8 text, empty files, lists, directories), quoted
YAML strings that must stay strings, requests whose memory would not fit (an image folder
resized to 10^6 x 10^6, images that decode to gigabytes, ``sample -n 10^13``, ``nll:k=10^12``,
a ``.npy`` of a terabyte) and files the ``tensor`` data set cannot use (structured ``.npy``,
sparse ``.pt``).  Where a test needs memory to be short, it fakes ``available_memory``; at least
one of each kind uses the machine's real figure with an absurd request.
"""

from __future__ import annotations

import json
import signal
import struct
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import asvae_kit
import asvae_kit.memory
from asvae_kit.cli import main
from asvae_kit.config import load_config_file, resolve_config
from asvae_kit.errors import ConfigError, DataError
from asvae_kit.memory import available_memory, check_memory, format_bytes
from asvae_kit.plugins.datasets import load_image_folder, load_tensor_file

from tiny_run import train_tiny

#: A refusal must come within this many seconds (the refused work would take minutes).
QUICK = 1.0


@contextmanager
def refused_quickly(seconds: float = QUICK):
    """The block must finish within ``seconds``; an alarm ends it (failing the test) after 20 s
    rather than letting a regression run for minutes and eat gigabytes."""

    def _timeout(signum, frame):
        raise TimeoutError("a hostile input was not refused within 20 s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(20)
    started = time.perf_counter()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - started < seconds


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def little_memory(monkeypatch):
    """Pretend the machine has 100 MiB available."""
    monkeypatch.setattr(asvae_kit.memory, "available_memory", lambda device=None: 100 << 20)


# -------------------------------------------------------------------------------------------------
# config files

BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{','.join(['*' + previous] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi")
)


def test_yaml_billion_laughs_is_refused_in_a_second(tmp_path, capsys):
    assert len(BILLION_LAUGHS) < 600
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    with refused_quickly(), pytest.raises(ConfigError) as exc:
        load_config_file(path)
    assert str(path) in one_line(exc) and "aliases" in str(exc.value) and "write the values out" in str(exc.value)
    with refused_quickly():  # and through the command line, one line, exit status 2
        assert main(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "aliases" in err


def test_yaml_recursive_alias_is_refused_and_plain_aliases_still_work(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("steps: &a [*a]\n")
    with refused_quickly(), pytest.raises(ConfigError, match="recursive alias") as exc:
        load_config_file(loop)
    assert str(loop) in one_line(exc)
    shared = tmp_path / "shared.yaml"
    shared.write_text("preset: mlp-vae\nnet: &net {hidden: [16]}\n")
    assert load_config_file(shared)["net"] == {"hidden": [16]}
    reuse = tmp_path / "reuse.yaml"
    reuse.write_text("preset: mlp-vae\nencoder: &net {hidden: [16]}\ndecoder: *net\n")
    config = resolve_config(load_config_file(reuse))
    assert config["encoder"]["hidden"] == [16] and config["decoder"]["hidden"] == [16]


def test_quoted_yaml_strings_stay_strings_and_unquoted_exponents_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('preset: mlp-vae\nprecision: "32"\noptim:\n  lr: 1e-4\n  disc_lr: 2.5E-4\nsteps: 7\nname_like: "1e-4"\n')
    data = load_config_file(path)
    assert data["precision"] == "32" and data["name_like"] == "1e-4"
    assert data["optim"] == {"lr": 1e-4, "disc_lr": 2.5e-4} and data["steps"] == 7 and isinstance(data["steps"], int)
    del data["name_like"]
    assert resolve_config(data)["precision"] == "32"  # was read as 32.0 and refused
    quoted = tmp_path / "q.yaml"
    quoted.write_text('preset: mlp-vae\noptim:\n  lr: "1e-4"\n')  # quoted: the string it says it is
    with pytest.raises(ConfigError, match="lr") as exc:
        resolve_config(load_config_file(quoted))
    assert "'1e-4'" in one_line(exc)


@pytest.mark.parametrize("name, raw", [
    ("c.yaml", b"steps: 3\nnote: caf\xe9\n"),
    ("c.json", b'{"steps": 3, "note": "caf\xe9"}'),
    ("c.toml", b'steps = 3\nnote = "caf\xe9"\n'),
])
def test_non_utf8_config_files_name_the_file(tmp_path, name, raw):
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as exc:
        load_config_file(path)
    message = one_line(exc)
    assert str(path) in message and "not UTF-8" in message and "0xe9" in message and "save it as UTF-8" in message


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"steps": 3}).encode())
    assert load_config_file(path) == {"steps": 3}


@pytest.mark.parametrize("name, text, phrase", [
    ("empty.yaml", "", "is empty"),
    ("blank.json", " \n\n", "is empty"),
    ("comments.yaml", "# nothing yet\n", "holds only comments"),
    ("list.yaml", "- steps: 3\n", "got a list"),
    ("list.json", "[1, 2]", "got a list"),
    ("string.yaml", "steps=3\n", "got a single string"),
    ("number.toml", "", "is empty"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nests its values too deeply"),
])
def test_config_files_that_hold_no_mapping_say_so(tmp_path, name, text, phrase):
    path = tmp_path / name
    path.write_text(text)
    with refused_quickly(), pytest.raises(ConfigError) as exc:
        load_config_file(path)
    assert str(path) in one_line(exc) and phrase in str(exc.value)


def test_a_directory_an_oversized_and_an_unreadable_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "run.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="it is a directory") as exc:
        load_config_file(folder)
    one_line(exc)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"steps": 3, "pad": "x" * 200}))
    monkeypatch.setattr(asvae_kit.config, "MAX_CONFIG_FILE_BYTES", 100)
    with pytest.raises(ConfigError, match="more than a config's limit of 100") as exc:
        load_config_file(big)
    assert str(big) in one_line(exc)
    monkeypatch.undo()
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    locked.chmod(0)
    try:
        if not _can_read(locked):  # root reads anything: nothing to check then
            with pytest.raises(ConfigError, match="cannot be read") as exc:
                load_config_file(locked)
            assert str(locked) in one_line(exc)
    finally:
        locked.chmod(0o644)


def _can_read(path: Path) -> bool:
    try:
        path.read_bytes()
        return True
    except OSError:
        return False


# -------------------------------------------------------------------------------------------------
# the memory rule


def test_memory_rule_reads_the_machine_and_words_the_refusal():
    available = available_memory()
    assert available is not None and available > 0
    assert format_bytes(12) == "12 B" and format_bytes(1536) == "1.5 KiB" and format_bytes(int(37.2 * 2**30)) == "37.2 GiB"
    check_memory(1024, "a small request", "nothing to fix")  # fits: no error
    with pytest.raises(DataError) as exc:
        check_memory(2**60, "a request of an exbibyte", "ask for less")
    message = one_line(exc)
    assert message.startswith("a request of an exbibyte needs 1.0 EiB, this machine has ") and message.endswith(" available; ask for less")
    with pytest.raises(ConfigError):
        check_memory(2**60, "x", "y", error=ConfigError)


# -------------------------------------------------------------------------------------------------
# image folders


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header says ``width`` x ``height`` RGB, with almost no pixel data: the
    decoded size is read from it, and nothing this size is ever decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def small_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_image_folder_resized_past_memory_is_refused_before_reading(small_folder):
    with refused_quickly(), pytest.raises(DataError) as exc:  # the machine's real figure
        load_image_folder(str(small_folder), size=10**6)
    message = one_line(exc)
    assert "3 images of 1x1000000x1000000 needs 16.4 TiB, this machine has" in message and "size=N" in message
    assert len(load_image_folder(str(small_folder), size=16)) == 3  # a sane size still loads


def test_image_folder_checks_decoded_sizes_from_headers(tmp_path, small_folder, little_memory):
    huge = tmp_path / "huge"
    huge.mkdir()
    _png_header(huge / "a.png", 9000, 9000)  # under Pillow's bomb limit, 1.4 GiB as a data set
    with refused_quickly(), pytest.raises(DataError) as exc:
        load_image_folder(str(huge))
    assert "1 image of 3x9000x9000 needs 1.4 GiB, this machine has 100.0 MiB available" in one_line(exc)
    # resized to 8x8 the data set is small, but decoding the big image alone is not
    _png_header(small_folder / "9-big.png", 9000, 9000)
    with refused_quickly(), pytest.raises(DataError) as exc:
        load_image_folder(str(small_folder), size=8)
    assert f"decoding {small_folder / '9-big.png'} (9000x9000 pixels) needs" in one_line(exc)
    assert "remove it from the folder" in str(exc.value)


def test_image_folder_refuses_a_decompression_bomb_and_a_mismatch_before_decoding(tmp_path, small_folder):
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    _png_header(bomb / "a.png", 40000, 40000)  # over Pillow's own limit: it refuses to open it
    with refused_quickly(), pytest.raises(DataError) as exc:
        load_image_folder(str(bomb))
    assert str(bomb / "a.png") in one_line(exc) and "too large to decode" in str(exc.value)
    _png_header(small_folder / "9-big.png", 9000, 9000)  # a different size: refused from its header
    with refused_quickly(), pytest.raises(DataError) as exc:
        load_image_folder(str(small_folder))
    assert f"{small_folder / '9-big.png'} is 9000x9000 but {small_folder / '0.png'} is 8x8; pass size=N" in one_line(exc)


# -------------------------------------------------------------------------------------------------
# tensor files


def test_tensor_npy_with_a_structured_or_object_dtype_is_one_line(tmp_path):
    structured = tmp_path / "rec.npy"
    np.save(structured, np.zeros(4, dtype=[("x", "<f4"), ("y", "u1")]))
    with pytest.raises(DataError) as exc:
        load_tensor_file(str(structured))
    assert str(structured) in one_line(exc) and "structured array" in str(exc.value) and "numpy.save(path, images)" in str(exc.value)
    objects = tmp_path / "obj.npy"
    np.save(objects, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="non-numeric array") as exc:
        load_tensor_file(str(objects))
    assert str(objects) in one_line(exc)


def test_tensor_npy_truncated_or_too_big_is_refused_from_its_header(tmp_path, little_memory):
    def header_only(path: Path, shape: tuple, size: int) -> None:
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            f.truncate(f.tell() + size)  # a sparse file: nothing is written to disk

    truncated = tmp_path / "cut.npy"
    header_only(truncated, (10**6, 1, 1000, 1000), 100)
    with refused_quickly(), pytest.raises(DataError, match="is truncated") as exc:
        load_tensor_file(str(truncated))
    assert str(truncated) in one_line(exc)
    big = tmp_path / "big.npy"
    header_only(big, (1000, 1, 1000, 1000), 10**9)  # 1 GB of (unwritten) pixels
    with refused_quickly(), pytest.raises(DataError) as exc:
        load_tensor_file(str(big))
    assert "(1000 images of [1, 1000, 1000] uint8) needs 8.4 GiB, this machine has 100.0 MiB available" in one_line(exc)
    assert "limit=N" in str(exc.value)


def test_tensor_npy_in_another_byte_order_and_with_a_limit_loads(tmp_path):
    images = np.random.default_rng(0).random((5, 1, 8, 8)).astype(">f4")
    path = tmp_path / "be.npy"
    np.save(path, images)
    ds = load_tensor_file(str(path), limit=3)
    assert len(ds) == 3 and torch.equal(ds.images, torch.from_numpy(images[:3].astype("<f4")))


def test_tensor_pt_sparse_or_not_a_tensor_is_one_line(tmp_path, little_memory):
    sparse = tmp_path / "sparse.pt"
    torch.save(torch.rand(4, 1, 8, 8).to_sparse(), sparse)
    with pytest.raises(DataError) as exc:
        load_tensor_file(str(sparse))
    assert str(sparse) in one_line(exc) and "sparse tensor" in str(exc.value) and "to_dense()" in str(exc.value)
    listed = tmp_path / "list.pt"
    torch.save([torch.rand(4, 1, 8, 8)], listed)
    with pytest.raises(DataError, match="must hold a tensor") as exc:
        load_tensor_file(str(listed))
    assert str(listed) in one_line(exc) and "torch.save(images, path)" in str(exc.value)
    folder = tmp_path / "images.pt"
    folder.mkdir()
    with pytest.raises(DataError, match="is a directory") as exc:
        load_tensor_file(str(folder))
    one_line(exc)
    big = tmp_path / "big.pt"
    torch.save(torch.zeros(4000, 1, 64, 64, dtype=torch.uint8), big)  # 16 MB on disk, 125 MiB as floats
    with refused_quickly(), pytest.raises(DataError, match=r"needs 125\.0 MiB, this machine has 100\.0 MiB available") as exc:
        load_tensor_file(str(big))
    assert str(big) in one_line(exc)
    assert len(load_tensor_file(str(big), limit=10)) == 10


# -------------------------------------------------------------------------------------------------
# samples and metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert train_tiny(out) == 0
    return out


def test_sample_past_memory_is_refused_before_drawing(run, tmp_path, capsys):
    trainer = asvae_kit.load(run, device="cpu")
    with refused_quickly(), pytest.raises(ConfigError) as exc:  # the machine's real figure
        trainer.sample(10**13)
    assert one_line(exc).startswith("sample(n=10000000000000) of 1x8x8 images needs ") and "this machine has" in str(exc.value)
    with refused_quickly(), pytest.raises(ConfigError, match=r"interpolate\(rows=1000000, steps=10000000\) needs"):
        trainer.interpolate(10**6, 10**7)
    assert trainer.sample(4, seed=0).shape == (4, 1, 8, 8)
    out = tmp_path / "s.png"
    capsys.readouterr()
    with refused_quickly(10.0):  # the CLI inherits it: one line, exit 2, nothing written
        assert main(["sample", str(run), "-n", str(10**13), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sample(n=10000000000000)" in err and "this machine has" in err and not out.exists()


def test_sample_refusal_with_little_memory_names_both_figures(run, little_memory):
    trainer = asvae_kit.load(run, device="cpu")
    with pytest.raises(ConfigError) as exc:
        trainer.sample(10**7)  # 10^7 x (4 + 64) floats: 2.5 GiB
    assert one_line(exc) == (
        "sample(n=10000000) of 1x8x8 images needs 2.5 GiB, this machine has 100.0 MiB available; "
        "ask for fewer images (and write several files if you need more)"
    )


def test_nll_k_past_memory_is_refused_when_the_config_is_validated(little_memory):
    with refused_quickly(), pytest.raises(ConfigError) as exc:
        asvae_kit.build("mlp-vae", steps=0, device="cpu", metrics=["recon", "nll:k=1e9"], **{"data.limit": 40})
    message = one_line(exc)
    assert message.startswith("metric 'nll' with k=1000000000, n=256, batch=4096 needs 29.8 GiB, this machine has 100.0 MiB available")
    assert "lower k" in message
    with pytest.raises(ConfigError, match="positive integer, got 1.5"):
        resolve_config("mlp-vae", {"metrics": ["nll:k=1.5"]})
    assert resolve_config("mlp-vae", {"metrics": ["nll:k=1e2"]})["metrics"] == ["nll:k=1e2"]  # a whole float is a count


def test_nll_k_past_memory_is_refused_before_any_metric_runs(run, capsys):
    trainer = asvae_kit.load(run, device="cpu")
    ran = []
    with refused_quickly(), pytest.raises(ConfigError) as exc:  # the machine's real figure
        asvae_kit.evaluation.evaluate(trainer, ["recon", "nll:k=1000000000000"], report=ran.append)
    assert "metric 'nll' with k=1000000000000" in one_line(exc) and "this machine has" in str(exc.value) and ran == []
    assert trainer.evaluate(["nll:k=1e1:n=4"])["nll_k"] == 10.0


def test_evaluate_refuses_an_empty_metric_list(run, capsys):
    with refused_quickly(10.0):
        assert main(["evaluate", str(run), "--metrics", ",,,"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "empty list of metrics" in errors[0] and "--metrics recon" in errors[0]
    trainer = asvae_kit.load(run, device="cpu")
    with pytest.raises(ConfigError, match="empty list of metrics"):
        trainer.evaluate([])


@pytest.mark.parametrize("content", [b"not a pickle at all", b"\x80\x02}q\x00(", b""])
def test_a_cifar_batch_that_is_not_one_is_one_line(tmp_path, content):
    from asvae_kit.plugins.datasets import load_cifar10

    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(DataError) as exc:
        load_cifar10(str(tmp_path), split="test")
    assert str(tmp_path / "test_batch") in one_line(exc) and "not a CIFAR-10 python batch" in str(exc.value)


def test_an_image_folder_that_is_a_file_says_what_to_point_at(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="is not a directory; point data.path at a folder") as exc:
        load_image_folder(str(path))
    one_line(exc)


def test_a_picture_of_many_small_images_is_costed_with_its_grid(run, tmp_path, monkeypatch, capsys):
    """A million 8x8 samples fit in memory as a tensor, but their PNG grid (padded, upscaled to
    48-pixel cells, copied by Pillow) does not: refused before drawing, with the figure."""
    monkeypatch.setattr(asvae_kit.memory, "available_memory", lambda device=None: 2 << 30)
    assert main(["sample", str(run), "-n", "1000000", "-o", str(tmp_path / "many.png")]) == 2
    err = capsys.readouterr().err
    assert "sample(n=1000000) written to" in err and "GiB" in err and "this machine has 2.0 GiB" in err
    assert not (tmp_path / "many.png").exists()
