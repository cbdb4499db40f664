"""Read a checkpoint file into a flat ``{key: tensor}`` dict, safely.

``.safetensors`` files are memory-mapped (no pickle). PyTorch files
(``.pth/.pt/.bin``) are read with ``torch.load(weights_only=True)``: a file
that needs arbitrary code to unpickle is refused unless the caller opts in.
Key handling follows MMEngine: weights nested under ``state_dict`` are
unwrapped; without ``prefix`` DDP's ``module.`` is stripped; with ``prefix``
only the keys under it are kept, with the prefix removed.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any

import torch

from ..errors import (
    CheckpointError,
    CheckpointKeyError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
)


def _local_path(source: str) -> str:
    path = source[len("file://"):] if source.startswith("file://") else source
    return os.path.expanduser(path)


def read_checkpoint(source: str, map_location: Any = "cpu", *, allow_pickle: bool = False,
                    where: str = "") -> Any:
    """Read a local checkpoint file (``~`` and ``file://`` accepted) and return its object."""
    prefix = f"{where}: " if where else ""
    path = _local_path(source)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(2, f"{prefix}{source} can not be found. Fix: check the "
                                         "checkpoint path (relative paths start at the "
                                         f"working directory {os.getcwd()!r})")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        device = "cpu" if map_location is None else str(map_location)
        try:
            return load_file(path, device=device)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{prefix}{source} is not a readable safetensors file: "
                                  f"{err}") from err
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=not allow_pickle,
                              mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # legacy (non-zip) files cannot be memory-mapped
                raise
            return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        if allow_pickle:
            raise CheckpointError(f"{prefix}{source} cannot be unpickled: {err}") from err
        wants = re.findall(r"GLOBAL ([\w.]+)", str(err))
        what = f" it wants to import {', '.join(sorted(set(wants)))};" if wants else ""
        raise UnsafeCheckpointError(
            f"{prefix}{source} is a pickle that needs arbitrary code to load;{what} refused "
            "because loading it could run that code. Fix: convert it to .safetensors, or if "
            "you trust the file, opt in with allow_pickle=True (e.g. dict(type='Pretrained', "
            "checkpoint=..., allow_pickle=True)).") from err
    except (EOFError, zipfile.BadZipFile, RuntimeError, OSError, ValueError) as err:
        raise CheckpointError(f"{prefix}{source} is not a readable PyTorch checkpoint "
                              f"(truncated or corrupt?): {err}") from err


def load_pretrained_state(init: Any, where: str = "") -> dict[str, Any]:
    """The ``{key: tensor}`` a ``Pretrained`` rule loads, after MMEngine's key handling."""
    ckpt = read_checkpoint(init.checkpoint, init.map_location,
                           allow_pickle=getattr(init, "allow_pickle", False), where=where)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{where}: no state_dict found in checkpoint file "
                              f"{init.checkpoint} (it holds a {type(ckpt).__name__}). Fix: save "
                              "model.state_dict() rather than the model object.")
    state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    if init.prefix is None:
        return {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    prefix = init.prefix if init.prefix.endswith(".") else init.prefix + "."
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        tops = sorted({k.split(".", 1)[0] for k in state})
        raise CheckpointKeyError(f"{where}: {prefix} is not in the pretrained model "
                                 f"{init.checkpoint}; its top-level keys are: "
                                 f"{', '.join(tops[:20]) or '(none)'}. Fix: use one of those "
                                 "as prefix.")
    return out
