"""What the config modules share: the known keys and dtypes, name hints, importable directories."""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

#: Top-level keys a config may hold (Python configs may hold helper names too).
KNOWN_KEYS = ("model", "init_cfg", "input", "input_shape", "device", "dtype", "seed")
SUFFIXES = (".py", ".yaml", ".yml", ".json")
DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "double": torch.float64}


def did_you_mean(name: str, options: Any, n: int = 1) -> str:
    """`` Did you mean 'x'?`` with the closest of ``options``, or ``''``."""
    close = difflib.get_close_matches(name, list(options), n=n, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def torch_dtype(name: str, where: str = "dtype") -> torch.dtype:
    """``'bfloat16'`` -> ``torch.bfloat16`` (floating dtypes only)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown dtype {name!r}.{did_you_mean(name, DTYPES)} "
                          f"Known: {', '.join(DTYPES)}.") from None


@contextlib.contextmanager
def importable(directory: Path) -> Iterator[None]:
    """Make ``directory`` importable for the duration (configs import their neighbours)."""
    entry = str(directory.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)
