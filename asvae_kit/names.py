"""Names: what a component name may look like, the component kinds, and the one did-you-mean."""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Sequence

from .hookspecs import HOOK_KINDS

__all__ = [
    "article", "NAME_RE", "is_valid_name", "edit_distance", "close_matches", "did_you_mean", "suggestion_text", "must_be_one_of",
    "KINDS", "normalize_kind",
]

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*")

#: The component kinds, singular, in the order commands list them (the hooks' order).
KINDS = tuple(HOOK_KINDS.values())


def article(word: str) -> str:
    """``"an encoder"``, ``"a decoder"``."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def is_valid_name(name: object) -> bool:
    """True for lowercase kebab-case strings, ``[a-z0-9][a-z0-9-]*``."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def normalize_kind(kind: str) -> str:
    """Map ``"encoders"``/``"Encoder"`` to ``"encoder"``; raise ``ValueError`` for other words."""
    k = kind.strip().lower()
    if k not in KINDS and k.endswith("s") and k[:-1] in KINDS:
        k = k[:-1]
    if k not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; the kinds are {', '.join(KINDS)}.{did_you_mean(k, KINDS)}")
    return k


def edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap neighbours)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def close_matches(name: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
    """Candidates close to ``name``: every one within edit distance 2, then difflib's picks up to ``limit``."""
    candidates = sorted(set(candidates))
    near = [c for d, c in sorted((edit_distance(name, c), c) for c in candidates) if d <= 2 and c != name]
    for c in difflib.get_close_matches(name, candidates, n=limit, cutoff=0.6):
        if len(near) >= limit:
            break
        if c not in near and c != name:
            near.append(c)
    return near


def did_you_mean(name: str, candidates: Iterable[str], limit: int = 1) -> str:
    """``" Did you mean 'x'?"`` (or ``'x' or 'y'`` with ``limit`` > 1) for the closest candidates;
    ``""`` when none is close.  Every "unknown name" message in asvae-kit ends with this."""
    return suggestion_text(close_matches(name, candidates, limit=max(limit, 1))[:limit])


def suggestion_text(suggestions: Sequence[str]) -> str:
    """``" Did you mean 'a' or 'b'?"`` for ``suggestions`` already chosen; ``""`` for none."""
    return f" Did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""


def must_be_one_of(what: str, value: Any, choices: Iterable[str], note: str = "") -> str:
    """The one wording for a value outside a fixed list of choices:
    ``"{what} must be one of 'a', 'b', got 'x'. Did you mean 'a'?{note}"``.  ``note`` (say why,
    or what each choice is for) follows as given, so it starts with a space."""
    choices = tuple(choices)
    return f"{what} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}.{did_you_mean(str(value), choices)}{note}"
