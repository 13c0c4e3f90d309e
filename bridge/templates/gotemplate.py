"""Go's `text/template`, in pure Python: lexer, parser and executor with Go's semantics.

Ollama's prompt templates are Go templates, and the prompt a model sees must match Ollama's byte
for byte, so this follows Go's package closely: the same tokens and parse errors, the same
`missingkey` options, Go's truth, comparison and printing rules (`fmt`'s `%v`, `strconv`'s
shortest floats, `encoding/json` for the `json` helper), `break`/`continue`, `define`/`block`.

Python data stands in for Go data like this:

- `dict`/`Mapping` is a Go map: `.Name` looks up the key "Name"; ranging visits sorted keys.
- `list`/`tuple` is a slice; `NilSlice()` is a nil slice (prints `[]`, marshals to `null`).
- any other object is a struct: `.Name` reads an exported (capitalised) attribute; a capitalised
  method is called with the arguments, as a Go method is. Dataclasses print as `{a b}`, and a
  field's `metadata={"json": "name,omitempty"}` is its `encoding/json` tag.
- `None` is a nil interface, `int` is `int`, `float` is `float64`, `bytes` is `[]byte`.
- an object with a `String()` method is a `fmt.Stringer`; one with `__go_json__()` (returning
  JSON text) is a `json.Marshaler`; a mapping with `__go_zero__()` names the zero value that
  `missingkey=zero` yields for it (Go's zero of the map's element type; `None` otherwise).

Errors: `TemplateSyntaxError` from parsing, `TemplateExecError` from execution, with Go's
messages (`template: :1: unexpected "}" in operand`). Nothing else escapes for a bad template or
bad data. Parsing is cached per source text; a `Template` is immutable and thread-safe.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import inspect
import math
import re
import types
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, Final

__all__ = [
    "ActionNode",
    "BoolNode",
    "BreakNode",
    "ChainNode",
    "CommandNode",
    "ContinueNode",
    "DotNode",
    "FieldNode",
    "IdentifierNode",
    "IfNode",
    "JSONMarshalError",
    "ListNode",
    "NilNode",
    "NilSlice",
    "Node",
    "NumberNode",
    "PipeNode",
    "RangeNode",
    "StringNode",
    "Template",
    "TemplateError",
    "TemplateExecError",
    "TemplateNode",
    "TemplateSyntaxError",
    "TextNode",
    "VariableNode",
    "WithNode",
    "format_value",
    "marshal_json",
    "sprint",
    "sprintf",
    "sprintln",
]


class TemplateError(Exception):
    """A template that cannot be parsed or executed."""


class TemplateSyntaxError(TemplateError):
    """The template text is not a valid Go template."""


class TemplateExecError(TemplateError):
    """Executing the template failed (Go's `template.ExecError`)."""


class JSONMarshalError(ValueError):
    """A value `encoding/json` would refuse (NaN, a function, ...)."""


class _Invalid:
    """Go's zero `reflect.Value`: what a missing map key or a nil pipeline result becomes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<invalid reflect.Value>"


class _Missing:
    """No value piped in from a previous command."""

    __slots__ = ()


_INVALID: Final = _Invalid()
_MISSING: Final = _Missing()


class NilSlice(tuple[Any, ...]):
    """A Go nil slice: empty, false, prints as `[]`, marshals to JSON `null`."""

    __slots__ = ()

    def __go_json__(self) -> str:
        return "null"


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Parse tree
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Node:
    """A parse-tree node; `pos` is its offset (in characters) in the template text."""

    pos: int


@dataclass(slots=True, eq=False)
class ListNode(Node):
    nodes: list[Node] = field(default_factory=list)

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


@dataclass(slots=True, eq=False)
class TextNode(Node):
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(slots=True, eq=False)
class IdentifierNode(Node):
    ident: str

    def __str__(self) -> str:
        return self.ident


@dataclass(slots=True, eq=False)
class VariableNode(Node):
    ident: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.ident)


@dataclass(slots=True, eq=False)
class DotNode(Node):
    def __str__(self) -> str:
        return "."


@dataclass(slots=True, eq=False)
class NilNode(Node):
    def __str__(self) -> str:
        return "nil"


@dataclass(slots=True, eq=False)
class FieldNode(Node):
    ident: tuple[str, ...]

    def __str__(self) -> str:
        return "".join("." + i for i in self.ident)


@dataclass(slots=True, eq=False)
class ChainNode(Node):
    node: Node
    field: tuple[str, ...]

    def __str__(self) -> str:
        s = f"({self.node})" if isinstance(self.node, PipeNode) else str(self.node)
        return s + "".join("." + f for f in self.field)


@dataclass(slots=True, eq=False)
class BoolNode(Node):
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(slots=True, eq=False)
class NumberNode(Node):
    text: str
    value: Any  # the "ideal constant" Go gives the literal where no type is known
    overflow: bool = False  # fits only an unsigned 64-bit integer: an error when used

    def __str__(self) -> str:
        return self.text


@dataclass(slots=True, eq=False)
class StringNode(Node):
    quoted: str
    text: str

    def __str__(self) -> str:
        return self.quoted


@dataclass(slots=True, eq=False)
class CommandNode(Node):
    args: list[Node] = field(default_factory=list)

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, PipeNode) else str(a) for a in self.args)


@dataclass(slots=True, eq=False)
class PipeNode(Node):
    line: int
    is_assign: bool = False
    decl: list[VariableNode] = field(default_factory=list)
    cmds: list[CommandNode] = field(default_factory=list)

    def __str__(self) -> str:
        s = ""
        if self.decl:
            s = ", ".join(str(v) for v in self.decl) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


@dataclass(slots=True, eq=False)
class ActionNode(Node):
    line: int
    pipe: PipeNode

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


@dataclass(slots=True, eq=False)
class BranchNode(Node):
    line: int
    pipe: PipeNode
    list: ListNode
    else_list: ListNode | None = None

    _keyword = ""

    def __str__(self) -> str:
        s = "{{" + self._keyword + " " + str(self.pipe) + "}}" + str(self.list)
        if self.else_list is not None:
            s += "{{else}}" + str(self.else_list)
        return s + "{{end}}"


@dataclass(slots=True, eq=False)
class IfNode(BranchNode):
    _keyword = "if"


@dataclass(slots=True, eq=False)
class RangeNode(BranchNode):
    _keyword = "range"


@dataclass(slots=True, eq=False)
class WithNode(BranchNode):
    _keyword = "with"


@dataclass(slots=True, eq=False)
class TemplateNode(Node):
    line: int
    name: str
    pipe: PipeNode | None = None

    def __str__(self) -> str:
        if self.pipe is None:
            return "{{template " + _go_quote(self.name) + "}}"
        return "{{template " + _go_quote(self.name) + " " + str(self.pipe) + "}}"


@dataclass(slots=True, eq=False)
class BreakNode(Node):
    line: int

    def __str__(self) -> str:
        return "{{break}}"


@dataclass(slots=True, eq=False)
class ContinueNode(Node):
    line: int

    def __str__(self) -> str:
        return "{{continue}}"


@dataclass(slots=True, eq=False)
class _EndNode(Node):
    def __str__(self) -> str:
        return "{{end}}"


@dataclass(slots=True, eq=False)
class _ElseNode(Node):
    line: int

    def __str__(self) -> str:
        return "{{else}}"


# ---------------------------------------------------------------------------------------------
# Lexer
# ---------------------------------------------------------------------------------------------

(
    _ERROR,
    _BOOL,
    _CHAR,
    _CHAR_CONSTANT,
    _COMPLEX,
    _ASSIGN,
    _DECLARE,
    _EOF,
    _FIELD,
    _IDENTIFIER,
    _LEFT_DELIM,
    _LEFT_PAREN,
    _NUMBER,
    _PIPE,
    _RAW_STRING,
    _RIGHT_DELIM,
    _RIGHT_PAREN,
    _SPACE,
    _STRING,
    _TEXT,
    _VARIABLE,
    _KEYWORD,  # keywords sort after this one
    _BLOCK,
    _BREAK_KW,
    _CONTINUE_KW,
    _DOT,
    _DEFINE,
    _ELSE,
    _END,
    _IF,
    _NIL,
    _RANGE,
    _TEMPLATE,
    _WITH,
) = range(34)

_KEYWORDS: Final = {
    "block": _BLOCK,
    "break": _BREAK_KW,
    "continue": _CONTINUE_KW,
    "define": _DEFINE,
    "else": _ELSE,
    "end": _END,
    "if": _IF,
    "nil": _NIL,
    "range": _RANGE,
    "template": _TEMPLATE,
    "with": _WITH,
}

_SPACES: Final = " \t\r\n"
_TERMINATORS: Final = frozenset(" \t\r\n.,|:()")


@dataclass(slots=True, frozen=True)
class _Item:
    typ: int
    pos: int
    val: str
    line: int

    def __str__(self) -> str:
        if self.typ == _EOF:
            return "EOF"
        if self.typ == _ERROR:
            return self.val
        if self.typ > _KEYWORD:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return _go_quote(self.val[:10]) + "..."
        return _go_quote(self.val)


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


def _rune_u(c: str) -> str:
    """Go's `%#U`: U+0078 'x'."""
    s = f"U+{ord(c):04X}"
    return f"{s} '{c}'" if c.isprintable() else s


class _Lexer:
    """Turns template text into items, as Go's state-machine lexer does (all at once)."""

    def __init__(self, text: str, *, break_ok: bool, continue_ok: bool) -> None:
        self.text = text
        self.n = len(text)
        self.items: list[_Item] = []
        self.break_ok = break_ok
        self.continue_ok = continue_ok
        self._line_pos = 0
        self._line = 1

    def line_at(self, pos: int) -> int:
        # Items come in increasing position order, so newlines can be counted incrementally.
        if pos >= self._line_pos:
            self._line += self.text.count("\n", self._line_pos, pos)
        else:
            self._line -= self.text.count("\n", pos, self._line_pos)
        self._line_pos = pos
        return self._line

    def emit(self, typ: int, start: int, end: int) -> None:
        self.items.append(_Item(typ, start, self.text[start:end], self.line_at(start)))

    def error(self, start: int, msg: str) -> None:
        self.items.append(_Item(_ERROR, start, msg, self.line_at(start)))

    def at_right_delim(self, pos: int) -> tuple[bool, bool]:
        t = self.text
        if (
            pos + 1 < self.n
            and t[pos] in _SPACES
            and t[pos + 1] == "-"
            and t.startswith("}}", pos + 2)
        ):
            return True, True
        return t.startswith("}}", pos), False

    def at_terminator(self, pos: int) -> bool:
        if pos >= self.n:
            return True
        return self.text[pos] in _TERMINATORS or self.text.startswith("}}", pos)

    def run(self) -> list[_Item]:
        t, n = self.text, self.n
        pos = 0
        while True:
            x = t.find("{{", pos)
            if x < 0:
                if pos < n:
                    self.emit(_TEXT, pos, n)
                self.items.append(_Item(_EOF, n, "", self.line_at(n)))
                return self.items
            trim_left = x + 3 < n and t[x + 2] == "-" and t[x + 3] in _SPACES
            end = x
            if trim_left:
                end = len(t[pos:x].rstrip(_SPACES)) + pos
            if end > pos:
                self.emit(_TEXT, pos, end)
            after = x + 4 if trim_left else x + 2
            if t.startswith("/*", after):
                pos = self.comment(after)
                if pos < 0:
                    return self.items
                continue
            self.emit(_LEFT_DELIM, x, x + 2)
            pos = self.inside_action(after)
            if pos < 0:
                return self.items

    def comment(self, start: int) -> int:
        t = self.text
        c = t.find("*/", start + 2)
        if c < 0:
            self.error(start, "unclosed comment")
            return -1
        pos = c + 2
        delim, trim = self.at_right_delim(pos)
        if not delim:
            self.error(start, "comment ends before closing delimiter")
            return -1
        pos += 4 if trim else 2
        if trim:
            pos = self.n - len(t[pos:].lstrip(_SPACES))
        return pos

    def inside_action(self, pos: int) -> int:
        """Lexes one action's insides; returns the position after `}}`, or -1 on an error."""
        t, n = self.text, self.n
        depth = 0
        while True:
            delim, trim = self.at_right_delim(pos)
            if delim:
                if depth:
                    self.error(pos, "unclosed left paren")
                    return -1
                if trim:
                    pos += 2
                self.emit(_RIGHT_DELIM, pos, pos + 2)
                pos += 2
                if trim:
                    pos = n - len(t[pos:].lstrip(_SPACES))
                return pos
            if pos >= n:
                self.error(pos, "unclosed action")
                return -1
            c = t[pos]
            start = pos
            if c in _SPACES:
                while pos < n and t[pos] in _SPACES:
                    pos += 1
                if t.startswith("-}}", pos):
                    pos -= 1  # the last space belongs to the trim marker " -}}"
                if pos > start:
                    self.emit(_SPACE, start, pos)
            elif c == "=":
                pos += 1
                self.emit(_ASSIGN, start, pos)
            elif c == ":":
                if t[pos + 1 : pos + 2] != "=":
                    self.error(start, "expected :=")
                    return -1
                pos += 2
                self.emit(_DECLARE, start, pos)
            elif c == "|":
                pos += 1
                self.emit(_PIPE, start, pos)
            elif c == '"':
                pos = self.quote(start)
                if pos < 0:
                    return -1
            elif c == "`":
                end = t.find("`", pos + 1)
                if end < 0:
                    self.error(start, "unterminated raw quoted string")
                    return -1
                pos = end + 1
                self.emit(_RAW_STRING, start, pos)
            elif c == "$":
                pos = self.field_or_variable(start, _VARIABLE)
                if pos < 0:
                    return -1
            elif c == "'":
                pos = self.char(start)
                if pos < 0:
                    return -1
            elif c == "." and pos + 1 < n and not ("0" <= t[pos + 1] <= "9"):
                pos = self.field_or_variable(start, _FIELD)
                if pos < 0:
                    return -1
            elif c in "+-." or "0" <= c <= "9":
                pos = self.number(start)
                if pos < 0:
                    return -1
            elif _is_alnum(c):
                pos = self.identifier(start)
                if pos < 0:
                    return -1
            elif c == "(":
                pos += 1
                self.emit(_LEFT_PAREN, start, pos)
                depth += 1
            elif c == ")":
                pos += 1
                self.emit(_RIGHT_PAREN, start, pos)
                depth -= 1
                if depth < 0:
                    self.error(pos, f"unexpected right paren {_rune_u(c)}")
                    return -1
            elif c <= "\x7f" and c.isprintable():
                pos += 1
                self.emit(_CHAR, start, pos)
            else:
                self.error(start, f"unrecognized character in action: {_rune_u(c)}")
                return -1

    def quote(self, start: int) -> int:
        return self._quoted(start, '"', _STRING, "unterminated quoted string")

    def char(self, start: int) -> int:
        return self._quoted(start, "'", _CHAR_CONSTANT, "unterminated character constant")

    def _quoted(self, start: int, close: str, typ: int, unterminated: str) -> int:
        """A "..." or '...' literal: backslash escapes anything but a newline."""
        t, n = self.text, self.n
        pos = start + 1
        while True:
            c = t[pos] if pos < n else ""
            pos += 1
            if c == "\\":
                c2 = t[pos] if pos < n else ""
                pos += 1
                if c2 not in ("", "\n"):
                    continue
                c = c2
            if c in ("", "\n"):
                self.error(start, unterminated)
                return -1
            if c == close:
                self.emit(typ, start, pos)
                return pos

    def field_or_variable(self, start: int, typ: int) -> int:
        pos = start + 1
        if self.at_terminator(pos):
            self.emit(_VARIABLE if typ == _VARIABLE else _DOT, start, pos)
            return pos
        t, n = self.text, self.n
        while pos < n and _is_alnum(t[pos]):
            pos += 1
        if not self.at_terminator(pos):
            self.error(start, f"bad character {_rune_u(t[pos])}")
            return -1
        self.emit(typ, start, pos)
        return pos

    def identifier(self, start: int) -> int:
        t, n = self.text, self.n
        pos = start
        while pos < n and _is_alnum(t[pos]):
            pos += 1
        if not self.at_terminator(pos):
            self.error(start, f"bad character {_rune_u(t[pos])}")
            return -1
        word = t[start:pos]
        kw = _KEYWORDS.get(word)
        if kw is not None:
            if (kw == _BREAK_KW and not self.break_ok) or (
                kw == _CONTINUE_KW and not self.continue_ok
            ):
                kw = _IDENTIFIER
            self.emit(kw, start, pos)
        elif word in ("true", "false"):
            self.emit(_BOOL, start, pos)
        else:
            self.emit(_IDENTIFIER, start, pos)
        return pos

    def scan_number(self, pos: int) -> tuple[bool, int]:
        t, n = self.text, self.n

        def accept(p: int, valid: str) -> tuple[bool, int]:
            if p < n and t[p] in valid:
                return True, p + 1
            return False, p

        def run(p: int, valid: str) -> int:
            while p < n and t[p] in valid:
                p += 1
            return p

        _, pos = accept(pos, "+-")
        digits = "0123456789_"
        ok, pos = accept(pos, "0")
        if ok:
            for prefix, ds in (
                ("xX", "0123456789abcdefABCDEF_"),
                ("oO", "01234567_"),
                ("bB", "01_"),
            ):
                ok2, pos = accept(pos, prefix)
                if ok2:
                    digits = ds
                    break
        pos = run(pos, digits)
        ok, pos = accept(pos, ".")
        if ok:
            pos = run(pos, digits)
        if len(digits) == 11:
            ok, pos = accept(pos, "eE")
            if ok:
                _, pos = accept(pos, "+-")
                pos = run(pos, "0123456789_")
        if len(digits) == 23:
            ok, pos = accept(pos, "pP")
            if ok:
                _, pos = accept(pos, "+-")
                pos = run(pos, "0123456789_")
        _, pos = accept(pos, "i")
        if pos < n and _is_alnum(t[pos]):
            return False, pos + 1
        return True, pos

    def number(self, start: int) -> int:
        ok, pos = self.scan_number(start)
        if not ok:
            self.error(start, f"bad number syntax: {_go_quote(self.text[start:pos])}")
            return -1
        if pos < self.n and self.text[pos] in "+-":
            ok, pos = self.scan_number(pos)
            if not ok or self.text[pos - 1] != "i":
                self.error(start, f"bad number syntax: {_go_quote(self.text[start:pos])}")
                return -1
            self.emit(_COMPLEX, start, pos)
        else:
            self.emit(_NUMBER, start, pos)
        return pos


# ---------------------------------------------------------------------------------------------
# Literals: strconv.Unquote and Go number syntax
# ---------------------------------------------------------------------------------------------

_SIMPLE_ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}


