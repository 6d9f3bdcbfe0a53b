"""``asvae-kit plot RUN``: a run's loss curves from its ``metrics.csv``, as one PNG.

One panel per group of terms (the two losses; the bounds' terms; the symmetric-KL estimate;
anything else a divergence logs), step on the x axis.  Needs matplotlib (``pip install
matplotlib``, or the ``plot`` extra).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from .errors import ConfigError, DataError
from .fileio import atomic_path
from .rundir import METRICS_FILE

__all__ = ["read_metrics", "plot_run", "PANELS"]

#: Panel title -> the columns it shows (those present); other loss columns get a panel of their own.
PANELS = {
    "losses": ("d_loss", "g_loss"),
    "bound terms": ("l_x", "l_z", "log_px", "log_qz", "kl"),
    "symmetric KL estimate": ("skl",),
}
_BOOKKEEPING = ("step", "time_s", "steps_per_s")


def read_metrics(run_dir: str | os.PathLike) -> dict[str, list[float]]:
    """``metrics.csv`` of ``run_dir`` as columns of floats (empty cells are NaN)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: plot reads the csv logger's file; train with the default loggers (csv) or pass the run directory")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{path} has no rows yet: the run logged nothing (log_every=0, or it stopped before its first log step)")
    return {k: [float(r[k]) if r.get(k) not in (None, "") else math.nan for r in rows] for k in rows[0]}


def plot_run(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write the loss curves of ``run_dir`` to ``output`` (default ``RUN/curves.png``); return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("asvae-kit plot needs matplotlib: pip install matplotlib (or pip install 'asvae-kit[plot]')") from None
    columns = read_metrics(run_dir)
    steps = columns["step"]
    panels = {title: [c for c in names if c in columns] for title, names in PANELS.items()}
    shown = {c for names in panels.values() for c in names}
    others = [c for c in columns if c not in shown and c not in _BOOKKEEPING]
    if others:
        panels["other terms"] = others
    panels = {title: names for title, names in panels.items() if names}
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, names) in zip(axes[:, 0], panels.items()):
        for name in names:
            ax.plot(steps, columns[name], label=name, linewidth=1.2)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"{Path(run_dir).resolve().name}: {METRICS_FILE}", fontsize=11)
    fig.tight_layout()
    output = Path(output) if output is not None else Path(run_dir) / "curves.png"
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return output
