"""OpenAI's /v1/* wire format, converted to and from the domain the way Ollama's layer does.

Pure: no I/O. Ollama's choices are followed (temperature and top_p default to 1.0, `model` is
echoed, `system_fingerprint` is "fp_ollama"), with two additions Ollama users ask for:
`max_completion_tokens` is honoured and `keep_alive` is accepted as a top-level field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import random
import re
import time
from typing import Any

import numpy as np
import orjson

from bridge.domain import (
    ChatRequest,
    Chunk,
    Embeddings,
    EmbedRequest,
    GenerateRequest,
    Message,
    Metrics,
    ModelSpec,
    Options,
    TokenLogprob,
    ToolCall,
)
from bridge.durations import InvalidDuration, parse_keep_alive
from bridge.errors import BridgeError, InvalidRequest
from bridge.http.errors import error_body, status_of
from bridge.http.jsonbody import Fields
from bridge.http.ollama.wire import debug_info, top_logprobs
from bridge.http.ollama.wire import logprobs as native_logprobs

_DATA_URL = re.compile(r"^data:(?:image/(?:jpeg|jpg|png|webp))?;base64,(.*)$", re.DOTALL)


def _keep_alive(f: Fields) -> float | None:
    try:
        return parse_keep_alive(f.raw("keep_alive"))
    except InvalidDuration as exc:
        raise InvalidRequest(str(exc), param="keep_alive") from exc


def _stop(f: Fields, *, strict: bool) -> tuple[str, ...] | None:
    """A string or a list; `strict` (completions): a non-string item is an error, where chat
    drops it. Any other type is ignored, as Ollama's type switch does."""
    v = f.raw("stop")
    if isinstance(v, str):
        return (v,)
    if not isinstance(v, list):
        return None
    if strict:
        for item in v:
            if not isinstance(item, str):
                raise InvalidRequest(f"invalid type for 'stop' field: {_go_type(item)}")
    return tuple(item for item in v if isinstance(item, str))


def _go_type(v: Any) -> str:
    """What Go's %T prints for a decoded JSON value."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "float64"
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, list):
        return "[]interface {}"
    return "string"


def _format(f: Fields) -> Any:
    rf = f.object("response_format")
    if not rf:
        return None
    kind = rf.get("type")
    kind = kind.strip().lower() if isinstance(kind, str) else ""
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = rf.get("json_schema")
        return schema.get("schema") if isinstance(schema, dict) else None
    return None  # other types are ignored


def _max_tokens(f: Fields) -> int | None:
    n = f.integer("max_tokens")
    return n if n is not None else f.integer("max_completion_tokens")


def decode_chat(data: dict[str, Any]) -> tuple[ChatRequest, bool, bool]:
    """-> (request, stream, include_usage)."""
    f = Fields(data, "ChatCompletionRequest")
    raw_messages = f.array("messages", "[]openai.Message")
    if not raw_messages:
        raise InvalidRequest("[] is too short - 'messages'", param="messages")
    messages: list[Message] = []
    for m in raw_messages:
        messages.extend(_messages(m, messages))
    temperature = f.number("temperature")
    top_p = f.number("top_p")
    opts = Options(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        num_predict=_max_tokens(f),
        seed=f.integer("seed"),
        stop=_stop(f, strict=False),
        frequency_penalty=f.number("frequency_penalty"),
        presence_penalty=f.number("presence_penalty"),
    )
    req = ChatRequest(
        model=f.string("model"),
        messages=tuple(messages),
        options=opts,
        format=_format(f),
        tools=tuple(t for t in (f.array("tools") or ()) if isinstance(t, dict)),
        keep_alive=_keep_alive(f),
        think=_reasoning(f),
        logprobs=f.boolean("logprobs", False),
        top_logprobs=top_logprobs(f),
        debug_render_only=f.boolean("_debug_render_only", False),
    )
    so = f.object("stream_options") or {}
    return req, f.boolean("stream", False), bool(so.get("include_usage"))


_EFFORTS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def _reasoning(f: Fields) -> bool | str | None:
    """`reasoning.effort` when a `reasoning` object is sent, else `reasoning_effort`."""
    reasoning = f.object("reasoning", "openai.Reasoning")
    if reasoning is not None:
        return reasoning_think(
            Fields(reasoning, "ChatCompletionRequest.reasoning").string("effort")
        )
    return reasoning_think(f.string("reasoning_effort"))


def reasoning_think(effort: str) -> bool | str | None:
    """An OpenAI reasoning effort as a native `think` value; empty leaves thinking at the
    model's default."""
    if not effort:
        return None
    if effort not in _EFFORTS:
        raise InvalidRequest(
            f"invalid reasoning value: {orjson.dumps(effort).decode()} (must be "
            '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")'
        )
    return _EFFORTS[effort]


