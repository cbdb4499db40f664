"""Numpy values in a checkpoint's metadata, rebuilt by weightinit, never by numpy's pickle
support.

OpenMMLab ``meta`` dicts hold numpy values, pickled as ``numpy.core.multiarray._reconstruct(
ndarray, (0,), b'b')`` + state ``(1, shape, dtype, is_fortran, raw)``, ``numpy.dtype(spec,
align, copy)`` + state ``(3, byteorder, None, None, None, -1, -1, 0)`` and ``numpy.core.
multiarray.scalar(dtype, raw)``. numpy's own functions build whatever memory layout the file
describes (an object array over raw bytes, a field offset past its buffer, 10**9 elements),
which can crash the process or read memory it does not own. The safe loader maps those names
to the stand-ins of :data:`NUMPY_GLOBALS` instead. They accept only dtypes of
:data:`PLAIN_SPECS` with byte order ``<``, ``>``, ``=`` (``|`` for one-byte kinds) and nothing
else in their state; ``ndarray`` arrays of such a dtype with at most 32 non-negative int
dimensions and a ``bytes`` state of exactly ``prod(shape) * itemsize``; scalars from
``bytes`` of exactly the itemsize; and per file, no more bytes of numpy values than the file
has (nor an empty array's other dimensions), all checked before anything is allocated.

While the pickle is read these are inert placeholders, BUILT in place by torch's unpickler;
:func:`replacement` then gives the plain numpy object (owning a copy of the bytes). A refused
value is a placeholder carrying its problem, raised as :class:`MetadataError`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..compat import numpy_multiarray
from ..errors import MetadataError
from .numpy_rules import (
    KIND_NAMES,
    MAX_DIMS,
    ONLY_PLAIN,
    PLAIN_SPECS,
    plain_dtype_state,
    short,
)


@dataclass
class _Session:
    """One safe load: the byte budget for numpy values and the problems found so far."""

    limit: int
    spent: int = 0
    problems: list[str] = field(default_factory=list)


_SESSION: ContextVar[_Session | None] = ContextVar("weightinit_numpy_values", default=None)


@contextlib.contextmanager
def reading(file_size: int) -> Iterator[_Session]:
    """Rebuild numpy values for one load of a file of ``file_size`` bytes (its budget)."""
    session = _Session(limit=max(0, int(file_size)))
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


# -- placeholders ---------------------------------------------------------------------------


class _Placeholder:
    """An inert stand-in for a numpy value while the pickle is read; ``problem`` says why it
    is refused (None: it is acceptable so far)."""

    __slots__ = ("problem", "value")

    def __new__(cls, *args: Any) -> Any:
        # only a file naming this class itself gets here; the loader never calls it
        return _refuse(f"weightinit's internal {cls.__name__} named by the file")

    @classmethod
    def _make(cls, problem: str | None = None) -> Any:
        self = object.__new__(cls)
        self.problem = self.value = None
        if problem is not None:
            self._fail(problem)
        return self

    def _fail(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem
            session = _SESSION.get()
            if session is not None:
                session.problems.append(problem)


class _PendingDtype(_Placeholder):
    """``numpy.dtype(spec, ...)`` until its state (byte order) is set."""

    __slots__ = ("label", "built")

    def __setstate__(self, state: Any) -> None:
        """Set the byte order: the state must be exactly what numpy writes for a plain dtype."""
        if self.problem is not None:
            return
        if self.built:
            self._fail(f"a numpy dtype {self.label} whose state is set twice")
            return
        self.built = True
        order = plain_dtype_state(state)
        if order is None:
            self._fail(f"a numpy dtype {self.label} whose pickled state is not a plain "
                       "dtype's: it sets fields, names, a subarray, an itemsize, an alignment, "
                       "flags, metadata or another version (a hand-made memory layout)")
        elif order not in ("<", ">", "=") and (order != "|" or self.value.itemsize > 1):
            self._fail(f"a numpy dtype {self.label} with byte order {short(order)}")
        else:
            self.value = np.dtype(order + self.value.str[1:])

    def described(self, what: str) -> str | None:
        """The problem of a ``what`` (e.g. "numpy array") of this dtype, None if it is fine."""
        return self.problem and self.problem.replace("a numpy dtype", f"a {what} with dtype", 1)


class _PendingArray(_Placeholder):
    """``_reconstruct(ndarray, (0,), b'b')`` until its state (shape, dtype, bytes) is set."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]  # like ndarray: not a dict key or set member

    def __setstate__(self, state: Any) -> None:
        """Check the state against the rules above, then copy the bytes into a new array."""
        if self.problem is not None:
            return
        if self.value is not None:
            self._fail("a numpy array whose state is set twice")
            return
        made = _array_from_state(state)
        if isinstance(made, str):
            self._fail(made)
        else:
            self.value = made


def _refuse(problem: str) -> _Placeholder:
    """A refused value that takes no state (a scalar, a direct ``ndarray(...)`` call)."""
    return _Placeholder._make(problem)  # type: ignore[no-any-return]