class _SyntaxErr(Exception):
    pass


def _unquote_char(s: str, i: int, quote: str) -> tuple[str | int, int]:
    """One (possibly escaped) character of a Go literal: a str, or an int for a byte escape."""
    c = s[i]
    if c == quote and quote in "'\"":
        raise _SyntaxErr("invalid syntax")
    if c != "\\":
        return c, i + 1
    if i + 1 >= len(s):
        raise _SyntaxErr("invalid syntax")
    e = s[i + 1]
    if e in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[e], i + 2
    if e in "'\"":
        if e != quote:
            raise _SyntaxErr("invalid syntax")
        return e, i + 2
    if e in "xuU":
        size = {"x": 2, "u": 4, "U": 8}[e]
        hexs = s[i + 2 : i + 2 + size]
        if len(hexs) != size or any(h not in "0123456789abcdefABCDEF" for h in hexs):
            raise _SyntaxErr("invalid syntax")
        v = int(hexs, 16)
        if e == "x":
            return (chr(v) if quote == "'" else v), i + 2 + size
        if v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
            raise _SyntaxErr("invalid syntax")
        return chr(v), i + 2 + size
    if "0" <= e <= "7":
        octs = s[i + 1 : i + 4]
        if len(octs) != 3 or any(o not in "01234567" for o in octs):
            raise _SyntaxErr("invalid syntax")
        v = int(octs, 8)
        if v > 255:
            raise _SyntaxErr("invalid syntax")
        return (chr(v) if quote == "'" else v), i + 4
    raise _SyntaxErr("invalid syntax")


def _unquote(s: str) -> str:
    """Go's strconv.Unquote for "..." and `...` literals."""
    if len(s) < 2 or s[0] != s[-1]:
        raise _SyntaxErr("invalid syntax")
    if s[0] == "`":
        return s[1:-1].replace("\r", "")
    body = s[1:-1]
    if "\\" not in body:
        if '"' in body or "\n" in body:
            raise _SyntaxErr("invalid syntax")
        return body
    out: list[str] = []
    pending = bytearray()
    i = 0
    while i < len(body):
        if body[i] == "\n":
            raise _SyntaxErr("invalid syntax")
        c, i = _unquote_char(body, i, '"')
        if isinstance(c, int):
            pending.append(c)
            continue
        if pending:
            out.append(pending.decode("utf-8", "replace"))
            pending.clear()
        out.append(c)
    if pending:
        out.append(pending.decode("utf-8", "replace"))
    return "".join(out)


