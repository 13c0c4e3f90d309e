"""JSON bytes as Go's encoding/json writes them, from orjson's output.

Go escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings (HTML-safe output), where orjson
writes them as they are. Outside strings none of them can occur, so replacing the bytes is
exact. Keys keep their order (Go structs and ordered maps); floats are orjson's.
"""

from __future__ import annotations

from typing import Any

import orjson

_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def dumps(obj: Any, *, option: int | None = None) -> bytes:
    """`json.Marshal(obj)`: no trailing newline (`json.NewEncoder` adds one)."""
    out = orjson.dumps(obj, option=option)
    for raw, escaped in _ESCAPES:
        if raw in out:
            out = out.replace(raw, escaped)
    return out
