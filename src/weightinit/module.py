"""``BaseModule`` and the containers that carry an ``init_cfg``.

``init_weights()`` of a BaseModule, in MMEngine's order:

1. its own non-``Pretrained`` rules over its whole subtree;
2. ``init_weights()`` of each direct child that has one (BaseModule, or any
   module with a user-defined ``init_weights``), skipping children whose
   ``is_init`` is True, looking through model wrappers' ``.module``;
3. its ``Pretrained`` rules, so loaded weights win inside its subtree;
4. ``is_init = True``; calling it again only warns (``RepeatedInitWarning``).

So a deeper ``init_cfg`` wins over a shallower one, a user-defined
``init_weights`` over its ancestors' rules, and Pretrained over everything
inside the module that declares it. Unlike MMEngine, the whole tree is
planned and validated first and each tensor is written once.
"""

from __future__ import annotations

from abc import ABCMeta
from collections.abc import Iterable
from typing import Any

import torch.nn as nn

from .api import run_init_weights, watched_init_weights
from .planning import InitCfgNode, planned
from .record import InitRecord


class BaseModule(InitCfgNode, metaclass=ABCMeta):
    """An ``nn.Module`` with an ``init_cfg`` and a planned, write-once ``init_weights()``.

    Args:
        init_cfg: a rule dict or a list of them, deep-copied on construction.

    Example::

        >>> class Head(BaseModule):
        ...     def __init__(self):
        ...         super().__init__(init_cfg=dict(type='Normal', layer='Linear', std=0.01))
        ...         self.fc = nn.Linear(16, 4)
        >>> head = Head(); head.init_weights(); head.init_record['fc.weight'].info
        'NormalInit: mean=0, std=0.01, bias=0'
    """

    def __init__(self, init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__()
        self._setup_init(init_cfg)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # An overriding init_weights, called from outside a run, opens the run itself: its
        # super().init_weights() and its own writes after it are one watched run.
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("init_weights")
        if callable(fn):
            cls.init_weights = watched_init_weights(fn)

    @planned
    def init_weights(self, device: Any = None, dtype: Any = None, seed: int | None = None,
                     strict: bool = False) -> None:
        """Initialize the subtree by its ``init_cfg`` rules (see the module docstring).

        For a model built under :func:`weightinit.deferred`, ``device``
        (default CPU) and ``dtype`` (default: as declared) say where to
        materialize it; each tensor is then allocated and written once. With
        ``seed`` (or inside :func:`weightinit.seeded`) each parameter's values
        depend only on the seed, its full name and its rule.

        ``strict=True`` turns every :class:`weightinit.InitWarning` (an
        ``init_cfg`` never applied, a ``layer`` name that matches nothing,
        skipped checkpoint keys, a second call) into its error, raised before
        anything is written; nested ``init_weights()`` calls inherit it.
        """
        run_init_weights(self, device, dtype, seed, strict)

    @property
    def init_record(self) -> InitRecord | None:
        """What last wrote each parameter, after the outermost ``init_weights()``."""
        return self.__dict__.get("_weightinit_record")

    def __repr__(self) -> str:
        s = super().__repr__()
        if self.init_cfg:
            s += f"\ninit_cfg={self.init_cfg}"
        return s


class Sequential(BaseModule, nn.Sequential):
    """``nn.Sequential`` that takes an ``init_cfg`` and runs its children's ``init_weights``."""

    def __init__(self, *args: Any, init_cfg: dict | list[dict] | None = None) -> None:
        nn.Sequential.__init__(self, *args)
        self._setup_init(init_cfg)


class ModuleList(BaseModule, nn.ModuleList):
    """``nn.ModuleList`` that takes an ``init_cfg`` and runs its children's ``init_weights``."""

    def __init__(self, modules: Iterable[nn.Module] | None = None,
                 init_cfg: dict | list[dict] | None = None) -> None:
        nn.ModuleList.__init__(self, modules)
        self._setup_init(init_cfg)


class ModuleDict(BaseModule, nn.ModuleDict):
    """``nn.ModuleDict`` that takes an ``init_cfg`` and runs its children's ``init_weights``."""

    def __init__(self, modules: dict[str, nn.Module] | None = None,
                 init_cfg: dict | list[dict] | None = None) -> None:
        nn.ModuleDict.__init__(self, modules)
        self._setup_init(init_cfg)