def _underscore_ok(s: str) -> bool:
    saw = "^"
    i = 0
    if s[:1] in ("+", "-"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i = 2
        saw = "0"
        hexa = s[1].lower() == "x"
    while i < len(s):
        ch = s[i]
        if "0" <= ch <= "9" or (hexa and "a" <= ch.lower() <= "f"):
            saw = "0"
        elif ch == "_":
            if saw != "0":
                return False
            saw = "_"
        else:
            if saw == "_":
                return False
            saw = "!"
        i += 1
    return saw != "_"


def _parse_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64) without the range check; None when malformed."""
    s = text
    neg = False
    if s[:1] in ("+", "-"):
        neg = s[0] == "-"
        s = s[1:]
    if not s:
        return None
    base = 10
    if len(s) >= 2 and s[0] == "0" and s[1] in "xXoObB":
        base = {"x": 16, "o": 8, "b": 2}[s[1].lower()]
        digits = s[2:]
    elif len(s) >= 2 and s[0] == "0":
        base = 8
        digits = s[1:]
    else:
        digits = s
    if "_" in digits or "_" in s:
        if not _underscore_ok(text):
            return None
        digits = digits.replace("_", "")
    if not digits:
        return None
    valid = "0123456789abcdefABCDEF"[: base if base <= 10 else 10 + (base - 10) * 2]
    if any(d not in valid for d in digits):
        return None
    v = int(digits, base)
    return -v if neg else v


_DEC_FLOAT: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_HEX_FLOAT: Final = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?\d+"
)


def _parse_float(text: str) -> float | None:
    s = text
    if "_" in s:
        if not _underscore_ok(s):
            return None
        s = s.replace("_", "")
    try:
        if _DEC_FLOAT.fullmatch(s):
            f = float(s)
        elif _HEX_FLOAT.fullmatch(s):
            f = float.fromhex(s)
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return None if math.isinf(f) else f


_I64: Final = 1 << 63
_U64: Final = 1 << 64


def _new_number(pos: int, text: str, typ: int) -> NumberNode:
    """A number literal and the ideal constant Go makes of it (an `error` string raises)."""
    if typ == _CHAR_CONSTANT:
        try:
            c, end = _unquote_char(text, 1, "'")
        except (_SyntaxErr, IndexError):
            raise _SyntaxErr("invalid syntax") from None
        if text[end:] != "'":
            raise _SyntaxErr(f"malformed character constant: {text}")
        return NumberNode(pos, text, ord(c) if isinstance(c, str) else c)
    if typ == _COMPLEX:
        try:
            return NumberNode(pos, text, complex(text.replace("_", "").replace("i", "j")))
        except ValueError:
            raise _SyntaxErr(f"illegal number syntax: {_go_quote(text)}") from None
    if text.endswith("i"):
        f = _parse_float(text[:-1])
        if f is None:
            iv = _parse_int(text[:-1])
            f = float(iv) if iv is not None else None
        if f is not None:
            return NumberNode(pos, text, complex(0, f))
    iv = _parse_int(text)
    is_int = iv is not None and -_I64 <= iv < _I64
    is_uint = iv is not None and 0 <= iv < _U64
    if is_int or is_uint:
        assert iv is not None
        is_float_syntax = not (
            len(text) > 2 and text[0] == "0" and text[1] in "xX" and not set(text) & set("pP")
        ) and set(text) & set(".eEpP")
        if is_float_syntax:
            return NumberNode(pos, text, float(iv))
        return NumberNode(pos, text, iv, overflow=not is_int)
    f = _parse_float(text)
    if f is None:
        raise _SyntaxErr(f"illegal number syntax: {_go_quote(text)}")
    if not set(text) & set(".eEpP"):
        raise _SyntaxErr(f"integer overflow: {_go_quote(text)}")
    return NumberNode(pos, text, f)


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------

_MAX_PAREN_DEPTH: Final = 100
_MAX_NESTING: Final = 100


class _Parser:
    """Recursive descent over the items, as Go's `parse.Tree` does (same errors)."""

    def __init__(self, text: str, name: str, func_names: frozenset[str]) -> None:
        self.text = text
        self.name = name
        self.func_names = func_names
        self.items = _Lexer(
            text, break_ok="break" not in func_names, continue_ok="continue" not in func_names
        ).run()
        self.i = 0
        self.high = 0  # the newest item read so far: Go reports errors at its line
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.paren_depth = 0
        self.nesting = 0
        self.action_line = 0
        self.trees: dict[str, ListNode] = {}

    # -- token stream
    def next(self) -> _Item:
        i = min(self.i, len(self.items) - 1)
        self.i = i + 1
        if i > self.high:
            self.high = i
        return self.items[i]

    def backup(self) -> None:
        self.i -= 1

    def peek(self) -> _Item:
        tok = self.next()
        self.i -= 1
        return tok

    def next_non_space(self) -> _Item:
        while True:
            tok = self.next()
            if tok.typ != _SPACE:
                return tok

    def peek_non_space(self) -> _Item:
        tok = self.next_non_space()
        self.backup()
        return tok

    # -- errors
    def errorf(self, msg: str) -> TemplateSyntaxError:
        line = self.items[self.high].line
        return TemplateSyntaxError(f"template: {self.name}:{line}: {msg}")

    def unexpected(self, tok: _Item, context: str) -> TemplateSyntaxError:
        if tok.typ == _ERROR:
            extra = ""
            if self.action_line and self.action_line != tok.line:
                extra = f" in action started at {self.name}:{self.action_line}"
                if tok.val.endswith(" action"):
                    extra = extra[len(" in action") :]
            return self.errorf(f"{tok}{extra}")
        return self.errorf(f"unexpected {tok} in {context}")

    def expect(self, typ: int, context: str) -> _Item:
        tok = self.next_non_space()
        if tok.typ != typ:
            raise self.unexpected(tok, context)
        return tok

    # -- grammar
    def parse(self) -> dict[str, ListNode]:
        root = ListNode(self.peek().pos)
        while self.peek().typ != _EOF:
            if self.peek().typ == _LEFT_DELIM:
                mark = self.i
                self.next()
                if self.next_non_space().typ == _DEFINE:
                    self.parse_definition()
                    continue
                self.i = mark
            n = self.text_or_action()
            if isinstance(n, (_EndNode, _ElseNode)):
                raise self.errorf(f"unexpected {n}")
            root.nodes.append(n)
        self.add(self.name, root)
        return self.trees

    def add(self, name: str, root: ListNode) -> None:
        old = self.trees.get(name)
        if old is None or _is_empty_tree(old):
            self.trees[name] = root
        elif not _is_empty_tree(root):
            raise self.errorf(f"template: multiple definition of template {_go_quote(name)}")

    def sub_tree(self, context: str) -> ListNode:
        """The body of a define or block: a separate tree with its own variables."""
        saved = (self.vars, self.range_depth)
        self.vars, self.range_depth = ["$"], 0
        root, end = self.item_list()
        if not isinstance(end, _EndNode):
            raise self.errorf(f"unexpected {end} in {context}")
        self.vars, self.range_depth = saved
        return root

    def parse_definition(self) -> None:
        context = "define clause"
        tok = self.next_non_space()
        if tok.typ not in (_STRING, _RAW_STRING):
            raise self.unexpected(tok, context)
        name = self.unquote(tok.val)
        self.expect(_RIGHT_DELIM, context)
        self.add(name, self.sub_tree(context))

    def unquote(self, s: str) -> str:
        try:
            return _unquote(s)
        except _SyntaxErr as e:
            raise self.errorf(str(e)) from None

    def item_list(self) -> tuple[ListNode, Node]:
        lst = ListNode(self.peek_non_space().pos)
        while self.peek_non_space().typ != _EOF:
            n = self.text_or_action()
            if isinstance(n, (_EndNode, _ElseNode)):
                return lst, n
            lst.nodes.append(n)
        raise self.errorf("unexpected EOF")

    def text_or_action(self) -> Node:
        tok = self.next_non_space()
        if tok.typ == _TEXT:
            return TextNode(tok.pos, tok.val)
        if tok.typ == _LEFT_DELIM:
            self.action_line = tok.line
            try:
                return self.action()
            finally:
                self.action_line = 0
        raise self.unexpected(tok, "input")

    def action(self) -> Node:
        tok = self.next_non_space()
        typ = tok.typ
        if typ == _BLOCK:
            return self.block_control()
        if typ == _BREAK_KW:
            return self.loop_control(tok, "break")
        if typ == _CONTINUE_KW:
            return self.loop_control(tok, "continue")
        if typ == _ELSE:
            return self.else_control()
        if typ == _END:
            return _EndNode(self.expect(_RIGHT_DELIM, "end").pos)
        if typ == _IF:
            return IfNode(*self.parse_control("if"))
        if typ == _RANGE:
            return RangeNode(*self.parse_control("range"))
        if typ == _TEMPLATE:
            return self.template_control()
        if typ == _WITH:
            return WithNode(*self.parse_control("with"))
        self.backup()
        tok = self.peek()
        return ActionNode(tok.pos, tok.line, self.pipeline("command", _RIGHT_DELIM))

    def loop_control(self, kw: _Item, word: str) -> Node:
        tok = self.next_non_space()
        if tok.typ != _RIGHT_DELIM:
            raise self.unexpected(tok, "{{" + word + "}}")
        if self.range_depth == 0:
            raise self.errorf("{{" + word + "}} outside {{range}}")
        return BreakNode(kw.pos, kw.line) if word == "break" else ContinueNode(kw.pos, kw.line)

    def else_control(self) -> Node:
        peek = self.peek_non_space()
        if peek.typ in (_IF, _WITH):
            return _ElseNode(peek.pos, peek.line)
        tok = self.expect(_RIGHT_DELIM, "else")
        return _ElseNode(tok.pos, tok.line)

    def parse_control(self, context: str) -> tuple[int, int, PipeNode, ListNode, ListNode | None]:
        saved = len(self.vars)
        self.nesting += 1
        if self.nesting > _MAX_NESTING:
            raise self.errorf("max nesting depth exceeded")
        pipe = self.pipeline(context, _RIGHT_DELIM)
        if context == "range":
            self.range_depth += 1
        lst, nxt = self.item_list()
        if context == "range":
            self.range_depth -= 1
        else_list: ListNode | None = None
        if isinstance(nxt, _ElseNode):
            if context == "if" and self.peek().typ == _IF:
                self.next()
                else_list = ListNode(nxt.pos, [IfNode(*self.parse_control("if"))])
            elif context == "with" and self.peek().typ == _WITH:
                self.next()
                else_list = ListNode(nxt.pos, [WithNode(*self.parse_control("with"))])
            else:
                else_list, nxt = self.item_list()
                if not isinstance(nxt, _EndNode):
                    raise self.errorf(f"expected end; found {nxt}")
        del self.vars[saved:]
        self.nesting -= 1
        return pipe.pos, pipe.line, pipe, lst, else_list

    def template_name(self, tok: _Item, context: str) -> str:
        if tok.typ in (_STRING, _RAW_STRING):
            return self.unquote(tok.val)
        raise self.unexpected(tok, context)

    def block_control(self) -> Node:
        context = "block clause"
        tok = self.next_non_space()
        name = self.template_name(tok, context)
        pipe = self.pipeline(context, _RIGHT_DELIM)
        self.add(name, self.sub_tree(context))
        return TemplateNode(tok.pos, tok.line, name, pipe)

    def template_control(self) -> Node:
        context = "template clause"
        tok = self.next_non_space()
        name = self.template_name(tok, context)
        pipe = None
        if self.next_non_space().typ != _RIGHT_DELIM:
            self.backup()
            pipe = self.pipeline(context, _RIGHT_DELIM)
        return TemplateNode(tok.pos, tok.line, name, pipe)

    def pipeline(self, context: str, end: int) -> PipeNode:
        tok = self.peek_non_space()
        pipe = PipeNode(tok.pos, tok.line)
        while True:  # declarations
            v = self.peek_non_space()
            if v.typ != _VARIABLE:
                break
            mark = self.i
            self.next()
            nxt = self.peek_non_space()
            if nxt.typ in (_ASSIGN, _DECLARE):
                pipe.is_assign = nxt.typ == _ASSIGN
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, (v.val,)))
                self.vars.append(v.val)
            elif nxt.typ == _CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, (v.val,)))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in (_VARIABLE, _RIGHT_DELIM, _RIGHT_PAREN):
                        continue
                    raise self.errorf("range can only initialize variables")
                raise self.errorf(f"too many declarations in {context}")
            else:
                self.i = mark  # not a declaration: the variable is an operand
            break
        while True:
            tok = self.next_non_space()
            if tok.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if tok.typ in _OPERAND_START:
                self.backup()
                pipe.cmds.append(self.command())
            else:
                raise self.unexpected(tok, context)

    def check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            raise self.errorf(f"missing value for {context}")
        for i, c in enumerate(pipe.cmds[1:]):
            if isinstance(c.args[0], (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                raise self.errorf(f"non executable command in pipeline stage {i + 2}")

    def command(self) -> CommandNode:
        cmd = CommandNode(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self.next()
            if tok.typ == _SPACE:
                continue
            if tok.typ in (_RIGHT_DELIM, _RIGHT_PAREN):
                self.backup()
            elif tok.typ != _PIPE:
                raise self.unexpected(tok, "operand")
            break
        if not cmd.args:
            raise self.errorf("empty command")
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == _FIELD:
            pos = self.peek().pos
            fields: list[str] = []
            while self.peek().typ == _FIELD:
                fields.append(self.next().val[1:])
            if isinstance(node, FieldNode):
                return FieldNode(pos, (*node.ident, *fields))
            if isinstance(node, VariableNode):
                return VariableNode(pos, (*node.ident, *fields))
            if isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
                raise self.errorf(f"unexpected . after term {_go_quote(str(node))}")
            return ChainNode(pos, node, tuple(fields))
        return node

    def term(self) -> Node | None:
        tok = self.next_non_space()
        typ = tok.typ
        if typ == _IDENTIFIER:
            if tok.val not in _BUILTIN_NAMES and tok.val not in self.func_names:
                raise self.errorf(f"function {_go_quote(tok.val)} not defined")
            return IdentifierNode(tok.pos, tok.val)
        if typ == _DOT:
            return DotNode(tok.pos)
        if typ == _NIL:
            return NilNode(tok.pos)
        if typ == _VARIABLE:
            ident = tuple(tok.val.split("."))
            if ident[0] not in self.vars:
                raise self.errorf(f"undefined variable {_go_quote(ident[0])}")
            return VariableNode(tok.pos, ident)
        if typ == _FIELD:
            return FieldNode(tok.pos, tuple(tok.val[1:].split(".")))
        if typ == _BOOL:
            return BoolNode(tok.pos, tok.val == "true")
        if typ in (_CHAR_CONSTANT, _COMPLEX, _NUMBER):
            try:
                return _new_number(tok.pos, tok.val, typ)
            except _SyntaxErr as e:
                raise self.errorf(str(e)) from None
        if typ == _LEFT_PAREN:
            if self.paren_depth >= _MAX_PAREN_DEPTH:
                raise self.errorf("max expression depth exceeded")
            self.paren_depth += 1
            pipe = self.pipeline("parenthesized pipeline", _RIGHT_PAREN)
            self.paren_depth -= 1
            return pipe
        if typ in (_STRING, _RAW_STRING):
            return StringNode(tok.pos, tok.val, self.unquote(tok.val))
        self.backup()
        return None


_OPERAND_START: Final = frozenset(
    (
        _BOOL,
        _CHAR_CONSTANT,
        _COMPLEX,
        _DOT,
        _FIELD,
        _IDENTIFIER,
        _NUMBER,
        _NIL,
        _RAW_STRING,
        _STRING,
        _VARIABLE,
        _LEFT_PAREN,
    )
)


def _is_empty_tree(n: Node) -> bool:
    if isinstance(n, ListNode):
        return all(_is_empty_tree(c) for c in n.nodes)
    if isinstance(n, TextNode):
        return not n.text.strip()
    return False


@functools.lru_cache(maxsize=256)
def _parse_cached(text: str, name: str, func_names: frozenset[str]) -> dict[str, ListNode]:
    try:
        return _Parser(text, name, func_names).parse()
    except RecursionError:
        raise TemplateSyntaxError(f"template: {name}: template nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# Go values: types, truth, printing
# ---------------------------------------------------------------------------------------------


def _go_type(v: Any) -> str:
    """The Go type a Python value stands for, for messages and `%T`."""
    if v is None or v is _INVALID:
        return "<nil>"
    t = type(v)
    name = getattr(t, "__go_type__", None)
    if isinstance(name, str):
        return name
    if t is bool:
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, complex):
        return "complex128"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (bytes, bytearray)):
        return "[]uint8"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    if _is_func(v):
        return "func"
    return t.__name__


def _is_func(v: Any) -> bool:
    return isinstance(
        v,
        (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial),
    )


def _truth(v: Any) -> bool:
    """Go's `IsTrue`: false, 0, nil and empty strings, slices and maps are false."""
    if v is None or v is _INVALID:
        return False
    t = type(v)
    if t is bool:
        return bool(v)
    if t is str or t is list or t is dict or t is tuple:
        return len(v) > 0
    if t is int or t is float:
        return bool(v != 0)
    if isinstance(v, (str, bytes, bytearray, list, tuple, Mapping)):
        return len(v) > 0
    if isinstance(v, (int, float, complex)):
        return bool(v != 0)
    return True


def _stringer(v: Any) -> Callable[[], Any] | None:
    """The value's `String` method, if it is a fmt.Stringer."""
    m = _methods(type(v)).get("String")
    return None if m is None else functools.partial(m, v)


_METHODS: dict[type, dict[str, Callable[..., Any]]] = {}


def _exported_methods(tp: type) -> dict[str, Callable[..., Any]]:
    out: dict[str, Callable[..., Any]] = {}
    if tp.__module__ == "builtins":
        return out
    for klass in reversed(tp.__mro__):
        for name, attr in vars(klass).items():
            if name[:1].isupper() and isinstance(attr, types.FunctionType):
                out[name] = attr
    return out


def _methods(tp: type) -> dict[str, Callable[..., Any]]:
    m = _METHODS.get(tp)
    if m is None:
        m = _METHODS[tp] = _exported_methods(tp)
    return m


def _format_float(f: float, verb: str = "g", prec: int = -1) -> str:
    """strconv.FormatFloat(f, verb, prec, 64) for verbs e, f, g (shortest when prec < 0)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if prec >= 0:
        if verb == "g" and prec == 0:
            prec = 1
        return f"%.{prec}{verb}" % f
    neg = math.copysign(1.0, f) < 0
    a = -f if neg else f
    if a == 0:
        digits, dp = "", 0
    else:
        r = repr(a)
        mant, _, exps = r.partition("e")
        ip, _, fp = mant.partition(".")
        allds = ip + fp
        stripped = allds.lstrip("0")
        dp = len(ip) + (int(exps) if exps else 0) - (len(allds) - len(stripped))
        digits = stripped.rstrip("0")
    nd = len(digits)
    if verb == "g":
        # Shortest %g switches to an exponent when it is < -4 or >= 6 (strconv's eprec).
        exp = dp - 1
        verb = "e" if exp < -4 or exp >= 6 else "f"
    if verb == "e":
        first = digits[:1] or "0"
        s = first + ("." + digits[1:] if nd > 1 else "")
        exp = dp - 1 if nd else 0
        s += "e" + ("-" if exp < 0 else "+") + f"{abs(exp):02d}"
    else:
        if dp <= 0:
            s = "0" + ("." + "0" * -dp + digits if nd else "")
        elif dp >= nd:
            s = digits + "0" * (dp - nd)
        else:
            s = digits[:dp] + "." + digits[dp:]
    return "-" + s if neg else s


def _json_float(f: float) -> str:
    if math.isnan(f) or math.isinf(f):
        raise JSONMarshalError(f"json: unsupported value: {_format_float(f)}")
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        s = _format_float(f, "e")
        if len(s) >= 4 and s[-4] == "e" and s[-3] == "-" and s[-2] == "0":
            s = s[:-2] + s[-1]
        return s
    return _format_float(f, "f")


_QUOTE_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def _go_quote(s: str, *, ascii_only: bool = False) -> str:
    """strconv.Quote (or QuoteToASCII)."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return '"' + s + '"'
    out = ['"']
    for ch in s:
        esc = _QUOTE_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
            continue
        o = ord(ch)
        if ch.isprintable() and not (ascii_only and o >= 0x80):
            out.append(ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def _quote_rune(r: int, *, ascii_only: bool = False) -> str:
    if r < 0 or r > 0x10FFFF or 0xD800 <= r <= 0xDFFF:
        r = 0xFFFD
    ch = chr(r)
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + _go_quote(ch, ascii_only=ascii_only)[1:-1] + "'"


@dataclass(slots=True)
class _Spec:
    verb: str = "v"
    minus: bool = False
    plus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    width: int = -1
    prec: int = -1
    plus_v: bool = False  # %+v: field names
    sharp_v: bool = False  # %#v: Go syntax


_SPEC_V: Final = _Spec()


def _pad(s: str, sp: _Spec) -> str:
    w = sp.width
    if w < 0 or len(s) >= w:
        return s
    if sp.minus:
        return s + " " * (w - len(s))
    return " " * (w - len(s)) + s


def _pad_number(s: str, sp: _Spec) -> str:
    """Pads a formatted number, zero padding after the sign when the `0` flag asks."""
    w = sp.width
    if w < 0 or len(s) >= w:
        return s
    if sp.zero and not sp.minus:
        sign = s[0] if s[:1] in ("+", "-", " ") else ""
        return sign + "0" * (w - len(s)) + s[len(sign) :]
    return _pad(s, sp)


def _bad_verb(v: Any, sp: _Spec) -> str:
    """Go's `%!d(string=x)`: the value is printed with %v and the verb's flags."""
    if v is None or v is _INVALID:
        return f"%!{sp.verb}(<nil>)"
    return f"%!{sp.verb}({_go_type(v)}={_fmt(v, dataclasses.replace(sp, verb='v'), 0)})"


def _fmt_int(v: int, sp: _Spec) -> str:
    verb = sp.verb
    if verb == "c":
        return _pad(chr(v) if 0 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF else "\ufffd", sp)
    if verb == "q":
        return _pad(_quote_rune(v, ascii_only=sp.plus), sp)
    if verb == "U":
        s = f"U+{v:04X}" if v >= 0 else f"U+-{-v:04X}"
        if sp.sharp and 0 <= v <= 0x10FFFF and chr(v).isprintable():
            s += f" '{chr(v)}'"
        return _pad(s, sp)
    base = {"v": 10, "d": 10, "b": 2, "o": 8, "O": 8, "x": 16, "X": 16}.get(verb)
    if base is None:
        return _bad_verb(v, sp)
    neg = v < 0
    u = -v if neg else v
    if base == 10:
        digits = str(u)
    elif base == 2:
        digits = format(u, "b")
    elif base == 8:
        digits = format(u, "o")
    else:
        digits = format(u, "x" if verb == "x" else "X")
    if sp.prec >= 0:
        if sp.prec == 0 and v == 0:
            digits = ""
        digits = digits.rjust(sp.prec, "0")
    elif sp.zero and not sp.minus and sp.width > 0:
        room = sp.width - (1 if neg or sp.plus or sp.space else 0)
        if sp.sharp and base in (2, 16):
            room -= 2
        digits = digits.rjust(room, "0")
    if sp.sharp:
        if base == 2:
            digits = "0b" + digits
        elif base == 8 and verb == "o" and not digits.startswith("0"):
            digits = "0" + digits
        elif base == 16:
            digits = ("0x" if verb == "x" else "0X") + digits
    if verb == "O":
        digits = "0o" + digits
    sign = "-" if neg else "+" if sp.plus else " " if sp.space else ""
    return _pad(sign + digits, sp)


def _fmt_float(v: float, sp: _Spec) -> str:
    verb = sp.verb
    if verb == "v":
        verb = "g"
    if verb in ("x", "X"):
        return _pad_number(_hex_float(v, sp), sp)
    if verb not in "eEfFgG":
        return _bad_verb(v, sp)
    lower = verb.lower()
    prec = 6 if sp.prec < 0 and lower in ("e", "f") else sp.prec
    if math.isnan(v) or math.isinf(v):
        s = _format_float(v)
        if math.isinf(v) and v > 0 and not sp.plus:
            s = " Inf" if sp.space else "Inf"
        return _pad(s, sp)
    s = f"%#.{prec}{lower}" % v if sp.sharp and prec >= 0 else _format_float(v, lower, prec)
    if verb.isupper():
        s = s.upper()
    if sp.plus and not s.startswith("-"):
        s = "+" + s
    elif sp.space and not s.startswith("-"):
        s = " " + s
    return _pad_number(s, sp)


def _hex_float(v: float, sp: _Spec) -> str:
    """strconv's 'x' format (shortest): -0x1.8p+01."""
    if math.isnan(v) or math.isinf(v):
        s = _format_float(v)
    else:
        h = v.hex()  # like '-0x1.8000000000000p+1'
        neg = h.startswith("-")
        mant, _, exp = h.lstrip("-").partition("p")
        mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
        e = int(exp)
        if v == 0:
            mant, e = "0x0", 0
        s = ("-" if neg else "") + mant + "p" + ("-" if e < 0 else "+") + f"{abs(e):02d}"
    if sp.verb == "X":
        s = s.upper()
    if sp.plus and not s.startswith("-"):
        s = "+" + s
    elif sp.space and not s.startswith("-"):
        s = " " + s
    return s


def _fmt_str(s: str, sp: _Spec) -> str:
    verb = sp.verb
    if verb in ("v", "s"):
        if sp.sharp_v:
            return _pad(_go_quote(s), sp)
        if sp.prec >= 0:
            s = s[: sp.prec]
        return _pad(s, sp)
    if verb == "q":
        if sp.prec >= 0:
            s = s[: sp.prec]
        if sp.sharp and "`" not in s and all(c.isprintable() or c == "\t" for c in s):
            return _pad("`" + s + "`", sp)
        return _pad(_go_quote(s, ascii_only=sp.plus), sp)
    if verb in ("x", "X"):
        data = s.encode("utf-8", "surrogatepass")
        if sp.prec >= 0:
            data = data[: sp.prec]
        return _pad(_hex_bytes(data, sp), sp)
    return _bad_verb(s, sp)


def _hex_bytes(data: bytes, sp: _Spec) -> str:
    if not data:
        return ""
    digits = "0123456789abcdef" if sp.verb == "x" else "0123456789ABCDEF"
    parts = [digits[b >> 4] + digits[b & 15] for b in data]
    prefix = ("0x" if sp.verb == "x" else "0X") if sp.sharp else ""
    if sp.space:
        return " ".join(prefix + p for p in parts)
    return prefix + "".join(parts)


def _sorted_keys(m: Mapping[Any, Any]) -> list[Any]:
    """Keys in Go's `fmtsort` order (numbers numerically, strings bytewise)."""
    keys = list(m.keys())
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=lambda k: (type(k).__name__, str(k)))


def _fmt(v: Any, sp: _Spec, depth: int) -> str:
    """One operand as Go's fmt prints it with the given verb and flags."""
    t = type(v)
    if t is str and sp is _SPEC_V:
        return v  # type: ignore[no-any-return]
    verb = sp.verb
    if verb == "T":
        return _pad(_go_type(v), sp)
    if t is str:
        return _fmt_str(v, sp)
    if verb == "p":
        return _bad_verb(v, sp)
    if v is None:
        # A nil inside a slice or map prints as <nil> whatever the verb.
        return _pad("<nil>", sp) if verb == "v" or depth else _bad_verb(v, sp)
    if v is _INVALID:
        return _pad("<invalid reflect.Value>", sp)
    if t is bool:
        if verb in ("v", "t"):
            return _pad("true" if v else "false", sp)
        return _bad_verb(v, sp)
    if t is int:
        return _fmt_int(v, sp)
    if t is float:
        return _fmt_float(v, sp)
    if verb in ("v", "s", "q", "x", "X") and not sp.sharp_v:
        s = _stringer(v)
        if s is not None:
            return _fmt_str(
                str(s()),
                _Spec(
                    verb if verb != "v" else "s",
                    sp.minus,
                    sp.plus,
                    sp.sharp,
                    sp.space,
                    sp.zero,
                    sp.width,
                    sp.prec,
                ),
            )
    if isinstance(v, bool):
        return _fmt(bool(v), sp, depth)
    if isinstance(v, int):
        return _fmt_int(int(v), sp)
    if isinstance(v, float):
        return _fmt_float(float(v), sp)
    if isinstance(v, str):
        return _fmt_str(str(v), sp)
    if isinstance(v, complex):
        if verb not in "vgGeEfF":
            return _bad_verb(v, sp)
        inner = _Spec(verb, sp.minus, sp.plus, sp.sharp, sp.space, sp.zero, sp.width, sp.prec)
        im = _Spec(verb, sp.minus, True, sp.sharp, sp.space, sp.zero, sp.width, sp.prec)
        return "(" + _fmt_float(v.real, inner) + _fmt_float(v.imag, im) + "i)"
    if isinstance(v, (bytes, bytearray)):
        if verb in ("s", "q"):
            return _fmt_str(bytes(v).decode("utf-8", "replace"), sp)
        if verb in ("x", "X"):
            return _pad(_hex_bytes(bytes(v), sp), sp)
        return "[" + " ".join(_fmt_int(b, sp) for b in v) + "]"
    if isinstance(v, Mapping):
        parts = [f"{_fmt(k, sp, depth + 1)}:{_fmt(v[k], sp, depth + 1)}" for k in _sorted_keys(v)]
        return "map[" + " ".join(parts) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_fmt(e, sp, depth + 1) for e in v) + "]"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        fs = _struct_fields(t)
        if sp.plus_v:
            body = " ".join(f"{f}:{_fmt(getattr(v, f), sp, depth + 1)}" for f in fs)
        else:
            body = " ".join(_fmt(getattr(v, f), sp, depth + 1) for f in fs)
        return "{" + body + "}"
    if _is_func(v):
        return _pad(f"0x{id(v):x}", sp)
    return _pad(str(v), sp)


def _struct_fields(tp: type) -> tuple[str, ...]:
    fs = _STRUCT_FIELDS.get(tp)
    if fs is None:
        fs = _STRUCT_FIELDS[tp] = tuple(f.name for f in dataclasses.fields(tp))
    return fs


_STRUCT_FIELDS: dict[type, tuple[str, ...]] = {}


def format_value(v: Any) -> str:
    """`fmt.Sprint(v)` of one value: Go's `%v`."""
    t = type(v)
    if t is str:
        return v  # type: ignore[no-any-return]
    if t is int:
        return str(v)
    return _fmt(v, _SPEC_V, 0)


def sprint(*args: Any) -> str:
    """`fmt.Sprint`: spaces between operands when neither side is a string."""
    out: list[str] = []
    prev_string = False
    for i, a in enumerate(args):
        is_string = isinstance(a, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(format_value(a))
        prev_string = is_string
    return "".join(out)


def sprintln(*args: Any) -> str:
    """`fmt.Sprintln`: operands separated by spaces, and a newline."""
    return " ".join(format_value(a) for a in args) + "\n"


def sprintf(fmt: str, *args: Any) -> str:
    """`fmt.Sprintf` with Go's verbs, flags, widths, precisions, `[n]` indexes and its error
    notations (`%!d(string=x)`, `%!s(MISSING)`, `%!(EXTRA ...)`)."""
    out: list[str] = []
    n = len(fmt)
    i = 0
    argnum = 0
    reordered = False
    nargs = len(args)

    def arg_number(i: int, argnum: int) -> tuple[int, int, bool, bool]:
        """Parses an optional [n]; returns (argnum, i, after_index, ok)."""
        if i >= n or fmt[i] != "[":
            return argnum, i, False, True
        close = fmt.find("]", i + 1)
        if close < 0:
            return argnum, i + 1, False, False
        digits = fmt[i + 1 : close]
        if not digits.isdigit() or not 1 <= int(digits) <= nargs:
            return argnum, close + 1, True, False
        return int(digits) - 1, close + 1, True, True

    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        i = j + 1
        sp = _Spec()
        while i < n:
            c = fmt[i]
            if c == "#":
                sp.sharp = True
            elif c == "0":
                sp.zero = not sp.minus
            elif c == "+":
                sp.plus = True
            elif c == "-":
                sp.minus = True
                sp.zero = False
            elif c == " ":
                sp.space = True
            else:
                break
            i += 1
        argnum, i, after_index, good = arg_number(i, argnum)
        reordered = reordered or after_index
        if i < n and fmt[i] == "*":
            i += 1
            if argnum < nargs and type(args[argnum]) is int:
                sp.width = args[argnum]
                if sp.width < 0:
                    sp.minus, sp.zero, sp.width = True, False, -sp.width
            else:
                out.append("%!(BADWIDTH)")
            argnum += 1
            after_index = False
        else:
            start = i
            while i < n and fmt[i].isdigit():
                i += 1
            if i > start:
                sp.width = int(fmt[start:i])
                if after_index:
                    good = False
        if i < n and fmt[i] == ".":
            i += 1
            if after_index:
                good = False
            argnum, i, after_index, ok = arg_number(i, argnum)
            good = good and ok
            reordered = reordered or after_index
            if i < n and fmt[i] == "*":
                i += 1
                if argnum < nargs and type(args[argnum]) is int and args[argnum] >= 0:
                    sp.prec = args[argnum]
                else:
                    out.append("%!(BADPREC)")
                argnum += 1
                after_index = False
            else:
                start = i
                while i < n and fmt[i].isdigit():
                    i += 1
                sp.prec = int(fmt[start:i]) if i > start else 0
        if not after_index:
            argnum, i, after_index, ok = arg_number(i, argnum)
            good = good and ok
            reordered = reordered or after_index
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        sp.verb = verb
        if verb == "%":
            out.append("%")
            continue
        if verb == "v":  # for %v, '+' and '#' mean field names and Go syntax, not flags
            sp.plus_v, sp.plus = sp.plus, False
            sp.sharp_v, sp.sharp = sp.sharp, False
        if not good:
            out.append(f"%!{verb}(BADINDEX)")
            continue
        if argnum >= nargs:
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_fmt(args[argnum], sp, 0))
        argnum += 1
    if not reordered and argnum < nargs:
        extra = [
            "<nil>" if a is None else f"{_go_type(a)}={format_value(a)}" for a in args[argnum:]
        ]
        out.append("%!(EXTRA " + ", ".join(extra) + ")")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# encoding/json
# ---------------------------------------------------------------------------------------------

_HTML_UNSAFE: Final = re.compile("[<>&\u2028\u2029\ud800-\udfff]")
_HTML_ESCAPES: Final = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _json_str(s: str) -> str:
    r: str = encode_basestring(s)
    if s.isascii() and not ("<" in s or ">" in s or "&" in s):
        return r
    return _HTML_UNSAFE.sub(lambda m: _HTML_ESCAPES.get(m.group(), "\\ufffd"), r)


def _json_empty(v: Any) -> bool:
    if v is None or v is False or v is _INVALID:
        return True
    if type(v) in (int, float):
        return bool(v == 0)
    if isinstance(v, (str, bytes, list, tuple, Mapping)):
        return len(v) == 0
    return False


def _json_fields(tp: type) -> tuple[tuple[str, str, bool], ...]:
    """(attribute, JSON key, omitempty) per field, from the fields' `json` metadata tags."""
    cached = _JSON_FIELDS.get(tp)
    if cached is None:
        out = []
        for f in dataclasses.fields(tp):
            tag = str(f.metadata.get("json", ""))
            if tag == "-":
                continue
            name, _, opts = tag.partition(",")
            out.append((f.name, name or f.name, "omitempty" in opts.split(",")))
        cached = _JSON_FIELDS[tp] = tuple(out)
    return cached


_JSON_FIELDS: dict[type, tuple[tuple[str, str, bool], ...]] = {}


def _json_enc(v: Any, out: list[str], depth: int) -> None:
    if depth > 500:
        raise JSONMarshalError("json: unsupported value: encountered a cycle")
    t = type(v)
    if t is str:
        out.append(_json_str(v))
    elif v is None or v is _INVALID:
        out.append("null")
    elif t is bool:
        out.append("true" if v else "false")
    elif t is int:
        out.append(str(v))
    elif t is float:
        out.append(_json_float(v))
    else:
        hook = getattr(t, "__go_json__", None)
        if hook is not None:
            out.append(str(hook(v)))
        elif isinstance(v, bool):
            out.append("true" if v else "false")
        elif isinstance(v, int):
            out.append(str(int(v)))
        elif isinstance(v, float):
            out.append(_json_float(float(v)))
        elif isinstance(v, str):
            out.append(_json_str(str(v)))
        elif isinstance(v, (bytes, bytearray)):
            out.append('"' + base64.b64encode(bytes(v)).decode("ascii") + '"')
        elif isinstance(v, Mapping):
            items = []
            for k in v:
                if isinstance(k, str):
                    ks = k
                elif isinstance(k, int) and not isinstance(k, bool):
                    ks = str(k)
                else:
                    raise JSONMarshalError(f"json: unsupported type: {_go_type(v)}")
                items.append((ks, k))
            items.sort(key=lambda p: p[0])
            out.append("{")
            for n, (ks, k) in enumerate(items):
                if n:
                    out.append(",")
                out.append(_json_str(ks))
                out.append(":")
                _json_enc(v[k], out, depth + 1)
            out.append("}")
        elif isinstance(v, (list, tuple)):
            out.append("[")
            for n, e in enumerate(v):
                if n:
                    out.append(",")
                _json_enc(e, out, depth + 1)
            out.append("]")
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.append("{")
            first = True
            for attr, key, omitempty in _json_fields(t):
                fv = getattr(v, attr)
                if omitempty and _json_empty(fv):
                    continue
                if not first:
                    out.append(",")
                first = False
                out.append(_json_str(key))
                out.append(":")
                _json_enc(fv, out, depth + 1)
            out.append("}")
        else:
            raise JSONMarshalError(f"json: unsupported type: {_go_type(v)}")


def marshal_json(v: Any) -> str:
    """`json.Marshal(v)` as Go writes it: compact, map keys sorted, `<>&` escaped, Go floats.

    Raises `JSONMarshalError` (a ValueError) where Go's encoder returns an error."""
    out: list[str] = []
    try:
        _json_enc(v, out, 0)
    except RecursionError:
        raise JSONMarshalError("json: unsupported value: encountered a cycle") from None
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Built-in functions
# ---------------------------------------------------------------------------------------------


class _FuncError(Exception):
    """A built-in's error; reported as `error calling NAME: ...`."""


def _indirect(v: Any) -> Any:
    return _INVALID if v is None else v


def _basic_kind(v: Any) -> str:
    t = type(v)
    if t is bool:
        return "bool"
    if t is int:
        return "int"
    if t is float:
        return "float"
    if t is str:
        return "string"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, complex):
        return "complex"
    if isinstance(v, str):
        return "string"
    return "invalid"


