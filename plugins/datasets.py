"""Built-in datasets: ``digits`` (offline default), ``mnist``, ``fashion-mnist``, ``cifar10``,
``image-folder`` and ``tensor`` (docs/design.md §5).

Nothing here downloads unless the user passes ``download=True``; missing files raise an error
saying which files to put where.  Every factory returns an ``asvae_kit.data.ImageDataset``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

import asvae_kit
from asvae_kit.checks import check_choice, check_int
from asvae_kit.data import ImageDataset
from asvae_kit.errors import ConfigError, DataError
from asvae_kit.fileio import atomic_path
from asvae_kit.memory import check_memory

__all__ = ["load_digits", "load_idx_dataset", "load_cifar10", "load_image_folder", "load_tensor_file", "IDX_FILES"]

SPLITS = ("train", "test")

# The original gzip files. SHA-256 where it was computed from the published files (the copies
# in ../shared/data match torchvision's MD5s); MD5 (torchvision's) where no SHA-256 is at hand.
IDX_FILES: dict[str, dict[str, tuple[str, str]]] = {
    # name -> split -> (images file, labels file); checksums live in IDX_CHECKSUMS
    "mnist": {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    },
    "fashion-mnist": {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    },
}
IDX_CHECKSUMS: dict[str, dict[str, tuple[str, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte.gz": ("sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz": ("sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": ("sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": ("sha256", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz": ("sha256", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz": ("sha256", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz": ("sha256", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    },
}
IDX_MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


# ---------------------------------------------------------------------------------------------
# helpers


def _check_split(split: str, name: str) -> str:
    return check_choice(split, SPLITS, f"dataset {name!r}: split", note=" (the data set's files; the run's train/val/test splits are carved by asvae_kit.splits)")


def _check_limit(limit: Any, name: str) -> int | None:
    if limit is None:
        return None
    return check_int(limit, f"dataset {name!r}: limit", hint=" (or null for all of it)")


def resolve_data_dir(data_dir: str | os.PathLike | None, name: str, *, download: bool = False, downloadable: bool = True) -> Path:
    """``data_dir``, else ``$ASVAE_KIT_DATA``, else (only when downloading) ``~/.cache/asvae-kit``."""
    if data_dir is None:
        data_dir = os.environ.get("ASVAE_KIT_DATA") or None
    if data_dir is None:
        if download:
            return Path.home() / ".cache" / "asvae-kit"
        fetch = "; pass --download to fetch the published files" if downloadable else ""
        raise DataError(
            f"dataset {name!r} reads files from a directory: pass --data-dir PATH (Python: data_dir=...) "
            f"or set ASVAE_KIT_DATA{fetch}"
        )
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(
            f"dataset {name!r}: data_dir {root} is a file, not a directory; point --data-dir (Python: data_dir=...) "
            "at the folder that holds the data set's files"
        )
    return root


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, algorithm: str, expected: str) -> None:
    actual = _file_digest(path, algorithm)
    if actual != expected:
        raise DataError(
            f"{path}: {algorithm.upper()} is {actual}, expected {expected} (the published file); "
            "the file is corrupt or a different release: delete it and fetch it again"
        )


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest`` atomically, with a progress bar; a network failure is a
    ``DataError`` naming the URL and the folder to fill by hand."""
    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(dest) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError) as exc:  # urllib.error.URLError is an OSError
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"could not download {url} ({type(exc).__name__}: {reason}). Offline? Fetch that file on a machine "
            f"with network access and put it in {dest.parent} (or point --data-dir at a folder that holds it)"
        ) from None


# ---------------------------------------------------------------------------------------------
# digits


