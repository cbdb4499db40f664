"""Every exception of the library, in one hierarchy grouped by domain.

Every user mistake raises a subclass of :class:`InitError`. Each subclass also
derives from the built-in exception that MMEngine raises for the same mistake,
so ``except TypeError`` (or ``KeyError``, ``ValueError``, ``RuntimeError``,
and ``AssertionError`` where MMEngine used a bare ``assert``) keeps working
after switching imports. Each domain has its own base class, so callers can
also catch by what went wrong:

* :class:`InitCfgError` — an ``init_cfg`` entry or a rule's arguments;
* :class:`CheckpointError` — a checkpoint cannot be found, read, trusted or fitted;
* :class:`MaterializeError` — a deferred model cannot be allocated or given values;
* :class:`ShardingError` — a sharded model's layout cannot be initialized;
* :class:`ConfigError` — a config *file* for the command line;
* :class:`HealthCheckError` — the health check cannot run the model.

Every ``…NotFoundError`` is also its domain's error and a ``FileNotFoundError``;
:class:`CheckpointDownloadError` is also an ``OSError`` (MMEngine's is urllib's ``URLError``).
Messages name the config entry, the module path and the fix, e.g.::

    backbone (ResNet) init_cfg[1].override[0]: no submodule 'neck';
    children are: conv1, layer1. Fix: use one of those names.

What MMEngine accepts but the user should act on (an ``init_cfg`` that is never
applied, a ``layer`` name that matches nothing, skipped checkpoint keys, a second
``init_weights()``) is a warning, a subclass of :class:`InitWarning`, issued with
:func:`warn`; ``strict=True`` turns each into the error in :data:`STRICT_ERRORS`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import pickle
import sys
import warnings
from collections.abc import Iterator


class InitError(Exception):
    """Base class of every error raised for a bad init configuration or input."""


# -- the built-in classes MMEngine raises ------------------------------------------------


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


# -- init_cfg entries and rules --------------------------------------------------------------


class InitCfgError(InitError):
    """Domain: an ``init_cfg`` entry, a rule's arguments, or where a rule applies."""


class ConfigStructureError(InitCfgError, InitTypeError, AssertionError):
    """``init_cfg`` is not a dict or a list of dicts (MMEngine asserts this)."""


class ConfigEntryTypeError(ConfigStructureError, AttributeError):
    """An entry of an ``init_cfg`` list is not a dict (MMEngine and MMCV 1.x fail on it with
    ``AttributeError``, calling ``.pop`` on it)."""


class UnknownTypeError(InitCfgError, InitKeyError):
    """``type`` names nothing registered; the message lists close matches."""


class DistributionError(InitCfgError, InitValueError, AssertionError):
    """Unknown ``distribution``/``mode``/``nonlinearity`` (MMEngine asserts)."""


class OverrideError(InitCfgError, InitValueError):
    """An ``override`` entry is malformed (no ``name``, or args without ``type``)."""


class ConfigNestingError(InitCfgError, InitValueError):
    """An ``init_cfg`` nests deeper than the limit, or contains itself (a dict or list that
    refers back to one that holds it)."""


class OverrideTargetError(InitCfgError, InitRuntimeError):
    """An ``override`` name or a ``param`` pattern matches nothing; under ``strict=True`` also a
    ``layer`` name that matches nothing, or a rule with neither ``layer`` nor ``override``."""


class UnappliedConfigError(InitCfgError, InitRuntimeError):
    """Under ``strict=True``: an ``init_cfg`` that ``init_weights()`` never applies (it sits
    under a plain container such as ``nn.Sequential``)."""


class ShapeError(InitCfgError, InitValueError):
    """A rule cannot be applied to a tensor of this shape or dtype (e.g. fans of a 1-D weight)."""


class InitRecordError(InitCfgError, InitRuntimeError, AssertionError):
    """``update_init_info`` was called outside of ``init_weights``."""


class LSUVError(InitCfgError, InitRuntimeError):
    """LSUV could not bring a layer's output to unit variance (found while running; the
    model is restored before this is raised)."""


# -- checkpoints --------------------------------------------------------------------------------


class CheckpointError(InitRuntimeError):
    """Domain: a checkpoint cannot be found, read, trusted, or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file does not exist."""

    def __str__(self) -> str:  # FileNotFoundError(errno, text) would print "[Errno 2] ..."
        return str(self.args[-1]) if self.args else ""


class CheckpointKeyError(CheckpointError, InitKeyError, AssertionError):
    """A checkpoint has no keys under the requested ``prefix``."""

    __str__ = InitKeyError.__str__


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not fit the model under the requested policy."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint needs arbitrary code to load and pickles were not allowed."""


class CheckpointDownloadError(CheckpointError, OSError):
    """A checkpoint could not be downloaded (HTTP error, dropped connection).

    Also an ``OSError``, as what MMEngine raises for the same failure (urllib's
    ``URLError``), so ``except OSError`` around a download keeps working.
    """


class CheckpointHashError(CheckpointError):
    """A checkpoint does not have the expected sha256."""


class CheckpointCacheError(CheckpointDownloadError):
    """The download cache can not be used: its directory is read-only, or its path is a file."""


# -- deferred models -------------------------------------------------------------------------


class MaterializeError(InitRuntimeError):
    """Domain: a deferred (meta) model cannot be allocated or given defined values."""


class UndefinedParameterError(MaterializeError):
    """A deferred parameter would be left without a defined value."""


# -- sharded models ----------------------------------------------------------------------------


class CrossThreadWriteError(InitRuntimeError):
    """User code wrote a model tensor from a thread the run does not watch (one it did not
    start); the run is rolled back."""


