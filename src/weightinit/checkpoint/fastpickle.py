"""The fast lane of the safe checkpoint reader.

``torch.load(weights_only=True)`` reads a pickle one opcode at a time in Python; for a
checkpoint of a few hundred small tensors that is most of the load. Yet nearly every
checkpoint names only a handful of globals: ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` (or ``_rebuild_parameter``) and torch's storage
classes. Such a file is read here by Python's C unpickler, but only after its whole
opcode stream has been checked, without running it (:func:`plain_stream`):

* each opcode is one that ``torch.save`` writes for containers, numbers, strings and
  tensors (:data:`_ARGS`): no ``INST``/``OBJ``/``NEWOBJ``, no ``STACK_GLOBAL``, no
  extension codes, no protocol 4/5 frames or out-of-band buffers;
* each global is in :data:`VOCABULARY`, which the unpickler alone resolves (functions as
  a fresh wrapper per lookup, so a ``BUILD`` on one changes nothing shared; everything
  else is an immutable C type or value);
* each memo index is below the number of opcodes before it (the C unpickler sizes its
  memo from the largest index it is given: one opcode could otherwise ask for gigabytes);
* the stream ends at its ``STOP``.

The opcode table comes from :mod:`pickletools` (the reference description of the format),
so the check parses the bytes exactly as the unpickler will. Storages and tensors are then
rebuilt by torch's own zip reader, as ``torch.load`` rebuilds them. A file outside these
rules, a TorchScript archive, a legacy (non-zip) file, or any failure here is read again by
``torch.load(weights_only=True)`` (:func:`.pickles.safe_load`), so its result or its error
is exactly the slow path's.
"""

from __future__ import annotations

import copyreg
import logging
import pickle
import pickletools
import struct
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from ..compat import pickle_storage_names, read_zip_checkpoint

log = logging.getLogger("weightinit.checkpoint")

#: opcodes the fast lane accepts; everything else sends the file to the slow path
_OPCODES = ("PROTO", "STOP", "MARK", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE",
            "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1",
            "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINGET",
            "LONG_BINGET", "BINPUT", "LONG_BINPUT", "GLOBAL", "REDUCE", "BUILD", "SETITEM",
            "SETITEMS", "APPEND", "APPENDS", "BINPERSID")


def _argument_sizes() -> dict[int, int]:
    """Opcode byte -> the size of its argument: ``n >= 0`` fixed, ``-2`` a one-byte length
    then that many bytes, ``-4`` a four-byte length then that many, ``-1`` two lines (the
    only such opcode allowed is ``GLOBAL``). From :mod:`pickletools`' table."""
    wanted = set(_OPCODES)
    table: dict[int, int] = {}
    for op in pickletools.opcodes:
        if op.name in wanted:
            n = 0 if op.arg is None else op.arg.n
            if n not in (0, 1, 2, 4, 8, pickletools.TAKEN_FROM_ARGUMENT1,
                         pickletools.TAKEN_FROM_ARGUMENT4U, pickletools.UP_TO_NEWLINE):
                raise RuntimeError(f"pickletools describes {op.name}'s argument as {n}")
            table[op.code.encode("latin-1")[0]] = n
    if len(table) != len(wanted):
        raise RuntimeError(f"pickletools lacks {sorted(wanted - {o.name for o in pickletools.opcodes})}")
    return table


_ARGS = _argument_sizes()
_STOP, _LONG_BINPUT, _GLOBAL = b"."[0], b"r"[0], b"c"[0]
_ONE, _FOUR, _LINES = (pickletools.TAKEN_FROM_ARGUMENT1, pickletools.TAKEN_FROM_ARGUMENT4U,
                       pickletools.UP_TO_NEWLINE)


#: dtypes a checkpoint's metadata may name (under their canonical names)
_DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128", "int8",
           "int16", "int32", "int64", "uint8", "bool")


def _values() -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {("collections", "OrderedDict"): OrderedDict,
                                       ("torch", "Size"): torch.Size,
                                       ("torch", "device"): torch.device}
    for name in _DTYPES:
        out[("torch", name)] = getattr(torch, name)
    return out


#: global name -> immutable object the unpickler gets as is
_VALUES = _values()
#: global name -> function the unpickler gets a fresh wrapper of
_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
}
#: every global a file may name to be read here (storage classes are resolved by torch's
#: own reader, which turns them into storage-type descriptions before any lookup)
VOCABULARY: frozenset[tuple[str, str]] = frozenset(
    {*_VALUES, *_FUNCTIONS, *(("torch", name) for name in pickle_storage_names())})
_VOCABULARY_BYTES = frozenset((m.encode(), n.encode()) for m, n in VOCABULARY)


def plain_stream(data: bytes) -> bool:
    """``data`` is a pickle the fast lane may run: the opcodes, globals and memo indices
    above, ending at ``STOP`` (see the module's description). Reads, never runs."""
    sizes, unpack = _ARGS, struct.unpack_from
    i, end, count = 0, len(data), 0
    try:
        while i < end:
            op = data[i]
            i += 1
            n = sizes.get(op)
            if n is None:
                return False
            if op == _STOP:
                return i == end
            if n > 0:
                if op == _LONG_BINPUT and unpack("<I", data, i)[0] > count:
                    return False
                i += n
            elif n == _FOUR:
                i += 4 + unpack("<I", data, i)[0]
            elif n == _ONE:
                i += 1 + data[i]
            elif n == _LINES:  # GLOBAL: a module line and a name line
                module_end = data.index(b"\n", i)
                name_end = data.index(b"\n", module_end + 1)
                if (data[i:module_end], data[module_end + 1:name_end]) not in _VOCABULARY_BYTES:
                    return False
                i = name_end + 1
            count += 1
    except (struct.error, ValueError, IndexError):  # a length or line past the end
        return False
    return False


def _fresh(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    call.__name__ = call.__qualname__ = fn.__name__
    return call


class _Reader(pickle.Unpickler):
    """The C unpickler, for a stream :func:`plain_stream` accepted, resolving globals from
    :data:`VOCABULARY` only."""

    def __init__(self, file: Any, **kwargs: Any) -> None:
        data = file.getvalue() if hasattr(file, "getvalue") else None
        if type(data) is not bytes or not plain_stream(data):
            raise pickle.UnpicklingError("not a plain checkpoint pickle")
        super().__init__(file, **kwargs)

    def find_class(self, module: str, name: str) -> Any:
        value = _VALUES.get((module, name))
        if value is not None:
            return value
        fn = _FUNCTIONS.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not read by the fast lane")
        return _fresh(fn)


_PICKLE_MODULE = types.SimpleNamespace(Unpickler=_Reader)


def fast_load(path: str, map_location: Any, mmap: bool) -> tuple[bool, Any]:
    """``(True, checkpoint)`` read by the fast lane, or ``(False, None)``: the file is not
    one it reads (the slow path must)."""
    if copyreg._inverted_registry:  # extension codes resolve without find_class: not here
        return False, None
    try:
        return read_zip_checkpoint(path, map_location, mmap, _PICKLE_MODULE)
    except Exception as err:  # noqa: BLE001 (the slow path reads it again and says why)
        log.debug("%s: read by torch.load(weights_only=True) (%s)", path, err)
        return False, None


__all__ = ["VOCABULARY", "fast_load", "plain_stream"]