def _spec_label(spec: Any) -> str:
    """A readable name for a dtype spec from the file, without asking numpy to parse it."""
    if type(spec) is not str:
        return "given as " + ("a numpy value" if isinstance(spec, _Placeholder) else short(spec))
    if spec in PLAIN_SPECS:
        return np.dtype(spec).name
    kind = KIND_NAMES.get(spec.lstrip("<>|=")[:1])
    return kind if kind is not None else repr(spec[:40])


# -- the stand-ins the file's global names resolve to --------------------------------------


class _StandIn:
    """What a numpy global name resolves to: calling it (REDUCE or NEWOBJ) makes a placeholder;
    held as a value, it becomes ``real``."""

    real: ClassVar[Any] = None


def _make_dtype(args: tuple[Any, ...], kind: str | None = None) -> _PendingDtype:
    spec = args[0] if args else None
    if type(spec) is bytes:  # protocol-2 pickles from Python 2 wrote the spec as bytes
        spec = spec.decode("latin-1")
    pending = _PendingDtype._make()
    pending.built, pending.label = False, _spec_label(spec)
    if not 1 <= len(args) <= 3 or not all(type(a) is bool for a in args[1:]):
        pending._fail(f"a numpy dtype {pending.label} made with arguments numpy never writes")
    elif spec not in PLAIN_SPECS:
        pending._fail(f"a numpy dtype {pending.label} ({ONLY_PLAIN})")
    elif kind is not None and spec != kind:
        pending._fail(f"a numpy dtype {pending.label} made by the class of dtype "
                      f"{np.dtype(kind).name}")
    else:
        pending.value = np.dtype(spec)
    return pending


class _NumpyDtype(_StandIn):
    """Stand-in for ``numpy.dtype``: ``numpy.dtype(spec, align, copy)`` of a plain spec."""

    real = np.dtype

    def __new__(cls, *args: Any) -> Any:
        return _make_dtype(args)


class _DTypeClass(_StandIn):
    """Stand-in for a ``numpy.dtypes.<Kind>DType`` class of a plain kind: called with no
    arguments, or like ``numpy.dtype`` with its own spec."""

    spec: ClassVar[str] = ""

    def __new__(cls, *args: Any) -> Any:
        return _make_dtype(args or (cls.spec,), kind=cls.spec)


class _NDArray(_StandIn):
    """Stand-in for ``numpy.ndarray``: only an argument of ``_reconstruct``, never called."""

    real = np.ndarray

    def __new__(cls, *args: Any) -> Any:
        return _refuse("a numpy.ndarray(...) call with arguments from the file (numpy pickles "
                       "arrays with _reconstruct, never so)")


class _Reconstruct(_StandIn):
    """Stand-in for ``numpy.core.multiarray._reconstruct``: only ``(ndarray, (0,), b'b')``."""

    real = numpy_multiarray()._reconstruct

    def __new__(cls, *args: Any) -> Any:
        # (a subclass: the stand-in under numpy's name, see compat.safe_globals)
        if len(args) != 3 or not (isinstance(args[0], type) and issubclass(args[0], _NDArray)):
            kind = getattr(args[0], "real", args[0]) if args else None  # a stand-in: its name
            name = getattr(kind, "__name__", type(kind).__name__)
            return _PendingArray._make(f"a numpy array of class {name} (only ndarray is rebuilt)")
        shape, code = args[1], args[2]
        if (type(shape) is not tuple or len(shape) != 1 or type(shape[0]) is not int
                or shape[0] != 0 or type(code) not in (bytes, str) or code not in (b"b", "b")):
            return _PendingArray._make("a numpy array made with _reconstruct arguments numpy "
                                       "never writes")
        return _PendingArray._make()


class _EmptyBytes(_StandIn):
    """Stand-in for ``bytes``, which pickle protocol 2 calls with no arguments for ``b''`` (the
    data of an empty array); any argument (``bytes(10**9)``) is refused."""

    real = bytes

    def __new__(cls, *args: Any) -> Any:
        return _refuse(f"a bytes({', '.join(map(short, args))}) call") if args else b""


class _Scalar(_StandIn):
    """Stand-in for ``numpy.core.multiarray.scalar``: ``scalar(dtype, raw)`` of a plain dtype,
    returned at once as a real numpy scalar."""

    real = numpy_multiarray().scalar

    def __new__(cls, *args: Any) -> Any:
        if len(args) != 2 or type(args[0]) is not _PendingDtype:
            return _refuse("a numpy scalar made with arguments numpy never writes")
        dtype, raw = args
        problem = dtype.described("numpy scalar")
        if problem is not None:
            return _refuse(problem)
        if type(raw) is not bytes:
            return _refuse(f"a numpy scalar of dtype {dtype.label} whose value is a "
                           f"{type(raw).__name__}, not bytes")
        if len(raw) != dtype.value.itemsize:
            return _refuse(f"a numpy scalar of dtype {dtype.label} with {len(raw)} bytes of "
                           f"data instead of {dtype.value.itemsize}")
        over = _over_budget(len(raw))
        if over is not None:
            return _refuse(over)
        return np.frombuffer(raw, dtype=dtype.value, count=1)[0]