def _reflect_kind(v: Any) -> str:
    if v is _INVALID:
        return "invalid"
    if isinstance(v, (list, tuple, bytes, bytearray)):
        return "slice"
    if isinstance(v, Mapping):
        return "map"
    if _is_func(v):
        return "func"
    return "struct"


def _eq(a: Any, *rest: Any) -> bool:
    if len(rest) == 1:  # the common case: two values of one basic type
        ta = type(a)
        if ta is type(rest[0]) and (ta is str or ta is int or ta is float or ta is bool):
            return bool(a == rest[0])
    a = _indirect(a)
    if not rest:
        raise _FuncError("missing argument for comparison")
    k1 = _basic_kind(a)
    for b in rest:
        b = _indirect(b)
        k2 = _basic_kind(b)
        if k1 != k2:
            if a is not _INVALID and b is not _INVALID:
                raise _FuncError(
                    f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}"
                )
            continue
        if k1 != "invalid":
            if a == b:
                return True
            continue
        ka, kb = _reflect_kind(a), _reflect_kind(b)
        if ka != kb and "invalid" not in (ka, kb):
            raise _FuncError(
                f"non-comparable types {sprintf('%s', a)}: {_go_type(a)}, "
                f"{_go_type(b)}: {format_value(b)}"
            )
        if a is _INVALID or b is _INVALID:
            if a is b:
                return True
            continue
        if kb in ("slice", "map", "func"):
            raise _FuncError(f"non-comparable type {sprintf('%s', b)}: {_go_type(b)}")
        try:
            if a == b:
                return True
        except Exception as exc:  # a foreign __eq__ is foreign code
            raise _FuncError(str(exc)) from exc
    return False


