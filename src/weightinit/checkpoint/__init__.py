"""Reading checkpoints for ``Pretrained`` rules."""

from .loader import load_pretrained_state, read_checkpoint

__all__ = ["load_pretrained_state", "read_checkpoint"]