class ShardingError(InitRuntimeError):
    """Domain: a sharded tensor's layout cannot be initialized (e.g. a ``Partial`` placement)."""


# -- tools: config files, health check, command line -----------------------------------------


class ConfigError(InitValueError):
    """Domain: a config file is malformed or names something that does not exist."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """A config file (or a file it references) does not exist."""

    def __str__(self) -> str:
        return str(self.args[-1]) if self.args else ""


class ConfigBuildError(ConfigError):
    """Building the model from the config raised (bad arguments for its constructor)."""


class UnknownModelTypeError(UnknownTypeError, ConfigError):
    """A ``type`` names nothing registered or importable; the message lists close matches."""


class HealthCheckError(InitRuntimeError):
    """Domain: the model cannot be run for a health check (bad input shape, no output tensor...)."""


class PlotError(HealthCheckError, ImportError):
    """Plotting needs matplotlib, which is not installed."""


# -- warnings: what MMEngine accepts silently, but the user should act on ----------------------
#
# Shown once per location by Python's default filter; filter them with
# ``warnings.filterwarnings("ignore", category=weightinit.InitWarning)``. ``strict=True`` (on
# ``init_weights``, ``initialize``, ``plan``; ``--strict`` on the command line) raises the
# error in :data:`STRICT_ERRORS` instead, while planning, before anything is written.


class InitWarning(UserWarning):
    """Base of the library's warnings: a config or checkpoint problem MMEngine accepts."""


class UnappliedConfigWarning(InitWarning):
    """An ``init_cfg`` that is never applied (under a plain ``nn.Sequential``/``ModuleList``),
    or an invalid one where MMEngine never checks it (there, or under a user-defined
    ``init_weights``). Strict: :class:`UnappliedConfigError`, or the validation error."""


class UnmatchedLayerWarning(InitWarning):
    """A rule's ``layer`` name matches no module of its subtree (a typo such as
    ``'linear'``). Strict: :class:`OverrideTargetError`."""


class EmptyRuleWarning(InitWarning):
    """A rule has neither ``layer`` nor ``override`` (nor ``param``), so it initializes
    nothing. Strict: :class:`OverrideTargetError`."""


class CheckpointKeysWarning(InitWarning):
    """A ``Pretrained`` rule skips missing, unexpected or shape-mismatched checkpoint keys.
    Strict: :class:`CheckpointMismatchError`."""


class NonFiniteCheckpointWarning(InitWarning):
    """A ``Pretrained`` rule or ``load_checkpoint`` loads checkpoint entries holding NaN or
    infinity. Strict (the rule's or the run's ``strict``): :class:`CheckpointMismatchError`."""


class RepeatedInitWarning(InitWarning):
    """``init_weights()`` called again on an initialized module (nothing is written).
    Strict: :class:`InitRuntimeError`."""


#: the error each warning becomes under ``strict=True``
STRICT_ERRORS: dict[type[InitWarning], type[InitError]] = {
    UnappliedConfigWarning: UnappliedConfigError,
    UnmatchedLayerWarning: OverrideTargetError,
    EmptyRuleWarning: OverrideTargetError,
    CheckpointKeysWarning: CheckpointMismatchError,
    NonFiniteCheckpointWarning: CheckpointMismatchError,
    RepeatedInitWarning: InitRuntimeError,
}

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def strict_error(warning: InitWarning) -> InitError:
    """The library error a warning becomes under ``strict=True``."""
    for cls in type(warning).__mro__:
        if cls in STRICT_ERRORS:
            return STRICT_ERRORS[cls](str(warning))
    return InitRuntimeError(str(warning))


#: categories :func:`warn` logs instead of issuing, in the running thread or task only (the
#: MMEngine bridge's runs: MMEngine is silent where weightinit would warn)
_LOGGED: contextvars.ContextVar[tuple[type[InitWarning], ...]] = contextvars.ContextVar(
    "weightinit_logged_warnings", default=())


@contextlib.contextmanager
def logged_instead(categories: tuple[type[InitWarning], ...]) -> Iterator[None]:
    """In the block, :func:`warn` writes ``categories`` to the ``weightinit`` logger (INFO)
    instead of issuing them; ``strict`` still raises. A context variable, not a warnings
    filter: other threads, and the user's own filters, are not touched."""
    token = _LOGGED.set(tuple(categories))
    try:
        yield
    finally:
        _LOGGED.reset(token)


def warn(category: type[InitWarning], message: str, *, strict: bool = False) -> None:
    """Warn with ``category`` at the first caller outside the package (the user's line), so
    Python's default filter shows it once per location; under ``strict`` raise its error.
    Inside :func:`logged_instead` of its category, log it instead."""
    if strict:
        raise strict_error(category(message))
    if issubclass(category, _LOGGED.get()):
        logging.getLogger("weightinit").info("%s: %s", category.__name__, message)
        return
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(category(message), stacklevel=level)


class UsageError(Exception):
    """A bad command-line argument (exit status 2); not a library error."""


class StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a forward hook to end a forward pass once the watched layer has run."""


class MetadataError(pickle.UnpicklingError):
    """A numpy value in a checkpoint that the safe loader does not rebuild; ``entry`` is where
    it sits (e.g. ``checkpoint['meta']['x']``), when that is known.

    Internal, not a library error: an ``UnpicklingError`` raised after ``torch.load`` returns
    (so torch does not wrap it), which the checkpoint loader turns into
    :class:`UnsafeCheckpointError`."""

    def __init__(self, problem: str, entry: str | None = None) -> None:
        super().__init__(f"{entry}: {problem}" if entry else problem)
        self.problem, self.entry = problem, entry
