"""Go's encoding/json Decoder, for the bodies orjson refuses.

Ollama decodes a body with `json.NewDecoder(body).Decode(&req)`, which reads the first JSON
value and ignores what follows it, and words its syntax errors its own way
(`invalid character 'b' looking for beginning of object key string`). `first_value_end` finds
where that first value ends, or raises the error Go would, by running the same state machine
as Go's scanner, one state per method. It only runs once orjson has failed, so it is written
for clarity; strings, the bulk of any large body, are skipped with a regular expression.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

_CONTINUE, _END, _END_CONTAINER, _ERROR = range(4)
_OBJECT_KEY, _OBJECT_VALUE, _ARRAY_VALUE = range(3)
_MAX_DEPTH = 10000
_SPACE = frozenset(b" \t\r\n")
_STRING_STOP = re.compile(rb'["\\\x00-\x1f]')
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")


class GoSyntaxError(ValueError):
    """The message Go's Decoder gives: `invalid character ...`, `unexpected EOF`, or `EOF`
    for a body with nothing but white space."""


class ScanStopped(Exception):
    """`stop` was set during a scan: nobody waits for its answer any more."""


def first_value_end(body: bytes, stop: threading.Event | None = None) -> int:
    """The index just past the first JSON value in `body`, as Go's Decoder reads it. A scan
    on a thread checks `stop` every 64 KiB steps, and gives up once it is set."""
    scan = _Scanner()
    i, n = 0, len(body)
    steps = 0
    while i < n:
        steps += 1
        if stop is not None and not steps & 0xFFFF and stop.is_set():
            raise ScanStopped()
        if scan.step == scan.in_string:
            special = _STRING_STOP.search(body, i)
            if special is None:
                break
            i = special.start()
        match scan.step(body[i]):
            case 1:  # _END: the value ended before this byte
                return i
            case 2 if not scan.stack:  # _END_CONTAINER: the top-level object or array closed
                return i + 1
            case 3:  # _ERROR
                raise GoSyntaxError(scan.err)
        i += 1
    if scan.step(0x20) == _END:  # a top-level number ends at the end of the input
        return n
    raise GoSyntaxError("unexpected EOF" if any(c not in _SPACE for c in body) else "EOF")


class _Scanner:
    def __init__(self) -> None:
        self.step: Callable[[int], int] = self.begin_value
        self.stack: list[int] = []
        self.err = ""

    def error(self, c: int, context: str) -> int:
        self.step = self.stopped
        self.err = f"invalid character {_quote_char(c)} {context}"
        return _ERROR

    def stopped(self, c: int) -> int:
        return _ERROR

    def push(self, c: int, kind: int) -> int:
        self.stack.append(kind)
        if len(self.stack) > _MAX_DEPTH:
            return self.error(c, "exceeded max depth")
        return _CONTINUE

    def pop(self) -> int:
        self.stack.pop()
        self.step = self.end_value if self.stack else self.end_top
        return _END_CONTAINER

    def begin_value_or_empty(self, c: int) -> int:  # after `[`
        if c in _SPACE:
            return _CONTINUE
        if c == 0x5D:  # ]
            return self.end_value(c)
        return self.begin_value(c)

    def begin_value(self, c: int) -> int:
        if c in _SPACE:
            return _CONTINUE
        if c == 0x7B:  # {
            self.step = self.begin_string_or_empty
            return self.push(c, _OBJECT_KEY)
        if c == 0x5B:  # [
            self.step = self.begin_value_or_empty
            return self.push(c, _ARRAY_VALUE)
        literal = _LITERAL_STARTS.get(c)
        if literal is None:
            if 0x31 <= c <= 0x39:  # 1-9
                self.step = self.int1
                return _CONTINUE
            return self.error(c, "looking for beginning of value")
        self.step = getattr(self, literal)
        return _CONTINUE

    def begin_string_or_empty(self, c: int) -> int:  # after `{`
        if c in _SPACE:
            return _CONTINUE
        if c == 0x7D:  # }
            self.stack[-1] = _OBJECT_VALUE
            return self.end_value(c)
        return self.begin_string(c)

    def begin_string(self, c: int) -> int:  # after `{"key": value,`
        if c in _SPACE:
            return _CONTINUE
        if c == 0x22:
            self.step = self.in_string
            return _CONTINUE
        return self.error(c, "looking for beginning of object key string")

    def end_value(self, c: int) -> int:
        if not self.stack:
            self.step = self.end_top
            return self.end_top(c)
        if c in _SPACE:
            self.step = self.end_value
            return _CONTINUE
        kind = self.stack[-1]
        if kind == _OBJECT_KEY:
            if c == 0x3A:  # :
                self.stack[-1] = _OBJECT_VALUE
                self.step = self.begin_value
                return _CONTINUE
            return self.error(c, "after object key")
        if kind == _OBJECT_VALUE:
            if c == 0x2C:  # ,
                self.stack[-1] = _OBJECT_KEY
                self.step = self.begin_string
                return _CONTINUE
            if c == 0x7D:
                return self.pop()
            return self.error(c, "after object key:value pair")
        if c == 0x2C:
            self.step = self.begin_value
            return _CONTINUE
        if c == 0x5D:
            return self.pop()
        return self.error(c, "after array element")

    def end_top(self, c: int) -> int:
        # The value is complete: a Decoder stops here, whatever this byte is.
        return _END

    def in_string(self, c: int) -> int:
        if c == 0x22:
            self.step = self.end_value
        elif c == 0x5C:  # backslash
            self.step = self.in_string_esc
        elif c < 0x20:
            return self.error(c, "in string literal")
        return _CONTINUE

    def in_string_esc(self, c: int) -> int:
        if c in b'bfnrt\\/"':
            self.step = self.in_string
            return _CONTINUE
        if c == 0x75:  # u
            self.step = self.esc_u(4)
            return _CONTINUE
        return self.error(c, "in string escape code")

    def esc_u(self, left: int) -> Callable[[int], int]:
        def step(c: int) -> int:
            if c not in _HEX:
                return self.error(c, "in \\u hexadecimal character escape")
            self.step = self.esc_u(left - 1) if left > 1 else self.in_string
            return _CONTINUE

        return step

    def neg(self, c: int) -> int:  # after `-`
        if c == 0x30:
            self.step = self.int0
            return _CONTINUE
        if 0x31 <= c <= 0x39:
            self.step = self.int1
            return _CONTINUE
        return self.error(c, "in numeric literal")

    def int1(self, c: int) -> int:  # after a non-zero integer: `1`, `100`
        if c in _DIGITS:
            return _CONTINUE
        return self.int0(c)

    def int0(self, c: int) -> int:  # after `0`
        if c == 0x2E:  # .
            self.step = self.dot
            return _CONTINUE
        if c in b"eE":
            self.step = self.exp
            return _CONTINUE
        return self.end_value(c)

    def dot(self, c: int) -> int:  # after `1.`
        if c in _DIGITS:
            self.step = self.dot0
            return _CONTINUE
        return self.error(c, "after decimal point in numeric literal")

    def dot0(self, c: int) -> int:  # after `3.14`
        if c in _DIGITS:
            return _CONTINUE
        if c in b"eE":
            self.step = self.exp
            return _CONTINUE
        return self.end_value(c)

    def exp(self, c: int) -> int:  # after `314e`
        if c in b"+-":
            self.step = self.exp_sign
            return _CONTINUE
        return self.exp_sign(c)

    def exp_sign(self, c: int) -> int:  # after `314e-`
        if c in _DIGITS:
            self.step = self.exp0
            return _CONTINUE
        return self.error(c, "in exponent of numeric literal")

    def exp0(self, c: int) -> int:  # after `314e-2`
        if c in _DIGITS:
            return _CONTINUE
        return self.end_value(c)

    def word(self, rest: bytes, literal: str) -> Callable[[int], int]:
        """The rest of `true`, `false` or `null`, one expected byte at a time."""

        def step(c: int) -> int:
            if c != rest[0]:
                return self.error(c, f"in literal {literal} (expecting {chr(rest[0])!r})")
            self.step = self.word(rest[1:], literal) if len(rest) > 1 else self.end_value
            return _CONTINUE

        return step

    def in_true(self, c: int) -> int:
        return self.word(b"rue", "true")(c)

    def in_false(self, c: int) -> int:
        return self.word(b"alse", "false")(c)

    def in_null(self, c: int) -> int:
        return self.word(b"ull", "null")(c)


_LITERAL_STARTS = {
    0x22: "in_string",
    0x2D: "neg",
    0x30: "int0",
    0x74: "in_true",
    0x66: "in_false",
    0x6E: "in_null",
}

_ESCAPES = {0x07: "\\a", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_ESCAPES |= {0x0B: "\\v", 0x5C: "\\\\"}


def _quote_char(c: int) -> str:
    """Go's quoteChar: the byte as the rune of the same number, quoted as strconv.Quote does
    (printable Latin-1 as is, the rest escaped), between single quotes."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    if c in _ESCAPES:
        return f"'{_ESCAPES[c]}'"
    if c < 0x20 or c == 0x7F:
        return f"'\\x{c:02x}'"
    if 0x20 <= c <= 0x7E or (0xA1 <= c <= 0xFF and c != 0xAD):
        return f"'{chr(c)}'"
    return f"'\\u{c:04x}'"
