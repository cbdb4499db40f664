"""User code's large draws from torch's global generator, written when the run needs them.

``normal_``/``uniform_`` over a whole CPU tensor of the model, from the global generator
(``kaiming_normal_`` in MMCV's ``ConvModule.init_weights``, ``trunc_normal_``'s first
step, a head's ``normal_(std=0.01)``), is drawn in tiles under a key that is one draw of
the generator (:func:`~.seeding.fill_unseeded`): the key, not the moment of drawing,
decides the values. So the watch draws the key when the op runs (the generator advances
exactly as before) and keeps the tiles pending as a :class:`UserDraw`, like a rule's
write (:mod:`.pending`): user code that reads the tensor, or writes part of it, has it
drawn first; user code that overwrites it whole cancels it; otherwise it is drawn at the
end of the run. The tensor's record entry is the op's, made when the op ran.

Drawn at the end, after the last user call, it goes into the tensor's own memory with
nothing kept (:mod:`.inplace`), where drawing it at once, while the run could still be
undone, meant a fresh storage for the tensor: new memory, which costs its first touch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..maths import Elementwise
from ..planning import OpKind
from .parallel import draw_all
from .tiles import RegionFill


@dataclass(frozen=True)
class UserDraw:
    """The tiles of user code's draw of ``dist`` under ``key`` over a whole tensor."""

    dist: Elementwise
    key: int
    kind: OpKind = OpKind.USER
    group: None = None

    def elementwise(self, shape: tuple[int, ...]) -> Elementwise | None:
        return None  # (not a rule's fill: never batched with them, never seeded by name)

    def fill(self, tensor: Tensor) -> RegionFill:
        """The tiles, into the memory ``tensor`` has now (the op counted the write)."""
        fill = RegionFill(self.dist, tensor, self.key)
        fill.count_write = False
        return fill

    def write(self, tensor: Tensor) -> None:
        draw_all([self.fill(tensor)])


def is_user_draw(op: Any) -> bool:
    return type(op) is UserDraw


__all__ = ["UserDraw", "is_user_draw"]