def load_digits(limit: int | None = None) -> ImageDataset:
    """The 1797 8x8 handwritten digits bundled with scikit-learn (offline; 17 grey levels)."""
    from sklearn.datasets import load_digits as sk_load_digits

    limit = _check_limit(limit, "digits")
    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ImageDataset(images, labels, name="digits")


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes) but holds {len(raw) - offset}; the file is truncated")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx_file(root: Path, name: str, filename: str) -> Path | None:
    for candidate in (root / filename, root / name / filename, root / name.replace("-", "_") / filename):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = False,
    limit: int | None = None,
    mirror: str | None = None,
) -> ImageDataset:
    """MNIST-format images from the original ``.gz`` IDX files, checksum-verified."""
    split = _check_split(split, name)
    limit = _check_limit(limit, name)
    root = resolve_data_dir(data_dir, name, download=download)
    images_file, labels_file = IDX_FILES[name][split]
    paths: list[Path] = []
    for filename in (images_file, labels_file):
        path = _find_idx_file(root, name, filename)
        if path is None and download:
            path = root / name / filename
            _download((mirror or IDX_MIRRORS[name]) + filename, path)
        if path is None:
            raise DataError(
                f"dataset {name!r} ({split} split): {filename} not found in {root} or {root / name}. "
                f"Put the original {images_file} and {labels_file} there, point --data-dir / ASVAE_KIT_DATA "
                f"at the folder that holds them, or pass --download to fetch them from {mirror or IDX_MIRRORS[name]}"
            )
        algorithm, digest = IDX_CHECKSUMS[name][filename]
        verify_checksum(path, algorithm, digest)
        paths.append(path)
    images = _read_idx(paths[0])
    labels = _read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"dataset {name!r}: images {images.shape} and labels {labels.shape} do not match")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return ImageDataset(x, torch.from_numpy(labels.astype(np.int64)), name=f"{name}-{split}")


def load_mnist(data_dir: str | None = None, split: str = "train", download: bool = False, limit: int | None = None) -> ImageDataset:
    return load_idx_dataset("mnist", data_dir, split, download, limit)


