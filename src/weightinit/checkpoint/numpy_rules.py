"""The fixed rules a numpy value from a checkpoint must meet, checked on the plain Python
values the file gives (never by asking numpy to parse them), and how such a value is quoted
in a refusal.

Used by :mod:`.numpy_values`: the dtype specs it rebuilds (:data:`PLAIN_SPECS`), the most
dimensions of an array (:data:`MAX_DIMS`), the pickled state of a plain dtype
(:func:`plain_dtype_state`), and :func:`short` for messages.
"""

from __future__ import annotations

from typing import Any

#: the dtype specs numpy writes for plain numbers (``np.dtype('f8', False, True)``)
PLAIN_SPECS = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8",
               "f2", "f4", "f8", "c8", "c16")
#: most dimensions an array may have (numpy 1.x's limit)
MAX_DIMS = 32
#: why a dtype outside :data:`PLAIN_SPECS` is refused
ONLY_PLAIN = "only bool, integer, float16/32/64 and complex64/128 dtypes are rebuilt"
#: readable names of the dtype kinds numpy writes as a type character
KIND_NAMES = {"O": "object", "V": "void (structured)", "S": "bytes", "a": "bytes",
              "U": "str", "M": "datetime64", "m": "timedelta64", "T": "StringDType"}


def plain_dtype_state(state: Any) -> str | None:
    """The byte order of a plain dtype's pickled state, None if it sets anything else."""
    if type(state) is not tuple or len(state) not in (8, 9):
        return None
    version, order, subarray, names, fields, *rest = state  # rest: elsize, align, flags[, meta]
    if (not all(type(v) is int for v in (version, *rest[:3])) or type(order) is not str
            or (version, *rest[:3]) != (len(state) - 5, -1, -1, 0)
            or len(rest) == 4 and rest[3] is not None):
        return None
    return order if subarray is None and names is None and fields is None else None


def short(value: Any) -> str:
    """``value`` for a message: a repr only of numbers and strings (a tuple of them), since
    anything else could be nested too deep to print; huge ints by their size."""
    if type(value) is int and value.bit_length() > 64:
        text = f"about {'-' if value < 0 else ''}2**{value.bit_length() - 1}"
    elif type(value) is tuple and all(type(v) in (int, float, bool) for v in value):
        text = "(" + ", ".join(map(short, value)) + ("," if len(value) == 1 else "") + ")"
    elif type(value) in (int, float, bool, str, bytes, type(None)):
        text = repr(value[:80] if type(value) in (str, bytes) else value)
    else:
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."
