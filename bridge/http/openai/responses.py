"""OpenAI's Responses API (/v1/responses) as Ollama's layer speaks it: stateless (no
`previous_response_id`, nothing stored), mapped onto one chat request.

Pure: no I/O. Ollama's choices are followed: ids `resp_N`, `msg_N`, `rs_...`, `fc_..._i`;
temperature defaults to 1.0 and top_p is sent only when given; a reasoning item's
`encrypted_content` is the thinking text itself, handed back as such. Streamed events carry
their keys sorted (Go writes them from maps), the final response object in struct order.
Ollama's built-in `web_search` tool needs ollama.com: bridge leaves it out of the tools.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping
from typing import Any

import orjson

from bridge.domain import ChatRequest, Chunk, Message, Metrics, Options, ToolCall
from bridge.errors import BridgeError, InvalidRequest
from bridge.http.goscan import GoSyntaxError, first_value_end
from bridge.http.jsonbody import Fields, decode_valid
from bridge.http.openai.wire import image_data_url, reasoning_think


@dataclasses.dataclass(frozen=True, slots=True)
class Meta:
    """What the reply echoes from the request, and its ids."""

    model: str
    response_id: str
    item_id: str
    instructions: str | None
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    truncation: str
    tools: tuple[Mapping[str, Any], ...]
    text_format: Mapping[str, Any] | None
    effort: str
    summary: str
    background: bool


def decode(data: dict[str, Any]) -> tuple[ChatRequest, bool, Meta]:
    """-> (the chat request, stream, what the reply echoes)."""
    f = Fields(data, "ResponsesRequest")
    messages: list[Message] = []
    instructions = f.string("instructions")
    if instructions:
        messages.append(Message(role="system", content=instructions))
    raw_input = f.raw("input")
    if isinstance(raw_input, str):
        if raw_input:
            messages.append(Message(role="user", content=raw_input))
    elif isinstance(raw_input, list):
        messages.extend(_items(raw_input))
    elif raw_input is not None:
        raise InvalidRequest(
            "input must be a string or array: json: cannot unmarshal "
            f"{_json_kind(raw_input)} into Go value of type []json.RawMessage"
        )
    reasoning = f.object("reasoning", "openai.ResponsesReasoning") or {}
    r = Fields(reasoning, "ResponsesRequest.reasoning")
    effort, summary = r.string("effort"), r.string("summary")
    temperature, top_p = f.number("temperature"), f.number("top_p")
    max_output = f.integer("max_output_tokens")
    tools = [_tool(t) for t in f.array("tools", "[]openai.ResponsesTool") or ()]
    text = f.object("text", "openai.ResponsesText") or {}
    text_format = text.get("format") if isinstance(text.get("format"), dict) else None
    fmt = None
    if text_format is not None and text_format.get("type") == "json_schema":
        fmt = text_format.get("schema")
    truncation = f.raw("truncation")
    req = ChatRequest(
        model=f.string("model"),
        messages=tuple(messages),
        options=Options(
            temperature=1.0 if temperature is None else temperature,
            top_p=top_p,
            num_predict=max_output,
        ),
        format=fmt,
        tools=tuple(t for tool in tools for t in _expand(tool)),
        think=reasoning_think(effort),
    )
    meta = Meta(
        model=req.model,
        response_id=f"resp_{random.randrange(999999)}",
        item_id=f"msg_{random.randrange(999999)}",
        instructions=instructions or None,
        temperature=temperature,
        top_p=top_p,
        max_output_tokens=max_output,
        truncation=truncation if isinstance(truncation, str) else "disabled",
        tools=tuple(tools),
        text_format=text_format,
        effort=effort,
        summary=summary,
        background=f.boolean("background", False),
    )
    return req, f.boolean("stream", False), meta


def _json_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return "object" if isinstance(v, dict) else "string"


def _items(items: list[Any]) -> list[Message]:
    """The input items in order, merged into chat messages as Ollama merges them."""
    messages: list[Message] = []
    pending_thinking = ""  # a reasoning item's text, for the assistant turn that follows
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(
                f"input[{i}]: json: cannot unmarshal {_json_kind(item)} into Go value of type "
                'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\"" }'
            )
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "reasoning":
            encrypted = item.get("encrypted_content")
            pending_thinking = encrypted if isinstance(encrypted, str) else ""
        elif kind == "message":
            content, images = _content(item.get("content"), f"input[{i}]: ")
            msg = Message(role=str(item.get("role", "")), content=content, images=images)
            if msg.role == "assistant" and pending_thinking:
                msg = dataclasses.replace(msg, thinking=pending_thinking)
                pending_thinking = ""
            # An assistant message between a function call and its output belongs to the
            # turn that made the call.
            following = items[i + 1] if i + 1 < len(items) else None
            output_call = (
                following.get("call_id")
                if isinstance(following, dict) and following.get("type") == "function_call_output"
                else None
            )
            last = messages[-1] if messages else None
            if (
                msg.role == "assistant"
                and output_call
                and last is not None
                and last.role == "assistant"
                and any(c.id == output_call for c in last.tool_calls)
            ):
                joined = last.content + ("\n" if last.content and msg.content else "") + msg.content
                messages[-1] = dataclasses.replace(
                    last,
                    content=joined,
                    images=last.images + msg.images,
                    thinking=msg.thinking or last.thinking,
                )
                continue
            messages.append(msg)
        elif kind == "function_call":
            call = ToolCall(
                name=str(item.get("name", "")),
                arguments=_arguments(item.get("arguments")),
                id=str(item.get("call_id", "")) or None,
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                messages[-1] = dataclasses.replace(
                    last,
                    tool_calls=(
                        *last.tool_calls,
                        dataclasses.replace(call, index=len(last.tool_calls)),
                    ),
                    thinking=pending_thinking or last.thinking,
                )
            else:
                messages.append(
                    Message(role="assistant", tool_calls=(call,), thinking=pending_thinking or None)
                )
            pending_thinking = ""
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                content, images = _content(output, f"input[{i}]: ", what="output")
            else:
                content, images = (output if isinstance(output, str) else ""), ()
            call_id = item.get("call_id")
            messages.append(
                Message(
                    role="tool",
                    content=content,
                    images=images,
                    tool_call_id=call_id if isinstance(call_id, str) and call_id else None,
                )
            )
        elif kind == "web_search_call":
            pass  # the record of a search Ollama ran; nothing for the model
        elif not kind:
            raise InvalidRequest(f"input[{i}]: input item missing required 'type' field")
        else:
            raise InvalidRequest(
                f"input[{i}]: unknown input item type: {orjson.dumps(kind).decode()}"
            )
    if pending_thinking:
        messages.append(Message(role="assistant", thinking=pending_thinking))
    return messages


def _content(value: Any, where: str, *, what: str = "content") -> tuple[str, tuple[bytes, ...]]:
    """A message's (or a function output's) parts: their text joined, their images."""
    if value is None:
        return "", ()
    if isinstance(value, str):
        return value, ()
    if not isinstance(value, list):
        raise InvalidRequest(
            f"{where}{what} must be a string or array: json: cannot unmarshal "
            f"{_json_kind(value)} into Go value of type []json.RawMessage"
        )
    text: list[str] = []
    images: list[bytes] = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            text.append(str(part.get("text", "")))
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, str) and url:  # a file_id alone is not supported: skipped
                images.append(image_data_url(url))
        elif kind == "input_file":
            raise InvalidRequest("file inputs are not currently supported")
        else:
            raise InvalidRequest(f"{where}{what}[{j}]: unknown content type: {kind or ''}")
    return "".join(text), tuple(images)


def _arguments(value: Any) -> dict[str, Any]:
    """A function call's arguments: a JSON object in a string (empty: none)."""
    if not value:
        return {}
    text = value if isinstance(value, str) else ""
    prefix = "failed to parse function call arguments: "
    try:
        end = first_value_end(text.encode())
    except GoSyntaxError as exc:
        message = (
            "unexpected end of JSON input" if str(exc) in ("EOF", "unexpected EOF") else str(exc)
        )
        raise InvalidRequest(prefix + message) from None
    rest = text.encode()[end:].lstrip(b" \t\r\n")
    if rest:
        raise InvalidRequest(f"{prefix}invalid character {chr(rest[0])!r} after top-level value")
    args = decode_valid(text.encode())
    if args is None:  # null: no arguments, as Go's map stays nil
        return {}
    if not isinstance(args, dict):
        raise InvalidRequest(
            f"{prefix}json: cannot unmarshal {_json_kind(args)} into Go value of type map[string]interface {{}}"
        )
    return args


