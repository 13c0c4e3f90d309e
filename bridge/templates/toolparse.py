"""Turning a model's generated text into tool calls, as Ollama does on its Go-template path.

Three pieces:

- `tool_tag(template_src)`: the tool-call tag, read from the template source the way Ollama's
  `tools.parseTag` reads the parsed template: the first non-blank text inside the first
  `{{ if ... .ToolCalls ... }}` block (searching into nested `if`/`range`/`with` bodies but
  stopping at any other action), cut at the first `{`, trimmed; `{` when there is none.
- `ToolParser`: an incremental parser. `feed()` returns the content that is safe to show now and
  the calls completed so far; `finish()` flushes what was held back.
- `parse_all()`: the same in one go (`feed` + `finish`), so streaming and one-shot agree.

How a reply is read (`T` is the tag):

- When `T` is `{` or `[`, the reply must start (after whitespace) with a JSON object or array;
  any other content first switches tool parsing off for the whole reply. Either bracket opens a
  call with either tag.
- Otherwise `T` is looked for with each whitespace run in it matching any run of whitespace,
  so `[TOOL_CALLS] [` also matches `[TOOL_CALLS]  [` and `[TOOL_CALLS][`. A `[` that ends `T`
  opens the JSON array that follows. Before `T` has appeared, a bare JSON value that holds a call
  also counts (models often drop the tag or it is in the prompt already, as with xlam); bare JSON
  that holds no call stays content.
- A JSON value is a unit: it counts only once it is complete and valid, and then gives all the
  calls found in it: objects with `name` (or `tool_name`) naming a known tool and an object (or a
  JSON string holding an object) under `arguments` (or `parameters`), at any depth, e.g. under
  `function` or in a `tool_calls` list. Argument key order is kept.
- From the tag (or the first call) on, the reply is a call region: its calls are returned and the
  rest (closing tags, separators, trailing text) is dropped, as Ollama drops it. A region that
  never yields a call is returned as plain content by `finish()`, tag included.
- Text is held back only while it might still be a tag or part of a call; a bracket that cannot
  start valid JSON is released at the first character that proves it.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["ParsedCall", "ToolParser", "new_call_id", "parse_all", "tool_tag"]


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: dict[str, Any]
    index: int


_ID_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_call_id() -> str:
    """An id like Ollama's own: `call_` and 8 characters from [a-z0-9]."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))


# ---------------------------------------------------------------------------------------------
# The tag, from the Go template source
# ---------------------------------------------------------------------------------------------

# Whitespace as Go's text/template lexer trims it around `{{-` and `-}}`.
_TRIM_SPACE: Final = " \t\r\n"
# Whitespace as Go's strings.TrimSpace / unicode.IsSpace see it.
_GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_KEYWORD = re.compile(r"(if|else|end|range|with|define|block|template|break|continue)(?![\w.])")


@dataclass(slots=True, eq=False)
class _Node:
    # "text", "action" (an ActionNode: output or assignment), "other" (template/break/continue),
    # "if", "range", "with", "define" (also a block's body; kept out of the main tree).
    kind: str
    text: str = ""
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] | None = None
    chained: bool = False  # an `else if`/`else with` node: closed by its parent's `{{end}}`


def _lex(src: str) -> list[tuple[bool, str]]:
    """Split template source into (is_action, text) items, applying `{{-`/`-}}` trimming and
    dropping comments. Best effort on malformed input (Go would refuse to parse it)."""
    items: list[tuple[bool, str]] = []
    n = len(src)
    i = 0
    trim_next = False
    while i < n:
        j = src.find("{{", i)
        text = src[i:] if j < 0 else src[i:j]
        if trim_next:
            text = text.lstrip(_TRIM_SPACE)
        if j < 0:
            if text:
                items.append((False, text))
            break
        k = j + 2
        if src.startswith("-", k) and k + 1 < n and src[k + 1] in _TRIM_SPACE:
            text = text.rstrip(_TRIM_SPACE)
            k += 2
        if text:
            items.append((False, text))
        if src.startswith("/*", k):
            end = src.find("*/", k + 2)
            if end < 0:
                break
            m = end + 2
            if src.startswith("}}", m):
                trim_next, i = False, m + 2
            elif m < n and src[m] in _TRIM_SPACE and src.startswith("-}}", m + 1):
                trim_next, i = True, m + 4
            else:
                break
            continue
        m = k
        while m < n and not src.startswith("}}", m):
            quote = src[m]
            if quote in "\"'`":
                m += 1
                while m < n and src[m] != quote:
                    m += 2 if src[m] == "\\" and quote != "`" else 1
            m += 1
        inner = src[k:m]
        trim_next = len(inner) >= 2 and inner[-1] == "-" and inner[-2] in _TRIM_SPACE
        if trim_next:
            inner = inner[:-2]
        items.append((True, inner.strip(_TRIM_SPACE)))
        i = m + 2
    return items


