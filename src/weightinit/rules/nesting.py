"""The nesting of an ``init_cfg``, checked before anything else reads it.

:func:`check_nesting` walks the config without recursion: one that contains itself,
nests deeper than :data:`MAX_DEPTH` containers or expands to more than
:data:`MAX_ENTRIES` entries is refused with the path of the entry, so the recursive
copies, ``repr`` and seed keys of :mod:`weightinit.rules.parse` after it can not
exhaust Python's stack (or memory).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigNestingError

#: How deeply the containers (dicts, lists, tuples) of one ``init_cfg`` may nest. A real one
#: uses a handful of levels (rule list, rule, override list, override, argument list); the
#: bound keeps every recursive walk of it (copies, ``repr``, seed keys) far from Python's
#: recursion limit, even when it is parsed deep inside a model's ``init_weights``.
MAX_DEPTH = 64
#: How many entries one ``init_cfg`` may hold once shared sub-containers are counted at each
#: place they appear (the copies made while parsing duplicate them): a few dozen levels
#: of ``[x, x]`` would otherwise expand to more entries than memory holds.
MAX_ENTRIES = 1_000_000

#: path components shown at each end of a long entry path in an error
_SHOWN = 4

_CONTAINERS = (dict, list, tuple)


def _entry_path(parts: list[str]) -> str:
    """``init_cfg[0].override.a`` from its components; a long path keeps its two ends."""
    if len(parts) > 2 * _SHOWN + 1:
        parts = [*parts[:_SHOWN + 1], f"[...{len(parts) - 2 * _SHOWN - 1} more...]",
                 *parts[-_SHOWN:]]
    return "".join(parts)


def _step(key: Any) -> str:
    """One path component: ``.name`` for a plain str key, else ``[key]``."""
    if isinstance(key, str) and key.isidentifier():
        return f".{key}"
    return f"[{key}]" if isinstance(key, int) else f"[{key!r}]"


def _items(value: Any) -> Any:
    return value.items() if isinstance(value, dict) else enumerate(value)


def _too_deep(path: str, depth: int) -> ConfigNestingError:
    return ConfigNestingError(
        f"{path}: nests {depth} levels deep; an init_cfg may nest at most {MAX_DEPTH} dicts "
        "and lists. Fix: flatten it: an init_cfg is a rule dict or a list of them, each with "
        "an optional override dict or list, whose arguments are plain values.")


def check_nesting(cfg: Any, root: str) -> None:
    """Raise :class:`ConfigNestingError` if ``cfg`` contains itself, nests deeper than
    :data:`MAX_DEPTH` containers, or expands to more than :data:`MAX_ENTRIES` entries; the
    message names the entry's path from ``root`` (how errors name ``cfg`` itself, e.g.
    ``'<root> (Net) init_cfg'``).

    The walk keeps its own stack, so it can not overflow Python's, and visits each
    container once: a sub-dict shared by several entries (not a cycle) is allowed, and
    is measured once.
    """
    # (container, path components, leaving?): "leaving" comes after the container's
    # children, so ``open_`` holds exactly the containers that enclose the current one.
    stack: list[tuple[Any, list[str], bool]] = [(cfg, [root], False)]
    open_: dict[int, list[str]] = {}
    done: dict[int, tuple[int, int]] = {}  # id -> (levels it nests, entries once expanded)
    while stack:
        value, parts, leaving = stack.pop()
        if not isinstance(value, _CONTAINERS):
            continue
        if leaving:
            kids = [done[id(v)] for _, v in _items(value) if isinstance(v, _CONTAINERS)]
            levels = 1 + max((k[0] for k in kids), default=0)
            entries = 1 + len(value) + sum(k[1] for k in kids)
            if entries > MAX_ENTRIES:
                raise ConfigNestingError(
                    f"{_entry_path(parts)}: holds {entries:,} entries once its shared parts "
                    f"are counted where they appear (at most {MAX_ENTRIES:,}). Fix: refer to "
                    "a shared list or dict fewer times, or flatten the config.")
            del open_[id(value)]
            done[id(value)] = (levels, entries)
            continue
        if id(value) in done:  # shared, already measured: only its depth here can be new
            if len(parts) - 1 + done[id(value)][0] > MAX_DEPTH:
                raise _too_deep(_entry_path(parts), len(parts) - 1 + done[id(value)][0])
            continue
        if id(value) in open_:
            outer = [root.rsplit(" ", 1)[-1], *open_[id(value)][1:]]
            raise ConfigNestingError(
                f"{_entry_path(parts)}: is the {type(value).__name__} {_entry_path(outer)} "
                "itself, which contains it: the config refers to itself and nests without "
                "end. Fix: give this entry its own value (e.g. a copy) instead of a "
                "reference to one that contains it.")
        if len(parts) > MAX_DEPTH:
            raise _too_deep(_entry_path(parts), len(parts))
        open_[id(value)] = parts
        stack.append((value, parts, True))
        for key, item in _items(value):
            if isinstance(item, _CONTAINERS):
                stack.append((item, [*parts, _step(key)], False))