def load_fashion_mnist(data_dir: str | None = None, split: str = "train", download: bool = False, limit: int | None = None) -> ImageDataset:
    return load_idx_dataset("fashion-mnist", data_dir, split, download, limit)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (python batches, read with a restricted unpickler: no code runs)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists and dicts only; refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2; a pure function
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only numpy arrays and lists")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: uint8 images ``[N, 3, 32, 32]`` and their labels.  A file that
    is not one (not a pickle, truncated, other keys or shapes) is a one-line ``DataError``."""
    fix = "unpack cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) again"
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(io.BufferedReader(f), encoding="bytes").load()  # type: ignore[arg-type]
    except DataError:
        raise
    except Exception as exc:  # pickle raises UnpicklingError, EOFError, ValueError, ... for a file that is not one
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: {' '.join(str(exc).split())}); {fix}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (got {type(batch).__name__}); {fix}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path} is not a CIFAR-10 python batch (keys {list(batch)}); {fix}")
    try:
        data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch (its data is not 3x32x32 images: {' '.join(str(exc).split())}); {fix}") from None
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels; {fix}")
    return data, labels


def load_cifar10(data_dir: str | None = None, split: str = "train", limit: int | None = None) -> ImageDataset:
    """CIFAR-10 from its python batches (``data_batch_1..5``, ``test_batch``) in a directory."""
    split = _check_split(split, "cifar10")
    limit = _check_limit(limit, "cifar10")
    root = resolve_data_dir(data_dir, "cifar10", downloadable=False)
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"dataset 'cifar10' ({split} split): {', '.join(missing)} not found in {folder}. Unpack "
            "cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) and point --data-dir at it"
        )
    parts = [_read_cifar_batch(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ImageDataset(torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels), name=f"cifar10-{split}")


# ---------------------------------------------------------------------------------------------
# image folder and tensor files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


#: Pillow modes read as grey when ``channels`` is not given; every other mode is read as RGB.
GREY_MODES = ("1", "L", "I", "I;16", "F")
#: Decoding one image at a time is checked against available memory above this many bytes
#: (smaller ones, the usual data set, skip the check and its read of /proc/meminfo).
_CHECK_DECODE_ABOVE = 64 << 20
#: Bytes per value of a data set from decoded images at its peak: the uint8 images, their stacked
#: copy and the float32 tensor.
_FOLDER_BYTES_PER_VALUE = 1 + 1 + 4


def _open_image(path: Path) -> Any:
    """``PIL.Image.open(path)``: lazy, it reads only the header (size and mode), so an image's
    decoded size is known before decoding it.  Pillow's decompression-bomb refusal (an image
    over twice ``Image.MAX_IMAGE_PIXELS``) becomes a ``DataError`` naming the file."""
    from PIL import Image

    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"dataset 'image-folder': {path} is too large to decode ({' '.join(str(exc).split())}); shrink it or remove it from the folder"
        ) from None


def _decode_bytes(width: int, height: int, channels: int, size: int | None) -> int:
    """Bytes decoding one ``width`` x ``height`` image takes at its peak: Pillow's own pixels (up
    to 4 bytes each), the converted copy (4 bytes a pixel for RGB, 1 for grey), the numpy array
    and the resized image when ``size`` is given."""
    out = size * size * channels if size is not None else 0
    return width * height * (4 + (1 if channels == 1 else 4) + channels) + 2 * out


def _read_image(path: Path, channels: int | None, size: int | None, first: tuple[Path, int, int] | None = None) -> np.ndarray:
    """One image as uint8 ``[H, W]`` (grey) or ``[H, W, 3]``; ``channels`` None: from its mode.
    Read from its header before it is decoded: without ``size``, its size must be that of
    ``first`` (path, width, height) when given, and a large image must fit in available memory."""
    from PIL import Image

    with _open_image(path) as im:
        if channels is None:
            channels = 1 if im.mode in GREY_MODES else 3
        width, height = im.size
        if size is None and first is not None and (width, height) != first[1:]:
            raise DataError(
                f"dataset 'image-folder': {path} is {width}x{height} but {first[0]} is {first[1]}x{first[2]}; pass size=N to resize them all"
            )
        needed = _decode_bytes(width, height, channels, size)
        if needed > _CHECK_DECODE_ABOVE:
            check_memory(
                needed,
                f"dataset 'image-folder': decoding {path} ({width}x{height} pixels)",
                "shrink the image or remove it from the folder",
            )
        im = im.convert("L" if channels == 1 else "RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def load_image_folder(path: str | None = None, size: int | None = None, channels: int | None = None, limit: int | None = None) -> ImageDataset:
    """Every PNG/JPEG under ``path`` (recursively), as grey (channels=1) or RGB (channels=3),
    resized to ``size`` x ``size`` when given (else all images must share one size).

    Before any image is decoded, the data set's size (``files x channels x H x W``, H and W from
    ``size`` or the first image's header) is checked against available memory, and each large
    image's decoded size against it again before decoding it (``asvae_kit.memory``)."""
    if path is None:
        raise ConfigError("dataset 'image-folder' needs path=DIR (command line: --set data.path=DIR)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset 'image-folder': {root} is not a directory; point data.path at a folder of PNG/JPEG files")
    if channels not in (None, 1, 3):
        raise ConfigError(f"dataset 'image-folder': channels must be 1, 3 or null (from the first image), got {channels!r}")
    if size is not None:
        check_int(size, "dataset 'image-folder': size", hint=" (or null to keep each image's size)")
    limit = _check_limit(limit, "image-folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"dataset 'image-folder': no {'/'.join(IMAGE_SUFFIXES)} files under {root}")
    if limit is not None:
        files = files[:limit]
    try:
        with _open_image(files[0]) as first:
            first_channels = 1 if first.mode in GREY_MODES else 3
            width, height = (size, size) if size is not None else first.size
    except DataError:
        raise
    except (OSError, ValueError) as exc:  # Pillow's UnidentifiedImageError is an OSError
        raise DataError(f"dataset 'image-folder': {files[0]} cannot be read as an image ({' '.join(str(exc).split())}); fix or remove that file") from None
    c = channels or first_channels
    check_memory(
        len(files) * c * height * width * _FOLDER_BYTES_PER_VALUE,
        f"dataset 'image-folder': {len(files)} image{'s' if len(files) != 1 else ''} of {c}x{height}x{width}",
        "pass a smaller size=N (command line: --set data.size=N) or limit=N to read fewer images",
    )
    arrays = []
    for f in files:
        try:
            arr = _read_image(f, channels, size, None if size is not None else (files[0], width, height))
        except (OSError, ValueError) as exc:  # Pillow's UnidentifiedImageError is an OSError
            if isinstance(exc, DataError):
                raise
            raise DataError(f"dataset 'image-folder': {f} cannot be read as an image ({' '.join(str(exc).split())}); fix or remove that file") from None
        channels = channels or (1 if arr.ndim == 2 else 3)
        if arrays and arr.shape != arrays[0].shape:
            raise DataError(
                f"dataset 'image-folder': {f} is {arr.shape[1]}x{arr.shape[0]} but {files[0]} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; pass size=N to resize them all"
            )
        arrays.append(arr)
    stacked = np.stack(arrays)
    del arrays
    if stacked.ndim == 3:
        stacked = stacked[:, None]
    else:
        stacked = stacked.transpose(0, 3, 1, 2)
    return ImageDataset(torch.from_numpy(stacked.astype(np.float32) / 255.0), name=f"image-folder:{root.name}")


#: Bytes per value the ``tensor`` data set allocates besides the file's own: the float32 images and
#: one more float32 copy (a transposed layout made contiguous, or the division of uint8 by 255).
_TENSOR_BYTES_PER_VALUE = 8


def _tensor_fail(p: Path, problem: str, fix: str) -> DataError:
    return DataError(f"dataset 'tensor': {p} {problem}; {fix}")


def _load_npy(p: Path, limit: int | None) -> torch.Tensor:
    """A ``.npy`` file's images: its header (shape, dtype) is read and checked first: a plain
    numeric dtype, data as long as the header says, the images (the first ``limit`` of them)
    within available memory; only then is it read, memory-mapped, so ``limit`` reads only those."""
    save = "write it with numpy.save(path, images) (uint8, or float in [0, 1]; no pickled objects)"
    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                shape, dtype = None, None  # a newer header version: numpy.load reads it
            else:
                shape, _, dtype = reader(f)
                offset = f.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise _tensor_fail(p, f"is not a readable .npy array ({' '.join(str(exc).split()) or type(exc).__name__})", save) from None
    if dtype is not None:
        if dtype.fields is not None or dtype.hasobject or dtype.kind not in "buifc":
            raise _tensor_fail(p, f"holds a {'structured' if dtype.fields else 'non-numeric'} array (dtype {dtype.descr if dtype.fields else dtype})", save)
        count = math.prod(shape)
        if offset + count * dtype.itemsize > p.stat().st_size:
            raise _tensor_fail(p, f"is truncated: its header says {list(shape)} {dtype} ({count * dtype.itemsize} bytes), the file holds less", save)
        rows = min(shape[0], limit) if shape and limit is not None else (shape[0] if shape else 1)
        per_row = math.prod(shape[1:]) if shape else 1
        check_memory(
            rows * per_row * (dtype.itemsize + _TENSOR_BYTES_PER_VALUE),
            f"dataset 'tensor': {p} ({rows} images of {list(shape[1:])} {dtype})",
            "pass limit=N (command line: --set data.limit=N) to read fewer images",
        )
    try:
        array = np.load(p, mmap_mode="r" if dtype is not None and math.prod(shape) > 0 else None, allow_pickle=False)
        if array.dtype.fields is not None or array.dtype.hasobject or array.dtype.kind not in "buifc":
            raise _tensor_fail(p, f"holds a non-numeric array (dtype {array.dtype})", save)
        if limit is not None and array.ndim > 0:
            array = array[:limit]
        # into memory (a copy: the memory map stays behind), in native byte order (torch reads no other)
        array = np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)
        return torch.from_numpy(array)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, TypeError) as exc:
        raise _tensor_fail(p, f"is not a readable .npy array ({' '.join(str(exc).split()) or type(exc).__name__})", save) from None