def _parse_template(src: str) -> list[_Node]:
    """The node tree of the main template, shaped like Go's text/template/parse tree."""
    root: list[_Node] = []
    # Open blocks, each with the list that new nodes go into.
    stack: list[tuple[_Node, list[_Node]]] = []
    current = root
    for is_action, text in _lex(src):
        if not is_action:
            current.append(_Node("text", text))
            continue
        m = _KEYWORD.match(text)
        word = m.group(1) if m else ""
        rest = text[m.end() :].strip(_TRIM_SPACE) if m else text
        if word in ("if", "range", "with", "define", "block"):
            if word in ("if", "range", "with"):
                node = _Node(word, rest)
                current.append(node)
            else:  # a separate template; a block also calls it from here
                node = _Node("define", rest)
                if word == "block":
                    current.append(_Node("other", text))
            stack.append((node, node.body))
            current = node.body
        elif word == "else":
            if not stack:
                continue
            top = stack[-1][0]
            top.orelse = []
            sub = _KEYWORD.match(rest)
            if sub and sub.group(1) in ("if", "with"):
                node = _Node(sub.group(1), rest[sub.end() :].strip(_TRIM_SPACE), chained=True)
                top.orelse.append(node)
                stack[-1] = (top, top.orelse)
                stack.append((node, node.body))
                current = node.body
            else:
                stack[-1] = (top, top.orelse)
                current = top.orelse
        elif word == "end":
            while stack and stack[-1][0].chained:
                stack.pop()
            if stack:
                stack.pop()
            current = stack[-1][1] if stack else root
        elif word in ("template", "break", "continue"):
            current.append(_Node("other", text))
        else:
            current.append(_Node("action", text))
    return root


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\'(?:[^\'\\]|\\.)*\'', re.S)
_FIELD = re.compile(r"(?<=[\s|=,])((?:\.[^\W\d]\w*)+)")


def _mentions_tool_calls(pipe: str) -> bool:
    """Whether a command of the pipeline has a field argument (`.ToolCalls`, `.X.ToolCalls`)
    naming ToolCalls, as Ollama's isToolCallsNode checks: a `$.ToolCalls` variable, a
    `(...).ToolCalls` chain or anything inside parentheses does not count."""
    top: list[str] = [" "]
    depth = 0
    for c in _STRINGS.sub('""', pipe):
        if c == "(":
            depth += 1
            if depth == 1:
                top.append(c)
        elif c == ")" and depth:
            depth -= 1
            if not depth:
                top.append(c)
        elif not depth:
            top.append(c)
    return any("ToolCalls" in m.group(1).split(".") for m in _FIELD.finditer("".join(top)))


def _find_tool_calls_if(nodes: list[_Node]) -> _Node | None:
    for node in nodes:
        if node.kind == "if" and _mentions_tool_calls(node.text):
            return node
        if node.kind in ("if", "range", "with"):
            found = _find_tool_calls_if(node.body)
            if found is None and node.orelse is not None:
                found = _find_tool_calls_if(node.orelse)
            if found is not None:
                return found
    return None


def _first_text(nodes: list[_Node]) -> str | None:
    for node in nodes:
        if node.kind == "text":
            if node.text.strip(_GO_SPACE):
                return node.text
        elif node.kind in ("if", "range", "with"):
            found = _first_text(node.body)
            if found is None and node.orelse is not None:
                found = _first_text(node.orelse)
            return found
        elif node.kind == "action":
            return None
    return None


def tool_tag(template_src: str) -> str:
    """The text that starts a tool call in this template's output, or `{` (bare JSON)."""
    block = _find_tool_calls_if(_parse_template(template_src))
    text = _first_text(block.body) if block is not None else None
    if text is None:
        return "{"
    tag = text.replace("\r\n", "\n").split("{", 1)[0].strip(_GO_SPACE)
    return tag or "{"


# ---------------------------------------------------------------------------------------------
# An incremental JSON syntax check: where a value ends, or the first character that rules it out
# ---------------------------------------------------------------------------------------------

_MORE: Final = 0
_DONE: Final = 1
_INVALID: Final = 2

# Scanner states.
_VALUE, _OBJ_START, _KEY, _COLON, _AFTER, _ARR_START = range(6)
_STR, _STR_ESC, _STR_HEX, _LITERAL = range(6, 10)
_N_MINUS, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(10, 18)
_NUMBER_CAN_END: Final = frozenset({_N_ZERO, _N_INT, _N_FRAC, _N_EXP})