def _lt(a: Any, b: Any) -> bool:
    a, b = _indirect(a), _indirect(b)
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if k1 == "invalid" or k2 == "invalid":
        raise _FuncError("invalid type for comparison")
    if k1 != k2:
        raise _FuncError(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}")
    if k1 in ("bool", "complex"):
        raise _FuncError("invalid type for comparison")
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _gt(a: Any, b: Any) -> bool:
    return not _le(a, b)


def _ge(a: Any, b: Any) -> bool:
    return not _lt(a, b)


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _not(a: Any) -> bool:
    return not _truth(a)


def _byte_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _len(v: Any) -> int:
    if v is None:
        raise _FuncError("len of nil pointer")
    if v is _INVALID:
        raise _FuncError("reflect: call of reflect.Value.Type on zero Value")
    if isinstance(v, str):
        return _byte_len(v)
    if isinstance(v, (list, tuple, Mapping, bytes, bytearray)):
        return len(v)
    raise _FuncError(f"len of type {_go_type(v)}")


def _index_arg(i: Any, cap: int) -> int:
    if i is _INVALID or i is None:
        raise _FuncError("cannot index slice/array with nil")
    if type(i) is bool or not isinstance(i, int):
        raise _FuncError(f"cannot index slice/array with type {_go_type(i)}")
    if i < 0 or i > cap:
        raise _FuncError(f"index out of range: {i}")
    return int(i)


