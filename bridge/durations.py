"""Go durations and Ollama's ``keep_alive`` semantics.

Durations are returned as seconds (``float``); :data:`FOREVER` (``math.inf``) stands
for "never unload". The parser follows Go's ``time.ParseDuration`` exactly, including
its error texts and overflow rules; Ollama sends those texts back to clients verbatim.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Final

__all__ = [
    "DEFAULT_KEEP_ALIVE",
    "FOREVER",
    "MAX_DURATION_NS",
    "MIN_DURATION_NS",
    "InvalidDuration",
    "format_go_duration",
    "parse_env_keep_alive",
    "parse_go_duration",
    "parse_go_duration_ns",
    "parse_keep_alive",
]

FOREVER: float = math.inf
DEFAULT_KEEP_ALIVE: Final = 300.0  # 5m
MAX_DURATION_NS: Final = (1 << 63) - 1
MIN_DURATION_NS: Final = -(1 << 63)

_U64_MASK: Final = (1 << 64) - 1
_NS: Final = 1
_US: Final = 1_000
_MS: Final = 1_000_000
_S: Final = 1_000_000_000
_M: Final = 60 * _S
_H: Final = 60 * _M
_UNITS: Final[dict[str, int]] = {
    "ns": _NS,
    "us": _US,
    "\u00b5s": _US,  # micro sign
    "\u03bcs": _US,  # Greek small letter mu
    "ms": _MS,
    "s": _S,
    "m": _M,
    "h": _H,
}
_LOWERHEX: Final = "0123456789abcdef"
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")  # strconv.ParseInt(s, 10, 64) syntax


class InvalidDuration(ValueError):
    """A duration Ollama would refuse; ``str(e)`` is Ollama's (Go's) exact text."""


def _go_quote(s: str) -> str:
    """Go's ``time.quote``: ASCII printables as is (``"`` and ``\\`` escaped), else ``\\xNN``."""
    out = ['"']
    for c in s:
        o = ord(c)
        if o >= 0x80 or o < 0x20:
            if 0xD800 <= o <= 0xDFFF:  # a lone surrogate: Go's JSON decoder makes it U+FFFD
                c = "\ufffd"
            out.extend(f"\\x{_LOWERHEX[b >> 4]}{_LOWERHEX[b & 0xF]}" for b in c.encode())
        else:
            if c in '"\\':
                out.append("\\")
            out.append(c)
    out.append('"')
    return "".join(out)


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def parse_go_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration``: the duration in integer nanoseconds.

    Raises :class:`InvalidDuration` with Go's exact message.
    """
    orig = text
    s = text
    d = 0  # uint64 in Go
    neg = False

    def invalid() -> InvalidDuration:
        return InvalidDuration(f"time: invalid duration {_go_quote(orig)}")

    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid()
    n = len(s)
    i = 0
    while i < n:
        # The next character must be [0-9.]
        if not (s[i] == "." or _is_digit(s[i])):
            raise invalid()
        # leadingInt: [0-9]*
        start = i
        v = 0
        while i < n and _is_digit(s[i]):
            if v > (1 << 63) // 10:
                raise invalid()
            v = v * 10 + ord(s[i]) - 48
            if v > 1 << 63:
                raise invalid()
            i += 1
        pre = i != start
        # (\.[0-9]*)? via leadingFraction, which stops accumulating on overflow.
        f = 0
        scale = 1.0
        post = False
        if i < n and s[i] == ".":
            i += 1
            start = i
            overflow = False
            while i < n and _is_digit(s[i]):
                if not overflow:
                    if f > ((1 << 63) - 1) // 10:
                        overflow = True
                    else:
                        y = f * 10 + ord(s[i]) - 48
                        if y > 1 << 63:
                            overflow = True
                        else:
                            f = y
                            scale *= 10
                i += 1
            post = i != start
        if not pre and not post:
            raise invalid()  # no digits, e.g. ".s" or "-.s"
        # The unit runs up to the next '.' or digit.
        start = i
        while i < n and not (s[i] == "." or _is_digit(s[i])):
            i += 1
        if i == start:
            raise InvalidDuration(f"time: missing unit in duration {_go_quote(orig)}")
        u = s[start:i]
        unit = _UNITS.get(u)
        if unit is None:
            raise InvalidDuration(
                f"time: unknown unit {_go_quote(u)} in duration {_go_quote(orig)}"
            )
        if v > (1 << 63) // unit:
            raise invalid()
        v *= unit
        if f > 0:
            # Go: v += uint64(float64(f) * (float64(unit) / scale)), truncating.
            v += int(float(f) * (float(unit) / scale))
            if v > 1 << 63:
                raise invalid()
        d = (d + v) & _U64_MASK  # uint64 addition wraps in Go (only reachable at exactly 2**64)
        if d > 1 << 63:
            raise invalid()
    if neg:
        return -d
    if d > MAX_DURATION_NS:
        raise invalid()
    return d


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration``, in seconds.

    Units ``ns``, ``us``, ``µs`` (U+00B5 or U+03BC), ``ms``, ``s``, ``m``, ``h``; an optional
    sign; sequences such as ``1h30m``; fractions such as ``1.5h``, ``.5s`` or ``1.s``;
    ``0`` alone needs no unit. Errors (``str(e)``) are Go's: ``time: invalid duration "<s>"``,
    ``time: missing unit in duration "<s>"``, ``time: unknown unit "<u>" in duration "<s>"``.
    """
    return parse_go_duration_ns(text) / _S


