"""MMCV 1.x's ``Pretrained`` for :mod:`weightinit.mmcv`: where MMCV finds a checkpoint, what it logs.

MMCV's ``PretrainedInit`` loads through ``mmcv.runner``: ``load_checkpoint(strict=False)``
(``state_dict`` unwrapped, a leading ``module.`` stripped) or, with ``prefix``,
``_load_checkpoint_with_prefix`` (only the keys under ``prefix + '.'``, stripped, nothing
else revised), both through ``CheckpointLoader``'s schemes. The bridge's
:class:`PretrainedInit` takes MMCV's arguments (``checkpoint``, ``prefix``,
``map_location=None``) and finds the file MMCV's loader would read, with MMCV's tables and
caches:

* a path (``~`` expanded);
* ``http://``, ``https://``: torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<file name>``,
  where MMCV keeps them), downloaded there if missing (rank 0 first);
* ``torchvision://NAME`` (and the deprecated ``modelzoo://``): MMCV's table, the name
  normalized as MMCV does (``ResNet50_Weights.IMAGENET1K_V1`` -> ``resnet50.imagenet1k_v1``);
* ``open-mmlab://NAME``, ``openmmlab://NAME``: MMCV's table updated by
  ``$MMCV_HOME/open_mmlab.json``; deprecated names are warned about (``DeprecationWarning``)
  and replaced; a value that is not a URL is a file under MMCV's home;
* ``mmcls://NAME``: MMCV's table; only the ``backbone.`` keys, stripped;
* any other scheme (``pavi://``, ``s3://``, one a codebase registered with
  ``CheckpointLoader.register_scheme``): read by that loader — its own code — and its tensors
  handed on through a private temporary file.

weightinit then reads that file as it reads any (planned, each tensor written once, pickles
refused unless ``allow_pickle=True``; MMCV reads downloads with full pickle). An unknown
model-zoo name is a :class:`~weightinit.CheckpointKeyError` (MMCV: ``KeyError``), a failed
download a :class:`~weightinit.CheckpointDownloadError` (an ``OSError``, like urllib's).

The file is found when the run first needs it (planning), never when the config is read: a
config nothing applies downloads nothing. MMCV's log lines for a load (``load model from:``,
``load checkpoint from <loader> path:``, and ``The model and loaded state dict do not match
exactly`` with its key lists) are written by :func:`log_load` and :func:`log_mismatch`.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import warnings
import weakref
from typing import Any

import torch
import torch.nn as nn
from mmcv.runner import get_dist_info
from mmcv.runner.checkpoint import (
    CheckpointLoader,
    _get_mmcv_home,
    get_deprecated_model_names,
    get_external_models,
    get_mmcls_models,
    get_torchvision_models,
    load_from_http,
    load_from_local,
    load_from_mmcls,
    load_from_openmmlab,
    load_from_torchvision,
)
from mmcv.utils import get_logger, print_log
from torch import Tensor

from .checkpoint.loader import LoadReport
from .errors import CheckpointDownloadError, CheckpointError, CheckpointKeyError
from .rules import PretrainedInit as _PretrainedInit

__all__ = ["PretrainedInit", "log_load", "log_mismatch", "resolve"]

logger = logging.getLogger("weightinit")
_HTTP = ("http://", "https://")


def _loader(reference: str) -> Any:
    """The loader function MMCV's ``CheckpointLoader`` picks for ``reference``."""
    return CheckpointLoader._get_checkpoint_loader(reference)


def _zoo_url(table: dict[str, str], name: str, reference: str) -> str:
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise CheckpointKeyError(
            f"{reference}: {name!r} is not a name in MMCV's model zoo table.{hint} Fix: use a "
            "name of that table (mmcv/model_zoo/*.json, or $MMCV_HOME/open_mmlab.json for "
            "open-mmlab://), or give the checkpoint's URL or path.")
    return table[name]


