"""``OUT/results.jsonl``: one JSON row per finished run, read by key, appended and fsynced, and
checked against the spec (rows made with other settings are refused, not mixed in).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from .runs import Run, comparable_config, evaluation_plan, resolved_config
from .spec import Spec, SpecError, canonical_json

__all__ = ["RESULTS_FILE", "read_results", "append_result", "check_rows_match"]

RESULTS_FILE = "results.jsonl"


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of ``results.jsonl`` by key (a line a kill cut short is skipped, with a warning)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            print(f"warning: {path}:{number} is not a whole JSON line (a write cut short?); that run will be redone", file=sys.stderr)
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str):
            rows[row["key"]] = row
    return rows


def append_result(path: Path, row: Mapping[str, Any]) -> None:
    """Append one row to ``results.jsonl``, flushed and fsynced (after a newline if the last line was cut)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_newline = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if needs_newline else "") + json.dumps(row, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_rows_match(spec: Spec, runs: Sequence[Run], done: Mapping[str, Mapping[str, Any]], results: Path) -> None:
    """Refuse rows of the same key that were computed with another config or evaluation plan
    (the spec was edited after they ran): mixing them would compare unequal runs."""
    for run in runs:
        row = done.get(run.key)
        if row is None or "config" not in row:
            continue
        now = comparable_config(resolved_config(spec, run))
        then = row["config"]
        changed = sorted(k for k in now.keys() & then.keys() if canonical_json(now[k]) != canonical_json(then[k]))
        plan = json.loads(canonical_json(evaluation_plan(spec, run)))
        if changed or ("evaluation_plan" in row and row["evaluation_plan"] != plan):
            what = f"config keys {', '.join(changed)}" if changed else "its metrics or curve steps"
            raise SpecError(
                f"{spec.path}: {results} holds run {run.label(spec)!r} made with other settings ({what} differ from the "
                "spec's now); rerun the edited spec into a new --out, or delete those lines to redo them"
            )
