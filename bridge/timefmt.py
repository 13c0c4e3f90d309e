"""Times as Go prints them (RFC 3339 with nanoseconds, trailing zeros trimmed)."""

from __future__ import annotations

import datetime
import functools
import math
import time

# Go shows "forever" as now + the largest Duration (about year 2318).
_MAX_DURATION_S = (2**63 - 1) / 1e9


def _fraction(ns: int) -> str:
    return f".{ns:09d}".rstrip("0").rstrip(".") if ns else ""


def utc_now() -> str:
    """`created_at`: UTC with `Z`."""
    return utc(time.time_ns())


def utc(epoch_ns: int) -> str:
    secs, ns = divmod(epoch_ns, 1_000_000_000)
    return f"{_utc_seconds(secs)}{_fraction(ns)}Z"


@functools.lru_cache(maxsize=8)
def _utc_seconds(secs: int) -> str:
    # Every streamed token carries created_at: format each second once.
    return datetime.datetime.fromtimestamp(secs, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def local(epoch: float) -> str:
    """File times (`modified_at`, `expires_at`): local time with its offset, `Z` for UTC."""
    if math.isinf(epoch):
        epoch = time.time() + _MAX_DURATION_S
    ns_total = round(epoch * 1e9)
    secs, ns = divmod(ns_total, 1_000_000_000)
    dt = datetime.datetime.fromtimestamp(secs).astimezone()
    offset = dt.utcoffset() or datetime.timedelta(0)
    if offset == datetime.timedelta(0):
        zone = "Z"
    else:
        total = int(offset.total_seconds())
        sign = "+" if total >= 0 else "-"
        hours, minutes = divmod(abs(total) // 60, 60)
        zone = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{dt.strftime('%Y-%m-%dT%H:%M:%S')}{_fraction(ns)}{zone}"