def _over_budget(nbytes: int) -> str | None:
    session = _SESSION.get()
    if session is None:
        return "a numpy value read outside weightinit's safe loader"
    session.spent += nbytes
    return None if session.spent <= session.limit else (
        f"numpy values holding {session.spent} bytes in all, more than the whole file "
        f"({session.limit} bytes): the pickle reuses the same data many times")


def _array_from_state(state: Any) -> np.ndarray | str:
    """A new array from numpy's pickled array state, or the problem with it."""
    if type(state) is not tuple or len(state) != 5 or type(state[0]) is not int or state[0] != 1:
        return "a numpy array whose pickled state is not numpy's (version 1, 5 items)"
    _, shape, dtype, fortran, raw = state
    if type(dtype) is not _PendingDtype:
        return f"a numpy array whose dtype is {type(dtype).__name__}"
    problem = dtype.described("numpy array")
    if problem is not None:
        return problem
    label = dtype.label
    if (type(shape) is not tuple or len(shape) > MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in shape)):
        return (f"a numpy array of dtype {label} whose shape {short(shape)} is not at most "
                f"{MAX_DIMS} non-negative integers")
    if type(fortran) is not bool and (type(fortran) is not int or fortran not in (0, 1)):
        return f"a numpy array of dtype {label} whose memory order is {short(fortran)}"
    if type(raw) is not bytes:
        return (f"a numpy array of dtype {label} whose data is a {type(raw).__name__}, not "
                "bytes (as numpy writes object arrays)")
    itemsize = dtype.value.itemsize
    count = math.prod(shape)
    if count * itemsize != len(raw):
        return (f"a numpy array of shape {short(shape)} and dtype {label}, which needs "
                f"{short(count * itemsize)} bytes, but its pickle holds {len(raw)}")
    session = _SESSION.get()
    if count == 0 and session is not None and math.prod(d for d in shape if d) > session.limit:
        return (f"an empty numpy array of shape {short(shape)} whose other dimensions are "
                f"larger than the whole file ({session.limit} bytes)")
    over = _over_budget(len(raw))
    if over is not None:
        return over
    order = "F" if fortran else "C"
    if count == 0:
        return np.empty(shape, dtype=dtype.value, order=order)
    flat = np.frombuffer(raw, dtype=dtype.value, count=count)
    return np.array(flat.reshape(shape, order=order), order=order, copy=True)


def _dtype_classes() -> dict[str, type]:
    """A stand-in class for each ``numpy.dtypes.<Kind>DType`` of a plain kind."""
    out: dict[str, type] = {}
    module = getattr(np, "dtypes", None)  # numpy >= 1.25
    for name in dir(module) if module is not None else []:
        real = getattr(module, name)
        try:  # parametric kinds (str, void) need arguments: they are not plain anyway
            spec = real().str[1:] if name.endswith("DType") and isinstance(real, type) else ""
        except (TypeError, ValueError):
            continue
        if spec in PLAIN_SPECS:
            out[name] = type(f"_{name}", (_DTypeClass,), {"spec": spec, "real": real})
    return out


def _numpy_globals() -> list[tuple[type, str]]:
    out: list[tuple[type, str]] = [(_NDArray, "numpy.ndarray"), (_NumpyDtype, "numpy.dtype"),
                                   (_EmptyBytes, "builtins.bytes")]
    for name, standin in (("_reconstruct", _Reconstruct), ("scalar", _Scalar)):
        # files written with numpy 1.x name numpy.core, numpy 2.x numpy._core
        out += [(standin, f"numpy.core.multiarray.{name}"),
                (standin, f"numpy._core.multiarray.{name}")]
    out += [(cls, f"numpy.dtypes.{name}") for name, cls in _dtype_classes().items()]
    # torch BUILDs only instances of allowed classes; a file naming these gets a refusal
    out += [(cls, f"{cls.__module__}.{cls.__qualname__}") for cls in (_PendingArray,
                                                                       _PendingDtype)]
    return out


#: ``(stand-in, global name)`` for ``torch.serialization.safe_globals``
NUMPY_GLOBALS = _numpy_globals()


def replacement(obj: Any) -> Any:
    """The real numpy object for a placeholder or stand-in of a safe load; ``obj`` itself for
    anything else.

    Raises :class:`MetadataError` for a refused value, an array whose state was never set,
    or weightinit's placeholder classes named by the file.
    """
    kind = type(obj)
    if kind is _PendingArray or kind is _PendingDtype or kind is _Placeholder:
        if obj.problem is not None:
            raise MetadataError(obj.problem)
        if obj.value is None:
            raise MetadataError("a numpy array whose state (shape, dtype, data) is never set")
        return obj.value
    if kind is type and issubclass(obj, _Placeholder):
        raise MetadataError(f"weightinit's internal {obj.__name__} class named by the file")
    return obj.real if kind is type and issubclass(obj, _StandIn) else obj
