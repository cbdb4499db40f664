"""Hugging Face sharded safetensors checkpoints: an index file next to its shard files.

``save_pretrained(..., safe_serialization=True)`` writes a large model as
``model-00001-of-0000N.safetensors`` shards plus ``model.safetensors.index.json``,
whose ``"weight_map"`` maps each tensor name to the shard holding it (an optional
``"metadata"`` is ignored). A checkpoint reference may be that index file, or a
directory holding ``model.safetensors.index.json`` or a single ``model.safetensors``.

Reading stays lazy: every shard is opened once with ``safe_open`` (planning reads
only the headers) and a tensor is read when it is written. The ``weight_map`` is
authoritative: tensors a shard holds beyond it are ignored.

The index is data from a possibly untrusted source, so it is checked before any
shard is opened: it must be JSON with a non-empty ``weight_map``; every shard must
be a ``.safetensors`` file named relative to the index's directory (an absolute
path or a ``..`` component is refused; a symbolic link placed there by the local
owner, as in the Hugging Face cache, is followed); every shard must exist and hold
the tensors the index assigns to it.

``sha256=`` checks one file, and a sharded checkpoint is several: it is refused
for an index (hashing the index alone would leave the shards unchecked) rather
than giving a false assurance. For a directory holding a single
``model.safetensors``, it checks that file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from ..errors import CheckpointError, CheckpointNotFoundError
from .sources import FileGuard, checked_file, resolve

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_FIX_PAIR = ("Fix: use the index and the shard files of one save, e.g. the directory "
             "save_pretrained(..., safe_serialization=True) wrote, downloaded in full.")


def is_index(path: str) -> bool:
    """Whether ``path`` names a sharded-checkpoint index (``*.index.json``)."""
    return path.endswith(".index.json")


def checkpoint_file(source: str, sha256: str | None, pre: str = "") -> str:
    """The local file ``source`` refers to: a directory gives its index or its single
    ``model.safetensors``; :func:`~.sources.checked_file` checks it exists (and its hash)."""
    path = resolve(source, sha256)
    if os.path.isdir(path):
        found = [p for p in (os.path.join(path, SINGLE_NAME), os.path.join(path, INDEX_NAME))
                 if os.path.isfile(p)]
        if not found:
            raise CheckpointNotFoundError(
                2, f"{pre}{source} is a directory with neither {SINGLE_NAME} nor {INDEX_NAME}. "
                   "Fix: pass the checkpoint file itself, or a directory written by "
                   "save_pretrained(..., safe_serialization=True).")
        if len(found) > 1:
            raise CheckpointError(
                f"{pre}{source} holds both {SINGLE_NAME} and {INDEX_NAME}, so it is not clear "
                "which checkpoint to load (one is likely left over from an older save). Fix: "
                "pass the path of the one you mean, or delete the stale one.")
        path = found[0]
    if is_index(path) and sha256 is not None:
        raise CheckpointError(
            f"{pre}{source}: sha256= checks a single file, but {path} is the index of a "
            "sharded checkpoint whose tensors live in several shard files, which would go "
            "unchecked; refused rather than checking only the index. Fix: drop sha256= and "
            "verify the shard files yourself (e.g. against the hashes their host publishes).")
    return checked_file(source, path, sha256, pre)


def read_index(source: str, index_path: str, pre: str = "") -> dict[str, str]:
    """``tensor name -> local shard path`` from the index, checked (see the module doc)."""
    try:
        with open(index_path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{pre}{source}: the sharded-checkpoint index {index_path} is "
                              f"not readable JSON ({err}). {_FIX_PAIR}") from err
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{pre}{source}: the sharded-checkpoint index {index_path} has no 'weight_map' "
            "(a non-empty JSON object mapping each tensor name to its shard file). "
            f"{_FIX_PAIR}")
    folder = os.path.dirname(index_path)
    paths: dict[str, str] = {}  # shard name as written -> checked local path
    out: dict[str, str] = {}
    for name, shard in weight_map.items():
        if shard not in paths:
            paths[shard] = _shard_path(source, index_path, folder, shard, pre)
        out[name] = paths[shard]
    return out


def _shard_path(source: str, index_path: str, folder: str, shard: Any, pre: str) -> str:
    where = f"{pre}{source}: the sharded-checkpoint index {index_path} names the shard"
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{where} {shard!r}, which is not a file name. {_FIX_PAIR}")
    parts = re.split(r"[\\/]", shard)
    if (os.path.isabs(shard) or shard[0] in "/\\" or re.match(r"[A-Za-z]:", shard)
            or ".." in parts or "\0" in shard):
        raise CheckpointError(
            f"{where} {shard!r}, which is outside the index's directory; refused, because an "
            "index is data that may come from an untrusted source. Fix: keep the shard files "
            "next to the index and list them by file name "
            "(e.g. 'model-00001-of-00002.safetensors').")
    if not shard.endswith(".safetensors"):
        raise CheckpointError(
            f"{where} {shard!r}, which is not a .safetensors file; only safetensors shards are "
            "read (pickled .bin shards could run code). Fix: save the model with "
            "save_pretrained(..., safe_serialization=True).")
    path = os.path.normpath(os.path.join(folder, shard))
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(
            2, f"{where} {shard!r}, which can not be found (looked for {path}). Fix: download "
               "every shard file the index lists into the index's directory.")
    return path


class ShardGuard:
    """A :class:`~.sources.FileGuard` for every shard: :meth:`check` checks them all."""

    def __init__(self, guards: list[FileGuard]) -> None:
        self.guards = guards

    def check(self, key: str) -> None:
        for guard in self.guards:
            guard.check(key)


def open_index(source: str, index_path: str, open_shard: Callable[[str, str], Any],
               pre: str = "") -> tuple[dict[str, tuple[Any, str]], ShardGuard, dict[str, str]]:
    """The lazy ``key -> (handle, name)`` entries of a sharded checkpoint, its guard, and the
    shard file of each key.

    ``open_shard(label, path)`` opens one shard with ``safe_open`` (``label`` names it in
    errors); it is called once per shard file, and only headers are read here.
    """
    located = read_index(source, index_path, pre)
    handles: dict[str, Any] = {}
    guards = []
    for path in dict.fromkeys(located.values()):
        label = f"{path} (a shard listed in {index_path})"
        guards.append(FileGuard(label, path))  # before opening: a later change is then seen
        handle = handles[path] = open_shard(label, path)
        held = set(handle.keys())
        absent = [name for name, p in located.items() if p == path and name not in held]
        if absent:
            shown = ", ".join(map(repr, absent[:5])) + (", ..." if len(absent) > 5 else "")
            raise CheckpointError(
                f"{pre}{source}: the sharded-checkpoint index {index_path} puts "
                f"{len(absent)} tensor(s) in the shard {path}, which does not hold them: "
                f"{shown}. {_FIX_PAIR}")
    return ({name: (handles[path], name) for name, path in located.items()}, ShardGuard(guards),
            located)