def _download(url: str, reference: str) -> str:
    """``url``'s file in torch.hub's cache (MMCV's ``load_from_http``), downloaded if missing:
    by rank 0 first when torch.distributed runs, as MMCV does."""
    directory = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(directory, os.path.basename(urllib.parse.urlparse(url).path))

    def fetch() -> None:
        if os.path.isfile(path):
            return
        os.makedirs(directory, exist_ok=True)
        logger.info("downloading %s to %s (torch.hub's cache, as MMCV)", url, path)
        try:
            torch.hub.download_url_to_file(url, path, None, progress=sys.stderr.isatty())
        except (OSError, ValueError) as err:  # urllib's URLError is an OSError
            raise CheckpointDownloadError(
                f"{reference}: could not download {url}: {err}. Fix: check the network, or put "
                f"the file at {path} (torch.hub's cache, where MMCV looks too).") from err

    rank, world_size = get_dist_info()
    if rank == 0:
        fetch()
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            fetch()
    return path


def _torchvision(reference: str) -> str:
    if reference.startswith("modelzoo://"):
        warnings.warn('The URL scheme of "modelzoo://" is deprecated, please use '
                      '"torchvision://" instead', DeprecationWarning, stacklevel=2)
    name = reference.split("://", 1)[1].lower().replace("_weights", "")
    return _zoo_url(get_torchvision_models(), name, reference)


def _openmmlab(reference: str) -> str:
    scheme, name = reference.split("://", 1)
    deprecated = get_deprecated_model_names()
    if name in deprecated:
        warnings.warn(f"{scheme}://{name} is deprecated in favor of {scheme}://"
                      f"{deprecated[name]}", DeprecationWarning, stacklevel=2)
        name = deprecated[name]
    url = _zoo_url(get_external_models(), name, reference)
    if url.startswith(_HTTP):
        return _download(url, reference)
    return os.path.join(_get_mmcv_home(), url)  # (weightinit says "... can not be found")


def _foreign(reference: str, loader: Any, map_location: Any) -> str:
    """A scheme only its own loader reads: its tensors, in a private temporary file."""
    checkpoint = loader(reference, map_location)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"No state_dict found in checkpoint file {reference} (its loader "
                              f"{getattr(loader, '__name__', loader)} returned a "
                              f"{type(checkpoint).__name__}). Fix: return a dict of tensors.")
    handle, path = tempfile.mkstemp(prefix="weightinit-mmcv-", suffix=".pth")
    os.close(handle)
    torch.save({"state_dict": {k: v for k, v in state.items() if isinstance(v, Tensor)}}, path)
    return path


def resolve(reference: str, map_location: Any = None) -> tuple[str, bool]:
    """The local file MMCV would read for ``reference``, and whether it is a temporary copy."""
    loader = _loader(reference)
    if loader is load_from_local:
        return os.path.expanduser(reference), False
    if loader is load_from_http:
        return _download(reference, reference), False
    if loader is load_from_torchvision:
        return _download(_torchvision(reference), reference), False
    if loader is load_from_openmmlab:
        return _openmmlab(reference), False
    if loader is load_from_mmcls:
        return _download(_zoo_url(get_mmcls_models(), reference[len("mmcls://"):],
                                   reference), reference), False
    return _foreign(reference, loader, map_location), True


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class PretrainedInit(_PretrainedInit):
    """MMCV's ``Pretrained``: ``checkpoint`` as MMCV reads it, ``prefix`` as MMCV selects it.

    Args:
        checkpoint: a path, URL, ``torchvision://``, ``open-mmlab://``, ``mmcls://`` name, or
            any scheme registered with MMCV's ``CheckpointLoader``.
        prefix: load only the keys under ``prefix + '.'``, stripped (nothing else revised);
            without it, a leading ``module.`` is stripped.
        map_location: as MMCV's (default None: where the tensors were saved).
        allow_pickle: read a file that needs arbitrary code to unpickle (MMCV does, for
            downloads; weightinit refuses unless asked).
    """

    def __init__(self, checkpoint: str, prefix: str | None = None, map_location: Any = None,
                 allow_pickle: bool = False) -> None:
        self._file: str | None = None
        backbone = isinstance(checkpoint, str) and _loader(checkpoint) is load_from_mmcls
        select = prefix
        if backbone:  # MMCV keeps an mmcls:// checkpoint's backbone only, then selects
            select = "backbone." + (prefix or "")
        super().__init__(checkpoint, prefix=select, map_location=map_location,
                         allow_pickle=allow_pickle, revise_keys=None if prefix is None else [])
        self.mmcv_prefix = prefix

    @property  # type: ignore[override]
    def checkpoint(self) -> str:
        """The local file MMCV's loader would read (found, or downloaded, on first use)."""
        if self._file is None:
            self._file, temporary = resolve(self._reference, self.map_location)
            if temporary:
                weakref.finalize(self, _remove, self._file)
        return self._file

    @checkpoint.setter
    def checkpoint(self, value: str) -> None:
        self._reference, self._file = value, None

    def args(self) -> dict[str, Any]:
        return {"checkpoint": self._reference, "prefix": self.mmcv_prefix}

    def _get_init_info(self) -> str:
        return f"PretrainedInit: load from {self._reference}"  # MMCV's record text

    def __repr__(self) -> str:
        return f"PretrainedInit(checkpoint={self._reference!r}, prefix={self.mmcv_prefix!r})"


