"""Transactions: a run that fails after planning leaves the model as it was.

What a run changes, and how a failure undoes it:

* **allocation** (deferred models): every module slot replaced by a freshly
  allocated tensor is put back, so the model is on ``meta`` again with its
  construction records intact — a retry behaves exactly like a first run;
* **tensor values** (eager models): before the run writes a tensor that had
  a value, or lets user code run over it, a copy of the tensor is kept and
  copied back on failure. This is the only memory a transaction costs, and
  only when something can fail after planning: user code (user
  ``init_weights``, ``__call__`` initializers, user rule classes, LSUV's
  forward passes) or checkpoint reads. A rules-only config is fully
  validated while planning, so its writes keep no copies;
* **slots replaced by user code** (``self.w = nn.Parameter(...)``) are put back;
* **``is_init`` flags** set during the run are reset; the init record is
  only attached when the run commits.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..compat import storage_use_count, torch_allocated
from . import memory
from .watch import local, slot_state


class Transaction:
    """The undo log of one outermost initialization."""

    def __init__(self, keep_values: bool) -> None:
        #: copy tensors (that had values) before they are first written
        self.keep_values = keep_values
        self._values: dict[int, tuple[Tensor, Tensor]] = {}
        self._fresh: set[int] = set()
        self._slots: list[tuple[nn.Module, dict, dict]] = []
        self._seen_slots: set[int] = set()
        self._flags: list[tuple[nn.Module, bool]] = []
        #: tensor -> (tensor, alias of the storage it had): undoes ``.data =``
        self._storages: dict[int, tuple[Tensor, Tensor]] = {}
        #: tensors given a fresh storage before being overwritten (the old one is kept)
        self._swapped: set[int] = set()
        #: tensor id -> the data it had just before its swap, while the op that overwrites it
        #: runs (put back if that op fails: :meth:`overwrite_failed`)
        self._prior: dict[int, Tensor] = {}
        #: storage of a copy_ source handed to the tensor it was copied into -> the source:
        #: it gets its own copy back before anything writes that storage, and at the end
        #: if it is still alive, so sharing is never seen
        self._adopted: dict[int, Any] = {}
        #: storage pointer -> the tensor a torch.load in user code returned over it (weakly)
        self._records: dict[int, Any] = {}

    # -- logging what is about to change -------------------------------------------------------
    def keep_slots(self, modules: list[nn.Module] | None) -> None:
        """Remember the parameter and buffer slots of ``modules`` (each once)."""
        for m in modules or ():
            if id(m) not in self._seen_slots:
                self._seen_slots.add(id(m))
                self._slots.append((m, dict(m._parameters), dict(m._buffers)))

    def allocated(self, tensor: Tensor) -> None:
        """``tensor`` was allocated by this run: it had no value to keep."""
        self._fresh.add(id(tensor))

    def before_write(self, tensor: Tensor) -> None:
        """Keep ``tensor``'s value, if it has one this run did not give it."""
        key = id(tensor)
        if not self.keep_values or key in self._values or key in self._fresh \
                or key in self._swapped:
            return
        data = local(tensor)
        if data.is_meta:
            return
        self._values[key] = (tensor, data.detach().clone())

    def before_overwrite(self, tensor: Tensor, source: Tensor | None = None) -> str | None:
        """``tensor`` is about to be overwritten whole by user code: keep its storage aside
        instead of copying its values, and give it a fresh one (``"fresh"``) — or, for a
        whole ``copy_`` from a ``source`` nothing else holds (a tensor just read from a
        checkpoint file), that source's own storage (``"adopted"``: the copy is not needed).

        Only for a tensor that is alone on a dense storage (no view or alias of it held
        anywhere else); otherwise its values are copied (:meth:`before_write`) and ``None``
        is returned, as when nothing needs keeping.
        """
        key = id(tensor)
        if not self.keep_values or key in self._values or key in self._fresh \
                or key in self._swapped or tensor.is_meta:
            return None
        held = self._storages.get(key)
        refs = 2 if held is not None and held[1].data_ptr() == tensor.data_ptr() else 1
        if not (_alone(tensor, refs) and tensor.is_contiguous() and _dense(tensor)):
            self.before_write(tensor)
            return None
        if held is None:
            held = self._storages[key] = (tensor, tensor.data)
        self._swapped.add(key)
        self._prior[key] = held[1] if held[1].data_ptr() == tensor.data_ptr() \
            and held[1].shape == tensor.shape else tensor.data
        if source is not None and self._adoptable(source, tensor):
            self._adopted[source.untyped_storage().data_ptr()] = weakref.ref(source)
            tensor.data = source
            return "adopted"
        tensor.data = memory.empty_like(tensor)  # (in huge pages: see .memory)
        return "fresh"

    def overwrite_done(self, tensor: Tensor) -> None:
        """The op :meth:`before_overwrite` prepared ``tensor`` for wrote it."""
        self._prior.pop(id(tensor), None)

    def overwrite_failed(self, tensor: Tensor) -> None:
        """The op :meth:`before_overwrite` prepared ``tensor`` for raised (user code may
        catch that): ``tensor`` goes back to the data it had, as if nothing happened."""
        prior = self._prior.pop(id(tensor), None)
        if prior is not None:
            self._swapped.discard(id(tensor))
            tensor.data = prior

    def trust_loaded(self, tensors: list[Tensor]) -> None:
        """``tensors`` were read by ``torch.load`` in user code: torch allocated their
        memory (see :mod:`.records`), trusted while each of them lives."""
        for t in tensors:
            storage = t.untyped_storage()
            if not storage.resizable() and not storage.is_shared() and storage.nbytes():
                self._records[storage.data_ptr()] = weakref.ref(t)

    def _loaded_record(self, source: Tensor) -> bool:
        ptr = source.untyped_storage().data_ptr()
        ref = self._records.get(ptr)
        alive = ref() if ref is not None else None
        return alive is not None and alive.untyped_storage().data_ptr() == ptr

    def _adoptable(self, source: Tensor, tensor: Tensor) -> bool:
        """A plain dense tensor of the same kind that nothing else views, whose memory torch
        allocated (not a numpy array's, a mapped file's, shared memory; a record a
        ``torch.load`` in user code read is), and that no other tensor of this run took:
        handing its storage over changes nothing anyone can see."""
        return (type(source) is Tensor and not source.requires_grad
                and (torch_allocated(source) or self._loaded_record(source))
                and source.dtype == tensor.dtype and source.shape == tensor.shape
                and source.device == tensor.device and source.is_contiguous()
                and _dense(source) and _alone(source, 1)
                and source.untyped_storage().data_ptr() not in self._adopted)

    def release_source(self, ptr: int) -> None:
        """The shared storage ``ptr`` is about to be written (or the run ends): the source
        that gave it, if still alive, takes a copy of its own values."""
        ref = self._adopted.pop(ptr, None)
        source = ref() if ref is not None else None
        if source is not None:
            source.data = source.detach().clone()

    def release_sources(self) -> None:
        for ptr in list(self._adopted):
            self.release_source(ptr)

    @property
    def adopted(self) -> dict[int, Any]:
        return self._adopted

    def before_user_code(self, modules: list[nn.Module], watched: bool = False
                         ) -> dict[tuple[int, str], tuple[Tensor, int, int]] | None:
        """User code may write, or replace, any tensor of ``modules`` (a module's subtree).

        ``watched``: each op it runs is seen (:mod:`.pending`), which calls
        :meth:`before_write` before an op writes a tensor, so values are copied
        only when written (copy on write); here only the slots and each tensor's
        storage (for a ``.data =`` re-pointing) are remembered, which copies nothing,
        and the slots' state before the call is returned (:func:`~.watch.slot_state`, read
        in the same pass).
        """
        self.keep_slots(modules)
        if watched:
            return slot_state(modules, self._storages if self.keep_values else None)
        for m in modules:
            for slots in (m._parameters, m._buffers):
                for t in slots.values():
                    if t is not None:
                        self.before_write(t)
        return None

    def original(self, tensor: Tensor) -> Tensor | None:
        """The value ``tensor`` had before the run (``None``: it had none, this run allocated
        it): the kept copy or storage if the run wrote it, else the tensor itself. Exact for
        every tensor user code could see written (runs with user code keep what they write);
        a rules-only run keeps nothing, and nothing but the run sees its tensors meanwhile."""
        key = id(tensor)
        if key in self._fresh:
            return None
        kept = self._values.get(key)
        if kept is not None:
            return kept[1]
        held = self._storages.get(key)
        if held is not None and (held[1].data_ptr() != tensor.data_ptr()
                                 or held[1].shape != tensor.shape):
            return held[1]
        return local(tensor)

    def set_flag(self, module: nn.Module, value: bool) -> None:
        """Set ``module``'s ``is_init`` flag, undoably."""
        self._flags.append((module, module._is_init))
        module._is_init = value

    # -- undo --------------------------------------------------------------------------------
    def rollback(self) -> None:
        """Put back every value, slot and flag this run changed (in reverse order)."""
        for tensor, data in self._storages.values():
            if tensor.data_ptr() != data.data_ptr() or tensor.shape != data.shape:
                tensor.data = data
        with torch.no_grad():
            for tensor, saved in self._values.values():
                local(tensor).copy_(saved)
        for module, params, buffers in reversed(self._slots):
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
        for module, value in reversed(self._flags):
            module._is_init = value
        self.release()

    def release(self) -> None:
        """Drop the undo log (after a commit)."""
        self._values.clear()
        self._storages.clear()
        self._swapped.clear()
        self._prior.clear()
        self._adopted.clear()
        self._records.clear()
        self._slots.clear()
        self._flags.clear()

    @property
    def kept_bytes(self) -> int:
        """Memory held by copies of tensor values (what restoring costs)."""
        return sum(s.numel() * s.element_size() for _, s in self._values.values())


def _alone(tensor: Tensor, refs: int) -> bool:
    """No other tensor (view, alias) holds ``tensor``'s storage; ``refs`` counts ours (the
    tensor itself, and the alias kept to undo a ``.data =``)."""
    return storage_use_count(tensor) == refs  # None (torch does not say): assume shared


def _dense(tensor: Tensor) -> bool:
    return (tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())
