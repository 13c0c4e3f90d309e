"""Decoding an Anthropic Messages request into the domain, as Ollama's anthropic package does.

Pure: no I/O. Ollama decodes the body into its Go structs first (so a field of the wrong type is
Go's unmarshal error, named by its path from MessagesRequest), then checks `model`,
`max_tokens` and `messages`, then converts block by block. `tool_choice` and `metadata` are
read and ignored, `budget_tokens` is not enforced, and `thinking` that a model cannot do is
dropped rather than refused (the route's business: see `routes._chat`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.domain import ChatRequest, Message, Options, ToolCall
from bridge.errors import InvalidRequest
from bridge.http.jsonbody import Fields, json_type
from bridge.models.store_writer import go_json

ROOT = "MessagesRequest"
# The Go type MessageParam.UnmarshalJSON decodes a message into first.
_RAW_MESSAGE = (
    'struct { Role string "json:\\"role\\""; Content json.RawMessage "json:\\"content\\"" }'
)
_EFFORTS = ("high", "medium", "low", "max")
_WEB_SEARCH = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web for current information. "
        "Use this to find up-to-date information about any topic.",
        "parameters": {
            "type": "object",
            "required": ["query"],
            "properties": {
                "query": {"type": "string", "description": "The search query to look up on the web"}
            },
        },
    },
}


@dataclass(frozen=True, slots=True)
class Decoded:
    request: ChatRequest
    stream: bool
    # The body as Ollama's structs hold it, for its token estimate (`estimate.input_tokens`).
    params: list[Param]
    system: Any
    tools: list[dict[str, Any]]


@dataclass(slots=True)
class Block:
    """anthropic.ContentBlock: None marks a field left out (Go's nil pointer / omitted)."""

    type: str = ""
    text: str | None = None
    citations: list[dict[str, Any]] | None = None
    source: dict[str, Any] | None = None
    id: str = ""
    name: str = ""
    input: dict[str, Any] | None = None  # {} for `null` too: the field was there
    input_null: bool = False
    tool_use_id: str = ""
    content: Any = None
    is_error: bool = False
    thinking: str | None = None
    signature: str = ""


@dataclass(slots=True)
class Param:
    """anthropic.MessageParam: plain string content is one text block."""

    role: str
    content: list[Block]


def _type_error(value: Any, field: str, go_type: str) -> InvalidRequest:
    return InvalidRequest(
        f"json: cannot unmarshal {json_type(value)} into Go struct field {ROOT}.{field} "
        f"of type {go_type}"
    )


def _int(f: Fields, name: str) -> int | None:
    """An int field: Go's decoder refuses any number with a fraction or an exponent."""
    v = f.raw(name)
    if isinstance(v, float):
        raise InvalidRequest(
            f"json: cannot unmarshal number {v!r} into Go struct field {f.struct}.{name} of type int"
        )
    return f.integer(name)


# --- the body, as Go decodes it into anthropic.MessagesRequest --------------------------------


def decode_messages(data: dict[str, Any]) -> Decoded:
    """A decoded body -> the chat request, or InvalidRequest with Ollama's text."""
    f = Fields(data, ROOT)
    model = f.string("model")
    max_tokens = _int(f, "max_tokens") or 0
    params = [_param(m) for m in f.array("messages", "[]anthropic.MessageParam") or ()]
    system = f.raw("system")
    stream = f.boolean("stream", False)
    temperature = f.number("temperature")
    top_p = f.number("top_p")
    top_k = _int(f, "top_k")
    stop = f.str_array("stop_sequences")
    tools = [_tool_fields(t) for t in f.array("tools", "[]anthropic.Tool") or ()]
    # Read (so a wrong type is refused, as in Go) and otherwise ignored, as Ollama does.
    _struct(
        f,
        "tool_choice",
        "anthropic.ToolChoice",
        ("type", "name"),
        bools=("disable_parallel_tool_use",),
    )
    _struct(f, "metadata", "anthropic.Metadata", ("user_id",))
    thinking = _struct(
        f, "thinking", "anthropic.ThinkingConfig", ("type",), ints=("budget_tokens",)
    )
    effort = _struct(f, "output_config", "anthropic.OutputConfig", ("effort",))

    if not model:
        raise InvalidRequest("model is required")
    if max_tokens <= 0:
        raise InvalidRequest("max_tokens is required and must be positive")
    if not params:
        raise InvalidRequest("messages is required")

    messages = _system(system)
    for p in params:
        messages.extend(_convert(p))
    opts = Options(
        num_predict=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=tuple(stop) if stop else None,
    )
    req = ChatRequest(
        model=model,
        messages=tuple(messages),
        options=opts,
        tools=tuple(_tools(tools)),
        think=_think(thinking.get("type", ""), effort.get("effort")),
    )
    return Decoded(req, stream, params, system, tools)


def _struct(
    f: Fields,
    name: str,
    go_type: str,
    strings: tuple[str, ...],
    *,
    ints: tuple[str, ...] = (),
    bools: tuple[str, ...] = (),
) -> dict[str, str]:
    """A pointer-to-struct field, its members type-checked: its strings ({} if absent)."""
    obj = f.object(name, go_type)
    if obj is None:
        return {}
    sub = Fields(obj, f"{ROOT}.{name}")
    for k in ints:
        _int(sub, k)
    for k in bools:
        sub.boolean(k, False)
    return {k: sub.string(k) for k in strings}


def _think(kind: str, effort: str | None) -> bool | str | None:
    if kind == "enabled":
        return True
    if kind == "disabled":
        return False
    level = (effort or "").strip().lower()
    if level == "xhigh":
        level = "high"
    return level if level in _EFFORTS else None


def _param(m: Any) -> Param:
    """MessageParam.UnmarshalJSON: the role, then content as a string or else as blocks."""
    if m is None:
        m = {}
    if not isinstance(m, dict):
        raise _type_error(m, "messages", _RAW_MESSAGE)
    role = Fields(m, f"{ROOT}.messages").string("role")
    if "content" not in m:
        raise InvalidRequest("unexpected end of JSON input")  # no content to decode
    content = m["content"]
    if content is None:
        return Param(role, [Block(type="text", text="")])
    if isinstance(content, str):
        return Param(role, [Block(type="text", text=content)])
    if not isinstance(content, list):
        raise _type_error(content, "messages", "[]anthropic.ContentBlock")
    return Param(role, [decode_block(b) for b in content])


def decode_block(b: Any) -> Block:
    """One content block as Go decodes it into anthropic.ContentBlock."""
    if b is None:
        return Block()
    if not isinstance(b, dict):
        raise _type_error(b, "messages", "anthropic.ContentBlock")
    f = Fields(b, f"{ROOT}.messages")
    block = Block(
        type=f.string("type"),
        text=f.opt_string("text"),
        id=f.string("id"),
        name=f.string("name"),
        tool_use_id=f.string("tool_use_id"),
        content=b.get("content"),
        is_error=f.boolean("is_error", False),
        thinking=f.opt_string("thinking"),
        signature=f.string("signature"),
    )
    citations = f.array("citations", "[]anthropic.Citation")
    if citations:
        block.citations = [_citation(c) for c in citations]
    source = f.object("source", "anthropic.ImageSource")
    if source is not None:
        s = Fields(source, f"{ROOT}.messages.source")
        block.source = {k: s.string(k) for k in ("type", "media_type", "data", "url")}
    if "input" in b:
        value = b["input"]
        if value is not None and not isinstance(value, dict):
            raise InvalidRequest("Value is not an object")  # the ordered map's own word
        block.input = value or {}
        block.input_null = value is None
    return block


def _citation(c: Any) -> dict[str, Any]:
    if c is None:
        c = {}
    if not isinstance(c, dict):
        raise _type_error(c, "messages.citations", "anthropic.Citation")
    f = Fields(c, f"{ROOT}.messages.citations")
    out = {k: f.string(k) for k in ("type", "url", "title")}
    for k in ("encrypted_index", "cited_text"):
        if v := f.string(k):
            out[k] = v
    return out


def _tool_fields(t: Any) -> dict[str, Any]:
    if t is None:
        t = {}
    if not isinstance(t, dict):
        raise _type_error(t, "tools", "anthropic.Tool")
    f = Fields(t, f"{ROOT}.tools")
    out: dict[str, Any] = {k: f.string(k) for k in ("type", "name", "description")}
    _int(f, "max_uses")
    out["input_schema"] = t.get("input_schema")
    # Ollama counts the schema's raw bytes (json.RawMessage; "null" too); compact JSON here,
    # which is what the SDKs send.
    out["schema_len"] = len(orjson.dumps(t["input_schema"])) if "input_schema" in t else 0
    return out


# --- conversion (anthropic.FromMessagesRequest) ------------------------------------------------


def _system(system: Any) -> list[Message]:
    if isinstance(system, str):
        text = system
    elif isinstance(system, list):
        text = "".join(
            b["text"]
            for b in system
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
    else:
        return []
    return [Message(role="system", content=text)] if text else []


def _convert(p: Param) -> list[Message]:
    """One message's blocks -> native messages: its text, images, tool calls and thinking in
    one message; tool results as tool messages, before it for a user, after it otherwise."""
    role = p.role.lower()
    text: list[str] = []
    images: list[bytes] = []
    calls: list[ToolCall] = []
    thinking = ""
    results: list[Message] = []
    for b in p.content:
        if b.type == "text":
            text.append(b.text or "")
        elif b.type == "image":
            if b.source is None:
                raise InvalidRequest("invalid image source")
            images.append(_image(b.source.get("type", ""), b.source.get("data", "")))
        elif b.type == "tool_use":
            if not b.id:
                raise InvalidRequest("tool_use block missing required 'id' field")
            if not b.name:
                raise InvalidRequest("tool_use block missing required 'name' field")
            calls.append(ToolCall(name=b.name, arguments=b.input or {}, id=b.id))
        elif b.type == "server_tool_use":
            calls.append(ToolCall(name=b.name, arguments=b.input or {}, id=b.id or None))
        elif b.type == "tool_result":
            content, imgs = _tool_result(b.content)
            results.append(
                Message(role="tool", content=content, images=imgs, tool_call_id=b.tool_use_id)
            )
        elif b.type == "web_search_tool_result":
            results.append(
                Message(role="tool", content=_search_result(b.content), tool_call_id=b.tool_use_id)
            )
        elif b.type == "thinking" and b.thinking is not None:
            thinking = b.thinking
    out: list[Message] = results if role == "user" else []
    joined = "".join(text)
    if joined or images or calls or thinking:
        out.append(
            Message(
                role=role,
                content=joined,
                images=tuple(images),
                thinking=thinking or None,
                tool_calls=tuple(calls),
            )
        )
    if role != "user":
        out.extend(results)
    return out


def _image(kind: str, data: str) -> bytes:
    if kind != "base64":
        raise InvalidRequest(
            f"invalid image source type: {kind}. Only base64 images are supported."
        )
    raw = data.encode()
    bad = _corrupt_at(raw)
    if bad is not None:
        raise InvalidRequest(f"invalid base64 image data: illegal base64 data at input byte {bad}")
    return base64.b64decode(raw.replace(b"\r", b"").replace(b"\n", b""), validate=True)


_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_BREAKS = (ord("\r"), ord("\n"))


def _corrupt_at(src: bytes) -> int | None:
    """Where Go's base64.StdEncoding gives up on `src` (its CorruptInputError), or None: it
    skips line breaks, wants the padding, and nothing after it."""
    si, n = 0, len(src)
    while True:
        j = 0
        while j < 4:
            if si == n:
                return None if j == 0 else si - j
            c = src[si]
            si += 1
            if c in _ALPHABET:
                j += 1
                continue
            if c in _BREAKS:
                continue
            if c != ord("=") or j < 2:
                return si - 1
            if j == 2:  # a second "=" must follow
                while si < n and src[si] in _BREAKS:
                    si += 1
                if si == n:
                    return n
                if src[si] != ord("="):
                    return si - 1
                si += 1
            while si < n and src[si] in _BREAKS:
                si += 1
            return si if si < n else None


def _tool_result(content: Any) -> tuple[str, tuple[bytes, ...]]:
    if isinstance(content, str):
        return content, ()
    if not isinstance(content, list):
        return "", ()
    text: list[str] = []
    images: list[bytes] = []
    for item in content:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text" and isinstance(item.get("text"), str):
            text.append(item["text"])
        elif item.get("type") == "image":
            source = item.get("source")
            if not isinstance(source, dict):
                raise InvalidRequest("invalid tool_result image source")
            kind, data = source.get("type"), source.get("data")
            images.append(
                _image(kind if isinstance(kind, str) else "", data if isinstance(data, str) else "")
            )
    return "".join(text), tuple(images)


def _search_result(content: Any) -> str:
    """A web_search_tool_result's content as the model reads it."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        lines: list[str] = []
        for item in content:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "web_search_result":
                title, url = item.get("title"), item.get("url")
                title = title if isinstance(title, str) else ""
                url = url if isinstance(url, str) else ""
                lines.append(f"- {title}: {url}\n")
            elif item.get("type") == "web_search_tool_result_error":
                return _search_error(item)
        return "".join(lines)
    if isinstance(content, dict) and content.get("type") == "web_search_tool_result_error":
        return _search_error(content)
    return go_json(content, sort_keys=True, newline=False).decode()


def _search_error(item: dict[str, Any]) -> str:
    code = item.get("error_code")
    code = code if isinstance(code, str) else ""
    return f"web_search_tool_result_error: {code}" if code else "web_search_tool_result_error"


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Native tool definitions. A built-in web_search becomes Ollama's `web_search` function
    (and a custom tool of that name is then dropped); bridge runs no search of its own, so a
    call to it comes back as an ordinary tool_use."""
    builtin = any(t["type"].startswith("web_search") for t in tools)
    out: list[dict[str, Any]] = []
    for t in tools:
        if t["type"].startswith("web_search"):
            out.append(_WEB_SEARCH)
            continue
        if builtin and t["name"] == "web_search":
            continue
        out.append(
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t["description"],
                    "parameters": _schema(t["name"], t["input_schema"]),
                },
            }
        )
    return out


def _schema(name: str, schema: Any) -> dict[str, Any]:
    """input_schema, checked as Go decodes it into api.ToolFunctionParameters."""

    def bad(detail: str) -> InvalidRequest:
        label = orjson.dumps(name).decode()
        return InvalidRequest(f"invalid input_schema for tool {label}: {detail}")

    def field(value: Any, key: str, go_type: str) -> InvalidRequest:
        return bad(
            f"json: cannot unmarshal {json_type(value)} into Go struct field "
            f"ToolFunctionParameters.{key} of type {go_type}"
        )

    if schema is None:
        return {}
    if not isinstance(schema, dict):
        go_type = "api.ToolFunctionParameters"
        raise bad(f"json: cannot unmarshal {json_type(schema)} into Go value of type {go_type}")
    kind, required, props = schema.get("type"), schema.get("required"), schema.get("properties")
    if kind is not None and not isinstance(kind, str):
        raise field(kind, "type", "string")
    if required is not None:
        if not isinstance(required, list):
            raise field(required, "required", "[]string")
        for item in required:
            if not isinstance(item, str):
                raise field(item, "required", "string")
    if props is not None and not isinstance(props, dict):
        raise bad("Value is not an object")  # the ordered map's own word
    return schema