def _messages(m: Any, earlier: list[Message]) -> list[Message]:
    """One OpenAI message -> native messages, as Ollama's layer maps them: array content
    gives a message per part; tool calls, their id and the reasoning go on the last one."""
    if not isinstance(m, dict):
        raise InvalidRequest("invalid message format")
    # Lower-cased: Ollama's layer passes the role on as sent, but api.Message's decoding,
    # which every request goes through next, lower-cases it.
    role = str(m.get("role", "")).lower()
    content = m.get("content")
    raw_calls = m.get("tool_calls")
    calls = tuple(_tool_calls(raw_calls))
    thinking = m.get("reasoning") if isinstance(m.get("reasoning"), str) else None
    tool_call_id = m.get("tool_call_id") if isinstance(m.get("tool_call_id"), str) else None
    tool_name = None
    if role == "tool":
        tool_name = m.get("name") if isinstance(m.get("name"), str) and m["name"] else None
        if tool_name is None and tool_call_id:
            tool_name = next(
                (
                    c.name
                    for msg in reversed(earlier)
                    for c in msg.tool_calls
                    if c.id == tool_call_id
                ),
                None,
            )
    if isinstance(content, str):
        return [
            Message(
                role=role,
                content=content,
                thinking=thinking,
                tool_calls=calls,
                tool_name=tool_name,
                tool_call_id=tool_call_id,
            )
        ]
    if not isinstance(content, list):
        if raw_calls is None:  # content may be left out only beside tool calls
            raise InvalidRequest(f"invalid message content type: {_go_type(content)}")
        return [
            Message(
                role=role,
                content="",
                thinking=thinking,
                tool_calls=calls,
                tool_call_id=tool_call_id,
            )
        ]
    parts = [_part(role, part) for part in content]
    if raw_calls:
        # Onto the last message so far (a part's, or an earlier message's if there were none).
        target = parts if parts else earlier
        if target:
            target[-1] = dataclasses.replace(
                target[-1],
                tool_calls=calls,
                tool_name=tool_name,
                tool_call_id=tool_call_id,
                thinking=thinking,
            )
    return parts


def _part(role: str, part: Any) -> Message:
    if not isinstance(part, dict):
        raise InvalidRequest("invalid message format")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest("invalid message format")
        return Message(role=role, content=text)
    if kind == "image_url":
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
        if not isinstance(url, str):
            raise InvalidRequest("invalid message format")
        return Message(role=role, content="", images=(image_data_url(url),))
    if kind == "input_audio":  # attached as an image is, for models that take audio
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise InvalidRequest("invalid input_audio format")
        data = audio.get("data")
        if not isinstance(data, str):
            raise InvalidRequest("invalid input_audio format: missing data")
        try:
            return Message(role=role, content="", images=(base64.b64decode(data, validate=True),))
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"invalid input_audio base64 data: {exc}") from exc
    raise InvalidRequest("invalid message format")


