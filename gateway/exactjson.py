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

:func:`duplicate_key` finds a key written twice in one object, which orjson (like the
standard library) reads as its last value while other parsers keep the first: a gateway that
checks one reading and forwards the bytes lets the expert answer the other. It counts
instead of re-parsing: every key is followed by exactly one colon, and no other colon of a
JSON text stands outside a string, so a text whose colons number the keys of its reading
plus the colons in that reading's strings dropped no key; only a text that fails the count
(or writes a colon as ``\\u003a``) is read again pair by pair to name the key.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

__all__ = ["dumps", "duplicate_key", "exact", "loads"]

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


#: containers larger than this are counted by orjson in C, not value by value
_LARGE = 16
_COLON, _BACKSLASH = 0x3A, 0x5C


def _colons(obj: Any) -> tuple[int, int]:
    """The colons of ``obj`` written as JSON: one per key, and those in its strings (keys
    included). Raises orjson's TypeError where a large container cannot be written (an
    integer beyond 64 bits, nesting deeper than orjson writes)."""
    t = type(obj)
    if t is str:
        return 0, obj.count(":")
    if t is not dict and t is not list:
        return 0, 0
    keys = text = 0
    stack = [obj]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if len(node) > _LARGE:  # keys and text together: at least one colon in text
            text += orjson.dumps(node).count(b":")  # orjson never escapes a colon
            continue
        if type(node) is dict:
            keys += len(node)
            for k, v in node.items():
                if ":" in k:
                    text += k.count(":")
                t = type(v)
                if t is str:
                    text += v.count(":")
                elif t is dict or t is list:
                    push(v)
        else:
            for v in node:
                t = type(v)
                if t is str:
                    text += v.count(":")
                elif t is dict or t is list:
                    push(v)
    return keys, text


def _raw_colons(raw: bytes) -> int:
    if len(raw) <= SCAN_BYTES:
        return raw.count(b":")
    return int(np.count_nonzero(np.frombuffer(raw, np.uint8) == _COLON))


def _escaped_colon(raw: bytes) -> bool:
    """Whether ``raw`` may write a colon as an escape (``\\u003a``)."""
    if len(raw) <= SCAN_BYTES:
        return b"\\u003" in raw
    a = np.frombuffer(raw, np.uint8)
    at = np.flatnonzero(a[:-5] == _BACKSLASH)
    return bool(np.any((a[at + 1] == 0x75) & (a[at + 2] == 0x30) & (a[at + 3] == 0x30)
                       & (a[at + 4] == 0x33)))


class _Twice(dict[str, Any]):
    """An object of the pair-by-pair reading that holds ``key`` twice."""

    key: str


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            break
        seen.add(k)
    twice = _Twice(d)
    twice.key = k
    return twice


def duplicate_key(raw: bytes, obj: Any) -> tuple[str, ...] | None:
    """The path (``("messages", "0", "content")``) of the first key ``raw`` writes twice in
    one object, or None; ``obj`` is ``raw`` as :func:`loads` read it. Raises RecursionError
    where ``raw`` must be read again and nests deeper than the standard library reads."""
    try:
        keys, text = _colons(obj)
    except TypeError:
        pass  # too wide or too deep for orjson to write: read pair by pair
    else:
        # a key dropped takes its colon with it, so the text has more than its reading,
        # unless a colon the reading keeps was written as an escape (none without a colon
        # in the reading's strings)
        if _raw_colons(raw) == keys + text and not (text and _escaped_colon(raw)):
            return None
    # orjson accepted ``raw`` (strict JSON, valid UTF-8): the standard library reads the
    # same values
    tree = json.loads(raw, object_pairs_hook=_pairs)
    stack: list[tuple[Any, tuple[str, ...]]] = [(tree, ())]
    while stack:  # in document order: the first object holding a key twice
        node, path = stack.pop()
        if type(node) is _Twice:
            return (*path, node.key)
        items = node.items() if isinstance(node, dict) else enumerate(node) \
            if isinstance(node, list) else ()
        stack.extend(reversed([(v, (*path, str(k))) for k, v in items
                               if isinstance(v, (dict, list))]))
    return None
