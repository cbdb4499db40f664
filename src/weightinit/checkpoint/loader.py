"""Read checkpoints safely and lazily into a ``{key: tensor}`` view.

``.safetensors`` files are opened with ``safe_open``: planning reads only
the header (names, shapes, dtypes) and a tensor is read when it is written; so are
Hugging Face sharded checkpoints (index and shards; :mod:`.sharded` says how).
PyTorch files (``.pth/.pt/.bin``) are read with ``torch.load(weights_only=True,
mmap=True)``: a pickle that needs arbitrary code is refused unless the
caller opts in with ``allow_pickle=True``.

Key handling: weights nested under ``state_dict`` (MMEngine), ``model`` or
``module`` are unwrapped; ``revise_keys`` regex substitutions are applied
(default: strip DDP's ``module.``); with ``prefix`` only the keys under it
are kept, with the prefix removed.

Every entry that will be loaded is checked while planning, before any write
(:meth:`CheckpointState.check_entry`): it must be a dense tensor with values
(not sparse, quantized or on ``meta``), of a dtype torch can read and copy
(a ``.safetensors`` dtype is read from the header). An entry of another dtype
kind than the model tensor (complex into real, integer into floating...) is a
mismatch, handled by the ``mismatch`` policy (:mod:`..planning.checkpoint_checks`). Memory-mapped files are watched: if one is truncated
or rewritten in place after it was opened, the read raises
:class:`CheckpointError` instead of crashing the process with ``SIGBUS``.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import safetensors
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..errors import CheckpointError
from .cache import unreadable
from .downloads import download_limits
from .keys import DEFAULT_REVISE_KEYS as DEFAULT_REVISE_KEYS
from .keys import check_revise_keys as check_revise_keys
from .keys import select_keys
from .pickles import not_readable, refusal, safe_load
from .sharded import checkpoint_file, is_index, open_index
from .sources import FileGuard

_NESTED = ("state_dict", "model", "module")

#: safetensors header dtype -> name of the torch dtype ``safe_open(framework="pt")`` reads
#: it as (``None``: no torch dtype). A name the installed torch lacks is not loadable.
_SAFETENSORS_DTYPES: dict[str, str | None] = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64",
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "C64": "complex64",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E8M0": "float8_e8m0fnu",
    "F4": "float4_e2m1fn_x2", "F6_E2M3": None, "F6_E3M2": None,
}
#: torch dtypes whose values can not be copied into another dtype (packed sub-byte
#: formats, raw bit containers): a checkpoint entry of one of these is refused.
_UNCOPYABLE = {"float4_e2m1fn_x2", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16"}


class CheckpointState:
    """A read-only ``key -> tensor`` view that loads each tensor only when asked."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._dense: dict[str, Any] = {}
        self._lazy: dict[str, tuple[Any, str]] = {}
        self._read: dict[str, Tensor] = {}  # lazy entries already read (memory-mapped)
        self._guard: FileGuard | None = None  # the memory-mapped file, if any
        self._files: dict[str, str] = {}  # lazy entry -> the file holding it

    @classmethod
    def from_dict(cls, source: str, state: dict[str, Any]) -> CheckpointState:
        out = cls(source)
        out._dense = dict(state)
        return out

    @classmethod
    def from_safetensors(cls, source: str, path: str, device: Any = "cpu",
                         where: str = "") -> CheckpointState:
        out = cls(source)
        out._guard = FileGuard(source, path)
        handle = _safe_open(source, path, device, _prefixed(where))
        out._lazy = {k: (handle, k) for k in handle.keys()}
        out._files = dict.fromkeys(out._lazy, path)
        return out

    def file_of(self, key: str) -> str:
        """The file entry ``key`` is read from (a sharded checkpoint's shard), else the source."""
        return self._files.get(key, self.source)

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

    def dtype(self, key: str, where: str = "") -> torch.dtype:
        """Entry ``key``'s torch dtype (for ``.safetensors``, from the header: nothing is read).

        Raises :class:`CheckpointError` when the file declares a dtype torch can not load.
        """
        if key not in self._lazy:
            return self._dense[key].dtype
        handle, name = self._lazy[key]
        declared = handle.get_slice(name).get_dtype()
        torch_name = _SAFETENSORS_DTYPES.get(declared)
        dtype = getattr(torch, torch_name, None) if torch_name else None
        if not isinstance(dtype, torch.dtype):
            lacks = (f"torch {torch.__version__} has no such dtype" if torch_name
                     else "torch has no dtype for it" if declared in _SAFETENSORS_DTYPES
                     else "weightinit does not know this safetensors dtype")
            raise CheckpointError(
                f"{_prefixed(where)}{self.source}: entry {key!r} has dtype {declared!r} in the "
                f"safetensors header, which can not be loaded into PyTorch ({lacks}). Fix: "
                "save this tensor in a dtype PyTorch reads (e.g. F32, F16, BF16), or leave "
                "this key out with prefix=/revise_keys=.")
        return dtype

    def check_entry(self, key: str, dtype: torch.dtype, where: str = "") -> None:
        """Raise :class:`CheckpointError` unless entry ``key`` can be copied into a dense
        tensor of ``dtype`` (checked while planning; a lazy entry is not read)."""
        pre = _prefixed(where)
        problem = fix = None
        if key in self._dense:
            t = self._dense[key]
            if t.layout != torch.strided:
                problem = f"is a {str(t.layout).replace('torch.', '')} tensor"
                fix = "save t.to_dense() instead"
            elif t.is_quantized:
                problem = f"is a quantized tensor ({t.dtype})"
                fix = "save t.dequantize() instead"
            elif t.is_meta:
                problem = ("is on the meta device (it holds no values: it was saved from a meta "
                           "tensor, or map_location sent it there)")
                fix = ("save the tensor from a model that has values, and read it with "
                       "map_location='cpu' or a real device")
        if problem is None:
            src = self.dtype(key, where)
            short = str(src).replace("torch.", "")
            if short in _UNCOPYABLE:
                problem = (f"has dtype {short}, whose values PyTorch can not copy into another "
                           "dtype")
                fix = "save it unpacked in a dtype such as float32, float16 or bfloat16"
        if problem is not None:
            raise CheckpointError(
                f"{pre}{self.source}: entry {key!r} {problem}; it can not be loaded into the "
                f"model. Fix: {fix}, or leave this key out with prefix=/revise_keys=.")

    def get(self, key: str) -> Tensor:
        """Entry ``key`` (a ``.safetensors`` entry is read now, once).

        Raises :class:`CheckpointError` when the file can no longer be read.
        """
        if key in self._lazy:
            out = self._read.get(key)
            if out is None:
                handle, name = self._lazy[key]
                out = self._read[key] = self._read_lazy(key, lambda: handle.get_tensor(name))
            return out
        if self._guard is not None:
            self._guard.check(key)
        return self._dense[key]

    def _read_lazy(self, key: str, read: Any) -> Tensor:
        if self._guard is not None:
            self._guard.check(key)
        try:
            return read()
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{self.source}: can not read entry {key!r}: {err}. Fix: check "
                                  "that the file is complete and was not modified while "
                                  "loading.") from err

    def get_slice(self, key: str, index: tuple[slice, ...]) -> Tensor:
        """``get(key)[index]``, reading only that part of a ``.safetensors`` file.

        A rank of a sharded model asks for its shard: a safetensors entry is
        read through ``get_slice`` (only the bytes of those rows), a
        memory-mapped ``.pth`` tensor is indexed without reading the rest.
        """
        if key in self._lazy and key not in self._read:
            handle, name = self._lazy[key]
            return self._read_lazy(key, lambda: handle.get_slice(name)[index])
        return self.get(key)[index]

    def renamed(self, mapping: dict[str, str]) -> CheckpointState:
        """A view with keys renamed ``new <- old`` (old keys not in ``mapping`` dropped)."""
        out = CheckpointState(self.source)
        out._guard = self._guard
        for new, old in mapping.items():
            if old in self._lazy:
                out._lazy[new] = self._lazy[old]
                out._files[new] = self.file_of(old)
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
    #: ``(key, checkpoint dtype, model dtype)`` of entries skipped for another dtype kind
    dtype_mismatched: list[tuple[str, torch.dtype, torch.dtype]] = field(default_factory=list)
    #: loaded keys whose values include NaN or infinity
    nonfinite: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{len(self.loaded)} loaded"]
        if self.missing:
            parts.append(f"missing in checkpoint: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected in checkpoint: {', '.join(self.unexpected)}")
        if self.mismatched:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} (checkpoint {s}, model {m})" for k, s, m in self.mismatched))
        if self.dtype_mismatched:
            parts.append("dtype mismatch: " + ", ".join(
                f"{k} (checkpoint {_short(s)}, model {_short(m)})"
                for k, s, m in self.dtype_mismatched))
        if self.nonfinite:
            parts.append(f"non-finite values (NaN/inf) in: {', '.join(self.nonfinite)}")
        return f"{self.source}: " + "; ".join(parts)


