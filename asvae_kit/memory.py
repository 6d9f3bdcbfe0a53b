"""Refusing a request that cannot fit in memory before anything is allocated, with one wording.

A data set resized to 100000x100000, ``sample(10_000_000)`` or ``nll:k=1000000000`` would
otherwise run for minutes, swap, and end in the OOM killer (or a raw ``MemoryError``) with nothing
to say which value was at fault.  The code that is about to allocate estimates the bytes it needs
from the request alone and calls ``check_memory``, which compares them with what the machine has
available now and raises one line naming the request, both figures and the fix::

    dataset 'image-folder': 12 images of 3x100000x100000 needs 2.0 TiB, this machine has 23.4 GiB available; ...

Available memory is ``MemAvailable`` of ``/proc/meminfo`` (what the kernel can give without
swapping), capped by a cgroup v2 memory limit when the process runs under one, else
``os.sysconf``'s free pages; for a CUDA device, the free memory of that device.  When no figure
can be read, nothing is refused.  No dependency beyond the standard library (and torch for GPUs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["available_memory", "format_bytes", "check_memory"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units with one decimal: ``"37.2 GiB"``, ``"512.0 MiB"``, ``"12 B"``."""
    value, unit = float(n), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"


def _meminfo_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux 3.14+), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """What a cgroup v2 memory limit leaves this process (``memory.max`` less what is in use), or
    ``None`` when there is no limit or no cgroup v2: MemAvailable sees the host, not the container.
    "In use" is ``memory.current`` less the inactive file cache (``memory.stat``), which the kernel
    reclaims on demand, as the kubelet counts it: after reading a data set or writing checkpoints
    the page cache would otherwise look like memory that is gone."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        stat = dict(line.split() for line in (root / "memory.stat").read_text().splitlines() if line.count(" ") == 1)
        used -= int(stat.get("inactive_file", 0))
    except (OSError, ValueError):
        pass
    return max(0, int(limit) - max(used, 0))


def _sysconf_available() -> int | None:
    """Free physical pages times the page size (no MemAvailable: not Linux), or ``None``."""
    try:
        pages, page = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return pages * page if pages > 0 and page > 0 else None


def available_memory(device: Any = None) -> int | None:
    """Bytes that can be allocated now without swapping: host memory, or a CUDA ``device``'s free
    memory when ``device`` is one; ``None`` when it cannot be read."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        try:
            dev = torch.device(device)
            free = int(torch.cuda.mem_get_info(dev)[0])
            # blocks PyTorch's caching allocator holds but has freed are free to this process
            return free + int(torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
        except (RuntimeError, AssertionError, ValueError):
            return None
    available = _meminfo_available()
    if available is None:
        available = _sysconf_available()
    limited = _cgroup_available()
    if limited is not None:
        available = limited if available is None else min(available, limited)
    return available


def check_memory(needed: float, what: str, fix: str, *, error: type[Exception] = DataError, device: Any = None) -> None:
    """Raise ``error`` when ``needed`` bytes exceed what is available (see ``available_memory``).

    ``what`` names the request as the user gave it (``"sample(n=10000000)"``), ``fix`` says what
    to ask for instead; the message is ``"{what} needs 37.2 GiB, this machine has 23.4 GiB
    available; {fix}"``.  Call it with an estimate of the request's peak before allocating any of it."""
    if needed <= 0:
        return
    available = available_memory(device)
    if available is None or needed <= available:
        return
    where = f"{device} has" if device is not None and str(device).startswith("cuda") else "this machine has"
    raise error(f"{what} needs {format_bytes(needed)}, {where} {format_bytes(available)} available; {fix}")
