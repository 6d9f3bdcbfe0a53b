"""Image grids as PNG, with Pillow only (no torchvision)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .checks import check_choice
from .fileio import atomic_path

__all__ = ["make_grid", "save_image_grid", "interleave_rows", "slerp"]


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images in [0, 1] into one ``uint8`` array ``[H', W']`` or ``[H', W', 3]``."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"make_grid expects images [N, 1 or 3, H, W], got {list(images.shape)}")
    x = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)  # nrow is images per row, as in torchvision
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    arr = (grid * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    return arr[0] if c == 1 else arr.transpose(1, 2, 0)


def save_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    nrow: int | None = None,
    min_cell: int = 48,
    format: str = "PNG",
) -> None:
    """Write ``images`` as one grid (atomically; PNG, or any format Pillow writes).  Small images
    are scaled up by an integer factor, without smoothing, until each cell is at least ``min_cell``
    pixels wide."""
    from PIL import Image

    h = images.shape[-1]
    scale = max(1, math.ceil(min_cell / max(h, 1)))
    arr = make_grid(images, nrow=nrow)
    im = Image.fromarray(arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        im.save(tmp, format=format, **({"quality": 95} if format == "JPEG" else {}))


#: What ``save_images`` writes, by file extension.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".pt": "torch tensor", ".npy": "numpy array"}


def check_image_path(path: str | os.PathLike) -> str:
    """The extension of ``path`` when ``save_images`` can write it; ``ConfigError`` otherwise."""
    suffix = Path(path).suffix.lower()
    kinds = ", ".join(f"{k} {v}" for k, v in IMAGE_FORMATS.items())
    return check_choice(suffix or "(none)", IMAGE_FORMATS, f"cannot tell what to write to {path}: its extension", note=f" ({kinds})")


def save_images_bytes(count: int, shape: tuple[int, int, int], path: str | os.PathLike, min_cell: int = 48) -> int:
    """Host bytes ``save_images`` needs beyond the images themselves to write ``count`` images of
    ``shape`` to ``path``: a host copy and the array written (``.pt``/``.npy``), or for a grid the
    padded float grid, its ``uint8`` copy, Pillow's image and its upscaled copy (small images are
    scaled up to ``min_cell`` pixels a side), and the encoder's buffer."""
    c, h, w = shape
    if check_image_path(path) in (".pt", ".npy"):
        return 2 * 4 * count * c * h * w
    scale = max(1, math.ceil(min_cell / max(h, 1)))
    cell = c * (h + 2) * (w + 2)
    return count * cell * (4 + 1 + 1 + 2 * scale * scale) + 4 * count * c * h * w


def save_images(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Write ``images`` ``[N, C, H, W]`` in [0, 1] in the format ``path``'s extension names: a PNG
    or JPEG grid, or the tensor itself (``.pt`` via ``torch.save``, ``.npy`` via ``numpy.save``)."""
    suffix = check_image_path(path)
    images = images.detach().cpu()
    if suffix == ".pt":
        with atomic_path(path) as tmp:
            torch.save(images, tmp)
    elif suffix == ".npy":
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, images.numpy())
    else:
        save_image_grid(images, path, nrow=nrow, format=IMAGE_FORMATS[suffix])


def interleave_rows(originals: torch.Tensor, reconstructions: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows that alternate ``per_row`` originals and their ``per_row`` reconstructions, for a grid
    with ``nrow=per_row`` (a short last group is padded with blank cells)."""
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {list(originals.shape)} and reconstructions {list(reconstructions.shape)} differ in shape")
    rows = []
    for a, b in zip(originals.split(per_row), reconstructions.split(per_row)):
        pad = per_row - len(a)
        if pad:
            blank = torch.ones(pad, *a.shape[1:], dtype=a.dtype, device=a.device)
            a, b = torch.cat([a, blank]), torch.cat([b, blank])
        rows += [a, b]
    return torch.cat(rows)


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation from each row of ``a`` [R, D] to the same row of ``b``, ``steps``
    points each (ends included): ``[R * steps, D]``, row-major.  Gaussian codes keep their norm
    along the path, so every point looks like a draw from the prior (linear paths pass near 0)."""
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device).view(1, steps, 1)
    a_n, b_n = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(1).clamp(-1 + 1e-7, 1 - 1e-7)).view(-1, 1, 1)
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / so) * a.unsqueeze(1) + (torch.sin(t * omega) / so) * b.unsqueeze(1)
    return out.reshape(-1, a.shape[1])