def _load_pt(p: Path) -> torch.Tensor:
    """A ``.pt`` file's tensor (or a dict's ``images``/``x``), read with ``weights_only`` and
    memory-mapped when the file allows it (so its size is checked before it is read)."""
    save = "write it with torch.save(images, path) (a dense tensor, uint8 or float in [0, 1])"
    try:
        try:
            t = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped: read it whole
            t = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and key errors for files that are not its own
        raise _tensor_fail(p, f"is not a tensor file saved by torch.save ({type(exc).__name__}: {' '.join(str(exc).split())})", save) from None
    if isinstance(t, dict):
        t = t.get("images", t.get("x"))
    if not isinstance(t, torch.Tensor):
        raise _tensor_fail(p, f"must hold a tensor (or a dict with 'images'), got {type(t).__name__}", save)
    if getattr(t, "is_nested", False):
        raise _tensor_fail(p, "holds a nested tensor, not one dense tensor", "stack the images into one tensor [N, C, H, W] and torch.save it")
    if t.is_quantized:
        raise _tensor_fail(p, "holds a quantized tensor", "save images.dequantize() with torch.save(images, path)")
    if t.layout != torch.strided:
        raise _tensor_fail(p, f"holds a sparse tensor ({t.layout})", "save images.to_dense() with torch.save(images, path)")
    return t


