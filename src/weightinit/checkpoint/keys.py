"""Checkpoint key selection: ``revise_keys`` regex renaming, then ``prefix``.

Two checkpoint keys that the renaming makes equal (``module.0.weight`` and
``0.weight`` under the default revision, which strips DDP's ``module.``) would
silently shadow each other; that is refused while planning, naming both keys.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import CheckpointKeyError, InitTypeError

DEFAULT_REVISE_KEYS: tuple[tuple[str, str], ...] = ((r"^module\.", ""),)


def _prefixed(where: str) -> str:
    return f"{where}: " if where else ""


def select_keys(keys: list[str], revise_keys: Any, prefix: str | None, source: str,
                where: str = "") -> dict[str, str]:
    """``{new key: original key}`` after ``revise_keys`` (default: strip ``module.``) and
    ``prefix`` (only the keys under it, with the prefix removed).

    Raises :class:`CheckpointKeyError` when nothing is under ``prefix``, or when two
    original keys become the same key (among those kept).
    """
    revise = DEFAULT_REVISE_KEYS if revise_keys is None else revise_keys
    sources: dict[str, list[str]] = {}
    for old in keys:
        new = old
        for pattern, repl in revise:
            new = re.sub(pattern, repl, new)
        sources.setdefault(new, []).append(old)
    if prefix is not None:
        dotted = prefix if prefix.endswith(".") else prefix + "."
        selected = {k[len(dotted):]: olds for k, olds in sources.items()
                    if k.startswith(dotted)}
        if not selected:
            tops = sorted({k.split(".", 1)[0] for k in sources})
            raise CheckpointKeyError(f"{where}: {dotted} is not in the pretrained model "
                                     f"{source}; its top-level keys are: "
                                     f"{', '.join(tops[:20]) or '(none)'}. Fix: use one of "
                                     "those as prefix.")
        sources = selected
    collided = [(new, olds) for new, olds in sources.items() if len(olds) > 1]
    if collided:
        shown = "; ".join(f"{' and '.join(repr(o) for o in olds)} both become {new!r}"
                          for new, olds in collided[:5])
        more = f" (and {len(collided) - 5} more)" if len(collided) > 5 else ""
        raise CheckpointKeyError(
            f"{_prefixed(where)}{source}: checkpoint keys collide after revise_keys="
            f"{list(revise)!r}{f' and prefix={prefix!r}' if prefix is not None else ''}: "
            f"{shown}{more}; one would silently replace the other. Fix: adjust revise_keys "
            "(e.g. revise_keys=[] to keep the keys as saved) or prefix= so each checkpoint "
            "key maps to a distinct model key.")
    return {new: olds[0] for new, olds in sources.items()}


def check_revise_keys(revise_keys: Any) -> tuple[tuple[str, str], ...] | None:
    """Validate ``revise_keys``: a list of ``(pattern, replacement)`` regex pairs."""
    if revise_keys is None:
        return None
    if not isinstance(revise_keys, (list, tuple)):
        raise InitTypeError(f"revise_keys must be a list of (pattern, replacement) pairs, got "
                            f"{type(revise_keys).__name__}")
    out = []
    for pair in revise_keys:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):
            raise InitTypeError(f"revise_keys entries must be (pattern, replacement) str pairs, "
                                f"got {pair!r}")
        try:
            re.compile(pair[0])
        except re.error as err:
            raise InitTypeError(f"revise_keys pattern {pair[0]!r} is not a valid regex: "
                                f"{err}") from err
        out.append((pair[0], pair[1]))
    return tuple(out)
