"""JSON that keeps a client's integers exact, at orjson's speed when they fit in 64 bits.

orjson reads an integer beyond 64 bits (``"seed": 123456789012345678901234567890``) as a
float, and cannot write one back: a gateway that re-serialises a routed request would send
the expert ``1.2345678901234568e+29``. :func:`loads` parses with orjson (which also checks
that the JSON is strict) and re-parses with the standard library, whose integers are exact,
only when the result holds a float as large as such an integer; :func:`dumps` writes with
orjson and falls back to the standard library only when orjson refused such an integer.
:func:`exact` is the check on its own, for a body orjson already parsed (an upstream's
answer, parsed once to check it, re-serialised only when the gateway rewrites it).

Finding such a float costs the common body little: an integer orjson cannot keep has at
least 19 digits in a row, so a body up to :data:`SCAN_BYTES` is first scanned for one in C
(about a nanosecond a byte; most bodies end there); a longer body (long prompts, images in
base64) is walked instead, which costs per value, not per byte of text.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "exact", "loads"]

#: orjson turns an integer into a float above 2**64 - 1 and below -2**63; a float literal
#: this large (rare in a request) only costs the exact re-parse, which reads it the same way
_LOW, _HIGH = -9.2e18, 1.8e19
#: bodies up to this size are scanned for a run of digits before any walk
SCAN_BYTES = 65536
#: every byte to a space, digits to "0": a run of 19 digits becomes :data:`_RUN`
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_RUN = b"0" * 19


def _has_wide_float(obj: Any) -> bool:
    """Whether a float at least as large as an integer orjson could not keep is in ``obj``.
    Strings are leaves: a long prompt costs nothing here."""
    if type(obj) is not dict and type(obj) is not list:
        return type(obj) is float and not _LOW < obj < _HIGH
    stack = [obj]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        for v in node.values() if type(node) is dict else node:
            t = type(v)
            if t is dict or t is list:
                push(v)
            elif t is float and not _LOW < v < _HIGH:
                return True
    return False


def _has_wide_int(obj: Any) -> bool:
    """Whether an integer orjson cannot write (beyond 64 bits) is in ``obj``."""
    stack = [obj]
    while stack:
        node = stack.pop()
        t = type(node)
        if t is dict:
            stack.extend(node.values())
        elif t is list:
            stack.extend(node)
        elif t is int and not -(2**63) <= node < 2**64:
            return True
    return False


def loads(raw: bytes) -> Any:
    """``orjson.loads(raw)`` with every integer exact. Raises orjson.JSONDecodeError for
    what orjson refuses (an integer of more than 308 digits reads as an infinite float
    there, so it is refused too) and ValueError for an integer longer than Python converts
    (``sys.get_int_max_str_digits``)."""
    return exact(raw, orjson.loads(raw))


def exact(raw: bytes, obj: Any) -> Any:
    """``obj`` (``orjson.loads(raw)``), or ``raw`` re-parsed with the standard library where
    ``obj`` may hold an integer orjson read as a float: the same values, every integer
    exact. Raises ValueError as :func:`loads` does."""
    if len(raw) <= SCAN_BYTES and _RUN not in raw.translate(_DIGITS):
        return obj
    if _has_wide_float(obj):
        # orjson accepted it: strict JSON, valid UTF-8, no lone surrogate, no NaN or
        # Infinity, so the standard library reads the same values, integers exact
        obj = json.loads(raw)
    return obj


def dumps(obj: Any) -> bytes:
    """``orjson.dumps(obj)``, or the standard library's compact JSON where orjson refuses an
    integer beyond 64 bits. Raises orjson's TypeError for anything else it refuses (nesting
    deeper than 254 levels), and TypeError, ValueError or RecursionError where the standard
    library cannot write it either."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        if not _has_wide_int(obj):
            raise
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")
