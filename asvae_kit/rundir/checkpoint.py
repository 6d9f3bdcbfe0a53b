"""Checkpoints as one consistent unit.

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNN`` holding ``model.safetensors`` (the
weights) and ``trainer_state.pt`` (optimizers, RNG and data-stream state, history), both tagged
with the step and the run's id.  It is written under a temporary name, flushed, renamed into
place, and only then does ``RUN/latest`` (one line: the folder's name) switch to it; so a process
killed at any moment leaves ``latest`` naming a complete checkpoint.  ``RUN/model.safetensors`` is
a hard link to (or copy of) the newest weights for people and tools that want one file; loading never reads it
when ``latest`` exists.  The last ``keep`` checkpoints are kept.

``latest`` is trusted only as far as asvae-kit wrote it: it must be a regular file (not a link)
holding one checkpoint folder's name (``step-NNNNNNN`` or ``step-NNNNNNN.K``), so it can only
resolve to a folder of this run's ``checkpoints/``; anything else is refused with one line that
never quotes it.  Pruning removes only checkpoint folders whose weights carry this run's id (a
run someone trained inside ``checkpoints/`` is not this run's), and a step saved again replaces
its earlier state: one checkpoint per step.

Runs written by asvae-kit 0.1 kept both files at the top of the run directory, replaced one after
the other; ``read_checkpoint`` still reads them, and refuses a pair whose steps differ.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..fileio import atomic_path, atomic_write_text, file_mode
from .files import refuse_link

__all__ = [
    "CHECKPOINTS_DIR", "LATEST_FILE", "MODEL_FILE", "STATE_FILE", "write_checkpoint", "read_checkpoint", "checkpoint_names",
    "checkpoint_run_id", "latest_checkpoint",
]

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"step-(\d{7,})(?:\.(\d+))?")
#: ``latest`` holds one short line; more than this is not a file asvae-kit wrote.
_MAX_LATEST_BYTES = 256
#: The largest safetensors header read for a run id (asvae-kit's are a few KB).
_MAX_HEADER_BYTES = 16 << 20


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


def _real_dir(path: Path) -> bool:
    """A folder that is not a symbolic link to one."""
    return path.is_dir() and not path.is_symlink()


def checkpoint_run_id(folder: Path) -> str | None:
    """The run id in the header of ``folder/model.safetensors`` (read without loading a tensor), or
    ``None`` when the file is missing, a link, or not a safetensors file with one."""
    path = Path(folder) / MODEL_FILE
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= _MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(size).decode("utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    run_id = metadata.get("run_id") if isinstance(metadata, dict) else None
    return run_id if isinstance(run_id, str) else None


def checkpoint_names(run_dir: Path, run_id: str | None = None) -> list[str]:
    """The checkpoint folders of a run (named ``step-N``, real folders, not links), oldest first;
    with ``run_id``, only those whose weights carry it."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not _real_dir(root):
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and _real_dir(p) and (run_id is None or checkpoint_run_id(p) == run_id):
            found.append((int(m.group(1)), int(m.group(2) or 0), p.name))
    return [name for *_, name in sorted(found)]


