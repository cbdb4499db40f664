"""Which dotted ``type`` paths a YAML or JSON config may name: data configs do not run any code.

A ``.py`` config is code by nature and may name anything. A ``.yaml``/``.yml``
or ``.json`` config is data, so its dotted ``type`` paths (at any depth) are
limited to ``torch.nn`` and its submodules, modules that sit in the config's
own directory, and the modules the user allows (``allowed_modules=[...]`` on
:func:`~weightinit.load_config`, ``--allow-module`` on the command line; an
allowance ``mypkg`` covers ``mypkg`` and ``mypkg.sub...``). Registered names and
``FILE.py:NAME`` are not dotted paths and are always allowed.

The check runs on the string before anything is imported (importing a module
can run code), and again on what the path reaches: every module passed through
and the ``__module__`` of the result must be allowed too, so an allowed module
cannot be used to reach ``os`` or ``builtins`` through its attributes.
"""

from __future__ import annotations

import importlib.machinery
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigError

#: Always allowed in a data config (with its submodules).
DEFAULT_MODULES = ("torch.nn",)
#: Config file types whose dotted ``type`` paths are restricted.
DATA_SUFFIXES = (".yaml", ".yml", ".json")


def normalize_allowed(modules: Iterable[str] | str | None, where: str) -> tuple[str, ...]:
    """Validate ``allowed_modules``: dotted module names such as ``'mypkg'``, ``'mypkg.models'``."""
    if modules is None:
        return ()
    if isinstance(modules, str):
        modules = [modules]
    out: list[str] = []
    for name in modules:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise ConfigError(f"{where}: allowed module {name!r} is not a dotted module name "
                              "(e.g. mypkg or mypkg.models)")
        if name not in out:
            out.append(name)
    return tuple(out)


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _in_dir(module: ModuleType, directory: Path) -> bool:
    file = getattr(module, "__file__", None)
    if not file:
        return False
    try:
        return Path(file).resolve().is_relative_to(directory)
    except OSError:  # pragma: no cover - an unreadable path
        return False


@dataclass(frozen=True)
class TypePolicy:
    """The dotted paths a data config may name (see the module docstring)."""

    kind: str                   # the config's file type, for messages: "YAML" or "JSON"
    allowed: tuple[str, ...]    # user allowances
    directory: Path             # the config's own directory

    def _local(self, top: str) -> bool:
        """``top`` is a module in the config's directory that an import would really load."""
        here = self.directory
        if not ((here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()):
            return False
        if top in sys.builtin_module_names \
                or importlib.machinery.FrozenImporter.find_spec(top) is not None:
            return False  # found before the config's directory: a file there would not win
        loaded = sys.modules.get(top)
        return loaded is None or _in_dir(loaded, here)

    def module_allowed(self, name: str) -> bool:
        """May ``name`` (a module name) be imported or passed through?"""
        if _under(name, DEFAULT_MODULES) or _under(name, self.allowed):
            return True
        return self._local(name.split(".")[0])

    def refuse(self, where: str, value: str, module: str | None = None) -> ConfigError:
        top = (module or value).split(".")[0]
        reached = f" (it reaches {module})" if module is not None else ""
        return ConfigError(
            f"{where}: {value!r}{reached} is not allowed in a {self.kind} config: a data config "
            "may only name torch.nn, registered models, FILE.py:NAME or modules in its own "
            f"directory, and allowed modules. Fix: add --allow-module {top}, or use a .py config "
            f"(in Python: load_config(..., allowed_modules=[{top!r}])).")

    def check_path(self, value: str, where: str) -> None:
        """Refuse ``value`` before anything is imported unless some module prefix is allowed."""
        parts = value.split(".")
        if any(p.startswith("__") for p in parts):
            raise self.refuse(where, value)
        if not any(self.module_allowed(".".join(parts[:i])) for i in range(1, len(parts))):
            raise self.refuse(where, value)

    def check_reached(self, obj: Any, value: str, where: str) -> None:
        """Refuse what ``value`` reached if it is (or comes from) a module not allowed."""
        if isinstance(obj, ModuleType):
            name = obj.__name__
        else:
            name = getattr(obj, "__module__", None)
            if not isinstance(name, str):
                return
        if not self.module_allowed(name):
            raise self.refuse(where, value, name)


def policy_for(path: Path, allowed: Iterable[str]) -> TypePolicy | None:
    """The policy of a config at ``path``: None (anything goes) unless it is YAML or JSON."""
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        return None
    kind = "JSON" if suffix == ".json" else "YAML"
    return TypePolicy(kind, tuple(allowed), path.parent.resolve())
