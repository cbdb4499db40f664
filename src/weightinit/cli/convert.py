"""``weightinit convert IN OUT.safetensors``: a checkpoint's tensors, rewritten as safetensors.

The input is read with the same safe loader as ``Pretrained`` (a pickle that
imports code is refused unless ``--allow-pickle``; ``--sha256`` is checked; a
URL is downloaded into the cache) and its weights are unwrapped from
``state_dict``/``model``/``module`` as the loader does; the keys are kept as
they are. Entries that are not tensors (numbers, strings, nested dicts) have no
place in safetensors: they are left out, with a note naming them. Tensors that
share storage (tied weights) are each written whole. The file is written to a
temporary name and renamed, so a failure leaves no partial output.

A pickle stores a view as its storage plus a shape and strides, so a file of a
few bytes can describe a tensor of any size (``torch.zeros(1).expand(2**40)``,
``as_strided`` with stride 0, one storage aliased by a thousand keys);
safetensors stores every element. Before anything is copied or written, the
output's size is compared with the input's stored tensor bytes (each distinct
storage counted once): more than :data:`EXPAND_FACTOR` times that, plus
:data:`EXPAND_SLACK`, is refused unless ``--allow-expand``. Keys are printed as
plain text: a key is data from the file, never console markup.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.text import Text
from safetensors.torch import save_file
from torch import Tensor

from ..checkpoint.loader import CheckpointState, read_checkpoint, unwrap_state
from ..errors import CheckpointError, UsageError
from .output import Output, one_line

#: Output may be this many times the input's stored tensor bytes without ``--allow-expand``:
#: a tied pair (embedding and output head sharing one storage) is written twice, so a file
#: of only tied pairs doubles; anything beyond repeats stored values (stride-0 views, many
#: aliases of one storage).
EXPAND_FACTOR = 2
#: ... plus this many bytes, so small files with a few broadcast constants still convert.
EXPAND_SLACK = 1 << 20


@dataclass
class _Storage:
    """One stored buffer of the input and the entries written from it."""

    nbytes: int
    keys: list[str] = field(default_factory=list)
    #: bytes the entries reading this storage take in the output
    written: int = 0
    #: (shape, strides) of the first entry, to show how a view repeats values
    layout: tuple[tuple[int, ...], tuple[int, ...]] | None = None


@dataclass
class _Selection:
    """What ``convert`` will write, measured before any tensor is copied or read."""

    #: keys of the tensors to write, in the input's order
    keys: list[str] = field(default_factory=list)
    #: keys left out because they are not tensors
    dropped: list[str] = field(default_factory=list)
    #: stored buffers by identity; a ``.safetensors`` entry is its own buffer
    storages: dict[object, _Storage] = field(default_factory=dict)

    @property
    def stored(self) -> int:
        return sum(s.nbytes for s in self.storages.values())

    @property
    def written(self) -> int:
        return sum(s.written for s in self.storages.values())


#: how to turn each kind of tensor safetensors can not store into one it can
_STORABLE_FIX = {
    "nested": "save its components (t.unbind()) or t.to_padded_tensor(0)",
    "quantized": "save t.dequantize()",
    "meta": "save the tensor from a model that has values (not one on the meta device)",
}


def _unstorable(t: Tensor) -> str | None:
    """Why safetensors can not store ``t`` (None: it can, as a dense strided tensor)."""
    if t.is_nested:
        return "nested"
    if t.is_quantized:
        return "quantized"
    if t.is_meta:
        return "meta"
    if t.layout != torch.strided:
        return str(t.layout).replace("torch.", "")
    return None


def _select(view: CheckpointState, lazy: bool, source: str) -> _Selection:
    """Measure every entry: its output bytes and the storage it reads, reading no values.

    ``lazy``: the entries are ``.safetensors`` tensors, sized from the header (each its own
    buffer); otherwise they are the (memory-mapped) tensors ``torch.load`` rebuilt.
    """
    sel = _Selection()
    for key in view.keys():
        if not view.is_tensor(key):
            sel.dropped.append(key)
            continue
        if lazy:
            nbytes = math.prod(view.shape(key)) * view.dtype(key).itemsize
            sel.storages[("entry", key)] = _Storage(nbytes, [key], nbytes)
            sel.keys.append(key)
            continue
        t = view.get(key)
        kind = _unstorable(t)
        if kind is not None:
            raise CheckpointError(
                f"{source}: entry {key!r} is a {kind} tensor, which safetensors can not store. "
                f"Fix: {_STORABLE_FIX.get(kind, 'save t.to_dense()')} in the checkpoint and "
                "convert again.")
        try:
            storage = t.untyped_storage()
            nbytes, ptr = storage.nbytes(), storage.data_ptr()
            written = t.numel() * t.element_size()
            layout = (tuple(t.shape), tuple(t.stride()))
        except _TORCH_FAILURES as err:  # a tensor subclass from an allowed pickle
            raise _entry_error(source, key, "can not be measured", err) from err
        # An empty storage has no address to tell it apart; it adds no bytes either way.
        ident = ("storage", t.device, ptr) if nbytes else ("entry", key)
        slot = sel.storages.setdefault(ident, _Storage(nbytes))
        slot.keys.append(key)
        slot.written += written
        if slot.layout is None:
            slot.layout = layout
        sel.keys.append(key)
    return sel


#: what torch raises on a tensor it can not measure or copy (out of memory included)
_TORCH_FAILURES = (RuntimeError, MemoryError, TypeError, ValueError, NotImplementedError)


def _entry_error(source: str, key: str, what: str, err: BaseException) -> CheckpointError:
    """A library error for entry ``key`` that torch could not handle (library errors pass)."""
    if isinstance(err, CheckpointError):
        return err
    return CheckpointError(f"{source}: entry {key!r} {what}: {one_line(err)}. Fix: free "
                           "memory if it ran out, else re-save the checkpoint with plain "
                           "dense tensors (t.detach().clone()).")


def _check_expansion(sel: _Selection, source: str) -> None:
    """Raise :class:`CheckpointError` if the output would be far larger than the input's
    stored tensor bytes (see :data:`EXPAND_FACTOR`)."""
    stored, written = sel.stored, sel.written
    if written <= EXPAND_FACTOR * stored + EXPAND_SLACK:
        return
    repeating = [s for s in sel.storages.values() if s.written > s.nbytes]
    worst = sorted(repeating, key=lambda s: s.nbytes - s.written)[:3]
    shown = []
    for s in worst:
        if len(s.keys) == 1 and s.layout is not None:
            shape, strides = s.layout
            shown.append(f"{s.keys[0]!r} (shape {list(shape)}, strides {list(strides)}) "
                         f"writes {s.written:,} bytes from {s.nbytes:,} stored")
        else:
            names = ", ".join(repr(k) for k in s.keys[:3])
            more = f" and {len(s.keys) - 3} more" if len(s.keys) > 3 else ""
            shown.append(f"{names}{more} share one storage of {s.nbytes:,} bytes and write "
                         f"{s.written:,}")
    raise CheckpointError(
        f"{source}: converting would write {written:,} bytes of tensors from {stored:,} bytes "
        f"stored in the file (more than {EXPAND_FACTOR}x): views repeat stored values "
        f"(stride-0 or overlapping strides, or many keys aliasing one storage): "
        f"{'; '.join(shown)}. Nothing was written. Fix: if you expect the expanded size, "
        "run again with --allow-expand; else re-save the checkpoint with each tensor "
        "holding its own values (t.clone()).")


def _materialize(view: CheckpointState, sel: _Selection) -> dict[str, Tensor]:
    """The tensors to write, each owning exactly its values: aliases and views are copied,
    conjugate/negative views resolved (safetensors writes a tensor's storage bytes)."""
    out: dict[str, Tensor] = {}
    seen: set[object] = set()
    for key in sel.keys:
        t = view.get(key).detach()
        try:
            if t.is_conj() or t.is_neg():
                t = t.resolve_conj().resolve_neg()
            storage = t.untyped_storage()
            ident = (t.device, storage.data_ptr())
            whole = t.is_contiguous() and t.storage_offset() == 0 \
                and storage.nbytes() == t.numel() * t.element_size()
            if ident in seen or not whole:
                t = t.clone(memory_format=torch.contiguous_format)
            seen.add(ident)
        except _TORCH_FAILURES as err:
            raise _entry_error(view.source, key, f"({t.numel():,} elements of {t.dtype}) can "
                               "not be copied into its own storage", err) from err
        out[key] = t
    return out


#: an example call in a loader message (``(e.g. dict(..., allow_pickle=True))``)
_EXAMPLE = re.compile(r"\s*\((?:e\.g\.|for example)[^()]*(?:\([^()]*\)[^()]*)*\)")
#: the Python opt-in, ``allow_pickle=True``
_PYTHON_FLAG = re.compile(r"\ballow_pickle\b(?:\s*=\s*True\b)?")
#: advice that is this very command
_CONVERT_ADVICE = re.compile(r"\bconvert it to \.safetensors, or ")


def _for_command_line(err: CheckpointError) -> CheckpointError:
    """``err`` with the loader's Python opt-in (``allow_pickle=True``) named as this
    command's flag, ``--allow-pickle``: a user of the command line has no argument to pass."""
    text = str(err)
    if "allow_pickle" not in text:
        return err
    text = _EXAMPLE.sub(lambda m: "" if "allow_pickle" in m.group() else m.group(), text)
    text = _PYTHON_FLAG.sub("--allow-pickle", _CONVERT_ADVICE.sub("", text))
    try:
        return type(err)(text)
    except TypeError:  # a subclass with another constructor: keep the domain class
        return CheckpointError(text)


def cmd_convert(args: argparse.Namespace, out: Output) -> int:
    target = Path(args.output).expanduser()
    if target.suffix.lower() != ".safetensors":
        raise UsageError(f"{args.output}: the output must be a .safetensors file")
    if args.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        raise UsageError(f"--sha256 {args.sha256}: expected 64 hexadecimal digits")
    try:
        state = read_checkpoint(args.input, "cpu", allow_pickle=args.allow_pickle,
                                sha256=args.sha256, timeout=args.timeout,
                                deadline=args.deadline)
    except CheckpointError as err:
        raise _for_command_line(err) from err
    view = unwrap_state(state, args.input)
    sel = _select(view, isinstance(state, CheckpointState), args.input)
    if not sel.keys:
        raise CheckpointError(f"{args.input}: holds no tensors to convert. Fix: check that it "
                              "is a checkpoint of model weights.")
    if not args.allow_expand:
        _check_expansion(sel, args.input)
    tensors = _materialize(view, sel)
    if sel.dropped:
        shown = ", ".join(sel.dropped[:10]) + (f" and {len(sel.dropped) - 10} more"
                                                if len(sel.dropped) > 10 else "")
        # Text: keys are the file's data, printed as they are (never read as rich markup).
        out.print(Text(f"note: left out {len(sel.dropped)} entries that are not tensors: "
                       f"{shown}"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        try:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        except (ValueError, RuntimeError, TypeError, MemoryError) as err:
            raise CheckpointError(f"cannot write {args.output}: {one_line(err)}") from err
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    size = target.stat().st_size
    out.print(Text(f"wrote {args.output}: {len(tensors)} tensors, {size:,} bytes"))
    return 0


def add_convert(sub: argparse._SubParsersAction, base: argparse.ArgumentParser) -> None:
    """Declare ``weightinit convert`` (``base``: the options every command takes)."""
    p = sub.add_parser("convert", parents=[base],
                       help="rewrite a checkpoint's tensors as .safetensors",
                       description="Read a checkpoint (.pth/.pt/.bin/.ckpt, .safetensors, a "
                                   "URL...) with the safe loader and write its tensors to a "
                                   ".safetensors file. Entries that are not tensors are left "
                                   "out, with a note.")
    p.add_argument("input", help="checkpoint to read: a path, file://, http(s):// or "
                                 "torchvision://NAME")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a pickle that imports code (only for files you trust)")
    p.add_argument("--allow-expand", action="store_true",
                   help=f"write the output even when it is more than {EXPAND_FACTOR}x the "
                        "tensor bytes stored in the input (views that repeat values, such as "
                        "expand() or stride 0, are written element by element)")
    p.add_argument("--sha256", metavar="HEX", help="expected sha256 of the input file")
    p.set_defaults(func=cmd_convert)
