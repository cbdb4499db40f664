"""The ``Pretrained`` rule: load a module's weights from a checkpoint."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..checkpoint.downloads import check_limits
from ..checkpoint.loader import check_revise_keys
from ..errors import InitTypeError, InitValueError
from .base import apply_rule
from .registry import WEIGHT_INITIALIZERS


def _device_type(value: Any) -> str | None:
    """The device type ``value`` names (``'cuda'`` for ``'cuda:1'``), or None if not a device."""
    if isinstance(value, torch.device):
        return value.type
    if isinstance(value, str):
        try:
            return torch.device(value).type
        except (RuntimeError, ValueError):
            return None
    return None


def _check_map_location(map_location: Any) -> None:
    """Refuse a ``map_location`` that is not a device, or that reads tensors to ``meta``."""
    if isinstance(map_location, str) and _device_type(map_location) is None:
        raise InitValueError(f"map_location={map_location!r} is not a device. Fix: use 'cpu' "
                             "(the default) or a device such as 'cuda' or 'cuda:1'.")
    targets = list(map_location.values()) if isinstance(map_location, dict) else [map_location]
    if any(_device_type(t) == "meta" for t in targets):
        raise InitValueError(
            f"map_location={map_location!r} would read the checkpoint onto the meta device, "
            "where tensors hold no values: the load would write nothing while the init record "
            "says the tensors were loaded. Fix: use map_location='cpu' (the default) or a real "
            "device such as 'cuda'; to build the model without memory, use "
            "weightinit.deferred() and pass device= to initialize()/load_checkpoint().")


@WEIGHT_INITIALIZERS.register_module(name="Pretrained")
class PretrainedInit:
    """Load a module's weights from a checkpoint; applied after the module's children.

    Args:
        checkpoint: a path (``~`` expanded), ``file://``, ``http(s)://`` (cached),
            ``torchvision://NAME``, or any scheme registered with
            :func:`weightinit.register_scheme`.
        prefix: load only the keys under this prefix (``'backbone.'``), stripped.
        map_location: where tensors are read to (default ``'cpu'``); ``'meta'`` is
            refused (a meta tensor has no values to load).
        allow_pickle: read a ``.pth`` that needs arbitrary code to unpickle.
            Off by default: such a file could run anything while loading.
        revise_keys: ``(regex, replacement)`` pairs applied to every key
            before ``prefix`` (default: strip DDP's ``module.``).
        strict: missing or unexpected keys are an error (raised before any write).
        mismatch: ``'skip'`` (default, as MMEngine: keys whose shape differs
            are left to the other rules and reported) or ``'error'``.
        sha256: expected sha256 of the file, checked for every source: on download,
            on a cached copy (a corrupt one is downloaded again, once) and on a local
            file (hashed again only when it changed since it was last verified).
        timeout: seconds a download may wait for each read from the server (default:
            60, or the command line's ``--timeout``).
        deadline: seconds a whole download may take, waiting for another process
            downloading the same file included (default: 3600, or ``--deadline``;
            ``math.inf``: no limit). An interrupted download resumes on the next load.

    Keys the checkpoint covers are written once, from the checkpoint; keys it
    does not cover keep whatever rule (or default) owns them.
    """

    def __init__(self, checkpoint: str, prefix: str | None = None,
                 map_location: str | torch.device | None = "cpu",
                 allow_pickle: bool = False, revise_keys: Any = None, strict: bool = False,
                 mismatch: str = "skip", sha256: str | None = None,
                 timeout: float | None = None, deadline: float | None = None) -> None:
        if not isinstance(checkpoint, str) and not hasattr(checkpoint, "__fspath__"):
            raise InitTypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
        if prefix is not None and not isinstance(prefix, str):
            raise InitTypeError(f"prefix must be a str or None, got {type(prefix).__name__}")
        for name, flag in (("allow_pickle", allow_pickle), ("strict", strict)):
            if not isinstance(flag, bool):
                raise InitTypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if mismatch not in ("skip", "error"):
            raise InitValueError(f"mismatch must be 'skip' or 'error', got {mismatch!r}")
        if sha256 is not None and not (isinstance(sha256, str) and len(sha256) == 64):
            raise InitTypeError(f"sha256 must be a 64-character hex string, got {sha256!r}")
        check_limits(timeout, deadline)
        _check_map_location(map_location)
        self.checkpoint = str(checkpoint)
        self.prefix = prefix
        self.map_location = map_location
        self.allow_pickle = allow_pickle
        self.revise_keys = check_revise_keys(revise_keys)
        self.strict = strict
        self.mismatch = mismatch
        self.sha256 = sha256
        self.timeout = timeout
        self.deadline = deadline
        self.wholemodule = False

    plannable = True
    type_name = "Pretrained"

    def args(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "prefix": self.prefix}

    def _get_init_info(self) -> str:
        return f"{type(self).__name__}: load from {self.checkpoint}"

    def __repr__(self) -> str:
        return f"PretrainedInit(checkpoint={self.checkpoint!r}, prefix={self.prefix!r})"

    def __call__(self, module: nn.Module) -> None:
        apply_rule(module, self)
