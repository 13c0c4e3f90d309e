"""Output formats of the `ollama` CLI: byte sizes, relative times and its borderless tables."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime

__all__ = ["human_bytes", "human_number", "human_time", "parse_time", "table"]


def human_bytes(n: int) -> str:
    """Go `format.HumanBytes`: decimal units, one decimal below 10 (`2.0 GB` is `2 GB`)."""
    for unit, size in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= size:
            value = n / size
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def human_number(n: int) -> str:
    """Go `format.HumanNumber`: 8B, 8.0B-style parameter counts."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            value = n / size
            if value == math.floor(value):
                return f"{int(value)}{unit}"
            return f"{value:.1f}{unit}" if unit == "B" else f"{value:.2f}{unit}"
    return str(n)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds // 3600) // 24 // 365} years"


def human_time(t: datetime | None, zero: str = "Never", *, now: datetime | None = None) -> str:
    """Go `format.HumanTime`: `2 weeks ago`, `4 minutes from now`, `Forever`."""
    if t is None:
        return zero
    now = now or datetime.now(UTC)
    delta = (now - t).total_seconds()
    if delta / 3600 / 24 / 365 < -20:
        return "Forever"
    if delta < 0:
        return _duration(-delta) + " from now"
    return _duration(delta) + " ago"


_FRACTION = re.compile(r"\.(\d+)")


def parse_time(text: str) -> datetime | None:
    """RFC 3339 with up to nanoseconds (Go's format); None for Go's zero time or garbage."""
    if not text or text.startswith("0001-01-01"):
        return None
    fixed = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    try:
        return datetime.fromisoformat(fixed.replace("Z", "+00:00"))
    except ValueError:
        return None


def _wrap(cell: str, width: int) -> list[str]:
    if len(cell) <= width or " " not in cell:
        return [cell]
    return textwrap.wrap(cell, width, break_long_words=False, break_on_hyphens=False) or [""]


def table(
    rows: Sequence[Sequence[str]], header: Sequence[str] | None = None, *, col_width: int = 30
) -> str:
    """tablewriter as the `ollama` CLI sets it up: no borders, no header line, left-aligned,
    columns separated by four spaces (after the last one too), long cells wrapped at spaces."""
    cells = [[_wrap(c, col_width) for c in row] for row in rows]
    ncols = max([len(header or ())] + [len(r) for r in rows])
    widths = [0] * ncols
    for i, h in enumerate(header or ()):
        widths[i] = max(widths[i], len(h))
    for row in cells:
        for i, lines in enumerate(row):
            widths[i] = max([widths[i]] + [len(x) for x in lines])
    out: list[str] = []
    if header:
        parts = [h.ljust(widths[i]) for i, h in enumerate(header)]
        # tablewriter pads the last header cell with one space, the others with the padding.
        out.append("    ".join(parts) + " ")
    for row in cells:
        height = max(len(lines) for lines in row) if row else 1
        for k in range(height):
            line = "".join(
                (row[i][k] if k < len(row[i]) else "").ljust(widths[i]) + "    "
                for i in range(len(row))
            )
            out.append(line)
    return "\n".join(out) + "\n" if out else ""
