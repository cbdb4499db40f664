"""The library's errors.

Every user mistake raises a subclass of :class:`InitError`. Each subclass also
derives from the built-in exception that MMEngine raises for the same mistake,
so ``except TypeError`` (or ``KeyError``, ``ValueError``, ``RuntimeError``,
and ``AssertionError`` where MMEngine used a bare ``assert``) keeps working
after switching imports.

Messages name the config entry, the module path and the fix, e.g.::

    backbone (ResNet) init_cfg[1].override[0]: no submodule 'neck';
    children are: conv1, layer1. Fix: use one of those names.
"""

from __future__ import annotations


class InitError(Exception):
    """Base class of every error raised for a bad init configuration or input."""


class InitTypeError(InitError, TypeError):
    """A config value has the wrong type (MMEngine raises ``TypeError``)."""


class InitValueError(InitError, ValueError):
    """A config value is out of its allowed set (MMEngine: ``ValueError``)."""


class InitRuntimeError(InitError, RuntimeError):
    """A config cannot be applied to this model (MMEngine: ``RuntimeError``)."""


class InitKeyError(InitError, KeyError):
    """A name is missing or unknown (MMEngine: ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class ConfigStructureError(InitTypeError, AssertionError):
    """``init_cfg`` is not a dict or a list of dicts (MMEngine asserts this)."""


class UnknownTypeError(InitKeyError):
    """``type`` names nothing registered; the message lists close matches."""


class DistributionError(InitValueError, AssertionError):
    """Unknown ``distribution``/``mode``/``nonlinearity`` (MMEngine asserts)."""


class OverrideError(InitValueError):
    """An ``override`` entry is malformed (no ``name``, or args without ``type``)."""


class OverrideTargetError(InitRuntimeError):
    """An ``override`` name or pattern matches no submodule."""


class ShapeError(InitValueError):
    """A rule cannot be applied to a tensor of this shape (e.g. fans of a 1-D weight)."""


class InitRecordError(InitRuntimeError, AssertionError):
    """``update_init_info`` was called outside of ``init_weights``."""


class CheckpointError(InitRuntimeError):
    """A checkpoint cannot be read or does not fit the model."""


class CheckpointNotFoundError(InitError, FileNotFoundError):
    """A checkpoint file does not exist."""


class CheckpointKeyError(InitKeyError, AssertionError):
    """A checkpoint has no keys under the requested ``prefix``."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not fit the model under the requested policy."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint needs arbitrary code to load and pickles were not allowed."""