_JSON_SPACE: Final = " \t\n\r"
_DIGITS: Final = "0123456789"
_HEX: Final = "0123456789abcdefABCDEF"
_PLAIN_STRING = re.compile(r'[^"\\\x00-\x1f]+')


class _JsonScan:
    """Follows one JSON object or array character by character (RFC 8259, as Go's decoder
    accepts it: no NaN/Infinity, no raw control characters in strings)."""

    __slots__ = ("hex_left", "in_key", "literal", "stack", "state")

    def __init__(self, opener: str) -> None:
        self.stack = [opener]
        self.state = _OBJ_START if opener == "{" else _ARR_START
        self.in_key = False
        self.literal = ""
        self.hex_left = 0

    def scan(self, text: str, pos: int) -> tuple[int, int]:
        """Scan text[pos:] (pos is past the opening bracket the first time). Returns
        (_DONE, index after the closing bracket), (_INVALID, index of the offending character)
        or (_MORE, len(text))."""
        n = len(text)
        while pos < n:
            state = self.state
            if state == _STR:
                m = _PLAIN_STRING.match(text, pos)
                if m:
                    pos = m.end()
                    if pos == n:
                        break
                c = text[pos]
                if c == '"':
                    self.state = _COLON if self.in_key else _AFTER
                elif c == "\\":
                    self.state = _STR_ESC
                else:
                    return _INVALID, pos
                pos += 1
                continue
            c = text[pos]
            if state == _STR_ESC:
                if c == "u":
                    self.state, self.hex_left = _STR_HEX, 4
                elif c in '"\\/bfnrt':
                    self.state = _STR
                else:
                    return _INVALID, pos
            elif state == _STR_HEX:
                if c not in _HEX:
                    return _INVALID, pos
                self.hex_left -= 1
                if not self.hex_left:
                    self.state = _STR
            elif state == _LITERAL:
                if c != self.literal[0]:
                    return _INVALID, pos
                self.literal = self.literal[1:]
                if not self.literal:
                    self.state = _AFTER
            elif state >= _N_MINUS:
                if not self._number(c):
                    if state not in _NUMBER_CAN_END:
                        return _INVALID, pos
                    self.state = _AFTER
                    continue  # the character after a number is read again as a separator
            elif c in _JSON_SPACE:
                pass
            elif state == _AFTER:
                top = self.stack[-1]
                if c == ",":
                    self.state = _KEY if top == "{" else _VALUE
                elif c == ("}" if top == "{" else "]"):
                    self.stack.pop()
                    if not self.stack:
                        return _DONE, pos + 1
                else:
                    return _INVALID, pos
            elif state in (_OBJ_START, _KEY):
                if c == '"':
                    self.state, self.in_key = _STR, True
                elif c == "}" and state == _OBJ_START:
                    self.stack.pop()
                    if not self.stack:
                        return _DONE, pos + 1
                    self.state = _AFTER
                else:
                    return _INVALID, pos
            elif state == _COLON:
                if c != ":":
                    return _INVALID, pos
                self.state = _VALUE
            elif c == "]" and state == _ARR_START:
                self.stack.pop()
                if not self.stack:
                    return _DONE, pos + 1
                self.state = _AFTER
            elif not self._value_start(c):  # _VALUE or _ARR_START
                return _INVALID, pos
            pos += 1
        return _MORE, n

    def _value_start(self, c: str) -> bool:
        if c == "{" or c == "[":
            self.stack.append(c)
            self.state = _OBJ_START if c == "{" else _ARR_START
        elif c == '"':
            self.state, self.in_key = _STR, False
        elif c == "t" or c == "f" or c == "n":
            self.state = _LITERAL
            self.literal = {"t": "rue", "f": "alse", "n": "ull"}[c]
        elif c == "-":
            self.state = _N_MINUS
        elif c == "0":
            self.state = _N_ZERO
        elif c in _DIGITS:
            self.state = _N_INT
        else:
            return False
        return True

    def _number(self, c: str) -> bool:
        """Advance a number by c; False when c does not continue it."""
        state = self.state
        digit = c in _DIGITS
        if state == _N_MINUS:
            if not digit:
                return False
            self.state = _N_ZERO if c == "0" else _N_INT
        elif state in (_N_ZERO, _N_INT, _N_FRAC):
            if digit and state != _N_ZERO:
                pass
            elif c == "." and state != _N_FRAC:
                self.state = _N_DOT
            elif c == "e" or c == "E":
                self.state = _N_E
            else:
                return False
        elif state == _N_DOT:
            if not digit:
                return False
            self.state = _N_FRAC
        elif state == _N_E:
            if c == "+" or c == "-":
                self.state = _N_ESIGN
            elif digit:
                self.state = _N_EXP
            else:
                return False
        elif state == _N_ESIGN:
            if not digit:
                return False
            self.state = _N_EXP
        elif not digit:  # _N_EXP
            return False
        return True


