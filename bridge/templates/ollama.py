"""Ollama's prompt-template layer: the values a Go template sees, and how Ollama runs it.

This mirrors Ollama's `template` package (`template.go`): its extra functions (`json`,
`currentDate`, `yesterdayDate`, `toTypeScriptType`), `missingkey=zero`, the `{{ .Response }}`
appended to templates that mention neither `.Messages` nor `.Response`, and `Execute`'s three
modes:

- FIM: a prompt and a suffix give `.Prompt .Suffix .Response .Think .ThinkLevel .IsThinkSet`.
- messages (the template mentions `.Messages`): `.System` joins every system message, and
  `.Messages` holds the conversation with consecutive same-role messages merged (not tool
  messages), plus `.Tools`, `.Response` (""), `.Think`, `.ThinkLevel`, `.IsThinkSet`.
- legacy: the template runs once per completed turn with `.System .Prompt .Response`; the last
  run stops right after `{{ .Response }}`.

The values are shaped as Ollama's Go structs are, so they print and marshal the same: tool
calls' `.Function.Arguments` and `.Tools` print as JSON, properties range in sorted order, and
`json` writes what Go's `encoding/json` writes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.domain import Message
from bridge.templates.gotemplate import (
    ActionNode,
    BranchNode,
    CommandNode,
    FieldNode,
    IfNode,
    ListNode,
    NilSlice,
    Node,
    PipeNode,
    RangeNode,
    Template,
    TemplateExecError,
    TemplateNode,
    TemplateSyntaxError,
    VariableNode,
    WithNode,
    marshal_json,
)

__all__ = [
    "OllamaTemplate",
    "PropertyType",
    "TemplateMessage",
    "TemplateTool",
    "ToolProperty",
    "parse",
    "render_generate",
    "render_messages",
    "template_vars",
    "uses",
]

MessageLike = Mapping[str, Any] | Message

# ---------------------------------------------------------------------------------------------
# The values templates see: Ollama's Go structs
# ---------------------------------------------------------------------------------------------


def _marshal_or_empty(v: Any) -> str:
    """`json.Marshal` with the error dropped, as Ollama's helpers do."""
    try:
        return marshal_json(v)
    except ValueError:
        return ""


class PropertyType(list[str]):
    """api.PropertyType: one JSON Schema type (marshals as a string) or several (an array)."""

    __slots__ = ()
    __go_type__ = "api.PropertyType"

    def String(self) -> str:  # a Go method, callable from templates
        if not self:
            return ""
        if len(self) == 1:
            return self[0]
        return "[" + " ".join(self) + "]"

    def __go_json__(self) -> str:
        if len(self) == 1:
            return marshal_json(self[0])
        return marshal_json(list(self))


class OrderedProperties(dict[str, "ToolProperty"]):
    """api.ToolPropertiesMap (nested properties): marshals in insertion order."""

    __slots__ = ()
    __go_type__ = "*api.ToolPropertiesMap"

    def __go_json__(self) -> str:
        parts = [marshal_json(k) + ":" + marshal_json(v) for k, v in self.items()]
        return "{" + ",".join(parts) + "}"


_TS_TYPES: Final = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


@dataclass(slots=True, eq=False)
class ToolProperty:
    """api.ToolProperty: one parameter of a tool's JSON Schema."""

    AnyOf: list[ToolProperty] = field(metadata={"json": "anyOf,omitempty"})
    Type: PropertyType = field(metadata={"json": "type,omitempty"})
    Items: Any = field(metadata={"json": "items,omitempty"})
    Description: str = field(metadata={"json": "description,omitempty"})
    Enum: list[Any] = field(metadata={"json": "enum,omitempty"})
    Properties: OrderedProperties | None = field(metadata={"json": "properties,omitempty"})
    Required: list[str] = field(metadata={"json": "required,omitempty"})

    __go_type__ = "api.ToolProperty"

    def ToTypeScriptType(self) -> str:  # a Go method, callable from templates
        if self.AnyOf:
            return " | ".join(p.ToTypeScriptType() for p in self.AnyOf)
        if not self.Type:
            return "any"
        return " | ".join(_TS_TYPES.get(t, "any") for t in self.Type)