def image_data_url(url: str) -> bytes:
    """A `data:` URL's image bytes, as Ollama's layer accepts them."""
    if url.startswith(("http://", "https://")):
        raise InvalidRequest(
            "image URLs are not currently supported, please use base64 encoded data instead"
        )
    m = _DATA_URL.match(url)
    if not m:
        raise InvalidRequest("invalid image input")
    try:
        return base64.b64decode(m.group(1), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("invalid image input") from exc


def _tool_calls(value: Any) -> list[ToolCall]:
    calls: list[ToolCall] = []
    for i, c in enumerate(value or ()):
        fn = c.get("function") if isinstance(c, dict) else None
        args_text = fn.get("arguments") if isinstance(fn, dict) else None
        # Arguments must be a JSON object in a string; "null" counts as none, as in Go.
        try:
            args = orjson.loads(args_text) if isinstance(args_text, str) else ()
        except orjson.JSONDecodeError:
            args = ()
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InvalidRequest("invalid tool call arguments")
        assert isinstance(fn, dict)
        calls.append(
            ToolCall(
                name=str(fn.get("name", "")),
                arguments=args,
                index=i,
                id=c.get("id") if isinstance(c.get("id"), str) else None,
            )
        )
    return calls


def decode_completion(data: dict[str, Any]) -> tuple[GenerateRequest, bool, bool]:
    f = Fields(data, "CompletionRequest")
    prompt = f.string("prompt")
    temperature = f.number("temperature")
    top_p = f.number("top_p")
    opts = Options(
        temperature=1.0 if temperature is None else temperature,
        top_p=top_p if top_p else 1.0,
        num_predict=_max_tokens(f),
        seed=f.integer("seed"),
        stop=_stop(f, strict=True),
        frequency_penalty=f.number("frequency_penalty") or 0.0,
        presence_penalty=f.number("presence_penalty") or 0.0,
    )
    # Legacy completions take `logprobs` as the number of alternatives; > 0 turns them on.
    n = max(f.integer("logprobs") or 0, 0)
    if n > 20:  # what the native layer answers for top_logprobs
        raise InvalidRequest("top_logprobs must be between 0 and 20")
    req = GenerateRequest(
        model=f.string("model"),
        prompt=prompt,
        suffix=f.string("suffix"),
        options=opts,
        keep_alive=_keep_alive(f),
        logprobs=n > 0,
        top_logprobs=n,
    )
    so = f.object("stream_options") or {}
    return req, f.boolean("stream", False), bool(so.get("include_usage"))


def decode_embeddings(data: dict[str, Any]) -> tuple[EmbedRequest, str]:
    """/v1/embeddings: the request and its `encoding_format` ("float" or "base64")."""
    f = Fields(data, "EmbedRequest")
    raw = f.raw("input")
    if raw == "":
        raw = [""]
    if isinstance(raw, str):
        inputs: tuple[str, ...] = (raw,)
    elif isinstance(raw, list) and raw:
        if not all(isinstance(x, str) for x in raw):
            raise InvalidRequest("invalid input type", param="input")  # token arrays too
        inputs = tuple(raw)
    elif raw is None or raw == []:
        raise InvalidRequest("invalid input", param="input")
    else:
        raise InvalidRequest("invalid input type", param="input")
    encoding = f.string("encoding_format") or "float"
    if encoding.lower() not in ("float", "base64"):  # compared as Go's strings.EqualFold does
        raise InvalidRequest(
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64'].",
            param="encoding_format",
        )
    req = EmbedRequest(
        model=f.string("model"),
        inputs=inputs,
        dimensions=f.integer("dimensions"),
        keep_alive=_keep_alive(f),
    )
    return req, encoding.lower()


# --- responses -----------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{random.randrange(999)}"


def finish_reason(chunk: Chunk, *, tool_calls: bool = False, default: str = "") -> str | None:
    """The native done_reason passed through, as Ollama's layer does ("load" included), or
    `default` where there is none; "stop" becomes "tool_calls" once the reply made a call.
    None (JSON null) before the end."""
    if not chunk.done:
        return None
    reason = chunk.done_reason or default
    if reason == "stop" and tool_calls:
        return "tool_calls"
    return reason or None


def usage(m: Metrics | None) -> dict[str, int]:
    p = m.prompt_eval_count if m else 0
    c = m.eval_count if m else 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def tool_call(c: ToolCall, index: int) -> dict[str, Any]:
    return {
        "id": c.id or f"call_{random.getrandbits(40):010x}"[:13],
        "index": index,
        "type": "function",
        "function": {"name": c.name, "arguments": orjson.dumps(dict(c.arguments)).decode()},
    }


def logprobs(items: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """A choice's `logprobs`: Ollama's entries, with `bytes` and `top_logprobs` always
    present as OpenAI's schema requires."""
    return {"content": native_logprobs(items, full=True)}


def chat_completion(
    cid: str,
    model: str,
    created: int,
    text: str,
    thinking: str,
    calls: list[ToolCall],
    final: Chunk,
    lps: tuple[TokenLogprob, ...] = (),
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["reasoning"] = thinking
    if calls:
        message["tool_calls"] = [tool_call(c, i) for i, c in enumerate(calls)]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": finish_reason(final, tool_calls=bool(calls)),
    }
    if lps:
        choice["logprobs"] = logprobs(lps)
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
        "usage": usage(final.metrics),
    }


def debug_completion(cid: str, model: str, created: int, rendered: Chunk) -> dict[str, Any]:
    """`_debug_render_only`'s answer: Go's zero message and no finish, beside the prompt."""
    out: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": {"role": "", "content": ""}, "finish_reason": None}],
        "usage": usage(None),
    }
    if rendered.debug is not None:
        out["_debug_info"] = debug_info(rendered.debug)
    return out