def _index(item: Any, *indexes: Any) -> Any:
    item = _indirect(item)
    if item is _INVALID:
        raise _FuncError("index of untyped nil")
    for idx in indexes:
        idx = _indirect(idx)
        if item is None or item is _INVALID:
            raise _FuncError("index of nil pointer")
        if isinstance(item, str):
            data = item.encode("utf-8", "surrogatepass")
            x = _index_arg(idx, len(data))
            if x == len(data):
                raise _FuncError("reflect: string index out of range")
            item = data[x]
        elif isinstance(item, (list, tuple, bytes, bytearray)):
            x = _index_arg(idx, len(item))
            if x == len(item):
                raise _FuncError("reflect: slice index out of range")
            item = item[x]
        elif isinstance(item, Mapping):
            if idx is _INVALID:
                raise _FuncError("value is nil; should be of type string")
            if not isinstance(idx, str) and not any(type(k) is type(idx) for k in item):
                raise _FuncError(f"value has type {_go_type(idx)}; should be string")
            try:
                item = item[idx]
            except (KeyError, TypeError):
                zero = getattr(type(item), "__go_zero__", None)
                item = zero(item) if zero is not None else None
        else:
            raise _FuncError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    item = _indirect(item)
    if item is _INVALID:
        raise _FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise _FuncError(f"too many slice indexes: {len(indexes)}")
    is_str = isinstance(item, str)
    if is_str:
        if len(indexes) == 3:
            raise _FuncError("cannot 3-index slice a string")
        data: Any = item if item.isascii() else item.encode("utf-8", "surrogatepass")
    elif isinstance(item, (list, tuple, bytes, bytearray)):
        data = item
    else:
        raise _FuncError(f"can't slice item of type {_go_type(item)}")
    cap = len(data)
    idx = [0, len(data), cap]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(_indirect(index), cap)
    if idx[0] > idx[1]:
        raise _FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise _FuncError(f"invalid slice index: {idx[1]} > {idx[2]}")
    out = data[idx[0] : idx[1]]
    if is_str and isinstance(out, bytes):
        return out.decode("utf-8", "replace")
    return out


def _eval_args(args: Sequence[Any]) -> str:
    """text/template's evalArgs: Sprint, but nil becomes "<no value>"."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(*("<no value>" if a is None or a is _INVALID else a for a in args))


_HTML_TABLE: Final = str.maketrans(
    {"\0": "\ufffd", '"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;"}
)


def _html(*args: Any) -> str:
    return _eval_args(args).translate(_HTML_TABLE)


def _js(*args: Any) -> str:
    s = _eval_args(args)
    out: list[str] = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == '"':
            out.append('\\"')
        elif ch == "<":
            out.append("\\u003C")
        elif ch == ">":
            out.append("\\u003E")
        elif ch == "&":
            out.append("\\u0026")
        elif ch == "=":
            out.append("\\u003D")
        elif o < 0x20:
            out.append(f"\\u00{o:02X}")
        elif o < 0x80 or ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{o:04X}")
    return "".join(out)


def _urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_eval_args(args), safe="-_.~")


def _print(*args: Any) -> str:
    return sprint(*(None if a is _INVALID else a for a in args))


def _println(*args: Any) -> str:
    return sprintln(*(None if a is _INVALID else a for a in args))


def _printf(fmt: Any, *args: Any) -> str:
    return sprintf(fmt, *(None if a is _INVALID else a for a in args))


# name -> (implementation, fixed arguments, variadic); and/or/call are special in the executor.
_BUILTINS: Final[dict[str, tuple[Callable[..., Any] | None, int, bool]]] = {
    "and": (None, 1, True),
    "or": (None, 1, True),
    "call": (None, 1, True),
    "not": (_not, 1, False),
    "len": (_len, 1, False),
    "index": (_index, 1, True),
    "slice": (_slice, 1, True),
    "print": (_print, 0, True),
    "printf": (_printf, 1, True),
    "println": (_println, 0, True),
    "html": (_html, 0, True),
    "js": (_js, 0, True),
    "urlquery": (_urlquery, 0, True),
    "eq": (_eq, 1, True),
    "ne": (_ne, 2, False),
    "lt": (_lt, 2, False),
    "le": (_le, 2, False),
    "gt": (_gt, 2, False),
    "ge": (_ge, 2, False),
}


_BUILTIN_NAMES: Final = frozenset(_BUILTINS)


@functools.lru_cache(maxsize=1024)
def _arity(fn: Callable[..., Any]) -> tuple[int, int | None] | None:
    """(required, maximum or None for variadic) positional parameters of a Python callable."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    lo, hi = 0, 0
    variadic = False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            hi += 1
            if p.default is p.empty:
                lo += 1
        elif p.kind == p.VAR_POSITIONAL:
            variadic = True
    return lo, None if variadic else hi