def _go_json_type_name(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


def parse_keep_alive(value: object) -> float | None:
    """A request's (or config file's) ``keep_alive`` value, in seconds.

    * ``None`` (JSON null or absent) -> ``None``: use the server default;
    * a number is seconds (fractions allowed, truncated to whole nanoseconds as in Go);
    * a string is a Go duration (so ``"300"`` is an error: missing unit);
    * anything negative -> :data:`FOREVER`; so is a number too large for a Go duration;
    * any other type (bool, list, dict, ...) -> ``Unsupported type: '<Go type>'``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidDuration(f"Unsupported type: '{_go_json_type_name(value)}'")
    if isinstance(value, int):
        if value < 0:
            return FOREVER
        ns = value * _S
    elif isinstance(value, float):
        if math.isnan(value):
            raise InvalidDuration(f"time: invalid duration {_go_quote('NaN')}")
        if value < 0 or math.isinf(value):
            return FOREVER
        ns_f = value * _S  # Go: time.Duration(t * float64(time.Second))
        if ns_f > MAX_DURATION_NS:
            return FOREVER
        ns = int(ns_f)
    elif isinstance(value, str):
        ns = parse_go_duration_ns(value)
        if ns < 0:
            return FOREVER
    else:
        raise InvalidDuration(f"Unsupported type: '{_go_json_type_name(value)}'")
    if ns > MAX_DURATION_NS:
        return FOREVER
    return ns / _S


def parse_env_keep_alive(text: str) -> float:
    """``OLLAMA_KEEP_ALIVE``, in seconds, as Ollama's ``envconfig.KeepAlive`` reads it.

    The raw value is first trimmed like Ollama's ``envconfig.Var`` (surrounding whitespace,
    then surrounding ``"`` and ``'``). Then: a Go duration, or else an integer number of
    seconds (``"300"``); negative -> :data:`FOREVER`; empty or unparsable -> 300.0 (5m).
    An integer too large for a Go duration also gives :data:`FOREVER`.
    """
    s = text.strip().strip("\"'")
    if not s:
        return DEFAULT_KEEP_ALIVE
    try:
        ns = parse_go_duration_ns(s)
    except InvalidDuration:
        if _INT_RE.fullmatch(s) is None:
            return DEFAULT_KEEP_ALIVE
        n = int(s)
        if not MIN_DURATION_NS <= n <= MAX_DURATION_NS:  # strconv.ParseInt range error
            return DEFAULT_KEEP_ALIVE
        ns = n * _S
    if ns < 0 or ns > MAX_DURATION_NS:
        return FOREVER
    return ns / _S


def _fmt_frac(buf: list[str], v: int, prec: int) -> int:
    """Go's ``fmtFrac``: prepend v's last ``prec`` digits as a fraction without trailing zeros."""
    printed = False
    digits: list[str] = []
    for _ in range(prec):
        digit = v % 10
        printed = printed or digit != 0
        if printed:
            digits.append(chr(48 + digit))
        v //= 10
    if printed:
        digits.append(".")
    buf.extend(digits)
    return v


def format_go_duration(seconds: float) -> str:
    """Go's ``Duration.String()``: ``"5m0s"``, ``"1h0m0s"``, ``"300ms"``, ``"0s"``, ``"1.5s"``.

    The value is rounded to whole nanoseconds and clamped to Go's range, so
    :data:`FOREVER` gives ``"2562047h47m16.854775807s"`` (Go's largest duration) and
    ``-inf`` gives ``"-2562047h47m16.854775808s"``. NaN raises ``ValueError``.
    """
    if math.isnan(seconds):
        raise ValueError("cannot format NaN as a duration")
    if math.isinf(seconds):
        ns = MAX_DURATION_NS if seconds > 0 else MIN_DURATION_NS
    else:
        ns = round(Fraction(seconds) * _S)
        ns = max(MIN_DURATION_NS, min(MAX_DURATION_NS, ns))
    neg = ns < 0
    u = -ns if neg else ns
    buf: list[str] = []  # built right to left, reversed at the end
    if u < _S:
        # Below a second use smaller units, like "1.2ms".
        buf.append("s")
        if u == 0:
            return "0s"
        if u < _US:
            prec = 0
            buf.append("n")
        elif u < _MS:
            prec = 3
            buf.append("\u00b5")
        else:
            prec = 6
            buf.append("m")
        u = _fmt_frac(buf, u, prec)
        buf.extend(reversed(str(u)))
    else:
        buf.append("s")
        u = _fmt_frac(buf, u, 9)
        # u is now integer seconds
        buf.extend(reversed(str(u % 60)))
        u //= 60
        if u > 0:  # integer minutes
            buf.append("m")
            buf.extend(reversed(str(u % 60)))
            u //= 60
            if u > 0:  # integer hours; Go stops at hours
                buf.append("h")
                buf.extend(reversed(str(u)))
    if neg:
        buf.append("-")
    return "".join(reversed(buf))