def _latest_name(latest: Path) -> str | None:
    """The checkpoint folder name ``latest`` holds, or ``None`` when it holds anything else."""
    try:
        with open(latest, "rb") as f:
            raw = f.read(_MAX_LATEST_BYTES + 1)
    except OSError:
        return None
    if len(raw) > _MAX_LATEST_BYTES:
        return None
    try:
        name = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return name if _NAME.fullmatch(name) else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint folder ``RUN/latest`` names (not checked for completeness), or ``None`` when the
    run has no ``latest``.  ``CheckpointError`` when ``latest`` is a link, or does not hold the name
    of a folder of ``RUN/checkpoints`` (``../other-run/...``, an absolute path, garbage): one line
    naming the file and the fix, never quoting it."""
    run_dir = Path(run_dir)
    latest, root = run_dir / LATEST_FILE, run_dir / CHECKPOINTS_DIR
    if not latest.is_symlink() and not latest.exists():
        return None
    available = ", ".join(checkpoint_names(run_dir)) or "none"
    fix = f"write the name of a checkpoint folder of {root} there (available: {available})"
    if latest.is_symlink():
        raise CheckpointError(f"{latest} is a symbolic link, not the one-line file asvae-kit writes; remove it and {fix}")
    if not latest.is_file():
        raise CheckpointError(f"{latest} is not a file; remove it and {fix}")
    name = _latest_name(latest)
    if name is None:
        raise CheckpointError(f"{latest} does not name a checkpoint folder of {root} (one line such as step-0000012); {fix}")
    if root.is_symlink():
        raise CheckpointError(f"{root} is a symbolic link; a run's checkpoints live in a folder of its own: replace the link by the folder")
    return root / name


def _free_name(root: Path, step: int) -> str:
    """``step-NNNNNNN``, or ``step-NNNNNNN.K`` when that step was saved before (never reuse a name
    that ``latest`` may point to)."""
    base = f"step-{step:07d}"
    name, k = base, 0
    while os.path.lexists(root / name):
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
    root = refuse_link(run_dir / CHECKPOINTS_DIR)
    for path in (run_dir / LATEST_FILE, run_dir / MODEL_FILE):
        refuse_link(path)
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
        latest = run_dir / LATEST_FILE
        previous = _latest_name(latest) if latest.is_file() and not latest.is_symlink() else None
        intact = f"the previous checkpoint ({root / previous}) is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write the checkpoint of step {step} under {root}: {exc}; {intact}. Free disk space or check permissions, then resume") from exc
    _prune(root, run_dir, name, step=step, run_id=run_id, keep=keep)
    return root / name


def _prune(root: Path, run_dir: Path, name: str, *, step: int, run_id: str, keep: int) -> None:
    """Remove this run's checkpoints beyond the newest ``keep``, and its earlier saves of ``step``
    (superseded by ``name``): only folders whose weights carry ``run_id``, never a link."""
    ours = [n for n in checkpoint_names(run_dir, run_id) if n != name]
    superseded = [n for n in ours if int(_NAME.fullmatch(n).group(1)) == step]  # type: ignore[union-attr]
    older = [n for n in ours if n not in superseded]
    for old in superseded + older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(root / old, ignore_errors=True)


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types; their text is not repeated (it may quote the file)
        raise CheckpointError(f"{path} cannot be read as safetensors weights ({type(exc).__name__}); the file is corrupt") from None


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler's text may quote the file: only its type is named
        raise CheckpointError(
            f"{path} cannot be read ({type(exc).__name__}): the run's optimizer and RNG state are lost, so it cannot be resumed "
            f"exactly. Keep the run as it is; an older checkpoint may still load: point {LATEST_FILE} at another "
            f"folder of {CHECKPOINTS_DIR}/"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no trainer state (a {type(state).__name__}, not a mapping); point {LATEST_FILE} at another folder of {CHECKPOINTS_DIR}/")
    return state


def _as_step(value: Any) -> int | None:
    """A step recorded in a checkpoint, or ``None`` when it is not an integer (a message prints only this)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _regular_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def read_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, Path]:
    """``(weights, state or None, weights path)`` of the run's newest checkpoint, verified to be
    one unit (same step, same run).  The state is ``None`` for a 0.1 run saved without one."""
    run_dir = Path(run_dir)
    latest = run_dir / LATEST_FILE
    folder = latest_checkpoint(run_dir)
    if folder is not None:
        model_path, state_path = folder / MODEL_FILE, folder / STATE_FILE
        if not _real_dir(folder) or not _regular_file(model_path) or not _regular_file(state_path):
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
    w_step, s_step = _as_step(metadata.get("step")), _as_step(state.get("step"))
    w_id, s_id = metadata.get("run_id"), state.get("run_id")
    if w_step is None or s_step is None or w_step != s_step or w_id != s_id:
        raise CheckpointError(
            f"{model_path} (step {w_step}) and {state_path} (step {s_step}) are not one checkpoint: the weights "
            "and the optimizer/RNG state come from different saves (a process killed between replacing the two "
            "files, as asvae-kit 0.1 wrote them), and resuming from them would silently diverge. To recover, "
            f"train on from the weights alone: copy {model_path.name} and config.json into a new folder and run "
            "`asvae-kit train --resume` there (the optimizers start afresh)"
        )
    return tensors, state, model_path