def _tool(value: Any, path: str = "ResponsesRequest.tools") -> Mapping[str, Any]:
    """A tool, its fields checked as Go's decoder checks ResponsesTool's."""
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
            f"{path} of type openai.ResponsesTool"
        )
    f = Fields(value, path)
    for field in ("type", "name"):
        f.string(field)
    f.opt_string("description")
    f.object("parameters")
    for member in f.array("tools", "[]openai.ResponsesTool") or ():
        _tool(member, f"{path}.tools")
    return value


def _expand(tool: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Responses tool as native function tools: a namespace's members named `ns.member`;
    Ollama's built-in web_search is left out (it runs on ollama.com)."""
    kind = tool.get("type")
    if kind == "web_search":
        return []
    if kind == "namespace":
        prefix = f"{tool.get('name')}." if tool.get("name") else ""
        out: list[dict[str, Any]] = []
        for member in tool.get("tools") or ():
            for t in _expand(member):
                name = t["function"]["name"]
                if prefix and not name.startswith(prefix):
                    t["function"]["name"] = prefix + name
                out.append(t)
        return out
    function: dict[str, Any] = {"name": tool.get("name", "")}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or {"type": "", "properties": {}}
    return [{"type": kind or "", "function": function}]


# --- replies -------------------------------------------------------------------------------


class _Raw(dict[str, Any]):
    """A JSON object Go passes through as it came (a json.RawMessage): never re-sorted."""


def _go_sorted(value: Any) -> Any:
    """`value` as Go marshals a map[string]any: keys sorted, at every depth."""
    if isinstance(value, _Raw):
        return value
    if isinstance(value, dict):
        return {k: _go_sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_go_sorted(v) for v in value]
    return value


def _go_number(x: float) -> float | int:
    return int(x) if x.is_integer() and abs(x) < 2**53 else x  # Go writes 1, not 1.0


def _tool_out(t: Mapping[str, Any], *, streamed: bool) -> dict[str, Any]:
    """A request tool as the reply echoes it: Go's ResponsesTool in field order, its
    parameters (a Go map) sorted; streamed, a map of five keys."""
    out = {
        "type": t.get("type", ""),
        "name": t.get("name", ""),
        "description": t.get("description"),
        "strict": t.get("strict"),
        "parameters": _go_sorted(t.get("parameters")),
    }
    if t.get("tools") and not streamed:
        out["tools"] = [_tool_out(m, streamed=False) for m in t["tools"]]
    return out


def _usage(m: Metrics | None) -> dict[str, Any]:
    p = m.prompt_eval_count if m else 0
    c = m.eval_count if m else 0
    return {
        "input_tokens": p,
        "output_tokens": c,
        "total_tokens": p + c,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _arguments_text(call: ToolCall) -> str:
    return orjson.dumps(dict(call.arguments)).decode()


def _response(
    meta: Meta,
    *,
    status: str,
    output: list[Any],
    usage: dict[str, Any] | None,
    created: int,
    completed: int | None,
    error: dict[str, Any] | None = None,
    streamed: bool = False,
) -> dict[str, Any]:
    """The response object: Go's struct (stream false) or the map its stream builds, whose
    `reasoning` keeps null fields the struct leaves out."""
    reasoning: dict[str, Any] | None = None
    if streamed and (meta.effort or meta.summary):
        reasoning = {"effort": meta.effort or None, "summary": meta.summary or None}
    elif meta.effort or meta.summary:
        reasoning = {k: v for k, v in (("effort", meta.effort), ("summary", meta.summary)) if v}
    fmt: Any = {"type": "text"}
    if meta.text_format is not None:
        fmt = {"type": meta.text_format.get("type", "")}
        for key in ("name", "schema", "strict"):
            value = meta.text_format.get(key)
            if value is not None:
                fmt[key] = _Raw(value) if isinstance(value, dict) else value
    return {
        "id": meta.response_id,
        "object": "response",
        "created_at": created,
        "completed_at": completed,
        "status": status,
        "incomplete_details": None,
        "model": meta.model,
        "previous_response_id": None,
        "instructions": meta.instructions,
        "output": output,
        "error": error,
        "tools": [_tool_out(t, streamed=streamed) for t in meta.tools],
        "tool_choice": "auto",
        "truncation": meta.truncation,
        "parallel_tool_calls": True,
        "text": {"format": fmt},
        "top_p": _go_number(1.0 if meta.top_p is None else meta.top_p),
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": _go_number(1.0 if meta.temperature is None else meta.temperature),
        "reasoning": reasoning,
        "usage": usage,
        "max_output_tokens": meta.max_output_tokens,
        "max_tool_calls": None,
        "store": False,
        "background": meta.background,
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


def response(
    meta: Meta, text: str, thinking: str, calls: list[ToolCall], final: Chunk
) -> dict[str, Any]:
    """The whole reply (stream false): reasoning, then the function calls or the message."""
    output: list[Any] = []
    rid = meta.response_id
    if thinking:
        output.append(
            {
                "id": f"rs_{rid}",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": thinking}],
                "encrypted_content": thinking,
            }
        )
    if calls:
        for i, c in enumerate(calls):
            output.append(
                {
                    "id": f"fc_{rid}_{i}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": c.id or "",
                    "name": c.name,
                    "arguments": _arguments_text(c),
                }
            )
    else:
        output.append(
            {
                "id": meta.item_id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [_text_block(text)],
            }
        )
    now = int(time.time())
    return _response(
        meta,
        status="completed",
        output=output,
        usage=_usage(final.metrics),
        created=now,
        completed=now,
    )


class StreamEvents:
    """Chunks -> the `response.*` events, in Ollama's order."""

    def __init__(self, meta: Meta) -> None:
        self.meta = meta
        self.item_id = meta.item_id
        self.seq = 0
        self.first = True
        self.index = 0  # the output index of the item being written
        self.text = ""
        self.text_started = False
        self.calls_sent = False
        self.thinking = ""
        self.reasoning_id = ""
        self.completed: list[Any] = []

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data["type"] = kind
        data["sequence_number"] = self.seq
        self.seq += 1
        body = orjson.dumps(_go_sorted(data))  # Go marshals maps sorted
        return b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n"

    def _object(
        self, status: str, output: list[Any], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        return _response(
            self.meta,
            status=status,
            output=output,
            usage=usage,
            created=int(time.time()),
            completed=None,
            streamed=True,
        )

    def feed(self, c: Chunk) -> list[bytes]:
        out: list[bytes] = []
        if self.first:
            self.first = False
            for kind in ("response.created", "response.in_progress"):
                out.append(self._event(kind, {"response": self._object("in_progress", [], None)}))
        if c.thinking:
            out += self._thinking(c.thinking)
        if c.tool_calls:
            out += self._finish_reasoning()
            out += self._calls(c.tool_calls)
            self.calls_sent = True
        if not c.tool_calls and not self.calls_sent and c.text:
            out += self._text(c.text)
        if c.done:
            out += self._complete(c)
        return out

    def failed(self, exc: BridgeError) -> bytes:
        response = self._object("failed", self._output(), None)
        response["error"] = {"code": "api_error", "message": exc.message}
        return self._event("response.failed", {"response": response})

    def _thinking(self, piece: str) -> list[bytes]:
        out: list[bytes] = []
        if not self.reasoning_id:
            self.reasoning_id = f"rs_{random.randrange(999999)}"
            item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
            out.append(
                self._event(
                    "response.output_item.added", {"output_index": self.index, "item": item}
                )
            )
        self.thinking += piece
        delta = {
            "item_id": self.reasoning_id,
            "output_index": self.index,
            "summary_index": 0,
            "delta": piece,
        }
        out.append(self._event("response.reasoning_summary_text.delta", delta))
        return out

    def _finish_reasoning(self) -> list[bytes]:
        if not self.reasoning_id:
            return []
        item = {
            "id": self.reasoning_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": self.thinking}],
            "encrypted_content": self.thinking,
        }
        self.completed.append(item)
        done = {
            "item_id": self.reasoning_id,
            "output_index": self.index,
            "summary_index": 0,
            "text": self.thinking,
        }
        out = [
            self._event("response.reasoning_summary_text.done", done),
            self._event("response.output_item.done", {"output_index": self.index, "item": item}),
        ]
        self.thinking, self.reasoning_id = "", ""
        self.index += 1
        return out

    def _calls(self, calls: tuple[ToolCall, ...]) -> list[bytes]:
        out: list[bytes] = []
        for i, c in enumerate(calls):
            index = self.index + i
            fid = f"fc_{random.randrange(999999)}_{i}"
            args = _arguments_text(c)
            item = {
                "id": fid,
                "type": "function_call",
                "status": "completed",
                "call_id": c.id or "",
                "name": c.name,
                "arguments": args,
            }
            self.completed.append(item)
            added = {**item, "status": "in_progress", "arguments": ""}
            out += [
                self._event("response.output_item.added", {"output_index": index, "item": added}),
                self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": fid, "output_index": index, "delta": args},
                ),
                self._event(
                    "response.function_call_arguments.done",
                    {"item_id": fid, "output_index": index, "arguments": args},
                ),
                self._event("response.output_item.done", {"output_index": index, "item": item}),
            ]
        self.index += len(calls)
        return out

    def _message(self, status: str, content: list[Any]) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _text(self, piece: str) -> list[bytes]:
        out = self._finish_reasoning()
        where = {"item_id": self.item_id, "output_index": self.index}
        if not self.text_started:
            self.text_started = True
            out.append(
                self._event(
                    "response.output_item.added",
                    {"output_index": self.index, "item": self._message("in_progress", [])},
                )
            )
            out.append(
                self._event(
                    "response.content_part.added",
                    {**where, "content_index": 0, "part": _text_block("")},
                )
            )
        self.text += piece
        out.append(
            self._event(
                "response.output_text.delta",
                {**where, "content_index": 0, "delta": piece, "logprobs": []},
            )
        )
        return out

    def _output(self) -> list[Any]:
        output = list(self.completed)
        if self.text_started:
            output.append(self._message("completed", [_text_block(self.text)]))
        return output

    def _complete(self, c: Chunk) -> list[bytes]:
        out = self._finish_reasoning()
        if not self.calls_sent and self.text_started:
            where = {"item_id": self.item_id, "output_index": self.index, "content_index": 0}
            out += [
                self._event(
                    "response.output_text.done", {**where, "text": self.text, "logprobs": []}
                ),
                self._event(
                    "response.content_part.done", {**where, "part": _text_block(self.text)}
                ),
                self._event(
                    "response.output_item.done",
                    {
                        "output_index": self.index,
                        "item": self._message("completed", [_text_block(self.text)]),
                    },
                ),
            ]
        response = self._object("completed", self._output(), _usage(c.metrics))
        response["completed_at"] = int(time.time())
        out.append(self._event("response.completed", {"response": response}))
        return out