def load_tensor_file(path: str | None = None, limit: int | None = None) -> ImageDataset:
    """Images from a ``.npy`` or ``.pt`` file: ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]``
    (C of 1 or 3), float in [0, 1] or uint8 (divided by 255).  ``.pt`` is read with ``weights_only``.

    A file that is not plain numeric images (a structured or object ``.npy``, a sparse tensor, a
    non-tensor) is a one-line ``DataError`` naming it; its size is checked against available
    memory before the images are converted (for ``.npy``, before anything is read)."""
    if path is None:
        raise ConfigError("dataset 'tensor' needs path=FILE.npy|FILE.pt (command line: --set data.path=FILE)")
    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(f"dataset 'tensor': {p} is a directory; point data.path at a .npy or .pt file (for a folder of images use the 'image-folder' data set)")
    if not p.is_file():
        raise DataError(f"dataset 'tensor': {p} does not exist")
    limit = _check_limit(limit, "tensor")
    if p.suffix == ".npy":
        t = _load_npy(p, limit)
    elif p.suffix == ".pt":
        t = _load_pt(p)
    else:
        raise DataError(f"dataset 'tensor': {p} must end in .npy or .pt")
    if limit is not None and t.dim() > 0:
        t = t[:limit]
    if t.dtype != torch.uint8 and not t.is_floating_point():
        raise DataError(f"dataset 'tensor': {p} holds {t.dtype}; use float in [0, 1] or uint8")
    check_memory(
        t.numel() * _TENSOR_BYTES_PER_VALUE,
        f"dataset 'tensor': {p} ({list(t.shape)} {t.dtype})",
        "pass limit=N (command line: --set data.limit=N) to read fewer images",
    )
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    # a float32 copy in memory (never the file's memory map), divided in place when it was uint8
    images = t.to(torch.float32, copy=True)
    if t.dtype == torch.uint8:
        images.div_(255.0)
    del t
    return ImageDataset(images.contiguous(), name=f"tensor:{p.name}")


#: name -> (factory, description), in the order ``asvae-kit list`` shows them.
DATASETS = {
    "digits": (load_digits, "The 1797 8x8 handwritten digits bundled with scikit-learn (1x8x8; offline; the default)."),
    "mnist": (load_mnist, "MNIST (1x28x28) from the original IDX .gz files in data_dir / ASVAE_KIT_DATA, checksum-verified; download=true fetches them."),
    "fashion-mnist": (
        load_fashion_mnist,
        "Fashion-MNIST (1x28x28) from the original IDX .gz files in data_dir / ASVAE_KIT_DATA, SHA-256-verified; download=true fetches them.",
    ),
    "cifar10": (load_cifar10, "CIFAR-10 (3x32x32) from the python batch files in data_dir (read without running pickled code)."),
    "image-folder": (load_image_folder, "PNG/JPEG files under path (recursive), grey or RGB, optionally resized to size x size."),
    "tensor": (load_tensor_file, "Images from a .npy or .pt file: [N,H,W], [N,C,H,W] or [N,H,W,C]; float in [0,1] or uint8."),
}


@asvae_kit.hookimpl
def register_datasets(register):
    for name, (factory, description) in DATASETS.items():
        register(name, factory, description=description)
