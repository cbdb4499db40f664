"""Which modules a rule's ``layer`` names: class-name matching.

weightinit matches a module when its class or any class it inherits from has
the name; MMEngine only looks at the class and its direct bases. The MMEngine
bridge switches to MMEngine's rule while it is installed.
"""

from __future__ import annotations

import functools

import torch.nn as nn

#: how ``layer`` names match classes: ``"mro"`` — the class and every class it inherits
#: from; ``"bases"`` — the class and its direct bases only, MMEngine's rule (set while the
#: MMEngine bridge is installed, so results match MMEngine's exactly)
LAYER_MATCHING = ["mro"]


def class_names(cls: type) -> frozenset[str]:
    """Names ``layer`` matches for ``cls``: its own and those of the classes it inherits
    from (all of them, or only its direct bases under MMEngine's rule)."""
    return _base_names(cls) if LAYER_MATCHING[0] == "bases" else _mro_names(cls)


@functools.cache
def _mro_names(cls: type) -> frozenset[str]:
    return frozenset(c.__name__ for c in cls.__mro__)


@functools.cache
def _base_names(cls: type) -> frozenset[str]:
    return frozenset([cls.__name__, *(b.__name__ for b in cls.__bases__)])


def layer_matches(module: nn.Module, layers: tuple[str, ...] | list[str]) -> bool:
    """True if the module's class, or any class it inherits from, is named in ``layers``.

    MMEngine looks at the class and its direct bases only; following the
    whole inheritance chain also matches ``class MyConv(BaseConv(nn.Conv2d))``
    against ``layer='Conv2d'``.
    """
    return not class_names(type(module)).isdisjoint(layers)


__all__ = ["LAYER_MATCHING", "class_names", "layer_matches"]