def _short(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _prefixed(where: str) -> str:
    return f"{where}: " if where else ""


def read_checkpoint(source: str, map_location: Any = "cpu", *, allow_pickle: bool = False,
                    sha256: str | None = None, where: str = "", timeout: float | None = None,
                    deadline: float | None = None) -> CheckpointState | Any:
    """Open a checkpoint reference (path, ``file://``, URL, ``torchvision://``, custom scheme).

    Returns a :class:`CheckpointState` for safetensors files, else the
    object stored in the PyTorch file. ``timeout``/``deadline`` bound a download
    (see :func:`~.downloads.download`).
    """
    return _open(source, map_location, allow_pickle, sha256, where, timeout, deadline)[0]


def _open(source: str, map_location: Any, allow_pickle: bool, sha256: str | None,
          where: str, timeout: float | None = None, deadline: float | None = None
          ) -> tuple[CheckpointState | Any, FileGuard | None]:
    """:func:`read_checkpoint`, and the guard of the file when its tensors are memory-mapped."""
    pre = _prefixed(where)
    with download_limits(timeout, deadline):
        path = checkpoint_file(source, sha256, pre)
    if is_index(path):
        state = CheckpointState(source)
        state._lazy, state._guard, state._files = open_index(
            source, path, lambda label, shard: _safe_open(label, shard, map_location, pre), pre)
        return state, None
    if path.endswith(".safetensors"):
        return CheckpointState.from_safetensors(source, path, map_location, where), None
    guard = FileGuard(source, path)  # before the read: a change after it is then seen
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")
            return _load(path, map_location, allow_pickle), guard
    except pickle.UnpicklingError as err:
        if allow_pickle:
            raise not_readable(f"{pre}{source}", err, "") from err
        raise refusal(err, source, path, pre) from err
    except PermissionError as err:
        raise unreadable(f"{pre}{source}", path, err) from err
    except Exception as err:  # torch.load raises many kinds on a corrupt or foreign file
        raise not_readable(f"{pre}{source}", err, "") from err


def _load(path: str, map_location: Any, allow_pickle: bool) -> Any:
    """The object in a PyTorch file: memory-mapped if it can be, safely unless allowed."""
    def load(mmap: bool) -> Any:
        if allow_pickle:
            return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
        return safe_load(path, map_location, mmap)

    try:
        return load(True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # legacy (non-zip) files cannot be memory-mapped
            raise
        return load(False)


def _safe_open(source: str, path: str, map_location: Any, pre: str) -> Any:
    """``safe_open`` ``path`` (named ``source`` in errors), its failures explained."""
    if isinstance(map_location, dict) or callable(map_location):
        raise CheckpointError(
            f"{pre}{source}: map_location={map_location!r} (a {type(map_location).__name__}) "
            "only works for PyTorch (.pth) files. Fix: give a device for .safetensors, e.g. "
            "map_location='cpu' or 'cuda:0'.")
    device = "cpu" if map_location is None else str(map_location)
    try:
        return safe_open(path, framework="pt", device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        text = str(err)
        dtype = re.search(r"unknown variant `([^`]*)`", text)
        if dtype is not None:
            raise CheckpointError(
                f"{pre}{source}: its safetensors header declares the tensor dtype "
                f"{dtype.group(1)!r}, which safetensors {safetensors.__version__} does not "
                "know, so the file can not be opened. Fix: save the tensors in a dtype PyTorch reads (e.g. F32, "
                "F16, BF16), or upgrade safetensors if the dtype is newer than it.") from err
        if re.search(r"device .* is invalid", text):
            raise CheckpointError(
                f"{pre}{source}: map_location={map_location!r} is not a device safetensors can "
                f"read to ({text}). Fix: use 'cpu' or an available accelerator such as "
                "'cuda:0'.") from err
        raise CheckpointError(f"{pre}{source} is not a readable safetensors file (truncated or "
                              f"corrupt?): {err}. Fix: download or save it again.") from err


def unwrap_state(ckpt: Any, source: str, where: str = "") -> CheckpointState:
    """The ``key -> tensor`` view of what a checkpoint file holds: its weights, unwrapped from
    ``state_dict``/``model``/``module``. Every key must be a string."""
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
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise CheckpointError(
            f"{_prefixed(where)}{source}: the state dict has key {bad[0]!r} (a "
            f"{type(bad[0]).__name__}), but keys must be strings naming tensors such as "
            "'conv.weight'. Fix: save model.state_dict(), or rebuild the dict with str keys.")
    return CheckpointState.from_dict(source, state)


def load_pretrained_state(init: Any, where: str = "") -> CheckpointState:
    """The ``key -> tensor`` view a ``Pretrained`` rule loads, after key selection and renaming."""
    ckpt, guard = _open(init.checkpoint, init.map_location,
                        getattr(init, "allow_pickle", False), getattr(init, "sha256", None),
                        where, getattr(init, "timeout", None), getattr(init, "deadline", None))
    state = unwrap_state(ckpt, init.checkpoint, where)
    if guard is not None:
        state._guard = guard
    mapping = select_keys(state.keys(), getattr(init, "revise_keys", None), init.prefix,
                          init.checkpoint, where)
    return state.renamed(mapping)