# ---------------------------------------------------------------------------------------------
# Executor
# ---------------------------------------------------------------------------------------------

_MAX_EXEC_DEPTH: Final = 100
_MISSINGKEY: Final = {"default": "invalid", "invalid": "invalid", "zero": "zero", "error": "error"}
_PRIMITIVES: Final = (str, bytes, bytearray, int, float, complex, list, tuple)


def _field_kind(tp: type, name: str) -> str:
    kind = _FIELD_KINDS.get((tp, name))
    if kind is None:
        if name in _methods(tp):
            kind = "method"
        elif issubclass(tp, Mapping):
            kind = "map"
        elif issubclass(tp, _PRIMITIVES) or tp is bool:
            kind = "none"
        else:
            kind = "attr"
        _FIELD_KINDS[(tp, name)] = kind
    return kind


_FIELD_KINDS: dict[tuple[type, str], str] = {}


def _last_node(n: Node) -> Node:
    """The node Go's executor last visited evaluating `n`: where it reports a later error."""
    while isinstance(n, PipeNode) and n.cmds:
        cmd = n.cmds[-1]
        n = cmd.args[-1] if isinstance(cmd.args[0], IdentifierNode) else cmd.args[0]
    return n


class _State:
    """One execution: the output, the variable stack, and the template being run."""

    __slots__ = ("depth", "funcs", "missingkey", "name", "out", "source", "trees", "vals", "vnames")

    def __init__(self, tmpl: Template, data: Any) -> None:
        self.source = tmpl.source
        self.trees = tmpl.templates
        self.funcs = tmpl.funcs
        self.missingkey = tmpl.missingkey
        self.name = tmpl.name
        self.out: list[str] = []
        self.vnames = ["$"]
        self.vals = [data]
        self.depth = 0

    # -- errors
    def error(self, node: Node | None, msg: str) -> TemplateExecError:
        if node is None:
            return TemplateExecError(f"template: {self.name}: {msg}")
        text = self.source[: node.pos]
        nl = text.rfind("\n")
        line = text.count("\n") + 1
        col = len(text[nl + 1 :].encode("utf-8", "surrogatepass"))
        ctx = str(node)
        return TemplateExecError(
            f"template: {self.name}:{line}:{col}: executing {_go_quote(self.name)} at <{ctx}>: {msg}"
        )

    # -- walking
    def walk(self, dot: Any, node: Node) -> None:
        if isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, ActionNode):
            pipe = node.pipe
            val = self.eval_pipeline(dot, pipe)
            if not pipe.decl:
                self.print_value(node, val)
        elif isinstance(node, ListNode):
            walk = self.walk
            for n in node.nodes:
                walk(dot, n)
        elif isinstance(node, IfNode):
            self.walk_if_with(dot, node, False)
        elif isinstance(node, RangeNode):
            self.walk_range(dot, node)
        elif isinstance(node, WithNode):
            self.walk_if_with(dot, node, True)
        elif isinstance(node, TemplateNode):
            self.walk_template(dot, node)
        elif isinstance(node, BreakNode):
            raise _Break  # a fresh one each time: a shared instance would grow its traceback
        elif isinstance(node, ContinueNode):
            raise _Continue
        else:
            raise self.error(node, f"unknown node: {node}")

    def walk_if_with(self, dot: Any, node: BranchNode, is_with: bool) -> None:
        mark = len(self.vnames)
        val = self.eval_pipeline(dot, node.pipe)
        if _truth(val):
            self.walk(val if is_with else dot, node.list)
        elif node.else_list is not None:
            self.walk(dot, node.else_list)
        del self.vnames[mark:], self.vals[mark:]

    def walk_range(self, dot: Any, node: RangeNode) -> None:
        vnames, vals = self.vnames, self.vals
        mark0 = len(vnames)
        val = self.eval_pipeline(dot, node.pipe)
        mark = len(vnames)
        pipe = node.pipe
        ndecl = len(pipe.decl)
        body = node.list
        items: Iterable[tuple[Any, Any]]
        if isinstance(val, (list, tuple, bytes, bytearray)):
            items = enumerate(val)
        elif isinstance(val, Mapping):
            items = ((k, val[k]) for k in _sorted_keys(val))
        elif isinstance(val, int) and not isinstance(val, bool):
            if ndecl > 1:
                raise self.error(node, f"can't use {val} to iterate over more than one variable")
            items = ((_INVALID, i) for i in range(val))
        elif val is _INVALID or val is None:
            items = ()
        else:
            raise self.error(_last_node(node.pipe), f"range can't iterate over {format_value(val)}")
        ran = False
        try:
            for index, elem in items:
                ran = True
                if ndecl:
                    if pipe.is_assign:
                        if ndecl > 1:
                            self.set_var(node, pipe.decl[0].ident[0], index)
                            self.set_var(node, pipe.decl[1].ident[0], elem)
                        else:
                            self.set_var(node, pipe.decl[0].ident[0], elem)
                    else:
                        vals[-1] = elem
                        if ndecl > 1:
                            vals[-2] = index
                try:
                    self.walk(elem, body)
                except _Continue:
                    del vnames[mark:], vals[mark:]
                    continue
                del vnames[mark:], vals[mark:]
            if not ran and node.else_list is not None:
                # The range's own variables are still in scope, and a {{break}} in this branch
                # only ends this range (Go recovers it for the whole walkRange).
                self.walk(dot, node.else_list)
        except _Break:
            pass
        del vnames[mark0:], vals[mark0:]

    def walk_template(self, dot: Any, node: TemplateNode) -> None:
        tree = self.trees.get(node.name)
        if tree is None:
            raise self.error(node, f"template {_go_quote(node.name)} not defined")
        if self.depth >= _MAX_EXEC_DEPTH:
            raise self.error(node, f"exceeded maximum template depth ({_MAX_EXEC_DEPTH})")
        newdot = _INVALID if node.pipe is None else self.eval_pipeline(dot, node.pipe)
        saved = (self.vnames, self.vals, self.name)
        self.vnames, self.vals, self.name = ["$"], [newdot], node.name
        self.depth += 1
        self.walk(newdot, tree)
        self.depth -= 1
        self.vnames, self.vals, self.name = saved

    def print_value(self, node: Node, v: Any) -> None:
        if type(v) is str:
            self.out.append(v)
        elif v is _INVALID:
            self.out.append("<no value>")
        else:
            if _is_func(v):
                raise self.error(node, f"can't print {node} of type {_go_type(v)}")
            try:
                self.out.append(format_value(v))
            except TemplateError:
                raise
            except Exception as exc:  # a Stringer is foreign code
                raise self.error(node, f"error printing value: {exc}") from exc

    # -- evaluation
    def eval_pipeline(self, dot: Any, pipe: PipeNode) -> Any:
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
            if value is None:
                value = _INVALID
        if pipe.decl:
            for v in pipe.decl:
                if pipe.is_assign:
                    self.set_var(_last_node(pipe), v.ident[0], value)
                else:
                    self.vnames.append(v.ident[0])
                    self.vals.append(value)
        return value

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        args = cmd.args
        first = args[0]
        if isinstance(first, FieldNode):
            return self.eval_field_chain(dot, dot, first, first.ident, args, final)
        if isinstance(first, VariableNode):
            return self.eval_variable(dot, first, args, final)
        if isinstance(first, IdentifierNode):
            return self.eval_function(dot, first, cmd, args, final)
        if isinstance(first, ChainNode):
            return self.eval_chain(dot, first, args, final)
        self.not_a_function(args, final)
        if isinstance(first, PipeNode):
            return self.eval_pipeline(dot, first)
        if isinstance(first, StringNode):
            return first.text
        if isinstance(first, DotNode):
            return dot
        if isinstance(first, BoolNode):
            return first.value
        if isinstance(first, NumberNode):
            return self.ideal_constant(first)
        if isinstance(first, NilNode):
            raise self.error(first, "nil is not a command")
        raise self.error(first, f"can't evaluate command {_go_quote(str(first))}")

    def not_a_function(self, args: Sequence[Node] | None, final: Any) -> None:
        if args is not None and (len(args) > 1 or final is not _MISSING):
            raise self.error(args[0], f"can't give argument to non-function {args[0]}")

    def ideal_constant(self, node: NumberNode) -> Any:
        if node.overflow:
            raise self.error(node, f"{node.text} overflows int")
        return node.value

    def var_value(self, node: Node, name: str) -> Any:
        names = self.vnames
        for i in range(len(names) - 1, -1, -1):
            if names[i] == name:
                return self.vals[i]
        raise self.error(node, f"undefined variable: {name}")

    def set_var(self, node: Node, name: str, value: Any) -> None:
        names = self.vnames
        for i in range(len(names) - 1, -1, -1):
            if names[i] == name:
                self.vals[i] = value
                return
        raise self.error(node, f"undefined variable: {name}")

    def eval_variable(
        self, dot: Any, node: VariableNode, args: Sequence[Node] | None, final: Any
    ) -> Any:
        value = self.var_value(node, node.ident[0])
        if len(node.ident) == 1:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(dot, value, node, node.ident[1:], args, final)

    def eval_chain(self, dot: Any, node: ChainNode, args: Sequence[Node] | None, final: Any) -> Any:
        if type(node.node) is NilNode:
            raise self.error(node, f"indirection through explicit nil in {node}")
        receiver = self.eval_arg(dot, node.node)
        return self.eval_field_chain(dot, receiver, _last_node(node.node), node.field, args, final)

    def eval_field_chain(
        self,
        dot: Any,
        receiver: Any,
        node: Node,
        ident: Sequence[str],
        args: Sequence[Node] | None,
        final: Any,
    ) -> Any:
        last = len(ident) - 1
        typed = True  # false for a value out of a map (Go sees an interface there)
        for i in range(last):
            prev = receiver
            receiver = self.eval_field(dot, ident[i], node, None, _MISSING, receiver, typed)
            typed = not isinstance(prev, Mapping)
        return self.eval_field(dot, ident[last], node, args, final, receiver, typed)

    def eval_field(
        self,
        dot: Any,
        name: str,
        node: Node,
        args: Sequence[Node] | None,
        final: Any,
        receiver: Any,
        typed: bool = True,
    ) -> Any:
        tp = type(receiver)
        if tp is dict:
            if (args is not None and len(args) > 1) or final is not _MISSING:
                raise self.error(node, f"{name} is not a method but has arguments")
            try:
                return receiver[name]
            except KeyError:
                return self.missing_key(node, receiver, name)
        if receiver is _INVALID:
            if self.missingkey == "error":
                raise self.error(node, f"nil data; no entry for key {_go_quote(name)}")
            return _INVALID
        if receiver is None:
            raise self.error(node, f"nil pointer evaluating interface {{}}.{name}")
        kind = _field_kind(tp, name)
        has_args = (args is not None and len(args) > 1) or final is not _MISSING
        if kind == "attr":
            if not name[:1].isupper():
                if hasattr(receiver, name):
                    raise self.error(
                        node, f"{name} is an unexported field of struct type {_go_type(receiver)}"
                    )
            else:
                try:
                    value = getattr(receiver, name)
                except AttributeError:
                    pass
                except Exception as exc:  # a property is foreign code
                    raise self.error(node, f"error reading {name}: {exc}") from exc
                else:
                    if has_args:
                        raise self.error(
                            node, f"{name} has arguments but cannot be invoked as function"
                        )
                    return value
        elif kind == "map":
            if has_args:
                raise self.error(node, f"{name} is not a method but has arguments")
            try:
                return receiver[name]
            except KeyError:
                return self.missing_key(node, receiver, name)
            except Exception as exc:
                raise self.error(node, f"error reading {name}: {exc}") from exc
        elif kind == "method":
            method = functools.partial(_methods(tp)[name], receiver)
            return self.call(dot, method, node, name, args, final)
        # Values out of maps and slices are interface-typed in Go: it names that type.
        typ = _go_type(receiver) if typed or kind == "attr" else "interface {}"
        raise self.error(node, f"can't evaluate field {name} in type {typ}")

    def missing_key(self, node: Node, receiver: Any, name: str) -> Any:
        mode = self.missingkey
        if mode == "invalid":
            return _INVALID
        if mode == "zero":
            zero = getattr(type(receiver), "__go_zero__", None)
            return zero(receiver) if zero is not None else None
        raise self.error(node, f"map has no entry for key {_go_quote(name)}")

    def eval_arg(self, dot: Any, n: Node) -> Any:
        if isinstance(n, FieldNode):
            if len(n.ident) == 1:
                return self.eval_field(dot, n.ident[0], n, None, _MISSING, dot)
            return self.eval_field_chain(dot, dot, n, n.ident, None, _MISSING)
        if isinstance(n, StringNode):
            return n.text
        if isinstance(n, VariableNode):
            return self.eval_variable(dot, n, None, _MISSING)
        if isinstance(n, DotNode):
            return dot
        if isinstance(n, PipeNode):
            return self.eval_pipeline(dot, n)
        if isinstance(n, IdentifierNode):
            return self.eval_function(dot, n, n, None, _MISSING)
        if isinstance(n, ChainNode):
            return self.eval_chain(dot, n, None, _MISSING)
        if isinstance(n, NumberNode):
            return self.ideal_constant(n)
        if isinstance(n, BoolNode):
            return n.value
        if isinstance(n, NilNode):
            return _INVALID  # Go's zero reflect.Value; a function parameter gets None
        raise self.error(n, f"can't handle {n} for arg")

    def eval_function(
        self,
        dot: Any,
        node: IdentifierNode,
        cmd: Node,
        args: Sequence[Node] | None,
        final: Any,
    ) -> Any:
        name = node.ident
        fn = self.funcs.get(name)
        if fn is not None:
            return self.call(dot, fn, cmd, name, args, final, node)
        spec = _BUILTINS.get(name)
        if spec is None:
            raise self.error(node, f"{_go_quote(name)} is not a defined function")
        return self.call_builtin(dot, name, spec, node, cmd, args, final)

    def call(
        self,
        dot: Any,
        fn: Callable[..., Any],
        node: Node,
        name: str,
        args: Sequence[Node] | None,
        final: Any,
        ident: Node | None = None,
    ) -> Any:
        """Calls a custom function or a method with its evaluated arguments."""
        argn = list(args[1:]) if args is not None else []
        nin = len(argn) + (final is not _MISSING)
        arity = _arity(fn.func if isinstance(fn, functools.partial) else fn)
        if arity is not None:
            lo, hi = arity
            if isinstance(fn, functools.partial):
                lo, hi = max(lo - len(fn.args), 0), None if hi is None else hi - len(fn.args)
            if hi is None and nin < lo:
                raise self.error(
                    ident or node,
                    f"wrong number of args for {name}: want at least {lo} got {len(argn)}",
                )
            if hi is not None and not lo <= nin <= hi:
                raise self.error(
                    ident or node,
                    f"wrong number of args for {name}: want {hi if nin > hi else lo} got {nin}",
                )
        vals = [self.eval_arg(dot, a) for a in argn]
        if final is not _MISSING:
            vals.append(final)
        vals = [None if v is _INVALID else v for v in vals]
        try:
            return fn(*vals)
        except (_Break, _Continue):
            raise
        except Exception as exc:
            raise self.error(node, f"error calling {name}: {exc}") from exc

    def call_builtin(
        self,
        dot: Any,
        name: str,
        spec: tuple[Callable[..., Any] | None, int, bool],
        ident: Node,
        node: Node,
        args: Sequence[Node] | None,
        final: Any,
    ) -> Any:
        impl, nfixed, variadic = spec
        argn = args[1:] if args is not None else ()
        nin = len(argn) + (final is not _MISSING)
        if variadic:
            if nin < nfixed:
                raise self.error(
                    ident,
                    f"wrong number of args for {name}: want at least {nfixed} got {len(argn)}",
                )
        elif nin != nfixed:
            raise self.error(ident, f"wrong number of args for {name}: want {nfixed} got {nin}")
        if impl is not None and name != "printf":
            ea = self.eval_arg
            vals = [ea(dot, a) for a in argn]
            if final is not _MISSING:
                vals.append(final)
            try:
                return impl(*vals)
            except _FuncError as exc:
                raise self.error(node, f"error calling {name}: {exc}") from None
            except TemplateError:
                raise
            except Exception as exc:  # a Stringer or __eq__ in the data is foreign code
                raise self.error(node, f"error calling {name}: {exc}") from exc
        if name == "and" or name == "or":
            want = name == "or"
            v: Any = _INVALID
            for a in argn:
                v = self.eval_arg(dot, a)
                if _truth(v) == want:
                    return v
            if final is not _MISSING:
                v = final
            return v
        vals = [self.eval_arg(dot, a) for a in argn]
        if final is not _MISSING:
            vals.append(final)
        if name == "call":
            return self.builtin_call(node, argn[0] if argn else node, vals)
        if name == "printf":
            fmt = vals[0]
            if not isinstance(fmt, str):
                first = argn[0] if argn else node
                if fmt is _INVALID:
                    raise self.error(first, "invalid value; expected string")
                if isinstance(first, (NumberNode, BoolNode)):
                    raise self.error(first, f"expected string; found {first}")
                if isinstance(first, NilNode):
                    raise self.error(first, "cannot assign nil to string")
                got = "interface {}" if fmt is None else _go_type(fmt)
                raise self.error(first, f"wrong type for value; expected string; got {got}")
        assert impl is not None
        try:
            return impl(*vals)
        except _FuncError as exc:
            raise self.error(node, f"error calling {name}: {exc}") from None
        except TemplateError:
            raise
        except Exception as exc:  # a Stringer or __eq__ in the data is foreign code
            raise self.error(node, f"error calling {name}: {exc}") from exc

    def builtin_call(self, node: Node, callee: Node, vals: list[Any]) -> Any:
        fn = _indirect(vals[0])
        if fn is _INVALID:
            raise self.error(node, "error calling call: call of nil")
        if not callable(fn):
            raise self.error(
                node, f"error calling call: non-function {callee} of type {_go_type(fn)}"
            )
        args = [None if v is _INVALID else v for v in vals[1:]]
        arity = _arity(fn)
        if arity is not None:
            lo, hi = arity
            if hi is None and len(args) < lo:
                raise self.error(
                    node,
                    f"error calling call: wrong number of args for {callee}: "
                    f"got {len(args)} want at least {lo}",
                )
            if hi is not None and not lo <= len(args) <= hi:
                raise self.error(
                    node,
                    f"error calling call: wrong number of args for {callee}: "
                    f"got {len(args)} want {hi if len(args) > hi else lo}",
                )
        try:
            return fn(*args)
        except Exception as exc:
            raise self.error(node, f"error calling call: {exc}") from exc