# ---------------------------------------------------------------------------------------------
# Calls inside a JSON value
# ---------------------------------------------------------------------------------------------


def _go_number(text: str) -> float | int:
    """A JSON number with a fraction or exponent. Go decodes every number to float64 and writes
    integral ones without a fraction (7.0 -> 7), so integral values become ints here."""
    value = float(text)
    if value.is_integer() and 0 < abs(value) < 1e21:
        return int(value)
    return value


def _loads(text: str) -> Any:
    return json.loads(text, parse_float=_go_number)


def _arguments(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        try:
            value = _loads(value)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


def _collect_calls(
    value: Any, names: frozenset[str], out: list[tuple[str, dict[str, Any]]]
) -> None:
    if isinstance(value, list):
        for item in value:
            _collect_calls(item, names, out)
        return
    if not isinstance(value, dict):
        return
    name = value.get("name")
    if not isinstance(name, str):
        name = value.get("tool_name")
    if isinstance(name, str):
        args = _arguments(value.get("arguments"))
        if args is None:
            args = _arguments(value.get("parameters"))
        if args is not None:
            # Call-shaped: a call when the tool is known, and never searched further.
            if name in names:
                out.append((name, args))
            return
    if len(value) == 1:  # {"get_weather": {...}}
        ((key, inner),) = value.items()
        args = _arguments(inner) if key in names else None
        if args is not None:
            out.append((key, args))
            return
    for child in value.values():
        _collect_calls(child, names, out)


# ---------------------------------------------------------------------------------------------
# The streaming parser
# ---------------------------------------------------------------------------------------------

_SCAN: Final = 0  # before any call region: content, possibly a tag or bare JSON
_REGION: Final = 1  # from the tag (or first call) on
_OFF: Final = 2  # tool parsing is off: everything is content

_NONE: Final = 0
_PARTIAL: Final = 1
_FULL: Final = 2


class ToolParser:
    """Incremental tool-call parser for one reply.

    `feed(text)` returns (content to emit now, calls completed now); `finish()` returns what
    remains. The concatenated content and the calls do not depend on how the text was split.
    """

    def __init__(self, tag: str, tool_names: Collection[str]) -> None:
        tag = tag.strip(_GO_SPACE) or "{"
        self.tag: Final = tag
        self._names = frozenset(tool_names)
        self._bare = tag in ("{", "[")
        self._pieces = tag.split()
        # A tag that ends by opening the JSON (`functools[`) leaves that bracket to the JSON.
        self._tag_opens_json = not self._bare and tag[-1] in "{["
        starts = {"{", "["} if self._bare else {"{", "[", self._pieces[0][0]}
        self._starts = re.compile("[" + "".join(re.escape(c) for c in sorted(starts)) + "]")
        self._mode = _SCAN if self._names else _OFF
        self._buf = ""  # text not decided yet
        self._json: _JsonScan | None = None  # a JSON value opening at _buf[0] is being followed
        self._json_pos = 0  # how far into _buf it has been followed
        self._held: list[str] = []  # region text, kept until the region yields a call
        self._gap: list[str] = []  # region text since the last JSON value
        self._name_re = re.compile(
            "|".join(re.escape(n) for n in sorted(self._names, key=len, reverse=True) if n)
            or r"(?!)"
        )
        self._found = False  # the region has yielded a call
        self._index = 0
        self._finished = False

    @property
    def calls_found(self) -> bool:
        return self._found

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        if self._finished:
            raise RuntimeError("ToolParser.feed() after finish()")
        self._buf += text
        out: list[str] = []
        calls: list[ParsedCall] = []
        self._run(out, calls, final=False)
        return "".join(out), calls

    def finish(self) -> tuple[str, list[ParsedCall]]:
        if self._finished:
            return "", []
        out: list[str] = []
        calls: list[ParsedCall] = []
        self._run(out, calls, final=True)
        self._finished = True
        if self._json is not None:  # an incomplete JSON value
            self._json = None
            if self._mode == _REGION:
                self._junk(self._buf)
            else:
                out.append(self._buf)
        elif self._buf:  # defensive: _run leaves nothing else behind when final
            out.append(self._buf)
        self._buf = ""
        if self._mode == _REGION and not self._found:
            out.extend(self._held)
        self._held = []
        return "".join(out), calls

    # -- internals ----------------------------------------------------------------------------

    def _run(self, out: list[str], calls: list[ParsedCall], *, final: bool) -> None:
        while self._buf:
            if self._mode == _OFF:
                out.append(self._buf)
                self._buf = ""
                return
            if self._json is not None:
                status, pos = self._json.scan(self._buf, self._json_pos)
                if status == _MORE:
                    self._json_pos = pos
                    return
                self._json = None
                value, self._buf = self._buf[:pos], self._buf[pos:]
                found = self._calls_in(value) if status == _DONE else []
                if found:
                    calls.extend(found)
                    self._mode, self._found = _REGION, True
                    self._held = []
                elif self._mode == _REGION:
                    self._junk(value)
                else:
                    out.append(value)
                    if self._bare:
                        self._mode = _OFF
                if status == _DONE:
                    self._gap = []  # a tool's name before a value goes with that value only
                continue
            if self._mode == _REGION:
                m = re.search(r"[{\[]", self._buf)
                if m is None:
                    self._junk(self._buf)
                    self._buf = ""
                    return
                self._junk(self._buf[: m.start()])
                self._open_json(m.start())
            elif self._bare:
                rest = self._buf.lstrip(_GO_SPACE)
                out.append(self._buf[: len(self._buf) - len(rest)])
                self._buf = rest
                if rest and rest[0] in "{[":
                    self._open_json(0)
                elif rest:
                    self._mode = _OFF
            elif not self._scan_named(out, final):
                return

    def _scan_named(self, out: list[str], final: bool) -> bool:
        """Content before the named tag. False when waiting for more text."""
        buf = self._buf
        pos = 0
        while (m := self._starts.search(buf, pos)) is not None:
            p = m.start()
            if buf[p] == self._pieces[0][0]:
                status, end = self._match_tag(buf, p)
                if status == _FULL:
                    out.append(buf[:p])
                    json_at = end - 1 if self._tag_opens_json else end
                    self._held = [buf[p:json_at]]
                    self._gap = []
                    self._buf = buf[json_at:]
                    self._mode = _REGION
                    return True
                if status == _PARTIAL and not final:
                    out.append(buf[:p])
                    self._buf = buf[p:]
                    return False
            if buf[p] in "{[":
                out.append(buf[:p])
                self._buf = buf[p:]
                self._open_json(0)
                return True
            pos = p + 1
        out.append(buf)
        self._buf = ""
        return True

    def _match_tag(self, buf: str, pos: int) -> tuple[int, int]:
        """Match the tag at buf[pos:], any whitespace run standing for a whitespace run in it."""
        n = len(buf)
        for k, piece in enumerate(self._pieces):
            if k:
                while pos < n and buf[pos].isspace():
                    pos += 1
            if n - pos < len(piece):
                return (_PARTIAL if piece.startswith(buf[pos:]) else _NONE), pos
            if not buf.startswith(piece, pos):
                return _NONE, pos
            pos += len(piece)
        return _FULL, pos

    def _open_json(self, at: int) -> None:
        self._buf = self._buf[at:]
        self._json = _JsonScan(self._buf[0])
        self._json_pos = 1

    def _junk(self, text: str) -> None:
        if text:
            self._gap.append(text)
            if not self._found:
                self._held.append(text)

    def _calls_in(self, value: str) -> list[ParsedCall]:
        try:
            data = _loads(value)
        except (ValueError, RecursionError):
            return []
        found: list[tuple[str, dict[str, Any]]] = []
        _collect_calls(data, self._names, found)
        if (
            not found
            and self._mode == _REGION
            and isinstance(data, dict)
            and "name" not in data
            and "tool_name" not in data
        ):
            # In the call region, a bare object after a tool's name holds that tool's arguments
            # (`<|tool▁sep|>get_weather ```json {"city": "Paris"}`); the last name before it wins.
            name = None
            for m in self._name_re.finditer("".join(self._gap)):
                name = m.group()
            if name is not None:
                found.append((name, data))
        calls = []
        for name, args in found:
            calls.append(ParsedCall(name, args, self._index))
            self._index += 1
        return calls


def parse_all(text: str, tag: str, tool_names: Collection[str]) -> tuple[str, list[ParsedCall]]:
    """Parse a whole reply: (content, calls)."""
    parser = ToolParser(tag, tool_names)
    content, calls = parser.feed(text)
    rest, more = parser.finish()
    return content + rest, calls + more
