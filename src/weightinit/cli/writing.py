"""Files the command writes: checkpoints (atomically) and health-check reports."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_model

from ..errors import InitRuntimeError
from ..health import HealthResult
from .output import one_line


def make_parent(path: str) -> None:
    """Create the directory ``path`` will be written to."""
    Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


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