class _GoJSONMap(dict[str, Any]):
    """A Go map (sorted) that prints as JSON; nil when made from None."""

    __slots__ = ("nil",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        super().__init__(items or {})
        self.nil = items is None

    def String(self) -> str:
        return "{}" if self.nil else _marshal_or_empty(self)

    def __go_json__(self) -> str:
        return "null" if self.nil else marshal_json(dict(self))


class TemplateProperties(_GoJSONMap):
    """template.templateProperties: tool parameters by name."""

    __slots__ = ()
    __go_type__ = "template.templateProperties"

    def __go_zero__(self) -> ToolProperty:
        return _empty_property()


class TemplateArgs(_GoJSONMap):
    """template.templateArgs: tool-call arguments."""

    __slots__ = ()
    __go_type__ = "template.templateArgs"


@dataclass(slots=True, eq=False)
class TemplateToolFunctionParameters:
    Type: str = field(metadata={"json": "type"})
    Defs: Any = field(metadata={"json": "$defs,omitempty"})
    Items: Any = field(metadata={"json": "items,omitempty"})
    Required: list[str] = field(metadata={"json": "required,omitempty"})
    Properties: TemplateProperties = field(metadata={"json": "properties"})

    __go_type__ = "template.templateToolFunctionParameters"

    def String(self) -> str:
        return _marshal_or_empty(self)


@dataclass(slots=True, eq=False)
class TemplateToolFunction:
    Name: str = field(metadata={"json": "name"})
    Description: str = field(metadata={"json": "description"})
    Parameters: TemplateToolFunctionParameters = field(metadata={"json": "parameters"})

    __go_type__ = "template.templateToolFunction"

    def String(self) -> str:  # prints as JSON, as api.ToolFunction always did
        return _marshal_or_empty(self)


@dataclass(slots=True, eq=False)
class TemplateTool:
    """template.templateTool: one entry of `.Tools`; prints as its JSON."""

    Type: str = field(metadata={"json": "type"})
    Items: Any = field(metadata={"json": "items,omitempty"})
    Function: TemplateToolFunction = field(metadata={"json": "function"})

    __go_type__ = "template.templateTool"

    def String(self) -> str:
        return _marshal_or_empty(self)


class TemplateTools(list[TemplateTool]):
    """template.templateTools: `.Tools`, printing as a JSON array (`null` when absent)."""

    __slots__ = ("nil",)
    __go_type__ = "template.templateTools"

    def __init__(self, items: Sequence[TemplateTool] | None = None) -> None:
        super().__init__(items or ())
        self.nil = items is None

    def String(self) -> str:
        return _marshal_or_empty(self)

    def __go_json__(self) -> str:
        return "null" if self.nil else marshal_json(list(self))


@dataclass(slots=True, eq=False)
class TemplateToolCallFunction:
    Index: int
    Name: str
    Arguments: TemplateArgs

    __go_type__ = "template.templateToolCallFunction"


@dataclass(slots=True, eq=False)
class TemplateToolCall:
    ID: str
    Function: TemplateToolCallFunction

    __go_type__ = "template.templateToolCall"


@dataclass(slots=True, eq=False)
class TemplateMessage:
    """template.templateMessage: one entry of `.Messages`."""

    Role: str
    Content: str
    Thinking: str
    Images: Sequence[bytes]
    ToolCalls: Sequence[TemplateToolCall]
    ToolName: str
    ToolCallID: str

    __go_type__ = "*template.templateMessage"


def _empty_property() -> ToolProperty:
    return ToolProperty([], PropertyType(), None, "", [], None, [])


# ---------------------------------------------------------------------------------------------
# From request data to template values (as Go's JSON decoding into api types would)
# ---------------------------------------------------------------------------------------------


def _fields(d: Any) -> dict[str, Any]:
    """A JSON object's members keyed for struct decoding: encoding/json matches names
    case-insensitively, and the last matching member wins."""
    if not isinstance(d, Mapping):
        return {}
    return {k.lower(): v for k, v in d.items() if isinstance(k, str)}


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _any(v: Any) -> Any:
    """A JSON value decoded into Go's `any`: numbers are float64, objects are maps."""
    if isinstance(v, bool) or v is None or isinstance(v, str | float):
        return v
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            return v
    if isinstance(v, Mapping):
        return {str(k): _any(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_any(x) for x in v]
    return v


def _strings(v: Any) -> list[str]:
    return [x for x in v if isinstance(x, str)] if isinstance(v, list | tuple) else []


def _property(obj: Any) -> ToolProperty:
    if not isinstance(obj, Mapping):
        return _empty_property()
    d = _fields(obj)
    typ = d.get("type")
    ptype = PropertyType([typ] if isinstance(typ, str) else _strings(typ))
    nested = d.get("properties")
    any_of = d.get("anyof")
    enum = d.get("enum")
    return ToolProperty(
        [_property(p) for p in any_of] if isinstance(any_of, list | tuple) else [],
        ptype,
        _any(d.get("items")),
        _str(d.get("description")),
        [_any(e) for e in enum] if isinstance(enum, list | tuple) else [],
        OrderedProperties({str(k): _property(p) for k, p in nested.items()})
        if isinstance(nested, Mapping)
        else None,
        _strings(d.get("required")),
    )


def _tool(obj: Mapping[str, Any]) -> TemplateTool:
    d = _fields(obj)
    fn = _fields(d.get("function"))
    params = _fields(fn.get("parameters"))
    props = params.get("properties")
    return TemplateTool(
        _str(d.get("type")),
        _any(d.get("items")),
        TemplateToolFunction(
            _str(fn.get("name")),
            _str(fn.get("description")),
            TemplateToolFunctionParameters(
                _str(params.get("type")),
                _any(params.get("$defs")),
                _any(params.get("items")),
                _strings(params.get("required")),
                TemplateProperties({str(k): _property(p) for k, p in props.items()})
                if isinstance(props, Mapping)
                else TemplateProperties(None),
            ),
        ),
    )


def _tools(tools: Sequence[Mapping[str, Any]] | None) -> TemplateTools:
    if tools is None:
        return TemplateTools(None)
    return TemplateTools([_tool(t) for t in tools])


@dataclass(slots=True)
class _Msg:
    """api.Message, the shape the template layer works on."""

    role: str
    content: str
    thinking: str = ""
    images: tuple[bytes, ...] = ()
    tool_calls: tuple[TemplateToolCall, ...] = ()
    tool_name: str = ""
    tool_call_id: str = ""


def _image(v: Any) -> bytes:
    if isinstance(v, bytes | bytearray):
        return bytes(v)
    if isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            return v.encode()
    return b""


def _arguments(v: Any) -> TemplateArgs:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return TemplateArgs(None)
    if not isinstance(v, Mapping):
        return TemplateArgs(None)
    return TemplateArgs({str(k): _any(x) for k, x in v.items()})


def _tool_call(obj: Any) -> TemplateToolCall:
    d = _fields(obj)
    fn = _fields(d.get("function"))
    index = fn.get("index")
    return TemplateToolCall(
        _str(d.get("id")),
        TemplateToolCallFunction(
            index if isinstance(index, int) and not isinstance(index, bool) else 0,
            _str(fn.get("name")),
            _arguments(fn.get("arguments")),
        ),
    )


def _message(m: MessageLike) -> _Msg:
    if isinstance(m, Message):
        return _Msg(
            m.role.lower(),
            m.content,
            m.thinking or "",
            tuple(m.images),
            tuple(
                TemplateToolCall(
                    c.id or "",
                    TemplateToolCallFunction(c.index, c.name, _arguments(c.arguments)),
                )
                for c in m.tool_calls
            ),
            m.tool_name or "",
            m.tool_call_id or "",
        )
    d = _fields(m)
    images = d.get("images")
    calls = d.get("tool_calls")
    return _Msg(
        _str(d.get("role")).lower(),
        _str(d.get("content")),
        _str(d.get("thinking")),
        tuple(_image(i) for i in images) if isinstance(images, list | tuple) else (),
        tuple(_tool_call(c) for c in calls) if isinstance(calls, list | tuple) else (),
        _str(d.get("tool_name")),
        _str(d.get("tool_call_id")),
    )


def _collate(messages: Sequence[_Msg]) -> tuple[str, list[_Msg]]:
    """Ollama's collate: all system contents joined, and consecutive messages of one role
    merged into the first (only its content grows), except tool messages."""
    system: list[str] = []
    out: list[_Msg] = []
    for m in messages:
        if m.role == "system":
            system.append(m.content)
        if out and out[-1].role == m.role and m.role != "tool":
            out[-1] = dataclasses.replace(out[-1], content=out[-1].content + "\n\n" + m.content)
        else:
            out.append(m)
    return "\n\n".join(system), out


def _template_message(m: _Msg) -> TemplateMessage:
    return TemplateMessage(
        m.role,
        m.content,
        m.thinking,
        m.images or NilSlice(),
        m.tool_calls or NilSlice(),
        m.tool_name,
        m.tool_call_id,
    )


# ---------------------------------------------------------------------------------------------
# Ollama's functions, parsing and Vars
# ---------------------------------------------------------------------------------------------


def _json(v: Any) -> str:
    return _marshal_or_empty(v)


def _current_date(*_args: Any) -> str:
    return datetime.date.today().isoformat()


def _yesterday_date(*_args: Any) -> str:
    return (datetime.date.today() - datetime.timedelta(days=1)).isoformat()


def _to_typescript_type(v: Any) -> str:
    return v.ToTypeScriptType() if isinstance(v, ToolProperty) else "any"


FUNCS: Final[Mapping[str, Callable[..., Any]]] = {
    "json": _json,
    "currentDate": _current_date,
    "yesterdayDate": _yesterday_date,
    "toTypeScriptType": _to_typescript_type,
}


def _identifiers(n: Node | None) -> Iterator[str]:
    """Ollama's Identifiers: field and variable names in actions, branches and pipelines."""
    if isinstance(n, ListNode):
        for c in n.nodes:
            yield from _identifiers(c)
    elif isinstance(n, TemplateNode):
        if n.pipe is None:
            raise TemplateSyntaxError("undefined template specified")
        yield from _identifiers(n.pipe)
    elif isinstance(n, ActionNode):
        yield from _identifiers(n.pipe)
    elif isinstance(n, BranchNode):
        yield from _identifiers(n.pipe)
        yield from _identifiers(n.list)
        yield from _identifiers(n.else_list)
    elif isinstance(n, PipeNode):
        for c in n.cmds:
            for a in c.args:
                yield from _identifiers(a)
    elif isinstance(n, FieldNode | VariableNode):
        yield from n.ident


class OllamaTemplate:
    """A model's template parsed as Ollama parses it: funcs, missingkey=zero, and a trailing
    `{{ .Response }}` when the template mentions neither `.Messages` nor `.Response`."""

    __slots__ = ("_legacy", "template", "vars")

    def __init__(self, source: str) -> None:
        base = Template(source, funcs=FUNCS, missingkey="zero")
        names = {i.lower() for t in base.templates.values() for i in _identifiers(t)}
        root = base.root
        if "messages" not in names and "response" not in names:
            response = ActionNode(
                0, 0, PipeNode(0, 0, cmds=[CommandNode(0, [FieldNode(0, ("Response",))])])
            )
            root = ListNode(root.pos, [*root.nodes, response])
            names.add("response")
        self.template = Template.from_tree(
            source, root, templates=base.templates, funcs=FUNCS, missingkey="zero"
        )
        self.vars: frozenset[str] = frozenset(names)
        self._legacy: Template | None = None

    @property
    def legacy_final(self) -> Template:
        """The template cut off after `{{ .Response }}`, run as Ollama runs it: a bare Go
        template (no extra functions, no defined templates, default missingkey)."""
        if self._legacy is None:
            root = _cut_after_response(self.template.root)
            self._legacy = Template.from_tree(self.template.source, root)
        return self._legacy

    def execute(
        self,
        messages: Sequence[_Msg],
        *,
        tools: TemplateTools | None = None,
        prompt: str = "",
        suffix: str = "",
        think: bool = False,
        think_level: str = "",
        is_think_set: bool = False,
    ) -> str:
        """Ollama's `Template.Execute`."""
        flags = {"Think": think, "ThinkLevel": think_level, "IsThinkSet": is_think_set}
        if prompt and suffix:
            return self.template.execute(
                {"Prompt": prompt, "Suffix": suffix, "Response": "", **flags}
            )
        system, collated = _collate(messages)
        if "messages" in self.vars:
            return self.template.execute(
                {
                    "System": system,
                    "Messages": [_template_message(m) for m in collated] or NilSlice(),
                    "Tools": tools if tools is not None else TemplateTools(None),
                    "Response": "",
                    **flags,
                }
            )
        out: list[str] = []
        turn = {"System": "", "Prompt": "", "Response": ""}

        def run() -> None:
            out.append(self.template.execute({**turn, **flags}))
            turn.update(System="", Prompt="", Response="")

        for m in collated:
            if m.role == "system":
                if turn["Prompt"] or turn["Response"]:
                    run()
                turn["System"] = m.content
            elif m.role == "user":
                if turn["Response"]:
                    run()
                turn["Prompt"] = m.content
            elif m.role == "assistant":
                turn["Response"] = m.content
        out.append(self.legacy_final.execute({**turn, **flags}))
        return "".join(out)


def _cut_after_response(root: ListNode) -> ListNode:
    """Ollama's deleteNode: everything after the first `.Response` field goes (a copy)."""
    cut = False

    def gone(n: Node) -> bool:
        nonlocal cut
        if isinstance(n, FieldNode) and "Response" in n.ident:
            cut = True
            return False
        return cut

    def walk(n: Node) -> Node | None:
        if gone(n):
            return None
        if isinstance(n, ListNode):
            kept = [k for k in (walk(c) for c in n.nodes) if k is not None]
            return ListNode(n.pos, kept)
        if isinstance(n, IfNode | RangeNode | WithNode):
            lst = walk(n.list)
            assert isinstance(lst, ListNode)
            else_list: ListNode | None = None
            if n.else_list is not None:
                walked = walk(n.else_list)
                if walked is None:
                    # Ollama's Go code panics here (a nil type assertion): no prompt comes out.
                    raise TemplateExecError(
                        "template: cannot cut the template after {{ .Response }} inside "
                        "a branch that has an else (Ollama fails here too)"
                    )
                assert isinstance(walked, ListNode)
                else_list = walked
            return type(n)(n.pos, n.line, n.pipe, lst, else_list)
        if isinstance(n, ActionNode):
            pipe = walk(n.pipe)
            if pipe is None:
                return None
            assert isinstance(pipe, PipeNode)
            return ActionNode(n.pos, n.line, pipe)
        if isinstance(n, PipeNode):
            cmds: list[CommandNode] = []
            for c in n.cmds:
                args = [k for k in (walk(a) for a in c.args) if k is not None]
                if not args:
                    return None
                cmds.append(CommandNode(c.pos, args))
            return PipeNode(n.pos, n.line, n.is_assign, n.decl, cmds)
        return n

    out = walk(root)
    assert isinstance(out, ListNode)
    return out


@functools.lru_cache(maxsize=128)
def parse(source: str) -> OllamaTemplate:
    """The template parsed (cached by text). Raises TemplateSyntaxError as Ollama's Parse
    fails."""
    return OllamaTemplate(source)


def template_vars(source: str) -> frozenset[str]:
    """Ollama's `Vars()`: the lower-cased field and variable names the template uses."""
    return parse(source).vars


def uses(source: str, name: str) -> bool:
    """Whether the template uses a value, as Ollama decides capabilities: `uses(src, "Tools")`
    (tools), "Suffix" (insert), "Messages" (messages mode), "Response", "Thinking"..."""
    return name.lower() in parse(source).vars


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _think_values(
    think: bool | str | None, think_level: str | None, is_think_set: bool
) -> tuple[bool, str, bool]:
    """`.Think .ThinkLevel .IsThinkSet` from a request's `think` (api.ThinkValue)."""
    if isinstance(think, str):
        value = think in ("high", "medium", "low", "max")
        level = think
    else:
        value = bool(think)
        level = "medium" if think is True else ""
    if think_level is not None:
        level = think_level
    return value, level, is_think_set or think is not None


def render_messages(
    template_src: str,
    *,
    system: str | None = None,
    messages: Sequence[MessageLike],
    tools: Sequence[Mapping[str, Any]] | None = None,
    think: bool | str | None = None,
    think_level: str | None = None,
    is_think_set: bool = False,
) -> str:
    """The prompt Ollama renders for a chat with this template.

    `messages` are wire-shaped dicts (`role`, `content`, `thinking`, `images`, `tool_calls`,
    `tool_name`, `tool_call_id`) or `domain.Message`s. A non-empty `system` is put first as a
    system message (Ollama does so with the model's SYSTEM when the chat does not start with a
    system message: that choice is the caller's). `tools` are wire-shaped tool definitions;
    None leaves `.Tools` nil. `think` is the request's value (bool or level string); the level
    defaults as Ollama's does ("medium" for true). Raises TemplateSyntaxError or
    TemplateExecError.
    """
    msgs = [_message(m) for m in messages]
    if system:
        msgs.insert(0, _Msg("system", system))
    value, level, is_set = _think_values(think, think_level, is_think_set)
    return parse(template_src).execute(
        msgs, tools=_tools(tools), think=value, think_level=level, is_think_set=is_set
    )


def render_generate(
    template_src: str,
    *,
    prompt: str,
    suffix: str = "",
    system: str | None = None,
    response: str = "",
    images: Sequence[bytes] = (),
    history: Sequence[MessageLike] = (),
    think: bool | str | None = None,
    think_level: str | None = None,
    is_think_set: bool = False,
) -> str:
    """The prompt Ollama renders for `/api/generate` (not raw).

    With a prompt and a suffix, the FIM values (`.Prompt .Suffix`). Otherwise the chat Ollama
    builds: `system` (the request's or the model's), `history` (the model's MESSAGEs), the
    prompt as a user message with `images`, and `response` as a started assistant reply when
    given; `.Tools` is an empty list, as in Ollama.
    """
    value, level, is_set = _think_values(think, think_level, is_think_set)
    tmpl = parse(template_src)
    if suffix:
        return tmpl.execute(
            [],
            prompt=prompt,
            suffix=suffix,
            think=value,
            think_level=level,
            is_think_set=is_set,
        )
    msgs = [_Msg("system", system)] if system else []
    msgs += [_message(m) for m in history]
    msgs.append(_Msg("user", prompt, images=tuple(images)))
    if response:
        msgs.append(_Msg("assistant", response))
    return tmpl.execute(
        msgs, tools=TemplateTools([]), think=value, think_level=level, is_think_set=is_set
    )
