"""Reading PyTorch pickle checkpoints safely: what the safe loader may rebuild, and why it
refused a file.

``torch.load(weights_only=True)`` rebuilds tensors and plain containers only. Real
checkpoints carry more: OpenMMLab (MMEngine) files keep a ``meta`` dict with numpy
scalars, arrays and dtypes. :data:`SAFE_GLOBALS` maps numpy's global names for those to
weightinit's validating stand-ins (:mod:`.numpy_values`: never numpy's own constructors,
which would build any memory layout the file describes), allowed for the duration of one
load with ``torch.serialization.safe_globals``; :func:`resolve` then swaps the
placeholders they leave for plain numpy objects. Anything else is still refused.

When the safe loader refuses a file, :func:`refusal` says why: a pickle that
imports code (:class:`UnsafeCheckpointError`, naming what it imports), a numpy value
outside those rules (also :class:`UnsafeCheckpointError`, naming its entry), one that
needs PyTorch tensor formats the safe loader can not rebuild, or a file that is
not a checkpoint. The imports are read from the pickle's opcodes (never run), so
a pickle the safe loader rejects for an unsupported opcode (protocol 4 framing)
is still called unsafe when it imports code.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import pickletools
import re
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ..compat import safe_globals
from ..errors import CheckpointError, MetadataError, UnsafeCheckpointError
from .fastpickle import fast_load
from .numpy_values import NUMPY_GLOBALS, reading, replacement


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to carry ``bytes`` (numpy 1.x arrays'
    data): a ``str`` to its latin-1 bytes, nothing else. torch >= 2.5 allows the real one by
    default (and keeps it over this); torch 2.4 does not."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"_codecs.encode of {type(text).__name__} with {encoding!r}: only a str to "
            "latin-1 bytes is read (how pickles carry bytes)")
    return text.encode("latin-1")


#: the globals a checkpoint may name beyond what ``weights_only=True`` allows: numpy's
#: scalars, arrays and dtypes (as in OpenMMLab ``meta`` dicts), and the bytes of a
#: protocol-2 pickle, as ``(stand-in, name)``
SAFE_GLOBALS: list[Any] = [*NUMPY_GLOBALS, (_latin1, "_codecs.encode")]


def safe_load(path: str, map_location: Any, mmap: bool) -> Any:
    """``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS` also allowed, numpy values
    rebuilt by :mod:`.numpy_values`.

    Raises :class:`MetadataError` (an ``UnpicklingError``) when the file holds a numpy value
    those rules refuse, even if torch then failed on something else.
    """
    read, value = fast_load(path, map_location, mmap)  # the common vocabulary, read in C
    if read:
        return value
    with reading(os.path.getsize(path)) as session, safe_globals(SAFE_GLOBALS):
        try:
            loaded = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as err:
            if session.problems:  # e.g. torch would not BUILD a refused value: say why
                raise MetadataError(session.problems[0]) from err
            raise
        out = resolve(loaded)
    if session.problems:  # a refused value that is not in the result (dropped, or hidden)
        raise MetadataError(session.problems[0])
    return out


def resolve(root: Any) -> Any:
    """``root`` with every numpy placeholder of a safe load replaced by its numpy object.

    Lists, dicts (``OrderedDict``, ``Counter``), sets, instance dicts and tensors' attributes
    are changed in place, so shared and cyclic references stay so; a tuple holding a
    placeholder is rebuilt (refused if it contains itself, since its copy could not). The walk
    is iterative (a deeply nested pickle can not exhaust the stack), skips plain numbers and
    strings, and keeps no more than a few references per container. Raises
    :class:`MetadataError` naming the entry of the first refused value.
    """
    replaced: dict[int, Any] = {}  # id -> what replaces it
    closed: set[int] = set()  # containers walked to the end
    opened: set[int] = set()  # containers whose children are being walked
    cyclic: set[int] = set()  # tuples met again while their own children were walked
    found: dict[int, Any] = {id(root): None}  # id -> (container, kind, key) where first seen
    hold: list[Any] = []  # keeps walked objects alive, so no id is reused during the walk
    work: list[tuple[Any, bool]] = [(root, False)]
    while work:
        obj, leaving = work.pop()
        key = id(obj)
        if leaving:
            opened.discard(key)
            closed.add(key)
            if replaced:  # nothing below can have changed before the first replacement
                new = _rebuilt(obj, replaced, key in cyclic, lambda o=obj: _entry(o, found))
                if new is not obj:
                    replaced[key] = new
            continue
        if key in closed or key in replaced or key in opened:
            if key in opened and type(obj) is tuple:
                cyclic.add(key)
            continue
        hold.append(obj)
        try:
            new = replacement(obj)
        except MetadataError as err:
            raise MetadataError(err.problem, _entry(obj, found)) from None
        if new is not obj:
            replaced[key] = new
            continue
        kids = list(_children(obj))
        if not kids:  # only numbers and strings (or nothing): nothing to replace
            closed.add(key)
            continue
        opened.add(key)
        work.append((obj, True))
        for kind, label, kid in kids:
            found.setdefault(id(kid), (obj, kind, label))
            work.append((kid, False))
    return replaced.get(id(root), root)


_DICTS = (dict, OrderedDict, Counter)
#: types that hold no other object, so never a numpy placeholder (numpy scalars too)
_PLAIN = {int, float, complex, bool, str, bytes, bytearray, type(None)}


def _children(obj: Any) -> Iterator[tuple[str, Any, Any]]:
    """``(kind, key, child)`` for each object ``obj`` holds that may be or hold a numpy
    placeholder."""
    kind = type(obj)
    pairs: Iterable[tuple[str, Any, Any]] = ()
    if kind is list or kind is tuple:
        pairs = (("item", i, x) for i, x in enumerate(obj))
    elif kind is set:
        pairs = (("member", None, x) for x in obj)
    elif kind in _DICTS:
        pairs = itertools.chain((("key", None, k) for k in obj),
                                (("item", k, v) for k, v in obj.items()))
    if kind in _DICTS or isinstance(obj, torch.Tensor):
        # attributes torch's BUILD gave an OrderedDict; a tensor's from its pickled record
        extra = [("attr", "__dict__", getattr(obj, "__dict__", None))]
        if isinstance(obj, torch.Tensor):
            extra.append(("attr", "_backward_hooks", obj._backward_hooks))
        pairs = itertools.chain(pairs, (e for e in extra if e[2]))
    for item in pairs:
        if type(item[2]) not in _PLAIN and not isinstance(item[2], np.generic):
            yield item


def _rebuilt(obj: Any, replaced: dict[int, Any], cyclic: bool, entry: Callable[[], str]) -> Any:
    """``obj`` with its children replaced (in place, except for a tuple: a new one)."""
    def get(x: Any) -> Any:
        return replaced.get(id(x), x)

    kind = type(obj)
    if kind is tuple:
        if all(get(x) is x for x in obj):
            return obj
        if cyclic:
            raise MetadataError("a tuple of numpy values that contains itself", entry())
        return tuple(get(x) for x in obj)
    if kind is list:
        for i, x in enumerate(obj):
            if get(x) is not x:
                obj[i] = get(x)
    elif kind is set:
        if any(get(x) is not x for x in obj):
            members = [get(x) for x in obj]
            obj.clear()
            obj.update(members)
    elif kind in _DICTS:
        if any(get(k) is not k for k in obj):
            items = [(get(k), get(v)) for k, v in obj.items()]
            obj.clear()
            for k, v in items:
                obj[k] = v
        else:
            for k, v in list(obj.items()):
                if get(v) is not v:
                    obj[k] = get(v)
    if isinstance(obj, torch.Tensor) and get(obj._backward_hooks) is not obj._backward_hooks:
        obj._backward_hooks = get(obj._backward_hooks)
    return obj


def _entry(obj: Any, found: dict[int, Any]) -> str:
    """Where ``obj`` sits in the checkpoint, e.g. ``checkpoint['meta']['hook_msgs']``."""
    parts: list[str] = []
    step = found.get(id(obj))
    while step is not None:
        container, kind, key = step
        parts.append(f"[{_key_text(key)}]" if kind == "item" else f".{key}"
                     if kind == "attr" else f"[<a {kind}>]")
        step = found.get(id(container))
    if len(parts) > 12:  # a deeply nested entry: its innermost steps say enough
        parts = parts[:12] + ["..."]
    return "checkpoint" + "".join(reversed(parts))


def _key_text(key: Any) -> str:
    if type(key) in (str, int, float, bool, bytes) or key is None:
        text = repr(key)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"<{type(key).__name__}>"


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
    safe = {g[1] for g in SAFE_GLOBALS}
    return name in safe or name.startswith("torch.") and "._rebuild" in name


def refusal(err: BaseException, source: str, path: str, pre: str) -> CheckpointError:
    """The error for a pickle the safe loader refused with ``err``."""
    if isinstance(err, MetadataError):
        where = f"{source}: entry {err.entry}" if err.entry else source
        return UnsafeCheckpointError(
            f"{pre}{where} holds {err.problem}. The safe loader (weights_only=True) rebuilds "
            "only numpy bools, numbers and numeric arrays whose bytes are all in the file, "
            "because a hand-made numpy value can crash the process or read memory it does "
            "not own. Fix: save such values as plain Python numbers or lists, or if you "
            "trust the file, opt in with allow_pickle=True (e.g. dict(type='Pretrained', "
            "checkpoint=..., allow_pickle=True)).")
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
