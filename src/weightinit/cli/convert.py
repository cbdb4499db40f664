"""``weightinit convert IN OUT.safetensors``: a checkpoint's tensors, rewritten as safetensors.

The input is read with the same safe loader as ``Pretrained`` (a pickle that
imports code is refused unless ``--allow-pickle``; ``--sha256`` is checked; a
URL is downloaded into the cache) and its weights are unwrapped from
``state_dict``/``model``/``module`` as the loader does; the keys are kept as
they are. Entries that are not tensors (numbers, strings, nested dicts) have no
place in safetensors: they are left out, with a note naming them. Tensors that
share storage (tied weights) are each written whole. The file is written to a
temporary name and renamed, so a failure leaves no partial output.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..checkpoint.loader import read_checkpoint, unwrap_state
from ..errors import CheckpointError, UsageError
from .output import Output, one_line


def _tensors(state: object, source: str) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors to write (aliases and views copied into their own storage) and the keys
    left out because they are not tensors."""
    view = unwrap_state(state, source)
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    seen: set[int] = set()
    for key in view.keys():
        if not view.is_tensor(key):
            dropped.append(key)
            continue
        t = view.get(key)
        kind = ("quantized" if t.is_quantized else "meta" if t.is_meta
                else None if t.layout == torch.strided else str(t.layout).replace("torch.", ""))
        if kind is not None:
            raise CheckpointError(
                f"{source}: entry {key!r} is a {kind} tensor, which safetensors can not store. "
                "Fix: save it as a dense tensor with values (t.to_dense(), t.dequantize()) and "
                "convert again.")
        ptr = t.untyped_storage().data_ptr()
        whole = t.is_contiguous() and t.storage_offset() == 0 \
            and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if ptr in seen or not whole:
            t = t.detach().clone(memory_format=torch.contiguous_format)
        seen.add(ptr)
        out[key] = t.detach()
    return out, dropped


def cmd_convert(args: argparse.Namespace, out: Output) -> int:
    target = Path(args.output).expanduser()
    if target.suffix.lower() != ".safetensors":
        raise UsageError(f"{args.output}: the output must be a .safetensors file")
    if args.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        raise UsageError(f"--sha256 {args.sha256}: expected 64 hexadecimal digits")
    state = read_checkpoint(args.input, "cpu", allow_pickle=args.allow_pickle,
                            sha256=args.sha256, timeout=args.timeout, deadline=args.deadline)
    tensors, dropped = _tensors(state, args.input)
    if not tensors:
        raise CheckpointError(f"{args.input}: holds no tensors to convert. Fix: check that it "
                              "is a checkpoint of model weights.")
    if dropped:
        shown = ", ".join(dropped[:10]) + (f" and {len(dropped) - 10} more"
                                            if len(dropped) > 10 else "")
        out.print(f"note: left out {len(dropped)} entries that are not tensors: {shown}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        try:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        except (ValueError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"cannot write {args.output}: {one_line(err)}") from err
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    size = target.stat().st_size
    out.print(f"wrote {args.output}: {len(tensors)} tensors, {size:,} bytes")
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
    p.add_argument("--sha256", metavar="HEX", help="expected sha256 of the input file")
    p.set_defaults(func=cmd_convert)
