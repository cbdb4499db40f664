"""Reading PyTorch pickle checkpoints safely: what the safe loader may rebuild, and why it
refused a file.

``torch.load(weights_only=True)`` rebuilds tensors and plain containers only. Real
checkpoints carry more: OpenMMLab (MMEngine) files keep a ``meta`` dict with numpy
scalars, arrays and dtypes. :data:`SAFE_GLOBALS` lists those benign classes (data
containers whose rebuilding runs no code of the file's choosing), allowed for
the duration of one load with ``torch.serialization.safe_globals``; anything
else is still refused.

When the safe loader refuses a file, :func:`refusal` says why: a pickle that
imports code (:class:`UnsafeCheckpointError`, naming what it imports), one that
needs PyTorch tensor formats the safe loader can not rebuild, or a file that is
not a checkpoint. The imports are read from the pickle's opcodes (never run), so
a pickle the safe loader rejects for an unsupported opcode (protocol 4 framing)
is still called unsafe when it imports code.
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..compat import numpy_multiarray, safe_globals
from ..errors import CheckpointError, UnsafeCheckpointError


def _numpy_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    multiarray = numpy_multiarray()
    out: list[Any] = [np.ndarray, np.dtype]
    for name in ("scalar", "_reconstruct"):
        func = getattr(multiarray, name)
        # files written with numpy 1.x name numpy.core, numpy 2.x numpy._core
        out += [(func, f"numpy.core.multiarray.{name}"), (func, f"numpy._core.multiarray.{name}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")
                and isinstance(getattr(dtypes, n), type)]
    return out


#: the globals a checkpoint may name beyond what ``weights_only=True`` allows: numpy's
#: scalars, arrays and dtypes (as in OpenMMLab ``meta`` dicts)
SAFE_GLOBALS = _numpy_globals()


def safe_load(path: str, map_location: Any, mmap: bool) -> Any:
    """``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS` also allowed."""
    with safe_globals(SAFE_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def pickle_globals(path: str) -> list[str] | None:
    """The ``module.name`` globals a pickle checkpoint imports, read from its opcodes (None:
    not a pickle)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                data = zf.read(names[0]) if names else b""
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if data[:1] != b"\x80":
        return None
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # a legacy torch file is several pickles in a row
        before = stream.tell()
        try:
            found += _globals_of_one(stream)
        except Exception:  # noqa: BLE001 - pickletools raises assorted types on bad input
            if before == 0:
                return None
            break
        if stream.tell() == before:
            break
        if not found and stream.tell() < len(data) and data[stream.tell():][:1] != b"\x80":
            break  # raw storage bytes follow the pickles
    return found


def _globals_of_one(stream: io.BytesIO) -> list[str]:
    found = []
    strings: list[str] = []  # recent string pushes (STACK_GLOBAL takes the last two)
    memo: dict[int, Any] = {}
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8",
                      "SHORT_BINSTRING", "BINSTRING", "STRING"):
            strings.append(str(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = strings[-1] if strings else None
        elif name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(int(arg)), str):
            strings.append(memo[int(arg)])
        elif name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
    return found


def is_tensor_format(name: str) -> bool:
    """Whether the pickle global ``name`` is one of torch's own tensor formats (a
    ``_rebuild_*`` function, a dtype, layout or quantization scheme), not foreign code."""
    if re.fullmatch(r"torch\.(_utils|_tensor)\._rebuild_\w+", name):
        return True
    head, _, attr = name.partition(".")
    value = getattr(torch, attr, None) if head == "torch" and "." not in attr else None
    return isinstance(value, (torch.dtype, torch.layout, torch.qscheme))


def _allowed(name: str) -> bool:
    if is_tensor_format(name) or name.startswith(("collections.", "torch._utils.",
                                                  "builtins.")):
        return True
    safe = {getattr(g, "__module__", "") + "." + getattr(g, "__qualname__", "")
            for g in SAFE_GLOBALS if not isinstance(g, tuple)}
    safe |= {g[1] for g in SAFE_GLOBALS if isinstance(g, tuple)}
    return name in safe or name.startswith("torch.") and "._rebuild" in name


def refusal(err: BaseException, source: str, path: str, pre: str) -> CheckpointError:
    """The error for a pickle the safe loader refused with ``err``."""
    wants = re.findall(r"GLOBAL ([\w.]+)", str(err))
    scanned = pickle_globals(path) if not wants or "Unsupported operand" in str(err) else None
    if scanned is not None:
        wants = [g for g in scanned if not _allowed(g)] or wants
    if not wants:
        if "Unsupported operand" in str(err) and scanned is not None:
            return CheckpointError(
                f"{pre}{source} uses a pickle instruction torch {torch.__version__}'s safe "
                "loader (weights_only=True) does not support (e.g. pickle protocol 4 or 5), "
                "though it imports no code. Fix: save it again with torch.save's default "
                "protocol, or if you trust the file, pass allow_pickle=True.")
        return not_readable(source, err, pre)
    if all(is_tensor_format(name) for name in wants):
        return CheckpointError(
            f"{pre}{source} holds tensors that torch {torch.__version__}'s safe loader "
            "(weights_only=True) can not rebuild: it needs "
            f"{', '.join(sorted(set(wants)))}, which are PyTorch's own tensor formats "
            "(e.g. quantized or sparse tensors, or a newer dtype), not third-party code. "
            "Fix: save dense tensors of a common dtype (t.to_dense(), t.dequantize(), "
            "t.float()), or upgrade PyTorch, or if you trust the file, pass "
            "allow_pickle=True.")
    return UnsafeCheckpointError(
        f"{pre}{source} is a pickle that needs arbitrary code to load; it wants to import "
        f"{', '.join(sorted(set(wants)))}; refused because loading it could run that code. "
        "Fix: convert it to .safetensors, or if you trust the file, opt in with "
        "allow_pickle=True (e.g. dict(type='Pretrained', checkpoint=..., "
        "allow_pickle=True)).")


def not_readable(source: str, err: BaseException, pre: str) -> CheckpointError:
    return CheckpointError(f"{pre}{source} is not a readable PyTorch checkpoint "
                           f"(truncated, corrupt or another format?): {err}")
