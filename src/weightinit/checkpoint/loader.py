"""Read checkpoints safely and lazily into a ``{key: tensor}`` view.

``.safetensors`` files are opened with ``safe_open``: planning reads only
the header (names, shapes, dtypes) and a tensor is read when it is written.
PyTorch files (``.pth/.pt/.bin``) are read with ``torch.load(weights_only=True,
mmap=True)``: a pickle that needs arbitrary code is refused unless the
caller opts in with ``allow_pickle=True``.

Key handling: weights nested under ``state_dict`` (MMEngine), ``model`` or
``module`` are unwrapped; ``revise_keys`` regex substitutions are applied
(default: strip DDP's ``module.``); with ``prefix`` only the keys under it
are kept, with the prefix removed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import (
    CheckpointError,
    CheckpointHashError,
    CheckpointKeyError,
    CheckpointNotFoundError,
    InitTypeError,
    UnsafeCheckpointError,
)
from .sources import resolve

DEFAULT_REVISE_KEYS: tuple[tuple[str, str], ...] = ((r"^module\.", ""),)
_NESTED = ("state_dict", "model", "module")


class CheckpointState:
    """A read-only ``key -> tensor`` view that loads each tensor only when asked."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._dense: dict[str, Any] = {}
        self._lazy: dict[str, tuple[Any, str]] = {}
        self._read: dict[str, Tensor] = {}  # lazy entries already read (memory-mapped)

    @classmethod
    def from_dict(cls, source: str, state: dict[str, Any]) -> CheckpointState:
        out = cls(source)
        out._dense = dict(state)
        return out

    @classmethod
    def from_safetensors(cls, source: str, path: str, device: str) -> CheckpointState:
        from safetensors import safe_open

        out = cls(source)
        handle = safe_open(path, framework="pt", device=device)
        out._lazy = {k: (handle, k) for k in handle.keys()}
        return out

    def keys(self) -> list[str]:
        return list(self._dense) + list(self._lazy)

    def __contains__(self, key: str) -> bool:
        return key in self._dense or key in self._lazy

    def __len__(self) -> int:
        return len(self._dense) + len(self._lazy)

    def is_tensor(self, key: str) -> bool:
        return key in self._lazy or isinstance(self._dense.get(key), Tensor)

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._lazy:
            handle, name = self._lazy[key]
            return tuple(handle.get_slice(name).get_shape())
        return tuple(self._dense[key].shape)

    def check_entry(self, key: str, dtype: torch.dtype, where: str = "") -> None:
        """Raise :class:`CheckpointError` unless entry ``key`` can be copied into a dense
        tensor of ``dtype`` (checked while planning; a lazy entry is not read)."""
        pre = _prefixed(where)
        if key in self._lazy:
            return
        t = self._dense[key]
        problem = None
        if t.layout != torch.strided:
            problem = f"is a {str(t.layout).replace('torch.', '')} tensor"
        elif t.is_quantized:
            problem = f"is a quantized tensor ({t.dtype})"
        elif t.is_meta:
            problem = "is on the meta device (it holds no values)"
        if problem is not None:
            raise CheckpointError(
                f"{pre}{self.source}: entry {key!r} {problem}; only dense tensors with values "
                "can be loaded. Fix: save a dense, real-valued state_dict (e.g. "
                "t.to_dense(), t.dequantize()), or leave this key out with prefix=/revise_keys=.")

    def get(self, key: str) -> Tensor:
        if key in self._lazy:
            out = self._read.get(key)
            if out is None:
                handle, name = self._lazy[key]
                out = self._read[key] = handle.get_tensor(name)
            return out
        return self._dense[key]

    def get_slice(self, key: str, index: tuple[slice, ...]) -> Tensor:
        """``get(key)[index]``, reading only that part of a ``.safetensors`` file.

        A rank of a sharded model asks for its shard: a safetensors entry is
        read through ``get_slice`` (only the bytes of those rows), a
        memory-mapped ``.pth`` tensor is indexed without reading the rest.
        """
        if key in self._lazy and key not in self._read:
            handle, name = self._lazy[key]
            return handle.get_slice(name)[index]
        return self.get(key)[index]

    def renamed(self, mapping: dict[str, str]) -> CheckpointState:
        """A view with keys renamed ``new <- old`` (old keys not in ``mapping`` dropped)."""
        out = CheckpointState(self.source)
        for new, old in mapping.items():
            if old in self._lazy:
                out._lazy[new] = self._lazy[old]
            else:
                out._dense[new] = self._dense[old]
        return out