def chat_chunk(
    cid: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish: str | None,
    lps: tuple[TokenLogprob, ...] = (),
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if lps:
        choice["logprobs"] = logprobs(lps)
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
    }


def usage_chunk(cid: str, model: str, created: int, obj: str, m: Metrics | None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [],
        "usage": usage(m),
    }


def completion(
    cid: str,
    model: str,
    created: int,
    text: str,
    final: Chunk,
    lps: tuple[TokenLogprob, ...] = (),
) -> dict[str, Any]:
    choice: dict[str, Any] = {"text": text, "index": 0, "finish_reason": finish_reason(final)}
    if lps:
        choice["logprobs"] = logprobs(lps)
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
        "usage": usage(final.metrics),
    }


def completion_chunk(
    cid: str,
    model: str,
    text: str,
    finish: str | None,
    with_usage: bool,
    lps: tuple[TokenLogprob, ...] = (),
) -> dict[str, Any]:
    choice: dict[str, Any] = {"text": text, "index": 0, "finish_reason": finish}
    if lps:
        choice["logprobs"] = logprobs(lps)
    out: dict[str, Any] = {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
    }
    if with_usage:
        out["usage"] = usage(None)
    return out


def embeddings(model: str, e: Embeddings, encoding: str) -> bytes:
    """The /v1/embeddings body: float32 vectors, as numbers or base64 of little-endian bytes."""
    data: list[dict[str, Any]] = []
    for i, v in enumerate(e.vectors):
        vec = np.asarray(v, dtype="<f4")
        item: Any = base64.b64encode(vec.tobytes()).decode() if encoding == "base64" else vec
        data.append({"object": "embedding", "embedding": item, "index": i})
    out = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": e.prompt_eval_count, "total_tokens": e.prompt_eval_count},
    }
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def model_entry(spec: ModelSpec, model_id: str | None = None) -> dict[str, Any]:
    return {
        "id": model_id or spec.name,
        "object": "model",
        "created": int(spec.modified_at),
        "owned_by": spec.namespace,
    }


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_error(exc: BridgeError) -> bytes:
    return b"data: " + error_body(exc.message, status_of(exc), openai=True).rstrip(b"\n") + b"\n\n"


def body(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"
