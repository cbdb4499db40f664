"""Files the command writes: checkpoints (atomically) and health-check reports.

Every output path is checked before the work that produces it starts
(:func:`check_output`), so a typo costs nothing; a folder the command creates
is named in its output.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_model

from ..errors import InitRuntimeError, UsageError
from ..health import HealthResult
from .output import one_line


def check_output(path: str, flag: str, example: str, replaced: bool = False) -> Path | None:
    """Refuse an output path that cannot be written, before any work is done; return the
    folder that writing it will create (the outermost missing one), if any.

    Refused with a :class:`UsageError` (exit status 2) that names the path and
    the fix: a path that is a folder or not a regular file, a path below a
    file, a folder that cannot be written in, and — unless the file is
    ``replaced`` by renaming a new one over it, as checkpoints are — an
    existing file that cannot be written. ``example`` is a file name to
    suggest inside a folder given by mistake.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, not a file. Fix: name a file in it, e.g. "
                         f"{flag} {target / example}.")
    if target.exists() and not target.is_file():
        raise UsageError(f"{flag} {path}: exists and is not a regular file. Fix: choose "
                         "another path.")
    created = None
    folder = target.parent
    while not folder.exists():
        if folder.is_symlink():
            raise UsageError(f"{flag} {path}: {folder} is a link to something that does not "
                             "exist. Fix: choose another path, or repair the link.")
        created, folder = folder, folder.parent
    where = _folder_text(folder)
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: {where} is a file, so nothing can be written below "
                         "it. Fix: choose a path in a folder (or move that file away).")
    if not os.access(folder, os.W_OK | os.X_OK):
        what = "create a folder" if created is not None else "write a file"
        raise UsageError(f"{flag} {path}: cannot {what} in {where} (permission denied). Fix: "
                         "choose a folder you can write to, or change its permissions.")
    if not replaced and target.is_file() and not os.access(target, os.W_OK):
        raise UsageError(f"{flag} {path}: exists and is read-only. Fix: choose another path, or "
                         f"make it writable (chmod u+w {path}).")
    return created


def _folder_text(folder: Path) -> str:
    return f"the working directory ({Path.cwd()})" if str(folder) == "." else f"{folder}"


def make_parent(path: str) -> Path | None:
    """Create the folder ``path`` will be written to; return the outermost folder this
    created (None if it existed), to be named in the output."""
    parent = Path(path).expanduser().parent
    created, folder = None, parent
    while not folder.exists():
        created, folder = folder, folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    return created


def save_checkpoint(model: nn.Module, path: str) -> int:
    """Save ``model``'s state dict to ``path`` (.safetensors or torch.save); returns bytes.

    Written to a temporary file first and renamed, so a failed save leaves no
    partial checkpoint. Tied parameters are stored once in safetensors.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        try:
            if target.suffix.lower() == ".safetensors":
                extra = ({"force_contiguous": True}  # older safetensors lack the flag
                         if "force_contiguous" in inspect.signature(save_model).parameters else {})
                save_model(model, str(tmp), metadata={"format": "pt"}, **extra)
            else:
                torch.save(model.state_dict(), tmp)
        except (ValueError, RuntimeError, TypeError) as err:
            raise InitRuntimeError(f"cannot save {type(model).__name__} to {path}: "
                                   f"{one_line(err)}") from err
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # the writer may create it private; give it the usual mode
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target.stat().st_size


def write_health(results: list[HealthResult], path: str) -> None:
    """Write health-check results to ``path``: JSON if it ends in ``.json``, else Markdown."""
    if path.lower().endswith(".json"):
        text = json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    else:
        lines = ["# weightinit check", ""]
        for r in results:
            lines += [f"## {r.label}", "", f"{r.verdict()}", "",
                      "| # | layer | type | activation std | gradient std |",
                      "|---:|---|---|---:|---:|"]
            for i, s in enumerate(r.layers):
                grad = "" if s.grad_std is None else f"{s.grad_std:.3g}"
                lines.append(f"| {i} | `{s.name}` | {s.type} | {s.act_std:.3g} | {grad} |")
            lines.append("")
        text = "\n".join(lines)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