@dataclass
class LoadReport:
    """What a checkpoint load did: keys loaded, missing, unexpected, and shape mismatches."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{len(self.loaded)} loaded"]
        if self.missing:
            parts.append(f"missing in checkpoint: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected in checkpoint: {', '.join(self.unexpected)}")
        if self.mismatched:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} (checkpoint {s}, model {m})" for k, s, m in self.mismatched))
        return f"{self.source}: " + "; ".join(parts)


def _prefixed(where: str) -> str:
    return f"{where}: " if where else ""


def read_checkpoint(source: str, map_location: Any = "cpu", *, allow_pickle: bool = False,
                    sha256: str | None = None, where: str = "") -> CheckpointState | Any:
    """Open a checkpoint reference (path, ``file://``, URL, ``torchvision://``, custom scheme).

    Returns a :class:`CheckpointState` for safetensors files, else the
    object stored in the PyTorch file.
    """
    pre = _prefixed(where)
    path = resolve(source, sha256)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(2, f"{pre}{source} can not be found. Fix: check the "
                                         "checkpoint path (relative paths start at the "
                                         f"working directory {os.getcwd()!r})")
    if sha256 is not None and "://" not in source:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != sha256.lower():
            raise CheckpointHashError(f"{pre}{source}: sha256 is {digest.hexdigest()}, expected "
                                      f"{sha256}. Fix: check the file and the expected hash.")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError

        device = "cpu" if map_location is None else str(map_location)
        try:
            return CheckpointState.from_safetensors(source, path, device)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{pre}{source} is not a readable safetensors file "
                                  f"(truncated or corrupt?): {err}") from err
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=not allow_pickle,
                              mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # legacy (non-zip) files cannot be memory-mapped
                raise
            return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        wants = re.findall(r"GLOBAL ([\w.]+)", str(err))
        if allow_pickle or not wants:
            raise CheckpointError(f"{pre}{source} is not a readable PyTorch checkpoint "
                                  f"(truncated, corrupt or another format?): {err}") from err
        raise UnsafeCheckpointError(
            f"{pre}{source} is a pickle that needs arbitrary code to load; it wants to import "
            f"{', '.join(sorted(set(wants)))}; refused because loading it could run that code. "
            "Fix: convert it to .safetensors, or if you trust the file, opt in with "
            "allow_pickle=True (e.g. dict(type='Pretrained', checkpoint=..., "
            "allow_pickle=True)).") from err
    except Exception as err:  # torch.load raises many kinds on a corrupt or foreign file
        raise CheckpointError(f"{pre}{source} is not a readable PyTorch checkpoint "
                              f"(truncated, corrupt or another format?): {err}") from err


def _unwrap(ckpt: Any, source: str, where: str) -> CheckpointState:
    if isinstance(ckpt, CheckpointState):
        return ckpt
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{_prefixed(where)}no state_dict found in checkpoint file "
                              f"{source} (it holds a {type(ckpt).__name__}). Fix: save "
                              "model.state_dict() rather than the model object.")
    state = ckpt
    for key in _NESTED:
        inner = ckpt.get(key)
        if isinstance(inner, dict) and (key == "state_dict" or any(
                isinstance(v, Tensor) for v in inner.values())):
            state = inner
            break
    return CheckpointState.from_dict(source, state)


def load_pretrained_state(init: Any, where: str = "") -> CheckpointState:
    """The ``key -> tensor`` view a ``Pretrained`` rule loads, after key selection and renaming."""
    ckpt = read_checkpoint(init.checkpoint, init.map_location,
                           allow_pickle=getattr(init, "allow_pickle", False),
                           sha256=getattr(init, "sha256", None), where=where)
    state = _unwrap(ckpt, init.checkpoint, where)
    revise = getattr(init, "revise_keys", None)
    revise = DEFAULT_REVISE_KEYS if revise is None else revise
    mapping: dict[str, str] = {}
    for old in state.keys():
        new = old
        for pattern, repl in revise:
            new = re.sub(pattern, repl, new)
        mapping[new] = old
    if init.prefix is not None:
        prefix = init.prefix if init.prefix.endswith(".") else init.prefix + "."
        selected = {k[len(prefix):]: old for k, old in mapping.items() if k.startswith(prefix)}
        if not selected:
            tops = sorted({k.split(".", 1)[0] for k in mapping})
            raise CheckpointKeyError(f"{where}: {prefix} is not in the pretrained model "
                                     f"{init.checkpoint}; its top-level keys are: "
                                     f"{', '.join(tops[:20]) or '(none)'}. Fix: use one of "
                                     "those as prefix.")
        mapping = selected
    return state.renamed(mapping)


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