class Template:
    """A parsed Go template, ready to execute against Python data.

    `funcs` adds functions (Go's `Funcs`); `missingkey` is Go's option: "default"/"invalid"
    (a missing map key prints `<no value>`), "zero" or "error". Parsing is cached by source.
    """

    __slots__ = ("funcs", "missingkey", "name", "root", "source", "templates")

    def __init__(
        self,
        source: str,
        *,
        funcs: Mapping[str, Callable[..., Any]] | None = None,
        name: str = "",
        missingkey: str = "default",
    ) -> None:
        funcs = dict(funcs or {})
        for fname in funcs:
            if not fname or not all(_is_alnum(c) for c in fname) or fname[0].isdecimal():
                raise ValueError(f"function name {fname!r} is not a valid identifier")
        trees = _parse_cached(source, name, frozenset(funcs))
        self._init(source, dict(trees), trees[name], funcs, name, missingkey)

    def _init(
        self,
        source: str,
        templates: dict[str, ListNode],
        root: ListNode,
        funcs: dict[str, Callable[..., Any]],
        name: str,
        missingkey: str,
    ) -> None:
        if missingkey not in _MISSINGKEY:
            raise ValueError(f"unrecognized missingkey option {missingkey!r}")
        templates[name] = root
        self.source = source
        self.templates: Mapping[str, ListNode] = types.MappingProxyType(templates)
        self.root = root
        self.funcs: Mapping[str, Callable[..., Any]] = types.MappingProxyType(funcs)
        self.name = name
        self.missingkey = _MISSINGKEY[missingkey]

    @classmethod
    def from_tree(
        cls,
        source: str,
        root: ListNode,
        *,
        templates: Mapping[str, ListNode] | None = None,
        funcs: Mapping[str, Callable[..., Any]] | None = None,
        name: str = "",
        missingkey: str = "default",
    ) -> Template:
        """A template from an (edited) parse tree; `source` is the text positions refer to."""
        self = cls.__new__(cls)
        self._init(source, dict(templates or {}), root, dict(funcs or {}), name, missingkey)
        return self

    def execute(self, data: Any = None) -> str:
        """The output of running the template with `data` as dot (and `$`)."""
        st = _State(self, _INVALID if data is None else data)
        try:
            st.walk(st.vals[0], self.root)
        except TemplateExecError:
            raise
        except RecursionError:
            raise TemplateExecError(f"template: {self.name}: nested too deeply") from None
        except Exception as exc:  # a last net: nothing but TemplateExecError leaves execute
            raise TemplateExecError(f"template: {self.name}: {type(exc).__name__}: {exc}") from exc
        return "".join(st.out)

    def __repr__(self) -> str:
        return f"Template({self.source[:40]!r}...)"
