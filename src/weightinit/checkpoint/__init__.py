"""Checkpoints for ``Pretrained`` rules and :func:`load_checkpoint`: sources, formats, keys."""

from .loader import CheckpointState, LoadReport, load_pretrained_state, read_checkpoint
from .sources import cache_dir, download, register_scheme, resolve, torchvision_urls

__all__ = [
    "CheckpointState", "LoadReport", "cache_dir", "download", "load_pretrained_state",
    "read_checkpoint", "register_scheme", "resolve", "torchvision_urls",
]
