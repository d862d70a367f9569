"""JSON from clients, parsed with a nesting limit.

The standard parser recurses once per level: a body of 100,000 `[` raised RecursionError (a
500 before this module). `loads` measures the nesting first, with bytes operations only (no
per-character Python loop on a large body), and refuses anything deeper than `MAX_DEPTH`.
"""

from __future__ import annotations

import json
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64
_KEEP = b"[]{}"
_DELETE = bytes(b for b in range(256) if b not in _KEEP)
# Depth does not care which kind of bracket: objects become arrays for the count.
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_STEP = {ord("["): 1, ord("]"): -1}
# Brackets examined one by one for an early answer, before the pairs are peeled.
_PREFIX = 4096


class TooDeep(ValueError):
    """The document nests deeper than allowed."""


def _brackets(raw: bytes) -> bytes:
    """The document's brackets outside its strings, in order, all as [ and ]."""
    # Escaped backslashes first, then escaped quotes: every quote left delimits a string.
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(plain.split(b'"')[::2])
    return outside.translate(_ONE_KIND, _DELETE)


def too_deep(raw: bytes, max_depth: int) -> bool:
    """Whether the arrays and objects of a JSON document nest deeper than `max_depth`.

    A document that goes deep at once is caught within its first brackets; otherwise the
    innermost empty pairs are peeled off, one level per pass, at most `max_depth` passes."""
    brackets = _brackets(raw)
    if len(brackets) <= max_depth:
        return False
    steps = map(_STEP.__getitem__, brackets[:_PREFIX])
    if any(level > max_depth for level in accumulate(steps)):
        return True
    for _ in range(max_depth):
        brackets = brackets.replace(b"[]", b"")
        if not brackets:
            return False
    # Brackets left after max_depth levels: deeper than that, unless they do not even pair
    # up (malformed: json.loads says so).
    return 2 * brackets.count(b"[") == len(brackets)


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` for untrusted input: TooDeep past `max_depth` levels, else as json.loads
    (JSONDecodeError, UnicodeDecodeError)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if too_deep(data, max_depth):
        raise TooDeep(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except RecursionError:  # malformed and deep: past the check, not past the parser's guard
        raise TooDeep(f"JSON nested deeper than {max_depth} levels") from None
