"""Checkpoints as one consistent unit.

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNN`` holding ``model.safetensors`` (the
weights) and ``trainer_state.pt`` (optimizers, RNG and data-stream state, history), both tagged
with the step and the run's id.  It is written under a temporary name, flushed, renamed into
place, and only then does ``RUN/latest`` (one line: the folder's name) switch to it; so a process
killed at any moment leaves ``latest`` naming a complete checkpoint.  ``RUN/model.safetensors`` is
a hard link to (or copy of) the newest weights for people and tools that want one file; loading never reads it
when ``latest`` exists.  The last ``keep`` checkpoints are kept.

Runs written by asvae-kit 0.1 kept both files at the top of the run directory, replaced one after
the other; ``read_checkpoint`` still reads them, and refuses a pair whose steps differ.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..fileio import atomic_path, atomic_write_text, file_mode

__all__ = ["CHECKPOINTS_DIR", "LATEST_FILE", "MODEL_FILE", "STATE_FILE", "write_checkpoint", "read_checkpoint", "checkpoint_names"]

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"step-(\d{7,})(?:\.(\d+))?")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def checkpoint_names(run_dir: Path) -> list[str]:
    """The complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), int(m.group(2) or 0), p.name))
    return [name for *_, name in sorted(found)]


def _free_name(root: Path, step: int) -> str:
    """``step-NNNNNNN``, or ``step-NNNNNNN.K`` when that step was saved before (never reuse a name
    that ``latest`` may point to)."""
    base = f"step-{step:07d}"
    name, k = base, 0
    while (root / name).exists():
        k += 1
        name = f"{base}.{k}"
    return name


def _expose_weights(source: Path, target: Path) -> None:
    """Put the newest weights at ``target`` for people and tools: a hard link to the checkpoint's
    file (no second write), or an atomic copy where the file system has no hard links."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def write_checkpoint(run_dir: Path, *, step: int, run_id: str, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
    """Write one checkpoint and switch ``latest`` to it; return its folder.

    On failure (a full disk, say) the partial folder is removed and ``CheckpointError`` says
    that the previous checkpoint is intact.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = _free_name(root, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step), "run_id": run_id})
        torch.save({**state, "step": step, "run_id": run_id}, tmp / STATE_FILE)
        for f in (MODEL_FILE, STATE_FILE):
            _fsync_file(tmp / f)
            os.chmod(tmp / f, file_mode())
        os.chmod(tmp, file_mode(directory=True))
        os.rename(tmp, root / name)
        _fsync_dir(root)
        atomic_write_text(run_dir / LATEST_FILE, name + "\n")
        _fsync_dir(run_dir)
        _expose_weights(root / name / MODEL_FILE, run_dir / MODEL_FILE)
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = (run_dir / LATEST_FILE).read_text().strip() if (run_dir / LATEST_FILE).is_file() else None
        intact = f"the previous checkpoint ({root / previous}) is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write the checkpoint of step {step} under {root}: {exc}; {intact}. Free disk space or check permissions, then resume") from exc
    for old in checkpoint_names(run_dir)[:-keep]:
        if old != name:
            shutil.rmtree(root / old, ignore_errors=True)
    return root / name


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} cannot be read ({exc}); the file is corrupt") from None


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} cannot be read ({exc}): the run's optimizer and RNG state are lost, so it cannot be resumed "
            f"exactly. Keep the run as it is; an older checkpoint may still load: point {LATEST_FILE} at another "
            f"folder of {CHECKPOINTS_DIR}/"
        ) from None


def read_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, Path]:
    """``(weights, state or None, weights path)`` of the run's newest checkpoint, verified to be
    one unit (same step, same run).  The state is ``None`` for a 0.1 run saved without one."""
    run_dir = Path(run_dir)
    latest = run_dir / LATEST_FILE
    if latest.is_file():
        folder = run_dir / CHECKPOINTS_DIR / latest.read_text().strip()
        model_path, state_path = folder / MODEL_FILE, folder / STATE_FILE
        if not model_path.is_file() or not state_path.is_file():
            raise CheckpointError(
                f"{latest} names {folder}, which is missing or incomplete; point {latest} at a complete folder "
                f"of {run_dir / CHECKPOINTS_DIR} (available: {', '.join(checkpoint_names(run_dir)) or 'none'})"
            )
    else:
        model_path, state_path = run_dir / MODEL_FILE, run_dir / STATE_FILE
        if not model_path.is_file():
            raise CheckpointError(f"{model_path} is missing; is {run_dir} a run directory written by asvae-kit?")
    tensors, metadata = _read_weights(model_path)
    if not state_path.is_file():
        return tensors, None, model_path
    state = _read_state(state_path)
    w_step, s_step = metadata.get("step"), state.get("step")
    w_id, s_id = metadata.get("run_id"), state.get("run_id")
    if w_step is None or s_step is None or int(w_step) != int(s_step) or w_id != s_id:
        raise CheckpointError(
            f"{model_path} (step {w_step}) and {state_path} (step {s_step}) are not one checkpoint: the weights "
            "and the optimizer/RNG state come from different saves (a process killed between replacing the two "
            "files, as asvae-kit 0.1 wrote them), and resuming from them would silently diverge. To recover, "
            f"train on from the weights alone: copy {model_path.name} and config.json into a new folder and run "
            "`asvae-kit train --resume` there (the optimizers start afresh)"
        )
    return tensors, state, model_path
