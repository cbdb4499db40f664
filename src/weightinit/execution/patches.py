"""Process-wide stand-ins for torch's own functions, shared by the runs that need them.

While a run's user code runs, some of torch's functions are replaced by stand-ins that
route through the run (``torch.load``: :mod:`.records`; ``Module._load_from_state_dict``:
:mod:`.statedicts`). A :class:`SharedPatch` puts its stand-in in place when its first
holder comes and puts torch's own back when its last holder goes — unless someone replaced
it meanwhile, whose replacement stays. Holders count across threads; a stand-in decides per
call, from its own context variables, whether that call is a run's (any other call goes to
the original it wraps). A run holds its patches from start to end, so its user calls only
count holders: the attribute is set twice per run, not per call (setting a class
attribute of ``nn.Module`` drops Python's attribute caches of every module class).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any


class SharedPatch:
    """``owner.name`` (a module's or class's own attribute) replaced by ``make(original)``
    while held (:meth:`held`)."""

    def __init__(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        self.owner, self.name, self.make = owner, name, make
        self._lock = threading.Lock()
        self._holders = 0
        #: what the attribute was when the patch went in (None while not held)
        self.original: Any = None
        self._installed: Any = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self.original = vars(self.owner)[self.name]
                self._installed = self.make(self.original)
                setattr(self.owner, self.name, self._installed)
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    if vars(self.owner).get(self.name) is self._installed:
                        setattr(self.owner, self.name, self.original)
                    self.original = self._installed = None


__all__ = ["SharedPatch"]
