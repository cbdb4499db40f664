"""Paths inside a config file: relative to the config's directory, wherever it is run from.

``FILE.py:NAME`` types are resolved next to the config (:mod:`.building`);
so is the ``checkpoint`` of every ``Pretrained`` rule the file holds — in
the top-level ``init_cfg`` and anywhere inside ``model`` (a sub-module's
``init_cfg``). A relative path (``w.pth``, ``../weights/w.safetensors``,
``file://w.pth``) becomes ``<config directory>/w.pth``; absolute paths,
``~`` paths and URLs are left as they are. Values given with ``--set`` are
typed on the command line and stay relative to the working directory, as any
shell path is. OpenMMLab configs keep MMEngine's rule (the working
directory), which their tools rely on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigNotFoundError
from ..rules import WEIGHT_INITIALIZERS, PretrainedInit


def is_pretrained(kind: Any) -> bool:
    """Whether a rule's ``type`` (a registered name or a class) is a ``Pretrained`` rule."""
    if isinstance(kind, str):
        kind = WEIGHT_INITIALIZERS.get(kind) or WEIGHT_INITIALIZERS.get(
            kind.removesuffix("Init"))
    return isinstance(kind, type) and issubclass(kind, PretrainedInit)


def next_to(value: str, base: Path) -> str:
    """``value`` resolved against ``base`` if it is a relative local path; else as it is."""
    if "://" in value:
        scheme, _, rest = value.partition("://")
        if scheme == "file" and rest and not os.path.isabs(os.path.expanduser(rest)):
            return f"file://{base / rest}"
        return value
    if not value or os.path.isabs(os.path.expanduser(value)):
        return value
    return str(base / value)


def resolve_paths(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``data`` (a config file's top level) with its checkpoint paths next to the config.

    Containers are copied where something changes, never edited in place (a
    Python config may share them with a module it imports). A relative path
    that names no file next to the config but one in the working directory
    raises :class:`ConfigNotFoundError`: that is where it used to be looked for.
    """
    base = path.resolve().parent
    out = dict(data)
    for key in ("init_cfg", "model"):
        if key in out:
            out[key] = _walk(out[key], key, base, path.name)
    return out


def _walk(value: Any, key: str, base: Path, name: str) -> Any:
    if isinstance(value, dict):
        new = {k: _walk(v, f"{key}.{k}", base, name) for k, v in value.items()}
        ckpt = new.get("checkpoint")
        if isinstance(ckpt, str) and is_pretrained(new.get("type")):
            new["checkpoint"] = _checked(ckpt, next_to(ckpt, base), f"{key}.checkpoint", name)
        return new if any(new[k] is not value[k] for k in value) else value
    if isinstance(value, (list, tuple)):
        items = [_walk(v, f"{key}[{i}]", base, name) for i, v in enumerate(value)]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items) if isinstance(value, list) else tuple(items)
    return value


def _checked(given: str, resolved: str, key: str, name: str) -> str:
    if resolved == given:
        return given
    local = resolved.removeprefix("file://")
    if not os.path.exists(local) and os.path.exists(os.path.expanduser(
            given.removeprefix("file://"))):
        raise ConfigNotFoundError(
            f"{name}: {key}: {given!r} is not next to the config ({local} does not exist), "
            f"but the working directory has one ({os.path.abspath(given.removeprefix('file://'))}"
            "). Paths in a config file are relative to the config's directory. Fix: write the "
            "path from the config's directory, or an absolute path.")
    return resolved


__all__ = ["is_pretrained", "next_to", "resolve_paths"]
