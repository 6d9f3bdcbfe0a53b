"""CPU threads: several torch processes on few cores slow each other down badly.

Each torch process starts one OpenMP thread per core.  Two of them on a 2-core machine were
measured 10-20x slower each than one alone (a train step of 86 ms became 1780 ms).  ``threads``
(config key, ``--threads``) sets a process's count; ``warn_if_oversubscribed`` says once per
process when more torch threads than cores seem to be running, and what to do about it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["torch_processes", "warn_if_oversubscribed", "OversubscriptionWarning"]

_checked = False


class OversubscriptionWarning(UserWarning):
    """More CPU threads than cores: the runs will slow each other down."""


def torch_processes() -> int:
    """How many processes of this user have libtorch loaded (this one included; 1 where /proc is
    missing).  Under torchrun, its workers on this machine (the launcher itself stays idle)."""
    if os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    proc = Path("/proc")
    if not proc.is_dir():
        return 1
    count, me, parent = 0, os.getuid(), str(os.getppid())
    for entry in proc.iterdir():
        if not entry.name.isdigit() or entry.name == parent:  # a parent that launched us waits, it does not compute
            continue
        try:
            if entry.stat().st_uid != me:
                continue
            with open(entry / "maps", "rb") as f:
                if b"libtorch_cpu" in f.read():
                    count += 1
        except OSError:
            continue
    return max(count, 1)


def warn_if_oversubscribed(threads: int) -> str | None:
    """Warn when the torch processes' threads outnumber the cores, or the load average already
    exceeds them; return the message, or ``None`` when all is well.  Checks once per process
    (the first ``fit``): scanning the process table is not free."""
    global _checked
    if _checked:
        return None
    _checked = True
    cores = os.cpu_count() or 1
    others = torch_processes()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if others * threads <= cores and load <= cores + 0.5:
        return None
    share = max(1, cores // others)
    message = (
        f"{others} torch process(es) with {threads} thread(s) each share {cores} core(s) (1-minute load average {load:.1f}); "
        f"CPU runs that oversubscribe the cores slow each other down 10-20x. Run one at a time, or give each "
        f"--threads {share} (config threads={share}; OMP_NUM_THREADS={share} for other torch programs)."
    )
    warnings.warn(message, OversubscriptionWarning, stacklevel=3)
    return message