# -- MMCV's log lines for a load ---------------------------------------------------------------


def log_load(cfg: dict) -> None:
    """What MMCV logs before a ``Pretrained`` entry loads: ``load model from: ...`` (or
    ``load <prefix> in model from: ...``) on the ``mmcv`` logger, then its loader's
    ``load checkpoint from <loader> path: ...`` (printed, as MMCV's does, with a prefix)."""
    checkpoint, prefix = cfg.get("checkpoint"), cfg.get("prefix")
    if not isinstance(checkpoint, str):
        return  # (a bad entry: the run raises, naming it)
    mmcv_logger = get_logger("mmcv")
    line = f"load checkpoint from {_loader(checkpoint).__name__[10:]} path: {checkpoint}"
    if prefix is None:
        print_log(f"load model from: {checkpoint}", logger=mmcv_logger)
        print_log(line, logger=mmcv_logger)
    else:
        print_log(f"load {prefix} in model from: {checkpoint}", logger=mmcv_logger)
        print_log(line, logger=None)


def _module_order(module: nn.Module, keys: list[str]) -> list[str]:
    """``keys`` in the order MMCV's ``load_state_dict`` finds them unexpected: by the module
    that owns them (its walk, depth first), then as the checkpoint lists them."""
    order = {name: i for i, (name, _) in enumerate(module.named_modules(remove_duplicate=False))}

    def owner(key: str) -> int:
        parts = key.split(".")
        for n in range(len(parts) - 1, -1, -1):
            found = order.get(".".join(parts[:n]))
            if found is not None:
                return found
        return 0

    return sorted(keys, key=owner)


def log_mismatch(report: LoadReport, module: nn.Module | None) -> None:
    """MMCV's warning (``mmcv`` logger, rank 0) when a load did not match the module exactly:
    torch's size-mismatch lines, then the unexpected and the missing keys."""
    if get_dist_info()[0] != 0:
        return
    parts = [f"size mismatch for {k}: copying a param with shape {torch.Size(s)} from "
             f"checkpoint, the shape in current model is {torch.Size(m)}."
             for k, s, m in report.mismatched]
    unexpected = (_module_order(module, report.unexpected) if module is not None
                  else report.unexpected)
    if unexpected:
        parts.append(f"unexpected key in source state_dict: {', '.join(unexpected)}\n")
    if report.missing:
        parts.append(f"missing keys in source state_dict: {', '.join(report.missing)}\n")
    if parts:
        get_logger("mmcv").warning(
            "\n".join(["The model and loaded state dict do not match exactly\n", *parts]))
